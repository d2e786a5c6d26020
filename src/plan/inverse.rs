//! The way back: the plan that takes the new layout to the old one, for a
//! rollback.

use crate::api::LayoutNode;
use crate::layout::Catalog;

use super::{Error, Operation, Plan, plan};

impl Operation {
    /// The operation that undoes this one: a create is undone by a
    /// delete and the other way round, added services are scaled away, and
    /// a scale, reconfigure or restart is undone by the same operation
    /// (the configuration put back, the same services restarted).
    pub fn inverse(&self) -> Operation {
        match self {
            Operation::Create => Operation::Delete,
            Operation::Delete => Operation::Create,
            Operation::AddServices => Operation::Scale,
            other => other.clone(),
        }
    }
}

/// The plan that takes the cluster from `new` back to `old`, undoing the
/// plan of `operation` from `old` to `new`: `plan(new, old, catalog,
/// operation.inverse())`.
pub fn inverse(
    old: &[LayoutNode],
    new: &[LayoutNode],
    catalog: &Catalog,
    operation: &Operation,
) -> Result<Plan, Error> {
    plan(new, old, catalog, &operation.inverse())
}
