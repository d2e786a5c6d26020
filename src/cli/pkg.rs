//! `theseus pkg`: the node's package manager, usable with no cluster.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use crate::pkg::accepted::AcceptedVersions;
use crate::pkg::trust::{self, Grant, TrustConfig};
use crate::pkg::{self, ActivateOptions, FetchOptions, Fetcher, PackageId, Root};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Lines for people.
    Text,
    /// One JSON document (the shapes are documented in README.md).
    Json,
}

/// Manage packages and generations under a node root.
#[derive(Args, Debug)]
pub struct PkgArgs {
    /// The node root.
    #[arg(
        long,
        global = true,
        env = "THESEUS_ROOT",
        default_value = "/var/lib/theseus"
    )]
    root: PathBuf,

    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    format: Format,

    /// Generations to keep besides the current one when cleaning up.
    #[arg(long, global = true, default_value_t = pkg::DEFAULT_KEEP)]
    keep: usize,

    #[command(subcommand)]
    command: PkgCommand,
}

/// Where and how to fetch packages.
#[derive(Args, Debug, Clone)]
struct RepoOpts {
    /// Repository base URL (the directory holding index.json).
    #[arg(long, env = "THESEUS_REPO")]
    repo: Option<String>,
    /// A public key (base64 of 32 bytes); index.json.sig must verify with one. Repeatable.
    #[arg(long = "key", value_name = "KEY")]
    keys: Vec<String>,
    /// DEVELOPMENT ONLY: accept an unsigned index, and packages by URL.
    #[arg(long, env = "THESEUS_ALLOW_UNSIGNED")]
    allow_unsigned: bool,
    /// The node's trust configuration (as `theseus agent --trust-config`):
    /// its keys are trusted too, and --repo must be under its allowedRepositories.
    #[arg(long, value_name = "PATH", env = "THESEUS_TRUST_CONFIG")]
    trust_config: Option<PathBuf>,
    /// Retries per download after the first attempt.
    #[arg(long, default_value_t = 4)]
    retries: u32,
    /// First retry delay in milliseconds; it doubles each retry.
    #[arg(long, default_value_t = 200)]
    backoff_ms: u64,
    /// Packages downloaded and unpacked at once (default: the number of CPUs, at least 2).
    #[arg(long)]
    jobs: Option<usize>,
}

