//! Device counters from `/sys/block/<dev>/stat` for the device holding a path.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// Read and write counters of one block device.
#[derive(Debug, Clone, Copy, Default)]
#[allow(dead_code, reason = "sector counts are reported by some workloads only")]
pub struct DevStat {
    pub reads: u64,
    pub sectors_read: u64,
    pub writes: u64,
    pub sectors_written: u64,
}

/// The stat file of the whole disk or partition holding `path`, if the system exposes one.
#[must_use]
pub fn stat_file_for(path: &Path) -> Option<PathBuf> {
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc_major(dev), libc_minor(dev));
    let file = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
    file.exists().then_some(file)
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)
}

#[must_use]
pub fn read(file: &Path) -> Option<DevStat> {
    let text = std::fs::read_to_string(file).ok()?;
    let f: Vec<u64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    (f.len() >= 7).then(|| DevStat { reads: f[0], sectors_read: f[2], writes: f[4], sectors_written: f[6] })
}
