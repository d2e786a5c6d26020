//! `theseus cluster`: create and change clusters made from templates,
//! approve their plans, follow them, and show a cluster's solved layout
//! and a plan's tasks.
//!
//! Each verb is a read or a write of a Cluster or a ClusterPlan that
//! kubectl can do as well; each verb's long help (`--help`) says how.

mod change;
mod follow;
mod show;

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::api::{Cluster, ClusterPlan};

/// Create, change and follow clusters made from templates.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    theseus cluster create analytics --template hadoop --size 6 -n data\n  \
    theseus cluster status analytics -n data --wait\n  \
    theseus cluster scale analytics 8 -n data\n  \
    theseus cluster layout analytics -n data -o yaml\n  \
    theseus cluster plan analytics-3f2a9c01d4 -n data")]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Create a Cluster of a template and size; the operator solves its
    /// layout and runs the plan that launches it.
    ///
    /// Fails when the Cluster exists: change it with scale, add-services or
    /// set. With kubectl: `kubectl create -f cluster.yaml`, a Cluster with
    /// spec.template, spec.size and optionally spec.services, spec.config
    /// and spec.planApproval (see examples/clusters/).
    #[command(after_help = "Examples:\n  \
        theseus cluster create analytics --template hadoop --size 6\n  \
        theseus cluster create shop --template web --size 12 --service lb --service web -n web\n  \
        theseus cluster create analytics --template hadoop --size 6 --set dfs.replication=2\n  \
        theseus cluster create analytics --template hadoop --size 6 --approval Manual")]
    Create(change::CreateArgs),
    /// Set a cluster's size (spec.size); the operator solves the layout
    /// for it and runs the plan that gets there.
    ///
    /// With kubectl: `kubectl patch cluster NAME --type=merge -p
    /// '{"spec":{"size":N}}'`.
    #[command(after_help = "Examples:\n  \
        theseus cluster scale analytics 8\n  \
        theseus cluster scale analytics 8 -n data && theseus cluster status analytics -n data --wait")]
    Scale(change::ScaleArgs),
    /// Add services to a cluster (spec.services); a service it already has
    /// is skipped, and when none is left there is nothing to do (exit 0).
    ///
    /// A cluster whose spec.services is empty runs its template's default
    /// services: the new list is then the services its layout runs now
    /// (status.layout, each once) plus the new ones, and from then on the
    /// cluster no longer follows a change of the template's defaults. With
    /// kubectl: `kubectl patch cluster NAME --type=merge -p
    /// '{"spec":{"services":["EVERY","SERVICE"]}}'` (a merge patch replaces
    /// the whole list).
    #[command(after_help = "Examples:\n  \
        theseus cluster add-services shop postgres -n web\n  \
        theseus cluster add-services shop cache lb -n web   # lb is there already: skipped")]
    AddServices(change::AddServicesArgs),
    /// Set configuration values (spec.config, over the template's
    /// defaults); `KEY=` removes KEY.
    ///
    /// With kubectl: `kubectl patch cluster NAME --type=merge -p
    /// '{"spec":{"config":{"KEY":"VALUE","GONE":null}}}'`.
    #[command(after_help = "Examples:\n  \
        theseus cluster set analytics dfs.replication=2\n  \
        theseus cluster set analytics dfs.replication=   # back to the template's default")]
    Set(change::SetArgs),
    /// Delete a cluster: its finalizer runs the delete plan (the nodes go)
    /// before the Cluster is gone. With --wait: exit 0 once it is gone, 1
    /// when the delete plan failed, 2 on timeout.
    ///
    /// With kubectl: `kubectl delete cluster NAME --wait=false`, then
    /// `kubectl wait --for=delete cluster/NAME` and `kubectl get
    /// clusterplans` for the progress.
    #[command(after_help = "Examples:\n  \
        theseus cluster delete analytics\n  \
        theseus cluster delete analytics -n data --wait --timeout 1800")]
    Delete(follow::DeleteArgs),
    /// Approve the cluster's plan that waits for approval (spec.planApproval
    /// Manual). Exits 2, naming the phase, when the cluster has no plan or
    /// its plan is not AwaitingApproval.
    ///
    /// With kubectl: `kubectl annotate clusterplan "$(kubectl get cluster
    /// NAME -o jsonpath='{.status.plan}')" theseus.dev/approved=true`.
    #[command(after_help = "Examples:\n  \
        theseus cluster approve analytics\n  \
        theseus cluster plan \"$(kubectl get cl analytics -o jsonpath='{.status.plan}')\"   # look first")]
    Approve(ClusterRef),
    /// Roll back the cluster's plan that stopped at a failure
    /// (spec.strategy.onFailure Halt): put the spec's size, services, node
    /// class and configuration back as the plan found them; the operator
    /// then undoes what the plan ran by its inverse tasks, and makes no new
    /// plan. Exits 2, saying why, when the plan did not stop at a failure
    /// (a plan with onFailure Rollback rolls back by itself), created the
    /// cluster (delete it instead) or does not record its starting spec.
    ///
    /// With kubectl: `kubectl patch cluster NAME --type merge -p …` with
    /// the plan's `spec.fromRequest` and `spec.fromConfig`.
    #[command(after_help = "Examples:\n  \
        theseus cluster rollback analytics\n  \
        theseus cluster status analytics --wait   # until the plan rolled back")]
    Rollback(ClusterRef),
    /// Print a cluster's conditions and its plan's progress. With --wait:
    /// exit 0 once the plan succeeded and the cluster runs its current
    /// spec, 1 when the plan failed or rolled back (or no layout or plan
    /// can be made), 2 on timeout.
    ///
    /// With kubectl: `kubectl get cluster NAME -o yaml` (status.conditions,
    /// status.plan) and `kubectl get clusterplan PLAN`; `kubectl wait
    /// --for=condition=Available cluster/NAME` waits for a new cluster (a
    /// cluster that ran stays Available during a change).
    #[command(after_help = "Examples:\n  \
        theseus cluster status analytics\n  \
        theseus cluster status analytics -n data --wait --timeout 1800")]
    Status(follow::StatusArgs),
    /// Print a cluster's layout (nodes by class with their services) and
    /// its LayoutSolved condition. Exits 2 while the cluster has no layout
    /// for its current spec (unsatisfiable, invalid or not solved yet).
    ///
    /// With kubectl: `kubectl get cluster NAME -o jsonpath='{.status.layout}'`.
    #[command(after_help = "Examples:\n  \
        theseus cluster layout analytics\n  \
        theseus cluster layout analytics -n data -o yaml")]
    Layout(show::LayoutArgs),
    /// Print a ClusterPlan's tasks node by node, each with its state and
    /// what it waits for on other nodes, and the plan's phase and
    /// progress.
    ///
    /// With kubectl: `kubectl get clusterplan NAME -o yaml`.
    #[command(after_help = "Examples:\n  \
        theseus cluster plan analytics-create\n  \
        kubectl get clusterplans -n data      # operation, progress, phase")]
    Plan(show::PlanArgs),
}

