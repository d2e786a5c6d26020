//! What each page shows. A [`View`] names the objects it reads
//! ([`Source`]s); a [`Snapshot`] holds them; [`render`] turns a snapshot
//! into [`Fragment`]s: rows and panels with stable element ids. The page
//! handler renders a snapshot it LISTed; the live stream renders one from
//! its watches after each change and sends the fragments that differ, so
//! both always show the same HTML.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, ListParams};
use kube::{Client, ResourceExt};

use super::auth::{self, Access};
use super::columns::{self, Kind};
use super::nodes::AgentView;
use crate::api::conditions;
use crate::api::{Cluster, ClusterPlan, NodeInstall, NodePool, PackageSet, PlanPhase, Task};
use crate::shared::halt::{HALT_CONFIGMAP, Halt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Rows of the node table of a PackageSet's page.
pub const PAGE_SIZE: usize = 100;

/// A page's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum View {
    /// The halt, every PackageSet with its progress, every NodePool.
    Fleet,
    /// A PackageSet and one page of its nodes, optionally of one phase.
    PackageSet {
        name: String,
        page: usize,
        phase: Option<String>,
    },
    /// A NodePool and its instances.
    NodePool { name: String },
    /// Every object of a kind, in its printer columns.
    Kind { plural: String },
    /// A Cluster: its layout and its current plan, task by task.
    Cluster { namespace: String, name: String },
    /// A node: its NodeInstall, its services and their logs.
    Node { name: String },
}

/// What a view reads.
#[derive(Clone, Debug)]
pub enum Source {
    Halt,
    PackageSets,
    NodeInstalls,
    NodePools,
    Objects(&'static Kind),
    /// The Cluster `name` of `namespace`.
    Cluster(String, String),
    /// The ClusterPlans of a namespace.
    ClusterPlans(String),
    /// The NodeInstall `name`.
    Node(String),
}

impl View {
    /// The objects the view reads.
    pub fn sources(&self) -> Vec<Source> {
        match self {
            View::Fleet => vec![
                Source::Halt,
                Source::PackageSets,
                Source::NodeInstalls,
                Source::NodePools,
            ],
            View::PackageSet { .. } => {
                vec![Source::Halt, Source::PackageSets, Source::NodeInstalls]
            }
            View::NodePool { .. } => vec![Source::NodePools],
            View::Kind { plural } => columns::by_plural(plural)
                .map(|k| vec![Source::Objects(k)])
                .unwrap_or_default(),
            View::Cluster { namespace, name } => vec![
                Source::Cluster(namespace.clone(), name.clone()),
                Source::ClusterPlans(namespace.clone()),
            ],
            View::Node { name } => vec![Source::Node(name.clone())],
        }
    }

    /// The query string of the view's live stream.
    pub fn live_query(&self) -> String {
        let enc = |s: &str| {
            s.bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        };
        match self {
            View::Fleet => "view=fleet".to_owned(),
            View::PackageSet { name, page, phase } => format!(
                "view=packageset&name={}&page={page}{}",
                enc(name),
                phase
                    .as_deref()
                    .map(|p| format!("&phase={}", enc(p)))
                    .unwrap_or_default()
            ),
            View::NodePool { name } => format!("view=nodepool&name={}", enc(name)),
            View::Kind { plural } => format!("view=kind&plural={}", enc(plural)),
            View::Cluster { namespace, name } => format!(
                "view=cluster&namespace={}&name={}",
                enc(namespace),
                enc(name)
            ),
            View::Node { name } => format!("view=node&name={}", enc(name)),
        }
    }
}

/// The objects a view reads, as the user sees them.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub halt: Option<Halt>,
    pub sets: Vec<Arc<PackageSet>>,
    pub nodes: Vec<Arc<NodeInstall>>,
    pub pools: Vec<Arc<NodePool>>,
    pub objects: Vec<Arc<DynamicObject>>,
    pub clusters: Vec<Arc<Cluster>>,
    pub plans: Vec<Arc<ClusterPlan>>,
    /// What a node's agent said (a node's page, when the user may read it).
    pub agent: Option<AgentView>,
}

/// What the user may do on a page: the buttons shown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowed {
    pub halt: bool,
    pub pause: bool,
    pub scale: bool,
    pub approve: bool,
    /// Read a node's services and logs (`get` on `nodeinstalls/log`).
    pub logs: bool,
}

