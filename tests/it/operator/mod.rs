//! The operator's leader failure modes, and the operator as its users meet
//! it (halt and resume, reaction to deletions while busy).

#[cfg(feature = "failpoints")]
mod failover;
mod reaction;
