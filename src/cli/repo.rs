//! `theseus repo`: build, sign and serve a package repository.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use k8s_openapi::jiff::Timestamp;

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
        theseus repo index repo --sign-key repo.key --expires-in 7d\n\n\
        The version is --version, or the previous index's version plus one; it only grows.\n\
        Nodes keep the highest version they accepted from a repository and refuse an older\n\
        one (a rollback), and refuse an index past its expiry (a freeze): re-sign before then.\n\
        Agents refuse an unsigned index unless started with --allow-unsigned (development only).")]
    Index {
        /// The repository directory.
        dir: PathBuf,
        /// A secret key file from `theseus repo keygen`; signs index.json.
        #[arg(long, value_name = "KEY")]
        sign_key: Option<PathBuf>,
        /// The index version to write; must be above the current one.
        #[arg(long)]
        version: Option<u64>,
        /// Make the index expire this long from now: a number and a unit
        /// (s, m, h, d, w), several allowed, e.g. 7d, 24h, 1d12h.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires_in: Option<Duration>,
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
            expires_in,
        } => {
            let key = sign_key
                .as_deref()
                .map(index::read_secret_key)
                .transpose()?;
            let expires = expires_in
                .map(|d| Timestamp::now().checked_add(d))
                .transpose()
                .context("--expires-in is too far in the future")?;
            let options = index::WriteOptions {
                version: *version,
                key: key.as_ref(),
                expires,
            };
            let written = index::write(dir, options)?;
            let signed = if key.is_some() {
                " and index.json.sig"
            } else {
                " (unsigned: agents refuse it unless started with --allow-unsigned)"
            };
            let expiry = written
                .expires
                .map(|t| format!(", expires {t}"))
                .unwrap_or_default();
            eprintln!(
                "wrote {}/index.json{signed}: version {}, {} packages{expiry}",
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

/// Parses a duration such as `7d`, `24h`, `90m` or `1d12h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 7d, 24h, 90m or 1d12h");
    let mut total = 0u64;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_numbers_with_units() {
        let cases: &[(&str, Option<u64>)] = &[
            ("7d", Some(604_800)),
            ("24h", Some(86_400)),
            ("90m", Some(5_400)),
            ("1d12h", Some(129_600)),
            ("2w", Some(1_209_600)),
            ("30s", Some(30)),
            ("7", None),
            ("d", None),
            ("0h", None),
            ("1y", None),
            ("", None),
        ];
        for (text, secs) in cases {
            assert_eq!(
                parse_duration(text).ok().map(|d| d.as_secs()),
                *secs,
                "{text}"
            );
        }
    }
}
