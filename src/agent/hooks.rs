//! Service action hooks: the `spec.tasks` of the node's NodeInstall, run in
//! their order, each once per (task id, attempt), each only once the ones
//! before it succeeded. The operator hands a node its next hooks with the
//! one it runs now, so the node goes from one to the next without waiting
//! for the operator to see the first one end.
//!
//! Once per attempt, even across restarts of the agent: before a hook
//! starts, its attempt is recorded durably in `ROOT/tasks/` (one JSON file
//! per attempt, named by the sha256 of `ID\0ATTEMPT`, written with
//! [`write_atomic`]); its result is recorded in the same file when it ends.
//! An agent that finds an attempt recorded as started but without a result
//! (it was stopped or died while the hook ran) never runs it again: it
//! reports it Failed with [`RESTARTED`], and the operator decides whether
//! to try attempt + 1. A recorded result is reported again, in case the
//! status that carried it was lost.
//!
//! The hook runs in a spawned task, so the agent loop (supervision, the
//! status, local requests) goes on meanwhile; only one hook runs at a time.
//! The task holds the root lock shared ([`NodeRoot::hold_read`]) while the
//! hook runs: a switch, which needs it exclusively, waits for the hook, so
//! the package a hook runs from is never swapped under it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::process::Child;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{HookState, NodeTask, NodeTaskStatus};
use crate::pkg::Root;
use crate::pkg::disk::{rfc3339, unix_now, write_atomic};

use super::register::Reporter;
use super::root::{Held, NodeRoot, blocking};
use super::service::AgentEnv;
use super::supervisor::{KILL_GRACE, POLL, alive, signal_group};

/// The message of an attempt the agent found started but unfinished.
pub const RESTARTED: &str = "the agent restarted while the hook ran; not run twice";
/// Lines of a failed hook's output its message carries.
const TAIL_LINES: usize = 10;
/// The most bytes a failed hook's message carries.
const MESSAGE_BYTES: usize = 2000;
/// The most bytes read back from the end of a hook's output.
const TAIL_READ: u64 = 64 * 1024;

/// Why a hook could not run (each variant names its step). The text goes
/// into the attempt's `message` in `status.tasks`.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Reading or writing the record of an attempt in `ROOT/tasks/` failed.
    #[error(
        "cannot {step} the hook record {path}: {source}; check that the agent can write ROOT/tasks/"
    )]
    Record {
        /// `read` or `write`.
        step: &'static str,
        /// The record file or directory.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The task has no program.
    #[error(
        "the {action} hook of service {service} has an empty argv; fix the service's actions.{action}.argv"
    )]
    EmptyArgv {
        /// The service.
        service: String,
        /// The action.
        action: &'static str,
    },
    /// The active set cannot be read.
    #[error(
        "cannot read the active set for the {action} hook of service {service}: {source}; check the node root"
    )]
    ActiveSet {
        /// The service.
        service: String,
        /// The action.
        action: &'static str,
        /// What went wrong.
        source: Box<crate::pkg::RootError>,
    },
    /// The task's package is not in the active set.
    #[error(
        "package {package} of the {action} hook of service {service} is not active on this node (active: {active}); make a set containing it active (spec.target) before this task runs"
    )]
    NotActive {
        /// The package the task names.
        package: String,
        /// The service.
        service: String,
        /// The action.
        action: &'static str,
        /// The active package ids, comma-separated, or `none`.
        active: String,
    },
    /// A relative program climbs out of its package.
    #[error(
        "program {program:?} of the {action} hook of service {service} must stay inside package {package} (`..` is refused; an absolute path is allowed); fix the service's actions.{action}.argv"
    )]
    Escapes {
        /// `argv[0]`.
        program: String,
        /// The package.
        package: String,
        /// The service.
        service: String,
        /// The action.
        action: &'static str,
    },
    /// Without a package the program must be an absolute path.
    #[error(
        "program {program:?} of the {action} hook of service {service} is not an absolute path and the task names no package; name the package or give an absolute path"
    )]
    NotAbsolute {
        /// `argv[0]`.
        program: String,
        /// The service.
        service: String,
        /// The action.
        action: &'static str,
    },
    /// The program does not exist.
    #[error(
        "program {} of the {action} hook of service {service} ({package}) does not exist; ship it in the package or fix the service's actions.{action}.argv",
        program.display()
    )]
    Missing {
        /// The resolved program.
        program: PathBuf,
        /// `package NAME` or `no package`.
        package: String,
        /// The service.
        service: String,
        /// The action.
        action: &'static str,
    },
    /// The hook's log file cannot be opened or written.
    #[error("cannot write the hook log {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The program cannot be started.
    #[error("cannot start {} for the {action} hook of service {service}: {source}", program.display())]
    Spawn {
        /// The resolved program.
        program: PathBuf,
        /// The service.
        service: String,
        /// The action.
        action: &'static str,
        /// What went wrong.
        source: io::Error,
    },
    /// Waiting for the hook failed.
    #[error("cannot wait for the {action} hook of service {service}: {source}")]
    Wait {
        /// The service.
        service: String,
        /// The action.
        action: &'static str,
        /// What went wrong.
        source: io::Error,
    },
}

/// One attempt as `ROOT/tasks/` holds it: its status (Running until it
/// ends) and the process group it runs as.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    status: NodeTaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
}

impl Record {
    /// The record of `task` starting now.
    fn started(task: &NodeTask) -> Self {
        Self {
            status: NodeTaskStatus {
                id: task.id.clone(),
                attempt: task.attempt,
                state: HookState::Running,
                started: Some(now()),
                ..NodeTaskStatus::default()
            },
            pid: None,
        }
    }
}

/// The records of attempts, one file each under `ROOT/tasks/`.
#[derive(Debug, Clone)]
struct Records {
    dir: PathBuf,
}

impl Records {
    /// The file of an attempt: safe whatever the id holds.
    fn path(&self, id: &str, attempt: i32) -> PathBuf {
        let digest = Sha256::digest(format!("{id}\0{attempt}"));
        self.dir.join(format!("{}.json", hex::encode(digest)))
    }

