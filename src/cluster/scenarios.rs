//! Reconcile scenarios against the in-process fake API server: the
//! ClusterTemplate and Cluster controllers' requests, in order, for one
//! pass, over a catalog in the stores.

use std::sync::Arc;

use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::{Context, Stores, solve, template};
use crate::api::conditions::{self, types};
use crate::api::{
    Cluster, ClusterPlan, ClusterPlanStatus, ClusterTemplate, LayoutNode, NodeClass, PlanPhase,
    ServiceDefinition,
};
use crate::shared::fake_api::{self, Call, Log, ok, status};
use crate::shared::stores;

fn object<K: serde::de::DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).expect("an object")
}

fn store_of<K>(objects: Vec<K>) -> reflector::Store<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, mut writer) = reflector::store::<K>();
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::Apply(o));
    }
    store
}

/// One node class of 2 CPUs; `api` takes 2 CPUs and runs at most once,
/// `worker` takes 1; template `t` runs both, at most `max_size` nodes.
fn catalog(max_size: u32) -> Stores {
    let class: NodeClass = object(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "NodeClass",
        "metadata": { "name": "box" },
        "spec": { "provider": { "type": "Local", "local": {} }, "capacity": { "cpu": "2" } }
    }));
    let service = |name: &str, cpu: &str| -> ServiceDefinition {
        object(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "ServiceDefinition",
            "metadata": { "name": name },
            "spec": { "resources": { "cpu": cpu } }
        }))
    };
    let template: ClusterTemplate = object(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "ClusterTemplate",
        "metadata": { "name": "t", "generation": 1 },
        "spec": {
            "compatibility": { "nodeClasses": ["box"] },
            "defaults": { "services": ["api", "worker"] },
            "constraints": {
                "size": { "max": max_size },
                "services": { "api": { "count": { "min": 1, "max": 1 } } }
            }
        }
    }));
    Stores {
        services: store_of(vec![service("api", "2"), service("worker", "1")]),
        node_classes: store_of(vec![class]),
        templates: store_of(vec![template]),
    }
}

fn cluster(size: i32, layout: Value) -> Cluster {
    object(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "Cluster",
        "metadata": { "name": "c", "namespace": "apps", "generation": 2 },
        "spec": { "template": "t", "size": size },
        "status": { "observedGeneration": 1, "layout": layout }
    }))
}

fn solve_context(client: kube::Client, stores: Stores) -> Arc<Context> {
    let (ctx, recorder) = fake_api::shared(client, stores::Stores::default());
    Arc::new(Context {
        ctx,
        stores,
        recorder,
        solved: Default::default(),
        pools_applied: Default::default(),
        plans_written: Default::default(),
        tenants: kube::runtime::reflector::store().0,
        workers: Default::default(),
    })
}

/// The body of the one status write of `log`, after asserting it was the
/// only request.
fn only_status_write(log: &Log, path: &str) -> Value {
    assert_eq!(log.lines(), [format!("PATCH {path}")]);
    log.calls()[0].body["status"].clone()
}

/// The API server's answer to a status write: the object it names.
fn answer(call: &Call) -> fake_api::Answer {
    if call.path.contains("/clustertemplates/") {
        ok(catalog(1).templates.state()[0].as_ref())
    } else {
        ok(cluster(1, json!([])))
    }
}

const CLUSTER_STATUS: &str = "/apis/theseus.dev/v1alpha1/namespaces/apps/clusters/c/status";

