//! A reference solver by brute force, for tests and benchmarks: it tries
//! every fate of every existing node (removed, or any service set on its
//! class) and every multiset of new nodes, checks each candidate against
//! the rules directly, and keeps the smallest objective. It shares no code
//! with the solver's kinds or integer program.

use crate::api::LayoutNode;

use super::model::{Model, Rule};
use super::solve::Objective;

/// The enumeration stopped: it would need more candidates than its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GaveUp;

/// The best objective over every layout of `model.size` nodes, `None` when
/// no layout exists, or [`GaveUp`] when more than `budget` candidates would
/// be needed.
pub fn best(
    model: &Model,
    current: &[LayoutNode],
    budget: u64,
) -> Result<Option<Objective>, GaveUp> {
    let types: Vec<(u64, usize)> = (0..model.classes.len())
        .flat_map(|c| (1..1u64 << model.services.len()).map(move |set| (set, c)))
        .filter(|&(set, c)| node_ok(model, set, c))
        .collect();
    let mut search = Search {
        model,
        current,
        types: &types,
        budget,
        best: None,
        chosen: Vec::new(),
    };
    search.fates(0)?;
    Ok(search.best)
}

/// How many layouts of a new cluster the enumeration would try: the
/// multisets of `model.size` valid node types.
pub fn candidates(model: &Model) -> f64 {
    if model.services.len() > 20 {
        // Even listing the node types (2^n sets) is out of reach.
        return f64::INFINITY;
    }
    let types = (0..model.classes.len())
        .flat_map(|c| (1..1u64 << model.services.len()).map(move |set| (set, c)))
        .filter(|&(set, c)| node_ok(model, set, c))
        .count() as f64;
    // C(types + size - 1, size)
    (1..=model.size).fold(1.0, |acc, i| acc * (types - 1.0 + i as f64) / i as f64)
}

/// Whether one node of `class` may run `set` under the per-node rules.
pub fn node_ok(model: &Model, set: u64, class: usize) -> bool {
    let has = |s: &usize| set & (1 << s) != 0;
    model.constraints.iter().all(|c| match &c.rule {
        Rule::MustCoexist(m) => m.iter().all(has) || !m.iter().any(has),
        Rule::CantCoexist(m) => m.iter().filter(|s| has(s)).count() <= 1,
        Rule::NodeClasses { s, allowed } => !has(s) || allowed.contains(&class),
        Rule::CountMax { s, n: 0 } => !has(s),
        Rule::Capacity { class: k } if *k == class => (0..3).all(|r| {
            let used: u64 = (0..model.services.len())
                .filter(|s| has(s))
                .map(|s| model.services[s].uses[r])
                .sum();
            model.classes[class].capacity[r].is_none_or(|cap| used <= cap)
        }),
        _ => true,
    })
}

/// Whether the chosen nodes (set, class) keep the count, ratio and size rules.
fn counts_ok(model: &Model, nodes: &[(u64, usize)]) -> bool {
    let n = nodes.len() as u64;
    let count = |s: usize| nodes.iter().filter(|(set, _)| set & (1 << s) != 0).count() as u64;
    let base = |of: &Option<usize>| of.map_or(n, count);
    n == model.size as u64
        && model.constraints.iter().all(|c| match &c.rule {
            Rule::SizeMin(m) => n >= *m as u64,
            Rule::SizeMax(m) => n <= *m as u64,
            Rule::CountMin { s, n: m } => count(*s) >= *m as u64,
            Rule::CountMax { s, n: m } => count(*s) <= *m as u64,
            Rule::RatioMin { s, of, per, n: m } => *per as u64 * count(*s) >= *m as u64 * base(of),
            Rule::RatioMax { s, of, per, n: m } => *per as u64 * count(*s) <= *m as u64 * base(of),
            _ => true,
        })
}

struct Search<'a> {
    model: &'a Model,
    current: &'a [LayoutNode],
    types: &'a [(u64, usize)],
    budget: u64,
    best: Option<Objective>,
    /// Per node: (set, class, index of the existing node it was).
    chosen: Vec<(u64, usize, Option<usize>)>,
}

impl Search<'_> {
    /// Decides existing node `i` onwards: removed, or any type of its class.
    fn fates(&mut self, i: usize) -> Result<(), GaveUp> {
        if i == self.current.len() {
            return self.extra(0);
        }
        self.fates(i + 1)?;
        let class = self
            .model
            .classes
            .iter()
            .position(|c| c.name == self.current[i].node_class);
        for t in 0..self.types.len() {
            let (set, c) = self.types[t];
            if Some(c) == class && self.chosen.len() < self.model.size as usize {
                self.chosen.push((set, c, Some(i)));
                self.fates(i + 1)?;
                self.chosen.pop();
            }
        }
        Ok(())
    }

    /// Adds new nodes of types `from` onwards (a multiset) up to the size.
    fn extra(&mut self, from: usize) -> Result<(), GaveUp> {
        if self.chosen.len() == self.model.size as usize {
            return self.leaf();
        }
        for t in from..self.types.len() {
            let (set, c) = self.types[t];
            self.chosen.push((set, c, None));
            self.extra(t)?;
            self.chosen.pop();
        }
        Ok(())
    }

    fn leaf(&mut self) -> Result<(), GaveUp> {
        if self.budget == 0 {
            return Err(GaveUp);
        }
        self.budget -= 1;
        let nodes: Vec<(u64, usize)> = self.chosen.iter().map(|&(s, c, _)| (s, c)).collect();
        if !counts_ok(self.model, &nodes) {
            return Ok(());
        }
        let layout: Vec<LayoutNode> = self
            .chosen
            .iter()
            .enumerate()
            .map(|(k, &(set, c, old))| LayoutNode {
                name: old.map_or_else(|| format!("new-{k}"), |i| self.current[i].name.clone()),
                node_class: self.model.classes[c].name.clone(),
                services: self.model.names(set),
            })
            .collect();
        let o = super::solve::objective(self.model, self.current, &layout);
        if self.best.is_none_or(|b| o < b) {
            self.best = Some(o);
        }
        Ok(())
    }
}

/// Whether `layout` keeps every rule of `model`, checked node by node and
/// count by count, independently of the solver.
pub fn layout_ok(model: &Model, layout: &[LayoutNode]) -> bool {
    let mut nodes = Vec::new();
    for node in layout {
        let Some(class) = model.classes.iter().position(|c| c.name == node.node_class) else {
            return false;
        };
        let mut set = 0u64;
        for s in &node.services {
            match model.service(s) {
                Some(i) => set |= 1 << i,
                None => return false,
            }
        }
        if set == 0 || !node_ok(model, set, class) {
            return false;
        }
        nodes.push((set, class));
    }
    counts_ok(model, &nodes)
}
