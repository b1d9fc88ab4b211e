//! The model's hyper-parameters, saved as `config.json` beside `model.safetensors`.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Which encoder layers read the source in both directions.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Bidirectional {
    /// Only the bottom layer (GNMT): the layers above stay unidirectional, so they can
    /// be pipelined in the paper's setting and cost half as much.
    Bottom,
    /// Every layer (RNMT+).
    All,
}

/// How decoder queries are scored against the encoder memory.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// Bahdanau: `vᵀ tanh(W q + U m)`.
    Additive,
    /// GNMT: additive with a bias and `v` replaced by `g · v / ‖v‖`.
    NormalizedAdditive,
    /// Luong dot: `qᵀ m`.
    Dot,
    /// Luong general: `qᵀ W m`.
    General,
    /// RNMT+: additive attention in `attention_heads` heads, each over its own slice
    /// of the projections, contexts concatenated.
    MultiHeadAdditive,
}

/// The recurrent cell of every layer.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Cell {
    /// Long short-term memory (Hochreiter & Schmidhuber 1997), PyTorch's gate order.
    #[default]
    Lstm,
    /// The gated recurrent unit of Cho et al. 2014 in its `linear_before_reset` form
    /// (PyTorch's `nn.GRU`, cuDNN): the reset gate scales `W_hn·h + b_hn` after the
    /// product, so the recurrent products of all gates are one matmul.
    Gru,
}

/// What the model predicts.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// The encoder–decoder: target text given source text.
    #[default]
    Translation,
    /// A decoder-only language model: the next subword given the ones before it. Only
    /// the target-side keys apply (`tgt_vocab_size`, `decoder_layers`, …); the encoder
    /// and attention keys are ignored.
    Lm,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Translation (the default; older config files have no `task`) or language model.
    pub task: Task,
    /// LSTM (the default; older config files have no `cell`) or GRU, in every layer.
    pub cell: Cell,
    pub src_vocab_size: usize,
    pub tgt_vocab_size: usize,
    pub embedding_size: usize,
    /// Width of every LSTM layer's output. A bidirectional layer splits it between its
    /// two directions (each `hidden_size / 2`) so that every layer, the encoder memory
    /// and the decoder agree on one width: residuals and dot attention need no
    /// projections.
    pub hidden_size: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub bidirectional: Bidirectional,
    /// 1-based index of the first layer (in encoder and decoder) whose input is added
    /// to its output; 0 turns residual connections off. GNMT uses 3. Layer 1 reads the
    /// embeddings and never has one.
    pub residual_from: usize,
    /// Dropout probability on embeddings, between layers and before the output layer.
    pub dropout: f32,
    /// Word dropout in training: the probability that a source subword's embedding is
    /// zeroed whole (the encoder then reads the rest of the sentence without it), and the
    /// same for the decoder's (or language model's) input subwords. Regularises small
    /// corpora (Sennrich & Zhang 2019); 0 = off.
    pub source_word_dropout: f32,
    pub target_word_dropout: f32,
    /// Layer-normalised LSTM cells (RNMT+).
    pub layer_norm: bool,
    pub attention: AttentionKind,
    /// Heads of `MultiHeadAdditive`; must divide `hidden_size`. Ignored otherwise.
    pub attention_heads: usize,
    /// `true`: Luong wiring — attention from the top decoder layer, its attentional
    /// vector fed back into the bottom layer at the next step (sequential in time).
    /// `false`: GNMT wiring — attention from the bottom layer's output, the context fed
    /// to every layer above (whole-sequence in time during training).
    pub input_feeding: bool,
    /// Marian's conditional GRU decoder (cGRU): the bottom layer is `cell → attention →
    /// cell`, the context fed into the recurrence (see `decoder.rs`). Needs `cell = "gru"`
    /// and `input_feeding = false`.
    pub cgru: bool,
    /// Share the output projection with the target embeddings (needs
    /// `embedding_size == hidden_size`).
    pub tie_target_embeddings: bool,
    /// Longest output greedy decoding and search produce when the caller gives no
    /// bound: `max_decode_len_a * source_len + max_decode_len_b`.
    pub max_decode_len_a: f32,
    pub max_decode_len_b: usize,
    /// The search's length normalisation α and coverage penalty β when `rnmt translate`
    /// is given none: tuned on the dev set per model (like Marian's decoder.yml), since
    /// what helps one model can cost another BLEU (β 0.2 cost a Multi30k model 3.4 dev
    /// BLEU and gains the Tatoeba en→de model 0.3).
    pub decode_alpha: f32,
    pub decode_beta: f32,
    /// Language codes of the source and target text (ISO 639-1, as given to `rnmt
    /// prepare`): the sentence splitter's rules and the server's language pairs come
    /// from them. Older model folders have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_lang: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tgt_lang: Option<String>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            task: Task::Translation,
            cell: Cell::Lstm,
            src_vocab_size: 8000,
            tgt_vocab_size: 8000,
            embedding_size: 256,
            hidden_size: 256,
            encoder_layers: 2,
            decoder_layers: 2,
            bidirectional: Bidirectional::Bottom,
            residual_from: 3,
            dropout: 0.2,
            source_word_dropout: 0.0,
            target_word_dropout: 0.0,
            layer_norm: false,
            attention: AttentionKind::NormalizedAdditive,
            attention_heads: 4,
            input_feeding: false,
            cgru: false,
            tie_target_embeddings: false,
            max_decode_len_a: 1.5,
            max_decode_len_b: 10,
            decode_alpha: 0.6,
            decode_beta: 0.2,
            src_lang: None,
            tgt_lang: None,
        }
    }
}

