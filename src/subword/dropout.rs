//! BPE-dropout (Provilkov, Emelianenko and Voita 2020, "BPE-Dropout: Simple and
//! Effective Subword Regularization"): while a word is segmented, every merge that
//! could apply at a step is left out with probability `p`, so the same word reaches the
//! model in several segmentations over the epochs. Training then sees how words are
//! built from their parts; search keeps the deterministic segmentation (`p = 0`).
//!
//! Written here rather than through `tokenizers`' own `BPE::dropout`: that draws from the
//! thread's random generator, and training must be a function of its seed (an epoch's
//! segmentations are drawn again, the same, when a run resumes).

use std::collections::HashMap;

use anyhow::{bail, Context};
use rand::Rng;
use tokenizers::{
    ModelWrapper, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, Tokenizer,
};

use super::SPECIAL_TOKENS;

/// A BPE model's merges, applied with dropout.
pub struct BpeDropout {
    tokenizer: Tokenizer,
    p: f32,
    /// Symbol pair → (rank of the merge: lower merges first, id of the merged symbol).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// The byte-level alphabet: one id per character a pre-tokenized word is spelt in.
    alphabet: HashMap<char, u32>,
}

impl BpeDropout {
    /// `p` in [0, 1): the probability that a possible merge is left out at a step.
    pub(super) fn new(tokenizer: &Tokenizer, p: f32) -> anyhow::Result<Self> {
        if !(0.0..1.0).contains(&p) {
            bail!("subword dropout must be in [0, 1), got {p}");
        }
        let ModelWrapper::BPE(bpe) = tokenizer.get_model() else {
            bail!(
                "subword dropout needs BPE subwords; this vocabulary is not BPE \
                 (prepare the data with --model-type bpe)"
            );
        };
        if tokenizer.get_normalizer().is_some() {
            bail!("subword dropout supports tokenizers without a normalizer only");
        }
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
            tokenizer: tokenizer.clone(),
            p,
            merges,
            alphabet,
        })
    }

    /// Subword ids of a sentence (without BOS/EOS), merges dropped with `rng`. A line
    /// that spells a special token is segmented as without dropout, as the tokenizer
    /// would split it.
    pub fn encode(&self, text: &str, rng: &mut impl Rng) -> anyhow::Result<Vec<u32>> {
        if self.p == 0.0 || SPECIAL_TOKENS.iter().any(|t| text.contains(t)) {
            return plain_encode(&self.tokenizer, text);
        }
        self.segment(text, rng)
    }

    /// Pre-tokenizes `text` as the tokenizer does and segments each word by `merge`.
    fn segment(&self, text: &str, rng: &mut impl Rng) -> anyhow::Result<Vec<u32>> {
        let mut words = PreTokenizedString::from(text);
        if let Some(pre) = self.tokenizer.get_pre_tokenizer() {
            pre.pre_tokenize(&mut words)
                .map_err(|e| anyhow::anyhow!("pre-tokenizing {text:?}: {e}"))?;
        }
        let mut ids = Vec::new();
        for (word, _, _) in words.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            let mut symbols = Vec::with_capacity(word.len());
            for c in word.chars() {
                match self.alphabet.get(&c) {
                    Some(&id) => symbols.push(id),
                    // Not byte-level after all: give up dropout for this line.
                    None => return plain_encode(&self.tokenizer, text),
                }
            }
            self.merge(&mut symbols, rng);
            ids.extend(symbols);
        }
        Ok(ids)
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

fn plain_encode(tokenizer: &Tokenizer, text: &str) -> anyhow::Result<Vec<u32>> {
    let encoding = tokenizer
        .encode_fast(text, false)
        .map_err(|e| anyhow::anyhow!("encoding {text:?}: {e}"))?;
    Ok(encoding.get_ids().to_vec())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::super::{tiny_models, SubwordKind};

    const TEXT: [&str; 6] = [
        "Der Hund jagt die Katze durch den Garten.",
        "Die Katze jagt den Hund nicht.",
        "Ein Mann in einem blauen Hemd steht auf einer Leiter.",
        "Zwei Hunde spielen im Schnee, während ein Kind zusieht.",
        "„Zitat“ – 1.000,50 € für Straßen",
        "  zwei  Leerzeichen \t und <s> ein Sondertoken",
    ];

    #[test]
    fn without_dropout_it_segments_as_the_tokenizer_and_with_it_losslessly() {
        for (kind, model) in tiny_models(&TEXT).unwrap() {
            if kind != SubwordKind::Bpe {
                let err = model.bpe_dropout(0.1).err().expect("unigram is refused");
                assert!(err.to_string().contains("BPE"), "{err}");
                continue;
            }
            let plain = model.bpe_dropout(0.0).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let unseen = "Katzen jagen unbekannte Wörter: Schnee-Hund!";
            for s in TEXT.iter().chain(&[unseen]) {
                assert_eq!(plain.encode(s, &mut rng).unwrap(), model.encode(s).unwrap());
                // The merge loop itself, merges applied one at a time by rank.
                let merged = match s.contains("<s>") {
                    true => model.encode(s).unwrap(),
                    false => plain.segment(s, &mut rng).unwrap(),
                };
                assert_eq!(merged, model.encode(s).unwrap(), "{s}");
            }
            let dropped = model.bpe_dropout(0.5).unwrap();
            let (mut longer, mut differ) = (0, 0);
            for s in TEXT.iter().chain(&[unseen]) {
                let ids = dropped.encode(s, &mut rng).unwrap();
                let base = model.encode(s).unwrap();
                match s.contains("<s>") {
                    // Spelt special tokens keep the tokenizer's segmentation.
                    true => assert_eq!(ids, base),
                    false => assert_eq!(&model.decode(&ids).unwrap(), s),
                }
                longer += ids.len() as i64 - base.len() as i64;
                differ += usize::from(ids != base);
            }
            assert!(
                longer > 0 && differ >= 4,
                "dropout 0.5 changed {differ} of 7 lines"
            );
        }
    }

    #[test]
    fn a_seed_gives_the_same_segmentations_another_seed_others() {
        let (_, model) = tiny_models(&TEXT).unwrap().remove(0);
        let dropped = model.bpe_dropout(0.3).unwrap();
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            TEXT.iter()
                .map(|s| dropped.encode(s, &mut rng).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
        assert!(model.bpe_dropout(1.0).is_err() && model.bpe_dropout(-0.1).is_err());
    }
}
