//! The planner's rules, one table or case each.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::{Action, Error, Operation, Phase, Plan, Task, inverse, plan};
use crate::api::{Dependencies, LayoutNode, ServiceDefinitionSpec};
use crate::layout::Catalog;

// ---- helpers -----------------------------------------------------------

/// A catalog from `(name, "install.requires=a,b runtime.uses=c provides=x")`.
pub(super) fn catalog(defs: &[(&str, &str)]) -> Catalog {
    let mut catalog = Catalog::default();
    for (name, fields) in defs {
        let mut d = Dependencies::default();
        for field in fields.split_whitespace() {
            let (key, values) = field.split_once('=').expect("KEY=VALUES");
            let values: Vec<String> = values.split(',').map(String::from).collect();
            match key {
                "provides" => d.provides = values,
                "install.requires" => d.install.requires = values,
                "install.uses" => d.install.uses = values,
                "runtime.requires" => d.runtime.requires = values,
                "runtime.uses" => d.runtime.uses = values,
                other => panic!("no dependency field {other}"),
            }
        }
        let spec = ServiceDefinitionSpec {
            dependencies: d,
            ..Default::default()
        };
        catalog.services.insert((*name).to_owned(), spec);
    }
    catalog
}

/// A Hadoop-like catalog: HDFS, ZooKeeper, HBase on both, and Hive on
/// whatever provides `sql`.
fn hadoop() -> Catalog {
    catalog(&[
        ("java", ""),
        ("zookeeper", "install.requires=java"),
        ("namenode", "install.requires=java runtime.uses=zookeeper"),
        (
            "datanode",
            "install.requires=java runtime.requires=namenode",
        ),
        (
            "hbase-master",
            "install.requires=java runtime.requires=datanode,zookeeper",
        ),
        ("hbase-regionserver", "runtime.requires=hbase-master"),
        ("mysql", "provides=sql"),
        ("hive", "install.uses=java runtime.requires=sql,namenode"),
    ])
}

/// A layout from `"node-1=a,b"` (class `standard`) or `"node-1:large=a"`.
pub(super) fn layout(nodes: &[&str]) -> Vec<LayoutNode> {
    nodes
        .iter()
        .map(|spec| {
            let (name, services) = spec.split_once('=').unwrap_or((spec, ""));
            let (name, class) = name.split_once(':').unwrap_or((name, "standard"));
            LayoutNode {
                name: name.to_owned(),
                node_class: class.to_owned(),
                services: services
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            }
        })
        .collect()
}

fn ids(plan: &Plan) -> Vec<&str> {
    plan.tasks.iter().map(|t| t.id.as_str()).collect()
}

fn has(plan: &Plan, id: &str) -> bool {
    plan.tasks.iter().any(|t| t.id == id)
}

fn tasks_on<'a>(plan: &'a Plan, node: &str) -> Vec<&'a str> {
    plan.tasks
        .iter()
        .filter(|t| t.node == node)
        .map(|t| t.id.as_str())
        .collect()
}

/// Whether task `first` finishes before task `then` starts in every run
/// of the plan: `then` waits for it through `after`, directly or not.
pub(super) fn before(plan: &Plan, first: &str, then: &str) -> bool {
    let by_id: BTreeMap<&str, &Task> = plan.tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    assert!(
        by_id.contains_key(first),
        "no task {first} in {:?}",
        ids(plan)
    );
    assert!(
        by_id.contains_key(then),
        "no task {then} in {:?}",
        ids(plan)
    );
    let mut seen = BTreeSet::new();
    let mut stack = vec![then];
    while let Some(id) = stack.pop() {
        for a in &by_id[id].after {
            if a == first {
                return true;
            }
            if seen.insert(a.as_str()) {
                stack.push(a);
            }
        }
    }
    false
}

fn ok(old: &[&str], new: &[&str], catalog: &Catalog, operation: Operation) -> Plan {
    plan(&layout(old), &layout(new), catalog, &operation).expect("a plan")
}

