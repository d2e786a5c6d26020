//! Service supervision behind one trait: [`ProcessSupervisor`] runs services
//! as child processes, [`SystemdSupervisor`] hands them to systemd.
//!
//! Signals are sent with the `kill` program (`/usr/bin/kill`, procps) so the
//! crate stays free of `unsafe` and of a libc binding.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;

use super::service::ServiceSpec;

/// How long to wait for a signalled process group to disappear (also the
/// time a hook has between SIGTERM and SIGKILL).
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often to look whether a stopping process is gone.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// Errors from starting or stopping a service.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The program could not be started.
    #[error("cannot start {id} ({program}): {source}; check the package's service.start")]
    Spawn {
        /// The package.
        id: String,
        /// The program.
        program: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A file of the supervisor could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The process survived SIGKILL.
    #[error(
        "{id}: process group {pid} is still alive after SIGKILL; inspect it with `ps -g {pid}`"
    )]
    Unkillable {
        /// The package.
        id: String,
        /// The process (group) id.
        pid: u32,
    },
    /// A systemctl command failed.
    #[error("`systemctl {args}` failed for {id}: {message}")]
    Systemctl {
        /// The package.
        id: String,
        /// The arguments.
        args: String,
        /// Its stderr or exit status.
        message: String,
    },
    /// The systemd supervisor needs unit files.
    #[error(
        "{id} has a service but no systemdUnits; add systemd/NAME.service to the package or run the agent with --supervisor process"
    )]
    NoUnits {
        /// The package.
        id: String,
    },
}

/// Starts, stops and watches the services of the active set.
pub trait Supervisor: Send + Sync {
    /// Starts `svc` unless it already runs (a different version under the
    /// same name is stopped first).
    fn start<'a>(&'a self, svc: &'a ServiceSpec) -> BoxFuture<'a, Result<(), SupervisorError>>;
    /// Stops `svc`; stopping a service that does not run succeeds.
    fn stop<'a>(&'a self, svc: &'a ServiceSpec) -> BoxFuture<'a, Result<(), SupervisorError>>;
    /// Whether `svc` runs.
    fn is_running<'a>(&'a self, svc: &'a ServiceSpec) -> BoxFuture<'a, bool>;
    /// The main process of `svc` when it runs (what its CPU and memory are
    /// measured from); `None` when unknown.
    fn main_pid<'a>(&'a self, svc: &'a ServiceSpec) -> BoxFuture<'a, Option<u32>> {
        let _ = svc;
        Box::pin(async { None })
    }
}

/// Runs each service as a child process in its own process group, with
/// stdout and stderr appended to its log file.
///
/// The output goes straight to the file (no pipe through the agent): the
/// kernel drains it, so a chatty child never blocks on a full pipe, and it
/// keeps running — without SIGPIPE — when the agent is killed. A pid file
/// `RUN_DIR/NAME.pid` ("PID ID") lets a restarted agent adopt it.
#[derive(Debug, Clone)]
pub struct ProcessSupervisor {
    run_dir: PathBuf,
}

impl ProcessSupervisor {
    /// A supervisor keeping its pid files in `run_dir`.
    pub fn new(run_dir: &Path) -> Self {
        Self {
            run_dir: run_dir.to_owned(),
        }
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.pid"))
    }

    /// The live process recorded for `name`, with the id it runs.
    pub fn recorded(&self, name: &str) -> Option<(u32, String)> {
        let text = std::fs::read_to_string(self.pid_file(name)).ok()?;
        let (pid, id) = text.trim().split_once(' ')?;
        let pid: u32 = pid.parse().ok()?;
        alive(pid).then(|| (pid, id.to_owned()))
    }

    async fn spawn(&self, svc: &ServiceSpec) -> Result<(), SupervisorError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SupervisorError::Io { path, source }
        };
        for dir in [
            self.run_dir.as_path(),
            svc.log_file.parent().unwrap_or(&self.run_dir),
        ] {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&svc.log_file)
            .map_err(io(&svc.log_file))?;
        let log2 = log.try_clone().map_err(io(&svc.log_file))?;
        let mut child = tokio::process::Command::new(&svc.argv[0])
            .args(&svc.argv[1..])
            .envs(&svc.env)
            .current_dir(&svc.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|source| SupervisorError::Spawn {
                id: svc.id.to_string(),
                program: svc.argv[0].clone(),
                source,
            })?;
        let pid = child.id().unwrap_or_default();
        let pid_file = self.pid_file(svc.name());
        crate::pkg::disk::write_atomic(&pid_file, format!("{pid} {}\n", svc.id).as_bytes())
            .map_err(io(&pid_file))?;
        tracing::info!(service = %svc.id, pid, log = %svc.log_file.display(), "started");
        // Reap the child so that it does not linger as a zombie.
        tokio::spawn(async move {
            if let Ok(status) = child.wait().await {
                tracing::info!(pid, %status, "service exited");
            }
        });
        Ok(())
    }
}

impl Supervisor for ProcessSupervisor {
    fn start<'a>(&'a self, svc: &'a ServiceSpec) -> BoxFuture<'a, Result<(), SupervisorError>> {
        Box::pin(async move {
            match self.recorded(svc.name()) {
                Some((_, id)) if id == svc.id.to_string() => return Ok(()),
                Some(_) => self.stop(svc).await?,
                None => {}
            }
            self.spawn(svc).await
        })
    }

