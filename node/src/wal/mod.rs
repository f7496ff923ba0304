//! The write-ahead log: preallocated segment files, group-commit batches, recovery.
//!
//! Invariant: a batch is acknowledged only after its one aligned write and one fdatasync both
//! succeeded; a block holding acknowledged records is never rewritten; segment sequence numbers
//! and batch sequence numbers only increase, and each new segment's header records where the
//! previous segment's log ended, so recovery can tell a torn tail from corruption in the middle.

pub mod recovery;
pub mod segment;

use std::path::{Path, PathBuf};

/// The name of segment file number `file_no`.
#[must_use]
pub fn segment_path(wal_dir: &Path, file_no: u32) -> PathBuf {
    wal_dir.join(format!("wal-{file_no:06}.seg"))
}

/// The file number of a segment file name, if it is one.
#[must_use]
pub fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".seg")?;
    // Six digits, more once file numbers pass 999,999.
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let p = segment_path(Path::new("/d"), 42);
        assert_eq!(p, Path::new("/d/wal-000042.seg"));
        assert_eq!(parse_segment_name("wal-000042.seg"), Some(42));
        assert_eq!(parse_segment_name("wal-42.seg"), None);
        assert_eq!(parse_segment_name("wal-1234567.seg"), Some(1_234_567));
        assert_eq!(segment_path(Path::new("/d"), 1_234_567), Path::new("/d/wal-1234567.seg"));
        assert_eq!(parse_segment_name("LOCK"), None);
    }
}
