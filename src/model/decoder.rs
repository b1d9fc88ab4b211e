//! The stacked-LSTM decoder with attention, in two wirings:
//!
//! * GNMT (`input_feeding = false`): the bottom layer's output queries the attention and
//!   the context is concatenated to the input of every layer above. Nothing in the
//!   recurrence depends on the attention of the previous step, so teacher forcing runs
//!   every layer over the whole target sequence and scores all steps in one matmul.
//! * Luong input feeding: the top layer's output queries the attention, and the
//!   attentional vector of step `t-1` is concatenated to the bottom layer's input at step
//!   `t`. This is inherently sequential.
//!
//! * Marian's conditional GRU (`cgru`, Sennrich et al. 2017, "Nematus"): the bottom layer is
//!   a transition of two cells, `s'_t = GRU₁(y_{t-1}, s_{t-1})`, `c_t = attention(s'_t)`,
//!   `s_t = GRU₂(c_t, s'_t)`, so the attention reads a state that has seen the previous
//!   subword, and the context enters the recurrence. The layers above read `[s_t; c_t]`
//!   as in the GNMT wiring. Sequential in time, like input feeding.
//!
//! All end in the attentional vector `tanh(W [h_top; context])` and the output
//! projection. One decoder step ([`Decoder::step`]) is shared by greedy and beam search.

use candle_core::{Result, Tensor};
use candle_nn::{embedding, linear, Embedding, Linear, Module, VarBuilder};

use super::attention::{Attention, AttentionMemory};
use super::config::ModelConfig;
use super::dropout::Dropout;
use super::log_softmax::biased_log_softmax;
use super::lstm::LstmState;
use super::recurrent::RecurrentLayer;

/// The decoder's recurrent state for a batch (or a beam).
#[derive(Clone, Debug)]
pub struct DecoderState {
    /// One state per layer, bottom first; each `[batch, hidden]`.
    pub layers: Vec<LstmState>,
    /// The previous attentional vector `[batch, hidden]` (input feeding; zeros at the
    /// start, unused in the GNMT wiring).
    pub feed: Tensor,
}

impl DecoderState {
    /// Rows `rows` (u32 indices) of the state: reorders/expands/shrinks the batch.
    pub fn select(&self, rows: &Tensor) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|s| s.select(rows))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            feed: self.feed.index_select(rows, 0)?,
        })
    }
}

pub struct Decoder {
    embedding: Embedding,
    layers: Vec<RecurrentLayer>,
    /// cGRU: the second cell of the bottom transition, reading the context.
    conditional: Option<RecurrentLayer>,
    residual: Vec<bool>,
    attention: Attention,
    /// `[h_top; context] → hidden`, followed by tanh: Luong's attentional vector.
    combine: Linear,
    output: OutputLayer,
    /// Search only, GNMT wiring: `E·W_ihᵀ` of the bottom layer for every target subword
    /// `[vocab, 4·hidden]` (see [`Decoder::precompute_bottom_projection`]).
    bottom_projection: Option<Tensor>,
    input_feeding: bool,
    hidden_size: usize,
}

