//! Tenants' quotas: what a layout or an application instance uses, and
//! the reservation of it in the Tenant's status by compare-and-swap, so
//! that concurrent creates cannot overrun a quota.
//!
//! A Cluster or AppInstance in a tenant's namespace is acted on (its
//! plan started, its instance staged) only once [`reserve`] wrote its
//! usage into `Tenant.status.reservations` with the status's
//! resourceVersion: two creates racing for the last node both read the
//! same status, one write wins, the other conflicts, reads again, and
//! finds the quota full. The reservation is the upper bound of what the
//! object holds while a plan runs (a shrink lowers it once the plan
//! finished, [`settle`]), and it goes when the object is deleted
//! ([`release`]).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};

use crate::api::{LayoutNode, Quotas, Reservation, Tenant, TenantStatus, Usage, UsageSummary};
use crate::layout::Catalog;
use crate::layout::model::amounts;

/// The tenant `namespace` belongs to, of `tenants`: the one whose
/// namespaces (by name, or its prefix's `PREFIX-1` … `PREFIX-max`) hold it.
pub fn tenant_of<'a>(namespace: &str, tenants: &'a [Tenant]) -> Option<&'a Tenant> {
    tenants
        .iter()
        .find(|t| namespaces(t).iter().any(|n| n == namespace))
}

/// A tenant's namespaces, as its spec names them (default: one named as
/// the tenant).
pub fn namespaces(tenant: &Tenant) -> Vec<String> {
    let spec = &tenant.spec.namespaces;
    let mut out = spec.names.clone();
    if let Some(prefix) = &spec.prefix {
        let max = spec.max.unwrap_or(1).max(1);
        out.extend((1..=max).map(|i| format!("{prefix}-{i}")));
    }
    if out.is_empty() {
        out.push(tenant.name_any());
    }
    out
}

/// What a cluster of `layout` uses: one cluster, its nodes (per class),
/// and the capacity of their classes (a class without a capacity counts
/// nothing for cpu and memory).
pub fn layout_usage(layout: &[LayoutNode], catalog: &Catalog) -> Usage {
    let mut usage = Usage {
        clusters: 1,
        ..Usage::default()
    };
    for node in layout {
        usage.nodes += 1;
        *usage
            .nodes_per_class
            .entry(node.node_class.clone())
            .or_default() += 1;
        let capacity = catalog
            .node_classes
            .get(&node.node_class)
            .and_then(|c| amounts(Some(&c.capacity), &node.node_class).ok())
            .unwrap_or([None; 3]);
        usage.cpu_millis += capacity[0].unwrap_or(0) as i64;
        usage.memory_bytes += capacity[1].unwrap_or(0) as i64;
    }
    usage
}

/// What one application instance uses.
pub fn instance_usage() -> Usage {
    Usage {
        app_instances: 1,
        ..Usage::default()
    }
}

/// The larger of each amount.
pub fn max(a: &Usage, b: &Usage) -> Usage {
    let mut per_class = a.nodes_per_class.clone();
    for (class, n) in &b.nodes_per_class {
        let e = per_class.entry(class.clone()).or_default();
        *e = (*e).max(*n);
    }
    Usage {
        clusters: a.clusters.max(b.clusters),
        nodes: a.nodes.max(b.nodes),
        nodes_per_class: per_class,
        cpu_millis: a.cpu_millis.max(b.cpu_millis),
        memory_bytes: a.memory_bytes.max(b.memory_bytes),
        app_instances: a.app_instances.max(b.app_instances),
    }
}

/// `a` holds at least as much as `b` of everything.
pub fn covers(a: &Usage, b: &Usage) -> bool {
    a.clusters >= b.clusters
        && a.nodes >= b.nodes
        && a.cpu_millis >= b.cpu_millis
        && a.memory_bytes >= b.memory_bytes
        && a.app_instances >= b.app_instances
        && b.nodes_per_class
            .iter()
            .all(|(c, n)| a.nodes_per_class.get(c).copied().unwrap_or(0) >= *n)
}

/// The sum of `reservations`.
pub fn total<'a>(reservations: impl IntoIterator<Item = &'a Reservation>) -> Usage {
    let mut sum = Usage::default();
    for r in reservations {
        let u = &r.usage;
        sum.clusters += u.clusters;
        sum.nodes += u.nodes;
        for (class, n) in &u.nodes_per_class {
            *sum.nodes_per_class.entry(class.clone()).or_default() += n;
        }
        sum.cpu_millis += u.cpu_millis;
        sum.memory_bytes += u.memory_bytes;
        sum.app_instances += u.app_instances;
    }
    sum.nodes_per_class.retain(|_, n| *n != 0);
    sum
}

