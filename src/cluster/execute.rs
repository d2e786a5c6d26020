//! The plan executor's pure step: from a ClusterPlan, its status and what
//! the nodes report, the next status and what the nodes should be told.
//!
//! A pass first records, then acts. [`step`] starts the tasks whose
//! predecessors finished (a task is recorded Running, its attempt counted,
//! before anything is done for it), notices the tasks that finished or
//! failed, retries failed attempts with backoff, and moves the plan's
//! phase. [`desired`] then derives, from the recorded status alone, what
//! every node should have: whether it exists, its packages, the hook it
//! runs. Acting on it is idempotent, so a pass that crashes after the
//! record is repeated by the next pass without running a task twice: a
//! hook runs once per (task, attempt) on the agent.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{
    ClusterPlanSpec, ClusterPlanStatus, HookState, LayoutNode, NodeTask, NodeTaskStatus, OnFailure,
    PlanPhase, Task, TaskAction, TaskState, TaskStatus,
};
use crate::layout::Catalog;

/// The side of a plan a task is on, in its hook's id.
const FORWARD: &str = "forward";
/// See [`FORWARD`].
const ROLLBACK: &str = "rollback";

/// The id of a task's hook on its node: unique across plans and their
/// rollbacks (a node runs `node-1/db/start` in many plans; the agent runs
/// each hook id and attempt once).
pub fn hook_id(plan: &str, side: &str, task: &Task) -> String {
    format!("{plan}/{side}/{}", task.id)
}

/// How long a task may run before its attempt fails, hooks aside (they
/// have their own timeout, plus [`HOOK_GRACE`]).
pub const NODE_TIMEOUT: SignedDuration = SignedDuration::from_secs(600);
/// Time the agent has past a hook's own timeout to report it.
pub const HOOK_GRACE: SignedDuration = SignedDuration::from_secs(60);
/// The longest wait between attempts.
const MAX_BACKOFF_SECS: i64 = 60;

/// What one node of the layout reports, once a NodeInstall is bound to it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct NodeView {
    /// The NodeInstall's name.
    pub install: String,
    /// The agent has reported (a heartbeat).
    pub registered: bool,
    /// The active package ids.
    pub active: Vec<String>,
    /// The set hash the agent last failed and rolled back.
    pub failed_hash: Option<String>,
    /// What the agent says, for a failure's message.
    pub message: Option<String>,
    /// The agent's reports of the hooks it was given, by task.
    pub tasks: Vec<NodeTaskStatus>,
    /// The node's `Ready` condition is True.
    pub ready: bool,
}

/// Everything a step reads besides the plan.
pub struct World<'a> {
    /// The bound nodes, by layout node name.
    pub nodes: &'a BTreeMap<String, NodeView>,
    /// The catalog (packages and hooks of the services).
    pub catalog: &'a Catalog,
    /// The cluster's name, for hooks' environment.
    pub cluster: &'a str,
    /// The plan's name (and uid), for hooks' ids.
    pub plan: &'a str,
    /// The fleet-wide halt is on.
    pub halted: bool,
    /// The cluster is paused.
    pub paused: bool,
    /// The plan waits for approval unless approved.
    pub manual: bool,
    /// The plan carries the approval annotation.
    pub approved: bool,
    /// Retries per task.
    pub task_retries: i32,
    /// What a failed task does.
    pub on_failure: OnFailure,
    /// The cluster is deleted: a plan that has not finished turns back.
    pub cancel: bool,
    /// The cluster's spec is back at what the plan started from: a plan
    /// that stopped at a failure (`onFailure: Halt`) turns back.
    pub revert: bool,
    /// The time of the pass.
    pub now: Timestamp,
    /// How many tasks of this plan may run at once (its tenant's
    /// `workers` less the tasks its other plans run); `None`: no limit.
    pub slots: Option<usize>,
}

/// What became of a running task this pass.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Waiting,
    Done,
    Failed(String),
}

/// The plan's status after this pass: [`step_once`] until nothing more
/// changes, so that tasks with nothing to wait for (a bootstrap of a node
/// already Ready, a task without a hook) and the tasks after them move in
/// the same pass instead of one pass each.
pub fn step(spec: &ClusterPlanSpec, status: &ClusterPlanStatus, w: &World) -> ClusterPlanStatus {
    let mut next = step_once(spec, status, w);
    // Each round that changes something finishes or starts a task; a
    // task moves at most three times (pending, running, done).
    for _ in 0..3 * (spec.tasks.len() + spec.inverse.len()) + 3 {
        let again = step_once(spec, &next, w);
        if again == next {
            break;
        }
        next = again;
    }
    next
}

/// One round of a pass: start what can start, notice what ended.
fn step_once(spec: &ClusterPlanSpec, status: &ClusterPlanStatus, w: &World) -> ClusterPlanStatus {
    let mut next = status.clone();
    let forward = matches!(
        next.phase,
        PlanPhase::Pending | PlanPhase::AwaitingApproval | PlanPhase::Running
    );
    if w.cancel && forward {
        next.phase = PlanPhase::RollingBack;
        next.message = Some("cancelled: the cluster is deleted; undoing what ran".into());
        abandon_running(&mut next.tasks, w.now);
        next.rollback = skipped_inverse(spec, &next.tasks);
    }
    if w.revert && stopped_forward(&next) {
        let first = next.message.clone().unwrap_or_default();
        next.phase = PlanPhase::RollingBack;
        next.message = Some(format!(
            "{first}; the cluster's spec is back at where the plan started: undoing what ran"
        ));
        abandon_running(&mut next.tasks, w.now);
        next.rollback = skipped_inverse(spec, &next.tasks);
    }
    match next.phase {
        PlanPhase::Pending | PlanPhase::AwaitingApproval => {
            next.phase = if w.manual && !w.approved {
                PlanPhase::AwaitingApproval
            } else {
                PlanPhase::Running
            };
            if next.phase == PlanPhase::Running {
                return step_once(spec, &next, w);
            }
        }
        PlanPhase::Running => run_forward(spec, &mut next, w),
        PlanPhase::RollingBack => run_inverse(spec, &mut next, w),
        PlanPhase::Succeeded | PlanPhase::Failed | PlanPhase::RolledBack => {}
    }
    next.progress = Some(progress(spec, &next));
    next
}

/// A plan that stopped at a forward task's failure (`onFailure: Halt`),
/// its rollback never begun: it may still be turned back.
pub fn stopped_forward(status: &ClusterPlanStatus) -> bool {
    status.phase == PlanPhase::Failed && status.rollback.is_empty()
}

fn run_forward(spec: &ClusterPlanSpec, next: &mut ClusterPlanStatus, w: &World) {
    let failed = advance(&spec.tasks, &mut next.tasks, FORWARD, w);
    if let Some((task, error)) = failed {
        let attempts = attempts_of(&next.tasks, &task);
        let why = format!("task {task} failed after {attempts} attempts: {error}");
        match w.on_failure {
            OnFailure::Halt => {
                next.phase = PlanPhase::Failed;
                next.message = Some(format!("{why}; onFailure is Halt: the plan stops here"));
            }
            OnFailure::Rollback => {
                next.phase = PlanPhase::RollingBack;
                next.message = Some(format!("{why}; rolling back by the inverse plan"));
                abandon_running(&mut next.tasks, w.now);
                next.rollback = skipped_inverse(spec, &next.tasks);
                run_inverse(spec, next, w);
            }
        }
    } else if all_done(&spec.tasks, &next.tasks) && settled(spec, next, w) {
        next.phase = PlanPhase::Succeeded;
    }
}

