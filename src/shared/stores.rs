//! Caches one controller fills and others read.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::pkg::index::Index;

/// The last good index of each PackageRepository, by name: written by the
/// PackageRepository controller, read by the PackageSet controller.
pub type IndexCache = Arc<RwLock<HashMap<String, Arc<Index>>>>;

/// The shared caches.
#[derive(Clone, Default)]
pub struct Stores {
    /// Verified repository indexes.
    pub indexes: IndexCache,
}
