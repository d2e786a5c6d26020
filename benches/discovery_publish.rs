//! The discovery tree at size, against etcd itself, from the same machine
//! in the same run:
//!
//! 1. **Full publish** of 100,000 container entries in 1,000 groups through
//!    the publisher, against raw etcd puts of the same keys and values with
//!    the same concurrency.
//! 2. **An unchanged resync** of all of them: no write (target: none, and
//!    under 1 s).
//! 3. **One group changed** (an entry changed, one added, one gone): only
//!    its keys written (2 puts, 1 delete).
//! 4. **Followers under churn**: 1,000 `Follower`s of one service while
//!    1,000 of its containers appear one by one and half of them go again:
//!    every follower converges to the same set, and the time from a
//!    container's publish to the last follower seeing it (p50, p99, max).
//!    The followers share one etcd connection (one watch each), as the
//!    followers of one process would.
//!
//! ```sh
//! THESEUS_DISCOVERY_ETCD=http://127.0.0.1:23791 cargo bench --bench discovery_publish
//! ```
//!
//! `THESEUS_BENCH_CONTAINERS` (default 100000), `THESEUS_BENCH_CONCURRENCY`
//! (default 4), `THESEUS_BENCH_FOLLOWERS` and `THESEUS_BENCH_CHURN` (1000
//! each) change the sizes. Without `THESEUS_DISCOVERY_ETCD` it uses the
//! testbed's discovery etcd; run by `cargo test --all-targets` (without
//! `--bench`) it does a smoke run (500 containers, 20 followers, 50
//! churning), which still fails when a figure that must hold does not (a
//! write in the unchanged resync, another key written for one group, a
//! follower that does not converge).

#[allow(dead_code)] // the benchmark uses a part of the tests' support
#[path = "../tests/it/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::PutOptions;
use futures::{StreamExt, TryStreamExt};
use theseus::discovery::publisher::{GroupState, Publisher};
use theseus::discovery::{ContainerInfo, EtcdConfig, Follower, GroupEvent, PortMapping, Tree};

const GROUP_SIZE: usize = 100;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Container `i`'s name and realistic info.
fn container(i: usize) -> (String, ContainerInfo) {
    let name = format!("web-{i:06}-7d9f8c6b5-x2k4p");
    let info = ContainerInfo {
        instance_host: format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
        instance_port: Some(8080),
        port_mappings: vec![PortMapping {
            name: Some("http".into()),
            container_port: 8080,
            host_port: 8080,
        }],
        instance_name: name.clone(),
        node_name: Some(format!("kwok-node-{}", i % 3)),
    };
    (name, info)
}

/// `count` containers in groups of 100.
fn groups(count: usize) -> Vec<GroupState> {
    (0..count.div_ceil(GROUP_SIZE))
        .map(|g| {
            let containers: BTreeMap<String, ContainerInfo> = (0..GROUP_SIZE)
                .map(|c| g * GROUP_SIZE + c)
                .take_while(|i| *i < count)
                .map(container)
                .collect();
            GroupState {
                service: "bench".into(),
                group: format!("g{g:03}"),
                config: BTreeMap::new(),
                containers,
            }
        })
        .collect()
}

/// Raw etcd puts of the same info keys and values, on a lease, `concurrency`
/// in flight.
async fn raw_puts(tree: &Tree, groups: &[GroupState], concurrency: usize) -> Duration {
    let lease = tree
        .client()
        .lease_grant(60, None)
        .await
        .expect("lease")
        .id();
    let layout = tree.layout().clone();
    let mut puts = Vec::new();
    for g in groups {
        for (name, info) in &g.containers {
            let key = layout.info(&g.service, &g.group, name);
            let mut client = tree.client();
            let value = info.to_json();
            puts.push(async move {
                client
                    .put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            });
        }
    }
    let started = Instant::now();
    futures::stream::iter(puts)
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await
        .expect("raw puts");
    started.elapsed()
}

