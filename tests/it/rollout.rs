//! PackageSet rollouts end to end: a real `theseus operator` process against
//! the testbed's API server, and a fleet of simulated agents on NodeInstalls.
//! Each test confines its operator to its own objects (`--selector`) and
//! keeps its lease and halt in its own namespace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use theseus::api::PackageRepository;
use theseus::api::conditions;
use theseus::pkg::PackageId;
use theseus::pkg::set::set_hash;

use crate::support::fleet::{RUN_LABEL, unavailable};
use crate::support::operator::{CONFIG, Rig, V1, V2, V3};
use crate::support::{self, eventually};

/// The hash of the set of `web` and demo-config.
fn hash(web: &str) -> String {
    set_hash(&[web.parse::<PackageId>().unwrap(), CONFIG.parse().unwrap()])
}

impl Rig {
    /// Applies the set of `web` with `budget` and waits with `kubectl wait`
    /// until it is Available, watching the nodes meanwhile; returns the most
    /// nodes seen unavailable at once.
    async fn roll_to_available(
        &self,
        nodes: &[String],
        web: &str,
        budget: i32,
        timeout_s: u32,
    ) -> usize {
        let (max, stop) = observe(nodes.to_vec(), self.client.clone());
        self.apply_set(&[web], budget).await;
        let timeout = format!("--timeout={timeout_s}s");
        let set = format!("packageset/{}", self.run);
        let out = self
            .tb
            .kubectl(&["wait", "--for=condition=Available", &timeout, &set]);
        stop.store(true, Ordering::Relaxed);
        assert!(
            out.status.success(),
            "kubectl wait: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        max.load(Ordering::Relaxed)
    }
}

/// Polls the fleet and records the most nodes ever unavailable at once.
/// Each poll is one LIST, a snapshot at one resourceVersion: reading the
/// nodes one by one would count a node that finished and the node started
/// after it as unavailable together.
fn observe(fleet_nodes: Vec<String>, client: Client) -> (Arc<AtomicUsize>, Arc<AtomicBool>) {
    let max = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (m, s) = (max.clone(), stop.clone());
    tokio::spawn(async move {
        let api: Api<theseus::api::NodeInstall> = Api::all(client);
        while !s.load(Ordering::Relaxed) {
            if let Ok(list) = api.list(&kube::api::ListParams::default()).await {
                let count = list
                    .items
                    .iter()
                    .filter(|n| {
                        n.metadata
                            .name
                            .as_ref()
                            .is_some_and(|name| fleet_nodes.contains(name))
                    })
                    .filter(|n| unavailable(n))
                    .count();
                m.fetch_max(count, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (max, stop)
}

fn targeted(nodes: &[theseus::api::NodeInstall], hash: &str) -> usize {
    nodes
        .iter()
        .filter(|n| n.spec.target.as_ref().is_some_and(|t| t.set_hash == hash))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_stay_within_the_budget_and_kubectl_wait_returns() {
    let Some(rig) = Rig::new("budget").await else {
        return;
    };
    let fleet = rig.fleet(6, Duration::from_millis(800)).await;
    let _operator = rig.operator("a");

    rig.apply_set(&[V1], 2).await;
    rig.wait_condition("Available", "True", Duration::from_secs(60))
        .await;
    assert!(
        fleet
            .nodes()
            .await
            .iter()
            .all(|n| n.status.as_ref().unwrap().active_hash.as_deref() == Some(hash(V1).as_str()))
    );

    let seen = rig.roll_to_available(&fleet.names, V2, 2, 90).await;
    let nodes = fleet.nodes().await;
    assert!(
        nodes
            .iter()
            .all(|n| n.status.as_ref().unwrap().active_hash.as_deref() == Some(hash(V2).as_str()))
    );
    assert!(
        seen <= 2,
        "saw {seen} nodes unavailable at once with maxUnavailable 2"
    );
    assert!(seen >= 1, "the observer never saw a node switching");
    let set = rig.sets().get(&rig.run).await.unwrap();
    let st = set.status.unwrap();
    assert_eq!(
        (st.desired_nodes, st.updated_nodes, st.ready_nodes),
        (6, 6, 6)
    );
    rig.clean_up(fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_version_halts_the_set_after_the_first_batch() {
    let Some(rig) = Rig::new("failing").await else {
        return;
    };
    let fleet = rig.fleet(6, Duration::from_millis(300)).await;
    let _operator = rig.operator("a");
    rig.apply_set(&[V2], 2).await;
    rig.wait_condition("Available", "True", Duration::from_secs(60))
        .await;

    fleet.failing.lock().unwrap().insert(hash(V3));
    rig.apply_set(&[V3], 2).await;
    let set = rig
        .wait_condition("Halted", "True", Duration::from_secs(60))
        .await;
    let st = set.status.unwrap();
    assert_eq!(
        conditions::find(&st.conditions, "Halted").unwrap().reason,
        "FailureThreshold"
    );
    assert!(conditions::is_true(&st.conditions, "Degraded"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let nodes = fleet.nodes().await;
    assert_eq!(
        targeted(&nodes, &hash(V3)),
        2,
        "only the first batch was touched"
    );
    let on_v2 = nodes
        .iter()
        .filter(|n| n.status.as_ref().unwrap().active_hash.as_deref() == Some(hash(V2).as_str()))
        .count();
    assert_eq!(on_v2, 6, "every node still runs v2");
    rig.clean_up(fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_survives_an_operator_restart_until_resumed() {
    let Some(rig) = Rig::new("halt").await else {
        return;
    };
    let fleet = rig.fleet(6, Duration::from_secs(2)).await;
    let mut operator = rig.operator("a");
    rig.apply_set(&[V1], 1).await;
    let fleet_api: Api<theseus::api::NodeInstall> = Api::all(rig.client.clone());
    let first = fleet.names[0].clone();
    eventually(
        Duration::from_secs(30),
        "the first node is targeted",
        || {
            let (api, first) = (fleet_api.clone(), first.clone());
            async move {
                let node = api.get(&first).await.map_err(|e| e.to_string())?;
                node.spec
                    .target
                    .map(drop)
                    .ok_or_else(|| "no target yet".to_owned())
            }
        },
    )
    .await;

    let (code, body) = operator
        .post(
            "/halt",
            json!({ "reason": "error budget spent", "by": "sla-monitor" }),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let set = rig
        .wait_condition("Halted", "True", Duration::from_secs(20))
        .await;
    let halted = conditions::find(&set.status.as_ref().unwrap().conditions, "Halted")
        .unwrap()
        .clone();
    assert!(halted.message.contains("error budget spent"), "{halted:?}");
    let before = targeted(&fleet.nodes().await, &hash(V1));

    operator.kill();
    operator.restart();
    tokio::time::sleep(Duration::from_secs(8)).await;
    rig.wait_condition("Halted", "True", Duration::from_secs(20))
        .await;
    assert_eq!(
        targeted(&fleet.nodes().await, &hash(V1)),
        before,
        "a node started while halted"
    );

    let (code, body) = operator.post("/resume", json!({})).await;
    assert_eq!(code, 200, "{body}");
    rig.wait_condition("Available", "True", Duration::from_secs(90))
        .await;
    rig.clean_up(fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_halt_endpoint_refuses_a_wrong_token() {
    let Some(rig) = Rig::new("token").await else {
        return;
    };
    let fleet = rig.fleet(1, Duration::from_millis(100)).await;
    let operator = rig.operator("a");
    let url = format!("{}/halt", operator.http);
    let response = eventually(Duration::from_secs(20), "the operator answers", || {
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .post(&url)
                .bearer_auth("wrong")
                .send()
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    assert_eq!(response.status().as_u16(), 401);
    rig.clean_up(fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_naming_an_unknown_package_is_invalid_and_touches_nothing() {
    let Some(rig) = Rig::new("invalid").await else {
        return;
    };
    let fleet = rig.fleet(2, Duration::from_millis(100)).await;
    let _operator = rig.operator("a");
    rig.apply_set(&["demo-web--9.9.9"], 1).await;
    let set = rig
        .wait_condition("Degraded", "True", Duration::from_secs(40))
        .await;
    let degraded = conditions::find(&set.status.as_ref().unwrap().conditions, "Degraded")
        .unwrap()
        .clone();
    assert_eq!(degraded.reason, "InvalidSpec");
    assert!(degraded.message.contains("demo-web--9.9.9"), "{degraded:?}");
    assert!(fleet.nodes().await.iter().all(|n| n.spec.target.is_none()));
    rig.clean_up(fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_acts_and_a_standby_takes_over_when_it_dies() {
    let Some(rig) = Rig::new("leader").await else {
        return;
    };
    let fleet = rig.fleet(4, Duration::from_millis(500)).await;
    let mut a = rig.operator("a");
    let lease_api: Api<Lease> = Api::namespaced(rig.client.clone(), &rig.ns.name);
    let holder = || {
        let api = lease_api.clone();
        async move {
            let lease = api
                .get("theseus-operator")
                .await
                .map_err(|e| e.to_string())?;
            lease
                .spec
                .and_then(|s| s.holder_identity)
                .ok_or_else(|| "no holder".to_owned())
        }
    };
    let first = eventually(Duration::from_secs(20), "a leader is elected", holder).await;
    assert_eq!(first, "a");
    let mut b = rig.operator("b");
    rig.apply_set(&[V1], 1).await;
    rig.wait_condition("Available", "True", Duration::from_secs(60))
        .await;
    assert_eq!(
        holder().await.unwrap(),
        "a",
        "the standby took the lease from a live leader"
    );

    a.kill();
    let killed = std::time::Instant::now();
    eventually(Duration::from_secs(15), "b takes over", || async {
        match holder().await {
            Ok(h) if h == "b" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(12),
        "takeover took {:?}",
        killed.elapsed()
    );
    rig.apply_set(&[V2], 1).await;
    rig.wait_condition("Available", "True", Duration::from_secs(60))
        .await;

    // A leader stopped with SIGTERM releases the lease on its way out.
    let _c = rig.operator("c");
    b.terminate();
    let after = holder().await;
    assert!(
        after.as_deref() != Ok("b"),
        "b still holds the lease after exiting: {after:?}"
    );
    eventually(Duration::from_secs(15), "c takes over", || async {
        match holder().await {
            Ok(h) if h == "c" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    rig.clean_up(fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_at_random_moments_keeps_the_budget_and_updates_each_node_once() {
    let Some(rig) = Rig::new("sigkill").await else {
        return;
    };
    let fleet = rig.fleet(6, Duration::from_millis(700)).await;
    let mut operator = rig.operator("a");
    let (max, stop) = observe(fleet.names.clone(), rig.client.clone());
    rig.apply_set(&[V1], 2).await;
    let mut kills = 0;
    while kills < 20 {
        let pause = Duration::from_millis(100 + u64::from(rand::random::<u16>() % 400));
        tokio::time::sleep(pause).await;
        operator.kill();
        operator.restart();
        kills += 1;
    }
    rig.wait_condition("Available", "True", Duration::from_secs(120))
        .await;
    stop.store(true, Ordering::Relaxed);
    let seen = max.load(Ordering::Relaxed);
    assert!(
        seen <= 2,
        "saw {seen} unavailable with maxUnavailable 2 across {kills} kills"
    );
    let log = fleet.log.lock().unwrap().activations.clone();
    let v1 = hash(V1);
    let per_node: BTreeMap<&String, usize> = log
        .iter()
        .filter(|((_, h), _)| *h == v1)
        .map(|((n, _), c)| (n, *c))
        .collect();
    assert_eq!(
        per_node.len(),
        6,
        "every node ends on the target: {per_node:?}"
    );
    assert!(
        per_node.values().all(|c| *c == 1),
        "a node was updated twice: {per_node:?}"
    );
    rig.clean_up(fleet).await;
}

/// Six real `theseus agent` processes, each with its own root and demo-web
/// port, rolled v1 → v2 → a v3 whose health check fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_real_agents_roll_v1_v2_and_roll_back_a_failing_v3() {
    use crate::support::agents::Agent;
    let Some(rig) = Rig::new("agents").await else {
        return;
    };
    let labels = format!("{RUN_LABEL}={}", rig.run);
    let agents: Vec<Agent> = (0..6)
        .map(|i| {
            let tag = format!("{}-{i}", &rig.run[13..]);
            Agent::start(&rig.tb, &tag, &labels, &rig.repo.trust_args())
        })
        .collect();
    let names: Vec<String> = agents.iter().map(|a| a.node.clone()).collect();
    let _operator = rig.operator("a");
    let api: Api<theseus::api::NodeInstall> = Api::all(rig.client.clone());

    rig.apply_set(&[V1], 2).await;
    rig.wait_condition("Available", "True", Duration::from_secs(120))
        .await;
    for agent in &agents {
        assert_eq!(
            agent.service_version().await.unwrap(),
            "1.0.0",
            "{}",
            agent.node
        );
    }

    let seen = rig.roll_to_available(&names, V2, 2, 120).await;
    assert!(seen <= 2, "saw {seen} unavailable");
    for agent in &agents {
        assert_eq!(
            agent.service_version().await.unwrap(),
            "2.0.0",
            "{}",
            agent.node
        );
    }

    // v3's service never answers /version: its health check fails.
    let set = json!({ "spec": { "strategy": { "healthTimeoutSeconds": 5 } } });
    rig.sets()
        .patch(&rig.run, &PatchParams::default(), &Patch::Merge(&set))
        .await
        .unwrap();
    rig.apply_set(&[V3], 2).await;
    let halted = rig
        .wait_condition("Halted", "True", Duration::from_secs(120))
        .await;
    assert!(conditions::is_true(
        &halted.status.unwrap().conditions,
        "Degraded"
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v3 = hash(V3);
    let mut touched = Vec::new();
    for agent in &agents {
        let node = api.get(&agent.node).await.unwrap();
        let status = node.status.clone().unwrap();
        if node.spec.target.as_ref().is_some_and(|t| t.set_hash == v3) {
            assert_eq!(
                status.failed_hash.as_deref(),
                Some(v3.as_str()),
                "{} did not roll back",
                agent.node
            );
            touched.push(agent.node.clone());
        }
        assert_eq!(
            status.active_hash,
            Some(hash(V2)),
            "{} is not back on v2",
            agent.node
        );
        assert_eq!(
            agent.service_version().await.unwrap(),
            "2.0.0",
            "{} does not answer",
            agent.node
        );
    }
    assert_eq!(
        touched.len(),
        2,
        "only the first batch tried v3: {touched:?}"
    );
    // Stopped first: a running agent would register its NodeInstall again.
    drop(agents);
    for name in &names {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    let _ = rig.sets().delete(&rig.run, &DeleteParams::default()).await;
    let _ = Api::<PackageRepository>::all(rig.client.clone())
        .delete(&rig.run, &DeleteParams::default())
        .await;
    rig.ns.delete(&rig.client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_commands_follow_halt_and_resume_and_metrics_count_the_work() {
    let Some(rig) = Rig::new("cli").await else {
        return;
    };
    let fleet = rig.fleet(3, Duration::from_millis(400)).await;
    let operator = rig.operator("a");
    let cli = |args: &[&str]| {
        let out = rig
            .tb
            .command(support::theseus())
            .arg("rollout")
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };

    rig.apply_set(&[V1], 1).await;
    let (code, text) = cli(&["status", &rig.run, "--timeout", "90"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("3/3 updated") && text.contains("is available"),
        "{text}"
    );

    let (code, text) = cli(&[
        "halt",
        "--reason",
        "maintenance window",
        "--namespace",
        &rig.ns.name,
    ]);
    assert_eq!(code, Some(0), "{text}");
    rig.apply_set(&[V2], 1).await;
    let halted = rig
        .wait_condition("Halted", "True", Duration::from_secs(30))
        .await;
    let message = conditions::find(&halted.status.unwrap().conditions, "Halted")
        .unwrap()
        .message
        .clone();
    assert!(message.contains("maintenance window"), "{message}");
    let (code, text) = cli(&["status", &rig.run, "--timeout", "30"]);
    assert_eq!(code, Some(1), "a halted set exits 1: {text}");
    assert!(text.contains("Halted"), "{text}");

    let (code, text) = cli(&["resume", "--namespace", &rig.ns.name]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = cli(&["status", &rig.run, "--timeout", "90"]);
    assert_eq!(code, Some(0), "{text}");

    let metrics = reqwest::get(format!("{}/metrics", operator.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        r#"theseus_reconciles_total{controller="packageset"}"#,
        r#"theseus_nodes{phase="Active"}"#,
        "theseus_rollout_duration_seconds_count",
    ] {
        assert!(
            metrics.contains(expected),
            "/metrics lacks {expected}:\n{metrics}"
        );
    }
    rig.clean_up(fleet).await;
}
