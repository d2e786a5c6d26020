//! The `theseus` command tree. Everything it runs lives in the library.
#![forbid(unsafe_code)]

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use theseus::cli;
use theseus::logging::{self, LogFormat};

/// The version `--version` prints; a build with failpoints says so, so that
/// one is never mistaken for a release.
const VERSION: &str = if theseus::pkg::failpoint::ENABLED {
    concat!(env!("CARGO_PKG_VERSION"), " (test build with failpoints)")
} else {
    env!("CARGO_PKG_VERSION")
};

/// Theseus keeps a fleet converged on declared package sets, service groups
/// and node pools.
#[derive(Parser, Debug)]
#[command(
    name = "theseus",
    version = VERSION,
    about,
    long_about = None,
    after_help = "Examples:\n  \
        theseus crds | kubectl apply --server-side -f -\n  \
        theseus policy | kubectl apply -f -\n  \
        theseus rollout status web-tier\n  \
        theseus pkg list --format json\n  \
        theseus completions bash > /etc/bash_completion.d/theseus\n\n\
        As a kubectl plugin: ln -s \"$(command -v theseus)\" /usr/local/bin/kubectl-theseus,\n\
        then `kubectl theseus rollout status web-tier`."
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "THESEUS_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions generated from the API types.
    #[command(
        after_help = "Examples:\n  theseus crds | kubectl apply --server-side -f -\n  theseus crds --check crds/"
    )]
    Crds(cli::crds::CrdsArgs),
    /// Print the admission policy that confines each node agent to its own
    /// NodeInstall (the chart installs it; this is for installs without Helm).
    Policy(cli::policy::PolicyArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(cli::completions::CompletionsArgs),
    /// Run the operator: the PackageSet, PackageRepository, ServiceGroup,
    /// NodePool, ClusterTemplate, Cluster, ConfigBundle, ClusterCapability,
    /// Role, AppPackage and AppInstance controllers under leader
    /// election, the dashboard under /ui/, and the /halt, /resume,
    /// /healthz, /readyz and /metrics endpoints.
    Operator(Box<theseus::operator::OperatorArgs>),
    /// Run the node agent: register the NodeInstall, follow its target,
    /// supervise the active services and serve the local HTTP API.
    Agent(theseus::agent::AgentArgs),
    /// Follow a PackageSet's rollout; halt or resume every rollout.
    Rollout(cli::rollout::RolloutArgs),
    /// Add nodes to a NodePool, or remove one node from its pool.
    Node(cli::node::NodeArgs),
    /// Manage the node's packages and generations (works with no cluster).
    #[command(after_help = "Examples:\n  \
        theseus pkg bootstrap --repo http://repo.example/ nginx--1.25.3\n  \
        theseus pkg activate nginx--1.25.4 --repo http://repo.example/\n  \
        theseus pkg rollback\n  \
        theseus pkg list --format json")]
    Pkg(cli::pkg::PkgArgs),
    /// Build, sign and serve a package repository.
    #[command(after_help = "Examples:\n  \
        theseus repo keygen --out repo.key\n  \
        theseus repo index repo/ --sign-key repo.key\n  \
        theseus repo serve repo/ --listen 127.0.0.1:8080")]
    Repo(cli::repo::RepoArgs),
    /// Read and follow the etcd service-discovery tree.
    Discover(cli::discover::DiscoverArgs),
    /// Show service groups: desired, ready and published containers.
    Groups(cli::groups::GroupsArgs),
    /// Solve a cluster template for a size, or validate it.
    Template(cli::template::TemplateArgs),
    /// Create, scale, amend, reconfigure, approve and delete Clusters; follow
    /// their plans and layouts.
    Cluster(cli::cluster::ClusterArgs),
    /// Render configuration packages from modules and values.
    Config(cli::config::ConfigArgs),
    /// Install, start, stop, remove and list application instances.
    App(cli::app::AppArgs),
    /// Show which cluster capabilities hold, and on which nodes they fail.
    Capability(cli::app::CapabilityArgs),
    /// Serve the dashboard on this machine, as the kubeconfig's user.
    Dashboard(cli::dashboard::DashboardArgs),
    /// List, create and inspect tenants: usage against quota.
    Tenant(cli::tenant::TenantArgs),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

fn dispatch(command: Command) -> anyhow::Result<std::process::ExitCode> {
    let ok = |r: anyhow::Result<()>| r.map(|()| std::process::ExitCode::SUCCESS);
    match command {
        Command::Crds(args) => ok(cli::crds::run(&args)),
        Command::Policy(args) => ok(cli::policy::run(&args)),
        Command::Completions(args) => ok(cli::completions::run(&args, &mut Cli::command())),
        Command::Operator(args) => ok(runtime()?.block_on(theseus::operator::run(*args))),
        Command::Rollout(args) => runtime()?.block_on(cli::rollout::run(args)),
        Command::Agent(args) => ok(runtime()?.block_on(theseus::agent::run(args))),
        Command::Node(args) => ok(runtime()?.block_on(cli::node::run(args))),
        Command::Pkg(args) => ok(cli::pkg::run(&args)),
        Command::Repo(args) => ok(cli::repo::run(&args)),
        Command::Discover(args) => ok(cli::discover::run(&args)),
        Command::Groups(args) => ok(cli::groups::run(&args)),
        Command::Template(args) => runtime()?.block_on(cli::template::run(args)),
        Command::Cluster(args) => runtime()?.block_on(cli::cluster::run(args)),
        Command::Config(args) => runtime()?.block_on(cli::config::run(args)),
        Command::App(args) => ok(runtime()?.block_on(cli::app::run(args))),
        Command::Capability(args) => ok(runtime()?.block_on(cli::app::run_capability(args))),
        Command::Dashboard(args) => ok(runtime()?.block_on(cli::dashboard::run(args))),
        Command::Tenant(args) => ok(runtime()?.block_on(cli::tenant::run(args))),
    }
}

fn main() -> std::process::ExitCode {
    // Usage lines say `kubectl theseus …` when kubectl runs us as a plugin.
    let argv0 = std::env::args_os().next();
    let name = cli::completions::display_name(argv0.as_deref());
    let matches = Cli::command().bin_name(name).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    logging::init(cli.log_format);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("theseus: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
