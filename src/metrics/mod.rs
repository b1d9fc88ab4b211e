//! Translation quality metrics: sacreBLEU-exact BLEU, chrF and chrF++.
