//! Explanations: a minimal set of constraints that cannot hold together.
//!
//! The deletion filter starts from every constraint (unsatisfiable) and
//! drops each in turn; a constraint stays only if dropping it makes the
//! rest solvable. What remains is unsatisfiable, and removing any one of
//! its constraints makes it solvable: minimal, though not necessarily the
//! smallest such set. It needs one feasibility check per constraint.

use std::fmt;

use super::ilp::{Level, Program, Size};
use super::kinds;
use super::model::{Model, Rule};

/// Why no layout exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The size asked for.
    pub size: u32,
    /// The conflicting constraints, in the template's order. Empty when no
    /// layout exists even without any of them (no usable node class).
    pub conflicts: Vec<Conflict>,
}

/// One constraint of a conflict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The field path, e.g. `spec.constraints.services.namenode.count.max`.
    pub path: String,
    /// Its value.
    pub value: String,
    /// What it demands, in a sentence.
    pub sentence: String,
}

/// Whether the active constraints admit a layout; `None` when the kinds
/// exceed the limit and the question stays open.
pub fn feasible(model: &Model, active: &[bool]) -> Option<bool> {
    let kinds = kinds::enumerate(model, active).ok()?;
    let program = Program {
        model,
        active,
        kinds: &kinds,
        groups: &[],
        size: Size::Fixed(model.size),
        max_change: None,
    };
    Some(program.minimise(Level::Size, &[]).is_some())
}

/// The indexes of a minimal conflicting set of `model`'s constraints.
pub fn minimal_conflict(model: &Model) -> Vec<usize> {
    let mut active = vec![true; model.constraints.len()];
    for i in 0..active.len() {
        active[i] = false;
        // Keep the constraint when dropping it solves the problem, or when
        // the question cannot be settled.
        if feasible(model, &active) != Some(false) {
            active[i] = true;
        }
    }
    (0..active.len()).filter(|&i| active[i]).collect()
}

/// Explains why `model` has no layout.
pub fn explain(model: &Model) -> Explanation {
    let conflicts = minimal_conflict(model)
        .into_iter()
        .map(|i| {
            let c = &model.constraints[i];
            Conflict {
                path: c.path.clone(),
                value: c.value.clone(),
                sentence: sentence(model, &c.rule),
            }
        })
        .collect();
    Explanation {
        size: model.size,
        conflicts,
    }
}

fn sentence(model: &Model, rule: &Rule) -> String {
    let name = |s: &usize| model.services[*s].name.clone();
    let list = |m: &Vec<usize>| m.iter().map(name).collect::<Vec<_>>().join(", ");
    let base = |of: &Option<usize>| {
        of.as_ref().map_or("of the cluster".to_string(), |o| {
            format!("running {}", name(o))
        })
    };
    match rule {
        Rule::SizeMin(n) => format!("the template allows no cluster of fewer than {n} nodes"),
        Rule::SizeMax(n) => format!("the template allows no cluster of more than {n} nodes"),
        Rule::CountMin { s, n } => format!("at least {n} node(s) must run {}", name(s)),
        Rule::CountMax { s, n } => format!("at most {n} node(s) may run {}", name(s)),
        Rule::RatioMin { s, of, per, n } => {
            format!(
                "at least {n} node(s) must run {} for every {per} nodes {}",
                name(s),
                base(of)
            )
        }
        Rule::RatioMax { s, of, per, n } => {
            format!(
                "at most {n} node(s) may run {} for every {per} nodes {}",
                name(s),
                base(of)
            )
        }
        Rule::MustCoexist(m) => format!("a node runs all of {} or none of them", list(m)),
        Rule::CantCoexist(m) => format!("a node runs at most one of {}", list(m)),
        Rule::NodeClasses { s, allowed } => {
            let classes: Vec<_> = allowed
                .iter()
                .map(|c| model.classes[*c].name.clone())
                .collect();
            format!(
                "{} runs only on node classes [{}]",
                name(s),
                classes.join(", ")
            )
        }
        Rule::Capacity { class } => {
            format!(
                "the services on a {} node must fit in its capacity",
                model.classes[*class].name
            )
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.conflicts.is_empty() {
            return write!(
                f,
                "no layout exists at size {}: no node class can run any of the services",
                self.size
            );
        }
        let parts: Vec<String> = self
            .conflicts
            .iter()
            .map(|c| format!("{}={}", c.path, c.value))
            .collect();
        let joined = match parts.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => parts.join(""),
        };
        let verb = if parts.len() == 1 {
            "cannot hold"
        } else {
            "cannot hold together"
        };
        write!(f, "{joined} {verb} at size {}", self.size)?;
        for c in &self.conflicts {
            write!(f, "\n  - {}={}: {}", c.path, c.value, c.sentence)?;
        }
        Ok(())
    }
}
