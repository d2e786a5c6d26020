//! The operator's leader failure modes, and the operator as its users meet
//! it (halt and resume, reaction to deletions while busy).

#[cfg(feature = "failpoints")]
mod failover;
/// Without the feature, a stand-in test says how to build these.
#[cfg(not(feature = "failpoints"))]
mod failover {
    #[test]
    #[ignore = "built only with `--features failpoints`"]
    fn needs_the_failpoints_feature() {}
}
mod reaction;
