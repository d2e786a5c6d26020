//! Rolls a PackageSet across 2,000 simulated nodes with `maxUnavailable:
//! 100` on the testbed's API server and prints, all from the same run:
//!
//! - the wall time against the ideal, ⌈N / budget⌉ × the measured per-node
//!   switch time (goal ≤ 1.05×), and where the time went (first start,
//!   switches, refills, the last node to Available);
//! - the operator's CPU seconds during the rollout and its peak memory, and
//!   the CPU seconds of the API server, etcd and the rest of the machine;
//! - its memory per 1,000 cached NodeInstalls against a bare kube-rs
//!   reflector over the same NodeInstalls (a process of its own: this
//!   binary run with `--bare-reflector`), each as resident memory (VmRSS)
//!   with N NodeInstalls minus the same process's before the first one
//!   existed, measured once the caches are full and again after the
//!   rollout (goal ≤ 1.2×);
//! - the API requests the operator made during the rollout, by verb and
//!   resource, per node switched: the operator talks to the API server
//!   through a counting proxy in this process (`rollout/proxy.rs`), plain
//!   HTTP on 127.0.0.1 and forwarded over TLS, so every request it sends
//!   is counted (the reflector gets a proxy of its own, so both pay the
//!   same).
//!
//! The simulated agents (`support::fleet`) are one watch for the whole
//! fleet, a switch being a `Fetching` status write, the switch time, and an
//! `Active` one; every node heartbeats every 10 s at its own phase.
//!
//!     cargo bench --bench rollout_fleet        (needs the testbed: testbed/testbed up)
//!
//! Environment: THESEUS_BENCH_NODES (2000), THESEUS_BENCH_BUDGET (100),
//! THESEUS_BENCH_SWITCH_MS (3000); THESEUS_BENCH_DIRECT=1 runs the operator
//! and the reflector without the proxies (nothing counted), to see what the
//! proxies cost; THESEUS_BENCH_TRACE=1 prints the operator's requests and
//! the nodes' switches in time order. Run by `cargo test --all-targets`
//! (without `--bench`), it does a quick smoke run of 10 nodes instead, which
//! fails when the rollout does not finish, a node switches twice, the
//! reflector or the operator does not cache every node, or the operator
//! LISTs more than a few times during the rollout.

#[allow(dead_code)] // the benchmark uses a part of the tests' support
#[path = "../tests/it/support/mod.rs"]
mod support;

#[path = "rollout/common.rs"]
mod common;
#[path = "rollout/proxy.rs"]
mod proxy;
#[path = "rollout/reflector.rs"]
mod reflector;
#[allow(dead_code)] // shared with rollout_daemonset
#[path = "rollout/slots.rs"]
mod slots;

use std::time::{Duration, Instant};

use common::{env_or, machine, metrics};
use kube::api::{Api, DeleteParams};
use support::fleet::{Fleet, Operator};
use support::test_logs;
use theseus::api::{PackageRepository, PackageSet};

fn main() {
    reflector::run_if_asked();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench());
}

