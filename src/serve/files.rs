//! `POST /translate_file` and `GET /download_file/{name}`: LibreTranslate's file
//! translation. A `.txt`, `.html`/`.htm` or `.md` file is translated as one document
//! (its layout and markup kept, as `rnmt translate --document`), kept in memory for a
//! while, and fetched from the URL the answer gives.
//!
//! The translated files live in memory, not on disk: nothing to clean up after a crash,
//! and a bounded store ([`FileStore::MAX_BYTES`], oldest dropped first) cannot fill a
//! disk. A restart forgets them, which a client that downloads at once never notices.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::routes::{
    admitted_params, assemble_nth, counted_response, language_pair, served_model, translate_texts,
    ApiError, ApiResult, LanguagePair,
};
use super::state::AppState;
use crate::text::TextFormat;

/// The file types served, as LibreTranslate's `supportedFilesFormat` lists them.
pub const SUPPORTED_FORMATS: [&str; 4] = [".txt", ".html", ".htm", ".md"];

struct StoredFile {
    /// `ID.NAME`, the last part of the download URL.
    key: String,
    /// The name the client gave, made safe, for the download.
    name: String,
    bytes: Vec<u8>,
    stored: Instant,
}

/// The translated files waiting to be downloaded.
#[derive(Default)]
pub struct FileStore {
    files: Mutex<VecDeque<StoredFile>>,
}

impl FileStore {
    /// Files are kept this long after translation.
    pub const KEEP: Duration = Duration::from_secs(30 * 60);
    /// All files together stay within this; the oldest go first.
    pub const MAX_BYTES: usize = 64 << 20;

    fn put(&self, name: String, bytes: Vec<u8>) -> String {
        let id: u128 = rand::random();
        let key = format!("{id:032x}.{name}");
        let mut files = self.files.lock().expect("not poisoned");
        Self::expire(&mut files);
        let mut total: usize = files.iter().map(|f| f.bytes.len()).sum::<usize>() + bytes.len();
        while total > Self::MAX_BYTES {
            let Some(old) = files.pop_front() else { break };
            total -= old.bytes.len();
        }
        files.push_back(StoredFile {
            key: key.clone(),
            name,
            bytes,
            stored: Instant::now(),
        });
        key
    }

    fn get(&self, key: &str) -> Option<(String, Vec<u8>)> {
        let mut files = self.files.lock().expect("not poisoned");
        Self::expire(&mut files);
        files
            .iter()
            .find(|f| f.key == key)
            .map(|f| (f.name.clone(), f.bytes.clone()))
    }

    fn expire(files: &mut VecDeque<StoredFile>) {
        while files
            .front()
            .is_some_and(|f| f.stored.elapsed() > Self::KEEP)
        {
            files.pop_front();
        }
    }
}

/// The last part of a client's file name with anything but ASCII letters, digits, `.`,
/// `-` and `_` replaced by `_` (as LibreTranslate's `secure_filename` makes names safe
/// for a URL and a disk), never starting with `.`, never empty, at most
/// [`SAFE_NAME_CHARS`] characters, and a supported extension kept.
pub fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    // A supported extension is ASCII, so its byte length is the suffix's.
    let (stem, ext) = base.split_at(base.len() - extension(base).map_or(0, str::len));
    let stem: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stem = stem.trim_start_matches('.');
    let stem: String = stem.chars().take(SAFE_NAME_CHARS - ext.len()).collect();
    let stem = if stem.is_empty() { "file" } else { &stem };
    format!("{stem}{ext}")
}

/// The longest name [`safe_name`] gives.
pub const SAFE_NAME_CHARS: usize = 100;

/// The supported extension of `name` (lower case, with its dot).
fn extension(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    SUPPORTED_FORMATS.into_iter().find(|f| f[1..] == ext)
}

/// `POST /translate_file` (multipart: `file`, `source`, `target`, `api_key`):
/// `{"translatedFileUrl": URL}`.
pub async fn translate_file(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or("localhost")
        .to_string();
    counted_response(translate_file_request(&state, req, &host).await)
}

