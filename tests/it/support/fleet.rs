//! Stand-ins for the rest of a rollout test: a package repository served by
//! `theseus repo serve`, a `theseus operator` child process, and a fleet of
//! simulated agents that play their part on NodeInstalls (switch after a
//! delay, fail chosen set hashes, heartbeat).
//!
//! The fleet is cheap enough for thousands of nodes in one process: one
//! watch of the fleet's NodeInstalls stands for every agent's own watch of
//! its node (a real agent watches only its own NodeInstall; the events each
//! would see are the same), the NodeInstalls are created [`CONCURRENCY`] at
//! a time, and each node heartbeats every [`HEARTBEAT`] at its own phase
//! (the fleet's heartbeats spread evenly over the period, as independent
//! agents' are, with at most [`CONCURRENCY`] writes in flight), not all at
//! once after a LIST.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use theseus::api::conditions::{self, Observed};
use theseus::api::{NodeInstall, NodeInstallStatus, NodePhase};
use tokio::task::JoinHandle;

use super::{TestbedEnv, theseus};

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
        // Port 0: the operator binds a free port and logs it, so that
        // concurrent tests never race for one.
        let mut args = vec![
            "operator".into(),
            "--namespace".into(),
            namespace.into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
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
        // Discovery stays off unless the test gives it an etcd.
        if !extra_args.iter().any(|a| a.starts_with("--discovery-etcd")) {
            args.push("--no-discovery".into());
        }
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let mut op = Operator {
            child: None,
            http: String::new(),
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

    /// The process id of the running operator.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the operator runs").0.id()
    }

    /// Kills the process with SIGKILL (no clean-up of any kind).
    pub fn kill(&mut self) {
        self.child = None;
    }

    /// Stops the process with SIGTERM, as Kubernetes does, and waits for it
    /// to exit.
    pub fn terminate(&mut self) {
        if let Some(mut guard) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &guard.0.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(status.success(), "the operator was running");
            let exit = guard.0.wait().expect("the operator exits");
            assert!(
                exit.success(),
                "the operator exits cleanly on SIGTERM: {exit}"
            );
        }
    }

    /// Starts the process again (after [`Operator::kill`]).
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let offset = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
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
        if let Some(addr) = self.bound_address(offset) {
            self.http = format!("http://{addr}");
        }
    }

    /// The address the process logs as bound after `offset` of its log,
    /// waiting up to 60 s; none when it exits first (a failpoint test).
    fn bound_address(&mut self, offset: usize) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let fresh = strip_ansi(log.get(offset..).unwrap_or_default());
            let addr = fresh
                .lines()
                .filter(|l| l.contains("operator starting"))
                .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("listen=")));
            if let Some(addr) = addr {
                return Some(addr.to_owned());
            }
            if self.try_wait().is_some() {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "the operator did not start serving in 60 s; its log: {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

impl Drop for Operator {
    /// A failing test shows the end of its operator's log with the failure,
    /// so a CI run that keeps no files still says what the operator did.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let log = strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default());
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(60)..];
        eprintln!(
            "--- last {} lines of {} ---\n{}\n--- end of the operator log ---",
            tail.len(),
            self.log.display(),
            tail.join("\n")
        );
    }
}

/// `text` without its terminal colour codes (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How many API requests the fleet's set-up, heartbeats and removal have in
/// flight at most.
pub const CONCURRENCY: usize = 32;

/// How often each simulated agent heartbeats (the agent's default).
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// What the simulated agents did.
#[derive(Debug, Default)]
pub struct FleetLog {
    /// (node, set hash) → how many times the node switched to it.
    pub activations: BTreeMap<(String, String), usize>,
    /// Each switch, from the target first seen to Active written.
    #[allow(dead_code)] // read by the benchmarks
    pub switches: Vec<Switch>,
}

/// One node's switch to a set, as its simulated agent saw it.
#[derive(Debug, Clone)]
#[allow(dead_code)] // read by the benchmarks
pub struct Switch {
    /// The node.
    pub node: String,
    /// When the agent saw the target (the watch event arrived).
    pub began: Instant,
    /// When its `Active` status was written.
    pub ended: Instant,
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
    heartbeat: JoinHandle<()>,
    api: Api<NodeInstall>,
}

