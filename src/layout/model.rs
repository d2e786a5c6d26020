//! The solver's model: services, node classes and the constraints of one
//! request, each constraint carrying the field path it came from so that
//! an explanation speaks in the user's terms.

use std::collections::BTreeMap;

use crate::api::{
    ClusterTemplate, ClusterTemplateSpec, NodeClass, NodeClassSpec, Resources, ServiceDefinition,
    ServiceDefinitionSpec,
};

use super::quantity;

/// The most services one cluster may run (a node's services are a 64-bit
/// set).
pub const MAX_SERVICES: usize = 64;

/// What the solver reads from the API: the catalog's services, node classes
/// and templates, by name.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// ServiceDefinitions by name.
    pub services: BTreeMap<String, ServiceDefinitionSpec>,
    /// NodeClasses by name.
    pub node_classes: BTreeMap<String, NodeClassSpec>,
    /// ClusterTemplates by name (unresolved).
    pub templates: BTreeMap<String, ClusterTemplateSpec>,
}

impl Catalog {
    /// The catalog of these objects, by name.
    pub fn of<'a>(
        services: impl IntoIterator<Item = &'a ServiceDefinition>,
        node_classes: impl IntoIterator<Item = &'a NodeClass>,
        templates: impl IntoIterator<Item = &'a ClusterTemplate>,
    ) -> Self {
        let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.name.clone().unwrap_or_default()
        };
        Self {
            services: services
                .into_iter()
                .map(|o| (name(&o.metadata), o.spec.clone()))
                .collect(),
            node_classes: node_classes
                .into_iter()
                .map(|o| (name(&o.metadata), o.spec.clone()))
                .collect(),
            templates: templates
                .into_iter()
                .map(|o| (name(&o.metadata), o.spec.clone()))
                .collect(),
        }
    }
}

/// What a user asks for.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// The number of nodes.
    pub size: u32,
    /// The services; empty means the template's default services.
    pub services: Vec<String>,
    /// The node class preferred over the template's default.
    pub node_class: Option<String>,
}

/// A service in the model; its index is its place in preference order.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// The ServiceDefinition name.
    pub name: String,
    /// CPU (millicores), memory and disk (bytes) one instance uses.
    pub uses: [u64; 3],
}

/// A node class in the model; its index is its preference rank.
#[derive(Clone, Debug, PartialEq)]
pub struct Class {
    /// The NodeClass name.
    pub name: String,
    /// CPU (millicores), memory and disk (bytes) one node holds; `None` is
    /// unlimited.
    pub capacity: [Option<u64>; 3],
    /// The relative cost of one node.
    pub cost: u64,
}

/// One rule a layout keeps. Service and class fields are indexes into the
/// model's lists.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    /// The cluster has at least this many nodes.
    SizeMin(u32),
    /// The cluster has at most this many nodes.
    SizeMax(u32),
    /// At least `n` nodes run service `s`.
    CountMin { s: usize, n: u32 },
    /// At most `n` nodes run service `s`.
    CountMax { s: usize, n: u32 },
    /// `per × count(s) ≥ n × base`, base = `of`'s count or the size.
    RatioMin {
        s: usize,
        of: Option<usize>,
        per: u32,
        n: u32,
    },
    /// `per × count(s) ≤ n × base`.
    RatioMax {
        s: usize,
        of: Option<usize>,
        per: u32,
        n: u32,
    },
    /// A node runs all of these services or none.
    MustCoexist(Vec<usize>),
    /// A node runs at most one of these services.
    CantCoexist(Vec<usize>),
    /// Service `s` runs only on these classes.
    NodeClasses { s: usize, allowed: Vec<usize> },
    /// A node of this class holds the sum of its services' resources.
    Capacity { class: usize },
}

/// A rule with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Constraint {
    /// The rule.
    pub rule: Rule,
    /// The field path, e.g. `spec.constraints.services.namenode.count.max`.
    pub path: String,
    /// The field's value as written, e.g. `1` or `[namenode,datanode]`.
    pub value: String,
}

/// Everything the solver needs for one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// The number of nodes asked for.
    pub size: u32,
    /// The cluster's services, in the template's preference order.
    pub services: Vec<Service>,
    /// The usable node classes, most preferred first.
    pub classes: Vec<Class>,
    /// The rules, each of which an explanation may name.
    pub constraints: Vec<Constraint>,
}