/// A quota a reservation would exceed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exceeded {
    /// The quota: `clusters`, `nodes`, `nodesPerClass[CLASS]`, `cpu`,
    /// `memory` or `appInstances`.
    pub quota: String,
    /// Its limit.
    pub limit: i64,
    /// What the tenant would use with the reservation.
    pub wanted: i64,
    /// What the object asked for.
    pub asked: i64,
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (limit, wanted, asked) = match self.quota.as_str() {
            "cpu" => (
                format!("{}m", self.limit),
                format!("{}m", self.wanted),
                format!("{}m", self.asked),
            ),
            "memory" => (
                format!("{} bytes", self.limit),
                format!("{} bytes", self.wanted),
                format!("{} bytes", self.asked),
            ),
            _ => (
                self.limit.to_string(),
                self.wanted.to_string(),
                self.asked.to_string(),
            ),
        };
        write!(
            f,
            "quota {} is {limit}: this asks for {asked}, which would make the tenant's {wanted} ({} over)",
            self.quota,
            self.wanted - self.limit
        )
    }
}

/// The cpu quota in millicores and the memory quota in bytes, if set.
fn cpu_and_memory(quotas: &Quotas) -> (Option<i64>, Option<i64>) {
    let cpu = quotas
        .cpu
        .as_ref()
        .and_then(|q| crate::layout::quantity::milli(&q.0))
        .map(|v| v as i64);
    let memory = quotas
        .memory
        .as_ref()
        .and_then(|q| crate::layout::quantity::units(&q.0))
        .map(|v| v as i64);
    (cpu, memory)
}

/// Each quota of `quotas` against `usage`: the first one it exceeds.
/// Only the amounts `asked` grows are checked: a quota lowered below what
/// the tenant already uses refuses growth, never a shrink or an unchanged
/// object.
pub fn check(quotas: &Quotas, usage: &Usage, held: &Usage, asked: &Usage) -> Option<Exceeded> {
    let (cpu, memory) = cpu_and_memory(quotas);
    let mut limits: Vec<(String, Option<i64>, i64, i64, i64)> = vec![
        (
            "clusters".into(),
            quotas.clusters,
            usage.clusters,
            held.clusters,
            asked.clusters,
        ),
        (
            "nodes".into(),
            quotas.nodes,
            usage.nodes,
            held.nodes,
            asked.nodes,
        ),
        (
            "cpu".into(),
            cpu,
            usage.cpu_millis,
            held.cpu_millis,
            asked.cpu_millis,
        ),
        (
            "memory".into(),
            memory,
            usage.memory_bytes,
            held.memory_bytes,
            asked.memory_bytes,
        ),
        (
            "appInstances".into(),
            quotas.app_instances,
            usage.app_instances,
            held.app_instances,
            asked.app_instances,
        ),
    ];
    for (class, limit) in &quotas.nodes_per_class {
        let get = |u: &Usage| u.nodes_per_class.get(class).copied().unwrap_or(0);
        limits.push((
            format!("nodesPerClass[{class}]"),
            Some(*limit),
            get(usage),
            get(held),
            get(asked),
        ));
    }
    limits
        .into_iter()
        .find_map(|(quota, limit, used, held, asked)| {
            let limit = limit?;
            let wanted = used - held + asked;
            (asked > held && wanted > limit).then_some(Exceeded {
                quota,
                limit,
                wanted,
                asked,
            })
        })
}

/// `status` with `object`'s reservation set to `usage` (or removed, when
/// `None`), its total and summary recomputed.
pub fn with_reservation(
    status: &TenantStatus,
    quotas: &Quotas,
    (object, uid): (&str, &str),
    usage: Option<Usage>,
    now: Timestamp,
) -> TenantStatus {
    let mut next = status.clone();
    next.reservations.retain(|r| r.object != object);
    if let Some(usage) = usage {
        next.reservations.push(Reservation {
            object: object.to_owned(),
            uid: uid.to_owned(),
            usage,
            at: Some(Time(now)),
        });
        next.reservations.sort_by(|a, b| a.object.cmp(&b.object));
    }
    next.usage = total(&next.reservations);
    next.summary = summary(quotas, &next.usage);
    next
}