/// Changes group 0 of `groups`: its first entry's host, one entry added,
/// its last one gone.
fn change_one_group(groups: &[GroupState]) -> Vec<GroupState> {
    let mut changed = groups.to_vec();
    let g = &mut changed[0];
    if let Some(info) = g.containers.values_mut().next() {
        info.instance_host = "192.0.2.1".into();
    }
    let last = g.containers.keys().next_back().cloned();
    if let Some(last) = last {
        g.containers.remove(&last);
    }
    let (name, info) = container(10_000_000);
    g.containers.insert(name, info);
    changed
}

/// The one group of the churning service with the containers `present`.
fn churn_group(present: &BTreeSet<usize>) -> GroupState {
    GroupState {
        service: "churn".into(),
        group: "g".into(),
        config: BTreeMap::new(),
        containers: present.iter().map(|i| container(*i)).collect(),
    }
}

/// What one follower saw: the first time it saw each container, and the
/// containers in its view now.
#[derive(Default)]
struct Seen {
    first: HashMap<String, Instant>,
    now: BTreeSet<String>,
    synced: bool,
}

/// The churn's figures.
struct Churn {
    /// Publish → last follower saw it, per added container, sorted.
    latencies: Vec<Duration>,
    /// Every follower holds the final set.
    converged: bool,
    /// Until the last follower converged, from the first publish.
    took: Duration,
}

/// `followers` followers of the service `churn` while `churn` containers
/// are added one by one and every other one is removed again.
async fn followers_under_churn(tree: &Tree, followers: usize, churn: usize) -> Churn {
    let seen: Vec<Arc<Mutex<Seen>>> = (0..followers).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for view in &seen {
        let mut follower = Follower::service(tree.clone(), "churn").expect("a valid service");
        let view = view.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let event = follower.next().await;
                let now = Instant::now();
                let mut v = view.lock().unwrap();
                match event {
                    GroupEvent::Added { container, .. } => {
                        v.first.entry(container.clone()).or_insert(now);
                        v.now.insert(container);
                    }
                    GroupEvent::Removed { container, .. } => {
                        v.now.remove(&container);
                    }
                    GroupEvent::Synced { .. } => v.synced = true,
                    _ => {}
                }
            }
        }));
    }
    let all = |check: &dyn Fn(&Seen) -> bool| seen.iter().all(|v| check(&v.lock().unwrap()));
    wait_until(Duration::from_secs(60), || all(&|v| v.synced)).await;
    let publisher = Publisher::new(tree.clone(), 1).await.expect("publisher");
    let mut present = BTreeSet::new();
    let mut published: HashMap<String, Instant> = HashMap::new();
    let started = Instant::now();
    for i in 0..churn {
        present.insert(i);
        published.insert(container(i).0, Instant::now());
        publisher
            .publish(&[churn_group(&present)])
            .await
            .expect("publish");
    }
    for i in (0..churn).step_by(2) {
        present.remove(&i);
        publisher
            .publish(&[churn_group(&present)])
            .await
            .expect("publish");
    }
    let want: BTreeSet<String> = present.iter().map(|i| container(*i).0).collect();
    let converged = wait_until(Duration::from_secs(120), || all(&|v| v.now == want)).await;
    let took = started.elapsed();
    for task in &tasks {
        task.abort();
    }
    let mut latencies: Vec<Duration> = published
        .iter()
        .map(|(name, at)| {
            seen.iter()
                .map(|v| {
                    let v = v.lock().unwrap();
                    v.first
                        .get(name)
                        .map_or(Duration::MAX, |t| t.duration_since(*at))
                })
                .max()
                .unwrap_or_default()
        })
        .collect();
    latencies.sort();
    let _ = publisher.remove("churn", "g").await;
    Churn {
        latencies,
        converged,
        took,
    }
}

/// Polls `done` every 50 ms for at most `limit`; whether it held.
async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn tree_under(endpoint: &str, prefix: &str) -> Tree {
    let config = EtcdConfig::new([endpoint]).with_prefix(prefix);
    Tree::connect(&config).await.expect("connect")
}

