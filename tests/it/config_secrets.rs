//! A secret parameter of a ConfigBundle, end to end against the testbed: the
//! operator renders `${secret:apiToken}` into the package it serves and
//! names the Secret key in the node's target; each agent, acting as an
//! identity of its own, reads the key and writes the resolved file, mode
//! 0600, into its generation. A node whose identity may not read the
//! Secret fetches nothing, changes nothing and says why
//! (`SecretUnavailable`), and activates by itself once the read is granted.
//! The value is in no archive, no target, no status and no event.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::{Api, PostParams};
use serde_json::json;
use theseus::api::{NodeInstall, PackageSet};

use crate::config_bundles::{Rig, TOKEN, create_web_bundle, gunzip};
use crate::support::agents::Agent;
use crate::support::fleet::RUN_LABEL;
use crate::support::policy::Cleanup;
use crate::support::run::stdout_ok;
use crate::support::{TestbedEnv, eventually, impersonating_kubeconfig, theseus_command};

/// A kubeconfig that impersonates `user` in `group`, so the agent has
/// exactly the rights RBAC gives them.
fn kubeconfig_as(tb: &TestbedEnv, dir: &Path, user: &str, group: &str) -> PathBuf {
    let path = dir.join(format!("{}.kubeconfig", user.replace(':', "_")));
    impersonating_kubeconfig(tb, &path, user, &[group, "system:authenticated"])
}

fn apply(tb: &TestbedEnv, dir: &Path, name: &str, objects: &[serde_json::Value]) {
    let file = dir.join(format!("{name}.json"));
    let list = json!({ "apiVersion": "v1", "kind": "List", "items": objects });
    std::fs::write(&file, list.to_string()).unwrap();
    tb.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
}

/// The node's NodeInstall once `check` holds for it.
async fn node_where(
    nodes: &Api<NodeInstall>,
    node: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&NodeInstall) -> bool,
) -> NodeInstall {
    eventually(timeout, &format!("{node}: {what}"), || async {
        let ni = nodes.get(node).await.map_err(|e| e.to_string())?;
        if check(&ni) {
            Ok(ni)
        } else {
            Err(format!("{:?}", ni.status))
        }
    })
    .await
}

