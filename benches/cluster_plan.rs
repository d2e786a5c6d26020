//! Plans and executes a Cluster `create` of 50 nodes running 4 services,
//! with a real `theseus operator`, real agents launched by a Local
//! NodePool, and service hooks that each take a fixed time (a `/bin/sh`
//! script that sleeps); then compares the plan's wall time (its first task
//! started → its last task finished) with two references computed from
//! the same plan in the same run:
//!
//! - **ideal**: the critical path of the plan's DAG (its tasks and their
//!   `after` edges), where a task that runs a hook (install, configure,
//!   initialize, start) costs the hook time, a createNode the node launch
//!   time (the median createNode duration of this run), and a bootstrap
//!   nothing: the executor finishes it on the same registration its
//!   createNode waited for (the figures with a bootstrap costing the
//!   launch time too, and with each createNode costing its own node's
//!   launch instead of the median, are printed as well). An install's
//!   package switch is not in the ideal. Target: actual ÷ ideal ≤ 1.15.
//! - **staged** ("Coopr-style"): the same tasks in stages with a barrier
//!   between them, a task's stage being its depth (the longest path from a
//!   root) and each task taking the time it took in this run (from when
//!   its dependencies were done, as a task queued on its node behind
//!   another is recorded started early); the total is
//!   the sum over the stages of the longest task of each. actual ÷ staged
//!   is the gain of starting each task as soon as its own dependencies
//!   finished.
//!
//! It also prints the operator's CPU time and peak memory during the plan,
//! and where the time went: how long the operator took to hand a task's
//! hook to its node, the node to run it, and the operator to notice it
//! finished, with the intervals between the plan's status writes.
//!
//! The catalog: `store` on 3 nodes; `api` (one node per ten) whose install
//! and runtime require the store and which uses `cache` (one node per 25);
//! `worker` on the other nodes, needing the api at runtime; one service
//! per node. Task times are those at which the benchmark saw the plan's
//! status change through a watch (millisecond resolution): the status's
//! own timestamps hold whole seconds only, and the figures from them are
//! printed last.
//!
//!     cargo bench --bench cluster_plan        (needs the testbed: testbed/testbed up)
//!
//! Environment: THESEUS_BENCH_NODES (50, at least 6), THESEUS_BENCH_HOOK_MS
//! (1000). Run by `cargo test --all-targets` (without `--bench`) it does a
//! smoke run of 6 nodes with 200 ms hooks, which still checks that the
//! plan succeeded. Without the testbed it is skipped, or fails when `CI`
//! is set. The operator's log, and every task's times as watched
//! (`tasks.json`), are under `target/test-logs/RUN/`.

#[allow(dead_code)] // the benchmark uses a part of the tests' support
#[path = "../tests/it/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use support::fleet::{Operator, RUN_LABEL};
use support::{TestNamespace, TestbedEnv, test_logs};
use theseus::api::{
    Cluster, ClusterPlan, ClusterPlanStatus, HookState, NodeInstall, PlanPhase, Task, TaskAction,
    TaskState,
};
use theseus::cluster::drive::NODE_LABEL;
use theseus::cluster::execute::hook_id;

/// The Cluster's name.
const CLUSTER: &str = "bench";
/// The smallest cluster the template allows: 3 stores, an api, a cache
/// and a worker.
const MIN_NODES: u64 = 6;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seconds since the epoch, now.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The hook of every action of every service: it takes `ms`.
fn hook_script(ms: u64) -> String {
    format!("#!/bin/sh\nexec sleep {}.{:03}\n", ms / 1000, ms % 1000)
}

/// The four services, with their install and runtime dependencies.
const SERVICES: [&str; 4] = ["store", "api", "cache", "worker"];

