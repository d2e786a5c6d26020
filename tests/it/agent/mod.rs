//! The node agent: its local HTTP API and its process supervisor without a
//! cluster, and the agent end to end against the testbed.

#[cfg(feature = "failpoints")]
mod e2e;
mod http;
mod supervisor;
