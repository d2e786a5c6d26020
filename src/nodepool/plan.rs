//! The NodePool planner: a pure function from what the pool declares, what
//! it recorded, what the provider lists, which agents registered, how drains
//! went, and `now`, to what to do next and the status to write.
//!
//! Two rules keep instances safe:
//! - a listed instance the pool did not record is adopted only when its
//!   launch sequence is one the pool reserved and has not yet recorded (a
//!   crash between the launch and the record); any other unrecorded
//!   instance is left alone while it is younger than the grace period
//!   (describe is eventually consistent; another operator may be about to
//!   record it) and is an orphan to terminate after;
//! - a recorded instance the provider does not list is kept while it is
//!   younger than the grace period, and forgotten after.
//!
//! An instance the provider lists without a launch time is aged from when
//! the pool first saw it (kept in status), never from "now".
//!
//! When the pool grows while instances are draining, their removal is
//! cancelled before anything new is launched.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;

use crate::api::conditions::Observed;
use crate::api::{DrainTimeoutPolicy, ScaleDownOrder};

#[path = "plan_conditions.rs"]
mod conditions;
#[path = "plan_listing.rs"]
mod listing;
use conditions::conditions;
use listing::reconcile_listing;

/// Where an instance is in its life, as recorded in `status.instances`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    /// Launched; its agent has not registered yet.
    Pending,
    /// Its agent registered a NodeInstall.
    Running,
    /// Being drained before removal.
    Draining,
    /// To be terminated (and its NodeInstall removed).
    Terminating,
}

impl State {
    /// The string stored in `status.instances[].state`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "Pending",
            State::Running => "Running",
            State::Draining => "Draining",
            State::Terminating => "Terminating",
        }
    }

    /// Parses a stored state; anything unknown counts as Pending.
    pub fn parse(text: Option<&str>) -> State {
        match text {
            Some("Running") => State::Running,
            Some("Draining") => State::Draining,
            Some("Terminating") => State::Terminating,
            _ => State::Pending,
        }
    }
}

/// The pool's settings the planner reads.
#[derive(Clone, Debug)]
pub struct PoolView {
    /// `spec.replicas`.
    pub replicas: usize,
    /// `spec.scaleDownOrder`.
    pub order: ScaleDownOrder,
    /// `spec.drainTimeoutSeconds`.
    pub drain_timeout: Duration,
    /// `spec.drainTimeoutPolicy`.
    pub drain_policy: DrainTimeoutPolicy,
    /// `spec.joinTimeoutSeconds`.
    pub join_timeout: Duration,
    /// Unrecorded instances younger than this are never terminated.
    pub grace: Duration,
    /// A heartbeat older than this makes a node not ready.
    pub stale_after: Duration,
    /// `status.nextLaunch`: the sequence of the next launch.
    pub next_launch: i64,
}

/// One instance as recorded in the pool's status.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// The provider's id.
    pub id: String,
    /// The NodeInstall its agent registered.
    pub node: Option<String>,
    /// Where it is.
    pub state: State,
    /// When it was launched.
    pub launched: Timestamp,
    /// When its drain began.
    pub drain_started: Option<Timestamp>,
}

/// One instance as the provider lists it (owned by this pool and cluster).
#[derive(Clone, Debug, PartialEq)]
pub struct Listed {
    /// The provider's id.
    pub id: String,
    /// When it was launched, when the provider says.
    pub launched: Option<Timestamp>,
    /// The launch sequence it was started with, from its tag.
    pub launch_seq: Option<i64>,
}

/// A registered agent of the pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeView {
    /// The NodeInstall's name.
    pub name: String,
    /// `status.instanceId`.
    pub instance_id: Option<String>,
    /// `status.heartbeat`.
    pub heartbeat: Option<Timestamp>,
    /// `theseus node remove` asked for this node to go first.
    pub remove_requested: bool,
    /// When the NodeInstall was created.
    pub created: Option<Timestamp>,
}

/// How one drain pass went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainOutcome {
    /// No pod that had to go is left on the node (evicted pods included:
    /// they are gone, not merely terminating).
    Done,
    /// Pods are left: `why` names them and what holds them (a
    /// PodDisruptionBudget, or a grace period or finalizer still running).
    Blocked {
        /// Pods still on the node.
        pods: usize,
        /// What blocks them (e.g. a PodDisruptionBudget).
        why: String,
    },
}

/// Everything the planner reads.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// The pool.
    pub pool: &'a PoolView,
    /// `status.instances`.
    pub recorded: &'a [Recorded],
    /// What the provider lists now.
    pub listed: &'a [Listed],
    /// The pool's registered agents.
    pub nodes: &'a [NodeView],
    /// The result of this pass's drain of each Draining instance, by id.
    pub drains: &'a BTreeMap<String, DrainOutcome>,
    /// The pool's current conditions.
    pub previous: &'a [Condition],
    /// `status.firstSeen`: when listed instances without a launch time were
    /// first seen, by id.
    pub first_seen: &'a BTreeMap<String, Timestamp>,
    /// The time of this pass.
    pub now: Timestamp,
}

