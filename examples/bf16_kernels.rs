//! The output layer's three training products in f32 (the gemm crate, as training runs them
//! by default) against bf16 on AMX (`precision = "bf16"`, `model::bf16_matmul`), on the
//! shapes of a training step: `tokens` real target tokens, `words` outputs, `hidden` inputs.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release --example bf16_kernels -- \
//!     [--tokens 700] [--words 8000] [--hidden 256] [--rounds 7]
//! ```
//! The two take turns within each round; the figures are medians over the rounds, with
//! the packing into bf16 included. Prints the CPU model and its flags first.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use rnmt::model::bf16_matmul::{available, matmul_bf16};
use rnmt::model::lstm::product::matmul_on_threads;

fn parse_args() -> Result<[usize; 4]> {
    let mut args = [700, 8000, 256, 7];
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let n: usize = value
            .parse()
            .with_context(|| format!("{flag} needs a number, got {value}"))?;
        if !(1..=100_000).contains(&n) {
            bail!("{flag} must be in 1..=100000, got {n}");
        }
        let slot = match flag.as_str() {
            "--tokens" => 0,
            "--words" => 1,
            "--hidden" => 2,
            "--rounds" => 3,
            _ => bail!("unknown flag {flag} (--tokens, --words, --hidden, --rounds)"),
        };
        args[slot] = n;
    }
    Ok(args)
}

/// `dst = lhs · rhs` through gemm (as training runs it in f32) on the pool's threads.
fn gemm_f32(
    shape: (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
) {
    matmul_on_threads(rayon::current_num_threads(), shape, dst, dst_rs, lhs, rhs)
}

type Product =
    fn((usize, usize, usize), &mut [f32], usize, (&[f32], usize, usize), (&[f32], usize, usize));

fn main() -> Result<()> {
    let [tokens, words, hidden, rounds] = parse_args()?;
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = flags
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let has: Vec<&str> = ["avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|w| w == *f))
        .collect();
    println!("cpu: {model}; flags: {}", has.join(" "));
    if !available() {
        bail!("this CPU has no AMX-BF16: nothing to compare");
    }
    let threads = rayon::current_num_threads();
    println!(
        "{tokens} tokens × {words} words × {hidden} hidden, {threads} thread(s), {rounds} rounds"
    );
    let values = |len: usize, seed: usize| -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed) % 2001) as f32 / 1000.0 - 1.0) * 0.1)
            .collect()
    };
    let x = values(tokens * hidden, 1);
    let w = values(words * hidden, 2);
    let g = values(tokens * words, 3);
    let (mut logits, mut dx, mut dw) = (
        vec![0f32; tokens * words],
        vec![0f32; tokens * hidden],
        vec![0f32; words * hidden],
    );
    let kinds: [(&str, Product); 2] = [("f32 gemm", gemm_f32), ("bf16 AMX", matmul_bf16)];
    let mut times = vec![[Vec::new(), Vec::new(), Vec::new()]; 2];
    for _ in 0..rounds {
        for (kind, (_, product)) in kinds.iter().enumerate() {
            let t = Instant::now();
            product(
                (tokens, words, hidden),
                &mut logits,
                words,
                (&x, hidden, 1),
                (&w, 1, hidden),
            );
            times[kind][0].push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            product(
                (tokens, hidden, words),
                &mut dx,
                hidden,
                (&g, words, 1),
                (&w, hidden, 1),
            );
            times[kind][1].push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            product(
                (words, hidden, tokens),
                &mut dw,
                hidden,
                (&g, 1, words),
                (&x, hidden, 1),
            );
            times[kind][2].push(t.elapsed().as_secs_f64());
        }
    }
    let flop = 2.0 * (tokens * words * hidden) as f64;
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{:<10} {:>22} {:>22} {:>22}",
        "", "logits = x·Wᵀ", "dx = G·W", "dW = Gᵀ·x"
    );
    let mut medians = vec![];
    for (kind, (name, _)) in kinds.iter().enumerate() {
        let row: Vec<f64> = times[kind].iter().map(|t| median(t)).collect();
        println!(
            "{name:<10} {}",
            row.iter()
                .map(|t| format!("{:>9.2} ms {:>5.0} GF/s", t * 1e3, flop / t / 1e9))
                .collect::<Vec<_>>()
                .join(" ")
        );
        medians.push(row);
    }
    println!(
        "{:<10} {}",
        "f32 / bf16",
        (0..3)
            .map(|i| format!("{:>21.2}×", medians[0][i] / medians[1][i]))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}
