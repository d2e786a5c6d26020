//! Solving a request: the lexicographic objective over the integer
//! program, and the counts expanded into a stable list of named nodes.

use std::collections::BTreeMap;

use crate::api::LayoutNode;

use super::explain::{self, Explanation};
use super::ilp::{Counts, Group, Level, Program, Size};
use super::kinds::{self, Kind, MAX_KINDS};
use super::model::Model;

/// The objective's value, compared in field order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Objective {
    /// Services added to or removed from existing nodes; a node that leaves
    /// counts all of its services.
    pub moves: u64,
    /// Nodes added, removed, or whose services changed.
    pub changed: u64,
    /// The sum of the nodes' class costs.
    pub cost: u64,
    /// The sum of the nodes' class ranks (0 for the most preferred class).
    pub preference: u64,
}

/// What a solve returns.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A layout that keeps every constraint and minimises the objective.
    Solved {
        /// The nodes: the kept ones in their old order, then new ones.
        layout: Vec<LayoutNode>,
        /// The objective's value.
        objective: Objective,
    },
    /// No layout exists; a minimal set of constraints that cannot hold
    /// together.
    Unsatisfiable(Explanation),
}

/// Why the solver could not answer.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    /// The rules leave too many ways to combine services on a node.
    #[error(
        "the template allows more than {MAX_KINDS} different service sets per node; \
         narrow it with spec.constraints.layout rules or per-service nodeClasses"
    )]
    TooManyKinds,
    /// The integer program's answer failed the exact check.
    #[error(
        "the integer program returned counts that break a constraint; please report this template"
    )]
    Inexact,
}

/// All constraints on.
pub fn all(model: &Model) -> Vec<bool> {
    vec![true; model.constraints.len()]
}

/// Solves `model` given the cluster's current layout. New nodes are named
/// `PREFIX-N`, numbered after the highest existing number.
pub fn solve(model: &Model, current: &[LayoutNode], prefix: &str) -> Result<Outcome, Error> {
    let active = all(model);
    let kinds = kinds::enumerate(model, &active).map_err(|_| Error::TooManyKinds)?;
    let (groups, members) = group(model, current);
    let mut program = Program {
        model,
        active: &active,
        kinds: &kinds,
        groups: &groups,
        size: Size::Fixed(model.size),
        max_change: None,
    };
    if !groups.is_empty() {
        program.max_change = change_bound(&program, &groups, current.len());
    }
    let mut fixed = Vec::new();
    let mut best = None;
    for level in levels(&program) {
        let Some((counts, value)) = program.minimise(level, &fixed) else {
            return match fixed.is_empty() {
                true => Ok(Outcome::Unsatisfiable(explain::explain(model))),
                false => Err(Error::Inexact),
            };
        };
        fixed.push((level, value));
        best = Some(counts);
    }
    let counts = best.expect("at least one level");
    if !kinds::counts_ok(
        model,
        &active,
        &kinds,
        &counts.totals(kinds.len()),
        model.size,
    ) {
        return Err(Error::Inexact);
    }
    let layout = expand(model, &kinds, &counts, &members, current, prefix);
    let objective = objective(model, current, &layout);
    Ok(Outcome::Solved { layout, objective })
}

/// The objective's levels, in order. Adjacent levels are solved as one
/// weighted level when that is exact: a second solve with the first held
/// at its optimum is much slower.
fn levels(program: &Program<'_>) -> Vec<Level> {
    let mut levels = Vec::new();
    if !program.groups.is_empty() {
        match program.can_combine_moves_and_changed() {
            true => levels.push(Level::MovesThenChanged),
            false => levels.extend([Level::Moves, Level::Changed]),
        }
    }
    match program.can_combine_cost_and_preference() {
        true => levels.push(Level::CostThenPreference),
        false => levels.extend([Level::Cost, Level::Preference]),
    }
    levels
}

/// How many services an existing node may change in an optimal answer.
///
/// Keeping or removing nodes only (no node changes its services) gives an
/// upper bound on the moves. Any answer removes at least
/// `current - size` nodes, losing at least the services of that many of the
/// smallest nodes, so an answer in which one node changes by more than the
/// bound minus that is worse. `None` when no keep-or-remove answer exists.
fn change_bound(program: &Program<'_>, groups: &[Group], current: usize) -> Option<u32> {
    let only_keep = Program {
        max_change: Some(0),
        ..*program
    };
    let level = match program.can_combine_moves_and_changed() {
        true => Level::MovesThenChanged,
        false => Level::Moves,
    };
    let (_, value) = only_keep.minimise(level, &[])?;
    let moves = match level {
        Level::MovesThenChanged => value as u64 / program.changed_weight(),
        _ => value as u64,
    };
    let mut sizes: Vec<u64> = groups
        .iter()
        .flat_map(|g| std::iter::repeat_n((g.set.count_ones() + g.stale) as u64, g.count as usize))
        .collect();
    sizes.sort_unstable();
    let removed = current.saturating_sub(program.model.size as usize);
    let forced: u64 = sizes.iter().take(removed).sum();
    Some(moves.saturating_sub(forced) as u32)
}