fn err(old: &[&str], new: &[&str], catalog: &Catalog, operation: Operation) -> Error {
    plan(&layout(old), &layout(new), catalog, &operation).expect_err("no plan")
}

fn reconfigure(services: &[&str]) -> Operation {
    Operation::Reconfigure {
        services: services.iter().map(|s| (*s).to_owned()).collect(),
    }
}

// ---- create: tasks and ids ---------------------------------------------

#[test]
fn create_gives_each_node_its_tasks_with_readable_ids() {
    let catalog = catalog(&[("zookeeper", "")]);
    let plan = ok(&[], &["node-1=zookeeper"], &catalog, Operation::Create);
    assert_eq!(
        ids(&plan),
        [
            "node-1/createNode",
            "node-1/bootstrap",
            "node-1/zookeeper/install",
            "node-1/zookeeper/configure",
            "node-1/zookeeper/initialize",
            "node-1/zookeeper/start",
        ]
    );
    let install = &plan.tasks[2];
    assert_eq!(install.node, "node-1");
    assert_eq!(install.service.as_deref(), Some("zookeeper"));
    assert_eq!(install.action, Action::Install);
    assert_eq!(install.after, ["node-1/bootstrap"]);
    assert_eq!(plan.tasks[0].service, None);
    assert!(plan.tasks[0].after.is_empty());
}

#[test]
fn create_creates_and_bootstraps_a_node_before_any_of_its_services() {
    let plan = ok(
        &[],
        &["node-1=java,namenode", "node-2=java,datanode"],
        &hadoop(),
        Operation::Create,
    );
    for (node, service) in [
        ("node-1", "java"),
        ("node-1", "namenode"),
        ("node-2", "datanode"),
    ] {
        let create = format!("{node}/createNode");
        let bootstrap = format!("{node}/bootstrap");
        assert!(before(&plan, &create, &bootstrap));
        for action in ["install", "configure", "initialize", "start"] {
            let task = format!("{node}/{service}/{action}");
            assert!(
                before(&plan, &bootstrap, &task),
                "{bootstrap} before {task}"
            );
        }
    }
}

#[test]
fn each_added_service_is_installed_configured_initialized_and_started_in_turn() {
    let plan = ok(
        &[],
        &["node-1=java,zookeeper"],
        &hadoop(),
        Operation::Create,
    );
    for service in ["java", "zookeeper"] {
        let steps = ["install", "configure", "initialize", "start"]
            .map(|a| format!("node-1/{service}/{a}"));
        for pair in steps.windows(2) {
            assert!(before(&plan, &pair[0], &pair[1]), "{pair:?}");
        }
    }
}

#[test]
fn start_comes_after_initialize_of_the_same_service() {
    let plan = ok(&[], &["node-1=zookeeper"], &hadoop(), Operation::Create);
    let start = plan.tasks.iter().find(|t| t.id == "node-1/zookeeper/start");
    assert_eq!(
        start.map(|t| t.after.clone()),
        Some(vec!["node-1/zookeeper/initialize".to_owned()])
    );
}

// ---- ordering across nodes ---------------------------------------------

#[test]
fn install_waits_for_the_install_requirements_on_other_nodes() {
    let plan = ok(
        &[],
        &["node-1=java", "node-2=zookeeper", "node-3=java"],
        &hadoop(),
        Operation::Create,
    );
    assert!(before(
        &plan,
        "node-1/java/install",
        "node-2/zookeeper/install"
    ));
    assert!(before(
        &plan,
        "node-3/java/install",
        "node-2/zookeeper/install"
    ));
    assert!(!before(
        &plan,
        "node-1/java/start",
        "node-2/zookeeper/install"
    ));
}

#[test]
fn install_waits_for_the_services_it_uses_when_they_are_present() {
    let plan = ok(
        &[],
        &["node-1=java", "node-2=hive,mysql,namenode"],
        &hadoop(),
        Operation::Create,
    );
    assert!(before(&plan, "node-1/java/install", "node-2/hive/install"));
}