async fn bench() {
    let Some(tb) = support::testbed() else {
        return;
    };
    let full = std::env::args().any(|a| a == "--bench");
    let nodes = env_or("THESEUS_BENCH_NODES", if full { 2000 } else { 10 }) as usize;
    let budget = env_or("THESEUS_BENCH_BUDGET", if full { 100 } else { 5 });
    let switch = Duration::from_millis(env_or(
        "THESEUS_BENCH_SWITCH_MS",
        if full { 3000 } else { 300 },
    ));
    proxy::check_classify();
    let common::Run {
        client,
        ns,
        run,
        selector,
        cleanup: _cleanup,
    } = common::Run::start(&tb, "bench", "nodeinstalls,packagesets,packagerepositories").await;
    let _repo = common::repository(&client, &run).await;

    // The operator and the reflector, each behind a counting proxy, before
    // any NodeInstall exists: their memory then is the baseline.
    let logs = test_logs(&run);
    // THESEUS_BENCH_DIRECT: both talk to the API server directly, without
    // the proxies (no request counts), to see what the proxies cost.
    let direct = std::env::var_os("THESEUS_BENCH_DIRECT").is_some();
    let operator_proxy = proxy::Proxy::start(&tb.kubeconfig()).await;
    let reflector_proxy = proxy::Proxy::start(&tb.kubeconfig()).await;
    let (operator_kubeconfig, reflector_kubeconfig) = if direct {
        (tb.kubeconfig(), tb.kubeconfig())
    } else {
        (
            operator_proxy.kubeconfig(&logs.join("operator.kubeconfig")),
            reflector_proxy.kubeconfig(&logs.join("reflector.kubeconfig")),
        )
    };
    let operator = Operator::start_with(
        &tb,
        &run,
        &run,
        "bench",
        &logs,
        &[],
        &[
            ("KUBECONFIG", operator_kubeconfig.to_str().unwrap()),
            // As deployed (the tests' operators log at debug).
            ("RUST_LOG", "warn,theseus=info"),
        ],
    );
    let op_pid = operator.pid();
    let reflector = reflector::Reflector::start(&reflector_kubeconfig, &selector).await;
    let ref_pid = reflector.pid();
    wait_cached(&operator.http, 0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (op_base, _) = reflector::rss_kib(op_pid);
    let (ref_base, _) = reflector::rss_kib(ref_pid);

    eprintln!("creating {nodes} simulated nodes …");
    let created = Instant::now();
    let fleet = Fleet::start(&client, &run, &run, nodes, switch).await;
    let setup = created.elapsed();
    reflector.wait_for_size(nodes).await;
    wait_cached(&operator.http, nodes).await;
    let cached = created.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (op_cached, _) = reflector::rss_kib(op_pid);
    let (ref_cached, _) = reflector::rss_kib(ref_pid);

    let cpu = common::Cpu::new(
        &tb,
        vec![
            ("operator".into(), op_pid),
            ("bare reflector".into(), ref_pid),
            (
                "this process (simulated agents, proxies)".into(),
                std::process::id(),
            ),
        ],
    );
    let machine_before = cpu.read();
    let (cpu_before, _) = support::run::usage(op_pid);
    let requests_before = operator_proxy.counts();
    let passes_before = reconciles(&operator.http).await;
    let (started, done) = common::roll(&client, &run, budget, nodes).await;
    let total = done - started;
    let (cpu_after, op_peak) = support::run::usage(op_pid);
    let machine_after = cpu.read();
    let requests = operator_proxy.counts().since(&requests_before);
    let passes = reconciles(&operator.http).await - passes_before;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (op_after, _) = reflector::rss_kib(op_pid);
    let (ref_after, ref_peak) = reflector::rss_kib(ref_pid);

    let switches = fleet.log.lock().unwrap().switches.clone();
    if std::env::var_os("THESEUS_BENCH_TRACE").is_some() {
        let mut lines: Vec<(Instant, String)> = operator_proxy
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, w, _)| *t >= started && !w.contains("watch=true"))
            .map(|(t, w, e)| {
                (
                    *t,
                    format!("op   {w} ({:.1} ms)", (*e - *t).as_secs_f64() * 1e3),
                )
            })
            .collect();
        for s in &switches {
            lines.push((s.began, format!("node {} target seen", s.node)));
            lines.push((s.ended, format!("node {} Active written", s.node)));
        }
        lines.sort_by_key(|l| l.0);
        for (t, l) in lines {
            eprintln!("{:>9.3} {l}", (t - started).as_secs_f64());
        }
    }
    let timeline = slots::Timeline {
        asked: started,
        done,
        spans: switches.iter().map(|s| (s.began, s.ended)).collect(),
        budget: budget as usize,
    };
    let mean = timeline.mean_span();
    let batches = nodes.div_ceil(budget as usize) as u32;
    let ideal = mean * batches;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let per_1000 = |kib: u64, base: u64| mib(kib.saturating_sub(base)) * 1000.0 / nodes as f64;
    println!("rollout of {nodes} simulated nodes, maxUnavailable {budget}");
    println!("  machine: {}", machine());
    println!(
        "  set-up: {nodes} NodeInstalls created in {:.1} s, in both caches after {:.1} s",
        setup.as_secs_f64(),
        cached.as_secs_f64()
    );
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
        "  ratio (theseus / ideal)              {:>8.3}   (goal <= 1.05)",
        total.as_secs_f64() / ideal.as_secs_f64()
    );
    println!("  where the time went:");
    print!("{}", timeline.describe());
    println!(
        "  operator CPU during the rollout      {:>8.2} s",
        cpu_after - cpu_before
    );
    println!(
        "  CPU seconds during the rollout: {}",
        cpu.describe(&machine_before, &machine_after)
    );
    println!(
        "  operator peak memory (VmHWM)         {:>8.1} MiB   (bare reflector {:.1} MiB)",
        mib(op_peak),
        mib(ref_peak)
    );
    println!("  memory (VmRSS), MiB:        operator  bare reflector");
    println!(
        "    before any NodeInstall {:>8.1}  {:>8.1}",
        mib(op_base),
        mib(ref_base)
    );
    for (when, op, re) in [
        ("with them cached", op_cached, ref_cached),
        ("after the rollout", op_after, ref_after),
    ] {
        println!(
            "    {when:<22} {:>8.1}  {:>8.1}   per 1,000 NodeInstalls: {:.2} vs {:.2} MiB, ratio {:.2}   (goal <= 1.2)",
            mib(op),
            mib(re),
            per_1000(op, op_base),
            per_1000(re, ref_base),
            per_1000(op, op_base) / per_1000(re, ref_base)
        );
    }
    let lists = requests.verb("list");
    let watches = requests.verb("watch");
    let leases = requests
        .0
        .iter()
        .filter(|((_, r), _)| r == "leases")
        .map(|(_, n)| n)
        .sum::<u64>();
    let per_node = |n: u64| n as f64 / nodes as f64;
    if direct {
        println!(
            "  operator API requests: not counted (THESEUS_BENCH_DIRECT); {passes} PackageSet passes"
        );
    } else {
        println!(
            "  operator API requests during the rollout: {} in {passes} PackageSet passes, {:.2} per node switched",
            requests.total(),
            per_node(requests.total())
        );
        println!("    verb     resource                           count  per node");
        print!("{}", requests.table(nodes as f64));
        println!(
            "    without the lease renewals and watch calls (time-driven, not node-driven): {:.2} per node; LISTs: {lists}",
            per_node(requests.total() - leases - watches)
        );
    }

    assert_eq!(switches.len(), nodes, "every node switched once");
    assert!(
        lists <= 4,
        "the operator LISTed {lists} times during the rollout: a LIST per pass?"
    );

    drop(reflector);
    drop(operator);
    fleet.remove().await;
    let _ = Api::<PackageSet>::all(client.clone())
        .delete(&run, &DeleteParams::default())
        .await;
    let _ = Api::<PackageRepository>::all(client.clone())
        .delete(&run, &DeleteParams::default())
        .await;
    ns.delete(&client).await;
}

/// Waits until the operator's NodeInstall cache holds `n` nodes (its
/// `theseus_nodes` gauge, kept from the cache, sums to `n`).
async fn wait_cached(http: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let text = metrics(http).await;
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("theseus_nodes{"))
            .collect();
        let sum: f64 = lines
            .iter()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if !lines.is_empty() && sum as usize == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the operator did not cache {n} NodeInstalls"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The PackageSet controller's passes so far.
async fn reconciles(http: &str) -> u64 {
    metrics(http)
        .await
        .lines()
        .find(|l| l.starts_with("theseus_reconciles_total{controller=\"packageset\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}
