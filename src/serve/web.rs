//! The web page at `/`: plain HTML, CSS and JavaScript built into the binary (no CDN, so
//! it works offline), speaking the same LibreTranslate API as every other client.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../../assets/web/index.html");
const SCRIPT: &str = include_str!("../../assets/web/app.js");
const STYLE: &str = include_str!("../../assets/web/style.css");

/// `/`, `/static/app.js`, `/static/style.css`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let page = |body: &'static str, mime: &'static str| {
        move || async move { ([(header::CONTENT_TYPE, mime)], body).into_response() }
    };
    Router::new()
        .route("/", get(page(INDEX, "text/html; charset=utf-8")))
        .route(
            "/static/app.js",
            get(page(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route(
            "/static/style.css",
            get(page(STYLE, "text/css; charset=utf-8")),
        )
}
