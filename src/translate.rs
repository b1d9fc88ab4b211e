//! The [`Translator`]: loaded models with their tokenizers, turning lines of text into
//! translations through search.
//!
//! Every input line gives exactly one [`Translation`], in order. Empty and
//! whitespace-only lines give empty translations without running the model; lines longer
//! than [`TranslateOptions::max_input_len`] subwords are truncated with a warning. A
//! translator is immutable once built, so one can serve many threads at once; reading
//! input and writing output belong to its front ends (the command line).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::Serialize;

use crate::model::{load_model, Seq2Seq};
use crate::search::alignment::{hard_alignment, pharaoh, word_alignment, word_index};
use crate::search::shortlist::SHORTLIST_FILE;
use crate::search::{search, Ensemble, Hypothesis, SearchConfig, Shortlist, ShortlistSize};
use crate::subword::{SubwordModel, SOURCE_TOKENIZER, TARGET_TOKENIZER};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlignUnit {
    /// Whitespace-separated words of the input and the translation.
    Word,
    /// Subwords of the source and target tokenizers.
    Subword,
}

/// How a [`Translator`] searches; each default lives here once. `None` takes the
/// model's own value (its config.json: `decode_alpha`, `decode_beta`,
/// `max_decode_len_a`, `max_decode_len_b`).
#[derive(Clone, Debug, PartialEq)]
pub struct TranslateOptions {
    /// Beam size; 1 is greedy decoding.
    pub beam: usize,
    /// GNMT length normalisation α.
    pub alpha: Option<f32>,
    /// GNMT coverage penalty β.
    pub beta: Option<f32>,
    /// Translations returned per input, best first (at most `beam`).
    pub nbest: usize,
    /// Longest output: `a·|source subwords + 1| + b`.
    pub max_len_a: Option<f32>,
    pub max_len_b: Option<usize>,
    /// Longer inputs are cut to this many subwords (with a warning).
    pub max_input_len: usize,
    /// Sentences decoded together in one batch.
    pub batch_size: usize,
    /// Score only a lexical shortlist of this size (needs MODEL/shortlist.safetensors).
    pub shortlist: Option<ShortlistSize>,
    /// Hard alignments from attention, in these units.
    pub alignments: Option<AlignUnit>,
    /// Keep the attention matrix of each translation (for plots).
    pub keep_attention: bool,
}

impl TranslateOptions {
    pub const DEFAULT: Self = Self {
        beam: 5,
        alpha: None,
        beta: None,
        nbest: 1,
        max_len_a: None,
        max_len_b: None,
        max_input_len: 250,
        batch_size: 32,
        shortlist: None,
        alignments: None,
        keep_attention: false,
    };

    /// The search of these options over a model with config `cfg`.
    pub fn search_config(&self, cfg: &crate::model::ModelConfig) -> SearchConfig {
        SearchConfig {
            beam: self.beam,
            alpha: self.alpha.unwrap_or(cfg.decode_alpha),
            beta: self.beta.unwrap_or(cfg.decode_beta),
            nbest: self.nbest,
            max_len_a: self.max_len_a.unwrap_or(cfg.max_decode_len_a),
            max_len_b: self.max_len_b.unwrap_or(cfg.max_decode_len_b),
            keep_attention: self.alignments.is_some() || self.keep_attention,
        }
    }
}

impl Default for TranslateOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Loaded models with their tokenizers.
pub struct Translator {
    models: Vec<Seq2Seq>,
    source: SubwordModel,
    target: SubwordModel,
    device: Device,
    search: SearchConfig,
    max_input_len: usize,
    batch_size: usize,
    alignments: Option<AlignUnit>,
    /// Search over a lexical shortlist (see [`crate::search::shortlist`]).
    shortlist: Option<(Shortlist, ShortlistSize)>,
}

/// One input line, ready for search.
struct Prepared {
    ids: Option<Vec<u32>>,
}

