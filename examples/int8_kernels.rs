//! Benchmark of the int8 output-layer kernels against each other and against search's f32
//! product (candle's matmul with the `[hidden, words]` copy search keeps), on the shape of
//! the shipped models' output layer: `x [rows, hidden] · Wᵀ`, W `[words, hidden]`.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release --example int8_kernels -- \
//!     [--words 8000] [--hidden 256] [--rounds 7] [--rows 1,5,32,160]
//! ```
//! Rows 5 is one sentence with beam 5, 160 a batch of 32 sentences with beam 5. The
//! kernels take turns within each round; the figure is the median over the rounds. Prints
//! the CPU model and its flags first: the kernel is chosen at run time.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rnmt::model::int8_matmul::{Int8Matrix, Kernel};

struct Args {
    words: usize,
    hidden: usize,
    rounds: usize,
    rows: Vec<usize>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        words: 8000,
        hidden: 256,
        rounds: 7,
        rows: vec![1, 5, 32, 160],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let number = |v: &str| -> Result<usize> {
            let n: usize = v
                .parse()
                .with_context(|| format!("{flag} needs a number, got {v}"))?;
            if !(1..=1_000_000).contains(&n) {
                bail!("{flag} must be in 1..=1000000, got {n}");
            }
            Ok(n)
        };
        match flag.as_str() {
            "--words" => args.words = number(&value)?,
            "--hidden" => args.hidden = number(&value)?,
            "--rounds" => args.rounds = number(&value)?,
            "--rows" => {
                args.rows = value.split(',').map(number).collect::<Result<_>>()?;
            }
            _ => bail!("unknown flag {flag} (--words, --hidden, --rounds, --rows)"),
        }
    }
    Ok(args)
}

fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let wanted = [
        "avx2",
        "fma",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
    ];
    let flags = field("flags");
    let have: Vec<&str> = flags.split(' ').filter(|f| wanted.contains(f)).collect();
    format!("{} (flags: {})", field("model name"), have.join(" "))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = parse_args()?;
    println!("cpu: {}", cpu());
    println!(
        "threads: {}, words {}, hidden {}, {} rounds",
        rayon::current_num_threads(),
        args.words,
        args.hidden,
        args.rounds
    );
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let weight: Vec<f32> = (0..args.words * args.hidden)
        .map(|_| rng.random_range(-0.2..0.2))
        .collect();
    let int8 = Int8Matrix::quantize(&weight, args.words, args.hidden);
    let transposed = Tensor::from_vec(weight, (args.words, args.hidden), &Device::Cpu)?
        .t()?
        .contiguous()?;
    let kernels = Kernel::available();

    print!("| rows | f32 µs");
    for k in kernels {
        print!(" | {} µs | f32 / {}", k.name(), k.name());
    }
    println!(" |");
    for &rows in &args.rows {
        let x: Vec<f32> = (0..rows * args.hidden)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let xt = Tensor::from_slice(&x, (rows, args.hidden), &Device::Cpu)?;
        let mut out = vec![0f32; rows * args.words];
        // Enough repetitions per timing for ~10 ms at 100 GFLOP/s.
        let reps = (500_000_000 / (rows * args.words * args.hidden)).clamp(1, 10_000);
        let mut f32_times = Vec::new();
        let mut kernel_times = vec![Vec::new(); kernels.len()];
        for _ in 0..args.rounds {
            let start = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(xt.matmul(&transposed)?);
            }
            f32_times.push(start.elapsed().as_secs_f64() * 1e6 / reps as f64);
            for (k, times) in kernels.iter().zip(&mut kernel_times) {
                let start = Instant::now();
                for _ in 0..reps {
                    int8.product_with(&x, rows, &mut out, *k);
                    std::hint::black_box(&out);
                }
                times.push(start.elapsed().as_secs_f64() * 1e6 / reps as f64);
            }
        }
        let f32_us = median(f32_times);
        print!("| {rows} | {f32_us:.1}");
        for times in kernel_times {
            let us = median(times);
            print!(" | {us:.1} | {:.2}×", f32_us / us);
        }
        println!(" |");
    }
    Ok(())
}
