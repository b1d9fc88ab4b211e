//! Using a language model ([`crate::model::LanguageModel`]): perplexity of sentences, the
//! most probable next words after a context, and sampled continuations.
//!
//! Probabilities are over the model's units: subwords, each sentence ending in EOS, so
//! a sentence of `n` subwords has `n + 1` predictions and its perplexity is
//! `exp(-log p(sentence) / (n + 1))`. Perplexities of models with other vocabularies are
//! not comparable, which is why [`signature`] names the vocabulary and the model.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::batch::{Batch, EncodedPair, TokenBatcher};
use crate::model::{LanguageModel, LmState, WEIGHTS_FILE};
use crate::subword::{log_sum_exp, SubwordModel, BOS_ID, EOS_ID};

/// The log-probability of one sentence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SentenceScore {
    /// `ln p(sentence)`, EOS included.
    pub log_prob: f64,
    /// Predictions: subwords + EOS.
    pub tokens: usize,
}

impl SentenceScore {
    pub fn perplexity(&self) -> f64 {
        (-self.log_prob / self.tokens.max(1) as f64).exp()
    }
}

/// Corpus perplexity: `exp` of the mean negative log-probability per prediction over all
/// sentences (not the mean of the sentences' perplexities).
pub fn corpus_perplexity(scores: &[SentenceScore]) -> f64 {
    let log_prob: f64 = scores.iter().map(|s| s.log_prob).sum();
    let tokens: usize = scores.iter().map(|s| s.tokens).sum();
    (-log_prob / tokens.max(1) as f64).exp()
}

/// The largest `max_tokens` of [`score_sentences`]: the batch's logits are
/// `max_tokens × vocabulary` floats.
pub const MAX_SCORE_TOKENS: usize = 100_000;

/// The log-probability of every line under `model`, scored in batches of about
/// `max_tokens` subwords (teacher forcing, as in training).
pub fn score_sentences(
    model: &LanguageModel,
    tokenizer: &SubwordModel,
    lines: &[&str],
    max_tokens: usize,
    device: &Device,
) -> Result<Vec<SentenceScore>> {
    if !(1..=MAX_SCORE_TOKENS).contains(&max_tokens) {
        bail!("--max-tokens {max_tokens}: must be between 1 and {MAX_SCORE_TOKENS}");
    }
    let pairs: Vec<EncodedPair> = tokenizer
        .encode_batch(lines)?
        .into_iter()
        .map(|tgt| EncodedPair {
            src: Vec::new(),
            tgt,
        })
        .collect();
    let mut scores = vec![
        SentenceScore {
            log_prob: 0.0,
            tokens: 0
        };
        pairs.len()
    ];
    for indices in TokenBatcher::new(max_tokens, 0).epoch(&pairs, 0) {
        let batch = Batch::new(&pairs, &indices);
        let t = batch.to_tensors(device)?;
        let log_probs = candle_nn::ops::log_softmax(&model.forward(&t, None)?, D::Minus1)?;
        let picked = log_probs
            .gather(&t.tgt_out.unsqueeze(2)?, 2)?
            .squeeze(2)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        for (row, &i) in picked.iter().zip(&indices) {
            let n = pairs[i].tgt_len();
            scores[i] = SentenceScore {
                log_prob: row[..n].iter().map(|&x| f64::from(x)).sum(),
                tokens: n,
            };
        }
    }
    Ok(scores)
}

/// What a perplexity depends on, as sacreBLEU's signatures say what a BLEU depends on:
/// the model (the sha256 of its weights), its vocabulary, the unit, rnmt's version.
pub fn signature(model_dir: &Path, vocab_size: usize) -> Result<String> {
    use sha2::{Digest, Sha256};
    let path = model_dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let digest = Sha256::digest(&bytes);
    let hex = crate::io::hex(&digest[..8]);
    Ok(format!(
        "ppl|model:sha256.{hex}|vocab:{vocab_size}|unit:subword+eos|version:{}",
        env!("CARGO_PKG_VERSION")
    ))
}

/// The state after BOS and `ids`, and the log-probabilities `[vocab]` of what follows.
fn read_context(
    model: &LanguageModel,
    ids: &[u32],
    device: &Device,
) -> Result<(LmState, Vec<f32>)> {
    let mut state = model.init(1)?;
    let mut log_probs = None;
    for &id in std::iter::once(&BOS_ID).chain(ids) {
        let (lp, next) = model.step(&state, &Tensor::new(&[id], device)?)?;
        state = next;
        log_probs = Some(lp);
    }
    let lp = log_probs.expect("BOS is always read");
    Ok((state, lp.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?))
}

