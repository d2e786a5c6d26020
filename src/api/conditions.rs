//! Status conditions with Kubernetes semantics.
//!
//! Every Theseus kind reports its state as a list of
//! [`Condition`]s, one per type, that `kubectl wait --for=condition=…`
//! understands. The helpers here are pure: the caller passes `now`, so the
//! same inputs always give the same list, and tests need no clock.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The status of a condition, as the API conventions spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// The controller cannot tell yet.
    Unknown,
}

impl Status {
    /// The string stored in `status.conditions[].status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

impl From<bool> for Status {
    fn from(value: bool) -> Self {
        if value { Status::True } else { Status::False }
    }
}

/// What a controller observed for one condition type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed<'a> {
    /// The condition type, e.g. `Available`.
    pub type_: &'a str,
    /// Whether it holds.
    pub status: Status,
    /// A CamelCase reason, e.g. `RolloutComplete`.
    pub reason: &'a str,
    /// A sentence for people.
    pub message: String,
}

impl<'a> Observed<'a> {
    /// A condition of `type_` with the given status, reason and message.
    pub fn new(
        type_: &'a str,
        status: impl Into<Status>,
        reason: &'a str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status: status.into(),
            reason,
            message: message.into(),
        }
    }
}

/// Sets one condition in `conditions`, keeping one entry per type.
///
/// `lastTransitionTime` changes only when the status changes (a new type
/// counts as a change); reason, message and `observedGeneration` are always
/// brought up to date. Returns whether anything in the list changed, so that
/// a controller writes status (and emits an event) only when it must.
pub fn set(
    conditions: &mut Vec<Condition>,
    observed: Observed<'_>,
    generation: Option<i64>,
    now: Timestamp,
) -> bool {
    let status = observed.status.as_str();
    match conditions.iter_mut().find(|c| c.type_ == observed.type_) {
        Some(existing) => {
            let before = existing.clone();
            if existing.status != status {
                existing.status = status.to_owned();
                existing.last_transition_time = Time(now);
            }
            existing.reason = observed.reason.to_owned();
            existing.message = observed.message;
            existing.observed_generation = generation;
            *existing != before
        }
        None => {
            conditions.push(Condition {
                type_: observed.type_.to_owned(),
                status: status.to_owned(),
                reason: observed.reason.to_owned(),
                message: observed.message,
                observed_generation: generation,
                last_transition_time: Time(now),
            });
            true
        }
    }
}

/// The condition of `type_`, if present.
pub fn find<'c>(conditions: &'c [Condition], type_: &str) -> Option<&'c Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == Status::True.as_str())
}

/// The names of the condition types every Theseus kind uses.
pub mod types {
    /// The object serves its purpose (all nodes on the set, all replicas ready).
    pub const AVAILABLE: &str = "Available";
    /// Work towards the spec is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Something failed and needs attention.
    pub const DEGRADED: &str = "Degraded";
    /// Rollouts are stopped until someone resumes them.
    pub const HALTED: &str = "Halted";
    /// The object is ready for use (repositories, node installs, pools).
    pub const READY: &str = "Ready";
    /// The discovery tree reflects the group.
    pub const PUBLISHED: &str = "Published";
    /// The pool is adding or removing instances.
    pub const SCALING: &str = "Scaling";
    /// The object claims something another object already owns.
    pub const CONFLICT: &str = "Conflict";
    /// The object is well-formed and names only what exists.
    pub const VALID: &str = "Valid";
    /// A layout of nodes and services was found for the cluster.
    pub const LAYOUT_SOLVED: &str = "LayoutSolved";
    /// The object's usage is reserved in its tenant's quotas (objects in
    /// a tenant's namespaces only).
    pub const ADMITTED: &str = "Admitted";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    struct Case {
        name: &'static str,
        before: Vec<(&'static str, &'static str, i64)>,
        set: (&'static str, bool, &'static str),
        generation: Option<i64>,
        now: i64,
        changed: bool,
        after_status: &'static str,
        after_time: i64,
        after_len: usize,
    }

    #[test]
    fn set_follows_kubernetes_semantics() {
        let cases = [
            Case {
                name: "a new condition is added with now as its transition time",
                before: vec![],
                set: ("Available", true, "RolloutComplete"),
                generation: Some(1),
                now: 100,
                changed: true,
                after_status: "True",
                after_time: 100,
                after_len: 1,
            },
            Case {
                name: "the same status again keeps the transition time",
                before: vec![("Available", "True", 100)],
                set: ("Available", true, "RolloutComplete"),
                generation: Some(1),
                now: 200,
                changed: true, // the reason differs from the fixture's
                after_status: "True",
                after_time: 100,
                after_len: 1,
            },
            Case {
                name: "a changed status moves the transition time",
                before: vec![("Available", "True", 100)],
                set: ("Available", false, "NodesUpdating"),
                generation: Some(2),
                now: 300,
                changed: true,
                after_status: "False",
                after_time: 300,
                after_len: 1,
            },
            Case {
                name: "other types are left alone and one entry per type is kept",
                before: vec![("Halted", "False", 50), ("Available", "False", 60)],
                set: ("Available", true, "RolloutComplete"),
                generation: Some(3),
                now: 400,
                changed: true,
                after_status: "True",
                after_time: 400,
                after_len: 2,
            },
        ];
        for case in cases {
            let mut conditions: Vec<Condition> = case
                .before
                .iter()
                .map(|(t, s, time)| Condition {
                    type_: (*t).into(),
                    status: (*s).into(),
                    reason: "Fixture".into(),
                    message: String::new(),
                    observed_generation: Some(1),
                    last_transition_time: Time(at(*time)),
                })
                .collect();
            let (type_, status, reason) = case.set;
            let changed = set(
                &mut conditions,
                Observed::new(type_, status, reason, "message"),
                case.generation,
                at(case.now),
            );
            assert_eq!(changed, case.changed, "{}", case.name);
            assert_eq!(conditions.len(), case.after_len, "{}", case.name);
            let c = find(&conditions, type_).expect(case.name);
            assert_eq!(c.status, case.after_status, "{}", case.name);
            assert_eq!(
                c.last_transition_time,
                Time(at(case.after_time)),
                "{}",
                case.name
            );
            assert_eq!(c.observed_generation, case.generation, "{}", case.name);
            assert_eq!(c.reason, reason, "{}", case.name);
        }
    }

    #[test]
    fn setting_an_identical_condition_reports_no_change() {
        let mut conditions = Vec::new();
        let observed = || Observed::new("Ready", true, "Synced", "index version 3");
        assert!(set(&mut conditions, observed(), Some(4), at(10)));
        assert!(!set(&mut conditions, observed(), Some(4), at(20)));
        assert_eq!(conditions[0].last_transition_time, Time(at(10)));
    }

    #[test]
    fn a_new_generation_is_recorded_even_when_nothing_else_changes() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            Observed::new("Ready", true, "Synced", "ok"),
            Some(1),
            at(10),
        );
        assert!(set(
            &mut conditions,
            Observed::new("Ready", true, "Synced", "ok"),
            Some(2),
            at(20)
        ));
        assert_eq!(conditions[0].observed_generation, Some(2));
        assert_eq!(conditions[0].last_transition_time, Time(at(10)));
    }

    #[test]
    fn is_true_reads_only_the_named_type() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            Observed::new("Halted", true, "Halted", "sla"),
            None,
            at(1),
        );
        assert!(is_true(&conditions, "Halted"));
        assert!(!is_true(&conditions, "Available"));
    }
}
