//! The integer program over node kinds, solved with good_lp's pure-Rust
//! microlp backend.
//!
//! Variables: `new[j]`, the new nodes of kind `j`; `keep[g][j]`, the
//! existing nodes of group `g` that become kind `j` (same class only); and,
//! when the size is open, the size `N`. Each count is an integer.

use good_lp::{Expression, ProblemVariables, Solution, SolverModel, Variable, microlp, variable};

use super::kinds::Kind;
use super::model::{Model, Rule};

/// Existing nodes alike in class and services.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// Their class in the model; `None` when the class is no longer usable.
    pub class: Option<usize>,
    /// Their services that the model still has.
    pub set: u64,
    /// How many services they run that the cluster no longer has.
    pub stale: u32,
    /// How many nodes.
    pub count: u32,
}

/// What a solution minimises, in the order the objective compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Services added to or removed from existing nodes (a removed node
    /// loses all of its services).
    Moves,
    /// Nodes added, removed, or whose services changed.
    Changed,
    /// The sum of the nodes' class costs.
    Cost,
    /// The sum of the nodes' class preference ranks.
    Preference,
    /// Moves and nodes changed in one: `moves × W + changed`, with `W`
    /// above any number of changed nodes.
    MovesThenChanged,
    /// Cost and preference in one: `cost × W + preference`, with `W` above
    /// any preference sum (see [`Program::preference_weight`]).
    CostThenPreference,
    /// The cluster size (to find the next feasible size).
    Size,
}

/// The size: fixed, or free within a range.
#[derive(Clone, Copy, Debug)]
pub enum Size {
    /// Exactly this many nodes.
    Fixed(u32),
    /// Any size in this inclusive range.
    Range(u32, u32),
}

/// A solution: node counts by kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counts {
    /// New nodes per kind.
    pub new: Vec<u32>,
    /// Per group: (kind, nodes) it keeps as that kind.
    pub keep: Vec<Vec<(usize, u32)>>,
    /// The size.
    pub size: u32,
}

/// One program: the model's active rules over its kinds and groups.
pub struct Program<'a> {
    /// The model.
    pub model: &'a Model,
    /// Which constraints hold.
    pub active: &'a [bool],
    /// The node kinds.
    pub kinds: &'a [Kind],
    /// The existing nodes.
    pub groups: &'a [Group],
    /// The size.
    pub size: Size,
    /// When set, an existing node may only become a kind that differs from
    /// it in at most this many services (a bound the caller proved).
    pub max_change: Option<u32>,
}

struct Vars {
    new: Vec<Variable>,
    keep: Vec<Vec<(usize, Variable)>>,
    size: Option<Variable>,
}

