//! The [`Translator`]: loaded models with their tokenizers, turning lines of text into
//! translations through search.
//!
//! Every input segment gives exactly one [`Translation`], in order. Empty and
//! whitespace-only segments give empty translations without running the model; a segment
//! longer than [`TranslateOptions::max_input_len`] subwords is cut at clause boundaries
//! (then between words) into parts translated on their own and joined, so no text is
//! dropped. [`Translator::translate_lines`] first splits each line into its sentences
//! ([`crate::text`]), and [`Translator::translate_texts`] does the same for whole texts in
//! HTML or Markdown. A translator is immutable once built, so one can serve many threads
//! at once; reading input and writing output belong to its front ends (the command line,
//! the server).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, ensure, Context, Result};
use candle_core::Device;
use serde::Serialize;

use crate::model::{check_vocab_sizes, load_model_without_tokenizers, model_file, Seq2Seq};
use crate::search::alignment::{hard_alignment, pharaoh, word_alignment, word_index};
use crate::search::shortlist::SHORTLIST_FILE;
use crate::search::{
    search_with_prefixes, Ensemble, Hypothesis, SearchConfig, Shortlist, ShortlistSize,
};
use crate::subword::{SubwordModel, SOURCE_TOKENIZER, TARGET_TOKENIZER};
use crate::text::{
    clause_cuts, word_cuts, Segmented, SentenceTranslation, SplitOptions, TextFormat,
};

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
    /// Batches searched at once, each on `threads / batch_workers` threads of its own
    /// (0: one single-threaded worker per thread on the CPU, one on a GPU).
    pub batch_workers: usize,
    /// Score only a lexical shortlist of this size (needs MODEL/shortlist.safetensors).
    pub shortlist: Option<ShortlistSize>,
    /// Hard alignments from attention, in these units.
    pub alignments: Option<AlignUnit>,
    /// Keep the attention matrix of each translation (for plots).
    pub keep_attention: bool,
    /// Split lines and texts into sentences before translating them (`false`: a line is
    /// one segment, as given).
    pub split: bool,
    /// Compute the output layer and the recurrent (LSTM, GRU) layers' products in int8 (see
    /// [`crate::model::int8_matmul`]): faster, and results may differ from f32 search. The
    /// CPU only.
    pub int8: bool,
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
        batch_workers: 0,
        shortlist: None,
        alignments: None,
        keep_attention: false,
        split: true,
        int8: false,
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
    /// Batches searched at once ([`TranslateOptions::batch_workers`], resolved).
    batch_workers: usize,
    alignments: Option<AlignUnit>,
    /// Search over a lexical shortlist (see [`crate::search::shortlist`]).
    shortlist: Option<(Shortlist, ShortlistSize)>,
    split: SplitOptions,
}

/// A piece of an input segment ready for search: the whole segment, or one part of a
/// segment too long to translate at once.
struct Part {
    segment: usize,
    ids: Vec<u32>,
    /// Target subwords its output must start with (the segment's prefix, on its first
    /// part only).
    prefix: Vec<u32>,
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
    /// (source word, target word) pairs from attention, words being whitespace-separated;
    /// empty unless attention was kept.
    #[serde(skip)]
    pub word_alignment: Vec<(usize, usize)>,
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
        // The tokenizers load on a thread of their own while the models load: each is
        // about a third of a one-sentence `rnmt translate`.
        let (tokenizers, models) = std::thread::scope(|scope| {
            let tokenizers = scope.spawn(|| -> Result<_> {
                Ok((
                    SubwordModel::load(&model_file(first, SOURCE_TOKENIZER))?,
                    SubwordModel::load(&model_file(first, TARGET_TOKENIZER))?,
                ))
            });
            let models = Self::load_models(dirs, device);
            let tokenizers = tokenizers
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (tokenizers, models)
        });
        let (source, target) = tokenizers?;
        let mut models = models?;
        if options.int8 {
            if !device.is_cpu() {
                bail!("--int8 runs on the CPU only (not with --device {device:?})");
            }
            for model in &mut models {
                model.quantize_int8()?;
            }
        }
        // Every member's tokenizers are the first's (checked in `load_models`).
        let sizes = [source.vocab_size(), target.vocab_size()];
        for (dir, model) in dirs.iter().zip(&models) {
            check_vocab_sizes(dir, model.config(), sizes)?;
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
        let lang = models[0].config().src_lang.clone().unwrap_or_else(|| {
            eprintln!(
                "warning: {} names no source language (src_lang); splitting sentences by English rules",
                first.join(crate::model::CONFIG_FILE).display()
            );
            "en".to_string()
        });
        Ok(Self {
            models,
            source,
            target,
            device: device.clone(),
            search,
            max_input_len: options.max_input_len,
            batch_size: options.batch_size,
            batch_workers: crate::device::batch_workers(options.batch_workers, device),
            alignments: options.alignments,
            shortlist,
            split: SplitOptions {
                lang,
                split: options.split,
            },
        })
    }

