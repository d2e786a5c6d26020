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

/// A 64-bit digest of `view` (SipHash of its JSON form, with this build's
/// fixed keys). What a controller remembers of each node is this and not
/// a copy of the parts it reads: at fleet size the copies would be a good
/// part of the operator's memory beside the NodeInstall cache itself. Two
/// different views share a digest with odds of 2⁻⁶⁴ — a wake-up missed
/// then is made up by the controller's next periodic pass.
pub fn digest<T: serde::Serialize>(view: &T) -> u64 {
    use std::hash::Hasher;
    struct Feed<'h>(&'h mut std::hash::DefaultHasher);
    impl std::io::Write for Feed<'_> {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.write(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hasher = std::hash::DefaultHasher::new();
    // Serializing the plain data types of a view cannot fail.
    let _ = serde_json::to_writer(Feed(&mut hasher), view);
    hasher.finish()
}

/// The parts of a NodeInstall one controller reads.
pub trait View: serde::Serialize + Send + 'static {
    /// The kind of object a node concerns.
    type Owner: kube::Resource<DynamicType = ()> + Send + 'static;

    /// The parts of `ni` the controller reads.
    fn of(ni: &NodeInstall) -> Self;

    /// The object this view concerns, if any.
    fn owner(&self) -> Option<ObjectRef<Self::Owner>>;
}

/// Remembers what was last seen of each NodeInstall and says which
/// objects a watch event concerns.
pub struct Filter<V: View> {
    /// Per node: the digest of its view and the object it concerned.
    seen: HashMap<String, Seen<V::Owner>>,
    relisted: HashSet<String>,
}

/// What a [`Filter`] remembers of one node.
type Seen<Owner> = (u64, Option<ObjectRef<Owner>>);

impl<V: View> Default for Filter<V> {
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
                .and_then(|(_, owner)| owner)
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
                    .filter_map(|name| self.seen.remove(name).and_then(|(_, owner)| owner))
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
        let (digest, owner) = (digest(&now), now.owner());
        match self.seen.insert(ni.name_any(), (digest, owner.clone())) {
            Some((before, _)) if before == digest => Vec::new(),
            // A node that moved between objects concerns both.
            Some((_, before)) => before.into_iter().chain(owner).collect(),
            None => owner.into_iter().collect(),
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
