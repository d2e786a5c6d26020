//! The switch procedure: fetch → validate → build → stop → switch → start →
//! health check → Active; on any failure switch back, restart the old
//! services and report RolledBack with the reason.
//!
//! Between the switch and a verdict the agent keeps a note,
//! `ROOT/agent.json`, naming the set it is verifying: an agent killed while
//! Verifying resumes the verification when it restarts instead of taking an
//! unverified set for Active.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::api::NodePhase;
use crate::pkg::accepted::AcceptedVersions;
use crate::pkg::trust::{self, Grant, Policy};
use crate::pkg::{ActivateOptions, FetchOptions, Fetcher, PackageId, Root, RootError};

use super::service::{AgentEnv, ServiceSpec, services_of};
use super::supervisor::Supervisor;

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

/// How a switch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target is active and healthy.
    Active,
    /// The target failed; the node is back on its previous set.
    RolledBack(String),
    /// The target failed and there was nothing (or no way) to go back to.
    Failed(String),
    /// The target's repository or index is not trusted; nothing changed
    /// and no package was downloaded.
    Refused(String),
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
    pub root: Arc<Mutex<Root>>,
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
}

impl Switcher {
    /// The services of the active set (empty when nothing is active).
    pub async fn active_services(&self) -> Result<Vec<ServiceSpec>, String> {
        let root = self.root.lock().await;
        let Some(set) = root.active().map_err(|e| e.to_string())? else {
            return Ok(vec![]);
        };
        services_of(&root, &set.ids, &self.env).map_err(|e| e.to_string())
    }

    /// Stops the active set's services (in reverse order), logging failures.
    pub async fn stop_active(&self) {
        let result = match self.active_services().await {
            Ok(services) => self.stop_all(&services).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!("stopping the services: {e}");
        }
    }