impl Decoder {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let embedding = embedding(cfg.tgt_vocab_size, cfg.embedding_size, vb.pp("embedding"))?;
        let (layers, residual) = RecurrentLayer::stack(
            cfg,
            |l| match (l, cfg.input_feeding) {
                (0, true) => cfg.embedding_size + h,
                (0, false) => cfg.embedding_size,
                (_, true) => h,
                (_, false) => 2 * h,
            },
            &vb,
        )?;
        let conditional = if cfg.cgru {
            Some(RecurrentLayer::new(
                cfg.cell,
                h,
                h,
                cfg.layer_norm,
                vb.pp("conditional"),
            )?)
        } else {
            None
        };
        let attention =
            Attention::new(cfg.attention, cfg.attention_heads, h, h, vb.pp("attention"))?;
        let combine = linear(2 * h, h, vb.pp("combine"))?;
        let output = OutputLayer::new(cfg, &embedding, vb.pp("output"))?;
        Ok(Self {
            embedding,
            layers,
            conditional,
            residual,
            attention,
            combine,
            output,
            bottom_projection: None,
            input_feeding: cfg.input_feeding,
            hidden_size: h,
        })
    }

    /// The dtype the decoder computes in (that of its parameters).
    pub fn dtype(&self) -> candle_core::DType {
        self.output.bias.dtype()
    }

    /// For search with the GNMT wiring: the bottom layer's input is the embedding of the
    /// previous subword alone, so its product with `W_ih` (a quarter of the FLOPs of a step)
    /// can be computed once for the whole vocabulary and looked up. The weights must not
    /// change afterwards (inference only). A no-op with input feeding, where the bottom
    /// input also holds the previous attentional vector.
    pub fn precompute_bottom_projection(&mut self) -> Result<()> {
        if !self.input_feeding {
            let table = self.layers[0].input_projection(self.embedding.embeddings())?;
            self.bottom_projection = Some(table);
        }
        Ok(())
    }

    /// The output projection onto the whole target vocabulary.
    pub fn output_layer(&self) -> &OutputLayer {
        &self.output
    }

    /// Precomputes the attention's memory side for an encoder output.
    pub fn attention_memory(&self, memory: &Tensor, mask: &Tensor) -> Result<AttentionMemory> {
        self.attention.memory(memory, mask)
    }

    /// The start state: zeros (the whole-sequence LSTM starts from zeros, and teacher
    /// forcing and search must agree).
    pub fn init(&self, batch: usize, mem: &AttentionMemory) -> Result<DecoderState> {
        let (dtype, device) = (mem.values.dtype(), mem.values.device());
        let zero = LstmState::zeros(batch, self.hidden_size, dtype, device)?;
        Ok(DecoderState {
            layers: vec![zero.clone(); self.layers.len()],
            feed: zero.h,
        })
    }

    /// Teacher-forced logits `[batch, tgt, vocab]` and attention weights
    /// `[batch, tgt, src]` for `tgt_in: u32 [batch, tgt]` and `tgt_mask: [batch, tgt]` in
    /// the model's dtype.
    pub fn forward(
        &self,
        mem: &AttentionMemory,
        tgt_in: &Tensor,
        tgt_mask: &Tensor,
        dropout: &mut Dropout,
    ) -> Result<(Tensor, Tensor)> {
        let emb = dropout.apply(&self.embedding.forward(tgt_in)?)?;
        let (attentional, weights) = if self.input_feeding || self.conditional.is_some() {
            let (batch, steps, _) = emb.dims3()?;
            let mut state = self.init(batch, mem)?;
            let mut outputs = Vec::with_capacity(steps);
            let mut weights = Vec::with_capacity(steps);
            for t in 0..steps {
                let x = emb.narrow(1, t, 1)?.squeeze(1)?;
                let (o, next, w) = self.advance(mem, &state, StepInput::Embedded(x), dropout)?;
                outputs.push(o);
                weights.push(w);
                state = next;
            }
            (Tensor::stack(&outputs, 1)?, Tensor::stack(&weights, 1)?)
        } else {
            let (mut h, _) = self.layers[0].forward(&emb, tgt_mask, false)?;
            let (context, weights) = self.attention.forward(&h, mem)?;
            for (l, layer) in self.layers.iter().enumerate().skip(1) {
                let input = dropout.apply(&Tensor::cat(&[&h, &context], 2)?)?;
                let (out, _) = layer.forward(&input, tgt_mask, false)?;
                h = if self.residual[l] { (out + h)? } else { out };
            }
            let attentional = self
                .combine
                .forward(&Tensor::cat(&[&h, &context], 2)?)?
                .tanh()?;
            (attentional, weights)
        };
        Ok((self.output.logits(&dropout.apply(&attentional)?)?, weights))
    }

    /// One step for search: `prev: u32 [batch]` → (log-probabilities `[batch, vocab]`,
    /// the next state, attention weights `[batch, src]`). `output` replaces the full
    /// output layer (a shortlist's rows: the log-probabilities are then over its columns).
    pub fn step(
        &self,
        mem: &AttentionMemory,
        state: &DecoderState,
        prev: &Tensor,
        output: Option<&OutputLayer>,
    ) -> Result<(Tensor, DecoderState, Tensor)> {
        let input = match &self.bottom_projection {
            Some(table) => StepInput::Projected(table.index_select(prev, 0)?),
            None => StepInput::Embedded(self.embedding.forward(prev)?),
        };
        let (o, next, weights) = self.advance(mem, state, input, &mut Dropout::inactive())?;
        let log_probs = output.unwrap_or(&self.output).log_probs(&o)?;
        Ok((log_probs, next, weights))
    }

    /// One time step of the stack from the previous subword's embedding (or, with the GNMT
    /// wiring, its bottom-layer projection) → (attentional vector `[batch, hidden]`, next
    /// state, attention weights).
    fn advance(
        &self,
        mem: &AttentionMemory,
        state: &DecoderState,
        input: StepInput,
        dropout: &mut Dropout,
    ) -> Result<(Tensor, DecoderState, Tensor)> {
        let mut layers = Vec::with_capacity(self.layers.len());
        let attend = |h: &Tensor| -> Result<(Tensor, Tensor)> {
            let (context, weights) = self.attention.forward(&h.unsqueeze(1)?, mem)?;
            Ok((context.squeeze(1)?, weights.squeeze(1)?))
        };
        let (h, context, weights) = if self.input_feeding {
            let StepInput::Embedded(x) = input else {
                candle_core::bail!("input feeding needs the embedded input");
            };
            let mut input = Tensor::cat(&[&x, &state.feed], 1)?;
            let mut h = input.clone();
            for (l, layer) in self.layers.iter().enumerate() {
                if l > 0 {
                    input = dropout.apply(&h)?;
                }
                let s = layer.step(&input, &state.layers[l])?;
                h = if self.residual[l] {
                    (&s.h + &h)?
                } else {
                    s.h.clone()
                };
                layers.push(s);
            }
            let (context, weights) = attend(&h)?;
            (h, context, weights)
        } else {
            let s = match input {
                StepInput::Embedded(x) => self.layers[0].step(&x, &state.layers[0])?,
                StepInput::Projected(p) => self.layers[0].step_projected(&p, &state.layers[0])?,
            };
            let (context, weights) = attend(&s.h)?;
            // cGRU: the attention read s'_t; s_t = GRU₂(c_t, s'_t).
            let s = match &self.conditional {
                Some(second) => second.step(&context, &s)?,
                None => s,
            };
            let mut h = s.h.clone();
            layers.push(s);
            for (l, layer) in self.layers.iter().enumerate().skip(1) {
                let input = dropout.apply(&Tensor::cat(&[&h, &context], 1)?)?;
                let s = layer.step(&input, &state.layers[l])?;
                h = if self.residual[l] {
                    (&s.h + &h)?
                } else {
                    s.h.clone()
                };
                layers.push(s);
            }
            (h, context, weights)
        };
        let o = self
            .combine
            .forward(&Tensor::cat(&[&h, &context], 1)?)?
            .tanh()?;
        let next = DecoderState {
            layers,
            feed: o.clone(),
        };
        Ok((o, next, weights))
    }
}

