//! The baseline for the operator's memory: a bare kube-rs reflector over
//! the same NodeInstalls (same label selector, same watch timeout as the
//! operator's watch), in a process of its own: the benchmark binary run
//! again with [`FLAG`]. It keeps the store and nothing else, and prints the
//! store's size whenever it changes.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use theseus::api::NodeInstall;

use crate::support::fleet::ChildGuard;

/// The argument that makes the benchmark binary the bare reflector:
/// `BINARY --bare-reflector SELECTOR`.
pub const FLAG: &str = "--bare-reflector";

/// When the process was started as the reflector, runs it (never returns).
pub fn run_if_asked() {
    let args: Vec<String> = std::env::args().collect();
    let Some(at) = args.iter().position(|a| a == FLAG) else {
        return;
    };
    let selector = args.get(at + 1).expect("a selector after --bare-reflector");
    // The operator's runtime: tokio's multi-threaded one, a worker per core.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(reflect(selector));
    std::process::exit(0);
}

async fn reflect(selector: &str) {
    let client = kube::Client::try_default().await.unwrap();
    let (store, writer) = reflector::store::<NodeInstall>();
    let config = theseus::shared::scoped(Some(selector));
    let events = reflector::reflector(writer, watcher(Api::<NodeInstall>::all(client), config))
        .default_backoff()
        .for_each(|_| async {});
    let report = async {
        let mut last = usize::MAX;
        loop {
            if store.wait_until_ready().await.is_ok() {
                let n = store.state().len();
                if n != last {
                    println!("store {n}");
                    last = n;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::join!(events, report);
}

/// The reflector process, seen from the benchmark.
pub struct Reflector {
    child: ChildGuard,
    size: Arc<AtomicUsize>,
}

impl Reflector {
    /// Starts it with `kubeconfig` over the NodeInstalls matching
    /// `selector`, and waits for its first (possibly empty) list.
    pub async fn start(kubeconfig: &Path, selector: &str) -> Reflector {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([FLAG, selector])
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let size = Arc::new(AtomicUsize::new(usize::MAX));
        let seen = size.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("store ").and_then(|n| n.parse().ok()) {
                    seen.store(n, Ordering::SeqCst);
                }
            }
        });
        let reflector = Reflector {
            child: ChildGuard(child),
            size,
        };
        reflector
            .wait_for(|n| n != usize::MAX, "its first list")
            .await;
        reflector
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Waits (up to 5 minutes) until its store holds `n` NodeInstalls.
    pub async fn wait_for_size(&self, n: usize) {
        self.wait_for(|size| size == n, &format!("{n} NodeInstalls"))
            .await;
    }

    async fn wait_for(&self, done: impl Fn(usize) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !done(self.size.load(Ordering::SeqCst)) {
            assert!(
                Instant::now() < deadline,
                "the bare reflector did not reach {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Resident memory (VmRSS) and its peak (VmHWM) of a process, in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
