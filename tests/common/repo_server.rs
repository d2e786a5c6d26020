//! `theseus repo serve DIR` as a child process on an ephemeral port, shared
//! by the test-support modules and the benchmarks (each includes this file
//! with `#[path]`). Killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running development repository server.
pub struct RepoServer {
    child: Child,
    /// Its base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub url: String,
}

impl RepoServer {
    /// Runs `program repo serve DIR --listen 127.0.0.1:0` and reads the URL
    /// it prints first.
    pub fn start(mut program: Command, dir: &Path) -> Self {
        let mut child = program
            .args(["repo", "serve"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
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
        Self { child, url }
    }
}

impl Drop for RepoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
