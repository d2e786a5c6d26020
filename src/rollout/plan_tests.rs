use super::*;

const NEW: &str = "new";
const OLD: &str = "old";

fn now() -> Timestamp {
    Timestamp::from_second(1_000_000).unwrap()
}

fn ago(seconds: i64) -> Option<Timestamp> {
    Some(now() - SignedDuration::from_secs(seconds))
}

fn set(max_unavailable: IntOrString) -> SetView {
    SetView {
        set_hash: NEW.into(),
        max_unavailable,
        failure_threshold: 1,
        wait: Duration::ZERO,
        paused: false,
    }
}

/// A healthy node on the old set, not yet targeted.
fn old(name: &str) -> NodeView {
    NodeView {
        name: name.into(),
        target_hash: Some(OLD.into()),
        active_hash: Some(OLD.into()),
        phase: NodePhase::Active,
        heartbeat: ago(1),
        ready_since: ago(500),
        ..Default::default()
    }
}

fn switching(name: &str) -> NodeView {
    NodeView {
        target_hash: Some(NEW.into()),
        phase: NodePhase::Fetching,
        ..old(name)
    }
}

fn done(name: &str, since: i64) -> NodeView {
    NodeView {
        target_hash: Some(NEW.into()),
        active_hash: Some(NEW.into()),
        ready_since: ago(since),
        ..old(name)
    }
}

fn rolled_back(name: &str) -> NodeView {
    NodeView {
        target_hash: Some(NEW.into()),
        failed_hash: Some(NEW.into()),
        phase: NodePhase::RolledBack,
        ..old(name)
    }
}

fn run(set: &SetView, nodes: &[NodeView], halt: Option<&str>) -> Plan {
    plan(&Input {
        set,
        nodes,
        halt,
        stale_after: Duration::from_secs(30),
        now: now(),
    })
}

fn condition<'p>(plan: &'p Plan, type_: &str) -> &'p Observed<'static> {
    plan.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

#[test]
fn budget_resolves_integers_and_percentages_with_a_floor_of_one() {
    let cases = [
        (IntOrString::Int(2), 6, 2),
        (IntOrString::String("50%".into()), 6, 3),
        (IntOrString::String("25%".into()), 6, 1),
        (IntOrString::String("10%".into()), 6, 1),
        (IntOrString::String("100%".into()), 6, 6),
        (IntOrString::Int(0), 6, 1),
    ];
    for (max, nodes, expected) in cases {
        assert_eq!(budget(&max, nodes), expected, "{max:?} of {nodes}");
    }
}

#[test]
fn a_fresh_rollout_starts_as_many_nodes_as_the_budget_allows() {
    let nodes: Vec<_> = (0..6).map(|i| old(&format!("n{i}"))).collect();
    let plan = run(&set(IntOrString::Int(2)), &nodes, None);
    assert_eq!(plan.start, ["n0", "n1"]);
    assert_eq!(condition(&plan, "Progressing").status, Status::True);
    assert_eq!(condition(&plan, "Available").status, Status::False);
}

#[test]
fn switching_nodes_use_up_the_budget() {
    let nodes = [switching("n0"), switching("n1"), old("n2"), old("n3")];
    let plan = run(&set(IntOrString::Int(2)), &nodes, None);
    assert!(plan.start.is_empty());
    assert_eq!(plan.in_progress, ["n0", "n1"]);
    assert_eq!(plan.counts.in_progress, 2);
}

#[test]
fn a_finished_node_frees_its_place_in_the_budget() {
    let nodes = [done("n0", 1), switching("n1"), old("n2"), old("n3")];
    let plan = run(&set(IntOrString::Int(2)), &nodes, None);
    assert_eq!(plan.start, ["n2"]);
    assert_eq!(plan.counts.updated, 1);
}

#[test]
fn node_with_stale_heartbeat_counts_as_unavailable() {
    let silent = NodeView {
        heartbeat: ago(120),
        ..old("n0")
    };
    let nodes = [silent, old("n1"), old("n2")];
    let plan = run(&set(IntOrString::Int(1)), &nodes, None);
    assert!(
        plan.start.is_empty(),
        "the stale node uses the whole budget"
    );
    assert_eq!(plan.counts.stale, 1);
    assert_eq!(condition(&plan, "Degraded").reason, "NodesUnresponsive");
}

#[test]
fn a_stale_node_is_not_given_a_target() {
    let silent = NodeView {
        heartbeat: None,
        ..old("n0")
    };
    let nodes = [silent, old("n1")];
    let plan = run(&set(IntOrString::Int(2)), &nodes, None);
    assert_eq!(plan.start, ["n1"]);
}

#[test]
fn a_rollback_at_the_threshold_halts_the_set() {
    let nodes = [rolled_back("n0"), old("n1"), old("n2")];
    let plan = run(&set(IntOrString::Int(1)), &nodes, None);
    assert!(plan.start.is_empty());
    let halted = condition(&plan, "Halted");
    assert_eq!(
        (halted.status, halted.reason),
        (Status::True, "FailureThreshold")
    );
    assert_eq!(condition(&plan, "Degraded").status, Status::True);
    assert_eq!(plan.counts.failed, 1);
}

#[test]
fn failures_below_the_threshold_let_the_rollout_continue() {
    let mut s = set(IntOrString::Int(1));
    s.failure_threshold = 2;
    let nodes = [rolled_back("n0"), old("n1"), old("n2")];
    let plan = run(&s, &nodes, None);
    assert_eq!(
        plan.start,
        ["n1"],
        "a rolled-back node is healthy on its old set"
    );
    assert_eq!(condition(&plan, "Halted").status, Status::False);
}

#[test]
fn a_fleet_halt_stops_new_nodes_and_names_the_reason() {
    let nodes = [switching("n0"), old("n1"), old("n2")];
    let plan = run(
        &set(IntOrString::Int(3)),
        &nodes,
        Some("error budget spent"),
    );
    assert!(plan.start.is_empty());
    let halted = condition(&plan, "Halted");
    assert_eq!(halted.status, Status::True);
    assert_eq!(halted.message, "error budget spent");
    assert_eq!(
        plan.in_progress,
        ["n0"],
        "nodes already switching are left to finish"
    );
}

#[test]
fn a_paused_set_starts_nothing() {
    let mut s = set(IntOrString::Int(3));
    s.paused = true;
    let plan = run(&s, &[old("n0")], None);
    assert!(plan.start.is_empty());
    assert_eq!(condition(&plan, "Progressing").reason, "Paused");
}

#[test]
fn with_wait_seconds_a_batch_waits_for_the_last_one_to_settle() {
    let mut s = set(IntOrString::Int(2));
    s.wait = Duration::from_secs(10);
    let recent = [done("n0", 4), done("n1", 3), old("n2"), old("n3")];
    let plan = run(&s, &recent, None);
    assert!(plan.start.is_empty());
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(7)));

    let settled = [done("n0", 14), done("n1", 13), old("n2"), old("n3")];
    assert_eq!(run(&s, &settled, None).start, ["n2", "n3"]);
}