/// A Cluster by name and namespace.
#[derive(Args, Clone, Debug)]
struct ClusterRef {
    /// The Cluster.
    name: String,
    /// Its namespace.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
}

impl ClusterRef {
    fn api(&self, client: Client) -> Api<Cluster> {
        Api::namespaced(client, &self.namespace)
    }

    /// `Cluster NAMESPACE/NAME`, as messages name it.
    fn object(&self) -> String {
        format!("Cluster {}/{}", self.namespace, self.name)
    }

    /// `NAME` or `NAME -n NAMESPACE`, for the commands messages suggest.
    fn args(&self) -> String {
        if self.namespace == "default" {
            self.name.clone()
        } else {
            format!("{} -n {}", self.name, self.namespace)
        }
    }

    /// The error of a request that failed `doing` (read, scale, …) the
    /// cluster, saying what to do.
    fn err(&self, doing: &'static str) -> impl FnOnce(kube::Error) -> anyhow::Error + '_ {
        move |e| {
            let missing = match doing {
                "create" => None,
                "delete" => Some(format!(
                    "nothing to delete (list them with `kubectl get clusters -n {}`)",
                    self.namespace
                )),
                _ => Some(format!(
                    "create it with `theseus cluster create {} --template T --size N`",
                    self.args()
                )),
            };
            explain(&self.object(), doing, missing.as_deref(), e)
        }
    }

    /// The ClusterPlans of the cluster's namespace.
    fn plans(&self, client: Client) -> Api<ClusterPlan> {
        Api::namespaced(client, &self.namespace)
    }
}

/// Runs `theseus cluster`.
pub async fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let client = Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the API server (check KUBECONFIG): {e}"))?;
    match args.command {
        ClusterCommand::Create(a) => change::create(client, a).await,
        ClusterCommand::Scale(a) => change::scale(client, a).await,
        ClusterCommand::AddServices(a) => change::add_services(client, a).await,
        ClusterCommand::Set(a) => change::set(client, a).await,
        ClusterCommand::Delete(a) => follow::delete(client, a).await,
        ClusterCommand::Approve(a) => change::approve(client, a).await,
        ClusterCommand::Rollback(a) => change::rollback(client, a).await,
        ClusterCommand::Status(a) => follow::status(client, a).await,
        ClusterCommand::Layout(a) => show::layout(client, a).await,
        ClusterCommand::Plan(a) => show::plan(client, a).await,
    }
}

