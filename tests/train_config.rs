//! Training configs: the shipped examples parse and validate; unknown keys and bad
//! values in a file give errors naming the file, the key and the value.

use std::path::Path;

use rnmt::train::config::TrainConfig;

#[test]
fn shipped_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg = TrainConfig::load(&path, &[])
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            assert!(cfg.max_tokens > 0, "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 2, "expected example configs in {}", dir.display());
}

fn load_err(text: &str, overrides: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("my-run.toml");
    std::fs::write(&path, text).unwrap();
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    format!("{:#}", TrainConfig::load(&path, &o).unwrap_err())
}

#[test]
fn errors_name_file_key_and_value() {
    let e = load_err("seed = 1\nmax_token = 100\n", &[]);
    assert!(
        e.contains("my-run.toml") && e.contains("max_token") && e.contains("line 2"),
        "{e}"
    );

    let e = load_err("[model]\nhidden_size = \"big\"\n", &[]);
    assert!(
        e.contains("my-run.toml") && e.contains("hidden_size") && e.contains("big"),
        "{e}"
    );

    let e = load_err("[model]\ndropout = 1.5\n", &[]);
    assert!(e.contains("dropout") && e.contains("1.5"), "{e}");
    let e = load_err("", &["model.source_word_dropout=1"]);
    assert!(
        e.contains("source_word_dropout = 1 must be in [0, 1)"),
        "{e}"
    );
    let e = load_err("", &["model.target_word_dropout=-0.1"]);
    assert!(e.contains("target_word_dropout = -0.1"), "{e}");
    let e = load_err("[model]\ntask = \"lm\"\nsource_word_dropout = 0.1\n", &[]);
    assert!(e.contains("a language model has no source"), "{e}");

    let e = load_err("clip_norm = -2.0\n", &[]);
    assert!(e.contains("clip_norm = -2"), "{e}");

    let e = load_err("", &["optimizer.lr=1"]);
    assert!(e.contains("unknown key `optimizer.lr`"), "{e}");
    let e = load_err("", &["model.hiden_size=4"]);
    assert!(e.contains("unknown key `model.hiden_size`"), "{e}");
    let e = load_err("", &["lr=fast"]);
    assert!(e.contains("lr = \"fast\"") && e.contains("--set"), "{e}");

    let e = load_err("", &["max_steps=0", "max_epochs=0"]);
    assert!(e.contains("never stop"), "{e}");

    let missing = Path::new("/nonexistent/run.toml");
    let e = format!("{:#}", TrainConfig::load(missing, &[]).unwrap_err());
    assert!(e.contains("/nonexistent/run.toml"), "{e}");
}