/// Groups the current nodes by class and services; returns the groups and,
/// for each, the indexes of its nodes in `current`.
fn group(model: &Model, current: &[LayoutNode]) -> (Vec<Group>, Vec<Vec<usize>>) {
    let mut by_key: BTreeMap<(String, Vec<String>), Vec<usize>> = BTreeMap::new();
    for (i, node) in current.iter().enumerate() {
        let mut services = node.services.clone();
        services.sort();
        by_key
            .entry((node.node_class.clone(), services))
            .or_default()
            .push(i);
    }
    by_key
        .into_iter()
        .map(|((class, services), nodes)| {
            let set = services
                .iter()
                .filter_map(|s| model.service(s))
                .fold(0u64, |m, s| m | 1 << s);
            let stale = services
                .iter()
                .filter(|s| model.service(s).is_none())
                .count() as u32;
            let class = model.classes.iter().position(|c| c.name == class);
            (
                Group {
                    class,
                    set,
                    stale,
                    count: nodes.len() as u32,
                },
                nodes,
            )
        })
        .unzip()
}

/// Turns counts into nodes: each group's first nodes keep their services,
/// the next ones change, the last ones leave; new nodes follow.
fn expand(
    model: &Model,
    kinds: &[Kind],
    counts: &Counts,
    members: &[Vec<usize>],
    current: &[LayoutNode],
    prefix: &str,
) -> Vec<LayoutNode> {
    let mut assigned: Vec<Option<usize>> = vec![None; current.len()];
    for (g, keep) in counts.keep.iter().enumerate() {
        let mut order: Vec<&(usize, u32)> = keep.iter().filter(|(_, n)| *n > 0).collect();
        let own = |j: usize| {
            sorted(&model.names(kinds[j].set)) == sorted(&current[members[g][0]].services)
        };
        order.sort_by_key(|(j, _)| (!own(*j), *j));
        let mut nodes = members[g].iter();
        for &&(j, n) in &order {
            for &i in nodes.by_ref().take(n as usize) {
                assigned[i] = Some(j);
            }
        }
    }
    let mut layout: Vec<LayoutNode> = current
        .iter()
        .zip(&assigned)
        .filter_map(|(node, j)| {
            j.map(|j| LayoutNode {
                services: model.names(kinds[j].set),
                ..node.clone()
            })
        })
        .collect();
    let mut next = next_number(current, prefix);
    for (j, &n) in counts.new.iter().enumerate() {
        for _ in 0..n {
            layout.push(LayoutNode {
                name: format!("{prefix}-{next}"),
                node_class: model.classes[kinds[j].class].name.clone(),
                services: model.names(kinds[j].set),
            });
            next += 1;
        }
    }
    layout
}

fn sorted(names: &[String]) -> Vec<String> {
    let mut v = names.to_vec();
    v.sort();
    v
}

/// One past the highest `PREFIX-N` number in use.
fn next_number(current: &[LayoutNode], prefix: &str) -> u64 {
    let numbers = current.iter().filter_map(|n| {
        n.name
            .strip_prefix(prefix)?
            .strip_prefix('-')?
            .parse::<u64>()
            .ok()
    });
    numbers.max().map_or(1, |n| n + 1)
}

/// The objective's value of `layout` as a change from `current`.
pub fn objective(model: &Model, current: &[LayoutNode], layout: &[LayoutNode]) -> Objective {
    let old: BTreeMap<&str, &LayoutNode> = current.iter().map(|n| (n.name.as_str(), n)).collect();
    let new: BTreeMap<&str, &LayoutNode> = layout.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut o = Objective::default();
    for gone in current
        .iter()
        .filter(|n| !new.contains_key(n.name.as_str()))
    {
        o.moves += gone.services.len() as u64;
        o.changed += 1;
    }
    for node in layout {
        let class = model
            .classes
            .iter()
            .position(|c| c.name == node.node_class)
            .unwrap_or(usize::MAX);
        o.cost += model.classes.get(class).map_or(0, |c| c.cost);
        o.preference += class as u64;
        match old.get(node.name.as_str()) {
            None => o.changed += 1,
            Some(before) => {
                let diff = symmetric_difference(&before.services, &node.services);
                o.moves += diff;
                o.changed += u64::from(diff > 0 || before.node_class != node.node_class);
            }
        }
    }
    o
}

fn symmetric_difference(a: &[String], b: &[String]) -> u64 {
    (a.iter().filter(|s| !b.contains(s)).count() + b.iter().filter(|s| !a.contains(s)).count())
        as u64
}

impl Counts {
    /// Nodes per kind, new and kept together.
    pub fn totals(&self, kinds: usize) -> Vec<u32> {
        let mut x = self.new.clone();
        x.resize(kinds, 0);
        for group in &self.keep {
            for &(j, n) in group {
                x[j] += n;
            }
        }
        x
    }
}
