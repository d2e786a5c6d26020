//! The dashboard in a real headless Chromium, served by a real operator over
//! the testbed: users sign in with ServiceAccount tokens, RBAC decides what
//! they see and may change, and pages follow the fleet through their live
//! streams alone (a marker set on the page at load must survive: no reload).

use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use theseus::api::conditions;
use theseus::api::{NodePool, PackageSet};

use crate::support::browser::{Browser, Page};
use crate::support::fleet::{Operator, RUN_LABEL};
use crate::support::operator::{CONFIG, Rig, V1};
use crate::support::pools::LocalRig;
use crate::support::repo_root;

/// How long a page may take to show a change (generous: the whole suite runs at once).
const LIVE: Duration = Duration::from_secs(45);

/// A ServiceAccount of the test's namespace bound to `cluster_role`, and a
/// token of it; the binding is named after the account and the namespace.
async fn account(client: &Client, ns: &str, name: &str, cluster_role: &str) -> String {
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    let sa: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap();
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": format!("{ns}-{name}"), "labels": { RUN_LABEL: ns } },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role },
        "subjects": [{ "kind": "ServiceAccount", "name": name, "namespace": ns }]
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let request: TokenRequest =
        serde_json::from_value(json!({ "spec": { "audiences": [], "expirationSeconds": 3600 } }))
            .unwrap();
    accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .expect("a token")
}

/// A ClusterRole that reads every Theseus kind, ConfigMaps and Events and
/// changes nothing.
async fn viewer_role(client: &Client, ns: &str) -> String {
    let name = format!("{ns}-viewer");
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { RUN_LABEL: ns } },
        "rules": [
            { "apiGroups": ["theseus.dev"], "resources": ["*"], "verbs": ["get", "list", "watch"] },
            { "apiGroups": [""], "resources": ["configmaps", "events"], "verbs": ["get", "list", "watch"] }
        ]
    }))
    .unwrap();
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    name
}

/// Deletes the cluster-scoped RBAC objects of run `ns`.
async fn remove_rbac(client: &Client, ns: &str) {
    let params = kube::api::ListParams::default().labels(&format!("{RUN_LABEL}={ns}"));
    let _ = Api::<ClusterRoleBinding>::all(client.clone())
        .delete_collection(&DeleteParams::default(), &params)
        .await;
    let _ = Api::<ClusterRole>::all(client.clone())
        .delete_collection(&DeleteParams::default(), &params)
        .await;
}

/// Signs in on the login page with `token`; the page is then the fleet.
async fn sign_in(page: &Page, base: &str, token: &str) {
    page.goto(&format!("{base}/ui/login")).await;
    page.find("#token").await.unwrap().send_keys(token).await;
    page.find("button[type=submit]")
        .await
        .unwrap()
        .click()
        .await;
    page.wait_until(
        LIVE,
        "signed in, on the fleet page",
        "location.pathname === '/ui/' && document.querySelector('#halt-banner') !== null",
    )
    .await;
    mark(page).await;
}

/// Marks the page: [`unreloaded`] then tells whether it is the same page.
async fn mark(page: &Page) {
    page.execute(
        "window.theseusTestMark = 'still here'; return null;",
        vec![],
    )
    .await;
}

async fn unreloaded(page: &Page) -> bool {
    page.execute("return window.theseusTestMark === 'still here';", vec![])
        .await
        .as_bool()
        .unwrap_or(false)
}

