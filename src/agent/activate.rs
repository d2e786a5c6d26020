//! The switch procedure: fetch → validate → build → stop → switch → start →
//! health check → Active; on any failure switch back, restart the old
//! services and report RolledBack with the reason.
//!
//! An activation holds the root's change lock from its journal to its
//! switch, so two never interleave; the root lock, which keeps readers out,
//! only while it builds and while it switches (see [`super::root`]). Its
//! [`Activation`] lives on a blocking thread that does every step touching
//! the disk, fetching included, and waits there while the agent reports the
//! phase and stops the old services.
//!
//! Between the switch and a verdict the agent keeps a note,
//! `ROOT/agent.json`, naming the set it is verifying: an agent killed while
//! Verifying resumes the verification when it restarts instead of taking an
//! unverified set for Active.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::api::{NodePhase, TargetSecret};
use crate::pkg::accepted::AcceptedVersions;
use crate::pkg::secrets::SecretValues;
use crate::pkg::trust::{self, Grant, Policy, Refusal};
use crate::pkg::{ActivateOptions, Activation, FetchOptions, Fetcher, PackageId, RootError};

use super::health::HealthError;
use super::root::{Change, NodeRoot, blocking};
use super::secrets::{self, SECRET_UNAVAILABLE, SecretError};
use super::service::{AgentEnv, ServiceError, ServiceSpec, services_of};
use super::supervisor::{Supervisor, SupervisorError};

/// Time between two health probes while verifying.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// The health timeout when the target does not set one.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
const NOTE: &str = "agent.json";

/// The agent's note of a switch awaiting its health verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// The set hash being verified.
    pub verifying: String,
}