impl Allowed {
    /// Asks the API server (SelfSubjectAccessReviews, at once) what the
    /// client's user may do on `view`.
    pub async fn check(client: &Client, view: &View, namespace: &str) -> Self {
        let halt = Access {
            verb: "patch",
            group: "",
            resource: "configmaps",
            namespace: Some(namespace.to_owned()),
            name: Some(HALT_CONFIGMAP.to_owned()),
        };
        let patch = |resource: &'static str, namespace: &String| Access {
            verb: "patch",
            group: "theseus.dev",
            resource,
            namespace: Some(namespace.clone()),
            name: None,
        };
        let approve = match view {
            View::Cluster { namespace, .. } => Some(patch("clusterplans", namespace)),
            _ => None,
        };
        let (pause, scale) = match view {
            View::Fleet | View::PackageSet { .. } => (
                Some(Access {
                    verb: "patch",
                    group: "theseus.dev",
                    resource: "packagesets",
                    namespace: None,
                    name: None,
                }),
                None,
            ),
            View::NodePool { .. } => (
                None,
                Some(Access {
                    verb: "patch",
                    group: "theseus.dev",
                    resource: "nodepools",
                    namespace: None,
                    name: None,
                }),
            ),
            View::Kind { .. } | View::Node { .. } => (None, None),
            View::Cluster { namespace, .. } => (Some(patch("clusters", namespace)), None),
        };
        let logs = match view {
            View::Node { name } => Some(Access {
                verb: "get",
                group: "theseus.dev",
                resource: "nodeinstalls/log",
                namespace: None,
                name: Some(name.clone()),
            }),
            _ => None,
        };
        let wants_halt = matches!(view, View::Fleet | View::PackageSet { .. });
        let ask = |a: Option<Access>| async move {
            match a {
                Some(a) => auth::can(client, &a).await,
                None => false,
            }
        };
        let (halt, pause, scale, approve, logs) = futures::join!(
            ask(wants_halt.then_some(halt)),
            ask(pause),
            ask(scale),
            ask(approve),
            ask(logs)
        );
        Self {
            halt,
            pause,
            scale,
            approve,
            logs,
        }
    }
}

/// Reads a view's objects as the client's user (LISTs, at once).
pub async fn load(
    client: &Client,
    view: &View,
    namespace: &str,
    selector: Option<&str>,
) -> Result<Snapshot, kube::Error> {
    let mut snapshot = Snapshot::default();
    let params = || match selector {
        Some(s) => ListParams::default().labels(s),
        None => ListParams::default(),
    };
    for source in view.sources() {
        match source {
            Source::Halt => {
                snapshot.halt = Api::<ConfigMap>::namespaced(client.clone(), namespace)
                    .get_opt(HALT_CONFIGMAP)
                    .await?
                    .map(|cm| Halt::from_configmap(&cm));
            }
            Source::PackageSets => {
                snapshot.sets = Api::<PackageSet>::all(client.clone())
                    .list(&params())
                    .await?
                    .items
                    .into_iter()
                    .map(Arc::new)
                    .collect();
            }
            Source::NodeInstalls => {
                snapshot.nodes = Api::<NodeInstall>::all(client.clone())
                    .list(&params())
                    .await?
                    .items
                    .into_iter()
                    .map(Arc::new)
                    .collect();
            }
            Source::NodePools => {
                snapshot.pools = Api::<NodePool>::all(client.clone())
                    .list(&params())
                    .await?
                    .items
                    .into_iter()
                    .map(Arc::new)
                    .collect();
            }
            Source::Objects(kind) => {
                snapshot.objects = Api::<DynamicObject>::all_with(client.clone(), &kind.resource)
                    .list(&params())
                    .await?
                    .items
                    .into_iter()
                    .map(Arc::new)
                    .collect();
            }
            Source::Cluster(namespace, name) => {
                snapshot.clusters = Api::<Cluster>::namespaced(client.clone(), &namespace)
                    .get_opt(&name)
                    .await?
                    .map(Arc::new)
                    .into_iter()
                    .collect();
            }
            Source::ClusterPlans(namespace) => {
                snapshot.plans = Api::<ClusterPlan>::namespaced(client.clone(), &namespace)
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .map(Arc::new)
                    .collect();
            }
            Source::Node(name) => {
                snapshot.nodes = Api::<NodeInstall>::all(client.clone())
                    .get_opt(&name)
                    .await?
                    .map(Arc::new)
                    .into_iter()
                    .collect();
            }
        }
    }
    Ok(snapshot)
}

