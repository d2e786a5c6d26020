use std::collections::BTreeMap;

use super::*;
use crate::api::{NodeClassSpec, Resources, TenantSpec};

fn class(cpu: &str, memory: &str) -> NodeClassSpec {
    serde_json::from_value(serde_json::json!({
        "provider": { "type": "Local" },
        "capacity": { "cpu": cpu, "memory": memory },
    }))
    .expect("a node class")
}

fn node(name: &str, class: &str) -> LayoutNode {
    LayoutNode {
        name: name.into(),
        node_class: class.into(),
        services: vec!["db".into()],
    }
}

fn nodes(n: i64) -> Usage {
    Usage {
        clusters: 1,
        nodes: n,
        nodes_per_class: BTreeMap::from([("small".into(), n)]),
        ..Usage::default()
    }
}

fn quotas(nodes: i64) -> Quotas {
    Quotas {
        nodes: Some(nodes),
        ..Quotas::default()
    }
}

#[test]
fn a_layout_uses_a_cluster_its_nodes_per_class_and_their_capacity() {
    let catalog = Catalog {
        node_classes: BTreeMap::from([
            ("small".into(), class("2", "4Gi")),
            ("big".into(), class("500m", "1Gi")),
        ]),
        ..Catalog::default()
    };
    let layout = [node("a", "small"), node("b", "small"), node("c", "big")];
    let usage = layout_usage(&layout, &catalog);
    assert_eq!(usage.clusters, 1);
    assert_eq!(usage.nodes, 3);
    assert_eq!(
        usage.nodes_per_class,
        BTreeMap::from([("big".into(), 1), ("small".into(), 2)])
    );
    assert_eq!(usage.cpu_millis, 4500);
    assert_eq!(usage.memory_bytes, 9 * 1024 * 1024 * 1024);
    let _ = Resources::default();
}

#[test]
fn a_reservation_past_a_quota_names_it_and_the_numbers() {
    let used = nodes(4);
    let refused = check(&quotas(5), &used, &Usage::default(), &nodes(2)).expect("refused");
    assert_eq!(refused.quota, "nodes");
    assert_eq!((refused.limit, refused.wanted, refused.asked), (5, 6, 2));
    assert_eq!(
        refused.to_string(),
        "quota nodes is 5: this asks for 2, which would make the tenant's 6 (1 over)"
    );
    assert_eq!(
        check(&quotas(5), &used, &Usage::default(), &nodes(1)),
        None,
        "exactly at the quota is allowed"
    );
}

#[test]
fn an_object_s_own_reservation_is_set_aside_and_a_shrink_is_never_refused() {
    // The tenant uses 6 of a quota lowered to 5; the object holds 3 of them.
    let used = nodes(6);
    assert_eq!(check(&quotas(5), &used, &nodes(3), &nodes(3)), None);
    assert_eq!(check(&quotas(5), &used, &nodes(3), &nodes(2)), None);
    assert!(check(&quotas(5), &used, &nodes(3), &nodes(4)).is_some());
}

#[test]
fn per_class_cpu_and_memory_quotas_are_checked_too() {
    let q = Quotas {
        nodes_per_class: BTreeMap::from([("small".into(), 2)]),
        ..Quotas::default()
    };
    let refused = check(&q, &nodes(2), &Usage::default(), &nodes(1)).expect("refused");
    assert_eq!(refused.quota, "nodesPerClass[small]");
    let q = Quotas {
        cpu: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
            "4".into(),
        )),
        ..Quotas::default()
    };
    let asked = Usage {
        cpu_millis: 4500,
        ..Usage::default()
    };
    let refused = check(&q, &Usage::default(), &Usage::default(), &asked).expect("refused");
    assert_eq!(refused.quota, "cpu");
    assert!(refused.to_string().contains("4000m"), "{refused}");
}

#[test]
fn reservations_sum_and_the_summary_shows_usage_against_quota() {
    let status = TenantStatus::default();
    let now = Timestamp::now();
    let q = quotas(5);
    let one = with_reservation(&status, &q, ("Cluster t/a", "u1"), Some(nodes(2)), now);
    let two = with_reservation(&one, &q, ("Cluster t/b", "u2"), Some(nodes(3)), now);
    assert_eq!(two.usage.nodes, 5);
    assert_eq!(two.usage.clusters, 2);
    assert_eq!(two.summary.nodes.as_deref(), Some("5/5"));
    assert_eq!(two.summary.clusters.as_deref(), Some("2"));
    let shrunk = with_reservation(&two, &q, ("Cluster t/b", "u2"), Some(nodes(1)), now);
    assert_eq!(shrunk.usage.nodes, 3);
    let gone = with_reservation(&shrunk, &q, ("Cluster t/a", "u1"), None, now);
    assert_eq!(gone.usage.nodes, 1);
    assert_eq!(gone.reservations.len(), 1);
    let live = BTreeMap::from([("Cluster t/b".to_owned(), "other-uid".to_owned())]);
    assert_eq!(stale(&gone, &live), ["Cluster t/b"]);
}

#[test]
fn covers_and_max_go_amount_by_amount() {
    assert!(covers(&nodes(3), &nodes(2)));
    assert!(!covers(&nodes(2), &nodes(3)));
    assert!(covers(&nodes(2), &Usage::default()));
    let other_class = Usage {
        nodes_per_class: BTreeMap::from([("big".into(), 1)]),
        ..Usage::default()
    };
    assert!(!covers(&nodes(3), &other_class));
    let both = max(&nodes(3), &other_class);
    assert!(covers(&both, &nodes(3)) && covers(&both, &other_class));
}

#[test]
fn a_namespace_belongs_to_the_tenant_naming_it_or_its_prefix() {
    let tenant = |name: &str, spec: serde_json::Value| {
        let mut t = Tenant::new(name, serde_json::from_value::<TenantSpec>(spec).unwrap());
        t.metadata.name = Some(name.into());
        t
    };
    let tenants = [
        tenant("acme", serde_json::json!({})),
        tenant(
            "blue",
            serde_json::json!({ "namespaces": { "names": ["blue-prod"], "prefix": "blue", "max": 2 } }),
        ),
    ];
    assert_eq!(namespaces(&tenants[0]), ["acme"]);
    assert_eq!(namespaces(&tenants[1]), ["blue-prod", "blue-1", "blue-2"]);
    let of = |ns| tenant_of(ns, &tenants).map(|t| t.name_any());
    assert_eq!(of("acme").as_deref(), Some("acme"));
    assert_eq!(of("blue-2").as_deref(), Some("blue"));
    assert_eq!(of("blue-3"), None);
    assert_eq!(of("default"), None);
}
