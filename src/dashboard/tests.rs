//! The handlers and templates in process, over the fake API server: what a
//! page shows to whom, and which requests a button makes or refuses.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{Dashboard, Mode, router};
use crate::shared::fake_api::{self, Call, Log};

/// An API server where `allowed` is every access review's answer and
/// `patch_status` every PATCH's.
fn api(log: &Log, allowed: bool, patch_status: u16, list_status: u16) -> kube::Client {
    fake_api::client(log, move |call: &Call| {
        let path = call.path.split('?').next().unwrap_or_default();
        match (call.method.as_str(), path) {
            ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews") => {
                fake_api::ok(json!({
                    "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                    "spec": call.body["spec"], "status": { "allowed": allowed }
                }))
            }
            ("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews") => fake_api::ok(json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
                "status": { "userInfo": { "username": "alice" } }
            })),
            ("GET", "/api/v1/namespaces/theseus-system/configmaps/theseus-halt") => {
                fake_api::status(404, "NotFound")
            }
            ("GET", p) if p.starts_with("/apis/theseus.dev/v1alpha1/") => {
                if list_status != 200 {
                    return fake_api::status(list_status, "Refused");
                }
                let web = json!({
                    "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageSet",
                    "metadata": { "name": "web" },
                    "spec": { "repository": "r", "packages": ["web--1.0.0"], "nodeSelector": {} },
                    "status": { "desiredNodes": 3, "updatedNodes": 1 }
                });
                if p.ends_with("/packagesets/web") {
                    return fake_api::ok(web);
                }
                let items: Vec<Value> = if p.ends_with("/packagesets") {
                    vec![web]
                } else {
                    vec![]
                };
                fake_api::ok(
                    json!({ "apiVersion": "v1", "kind": "List", "metadata": {}, "items": items }),
                )
            }
            ("PATCH", _) if patch_status != 200 => fake_api::status(patch_status, "Forbidden"),
            ("PATCH", p) if p.contains("/packagesets/") => fake_api::ok(json!({
                "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageSet",
                "metadata": { "name": "web" },
                "spec": { "repository": "r", "packages": call.body["spec"]["packages"], "nodeSelector": {} }
            })),
            ("PATCH", _) => fake_api::ok(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": "theseus-halt", "namespace": "theseus-system" },
                "data": { "reason": "r", "by": "alice", "at": "2026-01-01T00:00:00Z" }
            })),
            _ => fake_api::status(404, "NotFound"),
        }
    })
}

fn dashboard(client: kube::Client) -> (Dashboard, String) {
    let key = [7u8; 32];
    let csrf = super::auth::csrf_token(&key, b"");
    (
        Dashboard::new(
            Mode::Kubeconfig {
                client,
                csrf_key: key,
            },
            "theseus-system",
            None,
            None,
        ),
        csrf,
    )
}

async fn send(
    dashboard: &Dashboard,
    request: Request<Body>,
) -> (StatusCode, String, axum::http::HeaderMap) {
    let response = router(dashboard.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), headers)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header("host", "dash")
        .body(Body::empty())
        .unwrap()
}

