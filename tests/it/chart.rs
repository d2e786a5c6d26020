//! The Helm chart (`charts/theseus`) against the testbed's helm and API
//! server: lint, server-side dry run, an install whose objects and RBAC are
//! checked with `kubectl auth can-i`, and the chart's copy of the CRDs.
//! Pods do not run (there is no image here); the objects and permissions are
//! what is under test.

use std::process::Command;

use crate::support::{self, TestNamespace, TestbedEnv, chart, repo_root};

#[test]
fn helm_lint_passes_also_with_strict() {
    let Some(tb) = require_testbed!() else { return };
    let out = tb.helm_ok(&["lint", &chart()]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let out = tb.helm_ok(&["lint", "--strict", &chart()]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    // Every optional part switched on lints too.
    tb.helm_ok(&[
        "lint",
        "--strict",
        &chart(),
        "--set",
        "discovery.enabled=true,discovery.etcd.tlsSecret=etcd-tls,discovery.etcd.clientCert=true",
        "--set",
        "discovery.etcd.authSecret=etcd-auth,metrics.serviceMonitor.enabled=true",
        "--set",
        "agent.hostNetwork=true,agent.apiTokenSecret=agent-token,agent.labels[0]=pool=web",
    ]);
}

#[test]
fn values_schema_rejects_wrong_values_naming_the_key() {
    let Some(tb) = require_testbed!() else { return };
    for (set, key) in [
        ("logFormat=xml", "logFormat"),
        ("agent.supervisor=docker", "supervisor"),
        ("operator.leaseSeconds=1", "leaseSeconds"),
        ("operator.replica=2", "replica"),
        ("discovery.etcd.endpoints[0]=etcd:2379", "endpoints"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("halt.createSecret=false", "secretName"),
        ("agent.identity.userPrefix=a'b", "userPrefix"),
        (
            "admissionPolicy.validationActions={Block}",
            "validationActions",
        ),
        (
            "agent.serviceAccount.create=false,operator.serviceAccount.create=false",
            "agent.serviceAccount and operator.serviceAccount name the same",
        ),
    ] {
        let out = tb.helm(&["template", "t", &chart(), "--set", set]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            stderr.contains(key),
            "--set {set}: the error does not name {key}: {stderr}"
        );
    }
}

#[tokio::test]
async fn rendered_chart_passes_server_side_dry_run() {
    let Some(tb) = support::with_crds() else {
        return;
    };
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "chart-dry").await;
    let variants: [&[&str]; 3] = [
        &[],
        &[
            "--set",
            "discovery.enabled=true,discovery.etcd.tlsSecret=etcd-tls,discovery.etcd.clientCert=true",
            "--set",
            "discovery.etcd.authSecret=etcd-auth,agent.hostNetwork=true",
            "--set",
            "agent.apiTokenSecret=agent-token,agent.listen=0.0.0.0:7070",
        ],
        &["--set", "agent.enabled=false,halt.enabled=false"],
    ];
    for extra in variants {
        let chart = chart();
        let mut args = vec!["template", "dry", &chart, "--namespace", &ns.name];
        args.extend_from_slice(extra);
        let yaml = tb.helm_ok(&args);
        let out = tb.kubectl_stdin(&["apply", "--dry-run=server"], &yaml);
        assert!(
            out.status.success(),
            "server-side dry run of the chart ({}) failed: {}",
            extra.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !yaml.contains("kind: ServiceMonitor"),
            "a ServiceMonitor is rendered though it is off by default"
        );
    }
    ns.delete(&client).await;
}

#[test]
fn service_monitor_is_rendered_only_when_enabled() {
    let Some(tb) = require_testbed!() else { return };
    let off = tb.helm_ok(&["template", "t", &chart()]);
    assert!(!off.contains("monitoring.coreos.com"), "{off}");
    let on = tb.helm_ok(&[
        "template",
        "t",
        &chart(),
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--show-only",
        "templates/operator-servicemonitor.yaml",
    ]);
    assert!(on.contains("apiVersion: monitoring.coreos.com/v1"), "{on}");
    assert!(on.contains("path: /metrics"), "{on}");
}

/// A release that is uninstalled when the test ends, even when it fails, so
/// that its cluster-scoped ClusterRoles do not outlive it.
struct Release {
    tb: TestbedEnv,
    name: String,
    namespace: String,
    /// Released after the uninstall (fields drop after `drop`).
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = self
            .tb
            .helm(&["uninstall", &self.name, "--namespace", &self.namespace]);
    }
}

/// `kubectl auth can-i VERB RESOURCE --as=system:serviceaccount:NS:SA [ARGS…]`.
fn can_i(tb: &TestbedEnv, ns: &str, sa: &str, verb: &str, what: &str, args: &[&str]) -> bool {
    let who = format!("--as=system:serviceaccount:{ns}:{sa}");
    can_i_as(tb, &[&who], verb, what, args)
}

/// `kubectl auth can-i VERB RESOURCE WHO… [ARGS…]`, WHO being `--as…` flags.
fn can_i_as(tb: &TestbedEnv, who: &[&str], verb: &str, what: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i", verb, what];
    all.extend_from_slice(who);
    all.extend_from_slice(args);
    let out = tb.kubectl(&all);
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl {} answered {other:?}: {}",
            all.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[tokio::test]
async fn helm_install_creates_every_object_with_least_privilege_rbac() {
    let Some(tb) = support::with_crds() else {
        return;
    };
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "chart").await;
    // The namespace name contains "theseus": it is also the objects' prefix.
    let release = Release {
        tb: tb.clone(),
        name: ns.name.clone(),
        namespace: ns.name.clone(),
        _turn: support::chart_release_lock(),
    };
    // A NodePool's EC2 credentials Secret, and the Secret a ConfigBundle's
    // secret parameter reads, named in the values.
    let creds = format!(
        "nodePools.credentialsSecrets[0].namespace={0},nodePools.credentialsSecrets[0].name=aws-creds,\
         config.agentSecrets[0].namespace={0},config.agentSecrets[0].names[0]=web-token",
        ns.name
    );
    let notes = tb.helm_ok(&[
        "install",
        &release.name,
        &chart(),
        "--namespace",
        &ns.name,
        "--set",
        &creds,
    ]);
    assert!(notes.contains("kubectl get theseus"), "{notes}");
    assert!(notes.contains("rollout status"), "{notes}");
    assert!(notes.contains("/halt"), "{notes}");

    let prefix = &release.name;
    let operator = format!("{prefix}-operator");
    let agent = format!("{prefix}-agent");
    let halt_secret = format!("{prefix}-halt-token");
    for (kind, name) in [
        ("deployment", &operator),
        ("daemonset", &agent),
        ("serviceaccount", &operator),
        ("serviceaccount", &agent),
        ("service", &operator),
        ("role", &operator),
        ("rolebinding", &operator),
        ("secret", &halt_secret),
    ] {
        tb.kubectl_ok(&["get", kind, name, "--namespace", &ns.name]);
    }
    let policy = format!("{agent}-node");
    let tenant_policy = format!("{prefix}-tenant");
    let tenant_admin = format!("{prefix}-tenant-admin");
    for (kind, name) in [
        ("validatingadmissionpolicy", &tenant_policy),
        ("clusterrole", &tenant_admin),
        ("clusterrole", &operator),
        ("clusterrolebinding", &operator),
        ("clusterrole", &agent),
        ("clusterrolebinding", &agent),
        ("validatingadmissionpolicy", &policy),
        ("validatingadmissionpolicybinding", &policy),
    ] {
        tb.kubectl_ok(&["get", kind, name]);
    }
    let token = tb.kubectl_ok(&[
        "get",
        "secret",
        &halt_secret,
        "--namespace",
        &ns.name,
        "-o",
        "jsonpath={.data.token}",
    ]);
    assert_eq!(token.len(), 44, "a 32-character token, base64: {token}");

    let deployment = tb.kubectl_ok(&[
        "get",
        "deployment",
        &operator,
        "--namespace",
        &ns.name,
        "-o",
        "json",
    ]);
    let deployment: serde_json::Value = serde_json::from_str(&deployment).unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--listen=0.0.0.0:8080"), "{args:?}");
    assert!(
        args.contains(&format!("--halt-token-secret={halt_secret}").as_str()),
        "{args:?}"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);

    // The upgrade keeps the halt token (read back with `lookup`).
    tb.helm_ok(&[
        "upgrade",
        &release.name,
        &chart(),
        "--namespace",
        &ns.name,
        "--reuse-values",
    ]);
    let after = tb.kubectl_ok(&[
        "get",
        "secret",
        &halt_secret,
        "--namespace",
        &ns.name,
        "-o",
        "jsonpath={.data.token}",
    ]);
    assert_eq!(token, after, "helm upgrade replaced the halt token");

    let n = ns.name.as_str();
    let ns_flag = ["--namespace", n];
    // The agent: its NodeInstall and status, its Node's labels; nothing else.
    let can = |verb: &str, what: &str, args: &[&str]| can_i(&tb, n, &agent, verb, what, args);
    assert!(can(
        "patch",
        "nodeinstalls.theseus.dev",
        &["--subresource=status"]
    ));
    assert!(can("create", "nodeinstalls.theseus.dev", &[]));
    assert!(can("watch", "nodeinstalls.theseus.dev", &[]));
    // Labels by merge patch, status by server-side apply: no update, no
    // delete (the admission policy confines the patches to its own node).
    assert!(can("patch", "nodeinstalls.theseus.dev", &[]));
    assert!(!can("update", "nodeinstalls.theseus.dev", &[]));
    assert!(!can(
        "update",
        "nodeinstalls.theseus.dev",
        &["--subresource=status"]
    ));
    assert!(!can("delete", "nodeinstalls.theseus.dev", &[]));
    assert!(can("get", "nodes", &[]));
    assert!(!can("patch", "packagesets.theseus.dev", &[]));
    assert!(!can("get", "secrets", &ns_flag));
    assert!(!can("list", "secrets", &["--all-namespaces"]));
    // config.agentSecrets: exactly the Secrets named, read only.
    assert!(can("get", "secrets/web-token", &ns_flag));
    assert!(!can("get", "secrets/aws-creds", &ns_flag));
    assert!(!can("list", "secrets", &ns_flag));
    assert!(!can(
        "get",
        "secrets/web-token",
        &["--namespace", "default"]
    ));
    assert!(!can("delete", "nodes", &[]));
    assert!(!can("patch", "nodes", &[]));
    assert!(!can("create", "pods", &ns_flag));
    assert!(!can("create", "events", &ns_flag));
    // Agents outside the cluster get the same role through their groups: a
    // client-certificate user and a per-node ServiceAccount.
    for who in [
        &["--as=theseus:node:n1", "--as-group=theseus:nodes"][..],
        &["--as=system:serviceaccount:theseus-nodes:theseus-node-n1"][..],
    ] {
        let can = |verb: &str, what: &str, args: &[&str]| can_i_as(&tb, who, verb, what, args);
        assert!(
            can(
                "patch",
                "nodeinstalls.theseus.dev",
                &["--subresource=status"]
            ),
            "{who:?}"
        );
        assert!(can("create", "nodeinstalls.theseus.dev", &[]), "{who:?}");
        assert!(!can("update", "nodeinstalls.theseus.dev", &[]), "{who:?}");
        assert!(can("get", "secrets/web-token", &ns_flag), "{who:?}");
        assert!(!can("get", "secrets/aws-creds", &ns_flag), "{who:?}");
        assert!(!can("patch", "packagesets.theseus.dev", &[]), "{who:?}");
    }

    // The operator.
    let can = |verb: &str, what: &str, args: &[&str]| can_i(&tb, n, &operator, verb, what, args);
    assert!(can("patch", "nodeinstalls.theseus.dev", &[]));
    assert!(!can(
        "patch",
        "nodeinstalls.theseus.dev",
        &["--subresource=status"]
    ));
    assert!(can("watch", "packagesets.theseus.dev", &[]));
    assert!(can(
        "patch",
        "packagesets.theseus.dev",
        &["--subresource=status"]
    ));
    // The PackageSets of application instances are the operator's own.
    assert!(can("patch", "packagesets.theseus.dev", &[]));
    assert!(!can("update", "packagesets.theseus.dev", &[]));
    assert!(can("watch", "packagerepositories.theseus.dev", &[]));
    // Application controllers: a role's namespace and its admins' binding,
    // and only to theseus-app-admin.
    assert!(can("create", "namespaces", &[]));
    // Tenants: a deleted tenant's namespaces go with it; its people are
    // bound to this release's tenant roles only; its status is written by
    // compare-and-swap (update), never applied.
    assert!(can("delete", "namespaces", &[]));
    for role in ["admin", "user", "catalog"] {
        assert!(can(
            "bind",
            &format!("clusterroles.rbac.authorization.k8s.io/{prefix}-tenant-{role}"),
            &[]
        ));
    }
    assert!(!can(
        "bind",
        "clusterroles.rbac.authorization.k8s.io/theseus-tenant-admin-other",
        &[]
    ));
    assert!(can(
        "update",
        "tenants.theseus.dev",
        &["--subresource=status"]
    ));
    assert!(!can("delete", "tenants.theseus.dev", &[]));
    assert!(can("delete", "clusters.theseus.dev", &["--all-namespaces"]));
    assert!(can("create", "resourcequotas", &["--all-namespaces"]));
    assert!(!can("delete", "resourcequotas", &["--all-namespaces"]));
    assert!(can(
        "bind",
        "clusterroles.rbac.authorization.k8s.io/theseus-app-admin",
        &[]
    ));
    assert!(!can(
        "bind",
        "clusterroles.rbac.authorization.k8s.io/cluster-admin",
        &[]
    ));
    assert!(can(
        "patch",
        "appinstances.theseus.dev",
        &["--subresource=status", "--all-namespaces"]
    ));
    assert!(can(
        "update",
        "servicegroups.theseus.dev",
        &["--subresource=finalizers", "--all-namespaces"]
    ));
    // An application instance's run.serviceGroup.
    assert!(can(
        "create",
        "servicegroups.theseus.dev",
        &["--all-namespaces"]
    ));
    assert!(can(
        "delete",
        "servicegroups.theseus.dev",
        &["--all-namespaces"]
    ));
    assert!(can(
        "patch",
        "nodepools.theseus.dev",
        &["--subresource=status"]
    ));
    assert!(can(
        "update",
        "nodepools.theseus.dev",
        &["--subresource=finalizers"]
    ));
    assert!(can(
        "create",
        "deployments.apps",
        &["--namespace", "default"]
    ));
    assert!(can(
        "create",
        "pods",
        &["--subresource=eviction", "--all-namespaces"]
    ));
    assert!(!can("create", "pods", &["--all-namespaces"]));
    assert!(can("patch", "nodes", &[]));
    assert!(!can("delete", "nodes", &[]));
    assert!(can(
        "create",
        "events.events.k8s.io",
        &["--namespace", "default"]
    ));
    // Leader election in its own namespace only, and only its own Lease
    // (create cannot be limited by name).
    assert!(can("create", "leases.coordination.k8s.io", &ns_flag));
    let lease = "leases.coordination.k8s.io/theseus-operator";
    assert!(can("update", lease, &ns_flag));
    assert!(can("get", lease, &ns_flag));
    assert!(!can("update", "leases.coordination.k8s.io/other", &ns_flag));
    assert!(!can("get", "leases.coordination.k8s.io/other", &ns_flag));
    assert!(!can("update", lease, &["--namespace", "default"]));
    assert!(!can(
        "create",
        "leases.coordination.k8s.io",
        &["--namespace", "default"]
    ));
    // The halt ConfigMap by name, in its own namespace.
    assert!(can("patch", "configmaps/theseus-halt", &ns_flag));
    assert!(!can("patch", "configmaps/other", &ns_flag));
    assert!(!can(
        "patch",
        "configmaps/theseus-halt",
        &["--namespace", "default"]
    ));
    // Its halt Secret, and no other Secret anywhere.
    assert!(can("get", &format!("secrets/{halt_secret}"), &ns_flag));
    assert!(!can("get", "secrets/other", &ns_flag));
    assert!(!can("list", "secrets", &ns_flag));
    assert!(!can("get", "secrets", &["--all-namespaces"]));
    assert!(!can("list", "secrets", &["--all-namespaces"]));
    assert!(!can(
        "get",
        &format!("secrets/{halt_secret}"),
        &["--namespace", "default"]
    ));
    // The NodePool credentials Secret named in the values, and only it.
    assert!(can("get", "secrets/aws-creds", &ns_flag));
    assert!(!can(
        "get",
        "secrets/aws-creds",
        &["--namespace", "default"]
    ));
    // NodePools delete the NodeInstalls of removed nodes.
    assert!(can("delete", "nodeinstalls.theseus.dev", &[]));

    tb.helm_ok(&["uninstall", &release.name, "--namespace", n]);
    let left = tb.kubectl(&["get", "clusterrole", &operator]);
    assert!(
        !left.status.success(),
        "the ClusterRole outlived the release"
    );
    drop(release);
    ns.delete(&client).await;
}

#[test]
fn chart_crds_are_the_generated_crds_byte_for_byte() {
    let chart_crds = repo_root().join("charts/theseus/crds");
    let drift = theseus::cli::crds::check_dir(&chart_crds);
    assert!(
        drift.is_empty(),
        "charts/theseus/crds drifted ({}); run `make chart-crds`",
        drift.join("; ")
    );
    let mut names: Vec<String> = std::fs::read_dir(repo_root().join("crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut copied: Vec<String> = std::fs::read_dir(&chart_crds)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    copied.sort();
    assert_eq!(
        names, copied,
        "charts/theseus/crds holds other files than crds/"
    );
    for name in names {
        let a = std::fs::read(repo_root().join("crds").join(&name)).unwrap();
        let b = std::fs::read(chart_crds.join(&name)).unwrap();
        assert!(
            a == b,
            "charts/theseus/crds/{name} differs from crds/{name}"
        );
    }
}

#[test]
fn crds_check_covers_the_chart_copy() {
    // `theseus crds --check` takes several directories; `make crds-check`
    // passes both.
    support::run::stdout_ok(
        Command::new(support::theseus())
            .args(["crds", "--check", "crds", "--check", "charts/theseus/crds"])
            .current_dir(repo_root()),
    );
}
