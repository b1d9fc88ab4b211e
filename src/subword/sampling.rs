//! Subword regularisation: training sentences segmented by a draw instead of the one
//! deterministic segmentation, so the same word reaches the model in several
//! segmentations over the epochs and the model learns how words are built from their
//! parts. Search keeps the deterministic segmentation.
//!
//! - BPE-dropout (Provilkov, Emelianenko and Voita 2020, "BPE-Dropout: Simple and
//!   Effective Subword Regularization"): while a word is segmented, every merge that
//!   could apply at a step is left out with probability `p`.
//! - Unigram sampling (Kudo 2018, "Subword Regularization"): a segmentation `x` of a word
//!   is drawn with probability ∝ `P(x)^α` over all its segmentations (forward filtering,
//!   backward sampling on the lattice of the vocabulary's pieces).
//!
//! Written here rather than through `tokenizers`' own `BPE::dropout` and unigram `alpha`:
//! those draw from the thread's random generator, and training must be a function of its
//! seed (an epoch's segmentations are drawn again, the same, when a run resumes).

use std::collections::HashMap;

use anyhow::{bail, Context};
use rand::Rng;
use tokenizers::{ModelWrapper, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

use super::{SubwordModel, SPECIAL_TOKENS, UNK_ID};

/// A tokenizer whose segmentations are drawn: BPE-dropout or unigram sampling.
pub struct SubwordSampling {
    /// The model itself: its pre-tokenizer, and its segmentation where nothing is drawn.
    model: SubwordModel,
    kind: Sampling,
}

enum Sampling {
    BpeDropout(BpeDropout),
    Unigram(UnigramSampling),
}

impl SubwordSampling {
    /// BPE-dropout with `p` in [0, 1): the probability that a possible merge is left out.
    pub(super) fn bpe_dropout(model: &SubwordModel, p: f32) -> anyhow::Result<Self> {
        if !(0.0..1.0).contains(&p) {
            bail!("subword dropout must be in [0, 1), got {p}");
        }
        let ModelWrapper::BPE(bpe) = model.tokenizer.get_model() else {
            bail!(
                "subword_dropout needs BPE subwords, and this vocabulary is unigram: \
                 use subword_alpha (unigram sampling) instead"
            );
        };
        Self::new(model, Sampling::BpeDropout(BpeDropout::new(bpe, p)?))
    }

    /// Unigram sampling with smoothing `alpha` > 0 (larger: closer to the best
    /// segmentation; Kudo 2018 uses 0.2 and 0.5).
    pub(super) fn unigram(model: &SubwordModel, alpha: f64) -> anyhow::Result<Self> {
        if !(alpha > 0.0 && alpha.is_finite()) {
            bail!("unigram sampling's alpha must be a positive number, got {alpha}");
        }
        let ModelWrapper::Unigram(unigram) = model.tokenizer.get_model() else {
            bail!(
                "subword_alpha needs unigram subwords, and this vocabulary is BPE: \
                 use subword_dropout (BPE-dropout) instead"
            );
        };
        Self::new(
            model,
            Sampling::Unigram(UnigramSampling::new(unigram, alpha)),
        )
    }

    fn new(model: &SubwordModel, kind: Sampling) -> anyhow::Result<Self> {
        if model.tokenizer.get_normalizer().is_some() {
            bail!("subword sampling supports tokenizers without a normalizer only");
        }
        Ok(Self {
            model: model.clone(),
            kind,
        })
    }

    /// Subword ids of a sentence (without BOS/EOS), drawn with `rng`. A line that spells
    /// a special token is segmented as without sampling, as the tokenizer would split it.
    pub fn encode(&self, text: &str, rng: &mut impl Rng) -> anyhow::Result<Vec<u32>> {
        let off = matches!(&self.kind, Sampling::BpeDropout(b) if b.p == 0.0);
        if off || SPECIAL_TOKENS.iter().any(|t| text.contains(t)) {
            return self.model.encode(text);
        }
        match self.segment(text, rng)? {
            Some(ids) => Ok(ids),
            None => self.model.encode(text),
        }
    }

    /// Pre-tokenizes `text` as the tokenizer does and draws each word's segmentation;
    /// `None` when a word cannot be spelt in the vocabulary's pieces.
    fn segment(&self, text: &str, rng: &mut impl Rng) -> anyhow::Result<Option<Vec<u32>>> {
        let mut words = PreTokenizedString::from(text);
        if let Some(pre) = self.model.tokenizer.get_pre_tokenizer() {
            pre.pre_tokenize(&mut words)
                .map_err(|e| anyhow::anyhow!("pre-tokenizing {text:?}: {e}"))?;
        }
        let mut ids = Vec::new();
        for (word, _, _) in words.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            let done = match &self.kind {
                Sampling::BpeDropout(bpe) => bpe.segment(word, rng, &mut ids),
                Sampling::Unigram(unigram) => unigram.segment(word, rng, &mut ids),
            };
            if !done {
                return Ok(None);
            }
        }
        Ok(Some(ids))
    }
}

