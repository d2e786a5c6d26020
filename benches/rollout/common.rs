//! What the rollout benchmarks share: their settings, the machine they ran
//! on, their namespace, the PackageSet they roll, and a clean-up if they
//! stop early.

use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use theseus::api::{PackageRepository, PackageSet};

use crate::support::agents::Repo;
use crate::support::fleet::RUN_LABEL;
use crate::support::{TestNamespace, TestbedEnv};

/// The variable `name` as a number, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The machine, for the record: cores, CPU model, memory.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total: u64 = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    format!(
        "{} cores, {model}, {:.0} GiB; the testbed (API server, etcd, kwok) on the same machine",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        total as f64 / 1024.0 / 1024.0
    )
}

/// Serves the demo repository and creates its PackageRepository `run`.
pub async fn repository(client: &Client, run: &str) -> Repo {
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
    repo
}

/// Applies the PackageSet `run` (demo-web 1.0.0 on the run's nodes) with
/// `maxUnavailable: budget` and waits until it is Available with `nodes`
/// ready; returns when it was applied and when it was seen done (polled
/// every 100 ms).
pub async fn roll(client: &Client, run: &str, budget: u64, nodes: usize) -> (Instant, Instant) {
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
        run,
        &PatchParams::apply("bench").force(),
        &Patch::Apply(&set),
    )
    .await
    .unwrap();
    loop {
        let s = sets.get(run).await.unwrap();
        let st = s.status.unwrap_or_default();
        if theseus::api::conditions::is_true(&st.conditions, "Available")
            && st.ready_nodes as usize == nodes
        {
            return (started, Instant::now());
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "the rollout did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The operator's `/metrics` text (empty when it does not answer).
pub async fn metrics(http: &str) -> String {
    match reqwest::get(format!("{http}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// A benchmark's own namespace on the testbed, whose name is the run label
/// of everything the benchmark makes, and the clean-up of what it makes if
/// it stops early.
pub struct Run {
    pub client: Client,
    pub ns: TestNamespace,
    pub run: String,
    /// `RUN_LABEL=run`.
    pub selector: String,
    pub cleanup: Cleanup,
}

impl Run {
    /// The CRDs applied, a namespace tagged `tag`, and a clean-up of the
    /// `kinds` (kubectl's comma-separated list) labelled with the run.
    pub async fn start(tb: &TestbedEnv, tag: &str, kinds: &'static str) -> Run {
        crate::support::apply_crds(tb);
        let client = tb.client().await;
        let ns = TestNamespace::create(tb, &client, tag).await;
        let run = ns.name.clone();
        let selector = format!("{RUN_LABEL}={run}");
        Run {
            cleanup: Cleanup {
                tb: tb.clone(),
                kinds,
                selector: selector.clone(),
            },
            client,
            ns,
            run,
            selector,
        }
    }
}

/// Deletes the `kinds` labelled with `selector` if the benchmark panics
/// (the namespace goes with its own guard).
pub struct Cleanup {
    pub tb: TestbedEnv,
    pub kinds: &'static str,
    pub selector: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self
                .tb
                .kubectl(&["delete", self.kinds, "-l", &self.selector, "--wait=false"]);
        }
    }
}

/// Where the machine's CPU time goes: the CPU seconds of named processes
/// and of the whole machine, read from /proc.
pub struct Cpu {
    parts: Vec<(String, u32)>,
}

/// CPU seconds per part, then the machine's busy and total seconds.
pub struct CpuReading(Vec<f64>, f64, f64);

impl Cpu {
    /// `parts` (name, pid), with the testbed's API server and etcd added.
    pub fn new(tb: &TestbedEnv, mut parts: Vec<(String, u32)>) -> Cpu {
        let run = std::path::Path::new(tb.var("THESEUS_TESTBED_DIR")).join("run");
        for name in ["kube-apiserver", "etcd", "kwok", "kube-controller-manager"] {
            let pid = std::fs::read_to_string(run.join(format!("{name}.pid")))
                .ok()
                .and_then(|p| p.trim().parse().ok());
            if let Some(pid) = pid {
                parts.push((name.to_owned(), pid));
            }
        }
        Cpu { parts }
    }

    /// The CPU seconds so far.
    pub fn read(&self) -> CpuReading {
        let parts = self
            .parts
            .iter()
            .map(|(_, pid)| crate::support::run::usage(*pid).0)
            .collect();
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let total: f64 = ticks.iter().sum::<f64>() / 100.0;
        // idle and iowait
        let idle = (ticks.get(3).unwrap_or(&0.0) + ticks.get(4).unwrap_or(&0.0)) / 100.0;
        CpuReading(parts, total - idle, total)
    }

    /// One line: each part's CPU seconds between two readings, the rest,
    /// and how busy the machine was.
    pub fn describe(&self, before: &CpuReading, after: &CpuReading) -> String {
        let mut out = String::new();
        let mut named = 0.0;
        for (i, (name, _)) in self.parts.iter().enumerate() {
            let used = after.0[i] - before.0[i];
            named += used;
            out.push_str(&format!("{name} {used:.1}, "));
        }
        let busy = after.1 - before.1;
        let total = after.2 - before.2;
        out.push_str(&format!(
            "anything else {:.1}; the machine {:.0}% busy ({busy:.1} of {total:.1} CPU seconds)",
            (busy - named).max(0.0),
            100.0 * busy / total.max(1e-9)
        ));
        out
    }
}
