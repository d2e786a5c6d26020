//! The admission policy that confines each agent identity to its own
//! NodeInstall, against the testbed's API server: installed by the chart and
//! by `theseus policy`, tried with impersonated identities and with a real
//! ServiceAccount token bound to a pod on a kwok node.

use std::time::{Duration, Instant};

use crate::support::policy::*;
use crate::support::{self, TestNamespace, chart};

#[tokio::test]
async fn an_in_cluster_agent_writes_only_its_own_labels_and_status() {
    let Some(tb) = support::with_crds() else {
        return;
    };
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "policy").await;
    let nodes_ns = TestNamespace::create(&tb, &client, "policy-nodes").await;
    let ids = Ids::new();
    let mut cleanup = Cleanup::new(&tb);
    install_chart(&tb, &ns.name, &nodes_ns.name, &ids, &mut cleanup);
    let policy = format!("{}-agent-node", ns.name);
    let (a, b, c) = (ids.node("a"), ids.node("b"), ids.node("c"));
    for n in [&a, &b, &c] {
        cleanup.add("nodeinstall", n);
    }
    tb.kubectl_ok(&["get", "validatingadmissionpolicybinding", &policy]);
    assert_allowed(
        &tb.kubectl_stdin(&["create"], &node_install(&b, false)),
        "the admin creating B",
    );

    let agent_user = format!("--as=system:serviceaccount:{0}:{0}-agent", ns.name);
    let agent_of = |node: &str| {
        vec![
            agent_user.clone(),
            format!("--as-user-extra={NODE_EXTRA}={node}"),
        ]
    };
    let agent_a = agent_of(&a);
    let labels = r#"{"metadata":{"labels":{"zone":"z1"}}}"#;
    wait_in_force(&policy, "own-node", || {
        patch(&tb, &agent_a, &b, labels, &["--dry-run=server"])
    });

    // Its own NodeInstall: create without a target, labels, status.
    assert_allowed(
        &create_as(&tb, &agent_a, &node_install(&a, false), &[]),
        "agent A creating A",
    );
    assert_allowed(
        &patch(&tb, &agent_a, &a, labels, &[]),
        "agent A labelling A",
    );
    let status = r#"{"status":{"phase":"Idle","message":"policy test"}}"#;
    assert_allowed(
        &patch(&tb, &agent_a, &a, status, &["--subresource=status"]),
        "agent A writing A's status",
    );
    let written = tb.kubectl_ok(&["get", "nodeinstall", &a, "-o", "jsonpath={.status.message}"]);
    assert_eq!(written, "policy test");

    // Never a spec, not even its own, and nothing else of its metadata.
    let spec = format!(r#"{{"spec":{{"target":{}}}}}"#, target_json());
    assert_refused(
        &patch(&tb, &agent_a, &a, &spec, &[]),
        &policy,
        "no-spec",
        "agent A setting A's target",
    );
    assert_refused(
        &create_as(&tb, &agent_of(&c), &node_install(&c, true), &[]),
        &policy,
        "no-target",
        "agent C creating C with a target",
    );
    for (body, what) in [
        (
            r#"{"metadata":{"annotations":{"x":"y"}}}"#,
            "agent A annotating A",
        ),
        (
            r#"{"metadata":{"finalizers":["x.dev/y"]}}"#,
            "agent A adding a finalizer to A",
        ),
    ] {
        assert_refused(
            &patch(&tb, &agent_a, &a, body, &[]),
            &policy,
            "labels-and-status-only",
            what,
        );
    }

    // Never another node's object.
    let out = patch(&tb, &agent_a, &b, labels, &[]);
    assert_refused(&out, &policy, "own-node", "agent A labelling B");
    assert!(
        text(&out).contains(&format!(
            "the agent of node {a} may write only NodeInstall {a}, not {b}"
        )),
        "{}",
        text(&out)
    );
    assert_refused(
        &patch(&tb, &agent_a, &b, status, &["--subresource=status"]),
        &policy,
        "own-node",
        "agent A writing B's status",
    );
    // The agent's ServiceAccount with a token bound to no node names none.
    assert_refused(
        &create_as(
            &tb,
            std::slice::from_ref(&agent_user),
            &node_install(&c, false),
            &[],
        ),
        &policy,
        "node-identity",
        "the agent ServiceAccount without a node",
    );
    // Deleting is not in the agent's RBAC.
    let out = as_who(&tb, &agent_a, &["delete", "nodeinstall", &a]);
    assert!(
        !out.status.success() && text(&out).contains("forbidden"),
        "{}",
        text(&out)
    );

    // The operator writes spec; the admin is not bound by the policy.
    let operator = vec![format!(
        "--as=system:serviceaccount:{0}:{0}-operator",
        ns.name
    )];
    assert_allowed(
        &patch(&tb, &operator, &a, &spec, &[]),
        "the operator setting A's target",
    );
    assert_allowed(
        &patch(&tb, &[], &b, &spec, &[]),
        "the admin setting B's target",
    );
    let target = tb.kubectl_ok(&[
        "get",
        "nodeinstall",
        &a,
        "-o",
        "jsonpath={.spec.target.setHash}",
    ]);
    assert_eq!(target, "h1");
    drop(cleanup);
    ns.delete(&client).await;
    nodes_ns.delete(&client).await;
}

