//! Properties of the rollout planner over generated fleets: the budget
//! holds, no node is given the same set twice, and a held set (fleet-wide
//! halt, failure threshold, `paused`) gives no node a target it did not
//! already have.
//!
//! The oracles below restate the rules from the module documentation
//! independently of the planner's own bookkeeping, so a planner that
//! miscounts cannot agree with itself. Where the rules leave room (a
//! reserved node that rolled back), the budget oracle takes the lower bound
//! of the unavailable nodes, so it never blames a correct planner.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use std::time::Duration;

use super::plan::{Input, NodeView, Plan, SetView, plan};
use crate::api::NodePhase;

const STALE_AFTER: Duration = Duration::from_secs(30);

fn now() -> Timestamp {
    Timestamp::from_second(1_000_000).unwrap()
}

fn ago(seconds: i64) -> Timestamp {
    now() - SignedDuration::from_secs(seconds)
}

// ---- oracles ---------------------------------------------------------

/// `maxUnavailable` as the CRD documents it: an integer, or a percentage of
/// the nodes rounded down; never below one.
fn budget_oracle(max: &IntOrString, nodes: usize) -> usize {
    let raw = match max {
        IntOrString::Int(n) => (*n).max(0) as usize,
        IntOrString::String(p) => {
            nodes * p.trim_end_matches('%').parse::<usize>().unwrap().min(100) / 100
        }
    };
    raw.max(1)
}

fn stale(n: &NodeView) -> bool {
    n.heartbeat
        .is_none_or(|b| now().duration_since(b) > SignedDuration::try_from(STALE_AFTER).unwrap())
}

fn runs(n: &NodeView, hash: &str) -> bool {
    n.active_hash.as_deref() == Some(hash) && n.phase == NodePhase::Active
}

fn rolled_back_from(n: &NodeView, hash: &str) -> bool {
    n.failed_hash.as_deref() == Some(hash) && n.active_hash.as_deref() != Some(hash)
}

fn targeted(n: &NodeView, hash: &str) -> bool {
    n.target_hash.as_deref() == Some(hash)
}

/// Unavailable whichever way a reserved node that rolled back is read.
fn surely_unavailable(n: &NodeView, hash: &str) -> bool {
    // A reservation stands only for a node that has not rolled back or
    // failed since it was made.
    let wants = targeted(n, hash)
        || (n.reserved && !matches!(n.phase, NodePhase::RolledBack | NodePhase::Failed));
    stale(n) || (wants && !runs(n, hash) && !rolled_back_from(n, hash))
}

/// Unavailable under the widest reading.
fn maybe_unavailable(n: &NodeView, hash: &str) -> bool {
    stale(n) || ((targeted(n, hash) || n.reserved) && !runs(n, hash))
}

/// Whether anything holds the set: no node may then get a new target.
fn held(set: &SetView, nodes: &[NodeView], halt: Option<&str>) -> bool {
    let failed = nodes
        .iter()
        .filter(|n| rolled_back_from(n, &set.set_hash))
        .count();
    halt.is_some() || set.paused || failed >= set.failure_threshold.max(1) as usize
}

/// Checks one plan against the rules; `Err` says which rule broke.
fn check(set: &SetView, nodes: &[NodeView], halt: Option<&str>, plan: &Plan) -> Result<(), String> {
    let hash = set.set_hash.as_str();
    let by_name: BTreeMap<&str, &NodeView> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut seen = BTreeSet::new();
    for name in plan.start.iter().chain(&plan.retarget).chain(&plan.adopt) {
        let node = by_name
            .get(name.as_str())
            .ok_or(format!("{name} is not in the fleet"))?;
        if !seen.insert(name) {
            return Err(format!("{name} is targeted twice in one plan"));
        }
        if targeted(node, hash) {
            return Err(format!("{name} already has the set as its target"));
        }
    }
    for name in plan.start.iter().chain(&plan.retarget) {
        if rolled_back_from(by_name[name.as_str()], hash) {
            return Err(format!(
                "{name} rolled back from the set and is given it again"
            ));
        }
    }
    if let Some(name) = plan.adopt.iter().find(|n| !runs(by_name[n.as_str()], hash)) {
        return Err(format!("{name} is adopted but does not run the set"));
    }
    if held(set, nodes, halt) && !(plan.start.is_empty() && plan.retarget.is_empty()) {
        return Err(format!(
            "the set is held, yet start={:?} retarget={:?}",
            plan.start, plan.retarget
        ));
    }
    let budget = budget_oracle(&set.max_unavailable, nodes.len());
    if !plan.start.is_empty() {
        // A started node counts once, as started, even if it was already
        // unavailable (a reserved node whose earlier attempt failed).
        let busy = nodes
            .iter()
            .filter(|n| !plan.start.contains(&n.name) && surely_unavailable(n, hash))
            .count();
        if busy + plan.start.len() > budget {
            return Err(format!(
                "{busy} unavailable + {} started exceeds the budget {budget}",
                plan.start.len()
            ));
        }
        if let Some(name) = plan.start.iter().find(|n| stale(by_name[n.as_str()])) {
            return Err(format!("{name} is stale and was started"));
        }
    }
    Ok(())
}

