//! The agent's work beside its package set: the capability probes of
//! `spec.probes` and the storage tasks of `spec.storage`. They run in a
//! loop of their own (a staging step may take minutes; a switch must not
//! wait for it), each probe or task in a task of its own, and report into
//! `status.probes` and `status.storage`.
//!
//! - A probe runs once per measurement nonce; one that failed runs again
//!   every [`RETRY`] while the nonce stands (the writer of a shared
//!   filesystem nonce may simply not have written it yet).
//! - A storage task runs once per key; it is reported `Running` first.
//!   Everything it does can be done twice ([`super::storage`]), so one cut
//!   short by a restart is run again in full.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{
    ClaimedPath, DiscoveryEtcdProbe, EnsureDirectory, ExecProbe, HookState, NodeFilesystemProbe,
    NodeProbe, ProbeResult, StorageFetch, StorageResult, StorageRun, StorageTask,
};
use crate::pkg::accepted::AcceptedVersions;
use crate::pkg::disk::{remove_all, write_atomic};
use crate::pkg::fetch::{FetchOptions, Fetcher};
use crate::pkg::id::PackageId;
use crate::pkg::trust::{self, Policy};

use super::register::{Desired, Reporter};
use super::service::AgentEnv;
use super::storage::{self, StorageError};
use crate::pkg::vars::expand;

/// How soon a failed probe runs again while its nonce stands.
pub const RETRY: Duration = Duration::from_secs(10);
/// How long a reader of a shared filesystem waits for the writer's nonce.
const READ_WAIT: Duration = Duration::from_secs(3);
/// The most bytes of a program's output a message carries.
const MESSAGE_BYTES: usize = 1000;

/// The loop of probes and storage tasks.
pub struct Chores {
    /// The node name.
    pub node: String,
    /// The agent's `--env` variables, for `${VAR}` in paths and argv.
    pub env: AgentEnv,
    /// Writes the status.
    pub reporter: Reporter,
    /// The operator's spec, from the watch.
    pub desired: watch::Receiver<Desired>,
    /// What a storage task's packages are fetched with.
    pub fetching: Fetching,
}

/// The agent's own trust and fetch options, for a storage task's packages
/// (a stage's): the same keys, repositories and index versions as its
/// package sets.
#[derive(Clone, Debug)]
pub struct Fetching {
    /// The trust policy.
    pub policy: Arc<Policy>,
    /// Timeouts and retries.
    pub options: FetchOptions,
    /// The index versions accepted so far.
    pub versions: AcceptedVersions,
}

/// What a finished job reports.
enum Done {
    Probe(ProbeResult),
    Storage(StorageResult),
}

