//! `theseus discover`: read and follow the etcd discovery tree.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::discovery::paths::{self, children};
use crate::discovery::tree::ContainerEntry;
use crate::discovery::{EtcdArgs, Follower, GroupEvent, Tree};

/// Read and follow the discovery tree.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    theseus discover ls\n  \
    theseus discover ls web/canary.eu/containers\n  \
    theseus discover get web --labels canary,eu --format json\n  \
    theseus discover watch web --labels canary,eu")]
pub struct DiscoverArgs {
    #[command(flatten)]
    etcd: EtcdArgs,

    #[command(subcommand)]
    command: DiscoverCommand,
}

#[derive(Subcommand, Debug)]
enum DiscoverCommand {
    /// List the entries under a path of the tree (default: the services).
    #[command(after_help = "Examples:\n  \
        theseus discover ls\n  \
        theseus discover ls web/canary.eu/containers")]
    Ls {
        /// A path such as `web`, `web/canary.eu` or `/services/web`.
        path: Option<String>,
    },
    /// Show a service's groups: config and containers.
    #[command(after_help = "Examples:\n  \
        theseus discover get web\n  \
        theseus discover get web --labels canary,eu --format json")]
    Get {
        /// The service.
        service: String,
        /// Only the group with these labels (comma-separated).
        #[arg(long, short = 'l', value_delimiter = ',')]
        labels: Option<Vec<String>>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print each change to a service's containers as it happens.
    #[command(after_help = "Example:\n  \
        theseus discover watch web --labels canary,eu   # + added, ~ changed, - removed")]
    Watch {
        /// The service.
        service: String,
        /// Only the group with these labels (comma-separated).
        #[arg(long, short = 'l', value_delimiter = ',')]
        labels: Option<Vec<String>>,
    },
}

/// How `discover get` prints.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// A table for people.
    Text,
    /// JSON for programs.
    Json,
}

/// Runs `theseus discover`.
pub fn run(args: &DiscoverArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let tree = Tree::connect(&args.etcd.config()).await?;
        match &args.command {
            DiscoverCommand::Ls { path } => ls(&tree, path.as_deref().unwrap_or("/")).await,
            DiscoverCommand::Get {
                service,
                labels,
                format,
            } => get(&tree, service, labels.as_deref(), *format).await,
            DiscoverCommand::Watch { service, labels } => {
                watch(tree, service, labels.as_deref()).await
            }
        }
    })
}

async fn ls(tree: &Tree, path: &str) -> anyhow::Result<()> {
    let dir = tree.layout().dir(path);
    let range = tree.range(&dir).await?;
    let entries = children(range.entries.iter().map(|e| e.key.as_str()), &dir);
    let mut out = std::io::stdout().lock();
    for entry in entries {
        writeln!(out, "{entry}")?;
    }
    Ok(())
}

async fn get(
    tree: &Tree,
    service: &str,
    labels: Option<&[String]>,
    format: Format,
) -> anyhow::Result<()> {
    let only = labels.map(paths::encode_group).transpose()?;
    let mut groups = tree.service_groups(service).await?;
    groups.retain(|g| only.as_ref().is_none_or(|o| o == g));
    let mut containers = tree.service_containers(service).await?;
    containers.retain(|c| groups.contains(&c.group));
    let mut configs = BTreeMap::new();
    for group in &groups {
        configs.insert(group.clone(), tree.group_config(service, group).await?);
    }
    let text = match format {
        Format::Json => serde_json::to_string_pretty(&as_json(service, &configs, &containers))?,
        Format::Text => as_table(service, &configs, &containers),
    };
    println!("{text}");
    Ok(())
}

fn as_json(
    service: &str,
    configs: &BTreeMap<String, Option<crate::discovery::GroupConfig>>,
    containers: &[ContainerEntry],
) -> serde_json::Value {
    let groups: serde_json::Map<String, serde_json::Value> = configs
        .iter()
        .map(|(group, config)| {
            let own: BTreeMap<&str, _> = containers
                .iter()
                .filter(|c| &c.group == group)
                .map(|c| (c.container.as_str(), &c.info))
                .collect();
            (
                group.clone(),
                json!({ "labels": paths::decode_group(group), "config": config, "containers": own }),
            )
        })
        .collect();
    json!({ "service": service, "groups": groups })
}

fn as_table(
    service: &str,
    configs: &BTreeMap<String, Option<crate::discovery::GroupConfig>>,
    containers: &[ContainerEntry],
) -> String {
    let mut out = String::new();
    for (group, config) in configs {
        let config = config
            .as_ref()
            .map(|c| serde_json::to_string(c).unwrap_or_default())
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!("{service}/{group}  config {config}\n"));
        out.push_str(&format!(
            "  {:<40} {:<16} {:<6} {}\n",
            "CONTAINER", "HOST", "PORT", "NODE"
        ));
        for c in containers.iter().filter(|c| &c.group == group) {
            let port = c.info.instance_port.map_or("-".into(), |p| p.to_string());
            let node = c.info.node_name.as_deref().unwrap_or("-");
            out.push_str(&format!(
                "  {:<40} {:<16} {:<6} {}\n",
                c.container, c.info.instance_host, port, node
            ));
        }
    }
    out.trim_end().to_owned()
}

async fn watch(tree: Tree, service: &str, labels: Option<&[String]>) -> anyhow::Result<()> {
    let mut follower = match labels {
        Some(labels) => Follower::labels(tree, service, labels)?,
        None => Follower::service(tree, service)?,
    };
    loop {
        let event = follower.next().await;
        if let Some(line) = render_event(&event) {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()?;
        }
    }
}

/// One line per change, as `discover watch` prints it:
/// `+` added, `~` updated, `-` removed, `=` in sync, `!` disconnected.
pub fn render_event(event: &GroupEvent) -> Option<String> {
    let endpoint = |info: &crate::discovery::ContainerInfo| match info.instance_port {
        Some(port) => format!("{}:{port}", info.instance_host),
        None => info.instance_host.clone(),
    };
    Some(match event {
        GroupEvent::Added {
            group,
            container,
            info,
        } => format!("+ {group}/{container} {}", endpoint(info)),
        GroupEvent::Updated {
            group,
            container,
            info,
        } => format!("~ {group}/{container} {}", endpoint(info)),
        GroupEvent::Removed { group, container } => format!("- {group}/{container}"),
        GroupEvent::Config { group, config } => format!(
            "* {group} config {}",
            config
                .as_ref()
                .map(|c| serde_json::to_string(c).unwrap_or_default())
                .unwrap_or_else(|| "removed".into())
        ),
        GroupEvent::Synced { containers } => format!("= {containers} containers"),
        GroupEvent::Disconnected { error } => format!("! {error}; reconnecting"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::ContainerInfo;

    #[test]
    fn watch_prints_one_line_per_change_with_a_sign() {
        let info = ContainerInfo {
            instance_host: "10.0.0.1".into(),
            instance_port: Some(80),
            ..ContainerInfo::default()
        };
        let cases = [
            (
                GroupEvent::Added {
                    group: "eu".into(),
                    container: "w-1".into(),
                    info: info.clone(),
                },
                "+ eu/w-1 10.0.0.1:80",
            ),
            (
                GroupEvent::Removed {
                    group: "eu".into(),
                    container: "w-1".into(),
                },
                "- eu/w-1",
            ),
            (GroupEvent::Synced { containers: 3 }, "= 3 containers"),
        ];
        for (event, line) in cases {
            assert_eq!(render_event(&event).as_deref(), Some(line));
        }
    }
}
