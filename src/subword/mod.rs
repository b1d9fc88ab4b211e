//! Subword models: learning, loading and applying Hugging Face `tokenizer.json` files.
//!
//! Every model rnmt learns is byte-level (GPT-2 style pre-tokenisation and decoding):
//! any input string maps to ids without `<unk>` and `decode(encode(s)) == s` holds for
//! every line, which a character-level vocabulary with unknown characters cannot promise.
//! The files load unchanged in Python's `tokenizers` (`Tokenizer.from_file`).

mod sampling;

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::unigram::{Unigram, UnigramTrainerBuilder};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

pub(crate) use sampling::log_sum_exp;
pub use sampling::SubwordSampling;

/// Special tokens and their fixed ids, the same in every vocabulary rnmt writes.
pub const PAD: &str = "<pad>";
pub const UNK: &str = "<unk>";
pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";
pub const PAD_ID: u32 = 0;
pub const UNK_ID: u32 = 1;
pub const BOS_ID: u32 = 2;
pub const EOS_ID: u32 = 3;
pub const SPECIAL_TOKENS: [&str; 4] = [PAD, UNK, BOS, EOS];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubwordKind {
    Bpe,
    Unigram,
}

/// How to learn a subword model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SubwordConfig {
    pub kind: SubwordKind,
    pub vocab_size: usize,
    /// BPE only: merges seen fewer times are not learned.
    pub min_frequency: u64,
}

/// A loaded subword model with rnmt's special tokens at their fixed ids.
#[derive(Clone)]
pub struct SubwordModel {
    tokenizer: Tokenizer,
}

impl SubwordModel {
    /// Learns a model from sentences.
    pub fn learn<'a>(
        config: &SubwordConfig,
        sentences: impl Iterator<Item = &'a str> + Send,
    ) -> anyhow::Result<Self> {
        let specials: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        let alphabet = ByteLevel::alphabet();
        let (model, mut trainer): (tokenizers::ModelWrapper, TrainerWrapper) = match config.kind {
            SubwordKind::Bpe => (
                BPE::default().into(),
                BpeTrainerBuilder::new()
                    .vocab_size(config.vocab_size)
                    .min_frequency(config.min_frequency)
                    .special_tokens(specials)
                    .initial_alphabet(alphabet.into_iter().collect())
                    .show_progress(false)
                    .build()
                    .into(),
            ),
            SubwordKind::Unigram => (
                Unigram::default().into(),
                UnigramTrainerBuilder::default()
                    .vocab_size(config.vocab_size as u32)
                    .special_tokens(specials)
                    .initial_alphabet(alphabet)
                    .unk_token(Some(UNK.to_string()))
                    .show_progress(false)
                    .build()
                    .context("configuring the unigram trainer")?
                    .into(),
            ),
        };
        let mut tokenizer = Tokenizer::new(model);
        // No prefix space: the first word keeps its exact bytes, so decoding is lossless.
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        tokenizer
            .train(&mut trainer, sentences)
            .map_err(|e| anyhow::anyhow!("learning the subword model: {e}"))?;
        let model = Self { tokenizer };
        model
            .check_specials()
            .context("the learned subword model")?;
        Ok(model)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("cannot load subword model {}: {e}", path.display()))?;
        let model = Self { tokenizer };
        model
            .check_specials()
            .with_context(|| format!("subword model {}", path.display()))?;
        Ok(model)
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let json = self
            .tokenizer
            .to_string(true)
            .map_err(|e| anyhow::anyhow!("serialising the subword model: {e}"))?;
        crate::io::write_atomic(path, json.as_bytes())
    }

    fn check_specials(&self) -> anyhow::Result<()> {
        for (id, token) in SPECIAL_TOKENS.iter().enumerate() {
            if self.tokenizer.token_to_id(token) != Some(id as u32) {
                bail!("special token {token} must have id {id}");
            }
        }
        Ok(())
    }

    /// Subword ids of a sentence, without BOS/EOS.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| anyhow::anyhow!("encoding {text:?}: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Encodes many sentences in parallel.
    pub fn encode_batch(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<u32>>> {
        let encodings = self
            .tokenizer
            .encode_batch_fast(texts.to_vec(), false)
            .map_err(|e| anyhow::anyhow!("encoding: {e}"))?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Text of ids; special tokens are skipped.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("decoding: {e}"))
    }

    /// Decodes many sentences in parallel.
    pub fn decode_batch(&self, ids: &[&[u32]]) -> anyhow::Result<Vec<String>> {
        self.tokenizer
            .decode_batch(ids, true)
            .map_err(|e| anyhow::anyhow!("decoding: {e}"))
    }

    /// Subword strings of ids (for alignments and plots).
    pub fn tokens(&self, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&id| {
                self.tokenizer
                    .id_to_token(id)
                    .unwrap_or_else(|| UNK.to_string())
            })
            .collect()
    }

    /// This model's segmentation with BPE-dropout `p`, for training (BPE models).
    pub fn bpe_dropout(&self, p: f32) -> anyhow::Result<SubwordSampling> {
        SubwordSampling::bpe_dropout(self, p)
    }

    /// This model's segmentation sampled with smoothing `alpha`, for training (unigram
    /// models).
    pub fn unigram_sampling(&self, alpha: f64) -> anyhow::Result<SubwordSampling> {
        SubwordSampling::unigram(self, alpha)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

/// File names of the source and target subword models in a prepared or model folder.
pub const SOURCE_TOKENIZER: &str = "tokenizer-src.json";
pub const TARGET_TOKENIZER: &str = "tokenizer-tgt.json";
/// The one tokenizer of a language model (and of a monolingual prepared folder).
pub const LM_TOKENIZER: &str = "tokenizer.json";

/// A BPE and a unigram model of 300 subwords learnt from `text`, for tests.
#[cfg(test)]
pub(crate) fn tiny_models(text: &[&str]) -> anyhow::Result<Vec<(SubwordKind, SubwordModel)>> {
    [SubwordKind::Bpe, SubwordKind::Unigram]
        .into_iter()
        .map(|kind| {
            let cfg = SubwordConfig {
                kind,
                vocab_size: 300,
                min_frequency: 1,
            };
            Ok((kind, SubwordModel::learn(&cfg, text.iter().copied())?))
        })
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_lossless_model_with_fixed_special_ids() {
        let text = [
            "Der Hund jagt die Katze.",
            "Grüß Gott, Straße!",
            "„Zitat“ – 1.000,50 €",
            "  zwei  Leerzeichen ",
        ];
        for (kind, model) in tiny_models(&text).unwrap() {
            for s in text.iter().chain(&["unseen: 日本語 ✓ \t tab"]) {
                let ids = model.encode(s).unwrap();
                assert!(!ids.contains(&UNK_ID), "{kind:?}: {s:?} has <unk>");
                assert_eq!(&model.decode(&ids).unwrap(), s, "{kind:?}");
            }
            assert_eq!(model.tokenizer.token_to_id(EOS), Some(EOS_ID));
        }
    }
}
