//! The agent loop: one task that owns every change to the node, so that a
//! switch, a supervision pass and a local `POST /activate` never overlap.
//! Each pass starts the next hook of `spec.tasks` ([`Hooks::pass`]) if it
//! is free to, reads the facts, asks [`state::decide`] and carries out the
//! answer (then starts a hook that waited for that switch), and fetches
//! `spec.next` ahead of its install: a hook and a fetch ahead each run in
//! a task of their own, so the loop goes on while they run.

use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::conditions::{self, Observed, types};
use crate::api::{NodePhase, NodeTarget};
use crate::pkg::{PackageId, set_hash};

use super::activate::{
    DEFAULT_HEALTH_TIMEOUT, Outcome, PhaseSink, Request, SourceRequest, SwitchError, Switcher,
    read_note,
};
use super::api::{ActivateRefusal, ActivateReply, ActivateRequest};
use super::hooks::Hooks;
use super::register::{Desired, Reporter};
use super::secrets::SECRET_UNAVAILABLE;
use super::state::{self, Action, Facts};

/// Health probes of a supervision pass before the services count as unhealthy.
const SUPERVISE_RETRIES: u32 = 2;

/// The node agent's loop.
pub struct Agent {
    /// The node name.
    pub node: String,
    /// Switches sets and runs services.
    pub switcher: Switcher,
    /// Writes the NodeInstall status.
    pub reporter: Reporter,
    /// The target hash that last failed (`status.failedHash`).
    pub failed: Option<String>,
    /// The operator's target, from the watch.
    pub desired: watch::Receiver<Desired>,
    /// Local `POST /activate` requests.
    pub requests: mpsc::Receiver<ActivateRequest>,
    /// Time between supervision passes.
    pub tick: Duration,
    /// The machine-readable reason of the last verdict (`Untrusted`), kept
    /// while the agent holds it.
    pub reason: Option<&'static str>,
    /// Runs the service action hooks of `spec.tasks`.
    pub hooks: Hooks,
    /// When a target refused for a Secret it could not read is tried
    /// again (an admin may grant the read meanwhile).
    pub retry_at: Option<std::time::Instant>,
    /// The hash of the last `spec.next` fetched ahead of its install.
    pub prefetched: Option<String>,
}

/// How long a target whose Secrets could not be read waits before the
/// agent reads them again.
pub const SECRET_RETRY: Duration = Duration::from_secs(30);

/// The active set as the status shows it.
struct ActiveFacts {
    ids: Vec<String>,
    hash: Option<String>,
    cached: Vec<String>,
}

impl Agent {
    /// Runs until `stop`: first reports the true state of the disk and
    /// restarts the active set's services, then follows the target and the
    /// task. A hook still running at `stop` is killed.
    pub async fn run(mut self, stop: CancellationToken) {
        self.startup().await;
        self.follow(&stop).await;
        self.hooks.shutdown().await;
    }

    async fn follow(&mut self, stop: &CancellationToken) {
        loop {
            let desired = self.desired.borrow_and_update().clone();
            // A hook asked for starts before the supervision pass; one
            // that waits for a switch, once the pass has done it.
            let waited = self.next_hooks(&desired).await;
            self.reconcile(&desired).await;
            if waited {
                self.next_hooks(&desired).await;
            }
            self.prefetch(&desired);
            tokio::select! {
                changed = self.desired.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(self.tick) => {}
                // A finished hook: the next task may be waiting. It starts
                // before anything else is done, and the end of the one
                // before goes out with its start, in one write.
                () = self.hooks.finished() => {
                    self.next_hooks(&desired).await;
                    self.hooks.flush();
                }
                Some(req) = self.requests.recv() => self.local_activate(req, &desired).await,
                () = stop.cancelled() => return,
            }
        }
    }

    /// A pass over the hooks of `desired`, unless they wait for a switch;
    /// whether they wait.
    async fn next_hooks(&mut self, desired: &Desired) -> bool {
        let waits = self.awaits_switch(desired).await;
        if !waits {
            self.hooks.pass(&desired.tasks).await;
        }
        waits
    }

    /// Fetches `spec.next` into the cache in a task of its own, once per
    /// set, so that the install that follows only switches (a switch
    /// that comes meanwhile waits for it and finds the packages cached).
    /// A fetch that fails is logged and left to the switch, which fetches
    /// again and reports what fails.
    fn prefetch(&mut self, desired: &Desired) {
        let Some(next) = &desired.next else {
            return;
        };
        let is_target = desired
            .target
            .as_ref()
            .is_some_and(|t| t.set_hash == next.set_hash);
        if is_target || self.prefetched.as_deref() == Some(next.set_hash.as_str()) {
            return;
        }
        self.prefetched = Some(next.set_hash.clone());
        let (switcher, node, req) = (self.switcher.clone(), self.node.clone(), request(next));
        tokio::spawn(async move {
            match switcher.prefetch(&req).await {
                Ok(fetched) => tracing::info!(
                    node = %node,
                    "fetched {} packages of set {} ahead of its install",
                    fetched.len(),
                    req.hash
                ),
                Err(e) => tracing::warn!(
                    node = %node,
                    "cannot fetch set {} ahead of its install (its switch will try again): {e}",
                    req.hash
                ),
            }
        });
    }

