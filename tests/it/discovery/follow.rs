//! Following a group: the Rust API and `theseus discover watch`, against
//! real etcd (and, for the scale test, the testbed's kwok pods).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use theseus::api::ServiceGroup;
use theseus::discovery::{ContainerInfo, Context, Follower, GroupConfig, GroupEvent, Tree, run};

use crate::support::discovery as ds;
use crate::support::{self, TestNamespace};

fn info(host: &str) -> ContainerInfo {
    ContainerInfo {
        instance_host: host.into(),
        instance_name: host.into(),
        ..ContainerInfo::default()
    }
}

async fn next(follower: &mut Follower) -> GroupEvent {
    tokio::time::timeout(Duration::from_secs(30), follower.next())
        .await
        .expect("an event within 30s")
}

#[tokio::test]
async fn a_follower_lists_then_watches_and_after_a_reconnect_reports_exactly_what_changed() {
    let mut own = ds::OwnEtcd::start().await;
    let mut config = ds::config(&own.url());
    config.request_timeout = Duration::from_secs(1);
    config.attempts = 1;
    let tree = Tree::connect(&config).await.unwrap();
    tree.create_group("web", "eu", &GroupConfig::new())
        .await
        .unwrap();
    tree.set_container_info("web", "eu", "a", &info("10.0.0.1"))
        .await
        .unwrap();

    let mut follower = Follower::labels(tree.clone(), "web", &["eu"]).unwrap();
    assert!(matches!(
        next(&mut follower).await,
        GroupEvent::Config { .. }
    ));
    assert!(
        matches!(next(&mut follower).await, GroupEvent::Added { container, .. } if container == "a")
    );
    assert_eq!(
        next(&mut follower).await,
        GroupEvent::Synced { containers: 1 }
    );

    tree.set_container_info("web", "eu", "b", &info("10.0.0.2"))
        .await
        .unwrap();
    assert!(
        matches!(next(&mut follower).await, GroupEvent::Added { container, .. } if container == "b")
    );

    // etcd goes away; while the follower is disconnected, "a" is removed
    // and "c" added. Both changes must come out after the reconnect.
    own.kill();
    assert!(matches!(
        next(&mut follower).await,
        GroupEvent::Disconnected { .. }
    ));
    own.restart().await;
    tree.deregister_container("web", "eu", "a").await.unwrap();
    tree.set_container_info("web", "eu", "c", &info("10.0.0.3"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while follower.containers().len() != 2
        || !seen.iter().any(|e| matches!(e, GroupEvent::Synced { .. }))
    {
        assert!(Instant::now() < deadline, "events so far: {seen:?}");
        let event = next(&mut follower).await;
        seen.push(event);
    }
    let names: Vec<String> = follower.containers().into_keys().map(|(_, c)| c).collect();
    assert_eq!(names, vec!["b", "c"]);
    assert!(
        seen.iter()
            .any(|e| matches!(e, GroupEvent::Removed { container, .. } if container == "a")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, GroupEvent::Added { container, .. } if container == "c")),
        "{seen:?}"
    );
}

/// Reads the watch command's lines on a thread, so the test can wait with
/// a timeout.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_for_lines(rx: &mpsc::Receiver<String>, sign: char, count: usize, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.iter().filter(|l| l.starts_with(sign)).count() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("fewer than {count} '{sign}' lines: {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_watch_prints_the_adds_and_removes_of_a_scale_up_and_down() {
    let Some(tb) = support::testbed() else { return };
    support::apply_crds(&tb);
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "watch").await;
    let etcd = ds::config(tb.discovery_etcd());
    let mut ctx = Context::new(client.clone(), etcd.clone());
    ctx.namespace = Some(ns.name.clone());
    let operator = tokio::spawn(run(ctx));

    let mut child = Command::new(support::theseus())
        .args(["discover", "--discovery-etcd", tb.discovery_etcd()])
        .args(["--discovery-prefix", &etcd.prefix])
        .args(["watch", "web", "--labels", "w"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("theseus discover watch starts");
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    wait_for_lines(&rx, '=', 1, &mut seen);

    let groups: Api<ServiceGroup> = Api::namespaced(client.clone(), &ns.name);
    let sg: ServiceGroup = serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "ServiceGroup",
        "metadata": { "name": "web" },
        "spec": { "service": "web", "labels": ["w"], "replicas": 3,
                  "template": { "image": "example/web:1", "ports": [{ "containerPort": 80 }] } }
    }))
    .unwrap();
    groups.create(&PostParams::default(), &sg).await.unwrap();
    wait_for_lines(&rx, '+', 3, &mut seen);
    let patch = json!({ "spec": { "replicas": 1 } });
    groups
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for_lines(&rx, '-', 2, &mut seen);
    let _ = child.kill();
    let _ = child.wait();
    for line in seen.iter().filter(|l| l.starts_with('+')) {
        assert!(
            line.starts_with("+ w/web-") && line.ends_with(":80"),
            "{line}"
        );
    }
    ds::delete_groups(&groups).await;
    operator.abort();
    let tree = Tree::connect(&etcd).await.unwrap();
    ds::wipe(&tree).await;
    ns.delete(&client).await;
}