impl Chores {
    /// Runs until `stop`; jobs still running then are dropped (their
    /// programs killed), to be run again by the next agent.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut jobs: JoinSet<Done> = JoinSet::new();
        let mut running: BTreeSet<String> = BTreeSet::new();
        loop {
            let desired = self.desired.borrow_and_update().clone();
            self.prune(&desired);
            self.start(&desired, &mut jobs, &mut running);
            tokio::select! {
                changed = self.desired.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(RETRY) => {}
                Some(done) = jobs.join_next() => {
                    if let Ok(done) = done {
                        running.remove(&self.report(done));
                    }
                }
                () = stop.cancelled() => return,
            }
        }
    }

    /// Drops the results of probes and tasks the spec no longer holds.
    fn prune(&self, desired: &Desired) {
        let probes: BTreeSet<&str> = desired
            .probes
            .iter()
            .map(|p| p.capability.as_str())
            .collect();
        let tasks: BTreeSet<&str> = desired.storage.iter().map(|t| t.id.as_str()).collect();
        self.reporter.update(|s| {
            s.probes.retain(|r| probes.contains(r.capability.as_str()));
            s.storage.retain(|r| tasks.contains(r.id.as_str()));
        });
    }

    fn start(&self, desired: &Desired, jobs: &mut JoinSet<Done>, running: &mut BTreeSet<String>) {
        let status = self.reporter.snapshot();
        let now = Timestamp::now();
        for probe in &desired.probes {
            let job = format!("probe/{}", probe.capability);
            let last = status
                .probes
                .iter()
                .find(|r| r.capability == probe.capability);
            if running.contains(&job) || !probe_due(probe, last, now) {
                continue;
            }
            running.insert(job);
            let (probe, node, vars) = (probe.clone(), self.node.clone(), self.env.vars.clone());
            jobs.spawn(async move { Done::Probe(run_probe(&probe, &node, &vars).await) });
        }
        for task in &desired.storage {
            let job = format!("storage/{}", task.id);
            let last = status.storage.iter().find(|r| r.id == task.id);
            let finished = last.is_some_and(|r| r.key == task.key && r.state != HookState::Running);
            if running.contains(&job) || finished {
                continue;
            }
            running.insert(job);
            let started = StorageResult {
                id: task.id.clone(),
                key: task.key.clone(),
                state: HookState::Running,
                ..Default::default()
            };
            self.reporter
                .update(|s| put_storage(&mut s.storage, started));
            let (task, vars) = (task.clone(), self.env.vars.clone());
            let fetching = self.fetching.clone();
            jobs.spawn(async move { Done::Storage(run_storage(&task, &vars, &fetching).await) });
        }
    }

    /// Reports a finished job; returns its job name.
    fn report(&self, done: Done) -> String {
        match done {
            Done::Probe(result) => {
                let job = format!("probe/{}", result.capability);
                if !result.ok {
                    tracing::info!(node = %self.node, capability = %result.capability,
                        "probe failed: {}", result.message.as_deref().unwrap_or(""));
                }
                self.reporter.update(|s| {
                    s.probes.retain(|r| r.capability != result.capability);
                    s.probes.push(result);
                    s.probes.sort_by(|a, b| a.capability.cmp(&b.capability));
                });
                job
            }
            Done::Storage(result) => {
                let job = format!("storage/{}", result.id);
                match result.state {
                    HookState::Failed => tracing::warn!(node = %self.node, task = %result.id,
                        "storage task failed: {}", result.message.as_deref().unwrap_or("")),
                    _ => {
                        tracing::info!(node = %self.node, task = %result.id, created = ?result.created,
                        "storage task done")
                    }
                }
                self.reporter
                    .update(|s| put_storage(&mut s.storage, result));
                job
            }
        }
    }
}

fn put_storage(results: &mut Vec<StorageResult>, result: StorageResult) {
    results.retain(|r| r.id != result.id);
    results.push(result);
    results.sort_by(|a, b| a.id.cmp(&b.id));
}

/// Whether `probe` must run: never measured for its nonce, or failed at
/// least [`RETRY`] ago.
fn probe_due(probe: &NodeProbe, last: Option<&ProbeResult>, now: Timestamp) -> bool {
    match last {
        Some(r) if r.nonce == probe.nonce => {
            !r.ok && now.duration_since(r.measured.0).as_secs() >= RETRY.as_secs() as i64
        }
        _ => true,
    }
}

async fn run_probe(probe: &NodeProbe, node: &str, vars: &BTreeMap<String, String>) -> ProbeResult {
    let outcome = if let Some(fs) = &probe.shared_filesystem {
        filesystem(fs, &probe.capability, &probe.nonce, node, vars).await
    } else if let Some(exec) = &probe.exec {
        run_exec(exec, vars).await
    } else if let Some(etcd) = &probe.discovery_etcd {
        discovery_etcd(etcd).await
    } else {
        Err("the probe names no check this agent knows; upgrade the agent".into())
    };
    ProbeResult {
        capability: probe.capability.clone(),
        nonce: probe.nonce.clone(),
        ok: outcome.is_ok(),
        message: Some(outcome.unwrap_or_else(|e| e)),
        measured: Time(Timestamp::now()),
    }
}

fn expanded(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    expand(text, vars).map_err(|key| {
        format!("{text:?} uses ${{{key}}}, which this agent has no --env {key}=VALUE for")
    })
}

