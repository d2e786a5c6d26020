//! The node's local HTTP API, as the original module design had it:
//! `GET /list.json`, `GET /active.json`, `POST /add`, `POST /remove`,
//! `POST /activate`; and what the services are doing: `GET /services.json`
//! (each service's state, CPU, memory and restarts), `GET /logs/NAME`
//! (the tail of a service's log, `?lines=N`) and `GET /metrics` (the same
//! as Prometheus metrics). It binds 127.0.0.1 by default and requires a bearer
//! token when bound elsewhere; it calls the same library as `theseus pkg`.
//! `/add` and `/activate` follow the agent's trust configuration like a
//! target does: an untrusted repository or index answers 403 with reason
//! `Untrusted`, and nothing is downloaded.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::api::NodePhase;
use crate::pkg::accepted::AcceptedVersions;
use crate::pkg::trust::{self, Grant, Policy};
use crate::pkg::{FetchOptions, Fetcher, PackageId, RootError};

use super::activate::Switcher;
use super::observe;
use super::root::{NodeRoot, blocking};
use super::trust::UNTRUSTED;

/// Errors of the local API's set-up.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A non-loopback address without a token.
    #[error(
        "--listen {0} is not a loopback address, and the local API then requires a token: pass --api-token (or THESEUS_AGENT_TOKEN), or listen on 127.0.0.1"
    )]
    TokenRequired(SocketAddr),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}; pick a free port with --listen")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// Refuses to expose the API beyond loopback without a token.
pub fn check_bind(addr: SocketAddr, token: Option<&str>) -> Result<(), ApiError> {
    if addr.ip().is_loopback() || token.is_some_and(|t| !t.is_empty()) {
        Ok(())
    } else {
        Err(ApiError::TokenRequired(addr))
    }
}

/// A `POST /activate` handed to the agent loop, which runs the full switch
/// (services, health check, rollback) and replies.
#[derive(Debug)]
pub struct ActivateRequest {
    /// The ids to make active.
    pub ids: Vec<PackageId>,
    /// Where to fetch missing packages.
    pub repository: Option<String>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<ActivateReply, ActivateRefusal>>,
}

/// A successful local activation.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivateReply {
    /// The active set hash.
    pub hash: String,
    /// The phase reached.
    pub phase: NodePhase,
    /// For people.
    pub message: String,
}

/// Why a local activation did not happen or failed.
#[derive(Debug, Clone)]
pub enum ActivateRefusal {
    /// The operator manages the node.
    Managed {
        /// The node.
        node: String,
        /// The PackageSet targeting it.
        package_set: String,
    },
    /// The repository or its index is not trusted; nothing was fetched.
    Untrusted {
        /// Why, naming the repository and the keys expected.
        message: String,
    },
    /// The switch failed (and was rolled back when possible).
    Failed {
        /// RolledBack or Failed.
        phase: NodePhase,
        /// Why.
        message: String,
    },
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The node root, shared with the agent loop: reads never wait for a
    /// fetch or a service stopping.
    pub root: NodeRoot,
    /// The bearer token; `None` leaves the API open (loopback only).
    pub token: Option<String>,
    /// The agent loop's inbox for activations.
    pub activate: mpsc::Sender<ActivateRequest>,
    /// Options for fetching packages.
    pub fetch: FetchOptions,
    /// What the agent trusts; `/add` is checked against it.
    pub policy: Arc<Policy>,
    /// The highest index version accepted from each repository.
    pub versions: AcceptedVersions,
    /// What `/services.json`, `/logs/NAME` and `/metrics` report on;
    /// `None` answers them 503.
    pub services: Option<Services>,
}

/// The node's services, as the observation endpoints read them.
#[derive(Clone)]
pub struct Services {
    /// The node's name, a label of every metric.
    pub node: String,
    /// The agent's switcher: the active set's services, their
    /// supervisor and restart counts.
    pub switcher: Switcher,
}

/// The router.
pub fn router(state: ApiState) -> Router {
    let auth = middleware::from_fn_with_state(state.clone(), require_token);
    Router::new()
        .route("/list.json", get(list))
        .route("/active.json", get(active))
        .route("/add", post(add))
        .route("/remove", post(remove))
        .route("/activate", post(activate))
        .route("/services.json", get(services))
        .route("/logs/{service}", get(logs))
        .route("/metrics", get(metrics))
        .layer(auth)
        .with_state(state)
}

