//! The process supervisor with real children, and the health checks with
//! real local listeners. No cluster needed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use theseus::agent::health::{Probe, Target};
use theseus::agent::service::ServiceSpec;
use theseus::agent::supervisor::{ProcessSupervisor, Supervisor, alive};

use crate::support::free_port;

fn spec(dir: &Path, script: &str, stop_timeout: Duration) -> ServiceSpec {
    ServiceSpec {
        id: "chatty--1".parse().unwrap(),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        dir: dir.to_owned(),
        log_file: dir.join("logs/chatty.log"),
        stop_timeout,
        probe: None,
        units: vec![],
    }
}

#[tokio::test]
async fn a_chatty_child_keeps_running_and_its_output_lands_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    // 2 MB on stdout and 2 MB on stderr as fast as it can, then a marker,
    // then it stays up.
    let script = "head -c 2000000 /dev/zero | tr '\\0' o; head -c 2000000 /dev/zero | tr '\\0' e >&2; echo DONE; exec sleep 60";
    let svc = spec(dir.path(), script, Duration::from_secs(5));
    let sup = ProcessSupervisor::new(&dir.path().join("run"));
    sup.start(&svc).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read(&svc.log_file).unwrap_or_default();
        if log.ends_with(b"DONE\n") {
            assert!(log.len() >= 4_000_000, "log has {} bytes", log.len());
            break;
        }
        assert!(Instant::now() < deadline, "log has {} bytes", log.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sup.is_running(&svc).await,
        "the chatty child must still run"
    );
    sup.stop(&svc).await.unwrap();
    assert!(!sup.is_running(&svc).await);
}

#[tokio::test]
async fn a_child_ignoring_sigterm_is_killed_after_the_stop_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let script = "trap '' TERM; echo READY; while :; do sleep 0.1; done";
    let svc = spec(dir.path(), script, Duration::from_secs(2));
    let sup = ProcessSupervisor::new(&dir.path().join("run"));
    sup.start(&svc).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&svc.log_file)
        .unwrap_or_default()
        .contains("READY")
    {
        assert!(Instant::now() < deadline, "the child never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (pid, _) = sup.recorded("chatty").expect("a pid file");
    let started = Instant::now();
    sup.stop(&svc).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "stopped after {took:?}, before the timeout"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(!alive(pid), "process {pid} survived");
}

#[tokio::test]
async fn starting_a_running_service_again_keeps_the_same_process() {
    let dir = tempfile::tempdir().unwrap();
    let svc = spec(dir.path(), "exec sleep 60", Duration::from_secs(2));
    let sup = ProcessSupervisor::new(&dir.path().join("run"));
    sup.start(&svc).await.unwrap();
    let (first, _) = sup.recorded("chatty").unwrap();
    sup.start(&svc).await.unwrap();
    assert_eq!(sup.recorded("chatty").unwrap().0, first);
    // A restarted agent adopts it through the pid file.
    let again = ProcessSupervisor::new(&dir.path().join("run"));
    assert!(again.is_running(&svc).await);
    again.stop(&svc).await.unwrap();
    assert!(!alive(first));
}

/// An HTTP server answering every request with `status`.
async fn http_server(status: u16) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .fallback(move || async move { axum::http::StatusCode::from_u16(status).unwrap() });
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[tokio::test]
async fn health_checks_pass_and_fail_as_expected() {
    let ok = http_server(200).await;
    let broken = http_server(503).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap().port();
    let closed = free_port();
    let cases: Vec<(&str, Target, Option<&str>)> = vec![
        (
            "http 200 passes",
            Target::Http(format!("http://127.0.0.1:{ok}/")),
            None,
        ),
        (
            "http 503 fails",
            Target::Http(format!("http://127.0.0.1:{broken}/")),
            Some("HTTP 503"),
        ),
        (
            "http to a closed port fails",
            Target::Http(format!("http://127.0.0.1:{closed}/")),
            Some("failed"),
        ),
        (
            "tcp open passes",
            Target::Tcp(format!("127.0.0.1:{open}")),
            None,
        ),
        (
            "tcp closed fails",
            Target::Tcp(format!("127.0.0.1:{closed}")),
            Some("TCP connect"),
        ),
        ("exec 0 passes", Target::Exec(vec!["true".into()]), None),
        (
            "exec 1 fails",
            Target::Exec(vec!["false".into()]),
            Some("exited with"),
        ),
        (
            "a slow exec times out",
            Target::Exec(vec!["sleep".into(), "5".into()]),
            Some("did not answer within 1 s"),
        ),
    ];
    for (name, target, expected) in cases {
        let probe = Probe {
            target,
            timeout: Duration::from_secs(1),
        };
        let got = probe.check(1, Duration::from_millis(50)).await;
        match expected {
            None => assert!(got.is_ok(), "{name}: {got:?}"),
            Some(text) => {
                let err = got.expect_err(name).to_string();
                assert!(err.contains(text), "{name}: {err}");
            }
        }
    }
    drop(listener);
}

#[tokio::test]
async fn a_health_check_retries_until_the_service_comes_up() {
    let port = free_port();
    let probe = Probe {
        target: Target::Tcp(format!("127.0.0.1:{port}")),
        timeout: Duration::from_secs(1),
    };
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap()
    });
    let result = probe.check(20, Duration::from_millis(100)).await;
    let _listener = late.await.unwrap();
    assert!(result.is_ok(), "{result:?}");
}
