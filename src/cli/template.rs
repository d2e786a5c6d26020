//! `theseus template`: solve a cluster template for a size, or validate it,
//! from YAML files (no cluster needed) or from the API server's catalog.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::api::{ClusterTemplate, LayoutNode, NodeClass, ServiceDefinition};
use crate::layout::{self, Catalog, Outcome, Request};

/// Solve or validate cluster templates.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    theseus template solve hadoop --size 5 -f examples/catalog/\n  \
    theseus template validate web -f examples/catalog/")]
pub struct TemplateArgs {
    #[command(subcommand)]
    command: TemplateCommand,
}

#[derive(Subcommand, Debug)]
enum TemplateCommand {
    /// Print the layout a cluster of the template and size would get, or
    /// why none exists (exit code 2).
    #[command(after_help = "Examples:\n  \
        theseus template solve hadoop --size 5 -f examples/catalog/\n  \
        theseus template solve web --size 12 --service web --service cache --service db -f examples/catalog/\n  \
        theseus template solve hadoop --size 40 --output yaml     # the catalog from the API server")]
    Solve(SolveArgs),
    /// Resolve and validate a template and print the sizes it can be solved
    /// for (its status.feasibleSizes).
    #[command(after_help = "Examples:\n  \
        theseus template validate hadoop -f examples/catalog/\n  \
        theseus template validate web")]
    Validate(ValidateArgs),
}

#[derive(Args, Debug)]
struct Source {
    /// YAML files or directories holding ServiceDefinition, NodeClass and
    /// ClusterTemplate documents. Without it, the catalog is read from the
    /// API server.
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    files: Vec<PathBuf>,
}

#[derive(Args, Debug)]
struct SolveArgs {
    /// The ClusterTemplate.
    template: String,
    /// The number of nodes.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10000))]
    size: u32,
    /// A service the cluster runs (repeat); default: the template's default
    /// services.
    #[arg(long = "service", value_name = "SERVICE")]
    services: Vec<String>,
    /// The preferred node class.
    #[arg(long)]
    node_class: Option<String>,
    /// Prefix of the node names (default: the template's name).
    #[arg(long)]
    name: Option<String>,
    /// How to print the layout.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    source: Source,
}

#[derive(Args, Debug)]
struct ValidateArgs {
    /// The ClusterTemplate.
    template: String,
    #[command(flatten)]
    source: Source,
}

/// How a layout is printed.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    /// Aligned columns: node, class, services.
    Table,
    /// The layout as `status.layout` would hold it.
    Yaml,
}

/// Runs `theseus template`.
pub async fn run(args: TemplateArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TemplateCommand::Solve(a) => solve(a).await,
        TemplateCommand::Validate(a) => validate(a).await,
    }
}

async fn solve(args: SolveArgs) -> anyhow::Result<ExitCode> {
    let catalog = load(&args.source).await?;
    let request = Request {
        size: args.size,
        services: args.services,
        node_class: args.node_class,
    };
    let prefix = args.name.unwrap_or_else(|| args.template.clone());
    let outcome = layout::solve_request(&catalog, &args.template, &request, &[], &prefix)?;
    let mut out = std::io::stdout().lock();
    match outcome {
        Outcome::Solved { layout, objective } => {
            match args.output {
                Output::Table => out.write_all(table(&layout).as_bytes())?,
                Output::Yaml => out.write_all(serde_yaml::to_string(&layout)?.as_bytes())?,
            }
            writeln!(out, "{} nodes, total cost {}", layout.len(), objective.cost)?;
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Unsatisfiable(explanation) => {
            writeln!(out, "no layout: {explanation}")?;
            Ok(ExitCode::from(2))
        }
    }
}

async fn validate(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let catalog = load(&args.source).await?;
    let mut out = std::io::stdout().lock();
    let findings = match layout::resolve::resolve(&catalog, &args.template) {
        Ok(resolved) => {
            let findings = layout::validate::template(&catalog, &resolved);
            if findings.is_empty() {
                writeln!(
                    out,
                    "template {} is valid, revision {}",
                    args.template,
                    layout::resolve::revision(&resolved)
                )?;
                if !resolved.partial {
                    let request = Request {
                        size: 1,
                        ..Request::default()
                    };
                    let model = layout::build_model(&catalog, &resolved, &request)
                        .map_err(anyhow::Error::msg)?;
                    let sizes =
                        layout::sizes::format_ranges(&layout::sizes::feasible_sizes(&model)?);
                    let shown = if sizes.is_empty() {
                        "none".to_owned()
                    } else {
                        sizes.join(", ")
                    };
                    writeln!(out, "feasible sizes: {shown}")?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            findings
        }
        Err(findings) => findings,
    };
    for f in &findings {
        writeln!(out, "{}: {f}", f.reason.as_str())?;
    }
    Ok(ExitCode::from(2))
}

/// The layout as aligned columns.
pub fn table(layout: &[LayoutNode]) -> String {
    let w_name = layout
        .iter()
        .map(|n| n.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let w_class = layout
        .iter()
        .map(|n| n.node_class.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut s = format!("{:w_name$}  {:w_class$}  SERVICES\n", "NODE", "CLASS");
    for n in layout {
        s += &format!(
            "{:w_name$}  {:w_class$}  {}\n",
            n.name,
            n.node_class,
            n.services.join(",")
        );
    }
    s
}

/// The catalog from files, or from the API server when none are given.
async fn load(source: &Source) -> anyhow::Result<Catalog> {
    if source.files.is_empty() {
        return load_cluster().await;
    }
    let mut catalog = Catalog::default();
    for path in &source.files {
        for file in yaml_files(path)? {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            add_documents(&mut catalog, &text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        }
    }
    Ok(catalog)
}

/// `path` itself, or the `.yaml`/`.yml` files in it, sorted.
pub(crate) fn yaml_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Adds the catalog documents of a YAML stream; other kinds are skipped.
pub fn add_documents(catalog: &mut Catalog, text: &str) -> anyhow::Result<()> {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)?;
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        match kind.as_str() {
            "ServiceDefinition" => {
                let o: ServiceDefinition = typed(value, i)?;
                catalog.services.insert(o.name_any(), o.spec);
            }
            "NodeClass" => {
                let o: NodeClass = typed(value, i)?;
                catalog.node_classes.insert(o.name_any(), o.spec);
            }
            "ClusterTemplate" => {
                let o: ClusterTemplate = typed(value, i)?;
                catalog.templates.insert(o.name_any(), o.spec);
            }
            _ => {}
        }
    }
    Ok(())
}

fn typed<T: DeserializeOwned>(value: serde_yaml::Value, index: usize) -> anyhow::Result<T> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| anyhow::anyhow!("document {}: {}: {}", index + 1, e.path(), e.inner()))
}

async fn load_cluster() -> anyhow::Result<Catalog> {
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot reach the API server ({e}); pass the catalog as files with -f")
    })?;
    Ok(Catalog::of(
        &list::<ServiceDefinition>(&client).await?,
        &list::<NodeClass>(&client).await?,
        &list::<ClusterTemplate>(&client).await?,
    ))
}

async fn list<K>(client: &Client) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    Ok(Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| anyhow::anyhow!("cannot list {kind}s: {e}"))?
        .items)
}
