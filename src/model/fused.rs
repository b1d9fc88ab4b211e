//! What the fused recurrences of [`crate::model::lstm`] and [`crate::model::gru`] share: the
//! `CustomOp3` plumbing around a recurrence over a whole sequence (dtype dispatch, the
//! contiguous slices in, the storage and gradient tensors out), the saved state kept for
//! backward, the split of the batch into blocks and the way the layers call the op.
//!
//! A recurrence ([`FusedRecurrence`]) only says how to run forward and backward on flat
//! slices; [`Fused`] turns it into a candle op. Its inputs are always `xproj [B,T,G·H]`
//! (`G` gates), `w_hh [G·H,H]` and a flat `aux` (initial state and parameters, laid out as
//! the recurrence chooses), and its output `[B, T + STATE_ROWS, H]`.

use std::any::Any;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::model::fastmath::Real;
use crate::model::int8_matmul::Int8Matrix;
use crate::model::lstm::shared::matmul;
use crate::model::lstm::{xs_times_w_ih, Recurrence};

/// One layer's recurrence over one batch, on flat slices.
pub(crate) trait FusedRecurrence: Send + Sync {
    /// Names the recurrence in error messages ("lstm recurrence").
    const WHAT: &'static str;
    /// The candle op's name ("lstm-recurrence").
    const NAME: &'static str;
    /// Gates per hidden unit: `xproj` has `GATES · H` columns, `w_hh` as many rows.
    const GATES: usize;
    /// Output rows after the `T` hidden states: the final state (`h`, then `c` if any).
    const STATE_ROWS: usize;

    /// `(batch, time, hidden)`.
    fn sizes(&self) -> (usize, usize, usize);

    /// Length of the `aux` input.
    fn aux_size(&self) -> usize;

    /// The output `[B, T + STATE_ROWS, H]`, flat, from inputs of the right sizes.
    fn forward<T: Real>(&self, xproj: &[T], w_hh: &[T], aux: &[T]) -> Vec<T>;

    /// The gradients of `xproj`, `w_hh` and `aux` from the output's, flat.
    fn backward<T: Real>(
        &self,
        grad_out: &[T],
        w_hh: &[T],
        aux: &[T],
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)>;
}

/// The fused recurrence of one layer over one batch: what the LSTM's and the GRU's have in
/// common. `K` marks the cell ([`crate::model::lstm`]'s or [`crate::model::gru`]'s
/// `kernel.rs`, which implement the rest: the layout of `aux`, forward and backward).
pub(crate) struct Recurrent<K> {
    pub(crate) batch: usize,
    pub(crate) time: usize,
    pub(crate) hidden: usize,
    pub(crate) reverse: bool,
    pub(crate) layer_norm: bool,
    /// `[B,T]`, true at real tokens. Padding leaves the state unchanged and outputs zero.
    pub(crate) mask: Vec<bool>,
    /// Forward keeps its intermediates only when a gradient may be asked for.
    pub(crate) keep_saved: bool,
    pub(crate) saved: SavedState,
    /// Search with `--int8`: `W_hh` quantized; each step's `h·W_hhᵀ` is then an int8
    /// product ([`crate::model::int8_matmul`]).
    pub(crate) int8_hh: Option<Arc<Int8Matrix>>,
    cell: PhantomData<K>,
}

impl<K> Recurrent<K> {
    pub(crate) fn new(
        (batch, time, hidden): (usize, usize, usize),
        reverse: bool,
        layer_norm: bool,
        mask: Vec<bool>,
        keep_saved: bool,
    ) -> Self {
        debug_assert_eq!(mask.len(), batch * time);
        Self {
            batch,
            time,
            hidden,
            reverse,
            layer_norm,
            mask,
            keep_saved,
            saved: SavedState::default(),
            int8_hh: None,
            cell: PhantomData,
        }
    }

