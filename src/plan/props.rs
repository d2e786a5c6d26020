//! Properties of the planner over generated catalogs and layouts: every
//! plan is well formed and acyclic, keeps every ordering rule, runs one
//! task at a time per node, touches a staying service only to restart it,
//! and takes the old layout to the new one; its inverse takes it back. A
//! cycle among present services is reported, and only then.
//!
//! The oracles restate the rules from the module documentation without
//! the planner's own graphs: dependencies are resolved again here, the
//! order is checked by reachability through `after` (so it holds in every
//! run, not only in the listed order), and the simulator runs the tasks in
//! an order of its own.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::{Action, Error, Operation, Phase, Plan, Task, inverse, plan};
use crate::api::{LayoutNode, ServiceDefinitionSpec};
use crate::layout::Catalog;

const NAMES: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
const ALIASES: [&str; 2] = ["db", "queue"];
const CLASSES: [&str; 2] = ["small", "large"];

/// A layout as the oracles see it: node → (class, services).
type Layout = BTreeMap<String, (String, BTreeSet<String>)>;

fn normal(layout: &[LayoutNode]) -> Layout {
    layout
        .iter()
        .map(|n| {
            let services = n.services.iter().cloned().collect();
            (n.name.clone(), (n.node_class.clone(), services))
        })
        .collect()
}

fn present(layout: &Layout) -> BTreeSet<&str> {
    layout
        .values()
        .flat_map(|(_, s)| s.iter().map(String::as_str))
        .collect()
}

// ---- generators ----------------------------------------------------------

/// One generated case.
#[derive(Clone, Debug)]
struct Case {
    catalog: Catalog,
    old: Vec<LayoutNode>,
    new: Vec<LayoutNode>,
    operation: Operation,
}

/// `n` services (of `NAMES`) whose dependencies, in each of the four
/// fields, name services placed earlier in a shuffled order, aliases whose
/// providers are all placed no later, or a name nothing answers to. With
/// `back`, a few name services placed later too, which may make cycles.
fn catalog(n: usize, back: bool) -> impl Strategy<Value = Catalog> {
    let back = if back { 0.15 } else { 0.0 };
    (
        Just(NAMES[..n].to_vec()).prop_shuffle(),
        prop::collection::vec(prop::bool::weighted(0.3), n * 4 * n),
        prop::collection::vec(prop::bool::weighted(back), n * 4 * n),
        prop::collection::vec(prop::bool::weighted(0.3), n * ALIASES.len()),
        prop::collection::vec(prop::bool::weighted(0.25), n * 4 * ALIASES.len()),
        prop::collection::vec(prop::bool::weighted(0.1), n * 4),
    )
        .prop_map(move |(order, fwd, bwd, provides, aliases, ghosts)| {
            let provides = |i: usize, a: usize| provides[i * ALIASES.len() + a];
            let mut catalog = Catalog::default();
            for (i, name) in order.iter().enumerate() {
                let mut fields: [Vec<String>; 4] = Default::default();
                for (f, field) in fields.iter_mut().enumerate() {
                    for (j, other) in order.iter().enumerate() {
                        let bit = (f * n + i) * n + j;
                        if (j < i && fwd[bit]) || (j > i && bwd[bit]) {
                            field.push((*other).to_owned());
                        }
                    }
                    for (a, alias) in ALIASES.iter().enumerate() {
                        let early = (0..n).all(|j| !provides(j, a) || j <= i || back > 0.0);
                        if aliases[(f * n + i) * ALIASES.len() + a] && early {
                            field.push((*alias).to_owned());
                        }
                    }
                    if ghosts[f * n + i] {
                        field.push("ghost".to_owned());
                    }
                }
                let mut spec = ServiceDefinitionSpec::default();
                let d = &mut spec.dependencies;
                d.provides = (0..ALIASES.len())
                    .filter(|a| provides(i, *a))
                    .map(|a| ALIASES[a].to_owned())
                    .collect();
                [
                    d.install.requires,
                    d.install.uses,
                    d.runtime.requires,
                    d.runtime.uses,
                ] = fields;
                catalog.services.insert((*name).to_owned(), spec);
            }
            catalog
        })
}

/// Up to four nodes of two classes running services of `NAMES[..n]`.
fn layout(n: usize) -> impl Strategy<Value = Vec<LayoutNode>> {
    prop::collection::vec(prop::option::of((0..CLASSES.len(), 0u8..16)), 4).prop_map(move |slots| {
        slots
            .into_iter()
            .enumerate()
            .filter_map(|(i, slot)| slot.map(|s| (i, s)))
            .map(|(i, (class, mask))| LayoutNode {
                name: format!("node-{}", i + 1),
                node_class: CLASSES[class].to_owned(),
                services: (0..n)
                    .filter(|j| mask & (1 << j) != 0)
                    .map(|j| NAMES[j].to_owned())
                    .collect(),
            })
            .collect()
    })
}

