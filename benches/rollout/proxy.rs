//! A counting proxy in front of the API server: a process given
//! [`Proxy::kubeconfig`] talks plain HTTP to 127.0.0.1, and the proxy
//! forwards each request over the testbed's TLS connection with the admin
//! identity (kube's `Client::send`), streaming the answer back (watches
//! included). It counts every request by verb and resource, so a benchmark
//! knows exactly which API requests one process made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio::task::JoinHandle;

/// Requests by (verb, resource): verbs as the API server names them
/// (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
/// `deletecollection`), resources with their subresource
/// (`nodeinstalls/status`); `discovery` for `/api`, `/apis`, `/version`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts(pub BTreeMap<(String, String), u64>);

impl Counts {
    /// What happened since `before`.
    pub fn since(&self, before: &Counts) -> Counts {
        Counts(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect(),
        )
    }

    /// All requests.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// The requests of one verb.
    pub fn verb(&self, verb: &str) -> u64 {
        self.0
            .iter()
            .filter(|((v, _), _)| v == verb)
            .map(|(_, n)| n)
            .sum()
    }

    /// Lines `verb resource count per-unit`, per `unit` (e.g. nodes).
    pub fn table(&self, unit: f64) -> String {
        let mut out = String::new();
        for ((verb, resource), n) in &self.0 {
            out.push_str(&format!(
                "    {verb:<8} {resource:<34} {n:>7}  {:>8.3}\n",
                *n as f64 / unit
            ));
        }
        out
    }
}

/// A running proxy.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Every request: when it came, its method and path, and when its
    /// answer's head came back.
    pub log: Arc<Mutex<Vec<(std::time::Instant, String, std::time::Instant)>>>,
    counts: Arc<Mutex<Counts>>,
    task: JoinHandle<()>,
}

struct Inner {
    client: kube::Client,
    counts: Arc<Mutex<Counts>>,
    log: Arc<Mutex<Vec<(std::time::Instant, String, std::time::Instant)>>>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1, forwarding to `kubeconfig`'s
    /// API server with its credentials (no retries: what the client sends
    /// is what the API server gets).
    pub async fn start(kubeconfig: &Path) -> Proxy {
        let config = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(config, &Default::default())
            .await
            .unwrap();
        config.default_retry = false;
        let client = kube::Client::try_from(config).unwrap();
        let counts = Arc::new(Mutex::new(Counts::default()));
        let log = Arc::default();
        let inner = Arc::new(Inner {
            client,
            counts: counts.clone(),
            log: Arc::clone(&log),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(forward).with_state(inner);
        // An answer's head and body are separate writes: without NODELAY the
        // body would wait for the client's delayed ACK (40 ms on Linux).
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Proxy {
            url,
            log,
            counts,
            task,
        }
    }

    /// The requests so far.
    pub fn counts(&self) -> Counts {
        self.counts.lock().unwrap().clone()
    }

    /// Writes a kubeconfig that points at the proxy (no credentials) to
    /// `path`.
    pub fn kubeconfig(&self, path: &Path) -> PathBuf {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: {}\n\
             users:\n- name: proxy\n  user: {{}}\ncontexts:\n- name: proxy\n  context:\n    \
             cluster: proxy\n    user: proxy\ncurrent-context: proxy\n",
            self.url
        );
        std::fs::write(path, text).unwrap();
        path.to_owned()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let came = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let key = classify(&parts.method, &parts.uri);
    let what = format!("{} {}", parts.method, parts.uri);
    *inner.counts.lock().unwrap().0.entry(key).or_default() += 1;
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return (StatusCode::BAD_REQUEST, "unreadable request body").into_response();
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut upstream = axum::http::Request::builder()
        .method(parts.method.clone())
        .uri(path);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) && name != header::HOST && name != header::AUTHORIZATION {
            upstream = upstream.header(name, value);
        }
    }
    let upstream = upstream
        .body(kube::client::Body::from(bytes.to_vec()))
        .unwrap();
    match inner.client.send(upstream).await {
        Ok(answer) => {
            inner
                .log
                .lock()
                .unwrap()
                .push((came, what, std::time::Instant::now()));
            let (parts, body) = answer.into_parts();
            let mut response = Response::builder().status(parts.status);
            for (name, value) in &parts.headers {
                if !hop_by_hop(name) {
                    response = response.header(name, value);
                }
            }
            response.body(Body::new(body)).unwrap()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("proxy: {e}")).into_response(),
    }
}

fn hop_by_hop(name: &header::HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
}

/// (verb, resource) of a request, as the API server would count it.
pub fn classify(method: &Method, uri: &Uri) -> (String, String) {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.first() {
        Some(&"api") if segments.len() >= 2 => &segments[2..],
        Some(&"apis") if segments.len() >= 3 => &segments[3..],
        _ => &[][..],
    };
    if rest.is_empty() {
        return (method.as_str().to_lowercase(), "discovery".into());
    }
    let rest = if rest[0] == "namespaces" && rest.len() >= 3 {
        &rest[2..]
    } else {
        rest
    };
    let named = rest.len() >= 2;
    let resource = match rest.get(2) {
        Some(sub) => format!("{}/{sub}", rest[0]),
        None => rest[0].to_owned(),
    };
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    };
    (verb.into(), resource)
}

/// Checks [`classify`] on the requests the operator makes (the smoke run
/// calls it: a bench without the test harness runs no `#[test]`).
pub fn check_classify() {
    let c = |m: Method, u: &str| {
        let (v, r) = classify(&m, &u.parse().unwrap());
        format!("{v} {r}")
    };
    assert_eq!(
        c(
            Method::GET,
            "/apis/theseus.dev/v1alpha1/nodeinstalls?labelSelector=a%3Db&watch=true&timeoutSeconds=20"
        ),
        "watch nodeinstalls"
    );
    assert_eq!(
        c(
            Method::GET,
            "/apis/theseus.dev/v1alpha1/nodeinstalls?limit=500"
        ),
        "list nodeinstalls"
    );
    assert_eq!(
        c(
            Method::PATCH,
            "/apis/theseus.dev/v1alpha1/packagesets/web/status"
        ),
        "patch packagesets/status"
    );
    assert_eq!(
        c(Method::GET, "/api/v1/namespaces/ns/configmaps/theseus-halt"),
        "get configmaps"
    );
    assert_eq!(
        c(
            Method::PUT,
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases/theseus-operator"
        ),
        "update leases"
    );
    assert_eq!(c(Method::GET, "/api/v1/namespaces/ns"), "get namespaces");
    assert_eq!(c(Method::GET, "/version"), "get discovery");
}