    /// The recurrent product in int8 from `w_hh` (search only: there is no backward).
    pub(crate) fn with_int8_hh(mut self, w_hh: Option<Arc<Int8Matrix>>) -> Self {
        debug_assert!(w_hh.is_none() || !self.keep_saved);
        self.int8_hh = w_hh;
        self
    }

    /// `rec = hs · W_hhᵀ` for the `rows` rows of a batch block (`gates` = G·H columns): in
    /// int8 where search asked for it ([`Self::with_int8_hh`]), else with gemm from `w_hh`.
    #[inline(always)]
    pub(crate) fn recurrent_product<T: Real>(
        &self,
        (rows, gates, hidden): (usize, usize, usize),
        rec: &mut [T],
        hs: &[T],
        w_hh: &[T],
    ) {
        if let Some(q) = &self.int8_hh {
            if let (Some(hs), Some(rec)) = (T::as_f32(hs), T::as_f32_mut(rec)) {
                q.product(hs, rows, rec);
                return;
            }
        }
        matmul(
            (rows, gates, hidden),
            rec,
            gates,
            (hs, hidden, 1),
            (w_hh, 1, hidden),
        );
    }

    /// Time positions the saved buffers hold per sequence: all of them when backward will
    /// need them, else one reused slot (inference skips storing what only backward reads).
    pub(crate) fn saved_slots(&self) -> usize {
        if self.keep_saved {
            self.time
        } else {
            1
        }
    }

    /// The time position of processing step `step` (backwards for a reversed layer).
    pub(crate) fn time_at(&self, step: usize) -> usize {
        if self.reverse {
            self.time - 1 - step
        } else {
            step
        }
    }
}

/// A [`FusedRecurrence`] as a candle op (f32 and f64 on the CPU).
pub(crate) struct Fused<R>(pub(crate) R);

impl<R: FusedRecurrence> Fused<R> {
    fn out_shape(&self) -> Shape {
        let (b, t, h) = self.0.sizes();
        Shape::from((b, t + R::STATE_ROWS, h))
    }

    fn fwd_typed<T: Real>(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        (s3, l3): (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let what = |input: &str| format!("{}: {input}", R::WHAT);
        let xproj = slice_of::<T>(s1, l1, &what("xproj"))?;
        let w_hh = slice_of::<T>(s2, l2, &what("weight_hh"))?;
        let aux = slice_of::<T>(s3, l3, &what("aux"))?;
        let (b, t, h) = self.0.sizes();
        let gh = R::GATES * h;
        if xproj.len() != b * t * gh || w_hh.len() != gh * h || aux.len() != self.0.aux_size() {
            candle_core::bail!(
                "{}: inputs of {}, {} and {} elements do not fit batch {b}, time {t}, hidden {h}",
                R::WHAT,
                xproj.len(),
                w_hh.len(),
                aux.len()
            );
        }
        let out = self.0.forward(xproj, w_hh, aux);
        Ok((T::to_cpu_storage_owned(out), self.out_shape()))
    }

    fn bwd_typed<T: Real>(
        &self,
        w_hh: &Tensor,
        aux: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let flat = |x: &Tensor| x.flatten_all()?.to_vec1::<T>();
        let (d_x, d_w, d_aux) = self.0.backward(&flat(grad)?, &flat(w_hh)?, &flat(aux)?)?;
        let dev = grad.device();
        let (b, t, h) = self.0.sizes();
        let gh = R::GATES * h;
        Ok((
            Some(Tensor::from_vec(d_x, (b, t, gh), dev)?),
            Some(Tensor::from_vec(d_w, (gh, h), dev)?),
            Some(Tensor::from_vec(d_aux, aux.dims(), dev)?),
        ))
    }
}

impl<R: FusedRecurrence> CustomOp3 for Fused<R> {
    fn name(&self) -> &'static str {
        R::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let args = ((s1, l1), (s2, l2), (s3, l3));
        match (s1.dtype(), s2.dtype(), s3.dtype()) {
            (DType::F32, DType::F32, DType::F32) => self.fwd_typed::<f32>(args.0, args.1, args.2),
            (DType::F64, DType::F64, DType::F64) => self.fwd_typed::<f64>(args.0, args.1, args.2),
            (a, b, c) => candle_core::bail!(
                "{} runs on f32 or f64 only, got {a:?}, {b:?}, {c:?}",
                R::WHAT
            ),
        }
    }

