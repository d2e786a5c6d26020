//! What the integration tests share: the binary under test, the repository
//! root, free ports, the local testbed (`testbed/testbed`) with a kube-rs
//! client, `kubectl` and `helm`, a fresh namespace per test, and
//! `eventually`; and, per area, the submodules below.
//!
//! The testbed's addresses come from `testbed/testbed env`, the same lines a
//! person evaluates in their shell. When the testbed is not up, a test that
//! needs it fails if `CI` is set (a suite that passes by skipping proves
//! nothing) and is skipped with a loud message otherwise.
//!
//! The benchmarks include this module too (`#[path]`), each using a part.

pub mod agents;
pub mod browser;
pub mod discovery;
pub mod ec2;
pub mod fleet;
pub mod layout;
pub mod operator;
pub mod pkg;
pub mod policy;
pub mod pools;
pub mod repo_server;
pub mod run;
pub mod shop;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// The binary under test: a private copy of the built `theseus`, taken once
/// per test process. The build directory may be shared with other checkouts
/// whose builds replace `target/debug/theseus` at any moment; a copy taken
/// once cannot change under a long test. The copy keeps the name `theseus`
/// (in a directory of its own), so it prints the same usage lines.
pub fn theseus() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let built = Path::new(env!("CARGO_BIN_EXE_theseus"));
        let meta = std::fs::metadata(built).unwrap();
        let stamp = meta
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let name = format!("theseus-under-test-{}-{stamp}-bin", meta.len());
        let copy = dir.join(&name).join("theseus");
        if !copy.exists() {
            let tmp = dir.join(format!("{name}.tmp{}", std::process::id()));
            std::fs::create_dir_all(&tmp).unwrap();
            std::fs::copy(built, tmp.join("theseus")).unwrap();
            // Another test process may have made the same copy meanwhile.
            if std::fs::rename(&tmp, dir.join(&name)).is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            // Copies of older builds are of no further use.
            for old in std::fs::read_dir(dir).unwrap().flatten() {
                let other = old.file_name().to_string_lossy().into_owned();
                if other.starts_with("theseus-under-test-")
                    && other != name
                    && !other.contains(".tmp")
                {
                    let _ = std::fs::remove_dir_all(old.path())
                        .or_else(|_| std::fs::remove_file(old.path()));
                }
            }
        }
        let ok = Command::new(&copy)
            .args(["pkg", "--help"])
            .output()
            .unwrap()
            .status
            .success();
        assert!(
            ok,
            "{} has no `pkg` command: another checkout rebuilt the shared target; run the tests again",
            built.display()
        );
        copy
    })
}

/// The binary under test without the `THESEUS_*` variables of the caller's
/// environment that would change what a command does (a failpoint, a root,
/// a repository, trust settings).
pub fn theseus_command() -> Command {
    let mut cmd = Command::new(theseus());
    cmd.env_remove("THESEUS_FAILPOINT")
        .env_remove("THESEUS_ROOT")
        .env_remove("THESEUS_REPO")
        .env_remove("THESEUS_ALLOW_UNSIGNED")
        .env_remove("THESEUS_TRUST_CONFIG");
    cmd
}

/// A free port on 127.0.0.1 (bound once, then released).
///
/// Ports come from 10000–19999, below the kernel's ephemeral range: a port
/// handed out here and bound a few seconds later (a service's port) cannot
/// meanwhile be given by the kernel to another test's `127.0.0.1:0` listener.
/// Until something binds it, it is also a port where a connection is
/// refused.
pub fn free_port() -> u16 {
    loop {
        let port = 10_000 + rand::random::<u16>() % 10_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The repository root.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Helm chart's directory, `charts/theseus`.
/// Held while a test has the chart installed: a release's cluster-wide
/// objects of fixed name (the ClusterRole `theseus-app-admin`) belong to
/// one release at a time, so two tests' `helm install`s wait for each
/// other instead of failing.
pub fn chart_release_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn chart() -> String {
    repo_root()
        .join("charts/theseus")
        .to_str()
        .unwrap()
        .to_owned()
}

/// `target/test-logs/RUN`, created: where a test's operators log. The logs
/// outlive the test, for reading after a failure.
pub fn test_logs(run: &str) -> PathBuf {
    let logs = repo_root().join("target/test-logs").join(run);
    std::fs::create_dir_all(&logs).unwrap();
    eprintln!("operator logs: {}", logs.display());
    logs
}

/// The environment of a running testbed, parsed from `testbed/testbed env`.
#[derive(Debug, Clone)]
pub struct TestbedEnv {
    vars: HashMap<String, String>,
}

impl TestbedEnv {
    /// One variable, e.g. `THESEUS_DISCOVERY_ETCD`.
    pub fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("testbed env lacks {name}"))
    }

    /// All variables, for child processes.
    pub fn vars(&self) -> impl Iterator<Item = (&String, &String)> {
        self.vars.iter()
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        PathBuf::from(self.var("KUBECONFIG"))
    }

    /// The discovery etcd endpoint.
    pub fn discovery_etcd(&self) -> &str {
        self.var("THESEUS_DISCOVERY_ETCD")
    }

    /// The EC2 API endpoint (moto server).
    pub fn ec2_endpoint(&self) -> &str {
        self.var("THESEUS_EC2_ENDPOINT")
    }

    /// A command with the testbed's environment (PATH, KUBECONFIG, AWS_*).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(self.vars());
        cmd
    }

    /// One of the testbed's tools, `.testbed/bin/NAME` (kubectl, helm, etcd).
    pub fn bin(&self, name: &str) -> PathBuf {
        Path::new(self.var("THESEUS_TESTBED_DIR"))
            .join("bin")
            .join(name)
    }

    /// `kubectl ARGS…` against the testbed, not yet run.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(self.bin("kubectl"));
        cmd.args(args);
        cmd
    }

    /// Runs `kubectl ARGS…` against the testbed.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args).output().expect("kubectl runs")
    }

    /// Runs `kubectl ARGS…` and returns its stdout, failing the test on a
    /// non-zero exit with kubectl's stderr.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        run::stdout_ok(&mut self.kubectl_command(args))
    }

    /// `kubectl ARGS… -f -` with `yaml` on stdin.
    pub fn kubectl_stdin(&self, args: &[&str], yaml: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .kubectl_command(args)
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// `helm ARGS…` with the testbed's helm, not yet run.
    pub fn helm_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(self.bin("helm"));
        cmd.args(args);
        cmd
    }

    /// Runs `helm ARGS…`.
    pub fn helm(&self, args: &[&str]) -> Output {
        self.helm_command(args).output().expect("helm runs")
    }

    /// Runs `helm ARGS…` and returns its stdout, failing the test on a
    /// non-zero exit.
    pub fn helm_ok(&self, args: &[&str]) -> String {
        run::stdout_ok(&mut self.helm_command(args))
    }

    /// A kube-rs client for the testbed's API server.
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig()).expect("testbed kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("testbed kubeconfig is usable");
        Client::try_from(config).expect("client for the testbed")
    }
}

