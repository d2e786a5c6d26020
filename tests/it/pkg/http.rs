//! The package repository over real HTTP: `theseus repo serve` as a child
//! process, and a small server in the test that misbehaves on purpose.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use theseus::pkg::{self, FetchOptions, Fetcher, PackageId, Root};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::pkg::*;
use crate::support::repo_server::RepoServer;
use crate::support::{free_port, theseus_command};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Misbehave {
    /// Every response is HTTP 500.
    Error500,
    /// The body trickles in small pieces with pauses.
    Slow,
    /// The first package response stops halfway and closes the connection.
    DropOnce,
    /// The first package response stops halfway and stalls past the read timeout.
    StallOnce,
    /// Like DropOnce, and the resumed request's Range is ignored (200, full body).
    DropOnceIgnoreRange,
}

/// A request as the server saw it: path and Range header.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct TestServer {
    url: String,
    seen: Seen,
}

async fn start_server(files: HashMap<String, Vec<u8>>, mode: Misbehave) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let files = Arc::new(files);
    let first_package = Arc::new(Mutex::new(true));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let (files, seen, first) = (files.clone(), seen2.clone(), first_package.clone());
            tokio::spawn(async move {
                let _ = handle(socket, &files, &seen, &first, mode).await;
            });
        }
    });
    TestServer { url, seen }
}

async fn handle(
    mut socket: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    seen: &Seen,
    first: &Mutex<bool>,
    mode: Misbehave,
) -> std::io::Result<()> {
    loop {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if socket.read(&mut byte).await? == 0 {
                return Ok(());
            }
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let range = text.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("range:")
                .map(|v| v.trim().to_owned())
        });
        seen.lock().unwrap().push((path.clone(), range.clone()));
        if mode == Misbehave::Error500 {
            socket
                .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
                .await?;
            continue;
        }
        let Some(body) = files.get(path.trim_start_matches('/')) else {
            socket
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await?;
            continue;
        };
        let is_package = path.ends_with(".tar.gz");
        let start = match (&range, mode) {
            (_, Misbehave::DropOnceIgnoreRange) => 0,
            (Some(r), _) => r
                .trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse::<usize>()
                .unwrap(),
            (None, _) => 0,
        };
        let part = &body[start..];
        let status = if start > 0 {
            format!(
                "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {start}-{}/{}\r\n",
                body.len() - 1,
                body.len()
            )
        } else {
            "HTTP/1.1 200 OK\r\n".to_owned()
        };
        socket
            .write_all(format!("{status}content-length: {}\r\n\r\n", part.len()).as_bytes())
            .await?;
        let cut_now = is_package && std::mem::replace(&mut *first.lock().unwrap(), false);
        match mode {
            Misbehave::Slow => {
                for piece in part.chunks(part.len().div_ceil(6).max(1)) {
                    socket.write_all(piece).await?;
                    tokio::time::sleep(Duration::from_millis(80)).await;
                }
            }
            Misbehave::DropOnce | Misbehave::DropOnceIgnoreRange if cut_now => {
                socket.write_all(&part[..part.len() / 2]).await?;
                return Ok(()); // closes the connection mid-body
            }
            Misbehave::StallOnce if cut_now => {
                socket.write_all(&part[..part.len() / 2]).await?;
                tokio::time::sleep(Duration::from_secs(5)).await;
                return Ok(());
            }
            _ => socket.write_all(part).await?,
        }
    }
}

/// A repository in memory: index.json and one package with some content.
fn repo_files(id: &str) -> HashMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let noise = String::from_utf8_lossy(&noise).into_owned();
    make_repo(
        &dir.path().join("repo"),
        &[(id, &[("bin/tool", "#!/bin/sh\n"), ("lib/blob", &noise)])],
        None,
    );
    let mut files = HashMap::new();
    for rel in ["index.json".to_owned(), format!("packages/{id}.tar.gz")] {
        files.insert(
            rel.clone(),
            std::fs::read(dir.path().join("repo").join(&rel)).unwrap(),
        );
    }
    files
}

fn options() -> FetchOptions {
    FetchOptions {
        retries: 2,
        backoff: Duration::from_millis(20),
        read_timeout: Duration::from_millis(700),
        ..FetchOptions::default()
    }
}

