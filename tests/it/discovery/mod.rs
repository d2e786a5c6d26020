//! Service discovery against real etcd: the tree driver, the ServiceGroup
//! controller and publisher, following a group, and the lease under a slow
//! etcd.

mod controller;
mod follow;
mod lease;
mod tree;