/// How many nodes run each service in a cluster of `nodes`.
fn counts(nodes: u64) -> [(&'static str, u64); 4] {
    let api = (nodes / 10).max(1);
    let cache = (nodes / 25).max(1);
    [
        ("store", 3),
        ("api", api),
        ("cache", cache),
        ("worker", nodes - 3 - api - cache),
    ]
}

/// The catalog (repository, services, a Local node class, a template
/// with one service per node) and the Cluster.
fn manifests(run: &str, url: &str, key: &str, nodes: u64, hook_ms: u64) -> (String, String) {
    let timeout = hook_ms / 1000 + 60;
    let actions = |service: &str| {
        let hook = format!("{{argv: [/bin/sh, bin/{run}-{service}], timeoutSeconds: {timeout}}}");
        format!(
            "{{install: {hook}, configure: {hook}, initialize: {hook}, start: {hook}, stop: {hook}, remove: {hook}}}"
        )
    };
    let deps = |service: &str| match service {
        "api" => format!(
            "{{install: {{requires: [{run}-store]}}, runtime: {{requires: [{run}-store], uses: [{run}-cache]}}}}"
        ),
        "worker" => format!("{{runtime: {{requires: [{run}-api]}}}}"),
        _ => "{}".to_owned(),
    };
    let mut catalog = support::shop::repository_and_class(run, url, key);
    for service in SERVICES {
        catalog += &format!(
            "apiVersion: theseus.dev/v1alpha1
kind: ServiceDefinition
metadata: {{name: {run}-{service}, labels: {{{RUN_LABEL}: {run}}}}}
spec:
  repository: {run}
  packages: [{run}-{service}--1.0]
  dependencies: {}
  actions: {}
---
",
            deps(service),
            actions(service)
        );
    }
    let names: Vec<String> = SERVICES.iter().map(|s| format!("{run}-{s}")).collect();
    let names = names.join(", ");
    let mut constraints = String::new();
    for (service, n) in counts(nodes) {
        let max = if service == "worker" {
            String::new()
        } else {
            format!(", max: {n}")
        };
        constraints += &format!("      {run}-{service}: {{count: {{min: {n}{max}}}}}\n");
    }
    catalog += &format!(
        "apiVersion: theseus.dev/v1alpha1
kind: ClusterTemplate
metadata: {{name: {run}, labels: {{{RUN_LABEL}: {run}}}}}
spec:
  compatibility: {{services: [{names}], nodeClasses: [{run}-box]}}
  defaults: {{services: [{names}], nodeClass: {run}-box}}
  constraints:
    size: {{min: {MIN_NODES}, max: 1000}}
    layout: {{cantCoexist: [[{names}]]}}
    services:
{constraints}"
    );
    let cluster = format!(
        "apiVersion: theseus.dev/v1alpha1
kind: Cluster
metadata: {{name: {CLUSTER}, labels: {{{RUN_LABEL}: {run}}}}}
spec:
  template: {run}
  size: {nodes}
  strategy: {{taskRetries: 1}}
"
    );
    (catalog, cluster)
}

/// What the benchmark saw through its watches, with the time it saw it.
#[derive(Default)]
struct Seen {
    /// Per (plan, task): the attempt and when it was first seen Running.
    started: HashMap<(String, String), (i32, f64)>,
    /// Per (plan, task): when it was first seen Succeeded.
    finished: HashMap<(String, String), f64>,
    /// Per plan: when each new version of it was seen.
    writes: HashMap<String, Vec<f64>>,
    versions: HashMap<String, String>,
    /// Per plan: its phase as last seen.
    phases: HashMap<String, (PlanPhase, Option<String>)>,
    /// Per NodeInstall: when its first heartbeat was seen.
    registered: HashMap<String, f64>,
    /// Per NodeInstall: when it first reported active packages.
    switched: HashMap<String, f64>,
    /// Per NodeInstall: when the operator's first target on it was seen.
    targeted: HashMap<String, f64>,
    /// Per (hook id, attempt): when the operator's task on the node was
    /// seen.
    asked: HashMap<(String, i32), f64>,
    /// Per (hook id, attempt): when the node reported it Running.
    hook_running: HashMap<(String, i32), f64>,
    /// Per (hook id, attempt): when the node reported it finished.
    hook_done: HashMap<(String, i32), f64>,
}

impl Seen {
    fn plan(&mut self, plan: &ClusterPlan, at: f64) {
        let name = plan.name_any();
        let version = plan.resource_version().unwrap_or_default();
        if self.versions.insert(name.clone(), version.clone()) != Some(version) {
            self.writes.entry(name.clone()).or_default().push(at);
        }
        let Some(st) = &plan.status else { return };
        self.phases
            .insert(name.clone(), (st.phase, st.message.clone()));
        for t in &st.tasks {
            let key = (name.clone(), t.id.clone());
            let newer = self.started.get(&key).is_none_or(|(a, _)| *a < t.attempts);
            if t.state == TaskState::Running && newer {
                self.started.insert(key.clone(), (t.attempts, at));
            }
            if t.state == TaskState::Succeeded {
                self.finished.entry(key).or_insert(at);
            }
        }
    }

    fn node(&mut self, ni: &NodeInstall, at: f64) {
        let name = ni.name_any();
        if ni.spec.target.is_some() {
            self.targeted.entry(name.clone()).or_insert(at);
        }
        for t in &ni.spec.tasks {
            self.asked.entry((t.id.clone(), t.attempt)).or_insert(at);
        }
        let Some(st) = &ni.status else { return };
        if st.heartbeat.is_some() {
            self.registered.entry(name.clone()).or_insert(at);
        }
        if !st.active.is_empty() {
            self.switched.entry(name).or_insert(at);
        }
        for t in &st.tasks {
            let key = (t.id.clone(), t.attempt);
            match t.state {
                HookState::Running => self.hook_running.entry(key).or_insert(at),
                HookState::Succeeded | HookState::Failed => self.hook_done.entry(key).or_insert(at),
            };
        }
    }
}

/// Watches the objects of kind `K` that `config` selects, handing each
/// version seen to `record` with the time it was seen.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    seen: Arc<Mutex<Seen>>,
    record: fn(&mut Seen, &K, f64),
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    tokio::spawn(async move {
        let mut events = watcher(api, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(event) = events.next().await {
            if let Ok(object) = event {
                record(&mut seen.lock().unwrap(), &object, now());
            }
        }
    })
}

/// When a task started and finished, in seconds since the epoch.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: f64,
    end: f64,
}

