use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::SignedDuration;

use super::*;

fn now() -> Timestamp {
    Timestamp::from_second(1_000_000).unwrap()
}

fn ago(seconds: i64) -> Timestamp {
    now() - SignedDuration::from_secs(seconds)
}

fn pool(replicas: usize) -> PoolView {
    PoolView {
        replicas,
        order: ScaleDownOrder::NewestFirst,
        drain_timeout: Duration::from_secs(60),
        drain_policy: DrainTimeoutPolicy::Wait,
        join_timeout: Duration::from_secs(600),
        grace: Duration::from_secs(300),
        stale_after: Duration::from_secs(60),
        next_launch: 10,
    }
}

/// A recorded instance launched `age` seconds ago, joined as node `n-ID`.
fn joined(id: &str, age: i64) -> Recorded {
    Recorded {
        id: id.into(),
        node: Some(format!("n-{id}")),
        state: State::Running,
        launched: ago(age),
        drain_started: None,
    }
}

fn pending(id: &str, age: i64) -> Recorded {
    Recorded {
        node: None,
        state: State::Pending,
        ..joined(id, age)
    }
}

fn listed(id: &str, age: i64, seq: Option<i64>) -> Listed {
    Listed {
        id: id.into(),
        launched: Some(ago(age)),
        launch_seq: seq,
    }
}

/// Listed with no launch time, as some EC2-compatible endpoints list.
fn timeless(id: &str, seq: Option<i64>) -> Listed {
    Listed {
        launched: None,
        ..listed(id, 0, seq)
    }
}

fn listing(recorded: &[Recorded]) -> Vec<Listed> {
    recorded
        .iter()
        .map(|r| Listed {
            id: r.id.clone(),
            launched: Some(r.launched),
            launch_seq: Some(1),
        })
        .collect()
}

fn agent(id: &str) -> NodeView {
    NodeView {
        name: format!("n-{id}"),
        instance_id: Some(id.into()),
        heartbeat: Some(ago(5)),
        remove_requested: false,
        created: Some(ago(60)),
    }
}

struct World {
    pool: PoolView,
    recorded: Vec<Recorded>,
    listed: Vec<Listed>,
    nodes: Vec<NodeView>,
    drains: BTreeMap<String, DrainOutcome>,
    previous: Vec<Condition>,
    first_seen: BTreeMap<String, Timestamp>,
}

impl World {
    fn new(pool: PoolView, recorded: Vec<Recorded>) -> World {
        let listed = listing(&recorded);
        let nodes = recorded
            .iter()
            .filter(|r| r.node.is_some())
            .map(|r| agent(&r.id))
            .collect();
        World {
            pool,
            recorded,
            listed,
            nodes,
            drains: BTreeMap::new(),
            previous: Vec::new(),
            first_seen: BTreeMap::new(),
        }
    }

    fn plan(&self) -> Plan {
        plan(&Input {
            pool: &self.pool,
            recorded: &self.recorded,
            listed: &self.listed,
            nodes: &self.nodes,
            drains: &self.drains,
            previous: &self.previous,
            first_seen: &self.first_seen,
            now: now(),
        })
    }
}

fn state_of(plan: &Plan, id: &str) -> Option<State> {
    plan.instances.iter().find(|i| i.id == id).map(|i| i.state)
}