/// `old` with what `new` adds: services added to nodes of the same class,
/// and nodes `old` lacks.
fn merged(old: &[LayoutNode], new: &[LayoutNode]) -> Vec<LayoutNode> {
    let mut out: Vec<LayoutNode> = old.to_vec();
    for node in new {
        match out.iter_mut().find(|o| o.name == node.name) {
            Some(o) if o.node_class == node.node_class => {
                let extra: Vec<String> = node
                    .services
                    .iter()
                    .filter(|s| !o.services.contains(s))
                    .cloned()
                    .collect();
                o.services.extend(extra);
            }
            Some(_) => {}
            None => out.push(node.clone()),
        }
    }
    out
}

/// A catalog, two layouts and an operation; the layouts are made to fit
/// the operation (a create starts from nothing, a reconfigure keeps the
/// layout, …).
fn case(back: bool) -> impl Strategy<Value = Case> {
    (3usize..=4)
        .prop_flat_map(move |n| {
            (
                catalog(n, back),
                layout(n),
                layout(n),
                0..6usize,
                prop::collection::vec(any::<bool>(), n),
            )
        })
        .prop_map(|(catalog, old, new, kind, changed)| {
            let changed: Vec<String> = (0..changed.len())
                .filter(|i| changed[*i])
                .map(|i| NAMES[i].to_owned())
                .collect();
            let (old, new, operation) = match kind {
                0 => (Vec::new(), new, Operation::Create),
                1 => (old, Vec::new(), Operation::Delete),
                2 => (old.clone(), merged(&old, &new), Operation::AddServices),
                3 => (
                    old.clone(),
                    old,
                    Operation::Reconfigure { services: changed },
                ),
                4 => (old.clone(), old, Operation::Restart),
                _ => (old, new, Operation::Scale),
            };
            Case {
                catalog,
                old,
                new,
                operation,
            }
        })
}

// ---- oracles -------------------------------------------------------------

/// The services of `present` other than `service` that its `phase`
/// dependencies name, by name or by a name they provide.
fn resolve<'a>(
    catalog: &Catalog,
    service: &str,
    phase: Phase,
    present: &BTreeSet<&'a str>,
) -> Vec<&'a str> {
    let d = &catalog.services[service].dependencies;
    let p = match phase {
        Phase::Install => &d.install,
        Phase::Runtime => &d.runtime,
    };
    let answers = |s: &str, name: &String| {
        s == name || catalog.services[s].dependencies.provides.contains(name)
    };
    present
        .iter()
        .copied()
        .filter(|s| *s != service)
        .filter(|s| p.requires.iter().chain(&p.uses).any(|n| answers(s, n)))
        .collect()
}

/// For each task (by its index in the listing), the indexes of every
/// task it waits for, directly or not. Checks ids are unique, every `after`
/// exists, and the listing is a topological order (so the plan is
/// acyclic).
fn ancestors(plan: &Plan) -> Result<Vec<BTreeSet<usize>>, String> {
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut up: Vec<BTreeSet<usize>> = Vec::new();
    for (i, task) in plan.tasks.iter().enumerate() {
        let mut mine = BTreeSet::new();
        for a in &task.after {
            let Some(&j) = index.get(a.as_str()) else {
                let known = plan.tasks.iter().any(|t| t.id == *a);
                return Err(match known {
                    true => format!("{} is listed before {a}, which it waits for", task.id),
                    false => format!("{} waits for {a}, which is no task", task.id),
                });
            };
            mine.insert(j);
            mine.extend(up[j].iter().copied());
        }
        if index.insert(task.id.as_str(), i).is_some() {
            return Err(format!("{} appears twice", task.id));
        }
        up.push(mine);
    }
    Ok(up)
}

/// What an id says: `NODE/ACTION` or `NODE/SERVICE/ACTION`.
fn id_of(task: &Task) -> String {
    match &task.service {
        Some(s) => format!("{}/{s}/{}", task.node, task.action.as_str()),
        None => format!("{}/{}", task.node, task.action.as_str()),
    }
}