#[test]
fn start_waits_for_the_runtime_requirements_on_other_nodes() {
    let plan = ok(
        &[],
        &[
            "node-1=java,namenode",
            "node-2=java,datanode",
            "node-3=java,datanode",
        ],
        &hadoop(),
        Operation::Create,
    );
    for node in ["node-2", "node-3"] {
        let start = format!("{node}/datanode/start");
        assert!(before(&plan, "node-1/namenode/start", &start));
        assert!(!before(&plan, &start, "node-1/namenode/start"));
    }
}

#[test]
fn start_waits_for_the_services_that_provide_a_required_name() {
    let plan = ok(
        &[],
        &["node-1=java,namenode", "node-2=mysql", "node-3=hive"],
        &hadoop(),
        Operation::Create,
    );
    assert!(before(&plan, "node-2/mysql/start", "node-3/hive/start"));
    assert!(before(&plan, "node-1/namenode/start", "node-3/hive/start"));
}

#[test]
fn start_waits_for_the_services_it_uses_when_they_are_present() {
    let with = ok(
        &[],
        &["node-1=java,namenode", "node-2=zookeeper"],
        &hadoop(),
        Operation::Create,
    );
    assert!(before(
        &with,
        "node-2/zookeeper/start",
        "node-1/namenode/start"
    ));
}

#[test]
fn uses_of_an_absent_service_adds_no_order() {
    // Present together, web and cache would wait for each other; cache
    // is not in the layout, so web's `uses` adds nothing.
    let catalog = catalog(&[
        ("web", "install.uses=cache runtime.uses=cache"),
        ("cache", "install.requires=web runtime.requires=web"),
    ]);
    let plan = ok(&[], &["node-1=web"], &catalog, Operation::Create);
    for task in &plan.tasks {
        assert!(task.after.iter().all(|a| a.starts_with("node-1/")));
        assert!(task.service.as_deref() != Some("cache"));
    }
    let both = err(
        &[],
        &["node-1=web", "node-2=cache"],
        &catalog,
        Operation::Create,
    );
    assert!(matches!(both, Error::Cycle { .. }), "{both}");
}

#[test]
fn a_node_runs_one_task_at_a_time() {
    let plan = ok(
        &[],
        &[
            "node-1=java,zookeeper,namenode",
            "node-2=java,datanode,hbase-master",
            "node-3=java,datanode,hbase-regionserver",
        ],
        &hadoop(),
        Operation::Create,
    );
    for node in ["node-1", "node-2", "node-3"] {
        let tasks = tasks_on(&plan, node);
        assert_eq!(tasks.len(), 2 + 4 * 3, "{tasks:?}");
        for pair in tasks.windows(2) {
            assert!(before(&plan, pair[0], pair[1]), "{node}: {pair:?}");
        }
    }
}

#[test]
fn the_tasks_are_listed_in_an_order_that_keeps_every_after() {
    let plan = ok(
        &[],
        &[
            "node-1=java,zookeeper,namenode",
            "node-2=java,datanode,hbase-master,mysql,hive",
        ],
        &hadoop(),
        Operation::Create,
    );
    let mut done = BTreeSet::new();
    for task in &plan.tasks {
        for a in &task.after {
            assert!(done.contains(a.as_str()), "{} listed before {a}", task.id);
        }
        assert!(done.insert(task.id.as_str()), "{} twice", task.id);
    }
}

#[test]
fn the_same_layouts_in_another_order_give_the_same_bytes() {
    let old = ["node-1=java,namenode,zookeeper", "node-2=java,datanode"];
    let new = [
        "node-2=java,datanode,hbase-master",
        "node-3=java,datanode",
        "node-1=java,namenode,zookeeper",
    ];
    let a = ok(&old, &new, &hadoop(), Operation::Scale);
    let mut old = layout(&old);
    let mut new = layout(&new);
    old.reverse();
    new.reverse();
    for node in old.iter_mut().chain(&mut new) {
        node.services.reverse();
    }
    let b = plan(&old, &new, &hadoop(), &Operation::Scale).expect("a plan");
    let bytes = |p: &Plan| serde_json::to_vec(p).expect("json");
    assert_eq!(bytes(&a), bytes(&b));
}

