//! The verbs that follow a cluster: `status` (its conditions and its
//! plan's progress, until it gets where its spec says) and `delete`
//! (until it is gone).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use kube::api::DeleteParams;
use kube::{Client, ResourceExt};

use super::{ClusterRef, bar, plan_of};
use crate::api::conditions::{self, types};
use crate::api::{Cluster, ClusterPlan, Operation, PlanPhase};
use crate::cluster::drive::hash_of;

#[derive(Args, Debug)]
pub(super) struct StatusArgs {
    #[command(flatten)]
    cluster: ClusterRef,
    /// Poll every second until the cluster runs its current spec (exit 0),
    /// its plan failed (1) or the timeout passed (2).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds (0: never).
    #[arg(long, default_value_t = 0, value_name = "SECONDS", requires = "wait")]
    timeout: u64,
}

#[derive(Args, Debug)]
pub(super) struct DeleteArgs {
    #[command(flatten)]
    cluster: ClusterRef,
    /// Wait until the Cluster is gone, printing its plan's progress.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds (0: never).
    #[arg(long, default_value_t = 0, value_name = "SECONDS", requires = "wait")]
    timeout: u64,
}

/// The conditions `status` prints, in this order.
const SHOWN: [&str; 5] = [
    types::AVAILABLE,
    types::PROGRESSING,
    types::DEGRADED,
    types::HALTED,
    types::LAYOUT_SOLVED,
];

/// How often `--wait` looks.
const POLL: Duration = Duration::from_secs(1);

/// Where a cluster stands, for `status --wait`.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Its plan succeeded and it runs the layout and configuration of its
    /// current spec.
    Done,
    /// It will not get there without a person: why.
    Failed(String),
    /// Still on its way (or the operator has not caught up).
    Waiting,
}

/// Reads the verdict from a cluster's status and its plan. Pure.
///
/// Trusts the plan only once the operator's plan step has reported on the
/// current generation (the Degraded condition carries it): until then the
/// plan named may be the one before the change.
fn verdict(cluster: &Cluster, plan: Option<&ClusterPlan>) -> Verdict {
    let st = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let seen =
        |t| conditions::find(&st.conditions, t).filter(|c| c.observed_generation == generation);
    if st.observed_generation != generation {
        return Verdict::Waiting;
    }
    match seen(types::LAYOUT_SOLVED) {
        Some(c) if c.status == "False" => {
            return Verdict::Failed(format!("no layout ({}): {}", c.reason, c.message));
        }
        Some(_) => {}
        None => return Verdict::Waiting,
    }
    let (Some(degraded), Some(plan)) = (seen(types::DEGRADED), plan) else {
        return Verdict::Waiting;
    };
    if degraded.status == "True" && degraded.reason == "NoPlan" {
        return Verdict::Failed(format!("no plan: {}", degraded.message));
    }
    let ps = plan.status.clone().unwrap_or_default();
    match ps.phase {
        PlanPhase::Failed | PlanPhase::RolledBack => Verdict::Failed(format!(
            "plan {} {:?}: {}",
            plan.name_any(),
            ps.phase,
            ps.message.unwrap_or_default()
        )),
        PlanPhase::Succeeded
            if conditions::is_true(&st.conditions, types::AVAILABLE)
                && st.applied_hash == Some(hash_of(&st.layout, &cluster.spec.config)) =>
        {
            Verdict::Done
        }
        _ => Verdict::Waiting,
    }
}

/// Tasks done of all in the list running: the plan's tasks, or its
/// inverse once it rolls back (then labelled so).
fn progress(plan: &ClusterPlan) -> (&'static str, usize, usize) {
    let st = plan.status.clone().unwrap_or_default();
    let back = matches!(st.phase, PlanPhase::RollingBack | PlanPhase::RolledBack);
    let (tasks, states, label) = if back {
        (&plan.spec.inverse, &st.rollback, "rollback ")
    } else {
        (&plan.spec.tasks, &st.tasks, "")
    };
    let done = tasks
        .iter()
        .filter(|t| states.iter().any(|s| s.id == t.id && s.state.is_done()))
        .count();
    (label, done, tasks.len())
}