/// The pairs (first, then) of task indexes the rules order.
fn required(catalog: &Catalog, old: &Layout, new: &Layout, plan: &Plan) -> Vec<(usize, usize)> {
    let (old_present, new_present) = (present(old), present(new));
    let of = |action: Action, service: &str| {
        plan.tasks
            .iter()
            .enumerate()
            .filter(move |(_, t)| t.action == action && t.service.as_deref() == Some(service))
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    let rules = [
        (Action::Install, Phase::Install, &new_present, false),
        (Action::Start, Phase::Runtime, &new_present, false),
        (Action::Stop, Phase::Runtime, &old_present, true),
        (Action::Remove, Phase::Install, &old_present, true),
    ];
    let mut out = Vec::new();
    for (t, task) in plan.tasks.iter().enumerate() {
        let Some(service) = task.service.as_deref() else {
            continue;
        };
        for (action, phase, present, reversed) in rules {
            if task.action != action {
                continue;
            }
            for dep in resolve(catalog, service, phase, present) {
                for u in of(action, dep) {
                    out.push(if reversed { (t, u) } else { (u, t) });
                }
            }
        }
    }
    out.extend(on_one_node(plan));
    out
}

/// The pairs the rules order on one node: a service's steps in turn, a
/// node's creation before its services and its deletion after them.
fn on_one_node(plan: &Plan) -> Vec<(usize, usize)> {
    use Action::*;
    let steps = [
        (Stop, Remove),
        (Stop, Configure),
        (Stop, Start),
        (Install, Configure),
        (Configure, Initialize),
        (Initialize, Start),
        (Configure, Start),
        (DeleteNode, CreateNode),
        (CreateNode, Bootstrap),
    ];
    let mut out = Vec::new();
    for (i, a) in plan.tasks.iter().enumerate() {
        for (j, b) in plan.tasks.iter().enumerate() {
            if a.node != b.node {
                continue;
            }
            let same = a.service == b.service;
            let by_step = same && steps.contains(&(a.action, b.action));
            let booted = a.action == Bootstrap
                && b.service.is_some()
                && b.action != Stop
                && b.action != Remove;
            let drained = b.action == DeleteNode && matches!(a.action, Stop | Remove);
            if by_step || booted || drained {
                out.push((i, j));
            }
        }
    }
    out
}

/// The staying services (same node, same class, in both layouts) the
/// operation restarts, with the steps each gets: a restart stops and
/// starts every one; a reconfigure also configures the changed services
/// and every service that depends on one at runtime, directly or not.
fn restarted(case: &Case, new: &Layout) -> BTreeMap<(String, String), Vec<Action>> {
    let present = present(new);
    let (steps, services): (Vec<Action>, BTreeSet<&str>) = match &case.operation {
        Operation::Restart => (vec![Action::Stop, Action::Start], present.clone()),
        Operation::Reconfigure { services } => {
            let mut set: BTreeSet<&str> = services
                .iter()
                .map(String::as_str)
                .filter(|s| present.contains(s))
                .collect();
            loop {
                let more: Vec<&str> = present
                    .iter()
                    .copied()
                    .filter(|s| !set.contains(s))
                    .filter(|s| {
                        resolve(&case.catalog, s, Phase::Runtime, &present)
                            .iter()
                            .any(|d| set.contains(d))
                    })
                    .collect();
                if more.is_empty() {
                    break;
                }
                set.extend(more);
            }
            let steps = vec![Action::Stop, Action::Configure, Action::Start];
            (steps, set)
        }
        _ => (Vec::new(), BTreeSet::new()),
    };
    let mut out = BTreeMap::new();
    for (node, (_, running)) in new {
        for s in running.iter().filter(|s| services.contains(s.as_str())) {
            out.insert((node.clone(), s.clone()), steps.clone());
        }
    }
    out
}

/// The steps the plan gives each staying service.
fn staying_steps(
    old: &Layout,
    new: &Layout,
    plan: &Plan,
) -> BTreeMap<(String, String), Vec<Action>> {
    let mut out: BTreeMap<(String, String), Vec<Action>> = BTreeMap::new();
    for task in &plan.tasks {
        let Some(service) = &task.service else {
            continue;
        };
        let stays = |l: &Layout| {
            l.get(&task.node).is_some_and(|(c, s)| {
                s.contains(service) && Some(c) == old.get(&task.node).map(|o| &o.0)
            })
        };
        if stays(old) && stays(new) {
            let key = (task.node.clone(), service.clone());
            out.entry(key).or_default().push(task.action);
        }
    }
    out
}

/// Checks one plan from `old` to `new` against every rule.
fn check(case: &Case, old: &Layout, new: &Layout, plan: &Plan) -> Result<(), String> {
    if plan.operation != case.operation {
        return Err(format!("operation {:?}", plan.operation));
    }
    let up = ancestors(plan)?;
    let name = |i: usize| plan.tasks[i].id.as_str();
    for task in &plan.tasks {
        if task.id != id_of(task) {
            return Err(format!("{} is not named {}", task.id, id_of(task)));
        }
    }
    for (first, then) in required(&case.catalog, old, new, plan) {
        if !up[then].contains(&first) {
            return Err(format!("{} does not wait for {}", name(then), name(first)));
        }
    }
    for (i, a) in plan.tasks.iter().enumerate() {
        for (j, b) in plan.tasks.iter().enumerate().skip(i + 1) {
            if a.node == b.node && !up[j].contains(&i) {
                return Err(format!(
                    "{} and {} may run together on {}",
                    a.id, b.id, a.node
                ));
            }
        }
    }
    let expected = restarted(case, new);
    let got = staying_steps(old, new, plan);
    if got != expected {
        return Err(format!(
            "staying services got {got:?}, expected {expected:?}"
        ));
    }
    Ok(())
}

// ---- the simulator -------------------------------------------------------

/// Where a service stands on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Installed,
    Configured,
    Initialized,
    Running,
    Stopped,
}