impl Span {
    fn duration(&self) -> f64 {
        self.end - self.start
    }
}

/// The tasks' spans as the plan's status records them (whole seconds).
fn recorded(st: &ClusterPlanStatus) -> BTreeMap<String, Span> {
    let secs = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| {
        t.0.as_millisecond() as f64 / 1000.0
    };
    st.tasks
        .iter()
        .filter_map(|t| {
            Some((
                t.id.clone(),
                Span {
                    start: secs(t.started.as_ref()?),
                    end: secs(t.finished.as_ref()?),
                },
            ))
        })
        .collect()
}

/// The tasks' spans as the watch saw them, each falling back to the
/// recorded one when the watch missed a version.
fn watched(
    seen: &Seen,
    plan: &str,
    recorded: &BTreeMap<String, Span>,
) -> (BTreeMap<String, Span>, usize) {
    let mut missed = 0;
    let spans = recorded
        .iter()
        .map(|(id, rec)| {
            let key = (plan.to_owned(), id.clone());
            let span = match (seen.started.get(&key), seen.finished.get(&key)) {
                (Some((_, start)), Some(end)) => Span {
                    start: *start,
                    end: *end,
                },
                _ => {
                    missed += 1;
                    *rec
                }
            };
            (id.clone(), span)
        })
        .collect();
    (spans, missed)
}

/// The tasks' indexes in a topological order, and each one's depth (the
/// longest path, in edges, from a task with no `after`).
fn order(tasks: &[Task]) -> (Vec<usize>, Vec<usize>) {
    let index: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    let mut waiting = vec![0usize; tasks.len()];
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    for (i, t) in tasks.iter().enumerate() {
        for a in &t.after {
            let j = *index
                .get(a.as_str())
                .unwrap_or_else(|| panic!("task {} is after {a}, which the plan lacks", t.id));
            waiting[i] += 1;
            next[j].push(i);
        }
    }
    let mut ready: VecDeque<usize> = (0..tasks.len()).filter(|&i| waiting[i] == 0).collect();
    let mut depth = vec![0usize; tasks.len()];
    let mut out = Vec::with_capacity(tasks.len());
    while let Some(j) = ready.pop_front() {
        out.push(j);
        for &i in &next[j] {
            depth[i] = depth[i].max(depth[j] + 1);
            waiting[i] -= 1;
            if waiting[i] == 0 {
                ready.push_back(i);
            }
        }
    }
    assert_eq!(out.len(), tasks.len(), "the plan's tasks form a cycle");
    (out, depth)
}

