//! Properties of the NodePool planner over generated pools: it keeps exactly
//! `replicas` live instances (never removes more than the surplus), never
//! reuses a launch sequence, never terminates a young or reserved unrecorded
//! instance, never removes a joined node without a finished (or forced)
//! drain, and converges once the world is quiet.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::plan::{DrainOutcome, Input, Listed, NodeView, Plan, PoolView, Recorded, State, plan};
use crate::api::{DrainTimeoutPolicy, ScaleDownOrder};

const GRACE: i64 = 300;
const JOIN_TIMEOUT: i64 = 600;
const DRAIN_TIMEOUT: i64 = 60;

fn now() -> Timestamp {
    Timestamp::from_second(1_000_000).unwrap()
}

fn ago(seconds: i64) -> Timestamp {
    now() - SignedDuration::from_secs(seconds)
}

fn age_at(now: Timestamp, t: Timestamp) -> i64 {
    now.duration_since(t).as_secs()
}

fn is_live(state: State) -> bool {
    matches!(state, State::Pending | State::Running)
}

/// One generated pass: what the planner reads.
#[derive(Clone, Debug)]
struct Case {
    pool: PoolView,
    recorded: Vec<Recorded>,
    listed: Vec<Listed>,
    nodes: Vec<NodeView>,
    drains: BTreeMap<String, DrainOutcome>,
    now: Timestamp,
}

impl Case {
    fn age(&self, t: Timestamp) -> i64 {
        age_at(self.now, t)
    }

    fn plan(&self) -> Plan {
        plan(&Input {
            pool: &self.pool,
            recorded: &self.recorded,
            listed: &self.listed,
            nodes: &self.nodes,
            drains: &self.drains,
            previous: &[],
            first_seen: &BTreeMap::new(),
            now: self.now,
        })
    }
}

// ---- the rules -------------------------------------------------------

fn check_counts(case: &Case, plan: &Plan) -> Result<(), String> {
    let live = plan.instances.iter().filter(|i| is_live(i.state)).count();
    let launching = plan.launch.as_ref().map_or(0, |l| l.count);
    if live + launching != case.pool.replicas {
        return Err(format!(
            "{live} live + {launching} launching != {} replicas",
            case.pool.replicas
        ));
    }
    if plan.launch.as_ref().is_some_and(|l| l.count == 0) {
        return Err("a launch of zero instances".into());
    }
    // Removing live instances is only for a surplus: then exactly the
    // declared count stays live, and nothing is launched in the same pass.
    let before: BTreeMap<&str, &Recorded> =
        case.recorded.iter().map(|r| (r.id.as_str(), r)).collect();
    let unjoined_too_long = |r: &Recorded| {
        r.state == State::Pending
            && r.node.is_none()
            && !case
                .nodes
                .iter()
                .any(|n| n.instance_id.as_deref() == Some(&r.id))
            && case.age(r.launched) >= JOIN_TIMEOUT
    };
    let removed_live = plan.instances.iter().any(|i| {
        matches!(i.state, State::Draining | State::Terminating)
            && before
                .get(i.id.as_str())
                .is_some_and(|r| is_live(r.state) && !unjoined_too_long(r))
    });
    if removed_live && (live != case.pool.replicas || launching > 0) {
        return Err(format!(
            "drains live instances but keeps {live} live and launches {launching}"
        ));
    }
    Ok(())
}

fn check_sequences(case: &Case, plan: &Plan) -> Result<(), String> {
    let floor = case.pool.next_launch;
    if plan.next_launch < floor {
        return Err(format!(
            "nextLaunch went back from {floor} to {}",
            plan.next_launch
        ));
    }
    // Every sequence at or past the recorded floor on an instance the pool
    // did not record may have been launched by a pass that crashed before
    // recording it: a new launch must start past it. (The controller records
    // an instance and the floor past its sequence in one write.)
    let recorded: BTreeSet<&str> = case.recorded.iter().map(|r| r.id.as_str()).collect();
    let used = case
        .listed
        .iter()
        .filter(|l| !recorded.contains(l.id.as_str()))
        .filter_map(|l| l.launch_seq)
        .filter(|s| *s >= floor)
        .max();
    if let (Some(launch), Some(used)) = (&plan.launch, used)
        && launch.first_seq <= used
    {
        return Err(format!(
            "launch sequence {} reuses {used}",
            launch.first_seq
        ));
    }
    Ok(())
}

