//! Which services a service depends on among those a layout runs, and
//! the cycles and dependents of that relation.

use std::collections::{BTreeMap, BTreeSet};

use crate::layout::Catalog;

use super::Error;
use super::diff::Nodes;

/// Which of a service's dependencies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `dependencies.install`: installs follow it, removes go against it.
    Install,
    /// `dependencies.runtime`: starts follow it, stops go against it.
    Runtime,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Install => "install",
            Phase::Runtime => "runtime",
        })
    }
}

/// Each service of a layout and the services of that layout it depends
/// on, directly.
pub(super) type Graph = BTreeMap<String, BTreeSet<String>>;

/// The dependency graphs of the old and the new layout.
#[derive(Debug)]
pub(super) struct Graphs {
    /// Install dependencies among the old layout's services.
    pub old_install: Graph,
    /// Runtime dependencies among the old layout's services.
    pub old_runtime: Graph,
    /// Install dependencies among the new layout's services.
    pub new_install: Graph,
    /// Runtime dependencies among the new layout's services.
    pub new_runtime: Graph,
}

impl Graphs {
    /// The four graphs; fails on a cycle in any of them.
    pub(super) fn new(catalog: &Catalog, old: &Nodes, new: &Nodes) -> Result<Graphs, Error> {
        let (old, new) = (present(old), present(new));
        let graphs = Graphs {
            old_install: graph(catalog, Phase::Install, &old),
            old_runtime: graph(catalog, Phase::Runtime, &old),
            new_install: graph(catalog, Phase::Install, &new),
            new_runtime: graph(catalog, Phase::Runtime, &new),
        };
        let each = [
            (Phase::Install, &graphs.new_install),
            (Phase::Runtime, &graphs.new_runtime),
            (Phase::Install, &graphs.old_install),
            (Phase::Runtime, &graphs.old_runtime),
        ];
        for (phase, graph) in each {
            if let Some(services) = cycle(graph) {
                return Err(Error::Cycle { phase, services });
            }
        }
        Ok(graphs)
    }
}

/// The services some node of `nodes` runs.
fn present(nodes: &Nodes) -> BTreeSet<String> {
    nodes
        .values()
        .flat_map(|n| n.services.iter().cloned())
        .collect()
}

/// What each service of `present` depends on in `phase`: the services of
/// `present` its `requires` and `uses` name, by their name or a name they
/// provide. A service never depends on itself; a name no present service
/// answers to adds nothing.
pub(super) fn graph(catalog: &Catalog, phase: Phase, present: &BTreeSet<String>) -> Graph {
    present
        .iter()
        .map(|s| (s.clone(), depends(catalog, s, phase, present)))
        .collect()
}

fn depends(
    catalog: &Catalog,
    service: &str,
    phase: Phase,
    present: &BTreeSet<String>,
) -> BTreeSet<String> {
    let Some(def) = catalog.services.get(service) else {
        return BTreeSet::new();
    };
    let deps = match phase {
        Phase::Install => &def.dependencies.install,
        Phase::Runtime => &def.dependencies.runtime,
    };
    let names: Vec<&String> = deps.requires.iter().chain(&deps.uses).collect();
    present
        .iter()
        .filter(|s| s.as_str() != service)
        .filter(|s| names.iter().any(|n| answers(catalog, s, n)))
        .cloned()
        .collect()
}

/// Whether `service` answers to `name`: it is its name or one it provides.
fn answers(catalog: &Catalog, service: &str, name: &str) -> bool {
    service == name
        || catalog
            .services
            .get(service)
            .is_some_and(|d| d.dependencies.provides.iter().any(|p| p == name))
}

/// A cycle of `graph`, as its services in order: each depends on the
/// next, the last on the first.
pub(super) fn cycle(graph: &Graph) -> Option<Vec<String>> {
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|start| visit(graph, start, &mut Vec::new(), &mut done))
}

fn visit<'a>(
    graph: &'a Graph,
    at: &'a String,
    path: &mut Vec<&'a String>,
    done: &mut BTreeSet<&'a String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|p| *p == at) {
        return Some(path[i..].iter().map(|s| (*s).clone()).collect());
    }
    if done.contains(at) {
        return None;
    }
    path.push(at);
    for next in graph.get(at).into_iter().flatten() {
        if let Some(found) = visit(graph, next, path, done) {
            return Some(found);
        }
    }
    path.pop();
    done.insert(at);
    None
}

/// The services of `changed` that `graph` has, and every service of
/// `graph` that depends on one of them, directly or not.
pub(super) fn dependents(graph: &Graph, changed: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = changed
        .iter()
        .filter(|s| graph.contains_key(*s))
        .cloned()
        .collect();
    loop {
        let more: Vec<String> = graph
            .iter()
            .filter(|(s, deps)| !out.contains(*s) && deps.iter().any(|d| out.contains(d)))
            .map(|(s, _)| s.clone())
            .collect();
        if more.is_empty() {
            return out;
        }
        out.extend(more);
    }
}