/// The costliest path through the DAG with `cost` per task: its cost and
/// its tasks, first to last.
fn critical_path(tasks: &[Task], topo: &[usize], cost: impl Fn(&Task) -> f64) -> (f64, Vec<usize>) {
    let index: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    let mut finish = vec![0.0f64; tasks.len()];
    let mut via: Vec<Option<usize>> = vec![None; tasks.len()];
    for &i in topo {
        let before = tasks[i]
            .after
            .iter()
            .map(|a| index[a.as_str()])
            .max_by(|a, b| finish[*a].total_cmp(&finish[*b]));
        finish[i] = before.map_or(0.0, |j| finish[j]) + cost(&tasks[i]);
        via[i] = before;
    }
    let Some(mut last) = (0..tasks.len()).max_by(|a, b| finish[*a].total_cmp(&finish[*b])) else {
        return (0.0, Vec::new());
    };
    let total = finish[last];
    let mut path = vec![last];
    while let Some(j) = via[last] {
        path.push(j);
        last = j;
    }
    path.reverse();
    (total, path)
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// `median m s, max x s (n)` of `values`.
fn spread(values: &[f64]) -> String {
    if values.is_empty() {
        return "none seen".into();
    }
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    format!(
        "median {:6.2} s, max {:6.2} s  ({} tasks)",
        median(values.to_vec()),
        max,
        values.len()
    )
}

fn runs_hook(action: TaskAction) -> bool {
    !matches!(
        action,
        TaskAction::CreateNode | TaskAction::Bootstrap | TaskAction::DeleteNode
    )
}

/// The figures of one set of task spans.
struct Figures {
    launch: f64,
    ideal: f64,
    ideal_bootstrap_launch: f64,
    path: Vec<usize>,
    actual: f64,
    staged: f64,
    stages: usize,
}

fn figures(
    tasks: &[Task],
    topo: &[usize],
    depth: &[usize],
    spans: &BTreeMap<String, Span>,
    hook: f64,
) -> Figures {
    // A task's time from when it could run: a task queued on its node
    // behind another is recorded started before that one ends.
    let duration = |t: &Task| {
        let ready = t
            .after
            .iter()
            .filter_map(|a| spans.get(a).map(|s| s.end))
            .fold(f64::MIN, f64::max);
        spans.get(&t.id).map_or(0.0, |s| s.end - s.start.max(ready))
    };
    let launch = median(
        tasks
            .iter()
            .filter(|t| t.action == TaskAction::CreateNode)
            .map(duration)
            .collect(),
    );
    let cost = |bootstrap: f64| {
        move |t: &Task| match t.action {
            TaskAction::CreateNode => launch,
            TaskAction::Bootstrap => bootstrap,
            a if runs_hook(a) => hook,
            _ => 0.0,
        }
    };
    let (ideal, path) = critical_path(tasks, topo, cost(0.0));
    let (ideal_bootstrap_launch, _) = critical_path(tasks, topo, cost(launch));
    let first = spans.values().map(|s| s.start).fold(f64::MAX, f64::min);
    let last = spans.values().map(|s| s.end).fold(f64::MIN, f64::max);
    let mut stages: BTreeMap<usize, f64> = BTreeMap::new();
    for (t, d) in tasks.iter().zip(depth) {
        let longest = stages.entry(*d).or_default();
        *longest = longest.max(duration(t));
    }
    Figures {
        launch,
        ideal,
        ideal_bootstrap_launch,
        path,
        actual: last - first,
        staged: stages.values().sum(),
        stages: stages.len(),
    }
}

/// Prints where the tasks' time went: each step between a task's start
/// and its end, as the watches saw the operator's and the nodes' writes.
fn breakdown(
    tasks: &[Task],
    st: &ClusterPlanStatus,
    spans: &BTreeMap<String, Span>,
    seen: &Seen,
    plan_ref: &str,
    install_of: &HashMap<String, String>,
) -> (f64, HashMap<String, String>) {
    let mut rows: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut details: HashMap<String, String> = HashMap::new();
    // A step's time from the task's start, for the path as run.
    let step =
        |name: &str, at: Option<&f64>, start: f64| at.map(|a| format!("{name} {:+.2}", a - start));
    let mut by_action: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut push = |row: usize, value: Option<f64>| {
        if let Some(v) = value {
            rows.entry(row).or_default().push(v);
        }
    };
    for t in tasks {
        let span = spans[&t.id];
        by_action
            .entry(t.action.as_str())
            .or_default()
            .push(span.duration());
        let ready = t.after.iter().map(|a| spans[a].end).max_by(f64::total_cmp);
        push(9, ready.map(|r| span.start - r));
        let ni = install_of.get(&t.node);
        match t.action {
            TaskAction::CreateNode => {
                let at = ni.and_then(|n| seen.registered.get(n));
                push(0, at.map(|a| a - span.start));
                push(1, at.map(|a| span.end - a));
                if let Some(d) = step("registered", at, span.start) {
                    details.insert(t.id.clone(), d);
                }
            }
            TaskAction::Bootstrap => push(2, Some(span.duration())),
            a if runs_hook(a) => {
                let attempt = st
                    .tasks
                    .iter()
                    .find(|s| s.id == t.id)
                    .map_or(1, |s| s.attempts);
                let key = (hook_id(plan_ref, "forward", t), attempt);
                let mut handed = Some(span.start);
                let mut steps = Vec::new();
                if a == TaskAction::Install {
                    let target = ni.and_then(|n| seen.targeted.get(n));
                    let active = ni.and_then(|n| seen.switched.get(n));
                    push(3, target.map(|t| t - span.start));
                    push(4, target.zip(active).map(|(t, a)| a - t));
                    handed = active.map(|a| a.max(span.start));
                    steps.push(step("target", target, span.start));
                    steps.push(step("active", active, span.start));
                }
                let asked = seen.asked.get(&key);
                let running = seen.hook_running.get(&key);
                let done = seen.hook_done.get(&key);
                steps.push(step("hook", asked, span.start));
                steps.push(step("running", running, span.start));
                steps.push(step("done", done, span.start));
                let steps: Vec<String> = steps.into_iter().flatten().collect();
                details.insert(t.id.clone(), steps.join(", "));
                push(5, handed.zip(asked).map(|(h, a)| a - h));
                push(6, asked.zip(running).map(|(a, r)| r - a));
                push(7, running.zip(done).map(|(r, d)| d - r));
                push(8, done.map(|d| span.end - d));
            }
            _ => {}
        }
    }
    let labels = [
        "createNode start → node registered (pool, agent)",
        "node registered → createNode done (operator)",
        "bootstrap, start → done (operator)",
        "install start → target on the node (operator)",
        "target on the node → packages active (agent)",
        "task started → its hook on the node (operator)",
        "hook on the node → reported Running (agent)",
        "hook Running → reported done (the hook)",
        "hook reported done → task done (operator)",
        "last dependency done → task started",
    ];
    println!("  where the time goes (as watched):");
    for (i, label) in labels.iter().enumerate() {
        let values = rows.get(&i).cloned().unwrap_or_default();
        println!("    {label:<50} {}", spread(&values));
    }
    for (action, durations) in &by_action {
        println!(
            "    {:<50} {}",
            format!("{action} duration"),
            spread(durations)
        );
    }
    (median(rows.get(&4).cloned().unwrap_or_default()), details)
}

/// Prints the chain of tasks that ended the plan, as it ran: from the
/// last task to finish, back through the dependency that finished last.
fn as_run(
    tasks: &[Task],
    spans: &BTreeMap<String, Span>,
    details: &HashMap<String, String>,
    run: &str,
) {
    let by_id: HashMap<&str, &Task> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let first = spans.values().map(|s| s.start).fold(f64::MAX, f64::min);
    let end = |id: &str| spans.get(id).map_or(f64::MIN, |s| s.end);
    let Some(mut task) = tasks
        .iter()
        .max_by(|a, b| end(&a.id).total_cmp(&end(&b.id)))
    else {
        return;
    };
    let mut chain = vec![task];
    while let Some(before) = task
        .after
        .iter()
        .max_by(|a, b| end(a).total_cmp(&end(b)))
        .and_then(|a| by_id.get(a.as_str()))
    {
        chain.push(before);
        task = before;
    }
    println!(
        "  the path that ended the plan, as it ran (seconds from the first start; \
         in brackets, what the watches saw, from the task's start):"
    );
    for t in chain.iter().rev() {
        let s = spans[&t.id];
        let seen = details
            .get(&t.id)
            .map_or(String::new(), |d| format!("  [{d}]"));
        println!(
            "    {:>6.2} → {:>6.2}  ({:>5.2} s)  {}{seen}",
            s.start - first,
            s.end - first,
            s.duration(),
            t.id.replace(&format!("{run}-"), "")
        );
    }
}

/// Everything the run started and made, undone when dropped (also when
/// the benchmark fails): the operator stopped first (so that it neither
/// relaunches the agents nor starts a delete plan), the agents its Local
/// pools started killed by pid, then the run's objects deleted, with the
/// finalizers nobody is left to remove taken off.
struct Cleanup {
    tb: TestbedEnv,
    run: String,
    namespace: String,
    state: PathBuf,
    operator: Option<Operator>,
}

impl Cleanup {
    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.tb.kubectl(args);
        if !out.status.success() {
            eprintln!(
                "cleanup: kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut operator) = self.operator.take() {
            let pid = operator.pid().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while operator.try_wait().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            operator.kill();
        }
        let pools: Vec<String> = std::fs::read_dir(self.state.join("nodepools"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let mut agents = Vec::new();
        for pool in &pools {
            agents.extend(support::pools::agent_pids(&self.state, pool));
        }
        for pid in &agents {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let alive = |pid: &u32| Path::new(&format!("/proc/{pid}")).exists();
        while agents.iter().any(alive) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for pid in agents.iter().filter(|p| alive(p)) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let ns = self.namespace.clone();
        let unfinalize = r#"{"metadata":{"finalizers":null}}"#;
        let cluster = format!("cluster/{CLUSTER}");
        self.kubectl(&[
            "delete",
            "-n",
            &ns,
            &cluster,
            "--wait=false",
            "--ignore-not-found",
        ]);
        self.kubectl(&[
            "patch", "-n", &ns, &cluster, "--type", "merge", "-p", unfinalize,
        ]);
        let selector = format!("{RUN_LABEL}={}", self.run);
        for pool in self
            .kubectl(&["get", "nodepools", "-l", &selector, "-o", "name"])
            .lines()
        {
            self.kubectl(&["delete", pool, "--wait=false"]);
            self.kubectl(&["patch", pool, "--type", "merge", "-p", unfinalize]);
        }
        self.kubectl(&[
            "delete",
            "nodeinstalls,servicedefinitions,nodeclasses,clustertemplates,packagerepositories",
            "-l",
            &selector,
            "--wait=false",
        ]);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(tb) = support::testbed() else {
        return;
    };
    let full = std::env::args().any(|a| a == "--bench");
    let nodes = env_or("THESEUS_BENCH_NODES", if full { 50 } else { 6 });
    let hook_ms = env_or("THESEUS_BENCH_HOOK_MS", if full { 1000 } else { 200 });
    assert!(
        nodes >= MIN_NODES,
        "THESEUS_BENCH_NODES is {nodes}: the template needs {MIN_NODES} nodes at least"
    );
    let hook = hook_ms as f64 / 1000.0;
    support::apply_crds(&tb);
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "cplan").await;
    let run = ns.name.clone();
    let work = tempfile::tempdir().unwrap();
    let names: Vec<String> = SERVICES.iter().map(|s| format!("{run}-{s}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (server, key) = support::shop::hook_repository(work.path(), &names, &hook_script(hook_ms));
    let state = work.path().join("state");
    let state_arg = state.to_str().unwrap().to_owned();
    let logs = test_logs(&run);
    let mut cleanup = Cleanup {
        tb: tb.clone(),
        run: run.clone(),
        namespace: ns.name.clone(),
        state: state.clone(),
        operator: None,
    };
    let operator = Operator::start_with(
        &tb,
        &ns.name,
        &run,
        "bench",
        &logs,
        &["--state-dir", &state_arg, "--cluster-name", &run],
        &[
            ("THESEUS_TRUSTED_KEYS", &key),
            ("THESEUS_ALLOWED_REPOSITORIES", &server.url),
        ],
    );
    let pid = operator.pid();
    cleanup.operator = Some(operator);

    let seen = Arc::new(Mutex::new(Seen::default()));
    let plans: Api<ClusterPlan> = Api::namespaced(client.clone(), &ns.name);
    let selector = format!("{RUN_LABEL}={run}");
    let watches = [
        watch(
            plans.clone(),
            watcher::Config::default(),
            seen.clone(),
            Seen::plan,
        ),
        watch(
            Api::<NodeInstall>::all(client.clone()),
            watcher::Config::default().labels(&selector),
            seen.clone(),
            Seen::node,
        ),
    ];

    let (catalog, cluster) = manifests(&run, &server.url, &key, nodes, hook_ms);
    let out = tb.kubectl_stdin(&["apply"], &catalog);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu_before, _) = support::run::usage(pid);
    eprintln!("creating cluster {CLUSTER} of {nodes} nodes, hooks of {hook_ms} ms …");
    let out = tb.kubectl_stdin(&["apply", "-n", &ns.name], &cluster);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kubectl waits for Available; a plan that fails ends the wait early.
    let timeout = 300 + nodes * 12 * hook_ms.max(1000) / 1000;
    let mut wait = tokio::process::Command::from(tb.kubectl_command(&[
        "wait",
        "-n",
        &ns.name,
        "--for=condition=Available",
        &format!("cluster/{CLUSTER}"),
        &format!("--timeout={timeout}s"),
    ]));
    wait.kill_on_drop(true);
    let wait = wait.output();
    tokio::pin!(wait);
    loop {
        tokio::select! {
            out = &mut wait => {
                let out = out.expect("kubectl runs");
                assert!(
                    out.status.success(),
                    "the cluster did not become Available in {timeout} s: {}; plans: {:?}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    seen.lock().unwrap().phases
                );
                break;
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                let failed = seen.lock().unwrap().phases.iter().find_map(|(name, (phase, message))| {
                    matches!(phase, PlanPhase::Failed | PlanPhase::RollingBack | PlanPhase::RolledBack)
                        .then(|| format!("plan {name} is {phase:?}: {}", message.as_deref().unwrap_or_default()))
                });
                if let Some(why) = failed {
                    panic!("{why}");
                }
            }
        }
    }
    let (cpu_after, peak_kib) = support::run::usage(pid);
    // The last status writes reach the watches.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for w in &watches {
        w.abort();
    }

    let clusters: Api<Cluster> = Api::namespaced(client.clone(), &ns.name);
    let cl = clusters.get(CLUSTER).await.unwrap();
    let plan_name = cl
        .status
        .as_ref()
        .and_then(|s| s.plan.clone())
        .expect("the cluster names its plan");
    let plan = plans.get(&plan_name).await.unwrap();
    assert_eq!(plan.spec.operation.name(), "create");
    let st = plan.status.clone().unwrap_or_default();
    assert_eq!(st.phase, PlanPhase::Succeeded, "{:?}", st.message);
    let tasks = &plan.spec.tasks;
    let retried = st.tasks.iter().filter(|t| t.attempts > 1).count();
    let rec = recorded(&st);
    assert_eq!(rec.len(), tasks.len(), "every task has a start and an end");
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let (spans, missed) = watched(&seen, &plan_name, &rec);
    let (topo, depth) = order(tasks);
    let fig = figures(tasks, &topo, &depth, &spans, hook);
    let fig_rec = figures(tasks, &topo, &depth, &rec, hook);

    let layout: Vec<String> = counts(nodes)
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    println!(
        "cluster create: {nodes} nodes ({}), {} services, hooks of {hook_ms} ms",
        layout.join(", "),
        SERVICES.len()
    );
    println!(
        "  tasks                                       {:>8}",
        tasks.len()
    );
    println!(
        "  stages (depth of the DAG)                   {:>8}",
        fig.stages
    );
    println!(
        "  critical path                               {:>8} tasks: {}",
        fig.path.len(),
        fig.path
            .iter()
            .map(|&i| tasks[i].id.replace(&format!("{run}-"), ""))
            .collect::<Vec<_>>()
            .join(" → ")
    );
    println!("  hook time                                   {hook:>8.2} s");
    println!(
        "  node launch time (median createNode)        {:>8.2} s",
        fig.launch
    );
    println!(
        "  ideal (critical path)                       {:>8.2} s",
        fig.ideal
    );
    println!(
        "  actual (first task start → last task end)   {:>8.2} s",
        fig.actual
    );
    println!(
        "  ratio actual / ideal                        {:>8.3}   (target ≤ 1.15)",
        fig.actual / fig.ideal
    );
    println!(
        "  staged, Coopr-style (barrier per stage)     {:>8.2} s",
        fig.staged
    );
    println!(
        "  ratio actual / staged                       {:>8.3}",
        fig.actual / fig.staged
    );
    println!(
        "  ratio ideal / staged                        {:>8.3}",
        fig.ideal / fig.staged
    );
    println!(
        "  operator CPU during the plan                {:>8.2} s",
        cpu_after - cpu_before
    );
    println!(
        "  operator peak memory (VmHWM)                {:>8.1} MiB",
        peak_kib as f64 / 1024.0
    );
    println!(
        "  tasks retried                               {retried:>8}\n  \
         tasks timed from the status (missed by the watch) {missed:>2}"
    );

    // Where the time goes, from what the nodes reported.
    let installs = Api::<NodeInstall>::all(client.clone())
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items;
    let install_of: HashMap<String, String> = installs
        .iter()
        .filter_map(|ni| Some((ni.labels().get(NODE_LABEL)?.clone(), ni.name_any())))
        .collect();
    let plan_ref = format!("{plan_name}.{}", plan.uid().unwrap_or_default());
    let (switch, details) = breakdown(tasks, &st, &spans, &seen, &plan_ref, &install_of);
    let writes = seen.writes.get(&plan_name).cloned().unwrap_or_default();
    let intervals: Vec<f64> = writes.windows(2).map(|w| w[1] - w[0]).collect();
    println!(
        "    plan versions seen: {}, apart by {}",
        writes.len(),
        spread(&intervals).replace(" tasks", " intervals")
    );
    let first = spans.values().map(|s| s.start).fold(f64::MAX, f64::min);
    let mut longest: Vec<(f64, f64)> = writes.windows(2).map(|w| (w[1] - w[0], w[0])).collect();
    longest.sort_by(|a, b| b.0.total_cmp(&a.0));
    let longest: Vec<String> = longest
        .iter()
        .take(3)
        .map(|(gap, at)| format!("{gap:.2} s after {:+.2} s", at - first))
        .collect();
    println!(
        "    longest waits between plan versions: {} (from the first task start)",
        longest.join(", ")
    );
    as_run(tasks, &spans, &details, &run);
    // Every task's times, for a closer look: tasks.json next to the
    // operator's log.
    let rel = |at: Option<&f64>| at.map(|a| ((a - first) * 1000.0).round() / 1000.0);
    let rows: Vec<serde_json::Value> = tasks
        .iter()
        .map(|t| {
            let span = spans[&t.id];
            let ni = install_of.get(&t.node);
            let attempt = st
                .tasks
                .iter()
                .find(|s| s.id == t.id)
                .map_or(1, |s| s.attempts);
            let key = (hook_id(&plan_ref, "forward", t), attempt);
            serde_json::json!({
                "id": t.id, "node": t.node, "action": t.action.as_str(),
                "start": rel(Some(&span.start)), "end": rel(Some(&span.end)),
                "registered": rel(ni.and_then(|n| seen.registered.get(n))),
                "target": rel(ni.and_then(|n| seen.targeted.get(n))),
                "active": rel(ni.and_then(|n| seen.switched.get(n))),
                "hook": rel(seen.asked.get(&key)),
                "running": rel(seen.hook_running.get(&key)),
                "done": rel(seen.hook_done.get(&key)),
            })
        })
        .collect();
    let writes: Vec<Option<f64>> = writes.iter().map(|w| rel(Some(w))).collect();
    let dump = serde_json::json!({ "tasks": rows, "planVersions": writes });
    let _ = std::fs::write(logs.join("tasks.json"), dump.to_string());
    let log = std::fs::read_to_string(logs.join("operator-bench.log")).unwrap_or_default();
    let lost = log.matches("stepping down").count();
    if lost > 0 {
        println!(
            "  NOTE: the operator lost its leader lease {lost} time(s) during the run \
             (`--lease-seconds 4`, as the tests start it); its controllers stopped meanwhile"
        );
    }
    println!("  from the status's own timestamps (whole seconds):");
    println!(
        "    launch {:.2} s, ideal {:.2} s, actual {:.2} s, ratio {:.3}, staged {:.2} s, \
         actual / staged {:.3}, ideal / staged {:.3}",
        fig_rec.launch,
        fig_rec.ideal,
        fig_rec.actual,
        fig_rec.actual / fig_rec.ideal,
        fig_rec.staged,
        fig_rec.actual / fig_rec.staged,
        fig_rec.ideal / fig_rec.staged
    );
    println!(
        "  ideal if a bootstrap cost the launch time too {:>6.2} s (ratio {:.3})",
        fig.ideal_bootstrap_launch,
        fig.actual / fig.ideal_bootstrap_launch
    );
    let (ideal_switch, _) = critical_path(tasks, &topo, |t| match t.action {
        TaskAction::CreateNode => fig.launch,
        TaskAction::Install => hook + switch,
        a if runs_hook(a) => hook,
        _ => 0.0,
    });
    println!(
        "  ideal if an install cost its package switch too ({switch:.2} s, the median) \
         {ideal_switch:.2} s (ratio {:.3})",
        fig.actual / ideal_switch
    );
    // The launch is the pool's, not the plan's: with each createNode at
    // the time its own node took (the first machines up go to the
    // critical path), what is left is the executor's.
    let (ideal_own, _) = critical_path(tasks, &topo, |t| match t.action {
        TaskAction::CreateNode => spans.get(&t.id).map_or(fig.launch, |s| s.end - s.start),
        a if runs_hook(a) => hook,
        _ => 0.0,
    });
    println!(
        "  ideal if each createNode cost its own node's launch {ideal_own:>6.2} s (ratio {:.3})",
        fig.actual / ideal_own
    );
    drop(cleanup);
    drop(server);
    ns.delete(&client).await;
}
