//! The local provider: each instance is a `theseus agent` child process
//! with its own root under the pool's state directory. Pids are kept on disk
//! (`STATE/SEQ/pid`), so a restarted operator adopts running agents rather
//! than starting them twice; an agent whose pid never reached the disk (the
//! operator stopped in between) is found by its command line and adopted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;

use super::identity::{Files, NodeIdentity};
use super::provider::{self, CLUSTER_TAG, Instance, LAUNCH_TAG, Owner, POOL_TAG, Provider};

/// How long an agent has to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the local provider.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state directory or an instance's files could not be used.
    #[error(
        "NodePool {pool}: {action} {path}: {source}; check that the operator can write its --state-dir"
    )]
    Io {
        /// The pool.
        pool: String,
        /// What was attempted.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `servicePortBase` plus a node's number is not a port.
    #[error(
        "NodePool {pool}: node {seq} would get PORT={base}+{seq}, past 65535; lower spec.provider.local.servicePortBase"
    )]
    PortRange {
        /// The pool.
        pool: String,
        /// The configured base.
        base: i32,
        /// The node's launch sequence.
        seq: i64,
    },
    /// An instance to terminate is not one of this pool's.
    #[error("NodePool {pool}: refusing to stop {id}: it is not one of this pool's local instances")]
    NotOwned {
        /// The pool.
        pool: String,
        /// The instance.
        id: String,
    },
}

impl From<Error> for provider::Error {
    fn from(e: Error) -> provider::Error {
        let kind = match &e {
            Error::NotOwned { .. } => provider::Kind::NotOwned,
            Error::Io { .. } | Error::PortRange { .. } => provider::Kind::Local,
        };
        provider::Error::new(kind, e)
    }
}

/// A pool's local agent processes.
pub struct Local {
    owner: Owner,
    dir: PathBuf,
    program: PathBuf,
    labels: BTreeMap<String, String>,
    port_base: Option<i32>,
    identity: Option<std::sync::Arc<NodeIdentity>>,
}

impl Local {
    /// Agents of `owner`'s pool under `dir`, run from `program` (the
    /// operator's own binary) with the pool's node labels; with a
    /// `port_base`, agent N sets `PORT=port_base+N` for its services. With
    /// an `identity`, each agent acts as its node's own ServiceAccount;
    /// without, it inherits the operator's credentials.
    pub fn new(
        owner: Owner,
        dir: PathBuf,
        program: PathBuf,
        labels: BTreeMap<String, String>,
        port_base: Option<i32>,
        identity: Option<std::sync::Arc<NodeIdentity>>,
    ) -> Local {
        Local {
            owner,
            dir,
            program,
            labels,
            port_base,
            identity,
        }
    }

    fn node(&self, seq: i64) -> String {
        format!("{}-{seq}", self.owner.pool)
    }

    fn files(&self, seq: i64) -> Files {
        Files::in_dir(&self.dir.join(seq.to_string()))
    }

    fn io(&self, action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
        let (pool, path) = (self.owner.pool.clone(), path.to_owned());
        move |source| Error::Io {
            pool,
            action,
            path,
            source,
        }
    }

    fn id(&self, seq: i64) -> String {
        format!("local-{}-{seq}", self.owner.pool)
    }

    fn instance(&self, seq: i64, launched: Timestamp) -> Instance {
        let tags = BTreeMap::from([
            (POOL_TAG.to_owned(), self.owner.pool.clone()),
            (CLUSTER_TAG.to_owned(), self.owner.cluster.clone()),
            (LAUNCH_TAG.to_owned(), seq.to_string()),
        ]);
        Instance {
            id: self.id(seq),
            launched: Some(launched),
            tags,
        }
    }

    /// The running agent of sequence `seq`: its pid and launch time. An
    /// agent whose pid never reached its file (the operator stopped between
    /// starting it and writing the file) is found by its command line and
    /// adopted: its pid is written then, so that it is neither started a
    /// second time nor left running when its instance is terminated.
    fn running(&self, seq: i64) -> Option<(u32, Timestamp)> {
        let dir = self.dir.join(seq.to_string());
        let id = self.id(seq);
        let read = |name: &str| -> Option<i64> {
            std::fs::read_to_string(dir.join(name))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let recorded = read("pid")
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&pid| alive(pid, &id));
        let launched = read("launched").and_then(|s| Timestamp::from_second(s).ok());
        if let Some(pid) = recorded {
            return Some((pid, launched.unwrap_or_else(Timestamp::now)));
        }
        let pid = *self.agents(seq).first()?;
        let launched = launched.unwrap_or_else(|| {
            let now = Timestamp::now();
            let _ = write(&dir.join("launched"), &now.as_second().to_string());
            now
        });
        let _ = write(&dir.join("pid"), &pid.to_string());
        tracing::info!(pool = %self.owner.pool, seq, pid, "adopted a local agent whose pid was not recorded");
        Some((pid, launched))
    }

