//! `theseus operator`: starts the controllers under leader election and
//! serves the HTTP endpoints.

pub mod fence;
pub mod http;
mod lead;
pub mod leader;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::leader::{Elector, LeaseConfig};
use crate::shared::halt::HaltStore;
use crate::shared::metrics::Metrics;
use crate::shared::stores::{Nodes, Stores};
use crate::shared::{MANAGER, Shared};

/// Run the Theseus operator: the PackageSet, PackageRepository, ServiceGroup
/// and NodePool controllers, under leader election.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    theseus operator --namespace theseus-system\n  \
    theseus operator --halt-token \"$TOKEN\" --listen 127.0.0.1:8080   # a local run")]
pub struct OperatorArgs {
    /// Namespace of the leader Lease and the halt ConfigMap.
    #[arg(long, env = "POD_NAMESPACE", default_value = "theseus-system")]
    pub namespace: String,

    /// Address of the HTTP endpoints (/healthz, /readyz, /metrics, /halt,
    /// /resume). Port 0 picks a free port; the log's "operator starting"
    /// line names the address bound.
    #[arg(long, env = "THESEUS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Secret (in --namespace) whose `token` key is the bearer token of
    /// /halt and /resume.
    #[arg(long, env = "THESEUS_HALT_TOKEN_SECRET", conflicts_with = "halt_token")]
    pub halt_token_secret: Option<String>,

    /// The bearer token of /halt and /resume, for local runs. Without a token
    /// the two endpoints are disabled.
    #[arg(long, env = "THESEUS_HALT_TOKEN", hide_env_values = true)]
    pub halt_token: Option<String>,

    /// This replica's identity in the leader Lease. Default: the pod name
    /// (POD_NAME) or host name and process id.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Name of the leader Lease.
    #[arg(long, default_value = "theseus-operator")]
    pub lease_name: String,

    /// Seconds a leader's lease stays valid without renewal; another replica
    /// takes over within this time after the leader dies.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    pub lease_seconds: u64,

    /// A NodeInstall whose heartbeat is older than this many seconds counts
    /// as unavailable.
    #[arg(long, default_value_t = 60)]
    pub stale_after_seconds: u64,

    /// Only manage PackageSets, PackageRepositories, NodeInstalls, NodePools
    /// and ServiceGroups whose labels match this selector (e.g. `fleet=eu`),
    /// so that several operators can share a cluster, each with its own
    /// objects.
    #[arg(long, env = "THESEUS_SELECTOR")]
    pub selector: Option<String>,

    /// Do not run the ServiceGroup controller (for clusters without a
    /// discovery etcd).
    #[arg(long)]
    pub no_discovery: bool,

    /// The discovery etcd the ServiceGroup controller publishes into.
    #[command(flatten)]
    pub discovery: crate::discovery::EtcdArgs,

