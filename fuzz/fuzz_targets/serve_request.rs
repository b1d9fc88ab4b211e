//! The server's request parsing, through the whole router (every endpoint, the middleware,
//! the error answers) on arbitrary methods, paths, content types, query strings and bodies.
//! The models are named but never loaded, so a request that parses all the way ends in the
//! documented 503 "still loading" instead of a translation, and the target stays fast.
//! Invariants: no panic; no 500; every error is LibreTranslate's `{"error": message}`; a
//! file name from a client always becomes a safe one.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use libfuzzer_sys::fuzz_target;
use rnmt::serve::{router, safe_name, AppState, ServeOptions, SAFE_NAME_CHARS};
use tower::ServiceExt;

const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::PUT, Method::OPTIONS];
const PATHS: [&str; 12] = [
    "/translate",
    "/detect",
    "/languages",
    "/frontend/settings",
    "/health",
    "/metrics",
    "/v1/translate",
    "/openapi.json",
    "/translate_file",
    "/download_file/",
    "/suggest",
    "/",
];
const CONTENT_TYPES: [&str; 6] = [
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=X",
    "text/plain",
    "application/merge-patch+json; charset=utf-8",
    "",
];

fn app() -> &'static (tokio::runtime::Runtime, Router) {
    static APP: OnceLock<(tokio::runtime::Runtime, Router)> = OnceLock::new();
    APP.get_or_init(|| {
        let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models");
        let options = ServeOptions::new(vec![
            models.join("tatoeba-de-en"),
            models.join("tatoeba-en-de"),
        ]);
        let state = Arc::new(AppState::new(options).expect("the shipped models' configs"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (runtime, router(state))
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let method = METHODS[data[0] as usize % METHODS.len()].clone();
    let path = PATHS[data[1] as usize % PATHS.len()];
    let content_type = CONTENT_TYPES[data[2] as usize % CONTENT_TYPES.len()];
    // The rest: a query string (or path suffix) up to the first newline, then the body.
    let rest = &data[3..];
    let (query, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..0], rest),
    };
    let query = String::from_utf8_lossy(query);

    let name = safe_name(&query);
    assert!(!name.is_empty() && !name.starts_with('.'), "{name:?}");
    assert!(name.chars().count() <= SAFE_NAME_CHARS, "{name:?}");
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')),
        "{name:?}"
    );

    let uri = if path.ends_with('/') && path.len() > 1 {
        format!("{path}{query}")
    } else {
        format!("{path}?{query}")
    };
    let Ok(request) = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body.to_vec()))
    else {
        return; // not a request a client could send
    };
    let (runtime, app) = app();
    let (status, bytes) = runtime.block_on(async {
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, bytes)
    });
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_client_error() || status.is_server_error() {
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{status}: not JSON: {:?}", String::from_utf8_lossy(&bytes)));
        assert!(value["error"].is_string() || value["status"].is_string(), "{status}: {value}");
    }
});
