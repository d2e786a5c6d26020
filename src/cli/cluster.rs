//! `theseus cluster layout`: a Cluster's solved layout, as the operator
//! recorded it, and why it is what it is.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::api::Cluster;
use crate::api::conditions::{self, types};

/// Show clusters made from templates.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    theseus cluster layout analytics\n  \
    theseus cluster layout analytics -n data -o yaml")]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Print a cluster's layout (nodes by class with their services) and
    /// its LayoutSolved condition. Exits 2 while the cluster has no layout
    /// for its current spec (unsatisfiable, invalid or not solved yet).
    #[command(after_help = "Examples:\n  \
        theseus cluster layout analytics\n  \
        theseus cluster layout analytics -n data -o yaml")]
    Layout(LayoutArgs),
}

#[derive(Args, Debug)]
struct LayoutArgs {
    /// The Cluster.
    name: String,
    /// Its namespace.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
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

/// Runs `theseus cluster`.
pub async fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ClusterCommand::Layout(a) => layout(a).await,
    }
}

async fn layout(args: LayoutArgs) -> anyhow::Result<ExitCode> {
    let client = Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the API server: {e}"))?;
    let cluster = Api::<Cluster>::namespaced(client, &args.namespace)
        .get(&args.name)
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot read Cluster {}/{}: {e}", args.namespace, args.name)
        })?;
    let (text, solved) = render(&cluster, args.output)?;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(if solved {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
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
                s += &super::template::table(&status.layout);
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
