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
        "bias" | "beta" => Rule::Constant(0.0),
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
