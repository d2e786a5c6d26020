//! The rollout planner: which nodes get the set next, and what the set's
//! status says. Pure: it takes plain data and `now`, and returns data. The
//! controller reads the API server, calls [`plan`], and writes the result.
//!
//! A node counts as *unavailable* while it is switching to the set (its
//! target is the set and its active set is not yet, and it has not rolled
//! back) or while its heartbeat is stale. At most `maxUnavailable` nodes are
//! unavailable at once. A node that rolled back is healthy on its old set: it
//! counts as failed, not as unavailable, and failures at the set's
//! `failureThreshold` halt the set.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::NodePhase;
use crate::api::conditions::{Observed, Status, types};

/// The parts of a PackageSet the planner needs.
#[derive(Clone, Debug, PartialEq)]
pub struct SetView {
    /// The hash of the set's package ids.
    pub set_hash: String,
    /// `spec.strategy.maxUnavailable`.
    pub max_unavailable: IntOrString,
    /// `spec.strategy.failureThreshold`.
    pub failure_threshold: u32,
    /// `spec.strategy.waitSeconds`.
    pub wait: Duration,
    /// `spec.paused`.
    pub paused: bool,
}

/// The parts of a NodeInstall the planner needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeView {
    /// The node's name.
    pub name: String,
    /// `spec.target.setHash`.
    pub target_hash: Option<String>,
    /// `status.activeHash`.
    pub active_hash: Option<String>,
    /// `status.phase`.
    pub phase: NodePhase,
    /// `status.failedHash`: the last set the node rolled back from.
    pub failed_hash: Option<String>,
    /// `status.heartbeat`.
    pub heartbeat: Option<Timestamp>,
    /// When the node's Ready condition last became True.
    pub ready_since: Option<Timestamp>,
    /// Whether the set's status lists the node as switching: the controller
    /// records a node there before writing its target, so a node reserved by
    /// a run that died before the target write still counts against the
    /// budget, and gets its target on the next run.
    pub reserved: bool,
}

/// Everything the planner decides from.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// The set being rolled.
    pub set: &'a SetView,
    /// The nodes the set owns (matched by its selector, not owned by an
    /// older set), in any order.
    pub nodes: &'a [NodeView],
    /// The reason of a fleet-wide halt, when one is in force.
    pub halt: Option<&'a str>,
    /// A heartbeat older than this makes a node unavailable.
    pub stale_after: Duration,
    /// The current time.
    pub now: Timestamp,
}

/// Node counts, as written to the set's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Nodes the set owns.
    pub desired: usize,
    /// Nodes whose active set is the set.
    pub updated: usize,
    /// Updated nodes that are Active and heartbeating.
    pub ready: usize,
    /// Nodes that rolled back from the set.
    pub failed: usize,
    /// Nodes switching to the set.
    pub in_progress: usize,
    /// Nodes whose heartbeat is stale.
    pub stale: usize,
}

/// What the controller should do and write.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Nodes to give the set as their target now, in order.
    pub start: Vec<String>,
    /// Nodes already running the set whose target only needs recording; this
    /// costs no budget and changes nothing on the node, so it goes on while
    /// the set is held.
    pub adopt: Vec<String>,
    /// Nodes reserved earlier whose target write did not happen: write it
    /// now. Always empty while the set is held (halted, at its failure
    /// threshold, or paused): a held set gives no node a target it did not
    /// already have.
    pub retarget: Vec<String>,
    /// Nodes switching, sorted by name.
    pub in_progress: Vec<String>,
    /// The counts for the status.
    pub counts: Counts,
    /// The conditions Available, Progressing, Degraded and Halted.
    pub conditions: Vec<Observed<'static>>,
    /// When to look again even if nothing changes (waits, heartbeats).
    pub requeue_after: Option<Duration>,
}

/// How a node stands with respect to the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// Runs the set and is healthy.
    Done,
    /// Runs the set, health check pending.
    Verifying,
    /// Rolled back from the set.
    Failed,
    /// Given the set, not there yet.
    Switching,
    /// Not given the set yet.
    Pending,
}

/// Whether the node rolled back from (or failed) the set.
fn failed_the_set(node: &NodeView, hash: &str) -> bool {
    node.failed_hash.as_deref() == Some(hash) && node.active_hash.as_deref() != Some(hash)
}

