//! The stacked-LSTM (or GRU) encoder: embeddings, a bidirectional bottom layer (or all layers
//! bidirectional), unidirectional layers above, residual connections, dropout between
//! layers. Every layer runs over the whole sequence at once.

use candle_core::{Result, Tensor};
use candle_nn::{embedding, Embedding, Module, VarBuilder};

use super::config::{Bidirectional, ModelConfig};
use super::dropout::Dropout;
use super::recurrent::RecurrentLayer;

/// One encoder layer. A bidirectional layer runs a forward and a reverse LSTM of
/// `hidden / 2` units each and concatenates their outputs, so its width is `hidden` like
/// every other layer.
struct EncoderLayer {
    forward: RecurrentLayer,
    backward: Option<RecurrentLayer>,
    residual: bool,
}

impl EncoderLayer {
    fn forward(&self, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let hs = match &self.backward {
            None => self.forward.forward(xs, mask, false)?.0,
            Some(backward) => {
                let (fw, _) = self.forward.forward(xs, mask, false)?;
                let (bw, _) = backward.forward(xs, mask, true)?;
                Tensor::cat(&[fw, bw], 2)?
            }
        };
        if self.residual {
            hs + xs
        } else {
            Ok(hs)
        }
    }
}

pub struct Encoder {
    embedding: Embedding,
    layers: Vec<EncoderLayer>,
    word_dropout: f32,
}

impl Encoder {
    /// Search computes the recurrent layers' products in int8 from now on
    /// ([`RecurrentLayer::quantize_int8`]).
    pub fn quantize_int8(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            layer.forward.quantize_int8()?;
            if let Some(backward) = &mut layer.backward {
                backward.quantize_int8()?;
            }
        }
        Ok(())
    }

    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let embedding = embedding(cfg.src_vocab_size, cfg.embedding_size, vb.pp("embedding"))?;
        let h = cfg.hidden_size;
        let layers = (0..cfg.encoder_layers)
            .map(|l| {
                let vb = vb.pp(format!("layers.{l}"));
                let input = if l == 0 { cfg.embedding_size } else { h };
                let bidirectional = l == 0 || cfg.bidirectional == Bidirectional::All;
                let layer = |units: usize, name: &str| {
                    RecurrentLayer::new(cfg.cell, input, units, cfg.layer_norm, vb.pp(name))
                };
                let (forward, backward) = if bidirectional {
                    (layer(h / 2, "forward")?, Some(layer(h / 2, "backward")?))
                } else {
                    (layer(h, "forward")?, None)
                };
                Ok(EncoderLayer {
                    forward,
                    backward,
                    residual: cfg.has_residual(l),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embedding,
            layers,
            word_dropout: cfg.source_word_dropout,
        })
    }

    /// `src: u32 [batch, src]`, `mask: [batch, src]` in the model's dtype →
    /// memory `[batch, src, hidden]`, zero at padded positions.
    pub fn forward(&self, src: &Tensor, mask: &Tensor, dropout: &mut Dropout) -> Result<Tensor> {
        let mut xs = dropout.drop_words(&self.embedding.forward(src)?, self.word_dropout)?;
        for layer in &self.layers {
            xs = layer.forward(&dropout.apply(&xs)?, mask)?;
        }
        // Residual sums carry the (dropped-out) input through at padded positions too;
        // zeroing them keeps the memory independent of how much padding a batch has.
        xs.broadcast_mul(&mask.unsqueeze(2)?)
    }
}
