//! Helpers for status writes shared by the controllers: merging observed
//! conditions, and one event per condition that changes status.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::warn;

use crate::api::conditions::{self, Observed};

/// Writes `status` as the whole status of `name` by server-side apply,
/// field manager [`super::MANAGER`] (forced: the operator owns status).
pub async fn apply_status<K>(
    api: &kube::Api<K>,
    name: &str,
    status: &impl serde::Serialize,
) -> Result<K, kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &kube::api::PatchParams::apply(super::MANAGER).force(),
        &kube::api::Patch::Apply(patch),
    )
    .await
}

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

/// Whether a condition is bad news, the one rule every controller's events
/// follow: a `Degraded`, `Halted` or `Conflict` condition that is True, a
/// `Valid` or `LayoutSolved` condition that is False, or any condition
/// whose reason says the spec is invalid, a dependency is unavailable or
/// another object conflicts.
pub fn is_bad_news(type_: &str, status: &str, reason: &str) -> bool {
    let bad_condition =
        matches!(type_, "Degraded" | "Halted" | "Conflict" | "QuotaExceeded") && status == "True";
    let bad_false = matches!(type_, "Valid" | "LayoutSolved" | "Admitted") && status == "False";
    let bad_reason = matches!(
        reason,
        "InvalidSpec" | "EtcdUnavailable" | "Conflict" | "Untrusted"
    );
    bad_condition || bad_false || bad_reason
}

/// One event per changed condition, a Warning when [`is_bad_news`]; the
/// one events helper of every controller.
pub async fn publish(recorder: &Recorder, reference: &ObjectReference, changed: &[Condition]) {
    for c in changed {
        publish_one(
            recorder, reference, &c.type_, &c.status, &c.reason, &c.message,
        )
        .await;
    }
}

/// The event of one condition change.
pub async fn publish_one(
    recorder: &Recorder,
    reference: &ObjectReference,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
) {
    let kind = if is_bad_news(type_, status, reason) {
        EventType::Warning
    } else {
        EventType::Normal
    };
    let text = format!("{type_}={status}: {message}");
    publish_event(recorder, reference, kind, reason, "Reconcile", &text).await;
}

/// One event about `reference`, its note cut to what the API server
/// accepts; a failure to publish is logged, never returned.
pub async fn publish_event(
    recorder: &Recorder,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    text: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note(text)),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(err) = recorder.publish(&event, reference).await {
        warn!(error = %err, "cannot publish an event");
    }
}

/// The most bytes of an event's note the API server accepts.
const NOTE_BYTES: usize = 1024;

/// `text` cut to [`NOTE_BYTES`] on a character boundary, marked when cut
/// (the whole message stays in the condition).
fn note(text: &str) -> String {
    if text.len() <= NOTE_BYTES {
        return text.to_owned();
    }
    const MORE: &str = " …(see the condition)";
    let mut end = NOTE_BYTES - MORE.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &text[..end])
}

#[cfg(test)]
mod note_tests {
    #[test]
    fn a_long_note_is_cut_on_a_character_boundary_to_what_the_api_server_takes() {
        assert_eq!(super::note("short"), "short");
        let long = "é".repeat(2000);
        let cut = super::note(&long);
        assert!(cut.len() <= super::NOTE_BYTES, "{}", cut.len());
        assert!(cut.ends_with("(see the condition)"));
    }
}

#[cfg(test)]
mod severity_tests {
    use super::is_bad_news;

    #[test]
    fn one_rule_says_which_condition_changes_are_warnings() {
        for (type_, status, reason) in [
            ("Degraded", "True", "ProviderTimeout"),
            ("Halted", "True", "FailureThreshold"),
            ("Conflict", "True", "NodeClaimed"),
            ("Valid", "False", "InvalidSpec"),
            ("Published", "False", "EtcdUnavailable"),
            ("Ready", "False", "Untrusted"),
            ("Valid", "False", "UnknownService"),
            ("LayoutSolved", "False", "Unsatisfiable"),
        ] {
            assert!(
                is_bad_news(type_, status, reason),
                "{type_}={status} {reason}"
            );
        }
        for (type_, status, reason) in [
            ("Degraded", "False", "AsExpected"),
            ("Halted", "False", "Running"),
            ("Available", "True", "RolledOut"),
            ("Progressing", "True", "Rolling"),
            ("Valid", "True", "Valid"),
            ("LayoutSolved", "True", "Solved"),
        ] {
            assert!(
                !is_bad_news(type_, status, reason),
                "{type_}={status} {reason}"
            );
        }
    }
}