/// How `node` stands. A reservation (a target about to be written) makes a
/// node switching only while new targets may go out (`held` is false), and
/// never for a node whose last switch failed: its reservation is left over
/// from a run that never wrote the target, and honouring it would give the
/// node a target it does not have while the set is halted.
fn standing(node: &NodeView, hash: &str, held: bool) -> Standing {
    let active = node.active_hash.as_deref() == Some(hash);
    let targeted = node.target_hash.as_deref() == Some(hash);
    let rolled_back = matches!(node.phase, NodePhase::RolledBack | NodePhase::Failed);
    if failed_the_set(node, hash) {
        Standing::Failed
    } else if active && node.phase == NodePhase::Active {
        Standing::Done
    } else if active && targeted {
        Standing::Verifying
    } else if targeted || (node.reserved && !held && !rolled_back) {
        Standing::Switching
    } else {
        Standing::Pending
    }
}

/// Resolves `maxUnavailable` against the node count: a percentage is rounded
/// down, and the result is at least one, so a rollout always progresses.
pub fn budget(max_unavailable: &IntOrString, nodes: usize) -> usize {
    let raw = match max_unavailable {
        IntOrString::Int(n) => usize::try_from(*n).unwrap_or(0),
        IntOrString::String(s) => {
            let percent: usize = s.trim_end_matches('%').parse().unwrap_or(0);
            nodes * percent.min(100) / 100
        }
    };
    raw.max(1)
}

fn is_stale(node: &NodeView, stale_after: Duration, now: Timestamp) -> bool {
    node.heartbeat.is_none_or(|beat| {
        now.duration_since(beat)
            > SignedDuration::try_from(stale_after).unwrap_or(SignedDuration::MAX)
    })
}

/// Decides the next step of a rollout.
pub fn plan(input: &Input<'_>) -> Plan {
    let set = input.set;
    let hash = set.set_hash.as_str();
    let mut nodes: Vec<&NodeView> = input.nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));

    // What holds the rollout is known before any standing: the failures
    // count nodes that rolled back from the set, whatever else they are.
    let failed = nodes.iter().filter(|n| failed_the_set(n, hash)).count();
    let threshold_reached = failed >= set.failure_threshold.max(1) as usize;
    let hold = hold_reason(input, threshold_reached);

    let standings: Vec<Stand<'_>> = nodes
        .iter()
        .map(|n| Stand {
            node: n,
            standing: standing(n, hash, hold.is_some()),
            stale: is_stale(n, input.stale_after, input.now),
        })
        .collect();
    let in_progress = names(&standings, |s| {
        matches!(s.standing, Standing::Switching | Standing::Verifying)
    });
    let counts = counts(&standings, in_progress.len());
    let pending: Vec<&NodeView> = standings
        .iter()
        .filter(|s| s.standing == Standing::Pending && !s.stale)
        .map(|s| s.node)
        .collect();
    let wait_left = wait_left(input, &standings, !in_progress.is_empty());
    let start: Vec<String> = if hold.is_some() || wait_left.is_some() {
        Vec::new()
    } else {
        let unavailable = standings.iter().filter(|s| s.unavailable()).count();
        let room = budget(&set.max_unavailable, nodes.len()).saturating_sub(unavailable);
        pending.iter().take(room).map(|n| n.name.clone()).collect()
    };
    let remaining = pending.len() + counts.stale;
    Plan {
        start,
        adopt: names(&standings, |s| {
            s.standing == Standing::Done && s.node.target_hash.as_deref() != Some(hash)
        }),
        // Only a reservation makes a node switching without its target, and
        // a hold voids reservations: a held set retargets nothing.
        retarget: names(&standings, |s| {
            s.standing == Standing::Switching && s.node.target_hash.as_deref() != Some(hash)
        }),
        in_progress,
        conditions: conditions(&counts, hold, threshold_reached, input.halt, remaining),
        requeue_after: requeue(wait_left, &counts, input.stale_after),
        counts,
    }
}

/// A node with how it stands and whether its heartbeat is stale.
struct Stand<'a> {
    node: &'a NodeView,
    standing: Standing,
    stale: bool,
}

impl Stand<'_> {
    /// Stale, or between its old and new package: it counts against the
    /// budget.
    fn unavailable(&self) -> bool {
        self.stale || matches!(self.standing, Standing::Switching | Standing::Verifying)
    }
}

/// The names of the nodes that match `keep`, in name order.
fn names(standings: &[Stand<'_>], keep: impl Fn(&Stand<'_>) -> bool) -> Vec<String> {
    standings
        .iter()
        .filter(|s| keep(s))
        .map(|s| s.node.name.clone())
        .collect()
}

