//! Attention over the encoder memory: additive (Bahdanau), normalised additive (GNMT),
//! Luong dot and general, multi-head additive (RNMT+). Padded source positions get no
//! weight.
//!
//! Everything that depends only on the memory (key projections, values, the mask bias)
//! is computed once per sentence batch in [`Attention::memory`], not once per decoder
//! step, and queries come in as `[batch, steps, query]` so teacher forcing scores all
//! target steps in one batched matmul.

use candle_core::{Result, Tensor, D};
use candle_nn::{linear_no_bias, Linear, Module, VarBuilder};

use super::additive_score::additive_scores;
use super::config::AttentionKind;

/// Large enough that `exp` underflows to exactly 0 after the max is subtracted, small
/// enough to stay finite in f32 when added to real scores.
const MASKED_SCORE: f64 = -1e9;

enum Scorer {
    Dot,
    /// `qᵀ W m`, with `W m` precomputed as the keys.
    General {
        key: Linear,
    },
    /// `vᵀ tanh(W q + U m [+ b])`, per head; `U m` precomputed as the keys.
    Additive {
        query: Linear,
        key: Linear,
        v: Tensor,
        /// GNMT's normalisation: a bias inside the tanh and a scalar gain replacing `‖v‖`.
        normalized: Option<(Tensor, Tensor)>,
    },
}

pub struct Attention {
    scorer: Scorer,
    heads: usize,
    /// Multi-head attention projects the memory into per-head values; the others attend
    /// over the memory itself.
    value: Option<Linear>,
}

/// The memory-side half of attention for one batch of sentences.
#[derive(Clone, Debug)]
pub struct AttentionMemory {
    /// `[batch, src, key]`
    pub keys: Tensor,
    /// `[batch, src, value]`
    pub values: Tensor,
    /// `[batch, 1, src]`: 0 for real tokens, a large negative number for padding.
    pub mask_bias: Tensor,
}

impl AttentionMemory {
    /// Rows `rows` (u32 indices) of every tensor: reorders/expands the batch for search.
    pub fn select(&self, rows: &Tensor) -> Result<Self> {
        Ok(Self {
            keys: self.keys.index_select(rows, 0)?,
            values: self.values.index_select(rows, 0)?,
            mask_bias: self.mask_bias.index_select(rows, 0)?,
        })
    }
}

impl Attention {
    /// `query_size` is the decoder side, `memory_size` the encoder side; additive kinds
    /// use `query_size` units.
    pub fn new(
        kind: AttentionKind,
        heads: usize,
        query_size: usize,
        memory_size: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let units = query_size;
        let heads = if kind == AttentionKind::MultiHeadAdditive {
            heads
        } else {
            1
        };
        let additive = |vb: VarBuilder, normalized: bool| -> Result<Scorer> {
            let query = linear_no_bias(query_size, units, vb.pp("query"))?;
            let key = linear_no_bias(memory_size, units, vb.pp("key"))?;
            let v = vb.get(units, "v")?;
            let normalized = if normalized {
                Some((vb.get(units, "bias")?, vb.get(1, "gain")?))
            } else {
                None
            };
            Ok(Scorer::Additive {
                query,
                key,
                v,
                normalized,
            })
        };
        if heads == 0 || !units.is_multiple_of(heads) || !memory_size.is_multiple_of(heads) {
            candle_core::bail!(
                "{heads} attention heads must divide the query size {units} and the memory size {memory_size}"
            );
        }
        if kind == AttentionKind::Dot && query_size != memory_size {
            candle_core::bail!(
                "dot attention needs equal query and memory sizes, got {query_size} and {memory_size}"
            );
        }
        let scorer = match kind {
            AttentionKind::Dot => Scorer::Dot,
            AttentionKind::General => Scorer::General {
                key: linear_no_bias(memory_size, query_size, vb.pp("key"))?,
            },
            AttentionKind::Additive | AttentionKind::MultiHeadAdditive => {
                additive(vb.clone(), false)?
            }
            AttentionKind::NormalizedAdditive => additive(vb.clone(), true)?,
        };
        let value = if heads > 1 {
            Some(linear_no_bias(memory_size, memory_size, vb.pp("value"))?)
        } else {
            None
        };
        Ok(Self {
            scorer,
            heads,
            value,
        })
    }

    /// Precomputes the memory side: `memory [batch, src, memory]`, `mask [batch, src]`
    /// (1 real, 0 padding, any float dtype).
    pub fn memory(&self, memory: &Tensor, mask: &Tensor) -> Result<AttentionMemory> {
        let keys = match &self.scorer {
            Scorer::Dot => memory.clone(),
            Scorer::General { key } | Scorer::Additive { key, .. } => key.forward(memory)?,
        };
        let values = match &self.value {
            Some(value) => value.forward(memory)?,
            None => memory.clone(),
        };
        let mask_bias = mask
            .to_dtype(memory.dtype())?
            .affine(-MASKED_SCORE, MASKED_SCORE)?
            .unsqueeze(1)?;
        Ok(AttentionMemory {
            keys,
            values,
            mask_bias,
        })
    }

    /// `query [batch, steps, query]` → (context `[batch, steps, value]`, weights
    /// `[batch, steps, src]`, averaged over heads).
    pub fn forward(&self, query: &Tensor, mem: &AttentionMemory) -> Result<(Tensor, Tensor)> {
        let (b, t, _) = query.dims3()?;
        let s = mem.keys.dim(1)?;
        // scores: [batch, steps, src, heads]  or  [batch, steps, src] for one head.
        let scores = match &self.scorer {
            Scorer::Dot | Scorer::General { .. } => {
                query.matmul(&mem.keys.transpose(1, 2)?.contiguous()?)?
            }
            Scorer::Additive {
                query: wq,
                v,
                normalized,
                ..
            } => {
                let q = wq.forward(query)?; // [b, t, units]
                let (q, v) = match normalized {
                    Some((bias, gain)) => {
                        let norm = v.sqr()?.sum_all()?.sqrt()?;
                        (
                            q.broadcast_add(bias)?,
                            v.broadcast_mul(&gain.broadcast_div(&norm)?)?,
                        )
                    }
                    None => (q, v.clone()),
                };
                let e = additive_scores(&q, &mem.keys, &v, self.heads)?; // [b, t, s, heads]
                if self.heads == 1 {
                    e.squeeze(3)?
                } else {
                    e
                }
            }
        };
        if self.heads == 1 {
            let weights =
                candle_nn::ops::softmax(&scores.broadcast_add(&mem.mask_bias)?, D::Minus1)?;
            let context = weights.matmul(&mem.values)?;
            return Ok((context, weights));
        }
        let h = self.heads;
        let scores = scores.permute((0, 3, 1, 2))?; // [b, h, t, s]
        let weights = candle_nn::ops::softmax(
            &scores.broadcast_add(&mem.mask_bias.unsqueeze(1)?)?,
            D::Minus1,
        )?;
        let dv = mem.values.dim(2)? / h;
        let values = mem
            .values
            .reshape((b, s, h, dv))?
            .permute((0, 2, 1, 3))?
            .contiguous()?; // [b, h, s, dv]
        let context = weights
            .contiguous()?
            .matmul(&values)? // [b, h, t, dv]
            .permute((0, 2, 1, 3))?
            .reshape((b, t, h * dv))?;
        let weights = weights.mean(1)?;
        Ok((context, weights))
    }
}
