//! Keeping the publisher's lease alive, from a task and a connection of its
//! own: a publish that waits on etcd (slow writes, retries, a stalled
//! connection) never holds up a renewal, so published entries cannot all
//! expire because one publish was slow.
//!
//! Renewals go out on a fixed beat, a third of the TTL, whether or not the
//! previous ones were answered: etcd renews a lease when a request arrives,
//! so a renewal whose answer is late still counts. An answer saying the
//! lease is gone makes the keeper grant a new one and announce it, and the
//! publisher writes everything again under it.

use std::time::Duration;

use etcd_client::Client;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::config::EtcdConfig;
use super::tree::{Tree, TreeError};

/// How one renewal went.
#[derive(Debug, PartialEq, Eq)]
enum Renewal {
    /// etcd renewed the lease.
    Kept,
    /// etcd no longer knows lease `.0`.
    Gone(i64),
    /// No answer in time, or the request failed.
    Failed(String),
}

/// The beat of renewals for a TTL: a third of it, so that two lost
/// renewals in a row still keep the lease.
pub fn beat(ttl_seconds: i64) -> Duration {
    Duration::from_millis(ttl_seconds.max(1) as u64 * 1000 / 3)
}

/// Renews `lease` (announced through `lease`'s sender) until the task is
/// aborted, reconnecting `client` when nothing has been answered for a TTL
/// and granting a new lease when the old one is gone.
pub(crate) async fn keep_alive(config: EtcdConfig, client: Client, lease: watch::Sender<i64>) {
    let ttl = Duration::from_secs(config.lease_ttl.max(1) as u64);
    let mut client = client;
    let mut tick = tokio::time::interval(beat(config.lease_ttl));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewals = FuturesUnordered::new();
    let mut reconnect: Option<BoxFuture<'static, Result<Client, TreeError>>> = None;
    let mut answered = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if answered.elapsed() >= ttl && reconnect.is_none() {
                    tracing::warn!(lease = *lease.borrow(), silent = ?answered.elapsed(), "no answer to lease renewals; opening a new connection to the discovery etcd");
                    let config = config.clone();
                    reconnect = Some(async move { Tree::lease_client(&config).await }.boxed());
                    answered = Instant::now();
                }
                renewals.push(renew(client.clone(), *lease.borrow(), ttl));
            }
            connected = async { reconnect.as_mut().expect("guarded").await }, if reconnect.is_some() => {
                reconnect = None;
                match connected {
                    Ok(fresh) => client = fresh,
                    Err(error) => tracing::warn!(%error, "cannot reconnect for lease renewals; retrying"),
                }
            }
            Some(outcome) = renewals.next() => match outcome {
                Renewal::Kept => answered = Instant::now(),
                Renewal::Gone(id) if id == *lease.borrow() => {
                    answered = Instant::now();
                    replace(&mut client, &lease, config.lease_ttl, ttl).await;
                }
                Renewal::Gone(_) => {}
                Renewal::Failed(why) => tracing::debug!(lease = *lease.borrow(), %why, "a lease renewal was not answered"),
            },
        }
    }
}

/// One renewal on a stream of its own: sends the request and waits (up to
/// the TTL) for etcd's answer. etcd-client reads the first answer itself and
/// reports a TTL of zero (an unknown lease) as an error.
async fn renew(mut client: Client, id: i64, ttl: Duration) -> Renewal {
    match tokio::time::timeout(ttl, client.lease_keep_alive(id)).await {
        Ok(Ok(_)) => Renewal::Kept,
        Ok(Err(etcd_client::Error::LeaseKeepAliveError(why))) if why.contains("not found") => {
            Renewal::Gone(id)
        }
        Ok(Err(error)) => Renewal::Failed(error.to_string()),
        Err(_) => Renewal::Failed(format!("no answer within {ttl:?}")),
    }
}

/// Grants a new lease after the old one expired and announces it.
async fn replace(client: &mut Client, lease: &watch::Sender<i64>, ttl_seconds: i64, ttl: Duration) {
    let old = *lease.borrow();
    match tokio::time::timeout(ttl, client.lease_grant(ttl_seconds, None)).await {
        Ok(Ok(granted)) if granted.id() != 0 && granted.error().is_empty() => {
            tracing::warn!(
                old,
                new = granted.id(),
                "discovery lease expired; granted a new one, re-publishing every entry"
            );
            lease.send_replace(granted.id());
        }
        Ok(Ok(granted)) => {
            tracing::warn!(
                old,
                error = granted.error(),
                "discovery etcd refused a new lease; retrying"
            )
        }
        Ok(Err(error)) => {
            tracing::warn!(old, %error, "cannot grant a new discovery lease; retrying")
        }
        Err(_) => tracing::warn!(old, "no answer granting a new discovery lease; retrying"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_beat_three_times_per_ttl() {
        assert_eq!(beat(30), Duration::from_secs(10));
        assert_eq!(beat(6), Duration::from_secs(2));
        assert_eq!(beat(0), Duration::from_millis(333));
    }
}