/// A node as the simulator keeps it.
#[derive(Clone, Debug)]
struct Machine {
    class: String,
    bootstrapped: bool,
    services: BTreeMap<String, State>,
}

/// The tasks of `plan` in an order of the simulator's own that keeps
/// every `after`: of the ready tasks, the greatest id first.
fn run_order(plan: &Plan) -> Result<Vec<&Task>, String> {
    let mut left: Vec<&Task> = plan.tasks.iter().collect();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    while !left.is_empty() {
        let ready = left
            .iter()
            .enumerate()
            .filter(|(_, t)| t.after.iter().all(|a| done.contains(a.as_str())))
            .max_by_key(|(_, t)| t.id.as_str())
            .map(|(i, _)| i);
        let Some(i) = ready else {
            let ids: Vec<&str> = left.iter().map(|t| t.id.as_str()).collect();
            return Err(format!("no order runs {ids:?}"));
        };
        let task = left.remove(i);
        done.insert(&task.id);
        out.push(task);
    }
    Ok(out)
}

/// One task on the machines; `Err` says what was out of place.
fn step(
    machines: &mut BTreeMap<String, Machine>,
    task: &Task,
    target: &Layout,
) -> Result<(), String> {
    let was = format!("{:?}", machines.get(&task.node));
    let fail = || format!("{} in the wrong state: {was}", task.id);
    let Some(service) = &task.service else {
        let machine = machines.get_mut(&task.node);
        match (task.action, machine) {
            (Action::CreateNode, None) => {
                let (class, _) = target.get(&task.node).ok_or_else(fail)?;
                let services = BTreeMap::new();
                let m = Machine {
                    class: class.clone(),
                    bootstrapped: false,
                    services,
                };
                machines.insert(task.node.clone(), m);
            }
            (Action::Bootstrap, Some(m)) if !m.bootstrapped => m.bootstrapped = true,
            (Action::DeleteNode, Some(m)) if m.services.is_empty() => {
                machines.remove(&task.node);
            }
            _ => return Err(fail()),
        }
        return Ok(());
    };
    let m = machines
        .get_mut(&task.node)
        .filter(|m| m.bootstrapped)
        .ok_or_else(fail)?;
    use State::*;
    let next = match (task.action, m.services.get(service)) {
        (Action::Install, None) => Some(Installed),
        (Action::Configure, Some(Installed)) => Some(Configured),
        (Action::Configure, Some(Stopped)) => Some(Stopped),
        (Action::Initialize, Some(Configured)) => Some(Initialized),
        (Action::Start, Some(Initialized | Stopped)) => Some(Running),
        (Action::Stop, Some(Running)) => Some(Stopped),
        (Action::Remove, Some(Stopped)) => None,
        _ => return Err(fail()),
    };
    match next {
        Some(state) => m.services.insert(service.clone(), state),
        None => m.services.remove(service),
    };
    Ok(())
}

/// Runs `plan` on `start`: nodes of `start` are bootstrapped and their
/// services running; createNode takes the class `target` gives the node.
/// The result must have every node bootstrapped and every service running.
fn apply(start: &Layout, plan: &Plan, target: &Layout) -> Result<Layout, String> {
    let mut machines: BTreeMap<String, Machine> = start
        .iter()
        .map(|(name, (class, services))| {
            let services = services
                .iter()
                .map(|s| (s.clone(), State::Running))
                .collect();
            let m = Machine {
                class: class.clone(),
                bootstrapped: true,
                services,
            };
            (name.clone(), m)
        })
        .collect();
    for task in run_order(plan)? {
        step(&mut machines, task, target)?;
    }
    let mut out = Layout::new();
    for (name, m) in machines {
        if !m.bootstrapped || m.services.values().any(|s| *s != State::Running) {
            return Err(format!("{name} ends as {m:?}"));
        }
        out.insert(name, (m.class, m.services.into_keys().collect()));
    }
    Ok(out)
}

