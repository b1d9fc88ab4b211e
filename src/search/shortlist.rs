//! Lexical shortlists: decoding over a per-batch subset of the target vocabulary (Marian's
//! `--shortlist`, Sockeye's `--restrict-lexicon`, after Jean et al. 2015 and L'Hostis et
//! al. 2016).
//!
//! The output projection is most of a search step's work (a `[rows, hidden] × [hidden,
//! vocab]` product and a softmax over the whole vocabulary). A sentence is almost always
//! translated with the most frequent target subwords plus a few likely translations of its
//! own source subwords, so search may score only those: the union, over the sentences of
//! a batch, of the `frequent` most frequent target subwords and the `per_word` most
//! probable translations of each source subword. Probabilities are then normalised over
//! that subset, so results can differ from the full search; it is opt-in
//! (`rnmt translate --shortlist`) and its BLEU cost is measured in the README.
//!
//! The translation table is IBM Model 1 (Brown et al. 1993: `t(target | source)`, with a
//! NULL source word, estimated by EM), learned on the training corpus' subwords by `rnmt
//! shortlist`. Written here because no crate learns it; fast_align's refinements (a
//! diagonal prior) matter for alignment, not for ranking candidates.

use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};

use crate::subword::{EOS_ID, UNK_ID};

/// The file in a model folder.
pub const SHORTLIST_FILE: &str = "shortlist.safetensors";

/// `rnmt translate --shortlist-size` when not given: chosen on dev sets (the README's
/// performance section has the grid).
pub const DEFAULT_SIZE: &str = "500,50";

/// How large a shortlist is: `FREQUENT,PER_WORD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShortlistSize {
    /// The most frequent target subwords, always scored.
    pub frequent: usize,
    /// The most probable translations of each source subword.
    pub per_word: usize,
}

impl FromStr for ShortlistSize {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parse = |v: &str| v.trim().parse::<usize>().ok();
        match s.split_once(',').map(|(f, p)| (parse(f), parse(p))) {
            // An empty shortlist would score no subword at all: every output empty.
            Some((Some(0), Some(0))) => Err(format!(
                "`{s}`: FREQUENT and PER_WORD are both 0, so no subword could be output"
            )),
            Some((Some(frequent), Some(per_word))) => Ok(Self { frequent, per_word }),
            _ => Err(format!(
                "`{s}` is not FREQUENT,PER_WORD (two whole numbers, e.g. 500,50)"
            )),
        }
    }
}

/// Target subwords by frequency and each source subword's most probable translations.
#[derive(Clone, Debug, PartialEq)]
pub struct Shortlist {
    /// Target ids seen in training, most frequent first.
    frequent: Vec<u32>,
    /// Source id `s` translates to `translations[offsets[s]..offsets[s + 1]]`, most
    /// probable first.
    offsets: Vec<u32>,
    translations: Vec<u32>,
}

