//! The agent's local HTTP API, in-process through its router, over a real
//! node root and a real repository on 127.0.0.1 that also serves hostile
//! archives: a caller without the token gets 401 whatever it sends; no
//! request panics, hangs or answers 500; nothing is written outside the
//! root; the root stays readable.
//!
//! An input is a request as text: `METHOD PATH`, header lines, an empty
//! line, the body. `${REPO}` stands for the repository's URL.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::Value;
use theseus::agent::api::{self, ActivateRefusal, ActivateReply, ApiState};
use theseus::agent::root::NodeRoot;
use theseus::api::NodePhase;
use theseus::pkg::{ActivateOptions, FetchOptions, Root};
use tokio::sync::mpsc;
use tower::ServiceExt;

use crate::engine::{Verdict, mutate, pick};
use crate::json::mutate_json;

const TOKEN: &str = "fuzz-token";

const KEYS: &[&str] = &["id", "ids", "url", "repository", "reason"];
const STRINGS: &[&str] = &[
    "demo-web--1.0.0",
    "demo-config--1.0.0",
    "hostile--1",
    "Bad--id",
    "${REPO}",
    "${REPO}/",
    "${REPO}/packages/demo-web--1.0.0.tar.gz",
    "${REPO}/packages/hostile--1.tar.gz",
    "${REPO}/packages/hostile--2.tar.gz",
    "${REPO}/packages/../index.json",
    "${REPO}/%2e%2e/x--1.tar.gz",
    "${REPO}/missing--1.tar.gz",
    "http://127.0.0.1:9/x--1.tar.gz",
    "file:///etc/passwd",
    "../../outside/secret",
    "",
];

/// Parses the request text; `None` when it is not a request at all.
fn request(input: &[u8], repo: &str) -> Option<Request<Body>> {
    let text = String::from_utf8_lossy(input).replace("${REPO}", repo);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let (method, path) = lines.next()?.split_once(' ')?;
    let mut builder = Request::builder().method(method).uri(path);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        builder = builder.header(name.trim(), value.trim());
    }
    builder.body(Body::from(body.to_owned())).ok()
}

/// Whether every URL in the input (raw, and as its body decodes) points at
/// this machine: the fuzzer must not send requests elsewhere.
fn local_only(input: &[u8]) -> bool {
    let text = String::from_utf8_lossy(input).replace("${REPO}", "http://127.0.0.1:9");
    let body = text.split_once("\n\n").map_or("", |(_, b)| b);
    let decoded = serde_json::from_str::<Value>(body)
        .map(|v| v.to_string())
        .unwrap_or_default();
    urls_local(&text) && urls_local(&decoded)
}

fn urls_local(text: &str) -> bool {
    text.match_indices("://").all(|(at, _)| {
        let start = text[..at]
            .char_indices()
            .rev()
            .find(|(_, c)| !c.is_ascii_alphanumeric())
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = text[at..]
            .find(['"', ' ', '\n', '\\'])
            .map_or(text.len(), |i| at + i);
        match reqwest::Url::parse(&text[start..end]) {
            Ok(url) => url.host_str().is_none_or(|h| {
                h == "localhost"
                    || h.trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
            }),
            Err(_) => true,
        }
    })
}

/// The world one checker works in.
struct World {
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    repo: String,
    root: NodeRoot,
    app: axum::Router,
}

fn build_repo(dir: &Path) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/packages");
    for pkg in ["demo-config-1.0.0", "demo-web-1.0.0"] {
        theseus::pkg::build::build(&examples.join(pkg), &dir.join("packages")).unwrap();
    }
    theseus::pkg::index::write(dir, Default::default()).unwrap();
    // Hostile archives, served but not indexed.
    let hostile = crate::engine::corpus("unpack");
    for (k, (_, bytes)) in hostile.iter().enumerate() {
        std::fs::write(dir.join(format!("packages/hostile--{k}.tar.gz")), bytes).unwrap();
    }
}

fn world() -> World {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("outside")).unwrap();
    std::fs::write(dir.path().join("outside/secret"), "keep").unwrap();
    build_repo(&dir.path().join("repo"));
    let root = NodeRoot::new(Root::open(&dir.path().join("root")).unwrap());
    let (repo, app) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let repo = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(theseus::pkg::serve::serve(
            dir.path().join("repo"),
            listener,
        ));
        (repo, app(root.clone(), &dir.path().join("root")))
    });
    World {
        runtime,
        dir,
        repo,
        root,
        app,
    }
}

