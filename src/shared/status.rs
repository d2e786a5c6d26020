//! Helpers for status writes shared by the controllers: merging observed
//! conditions, and one event per condition that changes status.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::warn;

use crate::api::conditions::{self, Observed};

/// Merges `observed` into `current` (see [`conditions::set`]) and returns the
/// conditions whose status changed, for events.
pub fn merge(
    current: &mut Vec<Condition>,
    observed: Vec<Observed<'_>>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let before = current.clone();
    for o in observed {
        conditions::set(current, o, generation, now);
    }
    current
        .iter()
        .filter(|c| conditions::find(&before, &c.type_).is_none_or(|b| b.status != c.status))
        .cloned()
        .collect()
}

/// Publishes one event per changed condition. Warnings for conditions that
/// are bad news when True (Degraded, Halted, Conflict).
pub async fn publish(recorder: &Recorder, reference: &ObjectReference, changed: &[Condition]) {
    for c in changed {
        let bad =
            matches!(c.type_.as_str(), "Degraded" | "Halted" | "Conflict") && c.status == "True";
        let event = Event {
            type_: if bad {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: c.reason.clone(),
            note: Some(format!("{}={}: {}", c.type_, c.status, c.message)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = recorder.publish(&event, reference).await {
            warn!(error = %err, "cannot publish an event");
        }
    }
}
