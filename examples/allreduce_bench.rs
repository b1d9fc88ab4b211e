//! The all-reduce of one data-parallel step on its own, through rnmt's collective
//! (`dist::Mpi`): a flat f32 buffer of N elements summed over the ranks, REPS times,
//! median time and the bus bandwidth it reaches (2(n-1)/n · bytes / time, the figure
//! NCCL's and OSU's benchmarks report).
//!
//!   cargo build --release --features mpi --example allreduce_bench
//!   mpirun -np 2 --bind-to core target/release/examples/allreduce_bench [ELEMENTS] [REPS]
//!
//! ELEMENTS defaults to 6.6M (config A's parameter count, 26.4 MB), REPS to 50 (the
//! first few are slower: pages are touched for the first time).

use std::time::Instant;

use anyhow::{Context, Result};
use rnmt::dist::{Collective, Mpi};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = match args.next() {
        Some(a) => a.parse().context("ELEMENTS: a count")?,
        None => 6_600_000,
    };
    let reps: usize = match args.next() {
        Some(a) => a.parse().context("REPS: a count")?,
        None => 50,
    };
    let comm = Mpi::init(600.0)?;
    let send: Vec<f32> = (0..n).map(|i| (i % 97) as f32 * 1e-3).collect();
    let mut recv = vec![0f32; n];
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        comm.barrier()?;
        let t = Instant::now();
        comm.all_reduce_sum_f32(&send, &mut recv)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let size = comm.size() as f64;
    let bytes = n as f64 * 4.0;
    if comm.is_root() {
        println!(
            "all-reduce of {:.1} MB over {} ranks: median {:.2} ms, bus bandwidth {:.2} GB/s ({})",
            bytes / 1e6,
            comm.size(),
            median * 1e3,
            2.0 * (size - 1.0) / size * bytes / median / 1e9,
            comm.describe()
        );
    }
    // The sum is right: every rank sent the same buffer.
    let expect = send[n / 2] * size as f32;
    anyhow::ensure!((recv[n / 2] - expect).abs() <= 1e-6 * expect.abs().max(1.0));
    comm.finish();
    Ok(())
}
