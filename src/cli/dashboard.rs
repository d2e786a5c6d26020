//! `theseus dashboard`: the operator's dashboard, served on this machine
//! against any kubeconfig, as the kubeconfig's user.

use std::net::SocketAddr;

use clap::Args;
use rand::RngCore;

use crate::dashboard::{Dashboard, Mode};

/// Serve the dashboard on this machine as the kubeconfig's user (no sign-in:
/// whoever reaches the address acts as that user, so keep it on loopback).
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    theseus dashboard                          # http://127.0.0.1:8081/ui/\n  \
    theseus dashboard --listen 127.0.0.1:9000 --namespace theseus-system\n  \
    KUBECONFIG=~/.kube/prod theseus dashboard --discovery-etcd http://etcd.internal:2379")]
pub struct DashboardArgs {
    /// Address to serve on. Port 0 picks a free port (printed).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// The operator's namespace (where the halt ConfigMap lives).
    #[arg(long, env = "POD_NAMESPACE", default_value = "theseus-system")]
    pub namespace: String,

    /// Only show objects whose labels match this selector (like the
    /// operator's --selector).
    #[arg(long, env = "THESEUS_SELECTOR")]
    pub selector: Option<String>,

    /// Do not read the discovery tree (the services page then shows only
    /// the ServiceGroups).
    #[arg(long)]
    pub no_discovery: bool,

    /// The discovery etcd, for the services page.
    #[command(flatten)]
    pub discovery: crate::discovery::EtcdArgs,

    /// The bearer token of the agents' local API (their --api-token), for
    /// a node's services and logs; the agents must be reachable from here.
    #[arg(long, env = "THESEUS_AGENT_TOKEN", hide_env_values = true)]
    pub agent_token: Option<String>,
}

/// Runs `theseus dashboard` until interrupted.
pub async fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("cannot build a Kubernetes client (check KUBECONFIG): {e}"))?;
    let user = crate::dashboard::auth::whoami(&client).await.map_err(|e| {
        anyhow::anyhow!("the API server does not answer as the kubeconfig's user: {e}")
    })?;
    let mut csrf_key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut csrf_key);
    let dashboard = Dashboard::new(
        Mode::Kubeconfig { client, csrf_key },
        &args.namespace,
        args.selector.clone(),
        (!args.no_discovery).then(|| args.discovery.config()),
    )
    .with_agent_token(args.agent_token.clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let address = listener.local_addr()?;
    println!("dashboard for {user}: http://{address}/ui/  (Ctrl-C stops it)");
    axum::serve(listener, crate::dashboard::router(dashboard))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| anyhow::anyhow!("the dashboard stopped: {e}"))
}
