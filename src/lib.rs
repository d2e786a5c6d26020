//! Theseus keeps a fleet converged on state declared as Kubernetes custom
//! resources: which packages are active on which nodes, which service groups
//! run and where their containers are, and how many nodes each pool has.
//!
//! The crate builds one binary, `theseus`, whose subcommands are the
//! operator, the node agent and the command line. This library holds all of
//! it; `main.rs` only parses arguments.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod cli;
pub mod discovery;
pub mod layout;
pub mod logging;
pub mod nodepool;
pub mod operator;
pub mod pkg;
pub mod rollout;
