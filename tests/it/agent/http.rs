//! The node's local HTTP API, in-process with `tower::ServiceExt::oneshot`,
//! over a real node root and a real repository served on 127.0.0.1.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use theseus::agent::api::{self, ActivateRefusal, ActivateReply, ApiState};
use theseus::agent::root::NodeRoot;
use theseus::api::NodePhase;
use theseus::pkg::accepted::AcceptedVersions;
use theseus::pkg::trust::TrustConfig;
use theseus::pkg::{ActivateOptions, FetchOptions, Root, set_hash};
use tokio::sync::mpsc;
use tower::ServiceExt;

use crate::support::{repo_root, theseus};

/// Builds the demo packages into a repository signed with a fresh key and
/// serves it in-process; its URL and a trust configuration for it.
async fn serve_demo_repo(dir: &Path) -> (String, TrustConfig) {
    let examples = repo_root().join("examples/packages");
    for pkg in ["demo-config-1.0.0", "demo-web-1.0.0"] {
        theseus::pkg::build::build(&examples.join(pkg), &dir.join("packages")).unwrap();
    }
    let key = theseus::pkg::index::generate_key();
    let options = theseus::pkg::index::WriteOptions {
        key: Some(&key),
        ..Default::default()
    };
    theseus::pkg::index::write(dir, options).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(theseus::pkg::serve::serve(dir.to_owned(), listener));
    let trust = TrustConfig {
        trusted_keys: vec![theseus::pkg::index::encode_key(
            key.verifying_key().as_bytes(),
        )],
        allowed_repositories: vec![url.clone()],
        allow_unsigned: false,
    };
    (url, trust)
}

