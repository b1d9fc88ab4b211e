//! The stacked-LSTM encoder–decoder with attention.

pub mod additive_score;
pub mod attention;
pub mod config;
pub mod decoder;
pub mod dropout;
pub mod encoder;
pub mod fastmath;
pub mod gru;
pub mod init;
pub mod log_softmax;
pub mod lstm;
pub mod persist;
pub mod seq2seq;

pub use attention::{Attention, AttentionMemory};
pub use config::{AttentionKind, Bidirectional, ModelConfig};
pub use decoder::{Decoder, DecoderState, OutputLayer};
pub use encoder::Encoder;
pub use init::init_weights;
pub use persist::{
    load_config, load_model, load_model_with_vars, load_model_with_vocab_sizes, load_weights_into,
    save_model, CONFIG_FILE, WEIGHTS_FILE,
};
pub use seq2seq::{EncoderOutput, Seq2Seq};
