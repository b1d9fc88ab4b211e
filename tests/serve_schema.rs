//! Schemathesis (PyPI; `.ci/run` installs it) generates requests from the server's own
//! `/openapi.json` — valid ones and edge cases of every parameter — against `rnmt serve` on
//! 127.0.0.1 and checks that none of them gets a server error (5xx other than the
//! documented 503 of a full queue) or an answer the document does not describe.

mod serve_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serve_support::Server;

/// The whole run is bounded: examples per operation, and a wall-clock limit past which
/// the test fails rather than stalls.
const MAX_EXAMPLES: &str = "25";
const WALL_LIMIT: Duration = Duration::from_secs(300);

/// The schemathesis command: `$SCHEMATHESIS`, else `schemathesis` on the PATH.
fn schemathesis() -> Option<String> {
    let program = std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let found = Command::new(&program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then_some(program)
}

#[test]
fn schemathesis_finds_no_server_errors_in_the_openapi_document() {
    let Some(program) = schemathesis() else {
        if std::env::var("RNMT_REQUIRE_CORPORA").is_ok_and(|v| v == "1") {
            panic!("schemathesis is missing: `pip install schemathesis` (or set SCHEMATHESIS)");
        }
        eprintln!("skipping: schemathesis is missing (`pip install schemathesis`)");
        return;
    };
    // A small text limit keeps generated texts, and so the run, short; every other
    // option is the default.
    let server = Server::start(&["--char-limit", "200"]);
    let report = tempfile::tempdir().unwrap();
    let mut child = Command::new(&program)
        .args([
            "run",
            &format!("{}/openapi.json", server.url),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            "1",
            "--workers",
            "1",
            "--request-timeout",
            "60",
            "--no-color",
        ])
        .current_dir(report.path())
        .env("NO_COLOR", "1")
        // Files, not pipes: a pipe nobody reads while we poll could fill and stall it.
        .stdout(std::fs::File::create(report.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(report.path().join("stderr")).unwrap())
        .spawn()
        .expect("schemathesis runs");
    let deadline = Instant::now() + WALL_LIMIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("schemathesis did not finish within {WALL_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait().unwrap();
    let stdout = std::fs::read_to_string(report.path().join("stdout")).unwrap();
    let stderr = std::fs::read_to_string(report.path().join("stderr")).unwrap();
    eprintln!("{stdout}");
    assert!(
        status.success(),
        "schemathesis found failures:\n{stdout}\n{stderr}"
    );
    // It tested something: every documented operation was exercised.
    assert!(
        stdout.contains("/translate") && stdout.contains("passed"),
        "schemathesis ran no operations:\n{stdout}"
    );
}
