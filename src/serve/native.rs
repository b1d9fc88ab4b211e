//! The native API, for what LibreTranslate's cannot express: `POST /v1/translate` gives,
//! per sentence, the n-best list with model scores, word alignments and (when asked) the
//! attention matrix, with the sentence split and the request's timings. `/openapi.json`
//! documents it and the LibreTranslate endpoints.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};

use super::routes::{
    admitted_params, assemble_nth, counted_response, served_model, text_request, translate_texts,
    ApiResult, TextRequest,
};
use super::state::AppState;
use crate::search::alignment::pharaoh;
use crate::translate::{NbestEntry, Translation};

const OPENAPI: &str = include_str!("../../assets/web/openapi.json");

#[derive(Serialize)]
struct SentenceOut<'a> {
    source: &'a str,
    translation: &'a str,
    score: f32,
    log_prob: f32,
    nbest: &'a [NbestEntry],
    /// Pharaoh `i-j` pairs over whitespace-separated words (source i, target j); none
    /// for an empty sentence, which is not searched.
    #[serde(skip_serializing_if = "Option::is_none")]
    alignment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attention: Option<Value>,
}

/// `POST /v1/translate`.
pub async fn translate(State(state): State<Arc<AppState>>, req: Request) -> Response {
    counted_response(native_translate(&state, req).await)
}

async fn native_translate(state: &AppState, req: Request) -> ApiResult<(Value, usize)> {
    let start = Instant::now();
    let params = admitted_params(state, req).await?;
    let nbest_limit = state.options.translate.nbest;
    let TextRequest {
        texts,
        is_list,
        source,
        target,
        pair_index,
        format,
        detected,
        count: nbest,
    } = text_request(state, &params, ("nbest", 1, nbest_limit))?;
    let with_attention = matches!(params.get("attention"), Some(Value::Bool(true)))
        || params.text("attention").as_deref() == Some("true");
    let served = served_model(state, pair_index)?;
    let queued = Instant::now();
    let (segmented, translations) = translate_texts(served, &texts, format, true).await?;
    let translated = Instant::now();
    let mut sentences = 0;
    let results: Vec<Value> = segmented
        .iter()
        .zip(&translations)
        .map(|(seg, trs)| {
            sentences += trs.len();
            let list: Vec<SentenceOut> = seg
                .sentences()
                .iter()
                .zip(trs)
                .map(|(s, t)| sentence_out(s, t, nbest.max(1), with_attention))
                .collect();
            json!({ "translatedText": assemble_nth(&served.translator, seg, trs, 0), "sentences": list })
        })
        .collect();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
    let done = Instant::now();
    let mut out = json!({
        "source": source,
        "target": target,
        "results": if is_list { json!(results) } else { results[0].clone() },
        "timings": {
            "parse_ms": ms(start, queued),
            "translate_ms": ms(queued, translated),
            "total_ms": ms(start, done),
        },
    });
    if let Some((code, confidence)) = detected {
        out["detectedLanguage"] = json!({ "language": code, "confidence": confidence });
    }
    Ok((out, sentences))
}

fn sentence_out<'a>(
    source: &'a str,
    t: &'a Translation,
    nbest: usize,
    with_attention: bool,
) -> SentenceOut<'a> {
    let attention = with_attention
        .then_some(t.attention.as_ref())
        .flatten()
        .map(|m| json!({ "source": m.source, "target": m.target, "weights": m.weights }));
    SentenceOut {
        source,
        translation: &t.translation,
        score: t.score,
        log_prob: t.log_prob,
        nbest: &t.nbest[..nbest.min(t.nbest.len())],
        alignment: t.attention.is_some().then(|| pharaoh(&t.word_alignment)),
        attention,
    }
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}