/// The router with a stand-in agent loop that activates through the library.
fn app(root: NodeRoot, root_dir: &std::path::Path) -> axum::Router {
    let (tx, mut rx) = mpsc::channel::<api::ActivateRequest>(1);
    let loop_root = root.clone();
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let ids = req.ids.clone();
            let activated = loop_root
                .change_exclusively(move |root| {
                    let activation = root.activate(&ids, None, ActivateOptions::default());
                    tokio::runtime::Handle::current()
                        .block_on(activation)
                        .map(|switched| switched.hash)
                        .map_err(|e| e.to_string())
                })
                .await;
            let reply = match activated {
                Ok(hash) => Ok(ActivateReply {
                    hash,
                    phase: NodePhase::Active,
                    message: "ok".into(),
                }),
                Err(e) => Err(ActivateRefusal::Failed {
                    phase: NodePhase::RolledBack,
                    message: e,
                }),
            };
            let _ = req.reply.send(reply);
        }
    });
    let fetch = FetchOptions {
        retries: 0,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
        limits: crate::unpack::LIMITS,
        ..FetchOptions::default()
    };
    api::router(ApiState {
        root,
        token: Some(TOKEN.into()),
        activate: tx,
        fetch,
        // Unsigned and from anywhere, so that the fuzzed bodies reach the
        // fetcher and the unpacker; the trust rules have their own tests.
        policy: Arc::new(
            theseus::pkg::trust::TrustConfig {
                allow_unsigned: true,
                ..Default::default()
            }
            .policy("fuzz")
            .unwrap(),
        ),
        versions: theseus::pkg::accepted::AcceptedVersions::under(root_dir),
        services: None,
    })
}

impl World {
    fn check(&self, input: &[u8]) -> Verdict {
        let Some(request) = request(input, &self.repo) else {
            return Ok(());
        };
        let authorized = request
            .headers()
            .get_all("authorization")
            .iter()
            .next()
            .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
        let (status, body) = self.runtime.block_on(async {
            let response = self.app.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20).await;
            (status, body)
        });
        let body = body.map_err(|e| format!("the body cannot be read: {e}"))?;
        if !authorized && status != StatusCode::UNAUTHORIZED {
            return Err(format!("answered {status} without the token"));
        }
        if status.is_server_error() && status != StatusCode::BAD_GATEWAY {
            return Err(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        if status.is_success() && serde_json::from_slice::<Value>(&body).is_err() {
            return Err(format!("a {status} answer is not JSON"));
        }
        self.root_is_whole()?;
        self.nothing_outside()
    }

    fn root_is_whole(&self) -> Verdict {
        self.runtime.block_on(self.root.read(|root| {
            root.list()
                .map_err(|e| format!("the root cannot be listed: {e}"))?;
            root.active()
                .map_err(|e| format!("the active set cannot be read: {e}"))?;
            Ok(())
        }))
    }

    fn nothing_outside(&self) -> Verdict {
        let top = |p: PathBuf| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(p)
                .map(|d| {
                    d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
        };
        let secret =
            std::fs::read_to_string(self.dir.path().join("outside/secret")).unwrap_or_default();
        if top(self.dir.path().to_owned()) != ["outside", "repo", "root"]
            || top(self.dir.path().join("outside")) != ["secret"]
            || secret != "keep"
        {
            return Err("something was written outside the root".into());
        }
        Ok(())
    }
}

pub fn checker() -> impl FnMut(&[u8]) -> Verdict {
    let world = world();
    move |input| world.check(input)
}

/// A request from a corpus one: the body mutated as JSON, or the whole text
/// as bytes; the token dropped or changed at times.
pub fn generate(rng: &mut StdRng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let seed = String::from_utf8_lossy(pick(rng, corpus).as_slice()).into_owned();
    let (head, body) = seed.split_once("\n\n").unwrap_or((&seed, ""));
    let mut head = head.to_owned();
    match rng.gen_range(0..10) {
        0 => {
            head = head
                .lines()
                .filter(|l| !l.starts_with("authorization"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        1 => head = head.replace(TOKEN, "fuzz-tokeN"),
        2 => {
            head = head.replace(
                "application/json",
                pick::<&str>(
                    rng,
                    &[
                        "application/x-www-form-urlencoded",
                        "text/plain",
                        "application/json; charset=utf-8",
                        "",
                    ],
                ),
            )
        }
        _ => {}
    }
    let bodies: Vec<Vec<u8>> = corpus.iter().map(|c| c.to_vec()).collect();
    let input = if rng.gen_ratio(4, 5) {
        let body = mutate_json(rng, body.as_bytes(), &bodies, KEYS, STRINGS);
        [head.as_bytes(), b"\n\n", &body].concat()
    } else {
        mutate(
            rng,
            seed.as_bytes(),
            &bodies,
            &[b"${REPO}", b"\n", b": ", b"POST ", b"/add"],
        )
    };
    if local_only(&input) && request(&input, "http://127.0.0.1:9").is_some() {
        input
    } else {
        Vec::new()
    }
}