fn run_inverse(spec: &ClusterPlanSpec, next: &mut ClusterPlanStatus, w: &World) {
    let failed = advance(&spec.inverse, &mut next.rollback, ROLLBACK, w);
    if let Some((task, error)) = failed {
        let first = next.message.clone().unwrap_or_default();
        next.phase = PlanPhase::Failed;
        next.message = Some(format!(
            "{first}; the rollback failed too at task {task}: {error}; the cluster needs a person (see `theseus cluster plan`)"
        ));
    } else if all_done(&spec.inverse, &next.rollback) && settled(spec, next, w) {
        next.phase = PlanPhase::RolledBack;
    }
}

/// Notices finished attempts, retries or fails them, and starts what may
/// start; returns the task that failed its last attempt, with why.
fn advance(
    tasks: &[Task],
    states: &mut Vec<TaskStatus>,
    side: &str,
    w: &World,
) -> Option<(String, String)> {
    let mut failed = None;
    let before = states.clone();
    for task in tasks {
        let Some(state) = states.iter_mut().find(|s| s.id == task.id) else {
            continue;
        };
        if state.state != TaskState::Running {
            continue;
        }
        match outcome(task, state, &before, side, w) {
            Outcome::Waiting => {}
            Outcome::Done => {
                state.state = TaskState::Succeeded;
                state.finished = Some(Time(w.now));
            }
            Outcome::Failed(error) => {
                if fail_attempt(state, &error, w) && failed.is_none() {
                    failed = Some((task.id.clone(), error));
                }
            }
        }
    }
    let hold = failed.is_some() || w.halted || w.paused;
    give_back_queued(tasks, states, hold, w.catalog);
    if !hold {
        start_ready(tasks, states, w.now, w.catalog, w.slots);
    }
    failed
}

/// Whether `task` may run on its node right behind `before`, a task of
/// its own that runs now: both are hooks the agent runs in the order it
/// is given them, so the node goes on from one to the next without
/// waiting for the operator. An install is never queued: its switch
/// would change the node's packages under the hooks before it.
fn queues_behind(
    task: &Task,
    before: &Task,
    state: Option<&TaskStatus>,
    catalog: &Catalog,
) -> bool {
    task.action != TaskAction::Install
        && before.node == task.node
        && state.is_some_and(|s| s.state == TaskState::Running)
        && hook_of(task, catalog).is_some()
        && hook_of(before, catalog).is_some()
}

/// Every predecessor of `task` finished, or runs now on its node with
/// `task` queued behind it.
fn startable(
    task: &Task,
    tasks: &[Task],
    states: &[TaskStatus],
    queue: bool,
    catalog: &Catalog,
) -> bool {
    task.after.iter().all(|a| {
        let state = states.iter().find(|s| s.id == *a);
        let finished = state.is_some_and(|s| s.state.is_done());
        finished
            || (queue
                && tasks
                    .iter()
                    .find(|t| t.id == *a)
                    .is_some_and(|before| queues_behind(task, before, state, catalog)))
    })
}

/// A task queued behind one that did not finish (it failed an attempt, or
/// the plan is held) goes back to Pending, its attempt uncounted: its node
/// never started it, since a node runs a queued hook only after the one
/// before it succeeded. (Should the node have started it all the same, it
/// ran that attempt once and the agent reports its result when the task
/// starts again with the same attempt.)
fn give_back_queued(tasks: &[Task], states: &mut [TaskStatus], hold: bool, catalog: &Catalog) {
    loop {
        let snapshot = states.to_vec();
        let back: Vec<String> = tasks
            .iter()
            .filter(|t| {
                snapshot
                    .iter()
                    .any(|s| s.id == t.id && s.state == TaskState::Running)
            })
            .filter(|t| {
                let now = startable(t, tasks, &snapshot, false, catalog);
                !now && (hold || !startable(t, tasks, &snapshot, true, catalog))
            })
            .map(|t| t.id.clone())
            .collect();
        if back.is_empty() {
            return;
        }
        for s in states.iter_mut().filter(|s| back.contains(&s.id)) {
            s.state = TaskState::Pending;
            s.attempts -= 1;
            s.started = None;
        }
    }
}

/// Records a failed attempt: back to Pending with a backoff, or Failed
/// when no retry is left (then true).
fn fail_attempt(state: &mut TaskStatus, error: &str, w: &World) -> bool {
    state.last_error = Some(error.to_owned());
    if state.attempts <= w.task_retries {
        let backoff = 1i64 << state.attempts.clamp(0, 6);
        state.state = TaskState::Pending;
        state.retry_after = Some(Time(
            w.now + SignedDuration::from_secs(backoff.min(MAX_BACKOFF_SECS)),
        ));
        false
    } else {
        state.state = TaskState::Failed;
        state.finished = Some(Time(w.now));
        true
    }
}

/// Starts every Pending task whose predecessors all finished (or run on
/// its node with it queued behind them) and whose backoff passed.
fn start_ready(
    tasks: &[Task],
    states: &mut Vec<TaskStatus>,
    now: Timestamp,
    catalog: &Catalog,
    slots: Option<usize>,
) {
    let running = states
        .iter()
        .filter(|s| s.state == TaskState::Running)
        .count();
    let mut free = slots.map(|s| s.saturating_sub(running));
    for task in tasks {
        if free == Some(0) {
            return;
        }
        if !startable(task, tasks, states, true, catalog) {
            continue;
        }
        let state = match states.iter().position(|s| s.id == task.id) {
            Some(i) => &mut states[i],
            None => {
                states.push(TaskStatus {
                    id: task.id.clone(),
                    ..TaskStatus::default()
                });
                states.last_mut().expect("just pushed")
            }
        };
        let backed_off = state.retry_after.as_ref().is_none_or(|t| t.0 <= now);
        if state.state == TaskState::Pending && backed_off {
            if let Some(free) = free.as_mut() {
                *free -= 1;
            }
            state.state = TaskState::Running;
            state.attempts += 1;
            state.started = Some(Time(now));
            state.finished = None;
            state.retry_after = None;
        }
    }
}

/// What became of a running task, from the nodes' reports. A queued task
/// waits for the tasks before it to be recorded finished, and its time
/// counts from the last of them.
fn outcome(
    task: &Task,
    state: &TaskStatus,
    states: &[TaskStatus],
    side: &str,
    w: &World,
) -> Outcome {
    let mut started = state.started.as_ref().map_or(w.now, |t| t.0);
    for before in &task.after {
        match states.iter().find(|s| s.id == *before) {
            Some(s) if s.state.is_done() => {
                if let Some(end) = &s.finished {
                    started = started.max(end.0);
                }
            }
            _ => return Outcome::Waiting,
        }
    }
    let node = w.nodes.get(&task.node);
    let result = match task.action {
        TaskAction::CreateNode | TaskAction::Bootstrap => {
            if node.is_some_and(|n| n.registered) {
                Outcome::Done
            } else {
                Outcome::Waiting
            }
        }
        TaskAction::DeleteNode => {
            if node.is_none() {
                Outcome::Done
            } else {
                Outcome::Waiting
            }
        }
        _ => service_outcome(task, state, side, node, w),
    };
    let limit = timeout(task, w.catalog);
    if result == Outcome::Waiting && w.now.duration_since(started) > limit {
        return Outcome::Failed(format!("timed out after {}s", limit.as_secs()));
    }
    result
}