/// A BPE model's merges, applied with dropout.
struct BpeDropout {
    p: f32,
    /// Symbol pair → (rank of the merge: lower merges first, id of the merged symbol).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// The byte-level alphabet: one id per character a pre-tokenized word is spelt in.
    alphabet: HashMap<char, u32>,
}

impl BpeDropout {
    fn new(bpe: &tokenizers::models::bpe::BPE, p: f32) -> anyhow::Result<Self> {
        let vocab = bpe.get_vocab();
        // The merges are private to `tokenizers`; its serialised model lists them in rank
        // order, each as ["left", "right"] (or "left right" in older files).
        let json = serde_json::to_value(bpe).context("reading the BPE merges")?;
        let listed = json["merges"]
            .as_array()
            .context("the BPE model has no merges list")?;
        let mut merges = HashMap::with_capacity(listed.len());
        for (rank, merge) in listed.iter().enumerate() {
            let (left, right) = match merge {
                serde_json::Value::Array(parts) if parts.len() == 2 => (
                    parts[0].as_str().unwrap_or_default().to_string(),
                    parts[1].as_str().unwrap_or_default().to_string(),
                ),
                serde_json::Value::String(s) => match s.split_once(' ') {
                    Some((l, r)) => (l.to_string(), r.to_string()),
                    None => bail!("BPE merge {rank} is not a pair: {s:?}"),
                },
                other => bail!("BPE merge {rank} is not a pair: {other}"),
            };
            let id = |piece: &str| {
                vocab.get(piece).copied().with_context(|| {
                    format!("BPE merge {rank}: {piece:?} is not in the vocabulary")
                })
            };
            let merged = id(&format!("{left}{right}"))?;
            merges.insert((id(&left)?, id(&right)?), (rank as u32, merged));
        }
        let alphabet = vocab
            .iter()
            .filter_map(|(piece, &id)| {
                let mut chars = piece.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => Some((c, id)),
                    _ => None,
                }
            })
            .collect();
        Ok(Self {
            p,
            merges,
            alphabet,
        })
    }

    /// Appends the ids of `word` (pre-tokenized, byte-level), merges dropped with `rng`.
    fn segment(&self, word: &str, rng: &mut impl Rng, ids: &mut Vec<u32>) -> bool {
        let mut symbols = Vec::with_capacity(word.len());
        for c in word.chars() {
            match self.alphabet.get(&c) {
                Some(&id) => symbols.push(id),
                None => return false,
            }
        }
        self.merge(&mut symbols, rng);
        ids.extend(symbols);
        true
    }

    /// BPE on one word: apply the lowest-ranked merge among the pairs that survive this
    /// step's draw (the leftmost of equal ranks, as `tokenizers` does), until none does.
    fn merge(&self, symbols: &mut Vec<u32>, rng: &mut impl Rng) {
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for (pos, pair) in symbols.windows(2).enumerate() {
                let Some(&(rank, merged)) = self.merges.get(&(pair[0], pair[1])) else {
                    continue;
                };
                if rng.random::<f32>() < self.p {
                    continue;
                }
                if best.is_none_or(|(r, _, _)| rank < r) {
                    best = Some((rank, pos, merged));
                }
            }
            let Some((_, pos, merged)) = best else { return };
            symbols[pos] = merged;
            symbols.remove(pos + 1);
        }
    }
}

/// A unigram model's pieces and their log-probabilities, for sampling.
struct UnigramSampling {
    alpha: f64,
    /// Piece → (id, log-probability); special tokens are not pieces of words.
    pieces: HashMap<String, (u32, f64)>,
    /// The longest piece, in characters.
    longest: usize,
}

impl UnigramSampling {
    fn new(unigram: &tokenizers::models::unigram::Unigram, alpha: f64) -> Self {
        let pieces: HashMap<String, (u32, f64)> = unigram
            .iter()
            .enumerate()
            .skip(SPECIAL_TOKENS.len())
            .map(|(id, (piece, score))| (piece.clone(), (id as u32, *score)))
            .collect();
        let longest = pieces.keys().map(|p| p.chars().count()).max().unwrap_or(1);
        Self {
            alpha,
            pieces,
            longest,
        }
    }

