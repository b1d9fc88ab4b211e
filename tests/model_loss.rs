//! Label-smoothed cross-entropy against a direct host computation with the explicit
//! smoothed target distribution, and its gradient `softmax - q`: the fused CPU f32 path
//! and the composite path (f64) alike.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rnmt::train::loss::LabelSmoothedLoss;

const B: usize = 2;
const T: usize = 3;
const V: usize = 6;

fn setup() -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let logits: Vec<f32> = (0..B * T * V)
        .map(|_| rng.random_range(-3.0..3.0))
        .collect();
    let targets = vec![1, 5, 3, 0, 2, 0];
    // Second sentence: one real token, two pads.
    let mask = vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0];
    (logits, targets, mask)
}

/// For every token: (softmax, smoothed target distribution q).
fn reference(logits: &[f32], targets: &[u32], smoothing: f64) -> Vec<(Vec<f64>, Vec<f64>)> {
    logits
        .chunks(V)
        .zip(targets)
        .map(|(row, &t)| {
            let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            let p: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp() / z).collect();
            let q: Vec<f64> = (0..V)
                .map(|v| {
                    if v == t as usize {
                        1.0 - smoothing
                    } else {
                        smoothing / (V - 1) as f64
                    }
                })
                .collect();
            (p, q)
        })
        .collect()
}

#[test]
fn matches_cross_entropy_with_the_smoothed_distribution() {
    let (logits, targets, mask) = setup();
    let dev = Device::Cpu;
    for (smoothing, dtype) in [
        (0.0, DType::F32),
        (0.1, DType::F32),
        (0.3, DType::F32),
        (0.0, DType::F64),
        (0.1, DType::F64),
    ] {
        let host = Tensor::from_vec(logits.clone(), (B, T, V), &dev).unwrap();
        let logits_var = Var::from_tensor(&host.to_dtype(dtype).unwrap()).unwrap();
        let t = Tensor::from_vec(targets.clone(), (B, T), &dev).unwrap();
        let m = Tensor::from_vec(mask.clone(), (B, T), &dev).unwrap();
        let (total, tokens) = LabelSmoothedLoss { smoothing }
            .forward(logits_var.as_tensor(), &t, &m)
            .unwrap();
        assert_eq!(tokens, 4);
        let reference = reference(&logits, &targets, smoothing);
        let expected: f64 = reference
            .iter()
            .zip(&mask)
            .map(|((p, q), &m)| m as f64 * -q.iter().zip(p).map(|(q, p)| q * p.ln()).sum::<f64>())
            .sum();
        assert_eq!(total.dtype(), dtype);
        let got = total
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            (got - expected).abs() < 1e-4,
            "{dtype:?} smoothing {smoothing}: {got} vs {expected}"
        );

        // d total / d logits = softmax - q on real tokens, 0 on padding.
        let grads = total.backward().unwrap();
        let g: Vec<f64> = grads
            .get(logits_var.as_tensor())
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (i, ((p, q), &m)) in reference.iter().zip(&mask).enumerate() {
            for v in 0..V {
                let want = m as f64 * (p[v] - q[v]);
                let have = g[i * V + v];
                assert!(
                    (want - have).abs() < 1e-5,
                    "{dtype:?} smoothing {smoothing}: grad[{i}][{v}] {have} vs {want}"
                );
            }
        }
    }
}

#[test]
fn padding_does_not_change_the_loss() {
    let (mut logits, mut targets, mask) = setup();
    let dev = Device::Cpu;
    let loss = |logits: &[f32], targets: &[u32]| {
        let l = Tensor::from_vec(logits.to_vec(), (B, T, V), &dev).unwrap();
        let t = Tensor::from_vec(targets.to_vec(), (B, T), &dev).unwrap();
        let m = Tensor::from_vec(mask.clone(), (B, T), &dev).unwrap();
        let (total, n) = LabelSmoothedLoss { smoothing: 0.1 }
            .forward(&l, &t, &m)
            .unwrap();
        (total.to_scalar::<f32>().unwrap(), n)
    };
    let before = loss(&logits, &targets);
    // Positions 4 and 5 are padding.
    for x in &mut logits[4 * V..] {
        *x = 100.0;
    }
    targets[5] = 4;
    assert_eq!(loss(&logits, &targets), before);
    // A real position does change it.
    logits[0] += 1.0;
    assert_ne!(loss(&logits, &targets).0, before.0);
}

#[test]
fn gradient_scales_with_the_upstream_gradient() {
    // The trainer divides the sum by the token count; the fused backward must honour it.
    let (logits, targets, mask) = setup();
    let dev = Device::Cpu;
    let var = Var::from_tensor(&Tensor::from_vec(logits, (B, T, V), &dev).unwrap()).unwrap();
    let t = Tensor::from_vec(targets, (B, T), &dev).unwrap();
    let m = Tensor::from_vec(mask, (B, T), &dev).unwrap();
    let grad = |scale: f64| -> Vec<f32> {
        let (total, _) = LabelSmoothedLoss::new(0.1)
            .forward(var.as_tensor(), &t, &m)
            .unwrap();
        let g = (total * scale).unwrap().backward().unwrap();
        g.get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (one, quarter) = (grad(1.0), grad(0.25));
    assert!(one.iter().any(|&x| x.abs() > 1e-3));
    for (a, b) in one.iter().zip(&quarter) {
        assert!((a * 0.25 - b).abs() < 1e-7, "{a} * 0.25 != {b}");
    }
}

#[test]
fn out_of_vocabulary_targets_are_errors() {
    let dev = Device::Cpu;
    let logits = Tensor::zeros((1, 2, V), DType::F32, &dev).unwrap();
    let t = Tensor::new(&[[1u32, V as u32]], &dev).unwrap();
    let m = Tensor::ones((1, 2), DType::F32, &dev).unwrap();
    let err = LabelSmoothedLoss::new(0.1)
        .forward(&logits, &t, &m)
        .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
}