// ---- cycles ----------------------------------------------------------------

/// Whether `phase` dependencies among the services of `layout` form a
/// cycle: some service reaches itself.
fn has_cycle(catalog: &Catalog, layout: &Layout, phase: Phase) -> bool {
    let present = present(layout);
    present.iter().any(|start| {
        let mut seen = BTreeSet::new();
        let mut stack = resolve(catalog, start, phase, &present);
        while let Some(s) = stack.pop() {
            if s == *start {
                return true;
            }
            if seen.insert(s) {
                stack.extend(resolve(catalog, s, phase, &present));
            }
        }
        false
    })
}

/// Whether `services` is a cycle in `phase` of one of the layouts: each
/// depends on the next, the last on the first.
fn is_cycle(catalog: &Catalog, layouts: [&Layout; 2], phase: Phase, services: &[String]) -> bool {
    layouts.iter().any(|layout| {
        let present = present(layout);
        !services.is_empty()
            && (0..services.len()).all(|i| {
                let next = &services[(i + 1) % services.len()];
                present.contains(services[i].as_str())
                    && resolve(catalog, &services[i], phase, &present).contains(&next.as_str())
            })
    })
}

// ---- properties --------------------------------------------------------------

fn reversed(layout: &[LayoutNode]) -> Vec<LayoutNode> {
    let mut out = layout.to_vec();
    out.reverse();
    for node in &mut out {
        node.services.reverse();
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn every_plan_keeps_the_rules_and_its_inverse_restores_the_old_layout(case in case(false)) {
        let (old, new) = (normal(&case.old), normal(&case.new));
        let forth = plan(&case.old, &case.new, &case.catalog, &case.operation);
        let forth = forth.map_err(|e| TestCaseError::fail(format!("no plan: {e}")))?;
        if let Err(broken) = check(&case, &old, &new, &forth) {
            prop_assert!(false, "{broken}\nplan: {forth:#?}");
        }
        prop_assert_eq!(apply(&old, &forth, &new).map_err(TestCaseError::fail)?, new.clone());
        let back = inverse(&case.old, &case.new, &case.catalog, &case.operation);
        let back = back.map_err(|e| TestCaseError::fail(format!("no inverse: {e}")))?;
        let undo = Case {
            old: case.new.clone(),
            new: case.old.clone(),
            operation: case.operation.inverse(),
            catalog: case.catalog.clone(),
        };
        if let Err(broken) = check(&undo, &new, &old, &back) {
            prop_assert!(false, "inverse: {broken}\nplan: {back:#?}");
        }
        let there = apply(&old, &forth, &new).map_err(TestCaseError::fail)?;
        prop_assert_eq!(apply(&there, &back, &old).map_err(TestCaseError::fail)?, old);
    }

    #[test]
    fn the_plan_does_not_depend_on_the_order_of_the_layouts(case in case(false)) {
        let a = plan(&case.old, &case.new, &case.catalog, &case.operation);
        let b = plan(&reversed(&case.old), &reversed(&case.new), &case.catalog, &case.operation);
        let bytes = |p: Result<Plan, Error>| serde_json::to_vec(&p.map_err(|e| e.to_string())).unwrap();
        prop_assert_eq!(bytes(a), bytes(b));
    }

    #[test]
    fn a_cycle_among_present_services_is_reported_and_only_then(case in case(true)) {
        let (old, new) = (normal(&case.old), normal(&case.new));
        let cyclic = [Phase::Install, Phase::Runtime]
            .iter()
            .any(|p| has_cycle(&case.catalog, &old, *p) || has_cycle(&case.catalog, &new, *p));
        match plan(&case.old, &case.new, &case.catalog, &case.operation) {
            Err(Error::Cycle { phase, services }) => {
                prop_assert!(cyclic, "a cycle {services:?} that is none");
                prop_assert!(
                    is_cycle(&case.catalog, [&old, &new], phase, &services),
                    "{phase} {services:?} is not a cycle"
                );
            }
            Err(e) => prop_assert!(false, "{e}"),
            Ok(p) => {
                prop_assert!(!cyclic, "no error for a cyclic catalog: {:?}", case.catalog);
                if let Err(broken) = check(&case, &old, &new, &p) {
                    prop_assert!(false, "{broken}\nplan: {p:#?}");
                }
            }
        }
    }
}