/// A piece of a page with a stable element id: a row of the table whose
/// body is `parent`, or (no parent) a panel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment {
    pub id: String,
    pub parent: Option<String>,
    pub html: String,
}

/// A view's fragments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered(pub Vec<Fragment>);

impl Rendered {
    /// The rows of table body `parent`, concatenated.
    pub fn rows(&self, parent: &str) -> String {
        self.0
            .iter()
            .filter(|f| f.parent.as_deref() == Some(parent))
            .map(|f| f.html.as_str())
            .collect()
    }

    /// Panel `id`.
    pub fn panel(&self, id: &str) -> String {
        self.0
            .iter()
            .find(|f| f.id == id && f.parent.is_none())
            .map(|f| f.html.clone())
            .unwrap_or_default()
    }

    pub(super) fn push(&mut self, id: String, parent: Option<&str>, template: impl Template) {
        let html = template.render().expect("dashboard templates render");
        self.0.push(Fragment {
            id,
            parent: parent.map(str::to_owned),
            html,
        });
    }
}

/// An element id for `name`: letters, digits and `-`, the rest escaped.
pub fn element_id(prefix: &str, name: &str) -> String {
    let mut id = format!("{prefix}-");
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '-' {
            id.push(c);
        } else {
            id.push_str(&format!("_{:x}_", c as u32));
        }
    }
    id
}

/// The fragments of `view` over `snapshot`.
pub fn render(view: &View, snapshot: &Snapshot, allowed: &Allowed) -> Rendered {
    let mut out = Rendered::default();
    match view {
        View::Fleet => {
            out.push("halt-banner".into(), None, banner(snapshot, allowed));
            for set in &snapshot.sets {
                let name = set.name_any();
                out.push(
                    element_id("set", &name),
                    Some("sets"),
                    SetRow::of(set, &snapshot.nodes),
                );
            }
            for pool in &snapshot.pools {
                out.push(
                    element_id("pool", &pool.name_any()),
                    Some("pools"),
                    PoolRow::of(pool),
                );
            }
        }
        View::PackageSet { name, page, phase } => {
            out.push("halt-banner".into(), None, banner(snapshot, allowed));
            let set = snapshot
                .sets
                .iter()
                .find(|s| s.name_any() == *name)
                .map(AsRef::as_ref);
            out.push(
                "set-summary".into(),
                None,
                SetSummary::of(name, set, &snapshot.nodes, allowed),
            );
            let mut nodes: Vec<&NodeInstall> = snapshot
                .nodes
                .iter()
                .map(AsRef::as_ref)
                .filter(|n| target_set(n) == Some(name.as_str()))
                .filter(|n| phase.as_deref().is_none_or(|p| phase_of(n) == p))
                .collect();
            nodes.sort_by_key(|n| n.name_any());
            let pages = nodes.len().div_ceil(PAGE_SIZE).max(1);
            let page = (*page).min(pages - 1);
            out.push(
                "node-pager".into(),
                None,
                Pager {
                    name: name.clone(),
                    page,
                    pages,
                    total: nodes.len(),
                    phase: phase.clone().unwrap_or_default(),
                },
            );
            for node in nodes.iter().skip(page * PAGE_SIZE).take(PAGE_SIZE) {
                out.push(
                    element_id("node", &node.name_any()),
                    Some("nodes"),
                    NodeRow::of(node),
                );
            }
        }
        View::NodePool { name } => {
            let pool = snapshot
                .pools
                .iter()
                .find(|p| p.name_any() == *name)
                .map(AsRef::as_ref);
            out.push("pool-summary".into(), None, PoolSummary::of(name, pool));
            for instance in pool
                .and_then(|p| p.status.as_ref())
                .map(|s| s.instances.as_slice())
                .unwrap_or_default()
            {
                out.push(
                    element_id("instance", &instance.id),
                    Some("instances"),
                    InstanceRow {
                        row_id: element_id("instance", &instance.id),
                        id: instance.id.clone(),
                        node: instance.node.clone().unwrap_or_default(),
                        state: instance.state.clone().unwrap_or_default(),
                        launched: instance
                            .launched
                            .as_ref()
                            .map(|t| t.0.to_string())
                            .unwrap_or_default(),
                        draining: instance.drain_started.is_some(),
                    },
                );
            }
        }
        View::Kind { plural } => {
            let Some(kind) = columns::by_plural(plural) else {
                return out;
            };
            let mut objects: Vec<&DynamicObject> =
                snapshot.objects.iter().map(AsRef::as_ref).collect();
            objects.sort_by_key(|o| (o.namespace(), o.name_any()));
            for object in objects {
                let json = serde_json::to_value(object).unwrap_or_default();
                let namespace = object.namespace();
                let name = object.name_any();
                let key = match &namespace {
                    Some(ns) => format!("{ns}/{name}"),
                    None => name.clone(),
                };
                let href = match kind.plural.as_str() {
                    "packagesets" => format!("/ui/packagesets/{name}"),
                    "nodepools" => format!("/ui/nodepools/{name}"),
                    "clusters" => format!("/ui/clusters/{key}"),
                    "nodeinstalls" => format!("/ui/nodes/{name}"),
                    _ => format!("/ui/kinds/{}/{key}", kind.plural),
                };
                out.push(
                    element_id("obj", &key),
                    Some("objects"),
                    ObjectRow {
                        id: element_id("obj", &key),
                        href,
                        namespace: namespace.unwrap_or_default(),
                        namespaced: kind.namespaced,
                        name,
                        cells: kind
                            .columns
                            .iter()
                            .map(|c| columns::cell(&json, &c.json_path))
                            .collect(),
                    },
                );
            }
        }
        View::Cluster { namespace, name } => {
            render_cluster(&mut out, namespace, name, snapshot, allowed)
        }
        View::Node { name } => render_node(&mut out, name, snapshot, allowed),
    }
    out
}