    /// The models of `dirs` (an ensemble when several), whose tokenizer files must all be
    /// the first's.
    fn load_models(dirs: &[PathBuf], device: &Device) -> Result<Vec<Seq2Seq>> {
        let first = &dirs[0];
        let read = |d: &Path, file: &str| {
            let path = model_file(d, file);
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        // The first member's tokenizer files, read once to compare the others with.
        let first_files = if dirs.len() > 1 {
            vec![
                read(first, SOURCE_TOKENIZER)?,
                read(first, TARGET_TOKENIZER)?,
            ]
        } else {
            Vec::new()
        };
        let mut models = Vec::with_capacity(dirs.len());
        for dir in dirs {
            for (file, first_bytes) in [SOURCE_TOKENIZER, TARGET_TOKENIZER]
                .iter()
                .zip(&first_files)
            {
                if dir != first && read(dir, file)? != *first_bytes {
                    bail!(
                        "ensemble: {} differs from {}; the members of an ensemble must share their tokenizers",
                        model_file(dir, file).display(),
                        model_file(first, file).display()
                    );
                }
            }
            models.push(load_model_without_tokenizers(dir, device)?.0);
        }
        Ok(models)
    }

    /// The source and target language codes of the (first) model, where its config.json
    /// names them.
    pub fn languages(&self) -> (Option<&str>, Option<&str>) {
        let cfg = self.models[0].config();
        (cfg.src_lang.as_deref(), cfg.tgt_lang.as_deref())
    }

    /// The search every call of [`Self::translate`] runs.
    pub fn search_config(&self) -> &SearchConfig {
        &self.search
    }

    /// The device the search runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn source_tokenizer(&self) -> &SubwordModel {
        &self.source
    }

    pub fn target_tokenizer(&self) -> &SubwordModel {
        &self.target
    }

    /// Translates each of `segments` as one segment (named `line N` in warnings, N =
    /// `first_line` + index), in batches of sentences of similar length.
    pub fn translate(&self, segments: &[String], first_line: usize) -> Result<Vec<Translation>> {
        self.translate_segments(segments, &[], &|i| first_line + i, false)
    }

    /// [`Self::translate`], with word alignments (`Translation::word_alignment`) whether or
    /// not the options asked for them: what [`Self::assemble`] needs for inline markup.
    pub fn translate_aligned(
        &self,
        segments: &[String],
        first_line: usize,
    ) -> Result<Vec<Translation>> {
        self.translate_segments(segments, &[], &|i| first_line + i, true)
    }

    /// Translates each of `lines` whole (not cut into sentences: the prefix is the
    /// start of the line's whole output), every output of line `i` starting with the
    /// target text `prefixes[i]` (interactive translation, auto-completion). The
    /// translation and each n-best entry include the prefix; an empty prefix gives
    /// exactly [`Self::translate`]'s result.
    pub fn translate_with_prefixes(
        &self,
        lines: &[String],
        prefixes: &[String],
        first_line: usize,
    ) -> Result<Vec<Translation>> {
        ensure!(
            prefixes.len() == lines.len(),
            "{} prefixes for {} lines",
            prefixes.len(),
            lines.len()
        );
        self.translate_segments(lines, prefixes, &|i| first_line + i, false)
    }

