//! The dashboard at fleet scale, on the testbed's API server, served by a
//! real operator (`--ui-auth proxy`: the bench is the trusted proxy and
//! names an admin user), all from the same run:
//!
//! - the time to render the fleet page and a PackageSet's page with 2,000
//!   NodeInstalls (goal < 1 s), side by side with a bare LIST of the same
//!   NodeInstalls by the same user (what any page must at least read);
//! - the bytes per minute the live streams of those two pages send during
//!   a rollout across the 2,000 simulated nodes, side by side with the raw
//!   watch streams of NodeInstalls and PackageSets over the same minutes
//!   (what a dashboard that forwards watches would send to every browser).
//!
//! The simulated agents (`support::fleet`) heartbeat every 10 s: the set's
//! page shows heartbeats on its first 100 rows, so its stream keeps
//! sending; the fleet page shows none.
//!
//!     cargo bench --bench dashboard_fleet        (needs the testbed: testbed/testbed up)
//!
//! Environment: THESEUS_BENCH_NODES (2000), THESEUS_BENCH_BUDGET (100),
//! THESEUS_BENCH_SWITCH_MS (3000). Run by `cargo test --all-targets`
//! (without `--bench`), it does a smoke run of 10 nodes, which fails when a
//! page does not show the set, or a stream sends nothing or never shows the
//! rollout done.

#[allow(dead_code)] // the benchmark uses a part of the tests' support
#[path = "../tests/it/support/mod.rs"]
mod support;

#[allow(dead_code)] // shared with rollout_fleet
#[path = "rollout/common.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{env_or, machine};
use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams};
use support::fleet::{Fleet, Operator};
use support::test_logs;
use theseus::api::{NodeInstall, PackageRepository, PackageSet};

/// Pages timed this many times; the median is reported.
const SAMPLES: usize = 5;

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench());
}

