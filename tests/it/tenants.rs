//! Tenants against the testbed: a real operator, real agents launched by
//! Local NodePools, the chart's tenant roles and admission policy, users
//! impersonated with `kubectl --as`.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ListParams};
use theseus::api::{Cluster, NodePool, Tenant, conditions};

use crate::support::fleet::RUN_LABEL;
use crate::support::policy::{Cleanup, text};
use crate::support::shop::Shop;
use crate::support::{TestbedEnv, chart, eventually};

/// A release name of this test's own: the chart names the tenants'
/// ClusterRoles and admission policy after it (`RELEASE-tenant-…`), so
/// they are this test's alone, never a Helm release's.
fn release_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "theseus-tenants-{:08x}",
        (nanos as u64) ^ u64::from(std::process::id())
    )
}

/// The chart's tenant roles and admission policy for a release of this
/// test's own ([`release_name`]), applied
/// (and deleted by `cleanup` when the test ends); returns the prefix to
/// give the operator (`--tenant-prefix`).
fn apply_tenant_objects(tb: &TestbedEnv, cleanup: &mut Cleanup) -> String {
    let release = &release_name();
    let prefix = format!("{release}-tenant");
    for template in [
        "templates/tenant-roles.yaml",
        "templates/tenant-admission-policy.yaml",
    ] {
        let yaml = tb.helm_ok(&["template", release, &chart(), "--show-only", template]);
        let out = tb.kubectl_stdin(&["apply"], &yaml);
        assert!(out.status.success(), "{template}: {}", text(&out));
    }
    for suffix in ["admin", "user", "catalog"] {
        cleanup.add("clusterrole", &format!("{prefix}-{suffix}"));
    }
    cleanup.add("validatingadmissionpolicy", &prefix);
    prefix
}

/// The testbed, the tenant objects of a release of the test's own (deleted
/// by the returned cleanup; their prefix) and a shop whose operator uses them; `None`
/// where the testbed is missing (outside `CI`).
async fn tenant_shop(name: &str) -> Option<(TestbedEnv, Cleanup, String, Shop)> {
    let tb = crate::support::testbed()?;
    let mut cleanup = Cleanup::new(&tb);
    let prefix = apply_tenant_objects(&tb, &mut cleanup);
    let shop = Shop::start_with(name, &["--tenant-prefix", &prefix]).await?;
    Some((tb, cleanup, prefix, shop))
}

/// Waits for each tenant's `Ready` condition (its namespaces and
/// bindings made).
fn wait_ready(tb: &TestbedEnv, tenants: &[&str]) {
    for t in tenants {
        tb.kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            &format!("tenant/{t}"),
            "--timeout=60s",
        ]);
    }
}

/// A template of the shop's store alone, of 1 to 10 nodes, labeled `tier`.
fn solo_template(run: &str, tier: &str) -> String {
    format!(
        "apiVersion: theseus.dev/v1alpha1
kind: ClusterTemplate
metadata: {{name: {run}-solo, labels: {{{RUN_LABEL}: {run}, tier: {tier}}}}}
spec:
  compatibility: {{services: [{run}-store], nodeClasses: [{run}-box]}}
  defaults: {{services: [{run}-store], nodeClass: {run}-box}}
  constraints:
    size: {{min: 1, max: 10}}
"
    )
}

fn tenant_yaml(run: &str, name: &str, user: &str, extra: &str) -> String {
    format!(
        "apiVersion: theseus.dev/v1alpha1
kind: Tenant
metadata: {{name: {name}, labels: {{{RUN_LABEL}: {run}}}}}
spec:
  namespaces: {{names: [{name}-ns]}}
  members: [{{kind: User, name: {user}}}]
{extra}"
    )
}

fn cluster_yaml(run: &str, name: &str, template: &str, hooklog: &str) -> String {
    format!(
        "apiVersion: theseus.dev/v1alpha1
kind: Cluster
metadata: {{name: {name}, labels: {{{RUN_LABEL}: {run}}}}}
spec:
  template: {template}
  size: 1
  strategy: {{taskRetries: 1}}
  config: {{hooklog: '{hooklog}'}}
"
    )
}

