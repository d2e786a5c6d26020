//! Leader election over a `coordination.k8s.io/v1` Lease: only the holder
//! runs controllers. The decision is pure ([`decide`]); [`Elector`] reads and
//! writes the Lease with optimistic concurrency, so two candidates that race
//! for an expired lease cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

/// What a candidate should do with the lease it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No lease exists: create it.
    Create,
    /// The lease is free (expired or released): take it over.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it and it is fresh.
    Follow(String),
}

/// Decides from the lease's spec (if any), our identity and `now`.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    match renewed {
        _ if holder.is_empty() => Decision::Acquire,
        Some(at) if now.duration_since(at) <= duration => Decision::Follow(holder.to_owned()),
        _ => Decision::Acquire,
    }
}

/// Where and how long the lease is held.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This candidate's identity (pod name, or host and pid).
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub duration: Duration,
}

/// Campaigns for the lease and reports leadership on a watch channel.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl Elector {
    /// An elector for `config`.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    /// Runs forever: every third of the lease duration, reads the lease and
    /// acquires or renews it, sending `true` while we lead. A failed renewal
    /// that lasts past the lease duration sends `false`, so a leader cut off
    /// from the API server stops acting before another can take over.
    pub async fn run(self, leading: watch::Sender<bool>) {
        let tick = self.config.duration / 3;
        let mut last_success = tokio::time::Instant::now();
        loop {
            match self.try_once().await {
                Ok(lead) => {
                    last_success = tokio::time::Instant::now();
                    if *leading.borrow() != lead {
                        info!(identity = %self.config.identity, lead, "leadership changed");
                    }
                    leading.send_replace(lead);
                }
                Err(err) => {
                    warn!(error = %err, lease = %self.config.name, "cannot read or renew the leader lease");
                    if last_success.elapsed() >= self.config.duration - tick {
                        leading.send_replace(false);
                    }
                }
            }
            tokio::time::sleep(tick).await;
        }
    }

    /// One round: returns whether we lead afterwards.
    async fn try_once(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.config.name).await?;
        let decision = decide(
            existing.as_ref().and_then(|l| l.spec.as_ref()),
            &self.config.identity,
            now,
        );
        let write = match (decision, existing) {
            (Decision::Follow(_), _) => return Ok(false),
            (Decision::Create, _) => {
                self.api
                    .create(&PostParams::default(), &self.fresh(now, 0))
                    .await
            }
            (Decision::Renew, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                spec.renew_time = Some(MicroTime(now));
                spec.lease_duration_seconds = Some(self.duration_seconds());
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
            }
            (Decision::Acquire, Some(lease)) => {
                let transitions = lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.lease_transitions)
                    .unwrap_or(0)
                    + 1;
                let mut taken = self.fresh(now, transitions);
                taken.metadata.resource_version = lease.resource_version();
                self.api
                    .replace(&self.config.name, &PostParams::default(), &taken)
                    .await
            }
            (_, None) => {
                self.api
                    .create(&PostParams::default(), &self.fresh(now, 0))
                    .await
            }
        };
        match write {
            Ok(_) => Ok(true),
            // Another candidate wrote first: we follow until the next round.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Gives the lease up if we hold it (on shutdown, after the controllers
    /// have stopped), so that a standby takes over on its next round rather
    /// than after the lease expires. Returns whether we held it.
    pub async fn release(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(false);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        // The read's resourceVersion makes this a compare-and-swap: a lease
        // someone else took meanwhile is left alone.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.config.duration.as_secs()).unwrap_or(i32::MAX)
    }

    fn fresh(&self, now: Timestamp, transitions: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn lease(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            ..Default::default()
        }
    }

    #[test]
    fn candidates_decide_from_the_lease_and_the_clock() {
        let cases = [
            ("no lease is created", None, Decision::Create),
            (
                "our own lease is renewed",
                Some(lease("me", 90)),
                Decision::Renew,
            ),
            (
                "a fresh lease of another is followed",
                Some(lease("other", 90)),
                Decision::Follow("other".into()),
            ),
            (
                "an expired lease is taken over",
                Some(lease("other", 80)),
                Decision::Acquire,
            ),
            (
                "a released lease is taken over",
                Some(lease("", 99)),
                Decision::Acquire,
            ),
        ];
        for (name, spec, expected) in cases {
            assert_eq!(decide(spec.as_ref(), "me", at(100)), expected, "{name}");
        }
    }
}