    /// [`awaits_switch`], reading the active set's hash only when a hook
    /// from a package is asked for (most passes have none).
    async fn awaits_switch(&self, desired: &Desired) -> bool {
        let from_package = desired.tasks.iter().any(|t| t.package.is_some());
        if !from_package || desired.target.is_none() {
            return false;
        }
        let active = self
            .switcher
            .root
            .read(|root| root.active().ok().flatten().map(|set| set.hash))
            .await;
        awaits_switch(desired, active.as_deref(), self.failed.as_deref())
    }

    async fn startup(&mut self) {
        let desired = self.desired.borrow().clone();
        let previous = self.reporter.snapshot();
        let recovery = self
            .switcher
            .root
            .recovery()
            .map(|r| format!("{:?}", r.outcome).to_lowercase());
        let message = format!(
            "agent started (journal recovery: {})",
            recovery.unwrap_or_else(|| "none".into())
        );
        let phase = match previous.phase {
            p @ (NodePhase::RolledBack | NodePhase::Failed) => p,
            _ => NodePhase::Idle,
        };
        self.report(phase, message, false, &desired).await;
        match self.switcher.active_services().await {
            Ok(services) => {
                if let Err(e) = self.switcher.ensure_running(&services).await {
                    tracing::warn!(node = %self.node, "{e}");
                }
            }
            Err(e) => tracing::warn!(node = %self.node, "{e}"),
        }
    }

    async fn reconcile(&mut self, desired: &Desired) {
        if self
            .retry_at
            .is_some_and(|at| std::time::Instant::now() >= at)
        {
            self.retry_at = None;
            self.failed = None;
        }
        let active = self.active_facts().await;
        let note = self.switcher.root.read(|root| read_note(root.path())).await;
        let target = desired.target.as_ref();
        let facts = Facts {
            target: target.map(|t| t.set_hash.as_str()),
            active: active.hash.as_deref(),
            failed: self.failed.as_deref(),
            unverified: note.as_ref().map(|n| n.verifying.as_str()),
        };
        match (state::decide(facts), target) {
            (Action::Activate, Some(t)) => {
                self.reason = None;
                let req = request(t);
                let computed = set_hash(&req.ids);
                if computed != t.set_hash || req.ids.len() != t.packages.len() {
                    let reason = SwitchError::Malformed {
                        set_hash: t.set_hash.clone(),
                        computed,
                    };
                    return self
                        .finish(Outcome::Failed(reason), &t.set_hash, desired)
                        .await;
                }
                let outcome = self.switcher.switch(&req, &self.sink(desired)).await;
                self.finish(outcome, &t.set_hash, desired).await;
            }
            (Action::ResumeVerify, Some(t)) => {
                let message = format!("resuming the verification of set {}", t.set_hash);
                self.report(NodePhase::Verifying, message, false, desired)
                    .await;
                let services = self.switcher.active_services().await.unwrap_or_default();
                let outcome = self
                    .switcher
                    .verify(&services, request(t).health_timeout)
                    .await;
                self.finish(outcome, &t.set_hash, desired).await;
            }
            (action, _) => self.supervise(action, desired).await,
        }
    }

    /// Keeps the active set's services running and reports their health.
    async fn supervise(&mut self, action: Action, desired: &Desired) {
        let services = match self.switcher.active_services().await {
            Ok(s) => s,
            Err(e) => {
                let phase = self.reporter.snapshot().phase;
                return self.report(phase, e.to_string(), false, desired).await;
            }
        };
        let mut health = self.switcher.restart_stopped(&services).await;
        for _ in 0..=SUPERVISE_RETRIES {
            health = match health {
                Ok(()) => self.switcher.healthy_once(&services).await,
                e => e,
            };
            if health.is_ok() {
                break;
            }
            tokio::time::sleep(super::activate::PROBE_INTERVAL).await;
            health = self.switcher.restart_stopped(&services).await;
        }
        let previous = self.reporter.snapshot();
        if action != Action::HoldFailed {
            self.reason = None;
        }
        let (phase, message) = match action {
            Action::InSync => (NodePhase::Active, "the target set is active".to_owned()),
            Action::HoldFailed => (previous.phase, previous.message.clone().unwrap_or_default()),
            _ => (NodePhase::Idle, "no target".to_owned()),
        };
        let message = match &health {
            Err(e) if action != Action::HoldFailed => format!("{message}; unhealthy: {e}"),
            _ => message,
        };
        self.report(phase, message, health.is_ok(), desired).await;
    }

