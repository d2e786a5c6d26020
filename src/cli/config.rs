//! `theseus config render`: ConfigModules and a ConfigBundle from YAML files
//! (no cluster needed) rendered into package archives named by the hash of
//! their content.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use kube::ResourceExt;
use serde::Deserialize;

use crate::api::{ConfigBundle, ConfigBundleSpec, ConfigModule, ConfigModuleSpec};
use crate::config::{self, Facts};

/// Generate configuration packages.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    theseus config render -m examples/config/ -f examples/config/demo-config-bundle.yaml -o out/\n  \
    theseus config diff demo-config --set greeting=hi")]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Render a bundle's packages into a directory and print their ids. The
    /// same content always gives the same id; every problem is printed at
    /// once, with its field path (exit code 2).
    #[command(after_help = "Examples:\n  \
        theseus config render -m examples/config/ -f examples/config/web-bundle.yaml -o out/\n  \
        theseus config render -m modules/ -f bundle.yaml --facts facts.json -o out/\n  \
        theseus pkg --root /tmp/node add out/demo-config--cfg.0123456789abcdef.tar.gz")]
    Render(RenderArgs),
    /// Show what a change of a ConfigBundle in the cluster would change,
    /// before it is applied: renders the bundle as it is and as changed
    /// (by `--set` or a whole new `-f` file) with the cluster's
    /// ConfigModules and facts, then prints each package's id before and
    /// after and a unified diff of each changed file. Exit code 0: no
    /// package changes (nothing would roll out); 1: some do; 2: the
    /// change does not render (every problem printed, with its path).
    #[command(after_help = "Examples:\n  \
        theseus config diff demo-config --set greeting=hi\n  \
        theseus config diff web -n shop -f web-bundle.yaml")]
    Diff(DiffArgs),
}

#[derive(Args, Debug)]
struct DiffArgs {
    /// The ConfigBundle.
    name: String,
    /// Its namespace.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// A value to change, `PARAMETER=VALUE` (VALUE read as YAML: `8080`
    /// is a number, `true` a boolean, `null` removes it); repeat.
    #[arg(long = "set", value_name = "PARAMETER=VALUE")]
    set: Vec<String>,
    /// The changed bundle, whole (its `spec` replaces the bundle's).
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        conflicts_with = "set"
    )]
    bundle: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RenderArgs {
    /// ConfigModule YAML files or directories (repeat).
    #[arg(short = 'm', long = "module", value_name = "PATH", required = true)]
    modules: Vec<PathBuf>,
    /// The ConfigBundle YAML file (its `spec.values`; secret parameters
    /// become references the node resolves).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    bundle: PathBuf,
    /// A cluster's facts as JSON: `{"name": …, "size": …, "hosts": {SERVICE: [NODE…]}}`.
    #[arg(long, value_name = "FILE")]
    facts: Option<PathBuf>,
    /// Where the archives are written (`ID.tar.gz`).
    #[arg(short = 'o', long = "out-dir", value_name = "DIR")]
    out_dir: PathBuf,
}

/// Runs `theseus config`.
pub async fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        ConfigCommand::Render(a) => render(a),
        ConfigCommand::Diff(a) => diff(a).await,
    }
}