#[derive(Subcommand, Debug)]
enum PkgCommand {
    /// List cached packages, marking the active ones.
    #[command(
        after_help = "Examples:\n  theseus pkg list\n  theseus pkg list --format json   # {\"packages\":[{\"id\",\"active\"}]}"
    )]
    List,
    /// Show the active set.
    #[command(
        after_help = "Examples:\n  theseus pkg active\n  theseus pkg active --format json  # {\"generation\",\"ids\",\"hash\",\"time\"}"
    )]
    Active,
    /// Add a package to the cache from a repository (ID), a URL or a local file.
    #[command(after_help = "Examples:\n  \
        theseus pkg add nginx--1.25.3 --repo http://repo.example/ --key \"$(cat repo.key.pub)\"\n  \
        theseus pkg add http://repo.example/packages/nginx--1.25.3.tar.gz --allow-unsigned   # no index: development only\n  \
        theseus pkg add ./nginx--1.25.3.tar.gz")]
    Add {
        /// ID, http(s) URL or file path of an ID.tar.gz or ID.tar.zst.
        source: String,
        #[command(flatten)]
        repo: RepoOpts,
    },
    /// Remove a cached package (refused while a kept generation uses it).
    #[command(after_help = "Example:\n  theseus pkg remove nginx--1.25.2")]
    Remove {
        /// The package id.
        id: PackageId,
    },
    /// Make exactly these ids the active set, fetching what is missing.
    #[command(
        after_help = "Example:\n  theseus pkg activate nginx--1.25.3 openssl--3.0.13 --repo http://repo.example/ --key \"$(cat repo.key.pub)\"\n\n\
        A repository's index must be signed by a --key (or a key of --trust-config), unless\n\
        --allow-unsigned (development only)."
    )]
    Activate {
        /// The package ids of the new set.
        #[arg(required = true)]
        ids: Vec<PackageId>,
        /// Names that must be present exactly once.
        #[arg(long)]
        required: Vec<String>,
        #[command(flatten)]
        repo: RepoOpts,
    },
    /// Switch back to the previous generation (one rename, no download).
    #[command(after_help = "Example:\n  theseus pkg rollback")]
    Rollback,
    /// Verify the active tree against its set.json; exit 1 on any problem.
    #[command(
        after_help = "Examples:\n  theseus pkg check\n  theseus pkg check --format json   # {\"generation\",\"ids\",\"hash\",\"problems\"}"
    )]
    Check,
    /// Finish or undo an interrupted operation (also done before every change).
    #[command(
        after_help = "Example:\n  theseus pkg recover --format json  # {\"outcome\",\"removedGenerations\",…}"
    )]
    Recover,
    /// First activation on a fresh machine, with no cluster.
    #[command(
        after_help = "Example:\n  theseus pkg bootstrap --repo http://repo.example/ --key \"$(cat repo.key.pub)\" theseus-agent--0.1.0 runc--1.1.12"
    )]
    Bootstrap {
        /// The package ids of the first set.
        #[arg(required = true)]
        ids: Vec<PackageId>,
        #[command(flatten)]
        repo: RepoOpts,
    },
    /// Remove old generations beyond --keep and packages no generation uses.
    #[command(
        after_help = "Examples:\n  theseus pkg gc\n  theseus pkg gc --keep 0   # only the current generation stays"
    )]
    Gc,
    /// Build ID.tar.gz (or ID.tar.zst) from a directory holding pkginfo.json (ID is its `id` field).
    #[command(
        after_help = "Examples:\n  theseus pkg build ./nginx -o repo/packages   # writes repo/packages/nginx--1.25.3.tar.gz\n  \
        theseus pkg build ./nginx -o repo/packages --compression zstd   # nginx--1.25.3.tar.zst\n\n\
        The archive is deterministic: the same directory always gives the same bytes."
    )]
    Build {
        /// The package directory.
        dir: PathBuf,
        /// Where to write the archive.
        #[arg(short = 'o', long = "out-dir", default_value = ".")]
        out_dir: PathBuf,
        /// The archive's compression: gzip (ID.tar.gz, read by every
        /// version) or zstd (ID.tar.zst, faster to unpack; agents read
        /// either, by its first bytes).
        #[arg(long, value_enum, default_value_t = pkg::codec::Codec::Gzip)]
        compression: pkg::codec::Codec,
    },
}

