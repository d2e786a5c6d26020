//! The layout solver: table tests rule by rule, properties against brute
//! force, and templates end to end.

mod clusters;
mod plans;
mod props;
mod solver;
mod templates;
