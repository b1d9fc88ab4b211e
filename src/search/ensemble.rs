//! Several models decoding as one: the ensemble's next-token distribution is the
//! average of the members' log-probabilities (a normalised geometric mean would only add
//! a per-row constant, which changes no ranking within a step).

use std::sync::Arc;

use anyhow::{bail, ensure};
use candle_core::{Device, Result, Tensor};

use super::rows_tensor;
use super::shortlist::{Shortlist, ShortlistSize};
use crate::batch::source_tensors;
use crate::model::{DecoderState, EncoderOutput, OutputLayer, Seq2Seq};

/// The members' encodings of one source batch, with the target subwords that steps score.
#[derive(Clone, Debug)]
pub struct EnsembleEncoding {
    members: Vec<EncoderOutput>,
    /// A shortlist's subset of the target vocabulary (`None`: all of it).
    targets: Option<Arc<TargetSubset>>,
}

/// Target ids and, for each member, its output layer onto them.
#[derive(Debug)]
struct TargetSubset {
    ids: Vec<u32>,
    layers: Vec<OutputLayer>,
}

/// The members' decoder states.
#[derive(Clone, Debug)]
pub struct EnsembleState(Vec<DecoderState>);

impl EnsembleEncoding {
    /// Rows `rows` (u32 indices) of every member's encoding.
    pub fn select(&self, rows: &Tensor) -> Result<Self> {
        Ok(Self {
            members: self
                .members
                .iter()
                .map(|e| e.select(rows))
                .collect::<Result<_>>()?,
            targets: self.targets.clone(),
        })
    }

    /// The target id that column `column` of a step's log-probabilities scores.
    pub fn target_id(&self, column: u32) -> u32 {
        match &self.targets {
            Some(t) => t.ids[column as usize],
            None => column,
        }
    }

    /// The column of a step's log-probabilities that scores target id `id` (`None`: the
    /// shortlist leaves it out).
    pub fn column_of(&self, id: u32) -> Option<u32> {
        match &self.targets {
            Some(t) => t.ids.binary_search(&id).ok().map(|c| c as u32),
            None => Some(id),
        }
    }
}

impl EnsembleState {
    pub fn select(&self, rows: &Tensor) -> Result<Self> {
        self.0
            .iter()
            .map(|s| s.select(rows))
            .collect::<Result<_>>()
            .map(Self)
    }
}

pub struct Ensemble<'m> {
    models: Vec<&'m Seq2Seq>,
    shortlist: Option<(&'m Shortlist, ShortlistSize)>,
}

impl<'m> Ensemble<'m> {
    /// The members must share the target vocabulary (and, for the caller, the source
    /// tokenizer).
    pub fn new(models: Vec<&'m Seq2Seq>) -> anyhow::Result<Self> {
        ensure!(!models.is_empty(), "an ensemble needs at least one model");
        let first = models[0].config();
        for (i, m) in models.iter().enumerate().skip(1) {
            let cfg = m.config();
            if cfg.tgt_vocab_size != first.tgt_vocab_size
                || cfg.src_vocab_size != first.src_vocab_size
            {
                bail!(
                    "ensemble member {} has vocabularies {}/{} (source/target), member 1 has {}/{}: members must share their tokenizers",
                    i + 1,
                    cfg.src_vocab_size,
                    cfg.tgt_vocab_size,
                    first.src_vocab_size,
                    first.tgt_vocab_size
                );
            }
        }
        Ok(Self {
            models,
            shortlist: None,
        })
    }

    pub fn single(model: &'m Seq2Seq) -> Self {
        Self {
            models: vec![model],
            shortlist: None,
        }
    }

    /// Search then scores only the shortlist's target subwords for each batch.
    pub fn with_shortlist(mut self, shortlist: &'m Shortlist, size: ShortlistSize) -> Self {
        self.shortlist = Some((shortlist, size));
        self
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The first member: its config bounds the output length.
    pub fn first(&self) -> &Seq2Seq {
        self.models[0]
    }

    /// Encodes `sources` (subword ids without EOS) as one batch whose steps score every
    /// target subword.
    pub fn encode(&self, sources: &[Vec<u32>], device: &Device) -> Result<EnsembleEncoding> {
        let (src, mask) = source_tensors(sources, device)?;
        Ok(EnsembleEncoding {
            members: self
                .models
                .iter()
                .map(|m| m.encode(&src, &mask))
                .collect::<Result<_>>()?,
            targets: None,
        })
    }

    /// Like [`Self::encode`], for search: with a shortlist, steps score only its target
    /// subwords for these sources.
    /// `forced` target ids (a target prefix's) join the shortlist.
    pub fn encode_for_search(
        &self,
        sources: &[Vec<u32>],
        forced: &[u32],
        device: &Device,
    ) -> Result<EnsembleEncoding> {
        let mut enc = self.encode(sources, device)?;
        if let Some((list, size)) = self.shortlist {
            let mut ids = list.target_ids(sources, size);
            if !forced.is_empty() {
                // Kept sorted: [`EnsembleEncoding::column_of`] searches it.
                ids.extend(forced);
                ids.sort_unstable();
                ids.dedup();
            }
            let rows = rows_tensor(&ids, device)?;
            let layers = self
                .models
                .iter()
                .map(|m| m.output_layer().restrict(&rows))
                .collect::<Result<_>>()?;
            enc.targets = Some(Arc::new(TargetSubset { ids, layers }));
        }
        Ok(enc)
    }

    pub fn init(&self, enc: &EnsembleEncoding) -> Result<EnsembleState> {
        self.models
            .iter()
            .zip(&enc.members)
            .map(|(m, e)| m.decoder_init(e))
            .collect::<Result<_>>()
            .map(EnsembleState)
    }

    /// One step of every member: (averaged log-probabilities `[rows, vocab]` — over the
    /// columns of the encoding's shortlist if it has one, see
    /// [`EnsembleEncoding::target_id`] —, the next states, averaged attention weights
    /// `[rows, src]`).
    pub fn step(
        &self,
        enc: &EnsembleEncoding,
        state: &EnsembleState,
        prev: &Tensor,
    ) -> Result<(Tensor, EnsembleState, Tensor)> {
        let mut log_probs = Vec::with_capacity(self.models.len());
        let mut weights = Vec::with_capacity(self.models.len());
        let mut states = Vec::with_capacity(self.models.len());
        for (i, ((m, e), s)) in self
            .models
            .iter()
            .zip(&enc.members)
            .zip(&state.0)
            .enumerate()
        {
            let output = enc.targets.as_ref().map(|t| &t.layers[i]);
            let (lp, next, w) = m.decoder_step(e, s, prev, output)?;
            log_probs.push(lp);
            weights.push(w);
            states.push(next);
        }
        let mean = |mut ts: Vec<Tensor>| -> Result<Tensor> {
            if ts.len() == 1 {
                return Ok(ts.pop().expect("one tensor"));
            }
            let n = ts.len() as f64;
            Tensor::stack(&ts, 0)?.sum(0)? / n
        };
        Ok((mean(log_probs)?, EnsembleState(states), mean(weights)?))
    }
}