    /// `prefixes` (target text, one per segment, or none at all) start the outputs.
    fn translate_segments(
        &self,
        segments: &[String],
        prefixes: &[String],
        line_of: &dyn Fn(usize) -> usize,
        aligned: bool,
    ) -> Result<Vec<Translation>> {
        let mut search_config = self.search.clone();
        search_config.keep_attention |= aligned;
        let mut parts = self.prepare(segments, line_of)?;
        if !prefixes.is_empty() {
            let mut seen = vec![false; segments.len()];
            for part in &mut parts {
                if !std::mem::replace(&mut seen[part.segment], true) {
                    part.prefix = self.target.encode(prefixes[part.segment].trim())?;
                    // Every prefix subword is a forced decoder step: bounded as inputs are.
                    ensure!(
                        part.prefix.len() <= self.max_input_len,
                        "line {}: the prefix has {} subwords, more than the limit of {} (--max-input-len)",
                        line_of(part.segment),
                        part.prefix.len(),
                        self.max_input_len
                    );
                }
            }
        }
        let mut order: Vec<usize> = (0..parts.len()).collect();
        order.sort_by_key(|&i| parts[i].ids.len());
        let mut ens = Ensemble::new(self.models.iter().collect())?;
        if let Some((list, size)) = &self.shortlist {
            ens = ens.with_shortlist(list, *size);
        }
        let search = |batch: &[usize]| -> Result<Vec<(usize, Translation)>> {
            let sources: Vec<Vec<u32>> = batch.iter().map(|&i| parts[i].ids.clone()).collect();
            let prefixes: Vec<Vec<u32>> = batch.iter().map(|&i| parts[i].prefix.clone()).collect();
            let results =
                search_with_prefixes(&ens, &sources, &prefixes, &search_config, &self.device)?;
            batch
                .iter()
                .zip(&sources)
                .zip(results)
                .map(|((&i, src), nbest)| Ok((i, self.finish(src, nbest, self.alignments)?)))
                .collect()
        };
        let batches: Vec<&[usize]> = order.chunks(self.batch_size).collect();
        let mut done: Vec<Option<Translation>> = vec![None; parts.len()];
        for (i, t) in self
            .search_batches(&batches, &search)?
            .into_iter()
            .flatten()
        {
            done[i] = Some(t);
        }
        // The parts of each segment, in order, joined again.
        let mut per_segment: Vec<Vec<Translation>> = vec![Vec::new(); segments.len()];
        for (part, t) in parts.iter().zip(done) {
            per_segment[part.segment].push(t.expect("every part was searched"));
        }
        Ok(per_segment
            .into_iter()
            .map(|p| join_translations(p, " ", self.alignments))
            .collect())
    }