impl Model {
    /// The index of a service by name.
    pub fn service(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.name == name)
    }

    /// The names of the services in `mask`, in order.
    pub fn names(&self, mask: u64) -> Vec<String> {
        (0..self.services.len())
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| self.services[i].name.clone())
            .collect()
    }
}

/// Builds the model for `request` against a resolved template, without its
/// constraints ([`super::build_model`] adds them). Fails, naming the field, when
/// the request names something the catalog lacks.
pub fn base(
    catalog: &Catalog,
    template: &ClusterTemplateSpec,
    request: &Request,
) -> Result<Model, String> {
    let services = services(catalog, template, request)?;
    let classes = classes(catalog, template, request)?;
    Ok(Model {
        size: request.size,
        services,
        classes,
        constraints: Vec::new(),
    })
}

/// The requested services (or the defaults), de-duplicated, in the
/// template's compatibility order, then as requested.
fn services(
    catalog: &Catalog,
    template: &ClusterTemplateSpec,
    request: &Request,
) -> Result<Vec<Service>, String> {
    let (field, asked) = if request.services.is_empty() {
        ("spec.defaults.services", &template.defaults.services)
    } else {
        ("spec.services", &request.services)
    };
    if asked.is_empty() {
        return Err(format!("{field} is empty: name at least one service"));
    }
    let rank = |name: &String| {
        template
            .compatibility
            .services
            .iter()
            .position(|s| s == name)
            .unwrap_or(usize::MAX)
    };
    let mut names: Vec<&String> = Vec::new();
    for name in asked {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.sort_by_key(|n| rank(n));
    if names.len() > MAX_SERVICES {
        return Err(format!(
            "{field} names {} services; a cluster runs at most {MAX_SERVICES}",
            names.len()
        ));
    }
    names
        .into_iter()
        .map(|name| {
            let def = catalog.services.get(name).ok_or_else(|| {
                format!("{field} names service {name}, which has no ServiceDefinition; create it or remove the name")
            })?;
            Ok(Service { name: name.clone(), uses: amounts(def.resources.as_ref(), name)?.map(|a| a.unwrap_or(0)) })
        })
        .collect()
}

/// The usable node classes, most preferred first: the request's, the
/// template default, then the compatibility list (or every class by name).
fn classes(
    catalog: &Catalog,
    template: &ClusterTemplateSpec,
    request: &Request,
) -> Result<Vec<Class>, String> {
    let listed: Vec<&String> = if template.compatibility.node_classes.is_empty() {
        catalog.node_classes.keys().collect()
    } else {
        template.compatibility.node_classes.iter().collect()
    };
    let mut order: Vec<&String> = Vec::new();
    for name in [
        request.node_class.as_ref(),
        template.defaults.node_class.as_ref(),
    ]
    .into_iter()
    .flatten()
    .chain(listed)
    {
        if !order.contains(&name) {
            order.push(name);
        }
    }
    order
        .into_iter()
        .map(|name| {
            let spec = catalog.node_classes.get(name).ok_or_else(|| {
                format!("node class {name} has no NodeClass; create it or remove the name from the template or cluster")
            })?;
            Ok(Class { name: name.clone(), capacity: amounts(Some(&spec.capacity), name)?, cost: spec.cost.max(0) as u64 })
        })
        .collect()
}

/// CPU (millicores), memory and disk (bytes) of a resources block.
pub fn amounts(resources: Option<&Resources>, owner: &str) -> Result<[Option<u64>; 3], String> {
    let Some(r) = resources else {
        return Ok([None; 3]);
    };
    let parse = |q: &Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
                 what: &str,
                 f: fn(&str) -> Option<u64>| {
        q.as_ref()
            .map(|q| {
                f(&q.0).ok_or_else(|| {
                    format!(
                        "{owner}: {what} {:?} is not a quantity such as 500m or 4Gi",
                        q.0
                    )
                })
            })
            .transpose()
    };
    Ok([
        parse(&r.cpu, "cpu", quantity::milli)?,
        parse(&r.memory, "memory", quantity::units)?,
        parse(&r.disk, "disk", quantity::units)?,
    ])
}