/// A batch of instances to launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// The sequence of the first instance (the idempotency token's number).
    pub first_seq: i64,
    /// How many.
    pub count: usize,
}

/// What to do, and the status to write before doing it.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The instances to record, Terminating ones included.
    pub instances: Vec<Recorded>,
    /// `status.nextLaunch` to record (before the launch, if any).
    pub next_launch: i64,
    /// Instances to launch, after the status write.
    pub launch: Option<Launch>,
    /// Instance ids to terminate: recorded ones in Terminating and orphans.
    pub terminate: Vec<String>,
    /// NodeInstalls to delete once their instances are terminated.
    pub remove_nodes: Vec<String>,
    /// NodeInstalls to delete now: their instance is neither listed nor
    /// recorded (a pass terminated it and ended before deleting them), or
    /// they never named one and are older than the join timeout.
    pub forget_nodes: Vec<String>,
    /// Unrecorded instances left alone because they are young.
    pub strays: Vec<String>,
    /// `status.firstSeen` to record: unrecorded listed instances without a
    /// launch time, by id.
    pub first_seen: BTreeMap<String, Timestamp>,
    /// Nodes whose removal was cancelled because the pool grew again.
    pub cancelled: Vec<String>,
    /// `status.replicas`: instances that exist and are not being terminated.
    pub replicas: usize,
    /// `status.readyReplicas`.
    pub ready: usize,
    /// Ready, Scaling, Degraded.
    pub conditions: Vec<Observed<'static>>,
    /// When to look again.
    pub requeue_after: Duration,
}

/// Decides the next step of a pool.
pub fn plan(input: &Input<'_>) -> Plan {
    let pool = input.pool;
    let seen = reconcile_listing(input);
    let (mut instances, next_launch) = (seen.instances, seen.next_launch);
    let mut notes = Notes::default();
    join_nodes(&mut instances, input, &mut notes);
    let live = instances.iter().filter(|i| is_live(i)).count();
    if live < pool.replicas {
        cancel_drains(&mut instances, pool.replicas - live, input, &mut notes);
    }
    advance_drains(&mut instances, input, &mut notes);
    let live = instances.iter().filter(|i| is_live(i)).count();
    if live > pool.replicas {
        pick_victims(&mut instances, live - pool.replicas, input);
    }
    let live = instances.iter().filter(|i| is_live(i)).count();
    let launch = (live < pool.replicas).then(|| Launch {
        first_seq: next_launch,
        count: pool.replicas - live,
    });
    let terminating: Vec<&Recorded> = instances
        .iter()
        .filter(|i| i.state == State::Terminating)
        .collect();
    let terminate = terminating
        .iter()
        .map(|i| i.id.clone())
        .chain(seen.orphans)
        .collect();
    let remove_nodes = terminating.iter().filter_map(|i| i.node.clone()).collect();
    let forget_nodes = input
        .nodes
        .iter()
        .filter(|n| match &n.instance_id {
            Some(id) => {
                !input.listed.iter().any(|l| &l.id == id) && !instances.iter().any(|i| &i.id == id)
            }
            // Registered by an agent that never reported its instance (it
            // was terminated in between): nothing else would delete it.
            None => {
                n.heartbeat.is_none()
                    && n.created
                        .is_some_and(|t| age(input.now, t) >= pool.join_timeout)
            }
        })
        .map(|n| n.name.clone())
        .collect();
    let replicas = instances
        .iter()
        .filter(|i| i.state != State::Terminating)
        .count();
    let ready = count_ready(&instances, input);
    let conditions = conditions(input, &instances, launch.as_ref(), ready, &notes);
    let requeue_after = requeue(&instances, launch.as_ref(), &notes, ready);
    Plan {
        instances,
        next_launch,
        launch,
        terminate,
        remove_nodes,
        forget_nodes,
        strays: seen.strays,
        first_seen: seen.first_seen,
        cancelled: notes.cancelled,
        replicas,
        ready,
        conditions,
        requeue_after,
    }
}

/// Things found on the way that the conditions report.
#[derive(Default)]
struct Notes {
    waiting: Vec<String>,
    forced: Vec<String>,
    replaced: Vec<String>,
    cancelled: Vec<String>,
}

fn age(now: Timestamp, since: Timestamp) -> Duration {
    let d = now.duration_since(since);
    if d.is_negative() {
        Duration::ZERO
    } else {
        d.unsigned_abs()
    }
}

fn is_live(i: &Recorded) -> bool {
    matches!(i.state, State::Pending | State::Running)
}

/// Links instances to the NodeInstalls their agents registered, and marks
/// for replacement those that did not join in time.
fn join_nodes(instances: &mut [Recorded], input: &Input<'_>, notes: &mut Notes) {
    let by_instance: BTreeMap<&str, &NodeView> = input
        .nodes
        .iter()
        .filter_map(|n| n.instance_id.as_deref().map(|id| (id, n)))
        .collect();
    for i in instances.iter_mut() {
        if let Some(node) = by_instance.get(i.id.as_str()) {
            i.node = Some(node.name.clone());
            if i.state == State::Pending {
                i.state = State::Running;
            }
        } else if i.state == State::Pending
            && i.node.is_none()
            && age(input.now, i.launched) >= input.pool.join_timeout
        {
            i.state = State::Terminating;
            notes.replaced.push(i.id.clone());
        }
    }
}