    /// Appends the ids of a segmentation of `word` drawn with probability ∝ P(x)^α:
    /// `log_z[j]` sums α·log P over the segmentations of the first `j` characters, then
    /// pieces are drawn from the end backwards, each ∝ exp(log_z[start] + α·log P(piece)).
    fn segment(&self, word: &str, rng: &mut impl Rng, ids: &mut Vec<u32>) -> bool {
        let bounds: Vec<usize> = word
            .char_indices()
            .map(|(i, _)| i)
            .chain([word.len()])
            .collect();
        let n = bounds.len() - 1;
        // ending[j]: the pieces that end at character j, as (start, id, α·log P).
        let mut ending: Vec<Vec<(usize, u32, f64)>> = vec![Vec::new(); n + 1];
        let mut log_z = vec![f64::NEG_INFINITY; n + 1];
        log_z[0] = 0.0;
        for end in 1..=n {
            for start in end.saturating_sub(self.longest)..end {
                if log_z[start] == f64::NEG_INFINITY {
                    continue;
                }
                if let Some(&(id, score)) = self.pieces.get(&word[bounds[start]..bounds[end]]) {
                    ending[end].push((start, id, self.alpha * score));
                }
            }
            log_z[end] = log_sum_exp(ending[end].iter().map(|&(s, _, w)| log_z[s] + w));
        }
        if log_z[n] == f64::NEG_INFINITY || ending[n].iter().any(|e| e.1 == UNK_ID) {
            return false;
        }
        let first = ids.len();
        let mut end = n;
        while end > 0 {
            let mut u = rng.random::<f64>();
            let candidates = &ending[end];
            let mut pick = candidates[candidates.len() - 1];
            for &c in candidates {
                u -= (log_z[c.0] + c.2 - log_z[end]).exp();
                if u < 0.0 {
                    pick = c;
                    break;
                }
            }
            ids.push(pick.1);
            end = pick.0;
        }
        ids[first..].reverse();
        true
    }
}

