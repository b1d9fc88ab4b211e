//! The encoder–decoder on small random models: padding invariance, teacher forcing vs
//! the search step API, batch reordering, reproducible dropout.

mod common;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use common::greedy;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rnmt::batch::{Batch, EncodedPair};
use rnmt::model::{init_weights, AttentionKind, Bidirectional, ModelConfig, Seq2Seq};

/// Small configurations covering every wiring option.
fn configs() -> Vec<(&'static str, ModelConfig)> {
    let base = ModelConfig {
        src_vocab_size: 20,
        tgt_vocab_size: 17,
        embedding_size: 8,
        hidden_size: 8,
        encoder_layers: 3,
        decoder_layers: 3,
        residual_from: 2,
        dropout: 0.3,
        attention_heads: 2,
        ..ModelConfig::default()
    };
    vec![
        ("gnmt", base.clone()),
        (
            "luong input feeding, general",
            ModelConfig {
                input_feeding: true,
                attention: AttentionKind::General,
                ..base.clone()
            },
        ),
        (
            "all bidirectional, multi-head, no residual",
            ModelConfig {
                bidirectional: Bidirectional::All,
                attention: AttentionKind::MultiHeadAdditive,
                residual_from: 0,
                ..base.clone()
            },
        ),
        (
            "one layer, dot, tied, additive feeding",
            ModelConfig {
                encoder_layers: 1,
                decoder_layers: 1,
                attention: AttentionKind::Dot,
                tie_target_embeddings: true,
                ..base.clone()
            },
        ),
        (
            "input feeding, additive",
            ModelConfig {
                input_feeding: true,
                attention: AttentionKind::Additive,
                decoder_layers: 2,
                ..base
            },
        ),
    ]
}