fn names_under(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_only_the_nodes_allowed_to_read_it_resolved_in_their_generation() {
    let Some(rig) = Rig::start("cfgsecret", &[]).await else {
        return;
    };
    let (tb, client, ns, run, tag) = (&rig.tb, &rig.client, &rig.ns, &rig.run, rig.tag());
    let dir = &rig.dir;

    // Two node identities in one group: the group may do what an agent
    // does; only `allowed` may read the Secret.
    let group = format!("theseus-test-{tag}:nodes");
    let user = |n: &str| format!("theseus-test-{tag}:node:{n}");
    let agent_role = format!("theseus-test-{tag}-agent");
    let mut cleanup = Cleanup::new(tb);
    cleanup.add("clusterrole", &agent_role);
    cleanup.add("clusterrolebinding", &agent_role);
    apply(
        tb,
        dir.path(),
        "agent-rbac",
        &[
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": { "name": agent_role },
                "rules": [
                    { "apiGroups": ["theseus.dev"], "resources": ["nodeinstalls"],
                      "verbs": ["get", "list", "watch", "create", "patch"] },
                    { "apiGroups": ["theseus.dev"], "resources": ["nodeinstalls/status"],
                      "verbs": ["get", "patch"] },
                    { "apiGroups": [""], "resources": ["nodes"], "verbs": ["get"] }
                ]
            }),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": { "name": agent_role },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": agent_role },
                "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group }]
            }),
        ],
    );
    let reader = |users: &[String]| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": "web-secret", "namespace": ns.name },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "web-secret" },
            "subjects": users.iter().map(|u| json!({
                "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u
            })).collect::<Vec<_>>()
        })
    };
    apply(
        tb,
        dir.path(),
        "secret-reader",
        &[
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": { "name": "web-secret", "namespace": ns.name },
                "rules": [{ "apiGroups": [""], "resources": ["secrets"],
                            "resourceNames": ["web"], "verbs": ["get"] }]
            }),
            reader(&[user("allowed")]),
        ],
    );

    let labels = format!("{RUN_LABEL}={run}");
    let start = |who: &str| {
        let kubeconfig = kubeconfig_as(tb, dir.path(), &user(who), &group);
        Agent::start_as(
            tb,
            &format!("{tag}-{who}"),
            &labels,
            &rig.trust,
            Some(kubeconfig),
        )
    };
    let mut allowed = start("allowed");
    let mut denied = start("denied");

    // The module, the Secret, the bundle; a set of the service and it.
    let bundles = create_web_bundle(tb, client, run, json!({}), &mut cleanup).await;
    rig.create_repository().await;
    let sets: Api<PackageSet> = Api::all(client.clone());
    let set: PackageSet = serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageSet",
        "metadata": { "name": run, "labels": { RUN_LABEL: run } },
        "spec": {
            "repository": run,
            "packages": ["cfgweb--1.0.0"],
            "configBundles": [{ "namespace": ns.name, "name": "web" }],
            "nodeSelector": { "matchLabels": { RUN_LABEL: run } },
            "strategy": { "maxUnavailable": 2, "failureThreshold": 2, "healthTimeoutSeconds": 10 }
        }
    }))
    .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();

    // The rendered package names the parameter it refers to, not its value.
    let rendered = eventually(Duration::from_secs(60), "the bundle renders", || async {
        let b = bundles.get("web").await.map_err(|e| e.to_string())?;
        match b.status.as_ref().map(|s| s.rendered.clone()) {
            Some(r) if !r.is_empty() => Ok(r),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(rendered.len(), 1, "{rendered:?}");
    assert_eq!(rendered[0].secrets, ["apiToken"]);
    let id = rendered[0].package_id.clone();

    // The allowed node runs the set, its token resolved in its own
    // generation only.
    let nodes: Api<NodeInstall> = Api::all(client.clone());
    let ni = node_where(
        &nodes,
        &allowed.node,
        "the set active",
        Duration::from_secs(120),
        |ni| {
            let st = ni.status.clone().unwrap_or_default();
            st.active.contains(&id) && st.phase == theseus::api::NodePhase::Active
        },
    )
    .await;
    let target = ni.spec.target.clone().unwrap();
    assert_eq!(target.secrets.len(), 1, "{:?}", target.secrets);
    let reference = &target.secrets[0];
    assert_eq!(
        (
            reference.package.as_str(),
            reference.parameter.as_str(),
            reference.namespace.as_str(),
            reference.name.as_str(),
            reference.key.as_str()
        ),
        (
            "web-config",
            "apiToken",
            ns.name.as_str(),
            "web",
            "api-token"
        )
    );
    let token_file = allowed.root.join("current/etc/web/token");
    let meta = std::fs::symlink_metadata(&token_file).unwrap();
    assert!(meta.is_file(), "a resolved file, not a link: {meta:?}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap(),
        format!("{TOKEN}\n")
    );
    // The package in the cache keeps the reference; the file without one
    // is still a link into it.
    let cached = allowed
        .root
        .join("packages")
        .join(&id)
        .join("etc/web/token");
    assert_eq!(
        std::fs::read_to_string(&cached).unwrap(),
        "${secret:apiToken}\n"
    );
    let conf = allowed.root.join("current/etc/web/web.conf");
    assert!(std::fs::symlink_metadata(&conf).unwrap().is_symlink());

    // The denied node says why, names the Secret and what to do, and has
    // fetched and changed nothing.
    let refused = node_where(
        &nodes,
        &denied.node,
        "SecretUnavailable",
        Duration::from_secs(60),
        |ni| {
            ni.status
                .as_ref()
                .is_some_and(|s| s.reason.as_deref() == Some("SecretUnavailable"))
        },
    )
    .await;
    let st = refused.status.clone().unwrap();
    let message = st.message.clone().unwrap_or_default();
    assert!(
        message.contains(&format!("Secret {}/web", ns.name)) && message.contains("grant"),
        "{message}"
    );
    assert!(st.active.is_empty(), "{:?}", st.active);
    let fetched = names_under(&denied.root.join("packages"));
    assert!(fetched.is_empty(), "fetched {fetched:?}");
    assert!(names_under(&denied.root.join("generations")).is_empty());

    // The value is nowhere but in the allowed node's resolved file.
    let archive = reqwest::get(format!("{}/packages/{id}.tar.gz", rig.config_url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let tar = gunzip(&archive);
    assert!(!tar.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()));
    let mut seen = Vec::new();
    for node in [&allowed.node, &denied.node] {
        seen.push(serde_json::to_string(&nodes.get(node).await.unwrap()).unwrap());
    }
    seen.push(serde_json::to_string(&sets.get(run).await.unwrap()).unwrap());
    seen.push(serde_json::to_string(&bundles.get("web").await.unwrap()).unwrap());
    for events_ns in [ns.name.as_str(), "default"] {
        seen.push(tb.kubectl_ok(&["-n", events_ns, "get", "events", "-o", "json"]));
    }
    for text in &seen {
        assert!(!text.contains(TOKEN), "the secret's value in: {text}");
    }

    // Granted the read, the denied node tries again by itself.
    apply(
        tb,
        dir.path(),
        "secret-reader-both",
        &[reader(&[user("allowed"), user("denied")])],
    );
    node_where(
        &nodes,
        &denied.node,
        "the set active after the grant",
        Duration::from_secs(120),
        |ni| {
            let st = ni.status.clone().unwrap_or_default();
            st.active.contains(&id) && st.reason.is_none()
        },
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(denied.root.join("current/etc/web/token")).unwrap(),
        format!("{TOKEN}\n")
    );

    // Agents stopped first: a running agent would register its NodeInstall
    // again (and holds its root, which `theseus pkg check` waits for). Both
    // active trees verify, resolved files included.
    let names = [allowed.node.clone(), denied.node.clone()];
    for agent in [&mut allowed, &mut denied] {
        agent.stop();
        stdout_ok(
            theseus_command()
                .arg("pkg")
                .arg("--root")
                .arg(&agent.root)
                .arg("check"),
        );
    }
    drop((allowed, denied));
    for name in &names {
        crate::support::agents::delete(&nodes, name).await;
    }
    cleanup.add("packageset", run);
    cleanup.add("packagerepository", run);
    drop(cleanup);
}