/// A catalog of the run's own (a node class, a service and a template of
/// at least four nodes, each named after the run), so that no other test's
/// catalog is touched; the template's name. [`remove_catalog`] deletes it.
fn private_catalog(tb: &crate::support::TestbedEnv, run: &str) -> String {
    let yaml = format!(
        r#"apiVersion: theseus.dev/v1alpha1
kind: NodeClass
metadata: {{name: {run}-small, labels: {{{RUN_LABEL}: {run}}}}}
spec: {{provider: {{type: Local, local: {{}}}}, capacity: {{cpu: "2", memory: 8Gi}}, cost: 1}}
---
apiVersion: theseus.dev/v1alpha1
kind: ServiceDefinition
metadata: {{name: {run}-app, labels: {{{RUN_LABEL}: {run}}}}}
spec: {{packages: [app--1.0.0], resources: {{cpu: "1", memory: 2Gi}}}}
---
apiVersion: theseus.dev/v1alpha1
kind: ClusterTemplate
metadata: {{name: {run}-tpl, labels: {{{RUN_LABEL}: {run}}}}}
spec:
  compatibility: {{services: [{run}-app], nodeClasses: [{run}-small]}}
  defaults: {{services: [{run}-app], nodeClass: {run}-small}}
  constraints:
    size: {{min: 4, max: 20}}
    services:
      {run}-app: {{count: {{min: 4}}}}
"#
    );
    let out = tb.kubectl_stdin(&["apply"], &yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{run}-tpl")
}

/// Deletes the catalog of [`private_catalog`].
fn remove_catalog(tb: &crate::support::TestbedEnv, run: &str) {
    tb.kubectl(&[
        "delete",
        "clustertemplates,servicedefinitions,nodeclasses",
        "-l",
        &format!("{RUN_LABEL}={run}"),
        "--wait=false",
    ]);
}

/// Where the README's screenshots go.
fn screenshot_path(name: &str) -> std::path::PathBuf {
    repo_root()
        .join("docs/images")
        .join(format!("dashboard-{name}.png"))
}

/// The status of a POST made from the page by script with the page's CSRF
/// token, as a forger with the user's session would.
async fn forged_post(page: &Page, path: &str, body: &str) -> u64 {
    page.execute(
        "var csrf = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token'];
         var x = new XMLHttpRequest();
         x.open('POST', arguments[0], false);
         x.setRequestHeader('Content-Type', 'application/x-www-form-urlencoded');
         x.setRequestHeader('X-CSRF-Token', csrf);
         x.send(arguments[1]);
         return x.status;",
        vec![json!(path), json!(body)],
    )
    .await
    .as_u64()
    .unwrap_or_default()
}

/// A second PackageSet of the run that selects no node.
async fn idle_set(rig: &Rig) -> String {
    let name = format!("{}-idle", rig.run);
    let set = json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageSet",
        "metadata": { "name": name, "labels": { RUN_LABEL: rig.run } },
        "spec": {
            "repository": rig.run,
            "packages": [V1, CONFIG],
            "nodeSelector": { "matchLabels": { RUN_LABEL: rig.run, "theseus.dev/none": "none" } }
        }
    });
    rig.sets()
        .patch(
            &name,
            &PatchParams::apply("dashboard-test").force(),
            &Patch::Apply(&set),
        )
        .await
        .unwrap();
    name
}

