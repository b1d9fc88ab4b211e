//! The unmodified LibreTranslate Python client (`libretranslatepy` from PyPI; `.ci/run`
//! installs it) against `rnmt serve` on 127.0.0.1: it translates German to English,
//! lists the languages and detects a language.

mod serve_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rnmt::translate::{TranslateOptions, Translator};
use serde_json::{json, Value};
use serve_support::{shipped_model, Server};

const SCRIPT: &str = r#"
import json, sys
from libretranslatepy import LibreTranslateAPI
lt = LibreTranslateAPI(sys.argv[1])
print(json.dumps({
    "translation": lt.translate(sys.argv[2], "de", "en", timeout=30),
    "languages": lt.languages(timeout=30),
    "detect": lt.detect("Wo ist der Bahnhof? Ich habe mich verlaufen.", timeout=30),
}))
"#;

#[test]
fn libretranslatepy_translates_lists_languages_and_detects() {
    let sentence = "Der Hund jagt die Katze.";
    let translator = Translator::new(
        &[shipped_model("tatoeba-de-en")],
        &candle_core::Device::Cpu,
        &TranslateOptions::DEFAULT,
    )
    .unwrap();
    let expected = translator.translate(&[sentence.to_string()], 1).unwrap()[0]
        .translation
        .clone();

    let server = Server::start(&[]);
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT, &server.url, sentence])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the Python client did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python client failed (is libretranslatepy installed? `pip install libretranslatepy`):\n{stderr}"
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["translation"], expected);
    assert_eq!(
        got["languages"],
        json!([
            {"code": "de", "name": "German", "targets": ["en"]},
            {"code": "en", "name": "English", "targets": ["de"]},
        ])
    );
    assert_eq!(got["detect"][0]["language"], "de", "{got}");
    assert!(got["detect"][0]["confidence"].as_f64().unwrap() > 0.0);
}