/// Runs `theseus pkg …`.
pub fn run(args: &PkgArgs) -> anyhow::Result<()> {
    let root_path = args.root.as_path();
    match &args.command {
        PkgCommand::List => {
            let list = Root::open_shared(root_path)?.list()?;
            emit(
                args.format,
                &serde_json::json!({ "packages": list }),
                || {
                    list.iter()
                        .map(|p| format!("{}{}", p.id, if p.active { "  active" } else { "" }))
                        .collect()
                },
            )
        }
        PkgCommand::Active => {
            let set = Root::open_shared(root_path)?.active()?;
            let json = match &set {
                Some(s) => serde_json::to_value(s)?,
                None => {
                    serde_json::json!({"generation": null, "ids": [], "hash": null, "time": null})
                }
            };
            emit(args.format, &json, || match &set {
                Some(s) => {
                    let mut lines = vec![format!("generation {} hash {}", s.generation, s.hash)];
                    lines.extend(s.ids.iter().map(|id| id.to_string()));
                    lines
                }
                None => vec!["no active set".into()],
            })
        }
        PkgCommand::Check => check(args),
        PkgCommand::Recover => {
            let root = open(args)?;
            let report = root.recovery().expect("open recovers").clone();
            emit(args.format, &report, || {
                vec![format!("recover: {:?}", report.outcome).to_lowercase()]
            })
        }
        PkgCommand::Remove { id } => {
            open(args)?.remove(id)?;
            emit(args.format, &serde_json::json!({ "removed": id }), || {
                vec![format!("removed {id}")]
            })
        }
        PkgCommand::Rollback => {
            let switched = open(args)?.rollback()?;
            emit_switched(args.format, &switched)
        }
        PkgCommand::Gc => {
            let report = open(args)?.gc(args.keep)?;
            emit(args.format, &report, || {
                vec![format!(
                    "removed generations {:?} and packages {:?}",
                    report.generations, report.packages
                )]
            })
        }
        PkgCommand::Build {
            dir,
            out_dir,
            compression,
        } => {
            let built = pkg::build::build_with(dir, out_dir, *compression)?;
            let json = serde_json::json!({"id": built.info.id, "path": built.path, "sha256": built.sha256, "size": built.size});
            emit(args.format, &json, || {
                vec![format!(
                    "{} {} {}",
                    built.path.display(),
                    built.sha256,
                    built.size
                )]
            })
        }
        PkgCommand::Add { source, repo } => add(args, source, repo),
        PkgCommand::Activate {
            ids,
            required,
            repo,
        } => {
            let root = open(args)?;
            let fetcher = fetcher(repo, &root)?;
            let options = ActivateOptions {
                required: required.clone(),
                ..ActivateOptions::default()
            };
            let activated = runtime()?.block_on(root.activate(ids, fetcher.fetcher(), options));
            emit_switched(args.format, &fetcher.explain(activated)?)
        }
        PkgCommand::Bootstrap { ids, repo } => {
            let root = open(args)?;
            let fetcher = fetcher(repo, &root)?;
            if fetcher.fetcher().is_none() {
                anyhow::bail!("bootstrap needs --repo URL (or THESEUS_REPO)");
            }
            if let Some(n) = root.current() {
                return Err(pkg::RootError::AlreadyBootstrapped(root.path().to_owned(), n).into());
            }
            let activated = runtime()?.block_on(root.activate(
                ids,
                fetcher.fetcher(),
                ActivateOptions::default(),
            ));
            emit_switched(args.format, &fetcher.explain(activated)?)
        }
    }
}

