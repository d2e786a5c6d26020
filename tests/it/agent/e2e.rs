//! The node agent against the real testbed: registration and heartbeat, a
//! target followed through v1 → v2 → a failing v3 that is rolled back,
//! recovery after the agent dies mid-switch, and a set fetched ahead of its
//! install (`spec.next`). The test plays the operator by writing
//! `spec.target` and `spec.next`.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use theseus::api::{NodeInstall, NodeInstallStatus, NodePhase, conditions};

use crate::support::agents::{Agent, Repo, demo_set, set_next, set_target, status, until_active};
use crate::support::{self, apply_crds};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn an_agent_registers_its_labels_and_heartbeats() {
    let Some(tb) = require_testbed!() else { return };
    apply_crds(&tb);
    let api = Api::<NodeInstall>::all(tb.client().await);
    let agent = Agent::start(&tb, "reg", "pool=web,theseus.dev/zone=a", &[]);
    let node = agent.node.clone();
    let first = support::eventually(WAIT, "the NodeInstall reports a heartbeat", || async {
        let ni = api.get_opt(&node).await.map_err(|e| e.to_string())?;
        let ni = ni.ok_or("not created yet")?;
        let labels = ni.metadata.labels.clone().unwrap_or_default();
        if labels.get("pool").map(String::as_str) != Some("web")
            || labels.get("theseus.dev/zone").map(String::as_str) != Some("a")
        {
            return Err(format!("labels {labels:?}"));
        }
        let s = ni.status.ok_or("no status")?;
        assert_eq!(s.agent_version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(s.phase, NodePhase::Idle);
        s.heartbeat
            .map(|h| h.0)
            .ok_or_else(|| "no heartbeat".into())
    })
    .await;
    support::eventually(WAIT, "the heartbeat advances", || async {
        let beat: Timestamp = status(&api, &node).await?.heartbeat.ok_or("none")?.0;
        if beat > first {
            Ok(())
        } else {
            Err(format!("still {beat}"))
        }
    })
    .await;
    drop(agent);
    support::agents::delete(&api, &node).await;
}

/// Waits until the demo-web service answers `version`.
async fn until_rolled_back(api: &Api<NodeInstall>, agent: &Agent, what: &str) -> NodeInstallStatus {
    support::eventually(WAIT, what, || async {
        let s = status(api, &agent.node).await?;
        match s.phase {
            NodePhase::RolledBack => Ok(s),
            other => Err(format!("{other:?} {:?}", s.message)),
        }
    })
    .await
}

async fn until_serving(agent: &Agent, version: &str) {
    support::eventually(WAIT, "the service answers its version", || async {
        let got = agent.service_version().await?;
        if got == version {
            Ok(())
        } else {
            Err(format!("answers {got}"))
        }
    })
    .await;
}

/// Every phase the NodeInstall passes through (from a watch, so that short
/// phases are not missed) until `done` holds.
async fn phases_until(
    api: &Api<NodeInstall>,
    node: &str,
    done: impl Fn(&NodeInstallStatus) -> bool,
) -> Vec<NodePhase> {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut events = watcher(api.clone(), config).boxed();
    let mut seen: Vec<NodePhase> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.next()).await;
        let event = event.unwrap_or_else(|_| panic!("phases so far: {seen:?}"));
        let Some(Ok(watcher::Event::Apply(ni) | watcher::Event::InitApply(ni))) = event else {
            continue;
        };
        let Some(s) = ni.status else { continue };
        if seen.last() != Some(&s.phase) {
            seen.push(s.phase);
        }
        if done(&s) {
            return seen;
        }
    }
}

#[tokio::test]
async fn a_next_set_is_fetched_ahead_and_its_install_downloads_nothing() {
    let Some(tb) = require_testbed!() else { return };
    apply_crds(&tb);
    let api = Api::<NodeInstall>::all(tb.client().await);
    let repo = Repo::demo();
    let agent = Agent::start(&tb, "next", "pool=web", &repo.trust_args());
    support::eventually(WAIT, "registered", || status(&api, &agent.node)).await;

    // Told what it will install: the packages are cached, nothing is
    // active, no service runs.
    let ids = demo_set("1.0.0");
    let names: Vec<String> = ids.iter().map(ToString::to_string).collect();
    set_next(&api, &agent.node, &ids, &repo.url).await;
    let s = support::eventually(WAIT, "the next set is cached", || async {
        let s = status(&api, &agent.node).await?;
        match names.iter().all(|id| s.cached.contains(id)) {
            true => Ok(s),
            false => Err(format!("cached {:?}", s.cached)),
        }
    })
    .await;
    assert!(s.active.is_empty() && s.active_hash.is_none(), "{s:?}");
    assert_eq!(s.phase, NodePhase::Idle, "{s:?}");
    assert_eq!(agent.disk_hash(), None);
    assert!(agent.service_version().await.is_err(), "nothing serves yet");
    let fetched = repo.server.package_requests();
    assert_eq!(fetched.len(), names.len(), "{fetched:?}");

    // The install switches to what is cached: no package downloaded again.
    let v1 = set_target(&api, &agent.node, &ids, &repo.url, 20).await;
    until_active(&api, &agent.node, &v1).await;
    until_serving(&agent, "1.0.0").await;
    assert_eq!(repo.server.package_requests(), fetched);

    // A next set from a repository the agent does not trust is refused
    // before any request: nothing fetched, the active set untouched.
    let other = Repo::demo();
    let refused = set_next(&api, &agent.node, &demo_set("2.0.0"), &other.url).await;
    let line = format!("cannot fetch set {refused} ahead of its install");
    support::eventually(WAIT, "the agent refuses the next set", || async {
        let log = agent.log();
        let refusal = format!("refusing repository {}", other.url);
        match log.lines().find(|l| l.contains(&line)) {
            Some(l) if l.contains(&refusal) => Ok(()),
            Some(l) => Err(format!("another reason: {l}")),
            None => Err("not yet".to_owned()),
        }
    })
    .await;
    assert_eq!(other.server.requests(), Vec::<String>::new());
    let s = status(&api, &agent.node).await.unwrap();
    assert_eq!(s.active_hash.as_deref(), Some(v1.as_str()), "{s:?}");
    assert!(!s.cached.contains(&"demo-web--2.0.0".to_owned()), "{s:?}");
    let node = agent.node.clone();
    drop(agent);
    support::agents::delete(&api, &node).await;
}