/// Binds `addr` for the API, so that a taken port fails the start.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ApiError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })?;
    tracing::info!(%addr, "local API listening");
    Ok(listener)
}

/// Serves `router` on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), ApiError> {
    let addr = listener.local_addr().map_err(|source| ApiError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .map_err(|source| ApiError::Bind { addr, source })
}

async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let Some(token) = state.token.as_deref() else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        next.run(request).await
    } else {
        let mut response = failure(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token; send Authorization: Bearer TOKEN".into(),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        response
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn failure(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn untrusted(message: String) -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({ "error": message, "reason": UNTRUSTED })),
    )
        .into_response()
}

fn root_failure(e: RootError) -> Response {
    let status = match &e {
        RootError::NotCached(_) => StatusCode::NOT_FOUND,
        RootError::InUse { .. } => StatusCode::CONFLICT,
        RootError::Set(_) | RootError::BadArchiveName { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        // What the repository served is not the package asked for, or
        // not a package: the fault is upstream, as with a failed fetch.
        RootError::Fetch(_)
        | RootError::WrongId { .. }
        | RootError::PkgInfo(_)
        | RootError::Unpack(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    failure(status, e.to_string())
}

async fn list(State(state): State<ApiState>) -> Response {
    match state.root.read(|root| root.list()).await {
        Ok(list) => Json(json!({ "packages": list })).into_response(),
        Err(e) => root_failure(e),
    }
}

async fn active(State(state): State<ApiState>) -> Response {
    match state.root.read(|root| root.active()).await {
        Ok(Some(set)) => Json(set).into_response(),
        Ok(None) => {
            Json(json!({"generation": null, "ids": [], "hash": null, "time": null})).into_response()
        }
        Err(e) => root_failure(e),
    }
}

/// The body of `POST /add`: an `id` fetched from `repository`, or a `url`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    id: Option<PackageId>,
    url: Option<String>,
    repository: Option<String>,
}

/// What `POST /add` fetches, once the trust rules allow it.
enum AddPlan {
    /// The archive at a URL.
    Url(String, Fetcher),
    /// An id from a repository's index.
    Index(PackageId, Box<Grant>, Fetcher),
    /// An id that must already be cached.
    Cached(PackageId),
}

async fn add(State(state): State<ApiState>, Json(body): Json<AddBody>) -> Response {
    let plan = match (body.id, body.url, body.repository) {
        (None, Some(url), _) => {
            if let Err(refusal) = trust::decide_archive(&state.policy, &url) {
                return untrusted(refusal.to_string());
            }
            let fetcher = Fetcher::new(&url, vec![], state.fetch.clone());
            AddPlan::Url(url, fetcher)
        }
        (Some(id), None, Some(repo)) => {
            let grant = match trust::decide(&state.policy, &repo, &[]) {
                Ok(grant) => grant,
                Err(refusal) => return untrusted(refusal.to_string()),
            };
            let versions = Some(state.versions.clone());
            let fetcher = Fetcher::granted(&grant, state.fetch.clone(), versions);
            AddPlan::Index(id, Box::new(grant), fetcher)
        }
        (Some(id), None, None) => AddPlan::Cached(id),
        _ => {
            return failure(
                StatusCode::UNPROCESSABLE_ENTITY,
                "send {\"url\": URL} or {\"id\": ID, \"repository\": URL}".into(),
            );
        }
    };
    // Fetching into the cache holds the change lock only: reads go on.
    let change = state.root.change().await;
    blocking(move || {
        let root = change.root();
        let result = match plan {
            AddPlan::Url(url, fetcher) => change.block_on(root.add_url(&url, &fetcher)).map(|_| ()),
            AddPlan::Index(id, grant, fetcher) => {
                let missing = root.missing(std::slice::from_ref(&id));
                match change.block_on(root.fetch_packages(&missing, &fetcher)) {
                    Err(RootError::Fetch(e)) if e.is_untrusted() => {
                        return untrusted(grant.refusing(&e));
                    }
                    other => other.map(|_| ()),
                }
            }
            AddPlan::Cached(id) if root.missing(std::slice::from_ref(&id)).is_empty() => Ok(()),
            AddPlan::Cached(id) => Err(RootError::NotCached(id)),
        };
        match result {
            Ok(()) => Json(json!({ "packages": root.list().unwrap_or_default() })).into_response(),
            Err(e) => root_failure(e),
        }
    })
    .await
}

/// The body of `POST /remove`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveBody {
    id: PackageId,
}

async fn remove(State(state): State<ApiState>, Json(body): Json<RemoveBody>) -> Response {
    let id = body.id.clone();
    match state
        .root
        .change_exclusively(move |root| root.remove(&id))
        .await
    {
        Ok(()) => Json(json!({ "removed": body.id })).into_response(),
        Err(e) => root_failure(e),
    }
}

/// The body of `POST /activate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    ids: Vec<PackageId>,
    repository: Option<String>,
}

