//! Benchmark: EC2 at the rate limit. A pool scales 0 → 500 against moto
//! behind the tests' EC2 proxy throttling with EC2's published request
//! token buckets (`support::ec2::RateLimits::EC2`: RunInstances 5 tokens
//! refilled at 2/s, other mutating actions 50 at 5/s, Describe* 100 at
//! 20/s), every bucket empty at the start (the account has just spent its
//! tokens), through the NodePool planner and the EC2 provider in passes run
//! the way the controller runs them (`nodepool/passes.rs`), until a pass has
//! nothing to do.
//!
//! It prints the wall time to 500 running instances against the best time
//! the buckets allow for the calls the fewest-calls scale-up needs, and
//! their ratio (goal ≤ 1.2). The fewest calls for 0 → N are, in order, one
//! DescribeInstances (the pool is empty), one RunInstances for all N (EC2's
//! resource bucket holds 1000 instances) and ⌈N/1000⌉ DescribeInstances
//! pages showing them running. Each needs the answer of the one before, and
//! call k, the j-th of its class c, cannot go before its bucket has a token
//! for it, (j − b_c)⁺ / r_c after the start (b_c the tokens in c's bucket at
//! the start, r_c its refill per second):
//!
//! ```text
//! e_0 = 0,   e_k = max(e_{k−1}, (j_k − b_c)⁺ / r_c) + s_k,   best = e_K
//! ```
//!
//! where s_k is moto's service time of that call, measured at the proxy in
//! the same run (the first forwarded call of the same action and ordinal).
//! With every s_k = 0 it is the buckets' own bound (from empty buckets:
//! max(1/20, 1/2, 2/20) = 0.5 s). The ratio is wall time / best.
//!
//! It fails unless: the pool reaches N; moto holds exactly N live instances
//! carrying the pool's owner tags, all running, with distinct ids, exactly
//! the ones recorded; every forwarded RunInstances had its own ClientToken;
//! the proxy's throttled answers equal the provider's throttled attempts
//! (`aws::Calls::throttled`), each followed by a retry, and every call was
//! forwarded in the end (attempts − throttled = forwarded, per action).
//!
//! moto keeps every instance it ever launched, terminated ones included,
//! and a filtered DescribeInstances scans them all (about 1 ms each on a
//! 2-core machine, besides rendering the instances it returns), so each run
//! against the same moto leaves the next one's calls slower: the service
//! times, and so the best time, are measured in each run for that reason.
//! The provider's call deadline is raised to 120 s here.
//!
//! `cargo bench --bench nodepool_rate_limit` uses THESEUS_EC2_ENDPOINT and
//! the AWS_* variables when set (`eval "$(testbed/testbed env)"`), and the
//! testbed's moto otherwise. Without `--bench` (as `cargo test --all-targets`
//! runs it) it scales to 20 with scaled-down buckets (`SMOKE_LIMITS`:
//! RunInstances 1 at 1/s, mutating 10 at 1/s, Describe* 20 at 5/s, so that
//! RunInstances waits a second and is throttled even on a fast machine) and
//! checks the same facts, not the ratio. Without moto it is skipped, or
//! fails when `CI` is set. `THESEUS_BENCH_INSTANCES` overrides the size.

#[allow(dead_code)] // the benchmark uses a part of the tests' support
#[path = "../tests/it/support/mod.rs"]
mod support;

#[path = "nodepool/passes.rs"]
mod passes;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::Filter;
use passes::{Record, pass};
use support::ec2::{ActionClass, Bucket, Ec2Proxy, RateLimits, Upstream};
use theseus::api::AwsProvider;
use theseus::nodepool::aws::{self, Ec2};
use theseus::nodepool::provider::{CLUSTER_TAG, Owner, POOL_TAG, Provider};

const TARGET: usize = 500;
const SMOKE: usize = 20;
/// The smoke run's buckets.
const SMOKE_LIMITS: RateLimits = RateLimits {
    run_instances: Bucket {
        size: 1.0,
        refill: 1.0,
    },
    mutating: Bucket {
        size: 10.0,
        refill: 1.0,
    },
    describe: Bucket {
        size: 20.0,
        refill: 5.0,
    },
};
/// How full the buckets are at the start: empty, at the rate limit.
const FILL: f64 = 0.0;
/// Instances a DescribeInstances page holds (the provider's MaxResults).
const PAGE: usize = 1000;

/// The EC2 endpoint and keys: from the environment, or the testbed's.
fn ec2_target() -> Option<(String, Option<(String, String)>)> {
    if let Ok(endpoint) = std::env::var("THESEUS_EC2_ENDPOINT") {
        return Some((endpoint, None));
    }
    let tb = support::testbed()?;
    let keys = (
        tb.var("AWS_ACCESS_KEY_ID").to_owned(),
        tb.var("AWS_SECRET_ACCESS_KEY").to_owned(),
    );
    Some((tb.ec2_endpoint().to_owned(), Some(keys)))
}

