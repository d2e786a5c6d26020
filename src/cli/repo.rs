//! `theseus repo`: build, sign and serve a package repository.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::pkg::{index, serve};

/// Build an index for a directory of packages, make signing keys, serve it.
#[derive(Args, Debug)]
pub struct RepoArgs {
    #[command(subcommand)]
    command: RepoCommand,
}

#[derive(Subcommand, Debug)]
enum RepoCommand {
    /// Write DIR/index.json for DIR/packages/*.tar.gz (and index.json.sig with a key).
    #[command(after_help = "Examples:\n  \
        theseus pkg build ./nginx -o repo/packages\n  \
        theseus repo index repo --sign-key repo.key\n\n\
        The version is --version, or the previous index's version plus one.")]
    Index {
        /// The repository directory.
        dir: PathBuf,
        /// A secret key file from `theseus repo keygen`; signs index.json.
        #[arg(long, value_name = "KEY")]
        sign_key: Option<PathBuf>,
        /// The index version to write.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Make an ed25519 key pair for signing indexes.
    #[command(after_help = "Examples:\n  \
        theseus repo keygen --out repo.key   # writes repo.key (secret) and repo.key.pub, prints the public key\n  \
        theseus repo keygen                  # prints {\"publicKey\", \"secretKey\"} as JSON\n\n\
        The public key is base64 of the 32 raw bytes, as PackageRepository.spec.publicKeys expects.")]
    Keygen {
        /// Write the secret key here (mode 0600) and the public key to FILE.pub.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Serve a repository directory over HTTP (with Range support), for development.
    #[command(after_help = "Examples:\n  \
        theseus repo serve repo --listen 127.0.0.1:8080\n  \
        theseus repo serve repo --listen 127.0.0.1:0   # any free port; the URL is printed on stdout")]
    Serve {
        /// The repository directory.
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

/// Runs `theseus repo …`.
pub fn run(args: &RepoArgs) -> anyhow::Result<()> {
    match &args.command {
        RepoCommand::Index {
            dir,
            sign_key,
            version,
        } => {
            let key = sign_key
                .as_deref()
                .map(index::read_secret_key)
                .transpose()?;
            let written = index::write(dir, *version, key.as_ref())?;
            let signed = if key.is_some() {
                " and index.json.sig"
            } else {
                ""
            };
            eprintln!(
                "wrote {}/index.json{signed}: version {}, {} packages",
                dir.display(),
                written.version,
                written.packages.len()
            );
            Ok(())
        }
        RepoCommand::Keygen { out } => keygen(out.as_deref()),
        RepoCommand::Serve { dir, listen } => serve_dir(dir.clone(), *listen),
    }
}

fn keygen(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let key = index::generate_key();
    let public = index::encode_key(key.verifying_key().as_bytes());
    let secret = index::encode_key(&key.to_bytes());
    let Some(out) = out else {
        println!(
            "{}",
            serde_json::json!({"publicKey": public, "secretKey": secret})
        );
        return Ok(());
    };
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {} (it must not exist yet)", out.display()))?;
    writeln!(file, "{secret}")?;
    let mut pub_path = out.as_os_str().to_owned();
    pub_path.push(".pub");
    std::fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("cannot write {}", PathBuf::from(&pub_path).display()))?;
    println!("{public}");
    Ok(())
}

fn serve_dir(dir: PathBuf, listen: SocketAddr) -> anyhow::Result<()> {
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        println!("http://{addr}");
        std::io::stdout().flush()?;
        eprintln!("serving {} on http://{addr}", dir.display());
        serve::serve(dir, listener).await?;
        Ok(())
    })
}
