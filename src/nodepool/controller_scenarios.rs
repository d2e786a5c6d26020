//! Reconcile scenarios against the in-process fake API server and a fake
//! provider that logs its calls into the same ordered log: the NodePool
//! controller's requests and provider calls, in order, for one pass.

use std::sync::Mutex;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::*;
use crate::nodepool::identity::Mode;
use crate::nodepool::provider::{CLUSTER_TAG, LAUNCH_TAG};
use crate::shared::fake_api::{self, Call, Log, ok};
use crate::shared::stores::Stores;

/// A provider whose instances live in memory; every call is logged as
/// `provider list`, `provider launch FIRST COUNT`, `provider terminate IDS`.
struct FakeProvider {
    log: Log,
    instances: Mutex<Vec<Instance>>,
}

fn instance(seq: i64, launched: Timestamp) -> Instance {
    Instance {
        id: format!("i-{seq}"),
        launched: Some(launched),
        tags: [
            (POOL_TAG.to_owned(), "p".to_owned()),
            (CLUSTER_TAG.to_owned(), "c".to_owned()),
            (LAUNCH_TAG.to_owned(), seq.to_string()),
        ]
        .into(),
    }
}

impl Provider for FakeProvider {
    fn list(&self) -> BoxFuture<'_, Result<Vec<Instance>, super::super::provider::Error>> {
        self.log.push("provider", "list", Value::Null);
        let listed = self.instances.lock().expect("instances").clone();
        Box::pin(async move { Ok(listed) })
    }

    fn launch(
        &self,
        first_seq: i64,
        count: usize,
    ) -> BoxFuture<'_, Result<Vec<Instance>, super::super::provider::Error>> {
        self.log.push(
            "provider",
            &format!("launch {first_seq} {count}"),
            Value::Null,
        );
        let launched: Vec<Instance> = (first_seq..first_seq + count as i64)
            .map(|seq| instance(seq, Timestamp::now()))
            .collect();
        self.instances
            .lock()
            .expect("instances")
            .extend(launched.clone());
        Box::pin(async move { Ok(launched) })
    }

    fn terminate<'a>(
        &'a self,
        instances: &'a [Instance],
    ) -> BoxFuture<'a, Result<(), super::super::provider::Error>> {
        let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
        self.log.push(
            "provider",
            &format!("terminate {}", ids.join(",")),
            Value::Null,
        );
        self.instances
            .lock()
            .expect("instances")
            .retain(|i| !ids.contains(&i.id.as_str()));
        Box::pin(async move { Ok(()) })
    }
}

fn pool(replicas: i32, deleting: bool) -> NodePool {
    let mut meta = json!({ "name": "p", "uid": "u-p", "resourceVersion": "7",
                           "finalizers": [FINALIZER] });
    if deleting {
        meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "NodePool",
        "metadata": meta,
        "spec": { "replicas": replicas, "provider": { "type": "Local" } },
        "status": { "nextLaunch": 0 }
    }))
    .expect("a NodePool")
}

/// A healthy API server: status and finalizer patches return the pool,
/// lists are empty.
fn answer(call: &Call) -> fake_api::Answer {
    let list = json!({ "apiVersion": "v1", "kind": "List", "metadata": {}, "items": [] });
    match call.method.as_str() {
        "GET" if !call.path.contains("/nodepools/") => (StatusCode::OK, list),
        "PATCH" if call.path.contains("/nodepools/p") => {
            let mut written = pool(2, false);
            written.metadata.resource_version = Some("8".into());
            ok(written)
        }
        _ => (StatusCode::NOT_FOUND, json!({})),
    }
}

/// A context over the fake API server with `provider` as the pool's.
fn context(client: kube::Client, pool: &NodePool, provider: Arc<FakeProvider>) -> PoolContext {
    let (ctx, recorder) = fake_api::shared(client.clone(), Stores::default());
    let pc = PoolContext {
        ctx,
        config: Config {
            state_dir: "/nonexistent".into(),
            cluster_name: "c".into(),
            instance_grace: Duration::from_secs(600),
            stale_after: Duration::from_secs(60),
            local_identity: Mode::Operator,
            identity_namespace: "theseus-nodes".into(),
            identity_prefix: "theseus-node-".into(),
        },
        recorder,
        providers: Arc::new(Mutex::new(HashMap::new())),
        evictions: client,
        identity: None,
    };
    providers::insert(&pc.providers, pool, provider);
    pc
}