/// A service task: for an install, the node's switch to its packages
/// first; then the hook, when the service has one for the action.
fn service_outcome(
    task: &Task,
    state: &TaskStatus,
    side: &str,
    node: Option<&NodeView>,
    w: &World,
) -> Outcome {
    let Some(node) = node else {
        return Outcome::Failed(format!("node {} has no NodeInstall bound to it", task.node));
    };
    if task.action == TaskAction::Install {
        let wanted = service_packages(task.service.as_deref(), w.catalog);
        if let Some(failed) = switch_failed(node, &wanted) {
            return Outcome::Failed(failed);
        }
        if !switched(node, task, w.catalog) {
            return Outcome::Waiting;
        }
    }
    if hook_of(task, w.catalog).is_none() {
        return Outcome::Done;
    }
    let id = hook_id(w.plan, side, task);
    match node.tasks.iter().find(|t| t.id == id) {
        Some(t) if t.attempt == state.attempts => match t.state {
            HookState::Running => Outcome::Waiting,
            HookState::Succeeded => Outcome::Done,
            HookState::Failed => Outcome::Failed(
                t.message
                    .clone()
                    .unwrap_or_else(|| format!("the {} hook failed", task.action.as_str())),
            ),
        },
        _ => Outcome::Waiting,
    }
}

fn service_packages(service: Option<&str>, catalog: &Catalog) -> Vec<String> {
    service
        .and_then(|s| catalog.services.get(s))
        .map(|d| d.packages.clone())
        .unwrap_or_default()
}

/// The node rolled back a set holding the service's packages.
fn switch_failed(node: &NodeView, wanted: &[String]) -> Option<String> {
    let failed = node.failed_hash.as_ref()?;
    if wanted.is_empty() || wanted.iter().all(|p| node.active.contains(p)) {
        return None;
    }
    Some(format!(
        "the node's switch to set {failed} failed and was rolled back: {}",
        node.message.as_deref().unwrap_or("no message")
    ))
}

/// The node's active set holds every package of the task's service.
fn switched(node: &NodeView, task: &Task, catalog: &Catalog) -> bool {
    service_packages(task.service.as_deref(), catalog)
        .iter()
        .all(|p| node.active.contains(p))
}

/// The hook of a service task, when its service defines one.
fn hook_of<'c>(task: &Task, catalog: &'c Catalog) -> Option<&'c crate::api::Action> {
    let actions = &catalog.services.get(task.service.as_deref()?)?.actions;
    match task.action {
        TaskAction::Install => actions.install.as_ref(),
        TaskAction::Configure => actions.configure.as_ref(),
        TaskAction::Initialize => actions.initialize.as_ref(),
        TaskAction::Start => actions.start.as_ref(),
        TaskAction::Stop => actions.stop.as_ref(),
        TaskAction::Remove => actions.remove.as_ref(),
        TaskAction::CreateNode | TaskAction::Bootstrap | TaskAction::DeleteNode => None,
    }
}

/// How long an attempt of `task` may take.
fn timeout(task: &Task, catalog: &Catalog) -> SignedDuration {
    let hook = hook_of(task, catalog)
        .map(|h| SignedDuration::from_secs(i64::from(h.timeout_seconds)) + HOOK_GRACE);
    match task.action {
        TaskAction::Install => NODE_TIMEOUT + hook.unwrap_or_default(),
        _ => hook.unwrap_or(NODE_TIMEOUT),
    }
}

fn attempts_of(states: &[TaskStatus], id: &str) -> i32 {
    states.iter().find(|s| s.id == id).map_or(0, |s| s.attempts)
}

/// Tasks still running when the plan turns to roll back are given up:
/// their inverse undoes whatever they did.
fn abandon_running(states: &mut [TaskStatus], now: Timestamp) {
    for s in states.iter_mut().filter(|s| s.state == TaskState::Running) {
        s.state = TaskState::Failed;
        s.finished = Some(Time(now));
        s.last_error = Some("abandoned: the plan rolls back".into());
    }
}

/// The forward action whose effect an inverse task undoes.
fn undoes(action: TaskAction) -> &'static [TaskAction] {
    use TaskAction::*;
    match action {
        CreateNode | Bootstrap => &[DeleteNode],
        Install | Initialize => &[Remove],
        Configure => &[Configure, Remove],
        Start => &[Stop],
        Stop => &[Start],
        Remove => &[Install],
        DeleteNode => &[CreateNode],
    }
}

/// The inverse tasks with nothing to undo, recorded Skipped: their
/// forward counterpart (same node and service) never ran.
fn skipped_inverse(spec: &ClusterPlanSpec, forward: &[TaskStatus]) -> Vec<TaskStatus> {
    // An install that did not succeed left nothing to remove: a failed
    // switch was rolled back by the agent, and the node's packages are
    // the ones of the installs that succeeded.
    let ran: BTreeSet<&str> = forward
        .iter()
        .filter(|s| s.attempts > 0)
        .filter(|s| {
            s.state == TaskState::Succeeded
                || spec
                    .tasks
                    .iter()
                    .any(|t| t.id == s.id && t.action != TaskAction::Install)
        })
        .map(|s| s.id.as_str())
        .collect();
    let ran_task = |node: &str, service: Option<&str>, action: TaskAction| {
        spec.tasks.iter().any(|t| {
            t.node == node
                && t.service.as_deref() == service
                && t.action == action
                && ran.contains(t.id.as_str())
        })
    };
    spec.inverse
        .iter()
        .filter(|t| {
            !undoes(t.action)
                .iter()
                .any(|a| ran_task(&t.node, t.service.as_deref(), *a))
        })
        .map(|t| TaskStatus {
            id: t.id.clone(),
            state: TaskState::Skipped,
            last_error: Some("nothing to undo: its forward task never ran".into()),
            ..TaskStatus::default()
        })
        .collect()
}

fn all_done(tasks: &[Task], states: &[TaskStatus]) -> bool {
    tasks
        .iter()
        .all(|t| states.iter().any(|s| s.id == t.id && s.state.is_done()))
}

/// Every bound node runs the packages it should: the last switches (a
/// service removed from a node that stays) are part of the plan.
fn settled(spec: &ClusterPlanSpec, status: &ClusterPlanStatus, w: &World) -> bool {
    let want = desired(spec, status, w);
    want.packages.iter().all(|(node, packages)| {
        w.nodes.get(node).is_none_or(|n| {
            let mut active = n.active.clone();
            active.sort();
            packages.is_empty() || active == *packages
        })
    })
}

/// `done/total` of the list running; a rollback says so.
fn progress(spec: &ClusterPlanSpec, status: &ClusterPlanStatus) -> String {
    let done = |tasks: &[Task], states: &[TaskStatus]| {
        tasks
            .iter()
            .filter(|t| states.iter().any(|s| s.id == t.id && s.state.is_done()))
            .count()
    };
    match status.phase {
        PlanPhase::RollingBack | PlanPhase::RolledBack => format!(
            "rollback {}/{}",
            done(&spec.inverse, &status.rollback),
            spec.inverse.len()
        ),
        _ => format!("{}/{}", done(&spec.tasks, &status.tasks), spec.tasks.len()),
    }
}

