//! `theseus crds`: the CustomResourceDefinitions, generated from the types.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::api;

/// Print every Theseus CustomResourceDefinition, or write or check one file
/// per kind.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    theseus crds | kubectl apply --server-side -f -\n  \
    theseus crds --out-dir crds/      # regenerate the committed files\n  \
    theseus crds --check crds/        # fail if they drifted from the types\n  \
    theseus crds --check crds/ --check charts/theseus/crds/   # and the chart's copy")]
pub struct CrdsArgs {
    /// Write `<plural>.theseus.dev.yaml` files into this directory instead of
    /// printing a multi-document YAML stream.
    #[arg(long, value_name = "DIR", conflicts_with = "check")]
    pub out_dir: Option<PathBuf>,

    /// Compare the files in this directory with the generated CRDs and exit
    /// non-zero, naming each file, when they differ. Repeat to check several
    /// copies (`crds/` and the chart's `charts/theseus/crds/`).
    #[arg(long, value_name = "DIR")]
    pub check: Vec<PathBuf>,
}

/// Runs `theseus crds`.
pub fn run(args: &CrdsArgs) -> anyhow::Result<()> {
    if !args.check.is_empty() {
        let mut drifted = Vec::new();
        for dir in &args.check {
            let drift = check_dir(dir);
            if drift.is_empty() {
                eprintln!("{} matches the API types", dir.display());
            } else {
                drifted.push(format!("{} ({})", dir.display(), drift.join("; ")));
            }
        }
        if drifted.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "drifted from the API types: {}; run `make crds chart-crds` and commit the result",
            drifted.join(", ")
        );
    }
    match &args.out_dir {
        Some(dir) => write_dir(dir),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(render_stream().as_bytes())?;
            Ok(())
        }
    }
}

/// All CRDs as one YAML stream, documents separated by `---`.
pub fn render_stream() -> String {
    api::crds()
        .iter()
        .map(api::crd_yaml)
        .map(|doc| format!("---\n{doc}"))
        .collect()
}

/// Writes one file per CRD into `dir`.
pub fn write_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for crd in api::crds() {
        let path = dir.join(api::crd_file_name(&crd));
        std::fs::write(&path, api::crd_yaml(&crd))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Compares `dir` with the generated CRDs. Returns one line per file that is
/// missing, differs, or has no kind behind it; empty when all match.
pub fn check_dir(dir: &Path) -> Vec<String> {
    let mut drift = Vec::new();
    let mut expected_names = Vec::new();
    for crd in api::crds() {
        let name = api::crd_file_name(&crd);
        let path = dir.join(&name);
        match std::fs::read_to_string(&path) {
            Ok(text) if text == api::crd_yaml(&crd) => {}
            Ok(_) => drift.push(format!("{name} differs")),
            Err(_) => drift.push(format!("{name} is missing")),
        }
        expected_names.push(name);
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut extra: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") && !expected_names.contains(n))
            .collect();
        extra.sort();
        drift.extend(
            extra
                .into_iter()
                .map(|n| format!("{n} has no kind behind it")),
        );
    }
    drift
}