/// The machine, for the record.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

/// The fewest calls for 0 → `n`, in order.
fn fewest_calls(n: usize) -> Vec<&'static str> {
    let mut calls = vec!["DescribeInstances", "RunInstances"];
    calls.extend(std::iter::repeat_n(
        "DescribeInstances",
        n.div_ceil(PAGE).max(1),
    ));
    calls
}

/// `best = e_K` of the module's formula for `calls`, with service times
/// from `upstream` (or none when `service` is false).
fn best_time(
    calls: &[&str],
    limits: &RateLimits,
    fill: f64,
    upstream: &[Upstream],
    service: bool,
) -> Duration {
    let mut e = 0.0f64;
    let mut ordinal: BTreeMap<ActionClass, f64> = BTreeMap::new();
    let mut served: BTreeMap<&str, usize> = BTreeMap::new();
    for action in calls {
        let class = ActionClass::of(action);
        let bucket = limits.bucket(class);
        let j = ordinal.entry(class).or_default();
        *j += 1.0;
        let token = (*j - bucket.size * fill).max(0.0) / bucket.refill;
        let k = served.entry(action).or_default();
        let s = upstream
            .iter()
            .filter(|u| u.action == *action)
            .nth(*k)
            .filter(|_| service)
            .map_or(0.0, |u| u.took.as_secs_f64());
        *k += 1;
        e = e.max(token) + s;
    }
    Duration::from_secs_f64(e)
}

