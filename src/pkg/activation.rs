//! Activation in three phases — fetch, build, switch — so that a caller
//! (the node agent) can stop a service between build and switch; plus the
//! other commands that change the package cache: add, remove, gc.

use std::path::Path;

use futures::StreamExt;
use serde::Serialize;

use super::disk::{self, TMP_MARK};
use super::failpoint;
use super::fetch::{self, Fetched, Fetcher};
use super::generation;
use super::id::PackageId;
use super::journal::{self, Journal, Operation, Step};
use super::pkginfo::PkgInfo;
use super::root::{Root, RootError, Switched, io_err};
use super::set::{self, Member};

/// Options for an activation.
#[derive(Debug, Clone, Default)]
pub struct ActivateOptions {
    /// Names that must be present exactly once (a PackageSet's `required`).
    pub required: Vec<String>,
    /// Values of the secrets the packages' files refer to, by package name:
    /// those files are resolved into the generation (see
    /// [`super::secrets`]).
    pub secrets: super::secrets::SecretValues,
}

/// An activation in progress. Dropping it before [`Activation::switch`]
/// leaves the journal behind, and the next [`Root::recover`] undoes it;
/// [`Activation::abort`] does that at once.
#[derive(Debug)]
pub struct Activation<'r> {
    root: &'r Root,
    ids: Vec<PackageId>,
    options: ActivateOptions,
    journal: Journal,
    fetched: Vec<PackageId>,
    members: Vec<Member>,
}