/// What the nodes should have, from the recorded status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// The layout nodes that should exist, with their NodeClass.
    pub exists: BTreeMap<String, String>,
    /// The layout nodes being deleted (their NodeInstall is marked for
    /// removal first).
    pub deleting: BTreeSet<String>,
    /// The packages each node should have active, sorted.
    pub packages: BTreeMap<String, Vec<String>>,
    /// The packages each node whose install waits for another node's task
    /// will have once its installs have started, sorted (see
    /// [`next_packages`]).
    pub next: BTreeMap<String, Vec<String>>,
    /// The hooks each node should run, in order: the one it runs now and
    /// those queued behind it.
    pub hooks: BTreeMap<String, Vec<NodeTask>>,
    /// The hook ids of the tasks recorded finished: a node may keep these
    /// in its list; any other it holds that is not asked for is taken
    /// back.
    pub finished_hooks: BTreeSet<String>,
}

/// For each layout node with tasks, the longest chain of service tasks
/// (install, configure, initialize, start, stop, remove) from any of its
/// tasks to the end of the plan or of its inverse, following the `after`
/// edges forward. A node whose chain is the longest is on the plan's
/// critical path: the first machine to come up serves it, and a slow
/// launch lands on a node with slack to spare.
pub fn ranks(spec: &ClusterPlanSpec) -> BTreeMap<String, usize> {
    let mut rank: BTreeMap<String, usize> = BTreeMap::new();
    for tasks in [&spec.tasks, &spec.inverse] {
        let index: BTreeMap<&str, usize> = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.as_str(), i))
            .collect();
        let mut next: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
        for (i, t) in tasks.iter().enumerate() {
            for a in &t.after {
                if let Some(&j) = index.get(a.as_str()) {
                    next[j].push(i);
                }
            }
        }
        // The chain behind each task, memoised.
        let mut behind: Vec<Option<usize>> = vec![None; tasks.len()];
        let mut open = vec![false; tasks.len()];
        for (i, t) in tasks.iter().enumerate() {
            let n = chain_behind(i, tasks, &next, &mut behind, &mut open);
            let r = rank.entry(t.node.clone()).or_default();
            *r = (*r).max(n);
        }
    }
    rank
}

/// The longest chain of service tasks from task `i` to the end, `i`
/// included (see [`ranks`]). The plan is acyclic; a cycle, were there
/// one, would count as nothing more behind.
fn chain_behind(
    i: usize,
    tasks: &[Task],
    next: &[Vec<usize>],
    behind: &mut [Option<usize>],
    open: &mut [bool],
) -> usize {
    if let Some(n) = behind[i] {
        return n;
    }
    if open[i] {
        return 0;
    }
    open[i] = true;
    let rest = next[i]
        .iter()
        .map(|&j| chain_behind(j, tasks, next, behind, open))
        .max()
        .unwrap_or(0);
    let n = usize::from(tasks[i].service.is_some()) + rest;
    behind[i] = Some(n);
    n
}

/// What every node should have, given the tasks recorded as started and
/// finished: a node exists from its createNode's start to its
/// deleteNode's; a service's packages are on a node from its install's
/// start to its remove's end; a hook is asked for while its task runs
/// (an install's with its packages: the agent runs it after the switch),
/// a node's hooks in the plan's order.
pub fn desired(spec: &ClusterPlanSpec, status: &ClusterPlanStatus, w: &World) -> Desired {
    let mut exists: BTreeMap<String, String> = spec
        .from
        .iter()
        .map(|n| (n.name.clone(), n.node_class.clone()))
        .collect();
    let mut present: BTreeSet<(String, String)> = services_of(&spec.from);
    let mut deleting = BTreeSet::new();
    let lists = [
        (FORWARD, &spec.tasks, &status.tasks, &spec.to, &spec.config),
        (
            ROLLBACK,
            &spec.inverse,
            &status.rollback,
            &spec.from,
            &spec.from_config,
        ),
    ];
    let mut hooks: BTreeMap<String, Vec<NodeTask>> = BTreeMap::new();
    let mut finished_hooks = BTreeSet::new();
    for (side, tasks, states, layout, config) in lists {
        for task in tasks.iter() {
            let Some(state) = states.iter().find(|s| s.id == task.id && s.attempts > 0) else {
                continue;
            };
            apply(
                task,
                state,
                layout,
                &mut exists,
                &mut present,
                &mut deleting,
            );
            if state.state == TaskState::Running
                && let Some(hook) = hook_task(task, state, side, layout, config, w)
            {
                hooks.entry(task.node.clone()).or_default().push(hook);
            }
            if state.state.is_done() {
                finished_hooks.insert(hook_id(w.plan, side, task));
            }
        }
    }
    let packages: BTreeMap<String, Vec<String>> = exists
        .keys()
        .map(|node| (node.clone(), node_packages(node, &present, w.catalog)))
        .collect();
    let next = next_packages(spec, status, &packages, w.catalog);
    Desired {
        exists,
        deleting,
        packages,
        next,
        hooks,
        finished_hooks,
    }
}

/// The nodes that have an install to come which waits for another node's
/// task, with the packages they will have once their installs have
/// started (where the plan is heading: its layout, or while it turns back
/// the one it started from). They fetch them meanwhile, so that the
/// install only switches. A node whose install can start as soon as it is
/// up gets its target at once and is not told ahead.
fn next_packages(
    spec: &ClusterPlanSpec,
    status: &ClusterPlanStatus,
    packages: &BTreeMap<String, Vec<String>>,
    catalog: &Catalog,
) -> BTreeMap<String, Vec<String>> {
    let (tasks, states, heading) = match status.phase {
        PlanPhase::RollingBack | PlanPhase::RolledBack => {
            (&spec.inverse, &status.rollback, &spec.from)
        }
        _ => (&spec.tasks, &status.tasks, &spec.to),
    };
    let state: BTreeMap<&str, &TaskStatus> = states.iter().map(|s| (s.id.as_str(), s)).collect();
    let started = |id: &str| state.get(id).is_some_and(|s| s.attempts > 0);
    let done = |id: &str| state.get(id).is_some_and(|s| s.state.is_done());
    let node_of: BTreeMap<&str, &str> = tasks
        .iter()
        .map(|t| (t.id.as_str(), t.node.as_str()))
        .collect();
    let waiting: BTreeSet<&str> = tasks
        .iter()
        .filter(|t| t.action == TaskAction::Install && !started(&t.id))
        .filter(|t| {
            t.after
                .iter()
                .any(|a| node_of.get(a.as_str()) != Some(&t.node.as_str()) && !done(a))
        })
        .map(|t| t.node.as_str())
        .collect();
    let coming = services_of(heading);
    packages
        .iter()
        .filter(|(node, _)| waiting.contains(node.as_str()))
        .filter_map(|(node, now)| {
            let then = node_packages(node, &coming, catalog);
            then.iter()
                .any(|p| !now.contains(p))
                .then(|| (node.clone(), then))
        })
        .collect()
}

fn services_of(layout: &[LayoutNode]) -> BTreeSet<(String, String)> {
    layout
        .iter()
        .flat_map(|n| n.services.iter().map(|s| (n.name.clone(), s.clone())))
        .collect()
}