/// The index of the first log line starting with `prefix`.
fn position(lines: &[String], prefix: &str) -> usize {
    lines
        .iter()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {lines:#?}"))
}

#[tokio::test]
async fn a_pass_records_the_launch_sequence_before_it_launches() {
    let log = Log::default();
    let client = fake_api::client(&log, answer);
    let provider = Arc::new(FakeProvider {
        log: log.clone(),
        instances: Mutex::new(Vec::new()),
    });
    let p = pool(2, false);
    let pc = Arc::new(context(client, &p, provider));
    reconcile(Arc::new(p), pc).await.expect("a pass");
    let lines = log.lines();
    assert_eq!(
        lines,
        [
            "provider list",
            "PATCH /apis/theseus.dev/v1alpha1/nodepools/p/status",
            "GET /api/v1/nodes",
            "provider launch 0 2",
            "PATCH /apis/theseus.dev/v1alpha1/nodepools/p/status",
        ],
        "observe, record, act, record the launched"
    );
    let calls = log.calls();
    let (before, after) = (&calls[1].body, &calls[4].body);
    assert_eq!(before["metadata"]["resourceVersion"], "7", "{before}");
    assert_eq!(
        before["status"]["nextLaunch"], 0,
        "the sequence RunInstances uses is in status first: {before}"
    );
    assert_eq!(
        after["metadata"]["resourceVersion"], "8",
        "the second write carries the first write's version: {after}"
    );
    assert_eq!(after["status"]["nextLaunch"], 2, "{after}");
    let ids: Vec<&str> = after["status"]["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(ids, ["i-0", "i-1"], "{after}");
}

#[tokio::test]
async fn a_conflict_on_the_plan_launches_nothing() {
    let log = Log::default();
    let client = fake_api::client(&log, |call: &Call| {
        if call.method == "PATCH" {
            return fake_api::status(409, "Conflict");
        }
        answer(call)
    });
    let provider = Arc::new(FakeProvider {
        log: log.clone(),
        instances: Mutex::new(Vec::new()),
    });
    let p = pool(2, false);
    let pc = Arc::new(context(client, &p, provider));
    let err = reconcile(Arc::new(p.clone()), pc.clone())
        .await
        .expect_err("a conflict");
    assert_eq!(err.reason(), "Conflict", "{err}");
    assert!(
        !log.lines().iter().any(|l| l.starts_with("provider launch")),
        "{:?}",
        log.lines()
    );
    assert_eq!(
        error_policy(Arc::new(p), &err, pc.clone()),
        Action::requeue(Duration::from_millis(200))
    );
    fake_api::assert_failure_counted(&pc.ctx.metrics, "nodepool", "Conflict");
}

#[tokio::test]
async fn a_deleted_pool_is_released_only_after_its_instances_are_terminated() {
    let log = Log::default();
    let client = fake_api::client(&log, answer);
    // An instance the pool never recorded, long past the grace period.
    let old = Timestamp::from_second(1_600_000_000).expect("a time");
    let provider = Arc::new(FakeProvider {
        log: log.clone(),
        instances: Mutex::new(vec![instance(5, old)]),
    });
    let p = pool(1, true);
    let pc = Arc::new(context(client, &p, provider.clone()));
    reconcile(Arc::new(p), pc).await.expect("the cleanup");
    let lines = log.lines();
    let terminated = position(&lines, "provider terminate i-5");
    let released = lines
        .iter()
        .rposition(|l| l == "PATCH /apis/theseus.dev/v1alpha1/nodepools/p")
        .unwrap_or_else(|| panic!("the finalizer is never removed: {lines:#?}"));
    assert!(
        terminated < released,
        "the instance is terminated before the pool is released: {lines:#?}"
    );
    assert_eq!(
        released,
        lines.len() - 1,
        "releasing is the last step: {lines:#?}"
    );
    let patch = &log.calls()[released].body;
    assert!(
        patch.to_string().contains("/metadata/finalizers"),
        "the last PATCH removes the finalizer: {patch}"
    );
    assert!(provider.instances.lock().expect("instances").is_empty());
}
