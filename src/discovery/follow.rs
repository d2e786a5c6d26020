//! Following a group (or a whole service) from an application: an initial
//! list, then a watch, reconnecting by itself. After every (re)list the
//! follower emits exactly the changes since its last view, so a dropped
//! connection or a watch on a compacted revision never hides a change.
//!
//! ```no_run
//! use theseus::discovery::{EtcdConfig, Follower, GroupEvent, Tree};
//!
//! # async fn example() -> Result<(), theseus::discovery::TreeError> {
//! let tree = Tree::connect(&EtcdConfig::new(["http://127.0.0.1:2379"])).await?;
//! let mut peers = Follower::labels(tree, "web", &["canary", "eu"])?;
//! loop {
//!     match peers.next().await {
//!         GroupEvent::Added { container, info, .. } => println!("+ {container} {}", info.instance_host),
//!         GroupEvent::Removed { container, .. } => println!("- {container}"),
//!         GroupEvent::Synced { containers } => println!("{containers} peers"),
//!         _ => {}
//!     }
//! }
//! # }
//! ```

use std::collections::{BTreeMap, VecDeque};

use etcd_client::{EventType, WatchOptions, WatchStream};
use futures::Stream;

use super::model::{ContainerInfo, GroupConfig};
use super::paths::{self, Key};
use super::tree::{Tree, TreeError, backoff, parse_json};

/// One change in the followed part of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupEvent {
    /// A container appeared.
    Added {
        /// Its group.
        group: String,
        /// Its name.
        container: String,
        /// Where it is.
        info: ContainerInfo,
    },
    /// A container's info changed.
    Updated {
        /// Its group.
        group: String,
        /// Its name.
        container: String,
        /// Where it is now.
        info: ContainerInfo,
    },
    /// A container went away.
    Removed {
        /// Its group.
        group: String,
        /// Its name.
        container: String,
    },
    /// A group's config was written (`None`: removed).
    Config {
        /// The group.
        group: String,
        /// Its config.
        config: Option<GroupConfig>,
    },
    /// The view is complete: sent after the first list and after every
    /// reconnect, once the changes in between were emitted.
    Synced {
        /// Containers in view.
        containers: usize,
    },
    /// The connection to etcd was lost; the follower reconnects by itself.
    Disconnected {
        /// Why.
        error: String,
    },
}

/// Follows a prefix of the tree. See the module documentation.
pub struct Follower {
    tree: Tree,
    prefix: String,
    view: BTreeMap<String, String>,
    pending: VecDeque<GroupEvent>,
    watch: Option<WatchStream>,
    failures: u32,
    disconnected: bool,
}

impl Follower {
    /// Follows one group of a service, by encoded group name.
    pub fn group(tree: Tree, service: &str, group: &str) -> Result<Self, TreeError> {
        paths::validate_service(service)?;
        paths::validate_group(group)?;
        let prefix = tree.layout().group(service, group);
        Ok(Self::at(tree, prefix))
    }

    /// Follows the group of a service that has these labels.
    pub fn labels<S: AsRef<str>>(
        tree: Tree,
        service: &str,
        labels: &[S],
    ) -> Result<Self, TreeError> {
        let group = paths::encode_group(labels)?;
        Self::group(tree, service, &group)
    }

    /// Follows every group of a service.
    pub fn service(tree: Tree, service: &str) -> Result<Self, TreeError> {
        paths::validate_service(service)?;
        let prefix = tree.layout().service(service);
        Ok(Self::at(tree, prefix))
    }

    fn at(tree: Tree, prefix: String) -> Self {
        Self {
            tree,
            prefix,
            view: BTreeMap::new(),
            pending: VecDeque::new(),
            watch: None,
            failures: 0,
            disconnected: false,
        }
    }

    /// The containers in view, by (group, container).
    pub fn containers(&self) -> BTreeMap<(String, String), ContainerInfo> {
        self.view
            .iter()
            .filter_map(|(key, value)| match self.tree.layout().parse(key)? {
                Key::Info {
                    group, container, ..
                } => Some(((group, container), parse_json(key, value).ok()?)),
                _ => None,
            })
            .collect()
    }