/// How a subword can take part in a whole word (byte-level BPE: a word after a space
/// starts with the `Ġ` symbol of the space).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece {
    /// Starts a word after a space, with a letter or digit.
    WordStart,
    /// The space alone (`Ġ`): a unigram tokenizer starts words it has no `Ġword` piece
    /// for with it ("Ġ jag t"); a word after it goes on with continuations.
    Space,
    /// Goes on inside a word: a letter or digit (or part of one's UTF-8 bytes), no space.
    Continuation,
    /// Ends the word: EOS, punctuation, a space, special tokens.
    Other,
}

fn classify_vocabulary(tokenizer: &SubwordModel) -> Result<Vec<Piece>> {
    let n = tokenizer.vocab_size();
    let ids: Vec<u32> = (0..n as u32).collect();
    let raw = tokenizer.tokens(&ids);
    let texts =
        tokenizer.decode_batch(&ids.iter().map(std::slice::from_ref).collect::<Vec<_>>())?;
    let wordy = |c: char| c.is_alphanumeric() || c == char::REPLACEMENT_CHARACTER;
    Ok((0..n)
        .map(|i| {
            if i < crate::subword::SPECIAL_TOKENS.len() {
                return Piece::Other;
            }
            let text = &texts[i];
            match (raw[i].starts_with('Ġ'), text.strip_prefix(' ')) {
                (true, Some(rest)) if rest.chars().next().is_some_and(wordy) => Piece::WordStart,
                (true, Some("")) => Piece::Space,
                (false, _) if text.chars().next().is_some_and(wordy) => Piece::Continuation,
                _ => Piece::Other,
            }
        })
        .collect())
}

/// One predicted next word.
#[derive(Clone, Debug, PartialEq)]
pub struct NextWord {
    pub word: String,
    /// `p(word, then a word boundary | context)`, summed over the word's segmentations.
    pub probability: f64,
}

/// The largest `k` and beam of [`next_words`].
pub const MAX_NEXT_WORDS: usize = 1000;
/// Subwords one predicted word may have.
const MAX_WORD_PIECES: usize = 8;

/// The `k` most probable whole words after `context`, assembled from subwords with a beam
/// of `beam` partial words. A word's probability is that of its subwords followed by
/// anything that ends a word (a space, punctuation, EOS), so "Katz" does not count as a
/// word when "Katze" is what follows.
pub fn next_words(
    model: &LanguageModel,
    tokenizer: &SubwordModel,
    context: &str,
    k: usize,
    beam: usize,
    device: &Device,
) -> Result<Vec<NextWord>> {
    for (name, v) in [("-k", k), ("--beam", beam)] {
        if !(1..=MAX_NEXT_WORDS).contains(&v) {
            bail!("{name} {v}: must be between 1 and {MAX_NEXT_WORDS}");
        }
    }
    let context = context.trim();
    let pieces = classify_vocabulary(tokenizer)?;
    let (state, first) = read_context(model, &tokenizer.encode(context)?, device)?;
    // After a context the next word starts with a space; a first word has none.
    let starts: &[Piece] = if context.is_empty() {
        &[Piece::Continuation]
    } else {
        &[Piece::WordStart, Piece::Space]
    };
    // Partial words: subwords so far, their log-probability, the state after them.
    let mut partial: Vec<(Vec<u32>, f64)> = top_pieces(&first, &pieces, starts, beam)
        .into_iter()
        .map(|(id, lp)| (vec![id], lp))
        .collect();
    let mut states = state.select(&Tensor::new(vec![0u32; partial.len()], device)?)?;
    let mut words: HashMap<String, f64> = HashMap::new();
    for _ in 0..MAX_WORD_PIECES {
        if partial.is_empty() {
            break;
        }
        let last: Vec<u32> = partial.iter().map(|(ids, _)| ids[ids.len() - 1]).collect();
        let (lp, next) = model.step(&states, &Tensor::new(last, device)?)?;
        let lp = lp.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut expanded: Vec<(usize, u32, f64)> = Vec::new();
        for (row, ((ids, so_far), lp)) in partial.iter().zip(&lp).enumerate() {
            let end = log_sum_exp(
                lp.iter()
                    .zip(&pieces)
                    .filter(|(_, p)| **p != Piece::Continuation)
                    .map(|(&x, _)| f64::from(x)),
            );
            let word = tokenizer.decode(ids)?.trim_start().to_string();
            // A lone space is no word yet.
            if !word.is_empty() {
                *words.entry(word).or_insert(0.0) += (so_far + end).exp();
            }
            for (id, x) in top_pieces(lp, &pieces, &[Piece::Continuation], beam) {
                expanded.push((row, id, so_far + x));
            }
        }
        expanded.sort_by(|a, b| b.2.total_cmp(&a.2));
        expanded.truncate(beam);
        // A partial word cannot overtake the k-th finished one once it is less probable.
        let kth = kth_largest(words.values().copied(), k);
        expanded.retain(|e| e.2.exp() > kth);
        if expanded.is_empty() {
            break;
        }
        let rows: Vec<u32> = expanded.iter().map(|e| e.0 as u32).collect();
        states = next.select(&Tensor::new(rows, device)?)?;
        partial = expanded
            .into_iter()
            .map(|(row, id, lp)| {
                let mut ids = partial[row].0.clone();
                ids.push(id);
                (ids, lp)
            })
            .collect();
    }
    let mut words: Vec<NextWord> = words
        .into_iter()
        .map(|(word, probability)| NextWord { word, probability })
        .collect();
    words.sort_by(|a, b| {
        b.probability
            .total_cmp(&a.probability)
            .then_with(|| a.word.cmp(&b.word))
    });
    words.truncate(k);
    Ok(words)
}