#[tokio::test]
async fn a_token_bound_to_a_pod_speaks_for_the_pods_node_only() {
    let Some(tb) = support::with_crds() else {
        return;
    };
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "policy-token").await;
    let nodes_ns = TestNamespace::create(&tb, &client, "policy-token-nodes").await;
    let ids = Ids::new();
    let mut cleanup = Cleanup::new(&tb);
    install_chart(&tb, &ns.name, &nodes_ns.name, &ids, &mut cleanup);
    let policy = format!("{}-agent-node", ns.name);
    let other = ids.node("other");
    cleanup.add("nodeinstall", &other);
    assert_allowed(
        &tb.kubectl_stdin(&["create"], &node_install(&other, false)),
        "the admin creating a NodeInstall",
    );

    // A pod of the agent's ServiceAccount on a kwok node, and a token bound
    // to it: the API server adds the pod's node to the token's user.
    let node = tb.kubectl_ok(&[
        "get",
        "nodes",
        "-l",
        "type=kwok",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    assert!(!node.is_empty(), "the testbed has no kwok node");
    let sa = format!("{}-agent", ns.name);
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: agent\n  namespace: {}\nspec:\n  nodeName: {node}\n  serviceAccountName: {sa}\n  automountServiceAccountToken: false\n  tolerations: [{{operator: Exists}}]\n  containers: [{{name: agent, image: theseus:policy-test}}]\n",
        ns.name
    );
    assert_allowed(
        &tb.kubectl_stdin(&["create"], &pod),
        "creating the agent pod",
    );
    let uid = tb.kubectl_ok(&[
        "get",
        "pod",
        "agent",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let token = tb.kubectl_ok(&[
        "create",
        "token",
        &sa,
        "-n",
        &ns.name,
        "--bound-object-kind=Pod",
        "--bound-object-name=agent",
        &format!("--bound-object-uid={uid}"),
        "--duration=10m",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = token_kubeconfig(&tb, dir.path(), token.trim());
    let with_token = vec![format!("--kubeconfig={}", kubeconfig.display())];
    let whoami = as_who(&tb, &with_token, &["auth", "whoami", "-o", "json"]);
    assert_allowed(&whoami, "auth whoami with the bound token");
    let who: serde_json::Value = serde_json::from_slice(&whoami.stdout).unwrap();
    assert_eq!(
        who["status"]["userInfo"]["extra"][NODE_EXTRA][0],
        node.as_str(),
        "{who}"
    );

    let labels = r#"{"metadata":{"labels":{"zone":"z1"}}}"#;
    wait_in_force(&policy, "own-node", || {
        patch(&tb, &with_token, &other, labels, &["--dry-run=server"])
    });
    let out = patch(&tb, &with_token, &other, labels, &[]);
    assert_refused(
        &out,
        &policy,
        "own-node",
        "the pod's token labelling another node's NodeInstall",
    );
    assert!(
        text(&out).contains(&format!("the agent of node {node} ")),
        "{}",
        text(&out)
    );
    // Its own node's object: allowed without a target, refused with one.
    // Server-side dry runs, so that no NodeInstall of a shared kwok node is
    // left for other tests to see.
    assert_refused(
        &create_as(
            &tb,
            &with_token,
            &node_install(&node, true),
            &["--dry-run=server"],
        ),
        &policy,
        "no-target",
        "the pod's token creating its node's NodeInstall with a target",
    );
    let out = create_as(
        &tb,
        &with_token,
        &node_install(&node, false),
        &["--dry-run=server"],
    );
    assert!(
        out.status.success() || text(&out).contains("AlreadyExists"),
        "the pod's token creating its node's NodeInstall was refused: {}",
        text(&out)
    );
    drop(cleanup);
    ns.delete(&client).await;
    nodes_ns.delete(&client).await;
}

#[tokio::test]
async fn agents_outside_the_cluster_are_confined_by_their_user_names() {
    let Some(tb) = support::with_crds() else {
        return;
    };
    let client = tb.client().await;
    let nodes_ns = TestNamespace::create(&tb, &client, "policy-outside").await;
    let ids = Ids::new();
    let mut cleanup = Cleanup::new(&tb);
    let policy = install_without_helm(&tb, &ids, &nodes_ns.name, &mut cleanup);

    let (a, b, s) = (ids.node("a"), ids.node("b"), ids.node("s"));
    for n in [&a, &b, &s] {
        cleanup.add("nodeinstall", n);
    }
    assert_allowed(
        &tb.kubectl_stdin(&["create"], &node_install(&b, false)),
        "the admin creating B",
    );
    // A client certificate's user and group: CN=PREFIX+NODE, O=GROUP.
    let user_a = vec![
        format!("--as={}{a}", ids.user_prefix),
        format!("--as-group={}", ids.group),
    ];
    let labels = r#"{"metadata":{"labels":{"zone":"z1"}}}"#;
    wait_in_force(&policy, "own-node", || {
        patch(&tb, &user_a, &b, labels, &["--dry-run=server"])
    });
    assert_allowed(
        &create_as(&tb, &user_a, &node_install(&a, false), &[]),
        "user A creating A",
    );
    let status = r#"{"status":{"phase":"Idle","message":"outside"}}"#;
    assert_allowed(
        &patch(&tb, &user_a, &a, status, &["--subresource=status"]),
        "user A writing A's status",
    );
    assert_refused(
        &patch(&tb, &user_a, &b, labels, &[]),
        &policy,
        "own-node",
        "user A labelling B",
    );
    let spec = format!(r#"{{"spec":{{"target":{}}}}}"#, target_json());
    assert_refused(
        &patch(&tb, &user_a, &a, &spec, &[]),
        &policy,
        "no-spec",
        "user A setting A's target",
    );

    // A per-node ServiceAccount: NAMESPACE/theseus-node-NODE.
    let sa_s = vec![format!(
        "--as=system:serviceaccount:{}:theseus-node-{s}",
        nodes_ns.name
    )];
    assert_allowed(
        &create_as(&tb, &sa_s, &node_install(&s, false), &[]),
        "ServiceAccount of S creating S",
    );
    assert_allowed(
        &patch(&tb, &sa_s, &s, labels, &[]),
        "ServiceAccount of S labelling S",
    );
    assert_refused(
        &patch(&tb, &sa_s, &b, labels, &[]),
        &policy,
        "own-node",
        "ServiceAccount of S labelling B",
    );

    // A real agent with its node's own ServiceAccount token: it registers
    // (create), heartbeats (status by server-side apply) and, restarted,
    // adopts its NodeInstall (labels by merge patch), all through the policy.
    let r = ids.node("r");
    cleanup.add("nodeinstall", &r);
    let sa = format!("theseus-node-{r}");
    tb.kubectl_ok(&["create", "serviceaccount", &sa, "-n", &nodes_ns.name]);
    let token = tb.kubectl_ok(&["create", "token", &sa, "-n", &nodes_ns.name]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = token_kubeconfig(&tb, dir.path(), token.trim());
    for run in ["1", "2"] {
        let agent = AgentProcess::start(&tb, &kubeconfig, &r, dir.path(), run);
        let status = "jsonpath={.status.heartbeat}/{.metadata.labels.run}";
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = tb.kubectl(&["get", "nodeinstall", &r, "-o", status]);
            let seen = String::from_utf8_lossy(&out.stdout).into_owned();
            let (heartbeat, label) = seen.split_once('/').unwrap_or_default();
            if !heartbeat.is_empty() && label == run {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the agent with its node's token did not register and heartbeat (run {run}): {seen}; log:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    // Members of the groups whose names follow no convention name no node.
    for who in [
        vec![
            "--as=someone".to_owned(),
            format!("--as-group={}", ids.group),
        ],
        vec![format!(
            "--as=system:serviceaccount:{}:default",
            nodes_ns.name
        )],
    ] {
        assert_refused(
            &patch(&tb, &who, &b, labels, &[]),
            &policy,
            "node-identity",
            &who.join(" "),
        );
    }
    drop(cleanup);
    nodes_ns.delete(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_pool_agents_act_as_their_nodes_own_service_accounts() {
    let Some(rig) = support::pools::LocalRig::new("policy-local").await else {
        return;
    };
    let tb = &rig.tb;
    let nodes_ns = TestNamespace::create(tb, &rig.client, "policy-local-nodes").await;
    let ids = Ids::new();
    let mut cleanup = Cleanup::new(tb);
    let policy = install_without_helm(tb, &ids, &nodes_ns.name, &mut cleanup);
    let _operator = rig.operator_with(&[
        "--local-agent-identity",
        "service-account",
        "--node-identity-namespace",
        &nodes_ns.name,
    ]);
    rig.apply_pool(2, "Wait").await;
    rig.joined(2).await;
    let node = |seq: u32| format!("{}-{seq}", rig.run);
    let dir = |seq: u32| {
        rig.state
            .path()
            .join("nodepools")
            .join(&rig.run)
            .join(seq.to_string())
    };

    // Each node has its ServiceAccount, and its agent runs with it.
    let accounts = tb.kubectl_ok(&[
        "get",
        "serviceaccounts",
        "-n",
        &nodes_ns.name,
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    for seq in [0, 1] {
        let sa = format!("theseus-node-{}", node(seq));
        assert!(
            accounts.split_whitespace().any(|a| a == sa),
            "{sa} in {accounts}"
        );
    }
    let pids = support::pools::agent_pids(rig.state.path(), &rig.run);
    assert_eq!(pids.len(), 2, "two local agents");
    for pid in pids {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        let kubeconfig = environ
            .split('\0')
            .find_map(|v| v.strip_prefix("KUBECONFIG="))
            .unwrap_or_default();
        assert!(
            [0, 1]
                .iter()
                .any(|&s| dir(s).join("kubeconfig") == std::path::Path::new(kubeconfig)),
            "agent {pid} runs with its node's kubeconfig, not the operator's: {kubeconfig:?}"
        );
    }

    // With node 0's credentials: its own labels, nothing of node 1, no spec.
    let as_0 = vec![format!(
        "--kubeconfig={}",
        dir(0).join("kubeconfig").display()
    )];
    let labels = r#"{"metadata":{"labels":{"zone":"z1"}}}"#;
    wait_in_force(&policy, "own-node", || {
        patch(tb, &as_0, &node(1), labels, &["--dry-run=server"])
    });
    assert_allowed(
        &patch(tb, &as_0, &node(0), labels, &[]),
        "node 0's agent identity labelling node 0",
    );
    assert_refused(
        &patch(tb, &as_0, &node(1), labels, &[]),
        &policy,
        "own-node",
        "node 0's agent identity labelling node 1",
    );
    let spec = format!(r#"{{"spec":{{"target":{}}}}}"#, target_json());
    assert_refused(
        &patch(tb, &as_0, &node(0), &spec, &[]),
        &policy,
        "no-spec",
        "node 0's agent identity setting its target",
    );

    // A removed node's ServiceAccount goes with it, and its token with that.
    let token_1 = std::fs::read_to_string(dir(1).join("token")).unwrap();
    let kept = tempfile::tempdir().unwrap();
    let as_1 = vec![format!(
        "--kubeconfig={}",
        token_kubeconfig(tb, kept.path(), token_1.trim()).display()
    )];
    assert_allowed(
        &as_who(tb, &as_1, &["get", "nodeinstall", &node(1)]),
        "node 1's token before the removal",
    );
    rig.scale(1);
    rig.joined(1).await;
    let sa_1 = format!("theseus-node-{}", node(1));
    support::eventually(
        Duration::from_secs(30),
        "node 1's ServiceAccount deleted",
        || async {
            let out = tb.kubectl(&["get", "serviceaccount", &sa_1, "-n", &nodes_ns.name]);
            (!out.status.success())
                .then_some(())
                .ok_or_else(|| "still there".to_owned())
        },
    )
    .await;
    // The API server caches a token's authentication for a few seconds.
    support::eventually(
        Duration::from_secs(30),
        "a removed node's token refused",
        || async {
            let out = as_who(tb, &as_1, &["get", "nodeinstall", &node(0)]);
            (!out.status.success() && text(&out).contains("Unauthorized"))
                .then_some(())
                .ok_or_else(|| text(&out))
        },
    )
    .await;

    support::pools::delete_and_wait(&rig.pools(), &rig.run).await;
    drop(cleanup);
    nodes_ns.delete(&rig.client).await;
    rig.ns.delete(&rig.client).await;
}

#[test]
fn the_chart_and_theseus_policy_render_the_same_policy() {
    let Some(tb) = require_testbed!() else { return };
    let chart_dir = chart();
    let template = |release: &str, ns: &str, set: &[&str]| {
        let mut args = vec![
            "template",
            release,
            &chart_dir,
            "--namespace",
            ns,
            "--show-only",
            "templates/agent-admission-policy.yaml",
        ];
        for s in set {
            args.extend(["--set", s]);
        }
        tb.helm_ok(&args)
    };
    // The defaults of both: release `theseus` in theseus-system.
    let chart = template("theseus", "theseus-system", &[]);
    let cli = theseus_policy(&[]);
    assert_eq!(
        policy_docs(&chart),
        policy_docs(&cli),
        "chart:\n{chart}\ncli:\n{cli}"
    );
    assert_eq!(policy_docs(&cli).len(), 2);

    // Every identity changed.
    let chart = template(
        "fleet",
        "ops",
        &[
            "agent.serviceAccount.name=node-agent,agent.identity.userPrefix=fleet:node:",
            "agent.identity.group=fleet:nodes,agent.identity.serviceAccountNamespace=fleet-nodes",
            "agent.identity.serviceAccountPrefix=n-,admissionPolicy.validationActions={Warn,Audit}",
        ],
    );
    let cli = theseus_policy(&[
        "--name",
        "fleet-theseus-agent-node",
        "--agent-service-account",
        "ops/node-agent",
        "--node-user-prefix",
        "fleet:node:",
        "--node-group",
        "fleet:nodes",
        "--node-service-account-namespace",
        "fleet-nodes",
        "--node-service-account-prefix",
        "n-",
        "--validation-action",
        "Warn",
        "--validation-action",
        "Audit",
    ]);
    assert_eq!(
        policy_docs(&chart),
        policy_docs(&cli),
        "chart:\n{chart}\ncli:\n{cli}"
    );

    // The agents' ClusterRole and binding: the chart's, and `--rbac`'s.
    let rbac = |release: &str, ns: &str| {
        tb.helm_ok(&[
            "template",
            release,
            &chart_dir,
            "--namespace",
            ns,
            "--show-only",
            "templates/agent-clusterrole.yaml",
        ])
    };
    let chart = rbac("theseus", "theseus-system");
    let cli = theseus_policy(&["--rbac"]);
    assert_eq!(
        policy_docs(&chart),
        policy_docs(&cli)[2..],
        "chart:\n{chart}\ncli:\n{cli}"
    );

    // Off in the chart: nothing rendered.
    let out = tb.helm(&[
        "template",
        "t",
        &chart_dir,
        "--set",
        "admissionPolicy.enabled=false",
    ]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ValidatingAdmissionPolicy"));
}
