//! Which NodeInstall changes wake a controller's object. Agents write
//! their heartbeat every few seconds; waking a NodePool or a Cluster for
//! each would run a reconcile per heartbeat per node. A controller names
//! the parts of a NodeInstall it reads (a [`View`]) and the object those
//! parts concern; only a change of the view wakes that object — and, when
//! a node moved from one object to another, both.

use std::collections::{HashMap, HashSet};

use futures::{Stream, StreamExt, stream};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::api::NodeInstall;

/// The parts of a NodeInstall one controller reads.
pub trait View: Clone + PartialEq + Send + 'static {
    /// The kind of object a node concerns.
    type Owner: kube::Resource<DynamicType = ()> + Send + 'static;

    /// The parts of `ni` the controller reads.
    fn of(ni: &NodeInstall) -> Self;

    /// The object this view concerns, if any.
    fn owner(&self) -> Option<ObjectRef<Self::Owner>>;
}

/// Remembers what was last seen of each NodeInstall and says which
/// objects a watch event concerns.
#[derive(Debug)]
pub struct Filter<V> {
    seen: HashMap<String, V>,
    relisted: HashSet<String>,
}

impl<V> Default for Filter<V> {
    fn default() -> Self {
        Filter {
            seen: HashMap::new(),
            relisted: HashSet::new(),
        }
    }
}

impl<V: View> Filter<V> {
    /// The objects to wake for `event` (none for a change no view sees).
    pub fn wake(&mut self, event: watcher::Event<NodeInstall>) -> Vec<ObjectRef<V::Owner>> {
        let owners: Vec<ObjectRef<V::Owner>> = match event {
            watcher::Event::Apply(ni) => self.update(&ni),
            watcher::Event::InitApply(ni) => {
                self.relisted.insert(ni.name_any());
                self.update(&ni)
            }
            watcher::Event::Delete(ni) => self
                .seen
                .remove(&ni.name_any())
                .and_then(|v| v.owner())
                .into_iter()
                .chain(V::of(&ni).owner())
                .collect(),
            watcher::Event::Init => {
                self.relisted.clear();
                Vec::new()
            }
            // Objects missing from a re-list were deleted meanwhile.
            watcher::Event::InitDone => {
                let relisted = std::mem::take(&mut self.relisted);
                let gone: Vec<String> = self
                    .seen
                    .keys()
                    .filter(|name| !relisted.contains(*name))
                    .cloned()
                    .collect();
                gone.iter()
                    .filter_map(|name| self.seen.remove(name).and_then(|v| v.owner()))
                    .collect()
            }
        };
        let mut unique = Vec::with_capacity(owners.len());
        for owner in owners {
            if !unique.contains(&owner) {
                unique.push(owner);
            }
        }
        unique
    }

    fn update(&mut self, ni: &NodeInstall) -> Vec<ObjectRef<V::Owner>> {
        let now = V::of(ni);
        match self.seen.insert(ni.name_any(), now.clone()) {
            Some(before) if before == now => Vec::new(),
            // A node that moved between objects concerns both.
            Some(before) => before.owner().into_iter().chain(now.owner()).collect(),
            None => now.owner().into_iter().collect(),
        }
    }
}

/// The objects to reconcile, from NodeInstall watch events filtered by
/// a [`Filter`] of `V`.
pub fn to_wake<V: View>(
    events: impl Stream<Item = watcher::Event<NodeInstall>> + Send + 'static,
) -> impl Stream<Item = ObjectRef<V::Owner>> + Send + 'static {
    let mut filter = Filter::<V>::default();
    events.flat_map(move |event| stream::iter(filter.wake(event)))
}