#[tokio::test]
async fn a_target_goes_v1_then_v2_and_a_failing_v3_is_rolled_back() {
    let Some(tb) = require_testbed!() else { return };
    apply_crds(&tb);
    let api = Api::<NodeInstall>::all(tb.client().await);
    let repo = Repo::demo();
    let agent = Agent::start(&tb, "roll", "pool=web", &repo.trust_args());
    support::eventually(WAIT, "registered", || status(&api, &agent.node)).await;

    let v1 = set_target(&api, &agent.node, &demo_set("1.0.0"), &repo.url, 20).await;
    let phases = phases_until(&api, &agent.node, |s| {
        s.phase == NodePhase::Active && s.active_hash.as_deref() == Some(v1.as_str())
    })
    .await;
    for expected in [NodePhase::Fetching, NodePhase::Verifying, NodePhase::Active] {
        assert!(phases.contains(&expected), "{expected:?} not in {phases:?}");
    }
    until_serving(&agent, "1.0.0").await;
    let s = status(&api, &agent.node).await.unwrap();
    assert!(conditions::is_true(&s.conditions, "Ready"), "{s:?}");
    assert_eq!(s.active, ["demo-config--1.0.0", "demo-web--1.0.0"]);

    let v2 = set_target(&api, &agent.node, &demo_set("2.0.0"), &repo.url, 20).await;
    until_active(&api, &agent.node, &v2).await;
    until_serving(&agent, "2.0.0").await;

    let v3 = set_target(&api, &agent.node, &demo_set("3.0.0"), &repo.url, 4).await;
    let s = until_rolled_back(&api, &agent, "v3 is rolled back").await;
    assert_eq!(s.failed_hash.as_deref(), Some(v3.as_str()));
    assert_eq!(s.active_hash.as_deref(), Some(v2.as_str()));
    assert_eq!(agent.disk_hash().as_deref(), Some(v2.as_str()));
    assert!(s.message.unwrap_or_default().contains("not healthy"));
    // RolledBack is reported once the old set serves again.
    assert_eq!(
        agent.service_version().await.unwrap(),
        "2.0.0",
        "the old set serves as soon as RolledBack is reported"
    );
    // The failed target is not retried while it stays the target.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = status(&api, &agent.node).await.unwrap();
    assert_eq!(s.phase, NodePhase::RolledBack);
    assert_eq!(s.active_hash.as_deref(), Some(v2.as_str()));
    let node = agent.node.clone();
    drop(agent);
    support::agents::delete(&api, &node).await;
}

#[tokio::test]
async fn an_agent_killed_mid_switch_recovers_and_reports_the_disk() {
    let Some(tb) = require_testbed!() else { return };
    apply_crds(&tb);
    let api = Api::<NodeInstall>::all(tb.client().await);
    let repo = Repo::demo();
    let mut agent = Agent::start(&tb, "crash", "pool=web", &repo.trust_args());
    support::eventually(WAIT, "registered", || status(&api, &agent.node)).await;
    let v1 = set_target(&api, &agent.node, &demo_set("1.0.0"), &repo.url, 20).await;
    until_active(&api, &agent.node, &v1).await;

    // Dies after the old service stopped and just before the rename.
    agent.kill9();
    agent.spawn(&tb, "pool=web", Some("switch-journaled"));
    let v2 = set_target(&api, &agent.node, &demo_set("2.0.0"), &repo.url, 20).await;
    assert_eq!(agent.wait_exit(WAIT), Some(86), "{}", agent.log());
    assert_eq!(agent.disk_hash().as_deref(), Some(v1.as_str()));
    agent.spawn(&tb, "pool=web", None);
    until_active(&api, &agent.node, &v2).await;
    until_serving(&agent, "2.0.0").await;
    assert_eq!(agent.disk_hash().as_deref(), Some(v2.as_str()));

    // SIGKILLed while Verifying a failing v3: the restarted agent resumes
    // the verification, rolls back to v2 and restarts its service.
    let v3 = set_target(&api, &agent.node, &demo_set("3.0.0"), &repo.url, 30).await;
    support::eventually(WAIT, "v3 is being verified", || async {
        let s = status(&api, &agent.node).await?;
        if s.phase == NodePhase::Verifying && s.active_hash.as_deref() == Some(v3.as_str()) {
            Ok(())
        } else {
            Err(format!("{:?}", s.phase))
        }
    })
    .await;
    agent.kill9();
    assert_eq!(agent.disk_hash().as_deref(), Some(v3.as_str()));
    agent.spawn(&tb, "pool=web", None);
    let s = until_rolled_back(&api, &agent, "v3 is rolled back after the restart").await;
    assert_eq!(s.failed_hash.as_deref(), Some(v3.as_str()));
    assert_eq!(s.active_hash.as_deref(), Some(v2.as_str()));
    assert_eq!(agent.disk_hash(), s.active_hash);
    until_serving(&agent, "2.0.0").await;
    let node = agent.node.clone();
    drop(agent);
    support::agents::delete(&api, &node).await;
}