/// The effect of a started task on the nodes' existence and services.
fn apply(
    task: &Task,
    state: &TaskStatus,
    layout: &[LayoutNode],
    exists: &mut BTreeMap<String, String>,
    present: &mut BTreeSet<(String, String)>,
    deleting: &mut BTreeSet<String>,
) {
    let key = |s: &String| (task.node.clone(), s.clone());
    match task.action {
        TaskAction::CreateNode => {
            let class = layout
                .iter()
                .find(|n| n.name == task.node)
                .map(|n| n.node_class.clone())
                .unwrap_or_default();
            exists.insert(task.node.clone(), class);
            deleting.remove(&task.node);
        }
        TaskAction::DeleteNode => {
            exists.remove(&task.node);
            present.retain(|(n, _)| *n != task.node);
            if state.state == TaskState::Running {
                deleting.insert(task.node.clone());
            }
        }
        TaskAction::Install => {
            if let Some(s) = &task.service {
                present.insert(key(s));
            }
        }
        TaskAction::Remove if state.state == TaskState::Succeeded => {
            if let Some(s) = &task.service {
                present.remove(&key(s));
            }
        }
        _ => {}
    }
}

fn node_packages(
    node: &str,
    present: &BTreeSet<(String, String)>,
    catalog: &Catalog,
) -> Vec<String> {
    let mut packages: Vec<String> = present
        .iter()
        .filter(|(n, _)| n == node)
        .flat_map(|(_, s)| service_packages(Some(s), catalog))
        .collect();
    packages.sort();
    packages.dedup();
    packages
}

/// The hook a running task asks its node for, if it has one. An
/// install's goes out with the packages it installs, in the same write:
/// the agent runs it once it has switched to them.
fn hook_task(
    task: &Task,
    state: &TaskStatus,
    side: &str,
    layout: &[LayoutNode],
    config: &BTreeMap<String, String>,
    w: &World,
) -> Option<NodeTask> {
    let hook = hook_of(task, w.catalog)?;
    let service = task.service.clone()?;
    Some(NodeTask {
        id: hook_id(w.plan, side, task),
        attempt: state.attempts,
        package: service_packages(Some(&service), w.catalog)
            .into_iter()
            .next(),
        service,
        action: task.action,
        argv: hook.argv.clone(),
        timeout_seconds: hook.timeout_seconds,
        env: hook_env(w.cluster, &task.node, layout, config),
    })
}

/// A hook's environment: the cluster, the node, which nodes run each
/// service (`THESEUS_NODES_<SERVICE>`, comma-separated) and the
/// configuration (`THESEUS_CONFIG_<KEY>`), names upper-cased with every
/// other character than a letter or digit made `_`.
pub fn hook_env(
    cluster: &str,
    node: &str,
    layout: &[LayoutNode],
    config: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("THESEUS_CLUSTER".to_owned(), cluster.to_owned());
    env.insert("THESEUS_CLUSTER_NODE".to_owned(), node.to_owned());
    for (service, nodes) in crate::api::nodes_by_service(layout) {
        env.insert(
            format!("THESEUS_NODES_{}", env_name(&service)),
            nodes.join(","),
        );
    }
    for (key, value) in config {
        env.insert(format!("THESEUS_CONFIG_{}", env_name(key)), value.clone());
    }
    env
}

fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Action as Hook, Actions, Operation, ServiceDefinitionSpec};

    /// The plan of creating `to` from nothing, and its inverse.
    fn create_plan(to: Vec<LayoutNode>, catalog: &Catalog) -> ClusterPlanSpec {
        let op = Operation::Create;
        let forward = crate::plan::plan(&[], &to, catalog, &op).unwrap();
        let back = crate::plan::inverse(&[], &to, catalog, &op).unwrap();
        ClusterPlanSpec {
            cluster: "c".into(),
            operation: op,
            from: Vec::new(),
            to,
            tasks: forward.tasks,
            config: BTreeMap::new(),
            from_config: BTreeMap::new(),
            inverse: back.tasks,
            request: None,
            from_request: None,
        }
    }

    /// `db` (package db--1, a start hook) and `app` needing db at runtime
    /// (package app--1, no hooks), on nodes n0 (db) and n1 (app).
    fn fixture() -> (ClusterPlanSpec, Catalog) {
        let mut catalog = Catalog::default();
        let start = Some(Hook {
            argv: vec!["bin/start".into()],
            timeout_seconds: 10,
        });
        catalog.services.insert(
            "db".into(),
            ServiceDefinitionSpec {
                packages: vec!["db--1".into()],
                actions: Actions {
                    start,
                    ..Actions::default()
                },
                ..ServiceDefinitionSpec::default()
            },
        );
        let mut app = ServiceDefinitionSpec {
            packages: vec!["app--1".into()],
            ..ServiceDefinitionSpec::default()
        };
        app.dependencies.runtime.requires = vec!["db".into()];
        catalog.services.insert("app".into(), app);
        let to = vec![
            LayoutNode {
                name: "n0".into(),
                node_class: "box".into(),
                services: vec!["db".into()],
            },
            LayoutNode {
                name: "n1".into(),
                node_class: "box".into(),
                services: vec!["app".into()],
            },
        ];
        (create_plan(to, &catalog), catalog)
    }

    fn world<'a>(
        nodes: &'a BTreeMap<String, NodeView>,
        catalog: &'a Catalog,
        now: i64,
    ) -> World<'a> {
        World {
            nodes,
            catalog,
            cluster: "c",
            plan: "p",
            halted: false,
            paused: false,
            manual: false,
            approved: false,
            task_retries: 1,
            on_failure: OnFailure::Rollback,
            cancel: false,
            revert: false,
            now: Timestamp::from_second(now).unwrap(),
            slots: None,
        }
    }

    fn state<'s>(st: &'s ClusterPlanStatus, id: &str) -> Option<&'s TaskStatus> {
        st.tasks.iter().find(|t| t.id == id)
    }

    fn node(active: &[&str], task: Option<(&str, i32, HookState)>) -> NodeView {
        NodeView {
            install: "ni".into(),
            registered: true,
            active: active.iter().map(|s| s.to_string()).collect(),
            tasks: Vec::from_iter(task.map(|(id, attempt, state)| NodeTaskStatus {
                id: id.into(),
                attempt,
                state,
                message: Some("exit code 1".into()),
                ..NodeTaskStatus::default()
            })),
            ..NodeView::default()
        }
    }

    #[test]
    fn a_tenant_s_workers_bound_the_tasks_a_plan_runs_at_once() {
        let (spec, catalog) = fixture();
        let empty = BTreeMap::new();
        let running = |st: &ClusterPlanStatus| -> Vec<String> {
            st.tasks
                .iter()
                .filter(|t| t.state == TaskState::Running)
                .map(|t| t.id.clone())
                .collect()
        };
        let one = World {
            slots: Some(1),
            ..world(&empty, &catalog, 0)
        };
        let st = step(&spec, &ClusterPlanStatus::default(), &one);
        assert_eq!(running(&st), ["n0/createNode"], "one worker: one task");
        let again = step(&spec, &st, &one);
        assert_eq!(running(&again), ["n0/createNode"], "still one");
        let none = World {
            slots: Some(0),
            ..world(&empty, &catalog, 0)
        };
        let st = step(&spec, &ClusterPlanStatus::default(), &none);
        assert!(
            running(&st).is_empty(),
            "every worker busy in the tenant's other plans: {:?}",
            running(&st)
        );
        assert_eq!(st.phase, PlanPhase::Running);
    }

    #[test]
    fn a_create_starts_nodes_first_switches_packages_then_hooks_and_succeeds() {
        let (spec, catalog) = fixture();
        let empty = BTreeMap::new();
        let st = step(
            &spec,
            &ClusterPlanStatus::default(),
            &world(&empty, &catalog, 0),
        );
        assert_eq!(st.phase, PlanPhase::Running);
        let running: Vec<&str> = st
            .tasks
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .map(|t| t.id.as_str())
            .collect();
        assert_eq!(running, ["n0/createNode", "n1/createNode"]);
        let want = desired(&spec, &st, &world(&empty, &catalog, 0));
        assert_eq!(want.exists.len(), 2, "both nodes should exist now");
        assert!(want.packages.values().all(Vec::is_empty), "no service yet");

        // The nodes register; bootstrap, then the installs switch packages.
        let mut nodes = BTreeMap::from([
            ("n0".into(), node(&[], None)),
            ("n1".into(), node(&[], None)),
        ]);
        let mut st = st;
        for t in 1..4 {
            st = step(&spec, &st, &world(&nodes, &catalog, t));
        }
        assert_eq!(
            state(&st, "n0/db/install").unwrap().state,
            TaskState::Running
        );
        let want = desired(&spec, &st, &world(&nodes, &catalog, 4));
        assert_eq!(want.packages["n0"], ["db--1"]);
        assert!(want.hooks.is_empty(), "db's install has no hook");

        // Switched: db's install has no hook, so it is done; the start hook
        // is asked for once its task runs, and app starts after db.
        nodes.insert("n0".into(), node(&["db--1"], None));
        nodes.insert("n1".into(), node(&["app--1"], None));
        for t in 4..12 {
            st = step(&spec, &st, &world(&nodes, &catalog, t));
        }
        assert_eq!(state(&st, "n0/db/start").unwrap().state, TaskState::Running);
        assert!(
            state(&st, "n1/app/start").is_none_or(|s| s.attempts == 0),
            "app starts after db"
        );
        let want = desired(&spec, &st, &world(&nodes, &catalog, 12));
        let hook = &want.hooks["n0"][0];
        assert_eq!(
            (hook.id.as_str(), hook.attempt),
            ("p/forward/n0/db/start", 1)
        );
        assert_eq!(hook.env["THESEUS_NODES_APP"], "n1");

        nodes.insert(
            "n0".into(),
            node(
                &["db--1"],
                Some(("p/forward/n0/db/start", 1, HookState::Succeeded)),
            ),
        );
        for t in 12..16 {
            st = step(&spec, &st, &world(&nodes, &catalog, t));
        }
        assert_eq!(st.phase, PlanPhase::Succeeded, "{:?}", st.tasks);
        assert_eq!(
            st.progress.as_deref(),
            Some(format!("{0}/{0}", spec.tasks.len()).as_str())
        );
        assert!(st.tasks.iter().all(|t| t.attempts == 1), "{:?}", st.tasks);
    }

    #[test]
    fn a_node_whose_install_waits_is_told_its_next_packages_until_the_install_starts() {
        let (_, mut catalog) = fixture();
        let app = catalog.services.get_mut("app").unwrap();
        app.dependencies.install.requires = vec!["db".into()];
        let spec = create_plan(fixture().0.to, &catalog);
        let mut nodes = BTreeMap::new();
        let mut st = step(
            &spec,
            &ClusterPlanStatus::default(),
            &world(&nodes, &catalog, 0),
        );
        // The nodes are coming up: n1's install will wait for n0's, n0's
        // only for n0 (it gets its target as soon as it is up).
        let want = desired(&spec, &st, &world(&nodes, &catalog, 0));
        assert_eq!(want.next.keys().collect::<Vec<_>>(), ["n1"]);
        for t in 1..4 {
            st = step(&spec, &st, &world(&nodes, &catalog, t));
            nodes = BTreeMap::from([
                ("n0".into(), node(&[], None)),
                ("n1".into(), node(&[], None)),
            ]);
        }
        // db installs now; app's install waits for db's: n1 is told what
        // it will install, n0 is not (its target says it).
        assert_eq!(
            state(&st, "n0/db/install").unwrap().state,
            TaskState::Running
        );
        assert!(state(&st, "n1/app/install").is_none_or(|s| s.attempts == 0));
        let want = desired(&spec, &st, &world(&nodes, &catalog, 4));
        assert_eq!(want.packages["n0"], ["db--1"]);
        assert!(want.packages["n1"].is_empty());
        assert_eq!(
            want.next,
            BTreeMap::from([("n1".to_owned(), vec!["app--1".to_owned()])])
        );
        // A plan turning back heads for the layout it started from (here
        // none): nothing is fetched ahead.
        let back = ClusterPlanStatus {
            phase: PlanPhase::RollingBack,
            ..st.clone()
        };
        let want = desired(&spec, &back, &world(&nodes, &catalog, 4));
        assert!(spec.from.is_empty());
        assert!(want.next.is_empty(), "{:?}", want.next);

        // Once app's install starts, its target holds them: nothing next.
        nodes.insert("n0".into(), node(&["db--1"], None));
        for t in 4..8 {
            st = step(&spec, &st, &world(&nodes, &catalog, t));
        }
        assert!(state(&st, "n1/app/install").is_some_and(|s| s.attempts == 1));
        let want = desired(&spec, &st, &world(&nodes, &catalog, 8));
        assert_eq!(want.packages["n1"], ["app--1"]);
        assert!(want.next.is_empty(), "{:?}", want.next);
    }

    #[test]
    fn an_install_hook_goes_out_with_its_packages_and_ends_after_the_switch() {
        let (spec, mut catalog) = fixture();
        let db = catalog.services.get_mut("db").unwrap();
        db.actions.install = Some(Hook {
            argv: vec!["bin/install".into()],
            timeout_seconds: 10,
        });
        let registered = BTreeMap::from([
            ("n0".into(), node(&[], None)),
            ("n1".into(), node(&[], None)),
        ]);
        let mut st = ClusterPlanStatus::default();
        for t in 0..4 {
            st = step(&spec, &st, &world(&registered, &catalog, t));
        }
        let install = "n0/db/install";
        assert_eq!(state(&st, install).unwrap().state, TaskState::Running);
        // One write tells the node both: the packages and the hook.
        let want = desired(&spec, &st, &world(&registered, &catalog, 4));
        assert_eq!(want.packages["n0"], ["db--1"]);
        assert_eq!(want.hooks["n0"][0].id, "p/forward/n0/db/install");
        assert_eq!(want.hooks["n0"][0].package.as_deref(), Some("db--1"));

        // A hook reported done before the switch shows does not end it.
        let hook = ("p/forward/n0/db/install", 1, HookState::Succeeded);
        let early = BTreeMap::from([
            ("n0".into(), node(&[], Some(hook))),
            ("n1".into(), node(&[], None)),
        ]);
        st = step(&spec, &st, &world(&early, &catalog, 5));
        assert_eq!(state(&st, install).unwrap().state, TaskState::Running);
        let switched = BTreeMap::from([
            ("n0".into(), node(&["db--1"], Some(hook))),
            ("n1".into(), node(&[], None)),
        ]);
        st = step(&spec, &st, &world(&switched, &catalog, 6));
        assert_eq!(state(&st, install).unwrap().state, TaskState::Succeeded);
    }

    /// Runs the create until db's start hook runs, on nodes that switch.
    fn until_db_starts(
        spec: &ClusterPlanSpec,
        catalog: &Catalog,
    ) -> (ClusterPlanStatus, BTreeMap<String, NodeView>) {
        let nodes = BTreeMap::from([
            ("n0".into(), node(&["db--1"], None)),
            ("n1".into(), node(&["app--1"], None)),
        ]);
        let mut st = ClusterPlanStatus::default();
        for t in 0..12 {
            st = step(spec, &st, &world(&nodes, catalog, t));
        }
        assert_eq!(state(&st, "n0/db/start").unwrap().state, TaskState::Running);
        (st, nodes)
    }

    /// One node running `db` with a hook for every step.
    fn chain() -> (ClusterPlanSpec, Catalog) {
        let hook = |name: &str| {
            Some(Hook {
                argv: vec![format!("bin/{name}")],
                timeout_seconds: 10,
            })
        };
        let mut catalog = Catalog::default();
        let actions = Actions {
            install: hook("install"),
            configure: hook("configure"),
            initialize: hook("initialize"),
            start: hook("start"),
            ..Actions::default()
        };
        let db = ServiceDefinitionSpec {
            packages: vec!["db--1".into()],
            actions,
            ..ServiceDefinitionSpec::default()
        };
        catalog.services.insert("db".into(), db);
        let to = vec![LayoutNode {
            name: "n0".into(),
            node_class: "box".into(),
            services: vec!["db".into()],
        }];
        (create_plan(to, &catalog), catalog)
    }

    fn reported(active: &[&str], reports: &[(&str, i32, HookState)]) -> NodeView {
        NodeView {
            tasks: reports
                .iter()
                .map(|(step, attempt, state)| NodeTaskStatus {
                    id: format!("p/forward/n0/db/{step}"),
                    attempt: *attempt,
                    state: *state,
                    message: Some(format!("{step} said no")),
                    ..NodeTaskStatus::default()
                })
                .collect(),
            ..node(active, None)
        }
    }

    fn queue(want: &Desired) -> Vec<(String, i32)> {
        want.hooks
            .get("n0")
            .into_iter()
            .flatten()
            .map(|h| {
                (
                    h.id.trim_start_matches("p/forward/n0/db/").to_owned(),
                    h.attempt,
                )
            })
            .collect()
    }

    fn attempts(st: &ClusterPlanStatus, step: &str) -> (TaskState, i32) {
        let s = state(st, &format!("n0/db/{step}")).unwrap();
        (s.state, s.attempts)
    }

    #[test]
    fn the_nodes_with_the_longest_chain_of_service_tasks_behind_them_rank_first() {
        // store ← api (runtime) ← worker (runtime), on nodes named against
        // the order of their chains.
        let mut catalog = Catalog::default();
        let service = |requires: &[&str]| {
            let mut s = ServiceDefinitionSpec {
                packages: vec!["p--1".into()],
                ..ServiceDefinitionSpec::default()
            };
            s.dependencies.runtime.requires = requires.iter().map(|r| r.to_string()).collect();
            s
        };
        catalog.services.insert("store".into(), service(&[]));
        catalog.services.insert("api".into(), service(&["store"]));
        catalog.services.insert("worker".into(), service(&["api"]));
        let node = |name: &str, service: &str| LayoutNode {
            name: name.into(),
            node_class: "box".into(),
            services: vec![service.into()],
        };
        let to = vec![
            node("a", "worker"),
            node("b", "api"),
            node("c", "store"),
            node("d", "worker"),
        ];
        let spec = create_plan(to, &catalog);
        let rank = ranks(&spec);
        // Each node's own four steps (install to start), then one start
        // for each service that waits for it at runtime.
        let want = BTreeMap::from([("a", 4), ("b", 5), ("c", 6), ("d", 4)]);
        let got: BTreeMap<&str, usize> = rank.iter().map(|(n, r)| (n.as_str(), *r)).collect();
        assert_eq!(got, want, "{:#?}", spec.tasks);
        // The inverse (a delete) counts too: a node that only the rollback
        // touches still ranks.
        let mut undo = spec.clone();
        undo.tasks.clear();
        assert_eq!(ranks(&undo).len(), 4, "{:#?}", undo.inverse);
    }

    #[test]
    fn a_nodes_next_hooks_are_queued_behind_the_one_it_runs_and_given_back_when_it_fails() {
        use HookState::{Failed, Running, Succeeded};
        let (spec, catalog) = chain();
        let mut nodes = BTreeMap::from([("n0".into(), node(&["db--1"], None))]);
        let st = step(
            &spec,
            &ClusterPlanStatus::default(),
            &world(&nodes, &catalog, 0),
        );
        let steps = ["install", "configure", "initialize", "start"];
        for s in steps {
            assert_eq!(attempts(&st, s), (TaskState::Running, 1), "{s}");
        }
        let want = desired(&spec, &st, &world(&nodes, &catalog, 0));
        let all: Vec<(String, i32)> = steps.iter().map(|s| ((*s).to_owned(), 1)).collect();
        assert_eq!(
            queue(&want),
            all,
            "the whole chain goes to the node, in order"
        );

        // Held: what is queued behind the running hook is given back.
        let held = World {
            halted: true,
            ..world(&nodes, &catalog, 1)
        };
        let st_held = step(&spec, &st, &held);
        assert_eq!(attempts(&st_held, "install"), (TaskState::Running, 1));
        assert_eq!(attempts(&st_held, "configure"), (TaskState::Pending, 0));
        assert_eq!(
            queue(&desired(&spec, &st_held, &held)),
            [("install".to_owned(), 1)]
        );

        // The node ran install, then configure failed: configure backs
        // off, what was queued behind it goes back to Pending, uncounted.
        let report = [("install", 1, Succeeded), ("configure", 1, Failed)];
        nodes.insert("n0".into(), reported(&["db--1"], &report));
        let st = step(&spec, &st, &world(&nodes, &catalog, 2));
        assert_eq!(attempts(&st, "install"), (TaskState::Succeeded, 1));
        assert_eq!(attempts(&st, "configure"), (TaskState::Pending, 1));
        assert_eq!(attempts(&st, "initialize"), (TaskState::Pending, 0));
        assert_eq!(attempts(&st, "start"), (TaskState::Pending, 0));
        let want = desired(&spec, &st, &world(&nodes, &catalog, 2));
        assert!(queue(&want).is_empty());
        assert!(want.finished_hooks.contains("p/forward/n0/db/install"));

        // The retry goes out with the rest queued again, at their first
        // attempt; the node runs them all and the plan is done.
        let st = step(&spec, &st, &world(&nodes, &catalog, 5));
        let want = desired(&spec, &st, &world(&nodes, &catalog, 5));
        let again = [("configure", 2), ("initialize", 1), ("start", 1)];
        let again: Vec<(String, i32)> = again.iter().map(|(s, a)| ((*s).to_owned(), *a)).collect();
        assert_eq!(queue(&want), again);
        let report = [("configure", 2, Succeeded), ("initialize", 1, Running)];
        nodes.insert("n0".into(), reported(&["db--1"], &report));
        let st = step(&spec, &st, &world(&nodes, &catalog, 6));
        assert_eq!(attempts(&st, "configure"), (TaskState::Succeeded, 2));
        assert_eq!(
            attempts(&st, "start"),
            (TaskState::Running, 1),
            "still queued"
        );
        let report = [("initialize", 1, Succeeded), ("start", 1, Succeeded)];
        nodes.insert("n0".into(), reported(&["db--1"], &report));
        let st = step(&spec, &st, &world(&nodes, &catalog, 7));
        assert_eq!(st.phase, PlanPhase::Succeeded);
    }

    #[test]
    fn a_failed_hook_is_retried_after_a_backoff_then_the_plan_rolls_back_what_ran() {
        let (spec, catalog) = fixture();
        let (st, mut nodes) = until_db_starts(&spec, &catalog);
        nodes.insert(
            "n0".into(),
            node(
                &["db--1"],
                Some(("p/forward/n0/db/start", 1, HookState::Failed)),
            ),
        );
        let st = step(&spec, &st, &world(&nodes, &catalog, 20));
        let db = state(&st, "n0/db/start").unwrap();
        assert_eq!((db.state, db.attempts), (TaskState::Pending, 1));
        assert_eq!(db.last_error.as_deref(), Some("exit code 1"));
        let st = step(&spec, &st, &world(&nodes, &catalog, 21));
        assert_eq!(
            state(&st, "n0/db/start").unwrap().state,
            TaskState::Pending,
            "backing off"
        );
        let st = step(&spec, &st, &world(&nodes, &catalog, 22));
        assert_eq!(state(&st, "n0/db/start").unwrap().attempts, 2, "the retry");
        let want = desired(&spec, &st, &world(&nodes, &catalog, 22));
        assert_eq!(
            want.hooks["n0"][0].attempt, 2,
            "a new attempt runs the hook again"
        );

        nodes.insert(
            "n0".into(),
            node(
                &["db--1"],
                Some(("p/forward/n0/db/start", 2, HookState::Failed)),
            ),
        );
        let st = step(&spec, &st, &world(&nodes, &catalog, 23));
        assert_eq!(st.phase, PlanPhase::RollingBack);
        assert!(
            st.message
                .as_deref()
                .unwrap()
                .contains("task n0/db/start failed after 2 attempts")
        );
        let skipped: Vec<&str> = st
            .rollback
            .iter()
            .filter(|t| t.state == TaskState::Skipped)
            .map(|t| t.id.as_str())
            .collect();
        assert!(
            skipped.contains(&"n1/app/stop"),
            "app never started: {skipped:?}"
        );
        assert!(!skipped.contains(&"n0/db/stop"), "db's start ran: undo it");
        assert!(!skipped.contains(&"n0/deleteNode"), "{skipped:?}");
    }

    #[test]
    fn a_failed_install_is_not_removed_by_the_rollback() {
        let (spec, catalog) = fixture();
        let mut nodes = BTreeMap::from([
            ("n0".into(), node(&[], None)),
            ("n1".into(), node(&["app--1"], None)),
        ]);
        let mut st = ClusterPlanStatus::default();
        for t in 0..4 {
            st = step(&spec, &st, &world(&nodes, &catalog, t));
        }
        assert_eq!(
            state(&st, "n0/db/install").unwrap().state,
            TaskState::Running
        );
        // The agent could not switch to db's set and rolled it back.
        let mut failed = node(&[], None);
        failed.failed_hash = Some("h".into());
        nodes.insert("n0".into(), failed);
        let mut w = world(&nodes, &catalog, 5);
        w.task_retries = 0;
        let st = step(&spec, &st, &w);
        assert_eq!(st.phase, PlanPhase::RollingBack, "{:?}", st.message);
        let skipped: Vec<&str> = st
            .rollback
            .iter()
            .filter(|t| t.state == TaskState::Skipped)
            .map(|t| t.id.as_str())
            .collect();
        assert!(
            skipped.contains(&"n0/db/remove"),
            "nothing of db is installed: {skipped:?}"
        );
        assert!(!skipped.contains(&"n0/deleteNode"), "{skipped:?}");
    }

    #[test]
    fn halt_and_pause_start_nothing_and_manual_plans_wait_for_approval() {
        let (spec, catalog) = fixture();
        let empty = BTreeMap::new();
        let mut w = world(&empty, &catalog, 0);
        w.halted = true;
        let st = step(&spec, &ClusterPlanStatus::default(), &w);
        assert_eq!(st.phase, PlanPhase::Running);
        assert!(
            st.tasks.iter().all(|t| t.state == TaskState::Pending),
            "{:?}",
            st.tasks
        );
        w.halted = false;
        w.paused = true;
        assert!(
            step(&spec, &st, &w)
                .tasks
                .iter()
                .all(|t| t.state == TaskState::Pending)
        );

        let mut w = world(&empty, &catalog, 0);
        w.manual = true;
        let st = step(&spec, &ClusterPlanStatus::default(), &w);
        assert_eq!(st.phase, PlanPhase::AwaitingApproval);
        assert!(st.tasks.is_empty());
        w.approved = true;
        let st = step(&spec, &st, &w);
        assert_eq!(st.phase, PlanPhase::Running);
        assert_eq!(
            st.tasks
                .iter()
                .filter(|t| t.state == TaskState::Running)
                .count(),
            2
        );
    }

    #[test]
    fn a_deleted_cluster_turns_its_plan_back_and_a_halt_policy_stops_it() {
        let (spec, catalog) = fixture();
        let (st, mut nodes) = until_db_starts(&spec, &catalog);
        let mut w = world(&nodes, &catalog, 30);
        w.cancel = true;
        let back = step(&spec, &st, &w);
        assert_eq!(back.phase, PlanPhase::RollingBack);
        assert_eq!(
            state(&back, "n0/db/start").unwrap().state,
            TaskState::Failed,
            "abandoned"
        );

        nodes.insert(
            "n0".into(),
            node(
                &["db--1"],
                Some(("p/forward/n0/db/start", 1, HookState::Failed)),
            ),
        );
        let mut w = world(&nodes, &catalog, 30);
        w.task_retries = 0;
        w.on_failure = OnFailure::Halt;
        let stopped = step(&spec, &st, &w);
        assert_eq!(stopped.phase, PlanPhase::Failed);
        assert!(
            stopped
                .message
                .as_deref()
                .unwrap()
                .contains("onFailure is Halt")
        );
        assert!(stopped.rollback.is_empty());
        // Stopped, it stays stopped until the cluster's spec is back at
        // where the plan started; then it turns back by its inverse.
        assert_eq!(step(&spec, &stopped, &w), stopped);
        w.revert = true;
        let reverting = step(&spec, &stopped, &w);
        assert_eq!(reverting.phase, PlanPhase::RollingBack, "{reverting:?}");
        assert!(
            reverting
                .message
                .as_deref()
                .unwrap()
                .contains("back at where the plan started")
        );
        assert!(!reverting.rollback.is_empty());
        // Once it rolls back it is no longer "stopped": no second turn.
        assert!(!stopped_forward(&reverting));
    }
}