#[tokio::test]
async fn an_admin_watches_a_rollout_live_and_halts_every_set_seen_in_a_second_page() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let Some(rig) = Rig::new("dash-admin").await else {
        return;
    };
    let operator = rig.operator("a");
    let base = operator.http.clone();
    let token = account(&rig.client, &rig.ns.name, "admin", "cluster-admin").await;
    let fleet = rig.fleet(4, Duration::from_millis(1500)).await;
    let idle = idle_set(&rig).await;

    let first = browser.new_session().await;
    sign_in(&first, &base, &token).await;

    // The set appears, and its progress bar moves, without a reload.
    rig.apply_set(&[V1], 1).await;
    let row = format!("#set-{}", rig.run);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let value = first
            .execute(
                "var p = document.querySelector(arguments[0] + ' progress');
                 return p ? [p.value, p.max] : null;",
                vec![json!(row)],
            )
            .await;
        if let Some([value, max]) = value.as_array().map(|a| [a[0].as_f64(), a[1].as_f64()]) {
            let (value, max) = (value.unwrap_or(-1.0), max.unwrap_or(-1.0));
            if seen.last() != Some(&(value, max)) {
                seen.push((value, max));
            }
            if max == 4.0 && value == 4.0 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the bar never reached 4/4: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.iter().any(|&(v, m)| m == 4.0 && v > 0.0 && v < 4.0),
        "the bar moved through the rollout: {seen:?}"
    );
    assert!(unreloaded(&first).await, "the page was never reloaded");
    rig.wait_condition("Available", "True", Duration::from_secs(60))
        .await;

    // A second, independently signed-in page.
    let second = browser.new_session().await;
    sign_in(&second, &base, &token).await;
    for set in [&rig.run, &idle] {
        second
            .wait_until(
                LIVE,
                "both sets listed",
                &format!("document.querySelector('#set-{set}') !== null"),
            )
            .await;
    }

    // Halt from the first page; the second follows every set to Halted.
    first
        .find("input[name=reason]")
        .await
        .unwrap()
        .send_keys("dashboard test")
        .await;
    first.find("button.halt").await.unwrap().click().await;
    let asked = first.accept_alert().await;
    assert!(asked.contains("Halt every rollout"), "{asked}");
    let halted_at = Instant::now();
    second
        .wait_until(
            LIVE,
            "every set shown Halted, and the banner",
            &format!(
                "document.querySelector('#set-{} .tag.bad') !== null
                 && document.querySelector('#set-{} .tag.bad') !== null
                 && document.querySelector('#halt-banner.halted') !== null
                 && document.querySelector('#halt-banner').textContent.includes('dashboard test')",
                rig.run, idle
            ),
        )
        .await;
    eprintln!(
        "the second page showed every set Halted {:?} after the click",
        halted_at.elapsed()
    );
    assert!(
        unreloaded(&second).await,
        "the second page followed without a reload"
    );
    let user = format!("system:serviceaccount:{}:admin", rig.ns.name);
    for name in [&rig.run, &idle] {
        let set = rig.sets().get(name).await.unwrap();
        let st = set.status.unwrap_or_default();
        let halted = conditions::find(&st.conditions, "Halted").expect("Halted");
        assert_eq!(halted.status, "True", "{name}: {halted:?}");
        assert!(
            halted.message.contains(&user),
            "the halt names its user: {}",
            halted.message
        );
    }
    first.screenshot(&screenshot_path("fleet")).await;
    first
        .goto(&format!("{base}/ui/packagesets/{}", rig.run))
        .await;
    first
        .wait_until(
            LIVE,
            "the set's nodes",
            "document.querySelectorAll('#nodes tr').length === 4",
        )
        .await;
    first.screenshot(&screenshot_path("packageset")).await;

    // Resume from the second page; the first (now the set's page) follows.
    mark(&first).await;
    second.find("button.resume").await.unwrap().click().await;
    second.accept_alert().await;
    first
        .wait_until(
            LIVE,
            "the banner says running",
            "document.querySelector('#halt-banner.running') !== null",
        )
        .await;
    assert!(unreloaded(&first).await);
    let halt = Api::<ConfigMap>::namespaced(rig.client.clone(), &rig.ns.name)
        .get_opt("theseus-halt")
        .await
        .unwrap();
    assert!(halt.is_none(), "resumed: {halt:?}");

    // The create page previews the layout as the form is filled in.
    let template = private_catalog(&rig.tb, &rig.run);
    first
        .goto(&format!("{base}/ui/clusters/new?namespace={}", rig.ns.name))
        .await;
    first
        .find("input[name=name]")
        .await
        .unwrap()
        .send_keys("analytics")
        .await;
    first
        .execute(
            "var s = document.querySelector('select[name=template]'); s.value = arguments[0];
             s.dispatchEvent(new Event('change', { bubbles: true })); return null;",
            vec![json!(template)],
        )
        .await;
    // The template decides the form's fields: its services as checkboxes,
    // its default checked.
    first
        .wait_until(
            LIVE,
            "the template's fields",
            &format!(
                "document.querySelector('#template-fields[data-template=\"{template}\"] input[name=\"service.{run}-app\"]:checked') !== null",
                run = rig.run
            ),
        )
        .await;
    first
        .find("input[name=size]")
        .await
        .unwrap()
        .send_keys("6")
        .await;
    first
        .wait_until(LIVE, "the preview shows six nodes", "document.querySelector('#preview-summary') !== null && document.querySelector('#preview-summary').textContent.includes('6 nodes')")
        .await;
    first.screenshot(&screenshot_path("new-cluster")).await;

    first.close().await;
    second.close().await;
    drop(operator);
    let _ = rig.sets().delete(&idle, &DeleteParams::default()).await;
    remove_rbac(&rig.client, &rig.ns.name).await;
    remove_catalog(&rig.tb, &rig.run);
    rig.clean_up(fleet).await;
}

