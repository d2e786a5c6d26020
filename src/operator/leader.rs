//! Leader election over a `coordination.k8s.io/v1` Lease: only the holder
//! runs controllers. The decision is pure ([`decide`]); [`Elector`] reads and
//! writes the Lease with optimistic concurrency, so two candidates that race
//! for an expired lease cannot both win.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::time::Instant;
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

/// This replica's right to act as leader, by the local monotonic clock: it
/// lasts from a successful renewal until the lease, as written then, could
/// be taken by another candidate (less a margin for clock differences). A
/// process frozen past that point finds it expired when it resumes, before
/// any of its writes go out (see [`crate::operator::fence`]).
#[derive(Clone, Debug, Default)]
pub struct Leadership {
    until: Arc<Mutex<Option<Instant>>>,
}

impl Leadership {
    /// Whether we may act as leader now.
    pub fn is_valid(&self) -> bool {
        self.until().is_some_and(|until| Instant::now() < until)
    }

    /// When the right to lead ends, if we hold it.
    pub fn until(&self) -> Option<Instant> {
        *self.until.lock().expect("leadership lock")
    }

    fn hold_until(&self, until: Instant) {
        *self.until.lock().expect("leadership lock") = Some(until);
    }

    fn end(&self) {
        *self.until.lock().expect("leadership lock") = None;
    }

    /// Holds the right to lead for `valid` from now (tests only).
    #[cfg(test)]
    pub(crate) fn hold_for_test(&self, valid: Duration) {
        self.hold_until(Instant::now() + valid);
    }
}

/// Campaigns for the lease and reports leadership on a watch channel.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    leadership: Leadership,
}

impl Elector {
    /// An elector for `config`.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            leadership: Leadership::default(),
        }
    }

    /// The right to lead this elector grants and takes away.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// How long after the start of a successful round we may act: the lease
    /// duration less a margin (a fifth of it, at least half a second) for
    /// the clocks of the candidates, which compare the lease's renew time
    /// with their own.
    fn valid_for(&self) -> Duration {
        let margin = (self.config.duration / 5).max(Duration::from_millis(500));
        self.config.duration.saturating_sub(margin)
    }

    /// Runs forever: every third of the lease duration, reads the lease and
    /// acquires or renews it, sending `true` while we lead. Each round may
    /// take at most that third; a round that hangs is abandoned. The moment
    /// the time since the last successful renewal reaches [`Self::valid_for`]
    /// (even in the middle of a hung round) it sends `false`, so a leader cut
    /// off from the API server stops acting before another can take over.
    pub async fn run(self, leading: watch::Sender<bool>) {
        let tick = self.config.duration / 3;
        loop {
            let started = Instant::now();
            let round = tokio::time::timeout(tick, self.try_once());
            match self.while_valid(round, &leading).await {
                Ok(Ok(true)) => {
                    self.leadership.hold_until(started + self.valid_for());
                    self.announce(&leading, true);
                }
                Ok(Ok(false)) => {
                    self.leadership.end();
                    self.announce(&leading, false);
                }
                Ok(Err(err)) => {
                    warn!(error = %err, lease = %self.config.name, "cannot read or renew the leader lease");
                }
                Err(_) => {
                    warn!(lease = %self.config.name, "reading or renewing the leader lease took over {tick:?}; abandoned the attempt");
                }
            }
            let next = tokio::time::sleep_until(started + tick);
            self.while_valid(next, &leading).await;
        }
    }

    /// Awaits `work`; should our right to lead expire meanwhile, steps down
    /// at that moment rather than when `work` is done.
    async fn while_valid<F: Future>(&self, work: F, leading: &watch::Sender<bool>) -> F::Output {
        tokio::pin!(work);
        loop {
            let expiry = self.leadership.until();
            tokio::select! {
                out = &mut work => return out,
                () = sleep_until_or_never(expiry) => {
                    warn!(identity = %self.config.identity, "no lease renewal for {:?}: stepping down", self.valid_for());
                    self.leadership.end();
                    self.announce(leading, false);
                }
            }
        }
    }

    fn announce(&self, leading: &watch::Sender<bool>, lead: bool) {
        if *leading.borrow() != lead {
            info!(identity = %self.config.identity, lead, "leadership changed");
        }
        leading.send_replace(lead);
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
        self.leadership.end();
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

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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

    /// An API server that answers the first lease read (none) and create,
    /// then never answers again: a leader cut off mid-request.
    fn answers_twice_then_hangs() -> Client {
        use axum::http::{Request, Response, StatusCode};
        use kube::client::Body;
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let service = tower::service_fn(move |request: Request<Body>| {
            let call = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let (status, body) = match call {
                    0 => (
                        StatusCode::NOT_FOUND,
                        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "NotFound", "code": 404, "message": "not found"}),
                    ),
                    1 => {
                        let bytes = axum::body::to_bytes(
                            axum::body::Body::new(request.into_body()),
                            1 << 20,
                        )
                        .await
                        .unwrap();
                        (StatusCode::CREATED, serde_json::from_slice(&bytes).unwrap())
                    }
                    _ => std::future::pending().await,
                };
                let body = Body::from(serde_json::to_vec(&body).unwrap());
                Ok::<_, std::convert::Infallible>(
                    Response::builder().status(status).body(body).unwrap(),
                )
            }
        });
        Client::new(service, "default")
    }

    #[tokio::test]
    async fn a_leader_whose_renewal_hangs_steps_down_before_its_lease_expires() {
        let duration = Duration::from_secs(3);
        let elector = Elector::new(
            answers_twice_then_hangs(),
            LeaseConfig {
                namespace: "default".into(),
                name: "theseus-operator".into(),
                identity: "me".into(),
                duration,
            },
        );
        let leadership = elector.leadership();
        let (tx, mut leading) = watch::channel(false);
        let campaign = tokio::spawn(elector.run(tx));
        leading.wait_for(|l| *l).await.unwrap();
        let elected = Instant::now();
        assert!(leadership.is_valid());
        tokio::time::timeout(duration, leading.wait_for(|l| !*l))
            .await
            .expect("still leading when the lease expired")
            .unwrap();
        assert!(elected.elapsed() < duration, "{:?}", elected.elapsed());
        assert!(!leadership.is_valid());
        campaign.abort();
    }
}