fn post(uri: &str, csrf: Option<&str>, body: &str) -> Request<Body> {
    let mut request = Request::post(uri)
        .header("host", "dash")
        .header("hx-request", "true")
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(csrf) = csrf {
        request = request.header("x-csrf-token", csrf);
    }
    request.body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn the_fleet_page_shows_the_halt_button_only_to_users_allowed_to_halt() {
    let log = Log::default();
    let (admin, csrf) = dashboard(api(&log, true, 200, 200));
    let (status, html, _) = send(&admin, get("/ui/")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains(r#"id="set-web""#), "{html}");
    assert!(html.contains(r#"<progress value="1" max="3""#), "{html}");
    assert!(html.contains(r#"hx-post="/ui/halt""#), "{html}");
    assert!(html.contains(&csrf), "the page carries the CSRF token");
    assert!(
        html.contains(r#"sse-connect="/ui/live?view=fleet""#),
        "{html}"
    );
    let reviews: Vec<Value> = log
        .calls()
        .iter()
        .filter(|c| c.path.contains("selfsubjectaccessreviews"))
        .map(|c| c.body["spec"]["resourceAttributes"].clone())
        .collect();
    assert!(
        reviews.iter().any(|r| r["verb"] == "patch"
            && r["resource"] == "configmaps"
            && r["name"] == "theseus-halt"),
        "the halt button is a verb on the halt ConfigMap: {reviews:?}"
    );

    let (viewer, _) = dashboard(api(&Log::default(), false, 200, 200));
    let (status, html, _) = send(&viewer, get("/ui/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(r#"id="set-web""#));
    assert!(!html.contains("hx-post=\"/ui/halt\""), "{html}");
}

#[tokio::test]
async fn a_post_without_the_csrf_token_is_refused_before_the_api_server_is_asked() {
    let log = Log::default();
    let (admin, csrf) = dashboard(api(&log, true, 200, 200));
    let (status, body, _) = send(&admin, post("/ui/halt", None, "reason=x")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("no CSRF token"), "{body}");
    let (status, body, _) = send(&admin, post("/ui/halt", Some("forged"), "reason=x")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let mut cross = post("/ui/halt", Some(&csrf), "reason=x");
    cross
        .headers_mut()
        .insert("origin", "https://elsewhere".parse().unwrap());
    let (status, body, _) = send(&admin, cross).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        log.calls().is_empty(),
        "nothing reached the API server: {:?}",
        log.lines()
    );

    let (status, body, _) = send(&admin, post("/ui/halt", Some(&csrf), "reason=SLA+breach")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("halted by alice: SLA breach"), "{body}");
    let patch = log
        .calls()
        .into_iter()
        .find(|c| c.method == "PATCH")
        .expect("the halt was written");
    assert!(
        patch
            .path
            .starts_with("/api/v1/namespaces/theseus-system/configmaps/theseus-halt")
    );
    assert_eq!(patch.body["data"]["reason"], "SLA breach");
    assert_eq!(
        patch.body["data"]["by"], "alice",
        "the halt names the signed-in user"
    );
}

#[tokio::test]
async fn a_change_the_api_server_refuses_answers_its_status_and_message() {
    let (viewer, csrf) = dashboard(api(&Log::default(), false, 403, 200));
    let (status, body, _) = send(&viewer, post("/ui/halt", Some(&csrf), "reason=x")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.contains("Cannot halt") && body.contains("Forbidden"),
        "{body}"
    );
    let (status, body, _) = send(
        &viewer,
        post("/ui/nodepools/p/scale", Some(&csrf), "replicas=3"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body, _) = send(
        &viewer,
        post("/ui/nodepools/p/scale", Some(&csrf), "replicas=many"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("whole number"), "{body}");
}

#[tokio::test]
async fn a_credential_the_api_server_no_longer_accepts_leads_to_the_login_page() {
    let (expired, csrf) = dashboard(api(&Log::default(), true, 401, 401));
    let (status, _, headers) = send(&expired, get("/ui/")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/ui/login?expired=1");
    let (status, _, headers) = send(
        &expired,
        post("/ui/nodepools/p/scale", Some(&csrf), "replicas=1"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["hx-redirect"], "/ui/login?expired=1");
}

#[tokio::test]
async fn a_change_of_packages_is_confirmed_with_its_diff_first() {
    let log = Log::default();
    let (admin, csrf) = dashboard(api(&log, true, 200, 200));
    let (status, body, _) = send(
        &admin,
        post(
            "/ui/packagesets/web/packages",
            Some(&csrf),
            "packages=web--2.0.0%0Aextra--1.0.0",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("PackageSet <strong>web</strong>"), "{body}");
    assert!(
        body.contains("− web--1.0.0")
            && body.contains("+ web--2.0.0")
            && body.contains("+ extra--1.0.0"),
        "{body}"
    );
    assert!(body.contains(r#"name="confirm""#), "{body}");
    assert!(
        !log.calls().iter().any(|c| c.method == "PATCH"),
        "nothing changed before the confirmation"
    );
    let (status, body, _) = send(
        &admin,
        post(
            "/ui/packagesets/web/packages",
            Some(&csrf),
            "packages=web--2.0.0%0Aextra--1.0.0&confirm=1",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let patch = log
        .calls()
        .into_iter()
        .find(|c| c.method == "PATCH")
        .unwrap();
    assert_eq!(
        patch.body["spec"]["packages"],
        json!(["web--2.0.0", "extra--1.0.0"])
    );
}

#[tokio::test]
async fn every_kind_lists_in_its_printer_columns_and_assets_are_served() {
    let (admin, _) = dashboard(api(&Log::default(), true, 200, 200));
    let (status, html, _) = send(&admin, get("/ui/kinds/packagesets")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("<th>Halted</th>"), "{html}");
    assert!(html.contains(r#"href="/ui/packagesets/web""#), "{html}");
    let (status, _, _) = send(&admin, get("/ui/kinds/secrets")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, js, headers) = send(&admin, get("/ui/assets/htmx.min.js")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(js.len() > 40_000 && headers["content-type"] == "text/javascript");
    let (status, _, _) = send(&admin, get("/ui/assets/../../etc/passwd")).await;
    assert_ne!(status, StatusCode::OK);
}

#[test]
fn a_form_body_decodes_like_a_browser_sends_it() {
    let form = super::pages::form(b"reason=SLA+breach%21&csrf=abc&empty=&bad=%zz");
    assert_eq!(form["reason"], "SLA breach!");
    assert_eq!(form["csrf"], "abc");
    assert_eq!(form["empty"], "");
    assert_eq!(form["bad"], "%zz");
}

/// POSTs `path` (with the CSRF token) to a dashboard over `client`; the
/// answer's status and body, and the PATCHes the API server was sent.
async fn post_as_admin(
    client: kube::Client,
    log: &Log,
    path: &str,
) -> (StatusCode, String, Vec<Call>) {
    let (admin, csrf) = dashboard(client);
    let (status, body, _) = send(&admin, post(path, Some(&csrf), "")).await;
    let patches = log
        .calls()
        .into_iter()
        .filter(|c| c.method == "PATCH")
        .collect();
    (status, body, patches)
}

/// A fake API server holding Cluster team/shop with `spec`, whose status
/// names plan `plan` with `plan_spec` in `phase`.
fn cluster_and_plan(
    log: &Log,
    spec: Value,
    plan: &'static str,
    plan_spec: Value,
    phase: &'static str,
) -> kube::Client {
    let cluster_path = "/apis/theseus.dev/v1alpha1/namespaces/team/clusters/shop";
    let plan_path = format!("/apis/theseus.dev/v1alpha1/namespaces/team/clusterplans/{plan}");
    fake_api::client(log, move |call: &Call| {
        let path = call.path.split('?').next().unwrap_or_default();
        if path == cluster_path {
            fake_api::ok(json!({
                "apiVersion": "theseus.dev/v1alpha1", "kind": "Cluster",
                "metadata": { "name": "shop", "namespace": "team" },
                "spec": spec, "status": { "plan": plan }
            }))
        } else if path == plan_path {
            fake_api::ok(json!({
                "apiVersion": "theseus.dev/v1alpha1", "kind": "ClusterPlan",
                "metadata": { "name": plan, "namespace": "team" },
                "spec": plan_spec, "status": { "phase": phase }
            }))
        } else {
            fake_api::status(404, "NotFound")
        }
    })
}

#[tokio::test]
async fn a_plan_is_approved_only_while_it_awaits_approval() {
    for (phase, expected) in [
        ("AwaitingApproval", StatusCode::OK),
        ("Running", StatusCode::CONFLICT),
    ] {
        let log = Log::default();
        let client = cluster_and_plan(
            &log,
            json!({ "template": "web", "size": 2 }),
            "shop-1",
            json!({ "cluster": "shop", "operation": { "type": "create" }, "tasks": [] }),
            phase,
        );
        let (status, body, patches) =
            post_as_admin(client, &log, "/ui/clusters/team/shop/approve").await;
        assert_eq!(status, expected, "{phase}: {body}");
        if expected == StatusCode::OK {
            assert_eq!(patches.len(), 1);
            assert_eq!(
                patches[0].body["metadata"]["annotations"]["theseus.dev/approved"],
                "true"
            );
        } else {
            assert!(body.contains("Running, not AwaitingApproval"), "{body}");
            assert!(patches.is_empty(), "nothing approved: {:?}", log.lines());
        }
    }
}

#[tokio::test]
async fn the_discovery_tree_is_shown_only_where_the_user_may_get_service_groups() {
    let groups = |allowed_in: &'static str| {
        let log = Log::default();
        let items: Vec<Value> = ["team-a", "team-b"]
            .into_iter()
            .map(|ns| {
                json!({
                    "apiVersion": "theseus.dev/v1alpha1", "kind": "ServiceGroup",
                    "metadata": { "name": "web", "namespace": ns },
                    "spec": { "service": "web", "labels": ["eu"], "replicas": 1,
                              "template": { "image": "nginx" } }
                })
            })
            .collect();
        let client = fake_api::client(&log, move |call: &Call| {
            let path = call.path.split('?').next().unwrap_or_default();
            match (call.method.as_str(), path) {
                ("GET", "/apis/theseus.dev/v1alpha1/servicegroups") => fake_api::ok(json!({
                    "apiVersion": "v1", "kind": "List", "metadata": {},
                    "items": items.clone()
                })),
                ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews") => {
                    let attributes = &call.body["spec"]["resourceAttributes"];
                    let allowed = attributes["resource"] == "servicegroups"
                        && attributes["verb"] == "get"
                        && attributes["namespace"] == allowed_in;
                    fake_api::ok(json!({
                        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                        "spec": call.body["spec"], "status": { "allowed": allowed }
                    }))
                }
                _ => fake_api::status(404, "NotFound"),
            }
        });
        dashboard(client).0
    };
    let (status, html, _) = send(&groups("team-a"), get("/ui/services?labels=eu")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    // team-a: allowed, so the tree is asked (this dashboard has none);
    // team-b: not allowed, so it is not even asked.
    assert!(
        html.contains("this dashboard has no discovery etcd"),
        "{html}"
    );
    assert!(
        html.contains("you may not get ServiceGroups in team-b"),
        "{html}"
    );
    assert!(
        !html.contains("you may not get ServiceGroups in team-a"),
        "{html}"
    );
    let (_, filtered, _) = send(&groups("team-a"), get("/ui/services?labels=us")).await;
    assert!(filtered.contains("No ServiceGroups match."), "{filtered}");
}

#[test]
fn a_plan_is_drawn_as_its_dag_by_level_with_an_edge_per_dependency() {
    use super::views::PlanDag;
    let tasks: Vec<crate::api::Task> = serde_json::from_value(json!([
        { "id": "n0/createNode", "node": "n0", "action": "createNode" },
        { "id": "n0/db/install", "node": "n0", "service": "db", "action": "install", "after": ["n0/createNode"] },
        { "id": "n1/createNode", "node": "n1", "action": "createNode" },
        { "id": "n1/app/start", "node": "n1", "service": "app", "action": "start",
          "after": ["n1/createNode", "n0/db/install"] }
    ]))
    .unwrap();
    let state = |id: &str| {
        if id.ends_with("createNode") {
            "Succeeded".to_owned()
        } else if id.ends_with("install") {
            "Running".to_owned()
        } else {
            "Pending".to_owned()
        }
    };
    let dag = PlanDag::of(&tasks, &state);
    let at: Vec<(usize, usize, &str)> = dag
        .boxes
        .iter()
        .map(|b| (b.x, b.y, b.label.as_str()))
        .collect();
    // Level 0: both createNodes; 1: the install; 2: the start (it waits
    // for the install).
    assert_eq!(
        at,
        [
            (0, 0, "CreateNode"),
            (0, 44, "CreateNode"),
            (196, 0, "Install db"),
            (392, 0, "Start app")
        ]
    );
    assert_eq!(dag.edges.len(), 3, "one edge per dependency");
    assert_eq!(
        dag.edges.iter().filter(|(_, done)| *done).count(),
        2,
        "edges from finished tasks are drawn done"
    );
    assert_eq!((dag.width, dag.height), (542, 78));
    let svg = askama::Template::render(&dag).unwrap();
    assert!(svg.contains(r#"class="task state-Running""#), "{svg}");
    assert!(
        svg.contains("<title>n1/app/start on n1: Pending</title>"),
        "{svg}"
    );
}

#[test]
fn a_node_s_services_and_logs_show_only_to_users_who_may_read_them() {
    use super::nodes::AgentView;
    use super::views::{Allowed, Snapshot, View, render};
    use crate::agent::observe::ServiceReport;
    use crate::api::NodeInstall;
    let node: NodeInstall = serde_json::from_value(serde_json::json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "NodeInstall",
        "metadata": {"name": "n1"},
        "spec": {},
        "status": {"phase": "Active", "address": "10.0.0.7",
                   "apiEndpoint": "http://127.0.0.1:7070"}
    }))
    .unwrap();
    let snapshot = Snapshot {
        nodes: vec![std::sync::Arc::new(node)],
        agent: Some(AgentView::Read {
            services: vec![ServiceReport {
                name: "web".into(),
                id: "web--1.0".into(),
                running: true,
                pid: Some(42),
                processes: 2,
                cpu_seconds: 1.25,
                memory_bytes: 3 * 1024 * 1024,
                restarts: 1,
            }],
            logs: vec![("web".into(), vec!["listening on <8080>".into()])],
        }),
        ..Snapshot::default()
    };
    let view = View::Node { name: "n1".into() };
    let reader = Allowed {
        logs: true,
        ..Allowed::default()
    };
    let out = render(&view, &snapshot, &reader);
    let row = out.rows("services");
    assert!(row.contains("web--1.0") && row.contains("1.25") && row.contains("3.0 MiB"));
    let logs = out.panel("node-logs");
    assert!(
        logs.contains("listening on &#60;8080&#62;"),
        "escaped: {logs}"
    );
    assert!(out.panel("node-summary").contains("10.0.0.7"));

    let out = render(&view, &snapshot, &Allowed::default());
    assert_eq!(out.rows("services"), "", "no services without access");
    let logs = out.panel("node-logs");
    assert!(!logs.contains("listening"), "{logs}");
    assert!(logs.contains("nodeinstalls/log"), "{logs}");
}

#[test]
fn an_object_s_page_shows_its_phase_conditions_and_a_tenant_s_usage_against_quota() {
    use super::pages::object_summary;
    let tenant: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "Tenant",
        "metadata": { "name": "team-a" },
        "spec": { "quotas": { "nodes": 5, "cpu": "4", "nodesPerClass": { "small": 2 } } },
        "status": {
            "usage": { "clusters": 2, "nodes": 5, "cpuMillis": 1500, "nodesPerClass": { "small": 1 } },
            "conditions": [{ "type": "Ready", "status": "True", "reason": "Ready", "message": "ok",
                             "lastTransitionTime": "2026-12-04T10:00:00Z" }]
        }
    }))
    .unwrap();
    let (phase, badges, usage) = object_summary("Tenant", &tenant);
    assert_eq!(phase, "");
    assert_eq!(badges.len(), 1);
    let row = |q: &str| usage.iter().find(|u| u.0 == q).cloned().unwrap();
    assert_eq!(
        row("nodes"),
        ("nodes".into(), "5".into(), "5".into(), "100".into(), true),
        "at its limit"
    );
    assert_eq!(
        row("cpu"),
        ("cpu".into(), "1500m".into(), "4".into(), "38".into(), false)
    );
    assert_eq!(
        row("clusters"),
        ("clusters".into(), "2".into(), "-".into(), "".into(), false),
        "no limit, no bar"
    );
    assert_eq!(row("nodesPerClass[small]").3, "50");

    let instance: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "AppInstance",
        "metadata": { "name": "shop", "namespace": "team-a" },
        "spec": {}, "status": { "phase": "Running" }
    }))
    .unwrap();
    let (phase, badges, usage) = object_summary("AppInstance", &instance);
    assert_eq!(
        (phase.as_str(), badges.len(), usage.len()),
        ("Running", 0, 0)
    );
}

#[tokio::test]
async fn a_stopped_plan_is_rolled_back_by_putting_the_spec_back_and_no_other() {
    for (phase, expected) in [
        ("Failed", StatusCode::OK),
        ("Running", StatusCode::CONFLICT),
    ] {
        let log = Log::default();
        let client = cluster_and_plan(
            &log,
            json!({ "template": "web", "size": 5, "config": { "fail": "true" } }),
            "shop-2",
            json!({
                "cluster": "shop", "operation": { "type": "scale" }, "tasks": [],
                "from": [{ "name": "shop-1", "nodeClass": "small", "services": ["web"] }],
                "fromRequest": { "size": 3 }
            }),
            phase,
        );
        let (status, body, patches) =
            post_as_admin(client, &log, "/ui/clusters/team/shop/rollback").await;
        assert_eq!(status, expected, "{phase}: {body}");
        if expected == StatusCode::OK {
            assert_eq!(patches.len(), 1);
            assert!(patches[0].path.contains("/clusters/shop"));
            assert_eq!(patches[0].body["spec"]["size"], 3);
            assert_eq!(patches[0].body["spec"]["config"], json!({ "fail": null }));
        } else {
            assert!(body.contains("rolls back by itself"), "{body}");
            assert!(patches.is_empty(), "nothing patched: {:?}", log.lines());
        }
    }
    // Without a CSRF token nothing is asked of the API server.
    let log = Log::default();
    let client = fake_api::client(&log, |_| fake_api::status(500, "Unexpected"));
    let (admin, _) = dashboard(client);
    let (status, _, _) = send(&admin, post("/ui/clusters/team/shop/rollback", None, "")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(log.calls().is_empty());
}
