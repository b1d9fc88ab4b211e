//! The model folder: save → load is bit-identical; bad configs and bad checkpoints give
//! errors that name the file, the key or the tensor.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::greedy;
use rnmt::batch::{Batch, EncodedPair};
use rnmt::model::{
    init_weights, load_model, save_model, AttentionKind, Cell, ModelConfig, Seq2Seq, CONFIG_FILE,
    WEIGHTS_FILE,
};

fn cfg() -> ModelConfig {
    ModelConfig {
        src_vocab_size: 12,
        tgt_vocab_size: 11,
        embedding_size: 6,
        hidden_size: 6,
        encoder_layers: 2,
        decoder_layers: 2,
        attention: AttentionKind::MultiHeadAdditive,
        attention_heads: 3,
        ..ModelConfig::default()
    }
}

fn saved(dir: &Path, cfg: &ModelConfig) -> (Seq2Seq, VarMap) {
    let varmap = VarMap::new();
    let model = Seq2Seq::new(
        cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    init_weights(&varmap, 17).unwrap();
    save_model(dir, cfg, &varmap).unwrap();
    (model, varmap)
}

fn load_error(dir: &Path) -> String {
    match load_model(dir, &Device::Cpu) {
        Ok(_) => panic!("loading {} succeeded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn rewrite_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(CONFIG_FILE);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut json);
    std::fs::write(&path, json.to_string()).unwrap();
}

#[test]
fn save_then_load_gives_bit_identical_outputs() {
    save_then_load_is_bit_identical(cfg());
}

/// Loaded for search, a model with tied target embeddings holds one `[hidden, vocab]`
/// copy of them: teacher-forced outputs and greedy search are still the saved model's.
#[test]
fn a_tied_model_saves_and_loads_bit_identically() {
    save_then_load_is_bit_identical(ModelConfig {
        tie_target_embeddings: true,
        ..cfg()
    });
}

#[test]
fn a_gru_model_saves_and_loads_bit_identically() {
    let cfg = ModelConfig {
        cell: Cell::Gru,
        layer_norm: true,
        ..cfg()
    };
    save_then_load_is_bit_identical(cfg.clone());
    // Its tensors are a GRU's: two biases, three gates.
    let dir = tempfile::tempdir().unwrap();
    saved(dir.path(), &cfg);
    let tensors =
        candle_core::safetensors::load(dir.path().join(WEIGHTS_FILE), &Device::Cpu).unwrap();
    let w = &tensors["decoder.layers.1.weight_hh"];
    assert_eq!(w.dims(), [3 * 6, 6]);
    assert!(tensors.contains_key("encoder.layers.0.backward.bias_hh"));
    assert!(!tensors.contains_key("decoder.layers.0.bias"));
    // Loaded as an LSTM, the file is another model's.
    rewrite_config(dir.path(), |j| j["cell"] = "lstm".into());
    let e = load_error(dir.path());
    assert!(e.contains("has shape") || e.contains("is missing"), "{e}");
}

fn save_then_load_is_bit_identical(cfg: ModelConfig) {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = saved(dir.path(), &cfg);
    let (loaded, loaded_cfg) = load_model(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(loaded_cfg, cfg);
    let pairs = vec![
        EncodedPair {
            src: vec![4, 5, 6, 7],
            tgt: vec![8, 9],
        },
        EncodedPair {
            src: vec![10],
            tgt: vec![4, 5, 6],
        },
    ];
    let bt = Batch::new(&pairs, &[0, 1])
        .to_tensors(&Device::Cpu)
        .unwrap();
    let a: Vec<f32> = model
        .forward(&bt, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = loaded
        .forward(&bt, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(
        a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    let sources: Vec<Vec<u32>> = pairs.iter().map(|p| p.src.clone()).collect();
    assert_eq!(greedy(&model, &sources, 8), greedy(&loaded, &sources, 8));
    // No temporary files are left behind.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![CONFIG_FILE.to_string(), WEIGHTS_FILE.to_string()]
    );
}

#[test]
fn unknown_config_keys_are_errors() {
    let err = ModelConfig::from_json(r#"{"hidden_size": 8, "hiden_size": 4}"#).unwrap_err();
    assert!(format!("{err:#}").contains("hiden_size"), "{err:#}");

    let dir = tempfile::tempdir().unwrap();
    saved(dir.path(), &cfg());
    rewrite_config(dir.path(), |j| j["num_layers"] = 4.into());
    let err = load_error(dir.path());
    assert!(
        err.contains("num_layers") && err.contains(CONFIG_FILE),
        "{err}"
    );
}

#[test]
fn bad_config_values_name_the_key() {
    let cases: Vec<(&str, &str)> = vec![
        (r#"{"hidden_size": 7}"#, "hidden_size"),
        (r#"{"hidden_size": 0}"#, "hidden_size"),
        (r#"{"encoder_layers": 0}"#, "encoder_layers"),
        (r#"{"tgt_vocab_size": 3}"#, "tgt_vocab_size"),
        (r#"{"dropout": 1.5}"#, "dropout"),
        (r#"{"dropout": -0.1}"#, "dropout"),
        (r#"{"residual_from": 1}"#, "residual_from"),
        (
            r#"{"attention": "multi_head_additive", "hidden_size": 8, "attention_heads": 3}"#,
            "attention_heads",
        ),
        (
            r#"{"tie_target_embeddings": true, "embedding_size": 4, "hidden_size": 8}"#,
            "tie_target_embeddings",
        ),
        (r#"{"attention": "bahdanau"}"#, "bahdanau"),
        (r#"{"bidirectional": "top"}"#, "top"),
        (r#"{"hidden_size": "big"}"#, "big"),
        (r#"{"cell": "rnn"}"#, "rnn"),
        (r#"{"task": "tagging"}"#, "tagging"),
        (r#"{"cgru": true}"#, "cgru"),
        (
            r#"{"cgru": true, "cell": "gru", "input_feeding": true}"#,
            "cgru",
        ),
        (r#"{"task": "lm", "decoder_layers": 0}"#, "decoder_layers"),
    ];
    for (json, key) in cases {
        let err = ModelConfig::from_json(json).expect_err(json);
        assert!(format!("{err:#}").contains(key), "{json}: {err:#}");
    }
    // A language model ignores the encoder's keys.
    let lm = ModelConfig::from_json(r#"{"task": "lm", "encoder_layers": 0, "src_vocab_size": 0}"#)
        .unwrap();
    assert_eq!(lm.task, rnmt::model::Task::Lm);
    // Older config files (no task, no cell) are LSTM translation models.
    let old = ModelConfig::from_json("{}").unwrap();
    assert_eq!(
        (old.task, old.cell),
        (rnmt::model::Task::Translation, Cell::Lstm)
    );
    // Defaults are valid, and every kind round-trips through JSON.
    for attention in [
        "additive",
        "normalized_additive",
        "dot",
        "general",
        "multi_head_additive",
    ] {
        let cfg = ModelConfig::from_json(&format!(r#"{{"attention": "{attention}"}}"#)).unwrap();
        assert_eq!(
            ModelConfig::from_json(&serde_json::to_string(&cfg).unwrap()).unwrap(),
            cfg
        );
    }
}

#[test]
fn corrupt_checkpoints_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    saved(dir.path(), &cfg());
    let weights = dir.path().join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains(WEIGHTS_FILE), "{err}");
    std::fs::write(&weights, b"not a safetensors file at all").unwrap();
    let err = load_error(dir.path());
    assert!(err.contains(WEIGHTS_FILE), "{err}");
    std::fs::remove_file(&weights).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains(WEIGHTS_FILE), "{err}");
    std::fs::remove_file(dir.path().join(CONFIG_FILE)).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains(CONFIG_FILE), "{err}");
    std::fs::write(dir.path().join(CONFIG_FILE), "{ not json").unwrap();
    let err = load_error(dir.path());
    assert!(err.contains(CONFIG_FILE), "{err}");
}

#[test]
fn wrong_shapes_and_tensor_sets_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    saved(dir.path(), &cfg());
    rewrite_config(dir.path(), |j| j["tgt_vocab_size"] = 13.into());
    let err = load_error(dir.path());
    assert!(
        err.contains(WEIGHTS_FILE)
            && err.contains("decoder.")
            && err.contains("[11, 6]")
            && err.contains("[13, 6]"),
        "{err}"
    );

    // A tied model has no separate output weight: loading it as untied misses it ...
    let tied = ModelConfig {
        tie_target_embeddings: true,
        ..cfg()
    };
    let dir = tempfile::tempdir().unwrap();
    saved(dir.path(), &tied);
    rewrite_config(dir.path(), |j| j["tie_target_embeddings"] = false.into());
    let err = load_error(dir.path());
    assert!(
        err.contains("decoder.output.weight") && err.contains("missing"),
        "{err}"
    );

    // ... and an untied checkpoint read as tied has one tensor too many.
    let dir = tempfile::tempdir().unwrap();
    saved(dir.path(), &cfg());
    rewrite_config(dir.path(), |j| j["tie_target_embeddings"] = true.into());
    let err = load_error(dir.path());
    assert!(
        err.contains("decoder.output.weight") && err.contains("unexpected"),
        "{err}"
    );
}

#[test]
fn loaded_weights_come_from_the_file() {
    // Two models with different seeds must load to different outputs: loading does not
    // silently keep fresh initial values.
    let outputs: Vec<Vec<f32>> = [1u64, 2]
        .iter()
        .map(|&seed| {
            let dir = tempfile::tempdir().unwrap();
            let cfg = cfg();
            let varmap = VarMap::new();
            Seq2Seq::new(
                &cfg,
                VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            )
            .unwrap();
            init_weights(&varmap, seed).unwrap();
            save_model(dir.path(), &cfg, &varmap).unwrap();
            let (model, _) = load_model(dir.path(), &Device::Cpu).unwrap();
            let src = Tensor::new(&[[4u32, 5, 3]], &Device::Cpu).unwrap();
            let mask = Tensor::new(&[[1f32, 1., 1.]], &Device::Cpu).unwrap();
            let enc = model.encode(&src, &mask).unwrap();
            enc.memory.flatten_all().unwrap().to_vec1().unwrap()
        })
        .collect();
    assert_ne!(outputs[0], outputs[1]);
}