    /// Directory for local state (the Local node provider's agent roots).
    #[arg(
        long,
        env = "THESEUS_STATE_DIR",
        default_value = "/var/lib/theseus-operator"
    )]
    pub state_dir: PathBuf,

    /// This cluster's name in the `theseus.dev/cluster` tag of the EC2
    /// instances its NodePools launch; instances of other clusters are never
    /// touched.
    #[arg(long, env = "THESEUS_CLUSTER_NAME", default_value = "theseus")]
    pub cluster_name: String,

    /// Seconds during which an instance a NodePool did not record is left
    /// alone (EC2 describe is eventually consistent); after that, an
    /// unrecorded instance carrying the pool's tags is an orphan and is
    /// terminated.
    #[arg(long, default_value_t = 600)]
    pub instance_grace_seconds: u64,

    /// Whom the agents of Local NodePools act as: `operator` (they inherit
    /// the operator's credentials) or `service-account` (each node its own
    /// ServiceAccount, --node-identity-prefix+NODE in
    /// --node-identity-namespace, created with the node and deleted with
    /// it; the admission policy confines it to its node).
    #[arg(
        long,
        env = "THESEUS_LOCAL_AGENT_IDENTITY",
        value_enum,
        default_value = "operator"
    )]
    pub local_agent_identity: crate::nodepool::identity::Mode,

    /// Namespace of the per-node ServiceAccounts of local agents (the
    /// policy's `agent.identity.serviceAccountNamespace`).
    #[arg(long, default_value = "theseus-nodes")]
    pub node_identity_namespace: String,

    /// Node NODE's ServiceAccount is this prefix followed by NODE.
    #[arg(long, default_value = "theseus-node-")]
    pub node_identity_prefix: String,

    /// The secret key (a file from `theseus repo keygen`) that signs the
    /// index of the generated configuration packages served at
    /// /config-repository/. Agents trust its public key like any
    /// repository's. Without it the index is unsigned.
    #[arg(long, env = "THESEUS_CONFIG_SIGNING_KEY")]
    pub config_signing_key: Option<PathBuf>,

    /// The URL nodes reach /config-repository/ at (e.g.
    /// http://theseus-operator.theseus-system:8080/config-repository),
    /// shown in each ConfigBundle's status. Default: the listen address.
    #[arg(long, env = "THESEUS_CONFIG_REPOSITORY_URL")]
    pub config_repository_url: Option<String>,

    /// Seconds a generated configuration package that nothing uses (no
    /// bundle's last render, no node's target, active set or cache) is
    /// kept before it is deleted.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub config_gc_grace_seconds: u64,

    /// How the dashboard under /ui/ knows its users. `token`: each user's
    /// bearer token, pasted once on the login page (kept in an HttpOnly
    /// cookie) or sent by an authenticating proxy in `Authorization`.
    /// `proxy`: a trusted authenticating proxy names the user in
    /// X-Forwarded-User and X-Forwarded-Groups and the operator
    /// impersonates them (it needs the `impersonate` verb; only that proxy
    /// may reach --listen). `off`: no dashboard. Either way every read and
    /// change is made as the user, so RBAC decides.
    #[arg(long, env = "THESEUS_UI_AUTH", value_enum, default_value = "token")]
    pub ui_auth: UiAuth,

    /// The bearer token of the agents' local API (their --api-token): the
    /// dashboard reads a node's services, metrics and log tails from its
    /// agent at the endpoint the agent reports. Not needed for agents that
    /// listen on loopback without a token.
    #[arg(long, env = "THESEUS_AGENT_TOKEN", hide_env_values = true)]
    pub agent_token: Option<String>,

    /// The names of the cluster-wide objects tenants are bound to:
    /// ClusterRoles PREFIX-admin (owners), PREFIX-user (members) and
    /// PREFIX-catalog (both, cluster-wide), and the
    /// ValidatingAdmissionPolicy PREFIX. The Helm chart ships them as
    /// FULLNAME-tenant-… and passes its prefix.
    #[arg(long, default_value = crate::tenant::DEFAULT_PREFIX, value_parser = crate::tenant::parse_prefix)]
    pub tenant_prefix: String,
}

/// How the dashboard knows its users (`--ui-auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UiAuth {
    Token,
    Proxy,
    Off,
}

/// A controller: given the shared handle, runs until `stop` is cancelled.
/// Ending (or panicking) before that means it died: the operator then exits
/// non-zero.
pub type ControllerFn =
    Arc<dyn Fn(Shared, CancellationToken) -> BoxFuture<'static, ()> + Send + Sync>;

/// A controller and its name (in logs and `/readyz`).
#[derive(Clone)]
pub struct Controller {
    /// e.g. `packageset`.
    pub name: &'static str,
    /// Runs it.
    pub run: ControllerFn,
}