/// Cancels the removal of up to `count` draining instances because the pool
/// needs them again (those `theseus node remove` named stay on their way
/// out); their nodes are uncordoned by the controller.
fn cancel_drains(instances: &mut [Recorded], count: usize, input: &Input<'_>, notes: &mut Notes) {
    let requested: BTreeSet<&str> = input
        .nodes
        .iter()
        .filter(|n| n.remove_requested)
        .map(|n| n.name.as_str())
        .collect();
    let mut draining: Vec<&mut Recorded> = instances
        .iter_mut()
        .filter(|i| i.state == State::Draining)
        .filter(|i| !i.node.as_deref().is_some_and(|n| requested.contains(n)))
        .collect();
    // The most recently started drains have disturbed the least.
    draining.sort_by(|a, b| b.drain_started.cmp(&a.drain_started).then(a.id.cmp(&b.id)));
    for i in draining.into_iter().take(count) {
        i.state = State::Running;
        i.drain_started = None;
        notes
            .cancelled
            .push(i.node.clone().unwrap_or_else(|| i.id.clone()));
    }
}

/// Moves drained instances on to Terminating, and applies the timeout policy
/// to those whose drain is blocked.
fn advance_drains(instances: &mut [Recorded], input: &Input<'_>, notes: &mut Notes) {
    let pool = input.pool;
    for i in instances.iter_mut().filter(|i| i.state == State::Draining) {
        let started = i.drain_started.unwrap_or(input.now);
        match input.drains.get(&i.id) {
            Some(DrainOutcome::Done) => i.state = State::Terminating,
            Some(DrainOutcome::Blocked { pods, why })
                if age(input.now, started) >= pool.drain_timeout =>
            {
                let what = format!(
                    "instance {} (node {}): drain timed out after {}s with {pods} pod(s) left ({why})",
                    i.id,
                    i.node.as_deref().unwrap_or("-"),
                    pool.drain_timeout.as_secs()
                );
                match pool.drain_policy {
                    DrainTimeoutPolicy::Force => {
                        i.state = State::Terminating;
                        notes.forced.push(what);
                    }
                    DrainTimeoutPolicy::Wait => notes.waiting.push(what),
                }
            }
            _ => {}
        }
    }
}

/// Marks `count` live instances for removal: those `theseus node remove`
/// named first, then by the pool's order. Joined ones are drained first.
fn pick_victims(instances: &mut [Recorded], count: usize, input: &Input<'_>) {
    let requested: BTreeSet<&str> = input
        .nodes
        .iter()
        .filter(|n| n.remove_requested)
        .map(|n| n.name.as_str())
        .collect();
    let mut live: Vec<usize> = (0..instances.len())
        .filter(|&k| is_live(&instances[k]))
        .collect();
    live.sort_by(|&a, &b| {
        let (a, b) = (&instances[a], &instances[b]);
        let asked = |i: &Recorded| !i.node.as_deref().is_some_and(|n| requested.contains(n));
        let by_age = match input.pool.order {
            ScaleDownOrder::NewestFirst => b.launched.cmp(&a.launched),
            ScaleDownOrder::OldestFirst => a.launched.cmp(&b.launched),
        };
        asked(a).cmp(&asked(b)).then(by_age).then(b.id.cmp(&a.id))
    });
    for k in live.into_iter().take(count) {
        let victim = &mut instances[k];
        if victim.node.is_some() {
            victim.state = State::Draining;
            victim.drain_started = Some(input.now);
        } else {
            victim.state = State::Terminating;
        }
    }
}

fn count_ready(instances: &[Recorded], input: &Input<'_>) -> usize {
    let beats: BTreeMap<&str, Option<Timestamp>> = input
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.heartbeat))
        .collect();
    instances
        .iter()
        .filter(|i| i.state == State::Running)
        .filter(|i| {
            let beat = i
                .node
                .as_deref()
                .and_then(|n| beats.get(n).copied().flatten());
            beat.is_some_and(|b| age(input.now, b) < input.pool.stale_after)
        })
        .count()
}

/// When to look again. NodeInstall heartbeats do not wake the controller,
/// so a pool with a node that is not ready looks again soon, to see it
/// recover.
fn requeue(
    instances: &[Recorded],
    launch: Option<&Launch>,
    notes: &Notes,
    ready: usize,
) -> Duration {
    let busy = instances
        .iter()
        .any(|i| matches!(i.state, State::Draining | State::Terminating));
    let running = instances
        .iter()
        .filter(|i| i.state == State::Running)
        .count();
    if launch.is_some() || busy || !notes.waiting.is_empty() {
        Duration::from_secs(2)
    } else if ready < running || instances.iter().any(|i| i.state == State::Pending) {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(60)
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