    /// The record of an attempt; an unreadable one counts as started and
    /// unfinished, so that it is never run again.
    fn read(&self, id: &str, attempt: i32) -> Result<Option<Record>, HookError> {
        let path = self.path(id, attempt);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(record_err("read", &path, source)),
        };
        Ok(Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), "unreadable hook record ({e}); taking it as unfinished");
            let status = NodeTaskStatus {
                id: id.to_owned(),
                attempt,
                ..NodeTaskStatus::default()
            };
            Record { status, pid: None }
        })))
    }

    /// Writes `record` durably (temporary file, fsync, rename, fsync).
    fn write(&self, record: &Record) -> Result<(), HookError> {
        if !self.dir.is_dir() {
            std::fs::create_dir_all(&self.dir).map_err(|e| record_err("write", &self.dir, e))?;
            if let Some(parent) = self.dir.parent() {
                crate::pkg::disk::fsync_dir(parent)
                    .map_err(|e| record_err("write", &self.dir, e))?;
            }
        }
        let path = self.path(&record.status.id, record.status.attempt);
        let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other);
        bytes
            .and_then(|bytes| write_atomic(&path, &bytes))
            .map_err(|e| record_err("write", &path, e))
    }

    /// Whether a later attempt of task `id` than `attempt` is recorded.
    fn newer(&self, id: &str, attempt: i32) -> Result<bool, HookError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(record_err("read", &self.dir, e)),
        };
        Ok(entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
            .any(|r| r.status.id == id && r.status.attempt > attempt))
    }
}

fn record_err(step: &'static str, path: &Path, source: io::Error) -> HookError {
    HookError::Record {
        step,
        path: path.to_owned(),
        source,
    }
}

/// What to do about the desired task.
#[derive(Debug)]
enum Decision {
    /// Run it: it was never started.
    Run,
    /// Report its recorded result.
    Report(NodeTaskStatus),
    /// It was started and never finished: report it Failed.
    Interrupted(Record),
    /// Leave it: an older attempt, or one already reported.
    Skip(&'static str),
    /// Its record cannot be read: report it Failed, without running it.
    Refuse(HookError),
}

/// The decision for `task`, from its records and the reported status.
fn decide(records: &Records, task: &NodeTask, reported: Option<&NodeTaskStatus>) -> Decision {
    let same = reported.filter(|r| r.id == task.id);
    if same.is_some_and(|r| r.attempt > task.attempt) {
        return Decision::Skip("a later attempt was reported");
    }
    let this = same.filter(|r| r.attempt == task.attempt);
    let finished = this.is_some_and(|r| r.state != HookState::Running);
    let decision = match records.read(&task.id, task.attempt) {
        Ok(Some(r)) if r.status.state == HookState::Running => Decision::Interrupted(r),
        // Reported as recorded: nothing changes, no need to look further.
        Ok(Some(r)) if this == Some(&r.status) => return Decision::Report(r.status),
        Ok(Some(r)) => Decision::Report(r.status),
        Ok(None) | Err(_) if finished => Decision::Skip("its result was reported"),
        Ok(None) => match this {
            Some(r) => Decision::Interrupted(Record {
                status: r.clone(),
                pid: None,
            }),
            None => Decision::Run,
        },
        Err(e) => return Decision::Refuse(e),
    };
    match records.newer(&task.id, task.attempt) {
        Ok(true) => Decision::Skip("a later attempt is recorded"),
        Err(e) if matches!(decision, Decision::Run) => Decision::Refuse(e),
        Ok(false) | Err(_) => decision,
    }
}

/// The longest a hook's end waits, reported quietly, for the start of the
/// next hook to go out with it (see [`Context::finish_quietly`]).
const QUIET_FOR: Duration = Duration::from_millis(100);

/// Replaces the report of `status`'s task, or adds it.
fn upsert(tasks: &mut Vec<NodeTaskStatus>, status: NodeTaskStatus) {
    match tasks.iter_mut().find(|t| t.id == status.id) {
        Some(t) => *t = status,
        None => tasks.push(status),
    }
}

/// What every hook of this agent shares.
struct Context {
    root: NodeRoot,
    env: AgentEnv,
    reporter: Reporter,
    records: Records,
    logs: PathBuf,
}

impl Context {
    /// Reports an attempt: replaces the report of its task.
    fn report(&self, status: NodeTaskStatus) {
        self.reporter.update(|s| upsert(&mut s.tasks, status));
    }

    /// Keeps the reports of the tasks of `queue` only, in its order.
    fn keep_reports_of(&self, queue: &[NodeTask]) {
        let reports = self.reporter.snapshot().tasks;
        let kept: Vec<NodeTaskStatus> = queue
            .iter()
            .filter_map(|q| reports.iter().find(|r| r.id == q.id).cloned())
            .collect();
        if kept != reports {
            self.reporter.update(|s| s.tasks = kept);
        }
    }

    async fn write(&self, record: Record) -> Result<(), HookError> {
        let records = self.records.clone();
        blocking(move || records.write(&record)).await
    }

    /// Records the result of an attempt, then reports it.
    async fn finish(&self, record: Record) {
        let status = self.record_end(record).await;
        self.report(status);
    }

    /// Records the result of an attempt and reports it quietly: the agent
    /// starts the node's next queued hook at once, and one status write
    /// says both (the end of this one and the start of the next). Should
    /// nothing follow within [`QUIET_FOR`], the report goes out alone.
    async fn finish_quietly(&self, record: Record) {
        let status = self.record_end(record).await;
        self.reporter
            .update_quietly(|s| upsert(&mut s.tasks, status));
        let reporter = self.reporter.clone();
        tokio::spawn(async move {
            tokio::time::sleep(QUIET_FOR).await;
            reporter.flush();
        });
    }

    /// Records the result of an attempt; its status.
    async fn record_end(&self, record: Record) -> NodeTaskStatus {
        let status = record.status.clone();
        if let Err(e) = self.write(record).await {
            tracing::warn!("{e}");
        }
        tracing::info!(task = %status.id, attempt = status.attempt, state = ?status.state,
            message = status.message.as_deref().unwrap_or(""), "hook finished");
        status
    }