#[tokio::test]
async fn a_new_cluster_gets_its_layout_in_one_status_write_and_a_second_pass_writes_nothing() {
    let log = Log::default();
    let client = fake_api::client(&log, answer);
    let cx = solve_context(client, catalog(10));
    solve::solve(&Arc::new(cluster(3, json!([]))), &cx.clone())
        .await
        .expect("a pass");
    let written = only_status_write(&log, CLUSTER_STATUS);
    let layout: Vec<LayoutNode> = serde_json::from_value(written["layout"].clone()).unwrap();
    let apis = layout.iter().filter(|n| n.services == ["api"]).count();
    let workers = layout.iter().filter(|n| n.services == ["worker"]).count();
    assert_eq!((layout.len(), apis, workers), (3, 1, 2), "{layout:?}");
    assert_eq!(
        written["layoutHash"],
        json!(solve::layout_hash(&layout)),
        "the hash is of the layout written"
    );
    assert_eq!(written["observedGeneration"], json!(2));
    let conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> =
        serde_json::from_value(written["conditions"].clone()).unwrap();
    let solved = conditions::find(&conditions, types::LAYOUT_SOLVED).unwrap();
    assert_eq!(
        (solved.status.as_str(), solved.reason.as_str()),
        ("True", "Solved")
    );

    // The status as written, read back: nothing to write.
    let mut again = cluster(3, written["layout"].clone());
    again.status = Some(serde_json::from_value(written).unwrap());
    let log2 = Log::default();
    let client = fake_api::client(&log2, |_| status(500, "unexpected"));
    solve::solve(&Arc::new(again), &solve_context(client, catalog(10)))
        .await
        .expect("a pass with nothing to do");
    assert!(log2.lines().is_empty(), "{:?}", log2.lines());
}

#[tokio::test]
async fn a_resize_past_the_template_keeps_the_old_layout_and_says_why() {
    let old = json!([
        { "name": "c-0", "nodeClass": "box", "services": ["api"] },
        { "name": "c-1", "nodeClass": "box", "services": ["worker"] }
    ]);
    let log = Log::default();
    let client = fake_api::client(&log, answer);
    let cx = solve_context(client, catalog(4));
    solve::solve(&Arc::new(cluster(6, old.clone())), &cx)
        .await
        .expect("a pass");
    let written = only_status_write(&log, CLUSTER_STATUS);
    assert_eq!(written["layout"], old, "the old layout stays");
    let conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> =
        serde_json::from_value(written["conditions"].clone()).unwrap();
    let solved = conditions::find(&conditions, types::LAYOUT_SOLVED).unwrap();
    assert_eq!(
        (solved.status.as_str(), solved.reason.as_str()),
        ("False", "Unsatisfiable")
    );
    assert!(
        solved.message.contains("spec.constraints.size.max=4")
            && solved
                .message
                .contains("the previous layout of 2 nodes stays"),
        "{}",
        solved.message
    );
}

#[tokio::test]
async fn a_failed_status_write_is_an_error_named_by_its_step_and_counted() {
    let log = Log::default();
    let client = fake_api::client(&log, |_| status(409, "Conflict"));
    let cx = solve_context(client, catalog(10));
    let err = solve::solve(&Arc::new(cluster(2, json!([]))), &cx.clone())
        .await
        .expect_err("the write fails");
    assert_eq!(err.reason(), "WriteStatus");
    assert!(err.to_string().contains("Cluster apps/c"), "{err}");
    solve::error_policy(Arc::new(cluster(2, json!([]))), &err, cx.clone());
    fake_api::assert_failure_counted(&cx.ctx.metrics, "cluster", "WriteStatus");
}

#[tokio::test]
async fn a_template_pass_records_valid_its_revision_and_its_feasible_sizes_once() {
    let log = Log::default();
    let client = fake_api::client(&log, answer);
    let stores = catalog(5);
    let (ctx, recorder) = fake_api::shared(client, stores::Stores::default());
    let cx = Arc::new(Context {
        ctx,
        stores: stores.clone(),
        recorder,
        solved: Default::default(),
        pools_applied: Default::default(),
        plans_written: Default::default(),
        tenants: kube::runtime::reflector::store().0,
        workers: Default::default(),
    });
    let t = stores.templates.state()[0].clone();
    template::reconcile(t.clone(), cx).await.expect("a pass");
    let written = only_status_write(&log, "/apis/theseus.dev/v1alpha1/clustertemplates/t/status");
    // api fills a node alone and worker needs one of its own: 2 nodes at
    // least; the template allows 5 at most.
    assert_eq!(written["feasibleSizes"], json!(["2-5"]));
    assert_eq!(written["observedGeneration"], json!(1));
    assert!(written["revision"].as_str().is_some_and(|r| r.len() == 16));
    assert_eq!(written["conditions"][0]["type"], json!("Valid"));
    assert_eq!(written["conditions"][0]["status"], json!("True"));
}