/// The router over `root`, with a stand-in agent loop that activates
/// through the library (no services) or refuses when `managed`.
fn app(root: NodeRoot, token: Option<&str>, managed: bool, trust: TrustConfig) -> axum::Router {
    let (tx, mut rx) = mpsc::channel::<api::ActivateRequest>(1);
    let loop_root = root.clone();
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let reply = if managed {
                Err(ActivateRefusal::Managed {
                    node: "n1".into(),
                    package_set: "web".into(),
                })
            } else {
                let ids = req.ids.clone();
                let activated = loop_root
                    .change_exclusively(move |root| {
                        let activation = root.activate(&ids, None, ActivateOptions::default());
                        tokio::runtime::Handle::current()
                            .block_on(activation)
                            .map(|switched| switched.hash)
                            .map_err(|e| e.to_string())
                    })
                    .await;
                match activated {
                    Ok(hash) => Ok(ActivateReply {
                        hash,
                        phase: NodePhase::Active,
                        message: "ok".into(),
                    }),
                    Err(e) => Err(ActivateRefusal::Failed {
                        phase: NodePhase::RolledBack,
                        message: e,
                    }),
                }
            };
            let _ = req.reply.send(reply);
        }
    });
    let root_path = root.path().to_owned();
    api::router(ApiState {
        versions: AcceptedVersions::under(&root_path),
        root,
        token: token.map(str::to_owned),
        activate: tx,
        fetch: FetchOptions::default(),
        policy: Arc::new(trust.policy("test").unwrap()),
        services: None,
    })
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let request = match body {
        Some(b) => request
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn open_root(dir: &Path) -> NodeRoot {
    NodeRoot::new(Root::open(&dir.join("root")).unwrap())
}

#[tokio::test]
async fn every_endpoint_works_over_a_real_root() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, trust) = serve_demo_repo(&dir.path().join("repo")).await;
    let app = app(open_root(dir.path()), None, false, trust);

    let (status, body) = call(&app, "GET", "/list.json", None, None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"packages": []})));

    let (status, body) = call(&app, "GET", "/active.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["hash"], Value::Null);

    for id in ["demo-config--1.0.0", "demo-web--1.0.0"] {
        let add = json!({"id": id, "repository": repo});
        let (status, body) = call(&app, "POST", "/add", Some(add), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (_, body) = call(&app, "GET", "/list.json", None, None).await;
    assert_eq!(
        body,
        json!({"packages": [
            {"id": "demo-config--1.0.0", "active": false},
            {"id": "demo-web--1.0.0", "active": false}
        ]})
    );

    let activate = json!({"ids": ["demo-config--1.0.0"]});
    let (status, body) = call(&app, "POST", "/activate", Some(activate), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expected = set_hash(&["demo-config--1.0.0".parse().unwrap()]);
    assert_eq!(body["hash"], json!(expected));
    assert_eq!(body["phase"], json!("Active"));

    let (_, body) = call(&app, "GET", "/active.json", None, None).await;
    assert_eq!(body["ids"], json!(["demo-config--1.0.0"]));
    assert_eq!(body["hash"], json!(expected));

    let (status, body) = call(
        &app,
        "POST",
        "/remove",
        Some(json!({"id": "demo-config--1.0.0"})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("in use"), "{body}");

    let (status, body) = call(
        &app,
        "POST",
        "/remove",
        Some(json!({"id": "demo-web--1.0.0"})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"removed": "demo-web--1.0.0"}));

    // demo-web requires demo-config; alone it is not a valid set.
    let (status, body) = call(
        &app,
        "POST",
        "/add",
        Some(json!({"id": "demo-web--1.0.0"})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = call(&app, "POST", "/add", Some(json!({"colour": 1})), None).await;
    assert!(status.is_client_error());
}

#[tokio::test]
async fn a_local_activation_is_refused_while_the_operator_manages_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(open_root(dir.path()), None, true, TrustConfig::default());
    let activate = json!({"ids": ["demo-config--1.0.0"]});
    let (status, body) = call(&app, "POST", "/activate", Some(activate), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"].as_str().unwrap().contains("PackageSet web"),
        "{body}"
    );
}

#[tokio::test]
async fn with_a_token_every_endpoint_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(
        open_root(dir.path()),
        Some("s3cret"),
        false,
        TrustConfig::default(),
    );
    let cases = [
        ("GET", "/list.json", None),
        ("GET", "/active.json", None),
        ("POST", "/add", Some(json!({"id": "a--1"}))),
        ("POST", "/remove", Some(json!({"id": "a--1"}))),
        ("POST", "/activate", Some(json!({"ids": ["a--1"]}))),
    ];
    for (method, path, body) in cases {
        let (status, _) = call(&app, method, path, body.clone(), None).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
        let (status, _) = call(&app, method, path, body.clone(), Some("wrong")).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a wrong token"
        );
    }
    let (status, _) = call(&app, "GET", "/list.json", None, Some("s3cret")).await;
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn binding_beyond_loopback_needs_a_token() {
    let any: std::net::SocketAddr = "0.0.0.0:7070".parse().unwrap();
    let local: std::net::SocketAddr = "127.0.0.1:7070".parse().unwrap();
    assert!(api::check_bind(local, None).is_ok());
    assert!(api::check_bind(any, Some("t")).is_ok());
    assert!(api::check_bind(any, Some("")).is_err());
    let err = api::check_bind(any, None).unwrap_err().to_string();
    assert!(err.contains("--api-token"), "{err}");
}

#[test]
fn the_agent_refuses_to_start_on_a_public_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(theseus())
        .args(["agent", "--node-name", "n1", "--listen", "0.0.0.0:0"])
        .arg("--root")
        .arg(dir.path())
        .env_remove("THESEUS_AGENT_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    assert!(stderr.contains("--api-token"), "{stderr}");
}

/// A listener on 127.0.0.1 that counts the connections it accepts and
/// answers none: a repository that must never be contacted.
async fn counting_listener() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    (url, hits)
}

#[tokio::test]
async fn add_follows_the_trust_rules_and_contacts_no_untrusted_repository() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, trust) = serve_demo_repo(&dir.path().join("repo")).await;
    let (elsewhere, hits) = counting_listener().await;
    let key = trust.trusted_keys[0].clone();
    let root = open_root(dir.path());
    let trusting = app(root.clone(), None, false, trust.clone());
    let untrusted = |body: &Value| {
        assert_eq!(body["reason"], json!("Untrusted"), "{body}");
        body["error"].as_str().unwrap().to_owned()
    };

    let add = json!({"id": "demo-config--1.0.0", "repository": elsewhere});
    let (status, body) = call(&trusting, "POST", "/add", Some(add), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let error = untrusted(&body);
    assert!(
        error.contains(&elsewhere) && error.contains(&key),
        "{error}"
    );

    let by_url = json!({"url": format!("{elsewhere}/packages/demo-config--1.0.0.tar.gz")});
    let (status, body) = call(&trusting, "POST", "/add", Some(by_url), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(untrusted(&body).contains("no signed index"), "{body}");
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no request"
    );

    // The allowed repository, but signed with a key this node does not trust.
    let foreign = TrustConfig {
        trusted_keys: vec![theseus::pkg::index::encode_key(
            theseus::pkg::index::generate_key()
                .verifying_key()
                .as_bytes(),
        )],
        ..trust.clone()
    };
    let distrusting = app(root.clone(), None, false, foreign);
    let add = json!({"id": "demo-config--1.0.0", "repository": repo});
    let (status, body) = call(&distrusting, "POST", "/add", Some(add.clone()), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        untrusted(&body).contains("signature does not match"),
        "{body}"
    );

    // Trusting nothing refuses everything.
    let nothing = TrustConfig {
        allowed_repositories: vec![repo.clone()],
        ..TrustConfig::default()
    };
    let refusing = app(root.clone(), None, false, nothing);
    let (status, body) = call(&refusing, "POST", "/add", Some(add.clone()), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(untrusted(&body).contains("trusts no signing key"), "{body}");
    let (_, body) = call(&trusting, "GET", "/list.json", None, None).await;
    assert_eq!(body, json!({"packages": []}), "nothing was installed");

    let (status, body) = call(&trusting, "POST", "/add", Some(add), None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the trusted key and repository: {body}"
    );
}

/// A repository on 127.0.0.1 that accepts connections, reads the request
/// and never answers; `accepted` is notified at each connection.
async fn stalling_repository() -> (String, Arc<tokio::sync::Notify>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(tokio::sync::Notify::new());
    let notify = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            notify.notify_one();
            held.push(socket);
        }
    });
    (url, accepted)
}