async fn activate(url: &str, id: &str) -> Result<pkg::Switched, pkg::RootError> {
    let root_dir = tempfile::tempdir().unwrap();
    let root = Root::open(root_dir.path()).unwrap();
    let fetcher = Fetcher::new(url, vec![], options());
    let ids: Vec<PackageId> = vec![id.parse().unwrap()];
    let result = root
        .activate(&ids, Some(&fetcher), Default::default())
        .await;
    if result.is_ok() {
        assert!(root.check().unwrap().problems.is_empty());
    } else {
        assert!(
            root.list().unwrap().is_empty(),
            "a failed fetch left a package behind"
        );
    }
    assert!(
        root.temporaries().unwrap().is_empty(),
        "temporaries left behind"
    );
    result
}

fn package_requests(seen: &Seen) -> Vec<Option<String>> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.ends_with(".tar.gz"))
        .map(|(_, r)| r.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_answering_500_is_retried_and_then_reported() {
    let server = start_server(repo_files("tool--1"), Misbehave::Error500).await;
    let err = activate(&server.url, "tool--1")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HTTP 500") && err.contains("index.json"),
        "{err}"
    );
    assert_eq!(
        server.seen.lock().unwrap().len(),
        3,
        "one try and two retries"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_response_still_arrives_intact() {
    let server = start_server(repo_files("tool--1"), Misbehave::Slow).await;
    let switched = activate(&server.url, "tool--1").await.unwrap();
    assert_eq!(switched.fetched.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_dropped_mid_download_is_resumed_with_a_range_request() {
    let files = repo_files("tool--1");
    let size = files["packages/tool--1.tar.gz"].len();
    let server = start_server(files, Misbehave::DropOnce).await;
    activate(&server.url, "tool--1").await.unwrap();
    let requests = package_requests(&server.seen);
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0], None);
    assert_eq!(requests[1], Some(format!("bytes={}-", size / 2)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_download_times_out_and_resumes_with_a_range_request() {
    let server = start_server(repo_files("tool--1"), Misbehave::StallOnce).await;
    activate(&server.url, "tool--1").await.unwrap();
    let requests = package_requests(&server.seen);
    assert!(
        requests[1]
            .as_deref()
            .is_some_and(|r| r.starts_with("bytes=")),
        "{requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_ignoring_the_resume_range_still_yields_a_verified_package() {
    let server = start_server(repo_files("tool--1"), Misbehave::DropOnceIgnoreRange).await;
    activate(&server.url, "tool--1").await.unwrap();
    assert_eq!(package_requests(&server.seen).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_host_is_reported_clearly() {
    let port = free_port();
    let err = activate(&format!("http://127.0.0.1:{port}"), "tool--1")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot reach http://127.0.0.1") && err.contains("index.json"),
        "{err}"
    );
}

/// A served repository with one signed package, for the CLI tests below.
fn served_repo(dir: &std::path::Path, key: Option<&ed25519_dalek::SigningKey>) -> RepoServer {
    make_repo(
        &dir.join("repo"),
        &[("tool--1", &[("bin/tool", "#!/bin/sh\necho tool\n")])],
        key,
    );
    RepoServer::start(theseus_command(), &dir.join("repo"))
}

fn run(root: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = theseus_command()
        .arg("pkg")
        .arg("--root")
        .arg(root)
        .args(args)
        .args(["--retries", "1", "--backoff-ms", "10"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        // Retry warnings may precede it; the reason is one last line.
        let reasons: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("theseus: "))
            .collect();
        assert_eq!(reasons.len(), 1, "{stderr}");
        assert!(stderr.trim_end().ends_with(reasons[0]), "{stderr}");
    }
    (out.status.success(), stderr)
}

fn nothing_installed(root: &std::path::Path) {
    assert!(
        tree(&root.join("packages")).is_empty(),
        "{:?}",
        tree(&root.join("packages"))
    );
    assert!(tree(&root.join("downloads")).is_empty());
}

#[test]
fn repo_serve_answers_range_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = served_repo(dir.path(), None);
    let whole = std::fs::read(dir.path().join("repo/packages/tool--1.tar.gz")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, range, body) = rt.block_on(async {
        let response = reqwest::Client::new()
            .get(format!("{}/packages/tool--1.tar.gz", server.url))
            .header("range", "bytes=10-")
            .send()
            .await
            .unwrap();
        let range = response.headers()["content-range"]
            .to_str()
            .unwrap()
            .to_owned();
        (
            response.status().as_u16(),
            range,
            response.bytes().await.unwrap(),
        )
    });
    assert_eq!(status, 206);
    assert_eq!(
        range,
        format!("bytes 10-{}/{}", whole.len() - 1, whole.len())
    );
    assert_eq!(&body[..], &whole[10..]);
}

#[test]
fn a_package_missing_on_the_server_fails_with_404() {
    let dir = tempfile::tempdir().unwrap();
    let server = served_repo(dir.path(), None);
    std::fs::remove_file(dir.path().join("repo/packages/tool--1.tar.gz")).unwrap();
    let root = dir.path().join("root");
    let (ok, err) = run(
        &root,
        &["add", "tool--1", "--repo", &server.url, "--allow-unsigned"],
    );
    assert!(
        !ok && err.contains("404") && err.contains("tool--1.tar.gz"),
        "{err}"
    );
    nothing_installed(&root);
}

#[test]
fn a_wrong_sha256_is_refused_and_nothing_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    let server = served_repo(dir.path(), None);
    let index_path = dir.path().join("repo/index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["packages"][0]["sha256"] = "0".repeat(64).into();
    std::fs::write(&index_path, index.to_string()).unwrap();
    let root = dir.path().join("root");
    let (ok, err) = run(
        &root,
        &[
            "activate",
            "tool--1",
            "--repo",
            &server.url,
            "--allow-unsigned",
        ],
    );
    assert!(
        !ok && err.contains("sha256 is") && err.contains(&"0".repeat(64)),
        "{err}"
    );
    nothing_installed(&root);
}

#[test]
fn a_truncated_download_is_refused_and_nothing_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    let server = served_repo(dir.path(), None);
    let file = dir.path().join("repo/packages/tool--1.tar.gz");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 40]).unwrap();
    let root = dir.path().join("root");
    let (ok, err) = run(
        &root,
        &["add", "tool--1", "--repo", &server.url, "--allow-unsigned"],
    );
    assert!(!ok && err.contains("the index says"), "{err}");
    nothing_installed(&root);
}

#[test]
fn a_bad_signature_is_refused_and_a_good_one_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let key = pkg::index::generate_key();
    let server = served_repo(dir.path(), Some(&key));
    let good = pkg::index::encode_key(key.verifying_key().as_bytes());
    let other = pkg::index::encode_key(pkg::index::generate_key().verifying_key().as_bytes());
    let root = dir.path().join("root");
    let (ok, err) = run(
        &root,
        &[
            "activate",
            "tool--1",
            "--repo",
            &server.url,
            "--key",
            &other,
        ],
    );
    assert!(!ok && err.contains("signature does not match"), "{err}");
    nothing_installed(&root);
    // The right key, but an index altered after signing.
    let index_path = dir.path().join("repo/index.json");
    let text = std::fs::read_to_string(&index_path).unwrap();
    std::fs::write(
        &index_path,
        text.replace("\"version\": 1", "\"version\": 2"),
    )
    .unwrap();
    let (ok, err) = run(
        &root,
        &["activate", "tool--1", "--repo", &server.url, "--key", &good],
    );
    assert!(!ok && err.contains("signature does not match"), "{err}");
    std::fs::write(&index_path, text).unwrap();
    let (ok, err) = run(
        &root,
        &["activate", "tool--1", "--repo", &server.url, "--key", &good],
    );
    assert!(ok, "{err}");
    // An unsigned repository when keys are configured.
    std::fs::remove_file(dir.path().join("repo/index.json.sig")).unwrap();
    let (ok, err) = run(
        &dir.path().join("root2"),
        &["add", "tool--1", "--repo", &server.url, "--key", &good],
    );
    assert!(!ok && err.contains("must be signed"), "{err}");
}