// ---- delete ------------------------------------------------------------

#[test]
fn delete_stops_in_reverse_dependency_order() {
    let plan = ok(
        &[
            "node-1=java,zookeeper,namenode",
            "node-2=java,datanode,hbase-master",
            "node-3=java,datanode,hbase-regionserver",
        ],
        &[],
        &hadoop(),
        Operation::Delete,
    );
    let order = [
        ("node-3/hbase-regionserver/stop", "node-2/hbase-master/stop"),
        ("node-2/hbase-master/stop", "node-2/datanode/stop"),
        ("node-2/hbase-master/stop", "node-1/zookeeper/stop"),
        ("node-3/datanode/stop", "node-1/namenode/stop"),
        ("node-2/datanode/stop", "node-1/namenode/stop"),
        ("node-1/namenode/stop", "node-1/zookeeper/stop"),
    ];
    for (first, then) in order {
        assert!(before(&plan, first, then), "{first} before {then}");
    }
}

#[test]
fn delete_stops_and_removes_every_service_before_deleting_its_node() {
    let plan = ok(
        &["node-1=java,zookeeper", "node-2=java"],
        &[],
        &hadoop(),
        Operation::Delete,
    );
    assert_eq!(plan.tasks.len(), 3 * 2 + 2);
    for (node, service) in [
        ("node-1", "java"),
        ("node-1", "zookeeper"),
        ("node-2", "java"),
    ] {
        let stop = format!("{node}/{service}/stop");
        let remove = format!("{node}/{service}/remove");
        assert!(before(&plan, &stop, &remove));
        assert!(before(&plan, &remove, &format!("{node}/deleteNode")));
    }
    let actions: BTreeSet<Action> = plan.tasks.iter().map(|t| t.action).collect();
    assert_eq!(
        actions,
        BTreeSet::from([Action::Stop, Action::Remove, Action::DeleteNode])
    );
}

#[test]
fn delete_removes_in_reverse_install_order() {
    let plan = ok(
        &["node-1=java", "node-2=zookeeper"],
        &[],
        &hadoop(),
        Operation::Delete,
    );
    assert!(before(
        &plan,
        "node-2/zookeeper/remove",
        "node-1/java/remove"
    ));
}

#[test]
fn delete_refuses_a_new_layout_with_nodes() {
    let e = err(
        &["node-1=java"],
        &["node-1=java"],
        &hadoop(),
        Operation::Delete,
    );
    assert_eq!(
        e.to_string(),
        "operation delete cannot end with a layout that has node node-1; plan a scale"
    );
}

#[test]
fn create_refuses_an_old_layout_with_nodes() {
    let e = err(
        &["node-1=java"],
        &["node-2=java"],
        &hadoop(),
        Operation::Create,
    );
    assert_eq!(
        e,
        Error::Mismatch {
            operation: "create",
            change: "start from a layout that has node node-1; plan a scale".into()
        }
    );
}

// ---- scale -------------------------------------------------------------

#[test]
fn scale_up_creates_only_the_added_nodes() {
    let old = ["node-1=java,namenode", "node-2=java,datanode"];
    let plan = ok(
        &old,
        &[old[0], old[1], "node-3=java,datanode"],
        &hadoop(),
        Operation::Scale,
    );
    assert!(plan.tasks.iter().all(|t| t.node == "node-3"));
    assert_eq!(
        tasks_on(&plan, "node-3")[..2],
        ["node-3/createNode", "node-3/bootstrap"]
    );
    assert!(has(&plan, "node-3/datanode/start"));
}

