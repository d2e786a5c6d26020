//! Support for the discovery tests: the discovery etcd endpoint, a tree
//! under a prefix of its own per test, and an etcd process a test can kill
//! and restart, and a proxy that holds back etcd's answers.
pub mod delay;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use theseus::discovery::{EtcdConfig, Tree};

use crate::support;

/// The discovery etcd: `THESEUS_DISCOVERY_ETCD` when set, else the
/// testbed's. `None` (after saying why) when neither is there outside CI.
pub fn endpoint() -> Option<String> {
    if let Ok(url) = std::env::var("THESEUS_DISCOVERY_ETCD") {
        return Some(url);
    }
    support::testbed().map(|tb| tb.discovery_etcd().to_owned())
}

/// A prefix no other test uses, e.g. `/theseus-test-1a2b3c4d/services`.
pub fn unique_prefix() -> String {
    format!("/theseus-test-{:08x}/services", rand::random::<u32>())
}

/// A config for `endpoint` under a fresh prefix, with quick retries.
pub fn config(endpoint: &str) -> EtcdConfig {
    let mut config = EtcdConfig::new([endpoint]).with_prefix(unique_prefix());
    config.request_timeout = Duration::from_secs(3);
    config
}

/// A tree under a fresh prefix of the discovery etcd.
pub async fn tree(endpoint: &str) -> Tree {
    Tree::connect(&config(endpoint))
        .await
        .expect("connect to the discovery etcd")
}

/// Removes everything under the tree's prefix.
pub async fn wipe(tree: &Tree) {
    let root = tree.layout().root();
    let _ = tree.delete_prefix(&root).await;
}

/// The etcd binary: the testbed's, or `etcd` on PATH.
fn etcd_binary() -> PathBuf {
    let testbed = support::repo_root().join(".testbed/bin/etcd");
    if testbed.exists() {
        testbed
    } else {
        PathBuf::from("etcd")
    }
}

/// An etcd of the test's own, on spare ports, that can be killed and
/// restarted with its data.
pub struct OwnEtcd {
    child: Option<Child>,
    data: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl OwnEtcd {
    /// Starts an etcd and waits until it answers.
    pub async fn start() -> Self {
        let mut etcd = Self {
            child: None,
            data: tempfile::tempdir().expect("temp dir"),
            client_port: support::free_port(),
            peer_port: support::free_port(),
        };
        etcd.spawn().await;
        etcd
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    async fn spawn(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(etcd_binary())
            .args(["--name", "own", "--data-dir"])
            .arg(self.data.path())
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("own={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts (testbed's .testbed/bin/etcd or etcd on PATH)");
        self.child = Some(child);
        self.wait_healthy().await;
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let config = EtcdConfig::new([self.url()]);
        while Instant::now() < deadline {
            if let Ok(tree) = Tree::connect(&config).await
                && tree.service_exists("probe").await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("own etcd at {} did not become healthy", self.url());
    }

    /// Kills the process (SIGKILL), keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports with the same data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for OwnEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Deletes every ServiceGroup of `groups` and waits until they are gone
/// (their finalizers need the operator, so call this before stopping it).
pub async fn delete_groups(groups: &kube::Api<theseus::api::ServiceGroup>) {
    use kube::api::{DeleteParams, ListParams};
    let _ = groups
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    support::eventually(Duration::from_secs(60), "groups deleted", || async {
        let left = groups
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        if left.items.is_empty() {
            Ok(())
        } else {
            Err(format!("{} left", left.items.len()))
        }
    })
    .await;
}
