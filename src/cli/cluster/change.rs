//! The verbs that write: `create`, `scale`, `add-services`, `set` and
//! `approve`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::{ClusterRef, explain};
use crate::api::{Cluster, ClusterPlan, ClusterSpec, PlanApproval, PlanPhase};
use crate::cluster::drive::APPROVED_ANNOTATION;

#[derive(Args, Debug)]
pub(super) struct CreateArgs {
    #[command(flatten)]
    cluster: ClusterRef,
    /// The ClusterTemplate it is made from.
    #[arg(long)]
    template: String,
    /// How many nodes it has.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=10000))]
    size: i32,
    /// A service it runs (repeat the flag); none: the template's defaults.
    #[arg(long = "service", value_name = "SERVICE")]
    services: Vec<String>,
    /// A configuration value over the template's defaults (repeat the flag).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
    settings: Vec<Setting>,
    /// Whether its plans run when made or wait for `theseus cluster approve`.
    #[arg(long, value_enum, ignore_case = true, default_value_t = Approval::Automatic)]
    approval: Approval,
}

/// `spec.planApproval`, as a flag.
#[derive(Clone, Copy, Debug, ValueEnum)]
#[value(rename_all = "PascalCase")]
enum Approval {
    /// Plans run when made.
    Automatic,
    /// Plans wait for `theseus cluster approve NAME`.
    Manual,
}

#[derive(Args, Debug)]
pub(super) struct ScaleArgs {
    #[command(flatten)]
    cluster: ClusterRef,
    /// The new size: how many nodes.
    #[arg(value_parser = clap::value_parser!(i32).range(1..=10000))]
    size: i32,
}

#[derive(Args, Debug)]
pub(super) struct AddServicesArgs {
    #[command(flatten)]
    cluster: ClusterRef,
    /// The services to add.
    #[arg(required = true, value_name = "SERVICE")]
    services: Vec<String>,
}

#[derive(Args, Debug)]
pub(super) struct SetArgs {
    #[command(flatten)]
    cluster: ClusterRef,
    /// KEY=VALUE sets KEY; KEY= removes it.
    #[arg(required = true, value_name = "KEY=VALUE", value_parser = parse_setting)]
    settings: Vec<Setting>,
}

/// One `KEY=VALUE` argument; no value (`KEY=`) removes the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Setting {
    key: String,
    value: Option<String>,
}

/// Parses `KEY=VALUE` (`KEY=`: remove KEY). The key is not empty and has
/// no whitespace; the value is everything after the first `=`.
fn parse_setting(arg: &str) -> Result<Setting, String> {
    let Some((key, value)) = arg.split_once('=') else {
        return Err(format!(
            "`{arg}` is not KEY=VALUE (e.g. dfs.replication=3; `KEY=` removes KEY)"
        ));
    };
    if key.is_empty() || key.chars().any(char::is_whitespace) {
        return Err(format!(
            "`{arg}`: the key before `=` must be non-empty, without spaces"
        ));
    }
    Ok(Setting {
        key: key.to_owned(),
        value: (!value.is_empty()).then(|| value.to_owned()),
    })
}

/// The merge patch of `spec.config` for `settings`: a value per key set,
/// null per key removed. A key given twice is refused.
fn config_patch(settings: &[Setting]) -> Result<serde_json::Map<String, Value>, String> {
    let mut patch = serde_json::Map::new();
    for s in settings {
        let value = s.value.clone().map_or(Value::Null, Value::String);
        if patch.insert(s.key.clone(), value).is_some() {
            return Err(format!("{} is given twice; give each key once", s.key));
        }
    }
    Ok(patch)
}

