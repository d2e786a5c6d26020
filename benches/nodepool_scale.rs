//! Benchmark: scale a pool 0 → 50 → 0 against an EC2 API (moto in the
//! testbed) with the NodePool planner and the EC2 provider, passes run the
//! way the controller runs them (list, plan, terminate, launch, record,
//! until a pass has nothing to do), and count the EC2 calls against the
//! fewest that could do the job: one DescribeInstances to learn the state,
//! then one RunInstances (scale-up, one batch) or one TerminateInstances
//! (scale-down).
//!
//! `cargo bench --bench nodepool_scale` uses THESEUS_EC2_ENDPOINT and the
//! AWS_* variables when set (`eval "$(testbed/testbed env)"`), and the
//! testbed's moto otherwise. Without `--bench` (as `cargo test --all-targets`
//! runs it) it does the same with 5 instances.

#[allow(dead_code)] // the benchmark uses a part of the tests' support
#[path = "../tests/it/support/mod.rs"]
mod support;

#[path = "nodepool/passes.rs"]
mod passes;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use passes::{Record, pass};
use theseus::api::AwsProvider;
use theseus::nodepool::aws::{self, Calls, Ec2};
use theseus::nodepool::provider::{Owner, Provider};

const TARGET: usize = 50;

fn snapshot(calls: &Calls) -> [u64; 4] {
    [
        calls.describe.load(Ordering::Relaxed),
        calls.run.load(Ordering::Relaxed),
        calls.terminate.load(Ordering::Relaxed),
        calls.throttled.load(Ordering::Relaxed),
    ]
}

async fn phase(provider: &Ec2, record: &mut Record, replicas: usize, minimum: u64) -> f64 {
    let before = snapshot(&provider.calls);
    let started = Instant::now();
    let mut passes = 0;
    while pass(provider, record, replicas).await {
        passes += 1;
        assert!(passes < 20, "no convergence to {replicas} after 20 passes");
    }
    passes += 1;
    let after = snapshot(&provider.calls);
    let [d, r, t, th] = [0, 1, 2, 3].map(|k| after[k] - before[k]);
    let live = provider.list().await.expect("list").len();
    assert_eq!(live, replicas, "the pool converged on {replicas}");
    let made = d + r + t;
    let ratio = made as f64 / minimum as f64;
    println!(
        "scale to {replicas:>3}: {passes} passes in {:>6.0} ms; EC2 calls: DescribeInstances {d}, RunInstances {r}, TerminateInstances {t} (throttled {th}) = {made}; minimum {minimum}; ratio {ratio:.2}",
        started.elapsed().as_secs_f64() * 1000.0
    );
    ratio
}

/// The EC2 endpoint and credentials: from the environment, or the testbed's.
fn ec2_target() -> (String, Option<(String, String)>) {
    if let Ok(endpoint) = std::env::var("THESEUS_EC2_ENDPOINT") {
        return (endpoint, None);
    }
    let Some(tb) = support::testbed() else {
        eprintln!(
            "nodepool_scale: set THESEUS_EC2_ENDPOINT or bring the testbed up (testbed/testbed up)"
        );
        std::process::exit(2);
    };
    let keys = (
        tb.var("AWS_ACCESS_KEY_ID").to_owned(),
        tb.var("AWS_SECRET_ACCESS_KEY").to_owned(),
    );
    (tb.ec2_endpoint().to_owned(), Some(keys))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let target = if full { TARGET } else { 5 };
    let (endpoint, keys) = ec2_target();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let settings = AwsProvider {
            region: std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
            instance_type: "t3.micro".into(),
            endpoint: Some(endpoint),
            ..Default::default()
        };
        let client = aws::client(&settings, keys).await;
        let images = client.describe_images().owners("amazon").send().await.expect("describe images");
        let image = images.images().iter().find_map(|i| i.image_id()).expect("an AMI").to_owned();
        let run = format!("{:08x}", rand::random::<u32>());
        let owner = Owner {
            pool: format!("bench-{run}"),
            uid: format!("bench-uid-{run}"),
            cluster: "theseus-bench".into(),
        };
        let shown = settings.endpoint.clone().unwrap_or_default();
        let settings = AwsProvider { image_id: image, ..settings };
        let provider = Ec2::new(client, owner, settings, &BTreeMap::new());
        let mut record = Record::default();
        println!("nodepool_scale: {target} instances against {shown}");
        let up = phase(&provider, &mut record, target, 2).await;
        // A later scale request: the listing cache has expired by then.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let down = phase(&provider, &mut record, 0, 2).await;
        println!("worst ratio {:.2} (goal <= 1.20)", up.max(down));
        println!(
            "steady state: one DescribeInstances per reconcile, at most one per {}s when passes follow each other",
            2
        );
    });
}
