//! Caches one controller fills and others read, and the operator's one
//! watch of NodeInstalls that every controller reads from.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, StreamExt};
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;
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
///
/// Each subscriber has a queue of its own, which holds only the events it
/// has not taken yet: a ring shared by all of them (a broadcast channel)
/// would keep the last [`EVENT_BUFFER`] versions of the fleet's nodes
/// alive after every subscriber had taken them.
#[derive(Clone)]
pub struct Nodes {
    store: Store<NodeInstall>,
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
    /// `Some(true)` once the store has its first full list, `Some(false)`
    /// when its watch ended before. (kube's `Store::wait_until_ready`
    /// wakes only the last of several concurrent waiters; one task waits
    /// on it and tells every controller through this channel.)
    ready: tokio::sync::watch::Receiver<Option<bool>>,
}

/// One subscriber's queue, and whether an event could not go into it.
struct Subscriber {
    queue: mpsc::Sender<watcher::Event<NodeInstall>>,
    lagged: Arc<AtomicBool>,
}

/// Gives `event` to every subscriber; one whose queue is full is marked
/// lagged (it re-lists from the store, which has the event), one that is
/// gone is forgotten.
fn fan_out(subscribers: &Mutex<Vec<Subscriber>>, event: &watcher::Event<NodeInstall>) {
    let mut subscribers = subscribers.lock().expect("subscribers lock");
    subscribers.retain(|s| match s.queue.try_send(event.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            s.lagged.store(true, Ordering::SeqCst);
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
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
        let subscribers: Arc<Mutex<Vec<Subscriber>>> = Arc::default();
        let sender = subscribers.clone();
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
                    Ok(event) => fan_out(&sender, &event),
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
            subscribers,
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
        let (_, ready) = tokio::sync::watch::channel(Some(true));
        Nodes {
            store,
            subscribers: Arc::default(),
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
        let (queue, rx) = mpsc::channel(EVENT_BUFFER);
        let lagged = Arc::new(AtomicBool::new(false));
        self.subscribers
            .lock()
            .expect("subscribers lock")
            .push(Subscriber {
                queue,
                lagged: lagged.clone(),
            });
        let first = relist();
        futures::stream::iter(first).chain(
            futures::stream::unfold(
                (rx, lagged, relist),
                |(mut rx, lagged, relist)| async move {
                    // `None`: the watch is gone.
                    let event = rx.recv().await?;
                    let events = if lagged.swap(false, Ordering::SeqCst) {
                        // What is queued is in the store too.
                        while rx.try_recv().is_ok() {}
                        tracing::debug!(
                            "a NodeInstall subscriber fell behind; re-listing from the store"
                        );
                        relist()
                    } else {
                        vec![event]
                    };
                    Some((futures::stream::iter(events), (rx, lagged, relist)))
                },
            )
            .flatten(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NodeInstallSpec;

    fn node(i: usize) -> NodeInstall {
        NodeInstall::new(&format!("node-{i}"), NodeInstallSpec::default())
    }

    /// What a subscriber has queued now, as `Init`, `+name` (an apply),
    /// `-name` (a delete) and `Done`.
    fn taken(sub: &mut (impl Stream<Item = watcher::Event<NodeInstall>> + Unpin)) -> Vec<String> {
        use kube::ResourceExt;
        let mut out = Vec::new();
        // Unconstrained: tokio's per-task budget would end the loop early.
        while let Some(Some(event)) =
            futures::FutureExt::now_or_never(tokio::task::unconstrained(sub.next()))
        {
            out.push(match event {
                watcher::Event::Init => "Init".to_owned(),
                watcher::Event::InitApply(n) | watcher::Event::Apply(n) => {
                    format!("+{}", n.name_any())
                }
                watcher::Event::Delete(n) => format!("-{}", n.name_any()),
                watcher::Event::InitDone => "Done".to_owned(),
            });
        }
        out
    }

    #[tokio::test]
    async fn every_subscriber_gets_each_event_one_that_falls_behind_gets_the_store_and_a_gone_one_is_forgotten()
     {
        let (store, mut writer) = reflector::store::<NodeInstall>();
        for event in [watcher::Event::Init, watcher::Event::InitDone] {
            writer.apply_watcher_event(&event);
        }
        let nodes = Nodes {
            store,
            subscribers: Arc::default(),
            ready: tokio::sync::watch::channel(Some(true)).1,
        };
        let mut fast = nodes.subscribe().boxed();
        let mut slow = nodes.subscribe().boxed();
        let mut apply = |i: usize| {
            let event = watcher::Event::Apply(node(i));
            writer.apply_watcher_event(&event);
            fan_out(&nodes.subscribers, &event);
        };
        assert_eq!(taken(&mut fast), ["Init", "Done"]);
        apply(0);
        assert_eq!(taken(&mut fast), ["+node-0"]);
        // `slow` takes nothing while more than its queue holds arrives.
        for i in 1..=EVENT_BUFFER {
            apply(i);
            assert_eq!(taken(&mut fast), [format!("+node-{i}")]);
        }
        let relisted = taken(&mut slow);
        assert_eq!(&relisted[..2], ["Init", "Done"], "its first re-list");
        assert_eq!(relisted[2], "Init", "then the store again, not the queue");
        assert_eq!(relisted.len(), 2 + 1 + (EVENT_BUFFER + 1) + 1);
        assert_eq!(relisted.last().map(String::as_str), Some("Done"));
        apply(EVENT_BUFFER + 1);
        let next = format!("+node-{}", EVENT_BUFFER + 1);
        assert_eq!(taken(&mut slow), std::slice::from_ref(&next));
        assert_eq!(taken(&mut fast), [next]);
        drop(fast);
        apply(EVENT_BUFFER + 2);
        assert_eq!(nodes.subscribers.lock().unwrap().len(), 1);
    }
}
