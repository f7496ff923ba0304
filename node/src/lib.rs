//! node: the Strata shard (WAL, memtable, version clock, time-window LSM), the server of the
//! native protocol with its admission control, the node's configuration, the Rust client
//! library, and the `strata` binary.
//!
//! It is not the I/O layer (see `strata-ioengine`) nor the byte layouts (see `strata-format`).
//! Later: the cold tier.
#![forbid(unsafe_code)]

pub mod client;
pub mod cold;
pub mod config;
pub mod disks;
pub mod error;
pub mod lsm;
pub mod memtable;
pub mod server;
pub mod shard;
pub mod sync;
pub mod wal;

pub use error::{OpenError, WriteError};
#[cfg(feature = "mutations")]
pub use shard::Mutation;
pub use shard::{ReadError, ScanEntry, Shard, ShardOptions, ShardStats, StoredEntry};
pub use wal::recovery::{RecoveryError, RecoveryReport, TornTail};
