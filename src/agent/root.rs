//! The node root as the agent shares it between its loop and its local
//! HTTP API.
//!
//! Two locks, neither ever held across a network request by a reader:
//!
//! - the *change lock* admits one change of the cache or the generations at
//!   a time: a whole activation (from its journal to its switch, fetching
//!   and stopping services included), a rollback, `POST /add`,
//!   `POST /remove`. Two activations therefore never interleave.
//! - the *root lock* (a read-write lock) keeps readers out of the short
//!   sections that rewrite what they read: building a generation,
//!   switching `current`, recovering, rolling back, removing a package.
//!   Readers (`GET /list.json`, `GET /active.json`, the status) share it.
//!
//! Fetching into the cache needs only the change lock: packages are
//! downloaded under `downloads/` and appear in `packages/` by one rename
//! each, complete, and a reader never looks at either temporary name.
//!
//! Every operation on the [`Root`] is blocking file I/O and runs on a
//! blocking thread ([`tokio::task::spawn_blocking`]); the locks are taken
//! before, without occupying a thread while waiting.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard, OwnedRwLockReadGuard, RwLock, RwLockWriteGuard};

use crate::pkg::{RecoveryReport, Root};

/// The agent's shared handle on its node root.
#[derive(Debug, Clone)]
pub struct NodeRoot {
    root: Arc<Root>,
    lock: Arc<RwLock<()>>,
    changes: Arc<Mutex<()>>,
}

impl NodeRoot {
    /// Shares an open root.
    pub fn new(root: Root) -> Self {
        Self {
            root: Arc::new(root),
            lock: Arc::new(RwLock::new(())),
            changes: Arc::new(Mutex::new(())),
        }
    }

    /// The root directory (absolute).
    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// What the recovery at open did.
    pub fn recovery(&self) -> Option<&RecoveryReport> {
        self.root.recovery()
    }

    /// Runs `read` on a blocking thread, sharing the root lock with other
    /// readers.
    pub async fn read<T, F>(&self, read: F) -> T
    where
        F: FnOnce(&Root) -> T + Send + 'static,
        T: Send + 'static,
    {
        let guard = self.lock.clone().read_owned().await;
        let root = self.root.clone();
        blocking(move || {
            let _guard = guard;
            read(&root)
        })
        .await
    }

    /// Shares the root lock until the returned [`Held`] is dropped, for work
    /// that must see one active set from its start to its end (a service
    /// hook): a switch, a rollback or a removal waits for it. The holder
    /// must not ask for the root lock again (with [`NodeRoot::read`]) while
    /// it holds it: a writer waiting in between would deadlock them.
    pub async fn hold_read(&self) -> Held {
        Held {
            root: self.root.clone(),
            _guard: self.lock.clone().read_owned().await,
        }
    }

    /// Waits for the change lock: the holder is the only one changing the
    /// root until it drops the [`Change`].
    pub async fn change(&self) -> Change {
        let changes = self.changes.clone().lock_owned().await;
        Change {
            root: self.root.clone(),
            lock: self.lock.clone(),
            _changes: changes,
        }
    }

    /// Runs `change` on a blocking thread under both locks: a short change
    /// that no reader may see halfway (a rollback, a removal).
    pub async fn change_exclusively<T, F>(&self, change: F) -> T
    where
        F: FnOnce(&Root) -> T + Send + 'static,
        T: Send + 'static,
    {
        let held = self.change().await;
        let guard = self.lock.clone().write_owned().await;
        blocking(move || {
            let _guard = guard;
            change(held.root())
        })
        .await
    }
}

/// A share of the root lock, held until dropped (see
/// [`NodeRoot::hold_read`]).
#[derive(Debug)]
pub struct Held {
    root: Arc<Root>,
    _guard: OwnedRwLockReadGuard<()>,
}

impl Held {
    /// The root, for reading on a blocking thread while the share is held.
    pub fn root(&self) -> Arc<Root> {
        self.root.clone()
    }
}

/// The right to change the root, held until dropped. Meant to be moved to
/// a blocking thread.
#[derive(Debug)]
pub struct Change {
    root: Arc<Root>,
    lock: Arc<RwLock<()>>,
    _changes: OwnedMutexGuard<()>,
}

impl Change {
    /// The root. Without [`Change::exclusive`], only what readers may see
    /// at any moment: fetching packages into the cache.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// Keeps readers out while the guard lives. Blocks the thread until
    /// the readers are done, so it is for blocking threads only.
    pub fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.lock.blocking_write()
    }

    /// Drives `future` (an async operation of the root, one that fetches)
    /// to completion on this blocking thread.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        tokio::runtime::Handle::current().block_on(future)
    }
}

/// Runs `work` on a blocking thread; a panic there panics here.
pub async fn blocking<T, F>(work: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn readers_share_the_root_while_a_change_holds_only_the_change_lock() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let shared = NodeRoot::new(root);
        let change = shared.change().await;
        let listed = tokio::time::timeout(Duration::from_secs(5), shared.read(|r| r.list()))
            .await
            .expect("a read does not wait for the change lock");
        assert!(listed.unwrap().is_empty());
        let other = shared.clone();
        let second = tokio::spawn(async move { other.change().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "a second change waits for the first");
        drop(change);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the second change proceeds")
            .unwrap();
    }

    #[tokio::test]
    async fn an_exclusive_section_keeps_readers_out() {
        let dir = tempfile::tempdir().unwrap();
        let shared = NodeRoot::new(Root::open(dir.path()).unwrap());
        let change = shared.change().await;
        let (held, is_held) = std::sync::mpsc::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let writer = tokio::task::spawn_blocking(move || {
            let _guard = change.exclusive();
            held.send(()).unwrap();
            released.recv().unwrap();
        });
        blocking(move || is_held.recv().unwrap()).await;
        let other = shared.clone();
        let reader = tokio::spawn(async move { other.read(|r| r.current()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!reader.is_finished(), "the reader waits for the section");
        release.send(()).unwrap();
        writer.await.unwrap();
        assert_eq!(reader.await.unwrap(), None);
    }
}
