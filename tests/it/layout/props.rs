//! Property tests: on small generated problems, the solver agrees with a
//! brute-force enumeration of every layout — whether one exists, and the
//! objective's value (moves, nodes changed, cost, preference) — and its
//! explanations are minimal.

use proptest::prelude::*;
use theseus::api::LayoutNode;
use theseus::layout::model::{Class, Constraint, Model, Rule, Service};
use theseus::layout::solve::{self, Outcome};
use theseus::layout::{exhaustive, explain};

const SERVICES: usize = 3;

fn rule() -> impl Strategy<Value = Rule> {
    let s = 0..SERVICES;
    let group = proptest::sample::subsequence((0..SERVICES).collect::<Vec<_>>(), 2..=SERVICES);
    prop_oneof![
        (s.clone(), 0..4u32).prop_map(|(s, n)| Rule::CountMin { s, n }),
        (s.clone(), 0..4u32).prop_map(|(s, n)| Rule::CountMax { s, n }),
        (
            s.clone(),
            proptest::option::of(0..SERVICES),
            1..4u32,
            0..3u32
        )
            .prop_map(|(s, of, per, n)| Rule::RatioMin {
                s,
                of: of.filter(|&o| o != s),
                per,
                n
            }),
        (
            s.clone(),
            proptest::option::of(0..SERVICES),
            1..4u32,
            0..3u32
        )
            .prop_map(|(s, of, per, n)| Rule::RatioMax {
                s,
                of: of.filter(|&o| o != s),
                per,
                n
            }),
        group.clone().prop_map(Rule::MustCoexist),
        group.prop_map(Rule::CantCoexist),
        (s, proptest::sample::subsequence(vec![0usize, 1], 1..=2))
            .prop_map(|(s, allowed)| Rule::NodeClasses { s, allowed }),
        (0..2usize).prop_map(|class| Rule::Capacity { class }),
        (1..4u32).prop_map(Rule::SizeMin),
        (2..6u32).prop_map(Rule::SizeMax),
    ]
}

prop_compose! {
    fn model()(
        uses in proptest::collection::vec(0..3u64, SERVICES),
        caps in proptest::collection::vec(proptest::option::of(1..5u64), 2),
        costs in proptest::collection::vec(0..4u64, 2),
        rules in proptest::collection::vec(rule(), 0..6),
        size in 1..5u32,
    ) -> Model {
        Model {
            size,
            services: uses.iter().enumerate().map(|(i, &u)| Service { name: format!("s{i}"), uses: [u, 0, 0] }).collect(),
            classes: (0..2).map(|c| Class { name: format!("k{c}"), capacity: [caps[c], None, None], cost: costs[c] }).collect(),
            constraints: rules.into_iter().enumerate().map(|(i, rule)| Constraint { rule, path: format!("rule[{i}]"), value: String::new() }).collect(),
        }
    }
}

prop_compose! {
    fn current()(nodes in proptest::collection::vec((0..2usize, 1..8u64), 0..4)) -> Vec<LayoutNode> {
        nodes.into_iter().enumerate().map(|(i, (class, set))| LayoutNode {
            name: format!("n-{}", i + 1),
            node_class: format!("k{class}"),
            services: (0..SERVICES).filter(|s| set & (1 << s) != 0).map(|s| format!("s{s}")).collect(),
        }).collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn the_solver_finds_what_exhaustive_enumeration_finds(model in model(), current in current()) {
        let best = exhaustive::best(&model, &current, 20_000_000).expect("small enough to enumerate");
        match solve::solve(&model, &current, "n").unwrap() {
            Outcome::Solved { layout, objective } => {
                prop_assert!(exhaustive::layout_ok(&model, &layout), "layout breaks a rule: {:?}", layout);
                prop_assert_eq!(Some(objective), best);
            }
            Outcome::Unsatisfiable(e) => {
                prop_assert_eq!(best, None, "the solver found no layout: {}", e);
                // Checked by enumeration too: the conflict alone has no
                // layout, and without any one of its constraints it has one.
                let conflict = explain::minimal_conflict(&model);
                let only = |skip: Option<usize>| Model {
                    constraints: conflict.iter().filter(|&&i| Some(i) != skip).map(|&i| model.constraints[i].clone()).collect(),
                    ..model.clone()
                };
                prop_assert_eq!(exhaustive::best(&only(None), &[], 20_000_000), Ok(None));
                for &i in &conflict {
                    prop_assert!(exhaustive::best(&only(Some(i)), &[], 20_000_000).unwrap().is_some(), "{} is not needed", model.constraints[i].path);
                }
            }
        }
    }
}