/// The Admitted condition of each cluster that has one: (status, reason,
/// message) by name.
async fn admitted(clusters: &Api<Cluster>) -> BTreeMap<String, (String, String, String)> {
    clusters
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|c| c.name_any().starts_with('c'))
        .filter_map(|c| {
            let st = c.status.clone()?;
            let a = conditions::find(&st.conditions, "Admitted")?.clone();
            Some((c.name_any(), (a.status, a.reason, a.message)))
        })
        .collect()
}

#[tokio::test]
async fn twenty_concurrent_creates_never_overrun_a_quota_of_five_nodes_and_a_deleted_tenant_leaves_nothing()
 {
    let Some((tb, mut cleanup, prefix, shop)) = tenant_shop("tenant").await else {
        return;
    };
    let run = shop.run.clone();
    let out = tb.kubectl_stdin(&["apply"], &solo_template(&run, "solo"));
    assert!(out.status.success(), "{}", text(&out));
    cleanup.add("clustertemplate", &format!("{run}-solo"));
    let (a, b) = (format!("{run}-a"), format!("{run}-b"));
    let (alice, bob) = (format!("{run}-alice"), format!("{run}-bob"));
    let a_yaml = tenant_yaml(
        &run,
        &a,
        &alice,
        "  catalog: {templates: {matchLabels: {tier: solo}}}\n  quotas: {nodes: 5, cpu: '4'}\n",
    );
    let out = tb.kubectl_stdin(&["apply"], &a_yaml);
    assert!(out.status.success(), "{}", text(&out));
    // Tenant b with the command line.
    let tenant_cli = |args: &[&str]| {
        crate::support::run::stdout_ok(
            tb.command(crate::support::theseus())
                .arg("tenant")
                .args(args),
        )
    };
    let said = tenant_cli(&[
        "create",
        &b,
        "--namespace",
        &format!("{b}-ns"),
        "--member",
        &format!("User:{bob}"),
        "--label",
        &format!("{RUN_LABEL}={run}"),
    ]);
    assert!(said.contains(&format!("tenant {b} created")), "{said}");
    cleanup.add("tenant", &b);
    cleanup.add("tenant", &a);
    wait_ready(&tb, &[&a, &b]);
    let (a_ns, b_ns) = (format!("{a}-ns"), format!("{b}-ns"));
    // Its cpu quota bounds its pods' requests too.
    let hard = tb.kubectl_ok(&[
        "get",
        "resourcequota",
        "theseus-tenant",
        "-n",
        &a_ns,
        "-o",
        "jsonpath={.spec.hard.requests\\.cpu}",
    ]);
    assert_eq!(hard, "4");

    // Each tenant's user sees its own namespace and not the other's.
    let as_user = |user: &str, args: &[&str]| {
        let mut all = vec!["--as", user];
        all.extend_from_slice(args);
        tb.kubectl(&all)
    };
    // (A new binding and policy binding take a moment to be in force.)
    eventually(Duration::from_secs(30), "the tenants' bindings in force", || async {
        let own = as_user(&alice, &["get", "clusters", "-n", &a_ns]);
        let other = as_user(&alice, &["get", "clusters", "-n", &b_ns]);
        let bob_in_a = as_user(&bob, &["get", "appinstances", "-n", &a_ns]);
        let refused = |out: &std::process::Output| {
            !out.status.success() && text(out).contains("forbidden")
        };
        if own.status.success() && refused(&other) && refused(&bob_in_a) {
            Ok(())
        } else {
            Err(format!(
                "alice in her tenant: {}; alice in the other's (want 403): {}; bob in a's (want 403): {}",
                text(&own),
                text(&other),
                text(&bob_in_a)
            ))
        }
    })
    .await;

    // The catalog: a template the tenant's selector does not pick is
    // refused at admission, naming the tenant.
    let hooklog = shop.hooklog.to_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(30),
        "the policy to refuse a template outside the catalog",
        || async {
            let out = tb.kubectl_stdin(
                &["--as", &alice, "create", "-n", &a_ns],
                &cluster_yaml(&run, "outside", &run, &hooklog),
            );
            let said = text(&out);
            if out.status.success() {
                tb.kubectl_ok(&["delete", "cluster", "outside", "-n", &a_ns, "--wait=false"]);
                return Err(format!("created: {said}"));
            }
            if said.contains(&format!("ValidatingAdmissionPolicy '{prefix}'"))
                && said.contains(&format!("is not in tenant {a}'s catalog"))
            {
                Ok(())
            } else {
                Err(format!("refused, but not by the tenant policy: {said}"))
            }
        },
    )
    .await;

    // 20 creates at once, as the tenant's user, for a quota of 5 nodes.
    let creates: Vec<_> = (0..20)
        .map(|i| {
            let (tb, run, alice, a_ns, hooklog) = (
                tb.clone(),
                run.clone(),
                alice.clone(),
                a_ns.clone(),
                hooklog.clone(),
            );
            std::thread::spawn(move || {
                let yaml = cluster_yaml(&run, &format!("c{i}"), &format!("{run}-solo"), &hooklog);
                let out = tb.kubectl_stdin(&["--as", &alice, "create", "-n", &a_ns], &yaml);
                assert!(out.status.success(), "create c{i}: {}", text(&out));
            })
        })
        .collect();
    for c in creates {
        c.join().unwrap();
    }
    let clusters: Api<Cluster> = Api::namespaced(shop.client.clone(), &a_ns);
    let tenants: Api<Tenant> = Api::all(shop.client.clone());
    let pools: Api<NodePool> = Api::all(shop.client.clone());
    let pool_replicas = || async {
        pools
            .list(&ListParams::default().labels(&format!("theseus.dev/cluster-namespace={a_ns}")))
            .await
            .unwrap()
            .items
            .iter()
            .map(|p| p.spec.replicas)
            .sum::<i32>()
    };
    let verdicts = eventually(
        Duration::from_secs(120),
        "every cluster admitted or refused",
        || async {
            // Never more reserved, asked of the pools or running than the
            // quota, at any moment this test looks.
            let reserved = tenants
                .get(&a)
                .await
                .unwrap()
                .status
                .map(|s| s.usage.nodes)
                .unwrap_or(0);
            assert!(reserved <= 5, "{reserved} nodes reserved");
            let replicas = pool_replicas().await;
            assert!(replicas <= 5, "{replicas} pool replicas");
            let agents = shop.agents().len();
            assert!(agents <= 5, "{agents} agents running");
            let verdicts = admitted(&clusters).await;
            if verdicts.len() == 20 {
                Ok(verdicts)
            } else {
                Err(format!("{} of 20 have Admitted", verdicts.len()))
            }
        },
    )
    .await;
    let yes: Vec<&String> = verdicts
        .iter()
        .filter(|(_, (s, _, _))| s == "True")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(yes.len(), 5, "exactly 5 of 20 admitted: {verdicts:#?}");
    for (name, (status, reason, message)) in &verdicts {
        if status == "False" {
            assert_eq!(reason, "QuotaExceeded", "{name}: {message}");
            assert!(
                message.contains(
                    "quota nodes is 5: this asks for 1, which would make the tenant's 6 (1 over)"
                ),
                "{name}'s refusal names the quota and the numbers: {message}"
            );
        }
    }
    let status = tenants.get(&a).await.unwrap().status.unwrap();
    assert_eq!(status.usage.nodes, 5);
    let fields = |text: &str, first: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|f| f.first().map(String::as_str) == Some(first))
            .unwrap_or_else(|| panic!("no line {first:?} in:\n{text}"))
    };
    let usage = tenant_cli(&["usage", &a]);
    assert_eq!(fields(&usage, "nodes"), ["nodes", "5", "5"], "{usage}");
    assert_eq!(
        usage.lines().filter(|l| l.starts_with("Cluster ")).count(),
        5,
        "five clusters hold reservations: {usage}"
    );
    let list = tenant_cli(&["list"]);
    assert_eq!(fields(&list, &a)[3], "5/5", "{list}");
    assert_eq!(status.summary.nodes.as_deref(), Some("5/5"));
    let exceeded = conditions::find(&status.conditions, "QuotaExceeded").cloned();
    eventually(
        Duration::from_secs(90),
        "the admitted clusters' agents",
        || async {
            let agents = shop.agents().len();
            let replicas = pool_replicas().await;
            if agents == 5 && replicas == 5 {
                Ok(())
            } else {
                Err(format!("{agents} agents, {replicas} pool replicas"))
            }
        },
    )
    .await;
    let exceeded = match exceeded {
        Some(c) if c.status == "True" => c,
        _ => {
            eventually(
                Duration::from_secs(90),
                "the tenant's QuotaExceeded",
                || async {
                    let st = tenants.get(&a).await.unwrap().status.unwrap_or_default();
                    match conditions::find(&st.conditions, "QuotaExceeded") {
                        Some(c) if c.status == "True" => Ok(c.clone()),
                        other => Err(format!("{other:?}")),
                    }
                },
            )
            .await
        }
    };
    assert!(
        exceeded.message.contains("quota nodes is 5"),
        "{}",
        exceeded.message
    );

    // Deleting the tenant deletes its clusters through their delete plans
    // (agents gone), then its namespace; the other tenant is untouched.
    tb.kubectl_ok(&["delete", "tenant", &a, "--wait=false"]);
    eventually(
        Duration::from_secs(300),
        "tenant a and all it made to go",
        || async {
            let tenant = tenants.get_opt(&a).await.unwrap();
            let ns = tb.kubectl(&["get", "namespace", &a_ns]);
            let agents = shop.agents().len();
            let replicas = pool_replicas().await;
            if tenant.is_none() && !ns.status.success() && agents == 0 && replicas == 0 {
                Ok(())
            } else {
                Err(format!(
                    "tenant {}, namespace {}, {agents} agents, {replicas} pool replicas",
                    if tenant.is_some() { "left" } else { "gone" },
                    text(&ns).trim()
                ))
            }
        },
    )
    .await;
    let b_now = tenants.get(&b).await.unwrap();
    assert!(b_now.meta_deletion_free(), "tenant b is untouched");
    tb.kubectl_ok(&["get", "namespace", &b_ns]);
    tb.kubectl_ok(&["delete", "tenant", &b, "--timeout=120s"]);
    let Shop {
        ns,
        client,
        mut operator,
        ..
    } = shop;
    operator.kill();
    ns.delete(&client).await;
    drop(cleanup);
}

