//! The tasks of a plan and the order the rules ask for, before each
//! node's tasks are chained.

use std::collections::{BTreeMap, BTreeSet};

use crate::layout::Catalog;

use super::deps::{self, Graph, Graphs};
use super::diff::Change;
use super::{Action, Error, Operation};

/// A task before it is ordered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Draft {
    /// The node it runs on.
    pub node: String,
    /// The service it acts on, if any.
    pub service: Option<String>,
    /// What it does.
    pub action: Action,
}

/// The id of a task: `NODE/ACTION` or `NODE/SERVICE/ACTION`.
pub(super) fn id(node: &str, service: Option<&str>, action: Action) -> String {
    match service {
        Some(service) => format!("{node}/{service}/{}", action.as_str()),
        None => format!("{node}/{}", action.as_str()),
    }
}

/// Tasks by id, and the pairs (first, then) the rules order.
#[derive(Debug, Default)]
pub(super) struct TaskGraph {
    /// Every task by id.
    pub tasks: BTreeMap<String, Draft>,
    /// `(a, b)`: task `a` finishes before task `b` starts.
    pub edges: BTreeSet<(String, String)>,
}

impl TaskGraph {
    fn add(&mut self, node: &str, service: Option<&str>, action: Action) -> String {
        let id = id(node, service, action);
        let draft = Draft {
            node: node.to_owned(),
            service: service.map(str::to_owned),
            action,
        };
        self.tasks.insert(id.clone(), draft);
        id
    }

    fn edge(&mut self, first: &str, then: &str) {
        self.edges.insert((first.to_owned(), then.to_owned()));
    }

    /// The tasks of `actions` on `service`, each after the one before.
    fn lifecycle(&mut self, node: &str, service: &str, actions: &[Action]) -> Vec<String> {
        let ids: Vec<String> = actions
            .iter()
            .map(|a| self.add(node, Some(service), *a))
            .collect();
        for pair in ids.windows(2) {
            self.edge(&pair[0], &pair[1]);
        }
        ids
    }
}

/// The staying services that are stopped and started again, by node.
#[derive(Debug, Default)]
pub(super) struct Restarts {
    /// Whether each is configured between its stop and its start.
    pub configure: bool,
    /// The services restarted on each node.
    pub by_node: BTreeMap<String, BTreeSet<String>>,
}

/// For a reconfigure, the changed services and every service that
/// depends on one at runtime, directly or not, configured; for a
/// restart, every service; otherwise none. Fails on a changed service the
/// catalog lacks.
pub(super) fn restarts(
    operation: &Operation,
    changes: &BTreeMap<String, Change>,
    graphs: &Graphs,
    catalog: &Catalog,
) -> Result<Restarts, Error> {
    let (configure, restarted) = match operation {
        Operation::Reconfigure { services } => {
            if let Some(s) = services.iter().find(|s| !catalog.services.contains_key(*s)) {
                return Err(Error::UnknownService {
                    service: s.clone(),
                    node: None,
                });
            }
            let changed = services.iter().cloned().collect();
            (true, deps::dependents(&graphs.new_runtime, &changed))
        }
        Operation::Restart => (false, graphs.new_runtime.keys().cloned().collect()),
        _ => return Ok(Restarts::default()),
    };
    let by_node = changes
        .iter()
        .map(|(node, c)| (node.clone(), &c.staying & &restarted))
        .filter(|(_, services)| !services.is_empty())
        .collect();
    Ok(Restarts { configure, by_node })
}

/// Every task of the plan with the order the rules ask for.
pub(super) fn build(
    changes: &BTreeMap<String, Change>,
    restarts: &Restarts,
    graphs: &Graphs,
) -> TaskGraph {
    let mut graph = TaskGraph::default();
    for (node, change) in changes {
        leaving(&mut graph, node, change);
        joining(&mut graph, node, change);
    }
    let actions: &[Action] = match restarts.configure {
        true => &[Action::Stop, Action::Configure, Action::Start],
        false => &[Action::Stop, Action::Start],
    };
    for (node, services) in &restarts.by_node {
        for service in services {
            graph.lifecycle(node, service, actions);
        }
    }
    across(&mut graph, graphs);
    graph
}

/// Stop and remove of each leaving service, then deleteNode if the node
/// leaves.
fn leaving(graph: &mut TaskGraph, node: &str, change: &Change) {
    let removes: Vec<String> = change
        .leaving
        .iter()
        .map(|s| graph.lifecycle(node, s, &[Action::Stop, Action::Remove])[1].clone())
        .collect();
    if change.delete {
        let delete = graph.add(node, None, Action::DeleteNode);
        for remove in &removes {
            graph.edge(remove, &delete);
        }
    }
}

/// createNode and bootstrap if the node joins (after its deleteNode, if
/// it leaves too), then install, configure, initialize and start of each
/// joining service.
fn joining(graph: &mut TaskGraph, node: &str, change: &Change) {
    let mut ready = None;
    if change.create {
        let create = graph.add(node, None, Action::CreateNode);
        let bootstrap = graph.add(node, None, Action::Bootstrap);
        if change.delete {
            graph.edge(&id(node, None, Action::DeleteNode), &create);
        }
        graph.edge(&create, &bootstrap);
        ready = Some(bootstrap);
    }
    let actions = [
        Action::Install,
        Action::Configure,
        Action::Initialize,
        Action::Start,
    ];
    for service in &change.joining {
        let ids = graph.lifecycle(node, service, &actions);
        if let Some(bootstrap) = &ready {
            graph.edge(bootstrap, &ids[0]);
        }
    }
}

/// The order across nodes: installs after the installs of the install
/// dependencies and starts after the starts of the runtime ones (in the
/// new layout); stops before the stops of the runtime dependencies and
/// removes before the removes of the install ones (in the old layout).
fn across(graph: &mut TaskGraph, graphs: &Graphs) {
    let mut by: BTreeMap<(Action, String), Vec<String>> = BTreeMap::new();
    for (id, draft) in &graph.tasks {
        if let Some(service) = &draft.service {
            let key = (draft.action, service.clone());
            by.entry(key).or_default().push(id.clone());
        }
    }
    let rules = [
        (Action::Install, &graphs.new_install, false),
        (Action::Start, &graphs.new_runtime, false),
        (Action::Stop, &graphs.old_runtime, true),
        (Action::Remove, &graphs.old_install, true),
    ];
    for (action, deps, reversed) in rules {
        for (first, then) in pairs(&by, action, deps) {
            match reversed {
                false => graph.edge(first, then),
                true => graph.edge(then, first),
            }
        }
    }
}

/// Each (task of a dependency, task of its dependent), both of `action`.
fn pairs<'a>(
    by: &'a BTreeMap<(Action, String), Vec<String>>,
    action: Action,
    deps: &'a Graph,
) -> Vec<(&'a String, &'a String)> {
    let tasks = |service: &String| {
        by.get(&(action, service.clone()))
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (service, needs) in deps {
        for then in tasks(service) {
            for first in needs.iter().flat_map(tasks) {
                out.push((first, then));
            }
        }
    }
    out
}
