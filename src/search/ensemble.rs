//! Several models decoding as one: the ensemble's next-token distribution is the
//! average of the members' log-probabilities (a normalised geometric mean would only add
//! a per-row constant, which changes no ranking within a step).

use anyhow::{bail, ensure};
use candle_core::{Result, Tensor};

use crate::model::{DecoderState, EncoderOutput, Seq2Seq};

/// The members' encodings of one source batch.
#[derive(Clone, Debug)]
pub struct EnsembleEncoding(Vec<EncoderOutput>);

/// The members' decoder states.
#[derive(Clone, Debug)]
pub struct EnsembleState(Vec<DecoderState>);

impl EnsembleEncoding {
    /// Rows `rows` (u32 indices) of every member's encoding.
    pub fn select(&self, rows: &Tensor) -> Result<Self> {
        self.0
            .iter()
            .map(|e| e.select(rows))
            .collect::<Result<_>>()
            .map(Self)
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
        Ok(Self { models })
    }

    pub fn single(model: &'m Seq2Seq) -> Self {
        Self {
            models: vec![model],
        }
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

    pub fn encode(&self, src: &Tensor, src_mask: &Tensor) -> Result<EnsembleEncoding> {
        self.models
            .iter()
            .map(|m| m.encode(src, src_mask))
            .collect::<Result<_>>()
            .map(EnsembleEncoding)
    }

    pub fn init(&self, enc: &EnsembleEncoding) -> Result<EnsembleState> {
        self.models
            .iter()
            .zip(&enc.0)
            .map(|(m, e)| m.decoder_init(e))
            .collect::<Result<_>>()
            .map(EnsembleState)
    }

    /// One step of every member: (averaged log-probabilities `[rows, vocab]`, the next
    /// states, averaged attention weights `[rows, src]`).
    pub fn step(
        &self,
        enc: &EnsembleEncoding,
        state: &EnsembleState,
        prev: &Tensor,
    ) -> Result<(Tensor, EnsembleState, Tensor)> {
        let mut log_probs = Vec::with_capacity(self.models.len());
        let mut weights = Vec::with_capacity(self.models.len());
        let mut states = Vec::with_capacity(self.models.len());
        for ((m, e), s) in self.models.iter().zip(&enc.0).zip(&state.0) {
            let (lp, next, w) = m.decoder_step(e, s, prev)?;
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
