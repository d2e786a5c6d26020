//! `theseus agent`: the node agent. It registers the node's NodeInstall,
//! follows its `spec.target` (fetch → build → stop → switch → start →
//! health check, rolling back on failure), supervises the active set's
//! services, runs the service action hooks of its `spec.tasks` in order, each once
//! per attempt, heartbeats, and serves the node's local HTTP API.

pub mod activate;
pub mod address;
pub mod api;
pub mod chores;
pub mod health;
pub mod hooks;
pub mod observe;
pub mod reconcile;
pub mod register;
pub mod root;
pub mod secrets;
pub mod service;
pub mod state;
pub mod storage;
pub mod supervisor;
pub mod trust;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use kube::Client;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{NodeInstall, NodeInstallStatus};
use crate::pkg::accepted::AcceptedVersions;
use crate::pkg::{FetchOptions, Root};

use self::activate::Switcher;
use self::register::{Desired, Reporter, StatusApi};
use self::root::NodeRoot;
use self::service::AgentEnv;
use self::supervisor::{ProcessSupervisor, Supervisor, SystemdSupervisor};

/// How services are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SupervisorKind {
    /// Child processes of the agent, output in ROOT/logs/NAME.log.
    Process,
    /// systemd units shipped in the packages (`systemctl link`, `restart`).
    Systemd,
}

/// Run the node agent.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    theseus agent --node-name node-1 --labels pool=web,theseus.dev/zone=a \\\n      \
    --trusted-key \"$(cat repo.key.pub)\" --allowed-repository http://packages.example/stable/\n  \
    theseus agent --node-name node-1 --trust-config /etc/theseus/trust.yaml\n  \
    theseus agent --node-name dev-1 --root /tmp/dev-1 --listen 127.0.0.1:7071 --env PORT=8081 \\\n      \
    --allow-unsigned   # development only\n\n\
    An agent refuses every target until it trusts a key (--trusted-key) and the target's\n\
    repository is allowed (--allowed-repository); --allow-unsigned is for development only.\n\
    It reports --address (else its first non-loopback IPv4 address, else its host name) as\n\
    status.address: where a Cluster's services on this node are published for discovery.")]
pub struct AgentArgs {
    /// The node's name; also the name of its NodeInstall.
    #[arg(long, env = "THESEUS_NODE_NAME")]
    pub node_name: String,

    /// The node root (packages, generations, journal).
    #[arg(long, env = "THESEUS_ROOT", default_value = "/var/lib/theseus")]
    pub root: PathBuf,

    /// Labels for the NodeInstall, `k=v,k2=v2` (repeatable); they win over
    /// the labels of a Kubernetes Node of the same name.
    #[arg(long, value_name = "K=V,…")]
    pub labels: Vec<String>,

    /// Address of the local HTTP API.
    #[arg(long, env = "THESEUS_AGENT_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,

    /// Bearer token of the local HTTP API; required when --listen is not a
    /// loopback address.
    #[arg(long, env = "THESEUS_AGENT_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// How services are run.
    #[arg(long, value_enum, default_value_t = SupervisorKind::Process)]
    pub supervisor: SupervisorKind,

    /// A variable for every service, also substituted as ${KEY} in start
    /// argv and health checks (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Seconds between heartbeats and supervision passes.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub heartbeat_seconds: u64,

    /// The cloud instance id to report (NodePools set it).
    #[arg(long, env = "THESEUS_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// The address peers reach this node at (an IP address or a host
    /// name), reported as the NodeInstall's status.address; a Cluster's
    /// services are published in the discovery tree at it. Default: the
    /// host's first non-loopback IPv4 address (the source address of its
    /// default route), else its host name.
    #[arg(long, env = "THESEUS_NODE_ADDRESS", value_name = "ADDRESS", value_parser = address::parse)]
    pub address: Option<String>,

    #[command(flatten)]
    pub trust: trust::TrustArgs,