    /// Every live agent process started for sequence `seq` of this pool,
    /// found by its command line (its instance id and its root under this
    /// pool's state directory).
    fn agents(&self, seq: i64) -> Vec<u32> {
        let root = self.dir.join(seq.to_string()).join("root");
        // The root is made before an agent is started on it: none, no agent.
        if !root.exists() {
            return Vec::new();
        }
        let needle = [
            b"--root\0".as_slice(),
            root.as_os_str().as_encoded_bytes(),
            b"\0",
        ]
        .concat();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let id = self.id(seq);
        let mut pids: Vec<u32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&pid| alive(pid, &id) && cmdline_has(pid, &needle))
            .collect();
        pids.sort_unstable();
        pids
    }

    fn seqs(&self) -> Result<Vec<i64>, Error> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("cannot read", &self.dir)(e)),
        };
        Ok(entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect())
    }

    /// Starts agent `seq`; with `kubeconfig`, it acts with that identity.
    fn start(&self, seq: i64, kubeconfig: Option<&Path>) -> Result<Instance, Error> {
        if let Some((_, launched)) = self.running(seq) {
            return Ok(self.instance(seq, launched));
        }
        let port = service_port(&self.owner.pool, self.port_base, seq)?;
        let dir = self.dir.join(seq.to_string());
        std::fs::create_dir_all(dir.join("root")).map_err(self.io("cannot create", &dir))?;
        let log_path = dir.join("agent.log");
        let log = std::fs::File::create(&log_path).map_err(self.io("cannot create", &log_path))?;
        let err_log = log.try_clone().map_err(self.io("cannot open", &log_path))?;
        let labels: Vec<String> = std::iter::once(format!("{POOL_TAG}={}", self.owner.pool))
            .chain(self.labels.iter().map(|(k, v)| format!("{k}={v}")))
            .collect();
        let mut cmd = Command::new(&self.program);
        cmd.arg("agent")
            .args(["--node-name", &self.node(seq)])
            .arg("--root")
            .arg(dir.join("root"))
            .args(["--labels", &labels.join(",")])
            .args(["--instance-id", &self.id(seq)])
            .args(["--listen", "127.0.0.1:0", "--heartbeat-seconds", "5"])
            // Its services listen on this machine: peers reach it there.
            .args(["--address", "127.0.0.1"])
            .args(port.map(|p| format!("--env=PORT={p}")))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log);
        if let Some(kubeconfig) = kubeconfig {
            cmd.env("KUBECONFIG", kubeconfig);
        }
        // Its own process group: a Ctrl-C meant for the operator does not
        // take the pool's nodes down with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .map_err(self.io("cannot start an agent from", &self.program))?;
        let pid = child.id();
        let now = Timestamp::now();
        write(&dir.join("launched"), &now.as_second().to_string())
            .map_err(self.io("cannot write", &dir))?;
        write(&dir.join("pid"), &pid.to_string()).map_err(self.io("cannot write", &dir))?;
        // Reap it when it exits, so that a stopped agent is not a zombie.
        std::thread::spawn(move || child.wait());
        tracing::info!(pool = %self.owner.pool, seq, pid, "started a local agent");
        Ok(self.instance(seq, now))
    }

    fn stop(&self, instance: &Instance) -> Result<(), Error> {
        let seq = instance
            .launch_seq()
            .filter(|&s| self.owner.owns(&instance.tags) && instance.id == self.id(s))
            .ok_or_else(|| Error::NotOwned {
                pool: self.owner.pool.clone(),
                id: instance.id.clone(),
            })?;
        // Every process of the instance (found by its command line): the
        // one the operator recorded and any it started and lost track of.
        let pids = self.agents(seq);
        for &pid in &pids {
            signal("TERM", pid);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while pids.iter().any(|&p| alive(p, &instance.id)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for &pid in pids.iter().filter(|&&p| alive(p, &instance.id)) {
            signal("KILL", pid);
        }
        let dir = self.dir.join(seq.to_string());
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(self.io("cannot remove", &dir)(e))
            }
            _ => Ok(()),
        }
    }
}

/// The `PORT` of node `seq`'s services: `base + seq`, when a base is set.
fn service_port(pool: &str, base: Option<i32>, seq: i64) -> Result<Option<u16>, Error> {
    let Some(base) = base else {
        return Ok(None);
    };
    u16::try_from(i64::from(base) + seq)
        .ok()
        .filter(|&p| p > 0)
        .map(Some)
        .ok_or_else(|| Error::PortRange {
            pool: pool.to_owned(),
            base,
            seq,
        })
}

fn write(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

/// Whether `pid` is a live (not zombie) agent process for `instance_id`.
fn alive(pid: u32, instance_id: &str) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(true);
    let needle = format!("--instance-id\0{instance_id}\0");
    !zombie && cmdline_has(pid, needle.as_bytes())
}

/// Whether process `pid`'s command line holds `needle`.
fn cmdline_has(pid: u32, needle: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|w| w == needle))
}

fn signal(name: &str, pid: u32) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
    if let Err(e) = status {
        tracing::warn!(pid, signal = name, "cannot run kill: {e}");
    }
}

