//! Stand-ins for the rest of a rollout test: a package repository served by
//! `theseus repo serve`, a `theseus operator` child process, and a fleet of
//! simulated agents that play their part on NodeInstalls (switch after a
//! delay, fail chosen set hashes, heartbeat).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use theseus::api::conditions::{self, Observed};
use theseus::api::{NodeInstall, NodeInstallStatus, NodePhase};
use tokio::task::JoinHandle;

use super::{TestbedEnv, free_port, theseus};

/// The label that ties a test's objects to its operator (`--selector`).
pub const RUN_LABEL: &str = "theseus.dev/test-run";

/// A child process killed (SIGKILL) when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `theseus operator` child process confined to one test's objects.
pub struct Operator {
    child: Option<ChildGuard>,
    /// The HTTP endpoint base, e.g. `http://127.0.0.1:PORT`.
    pub http: String,
    args: Vec<String>,
    env: TestbedEnv,
    log: PathBuf,
    extra_env: Vec<(String, String)>,
}

impl Operator {
    /// Starts an operator with its lease and halt in `namespace`, managing
    /// only objects labelled `RUN_LABEL=run`.
    pub fn start(
        env: &TestbedEnv,
        namespace: &str,
        run: &str,
        identity: &str,
        log_dir: &Path,
    ) -> Operator {
        Self::start_with(env, namespace, run, identity, log_dir, &[], &[])
    }

    /// Like [`Operator::start`], with extra arguments and environment.
    pub fn start_with(
        env: &TestbedEnv,
        namespace: &str,
        run: &str,
        identity: &str,
        log_dir: &Path,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Operator {
        let port = free_port();
        let mut args = vec![
            "operator".into(),
            "--namespace".into(),
            namespace.into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--halt-token".into(),
            "test-token".into(),
            "--selector".into(),
            format!("{RUN_LABEL}={run}"),
            "--identity".into(),
            identity.into(),
            "--lease-seconds".into(),
            "4".into(),
            "--stale-after-seconds".into(),
            "30".into(),
        ];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let mut op = Operator {
            child: None,
            http: format!("http://127.0.0.1:{port}"),
            args,
            env: env.clone(),
            log: log_dir.join(format!("operator-{identity}.log")),
            extra_env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        op.restart();
        op
    }

    /// Kills the process with SIGKILL (no clean-up of any kind).
    pub fn kill(&mut self) {
        self.child = None;
    }

    /// Starts the process again (after [`Operator::kill`]).
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .env
            .command(theseus())
            .args(&self.args)
            .env("RUST_LOG", "theseus=debug")
            .envs(self.extra_env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(ChildGuard(child));
    }

    /// The exit status, if the process has exited (e.g. at a failpoint).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.0.try_wait().ok().flatten())
    }

    /// POSTs to `/halt` or `/resume` with the token.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, String) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.http))
            .bearer_auth("test-token")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

/// What the simulated agents did.
#[derive(Debug, Default)]
pub struct FleetLog {
    /// (node, set hash) → how many times the node switched to it.
    pub activations: BTreeMap<(String, String), usize>,
}

/// Simulated agents for `n` NodeInstalls.
pub struct Fleet {
    /// The node names.
    pub names: Vec<String>,
    /// What happened.
    pub log: Arc<Mutex<FleetLog>>,
    /// Set hashes whose activation fails (the node rolls back).
    pub failing: Arc<Mutex<BTreeSet<String>>>,
    task: JoinHandle<()>,
    api: Api<NodeInstall>,
}

impl Fleet {
    /// Creates the NodeInstalls (labelled with the run) and starts playing
    /// their agents: each switch takes `switch_time`.
    pub async fn start(
        client: &Client,
        run: &str,
        prefix: &str,
        n: usize,
        switch_time: Duration,
    ) -> Fleet {
        let api: Api<NodeInstall> = Api::all(client.clone());
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:03}")).collect();
        for name in &names {
            let node: NodeInstall = serde_json::from_value(json!({
                "apiVersion": "theseus.dev/v1alpha1", "kind": "NodeInstall",
                "metadata": { "name": name, "labels": { RUN_LABEL: run } },
                "spec": {}
            }))
            .unwrap();
            api.create(&PostParams::default(), &node).await.unwrap();
            write_status(
                &api,
                name,
                NodeInstallStatus {
                    heartbeat: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        Timestamp::now(),
                    )),
                    ..Default::default()
                },
            )
            .await;
        }
        let log = Arc::new(Mutex::new(FleetLog::default()));
        let failing = Arc::new(Mutex::new(BTreeSet::new()));
        let task = tokio::spawn(play(
            api.clone(),
            run.to_owned(),
            switch_time,
            log.clone(),
            failing.clone(),
        ));
        Fleet {
            names,
            log,
            failing,
            task,
            api,
        }
    }

    /// Lists the fleet's NodeInstalls.
    pub async fn nodes(&self) -> Vec<NodeInstall> {
        let mut nodes = Vec::new();
        for name in &self.names {
            nodes.push(self.api.get(name).await.unwrap());
        }
        nodes
    }

    /// Stops the agents and deletes the NodeInstalls.
    pub async fn remove(self) {
        self.task.abort();
        for name in &self.names {
            let _ = self.api.delete(name, &DeleteParams::default()).await;
        }
    }
}

