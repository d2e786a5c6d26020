//! The `theseus` command tree. Everything it runs lives in the library.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use theseus::cli;
use theseus::logging::{self, LogFormat};

/// Theseus keeps a fleet converged on declared package sets, service groups
/// and node pools.
#[derive(Parser, Debug)]
#[command(name = "theseus", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "THESEUS_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions generated from the API types.
    #[command(
        after_help = "Examples:\n  theseus crds | kubectl apply --server-side -f -\n  theseus crds --check crds/"
    )]
    Crds(cli::crds::CrdsArgs),
    /// Read and follow the etcd service-discovery tree.
    Discover(cli::discover::DiscoverArgs),
    /// Show service groups: desired, ready and published containers.
    Groups(cli::groups::GroupsArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Crds(args) => cli::crds::run(&args),
        Command::Discover(args) => cli::discover::run(&args),
        Command::Groups(args) => cli::groups::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("theseus: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