/// The `n` most probable ids of kind `kind` with their log-probabilities.
fn top_pieces(log_probs: &[f32], pieces: &[Piece], kinds: &[Piece], n: usize) -> Vec<(u32, f64)> {
    let mut v: Vec<(u32, f64)> = log_probs
        .iter()
        .zip(pieces)
        .enumerate()
        .filter(|(_, (_, p))| kinds.contains(p))
        .map(|(id, (&x, _))| (id as u32, f64::from(x)))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

fn kth_largest(values: impl Iterator<Item = f64>, k: usize) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.len() < k {
        return 0.0;
    }
    v.sort_by(|a, b| b.total_cmp(a));
    v[k - 1]
}

/// How [`generate`] draws each subword.
#[derive(Clone, Debug)]
pub struct Sampling {
    /// Divides the logits; 0 draws the most probable subword every time (greedy).
    pub temperature: f64,
    /// Draw from the `top_k` most probable subwords only (0: all).
    pub top_k: usize,
    /// Nucleus sampling (Holtzman et al. 2020): from the fewest most probable subwords
    /// whose probabilities sum to `top_p` (1: all).
    pub top_p: f64,
    /// Subwords to generate at most (EOS ends a text earlier).
    pub max_len: usize,
    pub seed: u64,
}

/// The largest `max_len` of [`Sampling`].
pub const MAX_GENERATE_LEN: usize = 1000;

impl Sampling {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature <= 100.0) {
            bail!(
                "--temperature {}: must be between 0 and 100",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p {}: must be in (0, 1]", self.top_p);
        }
        if self.top_k > crate::prepare::MAX_VOCAB {
            bail!(
                "--top-k {}: must be at most {}",
                self.top_k,
                crate::prepare::MAX_VOCAB
            );
        }
        if !(1..=MAX_GENERATE_LEN).contains(&self.max_len) {
            bail!(
                "--max-len {}: must be between 1 and {MAX_GENERATE_LEN}",
                self.max_len
            );
        }
        Ok(())
    }
}