impl Controller {
    fn new(
        name: &'static str,
        run: impl Fn(Shared, CancellationToken) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Controller {
        Controller {
            name,
            run: Arc::new(run),
        }
    }
}

/// The controllers the operator runs while it leads, each with its typed
/// configuration built from `args` (and `config`, the generated
/// repository's key and URL).
pub fn controllers(args: &OperatorArgs, config: crate::configgen::Config) -> Vec<Controller> {
    let stale_after = Duration::from_secs(args.stale_after_seconds);
    let generated = crate::api::PackageSource {
        url: config.url.clone().unwrap_or_default(),
        public_keys: config
            .key
            .iter()
            .map(|k| crate::pkg::index::encode_key(k.verifying_key().as_bytes()))
            .collect(),
        packages: Vec::new(),
    };
    let rollout = crate::rollout::Config {
        stale_after,
        generated,
    };
    let nodepool = crate::nodepool::Config {
        state_dir: args.state_dir.clone(),
        cluster_name: args.cluster_name.clone(),
        instance_grace: Duration::from_secs(args.instance_grace_seconds),
        stale_after,
        local_identity: args.local_agent_identity,
        identity_namespace: args.node_identity_namespace.clone(),
        identity_prefix: args.node_identity_prefix.clone(),
    };
    let discovery = (!args.no_discovery).then(|| args.discovery.config());
    let apps = crate::apps::Config { stale_after };
    let tenants = crate::tenant::Config::with_prefix(&args.tenant_prefix);
    vec![
        Controller::new("packagerepository", crate::repository::run),
        Controller::new("packageset", move |shared, stop| {
            crate::rollout::controller::run(shared, rollout.clone(), stop)
        }),
        Controller::new("servicegroup", move |shared, stop| {
            crate::discovery::operator_controller(shared, discovery.clone(), stop)
        }),
        Controller::new("nodepool", move |shared, stop| {
            crate::nodepool::controller::run(shared, nodepool.clone(), stop)
        }),
        Controller::new("cluster", crate::cluster::run),
        Controller::new(crate::tenant::NAME, move |shared, stop| {
            crate::tenant::run(shared, tenants.clone(), stop)
        }),
        Controller::new("apps", move |shared, stop| {
            crate::apps::run(shared, apps.clone(), stop)
        }),
        Controller::new(crate::configgen::NAME, move |shared, stop| {
            crate::configgen::run(shared, config.clone(), stop)
        }),
    ]
}

/// Runs the operator until SIGINT or SIGTERM, or until one of its
/// controllers dies (an error: the process exits non-zero and is restarted).
pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let key = match &args.config_signing_key {
        Some(path) => Some(Arc::new(crate::pkg::index::read_secret_key(path).map_err(
            |e| anyhow::anyhow!("--config-signing-key: {e}; make one with `theseus repo keygen`"),
        )?)),
        None => None,
    };
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let Clients {
        client,
        fenced,
        elector,
        dashboard,
    } = clients(&args, &identity).await?;
    let token = halt_token(&client, &args).await?;
    let halt = HaltStore::new(client.clone(), &args.namespace);
    // One watch of NodeInstalls for every controller, from the start: a
    // replica that takes over has a warm cache.
    let shutdown = CancellationToken::new();
    let nodes = Nodes::watch(
        client.clone(),
        crate::shared::scoped(args.selector.as_deref()),
        shutdown.clone(),
    );
    let shared = Shared {
        client: fenced,
        metrics: Metrics::default(),
        halt: halt.clone(),
        reporter: Reporter {
            controller: MANAGER.into(),
            instance: Some(identity.clone()),
        },
        namespace: args.namespace.clone(),
        selector: args.selector.clone(),
        stores: Stores {
            nodes,
            ..Stores::default()
        },
    };
    let readiness = http::Readiness::not_yet("not connected to the API server yet");
    let config_repository =
        crate::configgen::store::Repository::new(client.clone(), &args.namespace, key.clone());
    let (listen, listener) = bind(args.listen).await?;
    let controllers = controllers(
        &args,
        crate::configgen::Config {
            key,
            url: Some(
                args.config_repository_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{listen}/config-repository")),
            ),
            grace: Duration::from_secs(args.config_gc_grace_seconds),
        },
    );
    serve_http(
        listener,
        http::HttpState {
            halt,
            token,
            metrics: shared.metrics.clone(),
            readiness: readiness.clone(),
            config_repository: Some(config_repository),
            dashboard: dashboard.map(|mode| {
                crate::dashboard::Dashboard::new(
                    mode,
                    &args.namespace,
                    args.selector.clone(),
                    (!args.no_discovery).then(|| args.discovery.config()),
                )
                .with_agent_token(args.agent_token.clone())
            }),
        },
    );
    info!(%listen, identity = %identity, "operator starting");

    client
        .apiserver_version()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the API server: {e}"))?;
    readiness.ready();

    let (leading_tx, leading) = watch::channel(false);
    let campaign = tokio::spawn(elector.clone().run(leading_tx));
    let signalled = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        signalled.cancel();
    });
    let spawn = |stop: &CancellationToken| -> Vec<(&'static str, BoxFuture<'static, ()>)> {
        controllers
            .iter()
            .map(|c| (c.name, guarded(c, shared.clone(), stop.child_token())))
            .collect()
    };
    let outcome = lead::lead(leading, spawn, &readiness, shutdown).await;
    // The controllers have stopped: hand the lease over at once.
    campaign.abort();
    release(&elector).await;
    outcome.map_err(|died| anyhow::anyhow!("{died}; exiting so that the operator is restarted"))
}