async fn activate(State(state): State<ApiState>, Json(body): Json<ActivateBody>) -> Response {
    let (reply, answer) = oneshot::channel();
    let request = ActivateRequest {
        ids: body.ids,
        repository: body.repository,
        reply,
    };
    if state.activate.send(request).await.is_err() {
        return failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent loop is not running".into(),
        );
    }
    match answer.await {
        Ok(Ok(reply)) => Json(reply).into_response(),
        Ok(Err(ActivateRefusal::Managed { node, package_set })) => failure(
            StatusCode::CONFLICT,
            format!(
                "node {node} follows PackageSet {package_set}; change the PackageSet (or remove the node from its selector) instead of activating locally"
            ),
        ),
        Ok(Err(ActivateRefusal::Untrusted { message })) => untrusted(message),
        Ok(Err(ActivateRefusal::Failed { phase, message })) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": message, "phase": phase })),
        )
            .into_response(),
        Err(_) => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent loop stopped before answering".into(),
        ),
    }
}

/// The active set's services and what they run as, or the answer to give.
async fn active_services(
    state: &ApiState,
) -> Result<(&Services, Vec<super::service::ServiceSpec>), Response> {
    let Some(services) = &state.services else {
        return Err(failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "this agent does not report its services".into(),
        ));
    };
    match services.switcher.active_services().await {
        Ok(specs) => Ok((services, specs)),
        Err(e) => Err(failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn report(state: &ApiState) -> Result<(String, observe::ServicesReport), Response> {
    let (services, specs) = active_services(state).await?;
    let switcher = &services.switcher;
    let report = observe::report(&specs, switcher.supervisor.as_ref(), &switcher.restarts).await;
    Ok((services.node.clone(), report))
}

async fn services(State(state): State<ApiState>) -> Response {
    match report(&state).await {
        Ok((_, report)) => Json(report).into_response(),
        Err(answer) => answer,
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    match report(&state).await {
        Ok((node, report)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            observe::prometheus(&node, &report),
        )
            .into_response(),
        Err(answer) => answer,
    }
}

/// The query of `GET /logs/NAME`.
#[derive(Debug, Deserialize)]
struct LogsQuery {
    lines: Option<usize>,
}

/// The body of `GET /logs/NAME`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogTail {
    /// The service.
    pub service: String,
    /// Its log's last lines, oldest first.
    pub lines: Vec<String>,
}

async fn logs(
    State(state): State<ApiState>,
    Path(service): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Response {
    let (_, specs) = match active_services(&state).await {
        Ok(ok) => ok,
        Err(answer) => return answer,
    };
    // Only a service of the active set: the name never becomes a path.
    let Some(spec) = specs.into_iter().find(|s| s.name() == service) else {
        return failure(
            StatusCode::NOT_FOUND,
            format!("{service} is not a service of this node's active set"),
        );
    };
    let lines = query.lines.unwrap_or(observe::DEFAULT_LINES);
    let path = spec.log_file.clone();
    match tokio::task::spawn_blocking(move || observe::tail(&path, lines)).await {
        Ok(Ok(lines)) => Json(LogTail { service, lines }).into_response(),
        Ok(Err(e)) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading {}: {e}", spec.log_file.display()),
        ),
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
