//! What the views render from a snapshot, without a server.

use super::*;
use serde_json::json;

fn set(name: &str, updated: i32, halted: bool) -> Arc<PackageSet> {
    serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageSet",
        "metadata": { "name": name },
        "spec": { "repository": "r", "packages": ["web--1.0.0"], "nodeSelector": {} },
        "status": {
            "desiredNodes": 4, "updatedNodes": updated, "readyNodes": updated,
            "conditions": [{
                "type": "Halted", "status": if halted { "True" } else { "False" },
                "reason": "R", "message": "<script>", "lastTransitionTime": "2026-01-01T00:00:00Z"
            }]
        }
    }))
    .map(Arc::new)
    .unwrap()
}

fn node(name: &str, set: &str, phase: &str) -> Arc<NodeInstall> {
    serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "NodeInstall",
        "metadata": { "name": name },
        "spec": { "target": { "packageSet": set, "setHash": "abcdef0123456789", "packages": [], "repositoryUrl": "http://r" } },
        "status": { "phase": phase, "message": "switching" }
    }))
    .map(Arc::new)
    .unwrap()
}

#[test]
fn the_fleet_shows_each_sets_progress_and_its_nodes_phases() {
    let snapshot = Snapshot {
        sets: vec![set("web", 2, false)],
        nodes: vec![
            node("n1", "web", "Active"),
            node("n2", "web", "Active"),
            node("n3", "web", "Fetching"),
            node("n4", "other", "Failed"),
        ],
        ..Snapshot::default()
    };
    let rendered = render(&View::Fleet, &snapshot, &Allowed::default());
    let row = rendered.rows("sets");
    assert!(row.contains(r#"id="set-web""#), "{row}");
    assert!(row.contains(r#"<progress value="2" max="4""#), "{row}");
    assert!(
        row.contains("Active 2") && row.contains("Fetching 1"),
        "{row}"
    );
    assert!(!row.contains("Failed"), "another set's node: {row}");
    assert!(!row.contains("<script>"), "escaped: {row}");
    let banner = rendered.panel("halt-banner");
    assert!(!banner.contains("Halted by"), "{banner}");
    assert!(
        !banner.contains("<form"),
        "no halt button without access: {banner}"
    );
}

#[test]
fn the_halt_button_shows_only_for_users_allowed_to_halt() {
    let halted = Snapshot {
        halt: Some(Halt {
            reason: "SLA breach".into(),
            by: "monitor".into(),
            at: "2026-01-01T00:00:00Z".into(),
        }),
        ..Snapshot::default()
    };
    let allowed = Allowed {
        halt: true,
        ..Allowed::default()
    };
    let banner = render(&View::Fleet, &halted, &allowed).panel("halt-banner");
    assert!(banner.contains("halted by monitor: SLA breach"), "{banner}");
    assert!(banner.contains(r#"hx-post="/ui/resume""#), "{banner}");
    let viewer = render(&View::Fleet, &halted, &Allowed::default()).panel("halt-banner");
    assert!(viewer.contains("halted by monitor"), "{viewer}");
    assert!(!viewer.contains("hx-post"), "{viewer}");
    let running = render(&View::Fleet, &Snapshot::default(), &allowed).panel("halt-banner");
    assert!(running.contains(r#"hx-post="/ui/halt""#), "{running}");
}

#[test]
fn a_sets_nodes_are_paged_and_filtered_by_phase() {
    let nodes: Vec<Arc<NodeInstall>> = (0..250)
        .map(|i| {
            node(
                &format!("n{i:03}"),
                "web",
                if i % 2 == 0 { "Active" } else { "Fetching" },
            )
        })
        .collect();
    let snapshot = Snapshot {
        sets: vec![set("web", 125, false)],
        nodes,
        ..Snapshot::default()
    };
    let view = |page, phase: Option<&str>| View::PackageSet {
        name: "web".into(),
        page,
        phase: phase.map(str::to_owned),
    };
    let first = render(&view(0, None), &snapshot, &Allowed::default());
    assert_eq!(
        first
            .0
            .iter()
            .filter(|f| f.parent.as_deref() == Some("nodes"))
            .count(),
        PAGE_SIZE
    );
    assert!(first.rows("nodes").contains("node-n000"));
    let last = render(&view(9, None), &snapshot, &Allowed::default());
    assert_eq!(
        last.0
            .iter()
            .filter(|f| f.parent.as_deref() == Some("nodes"))
            .count(),
        50,
        "clamped to the last page"
    );
    assert!(
        last.panel("node-pager").contains("250 nodes"),
        "{}",
        last.panel("node-pager")
    );
    let fetching = render(&view(0, Some("Fetching")), &snapshot, &Allowed::default());
    assert!(fetching.rows("nodes").contains("node-n001"));
    assert!(!fetching.rows("nodes").contains("node-n000"));
    assert_eq!(
        view(1, Some("Fetching")).live_query(),
        "view=packageset&name=web&page=1&phase=Fetching"
    );
}

#[test]
fn element_ids_are_stable_and_safe() {
    assert_eq!(element_id("obj", "ns/a.b"), "obj-ns_2f_a_2e_b");
    assert_eq!(element_id("set", "web-1"), "set-web-1");
}

fn cluster_snapshot(phase: &str) -> Snapshot {
    let cluster: Cluster = serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "Cluster",
        "metadata": { "name": "shop", "namespace": "team" },
        "spec": { "template": "web", "size": 2 },
        "status": {
            "plan": "shop-1",
            "layout": [{ "name": "shop-0", "nodeClass": "small", "services": ["db"] }]
        }
    }))
    .unwrap();
    let plan: ClusterPlan = serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "ClusterPlan",
        "metadata": { "name": "shop-1", "namespace": "team" },
        "spec": {
            "cluster": "shop", "operation": { "type": "create" },
            "tasks": [
                { "id": "start-db", "node": "shop-0", "service": "db", "action": "start", "after": ["install-db"] },
                { "id": "create-0", "node": "shop-0", "action": "createNode" },
                { "id": "install-db", "node": "shop-0", "service": "db", "action": "install", "after": ["create-0"] }
            ]
        },
        "status": {
            "phase": phase,
            "tasks": [
                { "id": "create-0", "state": "Succeeded", "attempts": 1 },
                { "id": "install-db", "state": "Failed", "attempts": 2, "lastError": "exit 3" }
            ]
        }
    }))
    .unwrap();
    Snapshot {
        clusters: vec![Arc::new(cluster)],
        plans: vec![Arc::new(plan)],
        ..Snapshot::default()
    }
}

#[test]
fn a_clusters_plan_shows_as_levels_with_task_states_and_approval_only_when_awaited() {
    let view = View::Cluster {
        namespace: "team".into(),
        name: "shop".into(),
    };
    let allowed = Allowed {
        approve: true,
        pause: true,
        ..Allowed::default()
    };
    let rendered = render(&view, &cluster_snapshot("AwaitingApproval"), &allowed);
    let tasks = rendered.rows("tasks");
    let create = tasks.find("task-create-0").unwrap();
    let install = tasks.find("task-install-db").unwrap();
    let start = tasks.find("task-start-db").unwrap();
    assert!(create < install && install < start, "by level: {tasks}");
    assert!(
        tasks.contains(r#"<td class="level">2</td><td class="mono">start-db</td>"#),
        "{tasks}"
    );
    assert!(
        tasks.contains("Failed</span> (2 attempts)") && tasks.contains("exit 3"),
        "{tasks}"
    );
    assert!(rendered.rows("layout").contains("shop-0"));
    let summary = rendered.panel("cluster-summary");
    assert!(
        summary.contains(r#"hx-post="/ui/clusters/team/shop/approve""#),
        "{summary}"
    );
    assert!(summary.contains("AwaitingApproval"), "{summary}");
    let running = render(&view, &cluster_snapshot("Running"), &allowed).panel("cluster-summary");
    assert!(
        !running.contains("/approve"),
        "nothing to approve: {running}"
    );
    let reader = render(
        &view,
        &cluster_snapshot("AwaitingApproval"),
        &Allowed::default(),
    )
    .panel("cluster-summary");
    assert!(!reader.contains("hx-post"), "{reader}");
}