/// The spec `create` asks for.
fn create_spec(a: &CreateArgs) -> Result<ClusterSpec, String> {
    let mut config = BTreeMap::new();
    for (key, value) in config_patch(&a.settings)? {
        let Value::String(value) = value else {
            return Err(format!(
                "--set {key}= removes {key}, but a new cluster has no value to remove: give one"
            ));
        };
        config.insert(key, value);
    }
    Ok(ClusterSpec {
        template: a.template.clone(),
        size: a.size,
        services: with_services(&[], &a.services).0,
        config,
        plan_approval: match a.approval {
            Approval::Automatic => PlanApproval::Automatic,
            Approval::Manual => PlanApproval::Manual,
        },
        ..ClusterSpec::default()
    })
}

/// `theseus cluster create`: a new Cluster, never over an existing one.
pub(super) async fn create(client: Client, a: CreateArgs) -> anyhow::Result<ExitCode> {
    let c = &a.cluster;
    let spec = create_spec(&a).map_err(anyhow::Error::msg)?;
    let cluster = Cluster::new(&c.name, spec);
    match c.api(client).create(&PostParams::default(), &cluster).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => anyhow::bail!(
            "{} already exists; use scale, add-services or set to change it (or delete it first)",
            c.object()
        ),
        Err(e) => return Err(c.err("create")(e)),
    }
    println!(
        "{} created: template {}, size {}",
        c.object(),
        a.template,
        a.size
    );
    print!("{}", next_steps(c, &cluster));
    println!(
        "  kubectl wait --for=condition=Available cluster/{} -n {}",
        c.name, c.namespace
    );
    Ok(ExitCode::SUCCESS)
}

/// What to run after a change of `cluster`: how to follow it, and what
/// holds it back (a pause, a plan that waits for approval).
fn next_steps(c: &ClusterRef, cluster: &Cluster) -> String {
    let mut s = String::new();
    if cluster.spec.paused {
        s += &format!(
            "{} is paused: nothing happens until spec.paused is false\n",
            c.object()
        );
    }
    if cluster.spec.plan_approval == PlanApproval::Manual {
        s += &format!(
            "its plans wait for approval: look with `theseus cluster status {0}`, then `theseus cluster approve {0}`\n",
            c.args()
        );
    }
    s + &format!(
        "follow it with:\n  theseus cluster status {} --wait\n",
        c.args()
    )
}

