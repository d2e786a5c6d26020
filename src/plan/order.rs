//! One topological order of the whole plan, and each node's tasks chained
//! in that order, so that a node runs one task at a time.
//!
//! Chaining a node's tasks in an order of the whole plan adds only edges
//! that order already keeps, so the chains cannot close a cycle with the
//! edges between nodes.

use std::collections::{BTreeMap, BTreeSet};

use super::tasks::TaskGraph;
use super::{Action, Error, Task};

/// Which ready task goes first: stops, removes and deletes before
/// creates, then the steps of a service in the order they run; by id
/// within one action.
fn rank(action: Action) -> u8 {
    match action {
        Action::Stop => 0,
        Action::Remove => 1,
        Action::DeleteNode => 2,
        Action::CreateNode => 3,
        Action::Bootstrap => 4,
        Action::Install => 5,
        Action::Configure => 6,
        Action::Initialize => 7,
        Action::Start => 8,
    }
}

/// The plan's tasks in one topological order, each after the tasks the
/// rules order first and after the task before it on its node.
pub(super) fn tasks(graph: TaskGraph) -> Result<Vec<Task>, Error> {
    let order = topological(&graph)?;
    let mut after: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (first, then) in &graph.edges {
        after.entry(then).or_default().insert(first);
    }
    let mut last: BTreeMap<&str, &str> = BTreeMap::new();
    let mut out = Vec::with_capacity(order.len());
    for id in &order {
        let Some(draft) = graph.tasks.get(id) else {
            continue;
        };
        let mut before = after.remove(id.as_str()).unwrap_or_default();
        if let Some(previous) = last.insert(&draft.node, id) {
            before.insert(previous);
        }
        out.push(Task {
            id: id.clone(),
            node: draft.node.clone(),
            service: draft.service.clone(),
            action: draft.action,
            after: before.into_iter().map(str::to_owned).collect(),
        });
    }
    Ok(out)
}

/// Kahn's algorithm, taking the ready task of the lowest rank, then id.
/// Fails, naming the tasks left, if they wait for each other.
fn topological(graph: &TaskGraph) -> Result<Vec<String>, Error> {
    let mut waiting: BTreeMap<&str, usize> =
        graph.tasks.keys().map(|id| (id.as_str(), 0)).collect();
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (first, then) in &graph.edges {
        *waiting.entry(then).or_default() += 1;
        next.entry(first).or_default().push(then);
    }
    let key = |id: &str| {
        let action = graph.tasks.get(id).map_or(Action::Start, |d| d.action);
        (rank(action), id.to_owned())
    };
    let mut ready: BTreeSet<(u8, String)> = waiting
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(id, _)| key(id))
        .collect();
    let mut order = Vec::with_capacity(waiting.len());
    while let Some((_, id)) = ready.pop_first() {
        for then in next.get(id.as_str()).into_iter().flatten() {
            let n = waiting.entry(then).or_default();
            *n -= 1;
            if *n == 0 {
                ready.insert(key(then));
            }
        }
        order.push(id);
    }
    if order.len() < waiting.len() {
        let done: BTreeSet<&str> = order.iter().map(String::as_str).collect();
        let tasks = waiting
            .keys()
            .filter(|id| !done.contains(*id))
            .map(|id| (*id).to_owned())
            .collect();
        return Err(Error::Unordered { tasks });
    }
    Ok(order)
}