    async fn finish(&mut self, outcome: Outcome, hash: &str, desired: &Desired) {
        let (phase, message, healthy) = match outcome {
            Outcome::Active => (
                NodePhase::Active,
                format!("set {hash} is active and healthy"),
                true,
            ),
            Outcome::RolledBack(reason) => {
                self.failed = Some(hash.to_owned());
                let message = format!("set {hash} failed and was rolled back: {reason}");
                (NodePhase::RolledBack, message, true)
            }
            Outcome::Failed(reason) => {
                self.failed = Some(hash.to_owned());
                (
                    NodePhase::Failed,
                    format!("set {hash} failed: {reason}"),
                    false,
                )
            }
            Outcome::Refused(reason) => {
                self.failed = Some(hash.to_owned());
                self.reason = Some(reason.refusal_reason());
                if self.reason == Some(SECRET_UNAVAILABLE) {
                    self.retry_at = Some(std::time::Instant::now() + SECRET_RETRY);
                }
                let message = format!("set {hash} refused: {reason}");
                tracing::warn!(node = %self.node, "{message}");
                (NodePhase::Failed, message, false)
            }
        };
        tracing::info!(node = %self.node, ?phase, "{message}");
        self.report(phase, message, healthy, desired).await;
    }

    async fn local_activate(&mut self, req: ActivateRequest, desired: &Desired) {
        if let Some(t) = &desired.target {
            let _ = req.reply.send(Err(ActivateRefusal::Managed {
                node: self.node.clone(),
                package_set: t.package_set.clone(),
            }));
            return;
        }
        self.reason = None;
        let mut ids = req.ids.clone();
        ids.sort();
        let hash = set_hash(&ids);
        let request = Request {
            ids,
            hash: hash.clone(),
            repository: req.repository.clone(),
            keys: vec![],
            health_timeout: DEFAULT_HEALTH_TIMEOUT,
            sources: vec![],
            secrets: vec![],
        };
        let outcome = self.switcher.switch(&request, &self.sink(desired)).await;
        let phase = match &outcome {
            Outcome::Active => NodePhase::Idle,
            Outcome::RolledBack(_) => NodePhase::RolledBack,
            Outcome::Failed(_) | Outcome::Refused(_) => NodePhase::Failed,
        };
        let message = match &outcome {
            Outcome::Active => format!("set {hash} activated locally"),
            Outcome::RolledBack(r) | Outcome::Failed(r) | Outcome::Refused(r) => r.to_string(),
        };
        self.reason = match &outcome {
            Outcome::Refused(reason) => Some(reason.refusal_reason()),
            _ => None,
        };
        let healthy = matches!(outcome, Outcome::Active);
        self.report(phase, message.clone(), healthy, desired).await;
        let reply = match outcome {
            Outcome::Active => Ok(ActivateReply {
                hash,
                phase: NodePhase::Active,
                message,
            }),
            Outcome::Refused(_) => Err(ActivateRefusal::Untrusted { message }),
            _ => Err(ActivateRefusal::Failed { phase, message }),
        };
        let _ = req.reply.send(reply);
    }

    fn sink<'a>(&'a self, desired: &'a Desired) -> Sink<'a> {
        Sink {
            agent: self,
            desired,
        }
    }

    async fn active_facts(&self) -> ActiveFacts {
        self.switcher.root.read(facts_of).await
    }

    /// Writes the status: the real active set, the phase and Ready.
    async fn report(&self, phase: NodePhase, message: String, healthy: bool, desired: &Desired) {
        let active = self.active_facts().await;
        self.report_with(active, phase, message, healthy, desired)
            .await;
    }

    async fn report_with(
        &self,
        active: ActiveFacts,
        phase: NodePhase,
        message: String,
        healthy: bool,
        desired: &Desired,
    ) {
        let target = desired.target.as_ref().map(|t| t.set_hash.as_str());
        let mut ready = state::readiness(target, active.hash.as_deref(), healthy);
        if let (Some(reason), false) = (self.reason, ready.ready) {
            ready.reason = reason;
            ready.message = message.clone();
        }
        let failed = self.failed.clone();
        let reason = self.reason.map(str::to_owned);
        self.reporter.update(|s| {
            s.observed_generation = desired.generation;
            s.active = active.ids;
            s.active_hash = active.hash;
            s.cached = active.cached;
            s.phase = phase;
            s.message = Some(message);
            s.reason = reason;
            s.failed_hash = failed;
            let observed = Observed::new(types::READY, ready.ready, ready.reason, ready.message);
            conditions::set(
                &mut s.conditions,
                observed,
                desired.generation,
                Timestamp::now(),
            );
        });
    }
}

