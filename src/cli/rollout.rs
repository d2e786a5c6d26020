//! `theseus rollout`: follow a PackageSet's rollout, and halt or resume
//! every rollout.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};

use crate::api::PackageSet;
use crate::api::conditions::{self, types};
use crate::shared::halt::HaltStore;

/// Follow, halt and resume PackageSet rollouts.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    theseus rollout status web-tier\n  \
    theseus rollout halt --reason \"error budget spent\"\n  \
    theseus rollout resume")]
pub struct RolloutArgs {
    #[command(subcommand)]
    command: RolloutCommand,
}

#[derive(Subcommand, Debug)]
enum RolloutCommand {
    /// Show a set's progress; exit 0 when Available, 1 when Degraded or
    /// Halted, 2 on timeout.
    #[command(
        after_help = "Examples:\n  theseus rollout status web-tier\n  theseus rollout status web-tier --watch=false"
    )]
    Status(StatusArgs),
    /// Stop every rollout from starting any new node, until resumed.
    #[command(after_help = "Example:\n  theseus rollout halt --reason \"error budget spent\"")]
    Halt(HaltArgs),
    /// Clear a halt; rollouts continue where they stopped.
    #[command(after_help = "Example:\n  theseus rollout resume")]
    Resume(NamespaceArgs),
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The PackageSet.
    name: String,
    /// Keep printing until the set is Available, Degraded or Halted.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    watch: bool,
    /// Give up after this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    timeout: u64,
}

#[derive(Args, Debug)]
struct NamespaceArgs {
    /// The operator's namespace, where the halt is stored.
    #[arg(long, env = "THESEUS_NAMESPACE", default_value = "theseus-system")]
    namespace: String,
}

#[derive(Args, Debug)]
struct HaltArgs {
    /// Why: shown on every PackageSet's Halted condition.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    ns: NamespaceArgs,
}

/// Runs `theseus rollout …`.
pub async fn run(args: RolloutArgs) -> anyhow::Result<ExitCode> {
    let client = Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Kubernetes (check KUBECONFIG): {e}"))?;
    match args.command {
        RolloutCommand::Status(a) => status(client, a).await,
        RolloutCommand::Halt(a) => {
            let by = std::env::var("USER").unwrap_or_else(|_| "theseus-cli".into());
            let halt = HaltStore::new(client, &a.ns.namespace)
                .halt(&a.reason, &by, Timestamp::now())
                .await?;
            println!(
                "rollouts halted ({}); resume with `theseus rollout resume`",
                halt.message()
            );
            Ok(ExitCode::SUCCESS)
        }
        RolloutCommand::Resume(a) => {
            let was = HaltStore::new(client, &a.namespace).resume().await?;
            println!(
                "{}",
                if was {
                    "rollouts resumed"
                } else {
                    "rollouts were not halted"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Where a set stands, for `rollout status`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every node runs the set.
    Available,
    /// The set is halted or degraded; the reason says why.
    Stuck(String),
    /// Still rolling.
    Rolling,
}

/// Reads the verdict from a set's status. Pure.
pub fn verdict(set: &PackageSet) -> Verdict {
    let Some(status) = &set.status else {
        return Verdict::Rolling;
    };
    let current = status.observed_generation == set.metadata.generation;
    let c = &status.conditions;
    if current && conditions::is_true(c, types::AVAILABLE) {
        return Verdict::Available;
    }
    for bad in [types::HALTED, types::DEGRADED] {
        if let Some(cond) = conditions::find(c, bad).filter(|c| c.status == "True" && current) {
            return Verdict::Stuck(format!("{bad}: {} ({})", cond.message, cond.reason));
        }
    }
    Verdict::Rolling
}

/// One line: a bar of updated nodes out of desired, or what the operator
/// has yet to see.
pub fn progress_line(set: &PackageSet) -> String {
    let s = set.status.clone().unwrap_or_default();
    let name = set.metadata.name.as_deref().unwrap_or_default();
    if s.observed_generation != set.metadata.generation {
        return format!(
            "{name}: waiting for the operator to pick up generation {}",
            set.metadata.generation.unwrap_or_default()
        );
    }
    let (done, total) = (
        s.updated_nodes.max(0) as usize,
        s.desired_nodes.max(0) as usize,
    );
    let width = 30;
    let filled = (done * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    format!(
        "{name} [{}{}] {done}/{total} updated, {} switching, {} failed",
        "#".repeat(filled),
        "-".repeat(width - filled),
        s.in_progress_nodes,
        s.failed_nodes,
    )
}

async fn status(client: Client, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let api: Api<PackageSet> = Api::all(client);
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let set = api
            .get(&args.name)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read PackageSet {}: {e}", args.name))?;
        let line = progress_line(&set);
        if line != last {
            if tty {
                print!("\r\x1b[2K{line}");
            } else {
                println!("{line}");
            }
            std::io::stdout().flush()?;
            last = line;
        }
        let finish = |msg: String, code: u8| {
            if tty {
                println!();
            }
            println!("{msg}");
            Ok(ExitCode::from(code))
        };
        match verdict(&set) {
            Verdict::Available => {
                return finish(format!("packageset/{} is available", args.name), 0);
            }
            Verdict::Stuck(why) => {
                return finish(format!("packageset/{} is stuck: {why}", args.name), 1);
            }
            Verdict::Rolling if !args.watch => return Ok(ExitCode::from(3)),
            Verdict::Rolling => {}
        }
        if args.timeout > 0 && started.elapsed() > Duration::from_secs(args.timeout) {
            return finish(format!("timed out after {}s", args.timeout), 2);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PackageSetSpec, PackageSetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn set(generation: i64, observed: i64, updated: i32, available: &str) -> PackageSet {
        let spec: PackageSetSpec = serde_json::from_value(serde_json::json!({
            "repository": "stable", "packages": ["web--1.0.0"], "nodeSelector": {}
        }))
        .expect("a minimal spec");
        let mut set = PackageSet::new("web", spec);
        set.metadata.generation = Some(generation);
        set.status = Some(PackageSetStatus {
            observed_generation: Some(observed),
            desired_nodes: 4,
            updated_nodes: updated,
            conditions: vec![Condition {
                type_: types::AVAILABLE.into(),
                status: available.into(),
                reason: "Test".into(),
                message: String::new(),
                observed_generation: Some(observed),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::UNIX_EPOCH,
                ),
            }],
            ..PackageSetStatus::default()
        });
        set
    }

    #[test]
    fn a_status_of_an_older_generation_is_not_trusted() {
        let stale = set(2, 1, 4, "True");
        assert_eq!(verdict(&stale), Verdict::Rolling);
        assert_eq!(
            progress_line(&stale),
            "web: waiting for the operator to pick up generation 2"
        );
    }

    #[test]
    fn a_current_status_shows_its_bar_and_verdict() {
        let half = set(3, 3, 2, "False");
        assert_eq!(verdict(&half), Verdict::Rolling);
        assert_eq!(
            progress_line(&half),
            format!(
                "web [{}{}] 2/4 updated, 0 switching, 0 failed",
                "#".repeat(15),
                "-".repeat(15)
            )
        );
        assert_eq!(verdict(&set(3, 3, 4, "True")), Verdict::Available);
    }
}