/// The operator's API clients and its lease.
struct Clients {
    /// Writes whether or not this replica leads (the elector, the halt).
    client: Client,
    /// Writes only while the lease is ours (every controller).
    fenced: Client,
    /// Campaigns for the lease.
    elector: Elector,
    /// How the dashboard authenticates, if it is on.
    dashboard: Option<crate::dashboard::Mode>,
}

async fn clients(args: &OperatorArgs, identity: &str) -> anyhow::Result<Clients> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| anyhow::anyhow!("cannot build a Kubernetes client (check KUBECONFIG or the in-cluster service account): {e}"))?;
    let client = Client::try_from(config.clone())
        .map_err(|e| anyhow::anyhow!("cannot build a Kubernetes client: {e}"))?;
    let dashboard = match args.ui_auth {
        UiAuth::Off => None,
        UiAuth::Token => Some(crate::dashboard::Mode::Tokens {
            base: config.clone(),
        }),
        UiAuth::Proxy => Some(crate::dashboard::Mode::Impersonate {
            base: config.clone(),
        }),
    };
    let elector = Elector::new(
        client.clone(),
        LeaseConfig {
            namespace: args.namespace.clone(),
            name: args.lease_name.clone(),
            identity: identity.to_owned(),
            duration: Duration::from_secs(args.lease_seconds),
        },
    );
    let fenced = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| anyhow::anyhow!("cannot build a Kubernetes client: {e}"))?
        .with_layer(&fence::FenceLayer(elector.leadership()))
        .build();
    Ok(Clients {
        client,
        fenced,
        elector,
        dashboard,
    })
}

/// Binds `listen`; returns the address bound (port 0 picks a free port).
async fn bind(listen: SocketAddr) -> anyhow::Result<(SocketAddr, tokio::net::TcpListener)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    Ok((listener.local_addr()?, listener))
}

/// Serves `/metrics`, the probes, the halt endpoints and the generated
/// repository on `listener`, in the background.
fn serve_http(listener: tokio::net::TcpListener, state: http::HttpState) {
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, http::router(state)).await {
            warn!(error = %err, "HTTP server stopped");
        }
    });
}

/// Gives the lease up, so that a standby takes over without waiting for it
/// to expire.
async fn release(elector: &Elector) {
    match elector.release().await {
        Ok(true) => info!("released the leader lease"),
        Ok(false) => {}
        Err(err) => {
            warn!(error = %err, "cannot release the leader lease; a standby takes over when it expires")
        }
    }
}

/// The controller's future, with the test-only failpoint
/// `NAME-controller-panics` (a build with failpoints panics it two seconds
/// after it starts).
fn guarded(c: &Controller, shared: Shared, stop: CancellationToken) -> BoxFuture<'static, ()> {
    let work = (c.run)(shared, stop);
    let step = format!("{}-controller-panics", c.name);
    Box::pin(async move {
        if crate::pkg::failpoint::armed(&step) {
            tokio::time::sleep(Duration::from_secs(2)).await;
            panic!("failpoint {step} reached");
        }
        work.await;
    })
}

async fn halt_token(client: &Client, args: &OperatorArgs) -> anyhow::Result<Option<Arc<str>>> {
    if let Some(token) = &args.halt_token {
        return Ok(Some(Arc::from(token.trim())));
    }
    let Some(name) = &args.halt_token_secret else {
        return Ok(None);
    };
    let secret = Api::<Secret>::namespaced(client.clone(), &args.namespace)
        .get(name)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read the halt token Secret {}/{name}: {e}",
                args.namespace
            )
        })?;
    let token = secret
        .data
        .and_then(|d| d.get("token").cloned())
        .ok_or_else(|| anyhow::anyhow!("Secret {}/{name} has no `token` key", args.namespace))?;
    let token = String::from_utf8(token.0)
        .map_err(|_| anyhow::anyhow!("Secret {}/{name}: `token` is not UTF-8", args.namespace))?;
    Ok(Some(Arc::from(token.trim())))
}

fn default_identity() -> String {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
    format!("{}-{}", host.trim(), std::process::id())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return ctrl_c.await.unwrap_or_default(),
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