fn open(args: &PkgArgs) -> anyhow::Result<Root> {
    Ok(Root::open_with_keep(&args.root, args.keep)?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// A fetcher for `--repo`, granted by the trust rules, with the grant to
/// explain a refused index.
struct Trusted(Option<(Fetcher, Grant)>);

impl Trusted {
    fn fetcher(&self) -> Option<&Fetcher> {
        self.0.as_ref().map(|(f, _)| f)
    }

    /// Turns an index refused as untrusted into a message naming the
    /// repository and the keys expected.
    fn explain<T>(&self, result: Result<T, pkg::RootError>) -> anyhow::Result<T> {
        match (result, &self.0) {
            (Err(pkg::RootError::Fetch(e)), Some((_, grant))) if e.is_untrusted() => {
                Err(anyhow::anyhow!(grant.refusing(&e)))
            }
            (result, _) => Ok(result?),
        }
    }
}

/// The trust configuration of the command line: `--key`s,
/// `--allow-unsigned` and the `--trust-config` file. `--repo` is allowed
/// when the file lists no allowed repositories.
fn trust_config(repo: &RepoOpts) -> anyhow::Result<TrustConfig> {
    let flags = TrustConfig {
        trusted_keys: repo.keys.clone(),
        allowed_repositories: vec![],
        allow_unsigned: repo.allow_unsigned,
    };
    flags.policy("--key")?;
    let mut config = match &repo.trust_config {
        Some(path) => {
            let file = TrustConfig::read(path)?;
            file.policy(&format!("--trust-config {}", path.display()))?;
            flags.merged(file)
        }
        None => flags,
    };
    if let (true, Some(url)) = (config.allowed_repositories.is_empty(), &repo.repo) {
        config.allowed_repositories.push(url.clone());
    }
    Ok(config)
}

fn fetch_options(repo: &RepoOpts) -> FetchOptions {
    let defaults = FetchOptions::default();
    FetchOptions {
        retries: repo.retries,
        backoff: std::time::Duration::from_millis(repo.backoff_ms),
        concurrency: repo.jobs.unwrap_or(defaults.concurrency).max(1),
        ..defaults
    }
}

fn fetcher(repo: &RepoOpts, root: &Root) -> anyhow::Result<Trusted> {
    let Some(url) = &repo.repo else {
        return Ok(Trusted(None));
    };
    let policy = trust_config(repo)?.policy("--repo")?;
    let grant = trust::decide(&policy, url, &[])?;
    let versions = AcceptedVersions::under(root.path());
    let fetcher = Fetcher::granted(&grant, fetch_options(repo), Some(versions));
    Ok(Trusted(Some((fetcher, grant))))
}

fn check(args: &PkgArgs) -> anyhow::Result<()> {
    let report = Root::open_shared(&args.root)?.check()?;
    emit(args.format, &report, || match report.generation {
        Some(n) if report.problems.is_empty() => {
            vec![format!("generation {n} matches its set.json")]
        }
        None if report.problems.is_empty() => vec!["no active set".into()],
        _ => report.problems.clone(),
    })?;
    match report.problems.first() {
        None => Ok(()),
        Some(first) => anyhow::bail!(
            "check found {} problem(s), first: {first}",
            report.problems.len()
        ),
    }
}

fn add(args: &PkgArgs, source: &str, repo: &RepoOpts) -> anyhow::Result<()> {
    let root = open(args)?;
    let is_url = source.starts_with("http://") || source.starts_with("https://");
    let fetched = if is_url {
        trust::decide_archive(&trust_config(repo)?.policy("--repo")?, source)?;
        let fetcher = Fetcher::new(source, vec![], fetch_options(repo));
        Some(runtime()?.block_on(root.add_url(source, &fetcher))?)
    } else if std::path::Path::new(source).is_file() {
        Some(root.add_file(source.as_ref())?)
    } else {
        let id: PackageId = source
            .parse()
            .with_context(|| format!("{source} is neither a file, a URL nor a package id"))?;
        if root.missing(std::slice::from_ref(&id)).is_empty() {
            None
        } else {
            let trusted = fetcher(repo, &root)?;
            let fetcher = trusted
                .fetcher()
                .ok_or_else(|| pkg::RootError::NotCached(id.clone()))?;
            let fetched =
                runtime()?.block_on(root.fetch_packages(std::slice::from_ref(&id), fetcher));
            trusted.explain(fetched)?;
            None
        }
    };
    let id = match (is_url || fetched.is_some(), source.parse::<PackageId>()) {
        (false, Ok(id)) => id,
        _ => pkg::id_from_archive_name(source)?,
    };
    let json = serde_json::json!({
        "id": id,
        "sha256": fetched.as_ref().map(|f| f.sha256.clone()),
        "size": fetched.as_ref().map(|f| f.size),
    });
    emit(args.format, &json, || vec![format!("added {id}")])
}

fn emit_switched(format: Format, s: &pkg::Switched) -> anyhow::Result<()> {
    emit(format, s, || {
        let verb = if s.changed {
            "switched to"
        } else {
            "already at"
        };
        vec![format!(
            "{verb} generation {} (set {}): {}",
            s.generation,
            s.hash,
            join(&s.ids)
        )]
    })
}

fn join(ids: &[PackageId]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn emit<T: Serialize>(
    format: Format,
    value: &T,
    text: impl FnOnce() -> Vec<String>,
) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string(value)?),
        Format::Text => {
            for line in text() {
                println!("{line}");
            }
        }
    }
    Ok(())
}