    /// `search` over every batch, results in the batches' order. With several workers (on
    /// the CPU) that many batches are searched at once, each worker on a thread pool of
    /// its own (`threads / workers` threads), taking the next batch when it is done, as
    /// Marian runs one translation per CPU thread: a batch runs faster on one thread than
    /// split over two (`rnmt translate --batch-workers 1` vs the default, README). The
    /// translations are the same either way: a batch's search does not depend on how many
    /// threads run it.
    fn search_batches<T: Send>(
        &self,
        batches: &[&[usize]],
        search: &(dyn Fn(&[usize]) -> Result<T> + Sync),
    ) -> Result<Vec<T>> {
        let workers = self.batch_workers.min(batches.len());
        if workers <= 1 {
            return batches.iter().map(|b| search(b)).collect();
        }
        let pools = crate::device::worker_pools(workers, "search")?;
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<Result<T>>>> =
            batches.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| -> Result<()> {
            let handles: Vec<_> = pools
                .iter()
                .map(|pool| {
                    scope.spawn(|| -> Result<()> {
                        pool.install(|| loop {
                            let b = next.fetch_add(1, Ordering::SeqCst);
                            let Some(batch) = batches.get(b) else { break };
                            let result = search(batch);
                            let failed = result.is_err();
                            *slots[b].lock().expect("no worker panics holding a slot") =
                                Some(result);
                            if failed {
                                // The others take no new batch: the call fails anyway.
                                next.store(batches.len(), Ordering::SeqCst);
                            }
                        });
                        Ok(())
                    })
                })
                .collect();
            // Every worker is joined before any error is returned: the scope would panic
            // on a panicked worker left unjoined.
            let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
            for result in joined {
                result.map_err(|_| anyhow::anyhow!("a search worker panicked"))??;
            }
            Ok(())
        })?;
        // Batches are taken in order, so the first one without a result comes after the
        // first failure, which is returned before it.
        slots
            .into_iter()
            .map(
                |slot| match slot.into_inner().expect("no worker panics holding a slot") {
                    Some(result) => result,
                    None => bail!("a batch was not searched"),
                },
            )
            .collect()
    }

    /// Translates `lines`, each cut into its sentences first (unless the options say
    /// not to): one translation per line, its sentences joined with the whitespace that
    /// separated them. Scores add up over the sentences; alignments count words across
    /// the whole line.
    pub fn translate_lines(&self, lines: &[String], first_line: usize) -> Result<Vec<Translation>> {
        if !self.split.split {
            return self.translate(lines, first_line);
        }
        let segmented: Vec<Segmented> = lines
            .iter()
            .map(|l| self.segment(l, TextFormat::Text))
            .collect();
        let per_line = self.translate_segmented(&segmented, first_line, false)?;
        let mut out = Vec::with_capacity(lines.len());
        for (seg, parts) in segmented.iter().zip(per_line) {
            let text = self.assemble(seg, &parts);
            let mut t = join_translations(parts, " ", self.alignments);
            // The line's own whitespace between sentences, kept; around it, trimmed as
            // translations always were.
            t.translation = text.trim().to_string();
            if let [only] = t.nbest.as_mut_slice() {
                only.translation = t.translation.clone();
            }
            out.push(t);
        }
        Ok(out)
    }

    /// Cuts `text` into the sentences to translate, by the model's source language
    /// (and the options' `split`), with its layout and markup kept aside.
    pub fn segment(&self, text: &str, format: TextFormat) -> Segmented {
        Segmented::new(text, format, &self.split)
    }

    /// `seg`'s text with `translations` (of `seg.sentences()`, in order, from
    /// [`Self::translate_aligned`] where `seg.needs_alignment()`) in place.
    pub fn assemble(&self, seg: &Segmented, translations: &[Translation]) -> String {
        let parts: Vec<SentenceTranslation> = translations
            .iter()
            .map(|t| SentenceTranslation {
                text: &t.translation,
                alignment: &t.word_alignment,
            })
            .collect();
        seg.assemble(&parts)
    }

    /// Translates whole texts (plain, HTML or Markdown) with their layout and markup
    /// kept; the sentences of all texts are batched together. Warnings name a text by
    /// its 1-based index.
    pub fn translate_texts(&self, texts: &[&str], format: TextFormat) -> Result<Vec<String>> {
        let segmented: Vec<Segmented> = texts.iter().map(|t| self.segment(t, format)).collect();
        let aligned = segmented.iter().any(Segmented::needs_alignment);
        let per_text = self.translate_segmented(&segmented, 1, aligned)?;
        Ok(segmented
            .iter()
            .zip(per_text)
            .map(|(seg, parts)| self.assemble(seg, &parts))
            .collect())
    }

    /// The translations of the sentences of each of `segmented`, all batched together;
    /// warnings name the text (or line) by number, the first being `first_number`.
    fn translate_segmented(
        &self,
        segmented: &[Segmented],
        first_number: usize,
        aligned: bool,
    ) -> Result<Vec<Vec<Translation>>> {
        let mut sentences = Vec::new();
        let mut origin = Vec::new();
        for (i, seg) in segmented.iter().enumerate() {
            sentences.extend(seg.sentences().iter().cloned());
            origin.extend(std::iter::repeat_n(first_number + i, seg.sentences().len()));
        }
        let mut translations = self
            .translate_segments(&sentences, &[], &|i| origin[i], aligned)?
            .into_iter();
        Ok(segmented
            .iter()
            .map(|seg| translations.by_ref().take(seg.sentences().len()).collect())
            .collect())
    }

    fn prepare(&self, segments: &[String], line_of: &dyn Fn(usize) -> usize) -> Result<Vec<Part>> {
        let texts: Vec<&str> = segments.iter().map(|l| l.trim()).collect();
        let encoded = self.source.encode_batch(&texts)?;
        let mut parts = Vec::with_capacity(texts.len());
        for (segment, (text, ids)) in texts.iter().zip(encoded).enumerate() {
            if text.is_empty() {
                continue;
            }
            if ids.len() <= self.max_input_len {
                parts.push(Part {
                    segment,
                    ids,
                    prefix: Vec::new(),
                });
                continue;
            }
            let pieces = self.cut(text)?;
            eprintln!(
                "warning: line {}: {} subwords, more than the limit of {} (--max-input-len); translated in {} parts cut at {}",
                line_of(segment),
                ids.len(),
                self.max_input_len,
                pieces.len(),
                if clause_cuts(text).is_empty() { "word boundaries" } else { "clause boundaries" },
            );
            parts.extend(pieces.into_iter().map(|ids| Part {
                segment,
                ids,
                prefix: Vec::new(),
            }));
        }
        Ok(parts)
    }

    /// `text`, too long to translate at once, as the encodings of consecutive parts of at
    /// most `max_input_len` subwords each: cut at clause boundaries where they suffice,
    /// then between words, and a word longer than the limit on its own into pieces of
    /// subwords.
    fn cut(&self, text: &str) -> Result<Vec<Vec<u32>>> {
        let mut out = Vec::new();
        let mut pieces = split_at(text, &clause_cuts(text));
        pieces.reverse();
        // Greedily join consecutive pieces while they fit.
        let mut current = String::new();
        while let Some(piece) = pieces.pop() {
            let joined = if current.is_empty() {
                piece.to_string()
            } else {
                format!("{current} {piece}")
            };
            if self.source.encode(&joined)?.len() <= self.max_input_len {
                current = joined;
                continue;
            }
            if !current.is_empty() {
                out.push(self.source.encode(&current)?);
                current = String::new();
                pieces.push(piece);
                continue;
            }
            // A single piece over the limit: between its words, or else by subwords.
            let words = split_at(piece, &word_cuts(piece));
            if words.len() > 1 {
                pieces.extend(words.into_iter().rev());
            } else {
                let ids = self.source.encode(piece)?;
                out.extend(ids.chunks(self.max_input_len).map(<[u32]>::to_vec));
            }
        }
        if !current.is_empty() {
            out.push(self.source.encode(&current)?);
        }
        Ok(out)
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
        let mut word_pairs = Vec::new();
        let mut attention = None;
        if let Some(weights) = &best.attention {
            let src_pieces = self.pieces(&self.source, src);
            let tgt_pieces = self.pieces(&self.target, &best.tokens);
            let pairs = hard_alignment(weights, src.len(), best.tokens.len());
            word_pairs = word_alignment(&pairs, &word_index(&src_pieces), &word_index(&tgt_pieces));
            match align {
                Some(AlignUnit::Word) => alignment = Some(pharaoh(&word_pairs)),
                Some(AlignUnit::Subword) => alignment = Some(pharaoh(&pairs)),
                None => {}
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
            word_alignment: word_pairs,
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
        word_alignment: Vec::new(),
        attention: None,
    }
}

/// `text` cut at byte offsets `cuts`, each part trimmed.
fn split_at<'a>(text: &'a str, cuts: &[usize]) -> Vec<&'a str> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&text.len())) {
        let piece = text[start..c].trim();
        if !piece.is_empty() {
            out.push(piece);
        }
        start = c;
    }
    out
}

