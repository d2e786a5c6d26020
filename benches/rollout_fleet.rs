//! Rolls a PackageSet across 200 simulated nodes with `maxUnavailable: 20`
//! and compares the total time with the ideal, ceil(200 / 20) × the measured
//! per-node switch time; prints the operator's CPU time and peak memory.
//!
//!     cargo bench --bench rollout_fleet        (needs the testbed: testbed/testbed up)
//!
//! Environment: THESEUS_BENCH_NODES (200), THESEUS_BENCH_BUDGET (20),
//! THESEUS_BENCH_SWITCH_MS (3000). Run by `cargo test --all-targets` (without
//! `--bench`), it does a quick smoke run of 10 nodes instead.

#[allow(dead_code)] // the benchmark uses a part of the tests' support
#[path = "../tests/it/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::agents::Repo;
use support::fleet::{Fleet, Operator, RUN_LABEL};
use support::{TestNamespace, repo_root};
use theseus::api::{PackageRepository, PackageSet};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(tb) = support::testbed() else {
        eprintln!("rollout_fleet needs the testbed: run `testbed/testbed up` first");
        std::process::exit(1);
    };
    let full = std::env::args().any(|a| a == "--bench");
    let nodes = env_or("THESEUS_BENCH_NODES", if full { 200 } else { 10 }) as usize;
    let budget = env_or("THESEUS_BENCH_BUDGET", if full { 20 } else { 5 });
    let switch = Duration::from_millis(env_or(
        "THESEUS_BENCH_SWITCH_MS",
        if full { 3000 } else { 300 },
    ));
    tb.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        repo_root().join("crds").to_str().unwrap(),
    ]);
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "bench").await;
    let run = ns.name.clone();
    let repo = Repo::demo();
    let repository: PackageRepository = serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageRepository",
        "metadata": { "name": run, "labels": { RUN_LABEL: run } },
        "spec": { "url": repo.url }
    }))
    .unwrap();
    Api::<PackageRepository>::all(client.clone())
        .create(&PostParams::default(), &repository)
        .await
        .unwrap();

    eprintln!("creating {nodes} simulated nodes …");
    let fleet = Fleet::start(&client, &run, &run, nodes, switch).await;
    let logs = repo_root().join("target/test-logs").join(&run);
    std::fs::create_dir_all(&logs).unwrap();
    let operator = Operator::start(&tb, &run, &run, "bench", &logs);
    let pid = operator.pid();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu_before, _) = support::run::usage(pid);

    let sets: Api<PackageSet> = Api::all(client.clone());
    let set = json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageSet",
        "metadata": { "name": run, "labels": { RUN_LABEL: run } },
        "spec": {
            "repository": run,
            "packages": ["demo-config--1.0.0", "demo-web--1.0.0"],
            "nodeSelector": { "matchLabels": { RUN_LABEL: run } },
            "strategy": { "maxUnavailable": budget }
        }
    });
    let started = Instant::now();
    sets.patch(
        &run,
        &PatchParams::apply("bench").force(),
        &Patch::Apply(&set),
    )
    .await
    .unwrap();
    loop {
        let s = sets.get(&run).await.unwrap();
        let st = s.status.unwrap_or_default();
        if theseus::api::conditions::is_true(&st.conditions, "Available")
            && st.ready_nodes as usize == nodes
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "the rollout did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = started.elapsed();
    let (cpu_after, peak_kib) = support::run::usage(pid);

    let switch_times = fleet.log.lock().unwrap().switch_times.clone();
    let mean = switch_times.iter().sum::<Duration>() / switch_times.len().max(1) as u32;
    let batches = nodes.div_ceil(budget as usize) as u32;
    let ideal = mean * batches;
    println!("rollout of {nodes} simulated nodes, maxUnavailable {budget}");
    println!(
        "  per-node switch time (measured mean) {:>8.2} s",
        mean.as_secs_f64()
    );
    println!(
        "  ideal: ceil({nodes}/{budget}) x switch  {:>8.2} s",
        ideal.as_secs_f64()
    );
    println!(
        "  theseus operator                     {:>8.2} s",
        total.as_secs_f64()
    );
    println!(
        "  ratio (theseus / ideal)              {:>8.3}",
        total.as_secs_f64() / ideal.as_secs_f64()
    );
    println!(
        "  operator CPU during the rollout      {:>8.2} s",
        cpu_after - cpu_before
    );
    println!(
        "  operator peak memory (VmHWM)         {:>8.1} MiB",
        peak_kib as f64 / 1024.0
    );

    drop(operator);
    fleet.remove().await;
    let _ = sets.delete(&run, &DeleteParams::default()).await;
    let _ = Api::<PackageRepository>::all(client.clone())
        .delete(&run, &DeleteParams::default())
        .await;
    ns.delete(&client).await;
}