/// A tenant that is not being deleted.
trait DeletionFree {
    fn meta_deletion_free(&self) -> bool;
}

impl DeletionFree for Tenant {
    fn meta_deletion_free(&self) -> bool {
        self.metadata.deletion_timestamp.is_none()
            && conditions::is_true(&self.status.clone().unwrap_or_default().conditions, "Ready")
    }
}

/// The most tasks seen Running at once in any version of any plan in
/// `ns`, watched until `done` says stop.
async fn max_running(
    client: &kube::Client,
    ns: &str,
    until: impl std::future::Future<Output = ()>,
) -> usize {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let plans: Api<theseus::api::ClusterPlan> = Api::namespaced(client.clone(), ns);
    let mut most = 0;
    let stream = watcher(plans, watcher::Config::default()).applied_objects();
    futures::pin_mut!(stream);
    futures::pin_mut!(until);
    loop {
        tokio::select! {
            () = &mut until => return most,
            next = stream.next() => {
                let Some(Ok(plan)) = next else { continue };
                let st = plan.status.unwrap_or_default();
                let running = st
                    .tasks
                    .iter()
                    .chain(&st.rollback)
                    .filter(|t| t.state == theseus::api::TaskState::Running)
                    .count();
                most = most.max(running);
            }
        }
    }
}

