//! Service discovery: the etcd tree of DESIGN.md §5.
//!
//! - [`paths`]: the key layout and group encoding (pure);
//! - [`tree`]: the driver operations over etcd v3;
//! - [`diff`]: desired against actual keys, as transactions (pure).

pub mod config;
pub mod diff;
pub mod model;
pub mod paths;
pub mod tree;

pub use config::{EtcdArgs, EtcdConfig};
pub use model::{ContainerInfo, GroupConfig, PortMapping};
pub use tree::{Tree, TreeError};
