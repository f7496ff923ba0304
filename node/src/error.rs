//! Errors of the shard's operations: values carrying what a caller or operator needs.

use crate::wal::recovery::RecoveryError;
use std::rc::Rc;
use strata_format::key::KeyError;
use strata_ioengine::DiskError;

/// Why a write was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// Refused before it was accepted: nothing was written.
    BadKey(KeyError),
    /// Refused before it was accepted: nothing was written.
    ValueTooLarge { len: usize, max: usize },
    /// Refused before it was accepted: the shard stopped acknowledging writes, for this reason.
    ReadOnly { reason: Rc<str> },
    /// Refused before it was accepted: the memtable is at its memory budget.
    MemoryBudget { bytes: usize, max: usize },
    /// Refused before it was accepted: the SSD is nearly full; the rest is reserved so flushes
    /// and compactions can always finish.
    DiskFull { free_bytes: u64, reserve_bytes: u64 },
    /// Refused before it was accepted: the write's window is past retention (it would be
    /// dropped at once).
    Expired { ts: u64 },
    /// Refused before it was accepted: a range whose start lies after its end.
    BadRange { ts_from: u64, ts_to: u64 },
    /// Refused before it was accepted: the timestamp lies too far in the future.
    FutureTimestamp { ts: u64, limit: u64 },
    /// Accepted, but the write or fsync covering it failed: it may or may not be durable, and
    /// it will be known only after restart and replay. The shard is now read-only.
    UnknownOutcome { reason: Rc<str> },
    /// Accepted, but its batch was never written because the shard turned read-only first.
    NotWritten { reason: Rc<str> },
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadKey(e) => write!(f, "bad key: {e}"),
            Self::ValueTooLarge { len, max } => write!(f, "value of {len} bytes exceeds the limit of {max}"),
            Self::ReadOnly { reason } => write!(f, "shard is read-only: {reason}"),
            Self::MemoryBudget { bytes, max } => {
                write!(f, "memtable is at its memory budget ({bytes} of {max} bytes); retry later")
            }
            Self::UnknownOutcome { reason } => {
                write!(f, "outcome unknown (the write may or may not be durable): {reason}")
            }
            Self::DiskFull { free_bytes, reserve_bytes } => write!(
                f,
                "SSD nearly full: {free_bytes} bytes free, {reserve_bytes} reserved for flushes and compaction; \
                 writes resume when space is freed"
            ),
            Self::Expired { ts } => write!(f, "timestamp {ts} lies in a window past the retention period"),
            Self::BadRange { ts_from, ts_to } => write!(f, "bad range: start {ts_from} is after end {ts_to}"),
            Self::FutureTimestamp { ts, limit } => {
                write!(f, "timestamp {ts} is beyond the allowed future skew (limit {limit})")
            }
            Self::NotWritten { reason } => write!(f, "not written: the shard turned read-only first: {reason}"),
        }
    }
}

impl std::error::Error for WriteError {}

/// Why a shard could not open.
#[derive(Debug)]
pub enum OpenError {
    Disk(DiskError),
    /// Another process holds the data directory.
    Locked(DiskError),
    Recovery(RecoveryError),
    Manifest(crate::lsm::manifest::ManifestError),
    Table(crate::lsm::table::TableError),
    BadOptions(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disk(e) => write!(f, "cannot open shard: {e}"),
            Self::Locked(e) => write!(f, "cannot open shard: {e}"),
            Self::Recovery(e) => write!(f, "cannot open shard: {e}"),
            Self::Manifest(e) => write!(f, "cannot open shard: {e}"),
            Self::Table(e) => write!(f, "cannot open shard: {e}"),
            Self::BadOptions(why) => write!(f, "cannot open shard: bad options: {why}"),
        }
    }
}

impl std::error::Error for OpenError {}

impl OpenError {
    /// True when an I/O operation failed (retrying the open may succeed), as opposed to data
    /// found damaged or options refused.
    #[must_use]
    pub fn is_disk_error(&self) -> bool {
        matches!(
            self,
            Self::Disk(_)
                | Self::Recovery(RecoveryError::Disk(_))
                | Self::Manifest(crate::lsm::manifest::ManifestError::Disk(_))
                | Self::Table(crate::lsm::table::TableError::Disk(_))
        )
    }
}

impl From<DiskError> for OpenError {
    fn from(e: DiskError) -> Self {
        Self::Disk(e)
    }
}

impl From<RecoveryError> for OpenError {
    fn from(e: RecoveryError) -> Self {
        Self::Recovery(e)
    }
}