impl Shortlist {
    /// Learns the table from `(source ids, target ids)` pairs: `iterations` rounds of EM,
    /// then the `keep` most probable translations of each source subword.
    pub fn learn<'a>(
        pairs: impl Iterator<Item = (&'a [u32], &'a [u32])> + Clone,
        src_vocab: usize,
        tgt_vocab: usize,
        iterations: usize,
        keep: usize,
    ) -> Result<Self> {
        let null = src_vocab as u32;
        let mut counts = vec![0u64; tgt_vocab];
        for (src, tgt) in pairs.clone() {
            for &id in src.iter() {
                ensure!(
                    (id as usize) < src_vocab,
                    "source id {id} outside the vocabulary of {src_vocab}"
                );
            }
            for &id in tgt.iter() {
                ensure!(
                    (id as usize) < tgt_vocab,
                    "target id {id} outside the vocabulary of {tgt_vocab}"
                );
                counts[id as usize] += 1;
            }
        }
        let mut frequent: Vec<u32> = (0..tgt_vocab as u32)
            .filter(|&t| counts[t as usize] > 0)
            .collect();
        frequent.sort_by_key(|&t| std::cmp::Reverse(counts[t as usize]));

        let table = CooccurrenceTable::new(pairs.clone(), src_vocab + 1);
        let mut prob = vec![1.0f32; table.targets.len()];
        let mut expected = vec![0.0f64; table.targets.len()];
        let mut total = vec![0.0f64; src_vocab + 1];
        let mut cells = Vec::new();
        for _ in 0..iterations {
            expected.fill(0.0);
            total.fill(0.0);
            for (src, tgt) in pairs.clone() {
                for &t in tgt {
                    cells.clear();
                    cells.extend(src.iter().chain([&null]).map(|&s| table.cell(s, t)));
                    let norm: f64 = cells.iter().map(|&c| prob[c] as f64).sum();
                    for (&c, &s) in cells.iter().zip(src.iter().chain([&null])) {
                        let share = prob[c] as f64 / norm;
                        expected[c] += share;
                        total[s as usize] += share;
                    }
                }
            }
            for (s, &sum) in total.iter().enumerate() {
                if sum > 0.0 {
                    for c in table.row(s as u32) {
                        prob[c] = (expected[c] / sum) as f32;
                    }
                }
            }
        }

        let mut offsets = Vec::with_capacity(src_vocab + 1);
        let mut translations = Vec::new();
        offsets.push(0);
        for s in 0..src_vocab as u32 {
            let mut row: Vec<usize> = table.row(s).collect();
            row.sort_by(|&a, &b| {
                prob[b]
                    .total_cmp(&prob[a])
                    .then(table.targets[a].cmp(&table.targets[b]))
            });
            translations.extend(row.iter().take(keep).map(|&c| table.targets[c]));
            offsets.push(translations.len() as u32);
        }
        Ok(Self {
            frequent,
            offsets,
            translations,
        })
    }

    /// The sorted target ids to score for a batch of sources (ids without EOS): EOS and
    /// UNK, the `frequent` most frequent, and the `per_word` best translations of every
    /// source subword.
    pub fn target_ids(&self, sources: &[Vec<u32>], size: ShortlistSize) -> Vec<u32> {
        let mut ids = vec![EOS_ID, UNK_ID];
        ids.extend(self.frequent.iter().take(size.frequent));
        for &s in sources.iter().flatten() {
            ids.extend(self.translations_of(s).iter().take(size.per_word));
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Translations of source id `s`, most probable first (none for unknown ids).
    pub fn translations_of(&self, s: u32) -> &[u32] {
        match (
            self.offsets.get(s as usize),
            self.offsets.get(s as usize + 1),
        ) {
            (Some(&a), Some(&b)) => &self.translations[a as usize..b as usize],
            _ => &[],
        }
    }

    pub fn src_vocab_size(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let cpu = Device::Cpu;
        let tensors = [
            ("frequent", &self.frequent),
            ("offsets", &self.offsets),
            ("translations", &self.translations),
        ]
        .into_iter()
        .map(|(name, v)| Ok((name.to_string(), Tensor::from_slice(v, v.len(), &cpu)?)))
        .collect::<Result<std::collections::HashMap<_, _>>>()?;
        crate::io::write_atomic_with(path, |tmp| {
            Ok(candle_core::safetensors::save(&tensors, tmp)?)
        })
    }

    /// Loads and checks a table for models with these vocabulary sizes.
    pub fn load(path: &Path, src_vocab: usize, tgt_vocab: usize) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("cannot read the shortlist {}", path.display()))?;
        let get = |name: &str| -> Result<Vec<u32>> {
            let t = tensors.get(name).with_context(|| {
                format!("{}: no tensor `{name}` (not a shortlist?)", path.display())
            })?;
            t.flatten_all()?
                .to_vec1::<u32>()
                .with_context(|| format!("{}: `{name}` is not a u32 vector", path.display()))
        };
        let list = Self {
            frequent: get("frequent")?,
            offsets: get("offsets")?,
            translations: get("translations")?,
        };
        let bad = |what: String| -> Result<Self> {
            bail!(
                "{}: {what}; rebuild it with `rnmt shortlist`",
                path.display()
            )
        };
        if list.offsets.len() != src_vocab + 1 {
            return bad(format!(
                "made for a source vocabulary of {}, the model has {src_vocab}",
                list.offsets.len().saturating_sub(1)
            ));
        }
        if list.offsets[0] != 0
            || list.offsets.windows(2).any(|w| w[0] > w[1])
            || list.offsets[src_vocab] as usize != list.translations.len()
        {
            return bad("its offsets are not a partition of the translations".into());
        }
        if let Some(&id) = list
            .frequent
            .iter()
            .chain(&list.translations)
            .find(|&&id| id as usize >= tgt_vocab)
        {
            return bad(format!(
                "target id {id} is outside the model's target vocabulary of {tgt_vocab}"
            ));
        }
        Ok(list)
    }
}

