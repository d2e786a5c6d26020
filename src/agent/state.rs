//! The agent's decisions as pure functions: given the target, the active set
//! and the last failure, what to do next, and whether the node is Ready.

/// What the agent knows when it decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts<'a> {
    /// `spec.target.setHash`, if the operator set a target.
    pub target: Option<&'a str>,
    /// The hash of the active set on disk (`current/set.json`).
    pub active: Option<&'a str>,
    /// `status.failedHash`: the last target that failed.
    pub failed: Option<&'a str>,
    /// A set the agent switched to but never finished verifying (it died
    /// while Verifying); from the agent's note under the root.
    pub unverified: Option<&'a str>,
}

/// The next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// No target: keep the active set's services running.
    Idle,
    /// The target is active and verified: keep it running, report Active.
    InSync,
    /// The target is active but its verification was interrupted: check
    /// health again, rolling back on failure.
    ResumeVerify,
    /// The target failed before: wait until the operator changes it.
    HoldFailed,
    /// Switch to the target.
    Activate,
}

/// Decides the next step from plain facts.
pub fn decide(facts: Facts<'_>) -> Action {
    let Some(target) = facts.target else {
        return Action::Idle;
    };
    if facts.active == Some(target) {
        if facts.unverified == Some(target) {
            Action::ResumeVerify
        } else {
            Action::InSync
        }
    } else if facts.failed == Some(target) {
        Action::HoldFailed
    } else {
        Action::Activate
    }
}

/// The Ready condition: status, reason, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Whether the node is Ready.
    pub ready: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

/// Ready is True iff the active set is the target and healthy, or there is
/// no target and the active set is healthy.
pub fn readiness(target: Option<&str>, active: Option<&str>, healthy: bool) -> Readiness {
    let r = |ready, reason, message: String| Readiness {
        ready,
        reason,
        message,
    };
    match (target, active) {
        (_, None) => r(false, "NoActiveSet", "no package set is active".into()),
        (Some(t), Some(a)) if t != a => r(
            false,
            "TargetNotActive",
            format!("active set {a} is not the target {t}"),
        ),
        (_, Some(a)) if !healthy => r(
            false,
            "Unhealthy",
            format!("the services of set {a} are not healthy"),
        ),
        (Some(t), Some(_)) => r(
            true,
            "TargetActive",
            format!("target set {t} is active and healthy"),
        ),
        (None, Some(a)) => r(
            true,
            "ActiveSetHealthy",
            format!("set {a} is active and healthy (no target)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(
        target: Option<&'a str>,
        active: Option<&'a str>,
        failed: Option<&'a str>,
        unverified: Option<&'a str>,
    ) -> Facts<'a> {
        Facts {
            target,
            active,
            failed,
            unverified,
        }
    }

    #[test]
    fn the_next_action_follows_target_active_and_failure() {
        let cases: &[(&str, Facts<'_>, Action)] = &[
            (
                "no target and nothing active is idle",
                facts(None, None, None, None),
                Action::Idle,
            ),
            (
                "no target with an active set is idle",
                facts(None, Some("a"), None, None),
                Action::Idle,
            ),
            (
                "a target on an empty node is activated",
                facts(Some("a"), None, None, None),
                Action::Activate,
            ),
            (
                "a target equal to the active set is in sync",
                facts(Some("a"), Some("a"), None, None),
                Action::InSync,
            ),
            (
                "a new target is activated",
                facts(Some("b"), Some("a"), None, None),
                Action::Activate,
            ),
            (
                "a target that failed is not retried",
                facts(Some("b"), Some("a"), Some("b"), None),
                Action::HoldFailed,
            ),
            (
                "a changed target after a failure is activated",
                facts(Some("c"), Some("a"), Some("b"), None),
                Action::Activate,
            ),
            (
                "an interrupted verification is resumed",
                facts(Some("b"), Some("b"), None, Some("b")),
                Action::ResumeVerify,
            ),
            (
                "an unverified set that is no longer the target is replaced",
                facts(Some("c"), Some("b"), None, Some("b")),
                Action::Activate,
            ),
            (
                "a failed hash that became active again (rollback failed over) is in sync",
                facts(Some("b"), Some("b"), Some("b"), None),
                Action::InSync,
            ),
        ];
        for (name, facts, expected) in cases {
            assert_eq!(decide(*facts), *expected, "{name}");
        }
    }

    /// name, target, active, healthy → ready, reason
    type ReadyCase = (
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        bool,
        bool,
        &'static str,
    );

    #[test]
    fn ready_needs_the_target_active_and_healthy() {
        let cases: &[ReadyCase] = &[
            (
                "target active and healthy is ready",
                Some("a"),
                Some("a"),
                true,
                true,
                "TargetActive",
            ),
            (
                "target active but unhealthy is not ready",
                Some("a"),
                Some("a"),
                false,
                false,
                "Unhealthy",
            ),
            (
                "another set active is not ready",
                Some("b"),
                Some("a"),
                true,
                false,
                "TargetNotActive",
            ),
            (
                "no target and a healthy set is ready",
                None,
                Some("a"),
                true,
                true,
                "ActiveSetHealthy",
            ),
            (
                "no active set is not ready",
                None,
                None,
                true,
                false,
                "NoActiveSet",
            ),
        ];
        for (name, target, active, healthy, ready, reason) in cases {
            let r = readiness(*target, *active, *healthy);
            assert_eq!(r.ready, *ready, "{name}");
            assert_eq!(r.reason, *reason, "{name}");
        }
    }
}
