//! The layout solver: which nodes, of which NodeClass, run which services.
//!
//! Pure: it reads the catalog (services, node classes, templates), a
//! request (size, services, preferred class) and the cluster's current
//! layout, and returns a layout or an explanation. No I/O, no clock; the
//! same input gives the same bytes out.
//!
//! The model (see `docs/layout-solver.md`): a node *kind* is a valid pair of
//! a service set and a node class (coexistence, nodeClasses and capacity
//! are per-node rules and shape the kinds); an integer program chooses how
//! many nodes of each kind to add and how many existing nodes become each
//! kind, under the count, ratio and size rules, minimising in turn service
//! moves on existing nodes, nodes changed, cost and class preference.

pub mod exhaustive;
pub mod explain;
pub mod ilp;
pub mod kinds;
pub mod model;
pub mod quantity;
pub mod resolve;
mod rules;
pub mod sizes;
pub mod solve;
pub mod validate;

pub use explain::{Conflict, Explanation};
pub use model::{Catalog, Model, Request};
pub use solve::{Error, Objective, Outcome};
pub use validate::{Finding, Reason};

use crate::api::LayoutNode;

/// Why a request could not be solved before the solver ran.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The template does not resolve or is not valid.
    #[error("template {template} is not valid: {}", .findings.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// The template's name.
        template: String,
        /// What is wrong.
        findings: Vec<Finding>,
    },
    /// The request names something the catalog lacks.
    #[error("{0}")]
    Request(String),
    /// The solver gave up.
    #[error(transparent)]
    Solver(#[from] Error),
}

/// Resolves and validates `template`, checks the request's services, builds
/// the model and solves it against `current`.
pub fn solve_request(
    catalog: &Catalog,
    template: &str,
    request: &Request,
    current: &[LayoutNode],
    prefix: &str,
) -> Result<Outcome, RequestError> {
    let invalid = |findings| RequestError::Invalid {
        template: template.to_owned(),
        findings,
    };
    let resolved = resolve::resolve(catalog, template).map_err(invalid)?;
    let findings = validate::template(catalog, &resolved);
    if !findings.is_empty() {
        return Err(invalid(findings));
    }
    if !request.services.is_empty() {
        let findings = validate::services(catalog, &request.services, "spec.services");
        if !findings.is_empty() {
            return Err(invalid(findings));
        }
    }
    let model = build_model(catalog, &resolved, request).map_err(RequestError::Request)?;
    Ok(solve::solve(&model, current, prefix)?)
}

/// The model of `request` against a resolved template, with every
/// constraint of the template. Fails, naming the field, when the request
/// names something the catalog lacks or a rule cannot be built.
pub fn build_model(
    catalog: &Catalog,
    template: &crate::api::ClusterTemplateSpec,
    request: &Request,
) -> Result<model::Model, String> {
    let mut model = model::base(catalog, template, request)?;
    rules::add_all(&mut model, template)?;
    Ok(model)
}
