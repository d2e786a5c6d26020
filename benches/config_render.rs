//! Generated configuration packages, measured:
//!
//! 1. **Render** 1,000 bundles of 20 files each (one module, each bundle
//!    its own values), as the operator does for a new render: values,
//!    templates, the content hash, and the archive. Then **re-render** the
//!    same bundles: the ids come out the same, so the operator writes
//!    nothing (it finds each id stored). Side by side, the baseline a
//!    generator without content addressing pays on every render: building
//!    and writing the archive again. Printed: both times and their ratio,
//!    and that no id changed.
//! 2. **The operator's memory with 1,000 generated packages** stored in the
//!    API server: a real `theseus operator` serving their repository
//!    (every package fetched once through `/config-repository/`, the
//!    index read) and sweeping them for collection every second, against
//!    a baseline operator of the same build with none, in the same run.
//!    Printed: both peak memories (VmHWM) and their ratio, and the time to
//!    serve the index and all packages.
//!
//!     cargo bench --bench config_render      (part 2 needs the testbed: testbed/testbed up)
//!
//! Environment: THESEUS_BENCH_BUNDLES (1000), THESEUS_BENCH_FILES (20).
//! Run by `cargo test --all-targets` (without `--bench`) it does a smoke
//! run of 20 bundles; without the testbed part 2 is skipped, or fails
//! when `CI` is set.

#[allow(dead_code)] // the benchmark uses a part of the tests' support
#[path = "../tests/it/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use support::fleet::Operator;
use support::run::usage;
use support::{TestNamespace, test_logs};
use theseus::api::{ConfigBundleSpec, ConfigModuleSpec};
use theseus::config::{self, Rendered};
use theseus::configgen::{archive, store::Repository};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One module of `files` templates, each using the bundle's values.
fn module(files: usize) -> ConfigModuleSpec {
    let templates: Vec<serde_json::Value> = (0..files)
        .map(|i| {
            json!({
                "path": format!("etc/app/part-{i:02}.conf"),
                "content": format!(
                    "# part {i}\nname = {{{{ name }}}}\nport = {{{{ port + {i} }}}}\n\
                     peers = {{{{ hosts }}}}\nlisten = {{{{ listen }}}}\n\
                     {{% if port > 9000 %}}high = true\n{{% endif %}}"
                )
            })
        })
        .collect();
    serde_json::from_value(json!({
        "version": "1",
        "parameters": {
            "name": { "type": "string" },
            "port": { "type": "integer", "default": 8000, "minimum": 1024, "maximum": 60000 },
            "hosts": { "type": "string", "default": "a,b,c" }
        },
        "calculations": { "listen": "\"0.0.0.0:\" ~ port" },
        "templates": templates
    }))
    .unwrap()
}

fn bundle(i: usize) -> ConfigBundleSpec {
    serde_json::from_value(json!({
        "package": format!("app{i}-config"),
        "modules": [{ "name": "app" }],
        "values": { "name": format!("app-{i}"), "port": 8000 + (i % 1000) }
    }))
    .unwrap()
}

fn render_all(
    catalog: &BTreeMap<String, ConfigModuleSpec>,
    bundles: &[ConfigBundleSpec],
) -> Vec<Rendered> {
    bundles
        .iter()
        .map(|b| config::render(catalog, b, None, None).expect("the bench's bundles render"))
        .collect()
}

fn ids(rendered: &[Rendered]) -> Vec<String> {
    rendered
        .iter()
        .flat_map(|r| r.packages.iter().map(|p| p.id.clone()))
        .collect()
}

/// Part 1; returns the first render (for part 2).
fn render_bench(count: usize, files: usize) -> Vec<Rendered> {
    let catalog = BTreeMap::from([("app".to_owned(), module(files))]);
    let bundles: Vec<ConfigBundleSpec> = (0..count).map(bundle).collect();

    let started = Instant::now();
    let first = render_all(&catalog, &bundles);
    let mut bytes = 0usize;
    for r in &first {
        for p in &r.packages {
            bytes += archive::bytes(p).expect("archive").len();
        }
    }
    let full = started.elapsed();

    // Theseus's re-render: the ids; each is found stored, nothing written.
    let started = Instant::now();
    let again = render_all(&catalog, &bundles);
    let noop = started.elapsed();
    // The baseline: every render builds and writes its archive again.
    let started = Instant::now();
    let baseline = render_all(&catalog, &bundles);
    for r in &baseline {
        for p in &r.packages {
            std::hint::black_box(archive::bytes(p).expect("archive"));
        }
    }
    let always = started.elapsed();

    let changed = ids(&first)
        .iter()
        .zip(ids(&again))
        .filter(|(a, b)| **a != *b)
        .count();
    assert_eq!(changed, 0, "a re-render of the same bundles changed ids");
    let files_total = first
        .iter()
        .map(|r| r.packages[0].files.len())
        .sum::<usize>();
    assert_eq!(files_total, count * files);
    println!(
        "render: {count} bundles of {files} files ({files_total} files, {} KiB of archives)",
        bytes / 1024
    );
    println!(
        "  first render (values, templates, hash, archive)  {:>9.3} s  ({:.2} ms per bundle)",
        full.as_secs_f64(),
        full.as_secs_f64() * 1000.0 / count as f64
    );
    println!(
        "  no-op re-render (ids only; nothing written)      {:>9.3} s  ({:.2} ms per bundle)",
        noop.as_secs_f64(),
        noop.as_secs_f64() * 1000.0 / count as f64
    );
    println!(
        "  baseline re-render (archive built every time)    {:>9.3} s",
        always.as_secs_f64()
    );
    println!(
        "  ratio no-op / baseline                           {:>9.3}",
        noop.as_secs_f64() / always.as_secs_f64()
    );
    println!("  ids changed by the re-render                     {changed:>9}   (new writes: 0)");
    first
}

