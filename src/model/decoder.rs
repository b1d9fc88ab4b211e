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

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Result, Tensor};
use candle_nn::{embedding, linear, Embedding, Linear, Module, VarBuilder};

use super::attention::{Attention, AttentionMemory};
use super::config::ModelConfig;
use super::dropout::Dropout;
use super::half_logits;
use super::int8_matmul::Int8Matrix;
use super::log_softmax::biased_log_softmax;
use super::lstm::LstmState;
use super::recurrent::RecurrentLayer;
use super::row_cache::RowCache;

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
    /// Search only, GNMT wiring: `E·W_ihᵀ` of the bottom layer for the target subwords
    /// (see [`Decoder::prepare_for_search`]).
    bottom_projection: Option<BottomProjection>,
    input_feeding: bool,
    hidden_size: usize,
    word_dropout: f32,
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
            word_dropout: cfg.target_word_dropout,
        })
    }

    /// The dtype the decoder computes in (that of its parameters).
    pub fn dtype(&self) -> candle_core::DType {
        self.output.bias.dtype()
    }

    /// Prepares the decoder for search; the weights must not change afterwards (inference
    /// only).
    ///
    /// * The output layer may keep an f16 copy of its weight for steps of a few rows and a
    ///   transposed one for the others ([`OutputLayer::prepare_for_search`]).
    /// * With the GNMT wiring the bottom layer's input is the embedding of the previous
    ///   subword alone, so its product with `W_ih` (a quarter of the FLOPs of a step) can
    ///   be computed once per subword and looked up. On the CPU in f32 the rows are
    ///   computed on first use, in fixed blocks ([`RowCache`]): the whole table would be
    ///   most of the time of a one-sentence translation. Elsewhere the whole table is
    ///   computed here. Not with input feeding, where the bottom input also holds the
    ///   previous attentional vector.
    pub fn prepare_for_search(&mut self) -> Result<()> {
        self.output.prepare_for_search();
        if self.input_feeding {
            return Ok(());
        }
        let embeddings = self.embedding.embeddings();
        self.bottom_projection = Some(
            if embeddings.device().is_cpu() && self.dtype() == candle_core::DType::F32 {
                BottomProjection::Lazy(RowCache::new(embeddings.dim(0)?))
            } else {
                BottomProjection::Table(self.layers[0].input_projection(embeddings)?)
            },
        );
        Ok(())
    }

    /// Search computes the output layer ([`OutputLayer::quantize_int8`]) and the recurrent
    /// layers' products ([`RecurrentLayer::quantize_int8`]) in int8 from now on.
    pub fn quantize_int8(&mut self) -> Result<()> {
        for layer in self.layers.iter_mut().chain(&mut self.conditional) {
            layer.quantize_int8()?;
        }
        self.output.quantize_int8()
    }

    /// Rows `prev` of the bottom layer's `E·W_ihᵀ` (see [`Decoder::prepare_for_search`]).
    fn bottom_projection_rows(&self, table: &BottomProjection, prev: &Tensor) -> Result<Tensor> {
        match table {
            BottomProjection::Table(t) => t.index_select(prev, 0),
            BottomProjection::Lazy(cache) => {
                let ids = prev.to_vec1::<u32>()?;
                if ids.is_empty() {
                    return self.layers[0].input_projection(&self.embedding.forward(prev)?);
                }
                let device = prev.device();
                let rows = cache.gather(&ids, |start, len| {
                    let block = self.embedding.embeddings().narrow(0, start, len)?;
                    let projected = self.layers[0].input_projection(&block)?;
                    projected.flatten_all()?.to_vec1::<f32>()
                })?;
                let width = rows.len() / ids.len();
                Tensor::from_vec(rows, (ids.len(), width), device)
            }
        }
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

    /// Teacher forcing up to the output layer's input, for `tgt_in: u32 [batch, tgt]` and
    /// `tgt_mask: [batch, tgt]` in the model's dtype: the attentional vectors after dropout
    /// `[batch, tgt, hidden]` and the attention weights `[batch, tgt, src]`. Training feeds
    /// them to the output layer fused with the loss (`train::loss::OutputLoss`), scoring to
    /// [`OutputLayer::logits`].
    pub fn forward_features(
        &self,
        mem: &AttentionMemory,
        tgt_in: &Tensor,
        tgt_mask: &Tensor,
        dropout: &mut Dropout,
    ) -> Result<(Tensor, Tensor)> {
        let emb = dropout.drop_words(&self.embedding.forward(tgt_in)?, self.word_dropout)?;
        let emb = dropout.apply(&emb)?;
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
        Ok((dropout.apply(&attentional)?, weights))
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
            Some(table) => StepInput::Projected(self.bottom_projection_rows(table, prev)?),
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

/// The bottom layer's `E·W_ihᵀ` for search: the whole table, or rows computed on first use.
enum BottomProjection {
    Table(Tensor),
    Lazy(RowCache),
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
    /// Set by [`OutputLayer::prepare_for_search`]: the weights no longer change.
    for_search: bool,
    /// Search: an f16 copy of the weight `[vocab, hidden]` for a few rows at a time
    /// ([`half_logits`]), made on first use where it is exact; `None` where it is not.
    /// Shared by clones (search clones the layer per batch).
    half: Arc<OnceLock<Option<Tensor>>>,
    /// Search: the weight stored `[hidden, vocab]`, row-major, for the steps the f16 kernel
    /// does not take, made on the first such step (a one-sentence run may never need it).
    /// The gemm of `x·Wᵀ` with `W` stored `[vocab, hidden]` repacks all of `W` at every
    /// call: measured with 2 threads on the AVX2 machine, 8,000 × 256, 5 rows, 1.27 ms
    /// against 0.51 ms stored transposed; equal from 160 rows (a batch of 32 at beam 5).
    transposed: Arc<OnceLock<Tensor>>,
    /// Search with `--int8`: the weight quantized ([`int8_matmul`]), used for every step.
    int8: Option<Arc<Int8Matrix>>,
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
            for_search: false,
            half: Arc::new(OnceLock::new()),
            transposed: Arc::new(OnceLock::new()),
            int8: None,
        })
    }

    /// Quantizes the weight to int8 for search ([`int8_matmul`]); every search step then
    /// uses it. The CPU only; the weights must not change afterwards.
    pub(crate) fn quantize_int8(&mut self) -> Result<()> {
        self.int8 = Some(Arc::new(Int8Matrix::from_tensor(&self.weight)?));
        self.for_search = true;
        Ok(())
    }

    /// Marks the layer as used by search only, so that an f16 copy of the weight may be made
    /// for steps of a few rows ([`half_logits`]) and a transposed one for the others: the
    /// weights must not change afterwards.
    pub(crate) fn prepare_for_search(&mut self) {
        self.for_search = true;
    }

    /// The f16 weight for search's `x·Wᵀ` when `x` has few rows ([`half_logits::MAX_ROWS`]),
    /// on the CPU, once the layer is prepared for search, and where the f16 copy is exact.
    fn half_weight_for(&self, x: &Tensor) -> Result<Option<&Tensor>> {
        let rows = x.dim(0)?;
        if !self.for_search
            || rows == 0
            || rows > half_logits::MAX_ROWS
            || !x.device().is_cpu()
            || x.dtype() != DType::F32
            || self.weight.dtype() != DType::F32
        {
            return Ok(None);
        }
        if self.half.get().is_none() {
            let copy = {
                let (storage, layout) = self.weight.storage_and_layout();
                let candle_core::Storage::Cpu(cpu) = &*storage else {
                    return Ok(None);
                };
                let Some((start, end)) = layout.contiguous_offsets() else {
                    return Ok(None);
                };
                half_logits::exact_f16(&cpu.as_slice::<f32>()?[start..end])
            };
            let copy = match copy {
                Some(h) => Some(Tensor::from_vec(h, self.weight.shape(), x.device())?),
                None => None,
            };
            let _ = self.half.set(copy);
        }
        Ok(self.half.get().and_then(Option::as_ref))
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

    /// `[vocab, hidden]`: the target embeddings themselves when tied.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `[vocab]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The layer onto the target ids `ids` (u32 `[k]`): column j scores `ids[j]`.
    pub fn restrict(&self, ids: &Tensor) -> Result<Self> {
        Ok(Self {
            weight: self.weight.index_select(ids, 0)?.contiguous()?,
            bias: self.bias.index_select(ids, 0)?,
            for_search: self.for_search,
            // A shortlist's columns are few: reading them is cheap in f32.
            half: Arc::new(OnceLock::from(None)),
            transposed: Arc::new(OnceLock::new()),
            int8: match &self.int8 {
                Some(q) => Some(Arc::new(q.select(&ids.to_vec1::<u32>()?))),
                None => None,
            },
        })
    }

    /// Search: `[rows, hidden]` → log-probabilities `[rows, vocab]`. No rank-1 bias
    /// product (it exists for the training gradient): the bias is added inside the fused
    /// log-softmax.
    pub(crate) fn log_probs(&self, o: &Tensor) -> Result<Tensor> {
        if let Some(q) = &self.int8 {
            return biased_log_softmax(q.product_tensor(o)?, &self.bias);
        }
        if let Some(half) = self.half_weight_for(o)? {
            let rows = o.dim(0)?;
            let vocab = self.bias.dim(0)?;
            let x = o.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let mut out = vec![0f32; rows * vocab];
            let (storage, layout) = half.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else {
                candle_core::bail!("the f16 output weight is on the CPU");
            };
            let (start, end) = layout
                .contiguous_offsets()
                .expect("made contiguous in half_weight_for");
            let weight = &cpu.as_slice::<half::f16>()?[start..end];
            half_logits::logits(&x, rows, weight, vocab, &mut out);
            drop(storage);
            let logits = Tensor::from_vec(out, (rows, vocab), o.device())?;
            return biased_log_softmax(logits, &self.bias);
        }
        let logits = if self.for_search {
            let transposed = match self.transposed.get() {
                Some(t) => t,
                None => {
                    let t = self.weight.t()?.contiguous()?;
                    self.transposed.get_or_init(|| t)
                }
            };
            o.matmul(transposed)?
        } else {
            o.matmul(&self.weight.t()?)?
        };
        biased_log_softmax(logits, &self.bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Cell;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// The rows search looks up on the CPU (computed block by block on first use) are
    /// the rows of the whole table, for both cells, in any order and asked for twice.
    #[test]
    fn lazily_computed_bottom_projections_equal_the_whole_table() {
        for cell in [Cell::Lstm, Cell::Gru] {
            let cfg = ModelConfig {
                cell,
                tgt_vocab_size: 75,
                embedding_size: 12,
                hidden_size: 8,
                decoder_layers: 2,
                ..ModelConfig::default()
            };
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let mut decoder = Decoder::new(&cfg, vb).unwrap();
            let table = decoder.layers[0]
                .input_projection(decoder.embedding.embeddings())
                .unwrap();
            decoder.prepare_for_search().unwrap();
            let Some(lazy @ BottomProjection::Lazy(cache)) = &decoder.bottom_projection else {
                panic!("on the CPU in f32 the table is filled on first use");
            };
            for ids in [vec![74u32, 3, 40, 3], vec![0, 74, 33, 31, 32]] {
                let prev = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap();
                let got = decoder.bottom_projection_rows(lazy, &prev).unwrap();
                let want = table.index_select(&prev, 0).unwrap();
                assert_eq!(got.dims(), want.dims());
                let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
                assert!(diff.to_scalar::<f32>().unwrap() < 1e-5, "{cell:?}");
            }
            // Blocks of rows 0–31, 32–63 and 64–74: all three, each once.
            assert_eq!(cache.computed_blocks(), 3);
            let empty = Tensor::new(&[] as &[u32], &Device::Cpu).unwrap();
            let rows = decoder.bottom_projection_rows(lazy, &empty).unwrap();
            assert_eq!(rows.dims(), [0, table.dim(1).unwrap()]);
        }
    }

    /// Search's log-probabilities equal the unprepared layer's at every step size: from the
    /// f16 copy for a few rows (made only when the weight is exactly f16), from the
    /// transposed copy for more (made on the first such step only).
    #[test]
    fn search_log_probs_equal_the_plain_layer_at_every_step_size() {
        let cfg = ModelConfig {
            tgt_vocab_size: 301,
            embedding_size: 16,
            hidden_size: 16,
            tie_target_embeddings: false,
            ..ModelConfig::default()
        };
        for f16_exact in [true, false] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let embedding =
                embedding(cfg.tgt_vocab_size, cfg.embedding_size, vb.pp("emb")).unwrap();
            let mut layer = OutputLayer::new(&cfg, &embedding, vb.pp("output")).unwrap();
            let shape = (cfg.tgt_vocab_size, cfg.hidden_size);
            let mut weight = Tensor::randn(0f32, 0.3, shape, &Device::Cpu).unwrap();
            if f16_exact {
                weight = weight
                    .to_dtype(DType::F16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap();
            }
            varmap.data().lock().unwrap()["output.weight"]
                .set(&weight)
                .unwrap();
            let plain = layer.clone();
            layer.prepare_for_search();
            for rows in [1, 5, half_logits::MAX_ROWS, half_logits::MAX_ROWS + 1, 40] {
                let x = Tensor::randn(0f32, 1.0, (rows, cfg.hidden_size), &Device::Cpu).unwrap();
                let want = plain.log_probs(&x).unwrap();
                let got = layer.log_probs(&x).unwrap();
                let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
                assert!(
                    diff.to_scalar::<f32>().unwrap() < 1e-5,
                    "{rows} rows, f16 exact: {f16_exact}"
                );
                let half_made = layer.half.get().is_some_and(Option::is_some);
                assert_eq!(half_made, f16_exact, "{rows} rows");
                let transposed_made = layer.transposed.get().is_some();
                assert_eq!(
                    transposed_made,
                    rows > half_logits::MAX_ROWS || !f16_exact,
                    "{rows} rows, f16 exact: {f16_exact}"
                );
            }
        }
    }
}
