//! Caches one controller fills and others read, and the operator's one
//! watch of NodeInstalls that every controller reads from.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::api::NodeInstall;
use crate::pkg::index::Index;

/// The last good index of each PackageRepository, by name: written by the
/// PackageRepository controller, read by the PackageSet controller.
pub type IndexCache = Arc<RwLock<HashMap<String, Arc<Index>>>>;

/// The shared caches.
#[derive(Clone, Default)]
pub struct Stores {
    /// Verified repository indexes.
    pub indexes: IndexCache,
    /// The NodeInstalls this operator manages.
    pub nodes: Nodes,
}

/// How many NodeInstall events a subscriber may fall behind before it is
/// given a re-list from the store instead.
const EVENT_BUFFER: usize = 1024;

/// One watch of the NodeInstalls this operator manages: a store that the
/// PackageSet and NodePool controllers read instead of listing, and its
/// events for the controllers that wake on changes. The store has taken an
/// event in before subscribers see it.
#[derive(Clone)]
pub struct Nodes {
    store: Store<NodeInstall>,
    events: broadcast::Sender<watcher::Event<NodeInstall>>,
    /// `Some(true)` once the store has its first full list, `Some(false)`
    /// when its watch ended before. (kube's `Store::wait_until_ready`
    /// wakes only the last of several concurrent waiters; one task waits
    /// on it and tells every controller through this channel.)
    ready: tokio::sync::watch::Receiver<Option<bool>>,
}

impl Default for Nodes {
    /// An empty store that is never filled (tests fill it with
    /// [`Nodes::fixed`]).
    fn default() -> Nodes {
        Nodes::fixed(Vec::new())
    }
}

impl Nodes {
    /// Watches NodeInstalls with `config` until `stop` is cancelled.
    pub fn watch(client: Client, config: watcher::Config, stop: CancellationToken) -> Nodes {
        let (store, writer) = reflector::store::<NodeInstall>();
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let sender = events.clone();
        // Managed fields are a good part of a NodeInstall written by
        // several managers (agent, operator, capability and storage
        // controllers) and nothing here reads them: neither the store nor
        // the events keep them.
        let watch = watcher(Api::all(client), config).modify(|node: &mut NodeInstall| {
            node.metadata.managed_fields = None;
        });
        let stream = reflector::reflector(writer, watch)
            .default_backoff()
            .for_each(move |event| {
                match event {
                    // No subscriber yet is fine: they start from the store.
                    Ok(event) => drop(sender.send(event)),
                    Err(e) => tracing::warn!(error = %e, "watching NodeInstalls failed; retrying"),
                }
                async {}
            });
        tokio::spawn(async move {
            tokio::select! {
                () = stream => {}
                () = stop.cancelled() => {}
            }
        });
        let (tell, ready) = tokio::sync::watch::channel(None);
        let waited = store.clone();
        tokio::spawn(async move {
            let ready = waited.wait_until_ready().await.is_ok();
            tell.send_replace(Some(ready));
        });
        Nodes {
            store,
            events,
            ready,
        }
    }

    /// A store holding `nodes`, ready, with no watch behind it.
    pub fn fixed(nodes: Vec<NodeInstall>) -> Nodes {
        let (store, mut writer) = reflector::store::<NodeInstall>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for node in nodes {
            writer.apply_watcher_event(&watcher::Event::InitApply(node));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        // The writer goes; the store keeps what it was given.
        let (events, _) = broadcast::channel(1);
        let (_, ready) = tokio::sync::watch::channel(Some(true));
        Nodes {
            store,
            events,
            ready,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store<NodeInstall> {
        &self.store
    }

    /// Waits until the store has its first full list, saying every 10 s
    /// that `who` is still waiting; `Err` when the watch is gone for good.
    pub async fn ready(&self, who: &str) -> Result<(), ()> {
        let started = std::time::Instant::now();
        let mut ready = self.ready.clone();
        loop {
            let wait = ready.wait_for(Option::is_some);
            match tokio::time::timeout(std::time::Duration::from_secs(10), wait).await {
                Ok(Ok(state)) if *state == Some(true) => {
                    tracing::info!(waited = ?started.elapsed(), controller = who, "NodeInstall cache ready; reconciling");
                    return Ok(());
                }
                Ok(_) => return Err(()),
                Err(_) => tracing::warn!(
                    waited = ?started.elapsed(),
                    controller = who,
                    "the NodeInstall cache has no full list yet; the controller waits for it"
                ),
            }
        }
    }

    /// The watch's events from now on, starting with the store's current
    /// contents as a re-list (`Init`, `InitApply`…, `InitDone`); a
    /// subscriber that falls behind gets a re-list from the store again
    /// instead of the events it missed.
    pub fn subscribe(&self) -> impl Stream<Item = watcher::Event<NodeInstall>> + Send + 'static {
        let store = self.store.clone();
        let relist = move || {
            let mut events = vec![watcher::Event::Init];
            events.extend(
                store
                    .state()
                    .iter()
                    .map(|n| watcher::Event::InitApply((**n).clone())),
            );
            events.push(watcher::Event::InitDone);
            events
        };
        // Subscribed first: an event during the re-list is seen twice at
        // worst, never missed.
        let rx = self.events.subscribe();
        let first = relist();
        futures::stream::iter(first).chain(
            futures::stream::unfold((rx, relist), |(mut rx, relist)| async move {
                let events = match rx.recv().await {
                    Ok(event) => vec![event],
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(
                            missed,
                            "a NodeInstall subscriber fell behind; re-listing from the store"
                        );
                        relist()
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                Some((futures::stream::iter(events), (rx, relist)))
            })
            .flatten(),
        )
    }
}