impl Provider for Local {
    fn list(&self) -> BoxFuture<'_, Result<Vec<Instance>, provider::Error>> {
        Box::pin(async move {
            let mut out = Vec::new();
            // Reading the pid files and /proc blocks: see `launch`.
            let running = tokio::task::block_in_place(|| {
                Ok::<_, Error>(
                    self.seqs()?
                        .into_iter()
                        .filter_map(|seq| Some((seq, self.running(seq)?)))
                        .collect::<Vec<_>>(),
                )
            })?;
            for (seq, (_, launched)) in running {
                if let Some(identity) = &self.identity {
                    identity
                        .renew_if_old(&self.node(seq), &self.files(seq))
                        .await?;
                }
                out.push(self.instance(seq, launched));
            }
            Ok(out)
        })
    }

    fn launch(
        &self,
        first_seq: i64,
        count: usize,
    ) -> BoxFuture<'_, Result<Vec<Instance>, provider::Error>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for seq in first_seq..first_seq + count as i64 {
                let kubeconfig = match &self.identity {
                    Some(identity)
                        if tokio::task::block_in_place(|| self.running(seq)).is_none() =>
                    {
                        let dir = self.dir.join(seq.to_string());
                        std::fs::create_dir_all(&dir).map_err(self.io("cannot create", &dir))?;
                        let files = self.files(seq);
                        identity.issue(&self.node(seq), &files).await?;
                        Some(files.kubeconfig)
                    }
                    _ => None,
                };
                // Starting a process and reading /proc are blocking:
                // keep the runtime's other tasks (the watches among them)
                // running meanwhile.
                let kubeconfig = kubeconfig.as_deref();
                out.push(tokio::task::block_in_place(|| self.start(seq, kubeconfig))?);
            }
            Ok(out)
        })
    }

    fn terminate<'a>(
        &'a self,
        instances: &'a [Instance],
    ) -> BoxFuture<'a, Result<(), provider::Error>> {
        Box::pin(async move {
            for i in instances {
                let (this, i) = (self, i.clone());
                // Stopping waits for the agent; keep the runtime free meanwhile.
                tokio::task::block_in_place(|| this.stop(&i))?;
                if let (Some(identity), Some(seq)) = (&self.identity, i.launch_seq()) {
                    identity.revoke(&self.node(seq)).await?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool whose "agent" is a shell script that sleeps: its command line
    /// carries the agent's arguments as a real agent's does.
    fn sleeper_pool(dir: &Path) -> Local {
        let program = dir.join("agent.sh");
        std::fs::write(&program, "#!/bin/sh\nsleep 60\n").unwrap();
        let mut perms = std::fs::metadata(&program).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&program, perms).unwrap();
        let owner = Owner {
            pool: "p".into(),
            uid: "u".into(),
            cluster: "c".into(),
        };
        Local::new(
            owner,
            dir.join("pool"),
            program,
            BTreeMap::new(),
            None,
            None,
        )
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_agent_whose_pid_was_never_written_is_adopted_not_started_twice_and_every_copy_is_stopped()
     {
        let tmp = tempfile::tempdir().unwrap();
        let pool = sleeper_pool(tmp.path());
        pool.launch(1, 1).await.unwrap();
        let first = pool.agents(1);
        assert_eq!(first.len(), 1, "one agent started: {first:?}");
        // The operator stopped after starting it, before writing its files.
        let dir = tmp.path().join("pool/1");
        std::fs::remove_file(dir.join("pid")).unwrap();
        std::fs::remove_file(dir.join("launched")).unwrap();

        let listed = pool.list().await.unwrap();
        assert_eq!(
            listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["local-p-1"],
            "the unrecorded agent is listed"
        );
        let pid: u32 = std::fs::read_to_string(dir.join("pid"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(pid, first[0], "its pid is written when it is adopted");
        pool.launch(1, 1).await.unwrap();
        assert_eq!(
            pool.agents(1),
            first,
            "launching it again adopts, not starts"
        );

        // A second copy the operator lost track of is stopped with it.
        let mut stray = Command::new(&pool.program)
            .arg("agent")
            .arg("--root")
            .arg(dir.join("root"))
            .args(["--instance-id", "local-p-1"])
            .spawn()
            .unwrap();
        let both = pool.agents(1);
        assert_eq!(both.len(), 2, "{both:?}");
        pool.terminate(&listed).await.unwrap();
        assert!(
            pool.agents(1).is_empty(),
            "every copy stopped: {:?}",
            pool.agents(1)
        );
        assert!(stray.try_wait().unwrap().is_some(), "the stray exited");
        assert!(!dir.exists(), "the instance's files are gone");
        assert!(pool.list().await.unwrap().is_empty());
    }

    #[test]
    fn node_n_gets_the_base_plus_n() {
        assert_eq!(service_port("p", None, 7).unwrap(), None);
        assert_eq!(service_port("p", Some(27100), 0).unwrap(), Some(27100));
        assert_eq!(service_port("p", Some(27100), 4).unwrap(), Some(27104));
        assert_eq!(service_port("p", Some(65000), 535).unwrap(), Some(65535));
        let err = service_port("p", Some(65000), 536).unwrap_err().to_string();
        assert!(
            err.contains("NodePool p") && err.contains("servicePortBase"),
            "{err}"
        );
    }
}