fn condition<'p>(plan: &'p Plan, type_: &str) -> &'p Observed<'static> {
    plan.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

#[test]
fn an_empty_pool_launches_every_replica_with_the_recorded_sequence() {
    let p = World::new(pool(5), vec![]).plan();
    assert_eq!(
        p.launch,
        Some(Launch {
            first_seq: 10,
            count: 5
        })
    );
    assert_eq!(p.next_launch, 10);
    assert_eq!(condition(&p, "Scaling").reason, "ScalingUp");
}

#[test]
fn a_pool_at_its_count_does_nothing_and_is_ready_when_all_heartbeat() {
    let p = World::new(pool(2), vec![joined("a", 100), joined("b", 90)]).plan();
    assert_eq!(p.launch, None);
    assert!(p.terminate.is_empty());
    assert_eq!((p.replicas, p.ready), (2, 2));
    assert_eq!(
        condition(&p, "Ready").status,
        crate::api::conditions::Status::True
    );
    assert_eq!(condition(&p, "Scaling").reason, "Stable");
}

#[test]
fn an_unrecorded_instance_of_the_reserved_sequence_is_adopted_not_relaunched() {
    let mut w = World::new(pool(3), vec![]);
    w.listed = vec![listed("x", 1, Some(10)), listed("y", 1, Some(10))];
    let p = w.plan();
    assert_eq!(state_of(&p, "x"), Some(State::Pending));
    assert_eq!(state_of(&p, "y"), Some(State::Pending));
    assert_eq!(p.next_launch, 11);
    assert_eq!(
        p.launch,
        Some(Launch {
            first_seq: 11,
            count: 1
        })
    );
}

#[test]
fn a_young_unrecorded_instance_of_an_old_sequence_is_left_alone() {
    let mut w = World::new(pool(0), vec![]);
    w.listed = vec![listed("stray", 30, Some(3)), listed("untagged", 30, None)];
    let p = w.plan();
    assert!(p.terminate.is_empty());
    assert_eq!(p.strays, vec!["stray".to_string(), "untagged".to_string()]);
    assert!(p.instances.is_empty());
}

#[test]
fn an_old_unrecorded_instance_is_an_orphan_and_terminated() {
    let mut w = World::new(pool(0), vec![]);
    w.listed = vec![listed("old", 3600, Some(3))];
    assert_eq!(w.plan().terminate, vec!["old".to_string()]);
}

#[test]
fn a_recorded_instance_missing_from_a_lagging_listing_is_kept_while_young() {
    let mut w = World::new(pool(1), vec![pending("new", 5)]);
    w.listed.clear();
    let p = w.plan();
    assert_eq!(state_of(&p, "new"), Some(State::Pending));
    assert_eq!(p.launch, None);
}

#[test]
fn a_recorded_instance_gone_from_the_listing_for_long_is_forgotten_and_replaced() {
    let mut w = World::new(pool(1), vec![joined("gone", 3600)]);
    w.listed.clear();
    let p = w.plan();
    assert!(p.instances.is_empty());
    assert_eq!(
        p.launch,
        Some(Launch {
            first_seq: 10,
            count: 1
        })
    );
}

#[test]
fn an_instance_becomes_running_when_its_agent_registers() {
    let mut w = World::new(pool(1), vec![pending("a", 20)]);
    w.nodes = vec![agent("a")];
    let p = w.plan();
    assert_eq!(state_of(&p, "a"), Some(State::Running));
    assert_eq!(p.instances[0].node.as_deref(), Some("n-a"));
    assert_eq!(p.ready, 1);
}

#[test]
fn an_instance_that_does_not_join_in_time_is_replaced() {
    let p = World::new(pool(1), vec![pending("slow", 700)]).plan();
    assert_eq!(state_of(&p, "slow"), Some(State::Terminating));
    assert_eq!(p.terminate, vec!["slow".to_string()]);
    assert_eq!(
        p.launch,
        Some(Launch {
            first_seq: 10,
            count: 1
        })
    );
    assert_eq!(condition(&p, "Scaling").reason, "Replacing");
}

#[test]
fn a_node_with_a_stale_heartbeat_is_not_ready() {
    let mut w = World::new(pool(1), vec![joined("a", 100)]);
    w.nodes[0].heartbeat = Some(ago(120));
    assert_eq!(w.plan().ready, 0);
}

#[test]
fn scaling_down_drains_the_newest_joined_instances_first() {
    let w = World::new(
        pool(1),
        vec![joined("old", 300), joined("mid", 200), joined("new", 100)],
    );
    let p = w.plan();
    assert_eq!(state_of(&p, "new"), Some(State::Draining));
    assert_eq!(state_of(&p, "mid"), Some(State::Draining));
    assert_eq!(state_of(&p, "old"), Some(State::Running));
    assert!(
        p.terminate.is_empty(),
        "nothing is terminated before its drain"
    );
    assert_eq!(condition(&p, "Scaling").reason, "ScalingDown");
}

#[test]
fn scaling_down_oldest_first_picks_the_longest_running() {
    let mut w = World::new(pool(1), vec![joined("old", 300), joined("new", 100)]);
    w.pool.order = ScaleDownOrder::OldestFirst;
    let p = w.plan();
    assert_eq!(state_of(&p, "old"), Some(State::Draining));
    assert_eq!(state_of(&p, "new"), Some(State::Running));
}

#[test]
fn a_node_named_by_node_remove_goes_first_whatever_the_order() {
    let mut w = World::new(pool(1), vec![joined("old", 300), joined("new", 100)]);
    w.nodes[0].remove_requested = true;
    let p = w.plan();
    assert_eq!(state_of(&p, "old"), Some(State::Draining));
    assert_eq!(state_of(&p, "new"), Some(State::Running));
}

#[test]
fn an_unjoined_victim_is_terminated_without_a_drain() {
    let p = World::new(pool(0), vec![pending("a", 10)]).plan();
    assert_eq!(p.terminate, vec!["a".to_string()]);
    assert!(p.remove_nodes.is_empty());
}

#[test]
fn a_drained_instance_is_terminated_and_its_node_install_removed() {
    let mut w = World::new(pool(0), vec![joined("a", 100)]);
    w.recorded[0].state = State::Draining;
    w.recorded[0].drain_started = Some(ago(5));
    w.drains.insert("a".into(), DrainOutcome::Done);
    let p = w.plan();
    assert_eq!(p.terminate, vec!["a".to_string()]);
    assert_eq!(p.remove_nodes, vec!["n-a".to_string()]);
    assert_eq!(p.replicas, 0);
}

#[test]
fn a_node_install_whose_instance_is_gone_is_deleted_and_no_other() {
    // The pass that terminated `b` ended before deleting its NodeInstall.
    let mut w = World::new(pool(1), vec![joined("a", 100)]);
    w.nodes.push(agent("b"));
    let p = w.plan();
    assert_eq!(p.forget_nodes, vec!["n-b".to_string()]);
    assert!(p.terminate.is_empty());
    // A recorded instance the listing lags behind keeps its node.
    let mut w = World::new(pool(1), vec![joined("a", 100)]);
    w.listed.clear();
    assert!(w.plan().forget_nodes.is_empty());
}

#[test]
fn a_node_install_that_never_named_its_instance_is_deleted_after_the_join_timeout() {
    // Its agent registered and was terminated before its first status.
    let silent = |name: &str, created: i64| NodeView {
        name: name.into(),
        instance_id: None,
        heartbeat: None,
        remove_requested: false,
        created: Some(ago(created)),
    };
    let mut w = World::new(pool(1), vec![joined("a", 1000)]);
    let timeout = w.pool.join_timeout.as_secs() as i64;
    w.nodes.push(silent("old", timeout + 1));
    w.nodes.push(silent("young", timeout - 10));
    // One that reported a heartbeat but no instance is someone's agent.
    let mut beating = silent("beating", timeout + 1);
    beating.heartbeat = Some(ago(5));
    w.nodes.push(beating);
    assert_eq!(w.plan().forget_nodes, vec!["old".to_string()]);
}

fn blocked(age: i64, policy: DrainTimeoutPolicy) -> Plan {
    let mut w = World::new(pool(0), vec![joined("a", 100)]);
    w.pool.drain_policy = policy;
    w.recorded[0].state = State::Draining;
    w.recorded[0].drain_started = Some(ago(age));
    let why = "PodDisruptionBudget web".to_string();
    w.drains
        .insert("a".into(), DrainOutcome::Blocked { pods: 1, why });
    w.plan()
}

#[test]
fn a_blocked_drain_within_its_timeout_keeps_the_instance() {
    let p = blocked(10, DrainTimeoutPolicy::Wait);
    assert_eq!(state_of(&p, "a"), Some(State::Draining));
    assert_eq!(condition(&p, "Degraded").reason, "AsExpected");
}

#[test]
fn a_drain_timeout_under_wait_keeps_the_instance_and_reports_degraded() {
    let p = blocked(61, DrainTimeoutPolicy::Wait);
    assert_eq!(state_of(&p, "a"), Some(State::Draining));
    assert!(p.terminate.is_empty());
    let c = condition(&p, "Degraded");
    assert_eq!((c.reason, c.status.as_str()), ("DrainTimeout", "True"));
    assert!(c.message.contains("instance a"), "{}", c.message);
}

#[test]
fn a_drain_timeout_under_force_terminates_and_says_so() {
    let p = blocked(61, DrainTimeoutPolicy::Force);
    assert_eq!(p.terminate, vec!["a".to_string()]);
    let c = condition(&p, "Degraded");
    assert_eq!((c.reason, c.status.as_str()), ("DrainForced", "True"));
}

#[test]
fn a_forced_drain_stays_reported_for_a_while_after_the_removal() {
    let mut w = World::new(pool(0), vec![]);
    w.previous = vec![Condition {
        type_: "Degraded".into(),
        status: "True".into(),
        reason: "DrainForced".into(),
        message: "forced".into(),
        observed_generation: None,
        last_transition_time: Time(ago(30)),
    }];
    assert_eq!(condition(&w.plan(), "Degraded").reason, "DrainForced");
    w.previous[0].last_transition_time = Time(ago(3600));
    assert_eq!(condition(&w.plan(), "Degraded").reason, "AsExpected");
}

#[test]
fn a_terminating_instance_that_is_gone_is_dropped_from_the_record() {
    let mut w = World::new(pool(0), vec![pending("a", 10)]);
    w.recorded[0].state = State::Terminating;
    w.listed.clear();
    let p = w.plan();
    assert!(p.instances.is_empty());
    assert!(p.terminate.is_empty());
}

#[test]
fn scaling_up_while_draining_cancels_the_removal_instead_of_launching() {
    let mut w = World::new(pool(2), vec![joined("a", 100), joined("b", 50)]);
    w.recorded[1].state = State::Draining;
    w.recorded[1].drain_started = Some(ago(5));
    w.drains.insert(
        "b".into(),
        DrainOutcome::Blocked {
            pods: 1,
            why: "web/p: terminating".into(),
        },
    );
    let p = w.plan();
    assert_eq!(state_of(&p, "b"), Some(State::Running));
    assert_eq!(p.instances[1].drain_started, None);
    assert_eq!(p.launch, None);
    assert_eq!(p.cancelled, vec!["n-b".to_string()]);
    assert_eq!(condition(&p, "Scaling").reason, "Stable");
}

#[test]
fn a_node_named_by_node_remove_stays_on_its_way_out_when_the_pool_grows() {
    let mut w = World::new(pool(2), vec![joined("a", 100), joined("b", 50)]);
    w.recorded[1].state = State::Draining;
    w.nodes[1].remove_requested = true;
    let p = w.plan();
    assert_eq!(state_of(&p, "b"), Some(State::Draining));
    assert!(p.cancelled.is_empty());
    assert_eq!(
        p.launch,
        Some(Launch {
            first_seq: 10,
            count: 1
        })
    );
}

#[test]
fn a_drain_waiting_for_a_terminating_pod_keeps_the_instance() {
    let mut w = World::new(pool(0), vec![joined("a", 100)]);
    w.recorded[0].state = State::Draining;
    w.recorded[0].drain_started = Some(ago(5));
    let why = "web/p: terminating".to_string();
    w.drains
        .insert("a".into(), DrainOutcome::Blocked { pods: 1, why });
    let p = w.plan();
    assert_eq!(state_of(&p, "a"), Some(State::Draining));
    assert!(p.terminate.is_empty());
}

#[test]
fn an_unrecorded_instance_without_a_launch_time_is_young_at_first_sight() {
    let mut w = World::new(pool(0), vec![]);
    w.listed = vec![timeless("x", None)];
    let p = w.plan();
    assert_eq!(p.strays, vec!["x".to_string()]);
    assert!(p.terminate.is_empty());
    assert_eq!(p.first_seen.get("x"), Some(&now()), "first sight recorded");
}

#[test]
fn an_unrecorded_instance_without_a_launch_time_ages_from_its_first_sight() {
    let mut w = World::new(pool(0), vec![]);
    w.listed = vec![timeless("x", None)];
    w.first_seen.insert("x".into(), ago(100));
    let p = w.plan();
    assert_eq!(p.strays, vec!["x".to_string()]);
    assert_eq!(p.first_seen.get("x"), Some(&ago(100)), "not reset to now");
    w.first_seen.insert("x".into(), ago(301));
    let p = w.plan();
    assert_eq!(p.terminate, vec!["x".to_string()], "an orphan after grace");
}

#[test]
fn an_adopted_instance_without_a_launch_time_is_recorded_as_launched_at_first_sight() {
    let mut w = World::new(pool(1), vec![]);
    w.listed = vec![timeless("x", Some(10))];
    w.first_seen.insert("x".into(), ago(50));
    let p = w.plan();
    assert_eq!(p.instances[0].launched, ago(50));
    assert!(
        p.first_seen.is_empty(),
        "recorded instances carry their time"
    );
}

#[test]
fn first_sightings_of_instances_no_longer_listed_are_dropped() {
    let mut w = World::new(pool(0), vec![]);
    w.first_seen.insert("gone".into(), ago(10));
    assert!(w.plan().first_seen.is_empty());
}

#[test]
fn a_pool_with_a_node_not_ready_looks_again_soon() {
    let mut w = World::new(pool(1), vec![joined("a", 100)]);
    assert_eq!(w.plan().requeue_after, Duration::from_secs(60));
    w.nodes[0].heartbeat = Some(ago(120));
    assert_eq!(w.plan().requeue_after, Duration::from_secs(10));
}