/// One quota of a tenant as people read it: used against its limit.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRow {
    /// `clusters`, `nodes`, `cpu`, `memory`, `appInstances` or
    /// `nodesPerClass[CLASS]`.
    pub quota: String,
    pub used: String,
    /// `-` for no limit.
    pub limit: String,
    /// Used ÷ limit, when there is a limit.
    pub fraction: Option<f64>,
}

/// Every quota of `quotas` (and every node class used) with its usage.
pub fn usage_rows(quotas: &Quotas, usage: &Usage) -> Vec<UsageRow> {
    let row = |quota: String, used: i64, shown: String, limit: Option<i64>, limit_shown: String| {
        UsageRow {
            quota,
            used: shown,
            fraction: limit.map(|l| if l > 0 { used as f64 / l as f64 } else { 1.0 }),
            limit: limit.map_or_else(|| "-".to_owned(), |_| limit_shown),
        }
    };
    let count = |quota: &str, used: i64, limit: Option<i64>| {
        row(
            quota.to_owned(),
            used,
            used.to_string(),
            limit,
            limit.map(|l| l.to_string()).unwrap_or_default(),
        )
    };
    let text = |q: &Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        q.as_ref().map(|q| q.0.clone()).unwrap_or_default()
    };
    let (cpu, memory) = cpu_and_memory(quotas);
    let mut rows = vec![
        count("clusters", usage.clusters, quotas.clusters),
        count("nodes", usage.nodes, quotas.nodes),
        row(
            "cpu".into(),
            usage.cpu_millis,
            format!("{}m", usage.cpu_millis),
            cpu,
            text(&quotas.cpu),
        ),
        row(
            "memory".into(),
            usage.memory_bytes,
            usage.memory_bytes.to_string(),
            memory,
            text(&quotas.memory),
        ),
        count("appInstances", usage.app_instances, quotas.app_instances),
    ];
    let classes: BTreeMap<&String, i64> = quotas
        .nodes_per_class
        .keys()
        .chain(usage.nodes_per_class.keys())
        .map(|c| (c, usage.nodes_per_class.get(c).copied().unwrap_or(0)))
        .collect();
    for (class, used) in classes {
        rows.push(count(
            &format!("nodesPerClass[{class}]"),
            used,
            quotas.nodes_per_class.get(class).copied(),
        ));
    }
    rows
}

/// Usage against quota, as the printer columns show it.
pub fn summary(quotas: &Quotas, usage: &Usage) -> UsageSummary {
    let of = |used: i64, limit: Option<i64>| {
        Some(match limit {
            Some(l) => format!("{used}/{l}"),
            None => used.to_string(),
        })
    };
    UsageSummary {
        clusters: of(usage.clusters, quotas.clusters),
        nodes: of(usage.nodes, quotas.nodes),
        app_instances: of(usage.app_instances, quotas.app_instances),
    }
}

/// Why a reservation was not written.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// A quota would be exceeded; nothing was written.
    #[error("tenant {tenant}: {exceeded}")]
    Exceeded {
        /// The tenant.
        tenant: String,
        /// Which quota, by how much.
        exceeded: Exceeded,
    },
    /// The Tenant could not be read or written.
    #[error("tenant {tenant}: cannot reserve usage for {object}: {source}")]
    Api {
        /// The tenant.
        tenant: String,
        /// The object reserving.
        object: String,
        /// The cause.
        source: kube::Error,
    },
    /// Other writers changed the tenant's status every time this one
    /// read it; the next pass tries again.
    #[error(
        "tenant {tenant}: {object} lost the compare-and-swap on the tenant's status {CAS_ATTEMPTS} times in a row; trying again"
    )]
    Contended {
        /// The tenant.
        tenant: String,
        /// The object reserving.
        object: String,
    },
    /// The tenant named by the namespace does not exist (any more).
    #[error(
        "tenant {tenant} does not exist: {object} is not admitted; create the Tenant or move the object out of its namespace"
    )]
    Gone {
        /// The tenant.
        tenant: String,
        /// The object.
        object: String,
    },
    /// The tenant is being deleted: nothing new is admitted.
    #[error("tenant {tenant} is being deleted: {object} is not admitted")]
    Deleting {
        /// The tenant.
        tenant: String,
        /// The object.
        object: String,
    },
}

/// How many times a reservation reads the tenant again after losing a
/// compare-and-swap before it gives up (the next pass tries again).
const CAS_ATTEMPTS: usize = 16;

