//! `journal.json`: what is in flight, and how `recover` ends it.
//!
//! The journal is written before anything changes the root and removed
//! when the change is complete. The recovery decision is a pure function
//! of the journal and a few facts about the disk.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::disk;
use super::id::PackageId;

/// The journal's file name under the root.
pub const FILE_NAME: &str = "journal.json";

/// Errors from reading or writing the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The journal file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not a journal.
    #[error("{path}: not a valid journal ({message}); move it aside and run `theseus pkg check`")]
    Corrupt {
        /// The journal file.
        path: String,
        /// The parse error.
        message: String,
    },
}

/// What operation is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Operation {
    /// Making a new set active: fetch, build a generation, switch.
    Activate,
    /// Switching back to an existing generation.
    Rollback,
}

/// How far the operation got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    /// Fetching and unpacking packages.
    Fetch,
    /// Building `generations/to`.
    Build,
    /// Renaming `current` to `generations/to`.
    Switch,
    /// Switched; removing old generations.
    Cleanup,
}

/// The contents of `journal.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Journal {
    /// The operation.
    pub operation: Operation,
    /// The target set.
    pub ids: Vec<PackageId>,
    /// The target set's hash.
    pub hash: String,
    /// The generation `current` pointed to when it started.
    pub from: Option<u64>,
    /// The generation it switches to, once known.
    pub to: Option<u64>,
    /// How far it got.
    pub step: Step,
    /// When it started (seconds since the epoch).
    pub started: u64,
}

/// Reads the journal under `root`, if there is one.
pub fn read(root: &Path) -> Result<Option<Journal>, JournalError> {
    let path = root.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io_err(&path, source)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| JournalError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

/// Writes the journal durably (temporary file, fsync, rename, fsync).
pub fn write(root: &Path, journal: &Journal) -> Result<(), JournalError> {
    let path = root.join(FILE_NAME);
    let bytes = serde_json::to_vec_pretty(journal).expect("a journal always serializes");
    disk::write_atomic(&path, &bytes).map_err(|e| io_err(&path, e))
}

/// Removes the journal durably.
pub fn clear(root: &Path) -> Result<(), JournalError> {
    let path = root.join(FILE_NAME);
    disk::remove_all(&path).map_err(|e| io_err(&path, e))?;
    disk::fsync_dir(root).map_err(|e| io_err(root, e))
}

fn io_err(path: &Path, source: std::io::Error) -> JournalError {
    JournalError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What recovery needs to know about the disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskFacts {
    /// The generation `current` resolves to.
    pub current: Option<u64>,
    /// The complete generations present.
    pub generations: Vec<u64>,
}

/// How recovery ends an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Nothing was in flight.
    Clean,
    /// The switch had happened: the new set stays.
    Finished,
    /// The switch had not happened: the old set stays.
    Undone,
}

/// What recovery does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPlan {
    /// How the operation ends.
    pub outcome: Outcome,
    /// Generations to delete (built but never switched to).
    pub remove_generations: Vec<u64>,
    /// Whether to remove old generations beyond the kept number.
    pub collect_garbage: bool,
}

/// Decides how to end whatever `journal` says was in flight. Temporary
/// files are always removed; this says what else happens.
///
/// The rule: the rename of `current` is the commit point. If `current`
/// already is the target, the operation is finished (old generations are
/// collected); otherwise it is undone, and a generation that an activation
/// built but never switched to is deleted.
pub fn decide(journal: Option<&Journal>, facts: &DiskFacts) -> RecoveryPlan {
    let Some(journal) = journal else {
        return RecoveryPlan {
            outcome: Outcome::Clean,
            remove_generations: vec![],
            collect_garbage: false,
        };
    };
    if journal.to.is_some() && journal.to == facts.current {
        return RecoveryPlan {
            outcome: Outcome::Finished,
            remove_generations: vec![],
            collect_garbage: true,
        };
    }
    let built_by_us = match (journal.operation, journal.to) {
        (Operation::Activate, Some(to))
            if facts.generations.contains(&to) && Some(to) != journal.from =>
        {
            vec![to]
        }
        _ => vec![],
    };
    RecoveryPlan {
        outcome: Outcome::Undone,
        remove_generations: built_by_us,
        collect_garbage: false,
    }
}

/// What [`Root::recover`](super::root::Root::recover) did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryReport {
    /// How the in-flight operation ended.
    pub outcome: Outcome,
    /// Generations deleted because they were built but never switched to.
    pub removed_generations: Vec<u64>,
    /// Generations removed by garbage collection after a finished switch.
    pub collected_generations: Vec<u64>,
    /// Temporary files and directories removed, relative to the root.
    pub removed_temporaries: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(operation: Operation, from: Option<u64>, to: Option<u64>, step: Step) -> Journal {
        Journal {
            operation,
            ids: vec!["a--1".parse().unwrap()],
            hash: "h".into(),
            from,
            to,
            step,
            started: 0,
        }
    }

    fn facts(current: Option<u64>, generations: &[u64]) -> DiskFacts {
        DiskFacts {
            current,
            generations: generations.to_vec(),
        }
    }

    #[test]
    fn recovery_finishes_after_the_switch_and_undoes_before_it() {
        use Operation::*;
        use Outcome::*;
        let cases = [
            (
                "no journal is clean",
                None,
                facts(Some(1), &[1]),
                Clean,
                vec![],
            ),
            (
                "an activation killed while fetching is undone",
                Some(journal(Activate, Some(1), None, Step::Fetch)),
                facts(Some(1), &[1]),
                Undone,
                vec![],
            ),
            (
                "a built but unswitched generation is removed",
                Some(journal(Activate, Some(1), Some(2), Step::Switch)),
                facts(Some(1), &[1, 2]),
                Undone,
                vec![2],
            ),
            (
                "a half-built generation that is not complete is left to the temp sweep",
                Some(journal(Activate, Some(1), Some(2), Step::Build)),
                facts(Some(1), &[1]),
                Undone,
                vec![],
            ),
            (
                "a switched activation is finished",
                Some(journal(Activate, Some(1), Some(2), Step::Switch)),
                facts(Some(2), &[1, 2]),
                Finished,
                vec![],
            ),
            (
                "a first activation killed before the switch is undone",
                Some(journal(Activate, None, Some(1), Step::Switch)),
                facts(None, &[1]),
                Undone,
                vec![1],
            ),
            (
                "a rollback before its rename keeps its target",
                Some(journal(Rollback, Some(2), Some(1), Step::Switch)),
                facts(Some(2), &[1, 2]),
                Undone,
                vec![],
            ),
            (
                "a rollback after its rename is finished",
                Some(journal(Rollback, Some(2), Some(1), Step::Switch)),
                facts(Some(1), &[1, 2]),
                Finished,
                vec![],
            ),
        ];
        for (name, journal, facts, outcome, removed) in cases {
            let plan = decide(journal.as_ref(), &facts);
            assert_eq!(plan.outcome, outcome, "{name}");
            assert_eq!(plan.remove_generations, removed, "{name}");
            assert_eq!(plan.collect_garbage, outcome == Finished, "{name}");
        }
    }
}
