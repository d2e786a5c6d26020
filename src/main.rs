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
    /// Manage the node's packages and generations (works with no cluster).
    #[command(after_help = "Examples:\n  \
        theseus pkg bootstrap --repo http://repo.example/ nginx--1.25.3\n  \
        theseus pkg activate nginx--1.25.4 --repo http://repo.example/\n  \
        theseus pkg rollback\n  \
        theseus pkg list --format json")]
    Pkg(cli::pkg::PkgArgs),
    /// Build, sign and serve a package repository.
    #[command(after_help = "Examples:\n  \
        theseus repo keygen --out repo.key\n  \
        theseus repo index repo/ --sign-key repo.key\n  \
        theseus repo serve repo/ --listen 127.0.0.1:8080")]
    Repo(cli::repo::RepoArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Crds(args) => cli::crds::run(&args),
        Command::Pkg(args) => cli::pkg::run(&args),
        Command::Repo(args) => cli::repo::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("theseus: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