/// The shared-filesystem probe: the writer writes the nonce into
/// `PATH/.theseus-capability.CAPABILITY`; every node (the writer too)
/// must read it back, and with `writable` write and remove a file of its
/// own.
async fn filesystem(
    probe: &NodeFilesystemProbe,
    capability: &str,
    nonce: &str,
    node: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, String> {
    let path = expanded(&probe.path, vars)?;
    let dir = Path::new(&path).to_owned();
    let marker = dir.join(format!(".theseus-capability.{capability}"));
    let (writer, writable) = (probe.writer, probe.writable);
    let (nonce_w, node_o) = (nonce.to_owned(), node.to_owned());
    let marker_w = marker.clone();
    let setup = tokio::task::spawn_blocking(move || -> Result<u64, String> {
        use std::os::unix::fs::MetadataExt;
        let meta =
            std::fs::metadata(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if !meta.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
        if writer {
            write_atomic(&marker_w, nonce_w.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", marker_w.display()))?;
        }
        if writable {
            let own = dir.join(format!(".theseus-probe.{node_o}"));
            std::fs::write(&own, b"probe")
                .and_then(|()| std::fs::remove_file(&own))
                .map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
        }
        Ok(meta.dev())
    })
    .await
    .map_err(|e| format!("probe task failed: {e}"))??;
    let deadline = tokio::time::Instant::now() + READ_WAIT;
    loop {
        let found = tokio::fs::read_to_string(&marker).await;
        match found {
            Ok(text) if text == nonce => {
                return Ok(format!(
                    "read this measurement's nonce at {path} (device {setup})"
                ));
            }
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(text) => {
                return Err(format!(
                    "{path} is not the shared filesystem: {} holds nonce {:?}, not this measurement's {nonce:?} (written by the measurement's writer node)",
                    marker.display(),
                    text.chars().take(64).collect::<String>()
                ));
            }
            Err(e) => {
                return Err(format!(
                    "{path} is not the shared filesystem: cannot read {} ({e}), which the measurement's writer node wrote",
                    marker.display()
                ));
            }
        }
    }
}

async fn run_exec(probe: &ExecProbe, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let argv = probe
        .argv
        .iter()
        .map(|a| expanded(a, vars))
        .collect::<Result<Vec<_>, _>>()?;
    let timeout = Duration::from_secs(probe.timeout_seconds.max(1) as u64);
    run_program(&argv, None, &BTreeMap::new(), timeout).await
}

async fn discovery_etcd(probe: &DiscoveryEtcdProbe) -> Result<String, String> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(5));
    let attempt = async {
        let mut client = etcd_client::Client::connect(&probe.endpoints, Some(options)).await?;
        client.status().await
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(status)) => Ok(format!("etcd {} answered", status.version())),
        Ok(Err(e)) => Err(format!("cannot reach etcd at {:?}: {e}", probe.endpoints)),
        Err(_) => Err(format!(
            "etcd at {:?} did not answer within 10s",
            probe.endpoints
        )),
    }
}

/// Runs `argv` in its own process group with `env` added, in `cwd`;
/// killed (the whole group) after `timeout`. Ok: the tail of its output;
/// Err: why it failed, with the tail.
pub async fn run_program(
    argv: &[String],
    cwd: Option<&Path>,
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<String, String> {
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", argv[0]))?;
    let pgid = child.id();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            let tail = tail(&text);
            if output.status.success() {
                Ok(tail)
            } else {
                Err(format!("{:?} failed ({}): {tail}", argv[0], output.status))
            }
        }
        Ok(Err(e)) => Err(format!("cannot wait for {:?}: {e}", argv[0])),
        Err(_) => {
            if let Some(pgid) = pgid {
                super::hooks::kill_group(pgid).await;
            }
            Err(format!(
                "{:?} did not finish within {}s and was killed",
                argv[0],
                timeout.as_secs()
            ))
        }
    }
}