    fn bwd(
        &self,
        _xproj: &Tensor,
        w_hh: &Tensor,
        aux: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        match grad_res.dtype() {
            DType::F32 => self.bwd_typed::<f32>(w_hh, aux, grad_res),
            DType::F64 => self.bwd_typed::<f64>(w_hh, aux, grad_res),
            d => candle_core::bail!("{} runs on f32 or f64 only, got {d:?}", R::WHAT),
        }
    }
}

/// What a forward keeps for its backward: the recurrence's `Saved<f32>` or `Saved<f64>`,
/// whichever the forward ran on.
#[derive(Default)]
pub(crate) struct SavedState(Mutex<Option<Box<dyn Any + Send + Sync>>>);

impl SavedState {
    pub(crate) fn put<S: Any + Send + Sync>(&self, saved: S, what: &str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|_| panic!("{what}: saved state poisoned")) = Some(Box::new(saved));
    }

    /// Runs `f` on what the forward saved, an error if it saved nothing of type `S`.
    pub(crate) fn with<S: Any, O>(&self, what: &str, f: impl FnOnce(&S) -> O) -> Result<O> {
        let guard = self
            .0
            .lock()
            .unwrap_or_else(|_| panic!("{what}: saved state poisoned"));
        match guard.as_ref().and_then(|s| s.downcast_ref::<S>()) {
            Some(s) => Ok(f(s)),
            None => candle_core::bail!("{what}: backward without the forward's saved state"),
        }
    }
}

/// Splits `0..batch` into contiguous blocks, one per rayon thread (rows never interact in a
/// recurrence, so each block can run the whole sequence on its own).
pub(crate) fn batch_blocks(batch: usize) -> Vec<Range<usize>> {
    let n = rayon::current_num_threads().clamp(1, batch.max(1));
    let per = batch.div_ceil(n).max(1);
    (0..batch)
        .step_by(per)
        .map(|b| b..(b + per).min(batch))
        .collect()
}

/// Runs `f` on every batch block's job: in this thread when there is one block, on rayon's
/// threads otherwise (one fork/join per call).
pub(crate) fn map_blocks<J: Send, O: Send>(
    jobs: Vec<J>,
    f: impl Fn(J) -> O + Sync + Send,
) -> Vec<O> {
    if jobs.len() == 1 {
        jobs.into_iter().map(f).collect()
    } else {
        jobs.into_par_iter().map(f).collect()
    }
}

/// Sums the blocks' shares `(d_params, d_w_hh)` of the parameter gradients.
pub(crate) fn sum_block_shares<T: Real>(
    parts: &[(Vec<T>, Vec<T>)],
    params_len: usize,
    w_hh_len: usize,
) -> (Vec<T>, Vec<T>) {
    let mut d_params = vec![T::zero(); params_len];
    let mut d_w_hh = vec![T::zero(); w_hh_len];
    for (part_params, part_w) in parts {
        for (d, &p) in d_params.iter_mut().zip(part_params) {
            *d += p;
        }
        for (d, &p) in d_w_hh.iter_mut().zip(part_w) {
            *d += p;
        }
    }
    (d_params, d_w_hh)
}

/// Cuts the first `n` elements off `buf` (all that is left if `buf` is an unused, empty
/// layer-norm buffer) and returns them.
pub(crate) fn take<'a, T>(buf: &mut &'a mut [T], n: usize) -> &'a mut [T] {
    let n = n.min(buf.len());
    let (head, tail) = std::mem::take(buf).split_at_mut(n);
    *buf = tail;
    head
}

