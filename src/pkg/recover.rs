//! Recovery: ending whatever an interrupted process left in flight.

use super::disk::{self, TMP_MARK};
use super::journal::{self, DiskFacts, Outcome, RecoveryReport};
use super::root::{Root, RootError, io_err, read_names};

impl Root {
    /// Finishes or undoes whatever the journal says was in flight, and
    /// removes every temporary file. Runs at every [`Root::open`].
    pub fn recover(&self) -> Result<RecoveryReport, RootError> {
        let journal = journal::read(self.path())?;
        let facts = DiskFacts {
            current: self.current(),
            generations: self.generations()?,
        };
        let plan = journal::decide(journal.as_ref(), &facts);
        let mut report = RecoveryReport {
            outcome: plan.outcome,
            removed_generations: plan.remove_generations.clone(),
            collected_generations: vec![],
            removed_temporaries: vec![],
        };
        for n in &plan.remove_generations {
            self.remove_generation(*n)?;
        }
        report.removed_temporaries = self.remove_temporaries()?;
        if plan.collect_garbage {
            report.collected_generations = self.collect_generations(self.keep())?;
        }
        if journal.is_some() {
            journal::clear(self.path())?;
        }
        if report.outcome != Outcome::Clean || !report.removed_temporaries.is_empty() {
            tracing::debug!(?report, "recovered {}", self.path().display());
        }
        Ok(report)
    }

    /// Every temporary name under the root, relative to it.
    pub fn temporaries(&self) -> Result<Vec<String>, RootError> {
        let mut out = Vec::new();
        for (dir, all) in [
            ("", false),
            ("generations", false),
            ("packages", false),
            ("downloads", true),
        ] {
            for name in read_names(&self.path().join(dir))? {
                if all || name.contains(TMP_MARK) {
                    out.push(if dir.is_empty() {
                        name
                    } else {
                        format!("{dir}/{name}")
                    });
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn remove_temporaries(&self) -> Result<Vec<String>, RootError> {
        let found = self.temporaries()?;
        for rel in &found {
            let path = self.path().join(rel);
            disk::remove_all(&path).map_err(io_err(&path))?;
        }
        Ok(found)
    }
}