/// The bench's requests as the trusted proxy would send them.
fn as_admin(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request
        .header("x-forwarded-user", "theseus-bench-admin")
        .header("x-forwarded-groups", "system:masters")
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
    let common::Run {
        client,
        ns,
        run,
        selector,
        cleanup: _cleanup,
    } = common::Run::start(
        &tb,
        "bench-ui",
        "nodeinstalls,packagesets,packagerepositories",
    )
    .await;
    let _repo = common::repository(&client, &run).await;
    let logs = test_logs(&run);
    let operator = Operator::start_with(
        &tb,
        &run,
        &run,
        "bench",
        &logs,
        &["--ui-auth", "proxy"],
        &[("RUST_LOG", "warn,theseus=info")],
    );
    let http = reqwest::Client::new();

    eprintln!("creating {nodes} simulated nodes …");
    let fleet = Fleet::start(&client, &run, &run, nodes, switch).await;

    // The live streams and the raw watches, open through the rollout.
    let fleet_stream = Counter::sse(&http, &operator.http, "view=fleet");
    let set_stream = Counter::sse(
        &http,
        &operator.http,
        &format!("view=packageset&name={run}&page=0"),
    );
    let node_watch = Counter::watch(&client, "nodeinstalls", &selector);
    let set_watch = Counter::watch(&client, "packagesets", &selector);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counters = [&fleet_stream, &set_stream, &node_watch, &set_watch];
    let before: Vec<u64> = counters.iter().map(|c| c.bytes()).collect();
    let (started, done) = common::roll(&client, &run, budget, nodes).await;
    // The last changes reach the streams after the set is seen Available.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let minutes = (done - started + Duration::from_secs(2)).as_secs_f64() / 60.0;
    let during: Vec<f64> = counters
        .iter()
        .zip(&before)
        .map(|(c, b)| (c.bytes() - b) as f64)
        .collect();

    // The pages, with every node targeted by the set.
    let fleet_page = time_page(&http, &format!("{}/ui/", operator.http), &run).await;
    let set_page = time_page(
        &http,
        &format!("{}/ui/packagesets/{run}", operator.http),
        &format!("{run}-000"),
    )
    .await;
    let list = median(
        futures::stream::iter(0..SAMPLES)
            .then(|_| {
                let api: Api<NodeInstall> = Api::all(client.clone());
                let params = ListParams::default().labels(&selector);
                async move {
                    let at = Instant::now();
                    let n = api.list(&params).await.unwrap().items.len();
                    assert_eq!(n, nodes);
                    at.elapsed()
                }
            })
            .collect()
            .await,
    );

    let kib = |b: f64| b / 1024.0;
    println!("dashboard with {nodes} simulated nodes, a rollout with maxUnavailable {budget}");
    println!("  machine: {}", machine());
    println!(
        "  bare LIST of the {nodes} NodeInstalls (same user, median of {SAMPLES}) {:>8.1} ms",
        ms(list)
    );
    for (name, time) in [
        ("fleet page /ui/", fleet_page),
        ("PackageSet page", set_page),
    ] {
        println!(
            "  {name:<28} rendered in {:>8.1} ms   ratio to the LIST {:.2}   (goal < 1 s)",
            ms(time),
            time.as_secs_f64() / list.as_secs_f64()
        );
    }
    println!(
        "  during the rollout ({:.1} s):",
        (done - started).as_secs_f64()
    );
    let watch_total = during[2] + during[3];
    println!(
        "    raw watches (NodeInstalls + PackageSets)   {:>10.1} KiB/min",
        kib(watch_total / minutes)
    );
    for (name, bytes) in [
        ("fleet page's live stream", during[0]),
        ("PackageSet page's live stream", during[1]),
    ] {
        println!(
            "    {name:<42} {:>10.1} KiB/min   ratio to the raw watches {:.3}",
            kib(bytes / minutes),
            bytes / watch_total
        );
    }
    println!(
        "    fleet stream: {} updates; set page stream: {} updates",
        fleet_stream.events.load(Ordering::Relaxed),
        set_stream.events.load(Ordering::Relaxed)
    );

    assert!(during[0] > 0.0, "the fleet stream sent the rollout");
    assert!(
        fleet_stream.saw(&format!("{nodes}/{nodes}")),
        "the fleet stream showed the rollout done"
    );
    assert!(during[1] > 0.0, "the set page's stream sent the rollout");

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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The median time of GET `url` until its last byte; fails unless the page
/// shows `expect`.
async fn time_page(http: &reqwest::Client, url: &str, expect: &str) -> Duration {
    let mut samples = Vec::new();
    for _ in 0..SAMPLES {
        let at = Instant::now();
        let response = as_admin(http.get(url)).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        samples.push(at.elapsed());
        assert!(status.is_success(), "{url}: {status}: {body}");
        assert!(body.contains(expect), "{url} shows {expect}");
    }
    median(samples)
}

/// Bytes (and SSE events) read from a stream, in the background.
struct Counter {
    total: Arc<AtomicU64>,
    events: Arc<AtomicU64>,
    /// The last 64 KiB read, to check what the stream said.
    tail: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Counter {
    fn new() -> (
        Self,
        Arc<AtomicU64>,
        Arc<AtomicU64>,
        Arc<std::sync::Mutex<String>>,
    ) {
        let (total, events, tail) = Default::default();
        let counter = Counter {
            total: Arc::clone(&total),
            events: Arc::clone(&events),
            tail: Arc::clone(&tail),
            task: tokio::spawn(async {}),
        };
        (counter, total, events, tail)
    }

    fn bytes(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn saw(&self, text: &str) -> bool {
        self.tail.lock().unwrap().contains(text)
    }

    /// A page's live stream.
    fn sse(http: &reqwest::Client, base: &str, query: &str) -> Counter {
        let (mut counter, total, events, tail) = Counter::new();
        let request = as_admin(http.get(format!("{base}/ui/live?{query}")));
        counter.task = tokio::spawn(async move {
            let response = request.send().await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            let mut body = response.bytes_stream();
            while let Some(Ok(chunk)) = body.next().await {
                total.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                let text = String::from_utf8_lossy(&chunk);
                events.fetch_add(
                    text.matches("event: update").count() as u64,
                    Ordering::Relaxed,
                );
                let mut tail = tail.lock().unwrap();
                tail.push_str(&text);
                if tail.len() > 65536 {
                    let cut = tail.len() - 65536;
                    let cut = (cut..tail.len())
                        .find(|i| tail.is_char_boundary(*i))
                        .unwrap_or(0);
                    tail.drain(..cut);
                }
            }
        });
        counter
    }

    /// A raw watch of `plural` (theseus.dev), as its bytes arrive.
    fn watch(client: &kube::Client, plural: &str, selector: &str) -> Counter {
        let (mut counter, total, events, _) = Counter::new();
        let client = client.clone();
        let path = format!(
            "/apis/theseus.dev/v1alpha1/{plural}?watch=true&labelSelector={}&timeoutSeconds=1800",
            selector.replace('=', "%3D")
        );
        counter.task = tokio::spawn(async move {
            let request = axum::http::Request::get(path).body(Vec::new()).unwrap();
            let stream = client.request_stream(request).await.unwrap();
            let mut lines = std::pin::pin!(futures::AsyncBufReadExt::lines(stream));
            while let Some(Ok(line)) = lines.next().await {
                total.fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
                events.fetch_add(1, Ordering::Relaxed);
            }
        });
        counter
    }
}