#[test]
fn scale_down_drains_the_removed_nodes_only() {
    let plan = ok(
        &[
            "node-1=java,namenode",
            "node-2=java,datanode",
            "node-3=java,datanode",
        ],
        &["node-1=java,namenode", "node-2=java,datanode"],
        &hadoop(),
        Operation::Scale,
    );
    assert_eq!(
        ids(&plan),
        [
            "node-3/datanode/stop",
            "node-3/java/stop",
            "node-3/datanode/remove",
            "node-3/java/remove",
            "node-3/deleteNode",
        ]
    );
}

#[test]
fn scale_moves_a_service_by_stopping_it_on_one_node_and_starting_it_on_another() {
    let plan = ok(
        &["node-1=java,namenode,zookeeper", "node-2=java,datanode"],
        &["node-1=java,namenode", "node-2=java,datanode,zookeeper"],
        &hadoop(),
        Operation::Scale,
    );
    assert_eq!(
        tasks_on(&plan, "node-1"),
        ["node-1/zookeeper/stop", "node-1/zookeeper/remove"]
    );
    assert_eq!(
        tasks_on(&plan, "node-2"),
        [
            "node-2/zookeeper/install",
            "node-2/zookeeper/configure",
            "node-2/zookeeper/initialize",
            "node-2/zookeeper/start",
        ]
    );
}

#[test]
fn a_node_whose_class_changed_is_deleted_then_created_again() {
    let plan = ok(
        &["node-1:small=java"],
        &["node-1:large=java"],
        &hadoop(),
        Operation::Scale,
    );
    assert_eq!(
        ids(&plan),
        [
            "node-1/java/stop",
            "node-1/java/remove",
            "node-1/deleteNode",
            "node-1/createNode",
            "node-1/bootstrap",
            "node-1/java/install",
            "node-1/java/configure",
            "node-1/java/initialize",
            "node-1/java/start",
        ]
    );
    assert!(before(&plan, "node-1/deleteNode", "node-1/createNode"));
}

// ---- addServices -------------------------------------------------------

#[test]
fn add_services_installs_and_starts_only_the_added_services() {
    let plan = ok(
        &["node-1=java,namenode", "node-2=java,datanode"],
        &[
            "node-1=java,namenode,zookeeper",
            "node-2=java,datanode,hbase-master",
        ],
        &hadoop(),
        Operation::AddServices,
    );
    let services: BTreeSet<&str> = plan
        .tasks
        .iter()
        .filter_map(|t| t.service.as_deref())
        .collect();
    assert_eq!(services, BTreeSet::from(["hbase-master", "zookeeper"]));
    assert_eq!(plan.tasks.len(), 8);
    assert!(before(
        &plan,
        "node-1/zookeeper/start",
        "node-2/hbase-master/start"
    ));
}

#[test]
fn add_services_refuses_a_layout_that_removes_a_service() {
    let e = err(
        &["node-1=java,namenode"],
        &["node-1=java,zookeeper"],
        &hadoop(),
        Operation::AddServices,
    );
    assert_eq!(
        e.to_string(),
        "operation addServices cannot remove service namenode from node node-1"
    );
    let e = err(
        &["node-1=java", "node-2=java"],
        &["node-1=java,zookeeper"],
        &hadoop(),
        Operation::AddServices,
    );
    assert_eq!(
        e.to_string(),
        "operation addServices cannot remove node node-2"
    );
}

// ---- reconfigure and restart -------------------------------------------

const RUNNING: [&str; 3] = [
    "node-1=java,zookeeper,namenode,mysql,hive",
    "node-2=java,datanode,hbase-master",
    "node-3=java,datanode,hbase-regionserver",
];