    /// `ROOT/logs/hooks/SERVICE.log`.
    fn log_file(&self, service: &str) -> PathBuf {
        self.logs.join(format!("{}.log", file_name(service)))
    }
}

/// The running hook.
struct Running {
    handle: JoinHandle<()>,
    cancel: CancellationToken,
}

/// Runs the hooks of `spec.tasks`, one at a time, in order, once per
/// attempt.
pub struct Hooks {
    ctx: Arc<Context>,
    running: Option<Running>,
}

impl Hooks {
    /// The hooks of the agent on `root`, whose services see `env`,
    /// reporting to `reporter`.
    pub fn new(root: &NodeRoot, env: &AgentEnv, reporter: &Reporter) -> Self {
        let ctx = Context {
            records: Records {
                dir: root.path().join("tasks"),
            },
            logs: root.path().join("logs").join("hooks"),
            root: root.clone(),
            env: env.clone(),
            reporter: reporter.clone(),
        };
        Self {
            ctx: Arc::new(ctx),
            running: None,
        }
    }

    /// Whether a hook runs now.
    pub fn is_running(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| !r.handle.is_finished())
    }

    /// One pass over the desired tasks, in order: a task whose attempt
    /// succeeded lets the pass go on to the next; the first other one is
    /// started if this attempt was never started, its recorded result
    /// reported, or it is reported Failed if it was started but never
    /// finished, and the pass ends there. Does nothing while a hook runs.
    pub async fn pass(&mut self, queue: &[NodeTask]) {
        if self.is_running() {
            return;
        }
        self.running = None;
        self.ctx.keep_reports_of(queue);
        for task in queue {
            if !self.step(task).await {
                return;
            }
        }
    }

    /// One task of a pass; whether the pass goes on to the next (this
    /// attempt succeeded).
    async fn step(&mut self, task: &NodeTask) -> bool {
        let reported = self.ctx.reporter.snapshot().tasks;
        let reported = reported.into_iter().find(|r| r.id == task.id);
        let succeeded =
            |s: &NodeTaskStatus| s.attempt == task.attempt && s.state == HookState::Succeeded;
        let (records, t, r) = (self.ctx.records.clone(), task.clone(), reported.clone());
        match blocking(move || decide(&records, &t, r.as_ref())).await {
            Decision::Run => {
                self.start(task).await;
                false
            }
            Decision::Report(status) => {
                let next = succeeded(&status);
                self.ctx.report(status);
                next
            }
            Decision::Interrupted(record) => {
                self.interrupted(record).await;
                false
            }
            Decision::Skip(why) => {
                tracing::debug!(task = %task.id, attempt = task.attempt, "not running the hook: {why}");
                reported.as_ref().is_some_and(succeeded)
            }
            Decision::Refuse(e) => {
                tracing::warn!(task = %task.id, attempt = task.attempt, "{e}");
                self.ctx
                    .report(failed(Record::started(task).status, e.to_string()));
                false
            }
        }
    }

    /// Writes a hook's end reported quietly, if it is not written yet:
    /// after the [`Hooks::pass`] that follows it, which may have started
    /// the next hook.
    pub fn flush(&self) {
        self.ctx.reporter.flush();
    }

    /// Waits until the running hook has ended and reported; never returns
    /// when none runs (for the agent loop's `select!`).
    pub async fn finished(&mut self) {
        match &mut self.running {
            Some(running) => {
                let _ = (&mut running.handle).await;
                self.running = None;
            }
            None => std::future::pending().await,
        }
    }

    /// Kills the running hook's process group (the agent is stopping); its
    /// attempt stays unfinished and is reported Failed at the next start.
    pub async fn shutdown(&mut self) {
        if let Some(running) = self.running.take() {
            running.cancel.cancel();
            let _ = running.handle.await;
        }
    }

    /// Records the start of `task`, reports it Running and runs it.
    async fn start(&mut self, task: &NodeTask) {
        let record = Record::started(task);
        if let Err(e) = self.ctx.write(record.clone()).await {
            tracing::warn!(task = %task.id, attempt = task.attempt, "{e}");
            return self.ctx.report(failed(record.status, e.to_string()));
        }
        tracing::info!(task = %task.id, attempt = task.attempt, service = %task.service,
            action = task.action.as_str(), "running hook");
        self.ctx.report(record.status.clone());
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(run_hook(
            self.ctx.clone(),
            task.clone(),
            record,
            cancel.clone(),
        ));
        self.running = Some(Running { handle, cancel });
    }

    /// Fails an attempt found started and unfinished, after stopping what
    /// is left of it.
    async fn interrupted(&mut self, record: Record) {
        stop_orphan(&record).await;
        let status = failed(record.status, RESTARTED.to_owned());
        self.ctx.finish(Record { status, pid: None }).await;
    }

    /// Loses the running hook as a crash of the agent would: its process
    /// goes on, its attempt stays unfinished.
    #[cfg(test)]
    fn crash(&mut self) {
        if let Some(running) = self.running.take() {
            running.handle.abort();
        }
    }
}

/// The spawned task of one hook: holds the root lock shared, runs the hook,
/// records and reports the result (nothing when the agent stops).
async fn run_hook(ctx: Arc<Context>, task: NodeTask, record: Record, cancel: CancellationToken) {
    let held = tokio::select! {
        held = ctx.root.hold_read() => held,
        () = cancel.cancelled() => return,
    };
    let ended = execute(&ctx, &held, &task, &record, &cancel).await;
    drop(held);
    let status = match ended {
        Ok(Some((ending, tail))) => conclude(record.status.clone(), &ending, &tail),
        Ok(None) => return,
        Err(e) => failed(record.status.clone(), e.to_string()),
    };
    ctx.finish_quietly(Record { status, pid: None }).await;
}

/// How a hook process ended.
#[derive(Debug)]
enum Ending {
    /// It exited (or a signal ended it).
    Exited(ExitStatus),
    /// It ran out of time and its group was killed.
    TimedOut(Duration),
}