/// Reads the note under `root`, if any.
pub fn read_note(root: &Path) -> Option<Note> {
    let bytes = std::fs::read(root.join(NOTE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_note(root: &Path, hash: &str) -> Result<(), RootError> {
    let note = Note {
        verifying: hash.to_owned(),
    };
    let path = root.join(NOTE);
    let bytes = serde_json::to_vec(&note).expect("a note serializes");
    crate::pkg::disk::write_atomic(&path, &bytes).map_err(|source| RootError::Io { path, source })
}

/// Removes the note under `root`.
pub fn clear_note(root: &Path) {
    let _ = std::fs::remove_file(root.join(NOTE));
}

/// The services of a set cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The root cannot be read or the set cannot be built.
    #[error(transparent)]
    Root(Box<RootError>),
    /// A service of the set cannot be resolved.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<RootError> for ResolveError {
    fn from(e: RootError) -> Self {
        Self::Root(Box::new(e))
    }
}

/// Why a switch, a verification or a rollback failed. It becomes text only
/// in the NodeInstall status and in answers of the local API.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// The activation cannot start (its journal cannot be written).
    #[error("{0}")]
    Begin(#[source] Box<RootError>),
    /// Downloading, verifying or unpacking a package failed.
    #[error("fetch failed: {0}")]
    Fetch(#[source] Box<RootError>),
    /// The repository is not trusted; nothing was downloaded.
    #[error("{0}")]
    Refused(#[source] Refusal),
    /// The repository's index is not trusted.
    #[error("{message}")]
    UntrustedIndex {
        /// What was refused and which keys were expected.
        message: String,
        /// The fetch error.
        source: Box<RootError>,
    },
    /// The set breaks the set rules, or its services cannot be resolved.
    #[error("invalid set: {0}")]
    Build(#[source] ResolveError),
    /// The agent's note cannot be written.
    #[error("{0}")]
    Note(#[source] Box<RootError>),
    /// An old service does not stop.
    #[error("cannot stop the old services: {0}")]
    StopOld(#[source] SupervisorError),
    /// Renaming `current` failed.
    #[error("switch failed: {0}")]
    Switch(#[source] Box<RootError>),
    /// A service does not start.
    #[error("{source}")]
    Start {
        /// The package.
        service: PackageId,
        /// What the supervisor said.
        source: SupervisorError,
    },
    /// A service is not running.
    #[error("service {service} is not running; see {}", log.display())]
    NotRunning {
        /// The package.
        service: PackageId,
        /// Its log file.
        log: PathBuf,
    },
    /// A service fails its health probe.
    #[error("service {service}: {source}")]
    Unhealthy {
        /// The package.
        service: PackageId,
        /// The probe's verdict.
        source: HealthError,
    },
    /// The services were still not healthy when the time ran out.
    #[error("not healthy within {}s: {last}", timeout.as_secs())]
    Timeout {
        /// The time they had.
        timeout: Duration,
        /// The last verdict.
        #[source]
        last: Box<SwitchError>,
    },
    /// The switch failed early and the old services do not start again.
    #[error("{reason}; restarting the old services: {source}")]
    RestartOld {
        /// Why the switch failed.
        reason: Box<SwitchError>,
        /// Why the old services do not start.
        source: Box<SwitchError>,
    },
    /// The new set failed and there is no older generation to go back to.
    #[error(
        "{reason}; there is no previous set to roll back to, so the failed set stays active with its services stopped"
    )]
    NoPrevious {
        /// Why the new set failed.
        #[source]
        reason: Box<SwitchError>,
    },
    /// The new set failed and switching back failed.
    #[error("{reason}; rollback failed: {source}")]
    Rollback {
        /// Why the new set failed.
        reason: Box<SwitchError>,
        /// Why the rollback failed.
        source: Box<RootError>,
    },
    /// Rolled back, but the old set's services cannot be read.
    #[error("{reason}; rolled back, but {source}")]
    OldUnreadable {
        /// Why the new set failed.
        reason: Box<SwitchError>,
        /// Why the old services cannot be read.
        source: ResolveError,
    },
    /// Rolled back, but the old services do not start.
    #[error("{reason}; rolled back, but the old services do not start: {source}")]
    OldDoNotStart {
        /// Why the new set failed.
        reason: Box<SwitchError>,
        /// Why the old services do not start.
        source: Box<SwitchError>,
    },
    /// Rolled back, but the old services are not healthy either.
    #[error(
        "{reason}; rolled back, but the old services are not healthy either ({source}); check the node's service logs"
    )]
    OldUnhealthy {
        /// Why the new set failed.
        reason: Box<SwitchError>,
        /// Why the old services are not healthy.
        source: Box<SwitchError>,
    },
    /// A Secret the target's packages refer to cannot be read; nothing was
    /// fetched or changed.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The target's set hash is not the hash of its packages.
    #[error(
        "spec.target.setHash {set_hash} does not match its packages (whose hash is {computed}); the target is malformed, fix the operator or the PackageSet"
    )]
    Malformed {
        /// The hash the target names.
        set_hash: String,
        /// The hash of its packages.
        computed: String,
    },
}

impl SwitchError {
    /// Whether the target was refused as untrusted (nothing changed).
    pub fn is_untrusted(&self) -> bool {
        matches!(self, Self::Refused(_) | Self::UntrustedIndex { .. })
    }

    /// The `status.reason` of a target refused for this (nothing changed):
    /// `SecretUnavailable` or `Untrusted`.
    pub fn refusal_reason(&self) -> &'static str {
        match self {
            Self::Secret(_) => SECRET_UNAVAILABLE,
            _ => super::trust::UNTRUSTED,
        }
    }
}

/// How a switch ended.
#[derive(Debug)]
pub enum Outcome {
    /// The target is active and healthy.
    Active,
    /// The target failed; the node is back on its previous set.
    RolledBack(SwitchError),
    /// The target failed and there was nothing (or no way) to go back to.
    Failed(SwitchError),
    /// The target's repository or index is not trusted, or a Secret it
    /// refers to cannot be read; nothing changed and no package was
    /// downloaded.
    Refused(SwitchError),
}

/// Reports a phase and message as the switch goes; implemented by the agent
/// loop on top of its status writer.
pub trait PhaseSink: Send + Sync {
    /// The agent entered `phase`.
    fn phase(&self, phase: NodePhase, message: String) -> futures::future::BoxFuture<'_, ()>;
}

/// What a switch needs.
#[derive(Clone)]
pub struct Switcher {
    /// The node root, shared with the local HTTP API.
    pub root: NodeRoot,
    /// Runs the services.
    pub supervisor: Arc<dyn Supervisor>,
    /// Variables for every service.
    pub env: AgentEnv,
    /// How to fetch packages.
    pub fetch: FetchOptions,
    /// What the agent trusts.
    pub policy: Arc<Policy>,
    /// The highest index version accepted from each repository.
    pub versions: AcceptedVersions,
    /// Reads the Secrets a target refers to, with the agent's identity;
    /// `None`: a target that refers to one is refused.
    pub secrets: Option<kube::Client>,
    /// How often each service was started again after it was found not
    /// running (reported by the local API).
    pub restarts: super::observe::Restarts,
}

/// One switch request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The ids to make active.
    pub ids: Vec<PackageId>,
    /// Their set hash.
    pub hash: String,
    /// The repository, if packages may need fetching.
    pub repository: Option<String>,
    /// Keys the target names (`NodeTarget.publicKeys`); they can only
    /// narrow the agent's trusted keys.
    pub keys: Vec<String>,
    /// Time the new services have to become healthy.
    pub health_timeout: Duration,
    /// Other repositories, each with the ids fetched from it
    /// (`NodeTarget.sources`).
    pub sources: Vec<SourceRequest>,
    /// The Secret keys the packages' files refer to
    /// (`NodeTarget.secrets`).
    pub secrets: Vec<TargetSecret>,
}