#[tokio::test]
async fn an_admin_scales_a_node_pool_and_sees_its_instances_appear() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let Some(rig) = LocalRig::new("dash-pool").await else {
        return;
    };
    let operator: Operator = rig.operator();
    let base = operator.http.clone();
    let token = account(&rig.client, &rig.ns.name, "admin", "cluster-admin").await;
    rig.apply_pool(0, "Force").await;

    let page = browser.new_session().await;
    sign_in(&page, &base, &token).await;
    page.wait_until(
        LIVE,
        "the pool listed",
        &format!("document.querySelector('#pool-{}') !== null", rig.run),
    )
    .await;
    page.goto(&format!("{base}/ui/nodepools/{}", rig.run)).await;
    mark(&page).await;
    let replicas = page.find("#replicas").await.unwrap();
    replicas.clear().await;
    replicas.send_keys("2").await;
    page.find("button.scale").await.unwrap().click().await;
    let asked = page.accept_alert().await;
    assert!(
        asked.contains(&rig.run),
        "the confirmation names the pool: {asked}"
    );
    page.wait_until(
        LIVE,
        "two instances listed",
        "document.querySelectorAll('#instances tr.instance').length === 2",
    )
    .await;
    assert!(unreloaded(&page).await);
    let pool = rig.pools().get(&rig.run).await.unwrap();
    assert_eq!(pool.spec.replicas, 2);
    let ids: Vec<String> = pool
        .status
        .unwrap_or_default()
        .instances
        .iter()
        .map(|i| i.id.clone())
        .collect();
    for id in &ids {
        assert!(page.exists(&format!("#instance-{id}")).await, "{id} shown");
    }
    page.wait_until(
        Duration::from_secs(60),
        "both ready",
        "document.querySelector('#pool-counts') && document.querySelector('#pool-summary').textContent.includes('2 ready')",
    )
    .await;
    page.screenshot(&screenshot_path("nodepool")).await;
    page.close().await;

    rig.scale(0);
    crate::support::pools::delete_and_wait(&rig.pools(), &rig.run).await;
    drop(operator);
    remove_rbac(&rig.client, &rig.ns.name).await;
    rig.ns.delete(&rig.client).await;
}

