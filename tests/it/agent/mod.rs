//! The node agent: its local HTTP API and its process supervisor without a
//! cluster, and the agent end to end against the testbed.

#[cfg(feature = "failpoints")]
mod e2e;
/// Without the feature, a stand-in test says how to build these.
#[cfg(not(feature = "failpoints"))]
mod e2e {
    #[test]
    #[ignore = "built only with `--features failpoints`"]
    fn needs_the_failpoints_feature() {}
}
mod http;
mod supervisor;