/// `theseus cluster scale`: a merge patch of spec.size.
pub(super) async fn scale(client: Client, a: ScaleArgs) -> anyhow::Result<ExitCode> {
    let c = &a.cluster;
    let patch = json!({ "spec": { "size": a.size } });
    let cluster = c
        .api(client)
        .patch(&c.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(c.err("scale"))?;
    println!("{} scaled to {} nodes", c.object(), a.size);
    print!("{}", next_steps(c, &cluster));
    Ok(ExitCode::SUCCESS)
}

/// `theseus cluster set`: a merge patch of spec.config.
pub(super) async fn set(client: Client, a: SetArgs) -> anyhow::Result<ExitCode> {
    let c = &a.cluster;
    let config = config_patch(&a.settings).map_err(anyhow::Error::msg)?;
    let patch = json!({ "spec": { "config": config } });
    let cluster = c
        .api(client)
        .patch(&c.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(c.err("configure"))?;
    for s in &a.settings {
        match &s.value {
            Some(v) => println!("{}: {}={v}", c.object(), s.key),
            None => println!("{}: {} removed", c.object(), s.key),
        }
    }
    print!("{}", next_steps(c, &cluster));
    Ok(ExitCode::SUCCESS)
}

/// The services a cluster has: its spec's, or — when the spec names none
/// and the template's defaults apply — each service of its layout once,
/// in order; none when neither names any.
fn current_services(cluster: &Cluster) -> Option<Vec<String>> {
    if !cluster.spec.services.is_empty() {
        return Some(cluster.spec.services.clone());
    }
    let layout = cluster.status.as_ref().map(|s| s.layout.as_slice());
    let all: Vec<String> = layout
        .unwrap_or_default()
        .iter()
        .flat_map(|n| n.services.iter().cloned())
        .collect();
    let services = with_services(&[], &all).0;
    (!services.is_empty()).then_some(services)
}

/// `current` followed by each of `new` it lacks (once), and the ones of
/// `new` it already has.
fn with_services(current: &[String], new: &[String]) -> (Vec<String>, Vec<String>) {
    let mut services = current.to_vec();
    let mut present = Vec::new();
    for s in new {
        if current.contains(s) {
            if !present.contains(s) {
                present.push(s.clone());
            }
        } else if !services.contains(s) {
            services.push(s.clone());
        }
    }
    (services, present)
}

/// `theseus cluster add-services`: spec.services with the new ones, by a
/// merge patch conditional on the version read (tried again when the
/// cluster changed meanwhile).
pub(super) async fn add_services(client: Client, a: AddServicesArgs) -> anyhow::Result<ExitCode> {
    let c = &a.cluster;
    let api = c.api(client);
    for _ in 0..5 {
        let cluster = api.get(&c.name).await.map_err(c.err("read"))?;
        let current = current_services(&cluster).ok_or_else(|| {
            anyhow::anyhow!(
                "{} runs its template's default services and has no layout yet to list them: wait for `theseus cluster layout {}` to show one, or name every service with kubectl (see `theseus cluster add-services --help`)",
                c.object(),
                c.args()
            )
        })?;
        let (services, present) = with_services(&current, &a.services);
        let text = add_message(c, &cluster, &current, &services, &present);
        if services.len() == current.len() {
            print!("{text}");
            return Ok(ExitCode::SUCCESS);
        }
        let patch = json!({
            "metadata": { "resourceVersion": cluster.resource_version() },
            "spec": { "services": services },
        });
        match api
            .patch(&c.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(updated) => {
                print!("{text}{}", next_steps(c, &updated));
                return Ok(ExitCode::SUCCESS);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(c.err("add services to")(e)),
        }
    }
    anyhow::bail!(
        "{} changed meanwhile five times in a row; try again",
        c.object()
    )
}

/// What `add-services` says: the services skipped, and the new list (or
/// that there is nothing to do).
fn add_message(
    c: &ClusterRef,
    cluster: &Cluster,
    current: &[String],
    services: &[String],
    present: &[String],
) -> String {
    let mut s = String::new();
    if !present.is_empty() {
        s += &format!("{} already has {}\n", c.object(), present.join(", "));
    }
    if services.len() == current.len() {
        return s + "nothing to do\n";
    }
    if cluster.spec.services.is_empty() {
        s += &format!(
            "spec.services was empty (the template's defaults); it now lists the layout's services {} and the new ones\n",
            current.join(", ")
        );
    }
    s + &format!("{}: services {}\n", c.object(), services.join(", "))
}

/// Why the plan named in a cluster's status cannot be approved: there is
/// none, it is gone, or it is not AwaitingApproval (its phase named).
fn refusal(c: &ClusterRef, name: Option<&str>, plan: Option<&ClusterPlan>) -> Option<String> {
    let Some(name) = name else {
        return Some(format!(
            "{} has no plan to approve: the operator makes one when the layout or configuration changes",
            c.object()
        ));
    };
    let object = format!("ClusterPlan {}/{name} of {}", c.namespace, c.object());
    let Some(plan) = plan else {
        return Some(format!("{object} no longer exists: nothing to approve"));
    };
    let phase = plan.status.as_ref().map(|s| s.phase).unwrap_or_default();
    match phase {
        PlanPhase::AwaitingApproval => None,
        PlanPhase::Pending => Some(format!(
            "{object} is Pending, not AwaitingApproval: the operator has not looked at it yet (or the cluster's planApproval is Automatic); try again in a moment"
        )),
        other => Some(format!(
            "{object} is {other:?}, not AwaitingApproval: nothing to approve"
        )),
    }
}

/// `theseus cluster approve`: the approval annotation on the plan named
/// in `status.plan`, when it awaits approval; exit 2 otherwise.
pub(super) async fn approve(client: Client, c: ClusterRef) -> anyhow::Result<ExitCode> {
    let cluster = c
        .api(client.clone())
        .get(&c.name)
        .await
        .map_err(c.err("read"))?;
    let name = cluster.status.as_ref().and_then(|s| s.plan.clone());
    let plan = super::plan_of(&client, &cluster).await?;
    if let Some(why) = refusal(&c, name.as_deref(), plan.as_ref()) {
        eprintln!("{why}");
        return Ok(ExitCode::from(2));
    }
    let name = name.unwrap_or_default();
    let object = format!("ClusterPlan {}/{name}", c.namespace);
    let patch = json!({ "metadata": { "annotations": { APPROVED_ANNOTATION: "true" } } });
    c.plans(client)
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| explain(&object, "approve", Some("it was deleted meanwhile"), e))?;
    println!("{object} approved");
    println!(
        "follow it with:\n  theseus cluster status {} --wait",
        c.args()
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn rollback(client: Client, c: ClusterRef) -> anyhow::Result<ExitCode> {
    let api = c.api(client.clone());
    let cluster = api.get(&c.name).await.map_err(c.err("read"))?;
    let Some(plan) = super::plan_of(&client, &cluster).await? else {
        eprintln!(
            "Cluster {}/{} has no plan to roll back",
            c.namespace, c.name
        );
        return Ok(ExitCode::from(2));
    };
    let patch = match crate::cluster::rollback::patch(&cluster, &plan) {
        Ok(patch) => patch,
        Err(why) => {
            eprintln!("{why}");
            return Ok(ExitCode::from(2));
        }
    };
    api.patch(&c.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(c.err("roll back"))?;
    println!(
        "Cluster {}/{}: spec put back as ClusterPlan {} found it; its inverse tasks undo what it ran",
        c.namespace,
        c.name,
        plan.name_any()
    );
    println!(
        "follow it with:\n  theseus cluster status {} --wait",
        c.args()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apps_x() -> ClusterRef {
        ClusterRef {
            name: "x".into(),
            namespace: "apps".into(),
        }
    }

    fn cluster(spec: Value, status: Value) -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "Cluster",
            "metadata": { "name": "x", "namespace": "apps", "generation": 1 },
            "spec": spec, "status": status
        }))
        .expect("a Cluster")
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_setting_is_key_equals_value_and_an_empty_value_removes() {
        let set = |k: &str, v: Option<&str>| Setting {
            key: k.into(),
            value: v.map(Into::into),
        };
        assert_eq!(parse_setting("a.b=1"), Ok(set("a.b", Some("1"))));
        assert_eq!(parse_setting("url=x=y"), Ok(set("url", Some("x=y"))));
        assert_eq!(parse_setting("gone="), Ok(set("gone", None)));
        assert!(
            parse_setting("novalue")
                .unwrap_err()
                .contains("is not KEY=VALUE")
        );
        assert!(parse_setting("=1").unwrap_err().contains("non-empty"));
        assert!(parse_setting("a b=1").is_err());
    }

    #[test]
    fn the_config_patch_sets_values_and_nulls_removed_keys_and_refuses_a_key_twice() {
        let s = |arg| parse_setting(arg).unwrap();
        let patch = config_patch(&[s("a=1"), s("b=")]).unwrap();
        assert_eq!(Value::Object(patch), json!({ "a": "1", "b": null }));
        let twice = config_patch(&[s("a=1"), s("a=2")]).unwrap_err();
        assert!(twice.contains("a is given twice"), "{twice}");
    }

    #[test]
    fn create_asks_for_the_spec_given_and_refuses_a_removal() {
        let args = |set: &[&str]| CreateArgs {
            cluster: apps_x(),
            template: "hadoop".into(),
            size: 6,
            services: strings(&["hdfs", "yarn", "hdfs"]),
            settings: set.iter().map(|s| parse_setting(s).unwrap()).collect(),
            approval: Approval::Manual,
        };
        let spec = create_spec(&args(&["a=1"])).unwrap();
        assert_eq!(spec.services, strings(&["hdfs", "yarn"]));
        assert_eq!(spec.config.get("a").map(String::as_str), Some("1"));
        assert_eq!(spec.plan_approval, PlanApproval::Manual);
        assert_eq!((spec.template.as_str(), spec.size), ("hadoop", 6));
        let removal = create_spec(&args(&["a="])).unwrap_err();
        assert!(removal.contains("a new cluster has no value"), "{removal}");
    }

    #[test]
    fn services_come_from_the_spec_or_else_once_each_from_the_layout() {
        let named = cluster(
            json!({ "template": "t", "size": 2, "services": ["a"] }),
            json!({}),
        );
        assert_eq!(current_services(&named), Some(strings(&["a"])));
        let defaults = cluster(
            json!({ "template": "t", "size": 2 }),
            json!({ "layout": [
                { "name": "x-0", "nodeClass": "c", "services": ["db", "api"] },
                { "name": "x-1", "nodeClass": "c", "services": ["api", "cache"] }
            ] }),
        );
        assert_eq!(
            current_services(&defaults),
            Some(strings(&["db", "api", "cache"]))
        );
        let unsolved = cluster(json!({ "template": "t", "size": 2 }), json!({}));
        assert_eq!(current_services(&unsolved), None);
    }

    #[test]
    fn adding_services_appends_the_new_ones_once_and_names_those_present() {
        let current = strings(&["db", "api"]);
        let (all, present) = with_services(&current, &strings(&["cache", "db", "cache", "db"]));
        assert_eq!(all, strings(&["db", "api", "cache"]));
        assert_eq!(present, strings(&["db"]));

        let c = apps_x();
        let x = cluster(json!({ "template": "t", "size": 2 }), json!({}));
        let text = add_message(&c, &x, &current, &current, &strings(&["db"]));
        assert_eq!(text, "Cluster apps/x already has db\nnothing to do\n");
        let text = add_message(&c, &x, &current, &all, &present);
        assert!(text.contains("spec.services was empty"), "{text}");
        assert!(
            text.ends_with("Cluster apps/x: services db, api, cache\n"),
            "{text}"
        );
    }

    #[test]
    fn only_a_plan_awaiting_approval_is_approved_and_a_refusal_names_the_phase() {
        let c = apps_x();
        let plan = |phase: &str| -> ClusterPlan {
            serde_json::from_value(json!({
                "apiVersion": "theseus.dev/v1alpha1", "kind": "ClusterPlan",
                "metadata": { "name": "x-1", "namespace": "apps" },
                "spec": { "cluster": "x", "operation": { "type": "scale" }, "tasks": [] },
                "status": { "phase": phase }
            }))
            .unwrap()
        };
        assert!(
            refusal(&c, None, None)
                .unwrap()
                .contains("has no plan to approve")
        );
        assert!(
            refusal(&c, Some("x-1"), None)
                .unwrap()
                .contains("no longer exists")
        );
        assert_eq!(
            refusal(&c, Some("x-1"), Some(&plan("AwaitingApproval"))),
            None
        );
        assert_eq!(
            refusal(&c, Some("x-1"), Some(&plan("Running"))).unwrap(),
            "ClusterPlan apps/x-1 of Cluster apps/x is Running, not AwaitingApproval: nothing to approve"
        );
        assert!(
            refusal(&c, Some("x-1"), Some(&plan("Pending")))
                .unwrap()
                .contains("try again")
        );
    }

    #[test]
    fn next_steps_say_how_to_follow_and_what_holds_the_cluster_back() {
        let manual = cluster(
            json!({ "template": "t", "size": 2, "paused": true, "planApproval": "Manual" }),
            json!({}),
        );
        let text = next_steps(&apps_x(), &manual);
        assert!(text.contains("is paused"), "{text}");
        assert!(text.contains("theseus cluster approve x -n apps"), "{text}");
        assert!(
            text.ends_with("theseus cluster status x -n apps --wait\n"),
            "{text}"
        );
    }
}
