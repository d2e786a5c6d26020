//! Helpers for the agent's end-to-end tests: the demo repository built and
//! served by `theseus repo serve`, agents as child processes of the built
//! binary with their own temporary roots, and the operator's side of a
//! NodeInstall (writing `spec.target`, reading `status`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use theseus::api::{NodeInstall, NodeInstallStatus, NodePhase, NodeTarget};
use theseus::pkg::{PackageId, set_hash};

use super::{TestbedEnv, repo_root};

use super::repo_server::RepoServer;
use super::{free_port, theseus};

/// The demo repository, built with `examples/build-repo.sh` into a temporary
/// directory, signed with a fresh key, and served by `theseus repo serve` on
/// an ephemeral port.
pub struct Repo {
    /// Its base URL.
    pub url: String,
    /// Its public key (base64).
    pub key: String,
    /// The server, with its request log.
    pub server: RepoServer,
    /// The repository directory (`index.json`, `packages/`).
    pub dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Repo {
    /// Builds, signs and serves the demo packages.
    pub fn demo() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("repo");
        let secret = tmp.path().join("repo.key");
        let key = super::run::stdout_ok(
            Command::new(theseus())
                .args(["repo", "keygen", "--out"])
                .arg(&secret),
        )
        .trim()
        .to_owned();
        let status = Command::new(repo_root().join("examples/build-repo.sh"))
            .arg(&dir)
            .env("THESEUS", theseus())
            .env("SIGN_KEY", &secret)
            .status()
            .unwrap();
        assert!(status.success(), "examples/build-repo.sh failed");
        let server = RepoServer::start(Command::new(theseus()), &dir);
        Self {
            url: server.url.clone(),
            key,
            server,
            dir,
            _dir: tmp,
        }
    }

    /// The agent flags that trust this repository: its key, its URL.
    pub fn trust_args(&self) -> Vec<String> {
        vec![
            "--trusted-key".into(),
            self.key.clone(),
            "--allowed-repository".into(),
            self.url.clone(),
        ]
    }

    /// Re-indexes the repository (`theseus repo index` with its key and
    /// `extra` flags, e.g. `--expires-in`).
    pub fn reindex(&self, extra: &[&str]) {
        let secret = self._dir.path().join("repo.key");
        super::run::stdout_ok(
            Command::new(theseus())
                .args(["repo", "index"])
                .arg(&self.dir)
                .arg("--sign-key")
                .arg(&secret)
                .args(extra),
        );
    }
}

/// One agent process with its own root and service port.
pub struct Agent {
    /// The node name.
    pub node: String,
    /// The root directory.
    pub root: PathBuf,
    /// The port its demo-web service listens on.
    pub port: u16,
    /// The port of its local API.
    pub api_port: u16,
    /// The agent's trust flags (see [`Repo::trust_args`]).
    pub trust: Vec<String>,
    /// The kubeconfig it acts with; the testbed's admin one when unset.
    pub kubeconfig: Option<PathBuf>,
    /// More arguments (`--env SHARED=…`), kept across restarts.
    pub extra: Vec<String>,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `theseus agent` for a fresh node named `tag-<random>`, with
    /// the trust flags `trust` (e.g. [`Repo::trust_args`]; none: it trusts
    /// nothing).
    pub fn start(tb: &TestbedEnv, tag: &str, labels: &str, trust: &[String]) -> Self {
        Self::start_as(tb, tag, labels, trust, None)
    }

    /// [`Agent::start`] acting with `kubeconfig` (an identity of its own)
    /// instead of the testbed's admin credentials.
    pub fn start_as(
        tb: &TestbedEnv,
        tag: &str,
        labels: &str,
        trust: &[String],
        kubeconfig: Option<PathBuf>,
    ) -> Self {
        Self::start_with(tb, tag, labels, trust, kubeconfig, &[])
    }

    /// [`Agent::start_as`] with more arguments.
    pub fn start_with(
        tb: &TestbedEnv,
        tag: &str,
        labels: &str,
        trust: &[String],
        kubeconfig: Option<PathBuf>,
        extra: &[String],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut agent = Self {
            node: format!("agent-test-{tag}-{:06x}", rand::random::<u32>() & 0xff_ffff),
            root: dir.path().join("root"),
            port: free_port(),
            api_port: free_port(),
            trust: trust.to_vec(),
            kubeconfig,
            extra: extra.to_vec(),
            child: None,
            _dir: dir,
        };
        agent.spawn(tb, labels, None);
        agent
    }

