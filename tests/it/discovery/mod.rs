//! Service discovery against real etcd: the tree driver, the ServiceGroup
//! controller and publisher, following a group, the lease under a slow
//! etcd, and a Cluster's services published from its nodes.

mod clusters;
mod controller;
mod follow;
mod lease;
mod tree;
