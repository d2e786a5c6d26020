//! The operator as its users meet it, against the testbed's API server:
//! the README's own `curl` lines for `/halt` and `/resume`, and how soon a
//! deletion is acted on while the operator is busy rolling a fleet.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use theseus::api::NodePool;

use crate::support::operator::{Rig, V1, V2};
use crate::support::{self, eventually, repo_root};

/// The `curl … /halt` and `curl … /resume` commands of README.md, with
/// backslash-continued lines joined.
fn readme_curl_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let mut commands = Vec::new();
    let mut pending = String::new();
    for line in readme.lines() {
        if pending.is_empty() && !line.starts_with("curl -X POST") {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => pending.push_str(start),
            None => {
                pending.push_str(line);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    commands.retain(|c| c.ends_with("/halt") || c.ends_with("/resume"));
    commands
}

/// Runs a README line with bash, `TOKEN` set and the README's address
/// replaced by `base`; returns the HTTP status curl saw.
fn run_curl(line: &str, token: &str, base: &str) -> u16 {
    assert!(line.contains("http://127.0.0.1:8080/"), "{line}");
    let line = line.replace("http://127.0.0.1:8080", base);
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "curl() {{ command curl -sS -o /dev/null -w '%{{http_code}}' \"$@\"; }}\n{line}"
        ))
        .env("TOKEN", token)
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout);
    code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "{line}: curl said {code:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_halt_and_resume_lines_work_verbatim_and_need_the_token() {
    let Some(rig) = Rig::new("readme-halt").await else {
        return;
    };
    let fleet = rig.fleet(1, Duration::from_millis(100)).await;
    let operator = rig.operator("a");
    let healthz = format!("{}/healthz", operator.http);
    eventually(Duration::from_secs(20), "the operator answers", || {
        let healthz = healthz.clone();
        async move { reqwest::get(&healthz).await.map_err(|e| e.to_string()) }
    })
    .await;
    let lines = readme_curl_lines();
    let (halts, resumes): (Vec<&String>, Vec<&String>) =
        lines.iter().partition(|l| l.ends_with("/halt"));
    assert!(!halts.is_empty() && !resumes.is_empty(), "{lines:?}");
    let halt_map: Api<ConfigMap> = Api::namespaced(rig.client.clone(), &rig.ns.name);

    for halt in &halts {
        assert_eq!(run_curl(halt, "wrong", &operator.http), 401, "{halt}");
        assert!(halt_map.get_opt("theseus-halt").await.unwrap().is_none());
        assert_eq!(run_curl(halt, "test-token", &operator.http), 200, "{halt}");
        let stored = halt_map.get("theseus-halt").await.unwrap();
        let reason = &stored.data.unwrap()["reason"];
        assert!(halt.contains(reason.as_str()), "{halt} stored {reason:?}");
        for resume in &resumes {
            assert_eq!(run_curl(resume, "wrong", &operator.http), 401, "{resume}");
            assert_eq!(
                run_curl(resume, "test-token", &operator.http),
                200,
                "{resume}"
            );
            assert!(halt_map.get_opt("theseus-halt").await.unwrap().is_none());
        }
    }
    // Whatever an unauthenticated caller sends, the answer is 401.
    let garbage =
        "curl -X POST -H 'Content-Type: text/plain' -d 'not json' http://127.0.0.1:8080/halt";
    assert_eq!(run_curl(garbage, "", &operator.http), 401);
    rig.clean_up(fleet).await;
}

