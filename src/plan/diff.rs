//! The layouts as maps by node name, what changes on each node, and
//! whether the operation allows those changes.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::LayoutNode;
use crate::layout::Catalog;

use super::{Error, Operation};

/// A node of a layout: its class and its services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Node {
    /// The NodeClass.
    pub class: String,
    /// The services it runs.
    pub services: BTreeSet<String>,
}

/// A layout by node name.
pub(super) type Nodes = BTreeMap<String, Node>;

/// `layout` by node name. Fails on a node named twice or a service the
/// catalog lacks; `which` (`old` or `new`) names the layout.
pub(super) fn nodes(
    layout: &[LayoutNode],
    which: &'static str,
    catalog: &Catalog,
) -> Result<Nodes, Error> {
    let mut out = Nodes::new();
    for node in layout {
        let unknown = node
            .services
            .iter()
            .find(|s| !catalog.services.contains_key(*s));
        if let Some(service) = unknown {
            return Err(Error::UnknownService {
                service: service.clone(),
                node: Some(node.name.clone()),
            });
        }
        let entry = Node {
            class: node.node_class.clone(),
            services: node.services.iter().cloned().collect(),
        };
        if out.insert(node.name.clone(), entry).is_some() {
            return Err(Error::DuplicateNode {
                layout: which,
                node: node.name.clone(),
            });
        }
    }
    Ok(out)
}

/// What happens to one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Change {
    /// The node is deleted, after its leaving services.
    pub delete: bool,
    /// The node is created; after the delete when both (its class
    /// changed).
    pub create: bool,
    /// Services stopped and removed.
    pub leaving: BTreeSet<String>,
    /// Services installed, configured, initialized and started.
    pub joining: BTreeSet<String>,
    /// Services that keep running.
    pub staying: BTreeSet<String>,
}

impl Change {
    /// Whether anything on the node changes.
    fn any(&self) -> bool {
        self.delete || self.create || !self.leaving.is_empty() || !self.joining.is_empty()
    }
}

/// Each node of either layout and what happens to it.
pub(super) fn changes(old: &Nodes, new: &Nodes) -> BTreeMap<String, Change> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    names
        .into_iter()
        .map(|name| (name.clone(), change(old.get(name), new.get(name))))
        .collect()
}

fn change(old: Option<&Node>, new: Option<&Node>) -> Change {
    match (old, new) {
        (Some(o), Some(n)) if o.class == n.class => Change {
            leaving: o.services.difference(&n.services).cloned().collect(),
            joining: n.services.difference(&o.services).cloned().collect(),
            staying: o.services.intersection(&n.services).cloned().collect(),
            ..Change::default()
        },
        _ => Change {
            delete: old.is_some(),
            create: new.is_some(),
            leaving: old.map(|o| o.services.clone()).unwrap_or_default(),
            joining: new.map(|n| n.services.clone()).unwrap_or_default(),
            staying: BTreeSet::new(),
        },
    }
}

/// Fails when the changes are not what `operation` expects: a create
/// starts from no node, a delete ends with none, an addServices removes
/// nothing, a reconfigure or restart changes nothing.
pub(super) fn check(
    operation: &Operation,
    changes: &BTreeMap<String, Change>,
) -> Result<(), Error> {
    let mismatch = |change: String| Error::Mismatch {
        operation: operation.name(),
        change,
    };
    let first = |f: fn(&Change) -> bool| changes.iter().find(|(_, c)| f(c));
    match operation {
        Operation::Create => match first(|c| !c.create || c.delete) {
            Some((node, _)) => Err(mismatch(format!(
                "start from a layout that has node {node}; plan a scale"
            ))),
            None => Ok(()),
        },
        Operation::Delete => match first(|c| !c.delete || c.create) {
            Some((node, _)) => Err(mismatch(format!(
                "end with a layout that has node {node}; plan a scale"
            ))),
            None => Ok(()),
        },
        Operation::AddServices => match first(|c| c.delete || !c.leaving.is_empty()) {
            Some((node, c)) => Err(mismatch(removal(node, c))),
            None => Ok(()),
        },
        Operation::Reconfigure { .. } | Operation::Restart => match first(Change::any) {
            Some((node, _)) => Err(mismatch(format!(
                "change the layout (node {node} changes); plan a scale first"
            ))),
            None => Ok(()),
        },
        Operation::Scale => Ok(()),
    }
}

/// What an addServices may not do, said of `node`.
fn removal(node: &str, change: &Change) -> String {
    match change.leaving.first() {
        _ if change.delete && change.create => format!("change the class of node {node}"),
        _ if change.delete => format!("remove node {node}"),
        Some(service) => format!("remove service {service} from node {node}"),
        None => format!("change node {node}"),
    }
}