/// The peak memory of an operator serving the packages of `namespace`
/// (every package fetched once, the index read), after `settle`.
async fn operator_memory(
    tb: &support::TestbedEnv,
    namespace: &str,
    identity: &str,
    ids: &[String],
    settle: Duration,
) -> (u64, Duration) {
    let logs = test_logs(namespace);
    let op = Operator::start_with(
        tb,
        namespace,
        namespace,
        identity,
        &logs,
        &["--config-gc-grace-seconds", "1"],
        &[],
    );
    let base = format!("{}/config-repository", op.http);
    let http = reqwest::Client::new();
    let started = Instant::now();
    let index = http.get(format!("{base}/index.json")).send().await.unwrap();
    let _ = index.bytes().await;
    let fetched: Vec<usize> = futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let r = http
                    .get(format!("{base}/packages/{id}.tar.gz"))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{id}: {}", r.status());
                r.bytes().await.unwrap().len()
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let served = started.elapsed();
    assert_eq!(fetched.len(), ids.len());
    tokio::time::sleep(settle).await;
    let (_, hwm) = usage(op.pid());
    drop(op);
    (hwm, served)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let count = env_or("THESEUS_BENCH_BUNDLES", if full { 1000 } else { 20 });
    let files = env_or("THESEUS_BENCH_FILES", 20);
    let rendered = render_bench(count, files);

    let Some(tb) = support::testbed() else {
        return;
    };
    support::apply_crds(&tb);
    let client = tb.client().await;
    let with = TestNamespace::create(&tb, &client, "cfgbench").await;
    let without = TestNamespace::create(&tb, &client, "cfgbase").await;
    let key = Arc::new(theseus::pkg::index::generate_key());
    let repository = Repository::new(client.clone(), &with.name, Some(key));
    let started = Instant::now();
    let packages: Vec<&config::Package> = rendered.iter().flat_map(|r| &r.packages).collect();
    let stored: Vec<bool> = futures::stream::iter(packages.iter().copied())
        .map(|p| {
            let repository = repository.clone();
            async move { repository.ensure(p, "bench").await.expect("store") }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let index = repository.publish().await.expect("publish");
    let store_time = started.elapsed();
    assert_eq!(stored.iter().filter(|w| **w).count(), packages.len());
    assert_eq!(index.packages.len(), packages.len());
    // Storing them again writes nothing: each id is found.
    let started = Instant::now();
    for p in &packages {
        assert!(
            !repository.ensure(p, "bench").await.expect("store"),
            "{} written twice",
            p.id
        );
    }
    let again = started.elapsed();
    let ids: Vec<String> = packages.iter().map(|p| p.id.clone()).collect();
    let settle = Duration::from_secs(if full { 5 } else { 2 });
    let (base_hwm, _) = operator_memory(&tb, &without.name, "base", &[], settle).await;
    let (hwm, served) = operator_memory(&tb, &with.name, "gen", &ids, settle).await;
    println!(
        "operator with {} generated packages in the API server",
        ids.len()
    );
    println!(
        "  stored in                                        {:>9.3} s",
        store_time.as_secs_f64()
    );
    println!(
        "  stored again (each found; no write)              {:>9.3} s",
        again.as_secs_f64()
    );
    println!(
        "  index and every package served in                {:>9.3} s",
        served.as_secs_f64()
    );
    println!(
        "  operator peak memory, none (baseline)            {:>9.1} MiB",
        base_hwm as f64 / 1024.0
    );
    println!(
        "  operator peak memory, {:>5} packages             {:>9.1} MiB",
        ids.len(),
        hwm as f64 / 1024.0
    );
    println!(
        "  ratio                                            {:>9.3}",
        hwm as f64 / base_hwm.max(1) as f64
    );
    with.delete(&client).await;
    without.delete(&client).await;
}