/// `ln Σ exp(x)` without overflow; −∞ for no terms (the language model's next words use
/// it too).
pub(crate) fn log_sum_exp(xs: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = xs.clone().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + xs.map(|x| (x - max).exp()).sum::<f64>().ln()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::super::{tiny_models, SubwordKind, SubwordModel};
    use super::*;

    const TEXT: [&str; 6] = [
        "Der Hund jagt die Katze durch den Garten.",
        "Die Katze jagt den Hund nicht.",
        "Ein Mann in einem blauen Hemd steht auf einer Leiter.",
        "Zwei Hunde spielen im Schnee, während ein Kind zusieht.",
        "„Zitat“ – 1.000,50 € für Straßen",
        "  zwei  Leerzeichen \t und <s> ein Sondertoken",
    ];
    const UNSEEN: &str = "Katzen jagen unbekannte Wörter: Schnee-Hund!";

    fn lines() -> impl Iterator<Item = &'static str> {
        TEXT.iter().copied().chain([UNSEEN])
    }

    fn model(kind: SubwordKind) -> SubwordModel {
        let mut models = tiny_models(&TEXT).unwrap();
        models.retain(|(k, _)| *k == kind);
        models.remove(0).1
    }

    /// Draws lines' segmentations: each decodes to its line (a spelt special token keeps
    /// the tokenizer's segmentation), and at least `min_changed` of them differ from it.
    fn assert_lossless_and_varied(
        model: &SubwordModel,
        sampling: &SubwordSampling,
        min_changed: usize,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut changed = 0;
        for s in lines() {
            let ids = sampling.encode(s, &mut rng).unwrap();
            let base = model.encode(s).unwrap();
            match s.contains("<s>") {
                true => assert_eq!(ids, base),
                false => assert_eq!(&model.decode(&ids).unwrap(), s),
            }
            changed += usize::from(ids != base);
        }
        assert!(changed >= min_changed, "{changed} of 7 lines changed");
    }

    #[test]
    fn bpe_dropout_at_zero_segments_as_the_tokenizer_and_above_it_losslessly() {
        let model = model(SubwordKind::Bpe);
        let plain = model.bpe_dropout(0.0).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for s in lines() {
            let expected = model.encode(s).unwrap();
            assert_eq!(plain.encode(s, &mut rng).unwrap(), expected);
            // The merge loop itself, merges applied one at a time by rank.
            if !s.contains("<s>") {
                assert_eq!(plain.segment(s, &mut rng).unwrap(), Some(expected), "{s}");
            }
        }
        assert_lossless_and_varied(&model, &model.bpe_dropout(0.5).unwrap(), 4);
        assert!(model.bpe_dropout(1.0).is_err() && model.bpe_dropout(-0.1).is_err());
        let err = model.unigram_sampling(0.2).err().unwrap().to_string();
        assert!(err.contains("subword_dropout"), "{err}");
    }

    #[test]
    fn unigram_sampling_draws_segmentations_in_proportion_to_their_probability() {
        let model = model(SubwordKind::Unigram);
        let sampling = model.unigram_sampling(0.5).unwrap();
        let Sampling::Unigram(unigram) = &sampling.kind else {
            unreachable!()
        };
        let by_id: HashMap<u32, f64> = unigram.pieces.values().copied().collect();
        let log_p = |ids: &[u32]| -> f64 { ids.iter().map(|id| by_id[id]).sum() };
        // A large α leaves only the best segmentations: the tokenizer's Viterbi path, or
        // one as probable where several tie ("000" as "0 00" or "00 0").
        let sharp = model.unigram_sampling(1e4).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut same = 0;
        for s in lines() {
            let (drawn, best) = (sharp.encode(s, &mut rng).unwrap(), model.encode(s).unwrap());
            same += usize::from(drawn == best);
            if s.contains("<s>") {
                assert_eq!(drawn, best);
                continue;
            }
            let gap = (log_p(&drawn) - log_p(&best)).abs();
            assert!(gap < 1e-9, "{s}: {drawn:?} vs {best:?}");
        }
        assert!(same >= 5, "{same} of 7 lines");
        assert_lossless_and_varied(&model, &sampling, 4);

        // Every segmentation of one word, enumerated: its share of 20,000 draws is
        // P(x)^α / Σ P(x')^α within 0.01.
        let word = "ĠKatze";
        let mut all: Vec<(Vec<u32>, f64)> = Vec::new();
        enumerate(unigram, word, Vec::new(), 0.0, &mut all);
        assert!(all.len() >= 8, "{} segmentations", all.len());
        let z: f64 = all.iter().map(|(_, w)| w.exp()).sum();
        let mut counts: HashMap<Vec<u32>, usize> = HashMap::new();
        let draws = 20_000;
        for _ in 0..draws {
            let mut ids = Vec::new();
            assert!(unigram.segment(word, &mut rng, &mut ids));
            *counts.entry(ids).or_default() += 1;
        }
        for (ids, w) in &all {
            let expected = w.exp() / z;
            let seen = counts.get(ids).copied().unwrap_or(0) as f64 / draws as f64;
            assert!(
                (seen - expected).abs() < 0.01,
                "{ids:?}: {seen} vs {expected}"
            );
        }
        assert!(model.unigram_sampling(0.0).is_err());
        let err = model.bpe_dropout(0.1).err().unwrap().to_string();
        assert!(err.contains("subword_alpha"), "{err}");
    }

    /// Every segmentation of `rest` into pieces, with α·log P of the whole.
    fn enumerate(
        u: &UnigramSampling,
        rest: &str,
        ids: Vec<u32>,
        w: f64,
        out: &mut Vec<(Vec<u32>, f64)>,
    ) {
        if rest.is_empty() {
            out.push((ids, w));
            return;
        }
        for (end, _) in rest.char_indices().skip(1).chain([(rest.len(), ' ')]) {
            if let Some(&(id, score)) = u.pieces.get(&rest[..end]) {
                let mut more = ids.clone();
                more.push(id);
                enumerate(u, &rest[end..], more, w + u.alpha * score, out);
            }
        }
    }

    #[test]
    fn a_seed_gives_the_same_segmentations_another_seed_others() {
        for (kind, model) in tiny_models(&TEXT).unwrap() {
            let sampling = match kind {
                SubwordKind::Bpe => model.bpe_dropout(0.3).unwrap(),
                SubwordKind::Unigram => model.unigram_sampling(0.3).unwrap(),
            };
            let draw = |seed| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                lines()
                    .map(|s| sampling.encode(s, &mut rng).unwrap())
                    .collect::<Vec<_>>()
            };
            assert_eq!(draw(1), draw(1), "{kind:?}");
            assert_ne!(draw(1), draw(2), "{kind:?}");
        }
    }
}
