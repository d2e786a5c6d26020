//! The operator's HTTP endpoints: the dashboard under `/ui/`, `/healthz`, `/readyz`, `/metrics`, the
//! SLA monitor's `POST /halt` and `POST /resume` (bearer token), and the
//! repository of generated configuration packages under
//! `/config-repository/` (`index.json`, `index.json.sig`,
//! `packages/ID.tar.gz`), read from the API server so that every replica
//! serves the same bytes.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde_json::json;

use crate::shared::halt::HaltStore;
use crate::shared::metrics::Metrics;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// Where the halt is stored.
    pub halt: HaltStore,
    /// The bearer token `/halt` and `/resume` require; `None` disables them.
    pub token: Option<Arc<str>>,
    /// The metrics registry.
    pub metrics: Metrics,
    /// Whether the replica is ready, and why not.
    pub readiness: Readiness,
    /// The generated packages' repository.
    pub config_repository: Option<crate::configgen::store::Repository>,
    /// The dashboard under `/ui/`, unless it is off.
    pub dashboard: Option<crate::dashboard::Dashboard>,
}

/// Whether `/readyz` answers 200: not before the operator has reached the
/// API server, and never again once one of its controllers has died.
#[derive(Clone, Debug)]
pub struct Readiness {
    problem: Arc<Mutex<Option<String>>>,
}

impl Readiness {
    /// Not ready, because of `why`.
    pub fn not_yet(why: &str) -> Self {
        Self {
            problem: Arc::new(Mutex::new(Some(why.to_owned()))),
        }
    }

    /// Ready.
    pub fn ready(&self) {
        *self.problem.lock().expect("readiness lock") = None;
    }

    /// Not ready (any more), because of `why`.
    pub fn fail(&self, why: &str) {
        *self.problem.lock().expect("readiness lock") = Some(why.to_owned());
    }

    /// Why the replica is not ready, if it is not.
    pub fn problem(&self) -> Option<String> {
        self.problem.lock().expect("readiness lock").clone()
    }
}

/// The router.
pub fn router(state: HttpState) -> Router {
    let dashboard = state.dashboard.clone();
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/halt", post(halt))
        .route("/resume", post(resume))
        .route("/config-repository/{*path}", get(config_file))
        .with_state(state);
    match dashboard {
        Some(dashboard) => router.merge(crate::dashboard::router(dashboard)),
        None => router,
    }
}

/// A file of the generated packages' repository.
async fn config_file(
    State(state): State<HttpState>,
    axum::extract::Path(path): axum::extract::Path<String>,
) -> Response {
    let Some(repository) = &state.config_repository else {
        return error(
            StatusCode::NOT_FOUND,
            "no repository of generated packages here",
        );
    };
    match repository.file(&path).await {
        Ok(Some(bytes)) => {
            let kind = if path.ends_with(".tar.gz") {
                "application/gzip"
            } else {
                "application/json"
            };
            ([(header::CONTENT_TYPE, kind)], bytes).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no file {path}")),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    }
}

async fn readyz(State(state): State<HttpState>) -> Response {
    match state.readiness.problem() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// The body of `POST /halt`.
#[derive(Debug, Default, Deserialize)]
pub struct HaltRequest {
    /// Why: shown on every PackageSet's Halted condition.
    #[serde(default)]
    pub reason: String,
    /// Who: an SLA monitor's name or a person. Default `api`.
    #[serde(default)]
    pub by: Option<String>,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Why a request was refused.
enum Denied {
    NoToken,
    WrongToken,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::NoToken => error(
                StatusCode::FORBIDDEN,
                "halt and resume are disabled: start the operator with --halt-token-secret or --halt-token",
            ),
            Denied::WrongToken => error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"),
        }
    }
}

/// Checks the bearer token in constant time.
fn authorize(state: &HttpState, headers: &HeaderMap) -> Result<(), Denied> {
    let Some(expected) = state.token.as_deref() else {
        return Err(Denied::NoToken);
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let same_length = given.len() == expected.len();
    let diff = given
        .bytes()
        .zip(expected.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if same_length && diff == 0 {
        Ok(())
    } else {
        Err(Denied::WrongToken)
    }
}

/// Reads the body of `POST /halt` as JSON whatever its declared content
/// type (`curl -d` declares a form), or an empty body as no fields at all.
fn halt_request(body: &[u8]) -> Result<HaltRequest, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(HaltRequest::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        format!("the body is not a JSON object like {{\"reason\": \"…\", \"by\": \"…\"}}: {e}")
    })
}

/// `POST /halt`. The token is checked before the body is looked at, so an
/// unauthenticated caller learns nothing but 401, whatever it sends.
async fn halt(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(denied) = authorize(&state, &headers) {
        return denied.into_response();
    }
    let request = match halt_request(&body) {
        Ok(request) => request,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    if request.reason.trim().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "a halt needs a reason: POST {\"reason\": \"…\"}",
        );
    }
    let by = request.by.unwrap_or_else(|| "api".to_owned());
    match state
        .halt
        .halt(&request.reason, &by, Timestamp::now())
        .await
    {
        Ok(halt) => (
            StatusCode::OK,
            Json(json!({ "halted": true, "halt": halt })),
        )
            .into_response(),
        Err(err) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("cannot store the halt: {err}"),
        ),
    }
}

async fn resume(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorize(&state, &headers) {
        return denied.into_response();
    }
    match state.halt.resume().await {
        Ok(was_halted) => Json(json!({ "halted": false, "wasHalted": was_halted })).into_response(),
        Err(err) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("cannot clear the halt: {err}"),
        ),
    }
}