/// A repository some of a request's packages come from.
#[derive(Clone, Debug)]
pub struct SourceRequest {
    /// Its base URL.
    pub url: String,
    /// Keys the target names for it; they only narrow the trusted keys.
    pub keys: Vec<String>,
    /// The ids fetched from it.
    pub ids: Vec<PackageId>,
}

impl Switcher {
    /// The services of the active set (empty when nothing is active).
    pub async fn active_services(&self) -> Result<Vec<ServiceSpec>, ResolveError> {
        let env = self.env.clone();
        self.root
            .read(move |root| {
                let Some(set) = root.active()? else {
                    return Ok(vec![]);
                };
                Ok(services_of(root, &set.ids, &env)?)
            })
            .await
    }

    /// Stops the active set's services (in reverse order), logging failures.
    pub async fn stop_active(&self) {
        match self.active_services().await {
            Ok(services) => {
                if let Err(e) = self.stop_all(&services).await {
                    tracing::warn!("stopping the services: {e}");
                }
            }
            Err(e) => tracing::warn!("stopping the services: {e}"),
        }
    }

    /// Starts every service that is not running, in order.
    pub async fn ensure_running(&self, services: &[ServiceSpec]) -> Result<(), SwitchError> {
        self.start_stopped(services, false).await
    }

    /// [`ensure_running`](Self::ensure_running) for the supervision of a
    /// running set: each service started is counted as a restart.
    pub async fn restart_stopped(&self, services: &[ServiceSpec]) -> Result<(), SwitchError> {
        self.start_stopped(services, true).await
    }