/// Changes `tenant`'s status by compare-and-swap: reads the Tenant,
/// lets `change` edit its status (returning whether to write), and
/// replaces the status carrying the resourceVersion it read; on a
/// conflict, again from a fresh read. Every writer of a Tenant's status
/// goes through here (a server-side apply would overwrite reservations
/// written since it read them). A Tenant that does not exist changes
/// nothing (`Ok(None)`).
pub async fn update<F>(
    tenants: &Api<Tenant>,
    tenant: &str,
    object: &str,
    mut change: F,
) -> Result<Option<Tenant>, ReserveError>
where
    F: FnMut(&Tenant, &mut TenantStatus) -> Result<bool, ReserveError>,
{
    let api = |source| ReserveError::Api {
        tenant: tenant.to_owned(),
        object: object.to_owned(),
        source,
    };
    for _ in 0..CAS_ATTEMPTS {
        let Some(current) = tenants.get_opt(tenant).await.map_err(api)? else {
            return Ok(None);
        };
        let mut status = current.status.clone().unwrap_or_default();
        if !change(&current, &mut status)? {
            return Ok(Some(current));
        }
        let mut updated = current.clone();
        updated.status = Some(status);
        match tenants
            .replace_status(tenant, &PostParams::default(), &updated)
            .await
        {
            Ok(written) => return Ok(Some(written)),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(api(e)),
        }
    }
    Err(ReserveError::Contended {
        tenant: tenant.to_owned(),
        object: object.to_owned(),
    })
}

/// Reserves `usage` for `object` (of uid `uid`) in `tenant`'s status:
/// checks the quotas with the object's own reservation set aside, and
/// writes by [`update`]. An object whose reservation already covers
/// `usage` writes nothing. Returns what the object now holds.
pub async fn reserve(
    tenants: &Api<Tenant>,
    tenant: &str,
    (object, uid): (&str, &str),
    usage: &Usage,
) -> Result<Usage, ReserveError> {
    let mut holds = Usage::default();
    let found = update(tenants, tenant, object, |current, status| {
        if current.meta().deletion_timestamp.is_some() {
            return Err(ReserveError::Deleting {
                tenant: tenant.to_owned(),
                object: object.to_owned(),
            });
        }
        let held = status
            .reservations
            .iter()
            .find(|r| r.object == object && r.uid == uid)
            .map(|r| r.usage.clone())
            .unwrap_or_default();
        if covers(&held, usage) {
            holds = held;
            return Ok(false);
        }
        let wanted = max(&held, usage);
        if let Some(exceeded) = check(&current.spec.quotas, &status.usage, &held, &wanted) {
            return Err(ReserveError::Exceeded {
                tenant: tenant.to_owned(),
                exceeded,
            });
        }
        *status = with_reservation(
            status,
            &current.spec.quotas,
            (object, uid),
            Some(wanted.clone()),
            Timestamp::now(),
        );
        holds = wanted;
        Ok(true)
    })
    .await?;
    match found {
        Some(_) => Ok(holds),
        None => Err(ReserveError::Gone {
            tenant: tenant.to_owned(),
            object: object.to_owned(),
        }),
    }
}

/// Sets `object`'s reservation to exactly `usage` (lower than it holds:
/// a shrink that finished), or removes it (`None`: the object is gone).
/// A tenant that no longer exists, or holds nothing for the object, has
/// nothing to settle.
pub async fn settle(
    tenants: &Api<Tenant>,
    tenant: &str,
    object: &str,
    usage: Option<&Usage>,
) -> Result<(), ReserveError> {
    update(tenants, tenant, object, |current, status| {
        let Some(held) = status.reservations.iter().find(|r| r.object == object) else {
            return Ok(false);
        };
        if usage == Some(&held.usage) {
            return Ok(false);
        }
        let uid = held.uid.clone();
        *status = with_reservation(
            status,
            &current.spec.quotas,
            (object, &uid),
            usage.cloned(),
            Timestamp::now(),
        );
        Ok(true)
    })
    .await
    .map(drop)
}

/// [`settle`] to nothing.
pub async fn release(
    tenants: &Api<Tenant>,
    tenant: &str,
    object: &str,
) -> Result<(), ReserveError> {
    settle(tenants, tenant, object, None).await
}

/// The reservations' objects that are not among `live` (by object name
/// and uid): left behind by an object deleted while the operator was
/// down.
pub fn stale(status: &TenantStatus, live: &BTreeMap<String, String>) -> Vec<String> {
    status
        .reservations
        .iter()
        .filter(|r| live.get(&r.object) != Some(&r.uid))
        .map(|r| r.object.clone())
        .collect()
}

#[cfg(test)]
mod tests;
