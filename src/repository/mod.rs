//! The PackageRepository controller: reads each repository's index,
//! verifies it, keeps the highest version it accepted and the index's
//! expiry in status, and puts the last good index in the shared
//! [`IndexCache`](crate::shared::stores::IndexCache) for the PackageSet
//! controller.

pub mod controller;

pub use controller::run;