/// Plan `p` of cluster `c` in `phase`, at `version`.
fn plan(phase: &str, version: &str) -> ClusterPlan {
    object(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "ClusterPlan",
        "metadata": { "name": "p", "namespace": "apps", "resourceVersion": version },
        "spec": { "cluster": "c", "operation": crate::api::Operation::Create, "tasks": [] },
        "status": { "phase": phase }
    }))
}

const PLAN: &str = "/apis/theseus.dev/v1alpha1/namespaces/apps/clusterplans/p";

/// A plan's status in `phase`, nothing else.
fn phased(phase: PlanPhase) -> ClusterPlanStatus {
    ClusterPlanStatus {
        phase,
        ..ClusterPlanStatus::default()
    }
}

/// The requests of `log` for the plan, and empties it.
fn plan_calls(log: &Log) -> Vec<String> {
    let lines = log
        .lines()
        .into_iter()
        .filter(|l| l.contains("/clusterplans/"))
        .collect();
    log.clear();
    lines
}

#[tokio::test]
async fn a_running_plan_is_read_once_then_taken_from_its_last_write_until_a_write_fails() {
    use super::drive::{Reads, record_plan};
    let mut c = cluster(3, json!([]));
    c.status.as_mut().unwrap().plan = Some("p".into());
    let stored = std::sync::Arc::new(std::sync::Mutex::new(plan("Running", "1")));
    let refuse = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log = Log::default();
    let client = {
        let (stored, refuse) = (stored.clone(), refuse.clone());
        fake_api::client(&log, move |call| match (call.method.as_str(), &call.path) {
            ("GET", path) if path.starts_with(PLAN) => ok(&*stored.lock().unwrap()),
            ("PUT", path) if path.starts_with(PLAN) => {
                if refuse.load(std::sync::atomic::Ordering::SeqCst) {
                    return status(409, "Conflict");
                }
                let mut written: ClusterPlan = object(call.body.clone());
                written.metadata.resource_version = Some("2".into());
                *stored.lock().unwrap() = written.clone();
                ok(written)
            }
            _ => status(404, "NotFound"),
        })
    };
    let cx = solve_context(client, catalog(10));
    let plans: kube::Api<ClusterPlan> = kube::Api::namespaced(cx.ctx.client.clone(), "apps");
    let read = |reads: Reads| reads.plan.1.expect("read").expect("a plan");

    // Read, then recorded: the next pass starts from the write's answer.
    let first = read(Reads::of(&c, &cx).await);
    assert_eq!(plan_calls(&log), [format!("GET {PLAN}")]);
    let next = ClusterPlanStatus {
        progress: Some("1/2".into()),
        ..phased(PlanPhase::Running)
    };
    record_plan(&c, &first, &next, (&plans, &cx)).await.unwrap();
    assert_eq!(plan_calls(&log), [format!("PUT {PLAN}/status")]);
    let second = read(Reads::of(&c, &cx).await);
    assert_eq!(plan_calls(&log), Vec::<String>::new(), "not read again");
    assert_eq!(second.metadata.resource_version.as_deref(), Some("2"));
    assert_eq!(
        second.status.as_ref().unwrap().progress.as_deref(),
        Some("1/2")
    );

    // Another wrote it since: the record fails on the version, the plan
    // is forgotten and read again.
    refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(record_plan(&c, &first, &next, (&plans, &cx)).await.is_err());
    refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    log.clear();
    read(Reads::of(&c, &cx).await);
    assert_eq!(plan_calls(&log), [format!("GET {PLAN}")]);

    // A plan that ended is forgotten; one awaiting its approval (another's
    // write) is read at every pass.
    record_plan(&c, &second, &phased(PlanPhase::Succeeded), (&plans, &cx))
        .await
        .unwrap();
    assert!(cx.plans_written.lock().unwrap().is_empty());
    let waiting = plan("AwaitingApproval", "3");
    *stored.lock().unwrap() = waiting.clone();
    let next = phased(PlanPhase::AwaitingApproval);
    record_plan(&c, &waiting, &next, (&plans, &cx))
        .await
        .unwrap();
    log.clear();
    read(Reads::of(&c, &cx).await);
    assert_eq!(plan_calls(&log), [format!("GET {PLAN}")]);
}
