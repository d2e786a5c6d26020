//! The package manager: `theseus pkg` and `theseus repo` through the binary,
//! crash safety at failpoints, hostile archives, and the repository over
//! real HTTP.

mod commands;
#[cfg(feature = "failpoints")]
mod crash;
mod hostile;
mod http;
