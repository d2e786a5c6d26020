//! The package manager: `theseus pkg` and `theseus repo` through the binary,
//! crash safety at failpoints, hostile archives, and the repository over
//! real HTTP.

mod commands;
#[cfg(feature = "failpoints")]
mod crash;
/// Without the feature, a stand-in test says how to build these.
#[cfg(not(feature = "failpoints"))]
mod crash {
    #[test]
    #[ignore = "built only with `--features failpoints`"]
    fn needs_the_failpoints_feature() {}
}
mod hostile;
mod http;
