//! Attention: autograd gradients against central finite differences in f64, for every
//! kind, with a padded source row; padding gets zero weight and zero gradient.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rnmt::model::{init_weights, Attention, AttentionKind};

const B: usize = 2;
const T: usize = 3;
const S: usize = 4;
const H: usize = 4;

fn random(rng: &mut ChaCha8Rng, shape: &[usize], scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

struct Setup {
    attention: Attention,
    params: Vec<(String, Var)>,
    query: Var,
    memory: Var,
    mask: Tensor,
    /// Fixed random read-outs, so the scalar depends on every output element.
    r_context: Tensor,
    r_weights: Tensor,
}

impl Setup {
    fn new(kind: AttentionKind) -> Self {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        let attention = Attention::new(kind, 2, H, H, vb).unwrap();
        init_weights(&varmap, 3).unwrap();
        // Scale the parameters up from ±0.1 so the tanh and softmax are not near-linear.
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut params: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, var) in &params {
            if name != "gain" {
                var.set(&random(&mut rng, var.dims(), 1.0)).unwrap();
            }
        }
        let query = Var::from_tensor(&random(&mut rng, &[B, T, H], 1.0)).unwrap();
        let memory = Var::from_tensor(&random(&mut rng, &[B, S, H], 1.0)).unwrap();
        // The second sentence has 2 real tokens out of 4.
        let mask = Tensor::new(&[[1f32, 1., 1., 1.], [1., 1., 0., 0.]], &Device::Cpu).unwrap();
        let r_context = random(&mut rng, &[B, T, H], 1.0);
        let r_weights = random(&mut rng, &[B, T, S], 1.0);
        Self {
            attention,
            params,
            query,
            memory,
            mask,
            r_context,
            r_weights,
        }
    }

    fn loss(&self) -> Result<Tensor> {
        let mem = self.attention.memory(self.memory.as_tensor(), &self.mask)?;
        let (context, weights) = self.attention.forward(self.query.as_tensor(), &mem)?;
        (context * &self.r_context)?.sum_all()? + (weights * &self.r_weights)?.sum_all()?
    }
}

fn check_gradients(kind: AttentionKind) {
    let setup = Setup::new(kind);
    let grads = setup.loss().unwrap().backward().unwrap();
    let mut vars: Vec<(String, Var)> = setup.params.clone();
    vars.push(("query".into(), setup.query.clone()));
    vars.push(("memory".into(), setup.memory.clone()));
    let eps = 1e-6;
    let mut checked = 0;
    for (name, var) in &vars {
        let analytic: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{kind:?}: no gradient for {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let original = var.as_tensor().copy().unwrap();
        let base: Vec<f64> = original.flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..base.len() {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                setup.loss().unwrap().to_scalar::<f64>().unwrap()
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            let err = (numeric - analytic[i]).abs() / (1.0 + numeric.abs());
            assert!(
                err < 1e-6,
                "{kind:?}: d/d{name}[{i}] autograd {} vs finite difference {numeric}",
                analytic[i]
            );
            checked += 1;
        }
        var.set(&original).unwrap();
    }
    assert!(
        checked > 2 * B * T * H,
        "{kind:?}: only {checked} elements checked"
    );
}

#[test]
fn additive_gradients() {
    check_gradients(AttentionKind::Additive);
}

#[test]
fn normalized_additive_gradients() {
    check_gradients(AttentionKind::NormalizedAdditive);
}

#[test]
fn dot_gradients() {
    check_gradients(AttentionKind::Dot);
}

#[test]
fn general_gradients() {
    check_gradients(AttentionKind::General);
}

#[test]
fn multi_head_additive_gradients() {
    check_gradients(AttentionKind::MultiHeadAdditive);
}

#[test]
fn padding_gets_no_weight_and_no_gradient() {
    for kind in [
        AttentionKind::Additive,
        AttentionKind::NormalizedAdditive,
        AttentionKind::Dot,
        AttentionKind::General,
        AttentionKind::MultiHeadAdditive,
    ] {
        let setup = Setup::new(kind);
        let mem = setup
            .attention
            .memory(setup.memory.as_tensor(), &setup.mask)
            .unwrap();
        let (_, weights) = setup
            .attention
            .forward(setup.query.as_tensor(), &mem)
            .unwrap();
        let w: Vec<Vec<Vec<f64>>> = weights.to_vec3().unwrap();
        for (b, row) in w.iter().enumerate() {
            for step in row {
                let sum: f64 = step.iter().sum();
                assert!((sum - 1.0).abs() < 1e-12, "{kind:?}: weights sum to {sum}");
                assert!(step.iter().all(|&x| x > 0.0 || b == 1));
            }
        }
        for step in &w[1] {
            assert_eq!(&step[2..], &[0.0, 0.0], "{kind:?}: padding attended");
        }
        let grads = setup.loss().unwrap().backward().unwrap();
        let g: Vec<Vec<Vec<f64>>> = grads
            .get(setup.memory.as_tensor())
            .unwrap()
            .to_vec3()
            .unwrap();
        assert!(
            g[1][2..].iter().flatten().all(|&x| x == 0.0),
            "{kind:?}: gradient reached padding"
        );
        assert!(g[1][..2].iter().flatten().any(|&x| x != 0.0));
    }
}
