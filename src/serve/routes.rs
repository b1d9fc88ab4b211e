//! The LibreTranslate-compatible API: the endpoints, their parameters (JSON, urlencoded
//! or multipart forms, the query string) and their error shapes and messages.
//!
//! LibreTranslate answers every error as `{"error": message}`; its messages and status
//! codes are kept word for word so that clients that show or match them keep working.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::limits::Refusal;
use super::state::{AppState, Served};
use crate::text::{Segmented, TextFormat};
use crate::translate::{Translation, Translator};

/// An error response: `{"error": message}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn missing(name: &str) -> Self {
        Self::bad_request(format!("Invalid request: missing {name} parameter"))
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

/// The number of sentences a response translated, for the request log.
#[derive(Clone, Copy, Debug)]
pub struct SentenceCount(pub usize);

/// A request's parameters, from its body (JSON object, urlencoded or multipart form) and
/// its query string (used for names the body does not give, as Flask's `request.values`
/// merges them).
#[derive(Debug, Default)]
pub struct Params {
    values: Map<String, Value>,
    /// The files of a multipart form, by field name: the file name the client gave and
    /// the bytes.
    uploads: std::collections::HashMap<String, (String, Vec<u8>)>,
    /// The body was JSON: `q` may be a list, and line endings are kept as sent.
    pub is_json: bool,
}

impl Params {
    pub async fn read(req: Request, body_limit: usize) -> ApiResult<Self> {
        let (parts, body) = req.into_parts();
        let mut params = Params::default();
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let bytes = axum::body::to_bytes(body, body_limit).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request body too large (the limit is {body_limit} bytes)"),
            )
        })?;
        if mime == "application/json" || mime.ends_with("+json") {
            params.is_json = true;
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(map)) => params.values = map,
                _ => return Err(ApiError::bad_request("Invalid JSON format")),
            }
        } else if mime == "application/x-www-form-urlencoded" {
            for (k, v) in form_urlencoded::parse(&bytes) {
                params
                    .values
                    .entry(k.into_owned())
                    .or_insert(Value::String(v.into_owned()));
            }
        } else if mime == "multipart/form-data" {
            let req = Request::from_parts(parts.clone(), Body::from(bytes));
            let mut form = Multipart::from_request(req, &())
                .await
                .map_err(|e| ApiError::bad_request(format!("Invalid multipart form: {e}")))?;
            loop {
                let field = match form.next_field().await {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        return Err(ApiError::bad_request(format!(
                            "Invalid multipart form: {e}"
                        )))
                    }
                };
                let Some(name) = field.name().map(str::to_string) else {
                    continue;
                };
                if let Some(file_name) = field.file_name().map(str::to_string) {
                    let bytes = field.bytes().await.map_err(|e| {
                        ApiError::bad_request(format!("Invalid multipart form field {name}: {e}"))
                    })?;
                    params
                        .uploads
                        .entry(name)
                        .or_insert((file_name, bytes.to_vec()));
                    continue;
                }
                let text = field.text().await.map_err(|e| {
                    ApiError::bad_request(format!("Invalid multipart form field {name}: {e}"))
                })?;
                params.values.entry(name).or_insert(Value::String(text));
            }
        }
        // Other bodies (a GET's urlencoded nothing, plain text) carry no parameters.
        if let Some(query) = parts.uri.query() {
            for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                params
                    .values
                    .entry(k.into_owned())
                    .or_insert(Value::String(v.into_owned()));
            }
        }
        Ok(params)
    }

    /// A parameter as text (numbers and booleans of JSON bodies as written); absent,
    /// null and empty are `None`.
    pub fn text(&self, name: &str) -> Option<String> {
        match self.values.get(name)? {
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            v @ (Value::Number(_) | Value::Bool(_)) => Some(v.to_string()),
            _ => None,
        }
    }

    /// [`Self::text`], or LibreTranslate's 400 for a missing parameter.
    pub fn required_text(&self, name: &str) -> ApiResult<String> {
        self.text(name).ok_or_else(|| ApiError::missing(name))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    /// The file a multipart form sent as `name`: its file name and bytes.
    pub fn upload(&self, name: &str) -> Option<&(String, Vec<u8>)> {
        self.uploads.get(name)
    }

    /// `q`: one text, or (JSON) a list of texts; `Ok(None)` when missing or empty.
    pub fn texts(&self) -> ApiResult<Option<(Vec<String>, bool)>> {
        let texts = match self.values.get("q") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) if s.is_empty() => return Ok(None),
            Some(Value::String(s)) => (vec![s.clone()], false),
            Some(Value::Array(items)) if items.is_empty() => return Ok(None),
            Some(Value::Array(items)) => {
                let texts = items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "Invalid request: q must be a string or a list of strings",
                        )
                    })?;
                (texts, true)
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    "Invalid request: q must be a string or a list of strings",
                ))
            }
        };
        Ok(Some(texts))
    }
}