/// A plan's line: its operation, a bar of its progress and its phase;
/// then, once it fails or rolls back, its message, and while it awaits
/// approval, how to approve it.
fn plan_line(c: &ClusterRef, plan: &ClusterPlan) -> String {
    let phase = plan.status.as_ref().map(|s| s.phase).unwrap_or_default();
    let (label, done, total) = progress(plan);
    let mut s = format!(
        "plan {} ({}) {} {label}{done}/{total} {phase:?}\n",
        plan.name_any(),
        plan.spec.operation.name(),
        bar(done, total, 30),
    );
    let message = plan.status.as_ref().and_then(|s| s.message.clone());
    match (phase, message) {
        (PlanPhase::Failed | PlanPhase::RollingBack | PlanPhase::RolledBack, Some(m)) => {
            s += &format!("  {m}\n");
        }
        (PlanPhase::AwaitingApproval, _) => {
            s += &format!("  approve it with `theseus cluster approve {}`\n", c.args());
        }
        _ => {}
    }
    s
}

/// The text of `status`: the cluster, its conditions one per line, and
/// its plan's line.
fn status_text(c: &ClusterRef, cluster: &Cluster, plan: Option<&ClusterPlan>) -> String {
    let st = cluster.status.clone().unwrap_or_default();
    let mut s = format!(
        "{} of template {}, size {}\n",
        c.object(),
        cluster.spec.template,
        cluster.spec.size
    );
    if cluster.spec.paused {
        s += "paused: no layout is solved and no task starts until spec.paused is false\n";
    }
    if cluster.metadata.deletion_timestamp.is_some() {
        s += "being deleted: the delete plan runs, then the Cluster goes\n";
    }
    if st.observed_generation != cluster.metadata.generation {
        s += &format!(
            "the status describes generation {}; the spec is at {} (the operator has not caught up)\n",
            st.observed_generation.unwrap_or_default(),
            cluster.metadata.generation.unwrap_or_default()
        );
    }
    for t in SHOWN {
        s += &match conditions::find(&st.conditions, t) {
            Some(c) => format!("{t}={} {}: {}\n", c.status, c.reason, c.message),
            None => format!("{t}: not reported yet\n"),
        };
    }
    s += &match (&st.plan, plan) {
        (_, Some(p)) => plan_line(c, p),
        (Some(name), None) => format!("plan {name}: not found (deleted?)\n"),
        (None, None) => "no plan yet\n".to_owned(),
    };
    s
}

/// Prints the lines of `text` that `shown` lacks; returns `text`.
fn print_new(shown: &str, text: String) -> String {
    for line in text.lines().filter(|l| !shown.lines().any(|s| s == *l)) {
        println!("{line}");
    }
    text
}

fn expired(started: Instant, timeout: u64) -> bool {
    timeout > 0 && started.elapsed() >= Duration::from_secs(timeout)
}