/// The elements of a contiguous CPU tensor; `what` names it in the error otherwise.
pub(crate) fn slice_of<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// Whether `recurrence` runs as the fused op on `xproj`: [`Recurrence::Auto`] on the CPU in
/// f32/f64 and for at least one step.
pub(crate) fn runs_fused(xproj: &Tensor, recurrence: Recurrence) -> Result<bool> {
    Ok(recurrence == Recurrence::Auto
        && xproj.device().is_cpu()
        && matches!(xproj.dtype(), DType::F32 | DType::F64)
        && xproj.dim(1)? > 0)
}

/// `mask: [batch, time]` as flags, true at real tokens.
pub(crate) fn mask_flags(mask: &Tensor) -> Result<Vec<bool>> {
    Ok(mask
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|m| m > 0.5)
        .collect())
}

/// A recurrent layer's `W_ih` and `W_hh` quantized for search with `--int8`
/// ([`crate::model::int8_matmul`]: int8 rows with a scale each, 7-bit activations per row,
/// i32 sums), for the LSTM and the GRU alike.
#[derive(Debug)]
pub(crate) struct Int8Products {
    ih: Int8Matrix,
    hh: Arc<Int8Matrix>,
}

impl Int8Products {
    /// Quantizes the two matrices (`[G·H, input]`, `[G·H, H]`, on the CPU).
    pub(crate) fn quantize(weight_ih: &Tensor, weight_hh: &Tensor) -> Result<Self> {
        Ok(Self {
            ih: Int8Matrix::from_tensor(weight_ih)?,
            hh: Arc::new(Int8Matrix::from_tensor(weight_hh)?),
        })
    }

    /// The recurrent matrix for a fused op that `needs_grad` or not: int8 has no backward,
    /// so an op that may be differentiated computes in f32.
    pub(crate) fn recurrent(int8: Option<&Self>, needs_grad: bool) -> Option<Arc<Int8Matrix>> {
        int8.filter(|_| !needs_grad).map(|q| q.hh.clone())
    }
}

/// `x·W_ihᵀ` for every position of `x: [.., input]`: in int8 with `int8`, else in f32.
pub(crate) fn input_product(
    int8: Option<&Int8Products>,
    x: &Tensor,
    weight_ih: &Tensor,
) -> Result<Tensor> {
    match int8 {
        Some(q) => q.ih.product_tensor(x),
        None => xs_times_w_ih(x, weight_ih),
    }
}

/// Runs the op that `make_op(needs_grad)` builds on `xproj`, `w_hh` and the concatenation of
/// `aux` (all in `xproj`'s dtype, made contiguous); it keeps what backward needs only when
/// one of them tracks a gradient. Returns the output `[B, T + STATE_ROWS, H]`.
pub(crate) fn apply<R: FusedRecurrence + 'static>(
    xproj: &Tensor,
    w_hh: &Tensor,
    aux: &[Tensor],
    make_op: impl FnOnce(bool) -> R,
) -> Result<Tensor> {
    let aux = Tensor::cat(aux, 0)?.to_dtype(xproj.dtype())?;
    let xproj = xproj.contiguous()?;
    let w_hh = w_hh.to_dtype(xproj.dtype())?.contiguous()?;
    let needs_grad = xproj.track_op() || w_hh.track_op() || aux.track_op();
    let op = Fused(make_op(needs_grad));
    if needs_grad {
        xproj.apply_op3(&w_hh, &aux, op)
    } else {
        xproj.apply_op3_no_bwd(&w_hh, &aux, &op)
    }
}

/// Row `row` of the op's output, `[B, H]`, as a dense copy rather than a view: some candle
/// ops (and custom kernels downstream) want contiguous inputs, and the copies are small next
/// to the recurrence.
pub(crate) fn output_row(out: &Tensor, row: usize) -> Result<Tensor> {
    out.narrow(1, row, 1)?.squeeze(1)?.contiguous()
}
