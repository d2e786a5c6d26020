//! The agent's NodeInstall: created or adopted at start, its status written
//! whole by a merge patch of the status subresource (never touching
//! `spec`, which the operator owns) by one writer task that also
//! heartbeats, and a watch on the object's target.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::{
    NodeInstall, NodeInstallSpec, NodeInstallStatus, NodeProbe, NodeTarget, NodeTask, StorageTask,
};

/// The field manager of everything the agent writes.
pub const MANAGER: &str = "theseus-agent";

/// Errors from registering the NodeInstall.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The API server refused or failed a request.
    #[error(
        "cannot {action} NodeInstall {node}: {source}; check the agent's RBAC (get, create, patch nodeinstalls and nodeinstalls/status)"
    )]
    Api {
        /// What the agent tried.
        action: &'static str,
        /// The node.
        node: String,
        /// The API error.
        source: kube::Error,
    },
    /// A `--labels` entry is not `KEY=VALUE`.
    #[error("--labels entry {0:?} is not KEY=VALUE")]
    BadLabel(String),
}

/// Parses `--labels k=v` entries (each may hold several, comma-separated).
pub fn parse_labels(entries: &[String]) -> Result<BTreeMap<String, String>, RegisterError> {
    let mut out = BTreeMap::new();
    for entry in entries.iter().flat_map(|e| e.split(',')) {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (k, v) = entry
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| RegisterError::BadLabel(entry.to_owned()))?;
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// The labels of the Kubernetes Node named `node`; empty when there is no
/// such Node or the agent may not read Nodes.
async fn node_labels(client: &Client, node: &str) -> BTreeMap<String, String> {
    match Api::<Node>::all(client.clone()).get_opt(node).await {
        Ok(Some(n)) => n.labels().clone(),
        Ok(None) => BTreeMap::new(),
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => {
            tracing::info!(
                node,
                "cannot read the Node ({}), using --labels only",
                s.code
            );
            BTreeMap::new()
        }
        Err(e) => {
            tracing::warn!(node, "cannot read the Node: {e}; using --labels only");
            BTreeMap::new()
        }
    }
}

/// Creates the NodeInstall named `node` with `labels` (plus the Kubernetes
/// Node's, flags winning), or merges the labels into the existing one.
pub async fn register(
    client: &Client,
    node: &str,
    labels: &BTreeMap<String, String>,
) -> Result<NodeInstall, RegisterError> {
    let api = Api::<NodeInstall>::all(client.clone());
    let mut all = node_labels(client, node).await;
    all.extend(labels.clone());
    let err = |action| {
        move |source| RegisterError::Api {
            action,
            node: node.to_owned(),
            source,
        }
    };
    if api.get_opt(node).await.map_err(err("read"))?.is_none() {
        let mut ni = NodeInstall::new(node, NodeInstallSpec::default());
        ni.metadata.labels = Some(all.clone());
        match api.create(&PostParams::default(), &ni).await {
            Ok(created) => {
                tracing::info!(node, "created NodeInstall");
                return Ok(created);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(err("create")(e)),
        }
    }
    let patch = serde_json::json!({ "metadata": { "labels": all } });
    let ni = api
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(err("label"))?;
    tracing::info!(node, "adopted NodeInstall");
    Ok(ni)
}

/// The agent's view of its status. Changing it never waits for the API
/// server: the latest status goes into a `watch` channel, and one task,
/// [`write_status`], writes it in full ([`status_patch`]) on every change
/// and every heartbeat. When the API server is slow, intermediate statuses
/// are skipped; the latest always wins.
#[derive(Clone)]
pub struct Reporter {
    status: watch::Sender<NodeInstallStatus>,
    /// A change made by [`Reporter::update_quietly`] awaits its write.
    quiet: Arc<AtomicBool>,
}

impl Reporter {
    /// A reporter starting from `initial` (the status read at registration,
    /// so that condition transition times survive restarts).
    pub fn new(initial: NodeInstallStatus) -> Self {
        Self {
            status: watch::Sender::new(initial),
            quiet: Arc::default(),
        }
    }

    /// A copy of the latest status.
    pub fn snapshot(&self) -> NodeInstallStatus {
        self.status.borrow().clone()
    }

    /// Changes the status with `change`; the writer writes it when anything
    /// differs.
    pub fn update(&self, change: impl FnOnce(&mut NodeInstallStatus)) {
        if self.change(change, true) {
            // The write says whatever was changed quietly too.
            self.quiet.store(false, Ordering::SeqCst);
        }
    }

    /// Changes the status with `change` without waking the writer: the
    /// change goes out with the next write — the next [`Reporter::update`]
    /// that changes something, a [`Reporter::flush`], or the heartbeat.
    /// For a change that another is about to follow, so that one write
    /// says both.
    pub fn update_quietly(&self, change: impl FnOnce(&mut NodeInstallStatus)) {
        if self.change(change, false) {
            self.quiet.store(true, Ordering::SeqCst);
        }
    }

    /// Applies `change`; whether it changed anything. The writer is woken
    /// when it did and `wake` says so.
    fn change(&self, change: impl FnOnce(&mut NodeInstallStatus), wake: bool) -> bool {
        let mut changed = false;
        self.status.send_if_modified(|status| {
            let before = status.clone();
            change(status);
            changed = *status != before;
            changed && wake
        });
        changed
    }

    /// Wakes the writer if a quiet change awaits its write.
    pub fn flush(&self) {
        if self.quiet.swap(false, Ordering::SeqCst) {
            self.status.send_modify(|_| {});
        }
    }

    /// The latest status and its changes.
    pub fn subscribe(&self) -> watch::Receiver<NodeInstallStatus> {
        self.status.subscribe()
    }
}

/// Where the agent's status goes: the status subresource of its NodeInstall.
#[derive(Clone)]
pub struct StatusApi {
    api: Api<NodeInstall>,
    node: String,
}

impl StatusApi {
    /// The status of the NodeInstall named `node`.
    pub fn new(client: &Client, node: &str) -> Self {
        Self {
            api: Api::all(client.clone()),
            node: node.to_owned(),
        }
    }

    /// Writes `status`, logging a failure (the next heartbeat retries).
    pub async fn write(&self, status: NodeInstallStatus) {
        let params = PatchParams {
            field_manager: Some(MANAGER.to_owned()),
            ..PatchParams::default()
        };
        if let Err(e) = self
            .api
            .patch_status(&self.node, &params, &Patch::Merge(&status_patch(&status)))
            .await
        {
            tracing::warn!(node = %self.node, "cannot write NodeInstall status (retrying at the next heartbeat): {e}");
        }
    }
}

/// The merge patch that makes the NodeInstall's status exactly `status`:
/// every field of the status, the ones `status` leaves out as `null` (a
/// JSON merge patch keeps a field it does not mention, and replaces a
/// list whole). The agent is the status's only writer, so a whole status
/// is what server-side apply would leave; a merge patch costs the API
/// server far less (no YAML parse of the body, no merge of field sets).
pub fn status_patch(status: &NodeInstallStatus) -> serde_json::Value {
    let mut fields = serde_json::to_value(status).unwrap_or_default();
    if let Some(map) = fields.as_object_mut() {
        for name in status_fields() {
            map.entry(name.as_str()).or_insert(serde_json::Value::Null);
        }
    }
    serde_json::json!({ "status": fields })
}

/// The names of every field of a NodeInstall's status, from its schema.
fn status_fields() -> &'static [String] {
    static FIELDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FIELDS.get_or_init(|| {
        let schema = schemars::schema_for!(NodeInstallStatus);
        schema
            .get("properties")
            .and_then(|p| p.as_object())
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    })
}

/// The status writer: writes the latest status of `reporter` with `write`
/// whenever it changes and, with a fresh heartbeat, every `every`, until
/// `stop` (writing a change not yet written on the way out).
pub async fn write_status<W, F>(
    reporter: Reporter,
    every: Duration,
    stop: CancellationToken,
    mut write: W,
) where
    W: FnMut(NodeInstallStatus) -> F,
    F: Future<Output = ()>,
{
    let mut latest = reporter.subscribe();
    drop(reporter);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let go_on = tokio::select! {
            changed = latest.changed() => changed.is_ok(),
            _ = tick.tick() => true,
            () = stop.cancelled() => false,
        };
        if !go_on && !latest.borrow().has_changed() {
            return;
        }
        let mut status = latest.borrow_and_update().clone();
        status.heartbeat = Some(Time(Timestamp::now()));
        write(status).await;
        if !go_on {
            return;
        }
        // Every write carries a heartbeat: the next heartbeat of its own
        // is due a whole interval after this one.
        tick.reset();
    }
}