/// `theseus cluster status [--wait]`.
pub(super) async fn status(client: Client, a: StatusArgs) -> anyhow::Result<ExitCode> {
    let c = &a.cluster;
    let (started, mut shown) = (Instant::now(), String::new());
    loop {
        let cluster = c
            .api(client.clone())
            .get(&c.name)
            .await
            .map_err(c.err("read"))?;
        let plan = plan_of(&client, &cluster).await?;
        shown = print_new(&shown, status_text(c, &cluster, plan.as_ref()));
        if !a.wait {
            return Ok(ExitCode::SUCCESS);
        }
        match verdict(&cluster, plan.as_ref()) {
            Verdict::Done => {
                println!("{} runs its spec", c.object());
                return Ok(ExitCode::SUCCESS);
            }
            Verdict::Failed(why) => {
                println!("{}: {why}", c.object());
                return Ok(ExitCode::from(1));
            }
            Verdict::Waiting => {}
        }
        if expired(started, a.timeout) {
            println!(
                "timed out after {}s; {} is still on its way",
                a.timeout,
                c.object()
            );
            return Ok(ExitCode::from(2));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// While a cluster is deleted: its plan's line, or that the delete plan
/// is still to be made.
fn deleting_text(c: &ClusterRef, plan: Option<&ClusterPlan>) -> String {
    match plan {
        Some(p) if p.spec.operation == Operation::Delete => plan_line(c, p),
        Some(p) => {
            plan_line(c, p)
                + "waiting for the delete plan (the operator makes it once this plan stops)\n"
        }
        None => "waiting for the delete plan (is the operator running?)\n".to_owned(),
    }
}

/// Why a delete will not finish: its plan failed.
fn delete_failed(c: &ClusterRef, plan: Option<&ClusterPlan>) -> Option<String> {
    let plan = plan.filter(|p| p.spec.operation == Operation::Delete)?;
    let st = plan.status.clone().unwrap_or_default();
    matches!(st.phase, PlanPhase::Failed | PlanPhase::RolledBack).then(|| {
        format!(
            "the delete plan {0} of {1} is {2:?}: {3}; fix the cause, then delete the plan to try again: kubectl delete clusterplan {0} -n {4}",
            plan.name_any(),
            c.object(),
            st.phase,
            st.message.unwrap_or_default(),
            c.namespace
        )
    })
}

/// `theseus cluster delete [--wait]`.
pub(super) async fn delete(client: Client, a: DeleteArgs) -> anyhow::Result<ExitCode> {
    let c = &a.cluster;
    let api = c.api(client.clone());
    api.delete(&c.name, &DeleteParams::default())
        .await
        .map_err(c.err("delete"))?;
    println!(
        "{} deleted: its delete plan runs before it is gone",
        c.object()
    );
    if !a.wait {
        println!("follow it with:\n  theseus cluster status {}", c.args());
        println!(
            "  kubectl wait --for=delete cluster/{} -n {}",
            c.name, c.namespace
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (started, mut shown) = (Instant::now(), String::new());
    loop {
        let Some(cluster) = api.get_opt(&c.name).await.map_err(c.err("read"))? else {
            println!("{} is gone", c.object());
            return Ok(ExitCode::SUCCESS);
        };
        let plan = plan_of(&client, &cluster).await?;
        shown = print_new(&shown, deleting_text(c, plan.as_ref()));
        if let Some(why) = delete_failed(c, plan.as_ref()) {
            println!("{why}");
            return Ok(ExitCode::from(1));
        }
        if expired(started, a.timeout) {
            println!(
                "timed out after {}s; {} is still there",
                a.timeout,
                c.object()
            );
            return Ok(ExitCode::from(2));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn data_x() -> ClusterRef {
        ClusterRef {
            name: "x".into(),
            namespace: "data".into(),
        }
    }

    fn condition(t: &str, status: &str, reason: &str, generation: i64) -> Value {
        json!({ "type": t, "status": status, "reason": reason, "message": format!("{t} says"),
                "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z" })
    }

    fn layout() -> Value {
        json!([{ "name": "x-0", "nodeClass": "c", "services": ["db"] }])
    }

    /// A cluster at generation 2 whose status describes `observed`, with
    /// the layout above applied (with no configuration) when `applied`.
    fn cluster(observed: i64, conditions: Value, applied: bool) -> Cluster {
        let nodes: Vec<crate::api::LayoutNode> = serde_json::from_value(layout()).unwrap();
        let hash = applied.then(|| hash_of(&nodes, &Default::default()));
        serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "Cluster",
            "metadata": { "name": "x", "namespace": "data", "generation": 2 },
            "spec": { "template": "t", "size": 1 },
            "status": { "observedGeneration": observed, "layout": layout(), "appliedHash": hash,
                        "plan": "x-1", "conditions": conditions }
        }))
        .unwrap()
    }

    fn plan(operation: &str, phase: &str, message: Option<&str>) -> ClusterPlan {
        serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "ClusterPlan",
            "metadata": { "name": "x-1", "namespace": "data" },
            "spec": {
                "cluster": "x", "operation": { "type": operation },
                "tasks": [
                    { "id": "x-0/createNode", "node": "x-0", "action": "createNode" },
                    { "id": "x-0/db/start", "node": "x-0", "service": "db", "action": "start" }
                ],
                "inverse": [{ "id": "x-0/deleteNode", "node": "x-0", "action": "deleteNode" }]
            },
            "status": { "phase": phase, "message": message, "tasks": [
                { "id": "x-0/createNode", "state": "Succeeded", "attempts": 1 },
                { "id": "x-0/db/start", "state": "Failed", "attempts": 3 }
            ] }
        }))
        .unwrap()
    }

    fn ready(generation: i64) -> Value {
        json!([
            condition("Available", "True", "LayoutRunning", generation),
            condition("Progressing", "False", "Complete", generation),
            condition("Degraded", "False", "AsPlanned", generation),
            condition("Halted", "False", "NotHalted", generation),
            condition("LayoutSolved", "True", "Solved", generation)
        ])
    }

    #[test]
    fn the_status_prints_each_condition_in_order_and_the_plan_bar() {
        let x = cluster(
            2,
            json!([condition("LayoutSolved", "True", "Solved", 2)]),
            false,
        );
        let text = status_text(&data_x(), &x, Some(&plan("create", "Running", None)));
        assert_eq!(
            text,
            format!(
                "Cluster data/x of template t, size 1\n\
                 Available: not reported yet\nProgressing: not reported yet\n\
                 Degraded: not reported yet\nHalted: not reported yet\n\
                 LayoutSolved=True Solved: LayoutSolved says\n\
                 plan x-1 (create) [{}{}] 1/2 Running\n",
                "#".repeat(15),
                "-".repeat(15)
            )
        );
        let stale = status_text(&data_x(), &cluster(1, json!([]), false), None);
        assert!(stale.contains("generation 1; the spec is at 2"), "{stale}");
        assert!(
            stale.ends_with("plan x-1: not found (deleted?)\n"),
            "{stale}"
        );
    }

    #[test]
    fn a_plan_line_shows_the_rollback_and_the_message_once_it_fails() {
        let back = plan_line(
            &data_x(),
            &plan("scale", "RollingBack", Some("task failed")),
        );
        assert!(back.starts_with("plan x-1 (scale) [---"), "{back}");
        assert!(
            back.contains("rollback 0/1 RollingBack\n  task failed\n"),
            "{back}"
        );
        let waiting = plan_line(&data_x(), &plan("scale", "AwaitingApproval", None));
        assert!(
            waiting.contains("theseus cluster approve x -n data"),
            "{waiting}"
        );
        let running = plan_line(&data_x(), &plan("scale", "Running", Some("old")));
        assert!(!running.contains("old"), "{running}");
    }

    #[test]
    fn the_verdict_waits_for_the_current_generation_and_the_applied_spec() {
        let done = plan("create", "Succeeded", None);
        assert_eq!(
            verdict(&cluster(2, ready(2), true), Some(&done)),
            Verdict::Done
        );
        // The plan step has not reported on generation 2: the plan may be
        // the one before the change.
        let failed = plan("scale", "Failed", Some("boom"));
        assert_eq!(
            verdict(&cluster(2, ready(1), true), Some(&failed)),
            Verdict::Waiting
        );
        assert_eq!(
            verdict(&cluster(1, ready(2), true), Some(&done)),
            Verdict::Waiting
        );
        // Succeeded, but the nodes do not run the current layout yet.
        assert_eq!(
            verdict(&cluster(2, ready(2), false), Some(&done)),
            Verdict::Waiting
        );
        assert_eq!(
            verdict(&cluster(2, ready(2), true), Some(&failed)),
            Verdict::Failed("plan x-1 Failed: boom".into())
        );
        let unsolvable = json!([condition("LayoutSolved", "False", "Unsatisfiable", 2)]);
        assert_eq!(
            verdict(&cluster(2, unsolvable, true), Some(&done)),
            Verdict::Failed("no layout (Unsatisfiable): LayoutSolved says".into())
        );
    }

    #[test]
    fn a_delete_waits_for_its_plan_and_stops_when_the_delete_plan_failed() {
        let c = data_x();
        let create = plan("create", "RollingBack", None);
        assert!(deleting_text(&c, Some(&create)).contains("waiting for the delete plan"));
        assert!(deleting_text(&c, None).contains("is the operator running?"));
        assert_eq!(delete_failed(&c, Some(&create)), None);
        let failed = plan("delete", "Failed", Some("boom"));
        let why = delete_failed(&c, Some(&failed)).unwrap();
        assert!(why.contains("is Failed: boom"), "{why}");
        assert!(
            why.contains("kubectl delete clusterplan x-1 -n data"),
            "{why}"
        );
        assert_eq!(
            delete_failed(&c, Some(&plan("delete", "Running", None))),
            None
        );
    }
}
