//! `theseus cluster layout` and `theseus cluster plan`: a Cluster's solved
//! layout, as the operator recorded it, and a ClusterPlan's tasks.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use kube::api::Api;
use kube::{Client, ResourceExt};

use super::{ClusterRef, explain};
use crate::api::conditions::{self, types};
use crate::api::{Cluster, ClusterPlan, TaskState};

#[derive(Args, Debug)]
pub(super) struct PlanArgs {
    /// The ClusterPlan.
    name: String,
    /// Its namespace.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
}

#[derive(Args, Debug)]
pub(super) struct LayoutArgs {
    #[command(flatten)]
    cluster: ClusterRef,
    /// How to print the layout.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// How a layout is printed.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    /// Aligned columns: node, class, services; then the condition.
    Table,
    /// `status.layout` as YAML.
    Yaml,
}

pub(super) async fn layout(client: Client, args: LayoutArgs) -> anyhow::Result<ExitCode> {
    let cluster = args
        .cluster
        .api(client)
        .get(&args.cluster.name)
        .await
        .map_err(args.cluster.err("read"))?;
    let (text, solved) = render(&cluster, args.output)?;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(if solved {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

pub(super) async fn plan(client: Client, args: PlanArgs) -> anyhow::Result<ExitCode> {
    let object = format!("ClusterPlan {}/{}", args.namespace, args.name);
    let missing = format!(
        "list the plans with `kubectl get clusterplans -n {}`; a Cluster's current one is in its status.plan",
        args.namespace
    );
    let plan = Api::<ClusterPlan>::namespaced(client, &args.namespace)
        .get(&args.name)
        .await
        .map_err(|e| explain(&object, "read", Some(&missing), e))?;
    std::io::stdout()
        .lock()
        .write_all(plan_tree(&plan).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// A plan as text: a header with the operation, phase and progress, then
/// each node with its tasks in order, their states, and the tasks of
/// other nodes they wait for.
fn plan_tree(plan: &ClusterPlan) -> String {
    let status = plan.status.clone().unwrap_or_default();
    let state = |id: &str| {
        status
            .tasks
            .iter()
            .find(|t| t.id == id)
            .map_or(TaskState::Pending, |t| t.state)
    };
    let done = plan
        .spec
        .tasks
        .iter()
        .filter(|t| state(&t.id) == TaskState::Succeeded)
        .count();
    let mut s = format!(
        "ClusterPlan {} of Cluster {}: {}, {:?}, {done}/{} tasks done\n",
        plan.name_any(),
        plan.spec.cluster,
        plan.spec.operation.name(),
        status.phase,
        plan.spec.tasks.len()
    );
    let mut nodes: Vec<&str> = Vec::new();
    for t in &plan.spec.tasks {
        if !nodes.contains(&t.node.as_str()) {
            nodes.push(&t.node);
        }
    }
    for node in nodes {
        s += &format!("{node}\n");
        for t in plan.spec.tasks.iter().filter(|t| t.node == node) {
            let what = t.id.strip_prefix(&format!("{node}/")).unwrap_or(&t.id);
            let waits: Vec<&str> = t
                .after
                .iter()
                .filter(|a| !a.starts_with(&format!("{node}/")))
                .map(String::as_str)
                .collect();
            s += &format!("  {:<9} {what}", format!("{:?}", state(&t.id)));
            if !waits.is_empty() {
                s += &format!("  (after {})", waits.join(", "));
            }
            s += "\n";
        }
    }
    s
}

/// The text shown for `cluster`, and whether its layout is solved for its
/// current spec.
fn render(cluster: &Cluster, output: Output) -> anyhow::Result<(String, bool)> {
    let status = cluster.status.clone().unwrap_or_default();
    let solved = conditions::find(&status.conditions, types::LAYOUT_SOLVED);
    let current = status.observed_generation == cluster.metadata.generation;
    let ok = current && solved.is_some_and(|c| c.status == "True");
    let text = match output {
        Output::Yaml => serde_yaml::to_string(&status.layout)?,
        Output::Table => {
            let mut s = format!(
                "Cluster {}/{} of template {}, size {}\n",
                cluster.namespace().unwrap_or_default(),
                cluster.name_any(),
                cluster.spec.template,
                cluster.spec.size
            );
            if status.layout.is_empty() {
                s += "no layout recorded\n";
            } else {
                s += &crate::cli::template::table(&status.layout);
            }
            s += &match solved {
                Some(c) => format!("LayoutSolved={} {}: {}\n", c.status, c.reason, c.message),
                None => "LayoutSolved: not solved yet (is the operator running?)\n".to_owned(),
            };
            if !current {
                s += "the status describes an earlier generation of the spec\n";
            }
            s
        }
    };
    Ok((text, ok))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(status: serde_json::Value) -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "Cluster",
            "metadata": { "name": "analytics", "namespace": "data", "generation": 2 },
            "spec": { "template": "hadoop", "size": 4 },
            "status": status
        }))
        .expect("a Cluster")
    }

    #[test]
    fn a_plan_prints_node_by_node_with_states_and_waits_on_other_nodes() {
        let plan: ClusterPlan = serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "ClusterPlan",
            "metadata": { "name": "c-create", "namespace": "data" },
            "spec": {
                "cluster": "c",
                "operation": { "type": "create" },
                "tasks": [
                    { "id": "a/createNode", "node": "a", "action": "createNode" },
                    { "id": "b/createNode", "node": "b", "action": "createNode" },
                    { "id": "a/db/start", "node": "a", "service": "db", "action": "start",
                      "after": ["a/createNode"] },
                    { "id": "b/api/start", "node": "b", "service": "api", "action": "start",
                      "after": ["a/db/start", "b/createNode"] }
                ]
            },
            "status": { "phase": "Running", "tasks": [
                { "id": "a/createNode", "state": "Succeeded", "attempts": 1 },
                { "id": "a/db/start", "state": "Running", "attempts": 2 }
            ] }
        }))
        .unwrap();
        assert_eq!(
            plan_tree(&plan),
            "ClusterPlan c-create of Cluster c: create, Running, 1/4 tasks done\n\
             a\n  Succeeded createNode\n  Running   db/start\n\
             b\n  Pending   createNode\n  Pending   api/start  (after a/db/start)\n"
        );
    }

    #[test]
    fn the_table_shows_each_node_and_the_condition_and_says_whether_it_is_current() {
        let solved = cluster(json!({
            "observedGeneration": 2,
            "layout": [
                { "name": "analytics-0", "nodeClass": "large", "services": ["namenode"] },
                { "name": "analytics-1", "nodeClass": "small", "services": ["datanode"] }
            ],
            "conditions": [{ "type": "LayoutSolved", "status": "True", "reason": "Solved",
                             "message": "2 nodes", "lastTransitionTime": "2026-01-01T00:00:00Z" }]
        }));
        let (text, ok) = render(&solved, Output::Table).unwrap();
        assert!(ok);
        assert!(text.contains("analytics-0  large  namenode"), "{text}");
        assert!(text.contains("LayoutSolved=True Solved: 2 nodes"), "{text}");

        let stale = cluster(json!({ "observedGeneration": 1, "conditions": [
            { "type": "LayoutSolved", "status": "False", "reason": "Unsatisfiable",
              "message": "no layout", "lastTransitionTime": "2026-01-01T00:00:00Z" }] }));
        let (text, ok) = render(&stale, Output::Table).unwrap();
        assert!(!ok);
        assert!(text.contains("no layout recorded"), "{text}");
        assert!(text.contains("earlier generation"), "{text}");
    }
}