/// `n` continuations of `prompt`, each the prompt followed by sampled subwords until EOS
/// or `max_len`. The same seed gives the same texts.
pub fn generate(
    model: &LanguageModel,
    tokenizer: &SubwordModel,
    prompt: &str,
    n: usize,
    sampling: &Sampling,
    device: &Device,
) -> Result<Vec<String>> {
    sampling.validate()?;
    let prompt_ids = tokenizer.encode(prompt.trim())?;
    let (state, first) = read_context(model, &prompt_ids, device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(sampling.seed);
    let mut texts = Vec::with_capacity(n);
    for _ in 0..n {
        let mut ids = prompt_ids.clone();
        let mut state = state.clone();
        let mut log_probs = first.clone();
        for _ in 0..sampling.max_len {
            let id = draw(&log_probs, sampling, &mut rng);
            if id == EOS_ID {
                break;
            }
            ids.push(id);
            let (lp, next) = model.step(&state, &Tensor::new(&[id], device)?)?;
            state = next;
            log_probs = lp.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
        }
        texts.push(tokenizer.decode(&ids)?);
    }
    Ok(texts)
}

/// One id from the log-probabilities, after temperature, top-k and top-p.
fn draw(log_probs: &[f32], s: &Sampling, rng: &mut ChaCha8Rng) -> u32 {
    // PAD, UNK and BOS are never generated.
    let candidates = log_probs
        .iter()
        .enumerate()
        .filter(|(id, _)| *id as u32 == EOS_ID || *id >= crate::subword::SPECIAL_TOKENS.len());
    let mut v: Vec<(u32, f64)> = candidates
        .map(|(id, &x)| (id as u32, f64::from(x)))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if s.temperature == 0.0 {
        return v[0].0;
    }
    if s.top_k > 0 {
        v.truncate(s.top_k);
    }
    let max = v[0].1;
    let mut weights: Vec<f64> = v
        .iter()
        .map(|(_, x)| ((x - max) / s.temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = 0.0;
    let mut keep = weights.len();
    for (i, w) in weights.iter().enumerate() {
        cumulative += w / total;
        if cumulative >= s.top_p {
            keep = i + 1;
            break;
        }
    }
    weights.truncate(keep);
    let total: f64 = weights.iter().sum();
    let mut r = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if r < *w {
            return v[i].0;
        }
        r -= w;
    }
    v[keep - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-level subwords sort into word starts, continuations, the lone space (which a
    /// unigram model starts some words with) and the rest.
    #[test]
    fn vocabulary_pieces_are_classified() -> Result<()> {
        let text = [
            "Der Hund jagt die Katze.",
            "Die Katze jagte die Maus.",
            "Wir jagen.",
        ];
        for (kind, tokenizer) in crate::subword::tiny_models(&text)? {
            let pieces = classify_vocabulary(&tokenizer)?;
            let ids: Vec<u32> = (0..tokenizer.vocab_size() as u32).collect();
            let raw = tokenizer.tokens(&ids);
            let mut starts = 0;
            for (token, piece) in raw.iter().zip(&pieces) {
                let letters = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphabetic());
                let expected = match token.strip_prefix('Ġ') {
                    Some("") => Piece::Space,
                    Some(rest) if letters(rest) => Piece::WordStart,
                    None if letters(token) => Piece::Continuation,
                    None if token == "." || token == "</s>" => Piece::Other,
                    _ => continue,
                };
                assert_eq!(*piece, expected, "{kind:?}: {token}");
                starts += usize::from(expected == Piece::WordStart);
            }
            assert!(starts > 0 && pieces.contains(&Piece::Space), "{kind:?}");
        }
        Ok(())
    }

    fn sampling(temperature: f64, top_k: usize, top_p: f64) -> Sampling {
        Sampling {
            temperature,
            top_k,
            top_p,
            max_len: 10,
            seed: 1,
        }
    }

    /// ids 0..4 special (PAD, UNK, BOS, EOS), then 4 and 5 likely, 6 and 7 unlikely.
    fn log_probs() -> Vec<f32> {
        [0.0, 0.0, 0.0, 0.05, 0.5, 0.4, 0.03, 0.02]
            .iter()
            .map(|p: &f32| if *p == 0.0 { -1e9 } else { p.ln() })
            .collect()
    }

    #[test]
    fn sampling_respects_temperature_top_k_and_top_p() {
        let lp = log_probs();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        assert_eq!(draw(&lp, &sampling(0.0, 0, 1.0), &mut rng), 4);
        let counts = |s: &Sampling| {
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let mut c = [0usize; 8];
            for _ in 0..4000 {
                c[draw(&lp, s, &mut rng) as usize] += 1;
            }
            c
        };
        let top2 = counts(&sampling(1.0, 2, 1.0));
        assert_eq!(top2[4] + top2[5], 4000, "{top2:?}");
        // 0.5 / 0.9 of the draws go to id 4.
        assert!(
            (top2[4] as f64 / 4000.0 - 0.5 / 0.9).abs() < 0.03,
            "{top2:?}"
        );
        // top-p 0.8: ids 4 and 5 make 0.9 ≥ 0.8, id 4 alone only 0.5.
        let nucleus = counts(&sampling(1.0, 0, 0.8));
        assert_eq!(nucleus[4] + nucleus[5], 4000, "{nucleus:?}");
        let all = counts(&sampling(1.0, 0, 1.0));
        assert!(
            all[3] > 100 && all[6] > 50 && all[0..3] == [0, 0, 0],
            "{all:?}"
        );
        // A high temperature flattens the distribution.
        let hot = counts(&sampling(5.0, 0, 1.0));
        assert!(hot[7] > 2 * all[7], "{hot:?} vs {all:?}");
    }

    #[test]
    fn log_sum_exp_and_kth_largest() {
        let x = log_sum_exp([0.1f64.ln(), 0.2f64.ln(), 0.3f64.ln()].into_iter());
        assert!((x.exp() - 0.6).abs() < 1e-12);
        assert_eq!(log_sum_exp(std::iter::empty()), f64::NEG_INFINITY);
        assert_eq!(kth_largest([0.1, 0.5, 0.3].into_iter(), 2), 0.3);
        assert_eq!(kth_largest([0.1].into_iter(), 2), 0.0);
    }

    #[test]
    fn corpus_perplexity_weights_sentences_by_their_tokens() {
        let s = [
            SentenceScore {
                log_prob: -2.0,
                tokens: 1,
            },
            SentenceScore {
                log_prob: -6.0,
                tokens: 3,
            },
        ];
        assert!((corpus_perplexity(&s) - 2f64.exp()).abs() < 1e-12);
        assert!((s[1].perplexity() - 2f64.exp()).abs() < 1e-12);
    }
}
