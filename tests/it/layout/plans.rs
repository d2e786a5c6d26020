//! Cluster plans end to end, on the shop of [`crate::support::shop`]: a
//! Cluster applied with kubectl or the CLI, a real operator, real agents.
//!
//! Shown here: a create (nodes, packages, hooks in dependency order,
//! Available), a scale up and down that moves no service that need not
//! move, an amend and a reconfigure that run only the tasks they need, a
//! delete that stops and removes everything; a failing hook retried and
//! rolled back (or, with `onFailure: Halt`, stopped); halt, pause and
//! manual approval holding a plan; and the operator killed at random
//! moments while plans run.

use std::collections::BTreeSet;
use std::time::Duration;

use kube::ResourceExt;
use serde_json::json;
use theseus::api::{PlanPhase, conditions};

use crate::support::shop::*;
use crate::support::{eventually, theseus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_created_scaled_amended_reconfigured_and_deleted_by_plans() {
    let Some(shop) = Shop::start("plans").await else {
        return;
    };
    shop.apply("");

    // Created: nodes launch, packages switch, hooks run in dependency
    // order, and kubectl wait sees Available.
    shop.wait("Available", "240s");
    let lines = shop.lines();
    let seen = counted(&lines);
    assert!(
        seen.values().all(|n| *n == 1),
        "a hook ran twice: {lines:?}"
    );
    assert_eq!(
        seen.len(),
        3 * 4,
        "install, configure, initialize, start per service: {lines:?}"
    );
    assert!(
        position(&lines, "-store", "install") < position(&lines, "-api", "install"),
        "{lines:?}"
    );
    assert!(
        position(&lines, "-store", "start") < position(&lines, "-api", "start"),
        "{lines:?}"
    );
    assert!(
        position(&lines, "-cache", "start") < position(&lines, "-api", "start"),
        "{lines:?}"
    );
    for service in ["-store", "-api", "-cache"] {
        let order: Vec<&str> = lines
            .iter()
            .filter(|(_, s, _, _)| s.ends_with(service))
            .map(|(_, _, a, _)| a.as_str())
            .collect();
        assert_eq!(
            order,
            ["install", "configure", "initialize", "start"],
            "{service}"
        );
    }
    let create_name = shop.plan_name().await.unwrap();
    let create = shop.plan(&create_name).await;
    assert_eq!(create.spec.operation.name(), "create");
    assert_succeeded(&create);
    assert_ran_once(&create);
    assert_eq!(shop.installs().await.len(), 3, "one NodeInstall per node");
    // The api's install waits for the store's: its node may have been told
    // its packages ahead (if it was up before the store's install ended);
    // no fetch ahead failed, and the target that followed cleared it.
    let logs = shop.agent_logs();
    assert!(!logs.contains("cannot fetch set"), "{logs}");
    for ni in shop.installs().await {
        assert_eq!(ni.spec.next, None, "{}", ni.metadata.name.unwrap());
    }
    shop.assert_no_node_leaked().await;

    // Scale to 5 and back to 3: the nodes that stay keep their services
    // and run no hook.
    let three = shop.layout().await;
    let mark = shop.lines().len();
    shop.cli(&["scale", "shop", "5"]);
    let up = shop
        .ended_plan(Some(&create_name), Duration::from_secs(240))
        .await;
    assert_succeeded(&up);
    assert_eq!(up.spec.operation.name(), "scale");
    assert_ran_once(&up);
    let five = shop.layout().await;
    assert_eq!(
        five.len(),
        5,
        "{five:?} from {:?}; the cluster: {:?}",
        up.spec.to,
        shop.cluster().await.status
    );
    for (node, services) in &three {
        assert_eq!(five.get(node), Some(services), "{node} moved: {five:?}");
    }
    let ran = shop.lines()[mark..].to_vec();
    assert!(
        nodes_of(&ran).iter().all(|n| !three.contains_key(n)),
        "a node that stays ran a hook while scaling up: {ran:?}"
    );
    shop.assert_no_node_leaked().await;

    let mark = shop.lines().len();
    shop.cli(&["scale", "shop", "3"]);
    let down = shop
        .ended_plan(Some(&up.name_any()), Duration::from_secs(240))
        .await;
    assert_succeeded(&down);
    assert_ran_once(&down);
    assert_eq!(shop.layout().await, three, "back to the first layout");
    let ran = shop.lines()[mark..].to_vec();
    assert!(
        nodes_of(&ran).iter().all(|n| !three.contains_key(n)),
        "a node that stays ran a hook while scaling down: {ran:?}"
    );
    assert!(
        ran.iter().all(|(_, _, a, _)| a == "stop" || a == "remove"),
        "{ran:?}"
    );
    shop.assert_no_node_leaked().await;

    // Amend: only the new service's tasks run.
    let web = shop.service("web");
    let mark = shop.lines().len();
    shop.cli(&["add-services", "shop", &web]);
    let amend = shop
        .ended_plan(Some(&down.name_any()), Duration::from_secs(240))
        .await;
    assert_succeeded(&amend);
    assert_eq!(amend.spec.operation.name(), "addServices");
    let ran = shop.lines()[mark..].to_vec();
    assert_eq!(services_of(&ran), BTreeSet::from([web.clone()]), "{ran:?}");
    let actions: Vec<&str> = ran.iter().map(|(_, _, a, _)| a.as_str()).collect();
    assert_eq!(actions, ["install", "configure", "initialize", "start"]);

    // Reconfigure the cache: it and the API that uses it restart, in
    // order; the store and the web service do not.
    let mark = shop.lines().len();
    let cache = shop.service("cache");
    shop.cli(&["set", "shop", &format!("{cache}.size=2")]);
    let reconf = shop
        .ended_plan(Some(&amend.name_any()), Duration::from_secs(240))
        .await;
    assert_succeeded(&reconf);
    assert_eq!(reconf.spec.operation.name(), "reconfigure");
    let ran = shop.lines()[mark..].to_vec();
    assert_eq!(
        services_of(&ran),
        BTreeSet::from([cache.clone(), shop.service("api")]),
        "{ran:?}"
    );
    assert!(
        position(&ran, "-api", "stop") < position(&ran, "-cache", "stop"),
        "the API stops before the cache it uses: {ran:?}"
    );
    assert!(
        position(&ran, "-cache", "start") < position(&ran, "-api", "start"),
        "{ran:?}"
    );
    assert!(
        ran.iter()
            .any(|(_, s, a, _)| *s == cache && a == "configure"),
        "{ran:?}"
    );
    shop.wait("Available", "10s");
    shop.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_start_hook_is_retried_then_rolled_back_or_with_halt_stops() {
    let Some(shop) = Shop::start("planfail").await else {
        return;
    };
    shop.apply("");
    shop.wait("Available", "240s");
    let create = shop.plan_name().await.unwrap();
    let before = shop.layout().await;

    // The cache's start fails on every attempt: two attempts
    // (taskRetries 1), then the inverse plan puts the old configuration
    // back and starts what was stopped.
    let cache = shop.service("cache");
    let mark = shop.lines().len();
    shop.cli(&["set", "shop", &format!("fail={cache} start")]);
    let failed = shop
        .ended_plan(Some(&create), Duration::from_secs(300))
        .await;
    let st = failed.status.clone().unwrap();
    assert_eq!(st.phase, PlanPhase::RolledBack, "{st:?}");
    let ran = shop.lines()[mark..].to_vec();
    let attempts: Vec<&str> = ran
        .iter()
        .filter(|(_, s, a, _)| *s == cache && a == "start")
        .map(|(_, _, _, n)| n.as_str())
        .collect();
    assert_eq!(
        &attempts[..2],
        ["1", "2"],
        "retried once, then rolled back (whose start succeeds): {ran:?}"
    );
    for service in ["store", "api", "cache"] {
        let last = ran
            .iter()
            .rev()
            .find(|(_, s, _, _)| *s == shop.service(service))
            .unwrap();
        assert_eq!(last.2, "start", "{service} runs again: {ran:?}");
    }
    let shop_now = shop.cluster().await;
    let cst = shop_now.status.clone().unwrap();
    let degraded = conditions::find(&cst.conditions, "Degraded").unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "RolledBack")
    );
    assert!(
        degraded.message.contains(&format!("{cache}/start")),
        "names the task: {degraded:?}"
    );
    assert!(!cst.applied_config.contains_key("fail"), "{cst:?}");
    assert_eq!(shop.layout().await, before, "the old layout");
    shop.wait("Available", "10s");
    let out = shop
        .tb
        .command(theseus())
        .args(["cluster", "status", "shop", "-n", &shop.ns.name])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("RolledBack"), "{printed}");

    // With onFailure: Halt, the same change (its plan deleted to try
    // again) stops at the failure: nothing is undone.
    shop.patch_spec(r#"{"strategy":{"taskRetries":1,"onFailure":"Halt"}}"#);
    shop.tb.kubectl_ok(&[
        "delete",
        "-n",
        &shop.ns.name,
        &format!("clusterplan/{}", failed.name_any()),
    ]);
    let mark = shop.lines().len();
    let halted = shop
        .ended_plan(Some(&failed.name_any()), Duration::from_secs(300))
        .await;
    let st = halted.status.clone().unwrap();
    assert_eq!(st.phase, PlanPhase::Failed, "{st:?}");
    assert!(st.rollback.is_empty(), "nothing undone: {:?}", st.rollback);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ran = shop.lines()[mark..].to_vec();
    let last = ran.last().unwrap();
    assert_eq!(
        (last.1.as_str(), last.2.as_str(), last.3.as_str()),
        (cache.as_str(), "start", "2"),
        "no hook after the failure: {ran:?}"
    );
    let cst = shop.cluster().await.status.unwrap();
    let degraded = conditions::find(&cst.conditions, "Degraded").unwrap();
    assert_eq!(degraded.reason, "PlanFailed", "{degraded:?}");
    assert!(degraded.message.contains(&format!("{cache}/start")));

    // `theseus cluster rollback` puts the spec back as the plan found it
    // (the recorded size, services and configuration): the stopped plan
    // turns back by its inverse (no new plan), and every service runs
    // again.
    let mark = shop.lines().len();
    let said = shop.cli(&["rollback", "shop"]);
    assert!(said.contains("spec put back as ClusterPlan"), "{said}");
    let spec = shop.cluster().await.spec;
    assert!(!spec.config.contains_key("fail"), "{:?}", spec.config);
    let reverted = eventually(
        Duration::from_secs(180),
        "the stopped plan rolled back",
        || {
            let shop = &shop;
            let name = halted.name_any();
            async move {
                let plan = shop.plan(&name).await;
                match plan.status.as_ref().map(|s| s.phase) {
                    Some(PlanPhase::RolledBack) => Ok(plan),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    assert_eq!(
        shop.plan_name().await.as_deref(),
        Some(reverted.name_any().as_str()),
        "no new plan"
    );
    let ran = shop.lines()[mark..].to_vec();
    for service in ["store", "api", "cache"] {
        let last = ran
            .iter()
            .rev()
            .find(|(_, s, _, _)| *s == shop.service(service))
            .unwrap_or_else(|| panic!("{service} ran no hook: {ran:?}"));
        assert_eq!(last.2, "start", "{service} runs again: {ran:?}");
    }
    shop.wait("Available", "60s");
    let cst = shop.cluster().await.status.unwrap();
    assert!(!cst.applied_config.contains_key("fail"), "{cst:?}");
    assert_eq!(shop.layout().await, before, "the old layout");
    shop.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_pause_and_manual_approval_each_hold_a_plan_until_released() {
    let Some(shop) = Shop::start("planhold").await else {
        return;
    };
    // Manual approval: the create waits; no pool, no hook.
    shop.apply("  planApproval: Manual\n");
    let waiting = eventually(Duration::from_secs(60), "a plan awaiting approval", || {
        let shop = &shop;
        async move {
            let name = shop.plan_name().await.ok_or("no plan yet")?;
            let plan = shop.plan(&name).await;
            match plan.status.as_ref().map(|s| s.phase) {
                Some(PlanPhase::AwaitingApproval) => Ok(name),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let replicas: i32 = shop.pools().await.iter().map(|p| p.spec.replicas).sum();
    assert_eq!(replicas, 0, "no node before approval");
    assert!(shop.installs().await.is_empty());
    assert!(shop.lines().is_empty());
    shop.cli(&["approve", "shop"]);
    shop.wait("Available", "240s");
    assert_eq!(shop.plan_name().await.as_deref(), Some(waiting.as_str()));
    shop.patch_spec(r#"{"planApproval":"Automatic"}"#);

    // Halt: the next plan starts no task until resumed.
    let (code, body) = shop
        .operator
        .post("/halt", json!({ "reason": "maintenance", "by": "test" }))
        .await;
    assert_eq!(code, 200, "{body}");
    shop.wait("Halted", "30s");
    let mark = shop.lines().len();
    shop.cli(&["set", "shop", "mode=halted"]);
    held(&shop, &waiting, mark).await;
    let (code, body) = shop.operator.post("/resume", json!({})).await;
    assert_eq!(code, 200, "{body}");
    let resumed = shop
        .ended_plan(Some(&waiting), Duration::from_secs(240))
        .await;
    assert_succeeded(&resumed);

    // Pause: the same.
    shop.patch_spec(r#"{"paused":true}"#);
    let mark = shop.lines().len();
    shop.cli(&["set", "shop", "mode=paused"]);
    held(&shop, &resumed.name_any(), mark).await;
    shop.patch_spec(r#"{"paused":false}"#);
    let unpaused = shop
        .ended_plan(Some(&resumed.name_any()), Duration::from_secs(240))
        .await;
    assert_eq!(unpaused.status.unwrap().phase, PlanPhase::Succeeded);
    let cst = shop.cluster().await.status.unwrap();
    assert_eq!(
        cst.applied_config.get("mode").map(String::as_str),
        Some("paused")
    );
    shop.delete().await;
}

/// A new plan after `previous` exists and, for a while, starts no task
/// and runs no hook.
async fn held(shop: &Shop, previous: &str, mark: usize) {
    let name = eventually(Duration::from_secs(60), "the next plan", || async move {
        match shop.plan_name().await {
            Some(name) if name != previous => Ok(name),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let plan = shop.plan(&name).await;
    let st = plan.status.unwrap_or_default();
    assert!(
        st.tasks.iter().all(|t| t.attempts == 0),
        "a task started while held: {:?}",
        st.tasks
    );
    assert_eq!(shop.lines().len(), mark, "a hook ran while held");
}

/// A small deterministic generator for the kill moments (the seed is
/// printed so a failing run can be repeated with THESEUS_KILL_SEED).
struct Moments(u64);

impl Moments {
    fn next_ms(&mut self, low: u64, high: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        low + (self.0 >> 33) % (high - low)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_at_random_moments_finishes_every_plan_with_no_task_twice() {
    let Some(mut shop) = Shop::start("plankill").await else {
        return;
    };
    let wanted: usize = std::env::var("THESEUS_PLAN_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed = std::env::var("THESEUS_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("kill moments: THESEUS_KILL_SEED={seed}");
    let mut moments = Moments(seed);
    let mut kills = 0;
    let mut previous: Option<String> = None;
    // A create, then scales up and down until enough kills happened.
    let cycle = [5, 3, 4, 3];
    for i in 0..120 {
        if i > 0 && kills >= wanted {
            break;
        }
        let size = if i == 0 {
            &3
        } else {
            &cycle[(i - 1) % cycle.len()]
        };
        let mark = shop.lines().len();
        eprintln!("to size {size} ({kills} kills so far)");
        if i == 0 {
            shop.apply("");
        } else {
            shop.cli(&["scale", "shop", &size.to_string()]);
        }
        // Kill and restart the operator at random moments until the
        // plan for this size has ended.
        loop {
            tokio::time::sleep(Duration::from_millis(moments.next_ms(50, 1200))).await;
            let ended = match shop.plan_name().await {
                Some(name) if Some(&name) != previous.as_ref() => {
                    let phase = shop.plan(&name).await.status.map(|s| s.phase);
                    matches!(
                        phase,
                        Some(PlanPhase::Succeeded | PlanPhase::Failed | PlanPhase::RolledBack)
                    )
                }
                _ => false,
            };
            if ended {
                break;
            }
            shop.operator.kill();
            kills += 1;
            shop.operator.restart();
        }
        let plan = shop
            .ended_plan(previous.as_deref(), Duration::from_secs(300))
            .await;
        assert_succeeded(&plan);
        assert_ran_once(&plan);
        let ran = shop.lines()[mark..].to_vec();
        let twice: Vec<_> = counted(&ran).into_iter().filter(|(_, n)| *n > 1).collect();
        assert!(twice.is_empty(), "hooks ran twice: {twice:?}");
        assert_eq!(shop.layout().await.len(), *size as usize);
        shop.assert_no_node_leaked().await;
        previous = Some(plan.name_any());
    }
    eprintln!("the operator was killed {kills} times");
    assert!(kills >= wanted, "{kills} kills");
    shop.delete().await;
}
