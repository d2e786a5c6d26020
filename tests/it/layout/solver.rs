//! The layout solver, rule by rule and combined: table tests whose names
//! say what each case shows. Every layout found is also checked against
//! the rules by an independent checker, and every explanation is checked
//! minimal (dropping any of its constraints makes the request solvable).

use theseus::layout::solve::{self, Objective};
use theseus::layout::{Outcome, Request};

use crate::support::layout::{Expect, catalog, check, model_for};

struct Case {
    name: &'static str,
    spec: &'static str,
    size: u32,
    expect: Expect,
}

fn case(name: &'static str, spec: &'static str, size: u32, expect: Expect) -> Case {
    Case {
        name,
        spec,
        size,
        expect,
    }
}

#[test]
fn each_rule_alone_and_combined_is_kept_or_explained() {
    use Expect::*;
    let cases = [
        case(
            "a service's count min and max fix how many nodes run it",
            "defaults: {services: [a, b]}
             constraints: {services: {a: {count: {min: 2, max: 2}}}}",
            4,
            Counts(&[("a", 2)]),
        ),
        case(
            "mustCoexist puts a group's services on the same nodes",
            "defaults: {services: [a, b, c]}
             constraints:
               layout: {mustCoexist: [[a, b]]}
               services: {a: {count: {min: 2, max: 2}}}",
            3,
            Counts(&[("a", 2), ("b", 2), ("c", 1)]),
        ),
        case(
            "cantCoexist keeps a group's services on different nodes",
            "defaults: {services: [a, b]}
             constraints: {layout: {cantCoexist: [[a, b]]}}",
            2,
            Counts(&[("a", 1), ("b", 1)]),
        ),
        case(
            "cantCoexist with one node for two services is explained",
            "defaults: {services: [a, b]}
             constraints: {layout: {cantCoexist: [[a, b]]}}",
            1,
            Unsat(&[
                "spec.constraints.services.a.count.min",
                "spec.constraints.services.b.count.min",
                "spec.constraints.layout.cantCoexist[0]",
            ]),
        ),
        case(
            "a ratio of the cluster size scales a service with the size",
            "defaults: {services: [a, b]}
             constraints: {services: {a: {ratio: {perNodes: 4, min: 1, max: 1}}}}",
            12,
            Counts(&[("a", 3)]),
        ),
        case(
            "a ratio of another service keeps one cache per four web nodes",
            "defaults: {services: [web, cache]}
             constraints:
               layout: {cantCoexist: [[web, cache]]}
               services:
                 web: {count: {min: 8, max: 8}}
                 cache: {ratio: {perNodes: 4, min: 1, of: web}}",
            10,
            Counts(&[("web", 8), ("cache", 2)]),
        ),
        case(
            "nodeClasses keep a service on the classes it names",
            "defaults: {services: [a, b]}
             constraints: {services: {a: {nodeClasses: [large], count: {max: 1}}}}",
            3,
            Classes(&[("large", 1), ("small", 2)]),
        ),
        case(
            "capacity keeps two heavy services off one small node",
            "defaults: {services: [heavy, heavy2]}
             constraints: {services: {heavy: {count: {max: 1}}, heavy2: {count: {max: 1}}}}",
            2,
            Classes(&[("small", 2)]),
        ),
        case(
            "capacity sends two heavy services on one node to a large class",
            "defaults: {services: [heavy, heavy2]}",
            1,
            Classes(&[("large", 1)]),
        ),
        case(
            "a service no class can hold is explained by the capacities",
            "defaults: {services: [giant, b]}",
            2,
            Unsat(&[
                "spec.constraints.services.giant.count.min",
                "NodeClass/large spec.capacity",
                "NodeClass/small spec.capacity",
                "NodeClass/spare spec.capacity",
            ]),
        ),
        case(
            "the cheapest class is chosen when nothing else differs",
            "defaults: {services: [a]}",
            3,
            Classes(&[("small", 3)]),
        ),
        case(
            "the template's preferred class breaks a tie in cost",
            "compatibility: {nodeClasses: [small, spare]}
             defaults: {services: [a], nodeClass: spare}",
            3,
            Classes(&[("spare", 3)]),
        ),
        case(
            "a size above the template's maximum is explained by it",
            "defaults: {services: [a]}
             constraints: {size: {max: 5}}",
            6,
            Unsat(&["spec.constraints.size.max"]),
        ),
        case(
            "a single namenode cannot coexist with three datanodes on three nodes",
            "defaults: {services: [namenode, datanode, c]}
             constraints:
               layout: {mustCoexist: [[namenode, datanode]]}
               services:
                 namenode: {count: {max: 1}}
                 datanode: {count: {min: 3}}",
            3,
            Unsat(&[
                "spec.constraints.services.namenode.count.max",
                "spec.constraints.services.datanode.count.min",
                "spec.constraints.layout.mustCoexist[0]",
            ]),
        ),
        case(
            "all rules combined: classes, capacity, ratio, coexistence and counts",
            "defaults: {services: [namenode, datanode, nodemanager, heavy, cache]}
             constraints:
               layout:
                 mustCoexist: [[datanode, nodemanager]]
                 cantCoexist: [[namenode, datanode], [heavy, cache]]
               services:
                 namenode: {nodeClasses: [large], count: {min: 1, max: 1}}
                 datanode: {count: {min: 3}}
                 heavy: {count: {max: 2}}
                 cache: {ratio: {perNodes: 3, min: 1, of: datanode}}",
            9,
            Counts(&[("namenode", 1)]),
        ),
    ];
    for c in cases {
        let model = model_for(
            &catalog(c.spec),
            &Request {
                size: c.size,
                ..Request::default()
            },
        );
        check(
            c.name,
            &model,
            &solve::solve(&model, &[], "n").unwrap(),
            &c.expect,
        );
    }
}

