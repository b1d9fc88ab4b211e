//! The stacked-LSTM encoder–decoder with attention, and the recurrent language model
//! built from the same parts.

pub mod additive_score;
pub mod attention;
pub mod bf16_matmul;
pub mod config;
pub mod decoder;
pub mod dropout;
pub mod encoder;
pub mod fastmath;
pub(crate) mod fused;
pub mod gru;
pub mod half_logits;
pub mod init;
pub mod int8_matmul;
pub mod language_model;
pub mod log_softmax;
pub mod lstm;
pub mod persist;
pub mod recurrent;
pub mod row_cache;
pub mod seq2seq;
#[cfg(test)]
pub(crate) mod test_support;
pub mod weights_file;

pub use attention::{Attention, AttentionMemory};
pub use config::{AttentionKind, Bidirectional, Cell, ModelConfig, Task};
pub use decoder::{Decoder, DecoderState, OutputLayer};
pub use encoder::Encoder;
pub use init::init_weights;
pub use language_model::{LanguageModel, LmState};
pub use persist::{
    check_vocab_sizes, load_config, load_language_model, load_model, load_model_with_vars,
    load_model_without_tokenizers, load_weights_into, model_file, save_model, CONFIG_FILE,
    WEIGHTS_FILE,
};
pub use seq2seq::{EncoderOutput, Seq2Seq};

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;

/// The model a config's `task` describes, as the trainer holds it (boxed: the two
/// differ much in size, and there is one per run).
pub enum Model {
    Translation(Box<Seq2Seq>),
    Language(Box<LanguageModel>),
}

impl Model {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match cfg.task {
            Task::Translation => Self::Translation(Box::new(Seq2Seq::new(cfg, vb)?)),
            Task::Lm => Self::Language(Box::new(LanguageModel::new(cfg, vb)?)),
        })
    }

    /// Teacher-forced logits `[batch, tgt, vocab]`; `dropout` as in [`Seq2Seq::forward`].
    pub fn forward(
        &self,
        batch: &crate::batch::BatchTensors,
        dropout: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor> {
        match self {
            Self::Translation(m) => m.forward(batch, dropout),
            Self::Language(m) => m.forward(batch, dropout),
        }
    }

    /// [`Model::forward`] up to the output layer's input `[batch, tgt, hidden]`.
    pub fn forward_features(
        &self,
        batch: &crate::batch::BatchTensors,
        dropout: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor> {
        match self {
            Self::Translation(m) => m.forward_features(batch, dropout),
            Self::Language(m) => m.forward_features(batch, dropout),
        }
    }

    /// The output layer onto the whole target vocabulary.
    pub fn output_layer(&self) -> &OutputLayer {
        match self {
            Self::Translation(m) => m.output_layer(),
            Self::Language(m) => m.output_layer(),
        }
    }
}