    /// (Re)starts the process, optionally with a failpoint armed.
    pub fn spawn(&mut self, tb: &TestbedEnv, labels: &str, failpoint: Option<&str>) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = tb.command(theseus());
        cmd.args([
            "agent",
            "--node-name",
            &self.node,
            "--heartbeat-seconds",
            "1",
        ])
        .arg("--root")
        .arg(&self.root)
        .args(["--listen", &format!("127.0.0.1:{}", self.api_port)])
        .args(["--env", &format!("PORT={}", self.port)])
        .args(["--labels", labels])
        .args(&self.trust)
        .args(&self.extra)
        .env_remove("THESEUS_FAILPOINT")
        .env_remove("THESEUS_TRUST_CONFIG")
        .env_remove("THESEUS_TRUSTED_KEYS")
        .env_remove("THESEUS_ALLOWED_REPOSITORIES")
        .env_remove("THESEUS_ALLOW_UNSIGNED")
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        if let Some(fp) = failpoint {
            cmd.env("THESEUS_FAILPOINT", fp);
        }
        if let Some(kubeconfig) = &self.kubeconfig {
            cmd.env("KUBECONFIG", kubeconfig);
        }
        self.child = Some(cmd.spawn().expect("theseus agent starts"));
    }

    /// The agent's log file.
    pub fn log_path(&self) -> PathBuf {
        self._dir.path().join("agent.log")
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits for the process to exit (e.g. at a failpoint); its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("running");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "agent did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs the agent (its services keep running, as after a crash).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs the agent and waits; it stops its services on the way out.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            for _ in 0..150 {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// GET http://127.0.0.1:PORT/version of its demo-web service.
    pub async fn service_version(&self) -> Result<String, String> {
        let url = format!("http://127.0.0.1:{}/version", self.port);
        let response = reqwest::get(&url).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{url}: {}", response.status()));
        }
        Ok(response
            .text()
            .await
            .map_err(|e| e.to_string())?
            .trim()
            .to_owned())
    }

    /// The hash in `ROOT/current/set.json`.
    pub fn disk_hash(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.root.join("current/set.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["hash"].as_str().map(str::to_owned)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        // Services left by a killed agent: stop them by their pid files.
        if let Ok(entries) = std::fs::read_dir(self.root.join("run")) {
            for entry in entries.flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                if let Some(pid) = text.split_whitespace().next() {
                    let _ = Command::new("kill")
                        .args(["-KILL", "--", &format!("-{pid}")])
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        if std::thread::panicking() {
            eprintln!("--- agent {} log ---\n{}", self.node, self.log());
        }
    }
}

/// The demo set with demo-web at `version` (and demo-config 1.0.0).
pub fn demo_set(version: &str) -> Vec<PackageId> {
    vec![
        "demo-config--1.0.0".parse().unwrap(),
        format!("demo-web--{version}").parse().unwrap(),
    ]
}

/// Writes `spec.target` as the operator does.
pub async fn set_target(
    api: &Api<NodeInstall>,
    node: &str,
    ids: &[PackageId],
    repo: &str,
    health_timeout: i32,
) -> String {
    set_target_with_keys(api, node, ids, repo, &[], health_timeout).await
}

/// The set of `ids` from `repo` as a target (or `spec.next`) names it.
fn demo_target(
    ids: &[PackageId],
    repo: &str,
    keys: &[String],
    health_timeout: Option<i32>,
) -> NodeTarget {
    NodeTarget {
        package_set: "demo".into(),
        set_hash: set_hash(ids),
        packages: ids.iter().map(|i| i.to_string()).collect(),
        repository_url: repo.into(),
        public_keys: keys.to_vec(),
        health_timeout_seconds: health_timeout,
        sources: Vec::new(),
        secrets: Vec::new(),
    }
}

/// Writes `spec.next` as the cluster controller does (a set to fetch
/// ahead of its install); returns its hash.
pub async fn set_next(api: &Api<NodeInstall>, node: &str, ids: &[PackageId], repo: &str) -> String {
    let next = demo_target(ids, repo, &[], None);
    let patch = serde_json::json!({ "spec": { "next": next } });
    api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("cannot set the next set of {node}: {e}"));
    next.set_hash
}

/// Writes `spec.target` naming `keys` (`NodeTarget.publicKeys`).
pub async fn set_target_with_keys(
    api: &Api<NodeInstall>,
    node: &str,
    ids: &[PackageId],
    repo: &str,
    keys: &[String],
    health_timeout: i32,
) -> String {
    let target = demo_target(ids, repo, keys, Some(health_timeout));
    let hash = target.set_hash.clone();
    let mut target = serde_json::to_value(&target).unwrap();
    // A merge patch leaves out what is absent: clear keys set before.
    target["publicKeys"] = serde_json::json!(keys);
    let patch = serde_json::json!({ "spec": { "target": target } });
    api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("cannot set the target of {node}: {e}"));
    hash
}

/// The NodeInstall's status (empty if absent).
pub async fn status(api: &Api<NodeInstall>, node: &str) -> Result<NodeInstallStatus, String> {
    let ni = api
        .get_opt(node)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("NodeInstall {node} does not exist"))?;
    ni.status.ok_or_else(|| format!("{node} has no status"))
}

/// Waits (90 s at most) until the node is Active on `hash`.
pub async fn until_active(api: &Api<NodeInstall>, node: &str, hash: &str) {
    super::eventually(
        Duration::from_secs(90),
        "the node is Active on the target",
        || async {
            let s = status(api, node).await?;
            let active = s.phase == NodePhase::Active && s.active_hash.as_deref() == Some(hash);
            active.then_some(()).ok_or(format!("{s:?}"))
        },
    )
    .await;
}

/// Deletes the NodeInstall (best effort).
pub async fn delete(api: &Api<NodeInstall>, node: &str) {
    let _ = api.delete(node, &Default::default()).await;
}