fn client_address(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "local".to_string())
}

/// The key check (403) and the rate limit (429), before any work.
fn admit(state: &AppState, params: &Params, client: &str) -> ApiResult<()> {
    let key = params.text("api_key").unwrap_or_default();
    state.limits.admit(&key, client).map_err(|r| match r {
        Refusal::InvalidKey => ApiError::new(StatusCode::FORBIDDEN, "Invalid API key"),
        Refusal::Slowdown(n) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Slowdown: {n} per 1 minute"),
        ),
    })
}

/// Reads and admits a request of a rate-limited endpoint.
pub async fn admitted_params(state: &AppState, req: Request) -> ApiResult<Params> {
    let client = client_address(&req);
    let params = Params::read(req, state.options.body_limit()).await?;
    admit(state, &params, &client)?;
    Ok(params)
}

/// `POST /translate`.
pub async fn translate(State(state): State<Arc<AppState>>, req: Request) -> Response {
    counted_response(translate_request(&state, req).await)
}

/// A translating endpoint's JSON answer, carrying its sentence count for the request log
/// and metrics; or its error.
pub fn counted_response(result: ApiResult<(Value, usize)>) -> Response {
    match result {
        Ok((value, sentences)) => {
            let mut response = Json(value).into_response();
            response.extensions_mut().insert(SentenceCount(sentences));
            response
        }
        Err(e) => e.into_response(),
    }
}

/// What every translating endpoint reads: the texts, the language pair, the format,
/// checked against the limits in LibreTranslate's order.
pub struct TextRequest {
    pub texts: Vec<String>,
    /// `q` was a list (the answer is one too).
    pub is_list: bool,
    pub source: String,
    pub target: String,
    pub pair_index: usize,
    pub format: TextFormat,
    /// With `source: auto`: the detected language and its confidence (percent).
    pub detected: Option<(String, f64)>,
    /// The count parameter the endpoint asked for (`alternatives`, `nbest`).
    pub count: usize,
}

/// `name` as a count from 0 to `limit` (LibreTranslate's `alternatives` rules: absent
/// is 0, negative is 0, text must be a number).
fn count_param(params: &Params, name: &str, default: usize, limit: usize) -> ApiResult<usize> {
    let not_a_number =
        || ApiError::bad_request(format!("Invalid request: {name} parameter is not a number"));
    let n = match params.get(name) {
        None | Some(Value::Null) => default,
        Some(Value::Number(n)) => n.as_f64().map_or(default, |f| f.max(0.0) as usize),
        Some(Value::String(s)) if s.trim().is_empty() => default,
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(|n| n.max(0) as usize)
            .map_err(|_| not_a_number())?,
        Some(_) => return Err(not_a_number()),
    };
    if n > limit {
        return Err(ApiError::bad_request(format!(
            "Invalid request: {name} parameter must be <= {limit}"
        )));
    }
    Ok(n)
}

pub fn text_request(
    state: &AppState,
    params: &Params,
    count: (&str, usize, usize),
) -> ApiResult<TextRequest> {
    let opts = &state.options;
    let Some((mut texts, is_list)) = params.texts()? else {
        return Err(ApiError::missing("q"));
    };
    let source = params.required_text("source")?;
    let target = params.required_text("target")?;
    let (count_name, count_default, count_limit) = count;
    let count = count_param(params, count_name, count_default, count_limit)?;
    if !params.is_json {
        // Forms may send CRLF line endings; counting characters needs one convention.
        for t in &mut texts {
            *t = normalize_line_endings(t);
        }
    }
    if is_list && texts.len() > opts.batch_limit {
        return Err(ApiError::bad_request(format!(
            "Invalid request: request ({}) exceeds text limit ({})",
            texts.len(),
            opts.batch_limit
        )));
    }
    for t in &texts {
        let chars = t.chars().count();
        if chars > opts.char_limit {
            return Err(ApiError::bad_request(format!(
                "Invalid request: request ({chars}) exceeds text limit ({})",
                opts.char_limit
            )));
        }
    }
    let LanguagePair {
        source,
        pair_index,
        detected,
    } = language_pair(state, source, &target, || texts.join("\n"))?;
    // (LibreTranslate checks the format after the languages.)
    let format = match params.text("format").as_deref() {
        None | Some("text") => TextFormat::Text,
        Some("html") => TextFormat::Html,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "{other} format is not supported"
            )))
        }
    };
    if opts.log_text {
        tracing::info!(source = %source, target = %target, texts = ?texts, "texts");
    }
    Ok(TextRequest {
        texts,
        is_list,
        source,
        target,
        pair_index,
        format,
        detected,
        count,
    })
}