impl Root {
    /// Starts making exactly `ids` the active set: checks the ids and
    /// writes the journal.
    pub fn begin_activation(
        &self,
        ids: &[PackageId],
        options: ActivateOptions,
    ) -> Result<Activation<'_>, RootError> {
        set::validate_ids(ids)?;
        let mut ids = ids.to_vec();
        ids.sort();
        let journal = Journal {
            operation: Operation::Activate,
            hash: set::set_hash(&ids),
            ids: ids.clone(),
            from: self.current(),
            to: None,
            step: Step::Fetch,
            started: disk::unix_now(),
        };
        journal::write(self.path(), &journal)?;
        failpoint::hit("activate-journal-written");
        Ok(Activation {
            root: self,
            ids,
            options,
            journal,
            fetched: vec![],
            members: vec![],
        })
    }

    /// Fetch, build and switch in one go.
    pub async fn activate(
        &self,
        ids: &[PackageId],
        fetcher: Option<&Fetcher>,
        options: ActivateOptions,
    ) -> Result<Switched, RootError> {
        let mut activation = self.begin_activation(ids, options)?;
        let prepared = match activation.fetch(fetcher).await {
            Ok(_) => activation.build().map(|_| ()),
            Err(e) => Err(e),
        };
        match prepared {
            Ok(()) => activation.switch(),
            Err(e) => {
                // Undo at once rather than leaving it to the next command.
                activation.abort()?;
                Err(e)
            }
        }
    }

    /// The ids not yet cached.
    pub fn missing(&self, ids: &[PackageId]) -> Vec<PackageId> {
        ids.iter()
            .filter(|id| !self.package_dir(id).is_dir())
            .cloned()
            .collect()
    }

    /// Downloads and installs `ids` from the repository, several at once.
    /// Packages that arrive intact are kept even when another one fails.
    pub async fn fetch_packages(
        &self,
        ids: &[PackageId],
        fetcher: &Fetcher,
    ) -> Result<Vec<PackageId>, RootError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let index = fetcher.index().await?;
        let mut entries = Vec::new();
        for id in ids {
            let entry = index
                .find(id)
                .ok_or_else(|| fetch::FetchError::NotInIndex {
                    id: id.to_string(),
                    url: fetcher.url(super::index::INDEX),
                })?;
            entries.push(entry.clone());
        }
        let downloads = self.path().join("downloads");
        let started = std::time::Instant::now();
        let results: Vec<_> = futures::stream::iter(entries)
            .map(|entry| {
                let dest = downloads.join(format!("{}{TMP_MARK}", entry.id));
                let fetcher = fetcher.clone();
                // A task per package, so that hashing runs on every worker.
                let task = tokio::spawn(async move {
                    disk::remove_all(&dest).map_err(io_err(&dest))?;
                    fetcher.fetch_entry(&entry, &dest).await?;
                    Ok::<_, RootError>((entry.id.clone(), dest))
                });
                async move { task.await.expect("a fetch task does not panic") }
            })
            .buffer_unordered(fetcher.options().concurrency.max(1))
            .collect()
            .await;
        tracing::debug!(elapsed = ?started.elapsed(), "downloaded, verified and unpacked {} packages", results.len());
        let (ok, errors): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
        let ok: Vec<_> = ok.into_iter().map(Result::unwrap).collect();
        let installed = self.install(&ok)?;
        match errors.into_iter().next() {
            Some(err) => Err(err.unwrap_err()),
            None => Ok(installed),
        }
    }

    /// Downloads and installs the packages of `ids` not cached yet: each of
    /// `others` the ones it lists, `fetcher` the rest (without a fetcher,
    /// they must all be cached). What arrived is added to `fetched` as it
    /// arrives, so that a caller undoing its work knows it on an error too.
    pub async fn fetch_missing(
        &self,
        ids: &[PackageId],
        (fetcher, others): (Option<&Fetcher>, &[(Fetcher, Vec<PackageId>)]),
        fetched: &mut Vec<PackageId>,
    ) -> Result<(), RootError> {
        let mut missing = self.missing(ids);
        for (other, ids) in others {
            let theirs: Vec<PackageId> = missing
                .iter()
                .filter(|id| ids.contains(id))
                .cloned()
                .collect();
            missing.retain(|id| !theirs.contains(id));
            if !theirs.is_empty() {
                fetched.extend(self.fetch_packages(&theirs, other).await?);
            }
        }
        match (fetcher, missing.first()) {
            (_, None) => Ok(()),
            (None, Some(id)) => Err(RootError::NotCached(id.clone())),
            (Some(fetcher), Some(_)) => {
                fetched.extend(self.fetch_packages(&missing, fetcher).await?);
                Ok(())
            }
        }
    }

    /// Checks unpacked packages, makes them durable and renames them into
    /// `packages/`.
    fn install(
        &self,
        unpacked: &[(PackageId, std::path::PathBuf)],
    ) -> Result<Vec<PackageId>, RootError> {
        if unpacked.is_empty() {
            return Ok(vec![]);
        }
        for (id, dir) in unpacked {
            let info = PkgInfo::read_dir(dir)?;
            if &info.id != id {
                return Err(RootError::WrongId {
                    path: id.to_string(),
                    expected: id.clone(),
                    found: info.id,
                });
            }
        }
        failpoint::hit("fetch-unpacked");
        let started = std::time::Instant::now();
        let trees: Vec<&std::path::Path> = unpacked.iter().map(|(_, dir)| dir.as_path()).collect();
        disk::sync_trees(&trees, self.path()).map_err(io_err(self.path()))?;
        tracing::debug!(elapsed = ?started.elapsed(), "synced the unpacked packages");
        for (id, dir) in unpacked {
            let dest = self.package_dir(id);
            std::fs::rename(dir, &dest).map_err(io_err(&dest))?;
            failpoint::hit("fetch-renamed");
        }
        let packages = self.packages_dir();
        disk::fsync_dir(&packages).map_err(io_err(&packages))?;
        Ok(unpacked.iter().map(|(id, _)| id.clone()).collect())
    }

    /// Adds a local archive `file` (named `ID.tar.gz`) to the cache.
    pub fn add_file(&self, file: &Path) -> Result<Fetched, RootError> {
        let id = id_from_archive_name(&file.to_string_lossy())?;
        let dest = self
            .path()
            .join("downloads")
            .join(format!("{id}{TMP_MARK}"));
        disk::remove_all(&dest).map_err(io_err(&dest))?;
        let fetched = super::stream::unpack_file(
            file,
            &dest,
            &fetch::FetchOptions::default().limits,
            &id.to_string(),
        )?;
        self.replace_cached(&id, &dest)?;
        Ok(fetched)
    }

    /// Adds the archive at `url` (named `ID.tar.gz`) to the cache.
    pub async fn add_url(&self, url: &str, fetcher: &Fetcher) -> Result<Fetched, RootError> {
        let id = id_from_archive_name(url)?;
        let dest = self
            .path()
            .join("downloads")
            .join(format!("{id}{TMP_MARK}"));
        disk::remove_all(&dest).map_err(io_err(&dest))?;
        let fetched = fetcher.fetch_url(url, None, &dest, url).await?;
        self.replace_cached(&id, &dest)?;
        Ok(fetched)
    }

    fn replace_cached(&self, id: &PackageId, dest: &Path) -> Result<(), RootError> {
        if self.package_dir(id).exists() {
            // Cached packages never change; an identical id is already here.
            disk::remove_all(dest).map_err(io_err(dest))?;
            return Ok(());
        }
        self.install(&[(id.clone(), dest.to_owned())]).map(|_| ())
    }

    /// Removes a cached package that no kept generation uses.
    pub fn remove(&self, id: &PackageId) -> Result<(), RootError> {
        let current = self.current();
        let mut generations = self.generations()?;
        // Report the active generation first: it is the likelier reason.
        generations.sort_by_key(|n| (Some(*n) != current, std::cmp::Reverse(*n)));
        for n in generations {
            let set = generation::read_set(&self.generations_dir().join(n.to_string()))?;
            if set.ids.contains(id) {
                let what = if Some(n) == current {
                    " (the active one)"
                } else {
                    " (a rollback target)"
                };
                return Err(RootError::InUse {
                    id: id.clone(),
                    generation: n,
                    what,
                });
            }
        }
        let dir = self.package_dir(id);
        if !dir.is_dir() {
            return Err(RootError::NotCached(id.clone()));
        }
        let doomed = self.packages_dir().join(format!("{id}{TMP_MARK}-rm"));
        std::fs::rename(&dir, &doomed).map_err(io_err(&dir))?;
        disk::fsync_dir(&self.packages_dir()).map_err(io_err(&dir))?;
        disk::remove_all(&doomed).map_err(io_err(&doomed))
    }

    /// Removes generations beyond `keep`, then every cached package that no
    /// remaining generation uses.
    pub fn gc(&self, keep: usize) -> Result<GcReport, RootError> {
        let generations = self.collect_generations(keep)?;
        let mut used = Vec::new();
        for n in self.generations()? {
            used.extend(generation::read_set(&self.generations_dir().join(n.to_string()))?.ids);
        }
        let mut packages = Vec::new();
        for cached in self.list()? {
            if !used.contains(&cached.id) {
                self.remove(&cached.id)?;
                packages.push(cached.id);
            }
        }
        Ok(GcReport {
            generations,
            packages,
        })
    }
}