/// The translation of one input line.
#[derive(Clone, Debug, Serialize)]
pub struct Translation {
    pub translation: String,
    pub score: f32,
    pub log_prob: f32,
    pub nbest: Vec<NbestEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alignment: Option<String>,
    /// Source and target pieces with the attention matrix, for plots.
    #[serde(skip)]
    pub attention: Option<AttentionMatrix>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NbestEntry {
    pub translation: String,
    pub score: f32,
    pub log_prob: f32,
}

#[derive(Clone, Debug)]
pub struct AttentionMatrix {
    pub source: Vec<String>,
    pub target: Vec<String>,
    /// `weights[j][i]`: attention of target step j on source position i.
    pub weights: Vec<Vec<f32>>,
}

impl Translator {
    /// Loads every model folder (several: an ensemble, whose members must use the same
    /// tokenizer files) and, with `options.shortlist`, the first folder's shortlist.
    pub fn new(dirs: &[PathBuf], device: &Device, options: &TranslateOptions) -> Result<Self> {
        let Some(first) = dirs.first() else {
            bail!("no model to load");
        };
        let source = SubwordModel::load(&first.join(SOURCE_TOKENIZER))?;
        let target = SubwordModel::load(&first.join(TARGET_TOKENIZER))?;
        let mut models = Vec::with_capacity(dirs.len());
        for dir in dirs {
            for file in [SOURCE_TOKENIZER, TARGET_TOKENIZER] {
                let read = |d: &Path| {
                    std::fs::read(d.join(file))
                        .with_context(|| format!("reading {}", d.join(file).display()))
                };
                if dir != first && read(dir)? != read(first)? {
                    bail!(
                        "ensemble: {} differs from {}; the members of an ensemble must share their tokenizers",
                        dir.join(file).display(),
                        first.join(file).display()
                    );
                }
            }
            let (model, _) = load_model(dir, device)?;
            models.push(model);
        }
        let search = options.search_config(models[0].config());
        search.validate()?;
        if options.max_input_len == 0 {
            bail!("the input length limit (--max-input-len) must be at least 1");
        }
        if options.batch_size == 0 {
            bail!("the batch size (--batch-size) must be at least 1");
        }
        let shortlist = match options.shortlist {
            Some(size) => {
                let cfg = models[0].config();
                Some((load_shortlist(first, cfg)?, size))
            }
            None => None,
        };
        Ok(Self {
            models,
            source,
            target,
            device: device.clone(),
            search,
            max_input_len: options.max_input_len,
            batch_size: options.batch_size,
            alignments: options.alignments,
            shortlist,
        })
    }

    /// The search every call of [`Self::translate`] runs.
    pub fn search_config(&self) -> &SearchConfig {
        &self.search
    }

    pub fn source_tokenizer(&self) -> &SubwordModel {
        &self.source
    }

    pub fn target_tokenizer(&self) -> &SubwordModel {
        &self.target
    }

    /// Translates `lines` (named `line N` in warnings, N = `first_line` + index), in
    /// batches of sentences of similar length.
    pub fn translate(&self, lines: &[String], first_line: usize) -> Result<Vec<Translation>> {
        let (batch_size, align) = (self.batch_size, self.alignments);
        let prepared = self.prepare(lines, first_line)?;
        let mut order: Vec<usize> = (0..lines.len())
            .filter(|&i| prepared[i].ids.is_some())
            .collect();
        order.sort_by_key(|&i| prepared[i].ids.as_ref().map_or(0, Vec::len));
        let mut ens = Ensemble::new(self.models.iter().collect())?;
        if let Some((list, size)) = &self.shortlist {
            ens = ens.with_shortlist(list, *size);
        }
        let mut out: Vec<Option<Translation>> = vec![None; lines.len()];
        for batch in order.chunks(batch_size) {
            let sources: Vec<Vec<u32>> = batch
                .iter()
                .map(|&i| prepared[i].ids.clone().expect("non-empty line"))
                .collect();
            let results = search(&ens, &sources, &self.search, &self.device)?;
            for ((&i, src), nbest) in batch.iter().zip(&sources).zip(results) {
                out[i] = Some(self.finish(src, nbest, align)?);
            }
        }
        Ok(out
            .into_iter()
            .map(|t| t.unwrap_or_else(empty_translation))
            .collect())
    }