async fn translate_file_request(
    state: &AppState,
    req: Request,
    host: &str,
) -> ApiResult<(Value, usize)> {
    let params = admitted_params(state, req).await?;
    let Some((file_name, bytes)) = params.upload("file") else {
        return Err(ApiError::missing("file"));
    };
    let source = params.required_text("source")?;
    let target = params.required_text("target")?;
    if file_name.is_empty() {
        return Err(ApiError::bad_request("Invalid request: empty file"));
    }
    let Some(ext) = extension(file_name) else {
        return Err(ApiError::bad_request(
            "Invalid request: file format not supported",
        ));
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|e| {
            ApiError::bad_request(format!(
                "Invalid request: {file_name} is not UTF-8 text (at byte {})",
                e.valid_up_to()
            ))
        })?
        .to_string();
    // A file may carry as much text as the largest /translate request.
    let limit = state
        .options
        .char_limit
        .saturating_mul(state.options.batch_limit);
    let chars = text.chars().count();
    if chars > limit {
        return Err(ApiError::bad_request(format!(
            "Invalid request: file ({chars}) exceeds text limit ({limit})"
        )));
    }
    let LanguagePair { pair_index, .. } = language_pair(state, source, &target, || text.clone())?;
    let format = match ext {
        ".html" | ".htm" => TextFormat::Html,
        ".md" => TextFormat::Markdown,
        _ => TextFormat::Text,
    };
    if state.options.log_text {
        tracing::info!(file = %file_name, "translate_file");
    }
    let served = served_model(state, pair_index)?;
    let (segmented, translations) =
        translate_texts(served, std::slice::from_ref(&text), format, false).await?;
    let sentences = segmented[0].sentences().len();
    let translated = assemble_nth(&served.translator, &segmented[0], &translations[0], 0);
    let key = state
        .files
        .put(safe_name(file_name), translated.into_bytes());
    Ok((
        json!({ "translatedFileUrl": format!("http://{host}/download_file/{key}") }),
        sentences,
    ))
}

/// `GET /download_file/{ID.NAME}`: a translated file, as an attachment named NAME.
pub async fn download_file(
    State(state): State<Arc<AppState>>,
    Path(key): Path<String>,
) -> Response {
    let Some((name, bytes)) = state.files.get(&key) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "No such file: translated files are kept for 30 minutes",
        )
        .into_response();
    };
    let mime = match extension(&name) {
        Some(".html" | ".htm") => "text/html; charset=utf-8",
        Some(".md") => "text/markdown; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    };
    // `safe_name` leaves only characters that need no quoting in a header.
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(mime)),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response()
}

/// `POST /suggest`: LibreTranslate's answer when suggestions are off (rnmt keeps none).
pub async fn suggest() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "Suggestions are disabled on this server.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_file_names_are_made_safe() {
        assert_eq!(safe_name("Brief an Jürgen.md"), "Brief_an_J_rgen.md");
        assert_eq!(safe_name("../../etc/passwd.txt"), "passwd.txt");
        assert_eq!(safe_name("C:\\docs\\a.html"), "a.html");
        assert_eq!(safe_name("..hidden.txt"), "hidden.txt");
        assert_eq!(safe_name(".txt"), "file.txt");
        assert_eq!(safe_name("dir/"), "file");
        assert_eq!(safe_name("Notes.MD"), "Notes.MD");
        let long = format!("{}.txt", "x".repeat(300));
        let safe = safe_name(&long);
        assert!(safe.len() <= 100 && safe.ends_with(".txt"), "{safe}");
        assert_eq!(extension("A.HTML"), Some(".html"));
        assert_eq!(extension("a.docx"), None);
        assert_eq!(extension("txt"), None);
    }

    #[test]
    fn the_store_keeps_files_within_its_bound_oldest_dropped_first() {
        let store = FileStore::default();
        let first = store.put("a.txt".into(), vec![b'a'; FileStore::MAX_BYTES / 2]);
        let second = store.put("b.txt".into(), vec![b'b'; FileStore::MAX_BYTES / 2]);
        assert!(store.get(&first).is_some());
        let third = store.put("c.txt".into(), vec![b'c'; 10]);
        assert!(store.get(&first).is_none(), "the oldest goes first");
        assert_eq!(store.get(&second).unwrap().0, "b.txt");
        assert_eq!(store.get(&third).unwrap().1, b"cccccccccc");
        assert!(store.get("0.a.txt").is_none());
    }
}
