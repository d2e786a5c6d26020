//! `theseus repo serve DIR` as a child process on an ephemeral port, shared
//! by the integration tests and the benchmarks (which include this file
//! with `#[path]`). Killed when dropped. Its access log (stderr) goes to a
//! file, so that a test can tell which paths were requested.

#![allow(dead_code)] // not every includer reads the request log

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running development repository server.
pub struct RepoServer {
    child: Child,
    /// Its base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub url: String,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl RepoServer {
    /// Runs `program repo serve DIR --listen 127.0.0.1:0` and reads the URL
    /// it prints first.
    pub fn start(mut program: Command, dir: &Path) -> Self {
        let log_dir = tempfile::tempdir().expect("a temporary directory");
        let log = log_dir.path().join("access.log");
        let mut child = program
            .args(["--log-format", "json", "repo", "serve"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn,theseus::pkg::serve=info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("the access log opens"))
            .spawn()
            .expect("theseus repo serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("repo serve prints its URL");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("repo serve printed no URL: {line:?}"))
            .trim_end_matches('/')
            .to_owned();
        Self {
            child,
            url,
            log,
            _log_dir: log_dir,
        }
    }

    /// The paths requested so far, in order (e.g. `/index.json`).
    pub fn requests(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let entry: serde_json::Value = serde_json::from_str(line).ok()?;
                entry["fields"]["path"].as_str().map(str::to_owned)
            })
            .collect()
    }

    /// The requested paths under `packages/`.
    pub fn package_requests(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|p| p.starts_with("/packages/"))
            .collect()
    }
}

impl Drop for RepoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
