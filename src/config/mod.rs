//! The config generator, pure: ConfigModules and a bundle's values (and a
//! cluster's facts) render into files, and the files into packages named by
//! the hash of their content.
//!
//! - Every problem is reported at once, each with its field path: unknown
//!   or mismatched modules, missing required modules, unset parameters,
//!   values of the wrong type or out of range, secrets given in plain
//!   values, immutable parameters changed, failed validations, template
//!   and expression errors.
//! - A secret parameter's value never reaches a file: templates see the
//!   reference `${secret:NAME}`, which the node resolves when the package
//!   is activated; `expanded` shows it masked.
//! - The id is `PACKAGE--cfg.H` where H is the first 16 hex digits of the
//!   sha256 of the content (each file's path, mode and bytes, in path
//!   order): the same bytes give the same id whatever produced them, and
//!   any changed byte gives a new one.
//! - Files marked `for: [SERVICE]` go into a package of that service
//!   (`PACKAGE-SERVICE`), the others into `PACKAGE`: a node running the
//!   service gets both, and a change to one service's file leaves every
//!   other package's id alone.
//!
//! Templates, conditions, calculations and validations use one language,
//! minijinja (`{{ port }}`, `{% if %}`, `"0.0.0.0:" ~ port`).

pub mod diff;
pub mod render;
mod values;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

pub use render::render;

/// What a cluster tells its configuration.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Facts {
    /// The cluster's name.
    pub name: String,
    /// Its node count.
    pub size: u32,
    /// The nodes running each service, by service, in layout order.
    pub hosts: BTreeMap<String, Vec<String>>,
}

/// The prefix of a secret reference in rendered files: `${secret:NAME}`,
/// which the node resolves (see [`crate::pkg::secrets`]).
pub const SECRET_REFERENCE: &str = crate::pkg::secrets::REFERENCE;

/// How a secret's value is shown wherever values are listed.
pub const MASK: &str = "******";

/// One problem, with the field it is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The field path, e.g. `spec.values.port` or
    /// `ConfigModule web: spec.templates[0].content`.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl Problem {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem of a render, in a stable order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "{}", lines.join("; "))
    }
}

impl std::error::Error for Problems {}

/// A file of a package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    /// Unix permission bits.
    pub mode: u32,
    /// The bytes.
    pub content: Vec<u8>,
}

/// One package of a render.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    /// The service it is for; empty for every node.
    pub service: String,
    /// `NAME--cfg.HASH`.
    pub id: String,
    /// The sha256 of the content, in hex.
    pub content_digest: String,
    /// The files by path.
    pub files: BTreeMap<String, File>,
}

impl Package {
    /// The secret parameters its files refer to, sorted: the node needs
    /// their values to activate it.
    pub fn secret_parameters(&self) -> Vec<String> {
        let names: std::collections::BTreeSet<&str> = self
            .files
            .values()
            .filter_map(|f| std::str::from_utf8(&f.content).ok())
            .flat_map(crate::pkg::secrets::references)
            .collect();
        names.into_iter().map(str::to_owned).collect()
    }
}

/// What a render gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The packages, common first, then by service.
    pub packages: Vec<Package>,
    /// Every parameter and calculation with its value, secrets masked.
    pub expanded: BTreeMap<String, String>,
    /// Every parameter's value but the secrets', defaults included: the
    /// `previous` of the next render, for immutable parameters.
    pub values: BTreeMap<String, serde_json::Value>,
    /// The sha256 of the inputs.
    pub input_digest: String,
}