#[test]
fn reconfigure_restarts_the_changed_service_and_what_depends_on_it_in_order() {
    let plan = ok(&RUNNING, &RUNNING, &hadoop(), reconfigure(&["namenode"]));
    let restarted: BTreeSet<&str> = plan
        .tasks
        .iter()
        .filter_map(|t| t.service.as_deref())
        .collect();
    assert_eq!(
        restarted,
        BTreeSet::from([
            "datanode",
            "hbase-master",
            "hbase-regionserver",
            "hive",
            "namenode"
        ])
    );
    let chain = [
        ("node-3/hbase-regionserver/stop", "node-2/hbase-master/stop"),
        ("node-2/hbase-master/stop", "node-3/datanode/stop"),
        ("node-3/datanode/stop", "node-1/namenode/stop"),
        ("node-1/hive/stop", "node-1/namenode/stop"),
        ("node-1/namenode/stop", "node-1/namenode/configure"),
        ("node-1/namenode/configure", "node-1/namenode/start"),
        ("node-1/namenode/start", "node-2/datanode/start"),
        ("node-1/namenode/start", "node-1/hive/start"),
        ("node-2/datanode/start", "node-2/hbase-master/start"),
        ("node-3/datanode/start", "node-2/hbase-master/start"),
        (
            "node-2/hbase-master/start",
            "node-3/hbase-regionserver/start",
        ),
    ];
    for (first, then) in chain {
        assert!(before(&plan, first, then), "{first} before {then}");
    }
    for task in &plan.tasks {
        let service = task.service.as_deref().unwrap_or("-");
        for action in ["stop", "configure", "start"] {
            assert!(has(&plan, &format!("{}/{service}/{action}", task.node)));
        }
    }
}

#[test]
fn reconfigure_leaves_services_that_do_not_depend_on_the_change_alone() {
    let plan = ok(&RUNNING, &RUNNING, &hadoop(), reconfigure(&["mysql"]));
    assert_eq!(
        ids(&plan),
        [
            "node-1/hive/stop",
            "node-1/mysql/stop",
            "node-1/hive/configure",
            "node-1/mysql/configure",
            "node-1/mysql/start",
            "node-1/hive/start",
        ]
    );
}

#[test]
fn reconfigure_of_a_service_the_layout_lacks_restarts_nothing() {
    let layout = ["node-1=java,zookeeper"];
    let plan = ok(&layout, &layout, &hadoop(), reconfigure(&["mysql"]));
    assert!(plan.tasks.is_empty());
}

#[test]
fn reconfigure_of_an_unknown_service_is_an_error() {
    let e = err(&RUNNING, &RUNNING, &hadoop(), reconfigure(&["spark"]));
    assert_eq!(e.to_string(), "service spark has no ServiceDefinition");
}

#[test]
fn reconfigure_and_restart_refuse_a_changed_layout() {
    for operation in [reconfigure(&["java"]), Operation::Restart] {
        let e = err(
            &["node-1=java"],
            &["node-1=java,zookeeper"],
            &hadoop(),
            operation,
        );
        assert!(matches!(e, Error::Mismatch { .. }), "{e}");
    }
}

#[test]
fn restart_stops_every_service_in_reverse_order_then_starts_them_in_order() {
    let plan = ok(&RUNNING, &RUNNING, &hadoop(), Operation::Restart);
    let services: usize = layout(&RUNNING).iter().map(|n| n.services.len()).sum();
    assert_eq!(plan.tasks.len(), 2 * services);
    assert!(plan.tasks.iter().all(|t| t.action != Action::Configure));
    let order = [
        ("node-3/hbase-regionserver/stop", "node-2/hbase-master/stop"),
        ("node-2/hbase-master/stop", "node-1/zookeeper/stop"),
        ("node-1/hive/stop", "node-1/mysql/stop"),
        ("node-2/datanode/stop", "node-1/namenode/stop"),
        ("node-1/zookeeper/start", "node-1/namenode/start"),
        ("node-1/namenode/start", "node-3/datanode/start"),
        ("node-1/mysql/start", "node-1/hive/start"),
        (
            "node-2/hbase-master/start",
            "node-3/hbase-regionserver/start",
        ),
    ];
    for (first, then) in order {
        assert!(before(&plan, first, then), "{first} before {then}");
    }
}

