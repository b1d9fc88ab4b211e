//! Shared pieces of the integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The corpora directory for a test that needs real data: `None` (with a message) when it
/// is missing on a user's machine, a panic when `RNMT_REQUIRE_CORPORA=1` (as in CI), so CI
/// can never silently skip.
pub fn corpora_dir_for_tests() -> Option<PathBuf> {
    let dir = rnmt::corpus::corpora_dir();
    let present = dir.join("multi30k").join("train.de").exists();
    if present {
        return Some(dir);
    }
    let required = std::env::var("RNMT_REQUIRE_CORPORA")
        .map(|v| v == "1")
        .unwrap_or(false);
    if required {
        panic!(
            "RNMT_REQUIRE_CORPORA=1 but no corpora under {} (set RNMT_CORPORA to ../shared/corpora)",
            dir.display()
        );
    }
    eprintln!(
        "skipping: no corpora under {} (set RNMT_CORPORA)",
        dir.display()
    );
    None
}

/// The `rnmt` binary built for these tests.
pub fn rnmt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rnmt"))
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("rnmt runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A static file server on 127.0.0.1 for download tests: serves files under `root`, 404
/// otherwise. It runs on a background thread for the rest of the test process.
pub fn serve_dir(root: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let root = root.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    return;
                }
                // Skip the headers.
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                    line.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                let file = root.join(path.trim_start_matches('/'));
                let ok = !path.contains("..") && file.is_file();
                let body = if ok {
                    std::fs::read(&file).unwrap()
                } else {
                    b"not found".to_vec()
                };
                let status = if ok { "200 OK" } else { "404 Not Found" };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            });
        }
    });
    format!("http://{addr}")
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `rnmt prepare` de→en with `vocab` subwords from `train` (and `valid`) into `out`.
pub fn prepare(train: &Path, valid: Option<&Path>, vocab: usize, out: &Path) -> Output {
    let mut cmd = rnmt();
    cmd.args([
        "prepare",
        "--src-lang",
        "de",
        "--tgt-lang",
        "en",
        "--vocab-size",
        &vocab.to_string(),
        "--train",
    ])
    .arg(train);
    if let Some(v) = valid {
        cmd.arg("--valid").arg(v);
    }
    run(cmd.arg("--out").arg(out))
}

/// Multi30k de→en subword models learned once per test binary (a few seconds).
pub fn prepared_multi30k(corpora: &Path) -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = prepare(
            &corpora.join("multi30k/train"),
            Some(&corpora.join("multi30k/val")),
            8000,
            dir.path(),
        );
        assert!(out.status.success(), "prepare failed: {}", stderr(&out));
        dir
    })
    .path()
}

/// Greedy decoding (at most `max_len` subwords each), as `rnmt translate --beam 1` runs it.
pub fn greedy(model: &rnmt::model::Seq2Seq, sources: &[Vec<u32>], max_len: usize) -> Vec<Vec<u32>> {
    let cfg = rnmt::search::SearchConfig {
        beam: 1,
        nbest: 1,
        max_len_a: 0.0,
        max_len_b: max_len,
        ..rnmt::search::SearchConfig::for_model(model.config())
    };
    rnmt::search::greedy_search(
        &rnmt::search::Ensemble::single(model),
        sources,
        &cfg,
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .into_iter()
    .map(|h| h.tokens)
    .collect()
}

/// `dir/{name}.{de,en}`: the first `n` lines of `multi30k/{split}`.
pub fn multi30k_slice(corpora: &Path, dir: &Path, split: &str, name: &str, n: usize) {
    for lang in ["de", "en"] {
        let text =
            std::fs::read_to_string(corpora.join(format!("multi30k/{split}.{lang}"))).unwrap();
        let lines: Vec<&str> = text.lines().take(n).collect();
        std::fs::write(dir.join(format!("{name}.{lang}")), lines.join("\n") + "\n").unwrap();
    }
}

/// A training config for a tiny model that runs in seconds (prepend `data = "…"`).
pub const TINY_TRAIN_CONFIG: &str = r#"
seed = 5
max_tokens = 400
max_steps = 6
max_epochs = 0
lr = 0.003
schedule = "inverse_sqrt"
warmup_steps = 2
valid_every = 3
valid_max_sentences = 8
keep_last = 2
threads = 1

[model]
embedding_size = 16
hidden_size = 16
encoder_layers = 1
decoder_layers = 1
residual_from = 0
dropout = 0.1
"#;