#[tokio::test]
async fn one_worker_serialises_a_tenant_s_plan_tasks_while_another_tenant_s_run_in_parallel() {
    let Some((tb, mut cleanup, _, shop)) = tenant_shop("tenant-workers").await else {
        return;
    };
    let run = shop.run.clone();
    let (one, many) = (format!("{run}-one"), format!("{run}-many"));
    let user = format!("{run}-u");
    let yaml = tenant_yaml(&run, &one, &user, "  workers: 1\n")
        + "---\n"
        + &tenant_yaml(&run, &many, &user, "");
    let out = tb.kubectl_stdin(&["apply"], &yaml);
    assert!(out.status.success(), "{}", text(&out));
    cleanup.add("tenant", &many);
    cleanup.add("tenant", &one);
    wait_ready(&tb, &[&one, &many]);
    let hooklog = shop.hooklog.to_str().unwrap().to_owned();
    let (one_ns, many_ns) = (format!("{one}-ns"), format!("{many}-ns"));
    let shop_cluster = |name: &str| {
        format!(
            "apiVersion: theseus.dev/v1alpha1
kind: Cluster
metadata: {{name: {name}, labels: {{{RUN_LABEL}: {run}}}}}
spec:
  template: {run}
  size: 3
  strategy: {{taskRetries: 1}}
  config: {{hooklog: '{hooklog}'}}
"
        )
    };
    let available = |ns: &str| {
        let tb = tb.clone();
        let ns = ns.to_owned();
        async move {
            tokio::task::spawn_blocking(move || {
                tb.kubectl_ok(&[
                    "wait",
                    "-n",
                    &ns,
                    "--for=condition=Available",
                    "cluster/shop",
                    "--timeout=240s",
                ]);
            })
            .await
            .unwrap();
        }
    };
    for ns in [&one_ns, &many_ns] {
        let out = tb.kubectl_stdin(&["apply", "-n", ns], &shop_cluster("shop"));
        assert!(out.status.success(), "{}", text(&out));
    }
    let (most_one, most_many) = tokio::join!(
        max_running(&shop.client, &one_ns, available(&one_ns)),
        max_running(&shop.client, &many_ns, available(&many_ns)),
    );
    assert_eq!(most_one, 1, "workers: 1 runs one task at a time");
    assert!(
        most_many >= 3,
        "the other tenant's three nodes are created at once: at most {most_many} tasks ran together"
    );
    tb.kubectl_ok(&["delete", "tenant", &one, &many, "--timeout=240s"]);
    let Shop {
        ns,
        client,
        mut operator,
        ..
    } = shop;
    operator.kill();
    ns.delete(&client).await;
    drop(cleanup);
}