/// Whether a node is unavailable as the rollout rules define it: switching
/// (target set, not active, not rolled back from it).
pub fn unavailable(node: &NodeInstall) -> bool {
    let target = node.spec.target.as_ref().map(|t| t.set_hash.as_str());
    let status = node.status.clone().unwrap_or_default();
    target.is_some()
        && target != status.active_hash.as_deref()
        && target != status.failed_hash.as_deref()
}

async fn write_status(api: &Api<NodeInstall>, name: &str, status: NodeInstallStatus) {
    let patch =
        json!({ "apiVersion": "theseus.dev/v1alpha1", "kind": "NodeInstall", "status": status });
    let _ = api
        .patch_status(
            name,
            &PatchParams::apply("fake-agent").force(),
            &Patch::Apply(&patch),
        )
        .await;
}

async fn play(
    api: Api<NodeInstall>,
    run: String,
    switch_time: Duration,
    log: Arc<Mutex<FleetLog>>,
    failing: Arc<Mutex<BTreeSet<String>>>,
) {
    let mut started: BTreeMap<String, (String, Instant)> = BTreeMap::new();
    let mut last_beat = Instant::now() - Duration::from_secs(60);
    loop {
        let Ok(list) = api
            .list(&ListParams::default().labels(&format!("{RUN_LABEL}={run}")))
            .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let beat = last_beat.elapsed() > Duration::from_secs(5);
        if beat {
            last_beat = Instant::now();
        }
        for node in list.items {
            let name = node.name_any();
            let mut status = node.status.clone().unwrap_or_default();
            let now = Timestamp::now();
            let target = node.spec.target.as_ref().map(|t| t.set_hash.clone());
            let mut changed = beat;
            if let Some(hash) = target.filter(|h| {
                Some(h) != status.active_hash.as_ref() && Some(h) != status.failed_hash.as_ref()
            }) {
                let entry = started
                    .entry(name.clone())
                    .or_insert_with(|| (hash.clone(), Instant::now()));
                if entry.0 != hash {
                    *entry = (hash.clone(), Instant::now());
                }
                if entry.1.elapsed() >= switch_time {
                    started.remove(&name);
                    if failing.lock().unwrap().contains(&hash) {
                        status.phase = NodePhase::RolledBack;
                        status.failed_hash = Some(hash);
                        status.message = Some("health check failed; rolled back".into());
                    } else {
                        status.phase = NodePhase::Active;
                        status.active_hash = Some(hash.clone());
                        status.failed_hash = None;
                        *log.lock()
                            .unwrap()
                            .activations
                            .entry((name.clone(), hash))
                            .or_default() += 1;
                        conditions::set(
                            &mut status.conditions,
                            Observed::new("Ready", false, "Switching", "switching"),
                            None,
                            now,
                        );
                        conditions::set(
                            &mut status.conditions,
                            Observed::new("Ready", true, "Active", "target active"),
                            None,
                            now,
                        );
                    }
                    changed = true;
                } else if status.phase != NodePhase::Fetching {
                    status.phase = NodePhase::Fetching;
                    changed = true;
                }
            }
            if changed {
                status.heartbeat = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
                write_status(&api, &name, status).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