#[tokio::test]
async fn a_reader_sees_no_buttons_a_forged_post_is_refused_and_bad_tokens_sign_in_again() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let Some(rig) = Rig::new("dash-viewer").await else {
        return;
    };
    let operator = rig.operator("a");
    let base = operator.http.clone();
    let role = viewer_role(&rig.client, &rig.ns.name).await;
    let token = account(&rig.client, &rig.ns.name, "viewer", &role).await;
    rig.apply_set(&[V1], 1).await;
    let pools = Api::<NodePool>::all(rig.client.clone());
    crate::support::pools::apply(
        &pools,
        &rig.run,
        0,
        json!({ "provider": { "type": "Local", "local": {} } }),
    )
    .await;

    let page = browser.new_session().await;
    sign_in(&page, &base, &token).await;
    page.wait_until(
        LIVE,
        "the set listed",
        &format!("document.querySelector('#set-{}') !== null", rig.run),
    )
    .await;
    assert!(
        !page.exists("button.halt").await,
        "no halt button for a reader"
    );
    assert!(!page.exists("input[name=reason]").await);
    page.goto(&format!("{base}/ui/packagesets/{}", rig.run))
        .await;
    page.wait_for("#set-summary", LIVE).await;
    assert!(
        !page.exists("button[hx-post$='/pause']").await,
        "no pause button"
    );
    page.goto(&format!("{base}/ui/nodepools/{}", rig.run)).await;
    page.wait_for("#pool-summary", LIVE).await;
    assert!(
        !page.exists("#scale-form").await,
        "no scale form for a reader"
    );

    // The same requests the buttons would make, forged with the session's
    // own CSRF token: the API server refuses them as this user.
    assert_eq!(forged_post(&page, "/ui/halt", "reason=forged").await, 403);
    let scale = format!("/ui/nodepools/{}/scale", rig.run);
    assert_eq!(forged_post(&page, &scale, "replicas=5").await, 403);
    let pause = format!("/ui/packagesets/{}/pause", rig.run);
    assert_eq!(forged_post(&page, &pause, "paused=true").await, 403);
    let halt = Api::<ConfigMap>::namespaced(rig.client.clone(), &rig.ns.name)
        .get_opt("theseus-halt")
        .await
        .unwrap();
    assert!(halt.is_none(), "nothing halted: {halt:?}");
    assert_eq!(pools.get(&rig.run).await.unwrap().spec.replicas, 0);
    let set: PackageSet = rig.sets().get(&rig.run).await.unwrap();
    assert!(!set.spec.paused);
    page.close().await;

    // A token the API server does not accept never gets past the login page.
    let stranger = browser.new_session().await;
    stranger.goto(&format!("{base}/ui/login")).await;
    stranger
        .find("#token")
        .await
        .unwrap()
        .send_keys("not-a-token")
        .await;
    stranger
        .find("button[type=submit]")
        .await
        .unwrap()
        .click()
        .await;
    stranger.wait_for("#login-error", LIVE).await;
    stranger.screenshot(&screenshot_path("login")).await;
    stranger
        .add_cookie("theseus-token", "forged-or-expired")
        .await;
    stranger.goto(&format!("{base}/ui/")).await;
    stranger
        .wait_until(
            LIVE,
            "back on the login page",
            "location.pathname === '/ui/login' && location.search === '?expired=1'",
        )
        .await;
    assert!(stranger.exists("#login-expired").await);
    stranger.close().await;

    // A signed-in user whose token stops being valid (its ServiceAccount is
    // deleted) is sent to the login page on the next page.
    let gone = account(&rig.client, &rig.ns.name, "leaver", &role).await;
    let leaver = browser.new_session().await;
    sign_in(&leaver, &base, &gone).await;
    Api::<ServiceAccount>::namespaced(rig.client.clone(), &rig.ns.name)
        .delete("leaver", &DeleteParams::default())
        .await
        .unwrap();
    crate::support::eventually(LIVE, "the token is refused", || async {
        leaver.goto(&format!("{base}/ui/")).await;
        let at = leaver.url().await;
        if at.ends_with("/ui/login?expired=1") {
            Ok(())
        } else {
            Err(at)
        }
    })
    .await;
    leaver.close().await;

    crate::support::pools::delete_and_wait(&pools, &rig.run).await;
    drop(operator);
    remove_rbac(&rig.client, &rig.ns.name).await;
    let nodes = rig.fleet(0, Duration::from_millis(100)).await;
    rig.clean_up(nodes).await;
}

/// The dashboard's router in this process, acting as the testbed's admin
/// (as `theseus dashboard` does), and its CSRF token.
fn in_process(client: &Client, namespace: &str) -> (axum::Router, String) {
    let key = [3u8; 32];
    let dashboard = theseus::dashboard::Dashboard::new(
        theseus::dashboard::Mode::Kubeconfig {
            client: client.clone(),
            csrf_key: key,
        },
        namespace,
        None,
        None,
    );
    (
        theseus::dashboard::router(dashboard),
        theseus::dashboard::auth::csrf_token(&key, b""),
    )
}

async fn post_form(
    router: &axum::Router,
    csrf: &str,
    path: &str,
    form: &str,
) -> (u16, String, Option<String>) {
    use tower::ServiceExt;
    let request = axum::http::Request::post(path)
        .header("host", "dashboard")
        .header("hx-request", "true")
        .header("x-csrf-token", csrf)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(form.to_owned()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let redirect = response
        .headers()
        .get("hx-redirect")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        redirect,
    )
}