/// What [`Root::gc`] removed.
#[derive(Debug, Clone, Serialize)]
pub struct GcReport {
    /// Generations removed.
    pub generations: Vec<u64>,
    /// Packages removed.
    pub packages: Vec<PackageId>,
}

/// The id in an archive name `…/ID.tar.gz` or `…/ID.tar.zst`.
pub fn id_from_archive_name(name: &str) -> Result<PackageId, RootError> {
    let base = name.rsplit('/').next().unwrap_or(name);
    let stem = super::codec::split_archive_name(base).map_or(base, |(stem, _)| stem);
    stem.parse()
        .map_err(|e: super::id::IdError| RootError::BadArchiveName {
            name: name.to_owned(),
            reason: e.to_string(),
        })
}

impl Activation<'_> {
    /// The target ids, sorted.
    pub fn ids(&self) -> &[PackageId] {
        &self.ids
    }

    /// Phase 1: downloads and unpacks every missing package. Without a
    /// fetcher, every package must already be cached.
    pub async fn fetch(&mut self, fetcher: Option<&Fetcher>) -> Result<&[PackageId], RootError> {
        self.fetch_from(fetcher, &[]).await
    }

    /// Phase 1 with packages from more than one repository: each of
    /// `others` fetches the missing packages it lists, `fetcher` the rest.
    pub async fn fetch_from(
        &mut self,
        fetcher: Option<&Fetcher>,
        others: &[(Fetcher, Vec<PackageId>)],
    ) -> Result<&[PackageId], RootError> {
        let root = self.root;
        root.fetch_missing(&self.ids, (fetcher, others), &mut self.fetched)
            .await?;
        failpoint::hit("fetch-done");
        Ok(&self.fetched)
    }

    /// Phase 2: checks the set rules and builds the new generation (not yet
    /// active). Returns its number.
    pub fn build(&mut self) -> Result<u64, RootError> {
        if let Some(id) = self.root.missing(&self.ids).first() {
            return Err(RootError::NotCached(id.clone()));
        }
        self.members = self.root.members(&self.ids)?;
        set::validate(&self.members, &self.options.required)?;
        if self.already_active()? {
            return Ok(self
                .journal
                .from
                .expect("already active implies a current generation"));
        }
        let number = self.root.generations()?.last().map_or(1, |n| n + 1);
        self.journal.to = Some(number);
        self.journal.step = Step::Build;
        journal::write(self.root.path(), &self.journal)?;
        for m in &self.members {
            if m.info.state_directory {
                let dir = self.root.path().join("state").join(m.info.id.name());
                std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            }
        }
        let started = std::time::Instant::now();
        generation::build(
            self.root.path(),
            number,
            &self.members,
            &self.options.secrets,
            disk::unix_now(),
        )?;
        tracing::debug!(elapsed = ?started.elapsed(), "built generation {number}");
        Ok(number)
    }

    fn already_active(&self) -> Result<bool, RootError> {
        Ok(self.root.active()?.is_some_and(|set| set.ids == self.ids))
    }

    /// Phase 3: one rename makes the new generation current; then old
    /// generations beyond the kept number are removed.
    pub fn switch(mut self) -> Result<Switched, RootError> {
        let previous = self.journal.from;
        let Some(number) = self.journal.to else {
            // Already active: nothing was built.
            journal::clear(self.root.path())?;
            return Ok(self.switched(previous.unwrap_or_default(), previous, false, vec![]));
        };
        self.journal.step = Step::Switch;
        journal::write(self.root.path(), &self.journal)?;
        failpoint::hit("switch-journaled");
        self.root.switch_to(number)?;
        self.journal.step = Step::Cleanup;
        journal::write(self.root.path(), &self.journal)?;
        let removed = self.root.collect_generations(self.root.keep())?;
        journal::clear(self.root.path())?;
        failpoint::hit("journal-cleared");
        Ok(self.switched(number, previous, true, removed))
    }

    fn switched(
        &self,
        generation: u64,
        previous: Option<u64>,
        changed: bool,
        removed: Vec<u64>,
    ) -> Switched {
        Switched {
            generation,
            previous,
            ids: self.ids.clone(),
            hash: set::set_hash(&self.ids),
            changed,
            fetched: self.fetched.clone(),
            removed_generations: removed,
        }
    }

    /// Gives up before the switch: undoes the journal at once.
    pub fn abort(self) -> Result<(), RootError> {
        self.root.recover().map(|_| ())
    }
}