#[test]
fn with_wait_seconds_no_batch_starts_while_one_is_switching() {
    let mut s = set(IntOrString::Int(3));
    s.wait = Duration::from_secs(10);
    let nodes = [switching("n0"), old("n1"), old("n2")];
    assert!(run(&s, &nodes, None).start.is_empty());
}

#[test]
fn a_node_already_on_the_set_is_adopted_without_using_budget() {
    let already = NodeView {
        target_hash: None,
        ..done("n0", 100)
    };
    let nodes = [already, old("n1")];
    let plan = run(&set(IntOrString::Int(1)), &nodes, None);
    assert_eq!(plan.adopt, ["n0"]);
    assert_eq!(plan.start, ["n1"]);
}

#[test]
fn every_node_on_the_set_makes_the_set_available() {
    let nodes = [done("n0", 100), done("n1", 100)];
    let plan = run(&set(IntOrString::Int(1)), &nodes, None);
    assert_eq!(condition(&plan, "Available").status, Status::True);
    assert_eq!(condition(&plan, "Progressing").status, Status::False);
    assert_eq!(plan.requeue_after, None);
    assert_eq!(
        plan.counts,
        Counts {
            desired: 2,
            updated: 2,
            ready: 2,
            ..Default::default()
        }
    );
}

#[test]
fn the_budget_is_never_exceeded_whatever_the_mix() {
    // Every combination of four node states over five nodes, budgets 1 to 3.
    let makers: [fn(&str) -> NodeView; 4] = [old, switching, |n| done(n, 100), rolled_back];
    for code in 0..4usize.pow(5) {
        let nodes: Vec<NodeView> = (0..5)
            .map(|i| makers[(code / 4usize.pow(i)) % 4](&format!("n{i}")))
            .collect();
        for max in 1..=3 {
            let mut s = set(IntOrString::Int(max));
            s.failure_threshold = 10;
            let plan = run(&s, &nodes, None);
            let after = plan.counts.in_progress + plan.start.len();
            assert!(
                after <= (max as usize).max(plan.counts.in_progress),
                "budget {max} exceeded for {nodes:?}: {plan:?}"
            );
        }
    }
}

#[test]
fn a_reserved_node_without_its_target_counts_against_the_budget_and_is_retargeted() {
    let reserved = NodeView {
        reserved: true,
        ..old("n0")
    };
    let nodes = [reserved, old("n1"), old("n2")];
    let plan = run(&set(IntOrString::Int(1)), &nodes, None);
    assert!(
        plan.start.is_empty(),
        "the reservation holds the only place"
    );
    assert_eq!(plan.retarget, ["n0"]);
    assert_eq!(plan.in_progress, ["n0"]);
}