/// What a decoder step starts from.
enum StepInput {
    /// The previous subword's embedding `[batch, embedding]`.
    Embedded(Tensor),
    /// Its product with the bottom layer's `W_ih` `[batch, 4·hidden]` (GNMT wiring).
    Projected(Tensor),
}

/// The output projection `hidden → vocab`, or onto a subset of the vocabulary.
#[derive(Clone, Debug)]
pub struct OutputLayer {
    /// `[vocab, hidden]`; the target embeddings themselves when tied.
    weight: Tensor,
    bias: Tensor,
}

impl OutputLayer {
    /// `output.weight [vocab, hidden]` (the target embeddings themselves when
    /// `tie_target_embeddings`) and `output.bias [vocab]`, under `vb`.
    pub fn new(cfg: &ModelConfig, embedding: &Embedding, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: if cfg.tie_target_embeddings {
                embedding.embeddings().clone()
            } else {
                vb.get((cfg.tgt_vocab_size, cfg.hidden_size), "weight")?
            },
            bias: vb.get(cfg.tgt_vocab_size, "bias")?,
        })
    }

    /// `[..., hidden]` → `[..., vocab]`.
    pub(crate) fn logits(&self, attentional: &Tensor) -> Result<Tensor> {
        // One 2-D matmul: a broadcast matmul would materialise the weight's gradient once
        // per batch row ([batch, hidden, vocab]) in the backward pass and then sum it.
        let dims = attentional.dims();
        let hidden = dims[dims.len() - 1];
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("at least one dim") = self.bias.dim(0)?;
        let x = attentional.contiguous()?.reshape(((), hidden))?;
        // The bias is one more input column: `[x, 1] · [W, b]ᵀ` is one gemm, and its
        // gradient holds b's (a column sum done by gemm, not candle's strided sum over the
        // rows). Adding `1·bᵀ` as a tensor of its own cost a pass over `[tokens, vocab]`,
        // the step's largest tensor, forward, and eight backward: candle accumulates each
        // gradient edge as zeros + add.
        let ones = Tensor::ones((x.dim(0)?, 1), x.dtype(), x.device())?;
        let x1 = Tensor::cat(&[&x, &ones], 1)?;
        let wb = Tensor::cat(&[&self.weight, &self.bias.unsqueeze(1)?], 1)?;
        x1.matmul(&wb.t()?)?.reshape(out_dims)
    }

    /// The layer onto the target ids `ids` (u32 `[k]`): column j scores `ids[j]`.
    pub fn restrict(&self, ids: &Tensor) -> Result<Self> {
        Ok(Self {
            weight: self.weight.index_select(ids, 0)?.contiguous()?,
            bias: self.bias.index_select(ids, 0)?,
        })
    }

    /// Search: `[rows, hidden]` → log-probabilities `[rows, vocab]`. No rank-1 bias
    /// product (it exists for the training gradient): the bias is added inside the fused
    /// log-softmax.
    pub(crate) fn log_probs(&self, o: &Tensor) -> Result<Tensor> {
        biased_log_softmax(o.matmul(&self.weight.t()?)?, &self.bias)
    }
}