// ---- generators ------------------------------------------------------

const HASHES: [&str; 3] = ["old", "new", "other"];

fn hash() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop::sample::select(&HASHES[..]).prop_map(String::from))
}

fn phase() -> impl Strategy<Value = NodePhase> {
    use NodePhase::*;
    prop::sample::select(vec![
        Idle, Fetching, Activating, Verifying, Active, RolledBack, Failed,
    ])
}

prop_compose! {
    fn node()(
        target_hash in hash(),
        active_hash in hash(),
        phase in phase(),
        failed_hash in hash(),
        heartbeat in prop::option::weighted(0.9, 0i64..45),
        ready_since in prop::option::of(0i64..60),
        reserved in prop::bool::weighted(0.3),
    ) -> NodeView {
        NodeView {
            name: String::new(),
            target_hash,
            active_hash,
            phase,
            failed_hash,
            heartbeat: heartbeat.map(ago),
            ready_since: ready_since.map(ago),
            reserved,
        }
    }
}

/// Up to 12 nodes with distinct names, in a shuffled order.
fn fleet() -> impl Strategy<Value = Vec<NodeView>> {
    prop::collection::vec(node(), 0..12)
        .prop_map(|mut nodes| {
            for (i, n) in nodes.iter_mut().enumerate() {
                n.name = format!("n{i:02}");
            }
            nodes
        })
        .prop_shuffle()
}

fn max_unavailable() -> impl Strategy<Value = IntOrString> {
    prop_oneof![
        (-1i32..6).prop_map(IntOrString::Int),
        (0u32..150).prop_map(|p| IntOrString::String(format!("{p}%"))),
    ]
}

prop_compose! {
    fn set_view()(
        max_unavailable in max_unavailable(),
        failure_threshold in 0u32..4,
        wait in prop_oneof![3 => Just(0u64), 1 => 1u64..30],
        paused in prop::bool::weighted(0.2),
    ) -> SetView {
        SetView {
            set_hash: "new".into(),
            max_unavailable,
            failure_threshold,
            wait: Duration::from_secs(wait),
            paused,
        }
    }
}

fn halt() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::weighted(0.3, Just("error budget spent"))
}