/// What the operator wants of this node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// `metadata.generation` of the NodeInstall.
    pub generation: Option<i64>,
    /// `spec.target`.
    pub target: Option<NodeTarget>,
    /// `spec.next`: the set to fetch ahead of its install.
    pub next: Option<NodeTarget>,
    /// `spec.tasks`: the service action hooks to run in order (each once
    /// per attempt).
    pub tasks: Vec<NodeTask>,
    /// `spec.probes`: capability probes to run (once per nonce).
    pub probes: Vec<NodeProbe>,
    /// `spec.storage`: storage tasks to do (once per key).
    pub storage: Vec<StorageTask>,
}

impl Desired {
    /// The desired state in `ni`.
    pub fn of(ni: &NodeInstall) -> Self {
        Self {
            generation: ni.metadata.generation,
            target: ni.spec.target.clone(),
            next: ni.spec.next.clone(),
            tasks: ni.spec.tasks.clone(),
            probes: ni.spec.probes.clone(),
            storage: ni.spec.storage.clone(),
        }
    }
}

/// Watches the NodeInstall named `node` (and nothing else) and publishes its
/// target on `tx`; re-creates the object if someone deletes it.
pub async fn watch_target(
    client: Client,
    node: String,
    labels: BTreeMap<String, String>,
    tx: watch::Sender<Desired>,
    stop: CancellationToken,
) {
    let api = Api::<NodeInstall>::all(client.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            () = stop.cancelled() => return,
        };
        match event {
            Some(Ok(watcher::Event::Apply(ni) | watcher::Event::InitApply(ni))) => {
                let desired = Desired::of(&ni);
                tx.send_if_modified(|d| std::mem::replace(d, desired.clone()) != desired);
            }
            Some(Ok(watcher::Event::Delete(_))) => {
                tracing::warn!(%node, "NodeInstall deleted; registering again");
                if let Err(e) = register(&client, &node, &labels).await {
                    tracing::warn!(%node, "{e}");
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => tracing::warn!(%node, "watch: {e}"),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use super::*;

    #[test]
    fn the_status_patch_names_every_field_and_clears_the_ones_left_out() {
        let status = NodeInstallStatus {
            message: Some("switching".into()),
            active: vec!["a--1".into()],
            ..NodeInstallStatus::default()
        };
        let patch = status_patch(&status);
        let fields = patch["status"].as_object().unwrap();
        assert_eq!(fields["message"], "switching");
        assert_eq!(fields["active"], serde_json::json!(["a--1"]));
        // Left out: cleared, lists included (a merge patch would keep them).
        for gone in ["failedHash", "reason", "tasks", "conditions", "heartbeat"] {
            assert_eq!(fields[gone], serde_json::Value::Null, "{gone}");
        }
        // Every field of the status is named, none more.
        let all = serde_json::to_value(NodeInstallStatus::default()).unwrap();
        for name in all.as_object().unwrap().keys() {
            assert!(fields.contains_key(name), "{name}");
        }
        assert_eq!(fields.len(), status_fields().len());
        assert!(fields.len() >= 15, "{fields:?}");
    }

    #[tokio::test]
    async fn a_slow_writer_never_holds_up_an_update_and_the_latest_status_wins() {
        let reporter = Reporter::new(NodeInstallStatus::default());
        let written: Arc<Mutex<Vec<NodeInstallStatus>>> = Arc::default();
        let stop = CancellationToken::new();
        let log = written.clone();
        let writer = tokio::spawn(write_status(
            reporter.clone(),
            Duration::from_secs(3600),
            stop.clone(),
            move |status| {
                let log = log.clone();
                async move {
                    // An API server that takes 200 ms per write.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    log.lock().unwrap().push(status);
                }
            },
        ));
        let started = Instant::now();
        for i in 0..100 {
            reporter.update(|s| s.message = Some(format!("step {i}")));
            tokio::task::yield_now().await;
        }
        let updating = started.elapsed();
        assert!(updating < Duration::from_millis(150), "{updating:?}");
        let last = |w: &Mutex<Vec<NodeInstallStatus>>| {
            w.lock().unwrap().last().and_then(|s| s.message.clone())
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while last(&written).as_deref() != Some("step 99") {
            assert!(Instant::now() < deadline, "the latest status is written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let writes = written.lock().unwrap().len();
        assert!(
            writes < 10,
            "{writes} writes: intermediate ones are skipped"
        );
        assert!(
            written
                .lock()
                .unwrap()
                .iter()
                .all(|s| s.heartbeat.is_some())
        );

        reporter.update(|s| s.message = Some("last".into()));
        stop.cancel();
        writer.await.unwrap();
        assert_eq!(
            last(&written).as_deref(),
            Some("last"),
            "written on the way out"
        );
    }

    /// A writer that logs when (since the start) and what it wrote.
    type Log = Arc<Mutex<Vec<(Duration, Option<String>)>>>;
    fn logging_writer(
        reporter: &Reporter,
        every: Duration,
        stop: &CancellationToken,
    ) -> (tokio::task::JoinHandle<()>, Log) {
        let written: Log = Arc::default();
        let log = written.clone();
        let start = Instant::now();
        let writer = tokio::spawn(write_status(
            reporter.clone(),
            every,
            stop.clone(),
            move |status| {
                let log = log.clone();
                async move {
                    log.lock().unwrap().push((start.elapsed(), status.message));
                }
            },
        ));
        (writer, written)
    }

    /// Waits (up to 10 s) until `written` holds `n` writes.
    async fn writes(written: &Log, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while written.lock().unwrap().len() < n {
            assert!(Instant::now() < deadline, "{n} writes: {written:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_heartbeat_is_written_a_whole_interval_after_the_last_write() {
        let every = Duration::from_millis(600);
        let reporter = Reporter::new(NodeInstallStatus::default());
        let stop = CancellationToken::new();
        let (writer, written) = logging_writer(&reporter, every, &stop);
        writes(&written, 1).await;
        for i in 1..=3 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            reporter.update(|s| s.message = Some(format!("change {i}")));
        }
        // The three changes, then a heartbeat.
        writes(&written, 5).await;
        stop.cancel();
        writer.await.unwrap();
        let written = written.lock().unwrap();
        let changes: Vec<Option<&str>> = written[1..4].iter().map(|(_, m)| m.as_deref()).collect();
        assert_eq!(
            changes,
            [Some("change 1"), Some("change 2"), Some("change 3")]
        );
        // Writes 250 ms apart hold the heartbeat off: it comes a whole
        // interval after the last of them (not 600 ms after the first
        // write, in the middle of the changes).
        assert_eq!(written[4].1.as_deref(), Some("change 3"), "a heartbeat");
        let gap = written[4].0 - written[3].0;
        assert!(gap >= every, "{gap:?} after the last write: {written:?}");
    }

    #[tokio::test]
    async fn a_quiet_change_goes_out_with_the_next_write_or_a_flush() {
        let reporter = Reporter::new(NodeInstallStatus::default());
        let stop = CancellationToken::new();
        let (writer, written) = logging_writer(&reporter, Duration::from_secs(3600), &stop);
        writes(&written, 1).await;
        reporter.update_quietly(|s| s.message = Some("quiet".into()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(written.lock().unwrap().len(), 1, "not written: {written:?}");
        assert_eq!(reporter.snapshot().message.as_deref(), Some("quiet"));
        // The next change carries it.
        reporter.update(|s| s.phase = crate::api::NodePhase::Active);
        writes(&written, 2).await;
        assert_eq!(written.lock().unwrap()[1].1.as_deref(), Some("quiet"));
        // A flush with nothing quiet pending writes nothing…
        reporter.flush();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(written.lock().unwrap().len(), 2, "{written:?}");
        // …and one with a quiet change pending writes it.
        reporter.update_quietly(|s| s.message = Some("flushed".into()));
        reporter.flush();
        writes(&written, 3).await;
        stop.cancel();
        writer.await.unwrap();
        let written = written.lock().unwrap();
        assert_eq!(written.len(), 3, "{written:?}");
        assert_eq!(written[2].1.as_deref(), Some("flushed"));
    }
}