impl Fleet {
    /// Creates the NodeInstalls (labelled with the run), [`CONCURRENCY`] at
    /// a time, and starts playing their agents: each switch takes
    /// `switch_time`.
    pub async fn start(
        client: &Client,
        run: &str,
        prefix: &str,
        n: usize,
        switch_time: Duration,
    ) -> Fleet {
        use futures::StreamExt;
        let api: Api<NodeInstall> = Api::all(client.clone());
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:03}")).collect();
        futures::stream::iter(&names)
            .for_each_concurrent(CONCURRENCY, |name| {
                let api = api.clone();
                async move {
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
            })
            .await;
        let log = Arc::new(Mutex::new(FleetLog::default()));
        let failing = Arc::new(Mutex::new(BTreeSet::new()));
        let task = tokio::spawn(play(
            api.clone(),
            run.to_owned(),
            switch_time,
            log.clone(),
            failing.clone(),
        ));
        let heartbeat = tokio::spawn(heartbeat(api.clone(), names.clone()));
        Fleet {
            names,
            log,
            failing,
            task,
            heartbeat,
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

    /// Stops the agents and deletes the NodeInstalls, [`CONCURRENCY`] at a
    /// time.
    pub async fn remove(self) {
        use futures::StreamExt;
        self.task.abort();
        self.heartbeat.abort();
        let api = &self.api;
        futures::stream::iter(&self.names)
            .for_each_concurrent(CONCURRENCY, |name| async move {
                let _ = api.delete(name, &DeleteParams::default()).await;
            })
            .await;
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
    let patch = json!({ "status": status });
    let _ = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await;
}

/// Plays every agent: reacts to target changes as they are watched (as a
/// real agent does) and switches after `switch_time`.
async fn play(
    api: Api<NodeInstall>,
    run: String,
    switch_time: Duration,
    log: Arc<Mutex<FleetLog>>,
    failing: Arc<Mutex<BTreeSet<String>>>,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let selector = format!("{RUN_LABEL}={run}");
    let switching: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let events = watcher(api.clone(), watcher::Config::default().labels(&selector))
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(events);
    while let Some(Ok(node)) = events.next().await {
        let name = node.name_any();
        let status = node.status.clone().unwrap_or_default();
        let Some(hash) = node.spec.target.as_ref().map(|t| t.set_hash.clone()) else {
            continue;
        };
        if Some(&hash) == status.active_hash.as_ref() || Some(&hash) == status.failed_hash.as_ref()
        {
            // The watch has caught up with the switch's end.
            let mut switching = switching.lock().unwrap();
            if switching.get(&name) == Some(&hash) {
                switching.remove(&name);
            }
            continue;
        }
        let began = Instant::now();
        if switching.lock().unwrap().insert(name.clone(), hash.clone()) == Some(hash.clone()) {
            // Already switching to it, or switched and this event is older
            // than the switch's end (a heartbeat written meanwhile).
            continue;
        }
        let (api, log, failing, switching) =
            (api.clone(), log.clone(), failing.clone(), switching.clone());
        tokio::spawn(async move {
            let mut status = status;
            status.phase = NodePhase::Fetching;
            write_status(&api, &name, status.clone()).await;
            tokio::time::sleep(switch_time).await;
            if switching.lock().unwrap().get(&name) != Some(&hash) {
                return; // the target changed meanwhile
            }
            finish(&mut status, &hash, failing.lock().unwrap().contains(&hash));
            write_status(&api, &name, status).await;
            if failing.lock().unwrap().contains(&hash) {
                return;
            }
            let ended = Instant::now();
            let mut log = log.lock().unwrap();
            *log.activations.entry((name.clone(), hash)).or_default() += 1;
            log.switches.push(Switch {
                node: name,
                began,
                ended,
            });
        });
    }
}

/// The status after a switch: Active on `hash`, or rolled back from it.
fn finish(status: &mut NodeInstallStatus, hash: &str, fails: bool) {
    let now = Timestamp::now();
    status.heartbeat = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
    if fails {
        status.phase = NodePhase::RolledBack;
        status.failed_hash = Some(hash.to_owned());
        status.message = Some("health check failed; rolled back".into());
        return;
    }
    status.phase = NodePhase::Active;
    status.active_hash = Some(hash.to_owned());
    status.failed_hash = None;
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

/// A heartbeat from every node every [`HEARTBEAT`], each at its own phase
/// (the nodes' heartbeats spread evenly over the period), at most
/// [`CONCURRENCY`] in flight: a merge patch of the heartbeat alone, so it
/// never overwrites a switch's report.
async fn heartbeat(api: Api<NodeInstall>, names: Vec<String>) {
    if names.is_empty() {
        return;
    }
    let gap = (HEARTBEAT / names.len() as u32).max(Duration::from_micros(100));
    let mut tick = tokio::time::interval(gap);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    for name in names.iter().cycle() {
        tick.tick().await;
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let (api, name) = (api.clone(), name.clone());
        tokio::spawn(async move {
            let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now());
            let patch = json!({ "status": { "heartbeat": now } });
            let _ = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            drop(slot);
        });
    }
}