/// A request's language pair, resolved.
pub struct LanguagePair {
    /// The source language: as asked, or as detected for `auto`.
    pub source: String,
    pub pair_index: usize,
    /// With `source: auto`: the detected language and its confidence (percent).
    pub detected: Option<(String, f64)>,
}

/// The served pair for `source` (a code or `auto`, then detected in `sample()`) and
/// `target`, with LibreTranslate's messages for what is not served.
pub fn language_pair(
    state: &AppState,
    source: String,
    target: &str,
    sample: impl FnOnce() -> String,
) -> ApiResult<LanguagePair> {
    let detected = (source == "auto").then(|| state.detect(&sample()));
    let source = match &detected {
        Some((code, _)) => code.clone(),
        None => source,
    };
    let Some(src_lang) = state.language(&source) else {
        return Err(ApiError::bad_request(format!("{source} is not supported")));
    };
    let Some(tgt_lang) = state.language(target) else {
        return Err(ApiError::bad_request(format!("{target} is not supported")));
    };
    let Some(pair_index) = state
        .pairs
        .iter()
        .position(|p| p.source == source && p.target == target)
    else {
        return Err(ApiError::bad_request(format!(
            "{} ({}) is not available as a target language from {} ({})",
            tgt_lang.name, tgt_lang.code, src_lang.name, src_lang.code
        )));
    };
    Ok(LanguagePair {
        source,
        pair_index,
        detected,
    })
}

async fn translate_request(state: &AppState, req: Request) -> ApiResult<(Value, usize)> {
    let params = admitted_params(state, req).await?;
    let limit = state.options.alternatives_limit;
    let TextRequest {
        texts,
        is_list,
        pair_index,
        format,
        detected,
        count: alternatives,
        ..
    } = text_request(state, &params, ("alternatives", 0, limit))?;
    let served = served_model(state, pair_index)?;
    let (segmented, translations) = translate_texts(served, &texts, format, false).await?;
    let sentences: usize = segmented.iter().map(|s| s.sentences().len()).sum();
    let mut outputs = Vec::with_capacity(texts.len());
    let mut alternative_lists = Vec::with_capacity(texts.len());
    for (seg, tr) in segmented.iter().zip(&translations) {
        let best = assemble_nth(&served.translator, seg, tr, 0);
        // HTML keeps its markup around the best translation only (as LibreTranslate,
        // which gives no alternatives for HTML).
        let mut alts: Vec<String> = Vec::new();
        if format == TextFormat::Text {
            for k in 1..=alternatives {
                let alt = assemble_nth(&served.translator, seg, tr, k);
                if alt != best && !alt.is_empty() && !alts.contains(&alt) {
                    alts.push(alt);
                }
            }
        }
        outputs.push(best);
        alternative_lists.push(alts);
    }
    let detected_value =
        detected.map(|(code, confidence)| json!({"confidence": confidence, "language": code}));
    let mut out = Map::new();
    if is_list {
        out.insert("translatedText".into(), json!(outputs));
        if let Some(d) = detected_value {
            out.insert("detectedLanguage".into(), json!(vec![d; texts.len()]));
        }
        if alternatives > 0 {
            out.insert("alternatives".into(), json!(alternative_lists));
        }
    } else {
        out.insert("translatedText".into(), json!(outputs[0]));
        if let Some(d) = detected_value {
            out.insert("detectedLanguage".into(), d);
        }
        if alternatives > 0 {
            out.insert("alternatives".into(), json!(alternative_lists[0]));
        }
    }
    Ok((Value::Object(out), sentences))
}

/// The model of `state.pairs[index]`, or a 503 while the models load.
pub fn served_model(state: &AppState, index: usize) -> ApiResult<&Served> {
    state
        .models()
        .map(|m| &m[index])
        .ok_or_else(|| ApiError::unavailable("The models are still loading; retry in a moment"))
}

