//! strata-tests: cross-crate integration, crash and fault suites, and the simulation harness.
//!
//! The model in [`wal_sim`] shares no code with the engine: it knows only the public API of the
//! shard and its own record of what was attempted, acknowledged and observed.
#![forbid(unsafe_code)]

pub mod harness;
pub mod wal_sim;