/// A hook of the tasks runs from a package of the target that is not
/// active yet: the tasks wait for the switch (an install's hook comes with
/// the packages it installs, in one write). A target that failed does not
/// hold them back: the hook is then refused, with the active set in its
/// message.
fn awaits_switch(desired: &Desired, active_hash: Option<&str>, failed: Option<&str>) -> bool {
    let Some(target) = &desired.target else {
        return false;
    };
    let pending =
        active_hash != Some(target.set_hash.as_str()) && failed != Some(target.set_hash.as_str());
    let in_target = |package: &String| {
        target.packages.iter().any(|p| {
            p == package
                || p.parse::<PackageId>()
                    .is_ok_and(|id| id.name() == package.as_str())
        })
    };
    pending
        && desired
            .tasks
            .iter()
            .filter_map(|t| t.package.as_ref())
            .any(in_target)
}

fn facts_of(root: &crate::pkg::Root) -> ActiveFacts {
    let set = root.active().ok().flatten();
    let cached = root.list().unwrap_or_default();
    ActiveFacts {
        ids: set
            .as_ref()
            .map(|s| s.ids.iter().map(PackageId::to_string).collect())
            .unwrap_or_default(),
        hash: set.map(|s| s.hash),
        cached: cached.iter().map(|c| c.id.to_string()).collect(),
    }
}

/// The switch request for a target.
fn request(target: &NodeTarget) -> Request {
    let mut ids: Vec<PackageId> = target
        .packages
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    ids.sort();
    let timeout = target
        .health_timeout_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(DEFAULT_HEALTH_TIMEOUT, Duration::from_secs);
    let sources = target
        .sources
        .iter()
        .map(|s| SourceRequest {
            url: s.url.clone(),
            keys: s.public_keys.clone(),
            // Only packages of the set: a source adds no package.
            ids: s
                .packages
                .iter()
                .filter_map(|p| p.parse().ok())
                .filter(|id| ids.contains(id))
                .collect(),
        })
        .collect();
    Request {
        ids,
        hash: target.set_hash.clone(),
        repository: Some(target.repository_url.clone()),
        keys: target.public_keys.clone(),
        health_timeout: timeout,
        sources,
        secrets: target.secrets.clone(),
    }
}

/// Reports each phase of a switch.
struct Sink<'a> {
    agent: &'a Agent,
    desired: &'a Desired,
}

impl PhaseSink for Sink<'_> {
    fn phase(&self, phase: NodePhase, message: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            tracing::info!(node = %self.agent.node, ?phase, "{message}");
            // Between the steps of a switch the root is readable: report
            // the disk.
            let active = self.agent.active_facts().await;
            self.agent
                .report_with(active, phase, message, false, self.desired)
                .await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{NodeTask, TaskAction};

    fn desired(package: Option<&str>, packages: &[&str]) -> Desired {
        Desired {
            generation: Some(1),
            target: Some(NodeTarget {
                set_hash: "new".into(),
                packages: packages.iter().map(|p| (*p).to_owned()).collect(),
                ..NodeTarget::default()
            }),
            tasks: vec![NodeTask {
                id: "plan/forward/node-1/db/install".into(),
                attempt: 1,
                service: "db".into(),
                action: TaskAction::Install,
                package: package.map(str::to_owned),
                argv: vec!["bin/db-install".into()],
                timeout_seconds: 60,
                env: std::collections::BTreeMap::new(),
            }],
            ..Desired::default()
        }
    }

    #[test]
    fn a_hook_waits_only_for_a_pending_switch_to_its_own_package() {
        let d = desired(Some("db"), &["db--1.0", "web--2.0"]);
        // The target holding the hook's package is not active yet: wait.
        assert!(awaits_switch(&d, Some("old"), None));
        assert!(awaits_switch(&d, None, None));
        // Active: run.
        assert!(!awaits_switch(&d, Some("new"), None));
        // The switch failed: run, to be refused with what is active.
        assert!(!awaits_switch(&d, Some("old"), Some("new")));
        // A package named by id, and one the target lacks.
        assert!(awaits_switch(
            &desired(Some("db--1.0"), &["db--1.0"]),
            None,
            None
        ));
        assert!(!awaits_switch(
            &desired(Some("cache"), &["db--1.0"]),
            None,
            None
        ));
        // A hook from no package, or no task.
        assert!(!awaits_switch(&desired(None, &["db--1.0"]), None, None));
        let none = Desired {
            tasks: vec![],
            ..desired(Some("db"), &["db--1.0"])
        };
        assert!(!awaits_switch(&none, None, None));
    }
}