/// A failed request about `object` (`Cluster data/x`) as a sentence that
/// says what to do; `missing` is what to do when the object does not
/// exist (none: the API server's own message, e.g. a missing namespace).
fn explain(object: &str, doing: &str, missing: Option<&str>, e: kube::Error) -> anyhow::Error {
    let kube::Error::Api(s) = &e else {
        return anyhow::anyhow!("cannot {doing} {object}: {e}");
    };
    let kind = object.split(' ').next().unwrap_or_default();
    match (s.code, missing) {
        (404, _) if s.message.contains("could not find the requested resource") => anyhow::anyhow!(
            "cannot {doing} {object}: the API server does not serve {kind}s; install the CRDs: theseus crds | kubectl apply --server-side -f -"
        ),
        (404, Some(what)) => anyhow::anyhow!("{object} not found: {what}"),
        (403, _) => anyhow::anyhow!(
            "not allowed to {doing} {object}: {}; ask for RBAC on {}s.theseus.dev",
            s.message,
            kind.to_lowercase()
        ),
        (422, _) => anyhow::anyhow!("the API server refused {object}: {}", s.message),
        _ => anyhow::anyhow!("cannot {doing} {object}: {}", s.message),
    }
}

/// The ClusterPlan the cluster names in `status.plan`, if it names one
/// that exists.
async fn plan_of(client: &Client, cluster: &Cluster) -> anyhow::Result<Option<ClusterPlan>> {
    let Some(name) = cluster.status.as_ref().and_then(|s| s.plan.clone()) else {
        return Ok(None);
    };
    let ns = cluster.namespace().unwrap_or_default();
    let object = format!("ClusterPlan {ns}/{name}");
    Api::<ClusterPlan>::namespaced(client.clone(), &ns)
        .get_opt(&name)
        .await
        .map_err(|e| explain(&object, "read", None, e))
}

/// A progress bar of `done` out of `total`, `width` characters inside the
/// brackets: `[#####-----]`. Full when there is nothing to do.
pub fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ClusterArgs,
    }

    fn parse(argv: &[&str]) -> Result<ClusterCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("cluster").chain(argv.iter().copied()))
            .map(|c| c.args.command)
    }

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "Test")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn the_command_tree_is_consistent_and_every_verb_has_an_example_and_kubectl() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        for verb in cmd.get_subcommands() {
            let after = verb
                .get_after_help()
                .map(|s| s.to_string())
                .unwrap_or_default();
            let long = verb
                .get_long_about()
                .map(|s| s.to_string())
                .unwrap_or_default();
            assert!(after.contains("theseus cluster"), "{}", verb.get_name());
            assert!(long.contains("kubectl"), "{}", verb.get_name());
        }
    }

    #[test]
    fn verbs_parse_their_arguments() {
        let create = parse(&[
            "create",
            "x",
            "--template",
            "t",
            "--size",
            "3",
            "--service",
            "a",
            "--set",
            "k=v",
            "--approval",
            "manual",
            "-n",
            "apps",
        ]);
        assert!(
            matches!(create, Ok(ClusterCommand::Create(_))),
            "{create:?}"
        );
        assert!(matches!(
            parse(&["scale", "x", "4"]),
            Ok(ClusterCommand::Scale(_))
        ));
        assert!(parse(&["scale", "x", "0"]).is_err());
        assert!(parse(&["set", "x", "novalue"]).is_err());
        assert!(parse(&["set", "x"]).is_err());
        assert!(parse(&["add-services", "x"]).is_err());
        assert!(
            parse(&["status", "x", "--timeout", "5"]).is_err(),
            "--timeout needs --wait"
        );
        assert!(matches!(
            parse(&["approve", "x", "-n", "apps"]),
            Ok(ClusterCommand::Approve(ClusterRef { namespace, .. })) if namespace == "apps"
        ));
    }

    #[test]
    fn errors_name_the_object_and_say_what_to_do() {
        let c = ClusterRef {
            name: "x".into(),
            namespace: "apps".into(),
        };
        let missing = c.err("read")(api_error(404, "clusters.theseus.dev \"x\" not found"));
        assert_eq!(
            missing.to_string(),
            "Cluster apps/x not found: create it with `theseus cluster create x -n apps --template T --size N`"
        );
        let gone = c.err("delete")(api_error(404, "not found")).to_string();
        assert!(gone.contains("nothing to delete"), "{gone}");
        let ns = c.err("create")(api_error(404, "namespaces \"apps\" not found")).to_string();
        assert_eq!(
            ns,
            "cannot create Cluster apps/x: namespaces \"apps\" not found"
        );
        let crds = c.err("read")(api_error(
            404,
            "the server could not find the requested resource",
        ));
        assert!(crds.to_string().contains("theseus crds"), "{crds}");
        let rbac = c.err("scale")(api_error(403, "forbidden")).to_string();
        assert!(rbac.contains("RBAC on clusters.theseus.dev"), "{rbac}");
    }

    #[test]
    fn a_bar_fills_in_proportion_and_is_full_when_there_is_nothing_to_do() {
        assert_eq!(bar(1, 4, 8), "[##------]");
        assert_eq!(bar(0, 0, 4), "[####]");
        assert_eq!(bar(9, 4, 4), "[####]");
    }
}