/// One translation of the parts of a segment (or the sentences of a line), joined with
/// `sep`: scores add up, word alignments (and, with `pharaoh`, the alignment string)
/// count words across the parts, the n-best list pairs the k-th of every part, and the
/// attention matrix is the first part's.
fn join_translations(parts: Vec<Translation>, sep: &str, unit: Option<AlignUnit>) -> Translation {
    let mut parts = parts.into_iter();
    let Some(first) = parts.next() else {
        return empty_translation();
    };
    let rest: Vec<Translation> = parts.collect();
    if rest.is_empty() {
        return first;
    }
    let all: Vec<&Translation> = std::iter::once(&first).chain(&rest).collect();
    let join = |f: &dyn Fn(&Translation) -> String| {
        all.iter()
            .map(|t| f(t))
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(sep)
    };
    let translation = join(&|t| t.translation.clone());
    let mut word_alignment = Vec::new();
    let mut subword_alignment = Vec::new();
    let (mut src_off, mut tgt_off) = (0, 0);
    let (mut src_sub, mut tgt_sub) = (0, 0);
    for t in &all {
        if let (Some(a), Some(AlignUnit::Subword)) = (&t.attention, unit) {
            for (i, j) in parse_pharaoh(t.alignment.as_deref().unwrap_or("")) {
                subword_alignment.push((i + src_sub, j + tgt_sub));
            }
            let eos = |p: &Vec<String>| {
                p.iter()
                    .filter(|x| x.as_str() != crate::subword::EOS)
                    .count()
            };
            src_sub += eos(&a.source);
            tgt_sub += eos(&a.target);
        }
        word_alignment.extend(
            t.word_alignment
                .iter()
                .map(|&(i, j)| (i + src_off, j + tgt_off)),
        );
        let source_words = t
            .word_alignment
            .iter()
            .map(|&(i, _)| i + 1)
            .max()
            .unwrap_or(0);
        src_off += t
            .attention
            .as_ref()
            .map_or(source_words, |a| word_count(&a.source));
        tgt_off += t.translation.split_whitespace().count();
    }
    let depth = all.iter().map(|t| t.nbest.len()).max().unwrap_or(0);
    let nbest = (0..depth)
        .map(|k| {
            let pick = |t: &Translation| t.nbest.get(k).or(t.nbest.first()).cloned();
            let entries: Vec<NbestEntry> = all.iter().filter_map(|t| pick(t)).collect();
            NbestEntry {
                translation: entries
                    .iter()
                    .map(|e| e.translation.as_str())
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(sep),
                score: entries.iter().map(|e| e.score).sum(),
                log_prob: entries.iter().map(|e| e.log_prob).sum(),
            }
        })
        .collect();
    Translation {
        translation,
        score: all.iter().map(|t| t.score).sum(),
        log_prob: all.iter().map(|t| t.log_prob).sum(),
        nbest,
        alignment: match unit {
            Some(AlignUnit::Word) => Some(pharaoh(&word_alignment)),
            Some(AlignUnit::Subword) => Some(pharaoh(&subword_alignment)),
            None => None,
        },
        word_alignment,
        attention: first.attention,
    }
}

/// The pairs of a Pharaoh alignment string (`0-0 1-2`).
fn parse_pharaoh(s: &str) -> Vec<(usize, usize)> {
    s.split_whitespace()
        .filter_map(|p| {
            let (i, j) = p.split_once('-')?;
            Some((i.parse().ok()?, j.parse().ok()?))
        })
        .collect()
}

/// Whitespace-separated words in subword pieces (with the EOS marker last).
fn word_count(pieces: &[String]) -> usize {
    let words: Vec<String> = pieces
        .iter()
        .filter(|p| p.as_str() != crate::subword::EOS)
        .cloned()
        .collect();
    word_index(&words).last().map_or(0, |&w| w + 1)
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
