//! NodePools end to end: the local provider, EC2 (moto), and draining before
//! removal.

mod drain;
#[cfg(feature = "failpoints")]
mod ec2;
mod local;
