//! Which PackageSet owns which node. A node matched by several sets belongs
//! to the oldest (by creation time, then name); the newer sets report a
//! Conflict naming the node and leave it alone. Pure.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;

use super::selector;

/// The parts of a set that decide ownership.
#[derive(Clone, Debug)]
pub struct Claimant<'a> {
    /// The set's name.
    pub name: &'a str,
    /// Its creation time.
    pub created: Option<Timestamp>,
    /// Its node selector.
    pub selector: &'a LabelSelector,
}

/// What one set may touch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    /// Nodes the set owns.
    pub owned: BTreeSet<String>,
    /// Nodes the set matches that an older set owns, with that set's name.
    pub conflicts: BTreeMap<String, String>,
}

/// Works out the claim of `me` among `sets` over `nodes` (name, labels).
pub fn claim<'a, 'n>(
    me: &str,
    sets: &[Claimant<'a>],
    nodes: impl IntoIterator<Item = (&'n str, &'n BTreeMap<String, String>)>,
) -> Claim {
    let mut ordered: Vec<&Claimant<'a>> = sets.iter().collect();
    ordered.sort_by(|a, b| (a.created, a.name).cmp(&(b.created, b.name)));
    let Some(mine) = ordered.iter().find(|s| s.name == me) else {
        return Claim::default();
    };
    let mut result = Claim::default();
    for (node, labels) in nodes {
        if !selector::matches(mine.selector, labels) {
            continue;
        }
        let owner = ordered
            .iter()
            .find(|s| selector::matches(s.selector, labels))
            .map(|s| s.name)
            .unwrap_or(me);
        if owner == me {
            result.owned.insert(node.to_owned());
        } else {
            result.conflicts.insert(node.to_owned(), owner.to_owned());
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(
        nodes: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> impl Iterator<Item = (&str, &BTreeMap<String, String>)> {
        nodes.iter().map(|(n, l)| (n.as_str(), l))
    }

    fn labels(role: &str) -> BTreeMap<String, String> {
        [("role".to_owned(), role.to_owned())].into()
    }

    fn select(role: Option<&str>) -> LabelSelector {
        LabelSelector {
            match_labels: role.map(labels),
            ..Default::default()
        }
    }

    #[test]
    fn the_older_set_owns_a_node_both_match_and_the_newer_reports_it() {
        let all = select(None);
        let web = select(Some("web"));
        let sets = [
            Claimant {
                name: "newer",
                created: Some(Timestamp::from_second(200).unwrap()),
                selector: &all,
            },
            Claimant {
                name: "older",
                created: Some(Timestamp::from_second(100).unwrap()),
                selector: &web,
            },
        ];
        let nodes: BTreeMap<_, _> = [
            ("a".to_owned(), labels("web")),
            ("b".to_owned(), labels("db")),
        ]
        .into();

        let older = claim("older", &sets, pairs(&nodes));
        assert_eq!(older.owned, ["a".to_owned()].into());
        assert!(older.conflicts.is_empty());

        let newer = claim("newer", &sets, pairs(&nodes));
        assert_eq!(newer.owned, ["b".to_owned()].into());
        assert_eq!(
            newer.conflicts,
            [("a".to_owned(), "older".to_owned())].into()
        );
    }

    #[test]
    fn sets_created_at_the_same_time_are_ordered_by_name() {
        let all = select(None);
        let at = Some(Timestamp::from_second(5).unwrap());
        let sets = [
            Claimant {
                name: "b",
                created: at,
                selector: &all,
            },
            Claimant {
                name: "a",
                created: at,
                selector: &all,
            },
        ];
        let nodes: BTreeMap<_, _> = [("n".to_owned(), labels("x"))].into();
        assert_eq!(claim("a", &sets, pairs(&nodes)).owned.len(), 1);
        assert_eq!(claim("b", &sets, pairs(&nodes)).conflicts.len(), 1);
    }
}