    /// Starts every service that is not running, in order.
    pub async fn ensure_running(&self, services: &[ServiceSpec]) -> Result<(), String> {
        for svc in services {
            if !self.supervisor.is_running(svc).await {
                tracing::info!(service = %svc.id, "not running, starting it");
                self.supervisor
                    .start(svc)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    async fn stop_all(&self, services: &[ServiceSpec]) -> Result<(), String> {
        for svc in services.iter().rev() {
            self.supervisor.stop(svc).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// One health verdict: every service running and passing its probe.
    pub async fn healthy_once(&self, services: &[ServiceSpec]) -> Result<(), String> {
        for svc in services {
            if !self.supervisor.is_running(svc).await {
                return Err(format!(
                    "service {} is not running; see {}",
                    svc.id,
                    svc.log_file.display()
                ));
            }
            if let Some(probe) = &svc.probe {
                probe
                    .once()
                    .await
                    .map_err(|e| format!("service {}: {e}", svc.id))?;
            }
        }
        Ok(())
    }

    /// Probes every second until healthy or `timeout` has passed.
    pub async fn wait_healthy(
        &self,
        services: &[ServiceSpec],
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.healthy_once(services).await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() + PROBE_INTERVAL > deadline => {
                    return Err(format!("not healthy within {}s: {e}", timeout.as_secs()));
                }
                Err(_) => tokio::time::sleep(PROBE_INTERVAL).await,
            }
        }
    }

    /// The trust decision for `req`'s repository, before any download.
    pub fn grant(&self, req: &Request) -> Result<Option<Grant>, String> {
        req.repository
            .as_deref()
            .map(|url| trust::decide(&self.policy, url, &req.keys))
            .transpose()
            .map_err(|refusal| refusal.to_string())
    }

    /// Switches to `req`, reporting each phase to `sink`. A repository the
    /// agent does not trust is refused before the first phase.
    pub async fn switch(&self, req: &Request, sink: &dyn PhaseSink) -> Outcome {
        let grant = match self.grant(req) {
            Ok(grant) => grant,
            Err(reason) => return Outcome::Refused(reason),
        };
        let fetching = match &req.repository {
            Some(url) => format!("fetching set {} from {url}", req.hash),
            None => format!("checking the cache for set {}", req.hash),
        };
        sink.phase(NodePhase::Fetching, fetching).await;
        let new = match self.prepare_and_switch(req, grant.as_ref(), sink).await {
            Ok(new) => new,
            Err(Early {
                reason,
                old,
                refused,
            }) => {
                if let Err(e) = self.ensure_running(&old).await {
                    return Outcome::Failed(format!("{reason}; restarting the old services: {e}"));
                }
                if refused {
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
                clear_note(self.root.lock().await.path());
                Outcome::Active
            }
            Err(reason) => self.roll_back(new, reason, timeout).await,
        }
    }

    async fn prepare_and_switch(
        &self,
        req: &Request,
        grant: Option<&Grant>,
        sink: &dyn PhaseSink,
    ) -> Result<Vec<ServiceSpec>, Early> {
        let old = self.active_services().await.unwrap_or_default();
        let early = |reason: String, old: &[ServiceSpec]| Early {
            reason,
            old: old.to_vec(),
            refused: false,
        };
        let fetcher =
            grant.map(|g| Fetcher::granted(g, self.fetch.clone(), Some(self.versions.clone())));
        let root = self.root.lock().await;
        let mut activation = root
            .begin_activation(&req.ids, ActivateOptions::default())
            .map_err(|e| early(e.to_string(), &old))?;
        if let Err(e) = activation.fetch(fetcher.as_ref()).await {
            let _ = activation.abort();
            return Err(match (&e, grant) {
                (RootError::Fetch(f), Some(grant)) if f.is_untrusted() => Early {
                    reason: grant.refusing(&e),
                    old,
                    refused: true,
                },
                _ => early(format!("fetch failed: {e}"), &old),
            });
        }
        sink.phase(
            NodePhase::Activating,
            format!("building set {} and stopping the old services", req.hash),
        )
        .await;
        let built = activation
            .build()
            .map_err(|e| e.to_string())
            .and_then(|_| services_of(&root, &req.ids, &self.env).map_err(|e| e.to_string()));
        let new = match built {
            Ok(new) => new,
            Err(e) => {
                let _ = activation.abort();
                return Err(early(format!("invalid set: {e}"), &old));
            }
        };
        if let Err(e) = write_note(root.path(), &req.hash) {
            let _ = activation.abort();
            return Err(early(e.to_string(), &old));
        }
        if let Err(e) = self.stop_all(&old).await {
            let _ = activation.abort();
            clear_note(root.path());
            return Err(early(format!("cannot stop the old services: {e}"), &old));
        }
        match activation.switch() {
            Ok(switched) => {
                tracing::info!(generation = switched.generation, hash = %switched.hash, "switched");
                Ok(new)
            }
            Err(e) => {
                let _ = root.recover();
                clear_note(root.path());
                Err(early(format!("switch failed: {e}"), &old))
            }
        }
    }

    /// Stops `new`, switches back to the previous set and waits (up to
    /// `timeout`) for its services to be healthy again, so that RolledBack
    /// means the old set is serving.
    async fn roll_back(&self, new: &[ServiceSpec], reason: String, timeout: Duration) -> Outcome {
        tracing::warn!("rolling back: {reason}");
        if let Err(e) = self.stop_all(new).await {
            tracing::warn!("stopping the failed services: {e}");
        }
        let (switched, root_path) = {
            let root = self.root.lock().await;
            (root.rollback(), root.path().to_owned())
        };
        let result = match switched {
            Err(RootError::NoPrevious(_)) => Outcome::Failed(format!(
                "{reason}; there is no previous set to roll back to, so the failed set stays active with its services stopped"
            )),
            Err(e) => Outcome::Failed(format!("{reason}; rollback failed: {e}")),
            Ok(_) => self.restart_old(reason, timeout).await,
        };
        clear_note(&root_path);
        result
    }

    async fn restart_old(&self, reason: String, timeout: Duration) -> Outcome {
        let old = match self.active_services().await {
            Ok(old) => old,
            Err(e) => return Outcome::Failed(format!("{reason}; rolled back, but {e}")),
        };
        if let Err(e) = self.ensure_running(&old).await {
            return Outcome::Failed(format!(
                "{reason}; rolled back, but the old services do not start: {e}"
            ));
        }
        match self.wait_healthy(&old, timeout).await {
            Ok(()) => Outcome::RolledBack(reason),
            Err(e) => Outcome::Failed(format!(
                "{reason}; rolled back, but the old services are not healthy either ({e}); check the node's service logs"
            )),
        }
    }
}

/// A failure before the switch: nothing changed on disk.
struct Early {
    reason: String,
    old: Vec<ServiceSpec>,
    /// The index was refused as untrusted.
    refused: bool,
}