fn model(cfg: &ModelConfig, seed: u64) -> (Seq2Seq, VarMap) {
    let varmap = VarMap::new();
    let model = Seq2Seq::new(
        cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    init_weights(&varmap, seed).unwrap();
    // ±0.1 weights give nearly uniform outputs; larger ones make differences visible.
    for var in varmap.all_vars() {
        var.set(&(var.as_tensor() * 5.0).unwrap()).unwrap();
    }
    (model, varmap)
}

fn pairs(cfg: &ModelConfig) -> Vec<EncodedPair> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    [(5, 2), (1, 6), (3, 3), (7, 4)]
        .iter()
        .map(|&(s, t)| EncodedPair {
            src: (0..s)
                .map(|_| rng.random_range(4..cfg.src_vocab_size as u32))
                .collect(),
            tgt: (0..t)
                .map(|_| rng.random_range(4..cfg.tgt_vocab_size as u32))
                .collect(),
        })
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn padded_batch_matches_each_sentence_alone() {
    for (name, cfg) in configs() {
        let (model, _) = model(&cfg, 7);
        let pairs = pairs(&cfg);
        let all: Vec<usize> = (0..pairs.len()).collect();
        let batch = Batch::new(&pairs, &all);
        let bt = batch.to_tensors(&Device::Cpu).unwrap();
        let logits = model.forward(&bt, None).unwrap();
        let sources: Vec<Vec<u32>> = pairs.iter().map(|p| p.src.clone()).collect();
        let batched = greedy(&model, &sources, 12);
        for i in 0..pairs.len() {
            let single = Batch::new(&pairs, &[i]).to_tensors(&Device::Cpu).unwrap();
            let alone = model.forward(&single, None).unwrap();
            let len = pairs[i].tgt_len();
            let padded = logits.narrow(0, i, 1).unwrap().narrow(1, 0, len).unwrap();
            let diff = max_abs_diff(&padded, &alone);
            assert!(
                diff < 1e-5,
                "{name}: sentence {i} differs by {diff} when padded"
            );
            let alone = greedy(&model, std::slice::from_ref(&sources[i]), 12);
            assert_eq!(
                alone[0], batched[i],
                "{name}: greedy output of sentence {i} depends on padding"
            );
        }
        // The outputs are not trivially constant: sentences get different logits.
        let first = logits.narrow(0, 0, 1).unwrap().narrow(1, 0, 1).unwrap();
        let second = logits.narrow(0, 1, 1).unwrap().narrow(1, 0, 1).unwrap();
        assert!(
            max_abs_diff(&first, &second) > 1e-3,
            "{name}: source has no effect"
        );
    }
}

#[test]
fn decoder_step_matches_teacher_forcing() {
    for (name, cfg) in configs() {
        let (model, _) = model(&cfg, 8);
        let pairs = pairs(&cfg);
        let bt = Batch::new(&pairs, &[0, 1, 2, 3])
            .to_tensors(&Device::Cpu)
            .unwrap();
        let (logits, forced_weights) = model.forward_with_attention(&bt, None).unwrap();
        let forced = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let enc = model.encode(&bt.src, &bt.src_mask).unwrap();
        let mut state = model.decoder_init(&enc).unwrap();
        let steps = bt.tgt_in.dim(1).unwrap();
        for t in 0..steps {
            let prev = bt.tgt_in.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
            let (log_probs, next, weights) = model.decoder_step(&enc, &state, &prev, None).unwrap();
            let expected = forced.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
            // Only rows whose target is still running at step t are comparable.
            for (row, pair) in pairs.iter().enumerate() {
                if t < pair.tgt_len() {
                    let diff = max_abs_diff(
                        &log_probs.narrow(0, row, 1).unwrap(),
                        &expected.narrow(0, row, 1).unwrap(),
                    );
                    assert!(diff < 1e-4, "{name}: step {t} row {row} differs by {diff}");
                }
            }
            let w: Vec<Vec<f32>> = weights.to_vec2().unwrap();
            let fw: Vec<Vec<f32>> = forced_weights
                .narrow(1, t, 1)
                .unwrap()
                .squeeze(1)
                .unwrap()
                .to_vec2()
                .unwrap();
            for (row, pair) in pairs.iter().enumerate() {
                let sum: f32 = w[row].iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{name}: attention sums to {sum}");
                if t < pair.tgt_len() {
                    for (a, b) in w[row].iter().zip(&fw[row]) {
                        assert!(
                            (a - b).abs() < 1e-5,
                            "{name}: step {t} row {row}: weights {a} vs {b}"
                        );
                    }
                }
                assert!(
                    w[row][pair.src_len()..].iter().all(|&x| x == 0.0),
                    "{name}: padding attended"
                );
            }
            state = next;
        }
    }
}

#[test]
fn select_reorders_and_expands_the_batch() {
    for (name, cfg) in configs() {
        let (model, _) = model(&cfg, 9);
        let pairs = pairs(&cfg);
        let bt = Batch::new(&pairs, &[0, 1, 2])
            .to_tensors(&Device::Cpu)
            .unwrap();
        let enc = model.encode(&bt.src, &bt.src_mask).unwrap();
        let state = model.decoder_init(&enc).unwrap();
        let prev = Tensor::new(&[5u32, 6, 7], &Device::Cpu).unwrap();
        let (lp, state, _) = model.decoder_step(&enc, &state, &prev, None).unwrap();
        let rows = Tensor::new(&[2u32, 0, 2, 1], &Device::Cpu).unwrap();
        let (enc2, state2) = (enc.select(&rows).unwrap(), state.select(&rows).unwrap());
        let next = Tensor::new(&[4u32, 8, 9, 10], &Device::Cpu).unwrap();
        let (lp2, _, _) = model.decoder_step(&enc2, &state2, &next, None).unwrap();
        let (lp1, _, _) = model
            .decoder_step(
                &enc,
                &state,
                &Tensor::new(&[8u32, 10, 4], &Device::Cpu).unwrap(),
                None,
            )
            .unwrap();
        // Row 0 of the selection is sentence 2 fed 4 — as is row 2 of the original.
        for (sel_row, orig_row) in [(0usize, 2usize), (1, 0), (3, 1)] {
            let d = max_abs_diff(
                &lp2.narrow(0, sel_row, 1).unwrap(),
                &lp1.narrow(0, orig_row, 1).unwrap(),
            );
            assert!(d < 1e-5, "{name}: selected row {sel_row} differs by {d}");
        }
        assert!(max_abs_diff(&lp.narrow(0, 0, 1).unwrap(), &lp.narrow(0, 1, 1).unwrap()) > 1e-4);
    }
}

#[test]
fn dropout_is_reproducible_from_the_seed() {
    let cfg = configs().remove(0).1;
    let (model, _) = model(&cfg, 10);
    let pairs = pairs(&cfg);
    let bt = Batch::new(&pairs, &[0, 1, 2, 3])
        .to_tensors(&Device::Cpu)
        .unwrap();
    let run = |seed: u64| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        model.forward(&bt, Some(&mut rng)).unwrap()
    };
    let eval = model.forward(&bt, None).unwrap();
    assert_eq!(max_abs_diff(&run(1), &run(1)), 0.0);
    assert!(max_abs_diff(&run(1), &run(2)) > 1e-3);
    assert!(max_abs_diff(&run(1), &eval) > 1e-3);
    assert_eq!(max_abs_diff(&model.forward(&bt, None).unwrap(), &eval), 0.0);
}

#[test]
fn init_weights_is_deterministic() {
    let cfg = configs().remove(0).1;
    let (_, a) = model(&cfg, 42);
    let (_, b) = model(&cfg, 42);
    let (_, c) = model(&cfg, 43);
    let get = |m: &VarMap, name: &str| m.data().lock().unwrap()[name].as_tensor().copy().unwrap();
    let names: Vec<String> = a.data().lock().unwrap().keys().cloned().collect();
    let mut differs = false;
    for name in &names {
        assert_eq!(
            max_abs_diff(&get(&a, name), &get(&b, name)),
            0.0,
            "{name} differs for one seed"
        );
        differs |= max_abs_diff(&get(&a, name), &get(&c, name)) > 0.0;
    }
    assert!(differs, "seeds 42 and 43 gave the same weights");
    // LSTM forget gates start at 1 (×5 by model()), other gates at 0.
    let bias: Vec<f32> = get(&a, "decoder.layers.0.bias").to_vec1().unwrap();
    let h = cfg.hidden_size;
    assert!(bias[h..2 * h].iter().all(|&x| x == 5.0) && bias[..h].iter().all(|&x| x == 0.0));
}