#[test]
fn a_reservation_of_a_node_that_finished_is_dropped() {
    let finished = NodeView {
        reserved: true,
        ..done("n0", 100)
    };
    let plan = run(&set(IntOrString::Int(1)), &[finished, old("n1")], None);
    assert!(plan.in_progress.is_empty());
    assert_eq!(plan.start, ["n1"]);
}

/// A node reserved for the set whose target write never happened.
fn reserved(node: NodeView) -> NodeView {
    NodeView {
        reserved: true,
        ..node
    }
}

/// A node that rolled back from an earlier set (`failed`) and is back on
/// the old one.
fn rolled_back_from(name: &str, failed: &str) -> NodeView {
    NodeView {
        target_hash: Some(failed.into()),
        failed_hash: Some(failed.into()),
        phase: NodePhase::RolledBack,
        ..old(name)
    }
}

#[test]
fn halted_set_retargets_no_reserved_node_after_spec_change() {
    // Halted by the threshold on "bad", then halted fleet-wide, then the
    // spec changed to NEW: n0 still carries a reservation.
    let nodes = [
        reserved(rolled_back_from("n0", "bad")),
        rolled_back_from("n1", "bad"),
        old("n2"),
    ];
    let plan = run(
        &set(IntOrString::Int(2)),
        &nodes,
        Some("error budget spent"),
    );
    assert!(plan.retarget.is_empty(), "{plan:?}");
    assert!(plan.start.is_empty(), "{plan:?}");
    assert!(
        plan.in_progress.is_empty(),
        "nothing is switching: {plan:?}"
    );
}

#[test]
fn a_rolled_back_nodes_reservation_does_not_make_it_switching() {
    let nodes = [reserved(rolled_back_from("n0", "bad")), old("n1")];
    let plan = run(&set(IntOrString::Int(1)), &nodes, None);
    assert!(plan.retarget.is_empty(), "{plan:?}");
    assert!(plan.in_progress.is_empty(), "{plan:?}");
    assert_eq!(plan.counts.in_progress, 0);
    assert_eq!(plan.start, ["n0"], "it is pending like any other node");
}

#[test]
fn a_set_at_its_failure_threshold_retargets_no_reserved_node() {
    let nodes = [rolled_back("n0"), reserved(old("n1")), old("n2")];
    let plan = run(&set(IntOrString::Int(2)), &nodes, None);
    assert_eq!(condition(&plan, "Halted").reason, "FailureThreshold");
    assert!(plan.retarget.is_empty(), "{plan:?}");
    assert!(plan.start.is_empty(), "{plan:?}");
    assert!(plan.in_progress.is_empty(), "{plan:?}");
}

#[test]
fn a_fleet_halt_retargets_no_reserved_node() {
    let nodes = [reserved(old("n0")), switching("n1"), old("n2")];
    let plan = run(&set(IntOrString::Int(3)), &nodes, Some("maintenance"));
    assert!(plan.retarget.is_empty(), "{plan:?}");
    assert!(plan.start.is_empty(), "{plan:?}");
    assert_eq!(plan.in_progress, ["n1"], "a node with its target finishes");
}

#[test]
fn a_paused_set_retargets_no_reserved_node() {
    let mut s = set(IntOrString::Int(3));
    s.paused = true;
    let plan = run(&s, &[reserved(old("n0")), old("n1")], None);
    assert!(plan.retarget.is_empty(), "{plan:?}");
    assert!(plan.start.is_empty(), "{plan:?}");
}

#[test]
fn a_held_set_still_records_the_target_of_a_node_already_running_it() {
    let already = NodeView {
        target_hash: None,
        ..done("n0", 100)
    };
    let plan = run(
        &set(IntOrString::Int(1)),
        &[already, old("n1")],
        Some("halt"),
    );
    assert_eq!(plan.adopt, ["n0"], "adoption changes nothing on the node");
    assert!(plan.start.is_empty());
}

#[test]
fn no_held_set_gives_any_node_a_target_it_did_not_have_whatever_the_mix() {
    // Every combination of five node states over four nodes, each reserved
    // or not, under each kind of hold.
    let makers: [fn(&str) -> NodeView; 5] = [
        old,
        switching,
        |n| done(n, 100),
        rolled_back,
        |n| rolled_back_from(n, "bad"),
    ];
    for code in 0..10usize.pow(4) {
        let nodes: Vec<NodeView> = (0..4)
            .map(|i| {
                let digit = (code / 10usize.pow(i)) % 10;
                NodeView {
                    reserved: digit >= 5,
                    ..makers[digit % 5](&format!("n{i}"))
                }
            })
            .collect();
        let mut paused = set(IntOrString::Int(4));
        paused.paused = true;
        for (s, halt) in [(set(IntOrString::Int(4)), Some("halt")), (paused, None)] {
            let plan = run(&s, &nodes, halt);
            assert!(
                plan.start.is_empty() && plan.retarget.is_empty(),
                "{nodes:?}: {plan:?}"
            );
        }
    }
}