    async fn start_stopped(
        &self,
        services: &[ServiceSpec],
        restart: bool,
    ) -> Result<(), SwitchError> {
        for svc in services {
            if !self.supervisor.is_running(svc).await {
                tracing::info!(service = %svc.id, "not running, starting it");
                if restart {
                    self.restarts.bump(svc.name());
                }
                self.supervisor
                    .start(svc)
                    .await
                    .map_err(|source| SwitchError::Start {
                        service: svc.id.clone(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    async fn stop_all(&self, services: &[ServiceSpec]) -> Result<(), SupervisorError> {
        for svc in services.iter().rev() {
            self.supervisor.stop(svc).await?;
        }
        Ok(())
    }

    /// One health verdict: every service running and passing its probe.
    pub async fn healthy_once(&self, services: &[ServiceSpec]) -> Result<(), SwitchError> {
        for svc in services {
            if !self.supervisor.is_running(svc).await {
                return Err(SwitchError::NotRunning {
                    service: svc.id.clone(),
                    log: svc.log_file.clone(),
                });
            }
            if let Some(probe) = &svc.probe {
                probe
                    .once()
                    .await
                    .map_err(|source| SwitchError::Unhealthy {
                        service: svc.id.clone(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// Probes every second until healthy or `timeout` has passed.
    pub async fn wait_healthy(
        &self,
        services: &[ServiceSpec],
        timeout: Duration,
    ) -> Result<(), SwitchError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.healthy_once(services).await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() + PROBE_INTERVAL > deadline => {
                    return Err(SwitchError::Timeout {
                        timeout,
                        last: Box::new(e),
                    });
                }
                Err(_) => tokio::time::sleep(PROBE_INTERVAL).await,
            }
        }
    }

    /// The trust decision for `req`'s repository, before any download.
    pub fn grant(&self, req: &Request) -> Result<Option<Grant>, Refusal> {
        req.repository
            .as_deref()
            .map(|url| trust::decide(&self.policy, url, &req.keys))
            .transpose()
    }

    /// The trust decision for each of `req`'s other sources.
    fn source_grants(&self, req: &Request) -> Result<Vec<(Grant, Vec<PackageId>)>, Refusal> {
        req.sources
            .iter()
            .map(|s| trust::decide(&self.policy, &s.url, &s.keys).map(|g| (g, s.ids.clone())))
            .collect()
    }

    /// The fetchers of a request's repository and of its other sources.
    fn fetchers(
        &self,
        grant: Option<&Grant>,
        sources: &[(Grant, Vec<PackageId>)],
    ) -> (Option<Fetcher>, Vec<(Fetcher, Vec<PackageId>)>) {
        let fetcher = |g| Fetcher::granted(g, self.fetch.clone(), Some(self.versions.clone()));
        let others = sources
            .iter()
            .map(|(g, ids)| (fetcher(g), ids.clone()))
            .collect();
        (grant.map(fetcher), others)
    }

    /// Fetches the packages of `req` that are not cached into the cache,
    /// trusted as a switch's are, ahead of the switch to them: changes
    /// nothing else (no journal, no generation, no service). Returns the
    /// packages fetched.
    pub async fn prefetch(&self, req: &Request) -> Result<Vec<PackageId>, SwitchError> {
        let grant = self.grant(req).map_err(SwitchError::Refused)?;
        let sources = self.source_grants(req).map_err(SwitchError::Refused)?;
        let (fetcher, others) = self.fetchers(grant.as_ref(), &sources);
        let change = self.root.change().await;
        let ids = req.ids.clone();
        let fetched = super::root::blocking(move || {
            let mut fetched = Vec::new();
            let sources = (fetcher.as_ref(), others.as_slice());
            change
                .block_on(change.root().fetch_missing(&ids, sources, &mut fetched))
                .map(|()| fetched)
        })
        .await;
        let grants = grant.iter().chain(sources.iter().map(|(g, _)| g));
        fetched.map_err(|e| fetch_refused(SwitchError::Fetch(Box::new(e)), grants))
    }

    /// Switches to `req`, reporting each phase to `sink`. A repository the
    /// agent does not trust (the target's, or one of its sources) is
    /// refused before the first phase.
    pub async fn switch(&self, req: &Request, sink: &dyn PhaseSink) -> Outcome {
        let grant = match self.grant(req) {
            Ok(grant) => grant,
            Err(refusal) => return Outcome::Refused(SwitchError::Refused(refusal)),
        };
        let sources = match self.source_grants(req) {
            Ok(sources) => sources,
            Err(refusal) => return Outcome::Refused(SwitchError::Refused(refusal)),
        };
        let values = match self.read_secrets(req).await {
            Ok(values) => values,
            Err(e) => return Outcome::Refused(SwitchError::Secret(e)),
        };
        let fetching = match &req.repository {
            Some(url) => format!("fetching set {} from {url}", req.hash),
            None => format!("checking the cache for set {}", req.hash),
        };
        sink.phase(NodePhase::Fetching, fetching).await;
        let new = match self
            .prepare_and_switch(req, grant.as_ref(), &sources, values, sink)
            .await
        {
            Ok(new) => new,
            Err(Early { reason, old }) => {
                if let Err(e) = self.ensure_running(&old).await {
                    return Outcome::Failed(SwitchError::RestartOld {
                        reason: Box::new(reason),
                        source: Box::new(e),
                    });
                }
                if reason.is_untrusted() {
                    return Outcome::Refused(reason);
                }
                return Outcome::RolledBack(reason);
            }
        };
        sink.phase(
            NodePhase::Verifying,
            format!(
                "set {} is active; waiting up to {}s for its services to be healthy",
                req.hash,
                req.health_timeout.as_secs()
            ),
        )
        .await;
        self.verify(&new, req.health_timeout).await
    }

    /// The values of the Secrets `req` refers to, read before anything is
    /// fetched.
    async fn read_secrets(&self, req: &Request) -> Result<SecretValues, SecretError> {
        if req.secrets.is_empty() {
            return Ok(SecretValues::default());
        }
        match &self.secrets {
            Some(client) => secrets::read(client, &req.secrets).await,
            None => Err(SecretError::NoClient),
        }
    }

    /// Starts the services of the (already active) set and waits for them;
    /// rolls back on failure. Also resumes an interrupted verification.
    pub async fn verify(&self, new: &[ServiceSpec], timeout: Duration) -> Outcome {
        let started = self.ensure_running(new).await;
        let verdict = match started {
            Ok(()) => self.wait_healthy(new, timeout).await,
            Err(e) => Err(e),
        };
        match verdict {
            Ok(()) => {
                let root = self.root.path().to_owned();
                blocking(move || clear_note(&root)).await;
                Outcome::Active
            }
            Err(reason) => self.roll_back(new, reason, timeout).await,
        }
    }

    /// Fetches and builds the set on a blocking thread, stops the old
    /// services when it is built, and has the thread switch.
    async fn prepare_and_switch(
        &self,
        req: &Request,
        grant: Option<&Grant>,
        sources: &[(Grant, Vec<PackageId>)],
        secrets: SecretValues,
        sink: &dyn PhaseSink,
    ) -> Result<Vec<ServiceSpec>, Early> {
        let old = self.active_services().await.unwrap_or_default();
        let (fetcher, others) = self.fetchers(grant, sources);
        let change = self.root.change().await;
        let (progress_tx, mut progress) = mpsc::unbounded_channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let thread = {
            let (ids, hash, env) = (req.ids.clone(), req.hash.clone(), self.env.clone());
            let link = Link {
                progress: progress_tx,
                go: go_rx,
            };
            let options = ActivateOptions {
                secrets,
                ..ActivateOptions::default()
            };
            tokio::task::spawn_blocking(move || {
                let fetchers = (fetcher.as_ref(), others.as_slice());
                run_activation(&change, (&ids, options), &hash, fetchers, &env, &link);
            })
        };
        let steps = async {
            match progress.recv().await? {
                Progress::Fetched => {}
                Progress::Failed(e) => {
                    let grants = grant.into_iter().chain(sources.iter().map(|(g, _)| g));
                    return Some(Err(fetch_refused(e, grants)));
                }
                other => unreachable!("{other:?} before the fetch"),
            }
            sink.phase(
                NodePhase::Activating,
                format!("building set {} and stopping the old services", req.hash),
            )
            .await;
            go.send(()).ok()?;
            let new = match progress.recv().await? {
                Progress::Built(new) => new,
                Progress::Failed(e) => return Some(Err(e)),
                other => unreachable!("{other:?} before the build"),
            };
            if let Err(e) = self.stop_all(&old).await {
                // Without the go-ahead, the thread undoes the activation.
                return Some(Err(SwitchError::StopOld(e)));
            }
            go.send(()).ok()?;
            match progress.recv().await? {
                Progress::Switched => Some(Ok(new)),
                Progress::Failed(e) => Some(Err(e)),
                other => unreachable!("{other:?} before the switch"),
            }
        };
        let result = steps.await;
        drop(go);
        // The thread has switched or undone the activation, and released
        // the change lock, once it ends.
        if let Err(e) = thread.await {
            std::panic::resume_unwind(e.into_panic());
        }
        match result.expect("the activation thread reports until it ends") {
            Ok(new) => Ok(new),
            Err(reason) => Err(Early { reason, old }),
        }
    }

    /// Stops `new`, switches back to the previous set and waits (up to
    /// `timeout`) for its services to be healthy again, so that RolledBack
    /// means the old set is serving.
    async fn roll_back(
        &self,
        new: &[ServiceSpec],
        reason: SwitchError,
        timeout: Duration,
    ) -> Outcome {
        tracing::warn!("rolling back: {reason}");
        if let Err(e) = self.stop_all(new).await {
            tracing::warn!("stopping the failed services: {e}");
        }
        let switched = self.root.change_exclusively(|root| root.rollback()).await;
        let reason = Box::new(reason);
        let result = match switched {
            Err(RootError::NoPrevious(_)) => Outcome::Failed(SwitchError::NoPrevious { reason }),
            Err(e) => Outcome::Failed(SwitchError::Rollback {
                reason,
                source: Box::new(e),
            }),
            Ok(_) => self.restart_old(reason, timeout).await,
        };
        let root = self.root.path().to_owned();
        blocking(move || clear_note(&root)).await;
        result
    }

    async fn restart_old(&self, reason: Box<SwitchError>, timeout: Duration) -> Outcome {
        let old = match self.active_services().await {
            Ok(old) => old,
            Err(source) => return Outcome::Failed(SwitchError::OldUnreadable { reason, source }),
        };
        if let Err(e) = self.ensure_running(&old).await {
            return Outcome::Failed(SwitchError::OldDoNotStart {
                reason,
                source: Box::new(e),
            });
        }
        match self.wait_healthy(&old, timeout).await {
            Ok(()) => Outcome::RolledBack(*reason),
            Err(e) => Outcome::Failed(SwitchError::OldUnhealthy {
                reason,
                source: Box::new(e),
            }),
        }
    }
}

/// A failed fetch whose index was refused as untrusted says so, with the
/// keys expected of the repository it names (the target's, or one of its
/// sources').
fn fetch_refused<'g>(e: SwitchError, grants: impl Iterator<Item = &'g Grant>) -> SwitchError {
    match e {
        SwitchError::Fetch(source) => {
            let text = source.to_string();
            let grants: Vec<&Grant> = grants.collect();
            // The longest: one repository may be under another's URL.
            let named = grants
                .iter()
                .filter(|g| text.contains(g.repository.as_str()))
                .max_by_key(|g| g.repository.len())
                .or(grants.first());
            match (named, &*source) {
                (Some(grant), RootError::Fetch(f)) if f.is_untrusted() => {
                    SwitchError::UntrustedIndex {
                        message: grant.refusing(&source),
                        source,
                    }
                }
                _ => SwitchError::Fetch(source),
            }
        }
        e => e,
    }
}

/// A failure before the switch: nothing changed on disk.
struct Early {
    reason: SwitchError,
    old: Vec<ServiceSpec>,
}

/// What the activation thread reports.
#[derive(Debug)]
enum Progress {
    /// Every package is cached.
    Fetched,
    /// The generation is built and the note written; these are its services.
    Built(Vec<ServiceSpec>),
    /// `current` points to the new generation.
    Switched,
    /// The activation failed and was undone.
    Failed(SwitchError),
}

/// The activation thread's side of its channels.
struct Link {
    progress: mpsc::UnboundedSender<Progress>,
    /// A go-ahead after each report but the last; closed to give up.
    go: std::sync::mpsc::Receiver<()>,
}

impl Link {
    fn report(&self, progress: Progress) {
        let _ = self.progress.send(progress);
    }

    /// Reports `progress` and waits for the go-ahead.
    fn proceed(&self, progress: Progress) -> bool {
        self.progress.send(progress).is_ok() && self.go.recv().is_ok()
    }
}

/// One activation on a blocking thread, holding the change lock: journal,
/// fetch (readers go on), build (readers wait), then, with the go-ahead,
/// the switch (readers wait). Without the go-ahead it undoes everything.
fn run_activation(
    change: &Change,
    (ids, options): (&[PackageId], ActivateOptions),
    hash: &str,
    (fetcher, others): (Option<&Fetcher>, &[(Fetcher, Vec<PackageId>)]),
    env: &AgentEnv,
    link: &Link,
) {
    let root = change.root();
    let begun = {
        let _readers_wait = change.exclusive();
        root.begin_activation(ids, options)
    };
    let mut activation = match begun {
        Ok(activation) => activation,
        Err(e) => return link.report(Progress::Failed(SwitchError::Begin(Box::new(e)))),
    };
    let abort = |activation: Activation<'_>| {
        let _readers_wait = change.exclusive();
        let _ = activation.abort();
    };
    if let Err(e) = change.block_on(activation.fetch_from(fetcher, others)) {
        abort(activation);
        return link.report(Progress::Failed(SwitchError::Fetch(Box::new(e))));
    }
    if !link.proceed(Progress::Fetched) {
        return abort(activation);
    }
    let built = {
        let _readers_wait = change.exclusive();
        let built = activation
            .build()
            .map_err(ResolveError::from)
            .and_then(|_| Ok(services_of(root, ids, env)?))
            .map_err(SwitchError::Build)
            .and_then(|new| match write_note(root.path(), hash) {
                Ok(()) => Ok(new),
                Err(e) => Err(SwitchError::Note(Box::new(e))),
            });
        match built {
            Ok(new) => Ok((new, activation)),
            Err(e) => {
                let _ = activation.abort();
                Err(e)
            }
        }
    };
    let (new, activation) = match built {
        Ok(built) => built,
        Err(e) => return link.report(Progress::Failed(e)),
    };
    if !link.proceed(Progress::Built(new)) {
        let _readers_wait = change.exclusive();
        let _ = activation.abort();
        clear_note(root.path());
        return;
    }
    let _readers_wait = change.exclusive();
    match activation.switch() {
        Ok(switched) => {
            tracing::info!(generation = switched.generation, hash = %switched.hash, "switched");
            link.report(Progress::Switched);
        }
        Err(e) => {
            let _ = root.recover();
            clear_note(root.path());
            link.report(Progress::Failed(SwitchError::Switch(Box::new(e))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkg::FetchError;
    use crate::pkg::index::IndexError;

    fn grant(repository: &str, key: &str) -> Grant {
        Grant {
            repository: repository.into(),
            keys: Vec::new(),
            expected: vec![key.into()],
            require_signature: true,
        }
    }

    #[test]
    fn an_untrusted_source_is_named_with_the_keys_expected_of_it() {
        let main = grant("http://127.0.0.1:1/", "repo-key");
        let config = grant("http://127.0.0.1:1/config-repository/", "operator-key");
        let refused = |origin: &str| {
            let e = FetchError::Index(IndexError::BadSignature {
                origin: origin.into(),
            });
            let e = SwitchError::Fetch(Box::new(RootError::Fetch(e)));
            match fetch_refused(e, [&main, &config].into_iter()) {
                SwitchError::UntrustedIndex { message, .. } => message,
                other => panic!("{other:?}"),
            }
        };
        let message = refused("http://127.0.0.1:1/config-repository/index.json.sig");
        assert!(message.contains("repository http://127.0.0.1:1/config-repository/"));
        assert!(message.contains("operator-key"), "{message}");
        let message = refused("http://127.0.0.1:1/index.json.sig");
        assert!(message.contains("repo-key"), "{message}");
    }
}
