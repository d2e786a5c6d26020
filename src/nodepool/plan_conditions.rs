//! The conditions a plan reports: Ready, Scaling, Degraded.

use std::time::Duration;

use super::{Input, Launch, Notes, Recorded, State, age};
use crate::api::conditions::{Observed, types};

/// How long a `DrainForced` Degraded condition stays up after the forced
/// removal, so that people (and `kubectl wait`) get to see it.
const FORCED_NOTICE: Duration = Duration::from_secs(600);

pub(super) fn conditions(
    input: &Input<'_>,
    instances: &[Recorded],
    launch: Option<&Launch>,
    ready: usize,
    notes: &Notes,
) -> Vec<Observed<'static>> {
    let desired = input.pool.replicas;
    let removing = instances
        .iter()
        .filter(|i| matches!(i.state, State::Draining | State::Terminating))
        .count();
    let ready_c = if ready >= desired && removing == 0 && launch.is_none() {
        Observed::new(
            types::READY,
            true,
            "AllReady",
            format!("{ready} of {desired} nodes ready"),
        )
    } else {
        Observed::new(
            types::READY,
            false,
            "NotReady",
            format!("{ready} of {desired} nodes ready"),
        )
    };
    let scaling = match (launch, removing) {
        (_, _) if !notes.replaced.is_empty() => Observed::new(
            types::SCALING,
            true,
            "Replacing",
            format!(
                "replacing instances that did not join within {}s: {}",
                input.pool.join_timeout.as_secs(),
                notes.replaced.join(", ")
            ),
        ),
        (Some(l), _) => Observed::new(
            types::SCALING,
            true,
            "ScalingUp",
            format!("launching {} instance(s) towards {desired}", l.count),
        ),
        (None, n) if n > 0 => Observed::new(
            types::SCALING,
            true,
            "ScalingDown",
            format!("draining or terminating {n} instance(s) towards {desired}"),
        ),
        _ => Observed::new(
            types::SCALING,
            false,
            "Stable",
            format!("{desired} instance(s) as declared"),
        ),
    };
    vec![ready_c, scaling, degraded(input, notes)]
}

fn degraded(input: &Input<'_>, notes: &Notes) -> Observed<'static> {
    if !notes.forced.is_empty() {
        let msg = format!(
            "{}; removed anyway (drainTimeoutPolicy Force)",
            notes.forced.join("; ")
        );
        return Observed::new(types::DEGRADED, true, "DrainForced", msg);
    }
    if !notes.waiting.is_empty() {
        let msg = format!(
            "{}; waiting (drainTimeoutPolicy Wait)",
            notes.waiting.join("; ")
        );
        return Observed::new(types::DEGRADED, true, "DrainTimeout", msg);
    }
    let recent_force = crate::api::conditions::find(input.previous, types::DEGRADED)
        .filter(|c| c.status == "True" && c.reason == "DrainForced")
        .filter(|c| age(input.now, c.last_transition_time.0) < FORCED_NOTICE);
    match recent_force {
        Some(c) => Observed::new(types::DEGRADED, true, "DrainForced", c.message.clone()),
        None => Observed::new(types::DEGRADED, false, "AsExpected", "no drain is stuck"),
    }
}