/// Resolves, starts and waits for the hook; its ending and the last lines
/// of its output, or `None` when the agent stopped it.
async fn execute(
    ctx: &Context,
    held: &Held,
    task: &NodeTask,
    record: &Record,
    cancel: &CancellationToken,
) -> Result<Option<(Ending, String)>, HookError> {
    let (root, t) = (held.root(), task.clone());
    let program = blocking(move || program_of(&root, &t)).await?;
    let (log_path, t) = (ctx.log_file(&task.service), task.clone());
    let path = log_path.clone();
    let (log, offset) = blocking(move || open_log(&path, &t)).await?;
    let mut child = spawn(&program, task, hook_env(&ctx.env, task), log)?;
    let pid = child.id().unwrap_or_default();
    let running = Record {
        pid: Some(pid),
        ..record.clone()
    };
    if let Err(e) = ctx.write(running).await {
        tracing::warn!(task = %task.id, "{e}");
    }
    let timeout = Duration::from_secs(u64::try_from(task.timeout_seconds).unwrap_or(1).max(1));
    let ending = wait_for(&mut child, pid, timeout, cancel)
        .await
        .map_err(|source| HookError::Wait {
            service: task.service.clone(),
            action: task.action.as_str(),
            source,
        })?;
    let Some(ending) = ending else {
        return Ok(None);
    };
    let tail = blocking(move || tail_of(&log_path, offset)).await;
    Ok(Some((ending, tail)))
}

/// The program of a hook and its working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Program {
    path: PathBuf,
    cwd: PathBuf,
}

/// Where `argv[0]` is: inside the task's active package, or an absolute
/// path; the working directory is the package's (the node root without
/// a package).
fn program_of(root: &Root, task: &NodeTask) -> Result<Program, HookError> {
    let (service, action) = (task.service.clone(), task.action.as_str());
    let argv0 = task
        .argv
        .first()
        .ok_or(HookError::EmptyArgv { service, action })?;
    let program = match &task.package {
        Some(package) => {
            let dir = active_dir(root, package, task)?;
            // An absolute program (e.g. /bin/sh) runs in the package
            // directory too; a relative one must stay inside it.
            let path = if Path::new(argv0).is_absolute() {
                PathBuf::from(argv0)
            } else {
                let inside = relative_inside(argv0).ok_or_else(|| HookError::Escapes {
                    program: argv0.clone(),
                    package: package.clone(),
                    service: task.service.clone(),
                    action,
                })?;
                dir.join(inside)
            };
            Program { path, cwd: dir }
        }
        None if Path::new(argv0).is_absolute() => Program {
            path: PathBuf::from(argv0),
            cwd: root.path().to_owned(),
        },
        None => {
            return Err(HookError::NotAbsolute {
                program: argv0.clone(),
                service: task.service.clone(),
                action,
            });
        }
    };
    if !program.path.is_file() {
        return Err(HookError::Missing {
            program: program.path,
            package: task
                .package
                .as_ref()
                .map_or_else(|| "no package".into(), |p| format!("package {p}")),
            service: task.service.clone(),
            action,
        });
    }
    Ok(program)
}

