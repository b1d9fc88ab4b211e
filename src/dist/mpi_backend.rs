//! The MPI backend (cargo feature `mpi`): rsmpi over the system's MPI library.

use std::cell::Cell;
use std::mem::ManuallyDrop;
use std::time::Duration;

use anyhow::{bail, Result};
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::{Collective, Watchdog};

pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    watchdog: Watchdog,
    /// Set by [`Collective::finish`]: shut down with MPI_Finalize, not MPI_Abort.
    finished: Cell<bool>,
    universe: ManuallyDrop<mpi::environment::Universe>,
}

impl Drop for Mpi {
    fn drop(&mut self) {
        if !self.finished.get() {
            // MPI_Finalize would wait for the other ranks, which wait in a collective
            // for this one: end them all (Open MPI's mpirun then reports this rank).
            self.world.abort(1);
        }
        // SAFETY: dropped once, here; nothing uses the universe after this.
        unsafe { ManuallyDrop::drop(&mut self.universe) }
    }
}

impl Mpi {
    /// Initializes MPI. Only the main thread calls MPI (the compute threads never do),
    /// which is MPI_THREAD_FUNNELED.
    pub fn init(timeout_s: f64) -> Result<Self> {
        let Some((universe, _)) = mpi::initialize_with_threading(mpi::Threading::Funneled) else {
            bail!("MPI was initialized twice in one process");
        };
        let world = universe.world();
        let rank = world.rank() as usize;
        let size = world.size() as usize;
        let watchdog = Watchdog::start(
            format!("rank {rank} of {size}"),
            Duration::from_secs_f64(timeout_s),
        );
        Ok(Self {
            world,
            rank,
            size,
            watchdog,
            finished: Cell::new(false),
            universe: ManuallyDrop::new(universe),
        })
    }
}

/// MPI counts are C ints.
fn check_len(n: usize, what: &str) -> Result<()> {
    if n > i32::MAX as usize {
        bail!(
            "{what}: {n} elements exceed MPI's count limit of {}",
            i32::MAX
        );
    }
    Ok(())
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        check_len(send.len(), "all-reduce")?;
        if send.len() != recv.len() {
            bail!(
                "all-reduce: {} elements sent, room for {}",
                send.len(),
                recv.len()
            );
        }
        let _armed = self.watchdog.arm("the gradient all-reduce");
        self.world
            .all_reduce_into(send, recv, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        check_len(buf.len(), "all-reduce")?;
        let send = buf.to_vec();
        let _armed = self.watchdog.arm("an all-reduce of step totals");
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }

    fn broadcast_f32(&self, buf: &mut [f32]) -> Result<()> {
        check_len(buf.len(), "broadcast")?;
        let _armed = self.watchdog.arm("a broadcast of the weights from rank 0");
        self.world.process_at_rank(0).broadcast_into(buf);
        Ok(())
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        let _armed = self
            .watchdog
            .arm("a broadcast of the training state from rank 0");
        let root = self.world.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        let len = usize::try_from(len)?;
        check_len(len, "broadcast")?;
        bytes.resize(len, 0);
        root.broadcast_into(&mut bytes[..]);
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        let _armed = self.watchdog.arm("a barrier");
        self.world.barrier();
        Ok(())
    }

    fn describe(&self) -> String {
        let version = mpi::environment::library_version()
            .map(|v| v.lines().next().unwrap_or_default().trim().to_string())
            .unwrap_or_else(|_| "unknown version".to_string());
        format!("MPI, {} ranks ({version})", self.size)
    }

    fn finish(&self) {
        self.finished.set(true);
    }
}