// ---- errors ------------------------------------------------------------

#[test]
fn a_dependency_cycle_among_present_services_is_an_error_naming_them() {
    let catalog = catalog(&[
        ("a", "runtime.requires=b"),
        ("b", "runtime.uses=q"),
        ("c", "provides=q runtime.requires=a"),
        ("d", "install.requires=a"),
    ]);
    let e = err(
        &[],
        &["node-1=a,b", "node-2=c,d"],
        &catalog,
        Operation::Create,
    );
    assert_eq!(
        e,
        Error::Cycle {
            phase: Phase::Runtime,
            services: vec!["a".into(), "b".into(), "c".into()]
        }
    );
    assert_eq!(
        e.to_string(),
        "the runtime dependencies form a cycle: a -> b -> c -> a; no order installs or starts them"
    );
}

#[test]
fn a_cycle_in_the_old_layout_is_an_error_too() {
    let catalog = catalog(&[("a", "install.requires=b"), ("b", "install.uses=a")]);
    let e = err(&["node-1=a,b"], &[], &catalog, Operation::Delete);
    assert!(
        matches!(&e, Error::Cycle { phase: Phase::Install, services } if services.len() == 2),
        "{e}"
    );
}

#[test]
fn a_service_that_provides_what_it_uses_does_not_wait_for_itself() {
    let catalog = catalog(&[("db", "provides=sql runtime.uses=sql")]);
    let plan = ok(
        &[],
        &["node-1=db", "node-2=db"],
        &catalog,
        Operation::Create,
    );
    assert!(!before(&plan, "node-1/db/start", "node-2/db/start"));
    assert!(!before(&plan, "node-2/db/start", "node-1/db/start"));
}

#[test]
fn an_unknown_service_is_an_error_naming_it_and_its_node() {
    let e = err(&[], &["node-1=java,spark"], &hadoop(), Operation::Create);
    assert_eq!(
        e.to_string(),
        "service spark (on node node-1) has no ServiceDefinition"
    );
}

#[test]
fn a_node_named_twice_is_an_error() {
    let e = err(
        &["node-1=java", "node-1=zookeeper"],
        &[],
        &hadoop(),
        Operation::Delete,
    );
    assert_eq!(e.to_string(), "the old layout names node node-1 twice");
}

// ---- inverse -----------------------------------------------------------

#[test]
fn the_inverse_of_a_create_deletes_what_it_created() {
    let new = layout(&["node-1=java,namenode", "node-2=java,datanode"]);
    let back = inverse(&[], &new, &hadoop(), &Operation::Create).expect("a plan");
    assert_eq!(back.operation, Operation::Delete);
    let deleted: Vec<&str> = back
        .tasks
        .iter()
        .filter(|t| t.action == Action::DeleteNode)
        .map(|t| t.node.as_str())
        .collect();
    assert_eq!(deleted, ["node-1", "node-2"]);
    assert!(before(
        &back,
        "node-2/datanode/stop",
        "node-1/namenode/stop"
    ));
}

#[test]
fn the_inverse_of_add_services_removes_them() {
    let old = layout(&["node-1=java"]);
    let new = layout(&["node-1=java,zookeeper", "node-2=java"]);
    let back = inverse(&old, &new, &hadoop(), &Operation::AddServices).expect("a plan");
    assert_eq!(back.operation, Operation::Scale);
    assert_eq!(
        ids(&back),
        [
            "node-1/zookeeper/stop",
            "node-2/java/stop",
            "node-1/zookeeper/remove",
            "node-2/java/remove",
            "node-2/deleteNode",
        ]
    );
}

