//! Layout solve time against template size and cluster size, rescale of a
//! large cluster, and the brute-force enumeration side by side where it
//! finishes (with the ratio of the two times).
//!
//!     cargo bench --bench layout_solve
//!
//! Templates are generated: a fifth of the services are masters (one node
//! each, large class only, never two on a node); the rest are workers in
//! mustCoexist pairs, grouped in roles of three pairs of which a node runs
//! at most one (cantCoexist), each pair on at least a tenth of the nodes,
//! and one pair at one node per four of the first pair's. Every service
//! takes one CPU; a small node holds four, a large one sixteen at three
//! times the cost. Targets: 30 services at 1,000 nodes under 1 s, and a
//! ±10 % rescale of 1,000 nodes under 1 s. Without `--bench` (as
//! `cargo test --all-targets` runs it) it does a quick smoke run.

use std::time::{Duration, Instant};

use theseus::api::LayoutNode;
use theseus::layout::model::{Class, Constraint, Model, Rule, Service};
use theseus::layout::solve::{self, Outcome};
use theseus::layout::{exhaustive, kinds};

fn push(model: &mut Model, rule: Rule) {
    let path = format!("rule[{}]", model.constraints.len());
    model.constraints.push(Constraint {
        rule,
        path,
        value: String::new(),
    });
}

fn template(services: usize, size: u32) -> Model {
    let masters = (services / 5).max(1);
    let mut model = Model {
        size,
        services: (0..services)
            .map(|i| Service {
                name: format!("s{i}"),
                uses: [1000, 0, 0],
            })
            .collect(),
        classes: vec![
            Class {
                name: "small".into(),
                capacity: [Some(4000), None, None],
                cost: 1,
            },
            Class {
                name: "large".into(),
                capacity: [Some(16000), None, None],
                cost: 3,
            },
        ],
        constraints: Vec::new(),
    };
    for s in 0..masters {
        push(&mut model, Rule::CountMin { s, n: 1 });
        push(&mut model, Rule::CountMax { s, n: 1 });
        push(
            &mut model,
            Rule::NodeClasses {
                s,
                allowed: vec![1],
            },
        );
    }
    if masters > 1 {
        push(&mut model, Rule::CantCoexist((0..masters).collect()));
    }
    let firsts: Vec<usize> = (masters..services).step_by(2).collect();
    for &s in &firsts {
        if s + 1 < services {
            push(&mut model, Rule::MustCoexist(vec![s, s + 1]));
        }
        push(
            &mut model,
            Rule::RatioMin {
                s,
                of: None,
                per: 10,
                n: 1,
            },
        );
    }
    for role in firsts.chunks(3).filter(|r| r.len() > 1) {
        push(&mut model, Rule::CantCoexist(role.to_vec()));
    }
    if firsts.len() > 1 {
        push(
            &mut model,
            Rule::RatioMin {
                s: firsts[1],
                of: Some(firsts[0]),
                per: 4,
                n: 1,
            },
        );
    }
    push(&mut model, Rule::Capacity { class: 0 });
    push(&mut model, Rule::Capacity { class: 1 });
    model
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let out = f();
    (out, started.elapsed())
}

fn layout(outcome: Outcome) -> (Vec<LayoutNode>, solve::Objective) {
    match outcome {
        Outcome::Solved { layout, objective } => (layout, objective),
        Outcome::Unsatisfiable(e) => panic!("the benchmark template has no layout: {e}"),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (counts, sizes, budget): (&[usize], &[u32], u64) = if full {
        (&[5, 15, 30], &[10, 100, 1_000, 10_000], 5_000_000)
    } else {
        (&[5, 15], &[10, 100], 100_000)
    };
    println!(
        "{:>8} {:>7} {:>6} {:>10} {:>24} {:>8}",
        "services", "size", "kinds", "solver", "exhaustive", "ratio"
    );
    for &n in counts {
        for &size in sizes
            .iter()
            .chain(if n == 5 { &[4u32, 6, 8][..] } else { &[][..] })
        {
            let model = template(n, size);
            let kinds = kinds::enumerate(&model, &solve::all(&model)).map_or(0, |k| k.len());
            let ((_, objective), took) = timed(|| layout(solve::solve(&model, &[], "n").unwrap()));
            let candidates = exhaustive::candidates(&model);
            let (brute, brute_took) = match candidates <= budget as f64 {
                true => timed(|| exhaustive::best(&model, &[], budget)),
                false => (Err(exhaustive::GaveUp), Duration::ZERO),
            };
            let (shown, ratio) = match brute {
                Ok(best) => {
                    assert_eq!(
                        best,
                        Some(objective),
                        "the enumeration disagrees at {n} services, size {size}"
                    );
                    (
                        ms(brute_took),
                        format!("{:.1}x", brute_took.as_secs_f64() / took.as_secs_f64()),
                    )
                }
                Err(exhaustive::GaveUp) => {
                    (format!("skipped: {candidates:.1e} layouts"), "-".into())
                }
            };
            println!(
                "{n:>8} {size:>7} {kinds:>6} {:>10} {shown:>26} {ratio:>8}",
                ms(took)
            );
            if n == 30 && size == 1_000 {
                println!(
                    "target: 30 services at 1,000 nodes under 1 s: {}",
                    verdict(took)
                );
            }
        }
    }
    let (n, size) = if full { (30, 1_000) } else { (15, 100) };
    let (before, _) = layout(solve::solve(&template(n, size), &[], "n").unwrap());
    for to in [size + size / 10, size - size / 10] {
        let model = template(n, to);
        let ((after, objective), took) =
            timed(|| layout(solve::solve(&model, &before, "n").unwrap()));
        assert_eq!(after.len() as u32, to);
        println!(
            "rescale {n} services {size} -> {to} nodes: {} ({} services moved, {} nodes changed); target under 1 s: {}",
            ms(took),
            objective.moves,
            objective.changed,
            verdict(took)
        );
    }
}

fn verdict(took: Duration) -> &'static str {
    if took < Duration::from_secs(1) {
        "met"
    } else {
        "MISSED"
    }
}
