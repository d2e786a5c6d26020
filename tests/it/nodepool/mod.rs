//! NodePools end to end: the local provider, EC2 (moto), and draining before
//! removal.

mod drain;
#[cfg(feature = "failpoints")]
mod ec2;
/// Without the feature, a stand-in test says how to build these.
#[cfg(not(feature = "failpoints"))]
mod ec2 {
    #[test]
    #[ignore = "built only with `--features failpoints`"]
    fn needs_the_failpoints_feature() {}
}
mod local;
