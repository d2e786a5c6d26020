//! The NodePool planner over time: a simulated provider (idempotent
//! launches), agents that boot late, drains, listings that lag and a
//! controller that crashes between recording a plan and acting on it. Every
//! pass keeps the rules of the parent module, and once the world is quiet
//! the pool runs exactly its replicas.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::super::plan::{DrainOutcome, Listed, NodeView, Plan, PoolView, Recorded, State};
use super::{Case, DRAIN_TIMEOUT, GRACE, JOIN_TIMEOUT, age_at, check, now};
use crate::api::{DrainTimeoutPolicy, ScaleDownOrder};

// ---- a pool over time --------------------------------------------------

/// Something that happens between two reconciles.
#[derive(Clone, Debug)]
enum Event {
    /// The controller reconciles. With `crash`, it dies right after
    /// recording the plan, before terminating or launching; with `lag`, the
    /// provider's listing misses the instances of the last 30 s.
    Reconcile { crash: bool, lag: bool },
    /// The agent of the k-th instance (modulo) registers.
    Boot(usize),
    /// The drain of the k-th instance (modulo) finishes.
    Drained(usize),
    /// `spec.replicas` changes.
    Scale(usize),
}

fn sim_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (prop::bool::weighted(0.2), prop::bool::weighted(0.3))
            .prop_map(|(crash, lag)| Event::Reconcile { crash, lag }),
        3 => (0usize..16).prop_map(Event::Boot),
        2 => (0usize..16).prop_map(Event::Drained),
        1 => (0usize..6).prop_map(Event::Scale),
    ]
}

/// The provider (idempotent launches, as EC2's client tokens make them),
/// the agents, and the pool's status.
struct Sim {
    pool: PoolView,
    recorded: Vec<Recorded>,
    /// id, launch sequence, launch time, alive.
    instances: Vec<(String, i64, Timestamp, bool)>,
    tokens: BTreeMap<i64, (usize, Vec<String>)>,
    agents: Vec<NodeView>,
    drained: BTreeSet<String>,
    now: Timestamp,
}

impl Sim {
    fn new(replicas: usize) -> Sim {
        Sim {
            pool: PoolView {
                replicas,
                ..pool_view()
            },
            recorded: vec![],
            instances: vec![],
            tokens: BTreeMap::new(),
            agents: vec![],
            drained: BTreeSet::new(),
            now: now(),
        }
    }

    fn alive(&self) -> impl Iterator<Item = &(String, i64, Timestamp, bool)> {
        self.instances.iter().filter(|i| i.3)
    }

    fn reconcile(&mut self, crash: bool, lag: bool) -> Result<Plan, String> {
        self.now += SignedDuration::from_secs(15);
        let listed = self
            .alive()
            .filter(|i| !lag || age_at(self.now, i.2) > 30)
            .map(|i| Listed {
                id: i.0.clone(),
                launched: Some(i.2),
                launch_seq: Some(i.1),
            })
            .collect();
        let drains = self
            .recorded
            .iter()
            .filter(|r| r.state == State::Draining)
            .map(|r| {
                let done = self.drained.contains(&r.id);
                let outcome = if done {
                    DrainOutcome::Done
                } else {
                    DrainOutcome::Blocked {
                        pods: 1,
                        why: "busy".into(),
                    }
                };
                (r.id.clone(), outcome)
            })
            .collect();
        let case = Case {
            pool: self.pool.clone(),
            recorded: self.recorded.clone(),
            listed,
            nodes: self.agents.clone(),
            drains,
            now: self.now,
        };
        let plan = check(&case)?;
        self.recorded = plan.instances.clone();
        self.pool.next_launch = plan.next_launch;
        if crash {
            return Ok(plan);
        }
        for i in self
            .instances
            .iter_mut()
            .filter(|i| plan.terminate.contains(&i.0))
        {
            i.3 = false;
        }
        self.recorded.retain(|r| r.state != State::Terminating);
        self.agents.retain(|a| !plan.remove_nodes.contains(&a.name));
        if let Some(launch) = &plan.launch {
            self.launch(launch.first_seq, launch.count);
        }
        Ok(plan)
    }

