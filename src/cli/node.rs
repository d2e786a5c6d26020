//! `theseus node add` and `theseus node remove`: grow a NodePool, or remove
//! one named node from its pool — the original `slave add` and `slave
//! remove`, done through the pool's scale subresource.

use clap::{Args, Subcommand};
use k8s_openapi::api::autoscaling::v1::Scale;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::api::{NodeInstall, NodePool};
use crate::nodepool::REMOVE_ANNOTATION;
use crate::nodepool::provider::POOL_TAG;

/// Add nodes to a pool, or remove one node from its pool.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    theseus node add --pool dev --count 2\n  \
    theseus node remove dev-3")]
pub struct NodeArgs {
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Subcommand, Debug)]
enum NodeCommand {
    /// Raise a pool's replicas by --count.
    #[command(
        after_help = "Examples:\n  theseus node add --pool web\n  theseus node add --pool web --count 3"
    )]
    Add(AddArgs),
    /// Remove one node: it is drained and its instance terminated, and its
    /// pool's replicas go down by one.
    #[command(after_help = "Example:\n  theseus node remove web-4")]
    Remove(RemoveArgs),
}

#[derive(Args, Debug)]
struct AddArgs {
    /// The NodePool.
    #[arg(long)]
    pool: String,
    /// How many nodes to add.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=10000))]
    count: i32,
}

#[derive(Args, Debug)]
struct RemoveArgs {
    /// The node (its NodeInstall's name).
    node: String,
}

/// Errors of `theseus node`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused a read or write.
    #[error("{what}: {source}")]
    Kube {
        /// What was attempted.
        what: String,
        /// The cause.
        source: kube::Error,
    },
    /// The node does not belong to a pool.
    #[error(
        "node {0} carries no {POOL_TAG} label: it was not launched by a NodePool; remove its machine by hand"
    )]
    NotInPool(String),
    /// The pool kept changing under us.
    #[error("NodePool {0} changed concurrently five times in a row; try again")]
    Contended(String),
}

/// Runs `theseus node …`.
pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("cannot build a Kubernetes client (check KUBECONFIG): {e}"))?;
    match args.command {
        NodeCommand::Add(a) => {
            let replicas = rescale(&client, &a.pool, a.count).await?;
            println!("nodepool/{} scaled to {replicas}", a.pool);
        }
        NodeCommand::Remove(r) => {
            let pool = remove(&client, &r.node).await?;
            println!(
                "node {} marked for removal; nodepool/{pool} scaled down by one",
                r.node
            );
        }
    }
    Ok(())
}

/// Adds `delta` to a pool's replicas through the scale subresource, with
/// its resourceVersion as a precondition; returns the new count.
pub async fn rescale(client: &Client, pool: &str, delta: i32) -> Result<i32, Error> {
    let api: Api<NodePool> = Api::all(client.clone());
    let kube_err = |source| Error::Kube {
        what: format!("cannot scale NodePool {pool}"),
        source,
    };
    for _ in 0..5 {
        let mut scale: Scale = api.get_scale(pool).await.map_err(kube_err)?;
        let spec = scale.spec.get_or_insert_default();
        let replicas = (spec.replicas.unwrap_or(0) + delta).max(0);
        spec.replicas = Some(replicas);
        match api
            .replace_scale(pool, &PostParams::default(), &scale)
            .await
        {
            Ok(_) => return Ok(replicas),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(kube_err(e)),
        }
    }
    Err(Error::Contended(pool.to_owned()))
}

/// Marks `node` to go first and scales its pool down by one; returns the pool.
pub async fn remove(client: &Client, node: &str) -> Result<String, Error> {
    let api: Api<NodeInstall> = Api::all(client.clone());
    let kube_err = |what: &str| {
        let what = format!("cannot {what} NodeInstall {node}");
        move |source| Error::Kube { what, source }
    };
    let ni = api.get(node).await.map_err(kube_err("read"))?;
    let pool = ni
        .labels()
        .get(POOL_TAG)
        .cloned()
        .ok_or_else(|| Error::NotInPool(node.to_owned()))?;
    if !ni.annotations().contains_key(REMOVE_ANNOTATION) {
        let patch = json!({ "metadata": { "annotations": { REMOVE_ANNOTATION: "true" } } });
        api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube_err("annotate"))?;
        rescale(client, &pool, -1).await?;
    }
    Ok(pool)
}
