//! Builds a PackageSet's status from a plan. Pure.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;

use super::plan::Plan;
use crate::api::conditions::{Observed, types};
use crate::api::{PackageSet, PackageSetStatus};
use crate::shared::status::merge;

/// The Conflict condition: which matched nodes an older set owns.
pub fn conflict_condition(conflicts: &BTreeMap<String, String>) -> Observed<'static> {
    if conflicts.is_empty() {
        return Observed::new(
            types::CONFLICT,
            false,
            "NoConflict",
            "no matched node belongs to another set",
        );
    }
    let listed: Vec<String> = conflicts
        .iter()
        .take(10)
        .map(|(node, owner)| format!("{node} (owned by {owner})"))
        .collect();
    let more = conflicts.len().saturating_sub(listed.len());
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    Observed::new(
        types::CONFLICT,
        true,
        "NodeOwnedByOlderSet",
        format!(
            "left alone because an older PackageSet matches them: {}{tail}",
            listed.join(", ")
        ),
    )
}

/// The reason of a set whose repository has no index yet.
pub const REPOSITORY_NOT_READY: &str = "RepositoryNotReady";
/// The reason of a set whose ConfigBundle has rendered nothing yet.
pub const CONFIG_NOT_RENDERED: &str = "ConfigNotRendered";

/// A reason that only holds the rollout: what it waits for may come any
/// moment (a repository's index, a bundle's first render).
pub fn waiting(reason: &str) -> bool {
    reason == REPOSITORY_NOT_READY || reason == CONFIG_NOT_RENDERED
}

/// The conditions of a set that cannot be rolled. A repository that is not
/// ready yet only holds the rollout (it may sync any moment); an invalid
/// spec degrades the set until someone changes it.
pub fn invalid_conditions(reason: &'static str, problems: &[String]) -> Vec<Observed<'static>> {
    let message = problems.join("; ");
    let progressing = Observed::new(
        types::PROGRESSING,
        false,
        reason,
        format!("not rolling: {message}"),
    );
    if waiting(reason) {
        return vec![progressing];
    }
    vec![
        Observed::new(types::DEGRADED, true, reason, message),
        progressing,
    ]
}

/// The status to write, and the conditions whose status changed.
pub fn set_status(
    set: &PackageSet,
    hash: &str,
    plan: &Plan,
    observed: Vec<Observed<'_>>,
    now: Timestamp,
) -> (PackageSetStatus, Vec<Condition>) {
    let mut status = set.status.clone().unwrap_or_default();
    let changed = merge(
        &mut status.conditions,
        observed,
        set.metadata.generation,
        now,
    );
    let mut in_progress: Vec<String> = plan
        .in_progress
        .iter()
        .chain(&plan.start)
        .cloned()
        .collect();
    in_progress.sort();
    in_progress.dedup();
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    status.observed_generation = set.metadata.generation;
    status.set_hash = Some(hash.to_owned());
    status.desired_nodes = count(plan.counts.desired);
    status.updated_nodes = count(plan.counts.updated);
    status.ready_nodes = count(plan.counts.ready);
    status.failed_nodes = count(plan.counts.failed);
    status.in_progress_nodes = count(in_progress.len());
    status.nodes_in_progress = in_progress;
    (status, changed)
}
