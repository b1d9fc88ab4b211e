//! Where computation runs: the candle device (`cpu`, `cuda:N`, `metal:N`) and the CPU
//! thread count, shared by training and inference.

use anyhow::{bail, Context, Result};

/// `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N` → a candle device.
pub fn parse_device(spec: &str) -> Result<DeviceSpec> {
    let (kind, ordinal) = match spec.split_once(':') {
        Some((k, n)) => (
            k,
            n.parse::<usize>()
                .map_err(|_| anyhow::anyhow!("device = \"{spec}\": bad device number `{n}`"))?,
        ),
        None => (spec, 0),
    };
    Ok(match kind {
        "cpu" => DeviceSpec::Cpu,
        "cuda" => DeviceSpec::Cuda(ordinal),
        "metal" => DeviceSpec::Metal(ordinal),
        _ => bail!("device = \"{spec}\": expected cpu, cuda:N or metal"),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl DeviceSpec {
    pub fn device(self) -> Result<candle_core::Device> {
        Ok(match self {
            DeviceSpec::Cpu => candle_core::Device::Cpu,
            DeviceSpec::Cuda(n) => candle_core::Device::new_cuda(n)
                .with_context(|| format!("cannot open cuda:{n} (built with --features cuda?)"))?,
            DeviceSpec::Metal(n) => candle_core::Device::new_metal(n)
                .with_context(|| format!("cannot open metal:{n} (built with --features metal?)"))?,
        })
    }
}

/// Sets the CPU thread count for everything that computes.
///
/// candle's matmul hands `gemm` a `Parallelism::Rayon(n)` with `n` read from
/// `RAYON_NUM_THREADS` (not from rayon's pool), and gemm and rnmt's fused kernels run on
/// rayon's global pool: `threads` sets both, and must run before the first tensor op.
/// candle's element-wise ops use a pool of their own, sized once from
/// `CANDLE_NUM_THREADS`, whose workers spin between ops and take the core from gemm;
/// the element-wise ops are small here, so that pool gets one thread (the caller) unless
/// `CANDLE_NUM_THREADS` is set. Measured on Multi30k config A, 2 threads, 40 steps, 3
/// alternating rounds: 2,658 target tok/s against 2,496 with a 2-thread element-wise
/// pool (+6.5 %).
pub fn set_threads(threads: usize) -> Result<()> {
    check_threads(threads)?;
    if threads == 0 {
        return Ok(());
    }
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // Fails only if the pool already exists (e.g. a second run in one process).
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    Ok(())
}

/// How many batches search runs at once on `device` when `requested` (0: the default) is
/// asked for: on the CPU one single-threaded worker per search thread, as Marian's CPU
/// decoding runs one translation per thread (a batch of beam search runs faster on one
/// thread than split over two); on a GPU one.
pub fn batch_workers(requested: usize, device: &candle_core::Device) -> usize {
    match (requested, device.is_cpu()) {
        (0, true) => rayon::current_num_threads(),
        (0, false) => 1,
        (n, _) => n,
    }
}

/// One rayon pool per batch worker, the search threads shared out between them, so that
/// batches searched at once do not contend for the same threads (each worker runs its
/// search inside its pool: the fused kernels and gemm split work over the pool they run
/// in). Thread `i` of pool `w` is named `{name}-{w}-{i}`.
pub fn worker_pools(workers: usize, name: &str) -> Result<Vec<rayon::ThreadPool>> {
    let threads_each = (rayon::current_num_threads() / workers.max(1)).max(1);
    (0..workers)
        .map(|w| {
            let name = name.to_string();
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads_each)
                .thread_name(move |i| format!("{name}-{w}-{i}"))
                .build()
                .context("starting a search thread pool")
        })
        .collect()
}

/// More threads than this only adds scheduling overhead on any machine rnmt targets; a
/// typo such as `--threads 10000` would otherwise spawn them all and stall.
pub const MAX_THREADS: usize = 256;

/// Threads per core allowed: compute-bound work gains nothing past one per core (two with
/// SMT), so four is already oversubscribed; more is a typo.
pub const THREADS_PER_CORE: usize = 4;

/// The most threads accepted here: [`THREADS_PER_CORE`] per core the OS gives this
/// process, and never over [`MAX_THREADS`].
pub fn max_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (THREADS_PER_CORE * cores).min(MAX_THREADS)
}

/// `threads` must be 0 (all cores) or 1..=[`max_threads`].
pub fn check_threads(threads: usize) -> Result<()> {
    let max = max_threads();
    if threads > max {
        bail!(
            "threads = {threads}: at most {max} ({THREADS_PER_CORE} per core of the {} here; \
             0 = one per core)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
    }
    Ok(())
}

/// Runs `f` on the row-major f32 contents of `t`. On the CPU a contiguous f32 tensor's own
/// buffer is borrowed, not copied: the search reads `[rows, vocab]` log-probabilities
/// every step (a copy would cost as much as the top-k that reads them), and data-parallel
/// training flattens every gradient every step. Elsewhere the tensor is copied to the host.
pub fn with_host_f32<R>(
    t: &candle_core::Tensor,
    f: impl FnOnce(&[f32]) -> R,
) -> candle_core::Result<R> {
    use candle_core::{DType, Storage};
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            return Ok(f(&cpu.as_slice::<f32>()?[start..end]));
        }
    }
    Ok(f(&t.flatten_all()?.to_vec1::<f32>()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_thread_bounds() {
        assert_eq!(parse_device("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(parse_device("cuda:1").unwrap(), DeviceSpec::Cuda(1));
        assert!(parse_device("tpu").is_err());
        assert!(check_threads(0).is_ok() && check_threads(max_threads()).is_ok());
        assert!(check_threads(max_threads() + 1).is_err());
        assert!(check_threads(10_000)
            .unwrap_err()
            .to_string()
            .contains("at most"));
    }
}