struct NoSink;

impl theseus::agent::activate::PhaseSink for NoSink {
    fn phase(&self, _: NodePhase, _: String) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[tokio::test]
async fn reads_answer_promptly_while_an_activation_is_stuck_fetching() {
    use std::time::{Duration, Instant};
    use theseus::agent::activate::{Outcome, Request, SwitchError, Switcher};
    use theseus::agent::service::AgentEnv;
    use theseus::agent::supervisor::ProcessSupervisor;
    const STALL: Duration = Duration::from_secs(8);
    let dir = tempfile::tempdir().unwrap();
    let (url, accepted) = stalling_repository().await;
    let root = open_root(dir.path());
    let root_path = root.path().to_owned();
    let trust = TrustConfig {
        allow_unsigned: true,
        allowed_repositories: vec![url.clone()],
        ..TrustConfig::default()
    };
    let policy = Arc::new(trust.policy("test").unwrap());
    let fetch = FetchOptions {
        retries: 0,
        read_timeout: STALL,
        ..FetchOptions::default()
    };
    let switcher = Switcher {
        root: root.clone(),
        supervisor: Arc::new(ProcessSupervisor::new(&root_path.join("run"))),
        env: AgentEnv::new("n1", &root_path, &[]),
        fetch: fetch.clone(),
        policy: policy.clone(),
        versions: AcceptedVersions::under(&root_path),
        secrets: None,
        restarts: Default::default(),
    };
    let (tx, _rx) = mpsc::channel(1);
    let app = api::router(ApiState {
        versions: AcceptedVersions::under(&root_path),
        root,
        token: None,
        activate: tx,
        fetch,
        policy,
        services: None,
    });
    let ids = vec!["demo-config--1.0.0".parse().unwrap()];
    let request = Request {
        hash: set_hash(&ids),
        ids,
        repository: Some(url),
        keys: vec![],
        health_timeout: Duration::from_secs(5),
        sources: vec![],
        secrets: vec![],
    };
    let started = Instant::now();
    let switch = tokio::spawn(async move { switcher.switch(&request, &NoSink).await });
    tokio::time::timeout(STALL, accepted.notified())
        .await
        .expect("the activation contacts the repository");
    let asked = Instant::now();
    let (status, body) = call(&app, "GET", "/active.json", None, None).await;
    let answered = asked.elapsed();
    println!("GET /active.json during a stalled fetch answered in {answered:?} (stall {STALL:?})");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["hash"], Value::Null);
    assert!(
        answered < STALL / 8,
        "the read waited {answered:?} for a fetch stalled {STALL:?}"
    );
    let outcome = switch.await.unwrap();
    println!(
        "the activation ended after {:?}: {outcome:?}",
        started.elapsed()
    );
    match outcome {
        Outcome::RolledBack(reason @ SwitchError::Fetch(_)) => {
            assert!(reason.to_string().contains("fetch failed"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}
