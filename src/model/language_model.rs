//! The recurrent language model (Mikolov et al. 2010; the stacked, dropout-regularised LSTM
//! of Zaremba et al. 2014; tied input and output embeddings, Press & Wolf 2017):
//!
//! ```text
//! p(y_t | y_<t) = softmax(W h_t + b),   h_t = LSTM_L(… LSTM_1(E y_{t-1}) …)
//! ```
//!
//! with `y_0 = BOS` and the sentence ending in EOS, so that `∏ p(y_t | y_<t)` is the
//! probability of the whole sentence. It is the decoder of the translation model without
//! the attention: the same fused LSTM layers, residual connections from `residual_from`,
//! dropout on the embeddings, between layers and before the output layer, and the same
//! output layer (tied with the embeddings when `tie_target_embeddings`). Training reads a
//! batch's `tgt_in`/`tgt_out`/`tgt_mask` and ignores its (empty) source side.

use candle_core::{DType, Result, Tensor};
use candle_nn::{embedding, Embedding, Module, VarBuilder};
use rand_chacha::ChaCha8Rng;

use super::config::ModelConfig;
use super::decoder::OutputLayer;
use super::dropout::Dropout;
use super::lstm::LstmState;
use super::recurrent::RecurrentLayer;
use crate::batch::BatchTensors;

/// The recurrent state of a batch (or a beam): one LSTM state per layer, bottom first.
#[derive(Clone, Debug)]
pub struct LmState {
    pub layers: Vec<LstmState>,
}

impl LmState {
    /// Rows `rows` (u32 indices) of the state: reorders/expands/shrinks the batch.
    pub fn select(&self, rows: &Tensor) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|s| s.select(rows))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }
}

pub struct LanguageModel {
    cfg: ModelConfig,
    embedding: Embedding,
    layers: Vec<RecurrentLayer>,
    residual: Vec<bool>,
    output: OutputLayer,
}

impl LanguageModel {
    /// Builds the model; the config must be valid. Variables are named `lm.*`:
    /// `lm.embedding`, `lm.layers.N`, `lm.output` (absent when tied).
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::wrap)?;
        let vb = vb.pp("lm");
        let h = cfg.hidden_size;
        let embedding = embedding(cfg.tgt_vocab_size, cfg.embedding_size, vb.pp("embedding"))?;
        let (layers, residual) =
            RecurrentLayer::stack(cfg, |l| if l == 0 { cfg.embedding_size } else { h }, &vb)?;
        let output = OutputLayer::new(cfg, &embedding, vb.pp("output"))?;
        Ok(Self {
            cfg: cfg.clone(),
            embedding,
            layers,
            residual,
            output,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The dtype the model computes in (that of its parameters).
    pub fn dtype(&self) -> DType {
        self.embedding.embeddings().dtype()
    }

    /// Teacher-forced logits `[batch, tgt, vocab]` for the batch's `tgt_in` (BOS + ids);
    /// `dropout`: None at inference, Some(rng) in training.
    pub fn forward(
        &self,
        batch: &BatchTensors,
        dropout: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor> {
        self.output.logits(&self.forward_features(batch, dropout)?)
    }

    /// [`LanguageModel::forward`] up to the output layer's input `[batch, tgt, hidden]`
    /// (after dropout): training fuses the output layer with the loss.
    pub fn forward_features(
        &self,
        batch: &BatchTensors,
        dropout: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor> {
        let mut dropout = Dropout::new(self.cfg.dropout, dropout);
        let mask = batch.tgt_mask.to_dtype(self.dtype())?;
        let words = self.embedding.forward(&batch.tgt_in)?;
        let words = dropout.drop_words(&words, self.cfg.target_word_dropout)?;
        let mut h = dropout.apply(&words)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let input = if l == 0 {
                h.clone()
            } else {
                dropout.apply(&h)?
            };
            let (out, _) = layer.forward(&input, &mask, false)?;
            h = if self.residual[l] { (out + h)? } else { out };
        }
        dropout.apply(&h)
    }

    /// The output layer onto the whole vocabulary.
    pub fn output_layer(&self) -> &OutputLayer {
        &self.output
    }

    /// The state before the first subword (zeros, as [`LanguageModel::forward`] starts).
    pub fn init(&self, batch: usize) -> Result<LmState> {
        let zero = LstmState::zeros(
            batch,
            self.cfg.hidden_size,
            self.dtype(),
            self.embedding.embeddings().device(),
        )?;
        Ok(LmState {
            layers: vec![zero; self.layers.len()],
        })
    }

    /// One step: `prev: u32 [batch]` (BOS first) → (log-probabilities of the next subword
    /// `[batch, vocab]`, the next state).
    pub fn step(&self, state: &LmState, prev: &Tensor) -> Result<(Tensor, LmState)> {
        let mut h = self.embedding.forward(prev)?;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (l, layer) in self.layers.iter().enumerate() {
            let s = layer.step(&h, &state.layers[l])?;
            h = if self.residual[l] {
                (&s.h + &h)?
            } else {
                s.h.clone()
            };
            layers.push(s);
        }
        Ok((self.output.log_probs(&h)?, LmState { layers }))
    }
}
