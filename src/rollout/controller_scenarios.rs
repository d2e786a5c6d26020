//! Reconcile scenarios against the in-process fake API server: the
//! PackageSet controller's requests, in order, for one pass.

use axum::http::StatusCode;
use kube::runtime::{reflector, watcher};
use serde_json::json;

use super::*;
use crate::pkg::index::{Index, IndexEntry};
use crate::shared::fake_api::{self, Call, Log, ok, status};
use crate::shared::stores::{Nodes, Stores};

fn set() -> PackageSet {
    serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageSet",
        "metadata": { "name": "web", "uid": "u-web", "resourceVersion": "7",
                      "creationTimestamp": "2026-01-01T00:00:00Z" },
        "spec": { "repository": "repo", "packages": ["web--1"],
                  "nodeSelector": { "matchLabels": { "app": "web" } },
                  "strategy": { "maxUnavailable": 2 } }
    }))
    .expect("a PackageSet")
}

fn node(name: &str) -> NodeInstall {
    let now = Timestamp::now().to_string();
    serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "NodeInstall",
        "metadata": { "name": name, "resourceVersion": "3", "labels": { "app": "web" },
                      "creationTimestamp": "2026-01-01T00:00:00Z" },
        "spec": {},
        "status": { "phase": "Idle", "heartbeat": now }
    }))
    .expect("a NodeInstall")
}

fn repository() -> PackageRepository {
    serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageRepository",
        "metadata": { "name": "repo" },
        "spec": { "url": "http://127.0.0.1:1/", "publicKeys": ["k"] }
    }))
    .expect("a PackageRepository")
}

fn index() -> Index {
    Index {
        version: 1,
        expires: None,
        packages: vec![IndexEntry {
            id: "web--1".parse().expect("an id"),
            sha256: "0".repeat(64),
            size: 1,
            path: "packages/web--1.tar.gz".into(),
            requires: Vec::new(),
        }],
    }
}

/// A context over the fake API server with `nodes` and the set in the
/// stores and the repository's index cached.
fn context(client: kube::Client, nodes: &[NodeInstall]) -> SetContext {
    let (set_store, mut set_writer) = reflector::store::<PackageSet>();
    set_writer.apply_watcher_event(&watcher::Event::Apply(set()));
    let stores = Stores {
        nodes: Nodes::fixed(nodes.to_vec()),
        ..Stores::default()
    };
    let node_store = stores.nodes.store().clone();
    stores
        .indexes
        .write()
        .expect("index cache")
        .insert("repo".into(), Arc::new(index()));
    let (ctx, recorder) = fake_api::shared(client, stores);
    SetContext {
        ctx,
        config: Config {
            stale_after: Duration::from_secs(60),
            generated: crate::api::PackageSource::default(),
        },
        nodes: node_store,
        sets: set_store,
        recorder,
        written: Written::default(),
    }
}

/// The answers of a healthy API server; `status_code` for the set's status.
fn answer(status_code: u16) -> impl Fn(&Call) -> fake_api::Answer {
    move |call: &Call| match (call.method.as_str(), call.path.as_str()) {
        ("GET", p) if p.contains("/configmaps/") => status(404, "NotFound"),
        ("GET", p) if p.contains("/packagerepositories/repo") => ok(repository()),
        ("PATCH", p) if p.contains("/packagesets/web/status") => {
            if status_code == 200 {
                ok(set())
            } else {
                status(status_code, "Conflict")
            }
        }
        ("PATCH", p) if p.contains("/nodeinstalls/") => {
            let name = p.rsplit('/').next().unwrap_or_default();
            ok(node(name.split('?').next().unwrap_or_default()))
        }
        _ => (StatusCode::NOT_FOUND, json!({})),
    }
}

#[tokio::test]
async fn a_batch_writes_the_reservation_before_any_target() {
    let log = Log::default();
    let client = fake_api::client(&log, answer(200));
    let sc = Arc::new(context(client, &[node("n0"), node("n1"), node("n2")]));
    let action = reconcile(Arc::new(set()), sc).await.expect("a pass");
    assert_ne!(
        action,
        Action::await_change(),
        "a rollout in progress is looked at again"
    );
    let mut lines = log.lines();
    // The halt and the repository are read at once, in either order.
    lines[..2].sort();
    assert_eq!(
        lines,
        [
            "GET /api/v1/namespaces/theseus-system/configmaps/theseus-halt",
            "GET /apis/theseus.dev/v1alpha1/packagerepositories/repo",
            "PATCH /apis/theseus.dev/v1alpha1/packagesets/web/status",
            "PATCH /apis/theseus.dev/v1alpha1/nodeinstalls/n0",
            "PATCH /apis/theseus.dev/v1alpha1/nodeinstalls/n1",
        ],
        "observe, record the reservation, then act on the batch (budget 2)"
    );
    let calls = log.calls();
    let reservation = &calls[2].body;
    assert_eq!(
        reservation["metadata"]["resourceVersion"], "7",
        "{reservation}"
    );
    assert_eq!(
        reservation["status"]["nodesInProgress"],
        json!(["n0", "n1"]),
        "{reservation}"
    );
    for call in &calls[3..] {
        assert_eq!(
            call.body["metadata"]["resourceVersion"], "3",
            "{}",
            call.body
        );
        assert_eq!(call.body["spec"]["target"]["packages"], json!(["web--1"]));
    }
}

#[tokio::test]
async fn a_conflict_on_the_reservation_writes_no_target() {
    let log = Log::default();
    let client = fake_api::client(&log, answer(409));
    let sc = Arc::new(context(client, &[node("n0"), node("n1"), node("n2")]));
    let err = reconcile(Arc::new(set()), sc.clone())
        .await
        .expect_err("a conflict");
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert_eq!(err.reason(), "Conflict");
    assert!(
        !log.lines().iter().any(|l| l.contains("/nodeinstalls/")),
        "no target after a lost reservation: {:?}",
        log.lines()
    );
    assert_eq!(
        error_policy(Arc::new(set()), &err, sc.clone()),
        Action::requeue(Duration::from_millis(100)),
        "a conflict is planned again shortly"
    );
    fake_api::assert_failure_counted(&sc.ctx.metrics, "packageset", "Conflict");
}

#[tokio::test]
async fn a_failed_target_write_names_its_step_and_node() {
    let log = Log::default();
    let client = fake_api::client(&log, |call: &Call| {
        if call.method == "PATCH" && call.path.contains("/nodeinstalls/n0") {
            return status(500, "InternalError");
        }
        answer(200)(call)
    });
    let sc = Arc::new(context(client, &[node("n0")]));
    let err = reconcile(Arc::new(set()), sc).await.expect_err("n0 fails");
    assert_eq!(err.reason(), "WriteTarget");
    assert!(err.to_string().contains("NodeInstall n0"), "{err}");
}
