//! A ServiceGroup's status, pure: from what the controller observed (the
//! Deployment, the publisher's report, a conflict, an invalid spec) and
//! `now` to the status to write and the condition changes worth an event.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;

use crate::api::ServiceGroupStatus;
use crate::api::conditions::{self, Observed, Status, types};

/// What the publisher last did for a group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// The group's key prefix, e.g. `/services/web/canary.eu/`.
    pub path: String,
    /// Containers it holds.
    pub containers: usize,
    /// The last error, when the last attempt failed.
    pub error: Option<String>,
}

/// Why a group is not run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// The spec cannot be published (e.g. labels too long together).
    Invalid(String),
    /// Another, older ServiceGroup (`namespace/name`) owns the same path.
    Conflict {
        /// The path, `SERVICE/GROUP`.
        path: String,
        /// The owner, `namespace/name`.
        owner: String,
    },
}

/// Everything the status is computed from.
#[derive(Clone, Debug, Default)]
pub struct Observation<'a> {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `spec.replicas`.
    pub desired: i32,
    /// The encoded group, when valid.
    pub group: Option<String>,
    /// Why the group is not run, if it is not.
    pub blocked: Option<Blocked>,
    /// The group's Deployment, once it exists.
    pub deployment: Option<&'a Deployment>,
    /// The publisher's report, once it published.
    pub published: Option<&'a Published>,
}

/// A condition whose status or reason changed: worth an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The condition type.
    pub type_: String,
    /// Its new status.
    pub status: String,
    /// Its new reason.
    pub reason: String,
    /// Its message.
    pub message: String,
}

/// The next status and the condition transitions since `previous`.
pub fn next(
    previous: &ServiceGroupStatus,
    obs: &Observation<'_>,
    now: Timestamp,
) -> (ServiceGroupStatus, Vec<Transition>) {
    let mut status = previous.clone();
    status.observed_generation = obs.generation;
    status.group = obs.group.clone();
    let dep = obs.deployment.and_then(|d| d.status.as_ref());
    status.replicas = dep.and_then(|s| s.replicas).unwrap_or(0);
    status.ready_replicas = dep.and_then(|s| s.ready_replicas).unwrap_or(0);
    if let Some(published) = obs.published {
        status.published_containers = published.containers as i32;
        status.etcd_path = Some(published.path.clone());
    }
    let observed = match &obs.blocked {
        Some(blocked) => blocked_conditions(blocked),
        None => running_conditions(obs),
    };
    let mut transitions = Vec::new();
    for o in observed {
        let before = conditions::find(&status.conditions, o.type_)
            .map(|c| (c.status.clone(), c.reason.clone()));
        let after = (o.status.as_str().to_owned(), o.reason.to_owned());
        let message = o.message.clone();
        let type_ = o.type_.to_owned();
        conditions::set(&mut status.conditions, o, obs.generation, now);
        if before.as_ref() != Some(&after) {
            transitions.push(Transition {
                type_,
                status: after.0,
                reason: after.1,
                message,
            });
        }
    }
    (status, transitions)
}

fn blocked_conditions(blocked: &Blocked) -> Vec<Observed<'static>> {
    let (reason, message, conflict) = match blocked {
        Blocked::Invalid(why) => ("InvalidSpec", why.clone(), None),
        Blocked::Conflict { path, owner } => (
            "Conflict",
            format!("{path} is already published by {owner}; change spec.service or spec.labels"),
            Some(owner),
        ),
    };
    let mut out = vec![
        Observed::new(types::AVAILABLE, false, reason, message.clone()),
        Observed::new(types::PROGRESSING, false, reason, message.clone()),
        Observed::new(types::PUBLISHED, false, reason, message.clone()),
    ];
    if conflict.is_some() {
        out.push(Observed::new(types::CONFLICT, true, "PathTaken", message));
    }
    out
}