#[tokio::test]
async fn deleting_a_tenant_terminates_its_ec2_instances_and_leaves_another_tenant_s() {
    let Some(rig) = crate::support::ec2::Ec2Rig::new("tenant-ec2").await else {
        return;
    };
    let tb = rig.tb.clone();
    let mut cleanup = Cleanup::new(&tb);
    let prefix = apply_tenant_objects(&tb, &mut cleanup);
    let run = rig.run.clone();
    let mut operator = crate::support::fleet::Operator::start_with(
        &tb,
        &rig.ns.name,
        &run,
        "tenants",
        &rig.logs,
        &["--cluster-name", &run, "--tenant-prefix", &prefix],
        &[],
    );
    // A catalog of one service on an EC2 node class (moto): its nodes are
    // launched and never register, so the plans wait on their createNode.
    let catalog = format!(
        "apiVersion: theseus.dev/v1alpha1
kind: NodeClass
metadata: {{name: {run}-ec2, labels: {{{RUN_LABEL}: {run}}}}}
spec:
  provider:
    type: Aws
    aws: {{region: us-east-1, instanceType: t3.micro, imageId: {image}, endpoint: '{endpoint}'}}
---
apiVersion: theseus.dev/v1alpha1
kind: ServiceDefinition
metadata: {{name: {run}-db, labels: {{{RUN_LABEL}: {run}}}}}
spec: {{}}
---
apiVersion: theseus.dev/v1alpha1
kind: ClusterTemplate
metadata: {{name: {run}, labels: {{{RUN_LABEL}: {run}}}}}
spec:
  compatibility: {{services: [{run}-db], nodeClasses: [{run}-ec2]}}
  defaults: {{services: [{run}-db], nodeClass: {run}-ec2}}
  constraints:
    size: {{min: 1, max: 10}}
",
        image = rig.image,
        endpoint = rig.proxy.url,
    );
    let out = tb.kubectl_stdin(&["apply"], &catalog);
    assert!(out.status.success(), "{}", text(&out));
    cleanup.add("clustertemplate", &run);
    cleanup.add("servicedefinition", &format!("{run}-db"));
    cleanup.add("nodeclass", &format!("{run}-ec2"));
    let (gone, kept) = (format!("{run}-gone"), format!("{run}-kept"));
    let yaml = tenant_yaml(&run, &gone, "nobody", "  quotas: {nodes: 3}\n")
        + "---\n"
        + &tenant_yaml(&run, &kept, "nobody", "");
    let out = tb.kubectl_stdin(&["apply"], &yaml);
    assert!(out.status.success(), "{}", text(&out));
    cleanup.add("tenant", &kept);
    cleanup.add("tenant", &gone);
    wait_ready(&tb, &[&gone, &kept]);
    let cluster = |size: i32| {
        format!(
            "apiVersion: theseus.dev/v1alpha1
kind: Cluster
metadata: {{name: db, labels: {{{RUN_LABEL}: {run}}}}}
spec: {{template: {run}, size: {size}}}
"
        )
    };
    let (gone_ns, kept_ns) = (format!("{gone}-ns"), format!("{kept}-ns"));
    for (ns, size) in [(&gone_ns, 3), (&kept_ns, 1)] {
        let out = tb.kubectl_stdin(&["apply", "-n", ns], &cluster(size));
        assert!(out.status.success(), "{}", text(&out));
    }
    let pool_of = |ns: &str| {
        let c: Cluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "Cluster",
            "metadata": { "name": "db", "namespace": ns },
            "spec": { "template": run, "size": 1 }
        }))
        .unwrap();
        theseus::cluster::drive::pool_name(&c, &format!("{run}-ec2"))
    };
    let (gone_pool, kept_pool) = (pool_of(&gone_ns), pool_of(&kept_ns));
    let live = |pool: String| {
        let ec2 = rig.ec2.clone();
        let run = run.clone();
        async move {
            crate::support::ec2::live(
                &ec2,
                &[
                    ("theseus.dev/nodepool", &pool),
                    ("theseus.dev/cluster", &run),
                ],
            )
            .await
            .len()
        }
    };
    eventually(
        Duration::from_secs(120),
        "both tenants' instances at EC2",
        || async {
            let (g, k) = (live(gone_pool.clone()).await, live(kept_pool.clone()).await);
            if (g, k) == (3, 1) {
                Ok(())
            } else {
                Err(format!("tenant gone: {g} of 3, tenant kept: {k} of 1"))
            }
        },
    )
    .await;

    tb.kubectl_ok(&["delete", "tenant", &gone, "--wait=false"]);
    let tenants: Api<Tenant> = Api::all(rig.client.clone());
    eventually(
        Duration::from_secs(300),
        "the deleted tenant's instances and namespace to go",
        || async {
            let g = live(gone_pool.clone()).await;
            let ns = tb.kubectl(&["get", "namespace", &gone_ns]);
            let tenant = tenants.get_opt(&gone).await.unwrap();
            if g == 0 && !ns.status.success() && tenant.is_none() {
                Ok(())
            } else {
                Err(format!(
                    "{g} instances live, namespace: {}, tenant {}",
                    text(&ns).trim(),
                    if tenant.is_some() { "left" } else { "gone" }
                ))
            }
        },
    )
    .await;
    assert_eq!(
        live(kept_pool.clone()).await,
        1,
        "the other tenant's instance runs on"
    );
    tb.kubectl_ok(&["get", "namespace", &kept_ns]);
    assert!(tenants.get(&kept).await.unwrap().meta_deletion_free());

    tb.kubectl_ok(&["delete", "tenant", &kept, "--timeout=240s"]);
    // The NodePool's own finalizer terminates the last instance, after the
    // cluster (and so the tenant) let go of it.
    eventually(
        Duration::from_secs(120),
        "the other tenant's instance to end with it",
        || async {
            match live(kept_pool.clone()).await {
                0 => Ok(()),
                n => Err(format!("{n} live")),
            }
        },
    )
    .await;
    operator.kill();
    let crate::support::ec2::Ec2Rig { ns, client, .. } = rig;
    ns.delete(&client).await;
    drop(cleanup);
}