async fn get_page(router: &axum::Router, path: &str) -> (u16, String) {
    use tower::ServiceExt;
    let request = axum::http::Request::get(path)
        .header("host", "dashboard")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_create_page_previews_layouts_and_creates_the_cluster_with_the_api_servers_errors_by_field()
 {
    let Some(tb) = crate::support::testbed() else {
        return;
    };
    crate::support::apply_crds(&tb);
    let client = tb.client().await;
    let ns = crate::support::TestNamespace::create(&tb, &client, "dash-create").await;
    let template = private_catalog(&tb, &ns.name);
    let (router, csrf) = in_process(&client, &ns.name);

    // The preview solves as the form changes: six nodes of the template fit,
    // three do not, and the explanation says why.
    let form = |size: u32, name: &str| {
        format!(
            "namespace={}&name={name}&template={template}&size={size}",
            ns.name
        )
    };
    let (status, six, _) = post_form(&router, &csrf, "/ui/clusters/preview", &form(6, "lab")).await;
    assert_eq!(status, 200, "{six}");
    assert!(
        six.contains(&format!(
            "Size 6 of <span class=\"mono\">{template}</span> → 6 nodes"
        )),
        "{six}"
    );
    assert!(six.contains("lab-"), "nodes named after the cluster: {six}");
    let (_, three, _) = post_form(&router, &csrf, "/ui/clusters/preview", &form(3, "lab")).await;
    assert!(three.contains("No layout:"), "{three}");

    // The API server's validation answers next to the field it names.
    let (status, invalid, _) = post_form(&router, &csrf, "/ui/clusters", &form(0, "lab")).await;
    assert_eq!(status, 422, "{invalid}");
    assert!(
        invalid.contains(r#"id="error-spec-size""#) && invalid.contains("spec.size"),
        "{invalid}"
    );
    let clusters = Api::<theseus::api::Cluster>::namespaced(client.clone(), &ns.name);
    assert!(
        clusters.get_opt("lab").await.unwrap().is_none(),
        "nothing created"
    );

    // A valid form creates the Cluster and sends the page to it.
    let (status, _, redirect) = post_form(&router, &csrf, "/ui/clusters", &form(6, "lab")).await;
    assert_eq!(status, 201);
    assert_eq!(
        redirect.as_deref(),
        Some(format!("/ui/clusters/{}/lab", ns.name).as_str())
    );
    let cluster = clusters.get("lab").await.unwrap();
    assert_eq!(
        (cluster.spec.template.as_str(), cluster.spec.size),
        (template.as_str(), 6)
    );
    let (status, again, _) = post_form(&router, &csrf, "/ui/clusters", &form(6, "lab")).await;
    assert_eq!(status, 409, "an existing name is refused: {again}");
    let (status, new) = get_page(&router, "/ui/clusters/new").await;
    assert_eq!(status, 200, "{new}");
    assert!(
        new.contains(&format!(r#"<option value="{template}">{template}"#)),
        "{new}"
    );
    // The template decides the form's fields, keeping what was typed.
    let (status, fields) = get_page(
        &router,
        &format!("/ui/clusters/fields?template={template}&size=6&name=lab"),
    )
    .await;
    assert_eq!(status, 200, "{fields}");
    assert!(
        fields.contains(&format!(r#"data-template="{template}""#))
            && fields.contains(&format!(r#"name="service.{}-app" checked"#, ns.name))
            && fields.contains(r#"value="6""#),
        "{fields}"
    );
    let (status, page) = get_page(&router, &format!("/ui/clusters/{}/lab", ns.name)).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&format!("Cluster {}/lab", ns.name)), "{page}");
    assert!(
        page.contains("view=cluster&#38;namespace="),
        "the page is live: {page}"
    );

    let _ = clusters.delete("lab", &DeleteParams::default()).await;
    remove_catalog(&tb, &ns.name);
    ns.delete(&client).await;
}

#[tokio::test]
async fn a_schema_form_creates_and_edits_an_object_with_the_api_servers_errors_by_field() {
    let Some(tb) = crate::support::testbed() else {
        return;
    };
    crate::support::apply_crds(&tb);
    let client = tb.client().await;
    let (router, csrf) = in_process(&client, "default");
    let name = format!("dash-form-{:08x}", rand::random::<u32>());
    let classes = Api::<theseus::api::NodeClass>::all(client.clone());

    let (status, new) = get_page(&router, "/ui/edit/nodeclasses").await;
    assert_eq!(status, 200, "{new}");
    assert!(
        new.contains(r#"<select name="spec.provider.type">"#),
        "{new}"
    );
    let (_, list) = get_page(&router, "/ui/kinds/nodeclasses").await;
    assert!(
        list.contains(r#"href="/ui/edit/nodeclasses">New NodeClass</a>"#),
        "the admin may create: {list}"
    );

    // The API server's refusal lands next to the field; nothing is made.
    let form = |cost: &str| {
        format!(
            "name={name}&spec.provider.type=Local&spec.provider.local.servicePortBase=28000&spec.cost={cost}&spec.capacity.cpu=4&spec.nodeLabels=tier%3A+db"
        )
    };
    let (status, invalid, _) = post_form(&router, &csrf, "/ui/edit/nodeclasses", &form("-1")).await;
    assert_eq!(status, 422, "{invalid}");
    assert!(
        invalid.contains(
            r#"<span id="error-spec-cost" class="field-error" hx-swap-oob="true">spec.cost"#
        ),
        "{invalid}"
    );
    assert!(classes.get_opt(&name).await.unwrap().is_none());
    let (status, unreadable, _) =
        post_form(&router, &csrf, "/ui/edit/nodeclasses", &form("cheap")).await;
    assert_eq!(status, 422, "{unreadable}");
    assert!(unreadable.contains("is not a whole number"), "{unreadable}");

    // A valid form creates it as the user and sends the page to it.
    let (status, body, redirect) =
        post_form(&router, &csrf, "/ui/edit/nodeclasses", &form("3")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        redirect.as_deref(),
        Some(format!("/ui/kinds/nodeclasses/{name}").as_str())
    );
    let class = serde_json::to_value(classes.get(&name).await.unwrap()).unwrap();
    assert_eq!(class["spec"]["cost"], 3);
    let cpu = &class["spec"]["capacity"]["cpu"];
    assert!(*cpu == json!(4) || *cpu == json!("4"), "{cpu}");
    assert_eq!(class["spec"]["nodeLabels"], json!({ "tier": "db" }));

    // Its edit form is filled in, and an edit applies.
    let (_, page) = get_page(&router, &format!("/ui/kinds/nodeclasses/{name}")).await;
    assert!(
        page.contains(&format!(
            r#"href="/ui/edit/nodeclasses?name={name}">Edit</a>"#
        )),
        "{page}"
    );
    let (_, filled) = get_page(&router, &format!("/ui/edit/nodeclasses?name={name}")).await;
    assert!(filled.contains(r#"name="spec.cost" value="3""#), "{filled}");
    assert!(filled.contains("tier: db"), "{filled}");
    let (status, body, _) = post_form(&router, &csrf, "/ui/edit/nodeclasses", &form("5")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(classes.get(&name).await.unwrap().spec.cost, 5);

    let _ = classes.delete(&name, &DeleteParams::default()).await;
}

/// A real agent running the demo web service, its API behind a token; the
/// dashboard (in this process, served on loopback as the testbed's admin,
/// as `theseus dashboard` does) shows the node's page in a real browser.
#[tokio::test]
async fn a_node_s_page_shows_its_services_metrics_and_log_tail_live_from_its_agent() {
    use crate::support::agents::{Agent, Repo, demo_set, set_target, until_active};
    use theseus::api::NodeInstall;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let Some(tb) = crate::support::testbed() else {
        return;
    };
    crate::support::apply_crds(&tb);
    let client = tb.client().await;
    let repo = Repo::demo();
    let token = format!("agent-token-{:08x}", rand::random::<u32>());
    let mut agent = Agent::start_with(
        &tb,
        "dash-node",
        "",
        &repo.trust_args(),
        None,
        &["--api-token".to_owned(), token.clone()],
    );
    let nodes: Api<NodeInstall> = Api::all(client.clone());
    crate::support::eventually(Duration::from_secs(60), "the node registered", || {
        let nodes = nodes.clone();
        let node = agent.node.clone();
        async move {
            let endpoint = nodes
                .get_opt(&node)
                .await
                .map_err(|e| e.to_string())?
                .and_then(|n| n.status)
                .and_then(|s| s.api_endpoint);
            endpoint.ok_or_else(|| "no apiEndpoint yet".to_owned())
        }
    })
    .await;
    let hash = set_target(&nodes, &agent.node, &demo_set("1.0.0"), &repo.url, 30).await;
    until_active(&nodes, &agent.node, &hash).await;

    // The agent's own API: its services and metrics, only with the token.
    let api = nodes.get(&agent.node).await.unwrap();
    let endpoint = api.status.unwrap().api_endpoint.unwrap();
    assert_eq!(endpoint, format!("http://127.0.0.1:{}", agent.api_port));
    let http = reqwest::Client::new();
    let refused = http
        .get(format!("{endpoint}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let metrics = http
        .get(format!("{endpoint}/metrics"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let up = format!(
        "theseus_service_up{{node=\"{}\",service=\"demo-web\",package=\"demo-web--1.0.0\"}} 1",
        agent.node
    );
    assert!(metrics.contains(&up), "{metrics}");

    // The dashboard, reading agents with the token.
    let serve = |token: Option<String>| {
        let client = client.clone();
        async move {
            let dashboard = theseus::dashboard::Dashboard::new(
                theseus::dashboard::Mode::Kubeconfig {
                    client,
                    csrf_key: [5u8; 32],
                },
                "default",
                None,
                None,
            )
            .with_agent_token(token);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let server = tokio::spawn(async move {
                axum::serve(listener, theseus::dashboard::router(dashboard))
                    .await
                    .unwrap();
            });
            (base, server)
        }
    };
    let (base, server) = serve(Some(token.clone())).await;
    let page = browser.new_session().await;
    page.goto(&format!("{base}/ui/nodes/{}", agent.node)).await;
    let row = "#svc-demo-web";
    page.wait_until(
        LIVE,
        "the service running, with its memory",
        &format!(
            "document.querySelector('{row}') !== null
             && document.querySelector('{row}').textContent.includes('running')
             && !document.querySelector('{row} .memory').textContent.startsWith('0.0')"
        ),
    )
    .await;
    mark(&page).await;

    // A request to the service is logged by it; the page shows the line.
    let probe = format!("dashboard-probe-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let _ = reqwest::get(format!("http://127.0.0.1:{}/{probe}", agent.port)).await;
    page.wait_until(
        LIVE,
        "the service's new log line",
        &format!(
            "document.querySelector('pre.log[data-service=\"demo-web\"]') !== null
             && document.querySelector('pre.log[data-service=\"demo-web\"]').textContent.includes('{probe}')"
        ),
    )
    .await;
    page.screenshot(&screenshot_path("node")).await;

    // The service killed: the agent starts it again and the page counts it.
    assert_eq!(page.text(&format!("{row} .restarts")).await.trim(), "0");
    let pid: i32 = page
        .text(&format!("{row} td:nth-child(4)"))
        .await
        .trim()
        .parse()
        .expect("a pid on the page");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status()
        .unwrap();
    assert!(killed.success());
    page.wait_until(
        LIVE,
        "one restart counted, the service running again",
        &format!(
            "document.querySelector('{row} .restarts').textContent.trim() === '1'
             && document.querySelector('{row}').textContent.includes('running')"
        ),
    )
    .await;
    assert!(unreloaded(&page).await, "the page was never reloaded");
    page.close().await;
    server.abort();

    // A dashboard without the agents' token says so, and shows no service.
    let (base, server) = serve(None).await;
    let html = reqwest::get(format!("{base}/ui/nodes/{}", agent.node))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("--agent-token"), "{html}");
    assert!(!html.contains("svc-demo-web"), "{html}");
    server.abort();

    agent.stop();
    crate::support::agents::delete(&nodes, &agent.node).await;
}
