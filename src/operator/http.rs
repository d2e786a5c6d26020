//! The operator's HTTP endpoints: `/healthz`, `/readyz`, `/metrics`, and the
//! SLA monitor's `POST /halt` and `POST /resume` (bearer token).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde_json::json;

use super::halt::HaltStore;
use super::metrics::Metrics;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// Where the halt is stored.
    pub halt: HaltStore,
    /// The bearer token `/halt` and `/resume` require; `None` disables them.
    pub token: Option<Arc<str>>,
    /// The metrics registry.
    pub metrics: Metrics,
    /// Set once the operator has reached the API server.
    pub ready: Arc<AtomicBool>,
}

/// The router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/halt", post(halt))
        .route("/resume", post(resume))
        .with_state(state)
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the API server yet\n",
        )
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

async fn halt(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Option<Json<HaltRequest>>,
) -> Response {
    if let Err(denied) = authorize(&state, &headers) {
        return denied.into_response();
    }
    let request = body.map(|Json(b)| b).unwrap_or_default();
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