/// Applies a Local NodePool of no nodes, so that its deletion waits on the
/// operator's finalizer alone.
async fn apply_empty_pool(rig: &Rig) -> Api<NodePool> {
    let pools: Api<NodePool> = Api::all(rig.client.clone());
    let spec = serde_json::json!({ "provider": { "type": "Local", "local": {} } });
    support::pools::apply(&pools, &rig.run, 0, spec).await;
    eventually(Duration::from_secs(30), "the pool's finalizer", || async {
        let pool = pools.get(&rig.run).await.map_err(|e| e.to_string())?;
        match pool.metadata.finalizers {
            Some(f) if !f.is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    pools
}

/// How long the operator takes from a NodePool's deletion to letting it go
/// (its finalizer run), measured while it rolls a fleet node by node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_is_acted_on_within_seconds_while_the_operator_is_busy() {
    let Some(rig) = Rig::new("delete").await else {
        return;
    };
    let fleet = rig.fleet(12, Duration::from_secs(2)).await;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap().to_owned();
    let _operator = support::fleet::Operator::start_with(
        &rig.tb,
        &rig.ns.name,
        &rig.run,
        "a",
        &rig.logs,
        &["--cluster-name", &rig.run, "--state-dir", &state_dir],
        &[],
    );
    let pools = apply_empty_pool(&rig).await;
    rig.apply_set(&[V1], 1).await;
    rig.wait_condition("Progressing", "True", Duration::from_secs(30))
        .await;

    let deleted = Instant::now();
    support::pools::delete_and_wait(&pools, &rig.run).await;
    let reaction = deleted.elapsed();
    eprintln!("from the NodePool's deletion to its finalizer run: {reaction:?}");
    assert!(
        reaction < Duration::from_secs(30),
        "the operator acted on the deletion after {reaction:?}"
    );
    rig.apply_set(&[V2], 12).await;
    rig.clean_up(fleet).await;
}

/// A plain-HTTP proxy in front of `kubectl proxy` that can stall the watch
/// connections open at a given moment: it stops passing the server's bytes
/// to the client and keeps both sides open, as a connection that died
/// without a FIN does. Connections made afterwards pass normally.
mod stalling_proxy {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// One proxied connection: whether a watch went through it, and
    /// whether it is stalled.
    #[derive(Default)]
    struct Conn {
        watching: AtomicBool,
        stalled: AtomicBool,
    }

    /// The proxy; it runs until the test ends.
    pub struct Proxy {
        pub url: String,
        conns: Arc<Mutex<Vec<Arc<Conn>>>>,
    }

    impl Proxy {
        pub async fn start(upstream: String) -> Proxy {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let conns: Arc<Mutex<Vec<Arc<Conn>>>> = Arc::default();
            let registry = conns.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let conn = Arc::new(Conn::default());
                    registry.lock().unwrap().push(conn.clone());
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(&upstream).await {
                            pipe(client, server, conn).await;
                        }
                    });
                }
            });
            Proxy { url, conns }
        }

        /// Stalls every connection that has carried a watch; returns how many.
        pub fn stall_watches(&self) -> usize {
            let conns = self.conns.lock().unwrap();
            let watching: Vec<_> = conns
                .iter()
                .filter(|c| c.watching.load(Ordering::SeqCst))
                .collect();
            for conn in &watching {
                conn.stalled.store(true, Ordering::SeqCst);
            }
            watching.len()
        }
    }

    async fn pipe(client: TcpStream, server: TcpStream, conn: Arc<Conn>) {
        let (mut client_rx, mut client_tx) = client.into_split();
        let (mut server_rx, mut server_tx) = server.into_split();
        let seen = conn.clone();
        let up = async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = client_rx.read(&mut buf).await {
                if n == 0 || seen.stalled.load(Ordering::SeqCst) {
                    break;
                }
                if String::from_utf8_lossy(&buf[..n]).contains("watch=true") {
                    seen.watching.store(true, Ordering::SeqCst);
                }
                if server_tx.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await;
        };
        let down = async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = server_rx.read(&mut buf).await.unwrap_or(0);
                if conn.stalled.load(Ordering::SeqCst) {
                    // Silence, and no FIN either: hold the client's socket.
                    std::future::pending::<()>().await;
                }
                if n == 0 || client_tx.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            () = up => {}
            () = down => {}
        }
    }
}

/// The operator's watcher configuration notices a watch that stalled
/// without an error and resumes on a fresh connection: a deletion made
/// after the stall reaches it within half a minute (kube's default watch
/// would wait nearly five).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_watches_recover_from_a_stalled_connection_within_half_a_minute() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{DeleteParams, PostParams};
    use kube::runtime::watcher;

    let Some(tb) = support::testbed() else {
        return;
    };
    let admin = tb.client().await;
    let ns = support::TestNamespace::create(&tb, &admin, "stall").await;
    let port = support::free_port();
    let mut kubectl_proxy = support::fleet::ChildGuard(
        tb.kubectl_command(&["proxy", "--address=127.0.0.1", &format!("--port={port}")])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let proxy = stalling_proxy::Proxy::start(format!("127.0.0.1:{port}")).await;
    let config = kube::Config::new(proxy.url.parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    eventually(Duration::from_secs(20), "kubectl proxy serves", || async {
        maps.list(&Default::default())
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let map: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "watched" }, "data": { "a": "1" }
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(admin.clone(), &ns.name)
        .create(&PostParams::default(), &map)
        .await
        .unwrap();

    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let events = watcher(maps, theseus::shared::scoped(None));
    let watching = tokio::spawn(async move {
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Delete(cm)) = event {
                let _ = seen_tx.send(cm.metadata.name.unwrap_or_default());
            }
        }
    });
    eventually(Duration::from_secs(20), "the watch is open", || async {
        match proxy.stall_watches() {
            0 => Err("no watch yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;

    let deleted = Instant::now();
    Api::<ConfigMap>::namespaced(admin.clone(), &ns.name)
        .delete("watched", &DeleteParams::default())
        .await
        .unwrap();
    let name = tokio::time::timeout(Duration::from_secs(40), seen.recv())
        .await
        .unwrap_or_else(|_| panic!("the deletion was not seen within 40 s of a stalled watch"));
    let delay = deleted.elapsed();
    eprintln!("deletion seen {delay:?} after it happened, through a stalled watch");
    assert_eq!(name.as_deref(), Some("watched"));
    watching.abort();
    let _ = kubectl_proxy.0.kill();
    ns.delete(&admin).await;
}
