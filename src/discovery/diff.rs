//! The tree diff, pure: what etcd should hold against what it holds, as the
//! fewest puts and deletes, cut into transactions etcd accepts.

use std::collections::BTreeMap;

use super::model::{ContainerInfo, GroupConfig, config_json};
use super::paths::Layout;

/// At most this many operations go into one etcd transaction (etcd's
/// default `--max-txn-ops` is 128).
pub const MAX_TXN_OPS: usize = 128;

/// One write to the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write `value` at `key`, on the publisher's lease when `leased`.
    Put {
        /// The key.
        key: String,
        /// The JSON value.
        value: String,
        /// Whether the key hangs on the publisher's lease.
        leased: bool,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: String,
    },
}

impl Op {
    /// The key the operation writes.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// A key's wanted value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    /// The JSON value.
    pub value: String,
    /// Whether the key hangs on the publisher's lease.
    pub leased: bool,
}

/// A key's value as etcd holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Have {
    /// The value's text.
    pub value: String,
    /// The lease the key hangs on, 0 for none.
    pub lease: i64,
}

/// The keys one group should have: its config (not leased, it outlives the
/// operator) and one leased info key per container.
pub fn desired_group(
    layout: &Layout,
    service: &str,
    group: &str,
    config: &GroupConfig,
    containers: &BTreeMap<String, ContainerInfo>,
) -> BTreeMap<String, Want> {
    let mut keys = BTreeMap::new();
    keys.insert(
        layout.config(service, group),
        Want {
            value: config_json(config),
            leased: false,
        },
    );
    for (name, info) in containers {
        keys.insert(
            layout.info(service, group, name),
            Want {
                value: info.to_json(),
                leased: true,
            },
        );
    }
    keys
}

/// The operations that turn `actual` into `desired`: a put for every key
/// that is missing, differs, or hangs on another lease than it should; a
/// delete for every actual key not desired. Keys are in order, so equal
/// inputs give equal outputs.
pub fn diff(
    desired: &BTreeMap<String, Want>,
    actual: &BTreeMap<String, Have>,
    lease: i64,
) -> Vec<Op> {
    let puts = desired.iter().filter_map(|(key, want)| {
        let wanted_lease = if want.leased { lease } else { 0 };
        let same = actual
            .get(key)
            .is_some_and(|have| have.value == want.value && have.lease == wanted_lease);
        (!same).then(|| Op::Put {
            key: key.clone(),
            value: want.value.clone(),
            leased: want.leased,
        })
    });
    let deletes = actual
        .keys()
        .filter(|key| !desired.contains_key(*key))
        .map(|key| Op::Delete { key: key.clone() });
    let mut ops: Vec<Op> = puts.chain(deletes).collect();
    ops.sort_by(|a, b| a.key().cmp(b.key()));
    ops
}

/// Cuts `ops` into transactions of at most `max` operations (at least 1).
pub fn chunk(ops: Vec<Op>, max: usize) -> Vec<Vec<Op>> {
    let max = max.max(1);
    let mut chunks = Vec::with_capacity(ops.len().div_ceil(max));
    let mut rest = ops.into_iter().peekable();
    while rest.peek().is_some() {
        chunks.push(rest.by_ref().take(max).collect());
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(value: &str, leased: bool) -> Want {
        Want {
            value: value.into(),
            leased,
        }
    }

    fn have(value: &str, lease: i64) -> Have {
        Have {
            value: value.into(),
            lease,
        }
    }

    fn put(key: &str, value: &str, leased: bool) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            leased,
        }
    }

    fn del(key: &str) -> Op {
        Op::Delete { key: key.into() }
    }

    #[test]
    fn diff_writes_only_what_changed() {
        type Case = (
            &'static str,
            Vec<(&'static str, Want)>,
            Vec<(&'static str, Have)>,
            Vec<Op>,
        );
        let cases: Vec<Case> = vec![
            (
                "an empty tree gets every wanted key",
                vec![("a", want("1", true)), ("c", want("{}", false))],
                vec![],
                vec![put("a", "1", true), put("c", "{}", false)],
            ),
            (
                "a tree that matches gets nothing",
                vec![("a", want("1", true)), ("c", want("{}", false))],
                vec![("a", have("1", 7)), ("c", have("{}", 0))],
                vec![],
            ),
            (
                "a changed value is put again",
                vec![("a", want("2", true))],
                vec![("a", have("1", 7))],
                vec![put("a", "2", true)],
            ),
            (
                "a key on an old lease is moved to the current one",
                vec![("a", want("1", true))],
                vec![("a", have("1", 3))],
                vec![put("a", "1", true)],
            ),
            (
                "a config key found on a lease is taken off it",
                vec![("c", want("{}", false))],
                vec![("c", have("{}", 7))],
                vec![put("c", "{}", false)],
            ),
            (
                "a key nobody wants is deleted",
                vec![("a", want("1", true))],
                vec![("a", have("1", 7)), ("stale", have("x", 0))],
                vec![del("stale")],
            ),
        ];
        for (name, desired, actual, expected) in cases {
            let desired = desired
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            let actual = actual.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            assert_eq!(diff(&desired, &actual, 7), expected, "{name}");
        }
    }

    #[test]
    fn chunks_never_exceed_the_transaction_limit() {
        let ops: Vec<Op> = (0..300).map(|i| del(&format!("k{i:03}"))).collect();
        let chunks = chunk(ops.clone(), MAX_TXN_OPS);
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![128, 128, 44]);
        assert_eq!(chunks.concat(), ops);
        assert!(chunk(Vec::new(), MAX_TXN_OPS).is_empty());
    }

    #[test]
    fn a_group_wants_its_config_unleased_and_its_containers_leased() {
        let layout = Layout::default();
        let mut containers = BTreeMap::new();
        containers.insert(
            "web-0".to_owned(),
            ContainerInfo {
                instance_host: "10.0.0.1".into(),
                instance_name: "web-0".into(),
                ..Default::default()
            },
        );
        let config = GroupConfig::from([("mode".to_owned(), "fast".to_owned())]);
        let keys = desired_group(&layout, "web", "default", &config, &containers);
        assert_eq!(
            keys["/services/web/default/config"],
            want(r#"{"mode":"fast"}"#, false)
        );
        assert!(keys["/services/web/default/containers/web-0/info"].leased);
        assert_eq!(keys.len(), 2);
    }
}