async fn diff(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    use kube::Api;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the API server (check KUBECONFIG): {e}"))?;
    let who = format!("ConfigBundle {}/{}", args.namespace, args.name);
    let live = Api::<ConfigBundle>::namespaced(client.clone(), &args.namespace)
        .get_opt(&args.name)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {who}: {e}"))?
        .ok_or_else(|| anyhow::anyhow!("{who} does not exist (kubectl get configbundles -A)"))?;
    let changed = match &args.bundle {
        Some(path) => load_bundle(path)?,
        None => with_values(&live.spec, &args.set)?,
    };
    let crate::configgen::Inputs {
        modules,
        facts,
        mut problems,
    } = crate::configgen::inputs(&client, &args.namespace, &changed)
        .await
        .map_err(|(what, e)| anyhow::anyhow!("cannot read {what}: {e}"))?;
    let status = live.status.clone().unwrap_or_default();
    let previous = (!status.rendered_values.is_empty()).then_some(&status.rendered_values);
    let mut out = std::io::stdout().lock();
    let before = config::render(&modules, &live.spec, facts.as_ref(), previous)
        .map_err(|p| anyhow::anyhow!("{who} does not render as it is (fix it first): {p}"))?;
    let after = config::render(&modules, &changed, facts.as_ref(), previous);
    if let Err(found) = &after {
        problems.extend(found.0.iter().cloned());
    }
    let after = match after {
        Ok(r) if problems.is_empty() => r,
        _ => {
            writeln!(out, "the change does not render:")?;
            for p in &problems {
                writeln!(out, "  {p}")?;
            }
            return Ok(ExitCode::from(2));
        }
    };
    let changes = config::diff::diff(&before, &after);
    for c in &changes {
        let whom = nodes_of(&c.service);
        let id = |i: &Option<String>| i.clone().unwrap_or_else(|| "(none)".into());
        if c.unchanged() {
            writeln!(out, "{}  unchanged ({whom}; no rollout)", id(&c.from))?;
            continue;
        }
        writeln!(out, "{} → {}  ({whom} switch)", id(&c.from), id(&c.to))?;
        for (_, body) in &c.files {
            write!(out, "{body}")?;
        }
    }
    Ok(
        if changes.iter().all(config::diff::PackageChange::unchanged) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

/// Whose package one for `service` is: "every node" or "nodes running S".
fn nodes_of(service: &str) -> String {
    match service {
        "" => "every node".to_owned(),
        s => format!("nodes running {s}"),
    }
}

/// `spec` with the `PARAMETER=VALUE` changes of `--set`.
fn with_values(spec: &ConfigBundleSpec, set: &[String]) -> anyhow::Result<ConfigBundleSpec> {
    let mut spec = spec.clone();
    for item in set {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--set {item}: expected PARAMETER=VALUE"))?;
        let value: serde_json::Value =
            serde_yaml::from_str(value).map_err(|e| anyhow::anyhow!("--set {item}: {e}"))?;
        if value.is_null() {
            spec.values.remove(key);
        } else {
            spec.values.insert(key.to_owned(), value);
        }
    }
    Ok(spec)
}

fn render(args: &RenderArgs) -> anyhow::Result<ExitCode> {
    let modules = load_modules(&args.modules)?;
    let bundle = load_bundle(&args.bundle)?;
    let facts: Option<Facts> = match &args.facts {
        Some(path) => Some(
            serde_json::from_str(&read(path)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        ),
        None => None,
    };
    let mut out = std::io::stdout().lock();
    let rendered = match config::render(&modules, &bundle, facts.as_ref(), None) {
        Ok(r) => r,
        Err(problems) => {
            for p in &problems.0 {
                writeln!(out, "{p}")?;
            }
            return Ok(ExitCode::from(2));
        }
    };
    for package in &rendered.packages {
        crate::configgen::archive::write(package, &args.out_dir)?;
        let for_ = nodes_of(&package.service);
        writeln!(
            out,
            "{}  files: {}  for {for_}",
            package.id,
            package.files.len()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

fn load_modules(paths: &[PathBuf]) -> anyhow::Result<BTreeMap<String, ConfigModuleSpec>> {
    let mut modules = BTreeMap::new();
    for path in paths {
        for file in super::template::yaml_files(path)? {
            for doc in serde_yaml::Deserializer::from_str(&read(&file)?) {
                let value = serde_yaml::Value::deserialize(doc)?;
                if value.get("kind").and_then(|k| k.as_str()) != Some("ConfigModule") {
                    continue;
                }
                let m: ConfigModule = serde_path_to_error::deserialize(value).map_err(|e| {
                    anyhow::anyhow!("{}: {}: {}", file.display(), e.path(), e.inner())
                })?;
                modules.insert(m.name_any(), m.spec);
            }
        }
    }
    Ok(modules)
}

fn load_bundle(path: &Path) -> anyhow::Result<ConfigBundleSpec> {
    let value: serde_yaml::Value = serde_yaml::from_str(&read(path)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let bundle: ConfigBundle = serde_path_to_error::deserialize(value)
        .map_err(|e| anyhow::anyhow!("{}: {}: {}", path.display(), e.path(), e.inner()))?;
    Ok(bundle.spec)
}
