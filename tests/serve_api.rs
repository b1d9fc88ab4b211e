//! `rnmt serve`'s LibreTranslate-compatible API, in process (`tower::ServiceExt::oneshot`)
//! on the shipped Tatoeba models: every endpoint, every parameter encoding, and the error
//! shapes, messages and status codes of LibreTranslate's `app.py` and its tests.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use rnmt::serve::limits::ApiKeys;
use rnmt::serve::{router, AppState, ServeOptions};
use serde_json::{json, Value};
use tower::ServiceExt;

fn shipped_models() -> Vec<PathBuf> {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    vec![models.join("tatoeba-de-en"), models.join("tatoeba-en-de")]
}

/// The server with the default options, models loaded once for every test.
static SERVER: LazyLock<Arc<AppState>> = LazyLock::new(|| {
    let mut options = ServeOptions::new(shipped_models());
    options.char_limit = 200;
    options.batch_limit = 4;
    let state = AppState::new(options).expect("the shipped models have language pairs");
    state
        .load_models(&candle_core::Device::Cpu)
        .expect("the shipped models load");
    Arc::new(state)
});

async fn call(state: &Arc<AppState>, req: Request<Body>) -> (StatusCode, Value) {
    let response = router(Arc::clone(state)).oneshot(req).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "status {status}: not JSON: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, value)
}