#[derive(Template)]
#[template(path = "dashboard/node_summary.html")]
pub struct NodeSummary {
    pub name: String,
    pub found: bool,
    pub phase: String,
    pub package_set: String,
    pub active: String,
    pub target: String,
    pub message: String,
    pub address: String,
    pub endpoint: String,
    pub agent: String,
    pub instance: String,
    pub heartbeat: String,
    pub badges: Vec<Badge>,
    pub hooks: Vec<HookLine>,
}

/// One hook the node ran for a plan.
pub struct HookLine {
    pub task: String,
    pub state: String,
    pub message: String,
}

#[derive(Template)]
#[template(path = "dashboard/service_row.html")]
pub struct ServiceRow {
    pub id: String,
    pub name: String,
    pub package: String,
    pub running: bool,
    pub pid: String,
    pub processes: u32,
    pub cpu: String,
    pub memory: String,
    pub restarts: u64,
}

#[derive(Template)]
#[template(path = "dashboard/node_logs.html")]
pub struct LogsPanel {
    /// Why there are no logs to show, if so.
    pub note: String,
    pub logs: Vec<(String, String)>,
}

/// The fragments of a node's page: its NodeInstall, and its services and
/// their logs (read from its agent) for users who may read them.
fn render_node(out: &mut Rendered, name: &str, snapshot: &Snapshot, allowed: &Allowed) {
    let node = snapshot
        .nodes
        .iter()
        .find(|n| n.name_any() == name)
        .map(AsRef::as_ref);
    out.push("node-summary".into(), None, summary(name, node));
    let note = if !allowed.logs {
        format!(
            "You may not read this node's services and logs (get on nodeinstalls/log, node {name})."
        )
    } else {
        match &snapshot.agent {
            None => "Reading the node's agent…".to_owned(),
            Some(AgentView::Unavailable(why)) => why.clone(),
            Some(AgentView::Read { .. }) => String::new(),
        }
    };
    let (services, logs) = match (&snapshot.agent, allowed.logs) {
        (Some(AgentView::Read { services, logs }), true) => (services.as_slice(), logs.as_slice()),
        _ => (&[][..], &[][..]),
    };
    for s in services {
        let id = element_id("svc", &s.name);
        out.push(
            id.clone(),
            Some("services"),
            ServiceRow {
                id,
                name: s.name.clone(),
                package: s.id.clone(),
                running: s.running,
                pid: s.pid.map(|p| p.to_string()).unwrap_or_default(),
                processes: s.processes,
                cpu: format!("{:.2}", s.cpu_seconds),
                memory: format!("{:.1} MiB", s.memory_bytes as f64 / (1024.0 * 1024.0)),
                restarts: s.restarts,
            },
        );
    }
    out.push(
        "node-logs".into(),
        None,
        LogsPanel {
            note,
            logs: logs
                .iter()
                .map(|(service, lines)| (service.clone(), lines.join("\n")))
                .collect(),
        },
    );
}

