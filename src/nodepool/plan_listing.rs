//! Joining what the pool recorded with what the provider lists.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;

use super::{Input, Listed, Recorded, State, age};

/// The record joined with the listing.
pub(super) struct Seen {
    pub(super) instances: Vec<Recorded>,
    pub(super) next_launch: i64,
    pub(super) orphans: Vec<String>,
    pub(super) strays: Vec<String>,
    pub(super) first_seen: BTreeMap<String, Timestamp>,
}

/// Joins the record with the listing: adopts in-flight launches, forgets
/// vanished instances, finds orphans and strays.
pub(super) fn reconcile_listing(input: &Input<'_>) -> Seen {
    let pool = input.pool;
    let listed: BTreeMap<&str, &Listed> = input.listed.iter().map(|l| (l.id.as_str(), l)).collect();
    let instances: Vec<Recorded> = input
        .recorded
        .iter()
        .filter(|r| {
            listed.contains_key(r.id.as_str())
                || (r.state != State::Terminating && age(input.now, r.launched) < pool.grace)
        })
        .cloned()
        .collect();
    let recorded: BTreeSet<&str> = input.recorded.iter().map(|r| r.id.as_str()).collect();
    let mut seen = Seen {
        instances,
        next_launch: pool.next_launch,
        orphans: Vec::new(),
        strays: Vec::new(),
        first_seen: BTreeMap::new(),
    };
    for l in input
        .listed
        .iter()
        .filter(|l| !recorded.contains(l.id.as_str()))
    {
        let launched = launched_or_first_seen(l, input, &mut seen.first_seen);
        match l.launch_seq {
            Some(seq) if seq >= pool.next_launch => {
                seen.next_launch = seen.next_launch.max(seq + 1);
                seen.first_seen.remove(&l.id);
                seen.instances.push(Recorded {
                    id: l.id.clone(),
                    node: None,
                    state: State::Pending,
                    launched,
                    drain_started: None,
                });
            }
            _ if age(input.now, launched) < pool.grace => seen.strays.push(l.id.clone()),
            _ => seen.orphans.push(l.id.clone()),
        }
    }
    seen
}

/// The launch time of a listed instance; without one, when the pool first
/// saw it (recorded in `first_seen` for the status).
fn launched_or_first_seen(
    l: &Listed,
    input: &Input<'_>,
    first_seen: &mut BTreeMap<String, Timestamp>,
) -> Timestamp {
    if let Some(at) = l.launched {
        return at;
    }
    let at = input.first_seen.get(&l.id).copied().unwrap_or(input.now);
    first_seen.insert(l.id.clone(), at);
    at
}
