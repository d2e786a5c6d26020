//! The node package manager: package ids and metadata, repositories,
//! hostile-archive-safe unpacking, and atomic generations.
//!
//! Nothing here touches Kubernetes. The node agent drives it through
//! [`Root`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use theseus::pkg::{ActivateOptions, FetchOptions, Fetcher, PackageId, Root};
//! let root = Root::open("/var/lib/theseus".as_ref())?; // also recovers
//! let fetcher = Fetcher::new("http://repo.example/", vec![], FetchOptions::default());
//! let ids: Vec<PackageId> = vec!["nginx--1.25.3".parse()?];
//! let mut activation = root.begin_activation(&ids, ActivateOptions::default())?;
//! activation.fetch(Some(&fetcher)).await?; // download, verify, unpack
//! activation.build()?;                     // build generations/N
//! // … stop the service here …
//! let switched = activation.switch()?;     // one rename
//! println!("now at generation {} ({})", switched.generation, switched.hash);
//! # Ok(()) }
//! ```

pub mod accepted;
mod activation;
pub mod build;
mod check;
pub mod codec;
pub mod disk;
pub mod failpoint;
pub mod fetch;
mod fetch_error;
pub mod generation;
pub mod id;
pub mod index;
pub mod journal;
mod paths;
pub mod pkginfo;
mod recover;
mod root;
pub mod secrets;
pub mod serve;
pub mod set;
mod stream;
pub mod trust;
pub mod unpack;
pub mod vars;

pub use activation::{ActivateOptions, Activation, GcReport, id_from_archive_name};
pub use check::CheckReport;
pub use fetch::{FetchError, FetchOptions, Fetched, Fetcher};
pub use id::PackageId;
pub use pkginfo::PkgInfo;
pub use root::{
    CachedPackage, DEFAULT_KEEP, RecoveryReport, Root, RootError, Switched, generations_to_remove,
};
pub use set::set_hash;
pub use unpack::Limits;
