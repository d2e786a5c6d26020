//! Clusters end to end: the example catalog and a Cluster applied with
//! kubectl to the testbed's API server, a real `theseus operator` solving
//! them, and `kubectl wait` and `theseus cluster layout` reading the result.

use std::time::Duration;

use theseus::layout::{self, Catalog, Request};

use crate::support::fleet::{Operator, RUN_LABEL};
use crate::support::layout::examples;
use crate::support::{self, TestNamespace, repo_root, test_logs, theseus};

/// What `theseus template validate` would give as feasible sizes.
fn feasible_sizes(catalog: &Catalog, template: &str) -> String {
    let resolved = layout::resolve::resolve(catalog, template).unwrap();
    let model = layout::build_model(
        catalog,
        &resolved,
        &Request {
            size: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let ranges = layout::sizes::feasible_sizes(&model).unwrap();
    serde_json::to_string(&layout::sizes::format_ranges(&ranges)).unwrap()
}

/// `kubectl get cluster analytics -o jsonpath=PATH`.
fn cluster_field(tb: &support::TestbedEnv, ns: &str, jsonpath: &str) -> String {
    let output = format!("jsonpath={jsonpath}");
    tb.kubectl_ok(&["get", "cluster", "analytics", "-n", ns, "-o", &output])
}

fn layout_solved(tb: &support::TestbedEnv, ns: &str, field: &str) -> String {
    cluster_field(
        tb,
        ns,
        &format!(r#"{{.status.conditions[?(@.type=="LayoutSolved")].{field}}}"#),
    )
}

fn layout_of(tb: &support::TestbedEnv, ns: &str) -> Vec<theseus::api::LayoutNode> {
    serde_json::from_str(&cluster_field(tb, ns, "{.status.layout}")).unwrap_or_default()
}

fn cluster_layout(tb: &support::TestbedEnv, ns: &str) -> (i32, String) {
    let out = tb
        .command(theseus())
        .args(["cluster", "layout", "analytics", "-n", ns])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Sets the cluster's size and waits for `condition` (`kubectl wait`).
fn resize(tb: &support::TestbedEnv, ns: &str, size: u32, condition: &str) {
    let patch = format!(r#"{{"spec":{{"size":{size}}}}}"#);
    tb.kubectl_ok(&[
        "patch",
        "cluster",
        "analytics",
        "-n",
        ns,
        "--type=merge",
        "-p",
        &patch,
    ]);
    tb.kubectl_ok(&[
        "wait",
        "-n",
        ns,
        &format!("--for=condition={condition}"),
        "cluster/analytics",
        "--timeout=60s",
    ]);
}

#[tokio::test]
async fn clusters_of_the_example_templates_get_layouts_that_kubectl_wait_and_the_cli_see() {
    let Some(tb) = support::testbed() else {
        return;
    };
    support::apply_crds(&tb);
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "clusters").await;
    let run = ns.name.clone();
    let label = format!("{RUN_LABEL}={run}");
    let catalog = repo_root().join("examples/catalog");
    let catalog = catalog.to_str().unwrap();
    let cluster = repo_root().join("examples/clusters/analytics.yaml");
    let cluster = cluster.to_str().unwrap();
    // The operator manages only what carries this run's label.
    tb.kubectl_ok(&["apply", "-f", catalog]);
    tb.kubectl_ok(&["label", "--overwrite", "-f", catalog, &label]);
    let _operator =
        Operator::start_with(&tb, &ns.name, &run, "clusters", &test_logs(&run), &[], &[]);

    // Every example template is Valid, with the sizes the solver gives.
    let expected = examples();
    for template in ["hadoop", "web", "mirrored-db"] {
        tb.kubectl_ok(&[
            "wait",
            "--for=condition=Valid",
            &format!("clustertemplate/{template}"),
            "--timeout=60s",
        ]);
        let sizes = tb.kubectl_ok(&[
            "get",
            "ctpl",
            template,
            "-o",
            "jsonpath={.status.feasibleSizes}",
        ]);
        assert_eq!(sizes, feasible_sizes(&expected, template), "{template}");
    }

    // A cluster of six nodes is solved; kubectl wait sees it.
    tb.kubectl_ok(&["apply", "-n", &ns.name, "-f", cluster]);
    tb.kubectl_ok(&["label", "-n", &ns.name, "cluster/analytics", &label]);
    tb.kubectl_ok(&[
        "wait",
        "-n",
        &ns.name,
        "--for=condition=LayoutSolved",
        "cluster/analytics",
        "--timeout=60s",
    ]);
    let six = layout_of(&tb, &ns.name);
    assert_eq!(six.len(), 6, "{six:?}");
    let namenodes: Vec<_> = six
        .iter()
        .filter(|n| n.services.iter().any(|s| s == "namenode"))
        .collect();
    assert_eq!(namenodes.len(), 1, "{six:?}");
    assert_eq!(namenodes[0].node_class, "large", "{six:?}");
    let (code, text) = cluster_layout(&tb, &ns.name);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("LayoutSolved=True Solved: 6 nodes"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("analytics-")).count(),
        6,
        "{text}"
    );
    let columns = tb.kubectl_ok(&["get", "cl", "-n", &ns.name]);
    assert!(
        columns
            .lines()
            .next()
            .unwrap_or_default()
            .contains("TEMPLATE")
            && columns.contains("hadoop")
            && columns.contains("Solved"),
        "{columns}"
    );

    // Too small for the template: the old layout stays and the condition
    // carries the explanation in the template's field paths.
    resize(&tb, &ns.name, 3, "LayoutSolved=false");
    assert_eq!(layout_solved(&tb, &ns.name, "reason"), "Unsatisfiable");
    let message = layout_solved(&tb, &ns.name, "message");
    assert!(
        message.contains("spec.constraints")
            && message.contains("the previous layout of 6 nodes stays"),
        "{message}"
    );
    assert_eq!(layout_of(&tb, &ns.name), six, "the old layout stays");
    let (code, text) = cluster_layout(&tb, &ns.name);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("Unsatisfiable"), "{text}");

    // Growing to eight keeps the six nodes as they were and adds two.
    resize(&tb, &ns.name, 8, "LayoutSolved");
    let eight = support::eventually(Duration::from_secs(30), "eight nodes", || async {
        let l = layout_of(&tb, &ns.name);
        if l.len() == 8 {
            Ok(l)
        } else {
            Err(format!("{} nodes", l.len()))
        }
    })
    .await;
    assert_eq!(&eight[..6], &six[..], "no service moved on the six nodes");

    // A template naming a service the catalog lacks is reported in Valid,
    // with the field path; a cluster of size 0 is refused by the schema.
    let bad = format!(
        "apiVersion: theseus.dev/v1alpha1
kind: ClusterTemplate
metadata: {{name: {run}-bad, labels: {{{RUN_LABEL}: {run}}}}}
spec:
  defaults: {{services: [namenode, no-such-service]}}
"
    );
    let out = tb.kubectl_stdin(&["apply"], &bad);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tb.kubectl_ok(&[
        "wait",
        "--for=condition=Valid=false",
        &format!("clustertemplate/{run}-bad"),
        "--timeout=60s",
    ]);
    let valid = tb.kubectl_ok(&[
        "get",
        "ctpl",
        &format!("{run}-bad"),
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Valid")].reason}: {.status.conditions[?(@.type=="Valid")].message}"#,
    ]);
    assert!(
        valid.starts_with("UnknownService: ") && valid.contains("spec.defaults.services[1]"),
        "{valid}"
    );
    let zero = "apiVersion: theseus.dev/v1alpha1
kind: Cluster
metadata: {name: empty}
spec: {template: hadoop, size: 0}
";
    let out = tb.kubectl_stdin(&["apply", "-n", &ns.name], zero);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.size"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    tb.kubectl_ok(&["delete", "clustertemplate", &format!("{run}-bad")]);
    tb.kubectl_ok(&["delete", "-n", &ns.name, "cluster/analytics"]);
    ns.delete(&client).await;
}

#[tokio::test]
async fn a_plan_of_the_planner_is_stored_as_a_cluster_plan_that_kubectl_and_the_cli_show() {
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use theseus::api::{ClusterPlan, ClusterPlanSpec};
    use theseus::plan::{self, Operation};

    let Some(tb) = support::with_crds() else {
        return;
    };
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "plans").await;
    let catalog = examples();
    let request = Request {
        size: 5,
        ..Default::default()
    };
    let layout::Outcome::Solved { layout: to, .. } =
        layout::solve_request(&catalog, "hadoop", &request, &[], "analytics").unwrap()
    else {
        panic!("hadoop has a layout at 5");
    };
    let created = plan::plan(&[], &to, &catalog, &Operation::Create).unwrap();
    let back = plan::inverse(&[], &to, &catalog, &Operation::Create).unwrap();
    let object = ClusterPlan::new(
        "analytics-create",
        ClusterPlanSpec {
            cluster: "analytics".into(),
            operation: Operation::Create,
            from: Vec::new(),
            to: to.clone(),
            tasks: created.tasks.clone(),
            config: Default::default(),
            from_config: Default::default(),
            inverse: back.tasks,
            request: None,
            from_request: None,
        },
    );
    let plans: Api<ClusterPlan> = Api::namespaced(client.clone(), &ns.name);
    plans.create(&PostParams::default(), &object).await.unwrap();
    let total = created.tasks.len();
    let first = &created.tasks[0].id;
    let status = serde_json::json!({
        "phase": "Running",
        "progress": format!("1/{total}"),
        "tasks": [{ "id": first, "state": "Succeeded", "attempts": 1 }]
    });
    theseus::shared::status::apply_status(&plans, "analytics-create", &status)
        .await
        .unwrap();

    let listed = tb.kubectl_ok(&["get", "cplan", "-n", &ns.name]);
    assert!(
        listed.contains("analytics")
            && listed.contains("create")
            && listed.contains(&format!("1/{total}"))
            && listed.contains("Running"),
        "{listed}"
    );
    let out = tb
        .command(theseus())
        .args(["cluster", "plan", "analytics-create", "-n", &ns.name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("create, Running, 1/{total} tasks done")),
        "{text}"
    );
    for node in &to {
        assert!(
            text.lines().any(|l| l == node.name),
            "{} missing:\n{text}",
            node.name
        );
    }
    // The spec is immutable.
    let changed = plans
        .patch(
            "analytics-create",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "cluster": "other" } })),
        )
        .await
        .unwrap_err();
    assert!(changed.to_string().contains("immutable"), "{changed}");
    ns.delete(&client).await;
}