fn summary(name: &str, node: Option<&NodeInstall>) -> NodeSummary {
    let status = node.and_then(|n| n.status.clone()).unwrap_or_default();
    let target = node.and_then(|n| n.spec.target.as_ref());
    let text = |v: Option<String>| v.unwrap_or_default();
    NodeSummary {
        name: name.to_owned(),
        found: node.is_some(),
        phase: format!("{:?}", status.phase),
        package_set: text(target.map(|t| t.package_set.clone())),
        active: status.active.join(", "),
        target: short(target.map(|t| t.set_hash.as_str())),
        message: status_message(&status),
        address: text(status.address.clone()),
        endpoint: text(status.api_endpoint.clone()),
        agent: text(status.agent_version.clone()),
        instance: text(status.instance_id.clone()),
        heartbeat: status
            .heartbeat
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        badges: badges(&status.conditions),
        hooks: status
            .tasks
            .iter()
            .map(|t| HookLine {
                task: t.id.clone(),
                state: format!("{:?}", t.state),
                message: t.message.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// The fragments of a Cluster's page.
fn render_cluster(
    out: &mut Rendered,
    namespace: &str,
    name: &str,
    snapshot: &Snapshot,
    allowed: &Allowed,
) {
    let cluster = snapshot.clusters.iter().find(|c| c.name_any() == name);
    let status = cluster.and_then(|c| c.status.clone()).unwrap_or_default();
    let plan = status
        .plan
        .as_deref()
        .and_then(|p| snapshot.plans.iter().find(|x| x.name_any() == p));
    let plan_status = plan.and_then(|p| p.status.clone()).unwrap_or_default();
    out.push(
        "cluster-summary".into(),
        None,
        ClusterSummary {
            found: cluster.is_some(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            template: cluster.map(|c| c.spec.template.clone()).unwrap_or_default(),
            size: cluster.map(|c| c.spec.size).unwrap_or_default(),
            services: cluster
                .map(|c| c.spec.services.join(", "))
                .unwrap_or_default(),
            paused: cluster.is_some_and(|c| c.spec.paused),
            badges: badges(&status.conditions),
            plan: status.plan.clone().unwrap_or_default(),
            phase: plan
                .map(|_| format!("{:?}", plan_status.phase))
                .unwrap_or_default(),
            progress: plan_status.progress.clone().unwrap_or_default(),
            message: plan_status.message.clone().unwrap_or_default(),
            can_pause: allowed.pause,
            can_approve: allowed.approve && plan_status.phase == PlanPhase::AwaitingApproval,
            can_rollback: allowed.pause
                && cluster
                    .zip(plan)
                    .is_some_and(|(c, p)| crate::cluster::rollback::patch(c, p).is_ok()),
        },
    );
    for node in &status.layout {
        out.push(
            element_id("layout", &node.name),
            Some("layout"),
            LayoutRow {
                id: element_id("layout", &node.name),
                node: node.name.clone(),
                class: node.node_class.clone(),
                services: node.services.join(", "),
            },
        );
    }
    let Some(plan) = plan else {
        out.push("plan-dag".into(), None, PlanDag::default());
        return;
    };
    let states: BTreeMap<&str, &crate::api::TaskStatus> = plan_status
        .tasks
        .iter()
        .map(|t| (t.id.as_str(), t))
        .collect();
    let state_of = |id: &str| {
        states
            .get(id)
            .map(|s| format!("{:?}", s.state))
            .unwrap_or_else(|| "Pending".into())
    };
    out.push(
        "plan-dag".into(),
        None,
        PlanDag::of(&plan.spec.tasks, &state_of),
    );
    for (level, task) in levels(&plan.spec.tasks) {
        let state = states.get(task.id.as_str());
        out.push(
            element_id("task", &task.id),
            Some("tasks"),
            TaskRow {
                id: element_id("task", &task.id),
                task: task.id.clone(),
                level,
                node: task.node.clone(),
                service: task.service.clone().unwrap_or_default(),
                action: format!("{:?}", task.action),
                after: task.after.join(", "),
                state: state_of(&task.id),
                attempts: state.map(|s| s.attempts).unwrap_or_default(),
                error: state.and_then(|s| s.last_error.clone()).unwrap_or_default(),
            },
        );
    }
}

/// A plan drawn as its DAG: a column per level, a box per task coloured
/// by its state, an edge from each task to each one waiting for it.
#[derive(Template, Default)]
#[template(path = "dashboard/plan_dag.html")]
pub struct PlanDag {
    pub width: usize,
    pub height: usize,
    pub boxes: Vec<DagBox>,
    /// SVG path data of each edge, and whether the task it leads from is
    /// done.
    pub edges: Vec<(String, bool)>,
}

/// One task's box in a [`PlanDag`].
pub struct DagBox {
    pub x: usize,
    pub y: usize,
    pub label: String,
    pub title: String,
    pub state: String,
}

impl PlanDag {
    /// Box size and the gaps between boxes, in pixels.
    const W: usize = 150;
    const H: usize = 34;
    const GAP_X: usize = 46;
    const GAP_Y: usize = 10;

    /// The DAG of `tasks`, `state` giving each task's state by id.
    pub fn of(tasks: &[Task], state: &dyn Fn(&str) -> String) -> Self {
        let mut rows: BTreeMap<usize, usize> = BTreeMap::new();
        let mut at: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        let mut dag = PlanDag::default();
        for (level, task) in levels(tasks) {
            let row = rows.entry(level).or_default();
            let (x, y) = (
                level * (Self::W + Self::GAP_X),
                *row * (Self::H + Self::GAP_Y),
            );
            *row += 1;
            at.insert(task.id.as_str(), (x, y));
            let action = format!("{:?}", task.action);
            dag.boxes.push(DagBox {
                x,
                y,
                label: match &task.service {
                    Some(service) => format!("{action} {service}"),
                    None => action,
                },
                title: format!("{} on {}", task.id, task.node),
                state: state(&task.id),
            });
            dag.width = dag.width.max(x + Self::W);
            dag.height = dag.height.max(y + Self::H);
        }
        for task in tasks {
            let Some(&(x2, y2)) = at.get(task.id.as_str()) else {
                continue;
            };
            for before in &task.after {
                let Some(&(x1, y1)) = at.get(before.as_str()) else {
                    continue;
                };
                let (x1, y1, y2) = (x1 + Self::W, y1 + Self::H / 2, y2 + Self::H / 2);
                let mid = (x1 + x2) / 2;
                dag.edges.push((
                    format!("M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"),
                    state(before) == "Succeeded",
                ));
            }
        }
        dag
    }
}

/// A plan's tasks by level (one more than the highest level of the tasks
/// it waits for; 0 for those that wait for none), then in plan order: the
/// DAG as columns.
pub fn levels(tasks: &[Task]) -> Vec<(usize, &Task)> {
    let mut level: BTreeMap<&str, usize> = BTreeMap::new();
    // Plans list a task after those it waits for, so one pass settles
    // them; more passes settle any other order (a cycle stops at the
    // number of tasks).
    for _ in 0..tasks.len().max(1) {
        let mut changed = false;
        for task in tasks {
            let l = task
                .after
                .iter()
                .filter_map(|a| level.get(a.as_str()))
                .map(|l| l + 1)
                .max()
                .unwrap_or(0);
            if level.insert(task.id.as_str(), l) != Some(l) {
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut out: Vec<(usize, &Task)> = tasks
        .iter()
        .map(|t| (level.get(t.id.as_str()).copied().unwrap_or(0), t))
        .collect();
    out.sort_by_key(|(l, _)| *l);
    out
}

/// A Cluster's page header and buttons.
#[derive(Template)]
#[template(path = "dashboard/cluster_summary.html")]
pub struct ClusterSummary {
    pub found: bool,
    pub namespace: String,
    pub name: String,
    pub template: String,
    pub size: i32,
    pub services: String,
    pub paused: bool,
    pub badges: Vec<Badge>,
    pub plan: String,
    pub phase: String,
    pub progress: String,
    pub message: String,
    pub can_pause: bool,
    pub can_approve: bool,
    /// The plan stopped at a failure and may be rolled back by hand.
    pub can_rollback: bool,
}

/// A node of a Cluster's layout.
#[derive(Template)]
#[template(path = "dashboard/layout_row.html")]
pub struct LayoutRow {
    pub id: String,
    pub node: String,
    pub class: String,
    pub services: String,
}

/// A task of a Cluster's plan.
#[derive(Template)]
#[template(path = "dashboard/task_row.html")]
pub struct TaskRow {
    pub id: String,
    pub task: String,
    pub level: usize,
    pub node: String,
    pub service: String,
    pub action: String,
    pub after: String,
    pub state: String,
    pub attempts: i32,
    pub error: String,
}

fn target_set(node: &NodeInstall) -> Option<&str> {
    node.spec.target.as_ref().map(|t| t.package_set.as_str())
}

fn phase_of(node: &NodeInstall) -> String {
    node.status
        .as_ref()
        .map(|s| format!("{:?}", s.phase))
        .unwrap_or_else(|| "Unreported".to_owned())
}

/// A node's reason and message, as one line: `Untrusted: set … refused`.
fn status_message(status: &crate::api::NodeInstallStatus) -> String {
    [status.reason.as_deref(), status.message.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(": ")
}

fn short(hash: Option<&str>) -> String {
    hash.map(|h| h.chars().take(10).collect())
        .unwrap_or_default()
}

fn banner(snapshot: &Snapshot, allowed: &Allowed) -> HaltBanner {
    HaltBanner {
        halted: snapshot.halt.is_some(),
        message: snapshot
            .halt
            .as_ref()
            .map(Halt::message)
            .unwrap_or_default(),
        at: snapshot
            .halt
            .as_ref()
            .map(|h| h.at.clone())
            .unwrap_or_default(),
        can_halt: allowed.halt,
    }
}

/// The halt: a banner while it is in force, and the button that sets or
/// clears it for those allowed to.
#[derive(Template)]
#[template(path = "dashboard/halt_banner.html")]
pub struct HaltBanner {
    pub halted: bool,
    pub message: String,
    pub at: String,
    pub can_halt: bool,
}

/// A condition as a badge.
#[derive(Clone, Debug)]
pub struct Badge {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    /// `ok`, `bad` or `off`: the badge's colour.
    pub tone: &'static str,
}

impl Badge {
    fn of(c: &Condition) -> Self {
        // Conditions whose True is trouble, and those that only say
        // something is under way.
        let bad_when_true = matches!(
            c.type_.as_str(),
            "Halted" | "Degraded" | "Stalled" | "Conflict" | "Failed"
        );
        let in_progress = matches!(c.type_.as_str(), "Progressing" | "Scaling" | "Reconciling");
        let tone = match (c.status.as_str(), bad_when_true, in_progress) {
            ("True", _, true) => "ok",
            (_, _, true) => "off",
            ("True", false, _) | ("False", true, _) => "ok",
            ("True", true, _) | ("False", false, _) => "bad",
            _ => "off",
        };
        Self {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            tone,
        }
    }
}

pub(super) fn badges(conditions: &[Condition]) -> Vec<Badge> {
    conditions.iter().map(Badge::of).collect()
}

/// How many of a set's nodes are in each phase.
fn phase_counts(name: &str, nodes: &[Arc<NodeInstall>]) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for node in nodes.iter().filter(|n| target_set(n) == Some(name)) {
        *counts.entry(phase_of(node)).or_default() += 1;
    }
    counts.into_iter().collect()
}

/// A PackageSet on the fleet page.
#[derive(Template)]
#[template(path = "dashboard/set_row.html")]
pub struct SetRow {
    pub id: String,
    pub name: String,
    pub packages: String,
    pub desired: i32,
    pub updated: i32,
    pub ready: i32,
    pub failed: i32,
    pub paused: bool,
    pub halted: bool,
    pub phases: Vec<(String, usize)>,
    pub badges: Vec<Badge>,
}

impl SetRow {
    fn of(set: &PackageSet, nodes: &[Arc<NodeInstall>]) -> Self {
        let name = set.name_any();
        let status = set.status.clone().unwrap_or_default();
        Self {
            id: element_id("set", &name),
            packages: set.spec.packages.join(" "),
            desired: status.desired_nodes,
            updated: status.updated_nodes,
            ready: status.ready_nodes,
            failed: status.failed_nodes,
            paused: set.spec.paused,
            halted: conditions::is_true(&status.conditions, "Halted"),
            phases: phase_counts(&name, nodes),
            badges: badges(&status.conditions),
            name,
        }
    }
}

/// A PackageSet's page header: its spec, progress, conditions and buttons.
#[derive(Template)]
#[template(path = "dashboard/set_summary.html")]
pub struct SetSummary {
    pub found: bool,
    pub name: String,
    pub repository: String,
    pub packages: Vec<String>,
    pub set_hash: String,
    pub desired: i32,
    pub updated: i32,
    pub ready: i32,
    pub failed: i32,
    pub paused: bool,
    pub phases: Vec<(String, usize)>,
    pub badges: Vec<Badge>,
    pub can_pause: bool,
}

impl SetSummary {
    fn of(
        name: &str,
        set: Option<&PackageSet>,
        nodes: &[Arc<NodeInstall>],
        allowed: &Allowed,
    ) -> Self {
        let status = set.and_then(|s| s.status.clone()).unwrap_or_default();
        let packages = set.map(|s| s.spec.packages.clone()).unwrap_or_default();
        Self {
            found: set.is_some(),
            name: name.to_owned(),
            repository: set.map(|s| s.spec.repository.clone()).unwrap_or_default(),
            packages,
            set_hash: short(status.set_hash.as_deref()),
            desired: status.desired_nodes,
            updated: status.updated_nodes,
            ready: status.ready_nodes,
            failed: status.failed_nodes,
            paused: set.is_some_and(|s| s.spec.paused),
            phases: phase_counts(name, nodes),
            badges: badges(&status.conditions),
            can_pause: allowed.pause,
        }
    }
}

/// The pager of a PackageSet's nodes.
#[derive(Template)]
#[template(path = "dashboard/pager.html")]
pub struct Pager {
    pub name: String,
    pub page: usize,
    pub pages: usize,
    pub total: usize,
    pub phase: String,
}

/// A node of a PackageSet.
#[derive(Template)]
#[template(path = "dashboard/node_row.html")]
pub struct NodeRow {
    pub id: String,
    pub name: String,
    pub phase: String,
    pub active: String,
    pub target: String,
    pub message: String,
    pub heartbeat: String,
    pub failed: bool,
}

impl NodeRow {
    fn of(node: &NodeInstall) -> Self {
        let status = node.status.clone().unwrap_or_default();
        let phase = phase_of(node);
        let message = status_message(&status);
        Self {
            id: element_id("node", &node.name_any()),
            name: node.name_any(),
            failed: matches!(phase.as_str(), "Failed" | "RolledBack"),
            phase,
            active: short(status.active_hash.as_deref()),
            target: short(node.spec.target.as_ref().map(|t| t.set_hash.as_str())),
            message,
            heartbeat: status
                .heartbeat
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
        }
    }
}

/// A NodePool on the fleet page.
#[derive(Template)]
#[template(path = "dashboard/pool_row.html")]
pub struct PoolRow {
    pub id: String,
    pub name: String,
    pub provider: String,
    pub replicas: i32,
    pub current: i32,
    pub ready: i32,
    pub badges: Vec<Badge>,
}

impl PoolRow {
    fn of(pool: &NodePool) -> Self {
        let status = pool.status.clone().unwrap_or_default();
        Self {
            id: element_id("pool", &pool.name_any()),
            name: pool.name_any(),
            provider: format!("{:?}", pool.spec.provider.type_),
            replicas: pool.spec.replicas,
            current: status.replicas,
            ready: status.ready_replicas,
            badges: badges(&status.conditions),
        }
    }
}

/// A NodePool's page header and scale form.
#[derive(Template)]
#[template(path = "dashboard/pool_summary.html")]
pub struct PoolSummary {
    pub found: bool,
    pub name: String,
    pub provider: String,
    pub replicas: i32,
    pub current: i32,
    pub ready: i32,
    pub badges: Vec<Badge>,
}

impl PoolSummary {
    fn of(name: &str, pool: Option<&NodePool>) -> Self {
        let status = pool.and_then(|p| p.status.clone()).unwrap_or_default();
        Self {
            found: pool.is_some(),
            name: name.to_owned(),
            provider: pool
                .map(|p| format!("{:?}", p.spec.provider.type_))
                .unwrap_or_default(),
            replicas: pool.map(|p| p.spec.replicas).unwrap_or_default(),
            current: status.replicas,
            ready: status.ready_replicas,
            badges: badges(&status.conditions),
        }
    }
}

/// An instance of a NodePool.
#[derive(Template)]
#[template(path = "dashboard/instance_row.html")]
pub struct InstanceRow {
    pub row_id: String,
    pub id: String,
    pub node: String,
    pub state: String,
    pub launched: String,
    pub draining: bool,
}

/// An object in its kind's printer columns.
#[derive(Template)]
#[template(path = "dashboard/object_row.html")]
pub struct ObjectRow {
    pub id: String,
    pub href: String,
    pub namespaced: bool,
    pub namespace: String,
    pub name: String,
    pub cells: Vec<String>,
}

#[cfg(test)]
mod tests;