    /// The systemctl program, for --supervisor systemd.
    #[arg(long, default_value = "systemctl", hide = true)]
    pub systemctl: PathBuf,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains('\0') => Ok((k.into(), v.into())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Runs the agent until SIGINT or SIGTERM. Services run by the process
/// supervisor are stopped on the way out; systemd units are left running.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    api::check_bind(args.listen, args.api_token.as_deref())?;
    let labels = register::parse_labels(&args.labels)?;
    let policy = trust_policy(&args)?;
    let listener = api::bind(args.listen).await?;
    let root_path = args.root.clone();
    let root = tokio::task::spawn_blocking(move || Root::open(&root_path)).await??;
    let bound = listener.local_addr()?;
    let (client, ni, reporter) = register_node(&args, &labels, bound).await?;
    let stop = CancellationToken::new();
    let (desired_tx, desired_rx) = watch::channel(Desired::of(&ni));
    let (activate_tx, activate_rx) = mpsc::channel(4);
    let switcher = switcher(&args, NodeRoot::new(root), policy, &client);
    let router = api::router(api::ApiState {
        root: switcher.root.clone(),
        token: args.api_token.clone(),
        activate: activate_tx,
        fetch: switcher.fetch.clone(),
        policy: switcher.policy.clone(),
        versions: switcher.versions.clone(),
        services: Some(api::Services {
            node: args.node_name.clone(),
            switcher: switcher.clone(),
        }),
    });
    let tick = Duration::from_secs(args.heartbeat_seconds);
    let hooks = hooks::Hooks::new(&switcher.root, &switcher.env, &reporter);
    let chores = chores::Chores {
        node: args.node_name.clone(),
        env: switcher.env.clone(),
        reporter: reporter.clone(),
        desired: desired_rx.clone(),
        fetching: chores::Fetching {
            policy: switcher.policy.clone(),
            options: switcher.fetch.clone(),
            versions: switcher.versions.clone(),
        },
    };
    let agent = reconcile::Agent {
        node: args.node_name.clone(),
        switcher,
        reporter: reporter.clone(),
        // A target refused as untrusted is tried again after a restart,
        // which is how a changed trust configuration takes effect; so is
        // one whose Secrets could not be read (also retried meanwhile).
        failed: ni
            .status
            .as_ref()
            .filter(|s| {
                let reason = s.reason.as_deref();
                reason != Some(trust::UNTRUSTED) && reason != Some(secrets::SECRET_UNAVAILABLE)
            })
            .and_then(|s| s.failed_hash.clone()),
        reason: None,
        retry_at: None,
        prefetched: None,
        desired: desired_rx,
        requests: activate_rx,
        tick,
        hooks,
    };
    let tasks = [
        tokio::spawn(chores.run(stop.clone())),
        tokio::spawn(register::watch_target(
            client.clone(),
            args.node_name.clone(),
            labels,
            desired_tx,
            stop.clone(),
        )),
        tokio::spawn(status_writer(
            &client,
            &args.node_name,
            reporter,
            tick,
            &stop,
        )),
    ];
    let server = tokio::spawn(api::serve(listener, router, stop.clone()));
    let stopper = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stopper.cancel();
    });
    let services = agent.switcher.clone();
    agent.run(stop.clone()).await;
    stop.cancel();
    if args.supervisor == SupervisorKind::Process {
        services.stop_active().await;
    }
    for task in tasks {
        let _ = task.await;
    }
    server.await??;
    Ok(())
}

/// Registers the node's NodeInstall and starts its status from what the
/// API holds, with this agent's version, instance and address.
async fn register_node(
    args: &AgentArgs,
    labels: &BTreeMap<String, String>,
    api: SocketAddr,
) -> anyhow::Result<(Client, NodeInstall, Reporter)> {
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot build a Kubernetes client (check KUBECONFIG or the service account): {e}"
        )
    })?;
    let ni = register::register(&client, &args.node_name, labels).await?;
    let address = address::resolve(args.address.as_deref());
    let status = NodeInstallStatus {
        agent_version: Some(env!("CARGO_PKG_VERSION").into()),
        instance_id: args.instance_id.clone(),
        api_endpoint: Some(address::api_endpoint(api, address.as_deref())),
        address,
        ..ni.status.clone().unwrap_or_default()
    };
    Ok((client, ni, Reporter::new(status)))
}

/// The one task that writes the node's status: the latest the reporter
/// holds, on change and every `tick`.
fn status_writer(
    client: &Client,
    node: &str,
    reporter: Reporter,
    tick: Duration,
    stop: &CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let status_api = StatusApi::new(client, node);
    register::write_status(reporter, tick, stop.clone(), move |status| {
        let status_api = status_api.clone();
        async move { status_api.write(status).await }
    })
}

/// The trust policy from the arguments, warning when it refuses everything.
fn trust_policy(args: &AgentArgs) -> anyhow::Result<Arc<crate::pkg::trust::Policy>> {
    let policy = Arc::new(args.trust.policy()?);
    if policy.trusted_keys().is_empty() && !policy.allow_unsigned() {
        tracing::warn!(
            "this agent trusts no signing key and will refuse every target: pass --trusted-key (or --trust-config)"
        );
    }
    tracing::info!("{}", policy.summary());
    Ok(policy)
}

/// What switches the node's package: its root, its service supervisor,
/// the environment services see, and the trust checks.
fn switcher(
    args: &AgentArgs,
    root: NodeRoot,
    policy: Arc<crate::pkg::trust::Policy>,
    client: &kube::Client,
) -> Switcher {
    let run_dir = root.path().join("run");
    let supervisor: Arc<dyn Supervisor> = match args.supervisor {
        SupervisorKind::Process => Arc::new(ProcessSupervisor::new(&run_dir)),
        SupervisorKind::Systemd => Arc::new(SystemdSupervisor::new(&args.systemctl, &run_dir)),
    };
    Switcher {
        env: AgentEnv::new(&args.node_name, root.path(), &args.env),
        versions: AcceptedVersions::under(root.path()),
        root,
        supervisor,
        fetch: FetchOptions::default(),
        policy,
        secrets: Some(client.clone()),
        restarts: observe::Restarts::default(),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