/// The layout and objective of a solved outcome.
fn solved(outcome: Outcome) -> (Vec<theseus::api::LayoutNode>, Objective) {
    match outcome {
        Outcome::Solved { layout, objective } => (layout, objective),
        Outcome::Unsatisfiable(e) => panic!("no layout: {e}"),
    }
}

const HADOOP: &str = "defaults: {services: [namenode, datanode, nodemanager]}
    constraints:
      layout:
        mustCoexist: [[datanode, nodemanager]]
        cantCoexist: [[namenode, datanode]]
      services:
        namenode: {count: {min: 1, max: 1}}
        datanode: {count: {min: 3}}";

#[test]
fn scaling_up_adds_nodes_and_moves_no_service() {
    let cat = catalog(HADOOP);
    let (before, _) = solved(
        solve::solve(
            &model_for(
                &cat,
                &Request {
                    size: 5,
                    ..Default::default()
                },
            ),
            &[],
            "h",
        )
        .unwrap(),
    );
    let model = model_for(
        &cat,
        &Request {
            size: 8,
            ..Default::default()
        },
    );
    let (after, objective) = solved(solve::solve(&model, &before, "h").unwrap());
    assert_eq!(objective.moves, 0);
    assert_eq!(objective.changed, 3, "three nodes added, none changed");
    assert_eq!(
        &after[..5],
        &before[..],
        "the old nodes stay as they were, first"
    );
    assert_eq!(after[5].name, "h-6", "new nodes are numbered after the old");
    check(
        "scale up",
        &model,
        &Outcome::Solved {
            layout: after,
            objective,
        },
        &Expect::Counts(&[("namenode", 1)]),
    );
}

#[test]
fn scaling_down_removes_worker_nodes_and_changes_no_other() {
    let cat = catalog(HADOOP);
    let (before, _) = solved(
        solve::solve(
            &model_for(
                &cat,
                &Request {
                    size: 8,
                    ..Default::default()
                },
            ),
            &[],
            "h",
        )
        .unwrap(),
    );
    let model = model_for(
        &cat,
        &Request {
            size: 5,
            ..Default::default()
        },
    );
    let (after, objective) = solved(solve::solve(&model, &before, "h").unwrap());
    assert_eq!(objective.moves, 6, "three nodes of two services each leave");
    assert_eq!(objective.changed, 3, "three nodes removed, none changed");
    assert!(
        after.iter().all(|n| before.contains(n)),
        "every remaining node is unchanged"
    );
    assert!(
        after.iter().any(|n| n.services == ["namenode"]),
        "the namenode stays"
    );
}