/// Every instance moto holds with the owner's tags and not terminated:
/// (id, state), one entry per instance record moto returns.
async fn at_moto(client: &Client, owner: &Owner) -> Vec<(String, String)> {
    let filters = vec![
        Filter::builder()
            .name(format!("tag:{POOL_TAG}"))
            .values(&owner.pool)
            .build(),
        Filter::builder()
            .name(format!("tag:{CLUSTER_TAG}"))
            .values(&owner.cluster)
            .build(),
        Filter::builder()
            .name("instance-state-name")
            .set_values(Some(
                ["pending", "running", "stopping", "stopped", "shutting-down"]
                    .map(String::from)
                    .to_vec(),
            ))
            .build(),
    ];
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .describe_instances()
            .set_filters(Some(filters.clone()))
            .max_results(PAGE as i32)
            .set_next_token(token.clone())
            .send()
            .await
            .expect("describe at moto");
        for i in page.reservations().iter().flat_map(|r| r.instances()) {
            let state = i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default();
            out.push((i.instance_id().unwrap_or_default().to_owned(), state));
        }
        token = page
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        if token.is_none() {
            return out;
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("THESEUS_BENCH_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { TARGET } else { SMOKE });
    let Some((endpoint, keys)) = ec2_target() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(n, full, endpoint, keys));
}

async fn run(n: usize, full: bool, endpoint: String, keys: Option<(String, String)>) {
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
    let direct = aws::client(
        &AwsProvider {
            region: region.clone(),
            endpoint: Some(endpoint.clone()),
            ..Default::default()
        },
        keys.clone(),
    )
    .await;
    let image = support::ec2::image(&direct).await;
    let proxy = Ec2Proxy::start(&endpoint).await;
    let settings = AwsProvider {
        region,
        instance_type: "t3.micro".into(),
        image_id: image,
        endpoint: Some(proxy.url.clone()),
        // moto's DescribeInstances slows with every instance it has held
        // (see above): a slow answer is measured, not a failure.
        timeout_seconds: Some(120),
        ..Default::default()
    };
    let run = format!("{:08x}", rand::random::<u32>());
    let owner = Owner {
        pool: format!("ratelimit-{run}"),
        uid: format!("ratelimit-uid-{run}"),
        cluster: "theseus-bench".into(),
    };
    let provider = Ec2::new(
        aws::client(&settings, keys).await,
        owner.clone(),
        settings,
        &BTreeMap::new(),
    );
    let limits = if full { RateLimits::EC2 } else { SMOKE_LIMITS };
    println!("nodepool_rate_limit: 0 → {n} instances against moto at {endpoint}");
    println!("machine: {}", machine());
    println!(
        "buckets (tokens, refill/s; {}), empty at the start: RunInstances ({}, {}), mutating ({}, {}), Describe* ({}, {})",
        if full { "EC2's" } else { "scaled down" },
        limits.run_instances.size,
        limits.run_instances.refill,
        limits.mutating.size,
        limits.mutating.refill,
        limits.describe.size,
        limits.describe.refill
    );

    let mut record = Record::default();
    proxy.rate_limit(limits, FILL);
    let started = Instant::now();
    let mut passes = 0;
    while pass(&provider, &mut record, n).await {
        passes += 1;
        assert!(passes < 20, "no convergence to {n} after 20 passes");
    }
    passes += 1;
    let wall = started.elapsed();
    let log = {
        let mut log = proxy.log.lock().unwrap();
        log.buckets = None;
        std::mem::take(&mut *log)
    };

    // The facts that must hold, at any size.
    let listed = provider.list().await.expect("list");
    assert_eq!(listed.len(), n, "the pool lists {n} instances");
    let live = at_moto(&direct, &owner).await;
    let ids: BTreeSet<&str> = live.iter().map(|(id, _)| id.as_str()).collect();
    let running = live.iter().filter(|(_, s)| s == "running").count();
    let recorded: BTreeSet<&str> = record.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        live.len(),
        n,
        "moto holds exactly {n} instances with the pool's tags"
    );
    assert_eq!(ids.len(), live.len(), "every instance id is distinct");
    assert_eq!(running, n, "all {n} are running");
    assert_eq!(ids, recorded, "moto holds exactly the instances recorded");
    let tokens: Vec<&str> = log
        .upstream
        .iter()
        .filter(|u| u.action == "RunInstances")
        .map(|u| {
            u.client_token
                .as_deref()
                .expect("RunInstances carries a ClientToken")
        })
        .collect();
    let distinct: BTreeSet<&&str> = tokens.iter().collect();
    assert_eq!(
        distinct.len(),
        tokens.len(),
        "no ClientToken reached moto twice: {tokens:?}"
    );
    let calls = &provider.calls;
    let provider_throttled = calls.throttled.load(Ordering::Relaxed) as usize;
    assert_eq!(
        log.throttled, provider_throttled,
        "every throttled answer was seen as throttling by the provider"
    );
    let attempts = [
        (
            "DescribeInstances",
            calls.describe.load(Ordering::Relaxed) as usize,
        ),
        ("RunInstances", calls.run.load(Ordering::Relaxed) as usize),
        (
            "TerminateInstances",
            calls.terminate.load(Ordering::Relaxed) as usize,
        ),
    ];
    let count = |m: &BTreeMap<String, usize>, a: &str| m.get(a).copied().unwrap_or(0);
    let mut retried = 0;
    for (action, made) in attempts {
        let throttled = count(&log.throttled_by, action);
        assert_eq!(
            count(&log.calls, action),
            made,
            "the proxy saw every {action} attempt"
        );
        assert_eq!(
            count(&log.forwarded, action),
            made - throttled,
            "every {action} refused was retried and every call forwarded in the end"
        );
        retried += throttled;
    }
    assert_eq!(
        log.calls.values().sum::<usize>(),
        attempts.iter().map(|a| a.1).sum::<usize>()
    );
    assert!(
        log.throttled > 0,
        "from empty buckets the first DescribeInstances is throttled"
    );

    // The figures.
    let fewest = fewest_calls(n);
    let best = best_time(&fewest, &limits, FILL, &log.upstream, true);
    let buckets_only = best_time(&fewest, &limits, FILL, &log.upstream, false);
    let ratio = wall.as_secs_f64() / best.as_secs_f64();
    let forwarded: Vec<String> = log
        .upstream
        .iter()
        .map(|u| {
            format!(
                "{} at {} (moto {})",
                u.action,
                secs(u.at.saturating_duration_since(started)),
                secs(u.took)
            )
        })
        .collect();
    println!(
        "reached {n} running instances in {} ({passes} passes)",
        secs(wall)
    );
    println!("forwarded to moto: {}", forwarded.join(", "));
    println!(
        "EC2 attempts: DescribeInstances {}, RunInstances {}; throttled answers {} ({:?}), retried {retried}, provider's throttled count {provider_throttled}",
        attempts[0].1, attempts[1].1, log.throttled, log.throttled_by
    );
    println!(
        "no duplicate: {n} instances with the pool's tags at moto, {} distinct ids, all running, = recorded; {} RunInstances, {} distinct ClientToken(s)",
        ids.len(),
        tokens.len(),
        distinct.len()
    );
    println!(
        "fewest calls: {}; the buckets alone allow {}; with moto's service times of those calls {}",
        fewest.join(" → "),
        secs(buckets_only),
        secs(best)
    );
    println!("ratio {ratio:.2} (wall / best; goal <= 1.20)");

    // Leave moto as it was.
    let ids: Vec<String> = ids.into_iter().map(str::to_owned).collect();
    for chunk in ids.chunks(PAGE) {
        support::ec2::terminate(&direct, chunk).await;
    }
}