#[test]
fn each_operation_has_its_inverse() {
    let table = [
        (Operation::Create, Operation::Delete),
        (Operation::Delete, Operation::Create),
        (Operation::AddServices, Operation::Scale),
        (Operation::Scale, Operation::Scale),
        (Operation::Restart, Operation::Restart),
        (reconfigure(&["java"]), reconfigure(&["java"])),
    ];
    for (operation, inverse) in table {
        assert_eq!(operation.inverse(), inverse, "{operation:?}");
    }
}

// ---- the stored form ---------------------------------------------------

#[test]
fn actions_serialize_as_camel_case_strings() {
    let table = [
        (Action::CreateNode, "createNode"),
        (Action::Bootstrap, "bootstrap"),
        (Action::Install, "install"),
        (Action::Configure, "configure"),
        (Action::Initialize, "initialize"),
        (Action::Start, "start"),
        (Action::Stop, "stop"),
        (Action::Remove, "remove"),
        (Action::DeleteNode, "deleteNode"),
    ];
    for (action, name) in table {
        assert_eq!(serde_json::to_value(action).expect("json"), json!(name));
        assert_eq!(action.as_str(), name);
    }
}

#[test]
fn an_operation_is_stored_as_one_object_with_a_type() {
    let table = [
        (Operation::Create, json!({"type": "create"})),
        (Operation::AddServices, json!({"type": "addServices"})),
        (
            reconfigure(&["namenode"]),
            json!({"type": "reconfigure", "services": ["namenode"]}),
        ),
        (Operation::Restart, json!({"type": "restart"})),
    ];
    for (operation, value) in table {
        assert_eq!(serde_json::to_value(&operation).expect("json"), value);
        let back: Operation = serde_json::from_value(value).expect("an operation");
        assert_eq!(back, operation);
    }
    let wrong = serde_json::from_value::<Operation>(json!({"type": "scale", "services": ["a"]}));
    assert!(wrong.is_err());
}

#[test]
fn a_task_is_stored_in_camel_case_without_empty_fields() {
    let plan = ok(&[], &["node-1=java"], &hadoop(), Operation::Create);
    let value = serde_json::to_value(&plan).expect("json");
    assert_eq!(
        value["tasks"][0],
        json!({"id": "node-1/createNode", "node": "node-1", "action": "createNode"})
    );
    assert_eq!(
        value["tasks"][2],
        json!({
            "id": "node-1/java/install",
            "node": "node-1",
            "service": "java",
            "action": "install",
            "after": ["node-1/bootstrap"],
        })
    );
    let back: Plan = serde_json::from_value(value).expect("a plan");
    assert_eq!(back, plan);
}

mod embedded {
    use kube::CustomResourceExt;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    use super::super::Plan;

    /// A kind that holds a plan, as a later ClusterPlan will.
    #[derive(kube::CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
    #[kube(group = "test.theseus.dev", version = "v1", kind = "Holder")]
    pub struct HolderSpec {
        /// The plan.
        pub plan: Plan,
    }

    /// Every place of `value` where a schema is not structural: a
    /// `oneOf` or `anyOf`, or a list of types.
    fn unstructural(value: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    let here = format!("{path}.{key}");
                    if key == "oneOf" || key == "anyOf" || (key == "type" && v.is_array()) {
                        out.push(here.clone());
                    }
                    unstructural(v, &here, out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    unstructural(v, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn a_plan_embeds_in_a_custom_resource_with_a_structural_schema() {
        let crd = serde_json::to_value(Holder::crd()).expect("json");
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut wrong = Vec::new();
        unstructural(schema, "", &mut wrong);
        assert!(wrong.is_empty(), "{wrong:?}");
        let plan = &schema["properties"]["spec"]["properties"]["plan"]["properties"];
        let operation = &plan["operation"];
        assert_eq!(operation["type"], "object");
        assert_eq!(
            operation["properties"]["type"]["enum"],
            serde_json::json!([
                "create",
                "delete",
                "addServices",
                "reconfigure",
                "scale",
                "restart"
            ])
        );
        let action = &plan["tasks"]["items"]["properties"]["action"];
        assert_eq!(action["type"], "string");
    }
}
