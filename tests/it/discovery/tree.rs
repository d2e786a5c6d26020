//! Every operation of the discovery tree driver against a real etcd (the
//! testbed's discovery etcd, or `THESEUS_DISCOVERY_ETCD`), each test under a
//! prefix of its own.

use std::time::{Duration, Instant};

use theseus::discovery::{ContainerInfo, EtcdConfig, GroupConfig, PortMapping, Tree, TreeError};

use crate::support::discovery as ds;
use crate::support::free_port;

fn info(name: &str, host: &str) -> ContainerInfo {
    ContainerInfo {
        instance_host: host.into(),
        instance_port: Some(8080),
        port_mappings: vec![PortMapping {
            name: Some("http".into()),
            container_port: 8080,
            host_port: 8080,
        }],
        instance_name: name.into(),
        node_name: Some("kwok-node-0".into()),
    }
}

fn config(pairs: &[(&str, &str)]) -> GroupConfig {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn services_and_groups_are_created_listed_and_removed() {
    let Some(endpoint) = ds::endpoint() else {
        return;
    };
    let tree = ds::tree(&endpoint).await;

    assert!(tree.create_service("web").await.unwrap());
    assert!(!tree.create_service("web").await.unwrap(), "second create");
    assert!(tree.service_exists("web").await.unwrap());
    assert_eq!(
        tree.service_groups("web").await.unwrap(),
        Vec::<String>::new()
    );

    let cfg = config(&[("mode", "fast")]);
    tree.create_group("web", "canary.eu", &cfg).await.unwrap();
    tree.create_group("web", "default", &GroupConfig::new())
        .await
        .unwrap();
    tree.create_group("db", "default", &GroupConfig::new())
        .await
        .unwrap();
    assert!(tree.group_exists("web", "canary.eu").await.unwrap());
    assert_eq!(
        tree.group_config("web", "canary.eu").await.unwrap(),
        Some(cfg)
    );
    assert_eq!(tree.service_names().await.unwrap(), vec!["db", "web"]);
    assert_eq!(
        tree.service_groups("web").await.unwrap(),
        vec!["canary.eu", "default"]
    );

    let changed = config(&[("mode", "slow"), ("replicas", "3")]);
    tree.set_group_config("web", "canary.eu", &changed)
        .await
        .unwrap();
    assert_eq!(
        tree.group_config("web", "canary.eu").await.unwrap(),
        Some(changed)
    );

    assert_eq!(tree.remove_group("web", "canary.eu").await.unwrap(), 1);
    assert!(!tree.group_exists("web", "canary.eu").await.unwrap());
    assert!(tree.service_exists("web").await.unwrap());
    assert!(tree.remove_service("web").await.unwrap() >= 2);
    assert!(!tree.service_exists("web").await.unwrap());
    assert_eq!(tree.service_names().await.unwrap(), vec!["db"]);
    ds::wipe(&tree).await;
}

#[tokio::test]
async fn containers_are_registered_read_updated_listed_and_deregistered() {
    let Some(endpoint) = ds::endpoint() else {
        return;
    };
    let tree = ds::tree(&endpoint).await;

    let missing = tree
        .register_container("web", "default", "web-0", &info("web-0", "10.0.0.1"), None)
        .await;
    assert!(
        matches!(missing, Err(TreeError::GroupMissing { .. })),
        "{missing:?}"
    );

    tree.create_group("web", "default", &GroupConfig::new())
        .await
        .unwrap();
    for (name, host) in [("web-0", "10.0.0.1"), ("web-1", "10.0.0.2")] {
        tree.register_container("web", "default", name, &info(name, host), None)
            .await
            .unwrap();
    }
    let again = tree
        .register_container("web", "default", "web-0", &info("web-0", "10.0.0.9"), None)
        .await;
    assert!(
        matches!(again, Err(TreeError::ContainerExists { .. })),
        "{again:?}"
    );
    assert!(
        tree.container_exists("web", "default", "web-0")
            .await
            .unwrap()
    );
    assert_eq!(
        tree.container_info("web", "default", "web-0")
            .await
            .unwrap(),
        Some(info("web-0", "10.0.0.1")),
        "a refused register changes nothing"
    );

    tree.set_container_info("web", "default", "web-0", &info("web-0", "10.0.0.5"))
        .await
        .unwrap();
    assert_eq!(
        tree.container_info("web", "default", "web-0")
            .await
            .unwrap()
            .map(|i| i.instance_host),
        Some("10.0.0.5".to_owned())
    );
    assert_eq!(
        tree.group_container_names("web", "default").await.unwrap(),
        vec!["web-0", "web-1"]
    );
    let all = tree.service_containers("web").await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|c| c.group == "default"));

    assert!(
        tree.deregister_container("web", "default", "web-0")
            .await
            .unwrap()
    );
    assert!(
        !tree
            .deregister_container("web", "default", "web-0")
            .await
            .unwrap()
    );
    assert!(
        !tree
            .container_exists("web", "default", "web-0")
            .await
            .unwrap()
    );
    ds::wipe(&tree).await;
}