#[test]
fn rescaling_changes_as_little_as_the_exhaustive_minimum() {
    let cat = catalog(HADOOP);
    for (from, to) in [(5, 4), (4, 6), (6, 5)] {
        let (before, _) = solved(
            solve::solve(
                &model_for(
                    &cat,
                    &Request {
                        size: from,
                        ..Default::default()
                    },
                ),
                &[],
                "h",
            )
            .unwrap(),
        );
        let model = model_for(
            &cat,
            &Request {
                size: to,
                ..Default::default()
            },
        );
        let (_, objective) = solved(solve::solve(&model, &before, "h").unwrap());
        let best = theseus::layout::exhaustive::best(&model, &before, 50_000_000).unwrap();
        assert_eq!(Some(objective), best, "{from} -> {to} nodes");
    }
}

#[test]
fn adding_a_service_to_a_cluster_changes_only_the_nodes_it_needs() {
    let cat = catalog(
        "defaults: {services: [a, b]}
        constraints:
          layout: {cantCoexist: [[a, b]]}
          services: {a: {count: {min: 2, max: 2}}, monitor: {count: {min: 1, max: 1}}}",
    );
    let (before, _) = solved(
        solve::solve(
            &model_for(
                &cat,
                &Request {
                    size: 5,
                    ..Default::default()
                },
            ),
            &[],
            "c",
        )
        .unwrap(),
    );
    let request = Request {
        size: 5,
        services: vec!["a".into(), "b".into(), "monitor".into()],
        ..Default::default()
    };
    let model = model_for(&cat, &request);
    let (after, objective) = solved(solve::solve(&model, &before, "c").unwrap());
    assert_eq!(objective.moves, 1, "monitor lands on one existing node");
    assert_eq!(objective.changed, 1);
    let changed: Vec<_> = after.iter().filter(|n| !before.contains(n)).collect();
    assert_eq!(changed.len(), 1);
    assert!(changed[0].services.contains(&"monitor".to_string()));
}

#[test]
fn removing_a_service_takes_it_off_every_node_that_ran_it() {
    let cat = catalog(
        "defaults: {services: [a, b]}
        constraints: {services: {b: {ratio: {perNodes: 1, min: 1}}}}",
    );
    let (before, _) = solved(
        solve::solve(
            &model_for(
                &cat,
                &Request {
                    size: 4,
                    ..Default::default()
                },
            ),
            &[],
            "c",
        )
        .unwrap(),
    );
    let request = Request {
        size: 4,
        services: vec!["b".into()],
        ..Default::default()
    };
    let model = model_for(&cat, &request);
    let (after, objective) = solved(solve::solve(&model, &before, "c").unwrap());
    let had_a = before
        .iter()
        .filter(|n| n.services.contains(&"a".to_string()))
        .count() as u64;
    assert_eq!(objective.moves, had_a);
    assert!(after.iter().all(|n| n.services == ["b"]));
    assert_eq!(
        after.iter().map(|n| &n.name).collect::<Vec<_>>(),
        before.iter().map(|n| &n.name).collect::<Vec<_>>()
    );
}

#[test]
fn the_same_request_gives_the_same_bytes() {
    let spec = "defaults: {services: [web, cache, a]}
        constraints:
          layout: {cantCoexist: [[web, cache]]}
          services: {cache: {ratio: {perNodes: 4, min: 1, of: web}}}";
    let run = || {
        let model = model_for(
            &catalog(spec),
            &Request {
                size: 37,
                ..Default::default()
            },
        );
        serde_json::to_vec(&solved(solve::solve(&model, &[], "n").unwrap()).0).unwrap()
    };
    let first = run();
    for _ in 0..3 {
        assert_eq!(run(), first);
    }
}
