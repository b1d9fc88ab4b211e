//! `rnmt serve`'s web page in a real browser: headless Chromium (Debian's `chromium`)
//! driven by `tests/web/page.mjs` through npm's `playwright-core` (`.ci/run` installs
//! both): typing German shows the English translation, swap turns the languages round,
//! an over-limit text shows the API's error, and the page fits a phone's width.
//!
//! `RNMT_SCREENSHOT=assets/serve-screenshot.png` also saves the README's screenshot.

mod serve_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rnmt::translate::{TranslateOptions, Translator};
use serve_support::{shipped_model, Server};

fn translate(model: &str, sentence: &str) -> String {
    let translator = Translator::new(
        &[shipped_model(model)],
        &candle_core::Device::Cpu,
        &TranslateOptions::DEFAULT,
    )
    .unwrap();
    translator.translate(&[sentence.to_string()], 1).unwrap()[0]
        .translation
        .clone()
}

#[test]
fn the_web_page_translates_swaps_and_shows_errors_in_chromium() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web");
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run `npm ci` in {}",
        web.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: `apt-get install -y chromium` (or set CHROMIUM)"
    );
    let german = "Ich habe heute keine Zeit.";
    let english = translate("tatoeba-de-en", german);
    let back = translate("tatoeba-en-de", &english);
    let limit = "100";
    let server = Server::start(&["--char-limit", limit, "--frontend-timeout", "200"]);

    let mut args = vec![
        "page.mjs".to_string(),
        format!("{}/", server.url),
        german.into(),
        english,
        back,
        limit.into(),
    ];
    if let Ok(shot) = std::env::var("RNMT_SCREENSHOT") {
        args.push(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(shot)
                .display()
                .to_string(),
        );
    }
    let mut child = Command::new("node")
        .args(&args)
        .current_dir(&web)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the browser test did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("web page: ok"));
}
