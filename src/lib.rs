//! Theseus keeps a fleet converged on state declared as Kubernetes custom
//! resources: which packages are active on which nodes, which service groups
//! run and where their containers are, and how many nodes each pool has.
//!
//! The crate builds one binary, `theseus`, whose subcommands are the
//! operator, the node agent and the command line. This library holds all of
//! it; `main.rs` only parses arguments.
//!
//! # Layers
//!
//! The modules form layers, and every import points down
//! (`docs/architecture.md`, "The layer rule"; the tests of `layers` check
//! it and that there is no import cycle):
//!
//! 1. [`api`]: the kinds (CRD types) and the conditions helper;
//! 2. [`pkg`]: the package format and the node's root, no Kubernetes; and
//!    [`layout`]: the layout solver, pure;
//! 3. [`config`]: the config generator (modules and values → packages
//!    named by the hash of their content), pure; [`plan`]: the cluster
//!    planner (the tasks from one layout to another, in order), pure, on
//!    `layout` and `api` only; and [`shared`]: what every controller
//!    uses: the `Shared` handle (client, reporter, metrics, halt, scope,
//!    stores), status and events helpers, the watch configuration;
//! 4. the controllers, one folder each, never importing each other:
//!    [`rollout`] (PackageSet), [`repository`] (PackageRepository),
//!    [`nodepool`], [`discovery`] (ServiceGroup and the etcd tree),
//!    [`cluster`] (ClusterTemplate and Cluster: validation and layouts),
//!    [`apps`] (ClusterCapability, Role, AppPackage, AppInstance); and
//!    beside them the node [`agent`], which uses only `api` and `pkg`;
//! 5. [`dashboard`]: the web pages under `/ui/`, which read and change
//!    the kinds as the signed-in user and read the discovery tree;
//! 6. [`operator`]: wiring only: each controller's typed configuration
//!    from the arguments, leader election, the HTTP endpoints (with the
//!    dashboard);
//! 7. [`cli`], and `main.rs`.
//!
//! [`logging`] sits below everything.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod apps;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod configgen;
pub mod dashboard;
pub mod discovery;
#[cfg(test)]
mod layers;
pub mod layout;
pub mod logging;
pub mod nodepool;
pub mod operator;
pub mod pkg;
pub mod plan;
pub mod quota;
pub mod repository;
pub mod rollout;
pub mod shared;
pub mod tenant;