    fn launch(&mut self, seq: i64, count: usize) {
        let ids = match self.tokens.get(&seq) {
            Some((n, ids)) if *n == count => ids.clone(),
            // EC2 refuses a token reused with other parameters; the next
            // pass tries again with what it then sees.
            Some(_) => return,
            None => {
                let ids: Vec<String> = (0..count)
                    .map(|k| format!("i-{}", self.instances.len() + k))
                    .collect();
                for id in &ids {
                    self.instances.push((id.clone(), seq, self.now, true));
                }
                self.tokens.insert(seq, (count, ids.clone()));
                ids
            }
        };
        let unrecorded: Vec<&String> = ids
            .iter()
            .filter(|id| !self.recorded.iter().any(|r| r.id == **id))
            .collect();
        for id in unrecorded {
            let launched = self.instances.iter().find(|i| i.0 == *id).unwrap().2;
            self.recorded.push(Recorded {
                id: id.clone(),
                node: None,
                state: State::Pending,
                launched,
                drain_started: None,
            });
        }
        self.pool.next_launch = seq + count as i64;
    }

    fn boot(&mut self, k: usize) {
        let alive: Vec<String> = self.alive().map(|i| i.0.clone()).collect();
        if alive.is_empty() {
            return;
        }
        let id = &alive[k % alive.len()];
        if !self
            .agents
            .iter()
            .any(|a| a.instance_id.as_deref() == Some(id))
        {
            self.agents.push(NodeView {
                name: format!("n-{id}"),
                instance_id: Some(id.clone()),
                heartbeat: Some(self.now),
                remove_requested: false,
                created: Some(self.now),
            });
        }
    }

    fn apply(&mut self, event: &Event) -> Result<(), String> {
        match *event {
            Event::Reconcile { crash, lag } => return self.reconcile(crash, lag).map(|_| ()),
            Event::Boot(k) => self.boot(k),
            Event::Drained(k) => {
                let draining: Vec<&Recorded> = self
                    .recorded
                    .iter()
                    .filter(|r| r.state == State::Draining)
                    .collect();
                if !draining.is_empty() {
                    let id = draining[k % draining.len()].id.clone();
                    self.drained.insert(id);
                }
            }
            Event::Scale(n) => self.pool.replicas = n,
        }
        Ok(())
    }

    /// Quiet passes: agents boot, drains finish, the listing is current.
    fn settle(&mut self) -> Result<Plan, String> {
        let mut last = None;
        for _ in 0..60 {
            for k in 0..self.instances.len() {
                self.boot(k);
            }
            let draining: Vec<String> = self
                .recorded
                .iter()
                .filter(|r| r.state == State::Draining)
                .map(|r| r.id.clone())
                .collect();
            self.drained.extend(draining);
            last = Some(self.reconcile(false, false)?);
        }
        Ok(last.unwrap())
    }
}

fn pool_view() -> PoolView {
    PoolView {
        replicas: 0,
        order: ScaleDownOrder::NewestFirst,
        drain_timeout: Duration::from_secs(DRAIN_TIMEOUT as u64),
        drain_policy: DrainTimeoutPolicy::Wait,
        join_timeout: Duration::from_secs(JOIN_TIMEOUT as u64),
        grace: Duration::from_secs(GRACE as u64),
        stale_after: Duration::from_secs(60),
        next_launch: 1,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn after_any_history_a_quiet_pool_runs_exactly_its_replicas(
        replicas in 0usize..5,
        events in prop::collection::vec(sim_event(), 1..60),
    ) {
        let mut sim = Sim::new(replicas);
        for (step, event) in events.iter().enumerate() {
            if let Err(broken) = sim.apply(event) {
                prop_assert!(false, "step {step} ({event:?}): {broken}");
            }
        }
        let last = match sim.settle() {
            Ok(plan) => plan,
            Err(broken) => return Err(TestCaseError::fail(format!("settling: {broken}"))),
        };
        let alive: Vec<&String> = sim.alive().map(|i| &i.0).collect();
        prop_assert_eq!(alive.len(), sim.pool.replicas, "alive: {:?}, last plan {:?}", alive, last);
        prop_assert!(last.launch.is_none() && last.terminate.is_empty(), "still acting: {:?}", last);
        prop_assert!(sim.recorded.iter().all(|r| r.state == State::Running), "{:?}", sim.recorded);
    }
}