/// The directory of the active package named `package` (a name or an id).
fn active_dir(root: &Root, package: &str, task: &NodeTask) -> Result<PathBuf, HookError> {
    let action = task.action.as_str();
    let set = root.active().map_err(|e| HookError::ActiveSet {
        service: task.service.clone(),
        action,
        source: Box::new(e),
    })?;
    let ids = set.map(|s| s.ids).unwrap_or_default();
    match ids
        .iter()
        .find(|id| id.name() == package || id.to_string() == package)
    {
        Some(id) => Ok(root.package_dir(id)),
        None => Err(HookError::NotActive {
            package: package.to_owned(),
            service: task.service.clone(),
            action,
            active: if ids.is_empty() {
                "none".into()
            } else {
                ids.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        }),
    }
}

/// `program` as a path that stays inside its base: relative, without `..`.
fn relative_inside(program: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in Path::new(program).components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// The hook's variables: the agent's (`THESEUS_NODE_NAME`, `THESEUS_ROOT`,
/// `--env`), the task's `env` over them, and the task's own.
fn hook_env(agent: &AgentEnv, task: &NodeTask) -> BTreeMap<String, String> {
    let mut vars = agent.vars.clone();
    vars.extend(task.env.clone());
    vars.insert("THESEUS_SERVICE".into(), task.service.clone());
    vars.insert("THESEUS_ACTION".into(), task.action.as_str().into());
    vars.insert("THESEUS_TASK_ID".into(), task.id.clone());
    vars.insert("THESEUS_ATTEMPT".into(), task.attempt.to_string());
    vars
}

/// A service name as a file name: anything but `[A-Za-z0-9._-]` becomes
/// `_`, and it never starts with a dot.
fn file_name(service: &str) -> String {
    let name: String = service
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .collect();
    if name.starts_with('.') || name.is_empty() {
        format!("_{name}")
    } else {
        name
    }
}

/// Opens the service's hook log for appending and writes the attempt's
/// header; the file and where the attempt's output starts.
fn open_log(path: &Path, task: &NodeTask) -> Result<(File, u64), HookError> {
    let err = |source| HookError::Log {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut file = File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    let header = format!(
        "==== {} task {} attempt {}: {} hook of service {}: {:?} ====\n",
        rfc3339(unix_now()),
        task.id,
        task.attempt,
        task.action.as_str(),
        task.service,
        task.argv,
    );
    file.write_all(header.as_bytes()).map_err(err)?;
    let offset = file.metadata().map_err(err)?.len();
    Ok((file, offset))
}

/// Starts the hook in its own process group, output appended to `log`.
fn spawn(
    program: &Program,
    task: &NodeTask,
    env: BTreeMap<String, String>,
    log: File,
) -> Result<Child, HookError> {
    let err = |source| HookError::Spawn {
        program: program.path.clone(),
        service: task.service.clone(),
        action: task.action.as_str(),
        source,
    };
    let stderr = log.try_clone().map_err(err)?;
    tokio::process::Command::new(&program.path)
        .args(task.argv.iter().skip(1))
        .envs(env)
        .current_dir(&program.cwd)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(err)
}

/// Waits for the hook until `timeout`; then, or when `cancel` fires, kills
/// its process group. `None` when cancelled.
async fn wait_for(
    child: &mut Child,
    pgid: u32,
    timeout: Duration,
    cancel: &CancellationToken,
) -> io::Result<Option<Ending>> {
    let ending = tokio::select! {
        status = child.wait() => return Ok(Some(Ending::Exited(status?))),
        () = tokio::time::sleep(timeout) => Some(Ending::TimedOut(timeout)),
        () = cancel.cancelled() => None,
    };
    kill_group(pgid).await;
    child.wait().await?;
    Ok(ending)
}

/// SIGTERM to the process group, SIGKILL if any of it is left after
/// [`KILL_GRACE`]; returns once the group is gone (a SIGKILL is delivered
/// asynchronously), so a reported end means nothing of the hook runs.
pub(super) async fn kill_group(pgid: u32) {
    signal_group("TERM", pgid).await;
    if !group_gone_within(pgid, KILL_GRACE).await {
        tracing::warn!(
            pgid,
            "hook still running {}s after SIGTERM, sending SIGKILL",
            KILL_GRACE.as_secs()
        );
        signal_group("KILL", pgid).await;
        if !group_gone_within(pgid, KILL_GRACE).await {
            tracing::warn!(pgid, "hook process group still present after SIGKILL");
        }
    }
}

async fn group_gone_within(pgid: u32, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while blocking(move || group_alive(pgid)).await {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
    true
}

/// Whether a live process (not a zombie) of process group `pgid` is left.
fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| in_group(pid, pgid))
}

fn in_group(pid: u32, pgid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // After the parenthesised command name: state, ppid, pgrp.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().take(3).collect();
    matches!(fields.as_slice(), [state, _, pgrp]
        if *state != "Z" && *state != "X" && pgrp.parse() == Ok(pgid))
}

/// Kills the process group of an unfinished attempt that a previous agent
/// left running, if its leader still runs that attempt (its environment
/// names the task and attempt, so a reused pid is left alone).
async fn stop_orphan(record: &Record) {
    let Some(pid) = record.pid else { return };
    let status = record.status.clone();
    if !blocking(move || runs_attempt(pid, &status)).await {
        return;
    }
    tracing::warn!(pid, task = %record.status.id, attempt = record.status.attempt,
        "a hook left by the previous agent still runs; killing its process group");
    kill_group(pid).await;
}

fn runs_attempt(pid: u32, status: &NodeTaskStatus) -> bool {
    if !alive(pid) {
        return false;
    }
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let id = format!("THESEUS_TASK_ID={}", status.id);
    let attempt = format!("THESEUS_ATTEMPT={}", status.attempt);
    let has = |want: &str| environ.split(|b| *b == 0).any(|v| v == want.as_bytes());
    has(&id) && has(&attempt)
}

/// The last [`TAIL_LINES`] lines written to `path` after `offset`.
fn tail_of(path: &Path, offset: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(offset, |m| m.len());
    let start = offset.max(len.saturating_sub(TAIL_READ));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err()
        || file
            .take(len.saturating_sub(start))
            .read_to_end(&mut bytes)
            .is_err()
    {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// The status of a hook that ended.
fn conclude(started: NodeTaskStatus, ending: &Ending, tail: &str) -> NodeTaskStatus {
    let reason = match ending {
        Ending::Exited(status) if status.success() => {
            return NodeTaskStatus {
                state: HookState::Succeeded,
                exit_code: Some(0),
                message: None,
                finished: Some(now()),
                ..started
            };
        }
        Ending::Exited(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => format!("ended with {status}"),
        },
        Ending::TimedOut(timeout) => format!("timed out after {}s", timeout.as_secs()),
    };
    let exit_code = match ending {
        Ending::Exited(status) => status.code(),
        Ending::TimedOut(_) => None,
    };
    NodeTaskStatus {
        exit_code,
        ..failed(started, with_tail(reason, tail))
    }
}

/// `reason` and the output's last lines, at most [`MESSAGE_BYTES`] in all
/// (the oldest of the lines are cut first).
fn with_tail(reason: String, tail: &str) -> String {
    const SEP: &str = "; last output:\n";
    let tail = tail.trim_end();
    if tail.is_empty() {
        return reason;
    }
    let budget = MESSAGE_BYTES.saturating_sub(reason.len() + SEP.len());
    let mut cut = tail.len().saturating_sub(budget);
    while !tail.is_char_boundary(cut) {
        cut += 1;
    }
    format!("{reason}{SEP}{}", &tail[cut..])
}

/// `status` failed now with `message`.
fn failed(status: NodeTaskStatus, message: String) -> NodeTaskStatus {
    NodeTaskStatus {
        state: HookState::Failed,
        exit_code: None,
        message: Some(message),
        finished: Some(now()),
        ..status
    }
}

/// Now, in whole seconds as the API (and so the record) keeps it: a
/// status read back from its record equals the one reported.
fn now() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use crate::api::{NodeInstallStatus, TaskAction};
    use crate::pkg::{ActivateOptions, PackageId};

    use super::*;

    const WAIT: Duration = Duration::from_secs(30);

    fn open_root(path: &Path) -> NodeRoot {
        NodeRoot::new(Root::open(path).unwrap())
    }

    /// A runner over `root` with a fresh status, as a (re)started agent has.
    fn runner(root: &NodeRoot) -> (Hooks, Reporter) {
        let reporter = Reporter::new(NodeInstallStatus::default());
        let agent_env = [("AGENT_VAR".to_owned(), "from-agent".to_owned())];
        let env = AgentEnv::new("node-1", root.path(), &agent_env);
        (Hooks::new(root, &env, &reporter), reporter)
    }

    fn task(id: &str, attempt: i32, script: &str) -> NodeTask {
        NodeTask {
            id: id.into(),
            attempt,
            service: "store".into(),
            action: TaskAction::Install,
            package: None,
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout_seconds: 30,
            env: BTreeMap::from([("EXTRA".to_owned(), "from-task".to_owned())]),
        }
    }

    /// One pass, waiting for the hook it may start; the reported task.
    async fn pass(hooks: &mut Hooks, reporter: &Reporter, task: &NodeTask) -> NodeTaskStatus {
        hooks.pass(std::slice::from_ref(task)).await;
        if hooks.running.is_some() {
            tokio::time::timeout(WAIT, hooks.finished())
                .await
                .expect("the hook ends");
        }
        report(reporter, &task.id).expect("a task status")
    }

    /// The reported attempt of task `id`.
    fn report(reporter: &Reporter, id: &str) -> Option<NodeTaskStatus> {
        reporter.snapshot().tasks.into_iter().find(|t| t.id == id)
    }

    fn runs(count: &Path) -> usize {
        std::fs::read_to_string(count).map_or(0, |t| t.lines().count())
    }

    fn pid_in(path: &Path) -> u32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits until the running attempt of `task` has recorded its pid.
    async fn recorded_pid(hooks: &Hooks, task: &NodeTask) -> u32 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let record = hooks.ctx.records.read(&task.id, task.attempt).unwrap();
            if let Some(pid) = record.and_then(|r| r.pid) {
                return pid;
            }
            assert!(tokio::time::Instant::now() < deadline, "no pid recorded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_hook_sees_the_agent_and_task_environment_and_logs_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let root = open_root(&dir.path().join("root"));
        let (mut hooks, reporter) = runner(&root);
        let out = dir.path().join("env");
        let script = format!(
            "printf '%s\\n' \"$THESEUS_SERVICE\" \"$THESEUS_ACTION\" \"$THESEUS_TASK_ID\" \
             \"$THESEUS_ATTEMPT\" \"$THESEUS_NODE_NAME\" \"$AGENT_VAR\" \"$EXTRA\" \"$PWD\" > '{}'; \
             echo hello from the hook",
            out.display()
        );
        let t = task("node-1/store/install", 1, &script);
        let status = pass(&mut hooks, &reporter, &t).await;
        assert_eq!(status.state, HookState::Succeeded, "{status:?}");
        assert_eq!(status.exit_code, Some(0));
        assert!(status.started.is_some() && status.finished.is_some());
        let seen = std::fs::read_to_string(&out).unwrap();
        let root_dir = root.path().display().to_string();
        let expected = [
            "store",
            "install",
            "node-1/store/install",
            "1",
            "node-1",
            "from-agent",
            "from-task",
            root_dir.as_str(),
        ];
        assert_eq!(seen.lines().collect::<Vec<_>>(), expected);
        let record = hooks.ctx.records.read(&t.id, 1).unwrap().unwrap();
        assert_eq!(record.status, status, "the result is recorded");
        let log = std::fs::read_to_string(root.path().join("logs/hooks/store.log")).unwrap();
        assert!(log.contains("task node-1/store/install attempt 1"), "{log}");
        assert!(log.contains("hello from the hook"), "{log}");
    }

    #[tokio::test]
    async fn a_hook_s_end_goes_out_with_the_next_hook_s_start_in_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let root = open_root(dir.path());
        let (mut hooks, reporter) = runner(&root);
        let queue = [task("first", 1, "true"), task("second", 1, "sleep 0.2")];
        let mut writes = reporter.subscribe();
        writes.borrow_and_update();
        hooks.pass(&queue).await;
        assert!(writes.has_changed().unwrap(), "the first start is written");
        writes.borrow_and_update();
        tokio::time::timeout(WAIT, hooks.finished()).await.unwrap();
        assert!(
            !writes.has_changed().unwrap(),
            "the end alone wakes no write"
        );
        assert_eq!(
            report(&reporter, "first").map(|r| r.state),
            Some(HookState::Succeeded),
            "yet it is in the status"
        );
        hooks.pass(&queue).await;
        hooks.flush();
        assert!(writes.has_changed().unwrap());
        let states: Vec<(String, HookState)> = writes
            .borrow_and_update()
            .tasks
            .iter()
            .map(|t| (t.id.clone(), t.state))
            .collect();
        assert_eq!(
            states,
            [
                ("first".to_owned(), HookState::Succeeded),
                ("second".to_owned(), HookState::Running)
            ],
            "one write says both"
        );
        // The last hook: nothing follows, and its end goes out alone soon.
        tokio::time::timeout(WAIT, hooks.finished()).await.unwrap();
        tokio::time::timeout(WAIT, writes.changed())
            .await
            .expect("written after a short wait")
            .unwrap();
        assert_eq!(
            report(&reporter, "second").map(|r| r.state),
            Some(HookState::Succeeded)
        );
    }

    #[tokio::test]
    async fn a_failed_hook_reports_its_exit_code_and_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let root = open_root(dir.path());
        let (mut hooks, reporter) = runner(&root);
        let earlier = task("earlier", 1, "echo from another attempt");
        pass(&mut hooks, &reporter, &earlier).await;
        let script = "for i in $(seq 1 30); do echo \"line $i\"; done; echo oops >&2; exit 3";
        let status = pass(&mut hooks, &reporter, &task("failing", 1, script)).await;
        assert_eq!(status.state, HookState::Failed);
        assert_eq!(status.exit_code, Some(3));
        let message = status.message.unwrap();
        assert!(message.starts_with("exit code 3"), "{message}");
        assert!(message.ends_with("line 22\nline 23\nline 24\nline 25\nline 26\nline 27\nline 28\nline 29\nline 30\noops"), "{message}");
        assert!(
            !message.contains("line 21"),
            "only the last 10 lines: {message}"
        );
        assert!(!message.contains("another attempt"), "{message}");
    }

    #[test]
    fn a_message_is_capped_keeping_the_newest_output() {
        let tail = format!("{}\nthe end é", "é".repeat(3000));
        let message = with_tail("exit code 1".into(), &tail);
        assert!(message.len() <= MESSAGE_BYTES, "{}", message.len());
        assert!(message.starts_with("exit code 1; last output:\n"));
        assert!(message.ends_with("the end é"));
        assert_eq!(with_tail("exit code 1".into(), "\n"), "exit code 1");
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_with_its_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let root = open_root(&dir.path().join("root"));
        let (mut hooks, reporter) = runner(&root);
        let (bg, leader) = (dir.path().join("bg"), dir.path().join("leader"));
        // The background child ignores SIGTERM: only the SIGKILL ends it.
        let script = format!(
            "(trap '' TERM; exec sleep 60) & echo $! > '{}'; echo $$ > '{}'; sleep 60",
            bg.display(),
            leader.display()
        );
        let mut t = task("slow", 1, &script);
        t.timeout_seconds = 1;
        let status = pass(&mut hooks, &reporter, &t).await;
        assert_eq!(status.state, HookState::Failed);
        assert_eq!(status.exit_code, None);
        let message = status.message.unwrap();
        assert!(message.starts_with("timed out after 1s"), "{message}");
        let (bg, leader) = (pid_in(&bg), pid_in(&leader));
        assert!(!alive(leader), "the hook is gone");
        assert!(!alive(bg), "its background child is gone");
        assert!(!group_alive(leader));
    }

    #[tokio::test]
    async fn an_attempt_runs_once_even_across_restarts_and_older_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let root = open_root(&dir.path().join("root"));
        let count = dir.path().join("count");
        let script = format!("echo run >> '{}'", count.display());
        let (first, second) = (task("t", 1, &script), task("t", 2, &script));
        let (mut hooks, reporter) = runner(&root);
        let done = pass(&mut hooks, &reporter, &first).await;
        assert_eq!(done.state, HookState::Succeeded);
        for _ in 0..2 {
            assert_eq!(pass(&mut hooks, &reporter, &first).await, done);
        }
        assert_eq!(runs(&count), 1);
        drop(hooks);
        // A restarted agent whose status was lost reports the result again.
        let (mut hooks, reporter) = runner(&root);
        assert_eq!(pass(&mut hooks, &reporter, &first).await, done);
        assert_eq!(runs(&count), 1);
        let retried = pass(&mut hooks, &reporter, &second).await;
        assert_eq!((retried.attempt, retried.state), (2, HookState::Succeeded));
        assert_eq!(runs(&count), 2, "a new attempt runs");
        assert_eq!(pass(&mut hooks, &reporter, &first).await, retried);
        let (mut hooks, reporter) = runner(&root);
        hooks.pass(std::slice::from_ref(&first)).await;
        assert!(hooks.running.is_none(), "an older attempt never runs");
        assert_eq!(reporter.snapshot().tasks, vec![]);
        assert_eq!(runs(&count), 2);
    }

    /// Passes over `queue` as the agent loop makes them (one more each time
    /// a hook ends) until one starts nothing.
    async fn passes(hooks: &mut Hooks, queue: &[NodeTask]) {
        loop {
            hooks.pass(queue).await;
            if hooks.running.is_none() {
                return;
            }
            tokio::time::timeout(WAIT, hooks.finished())
                .await
                .expect("the hook ends");
        }
    }

    #[tokio::test]
    async fn queued_hooks_run_in_order_each_after_the_one_before_succeeded() {
        let dir = tempfile::tempdir().unwrap();
        let root = open_root(&dir.path().join("root"));
        let order = dir.path().join("order");
        let step = |id: &str, exit: i32| {
            task(
                id,
                1,
                &format!("echo {id} >> '{}'; exit {exit}", order.display()),
            )
        };
        let (mut hooks, reporter) = runner(&root);
        let queue = [step("a", 0), step("b", 0), step("c", 0)];
        passes(&mut hooks, &queue).await;
        let ran = std::fs::read_to_string(&order).unwrap();
        assert_eq!(ran, "a\nb\nc\n", "in order, each once, without a new spec");
        let reports = reporter.snapshot().tasks;
        let ids: Vec<_> = reports.iter().map(|r| (r.id.as_str(), r.state)).collect();
        assert_eq!(
            ids,
            [
                ("a", HookState::Succeeded),
                ("b", HookState::Succeeded),
                ("c", HookState::Succeeded)
            ]
        );

        // A failure stops the queue: what comes after it waits for a new
        // attempt of the failed one.
        std::fs::remove_file(&order).unwrap();
        let queue = [step("d", 0), step("e", 3), step("f", 0)];
        passes(&mut hooks, &queue).await;
        assert_eq!(std::fs::read_to_string(&order).unwrap(), "d\ne\n");
        let reports = reporter.snapshot().tasks;
        let ids: Vec<_> = reports.iter().map(|r| (r.id.as_str(), r.state)).collect();
        assert_eq!(ids, [("d", HookState::Succeeded), ("e", HookState::Failed)]);
        let retry = [
            step("d", 0),
            task("e", 2, &format!("echo e2 >> '{}'", order.display())),
            step("f", 0),
        ];
        passes(&mut hooks, &retry).await;
        assert_eq!(std::fs::read_to_string(&order).unwrap(), "d\ne\ne2\nf\n");
        // Reports of tasks no longer asked for are dropped.
        hooks.pass(&retry[2..]).await;
        let reports = reporter.snapshot().tasks;
        assert_eq!(reports.len(), 1);
        assert_eq!(
            (reports[0].id.as_str(), reports[0].state),
            ("f", HookState::Succeeded)
        );
    }

    #[tokio::test]
    async fn a_hook_interrupted_by_a_restart_is_failed_and_never_run_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = open_root(&dir.path().join("root"));
        let (count, leader) = (dir.path().join("count"), dir.path().join("leader"));
        let script = format!(
            "echo $$ > '{}'; echo run >> '{}'; sleep 60",
            leader.display(),
            count.display()
        );
        let t = task("long", 1, &script);
        let (mut hooks, reporter) = runner(&root);
        hooks.pass(std::slice::from_ref(&t)).await;
        let running = report(&reporter, &t.id).unwrap();
        assert_eq!(running.state, HookState::Running);
        assert!(running.started.is_some());
        let pid = recorded_pid(&hooks, &t).await;
        hooks.crash();
        assert!(alive(pid), "the hook outlives the crashed agent");

        let (mut hooks, reporter) = runner(&root);
        let status = pass(&mut hooks, &reporter, &t).await;
        assert_eq!(status.state, HookState::Failed);
        assert_eq!(status.message.as_deref(), Some(RESTARTED));
        assert!(!group_alive(pid), "the orphaned hook is killed");
        assert_eq!(pass(&mut hooks, &reporter, &t).await, status);
        let record = hooks.ctx.records.read("long", 1).unwrap().unwrap();
        assert_eq!(record.status, status, "the failure is recorded");
        let deadline = tokio::time::Instant::now() + WAIT;
        while !leader.exists() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(runs(&count), 1, "never run twice");
    }

    #[tokio::test]
    async fn a_change_of_the_root_waits_for_the_running_hook_and_reads_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = open_root(dir.path());
        let (mut hooks, reporter) = runner(&root);
        let t = task("holding", 1, "sleep 1");
        hooks.pass(std::slice::from_ref(&t)).await;
        recorded_pid(&hooks, &t).await;
        let read = tokio::time::timeout(Duration::from_millis(500), root.read(|r| r.current()));
        assert_eq!(read.await.expect("reads go on"), None);
        let other = root.clone();
        let change = tokio::spawn(async move { other.change_exclusively(|_| ()).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(hooks.is_running());
        assert!(!change.is_finished(), "the change waits for the hook");
        tokio::time::timeout(WAIT, hooks.finished()).await.unwrap();
        tokio::time::timeout(WAIT, change).await.unwrap().unwrap();
        let status = report(&reporter, &t.id).unwrap();
        assert_eq!(status.state, HookState::Succeeded);
    }

    /// A root whose active set is `store--1`, with an executable
    /// `bin/hook` that writes its working directory and action to `$OUT`.
    async fn root_with_store(dir: &Path) -> (NodeRoot, PackageId) {
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("bin")).unwrap();
        std::fs::write(src.join("pkginfo.json"), r#"{"id":"store--1"}"#).unwrap();
        let hook = src.join("bin/hook");
        std::fs::write(
            &hook,
            "#!/bin/sh\npwd > \"$OUT\"\necho \"$THESEUS_ACTION\" >> \"$OUT\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        let built = crate::pkg::build::build(&src, &dir.join("out")).unwrap();
        let root = Root::open(&dir.join("root")).unwrap();
        root.add_file(&built.path).unwrap();
        let id: PackageId = "store--1".parse().unwrap();
        root.activate(std::slice::from_ref(&id), None, ActivateOptions::default())
            .await
            .unwrap();
        (NodeRoot::new(root), id)
    }

    fn in_package(id: &str, package: &str, program: &str, out: &Path) -> NodeTask {
        NodeTask {
            package: Some(package.into()),
            argv: vec![program.into()],
            env: BTreeMap::from([("OUT".to_owned(), out.display().to_string())]),
            ..task(id, 1, "")
        }
    }

    #[tokio::test]
    async fn a_package_hook_runs_inside_its_active_package() {
        let dir = tempfile::tempdir().unwrap();
        let (root, id) = root_with_store(dir.path()).await;
        let (mut hooks, reporter) = runner(&root);
        let out = dir.path().join("out.txt");
        let package_dir = root.path().join("packages").join(id.to_string());
        for (n, package) in ["store", "store--1"].iter().enumerate() {
            let t = in_package(&format!("ok-{n}"), package, "./bin/hook", &out);
            let status = pass(&mut hooks, &reporter, &t).await;
            assert_eq!(status.state, HookState::Succeeded, "{status:?}");
            let seen = std::fs::read_to_string(&out).unwrap();
            assert_eq!(seen, format!("{}\ninstall\n", package_dir.display()));
        }
    }

    #[tokio::test]
    async fn a_hook_outside_the_active_packages_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let (root, _) = root_with_store(dir.path()).await;
        let (mut hooks, reporter) = runner(&root);
        let out = dir.path().join("out.txt");
        let cases: &[(&str, Option<&str>, &str, &[&str])] = &[
            (
                "up",
                Some("store"),
                "../store--1/bin/hook",
                &[
                    "\"../store--1/bin/hook\"",
                    "must stay inside package store",
                    "`..`",
                ],
            ),
            (
                "abs-inactive",
                Some("web"),
                "/bin/true",
                &["package web", "not active"],
            ),
            (
                "inactive",
                Some("web"),
                "bin/hook",
                &[
                    "package web",
                    "install hook of service store",
                    "not active",
                    "active: store--1",
                    "spec.target",
                ],
            ),
            (
                "missing",
                Some("store"),
                "bin/nope",
                &[
                    "bin/nope",
                    "does not exist",
                    "package store",
                    "install hook of service store",
                ],
            ),
            (
                "relative",
                None,
                "bin/hook",
                &["\"bin/hook\"", "not an absolute path", "name the package"],
            ),
            (
                "gone",
                None,
                "/nonexistent/hook",
                &["/nonexistent/hook", "does not exist", "no package"],
            ),
        ];
        for (id, package, program, expected) in cases {
            let mut t = in_package(id, package.unwrap_or_default(), program, &out);
            t.package = package.map(str::to_owned);
            let status = pass(&mut hooks, &reporter, &t).await;
            assert_eq!(status.state, HookState::Failed, "{id}");
            let message = status.message.unwrap();
            for part in *expected {
                assert!(message.contains(part), "{id}: {part:?} in {message}");
            }
        }
        assert!(!out.exists(), "no hook ran");
    }

    #[test]
    fn relative_programs_stay_inside_and_service_names_make_file_names() {
        let cases = [
            ("bin/hook", Some("bin/hook")),
            ("./bin/./hook", Some("bin/hook")),
            ("hook", Some("hook")),
            ("bin/../../x", None),
            ("..", None),
            ("/bin/sh", None),
            ("", None),
            (".", None),
        ];
        for (program, expected) in cases {
            assert_eq!(
                relative_inside(program),
                expected.map(PathBuf::from),
                "{program}"
            );
        }
        assert_eq!(file_name("store"), "store");
        assert_eq!(file_name("../etc/x"), "_.._etc_x");
        assert_eq!(file_name(""), "_");
    }

    #[test]
    fn each_attempt_is_recorded_under_its_own_safe_name() {
        let records = Records {
            dir: PathBuf::from("/r/tasks"),
        };
        let path = records.path("../../etc/passwd", 1);
        assert_eq!(path.parent(), Some(Path::new("/r/tasks")));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(name.len(), 64 + ".json".len(), "{name}");
        assert_ne!(records.path("a", 12), records.path("a1", 2));
    }
}