    fn prepare(&self, lines: &[String], first_line: usize) -> Result<Vec<Prepared>> {
        let texts: Vec<&str> = lines.iter().map(|l| l.trim()).collect();
        let encoded = self.source.encode_batch(&texts)?;
        Ok(texts
            .iter()
            .zip(encoded)
            .enumerate()
            .map(|(i, (text, mut ids))| {
                if text.is_empty() {
                    return Prepared { ids: None };
                }
                if ids.len() > self.max_input_len {
                    eprintln!(
                        "warning: line {}: {} subwords, more than the limit of {}; translating only the first {}",
                        first_line + i,
                        ids.len(),
                        self.max_input_len,
                        self.max_input_len
                    );
                    ids.truncate(self.max_input_len);
                }
                Prepared { ids: Some(ids) }
            })
            .collect())
    }

    fn finish(
        &self,
        src: &[u32],
        nbest: Vec<Hypothesis>,
        align: Option<AlignUnit>,
    ) -> Result<Translation> {
        let texts: Vec<&[u32]> = nbest.iter().map(|h| h.tokens.as_slice()).collect();
        // A newline in a translation would break the one-line-per-input rule.
        let decoded: Vec<String> = self
            .target
            .decode_batch(&texts)?
            .into_iter()
            .map(|t| t.replace(['\n', '\r'], " "))
            .collect();
        let best = &nbest[0];
        let mut alignment = None;
        let mut attention = None;
        if let Some(weights) = &best.attention {
            let src_pieces = self.pieces(&self.source, src);
            let tgt_pieces = self.pieces(&self.target, &best.tokens);
            let mut pairs = hard_alignment(weights, src.len(), best.tokens.len());
            if align == Some(AlignUnit::Word) {
                pairs = word_alignment(&pairs, &word_index(&src_pieces), &word_index(&tgt_pieces));
            }
            if align.is_some() {
                alignment = Some(pharaoh(&pairs));
            }
            let mut source = src_pieces;
            source.push(crate::subword::EOS.to_string());
            let mut target = tgt_pieces;
            if best.ended {
                target.push(crate::subword::EOS.to_string());
            }
            attention = Some(AttentionMatrix {
                source,
                target,
                weights: weights.clone(),
            });
        }
        Ok(Translation {
            translation: decoded[0].clone(),
            score: best.score,
            log_prob: best.log_prob,
            nbest: nbest
                .iter()
                .zip(decoded)
                .map(|(h, translation)| NbestEntry {
                    translation,
                    score: h.score,
                    log_prob: h.log_prob,
                })
                .collect(),
            alignment,
            attention,
        })
    }

    /// The text of each subword on its own (byte-level pieces of a multi-byte character
    /// show as replacement characters).
    fn pieces(&self, tokenizer: &SubwordModel, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&id| {
                tokenizer
                    .decode(&[id])
                    .unwrap_or_else(|_| tokenizer.tokens(&[id]).concat())
            })
            .collect()
    }
}

fn empty_translation() -> Translation {
    Translation {
        translation: String::new(),
        score: 0.0,
        log_prob: 0.0,
        nbest: Vec::new(),
        alignment: None,
        attention: None,
    }
}

/// The shortlist of model folder `dir`, for a model with config `cfg`.
fn load_shortlist(dir: &Path, cfg: &crate::model::ModelConfig) -> Result<Shortlist> {
    let path = dir.join(SHORTLIST_FILE);
    if !path.exists() {
        bail!(
            "{} does not exist; learn one with `rnmt shortlist -m {} --train PREFIX --src-lang S --tgt-lang T`",
            path.display(),
            dir.display()
        );
    }
    Shortlist::load(&path, cfg.src_vocab_size, cfg.tgt_vocab_size)
}

#[cfg(test)]
mod tests {
    /// The server translates on many threads with one translator.
    #[test]
    fn translator_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::Translator>();
    }
}
