//! The integration tests, one binary: a module per area, and one `support`
//! module they all share (the testbed, the binary under test, kubectl and
//! helm, free ports, repositories, operators and agents as child processes).
//!
//! Run one area with a filter on its module path, e.g.
//! `cargo test --test it policy::` or `cargo test --test it pkg::crash::
//! --features failpoints`. The areas that crash processes at failpoints
//! (`agent::e2e`, `nodepool::ec2`, `operator::failover`, `pkg::crash`) exist
//! only with the `failpoints` feature. The fuzzer (`tests/fuzz/`) is a
//! binary of its own.
//!
//! Tests run concurrently in this one process: none sets an environment
//! variable or the working directory of the process, or uses a cluster
//! object, etcd prefix or port another test could use. Ports come from
//! `support::free_port` (10000–19999) or the kernel; only the demo has
//! fixed ones (27080–27104, its quickstart's), which no other test uses.

// Without `failpoints` the crash tests are not compiled, and some helpers
// only they use go unused.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
#[macro_use]
mod support;

mod agent;
mod api;
mod apps;
mod chart;
mod cli;
mod config;
mod config_bundles;
mod config_secrets;
mod container;
mod dashboard;
mod demo;
mod discovery;
mod layout;
mod nodepool;
mod operator;
mod pkg;
mod policy;
mod rollout;
mod tenants;
mod testbed;
mod trust;