fn check_terminations(case: &Case, plan: &Plan) -> Result<(), String> {
    let recorded: BTreeMap<&str, &Recorded> =
        case.recorded.iter().map(|r| (r.id.as_str(), r)).collect();
    let planned: BTreeMap<&str, &Recorded> =
        plan.instances.iter().map(|r| (r.id.as_str(), r)).collect();
    if planned.len() != plan.instances.len() {
        return Err("an instance is recorded twice".into());
    }
    let unique: BTreeSet<&String> = plan.terminate.iter().collect();
    if unique.len() != plan.terminate.len() {
        return Err(format!(
            "an instance is terminated twice: {:?}",
            plan.terminate
        ));
    }
    for id in &plan.terminate {
        if plan.strays.contains(id) {
            return Err(format!("{id} is both a stray and terminated"));
        }
        match (recorded.get(id.as_str()), planned.get(id.as_str())) {
            (_, Some(p)) if p.state != State::Terminating => {
                return Err(format!("{id} is terminated while {:?}", p.state));
            }
            (Some(r), _) => check_removal(case, r)?,
            // Adopted in this pass (a launch the pool reserved) and removed
            // as surplus at once: only when no agent joined it.
            (None, Some(p)) => check_removal(case, p)?,
            (None, None) => {
                let l = case
                    .listed
                    .iter()
                    .find(|l| l.id == *id)
                    .ok_or(format!("{id} is unknown"))?;
                if l.launched.is_none_or(|t| case.age(t) < GRACE) {
                    return Err(format!("{id} is unrecorded and young, yet terminated"));
                }
                if l.launch_seq.is_some_and(|s| s >= case.pool.next_launch) {
                    return Err(format!("{id} carries a reserved sequence, yet terminated"));
                }
            }
        }
    }
    let nodes: BTreeSet<&str> = plan
        .instances
        .iter()
        .filter(|i| plan.terminate.contains(&i.id))
        .filter_map(|i| i.node.as_deref())
        .collect();
    if let Some(n) = plan
        .remove_nodes
        .iter()
        .find(|n| !nodes.contains(n.as_str()))
    {
        return Err(format!(
            "NodeInstall {n} is removed while its instance stays"
        ));
    }
    Ok(())
}

/// A recorded instance may go only when it was already on its way out, never
/// joined, or its drain finished (or timed out under `Force`).
fn check_removal(case: &Case, r: &Recorded) -> Result<(), String> {
    let joined = r.node.is_some()
        || case
            .nodes
            .iter()
            .any(|n| n.instance_id.as_deref() == Some(&r.id));
    let drained = match case.drains.get(&r.id) {
        Some(DrainOutcome::Done) => true,
        Some(DrainOutcome::Blocked { .. }) => {
            let started = r.drain_started.map_or(0, |t| case.age(t));
            case.pool.drain_policy == DrainTimeoutPolicy::Force && started >= DRAIN_TIMEOUT
        }
        None => false,
    };
    let ok = match r.state {
        State::Terminating => true,
        State::Draining => drained,
        State::Pending | State::Running => !joined,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} ({:?}, joined {joined}) is terminated without a drain",
            r.id, r.state
        ))
    }
}

fn check(case: &Case) -> Result<Plan, String> {
    let plan = case.plan();
    check_counts(case, &plan)?;
    check_sequences(case, &plan)?;
    check_terminations(case, &plan)?;
    Ok(plan)
}

// ---- generators ------------------------------------------------------

fn state() -> impl Strategy<Value = State> {
    prop::sample::select(vec![
        State::Pending,
        State::Running,
        State::Draining,
        State::Terminating,
    ])
}