/// Cuts `texts` into sentences, has the model's batcher translate all of them (in one
/// submission, so they share batches with each other and with other requests) and gives
/// each text its sentences' translations.
/// With `detailed`, every sentence keeps its attention and word alignments (the native
/// API); otherwise only those whose markup needs them.
pub async fn translate_texts(
    served: &Served,
    texts: &[String],
    format: TextFormat,
    detailed: bool,
) -> ApiResult<(Vec<Segmented>, Vec<Vec<Translation>>)> {
    let segmented: Vec<Segmented> = texts
        .iter()
        .map(|t| served.translator.segment(t, format))
        .collect();
    let all: Vec<String> = segmented
        .iter()
        .flat_map(|s| s.sentences().iter().cloned())
        .collect();
    let aligned = detailed || segmented.iter().any(Segmented::needs_alignment);
    let pending = served.batcher.submit(all, aligned).map_err(|_| {
        ApiError::unavailable("The server is busy (its translation queue is full); retry later")
    })?;
    let mut translations = pending
        .wait()
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?
        .into_iter();
    let per_text = segmented
        .iter()
        .map(|s| translations.by_ref().take(s.sentences().len()).collect())
        .collect();
    Ok((segmented, per_text))
}

/// `seg`'s text with each sentence's `k`-th best translation (its best where it has
/// fewer) in place.
pub fn assemble_nth(
    translator: &Translator,
    seg: &Segmented,
    translations: &[Translation],
    k: usize,
) -> String {
    if k == 0 {
        return translator.assemble(seg, translations);
    }
    let nth: Vec<Translation> = translations
        .iter()
        .map(|t| {
            let mut t = t.clone();
            if let Some(e) = t.nbest.get(k) {
                t.translation = e.translation.clone();
            }
            t
        })
        .collect();
    translator.assemble(seg, &nth)
}

/// `\r\n` and `\r` become `\n` and a final line break goes, as LibreTranslate normalises
/// form input before counting characters.
fn normalize_line_endings(text: &str) -> String {
    let unix = text.replace("\r\n", "\n").replace('\r', "\n");
    unix.lines().collect::<Vec<_>>().join("\n")
}

/// `POST /detect`.
pub async fn detect(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let result = async {
        let params = admitted_params(&state, req).await?;
        let Some((texts, _)) = params.texts()? else {
            return Err(ApiError::missing("q"));
        };
        if state.options.log_text {
            tracing::info!(texts = ?texts, "detect");
        }
        let (code, confidence) = state.detect(&texts.join("\n"));
        Ok(json!([{ "confidence": confidence, "language": code }]))
    }
    .await;
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /languages`: every language with the targets it translates into. A body is
/// ignored (LibreTranslate's Python client sends an empty form with its GET).
pub async fn languages(State(state): State<Arc<AppState>>) -> Json<Value> {
    let list: Vec<Value> = state
        .languages
        .iter()
        .map(|l| {
            let targets: Vec<&str> = state
                .pairs
                .iter()
                .filter(|p| p.source == l.code)
                .map(|p| p.target.as_str())
                .collect();
            json!({ "code": l.code, "name": l.name, "targets": targets })
        })
        .collect();
    Json(Value::Array(list))
}

/// `GET /frontend/settings`: what LibreTranslate's web page reads at start.
pub async fn frontend_settings(State(state): State<Arc<AppState>>) -> Json<Value> {
    let opts = &state.options;
    let first = &state.pairs[0];
    let lang = |code: &str| {
        let l = state.language(code).expect("a served language");
        json!({ "code": l.code, "name": l.name })
    };
    Json(json!({
        "charLimit": opts.char_limit,
        "frontendTimeout": opts.frontend_timeout_ms,
        "apiKeys": state.limits.keys_enabled(),
        "keyRequired": false,
        "suggestions": false,
        "filesTranslation": true,
        "supportedFilesFormat": super::files::SUPPORTED_FORMATS,
        "language": { "source": lang(&first.source), "target": lang(&first.target) },
    }))
}

/// `GET /health`: 200 once the models are loaded, 503 before.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.models().is_some() {
        Json(json!({ "status": "ok" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "loading" })),
        )
            .into_response()
    }
}

pub async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Not Found: {}", req.uri().path()),
    )
}

pub async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "Method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_line_endings_are_normalised_as_libretranslate_does() {
        assert_eq!(super::normalize_line_endings("a\r\nb\rc\n"), "a\nb\nc");
        assert_eq!(super::normalize_line_endings("a\n\nb"), "a\n\nb");
    }
}