/// The (source, target) pairs that co-occur in some sentence pair, as one sorted row of
/// target ids per source id: the sparse support of Model 1's table.
struct CooccurrenceTable {
    /// Row `s` is `targets[starts[s]..starts[s + 1]]`, sorted.
    starts: Vec<usize>,
    targets: Vec<u32>,
}

impl CooccurrenceTable {
    fn new<'a>(pairs: impl Iterator<Item = (&'a [u32], &'a [u32])>, rows: usize) -> Self {
        Self::compacting_at(pairs, rows, 1 << 26)
    }

    /// Builds the table, deduplicating the pairs seen whenever more than `compact_at`
    /// have gathered.
    fn compacting_at<'a>(
        pairs: impl Iterator<Item = (&'a [u32], &'a [u32])>,
        rows: usize,
        mut compact_at: usize,
    ) -> Self {
        let null = (rows - 1) as u32;
        let mut keys: Vec<u64> = Vec::new();
        let (mut src_set, mut tgt_set): (Vec<u32>, Vec<u32>) = (Vec::new(), Vec::new());
        for (src, tgt) in pairs {
            src_set.clear();
            src_set.extend(src.iter().chain([&null]));
            src_set.sort_unstable();
            src_set.dedup();
            tgt_set.clear();
            tgt_set.extend(tgt);
            tgt_set.sort_unstable();
            tgt_set.dedup();
            for &s in &src_set {
                keys.extend(tgt_set.iter().map(|&t| ((s as u64) << 32) | t as u64));
            }
            // Occurrences outnumber distinct pairs by far on a large corpus (WMT: billions
            // against tens of millions): deduplicate as we go to bound the memory.
            if keys.len() > compact_at {
                keys.sort_unstable();
                keys.dedup();
                compact_at = compact_at.max(2 * keys.len());
            }
        }
        keys.sort_unstable();
        keys.dedup();
        let mut starts = vec![0usize; rows + 1];
        for &k in &keys {
            starts[(k >> 32) as usize + 1] += 1;
        }
        for s in 0..rows {
            starts[s + 1] += starts[s];
        }
        let targets = keys.iter().map(|&k| k as u32).collect();
        Self { starts, targets }
    }

    fn row(&self, s: u32) -> std::ops::Range<usize> {
        self.starts[s as usize]..self.starts[s as usize + 1]
    }

    /// The index of `(s, t)`, which must co-occur.
    fn cell(&self, s: u32, t: u32) -> usize {
        let row = self.row(s);
        let start = row.start;
        start
            + self.targets[row]
                .binary_search(&t)
                .expect("pairs of one sentence co-occur")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy corpus where source 10 means target 20 and source 11 target 21, each next to
    /// the "article" 4 → 5, which also occurs alone.
    fn toy() -> Vec<(Vec<u32>, Vec<u32>)> {
        let mut pairs = Vec::new();
        for _ in 0..5 {
            pairs.push((vec![4, 10], vec![5, 20]));
            pairs.push((vec![4, 11], vec![5, 21]));
            pairs.push((vec![4], vec![5]));
        }
        pairs
    }

    fn learn(pairs: &[(Vec<u32>, Vec<u32>)], iterations: usize, keep: usize) -> Shortlist {
        let it = pairs.iter().map(|(s, t)| (s.as_slice(), t.as_slice()));
        Shortlist::learn(it, 12, 22, iterations, keep).unwrap()
    }

    #[test]
    fn model_one_finds_the_translations_that_cooccurrence_cannot_tell_apart() {
        // Source 10 co-occurs with 5 and with 20 equally often (5 times each); EM explains
        // 5 by the article 4, leaving 20 for 10.
        let list = learn(&toy(), 10, 1);
        assert_eq!(list.translations_of(10), &[20]);
        assert_eq!(list.translations_of(11), &[21]);
        assert_eq!(list.translations_of(4), &[5]);
        assert_eq!(list.translations_of(3), &[] as &[u32], "never seen");
        assert_eq!(
            list.translations_of(99),
            &[] as &[u32],
            "outside the vocabulary"
        );
        // Most frequent target first (5: 15 times, 20 and 21: 5 times each; ties keep the
        // lower id first).
        assert_eq!(list.frequent, vec![5, 20, 21]);
    }

    #[test]
    fn deduplicating_early_builds_the_same_table() {
        let pairs = toy();
        let it = || pairs.iter().map(|(s, t)| (s.as_slice(), t.as_slice()));
        let at_end = CooccurrenceTable::new(it(), 13);
        let early = CooccurrenceTable::compacting_at(it(), 13, 3);
        assert_eq!(at_end.starts, early.starts);
        assert_eq!(at_end.targets, early.targets);
        // Row 4 (the article) co-occurs with 5, 20 and 21; NULL (row 12) with all three.
        assert_eq!(&at_end.targets[at_end.row(4)], &[5, 20, 21]);
        assert_eq!(&at_end.targets[at_end.row(12)], &[5, 20, 21]);
    }

    #[test]
    fn target_ids_are_the_sorted_union_with_eos_and_unk() {
        let list = learn(&toy(), 5, 3);
        let size = ShortlistSize {
            frequent: 1,
            per_word: 1,
        };
        assert_eq!(
            list.target_ids(&[vec![11]], size),
            vec![UNK_ID, EOS_ID, 5, 21]
        );
        assert_eq!(
            list.target_ids(&[vec![10], vec![11, 11]], size),
            vec![UNK_ID, EOS_ID, 5, 20, 21]
        );
    }

    #[test]
    fn saves_loads_and_rejects_a_table_for_another_model() {
        let list = learn(&toy(), 5, 2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SHORTLIST_FILE);
        list.save(&path).unwrap();
        assert_eq!(Shortlist::load(&path, 12, 22).unwrap(), list);
        let err = Shortlist::load(&path, 13, 22).unwrap_err().to_string();
        assert!(
            err.contains("source vocabulary of 12") && err.contains("13"),
            "{err}"
        );
        let err = Shortlist::load(&path, 12, 21).unwrap_err().to_string();
        assert!(err.contains("target id 21"), "{err}");
        std::fs::write(&path, b"not safetensors").unwrap();
        let err = format!("{:#}", Shortlist::load(&path, 12, 22).unwrap_err());
        assert!(err.contains(SHORTLIST_FILE), "{err}");
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(
            "500, 50".parse::<ShortlistSize>().unwrap(),
            ShortlistSize {
                frequent: 500,
                per_word: 50
            }
        );
        for bad in ["500", "a,b", "1,2,3", "-1,5"] {
            assert!(bad.parse::<ShortlistSize>().is_err(), "{bad}");
        }
    }
}