impl Program<'_> {
    /// The counts minimising `level` with the `fixed` levels bounded by
    /// their optimum; `None` when no integer solution exists.
    pub fn minimise(&self, level: Level, fixed: &[(Level, f64)]) -> Option<(Counts, f64)> {
        if self.kinds.is_empty() {
            return None;
        }
        let (hi, mut problem) = self.variables();
        let vars = problem.declare(self, hi);
        let objective = self.objective(&vars, level);
        let mut lp = problem.vars.minimise(objective.clone()).using(microlp);
        for c in self.constraints(&vars) {
            lp = lp.with(c);
        }
        for &(l, v) in fixed {
            lp = lp.with(self.objective(&vars, l).leq(v + 0.5));
        }
        let solution = lp.solve().ok()?;
        let round = |v: Variable| solution.value(v).round().max(0.0) as u32;
        let counts = Counts {
            new: vars.new.iter().map(|&v| round(v)).collect(),
            keep: vars
                .keep
                .iter()
                .map(|g| g.iter().map(|&(j, v)| (j, round(v))).collect())
                .collect(),
            size: vars.size.map_or_else(|| self.fixed_size(), round),
        };
        Some((counts, solution.eval(&objective).round()))
    }

    /// One more than the largest preference sum: every node on the least
    /// preferred class.
    pub fn preference_weight(&self) -> u64 {
        let hi = match self.size {
            Size::Fixed(n) | Size::Range(_, n) => n as u64,
        };
        (self.model.classes.len().saturating_sub(1) as u64) * hi + 1
    }

    /// One more than the most nodes a change can touch.
    pub fn changed_weight(&self) -> u64 {
        let hi = match self.size {
            Size::Fixed(n) | Size::Range(_, n) => n as u64,
        };
        self.groups.iter().map(|g| g.count as u64).sum::<u64>() + hi + 1
    }

    /// Whether `MovesThenChanged` stays exact in floating point.
    pub fn can_combine_moves_and_changed(&self) -> bool {
        let w = self.changed_weight() as u128;
        (w * 65 * w) < 1u128 << 50
    }

    /// Whether `CostThenPreference` stays exact in floating point (its
    /// values below 2^50).
    pub fn can_combine_cost_and_preference(&self) -> bool {
        let hi = self.preference_weight();
        let max_cost = self.model.classes.iter().map(|c| c.cost).max().unwrap_or(0) + 1;
        (max_cost as u128) * (hi as u128) * (hi as u128) < 1u128 << 50
    }

    fn fixed_size(&self) -> u32 {
        match self.size {
            Size::Fixed(n) => n,
            Size::Range(lo, _) => lo,
        }
    }

    fn variables(&self) -> (u32, Declared) {
        let hi = match self.size {
            Size::Fixed(n) => n,
            Size::Range(_, hi) => hi,
        };
        (
            hi,
            Declared {
                vars: ProblemVariables::new(),
            },
        )
    }

    /// The nodes of kind `j`.
    fn x(&self, vars: &Vars, j: usize) -> Expression {
        let mut e = Expression::from(vars.new[j]);
        for group in &vars.keep {
            for &(k, v) in group {
                if k == j {
                    e += v;
                }
            }
        }
        e
    }

    fn size_expr(&self, vars: &Vars) -> Expression {
        vars.size.map_or_else(
            || Expression::from(self.fixed_size() as f64),
            Expression::from,
        )
    }

    /// The nodes running service `s`, or the size when `s` is `None`.
    fn count(&self, vars: &Vars, s: Option<usize>) -> Expression {
        let Some(s) = s else {
            return self.size_expr(vars);
        };
        let mut e = Expression::from(0.0);
        for (j, kind) in self.kinds.iter().enumerate() {
            if kind.set & (1 << s) != 0 {
                e += self.x(vars, j);
            }
        }
        e
    }

    fn constraints(&self, vars: &Vars) -> Vec<good_lp::Constraint> {
        let mut out = Vec::new();
        let total: Expression = (0..self.kinds.len()).map(|j| self.x(vars, j)).sum();
        out.push(total.eq(self.size_expr(vars)));
        for (group, g) in vars.keep.iter().zip(self.groups) {
            let kept: Expression = group.iter().map(|&(_, v)| Expression::from(v)).sum();
            out.push(kept.leq(g.count as f64));
        }
        for (c, on) in self.model.constraints.iter().zip(self.active) {
            if !on {
                continue;
            }
            let f = |n: u32| n as f64;
            out.push(match &c.rule {
                Rule::SizeMin(n) => self.size_expr(vars).geq(f(*n)),
                Rule::SizeMax(n) => self.size_expr(vars).leq(f(*n)),
                Rule::CountMin { s, n } => self.count(vars, Some(*s)).geq(f(*n)),
                Rule::CountMax { s, n } => self.count(vars, Some(*s)).leq(f(*n)),
                Rule::RatioMin { s, of, per, n } => {
                    (f(*per) * self.count(vars, Some(*s))).geq(f(*n) * self.count(vars, *of))
                }
                Rule::RatioMax { s, of, per, n } => {
                    (f(*per) * self.count(vars, Some(*s))).leq(f(*n) * self.count(vars, *of))
                }
                _ => continue,
            });
        }
        out
    }

    /// The expression of one objective level.
    fn objective(&self, vars: &Vars, level: Level) -> Expression {
        let mut e = Expression::from(0.0);
        match level {
            Level::Size => return self.size_expr(vars),
            Level::Cost | Level::Preference | Level::CostThenPreference => {
                let w = self.preference_weight() as f64;
                for (j, kind) in self.kinds.iter().enumerate() {
                    let cost = self.model.classes[kind.class].cost as f64;
                    let weight = match level {
                        Level::Cost => cost,
                        Level::Preference => kind.class as f64,
                        _ => cost * w + kind.class as f64,
                    };
                    e += weight * self.x(vars, j);
                }
            }
            Level::MovesThenChanged => {
                let w = self.changed_weight() as f64;
                return w * self.objective(vars, Level::Moves)
                    + self.objective(vars, Level::Changed);
            }
            Level::Moves | Level::Changed => {
                // A node that leaves counts fully (`count × weight`); each one
                // kept takes its own weight back off and adds its change.
                for (group, g) in vars.keep.iter().zip(self.groups) {
                    let weight = match level {
                        Level::Moves => (g.set.count_ones() + g.stale) as f64,
                        _ => 1.0,
                    };
                    e += weight * g.count as f64;
                    for &(j, v) in group {
                        let diff = (self.kinds[j].set ^ g.set).count_ones() + g.stale;
                        let change = match level {
                            Level::Moves => diff as f64,
                            _ => f64::from(u8::from(diff > 0)),
                        };
                        e += (change - weight) * v;
                    }
                }
                if level == Level::Changed {
                    e += vars
                        .new
                        .iter()
                        .map(|&v| Expression::from(v))
                        .sum::<Expression>();
                }
            }
        }
        e
    }
}

struct Declared {
    vars: ProblemVariables,
}

impl Declared {
    fn declare(&mut self, program: &Program<'_>, hi: u32) -> Vars {
        let hi = hi as f64;
        let vars = &mut self.vars;
        let new = program
            .kinds
            .iter()
            .map(|_| vars.add(variable().integer().min(0).max(hi)))
            .collect();
        let keep = program
            .groups
            .iter()
            .map(|g| {
                program
                    .kinds
                    .iter()
                    .enumerate()
                    .filter(|(_, k)| Some(k.class) == g.class)
                    .filter(|(_, k)| {
                        program
                            .max_change
                            .is_none_or(|m| (k.set ^ g.set).count_ones() + g.stale <= m)
                    })
                    .map(|(j, _)| (j, vars.add(variable().integer().min(0).max(g.count as f64))))
                    .collect()
            })
            .collect();
        let size = match program.size {
            Size::Fixed(_) => None,
            Size::Range(lo, hi) => {
                Some(vars.add(variable().integer().min(lo as f64).max(hi as f64)))
            }
        };
        Vars { new, keep, size }
    }
}
