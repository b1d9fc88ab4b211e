//! `rnmt serve`: a translation server that speaks the LibreTranslate HTTP API, so that
//! existing clients (web pages, chat servers, localisation tools) can use rnmt's models
//! unchanged, and that batches the sentences of concurrent requests into one search
//! ([`batcher`]).
//!
//! [`router`] builds the whole service over an [`AppState`]; [`run`] binds it to a
//! socket, loads the models while already answering `/health` (503 until they are
//! loaded) and stops gracefully on SIGTERM or Ctrl-C.

pub mod batcher;
mod files;
pub mod limits;
mod listen;
pub mod metrics;
mod native;
mod routes;
mod state;
mod web;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use candle_core::Device;
use tokio::net::TcpListener;
use tower_http::cors::{Any, CorsLayer};

pub use files::{safe_name, SAFE_NAME_CHARS};
pub use routes::ApiError;
pub use state::{language_pairs, AppState, Language, Pair, ServeOptions};

/// The whole service: the API, the metrics, the middleware (request log, metrics,
/// timeout, CORS).
pub fn router(state: Arc<AppState>) -> Router {
    let mut app = Router::new()
        .route("/translate", post(routes::translate))
        .route("/detect", post(routes::detect))
        .route("/languages", get(routes::languages))
        .route("/frontend/settings", get(routes::frontend_settings))
        .route("/health", get(routes::health))
        .route("/metrics", get(metrics_text))
        .route("/v1/translate", post(native::translate))
        .route("/openapi.json", get(native::openapi))
        .route("/translate_file", post(files::translate_file))
        .route("/download_file/{key}", get(files::download_file))
        .route("/suggest", post(files::suggest));
    if state.options.web_page {
        app = app.merge(web::routes());
    }
    // After the merge, so that the web page's routes answer a wrong method or path
    // with the same JSON error as the API's.
    app = app
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed);
    if state.options.cors {
        // As LibreTranslate: any origin may call the API from a browser.
        app = app.layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .expose_headers([header::AUTHORIZATION])
                .max_age(std::time::Duration::from_secs(60 * 60 * 24 * 20)),
        );
    }
    app.layer(axum::middleware::from_fn_with_state(
        Arc::clone(&state),
        observe,
    ))
    .with_state(state)
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// Around every request: the timeout (503), the metrics and one log line (method, path,
/// status, latency, sentences; never the text).
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // The route, not the path, names the endpoint: unknown paths must not each make a
    // new metrics series.
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |m| m.as_str())
        .to_string();
    let timeout = state.options.request_timeout;
    let response = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::unavailable(format!(
            "The request timed out after {} s",
            timeout.as_secs_f64()
        ))
        .into_response(),
    };
    let status = response.status();
    let seconds = start.elapsed().as_secs_f64();
    state
        .metrics
        .observe_request(&endpoint, status.as_u16(), seconds);
    let sentences = response
        .extensions()
        .get::<routes::SentenceCount>()
        .map_or(0, |s| s.0);
    let ms = seconds * 1000.0;
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        tracing::warn!(%method, %path, status = status.as_u16(), ms, sentences, "request");
    } else {
        tracing::info!(%method, %path, status = status.as_u16(), ms, sentences, "request");
    }
    response
}

/// Serves `options` on `host:port` until SIGTERM or Ctrl-C; prints the bound address
/// (`listening on http://ADDR`) on stderr first, so that a caller who asked for port 0
/// learns the port.
pub fn run(options: ServeOptions, host: &str, port: u16, device: Device) -> Result<()> {
    let state = Arc::new(AppState::new(options)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("serve")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind((host, port))
            .await
            .with_context(|| format!("cannot listen on {host}:{port}"))?;
        let addr = listener.local_addr()?;
        eprintln!("listening on http://{addr}");
        tracing::info!(%addr, pairs = ?state.pairs.iter().map(Pair::label).collect::<Vec<_>>(), "loading models");

        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
        let loader = Arc::clone(&state);
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            match loader.load_models(&device) {
                Ok(()) => tracing::info!(seconds = start.elapsed().as_secs_f64(), "models loaded, ready"),
                Err(e) => {
                    let _ = failed_tx.send(e);
                }
            }
        });
        let failure = Arc::new(std::sync::Mutex::new(None));
        let failure_slot = Arc::clone(&failure);
        let shutdown = async move {
            tokio::select! {
                _ = shutdown_signal() => tracing::info!("shutting down: finishing the requests in flight"),
                Ok(e) = failed_rx => {
                    *failure_slot.lock().expect("not poisoned") = Some(e);
                }
            }
        };
        let app = router(Arc::clone(&state));
        let limits = listen::ConnectionLimits {
            header_timeout: state.options.header_timeout,
            max_connections: state.options.max_connections,
        };
        listen::serve(listener, app, limits, shutdown).await;
        if let Some(e) = failure.lock().expect("not poisoned").take() {
            return Err(e);
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
