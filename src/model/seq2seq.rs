//! The encoder–decoder: teacher-forced training forward and the encode / step API that
//! search (and so the trainer's validation, see `search::greedy_search`) builds on.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;

use super::attention::AttentionMemory;
use super::config::ModelConfig;
use super::decoder::{Decoder, DecoderState, OutputLayer};
use super::dropout::Dropout;
use super::encoder::Encoder;
use crate::batch::BatchTensors;

/// The encoded source batch, with the attention's memory side precomputed.
#[derive(Clone, Debug)]
pub struct EncoderOutput {
    /// `[batch, src, hidden]`, zero at padding.
    pub memory: Tensor,
    /// `[batch, src]` in the model's dtype, 1 for real tokens.
    pub mask: Tensor,
    pub attention: AttentionMemory,
}

impl EncoderOutput {
    /// Rows `rows` (u32 indices): reorders/expands/shrinks the batch for search.
    pub fn select(&self, rows: &Tensor) -> Result<Self> {
        Ok(Self {
            memory: self.memory.index_select(rows, 0)?,
            mask: self.mask.index_select(rows, 0)?,
            attention: self.attention.select(rows)?,
        })
    }

    pub fn batch_size(&self) -> usize {
        self.memory.dims()[0]
    }
}

pub struct Seq2Seq {
    cfg: ModelConfig,
    encoder: Encoder,
    decoder: Decoder,
}

impl Seq2Seq {
    /// Builds the model; the config must be valid (see [`ModelConfig::validate`]).
    /// Variables are named `encoder.*` and `decoder.*`.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::wrap)?;
        Ok(Self {
            cfg: cfg.clone(),
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Teacher-forced logits `[batch, tgt, vocab]`. `dropout`: None at inference,
    /// Some(rng) in training (the masks come from it, so training is reproducible).
    pub fn forward(
        &self,
        batch: &BatchTensors,
        dropout: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor> {
        Ok(self.forward_with_attention(batch, dropout)?.0)
    }

    /// [`Seq2Seq::forward`], also returning the attention weights `[batch, tgt, src]`
    /// (averaged over heads): forced alignments, attention plots.
    pub fn forward_with_attention(
        &self,
        batch: &BatchTensors,
        dropout: Option<&mut ChaCha8Rng>,
    ) -> Result<(Tensor, Tensor)> {
        let (features, weights) = self.features_and_attention(batch, dropout)?;
        Ok((self.output_layer().logits(&features)?, weights))
    }

    /// [`Seq2Seq::forward`] up to the output layer's input `[batch, tgt, hidden]` (after
    /// dropout): training fuses the output layer with the loss.
    pub fn forward_features(
        &self,
        batch: &BatchTensors,
        dropout: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor> {
        Ok(self.features_and_attention(batch, dropout)?.0)
    }

    fn features_and_attention(
        &self,
        batch: &BatchTensors,
        dropout: Option<&mut ChaCha8Rng>,
    ) -> Result<(Tensor, Tensor)> {
        let mut dropout = Dropout::new(self.cfg.dropout, dropout);
        let enc = self.encode_with(&batch.src, &batch.src_mask, &mut dropout)?;
        let tgt_mask = batch.tgt_mask.to_dtype(enc.memory.dtype())?;
        self.decoder
            .forward_features(&enc.attention, &batch.tgt_in, &tgt_mask, &mut dropout)
    }

    /// Encodes `src: u32 [batch, src]` with `src_mask: [batch, src]` (f32) for search.
    pub fn encode(&self, src: &Tensor, src_mask: &Tensor) -> Result<EncoderOutput> {
        self.encode_with(src, src_mask, &mut Dropout::inactive())
    }

    fn encode_with(
        &self,
        src: &Tensor,
        src_mask: &Tensor,
        dropout: &mut Dropout,
    ) -> Result<EncoderOutput> {
        let dtype = self.decoder_dtype();
        let mask = src_mask.to_dtype(dtype)?;
        let memory = self.encoder.forward(src, &mask, dropout)?;
        let attention = self.decoder.attention_memory(&memory, &mask)?;
        Ok(EncoderOutput {
            memory,
            mask,
            attention,
        })
    }

    fn decoder_dtype(&self) -> candle_core::DType {
        self.decoder.dtype()
    }

    pub fn decoder_init(&self, enc: &EncoderOutput) -> Result<DecoderState> {
        self.decoder.init(enc.batch_size(), &enc.attention)
    }

    /// One decoder step for search: `prev: u32 [batch]` → (log-probs `[batch, vocab]`,
    /// the new state, attention weights `[batch, src]`); over the columns of `output`
    /// when given (see [`OutputLayer::restrict`]).
    pub fn decoder_step(
        &self,
        enc: &EncoderOutput,
        state: &DecoderState,
        prev: &Tensor,
        output: Option<&OutputLayer>,
    ) -> Result<(Tensor, DecoderState, Tensor)> {
        self.decoder.step(&enc.attention, state, prev, output)
    }

    /// Precomputes what search can look up instead of computing each step (see
    /// [`Decoder::prepare_for_search`]); the weights must not change afterwards.
    pub fn prepare_for_search(&mut self) -> Result<()> {
        self.decoder.prepare_for_search()
    }

    /// Search computes the output layer and the recurrent layers' products (`x·W_ihᵀ`,
    /// `h·W_hhᵀ`, encoder and decoder) in int8 from now on (see
    /// [`crate::model::int8_matmul`]); the CPU only.
    pub fn quantize_int8(&mut self) -> Result<()> {
        self.encoder.quantize_int8()?;
        self.decoder.quantize_int8()
    }

    /// The output layer onto the whole target vocabulary.
    pub fn output_layer(&self) -> &OutputLayer {
        self.decoder.output_layer()
    }
}
