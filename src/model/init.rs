//! Deterministic parameter initialisation.
//!
//! candle's `Init::Uniform` draws from an unseedable generator, so after building a model
//! the trainer calls [`init_weights`], which overwrites every variable from a seeded
//! `ChaCha8Rng`, visiting them in name order: the same seed gives the same model.

use candle_core::{Result, Tensor};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// GNMT initialises every weight uniformly in ±0.1.
pub const INIT_SCALE: f32 = 0.1;

/// How one variable starts out, decided from its name.
enum Rule {
    Uniform,
    Constant(f32),
    /// An LSTM bias (gates i, f, g, o): zero except a forget-gate bias of 1, so the
    /// cells remember by default early in training.
    LstmBias,
}

fn rule(name: &str, numel_of: impl Fn(&str) -> Option<usize>) -> Rule {
    let (parent, last) = name.rsplit_once('.').unwrap_or(("", name));
    let sibling = |s: &str| {
        if parent.is_empty() {
            s.to_string()
        } else {
            format!("{parent}.{s}")
        }
    };
    let is_norm = parent.contains("norm") || last.contains("norm") || last.starts_with("ln");
    match last {
        "bias" if numel_of(&sibling("weight_hh")).is_some() => Rule::LstmBias,
        // GNMT's normalised attention starts with gain 1/sqrt(units).
        "gain" if !is_norm => match numel_of(&sibling("v")) {
            Some(units) => Rule::Constant(1.0 / (units as f32).sqrt()),
            None => Rule::Constant(1.0),
        },
        // A GRU's two biases (`bias_ih`, `bias_hh`) start at zero: its update gate then
        // averages old and new state evenly.
        "bias" | "beta" | "bias_ih" | "bias_hh" => Rule::Constant(0.0),
        _ if is_norm
            && (last.ends_with("weight")
                || last.ends_with("gamma")
                || last.ends_with("gain")
                || last.ends_with("scale")) =>
        {
            Rule::Constant(1.0)
        }
        _ if is_norm && last.ends_with("bias") => Rule::Constant(0.0),
        _ => Rule::Uniform,
    }
}

/// Overwrites every variable of `varmap` deterministically from `seed`: weights and
/// embeddings uniform in ±[`INIT_SCALE`], biases zero (LSTM forget gates 1), layer-norm
/// gains 1, the normalised-attention gain `1/sqrt(units)`.
pub fn init_weights(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for name in names {
        let var = &data[name];
        let n = var.elem_count();
        let values: Vec<f32> = match rule(name, |s| data.get(s).map(|v| v.elem_count())) {
            Rule::Uniform => (0..n)
                .map(|_| rng.random_range(-INIT_SCALE..INIT_SCALE))
                .collect(),
            Rule::Constant(c) => vec![c; n],
            Rule::LstmBias => {
                let h = n / 4;
                (0..n)
                    .map(|i| if (h..2 * h).contains(&i) { 1.0 } else { 0.0 })
                    .collect()
            }
        };
        let t = Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn rules_follow_the_variable_names() {
        let varmap = VarMap::new();
        let dev = Device::Cpu;
        for (name, n) in [
            ("enc.weight_ih", 8),
            ("enc.weight_hh", 8),
            ("enc.bias", 8),
            ("enc.ln_ih_weight", 8),
            ("enc.ln_cell_bias", 2),
            ("att.v", 4),
            ("att.gain", 1),
            ("att.bias", 4),
            ("out.bias", 3),
        ] {
            varmap
                .get(n, name, candle_nn::Init::Const(7.0), DType::F32, &dev)
                .unwrap();
        }
        init_weights(&varmap, 0).unwrap();
        let get = |name: &str| -> Vec<f32> {
            varmap.data().lock().unwrap()[name]
                .as_tensor()
                .to_vec1()
                .unwrap()
        };
        assert_eq!(get("enc.bias"), vec![0., 0., 1., 1., 0., 0., 0., 0.]);
        assert_eq!(get("enc.ln_ih_weight"), vec![1.0; 8]);
        assert_eq!(get("enc.ln_cell_bias"), vec![0.0; 2]);
        assert_eq!(get("att.gain"), vec![0.5]);
        assert_eq!(get("att.bias"), vec![0.0; 4]);
        assert_eq!(get("out.bias"), vec![0.0; 3]);
        for name in ["enc.weight_ih", "enc.weight_hh", "att.v"] {
            let v = get(name);
            assert!(v.iter().all(|x| x.abs() < INIT_SCALE), "{name}: {v:?}");
            assert!(v.windows(2).any(|w| w[0] != w[1]), "{name} is constant");
        }
    }
}