fn counts(standings: &[Stand<'_>], in_progress: usize) -> Counts {
    let count = |keep: &dyn Fn(&Stand<'_>) -> bool| standings.iter().filter(|s| keep(s)).count();
    Counts {
        desired: standings.len(),
        updated: count(&|s| matches!(s.standing, Standing::Done | Standing::Verifying)),
        ready: count(&|s| s.standing == Standing::Done && !s.stale),
        failed: count(&|s| s.standing == Standing::Failed),
        in_progress,
        stale: count(&|s| s.stale),
    }
}

/// Why no new node may start, if anything holds the rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    Halted,
    FailureThreshold,
    Paused,
}

fn hold_reason(input: &Input<'_>, threshold_reached: bool) -> Option<Hold> {
    if input.halt.is_some() {
        Some(Hold::Halted)
    } else if threshold_reached {
        Some(Hold::FailureThreshold)
    } else if input.set.paused {
        Some(Hold::Paused)
    } else {
        None
    }
}

/// With `waitSeconds`, nodes switch in batches: a new batch starts only when
/// none is switching and the last node finished at least `wait` ago.
fn wait_left(input: &Input<'_>, standings: &[Stand<'_>], busy: bool) -> Option<Duration> {
    if input.set.wait.is_zero() {
        return None;
    }
    if busy {
        return Some(input.set.wait);
    }
    let last_done = standings
        .iter()
        .filter(|s| s.standing == Standing::Done)
        .filter_map(|s| s.node.ready_since)
        .max()?;
    let elapsed = input.now.duration_since(last_done);
    let wait = SignedDuration::try_from(input.set.wait).ok()?;
    (elapsed < wait).then(|| Duration::try_from(wait - elapsed).unwrap_or_default())
}

fn requeue(
    wait_left: Option<Duration>,
    counts: &Counts,
    stale_after: Duration,
) -> Option<Duration> {
    let watching = counts.in_progress > 0 || counts.stale > 0 || counts.updated < counts.desired;
    match (wait_left, watching) {
        (Some(w), _) => Some(w.max(Duration::from_millis(100))),
        (None, true) => Some(stale_after / 2),
        (None, false) => None,
    }
}

fn conditions(
    counts: &Counts,
    hold: Option<Hold>,
    threshold_reached: bool,
    halt: Option<&str>,
    remaining: usize,
) -> Vec<Observed<'static>> {
    vec![
        available(counts),
        progressing(counts, hold, remaining),
        degraded(counts),
        halted(counts, halt, threshold_reached),
    ]
}

fn available(counts: &Counts) -> Observed<'static> {
    let message = format!("{} of {} nodes run the set", counts.ready, counts.desired);
    match counts.ready == counts.desired {
        true => Observed::new(types::AVAILABLE, true, "RolloutComplete", message),
        false => Observed::new(types::AVAILABLE, false, "NodesUpdating", message),
    }
}

fn progressing(counts: &Counts, hold: Option<Hold>, remaining: usize) -> Observed<'static> {
    let stopped = |reason, message| Observed::new(types::PROGRESSING, false, reason, message);
    match hold {
        _ if counts.ready == counts.desired => {
            stopped("RolloutComplete", "every node runs the set")
        }
        Some(Hold::Halted) => stopped("Halted", "rollouts are halted"),
        Some(Hold::FailureThreshold) => {
            stopped("FailureThreshold", "the failure threshold was reached")
        }
        Some(Hold::Paused) => stopped("Paused", "spec.paused is true"),
        None => Observed::new(
            types::PROGRESSING,
            true,
            "NodesUpdating",
            format!("{} switching, {} waiting", counts.in_progress, remaining),
        ),
    }
}

fn degraded(counts: &Counts) -> Observed<'static> {
    if counts.failed > 0 {
        Observed::new(
            types::DEGRADED,
            true,
            "NodesFailed",
            format!("{} node(s) failed the set and rolled back", counts.failed),
        )
    } else if counts.stale > 0 {
        Observed::new(
            types::DEGRADED,
            true,
            "NodesUnresponsive",
            format!("{} node(s) have a stale heartbeat", counts.stale),
        )
    } else {
        Observed::new(types::DEGRADED, false, "AsExpected", "no node failed")
    }
}

fn halted(counts: &Counts, halt: Option<&str>, threshold_reached: bool) -> Observed<'static> {
    match (halt, threshold_reached) {
        (Some(reason), _) => Observed::new(types::HALTED, true, "Halted", reason.to_owned()),
        (None, true) => Observed::new(
            types::HALTED,
            Status::True,
            "FailureThreshold",
            format!(
                "{} node(s) failed; change the spec or resume to continue",
                counts.failed
            ),
        ),
        (None, false) => Observed::new(types::HALTED, false, "NotHalted", "rollouts may proceed"),
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