impl Cell {
    /// The cell's usual name, for model cards and logs.
    pub fn name(self) -> &'static str {
        match self {
            Cell::Lstm => "LSTM",
            Cell::Gru => "GRU",
        }
    }
}

impl ModelConfig {
    /// Checks every value, naming the offending key.
    pub fn validate(&self) -> Result<()> {
        // The four special tokens (PAD, UNK, BOS, EOS) occupy ids 0..4.
        let lm = self.task == Task::Lm;
        for (key, v) in [
            ("src_vocab_size", if lm { 5 } else { self.src_vocab_size }),
            ("tgt_vocab_size", self.tgt_vocab_size),
        ] {
            if v < 5 {
                bail!(
                    "model config: {key} = {v}, but it must be at least 5 (4 special tokens + 1)"
                );
            }
        }
        for (key, v) in [
            ("embedding_size", self.embedding_size),
            ("hidden_size", self.hidden_size),
            ("encoder_layers", if lm { 1 } else { self.encoder_layers }),
            ("decoder_layers", self.decoder_layers),
        ] {
            if v == 0 {
                bail!("model config: {key} must be at least 1");
            }
        }
        if !self.hidden_size.is_multiple_of(2) {
            bail!(
                "model config: hidden_size = {} must be even: a bidirectional layer gives half to each direction",
                self.hidden_size
            );
        }
        if self.residual_from == 1 {
            bail!("model config: residual_from = 1 is not possible (layer 1 reads the embeddings); use 0 for none or 2 and above");
        }
        for (name, p) in [
            ("dropout", self.dropout),
            ("source_word_dropout", self.source_word_dropout),
            ("target_word_dropout", self.target_word_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("model config: {name} = {p} must be in [0, 1)");
            }
        }
        if lm && self.source_word_dropout > 0.0 {
            bail!(
                "model config: source_word_dropout = {} but a language model has no source; use target_word_dropout",
                self.source_word_dropout
            );
        }
        if !lm
            && self.attention == AttentionKind::MultiHeadAdditive
            && (self.attention_heads == 0 || !self.hidden_size.is_multiple_of(self.attention_heads))
        {
            bail!(
                "model config: attention_heads = {} must be at least 1 and divide hidden_size = {}",
                self.attention_heads,
                self.hidden_size
            );
        }
        if self.cgru && (self.cell != Cell::Gru || self.input_feeding) {
            bail!(
                "model config: cgru = true needs cell = \"gru\" and input_feeding = false \
                 (the conditional GRU is a wiring of its own)"
            );
        }
        if self.tie_target_embeddings && self.embedding_size != self.hidden_size {
            bail!(
                "model config: tie_target_embeddings needs embedding_size ({}) == hidden_size ({})",
                self.embedding_size,
                self.hidden_size
            );
        }
        for (name, v) in [
            ("decode_alpha", self.decode_alpha),
            ("decode_beta", self.decode_beta),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("model config: {name} = {v} must be a finite number >= 0");
            }
        }
        if !(self.max_decode_len_a >= 0.0 && self.max_decode_len_a.is_finite()) {
            bail!(
                "model config: max_decode_len_a = {} must be a finite number >= 0",
                self.max_decode_len_a
            );
        }
        Ok(())
    }

    /// Whether layer `layer` (0-based) of a stack adds its input to its output.
    pub fn has_residual(&self, layer: usize) -> bool {
        self.residual_from != 0 && layer + 1 >= self.residual_from && layer > 0
    }

    /// Parses a `config.json` text; unknown keys and bad values are errors.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }
}
