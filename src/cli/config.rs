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
    theseus config render -m examples/config/web-module.yaml -f examples/config/web-bundle.yaml -o out/")]
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
        theseus repo index out/ && theseus pkg activate web-config--cfg.0123456789abcdef --repo file://$PWD/out/")]
    Render(RenderArgs),
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
pub fn run(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        ConfigCommand::Render(a) => render(a),
    }
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
        let for_ = match package.service.as_str() {
            "" => "every node".to_owned(),
            s => format!("nodes running {s}"),
        };
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