#[tokio::main]
async fn main() -> ExitCode {
    let endpoint = match std::env::var("THESEUS_DISCOVERY_ETCD") {
        Ok(endpoint) => endpoint,
        Err(_) => match support::testbed() {
            Some(tb) => tb.discovery_etcd().to_owned(),
            None => {
                eprintln!(
                    "discovery_publish: set THESEUS_DISCOVERY_ETCD to an etcd client URL, or \
                     bring the testbed up (testbed/testbed up)"
                );
                return ExitCode::from(2);
            }
        },
    };
    let full = std::env::args().any(|a| a == "--bench");
    let count = env_number("THESEUS_BENCH_CONTAINERS", if full { 100_000 } else { 500 });
    let concurrency = env_number("THESEUS_BENCH_CONCURRENCY", 4);
    let follower_count = env_number("THESEUS_BENCH_FOLLOWERS", if full { 1_000 } else { 20 });
    let churn_count = env_number("THESEUS_BENCH_CHURN", if full { 1_000 } else { 50 });
    let run = format!("/theseus-bench-{:08x}", rand::random::<u32>());
    let groups = groups(count);

    let raw_tree = tree_under(&endpoint, &format!("{run}/raw")).await;
    let pub_tree = tree_under(&endpoint, &format!("{run}/published")).await;
    // Warm both connections up.
    let _ = raw_tree.service_exists("bench").await;
    let _ = pub_tree.service_exists("bench").await;

    let raw = raw_puts(&raw_tree, &groups, concurrency).await;
    let publisher = Publisher::new(pub_tree.clone(), concurrency)
        .await
        .expect("publisher");
    let started = Instant::now();
    let first = publisher.publish(&groups).await.expect("publish");
    let published = started.elapsed();
    let started = Instant::now();
    let resync = publisher.publish(&groups).await.expect("resync");
    let resynced = started.elapsed();
    let changed = change_one_group(&groups);
    let started = Instant::now();
    let one = publisher.publish(&changed).await.expect("one group");
    let one_took = started.elapsed();
    let churn_tree = tree_under(&endpoint, &format!("{run}/churn")).await;
    let churn = followers_under_churn(&churn_tree, follower_count, churn_count).await;

    let raw_rate = count as f64 / raw.as_secs_f64();
    let pub_rate = count as f64 / published.as_secs_f64();
    println!(
        "containers:        {count} (in {} groups), concurrency {concurrency}",
        groups.len()
    );
    println!("raw etcd puts:     {raw_rate:>10.0} /s  ({raw:.2?})");
    println!(
        "publisher:         {pub_rate:>10.0} /s  ({published:.2?}; {} puts incl. {} configs, {} transactions)",
        first.puts,
        groups.len(),
        first.transactions
    );
    println!(
        "ratio:             {:>10.2}x the raw rate",
        pub_rate / raw_rate
    );
    println!(
        "resync, unchanged: {resynced:.2?} ({} puts, {} deletes; target: none, under 1 s)",
        resync.puts, resync.deletes
    );
    println!(
        "one group changed: {one_took:.2?} ({} puts, {} deletes; target: its keys only, 2 puts and 1 delete)",
        one.puts, one.deletes
    );
    let l = &churn.latencies;
    println!(
        "followers:         {follower_count} following one service, {churn_count} containers added one by one, \
         {} removed again: {} in {:.2?}",
        churn_count.div_ceil(2),
        if churn.converged {
            "every follower converged to the same set"
        } else {
            "NOT every follower converged"
        },
        churn.took
    );
    println!(
        "                   publish → last follower saw it: p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        percentile(l, 0.50),
        percentile(l, 0.99),
        l.last().copied().unwrap_or_default()
    );

    let _ = raw_tree.delete_prefix(&format!("{run}/")).await;
    let mut failed = Vec::new();
    if resync.puts + resync.deletes > 0 {
        failed.push("the unchanged resync wrote");
    }
    if (one.puts, one.deletes) != (2, 1) {
        failed.push("one changed group wrote other keys");
    }
    if !churn.converged {
        failed.push("a follower did not converge");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("discovery_publish: {}", failed.join("; "));
        ExitCode::FAILURE
    }
}
