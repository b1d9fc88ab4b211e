//! Collective communication for data-parallel training: the few operations a
//! synchronous data-parallel trainer needs (an all-reduce of one flat buffer, a
//! broadcast from rank 0, a barrier), behind one small trait with a backend per
//! transport.
//!
//! * [`SingleProcess`]: one rank, every operation a no-op. The default build.
//! * `Mpi` (cargo feature `mpi`): rsmpi over the system's MPI library, for
//!   `mpirun -np N rnmt train …` on the cores of one machine or on a cluster.
//!
//! Every collective runs under a [`Watchdog`] deadline: a rank that died or hangs would
//! otherwise leave the others blocked in MPI forever. A rank that fails with an error
//! aborts the whole job (see [`Collective::finish`]) instead of waiting in MPI's
//! shutdown for ranks that wait for it.

#[cfg(feature = "mpi")]
mod mpi_backend;
mod partition;
mod watchdog;

use anyhow::{bail, Result};

#[cfg(feature = "mpi")]
pub use mpi_backend::Mpi;
pub use partition::balanced_shards;
pub use watchdog::Watchdog;

/// The collective operations of synchronous data parallelism. Every rank calls the same
/// operations in the same order (MPI's rule for collectives).
pub trait Collective {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Element-wise sum of every rank's `send` into `recv` (of the same length); every
    /// rank gets the same result. Two buffers, not one in place: MPI's in-place marker
    /// differs between MPI libraries, and the caller fills `send` anyway.
    fn all_reduce_sum_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()>;
    /// [`Self::all_reduce_sum_f32`] for f64 (loss sums, token counts, flags).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Overwrites `buf` on every rank with rank 0's.
    fn broadcast_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// Rank 0's bytes on every rank (any length: the length travels first).
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()>;
    /// Waits until every rank has arrived.
    fn barrier(&self) -> Result<()>;
    /// The transport's name for logs: "single process", "MPI (Open MPI v4.1.4 …)".
    fn describe(&self) -> String;
    /// Marks this rank's work as done: dropping the collective then shuts the transport
    /// down cleanly. Dropped without it (an error, a panic), a multi-rank transport
    /// aborts every rank at once, so none is left waiting for a rank that gave up.
    fn finish(&self) {}

    fn is_root(&self) -> bool {
        self.rank() == 0
    }
}

/// One process: rank 0 of 1.
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        recv.copy_from_slice(send);
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_f32(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn describe(&self) -> String {
        "single process".to_string()
    }
}

/// The rank and size an MPI launcher (Open MPI's mpirun, MPICH's Hydra, Slurm's srun
/// with PMI) announces in the environment, if any.
pub fn launcher_ranks() -> Option<(usize, usize)> {
    const PAIRS: [(&str, &str); 4] = [
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
        ("PMIX_RANK", "PMIX_SIZE"),
        ("PMI_RANK", "PMI_SIZE"),
        ("SLURM_PROCID", "SLURM_NTASKS"),
    ];
    let read = |k: &str| std::env::var(k).ok()?.trim().parse::<usize>().ok();
    PAIRS.iter().find_map(|(r, s)| Some((read(r)?, read(s)?)))
}

/// The collective for this process: MPI when the build has it and a launcher started
/// us, else a single process. Started by a launcher with more than one rank but built
/// without MPI, each process would silently train a whole model of its own: an error.
pub fn init(timeout_s: f64) -> Result<Box<dyn Collective>> {
    let launched = launcher_ranks();
    #[cfg(feature = "mpi")]
    if launched.is_some() {
        return Ok(Box::new(Mpi::init(timeout_s)?));
    }
    let _ = timeout_s;
    if let Some((rank, size)) = launched.filter(|&(_, size)| size > 1) {
        bail!(
            "this process is rank {rank} of {size} under an MPI launcher, but this rnmt was \
             built without MPI: every rank would train a model of its own. Build it with \
             `cargo build --release --features mpi` (needs Debian's libopenmpi-dev, \
             openmpi-bin and libclang-dev)"
        );
    }
    Ok(Box::new(SingleProcess))
}