prop_compose! {
    fn recorded()(
        state in state(),
        joined in prop::bool::weighted(0.7),
        launched in 0i64..1200,
        drain_started in prop::option::of(0i64..200),
    ) -> Recorded {
        Recorded {
            id: String::new(),
            node: joined.then(String::new),
            state,
            launched: ago(launched),
            drain_started: drain_started.map(ago),
        }
    }
}

fn drain() -> impl Strategy<Value = Option<DrainOutcome>> {
    prop_oneof![
        Just(None),
        Just(Some(DrainOutcome::Done)),
        (1usize..4).prop_map(|pods| Some(DrainOutcome::Blocked {
            pods,
            why: "a PodDisruptionBudget".into()
        })),
    ]
}

prop_compose! {
    /// What becomes of one recorded instance: listed (with a sequence) or
    /// not, its agent registered or not, heartbeating, asked to go, drained.
    fn fate()(
        listed in prop::bool::weighted(0.8),
        seq in prop::option::of(0i64..25),
        agent in prop::bool::weighted(0.7),
        beat in prop::option::of(0i64..120),
        remove in prop::bool::weighted(0.1),
        drain in drain(),
    ) -> (bool, Option<i64>, bool, Option<i64>, bool, Option<DrainOutcome>) {
        (listed, seq, agent, beat, remove, drain)
    }
}

prop_compose! {
    fn pool()(
        replicas in 0usize..7,
        oldest in any::<bool>(),
        force in any::<bool>(),
        next_launch in 5i64..20,
    ) -> PoolView {
        PoolView {
            replicas,
            order: if oldest { ScaleDownOrder::OldestFirst } else { ScaleDownOrder::NewestFirst },
            drain_timeout: Duration::from_secs(DRAIN_TIMEOUT as u64),
            drain_policy: if force { DrainTimeoutPolicy::Force } else { DrainTimeoutPolicy::Wait },
            join_timeout: Duration::from_secs(JOIN_TIMEOUT as u64),
            grace: Duration::from_secs(GRACE as u64),
            stale_after: Duration::from_secs(60),
            next_launch,
        }
    }
}

fn case() -> impl Strategy<Value = Case> {
    let records = prop::collection::vec((recorded(), fate()), 0..8);
    let extra = prop::collection::vec((0i64..1200, prop::option::of(0i64..25)), 0..3);
    (pool(), records, extra).prop_map(|(pool, records, extra)| {
        let mut case = Case {
            pool,
            recorded: vec![],
            listed: vec![],
            nodes: vec![],
            drains: BTreeMap::new(),
            now: now(),
        };
        for (k, (mut r, (listed, seq, agent, beat, remove, drain))) in
            records.into_iter().enumerate()
        {
            r.id = format!("i-{k}");
            let node = format!("n-{k}");
            if r.node.is_some() {
                r.node = Some(node.clone());
            }
            if listed {
                case.listed.push(Listed {
                    id: r.id.clone(),
                    launched: Some(r.launched),
                    launch_seq: seq,
                });
            }
            if agent {
                case.nodes.push(NodeView {
                    name: node,
                    instance_id: Some(r.id.clone()),
                    heartbeat: beat.map(ago),
                    remove_requested: remove,
                    created: None,
                });
            }
            if let (State::Draining, Some(d)) = (r.state, drain) {
                case.drains.insert(r.id.clone(), d);
            }
            case.recorded.push(r);
        }
        for (k, (launched, seq)) in extra.into_iter().enumerate() {
            case.listed.push(Listed {
                id: format!("x-{k}"),
                launched: Some(ago(launched)),
                launch_seq: seq,
            });
        }
        case
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn every_plan_keeps_the_count_the_sequences_and_the_drains(case in case()) {
        if let Err(broken) = check(&case) {
            prop_assert!(false, "{broken}\nplan: {:?}", case.plan());
        }
    }
}

#[path = "plan_sim.rs"]
mod sim;