    /// The next change; waits for one, reconnecting as needed. Never fails:
    /// a lost connection is reported as [`GroupEvent::Disconnected`].
    pub async fn next(&mut self) -> GroupEvent {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            if self.watch.is_none() {
                if let Err(error) = self.relist().await {
                    self.failures += 1;
                    tokio::time::sleep(backoff(self.failures.min(6))).await;
                    if !self.disconnected {
                        self.disconnected = true;
                        return GroupEvent::Disconnected {
                            error: error.to_string(),
                        };
                    }
                }
                continue;
            }
            self.receive().await;
        }
    }

    /// The follower as a stream of events.
    pub fn into_stream(self) -> impl Stream<Item = GroupEvent> {
        futures::stream::unfold(self, |mut follower| async move {
            let event = follower.next().await;
            Some((event, follower))
        })
    }

    /// Lists the prefix, emits what changed since the last view, and starts
    /// a watch just after the list's revision.
    async fn relist(&mut self) -> Result<(), TreeError> {
        let range = self.tree.range(&self.prefix).await?;
        let listed: BTreeMap<String, String> = range
            .entries
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect();
        let removed: Vec<String> = self
            .view
            .keys()
            .filter(|k| !listed.contains_key(*k))
            .cloned()
            .collect();
        for key in removed {
            self.apply(&key, None);
        }
        for (key, value) in listed {
            self.apply(&key, Some(value));
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(range.revision + 1);
        let prefix = self.prefix.clone();
        let stream = self
            .tree
            .call("watch", |mut c| {
                let options = options.clone();
                let prefix = prefix.clone();
                async move { c.watch(prefix, Some(options)).await }
            })
            .await?;
        self.watch = Some(stream);
        self.failures = 0;
        self.disconnected = false;
        let containers = self.containers().len();
        self.pending.push_back(GroupEvent::Synced { containers });
        Ok(())
    }

    /// Waits for one watch response and applies its events. A cancelled
    /// watch (a compacted revision) or a broken stream means: list again.
    async fn receive(&mut self) {
        let Some(watch) = self.watch.as_mut() else {
            return;
        };
        match watch.message().await {
            Ok(Some(response)) if response.canceled() || response.compact_revision() > 0 => {
                tracing::info!(
                    prefix = %self.prefix,
                    compact_revision = response.compact_revision(),
                    "watch cancelled; listing again"
                );
                self.watch = None;
            }
            Ok(Some(response)) => {
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let value = match event.event_type() {
                        EventType::Put => Some(String::from_utf8_lossy(kv.value()).into_owned()),
                        EventType::Delete => None,
                    };
                    self.apply(&key, value);
                }
            }
            Ok(None) | Err(_) => {
                self.watch = None;
                self.disconnected = true;
                self.pending.push_back(GroupEvent::Disconnected {
                    error: "the watch on the discovery etcd ended".into(),
                });
            }
        }
    }

    /// Updates the view with one key and queues the event it means.
    fn apply(&mut self, key: &str, value: Option<String>) {
        let previous = match &value {
            Some(v) => self.view.insert(key.to_owned(), v.clone()),
            None => self.view.remove(key),
        };
        if previous == value {
            return;
        }
        if let Some(event) = event_for(&self.tree, key, previous.is_some(), value) {
            self.pending.push_back(event);
        }
    }
}

fn event_for(tree: &Tree, key: &str, existed: bool, value: Option<String>) -> Option<GroupEvent> {
    match tree.layout().parse(key)? {
        Key::Info {
            group, container, ..
        } => Some(match value {
            None => GroupEvent::Removed { group, container },
            Some(value) => {
                let info: ContainerInfo = parse_json(key, &value)
                    .inspect_err(|e| tracing::warn!(%e, "ignoring a container entry"))
                    .ok()?;
                if existed {
                    GroupEvent::Updated {
                        group,
                        container,
                        info,
                    }
                } else {
                    GroupEvent::Added {
                        group,
                        container,
                        info,
                    }
                }
            }
        }),
        Key::Config { group, .. } => Some(GroupEvent::Config {
            group,
            config: value.and_then(|v| parse_json(key, &v).ok()),
        }),
        _ => None,
    }
}