fn post_json(path: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn post_form(path: &str, form: &[(&str, &str)]) -> Request<Body> {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap()
}

fn post_multipart(path: &str, form: &[(&str, &str)]) -> Request<Body> {
    let boundary = "rnmt-test-boundary";
    let mut body = String::new();
    for (k, v) in form {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    Request::post(path)
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap()
}

/// A multipart form with the fields `form` and one file field `file` named `name`.
fn post_file(form: &[(&str, &str)], name: &str, content: &[u8]) -> Request<Body> {
    let boundary = "rnmt-test-boundary";
    let mut body = Vec::new();
    for (k, v) in form {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Request::post("/translate_file")
        .header(header::HOST, "translate.example:5000")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap()
}

/// What the de→en translator gives for `sentence` on its own.
fn direct(pair: usize, sentence: &str) -> rnmt::translate::Translation {
    let served = &SERVER.models().unwrap()[pair];
    served
        .translator
        .translate(&[sentence.to_string()], 1)
        .unwrap()
        .remove(0)
}

const DE: &str = "Der Hund jagt die Katze.";

fn error(message: &str) -> Value {
    json!({ "error": message })
}

#[tokio::test]
async fn translate_accepts_json_forms_multipart_and_query_strings() {
    let expected = direct(0, DE).translation;
    assert!(!expected.is_empty());
    let form = [("q", DE), ("source", "de"), ("target", "en")];
    let query = format!(
        "/translate?{}",
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish()
    );
    for req in [
        post_json(
            "/translate",
            json!({"q": DE, "source": "de", "target": "en", "format": "text"}),
        ),
        post_form("/translate", &form),
        post_multipart("/translate", &form),
        Request::post(query.as_str()).body(Body::empty()).unwrap(),
    ] {
        let (status, body) = call(&SERVER, req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // Exactly LibreTranslate's shape: no detectedLanguage without `auto`, no
        // alternatives unless asked.
        assert_eq!(body, json!({ "translatedText": expected }));
    }
    let en = "The dog is chasing the cat.";
    let (status, body) = call(
        &SERVER,
        post_json(
            "/translate",
            json!({"q": en, "source": "en", "target": "de"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "translatedText": direct(1, en).translation }));
}

#[tokio::test]
async fn translate_lists_auto_detection_and_alternatives() {
    let texts = ["Ich bin müde.", "Wo ist der Bahnhof?"];
    let (status, body) = call(
        &SERVER,
        post_json(
            "/translate",
            json!({"q": texts, "source": "de", "target": "en"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let expected: Vec<String> = texts.iter().map(|t| direct(0, t).translation).collect();
    assert_eq!(body, json!({ "translatedText": expected }));

    let (status, body) = call(
        &SERVER,
        post_json(
            "/translate",
            json!({"q": texts, "source": "auto", "target": "en"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["translatedText"], json!(expected));
    let detected = body["detectedLanguage"].as_array().unwrap();
    assert_eq!(detected.len(), 2);
    for d in detected {
        assert_eq!(d["language"], "de");
        assert!(d["confidence"].as_f64().unwrap() > 0.0, "{d}");
    }

    let (status, body) = call(
        &SERVER,
        post_form(
            "/translate",
            &[("q", DE), ("source", "auto"), ("target", "en")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["detectedLanguage"]["language"], "de");
    assert!(body["detectedLanguage"]["confidence"].is_number());

    // Alternatives: the model's next-best translations, distinct and not the best one.
    let (status, body) = call(
        &SERVER,
        post_json(
            "/translate",
            json!({"q": DE, "source": "de", "target": "en", "alternatives": 2}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let t = direct(0, DE);
    let alts = body["alternatives"].as_array().unwrap();
    assert_eq!(body["translatedText"], t.translation);
    assert!(!alts.is_empty() && alts.len() <= 2, "{body}");
    for a in alts {
        assert_ne!(a, &json!(t.translation));
    }
    // A form gives the number as text.
    let (status, body) = call(
        &SERVER,
        post_form(
            "/translate",
            &[
                ("q", DE),
                ("source", "de"),
                ("target", "en"),
                ("alternatives", "1"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["alternatives"].as_array().unwrap().len(), 1);
    // A list gives a list of lists.
    let (_, body) = call(
        &SERVER,
        post_json(
            "/translate",
            json!({"q": texts, "source": "de", "target": "en", "alternatives": 1}),
        ),
    )
    .await;
    assert_eq!(body["alternatives"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn translate_errors_are_libretranslates() {
    let cases: Vec<(Request<Body>, StatusCode, Value)> = vec![
        (
            post_form(
                "/translate",
                &[("source", "en"), ("target", "es"), ("format", "text")],
            ),
            StatusCode::BAD_REQUEST,
            error("Invalid request: missing q parameter"),
        ),
        (
            post_json(
                "/translate",
                json!({"q": "", "source": "de", "target": "en"}),
            ),
            StatusCode::BAD_REQUEST,
            error("Invalid request: missing q parameter"),
        ),
        (
            post_json("/translate", json!({"q": "x", "target": "en"})),
            StatusCode::BAD_REQUEST,
            error("Invalid request: missing source parameter"),
        ),
        (
            post_json("/translate", json!({"q": "x", "source": "de"})),
            StatusCode::BAD_REQUEST,
            error("Invalid request: missing target parameter"),
        ),
        (
            post_form(
                "/translate",
                &[("q", "Hello"), ("source", "en"), ("target", "zz")],
            ),
            StatusCode::BAD_REQUEST,
            error("zz is not supported"),
        ),
        (
            post_form(
                "/translate",
                &[("q", "Hello"), ("source", "xx"), ("target", "en")],
            ),
            StatusCode::BAD_REQUEST,
            error("xx is not supported"),
        ),
        (
            post_form(
                "/translate",
                &[("q", "Hallo"), ("source", "de"), ("target", "de")],
            ),
            StatusCode::BAD_REQUEST,
            error("German (de) is not available as a target language from German (de)"),
        ),
        (
            post_json(
                "/translate",
                json!({"q": "x", "source": "de", "target": "en", "format": "pdf"}),
            ),
            StatusCode::BAD_REQUEST,
            error("pdf format is not supported"),
        ),
        (
            post_form(
                "/translate",
                &[
                    ("q", "x"),
                    ("source", "de"),
                    ("target", "en"),
                    ("alternatives", "two"),
                ],
            ),
            StatusCode::BAD_REQUEST,
            error("Invalid request: alternatives parameter is not a number"),
        ),
        (
            post_json(
                "/translate",
                json!({"q": "x", "source": "de", "target": "en", "alternatives": 4}),
            ),
            StatusCode::BAD_REQUEST,
            error("Invalid request: alternatives parameter must be <= 3"),
        ),
        (
            post_json(
                "/translate",
                json!({"q": "a".repeat(201), "source": "de", "target": "en"}),
            ),
            StatusCode::BAD_REQUEST,
            error("Invalid request: request (201) exceeds text limit (200)"),
        ),
        (
            post_json(
                "/translate",
                json!({"q": ["a", "b", "c", "d", "e"], "source": "de", "target": "en"}),
            ),
            StatusCode::BAD_REQUEST,
            error("Invalid request: request (5) exceeds text limit (4)"),
        ),
        (
            post_json("/translate", json!(["not", "an", "object"])),
            StatusCode::BAD_REQUEST,
            error("Invalid JSON format"),
        ),
        (
            Request::post("/translate")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{\"q\": \"unterminated"))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            error("Invalid JSON format"),
        ),
        (
            post_json(
                "/translate",
                json!({"q": [1, 2], "source": "de", "target": "en"}),
            ),
            StatusCode::BAD_REQUEST,
            error("Invalid request: q must be a string or a list of strings"),
        ),
        (
            post_json(
                "/translate",
                json!({"q": {"a": 1}, "source": "de", "target": "en"}),
            ),
            StatusCode::BAD_REQUEST,
            error("Invalid request: q must be a string or a list of strings"),
        ),
    ];
    for (req, status, expected) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (s, body) = call(&SERVER, req).await;
        assert_eq!((s, &body), (status, &expected), "{what}");
    }
}

#[tokio::test]
async fn malformed_bodies_get_json_errors_not_crashes() {
    // Over the body limit: 413 with an error object.
    let huge = "x".repeat(SERVER.options.body_limit() + 1);
    let (status, body) = call(
        &SERVER,
        Request::post("/translate")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(huge))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        body["error"].as_str().unwrap().contains("too large"),
        "{body}"
    );
    // A multipart body that ends mid-part.
    let (status, body) = call(
        &SERVER,
        Request::post("/translate")
            .header(header::CONTENT_TYPE, "multipart/form-data; boundary=b")
            .body(Body::from(
                "--b\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\nHallo",
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid multipart form"),
        "{body}"
    );
    // Invalid UTF-8 in a form is decoded with replacement characters and translated.
    let (status, body) = call(
        &SERVER,
        Request::post("/translate")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(b"q=Hallo%FF&source=de&target=en".to_vec()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["translatedText"].is_string());
    // Binary garbage that claims to be JSON.
    let (status, _) = call(
        &SERVER,
        Request::post("/translate")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(vec![0xff, 0x00, 0x7b, 0x80]))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn languages_detect_settings_health() {
    // GET with a body, as LibreTranslate's Python client sends it.
    let (status, body) = call(
        &SERVER,
        Request::get("/languages")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(""))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!([
            {"code": "de", "name": "German", "targets": ["en"]},
            {"code": "en", "name": "English", "targets": ["de"]},
        ])
    );
    let (status, body) = call(
        &SERVER,
        Request::post("/languages").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["error"].is_string());
    // The web page's routes answer a wrong method with the API's JSON error too
    // (found by the serve_request fuzz target: it was an empty body).
    let (status, body) = call(&SERVER, Request::post("/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["error"].is_string(), "{body}");

    for (text, lang) in [
        ("Wo ist der Bahnhof? Ich habe mich verlaufen.", "de"),
        ("Where is the station? I am lost.", "en"),
    ] {
        let (status, body) = call(&SERVER, post_form("/detect", &[("q", text)])).await;
        assert_eq!(status, StatusCode::OK);
        let list = body.as_array().unwrap();
        assert_eq!(list[0]["language"], lang, "{text}: {body}");
        let confidence = list[0]["confidence"].as_f64().unwrap();
        assert!(confidence > 0.0 && confidence <= 100.0, "{body}");
    }
    let (status, body) = call(
        &SERVER,
        Request::post("/detect").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            error("Invalid request: missing q parameter")
        )
    );
    let (status, _) = call(
        &SERVER,
        Request::get("/detect").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    let (status, body) = call(
        &SERVER,
        Request::get("/frontend/settings")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["charLimit"], 200);
    assert_eq!(body["frontendTimeout"], 500);
    assert_eq!(body["apiKeys"], false);
    assert_eq!(body["keyRequired"], false);
    assert_eq!(body["suggestions"], false);
    assert_eq!(body["filesTranslation"], true);
    assert_eq!(
        body["supportedFilesFormat"],
        json!([".txt", ".html", ".htm", ".md"])
    );
    assert_eq!(
        body["language"]["source"],
        json!({"code": "de", "name": "German"})
    );
    assert_eq!(
        body["language"]["target"],
        json!({"code": "en", "name": "English"})
    );

    let (status, body) = call(
        &SERVER,
        Request::get("/health").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, _) = call(
        &SERVER,
        Request::post("/health").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    let (status, body) = call(&SERVER, post_form("/suggest", &[("q", "a"), ("s", "b")])).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::FORBIDDEN,
            error("Suggestions are disabled on this server.")
        )
    );
    let (status, body) = call(
        &SERVER,
        Request::get("/nothing/here").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn cors_headers_as_libretranslate() {
    let response = router(Arc::clone(&SERVER))
        .oneshot(
            Request::builder()
                .method(Method::OPTIONS)
                .uri("/translate")
                .header(header::ORIGIN, "https://example.org")
                .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
                .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(response.status().is_success());
    let h = response.headers();
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let methods = h[header::ACCESS_CONTROL_ALLOW_METHODS].to_str().unwrap();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
}

#[tokio::test]
async fn metrics_count_requests_and_batches() {
    let (status, _) = call(
        &SERVER,
        post_json(
            "/translate",
            json!({"q": "Guten Morgen.", "source": "de", "target": "en"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let response = router(Arc::clone(&SERVER))
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(
        axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    for needle in [
        "rnmt_http_requests_total{endpoint=\"/translate\",status=\"200\"}",
        "rnmt_http_request_duration_seconds_bucket",
        "rnmt_batch_sentences_count{model=\"de-en\"}",
        "rnmt_sentences_translated_total{model=\"de-en\"}",
        "rnmt_source_tokens_translated_total{model=\"de-en\"}",
        "rnmt_queue_depth{model=\"de-en\"}",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
}

/// Keys and rate limits come before any work, so a server whose models are not loaded
/// yet checks them too; translation itself answers 503 until the models are loaded.
#[tokio::test]
async fn api_keys_rate_limits_and_loading() {
    let mut options = ServeOptions::new(shipped_models());
    options.api_keys = Some(ApiKeys::parse("good\nslow 1\n").unwrap());
    options.req_limit = 2;
    let state = Arc::new(AppState::new(options).unwrap());
    let form = |key: &str| {
        post_form(
            "/translate",
            &[
                ("q", "Hallo"),
                ("source", "de"),
                ("target", "en"),
                ("api_key", key),
            ],
        )
    };
    assert_eq!(
        call(&state, form("bad")).await,
        (StatusCode::FORBIDDEN, error("Invalid API key"))
    );
    let loading = (
        StatusCode::SERVICE_UNAVAILABLE,
        error("The models are still loading; retry in a moment"),
    );
    assert_eq!(call(&state, form("slow")).await, loading);
    assert_eq!(
        call(&state, form("slow")).await,
        (
            StatusCode::TOO_MANY_REQUESTS,
            error("Slowdown: 1 per 1 minute")
        )
    );
    // No key: the default limit, per client address.
    assert_eq!(call(&state, form("")).await, loading);
    assert_eq!(call(&state, form("")).await, loading);
    assert_eq!(
        call(&state, form("")).await,
        (
            StatusCode::TOO_MANY_REQUESTS,
            error("Slowdown: 2 per 1 minute")
        )
    );
    assert_eq!(call(&state, form("good")).await, loading);
    let (status, body) = call(&state, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, json!({"status": "loading"}));
    let (_, body) = call(
        &state,
        Request::get("/frontend/settings")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(body["apiKeys"], true);
}

#[test]
fn models_without_or_with_the_same_language_pair_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = &shipped_models()[0];
    let copy = |name: &str, edit: &dyn Fn(&mut Value)| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        for f in [
            "model.safetensors",
            "tokenizer-src.json",
            "tokenizer-tgt.json",
        ] {
            std::fs::copy(shipped.join(f), d.join(f)).unwrap();
        }
        let mut cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(shipped.join("config.json")).unwrap())
                .unwrap();
        edit(&mut cfg);
        std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
        d
    };
    let bare = copy("bare", &|c| {
        c.as_object_mut().unwrap().remove("src_lang");
    });
    let e = AppState::new(ServeOptions::new(vec![bare.clone()]))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("config.json") && e.contains("src_lang") && e.contains("tgt_lang"),
        "{e}"
    );
    let twin = copy("twin", &|_| {});
    let e = AppState::new(ServeOptions::new(vec![shipped.clone(), twin]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("both translate de→en"), "{e}");
}

#[tokio::test]
async fn native_api_gives_nbest_alignments_attention_and_timings() {
    let (status, body) = call(
        &SERVER,
        post_json(
            "/v1/translate",
            json!({"q": DE, "source": "de", "target": "en", "nbest": 3, "attention": true}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let best = direct(0, DE);
    assert_eq!(body["source"], "de");
    assert_eq!(body["target"], "en");
    assert_eq!(body["results"]["translatedText"], best.translation);
    let sentences = body["results"]["sentences"].as_array().unwrap();
    assert_eq!(sentences.len(), 1);
    let s = &sentences[0];
    assert_eq!(s["source"], DE);
    assert_eq!(s["translation"], best.translation);
    assert!((s["score"].as_f64().unwrap() - f64::from(best.score)).abs() < 1e-4);
    let nbest = s["nbest"].as_array().unwrap();
    assert_eq!(nbest.len(), 3);
    assert_eq!(nbest[0]["translation"], best.translation);
    let scores: Vec<f64> = nbest.iter().map(|e| e["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    // Word alignments: Pharaoh pairs within both sentences' word counts.
    let (src_words, tgt_words) = (
        DE.split_whitespace().count(),
        best.translation.split_whitespace().count(),
    );
    let alignment = s["alignment"].as_str().unwrap();
    assert!(!alignment.is_empty());
    for pair in alignment.split(' ') {
        let (i, j) = pair.split_once('-').unwrap();
        assert!(i.parse::<usize>().unwrap() < src_words, "{alignment}");
        assert!(j.parse::<usize>().unwrap() < tgt_words, "{alignment}");
    }
    // Attention: one row per target subword, over every source subword, each summing to 1.
    let att = &s["attention"];
    let (src, tgt) = (
        att["source"].as_array().unwrap().len(),
        att["target"].as_array().unwrap().len(),
    );
    let weights = att["weights"].as_array().unwrap();
    assert_eq!(weights.len(), tgt);
    for row in weights {
        let row: Vec<f64> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_f64().unwrap())
            .collect();
        assert_eq!(row.len(), src);
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-3, "{row:?}");
    }
    for key in ["parse_ms", "translate_ms", "total_ms"] {
        assert!(body["timings"][key].as_f64().unwrap() >= 0.0, "{key}");
    }

    // A list, auto-detected, without attention.
    let (status, body) = call(
        &SERVER,
        post_json(
            "/v1/translate",
            json!({"q": [DE, "Guten Morgen."], "source": "auto", "target": "en"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 2);
    assert_eq!(body["detectedLanguage"]["language"], "de");
    let s = &body["results"][0]["sentences"][0];
    assert!(s.get("attention").is_none());
    assert_eq!(s["nbest"].as_array().unwrap().len(), 1);
    // The same errors as /translate, and the n-best limit.
    let (status, body) = call(
        &SERVER,
        post_json(
            "/v1/translate",
            json!({"q": DE, "source": "de", "target": "en", "nbest": 5}),
        ),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            error("Invalid request: nbest parameter must be <= 4")
        )
    );
    let (status, body) = call(
        &SERVER,
        post_json("/v1/translate", json!({"source": "de", "target": "en"})),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            error("Invalid request: missing q parameter")
        )
    );
}

#[tokio::test]
async fn openapi_documents_every_endpoint() {
    let (status, body) = call(
        &SERVER,
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/translate",
        "/detect",
        "/languages",
        "/frontend/settings",
        "/health",
        "/metrics",
        "/v1/translate",
        "/translate_file",
        "/download_file/{key}",
        "/suggest",
    ] {
        assert!(body["paths"].get(path).is_some(), "{path} undocumented");
    }
}

#[tokio::test]
async fn the_web_page_is_built_in_unless_turned_off() {
    for (path, mime, needle) in [
        ("/", "text/html", "<title>rnmt"),
        ("/static/app.js", "text/javascript", "/translate"),
        ("/static/style.css", "text/css", "@media"),
    ] {
        let response = router(Arc::clone(&SERVER))
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let ct = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(ct.starts_with(mime), "{path}: {ct}");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains(needle), "{path}");
        // Nothing from elsewhere: the page works offline.
        assert!(
            !String::from_utf8_lossy(&bytes).contains("https://"),
            "{path}"
        );
    }
    let mut options = ServeOptions::new(shipped_models());
    options.web_page = false;
    let state = Arc::new(AppState::new(options).unwrap());
    let (status, body) = call(&state, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
}

/// Texts are cut into sentences that join the batches on their own, and put back
/// together with their layout (and, for HTML, their markup): exactly what
/// `Translator::translate_texts` gives.
#[tokio::test]
async fn texts_are_split_into_sentences_and_html_keeps_its_markup() {
    let translator = &SERVER.models().unwrap()[0].translator;
    let cases = [
        (
            "Ich bin müde. Wo ist der Bahnhof?\n\nGuten Morgen.",
            "text",
            rnmt::text::TextFormat::Text,
        ),
        (
            "<p>Der Hund jagt <b>die Katze</b>.</p><p>Ich bin müde.</p>",
            "html",
            rnmt::text::TextFormat::Html,
        ),
    ];
    for (text, format, text_format) in cases {
        let expected = translator
            .translate_texts(&[text], text_format)
            .unwrap()
            .remove(0);
        let (status, body) = call(
            &SERVER,
            post_json(
                "/translate",
                json!({"q": text, "source": "de", "target": "en", "format": format}),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["translatedText"], expected, "{format}");
    }
    let html = body_of(cases[1].0).await;
    assert!(
        html.contains("<b>") && html.contains("</b>") && html.starts_with("<p>"),
        "{html}"
    );
    // The native API shows the split.
    let (status, body) = call(
        &SERVER,
        post_json(
            "/v1/translate",
            json!({"q": cases[0].0, "source": "de", "target": "en"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let sources: Vec<&str> = body["results"]["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        ["Ich bin müde.", "Wo ist der Bahnhof?", "Guten Morgen."]
    );
}

async fn body_of(html: &str) -> String {
    let (_, body) = call(
        &SERVER,
        post_json(
            "/translate",
            json!({"q": html, "source": "de", "target": "en", "format": "html"}),
        ),
    )
    .await;
    body["translatedText"].as_str().unwrap().to_string()
}

/// A downloaded translated file: its status, content type, disposition and text.
async fn download(url: &str) -> (StatusCode, String, String, String) {
    let path = url
        .strip_prefix("http://translate.example:5000")
        .unwrap_or_else(|| panic!("the URL names the host asked: {url}"));
    let response = router(Arc::clone(&SERVER))
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let header_text = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &header::HeaderValue| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (mime, disposition) = (
        header_text(header::CONTENT_TYPE),
        header_text(header::CONTENT_DISPOSITION),
    );
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        mime,
        disposition,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

/// `/translate_file` translates a .md, .html and .txt file exactly as `rnmt translate
/// --document` does (the translator's `translate_texts` with the file's format), and
/// `/download_file` gives it back under the client's (made safe) name.
#[tokio::test]
async fn translate_file_translates_documents_as_the_command_line_does() {
    let translator = &SERVER.models().unwrap()[0].translator;
    for (name, format, mime, content) in [
        (
            "Brief an Jürgen.md",
            rnmt::text::TextFormat::Markdown,
            "text/markdown; charset=utf-8",
            "# Der Hund\n\nDer Hund jagt die Katze. Die Katze schläft.\n\n- Ich bin *sehr* müde.\n- Hallo Welt.\n",
        ),
        (
            "seite.html",
            rnmt::text::TextFormat::Html,
            "text/html; charset=utf-8",
            "<!doctype html>\n<p>Ich bin <b>müde</b>. Wo ist der Bahnhof?</p>\n<pre>Der Hund</pre>\n",
        ),
        (
            "notes.txt",
            rnmt::text::TextFormat::Text,
            "text/plain; charset=utf-8",
            "Der Hund jagt die Katze.\n\n  Wo ist der Bahnhof? Ich weiß es nicht.\n",
        ),
    ] {
        let want = translator
            .translate_texts(&[content], format)
            .unwrap()
            .remove(0);
        let (status, body) = call(
            &SERVER,
            post_file(&[("source", "de"), ("target", "en")], name, content.as_bytes()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        let url = body["translatedFileUrl"].as_str().unwrap().to_string();
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
        let (status, got_mime, disposition, text) = download(&url).await;
        assert_eq!(status, StatusCode::OK, "{url}");
        assert_eq!(got_mime, mime, "{name}");
        let safe = name.replace([' ', 'ü'], "_");
        assert_eq!(disposition, format!("attachment; filename=\"{safe}\""));
        assert_eq!(text, want, "{name}");
        assert!(!text.contains("Hund jagt"), "{name} was translated: {text}");
    }
    // `auto` detects the language of the file.
    let (status, body) = call(
        &SERVER,
        post_file(
            &[("source", "auto"), ("target", "de")],
            "a.txt",
            b"Where is the station? I do not know.",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn translate_file_errors_as_libretranslate() {
    let de_en = [("source", "de"), ("target", "en")];
    let cases: Vec<(Request<Body>, StatusCode, String)> = vec![
        (
            post_multipart("/translate_file", &de_en),
            StatusCode::BAD_REQUEST,
            "Invalid request: missing file parameter".into(),
        ),
        (
            post_file(&[("target", "en")], "a.txt", b"Hallo."),
            StatusCode::BAD_REQUEST,
            "Invalid request: missing source parameter".into(),
        ),
        (
            post_file(&[("source", "de")], "a.txt", b"Hallo."),
            StatusCode::BAD_REQUEST,
            "Invalid request: missing target parameter".into(),
        ),
        (
            post_file(&de_en, "", b"Hallo."),
            StatusCode::BAD_REQUEST,
            "Invalid request: empty file".into(),
        ),
        (
            post_file(&de_en, "a.docx", b"Hallo."),
            StatusCode::BAD_REQUEST,
            "Invalid request: file format not supported".into(),
        ),
        (
            post_file(&de_en, "a.txt", b"Hallo \xff Welt."),
            StatusCode::BAD_REQUEST,
            "Invalid request: a.txt is not UTF-8 text (at byte 6)".into(),
        ),
        (
            // The server's limits: 200 characters a text, 4 texts a request.
            post_file(&de_en, "a.txt", "Hallo. ".repeat(130).as_bytes()),
            StatusCode::BAD_REQUEST,
            "Invalid request: file (910) exceeds text limit (800)".into(),
        ),
        (
            post_file(&[("source", "zz"), ("target", "en")], "a.txt", b"Hallo."),
            StatusCode::BAD_REQUEST,
            "zz is not supported".into(),
        ),
        (
            post_file(&[("source", "de"), ("target", "de")], "a.txt", b"Hallo."),
            StatusCode::BAD_REQUEST,
            "German (de) is not available as a target language from German (de)".into(),
        ),
        (
            Request::get("/download_file/0123.a.txt")
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_FOUND,
            "No such file: translated files are kept for 30 minutes".into(),
        ),
    ];
    for (req, want_status, want) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (status, body) = call(&SERVER, req).await;
        assert_eq!((status, body), (want_status, error(&want)), "{what}");
    }
}