/// Applies `crds/` (server-side) once per test process and waits until every
/// CRD is Established.
pub fn apply_crds(tb: &TestbedEnv) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let crds = repo_root().join("crds");
        tb.kubectl_ok(&["apply", "--server-side", "-f", crds.to_str().unwrap()]);
        let names: Vec<String> = std::fs::read_dir(&crds)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|f| f.strip_suffix(".yaml").map(|n| format!("crd/{n}")))
            .collect();
        let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        args.extend(names.iter().map(String::as_str));
        tb.kubectl_ok(&args);
    });
}

/// The running testbed with `crds/` applied ([`apply_crds`]), or `None` as
/// [`testbed`] says.
pub fn with_crds() -> Option<TestbedEnv> {
    let tb = testbed()?;
    apply_crds(&tb);
    Some(tb)
}

/// The running testbed, or `None` (after printing why) when it is not up and
/// `CI` is not set. With `CI` set, a missing testbed fails the test.
pub fn testbed() -> Option<TestbedEnv> {
    static ENV: OnceLock<Result<TestbedEnv, String>> = OnceLock::new();
    match ENV.get_or_init(load_testbed) {
        Ok(env) => Some(env.clone()),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("the testbed is required under CI and is not usable: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: testbed not up ({why}); run `make test` or `testbed/testbed up`");
            None
        }
    }
}

/// `let Some(tb) = require_testbed!() else { return };` at the top of a test.
#[macro_export]
macro_rules! require_testbed {
    () => {
        $crate::support::testbed()
    };
}

fn load_testbed() -> Result<TestbedEnv, String> {
    let script = repo_root().join("testbed/testbed");
    let status = Command::new(&script)
        .arg("status")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !status.status.success() {
        return Err(format!(
            "`testbed/testbed status` says: {}",
            String::from_utf8_lossy(&status.stdout).trim()
        ));
    }
    let out = Command::new(&script)
        .arg("env")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let vars = parse_env(&String::from_utf8_lossy(&out.stdout));
    if !vars.contains_key("KUBECONFIG") {
        return Err("`testbed/testbed env` printed no KUBECONFIG".into());
    }
    Ok(TestbedEnv { vars })
}

/// Parses `export NAME=value` lines (values may be single- or double-quoted).
pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|assignment| assignment.split_once('='))
        .map(|(name, value)| {
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                .unwrap_or(value);
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// A namespace that exists for one test and is deleted when dropped.
pub struct TestNamespace {
    pub name: String,
    env: TestbedEnv,
}

impl TestNamespace {
    /// Creates `theseus-test-<tag>-<random>`, labelled `theseus.dev/test=true`.
    pub async fn create(env: &TestbedEnv, client: &Client, tag: &str) -> Self {
        let name = format!("theseus-test-{tag}-{:08x}", rand::random::<u32>());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "theseus.dev/test": "true" } }
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
        Self {
            name,
            env: env.clone(),
        }
    }

    /// Deletes the namespace now and waits until the API server accepted it.
    pub async fn delete(self, client: &Client) {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await;
        std::mem::forget(self);
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // A panicking test still removes its namespace; the API server
        // finishes the deletion in the background.
        let _ = self
            .env
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// Polls `check` until it returns `Ok`, or fails the test after `timeout`
/// with the last error. For asserting what a controller eventually does.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not true after {timeout:?}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A copy of the testbed's admin kubeconfig, written to `path`, that
/// impersonates `user` in `groups`: a process using it has exactly the
/// rights RBAC gives them (the admin may impersonate anyone).
pub fn impersonating_kubeconfig(
    tb: &TestbedEnv,
    path: &Path,
    user: &str,
    groups: &[&str],
) -> PathBuf {
    let text = std::fs::read_to_string(tb.kubeconfig()).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    for entry in config["users"].as_sequence_mut().unwrap() {
        let auth = entry["user"].as_mapping_mut().unwrap();
        auth.insert("as".into(), user.into());
        auth.insert("as-groups".into(), groups.to_vec().into());
    }
    std::fs::write(path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path.to_owned()
}
