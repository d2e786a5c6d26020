//! `theseus repo serve`: a static file server for development, with the
//! single-range `Range` support the fetcher uses to resume downloads. It
//! logs every request (method, path, status) at info level: the access log
//! shows what a node fetched, and what it did not.

use std::io::SeekFrom;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

/// Serves the files under `dir` on `listener` until the process ends.
pub async fn serve(dir: PathBuf, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router(dir)).await
}

/// The router: every GET or HEAD path is a file under `dir`.
pub fn router(dir: PathBuf) -> axum::Router {
    axum::Router::new().fallback(file).with_state(Arc::new(dir))
}

async fn file(
    State(dir): State<Arc<PathBuf>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let response = respond(&dir, &method, &uri, &headers).await;
    tracing::info!(
        method = %method,
        path = %uri.path(),
        status = response.status().as_u16(),
        "request"
    );
    response
}

async fn respond(dir: &Path, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
    if *method != Method::GET && *method != Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let Some(path) = safe_join(dir, uri.path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return StatusCode::NOT_FOUND.into_response(),
    };
    let total = match file.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, len) = match range.map(|r| parse_range(r, total)) {
        None => (StatusCode::OK, 0, total),
        Some(Some((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Some(None) => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_RANGE, value(&format!("bytes */{total}")));
            return response;
        }
    };
    if file.seek(SeekFrom::Start(start)).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(ReaderStream::with_capacity(file.take(len), 256 << 10))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, value(&len.to_string()));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&path)),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            value(&format!("bytes {start}-{}/{total}", start + len - 1)),
        );
    }
    response
}

fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("header values built from numbers are valid")
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        Some("gz") => "application/gzip",
        _ => "application/octet-stream",
    }
}

/// `dir` joined with the URL path, refusing anything that could leave it.
fn safe_join(dir: &Path, url_path: &str) -> Option<PathBuf> {
    if url_path.contains('%') || url_path.contains('\\') {
        return None;
    }
    let rel = Path::new(url_path.trim_start_matches('/'));
    if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(dir.join(rel))
}

/// Parses a single `bytes=` range into inclusive `(start, end)`; `None`
/// when it cannot be satisfied.
pub fn parse_range(text: &str, total: u64) -> Option<(u64, u64)> {
    let spec = text.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            (total.checked_sub(n.min(total))?, total.checked_sub(1)?)
        }
        (s, "") => (s.parse().ok()?, total.checked_sub(1)?),
        (s, e) => (
            s.parse().ok()?,
            e.parse::<u64>().ok()?.min(total.checked_sub(1)?),
        ),
    };
    (start <= end && start < total).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_rfc_9110_says() {
        let cases: &[(&str, Option<(u64, u64)>)] = &[
            ("bytes=0-", Some((0, 99))),
            ("bytes=10-", Some((10, 99))),
            ("bytes=10-19", Some((10, 19))),
            ("bytes=90-500", Some((90, 99))),
            ("bytes=-10", Some((90, 99))),
            ("bytes=100-", None),
            ("bytes=20-10", None),
            ("bytes=0-1,5-6", None),
            ("items=0-1", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_range(text, 100), *expected, "{text}");
        }
    }

    #[test]
    fn url_paths_cannot_leave_the_directory() {
        let dir = Path::new("/srv/repo");
        assert_eq!(safe_join(dir, "/index.json"), Some(dir.join("index.json")));
        assert_eq!(safe_join(dir, "/../etc/passwd"), None);
        assert_eq!(safe_join(dir, "/a/%2e%2e/b"), None);
        assert_eq!(safe_join(dir, "/"), None);
    }
}
