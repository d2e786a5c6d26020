//! Clusters' leases (`Tenant.spec.lease`): a cluster lives `initialDays`
//! from its creation, or until the time its annotation
//! `theseus.dev/lease-extended-until` names (at most `maxDays` from its
//! creation). [`NOTICE`] before its lease ends it gets a Warning event
//! (and the annotation `theseus.dev/lease-warned-at`); past its end, and
//! warned at least [`NOTICE`] before, it is deleted — through its own
//! delete plan, as any deleted cluster.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::Lease;

/// The annotation a user sets to extend a cluster's lease: an RFC 3339
/// time, at most the tenant's `lease.maxDays` after the cluster's
/// creation.
pub const EXTENDED_ANNOTATION: &str = "theseus.dev/lease-extended-until";
/// The annotation the controller sets when it warned that the lease ends.
pub const WARNED_ANNOTATION: &str = "theseus.dev/lease-warned-at";
/// How long before the end of a lease its warning comes, and the least
/// time between the warning and the deletion.
pub const NOTICE: SignedDuration = SignedDuration::from_hours(1);

const DAY: i64 = 24 * 3600;

/// What to do with a cluster under a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing yet; the lease ends at `end`.
    Keep {
        /// The end of the lease.
        end: Timestamp,
    },
    /// Warn that the lease ends at `end`.
    Warn {
        /// The end of the lease.
        end: Timestamp,
        /// Why the extension asked for was not taken, if it was not.
        note: Option<String>,
    },
    /// The lease ended at `end` and the warning was given: delete.
    Delete {
        /// The end of the lease.
        end: Timestamp,
    },
}

/// The end of a lease: `initialDays` after `created`, or the extension
/// asked for, capped at `maxDays` after `created`. With a note when the
/// extension was not taken as asked.
pub fn end(
    created: Timestamp,
    lease: &Lease,
    extended: Option<&str>,
) -> (Timestamp, Option<String>) {
    let days = |d: i32| SignedDuration::from_secs(i64::from(d.max(1)) * DAY);
    let initial = created + days(lease.initial_days);
    let max = created
        + days(
            lease
                .max_days
                .unwrap_or(lease.initial_days)
                .max(lease.initial_days),
        );
    let Some(asked) = extended else {
        return (initial, None);
    };
    match asked.parse::<Timestamp>() {
        Ok(t) if t <= max => (initial.max(t), None),
        Ok(t) => (
            max,
            Some(format!(
                "the extension to {t} is past the tenant's maxDays; the lease ends at {max}"
            )),
        ),
        Err(e) => (
            initial,
            Some(format!(
                "{EXTENDED_ANNOTATION} {asked:?} is not an RFC 3339 time ({e}); the lease ends at {initial}"
            )),
        ),
    }
}

/// What the lease asks for now: warned at `warned` (if ever).
pub fn verdict(
    created: Timestamp,
    lease: &Lease,
    extended: Option<&str>,
    warned: Option<&str>,
    now: Timestamp,
) -> Verdict {
    let (end, note) = end(created, lease, extended);
    // A warning counts for this end only: one given before an extension
    // moved the end does not.
    let warned = warned
        .and_then(|w| w.parse::<Timestamp>().ok())
        .filter(|w| *w >= end - NOTICE - NOTICE);
    if now < end - NOTICE {
        return Verdict::Keep { end };
    }
    match warned {
        Some(w) if now >= end && now >= w + NOTICE => Verdict::Delete { end },
        Some(_) => Verdict::Keep { end },
        None => Verdict::Warn { end, note },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn lease(initial: i32, max: Option<i32>) -> Lease {
        Lease {
            initial_days: initial,
            max_days: max,
        }
    }

    #[test]
    fn a_lease_warns_an_hour_before_its_end_and_deletes_after_it() {
        let created = at("2026-12-01T00:00:00Z");
        let l = lease(2, None);
        let end = at("2026-12-03T00:00:00Z");
        assert_eq!(
            verdict(created, &l, None, None, at("2026-12-02T22:00:00Z")),
            Verdict::Keep { end }
        );
        assert_eq!(
            verdict(created, &l, None, None, at("2026-12-02T23:00:00Z")),
            Verdict::Warn { end, note: None }
        );
        let warned = Some("2026-12-02T23:00:00Z");
        assert_eq!(
            verdict(created, &l, None, warned, at("2026-12-02T23:30:00Z")),
            Verdict::Keep { end },
            "warned, not yet ended"
        );
        assert_eq!(
            verdict(created, &l, None, warned, at("2026-12-03T00:00:00Z")),
            Verdict::Delete { end }
        );
    }

    #[test]
    fn a_cluster_found_past_its_lease_unwarned_is_warned_and_given_the_notice() {
        let created = at("2026-12-01T00:00:00Z");
        let l = lease(1, None);
        let late = at("2026-12-05T00:00:00Z");
        assert!(matches!(
            verdict(created, &l, None, None, late),
            Verdict::Warn { .. }
        ));
        let warned = Some("2026-12-05T00:00:00Z");
        assert!(matches!(
            verdict(created, &l, None, warned, at("2026-12-05T00:30:00Z")),
            Verdict::Keep { .. }
        ));
        assert!(matches!(
            verdict(created, &l, None, warned, at("2026-12-05T01:00:00Z")),
            Verdict::Delete { .. }
        ));
    }

    #[test]
    fn an_extension_moves_the_end_up_to_max_days_and_a_bad_one_is_named() {
        let created = at("2026-12-01T00:00:00Z");
        let l = lease(2, Some(5));
        let (end1, note) = end(created, &l, Some("2026-12-04T12:00:00Z"));
        assert_eq!((end1, note), (at("2026-12-04T12:00:00Z"), None));
        let (capped, note) = end(created, &l, Some("2026-12-30T00:00:00Z"));
        assert_eq!(capped, at("2026-12-06T00:00:00Z"));
        assert!(note.unwrap().contains("past the tenant's maxDays"));
        let (initial, note) = end(created, &l, Some("next week"));
        assert_eq!(initial, at("2026-12-03T00:00:00Z"));
        assert!(note.unwrap().contains("is not an RFC 3339 time"));
        // A warning given for the old end does not count for the new one.
        let warned = Some("2026-12-02T23:00:00Z");
        assert!(matches!(
            verdict(
                created,
                &l,
                Some("2026-12-04T12:00:00Z"),
                warned,
                at("2026-12-04T11:30:00Z")
            ),
            Verdict::Warn { .. }
        ));
    }
}