#[tokio::test]
async fn missing_keys_read_as_absent_not_as_errors() {
    let Some(endpoint) = ds::endpoint() else {
        return;
    };
    let tree = ds::tree(&endpoint).await;
    assert!(tree.service_names().await.unwrap().is_empty());
    assert!(!tree.service_exists("ghost").await.unwrap());
    assert!(!tree.group_exists("ghost", "default").await.unwrap());
    assert_eq!(tree.group_config("ghost", "default").await.unwrap(), None);
    assert!(tree.service_groups("ghost").await.unwrap().is_empty());
    assert!(tree.service_containers("ghost").await.unwrap().is_empty());
    assert!(
        tree.group_container_names("ghost", "default")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        tree.container_info("ghost", "default", "c").await.unwrap(),
        None
    );
    assert!(
        !tree
            .container_exists("ghost", "default", "c")
            .await
            .unwrap()
    );
    assert_eq!(tree.remove_group("ghost", "default").await.unwrap(), 0);
    assert_eq!(tree.remove_service("ghost").await.unwrap(), 0);
    assert!(
        !tree
            .deregister_container("ghost", "default", "c")
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_key_holding_bad_json_is_an_error_that_names_the_key() {
    let Some(endpoint) = ds::endpoint() else {
        return;
    };
    let tree = ds::tree(&endpoint).await;
    let key = tree.layout().config("web", "default");
    tree.client()
        .put(key.clone(), "not json", None)
        .await
        .unwrap();
    let err = tree.group_config("web", "default").await.unwrap_err();
    assert!(err.to_string().contains(&key), "{err}");
    ds::wipe(&tree).await;
}

#[tokio::test]
async fn of_two_concurrent_writers_exactly_one_creates_and_one_registers() {
    let Some(endpoint) = ds::endpoint() else {
        return;
    };
    let first = ds::tree(&endpoint).await;
    let config = first.config().clone();
    let second = Tree::connect(&config).await.unwrap();

    for round in 0..20 {
        let group = format!("g{round}");
        let a = config_with("writer", "a");
        let b = config_with("writer", "b");
        let (ra, rb) = tokio::join!(
            first.create_group("web", &group, &a),
            second.create_group("web", &group, &b)
        );
        let won: Vec<bool> = vec![ra.is_ok(), rb.is_ok()];
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "round {round}");
        let loser = if ra.is_ok() { rb } else { ra };
        assert!(matches!(loser, Err(TreeError::GroupExists { .. })));
        let stored = first.group_config("web", &group).await.unwrap().unwrap();
        assert!(stored == a || stored == b);

        let (one, two) = (info("c", "10.0.0.1"), info("c", "10.0.0.2"));
        let (ra, rb) = tokio::join!(
            first.register_container("web", &group, "c", &one, None),
            second.register_container("web", &group, "c", &two, None)
        );
        assert_eq!(
            [ra.is_ok(), rb.is_ok()].iter().filter(|w| **w).count(),
            1,
            "round {round}: {ra:?} {rb:?}"
        );
    }

    // Concurrent writers of different containers all land.
    let writes = (0..50).map(|i| {
        let tree = if i % 2 == 0 { &first } else { &second };
        let name = format!("c{i}");
        async move {
            tree.set_container_info("web", "g0", &name, &info(&name, "10.1.0.1"))
                .await
        }
    });
    for result in futures::future::join_all(writes).await {
        result.unwrap();
    }
    assert_eq!(
        first
            .group_container_names("web", "g0")
            .await
            .unwrap()
            .len(),
        51
    );
    ds::wipe(&first).await;
}

fn config_with(key: &str, value: &str) -> GroupConfig {
    config(&[(key, value)])
}

#[tokio::test]
async fn a_leased_container_disappears_with_its_lease_and_set_info_keeps_the_lease() {
    let Some(endpoint) = ds::endpoint() else {
        return;
    };
    let tree = ds::tree(&endpoint).await;
    tree.create_group("web", "default", &GroupConfig::new())
        .await
        .unwrap();
    let lease = tree.client().lease_grant(30, None).await.unwrap().id();
    tree.register_container("web", "default", "c", &info("c", "10.0.0.1"), Some(lease))
        .await
        .unwrap();
    tree.set_container_info("web", "default", "c", &info("c", "10.0.0.2"))
        .await
        .unwrap();
    let range = tree
        .range(&tree.layout().containers("web", "default"))
        .await
        .unwrap();
    assert_eq!(
        range.entries[0].lease, lease,
        "set_container_info kept the lease"
    );

    tree.client().lease_revoke(lease).await.unwrap();
    assert!(!tree.container_exists("web", "default", "c").await.unwrap());
    assert!(
        tree.group_exists("web", "default").await.unwrap(),
        "config stays"
    );
    ds::wipe(&tree).await;
}

#[tokio::test]
async fn ranges_larger_than_a_page_are_read_whole_at_one_revision() {
    let Some(endpoint) = ds::endpoint() else {
        return;
    };
    let tree = ds::tree(&endpoint).await;
    let ops: Vec<_> = (0..2500)
        .map(|i| theseus::discovery::diff::Op::Put {
            key: tree.layout().info("big", "default", &format!("c{i:05}")),
            value: "{}".into(),
            leased: false,
        })
        .collect();
    for chunk in ops.chunks(128) {
        tree.apply(chunk, 0).await.unwrap();
    }
    let range = tree.range(&tree.layout().root()).await.unwrap();
    assert_eq!(range.entries.len(), 2500);
    assert!(range.revision > 0);
    ds::wipe(&tree).await;
}

#[tokio::test]
async fn a_dead_etcd_gives_a_clear_error_after_retrying_with_backoff() {
    // A port nothing listens on: a request is refused at once, so the time
    // taken is the backoff between attempts.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut config = EtcdConfig::new([url.clone()]);
    config.attempts = 3;
    config.request_timeout = Duration::from_millis(800);
    let tree = Tree::connect(&config).await.expect("connecting is lazy");
    let started = Instant::now();
    let err = tree.service_exists("web").await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(err, TreeError::Unavailable { attempts: 3, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&url) && text.contains("--discovery-etcd"),
        "{text}"
    );
    assert!(
        elapsed >= Duration::from_millis(300),
        "no backoff: {elapsed:?}"
    );
}

#[tokio::test]
async fn names_that_cannot_be_in_the_tree_are_refused_before_any_request() {
    let config = EtcdConfig::new(["http://127.0.0.1:1"]);
    let tree = Tree::connect(&config).await.unwrap();
    let err = tree
        .create_group("Web", "default", &GroupConfig::new())
        .await;
    assert!(matches!(err, Err(TreeError::Path(_))), "{err:?}");
    let err = tree.container_info("web", "a..b", "c").await;
    assert!(matches!(err, Err(TreeError::Path(_))), "{err:?}");
}