fn run(set: &SetView, nodes: &[NodeView], halt: Option<&str>) -> Plan {
    plan(&Input {
        set,
        nodes,
        halt,
        stale_after: STALE_AFTER,
        now: now(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_plan_keeps_the_budget_targets_once_and_starts_nothing_while_held(
        set in set_view(),
        nodes in fleet(),
        halt in halt(),
    ) {
        let plan = run(&set, &nodes, halt);
        if let Err(broken) = check(&set, &nodes, halt, &plan) {
            prop_assert!(false, "{broken}\nplan: {plan:?}");
        }
    }

    #[test]
    fn a_free_fleet_with_nodes_waiting_starts_one(mut set in set_view(), nodes in fleet()) {
        // Nothing holds the set, nothing is switching or silent.
        set.paused = false;
        set.wait = Duration::ZERO;
        let hash = set.set_hash.clone();
        let nodes: Vec<NodeView> = nodes
            .into_iter()
            .map(|n| NodeView {
                heartbeat: Some(ago(1)),
                reserved: false,
                target_hash: n.target_hash.filter(|t| *t != hash),
                failed_hash: n.failed_hash.filter(|f| *f != hash),
                ..n
            })
            .collect();
        let waiting = nodes.iter().any(|n| n.active_hash.as_deref() != Some(hash.as_str()));
        prop_assume!(waiting && !held(&set, &nodes, None));
        prop_assert!(nodes.iter().all(|n| !maybe_unavailable(n, &hash)));
        let plan = run(&set, &nodes, None);
        prop_assert!(!plan.start.is_empty(), "nothing started: {plan:?}");
    }
}

// ---- a fleet over time -------------------------------------------------

/// Something that happens between two reconciles.
#[derive(Clone, Debug)]
enum Event {
    /// The controller reconciles; with `crash`, it dies after the status
    /// write (the reservation) and before any target write.
    Reconcile { crash: bool },
    /// A node's agent takes one step towards its target; `ok: false` makes a
    /// switch in flight fail and roll back.
    Agent { node: usize, ok: bool },
    /// A node stops or resumes heartbeating.
    Heartbeat { node: usize, alive: bool },
    /// `POST /halt` or `/resume`.
    Halt(bool),
    /// `spec.paused`.
    Pause(bool),
    /// The set's packages change: a new hash.
    SpecChange,
}

fn event(nodes: usize) -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => any::<bool>().prop_map(|c| Event::Reconcile { crash: c }),
        6 => (0..nodes, prop::bool::weighted(0.8)).prop_map(|(node, ok)| Event::Agent { node, ok }),
        1 => (0..nodes, prop::bool::weighted(0.7)).prop_map(|(node, alive)| Event::Heartbeat { node, alive }),
        1 => any::<bool>().prop_map(Event::Halt),
        1 => any::<bool>().prop_map(Event::Pause),
        1 => Just(Event::SpecChange),
    ]
}

/// The fleet and the set as the API server holds them.
struct World {
    set: SetView,
    nodes: Vec<NodeView>,
    /// `status.setHash` and `status.nodesInProgress`.
    reservation: (String, BTreeSet<String>),
    halt: bool,
    /// Target writes per (node, set hash).
    writes: BTreeMap<(String, String), usize>,
}

impl World {
    fn new(size: usize, max_unavailable: IntOrString, failure_threshold: u32) -> World {
        let nodes = (0..size)
            .map(|i| NodeView {
                name: format!("n{i:02}"),
                target_hash: Some("s0".into()),
                active_hash: Some("s0".into()),
                phase: NodePhase::Active,
                heartbeat: Some(ago(1)),
                ready_since: Some(ago(100)),
                ..Default::default()
            })
            .collect();
        World {
            set: SetView {
                set_hash: "s1".into(),
                max_unavailable,
                failure_threshold,
                wait: Duration::ZERO,
                paused: false,
            },
            nodes,
            reservation: (String::new(), BTreeSet::new()),
            halt: false,
            writes: BTreeMap::new(),
        }
    }

    /// What the controller's `node_views` builds: a reservation counts only
    /// for the hash it was made for.
    fn views(&self) -> Vec<NodeView> {
        let (hash, names) = &self.reservation;
        self.nodes
            .iter()
            .map(|n| NodeView {
                reserved: *hash == self.set.set_hash && names.contains(&n.name),
                ..n.clone()
            })
            .collect()
    }

    fn reconcile(&mut self, crash: bool) -> Result<(), String> {
        let views = self.views();
        let halt = self.halt.then_some("halted");
        let plan = run(&self.set, &views, halt);
        check(&self.set, &views, halt, &plan)?;
        let hash = self.set.set_hash.clone();
        let reserved = plan
            .in_progress
            .iter()
            .chain(&plan.start)
            .cloned()
            .collect();
        self.reservation = (hash.clone(), reserved);
        if crash {
            return Ok(());
        }
        for name in plan.start.iter().chain(&plan.retarget) {
            let writes = self.writes.entry((name.clone(), hash.clone())).or_default();
            *writes += 1;
            if *writes > 1 {
                return Err(format!("{name} was given set {hash} {writes} times"));
            }
        }
        for name in plan.start.iter().chain(&plan.retarget).chain(&plan.adopt) {
            let node = self.nodes.iter_mut().find(|n| n.name == *name).unwrap();
            node.target_hash = Some(hash.clone());
        }
        Ok(())
    }

    /// The agent: Idle or settled with a new target starts fetching; a
    /// switch in flight then either activates or rolls back.
    fn agent(&mut self, node: usize, ok: bool) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let Some(target) = n.target_hash.clone() else {
            return;
        };
        let settled = matches!(
            n.phase,
            NodePhase::Active | NodePhase::RolledBack | NodePhase::Idle
        );
        if settled {
            let work = n.active_hash.as_deref() != Some(&target)
                && n.failed_hash.as_deref() != Some(&target);
            if work {
                n.phase = NodePhase::Fetching;
            }
        } else if ok {
            n.active_hash = Some(target);
            n.phase = NodePhase::Active;
            n.ready_since = Some(now());
        } else {
            n.failed_hash = Some(target);
            n.phase = NodePhase::RolledBack;
        }
    }

    fn apply(&mut self, event: &Event, spec_changes: &mut u32) -> Result<(), String> {
        match *event {
            Event::Reconcile { crash } => return self.reconcile(crash),
            Event::Agent { node, ok } => self.agent(node, ok),
            Event::Heartbeat { node, alive } => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.heartbeat = Some(if alive { ago(1) } else { ago(600) });
                }
            }
            Event::Halt(on) => self.halt = on,
            Event::Pause(on) => self.set.paused = on,
            Event::SpecChange => {
                *spec_changes += 1;
                self.set.set_hash = format!("s{}", *spec_changes + 1);
            }
        }
        Ok(())
    }
}

fn history() -> impl Strategy<Value = (usize, IntOrString, u32, Vec<Event>)> {
    (1usize..8, max_unavailable(), 1u32..3).prop_flat_map(|(size, max, threshold)| {
        (
            Just(size),
            Just(max),
            Just(threshold),
            prop::collection::vec(event(size), 1..80),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn over_any_history_every_step_keeps_the_rules_and_no_node_gets_a_set_twice(
        (size, max, threshold, events) in history(),
    ) {
        let mut world = World::new(size, max, threshold);
        let mut spec_changes = 0;
        for (step, event) in events.iter().enumerate() {
            if let Err(broken) = world.apply(event, &mut spec_changes) {
                prop_assert!(false, "step {step} ({event:?}): {broken}");
            }
        }
    }
}
