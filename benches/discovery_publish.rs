//! 10,000 container registrations through the publisher against raw etcd
//! puts of the same keys and values, from the same machine in the same run,
//! with the same concurrency.
//!
//! ```sh
//! THESEUS_DISCOVERY_ETCD=http://127.0.0.1:23791 cargo bench --bench discovery_publish
//! ```
//!
//! `THESEUS_BENCH_CONTAINERS` (default 10000) and `THESEUS_BENCH_CONCURRENCY`
//! (default 4) change the size and the number of requests in flight. Without
//! `THESEUS_DISCOVERY_ETCD` it uses the testbed's discovery etcd; run by
//! `cargo test --all-targets` (without `--bench`) it does a 500-container
//! smoke run.

#[allow(dead_code)] // the benchmark uses a part of the tests' support
#[path = "../tests/it/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use etcd_client::PutOptions;
use futures::{StreamExt, TryStreamExt};
use theseus::discovery::publisher::{GroupState, Publisher};
use theseus::discovery::{ContainerInfo, EtcdConfig, PortMapping, Tree};

const GROUP_SIZE: usize = 100;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `count` containers in groups of 100, with realistic info.
fn groups(count: usize) -> Vec<GroupState> {
    (0..count.div_ceil(GROUP_SIZE))
        .map(|g| {
            let containers: BTreeMap<String, ContainerInfo> = (0..GROUP_SIZE)
                .map(|c| g * GROUP_SIZE + c)
                .take_while(|i| *i < count)
                .map(|i| {
                    let name = format!("web-{i:05}-7d9f8c6b5-x2k4p");
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
                })
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
    let count = env_number("THESEUS_BENCH_CONTAINERS", if full { 10_000 } else { 500 });
    let concurrency = env_number("THESEUS_BENCH_CONCURRENCY", 4);
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
        "resync, unchanged: {resynced:.2?} ({} puts, {} deletes)",
        resync.puts, resync.deletes
    );

    let _ = raw_tree.delete_prefix(&format!("{run}/")).await;
    ExitCode::SUCCESS
}
