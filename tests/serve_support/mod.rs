//! A `rnmt serve` process on 127.0.0.1 for the socket tests, and a client with timeouts.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Every client call gives up after this long: a hang fails the test instead of
/// stalling it.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The server's log lines after the address line.
    pub log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `rnmt serve --port 0 ARGS` and waits until `/health` says it is ready.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rnmt"))
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--threads",
                "2",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rnmt serve starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        break addr.trim().to_string();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("rnmt serve printed no address within 60 s");
                }
            }
        };
        let server = Self {
            child,
            url,
            log: rx,
        };
        let agent = agent();
        loop {
            if let Ok(r) = agent.get(&format!("{}/health", server.url)).call() {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "rnmt serve not ready within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(CLIENT_TIMEOUT).build()
}

/// POSTs `body` as JSON; the status and the JSON answer (errors included).
pub fn post_json(agent: &ureq::Agent, url: &str, body: &Value) -> (u16, Value) {
    let result = agent
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string());
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{url}: {e}"),
    };
    let status = response.status();
    let text = response.into_string().expect("a readable body");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{url}: status {status}, not JSON: {text:?}"));
    (status, value)
}

/// The first `n` German sentences of the Tatoeba test set, or `None` (skip) without
/// corpora.
pub fn tatoeba_test_de(n: usize) -> Option<Vec<String>> {
    let dir = tatoeba_dir()?;
    let text = std::fs::read_to_string(dir.join("test.de")).expect("tatoeba test.de");
    Some(text.lines().take(n).map(str::to_string).collect())
}

fn tatoeba_dir() -> Option<PathBuf> {
    let dir = rnmt::corpus::corpora_dir().join("tatoeba-deu-eng");
    if dir.join("test.de").exists() {
        return Some(dir);
    }
    if std::env::var("RNMT_REQUIRE_CORPORA").is_ok_and(|v| v == "1") {
        panic!("RNMT_REQUIRE_CORPORA=1 but no {}", dir.display());
    }
    eprintln!("skipping: no {} (set RNMT_CORPORA)", dir.display());
    None
}

pub fn shipped_model(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
}