fn tail(text: &str) -> String {
    let text = text.trim();
    let start = text.len().saturating_sub(MESSAGE_BYTES);
    let start = (start..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

async fn run_storage(
    task: &StorageTask,
    vars: &BTreeMap<String, String>,
    fetching: &Fetching,
) -> StorageResult {
    let mut result = StorageResult {
        id: task.id.clone(),
        key: task.key.clone(),
        ..Default::default()
    };
    match storage_work(task, vars, fetching, &mut result.created).await {
        Ok(()) => result.state = HookState::Succeeded,
        Err(e) => {
            result.state = HookState::Failed;
            result.reason = Some(e.reason().into());
            result.message = Some(e.to_string());
        }
    }
    result.finished = Some(Time(Timestamp::now()));
    result
}

async fn storage_work(
    task: &StorageTask,
    vars: &BTreeMap<String, String>,
    fetching: &Fetching,
    created: &mut Vec<String>,
) -> Result<(), StorageError> {
    let ex = |t: &str| expanded(t, vars).map_err(StorageError::Config);
    let ensure = task
        .ensure
        .iter()
        .map(|d| {
            Ok(EnsureDirectory {
                path: ex(&d.path)?,
                ..d.clone()
            })
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    let remove = task
        .remove
        .iter()
        .map(|r| {
            Ok(ClaimedPath {
                path: ex(&r.path)?,
                claim: r.claim.clone(),
            })
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    let (made, first) = tokio::task::spawn_blocking(move || {
        let mut made = Vec::new();
        for dir in &ensure {
            storage::ensure(dir, &mut made)?;
        }
        for path in &remove {
            storage::remove(path)?;
        }
        Ok::<_, StorageError>((made, ensure.first().map(|d| d.path.clone())))
    })
    .await
    .map_err(|e| StorageError::Run(format!("storage task panicked: {e}")))??;
    created.extend(made);
    if let (Some(fetch), Some(dir)) = (&task.fetch, &first) {
        fetch_packages(fetch, &Path::new(dir).join("packages"), fetching).await?;
    }
    if let (Some(run), Some(dir)) = (&task.run, first) {
        run_step(run, Path::new(&dir), &task.key, vars).await?;
    }
    Ok(())
}

/// Unpacks each of `fetch`'s packages whole into `into/ID`: fetched into
/// `.ID.partial` (what a killed agent left there is removed first),
/// checked against the repository's index — signed as the agent's trust
/// demands — and renamed into place. A package already there is kept.
async fn fetch_packages(
    fetch: &StorageFetch,
    into: &Path,
    fetching: &Fetching,
) -> Result<(), StorageError> {
    let ids = fetch
        .packages
        .iter()
        .map(|p| {
            p.parse::<PackageId>()
                .map_err(|e| StorageError::Config(format!("package {p:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let missing: Vec<&PackageId> = ids
        .iter()
        .filter(|id| !into.join(id.to_string()).is_dir())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let grant = trust::decide(&fetching.policy, &fetch.repository, &fetch.public_keys)
        .map_err(|refusal| StorageError::Untrusted(refusal.to_string()))?;
    let fetcher = Fetcher::granted(
        &grant,
        fetching.options.clone(),
        Some(fetching.versions.clone()),
    );
    let failed = |e: crate::pkg::FetchError| {
        if e.is_untrusted() {
            StorageError::Untrusted(grant.refusing(&e))
        } else {
            StorageError::Fetch(e.to_string())
        }
    };
    let index = fetcher.index().await.map_err(failed)?;
    std::fs::create_dir_all(into).map_err(|source| StorageError::Io {
        action: "create",
        path: into.to_owned(),
        source,
    })?;
    for id in missing {
        let entry = index.find(id).ok_or_else(|| {
            StorageError::Fetch(format!(
                "package {id} is not in the index of {}; publish it or fix stage.packages",
                fetch.repository
            ))
        })?;
        let partial = into.join(format!(".{id}.partial"));
        remove_all(&partial).map_err(|source| StorageError::Io {
            action: "remove",
            path: partial.clone(),
            source,
        })?;
        fetcher.fetch_entry(entry, &partial).await.map_err(failed)?;
        let dest = into.join(id.to_string());
        std::fs::rename(&partial, &dest).map_err(|source| StorageError::Io {
            action: "rename into place",
            path: dest,
            source,
        })?;
    }
    Ok(())
}

/// Runs a storage task's program in `dir` once per `key`.
async fn run_step(
    run: &StorageRun,
    dir: &Path,
    key: &str,
    vars: &BTreeMap<String, String>,
) -> Result<(), StorageError> {
    if storage::done(dir, key) {
        return Ok(());
    }
    let mut argv = run
        .argv
        .iter()
        .map(|a| expanded(a, vars).map_err(StorageError::Config))
        .collect::<Result<Vec<_>, _>>()?;
    if argv[0].contains('/') && !argv[0].starts_with('/') {
        argv[0] = dir.join(&argv[0]).display().to_string();
    }
    let timeout = Duration::from_secs(run.timeout_seconds.max(1) as u64);
    run_program(&argv, Some(dir), &run.env, timeout)
        .await
        .map_err(StorageError::Run)?;
    storage::mark_done(dir, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[tokio::test]
    async fn a_reader_of_another_directory_fails_and_names_the_nonce_it_found() {
        let shared = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let probe = |dir: &Path, writer| NodeFilesystemProbe {
            path: dir.display().to_string(),
            writable: true,
            writer,
        };
        filesystem(&probe(shared.path(), true), "fs", "n1", "a", &vars())
            .await
            .unwrap();
        filesystem(&probe(shared.path(), false), "fs", "n1", "b", &vars())
            .await
            .unwrap();
        std::fs::write(other.path().join(".theseus-capability.fs"), "n0").unwrap();
        let err = filesystem(&probe(other.path(), false), "fs", "n1", "c", &vars())
            .await
            .unwrap_err();
        assert!(
            err.contains("\"n0\"") && err.contains("not the shared filesystem"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_program_that_hangs_is_killed_and_one_that_fails_reports_its_output() {
        let timeout = Duration::from_millis(300);
        let argv = |s: &str| vec!["sh".to_owned(), "-c".to_owned(), s.to_owned()];
        let err = run_program(&argv("sleep 30"), None, &vars(), timeout)
            .await
            .unwrap_err();
        assert!(err.contains("killed"), "{err}");
        let err = run_program(&argv("echo nope >&2; exit 3"), None, &vars(), timeout)
            .await
            .unwrap_err();
        assert!(err.contains("nope") && err.contains('3'), "{err}");
        assert_eq!(
            run_program(&argv("echo fine"), None, &vars(), timeout)
                .await
                .unwrap(),
            "fine"
        );
    }

    #[tokio::test]
    async fn a_storage_step_runs_once_per_key() {
        let tmp = tempfile::tempdir().unwrap();
        let stage = tmp.path().join("stage");
        let task = StorageTask {
            run: Some(StorageRun {
                argv: vec!["sh".into(), "-c".into(), "echo x >> runs".into()],
                timeout_seconds: 5,
                env: BTreeMap::new(),
            }),
            ..stage_task(&stage)
        };
        for _ in 0..2 {
            let r = run_storage(&task, &vars(), &fetching(tmp.path())).await;
            assert_eq!(r.state, HookState::Succeeded, "{r:?}");
        }
        assert_eq!(std::fs::read_to_string(stage.join("runs")).unwrap(), "x\n");
    }

    /// A stage's task: its directory, claimed.
    fn stage_task(stage: &Path) -> StorageTask {
        StorageTask {
            id: "stage/spark/1".into(),
            key: "k1".into(),
            ensure: vec![EnsureDirectory {
                path: stage.display().to_string(),
                mode: "0755".into(),
                claim: Some("uid".into()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Fetching that trusts no key and no repository.
    fn fetching(dir: &Path) -> Fetching {
        Fetching {
            policy: Arc::new(trust::TrustConfig::default().policy("test").unwrap()),
            options: FetchOptions::default(),
            versions: AcceptedVersions::under(dir),
        }
    }

    #[tokio::test]
    async fn a_stage_from_an_untrusted_repository_is_refused_before_any_download() {
        let tmp = tempfile::tempdir().unwrap();
        let stage = tmp.path().join("stage");
        let task = StorageTask {
            fetch: Some(StorageFetch {
                repository: "http://127.0.0.1:9/repo".into(),
                public_keys: Vec::new(),
                packages: vec!["spark--1.0.0".into()],
            }),
            ..stage_task(&stage)
        };
        let r = run_storage(&task, &vars(), &fetching(tmp.path())).await;
        assert_eq!(r.state, HookState::Failed, "{r:?}");
        assert_eq!(r.reason.as_deref(), Some("Untrusted"), "{r:?}");
        assert!(!stage.join("packages").exists(), "nothing fetched");
    }
}