fn running_conditions(obs: &Observation<'_>) -> Vec<Observed<'static>> {
    let dep = obs.deployment.and_then(|d| d.status.as_ref());
    let desired = obs.desired;
    let count = |f: fn(&k8s_openapi::api::apps::v1::DeploymentStatus) -> Option<i32>| {
        dep.and_then(f).unwrap_or(0)
    };
    let ready = count(|s| s.ready_replicas);
    let available = count(|s| s.available_replicas);
    let updated = count(|s| s.updated_replicas);
    let total = count(|s| s.replicas);
    let dep_generation = obs.deployment.and_then(|d| d.metadata.generation);
    let caught_up = dep.and_then(|s| s.observed_generation) >= dep_generation;

    let available_cond = if available >= desired {
        Observed::new(
            types::AVAILABLE,
            true,
            "MinimumReplicasAvailable",
            format!("{available} of {desired} containers available"),
        )
    } else {
        Observed::new(
            types::AVAILABLE,
            false,
            "ReplicasUnavailable",
            format!("{available} of {desired} containers available"),
        )
    };
    let complete = obs.deployment.is_some()
        && caught_up
        && updated == desired
        && total == desired
        && available == desired;
    let progressing = if complete {
        Observed::new(
            types::PROGRESSING,
            false,
            "RolloutComplete",
            format!("{desired} containers up to date"),
        )
    } else {
        Observed::new(
            types::PROGRESSING,
            true,
            "RollingOut",
            format!("{updated} of {desired} updated, {ready} ready"),
        )
    };
    vec![
        available_cond,
        progressing,
        published_condition(obs.published, ready),
        Observed::new(
            types::CONFLICT,
            false,
            "PathOwned",
            "the group owns its path",
        ),
    ]
}

fn published_condition(published: Option<&Published>, ready: i32) -> Observed<'static> {
    match published {
        None => Observed::new(
            types::PUBLISHED,
            Status::Unknown,
            "Pending",
            "not published yet",
        ),
        Some(Published {
            error: Some(error), ..
        }) => Observed::new(types::PUBLISHED, false, "EtcdUnavailable", error.clone()),
        Some(p) if p.containers as i32 == ready => Observed::new(
            types::PUBLISHED,
            true,
            "Published",
            format!(
                "{} ready containers published under {}",
                p.containers, p.path
            ),
        ),
        Some(p) => Observed::new(
            types::PUBLISHED,
            false,
            "Publishing",
            format!("{} of {ready} ready containers published", p.containers),
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn mk_deployment(replicas: i32, ready: i32, updated: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": { "name": "web", "generation": 2 },
            "status": { "observedGeneration": 2, "replicas": replicas, "readyReplicas": ready,
                        "availableReplicas": ready, "updatedReplicas": updated }
        }))
        .unwrap()
    }

    fn condition(status: &ServiceGroupStatus, type_: &str) -> (String, String) {
        let c = conditions::find(&status.conditions, type_).expect(type_);
        (c.status.clone(), c.reason.clone())
    }

    fn published(containers: usize, error: Option<&str>) -> Published {
        Published {
            path: "/services/web/default/".into(),
            containers,
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn conditions_follow_the_deployment_and_the_publisher() {
        let done = mk_deployment(5, 5, 5);
        let half = mk_deployment(5, 2, 5);
        let all = published(5, None);
        let some = published(2, None);
        let failing = published(5, Some("etcd down"));
        let cases = [
            (
                "a complete rollout, fully published",
                &done,
                &all,
                ("True", "MinimumReplicasAvailable"),
                ("False", "RolloutComplete"),
                ("True", "Published"),
            ),
            (
                "a rollout under way",
                &half,
                &some,
                ("False", "ReplicasUnavailable"),
                ("True", "RollingOut"),
                ("True", "Published"),
            ),
            (
                "ready containers not yet published",
                &done,
                &some,
                ("True", "MinimumReplicasAvailable"),
                ("False", "RolloutComplete"),
                ("False", "Publishing"),
            ),
            (
                "etcd failing",
                &done,
                &failing,
                ("True", "MinimumReplicasAvailable"),
                ("False", "RolloutComplete"),
                ("False", "EtcdUnavailable"),
            ),
        ];
        for (name, dep, publ, available, progressing, published_) in cases {
            let obs = Observation {
                generation: Some(1),
                desired: 5,
                group: Some("default".into()),
                deployment: Some(dep),
                published: Some(publ),
                ..Observation::default()
            };
            let (status, _) = next(&ServiceGroupStatus::default(), &obs, at(10));
            let s = |(a, b): (&str, &str)| (a.to_owned(), b.to_owned());
            assert_eq!(condition(&status, types::AVAILABLE), s(available), "{name}");
            assert_eq!(
                condition(&status, types::PROGRESSING),
                s(progressing),
                "{name}"
            );
            assert_eq!(
                condition(&status, types::PUBLISHED),
                s(published_),
                "{name}"
            );
            assert_eq!(condition(&status, types::CONFLICT).0, "False", "{name}");
        }
    }

    #[test]
    fn a_conflicting_group_says_who_owns_the_path() {
        let obs = Observation {
            desired: 3,
            blocked: Some(Blocked::Conflict {
                path: "web/eu".into(),
                owner: "a/older".into(),
            }),
            ..Observation::default()
        };
        let (status, transitions) = next(&ServiceGroupStatus::default(), &obs, at(1));
        let conflict = conditions::find(&status.conditions, types::CONFLICT).unwrap();
        assert_eq!(conflict.status, "True");
        assert!(conflict.message.contains("a/older"));
        assert_eq!(condition(&status, types::AVAILABLE).1, "Conflict");
        assert_eq!(transitions.len(), 4);
    }

    #[test]
    fn only_a_changed_status_or_reason_is_a_transition_worth_an_event() {
        let dep = mk_deployment(5, 5, 5);
        let publ = published(5, None);
        let obs = Observation {
            desired: 5,
            deployment: Some(&dep),
            published: Some(&publ),
            ..Observation::default()
        };
        let (first, transitions) = next(&ServiceGroupStatus::default(), &obs, at(1));
        assert_eq!(transitions.len(), 4);
        let (second, transitions) = next(&first, &obs, at(2));
        assert!(transitions.is_empty());
        assert_eq!(first, second);
    }

    #[test]
    fn counts_and_path_come_from_the_deployment_and_the_publisher() {
        let dep = mk_deployment(4, 3, 4);
        let publ = published(3, None);
        let obs = Observation {
            desired: 4,
            deployment: Some(&dep),
            published: Some(&publ),
            ..Observation::default()
        };
        let (status, _) = next(&ServiceGroupStatus::default(), &obs, at(1));
        assert_eq!((status.replicas, status.ready_replicas), (4, 3));
        assert_eq!(status.published_containers, 3);
        assert_eq!(status.etcd_path.as_deref(), Some("/services/web/default/"));
    }
}