    fn stop<'a>(&'a self, svc: &'a ServiceSpec) -> BoxFuture<'a, Result<(), SupervisorError>> {
        Box::pin(async move {
            let pid_file = self.pid_file(svc.name());
            if let Some((pid, _)) = self.recorded(svc.name()) {
                signal_group("TERM", pid).await;
                if !gone_within(pid, svc.stop_timeout).await {
                    tracing::warn!(service = %svc.id, pid, "still running after the stop timeout, sending SIGKILL");
                    signal_group("KILL", pid).await;
                    if !gone_within(pid, KILL_GRACE).await {
                        return Err(SupervisorError::Unkillable {
                            id: svc.id.to_string(),
                            pid,
                        });
                    }
                }
                tracing::info!(service = %svc.id, pid, "stopped");
            }
            match std::fs::remove_file(&pid_file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SupervisorError::Io {
                    path: pid_file,
                    source: e,
                }),
                _ => Ok(()),
            }
        })
    }

    fn is_running<'a>(&'a self, svc: &'a ServiceSpec) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            self.recorded(svc.name())
                .is_some_and(|(_, id)| id == svc.id.to_string())
        })
    }

    fn main_pid<'a>(&'a self, svc: &'a ServiceSpec) -> BoxFuture<'a, Option<u32>> {
        Box::pin(async move {
            self.recorded(svc.name())
                .filter(|(_, id)| *id == svc.id.to_string())
                .map(|(pid, _)| pid)
        })
    }
}

/// Whether `pid` is a live process (not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Sends `signal` (`TERM`, `KILL`) to the process group `pid` with the
/// `kill` program, logging when it cannot run.
pub(crate) async fn signal_group(signal: &str, pid: u32) {
    let result = tokio::process::Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if let Err(e) = result {
        tracing::warn!(pid, signal, "cannot run kill: {e}");
    }
}

async fn gone_within(pid: u32, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
    true
}

/// Hands services to systemd: links the package's unit files, reloads, and
/// restarts or stops the units. The agent's variables are written to
/// `RUN_DIR/NAME.env` for the units' `EnvironmentFile=`.
#[derive(Debug, Clone)]
pub struct SystemdSupervisor {
    systemctl: PathBuf,
    run_dir: PathBuf,
}

impl SystemdSupervisor {
    /// A supervisor calling `systemctl` (a path or a name on PATH).
    pub fn new(systemctl: &Path, run_dir: &Path) -> Self {
        Self {
            systemctl: systemctl.to_owned(),
            run_dir: run_dir.to_owned(),
        }
    }

    async fn systemctl(&self, svc: &ServiceSpec, args: &[&str]) -> Result<(), SupervisorError> {
        let err = |message: String| SupervisorError::Systemctl {
            id: svc.id.to_string(),
            args: args.join(" "),
            message,
        };
        let out = tokio::process::Command::new(&self.systemctl)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| err(e.to_string()))?;
        if out.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            Err(err(format!("{} {stderr}", out.status)))
        }
    }

    fn unit_names(svc: &ServiceSpec) -> Result<Vec<String>, SupervisorError> {
        if svc.units.is_empty() {
            return Err(SupervisorError::NoUnits {
                id: svc.id.to_string(),
            });
        }
        Ok(svc
            .units
            .iter()
            .filter_map(|u| u.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect())
    }

    fn write_env(&self, svc: &ServiceSpec) -> Result<(), SupervisorError> {
        let path = self.run_dir.join(format!("{}.env", svc.name()));
        let io = |source| SupervisorError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.run_dir).map_err(io)?;
        crate::pkg::disk::write_atomic(&path, env_file(&svc.env).as_bytes()).map_err(io)
    }
}

/// `KEY=VALUE` lines as systemd's `EnvironmentFile=` reads them.
pub fn env_file(vars: &BTreeMap<String, String>) -> String {
    vars.iter()
        .map(|(k, v)| format!("{k}={}\n", v.replace('\n', " ")))
        .collect()
}

impl Supervisor for SystemdSupervisor {
    fn start<'a>(&'a self, svc: &'a ServiceSpec) -> BoxFuture<'a, Result<(), SupervisorError>> {
        Box::pin(async move {
            let names = Self::unit_names(svc)?;
            self.write_env(svc)?;
            for unit in &svc.units {
                let path = unit.display().to_string();
                self.systemctl(svc, &["link", &path]).await?;
            }
            self.systemctl(svc, &["daemon-reload"]).await?;
            for name in &names {
                self.systemctl(svc, &["restart", name]).await?;
            }
            Ok(())
        })
    }

    fn stop<'a>(&'a self, svc: &'a ServiceSpec) -> BoxFuture<'a, Result<(), SupervisorError>> {
        Box::pin(async move {
            for name in Self::unit_names(svc)?.iter().rev() {
                self.systemctl(svc, &["stop", name]).await?;
            }
            Ok(())
        })
    }

    fn is_running<'a>(&'a self, svc: &'a ServiceSpec) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let Ok(names) = Self::unit_names(svc) else {
                return false;
            };
            for name in &names {
                if self
                    .systemctl(svc, &["is-active", "--quiet", name])
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            true
        })
    }

    fn main_pid<'a>(&'a self, svc: &'a ServiceSpec) -> BoxFuture<'a, Option<u32>> {
        Box::pin(async move {
            let name = Self::unit_names(svc).ok()?.into_iter().next()?;
            let out = tokio::process::Command::new(&self.systemctl)
                .args(["show", "--property", "MainPID", "--value", &name])
                .stdin(Stdio::null())
                .output()
                .await
                .ok()?;
            let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
            (pid > 0).then_some(pid)
        })
    }
}
