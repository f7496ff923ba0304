//! format: byte layouts of Strata's files and frames. It does no I/O (see `strata-ioengine`).
//!
//! Every layout here is described byte by byte in `docs/format.md`; the struct that implements a
//! layout carries the same table as its doc comment. All integers are little-endian, except inside
//! encoded keys, which are big-endian so that byte order equals key order.
#![forbid(unsafe_code)]

pub mod checksum;
pub mod cold;
pub mod key;
pub mod manifest;
pub mod protocol;
pub mod route;
pub mod table;
#[cfg(test)]
mod testutil;
pub mod ticket;
pub mod varint;
pub mod version;
pub mod wal;

/// The unit of direct I/O and of WAL placement: every batch starts on a fresh block.
pub const BLOCK_SIZE: usize = 4096;
/// The unit a write can tear at (the smallest atomic unit the device promises).
pub const SECTOR_SIZE: usize = 512;

/// Rounds `n` up to a multiple of `BLOCK_SIZE`.
#[must_use]
pub const fn align_up_block(n: usize) -> usize {
    n.div_ceil(BLOCK_SIZE) * BLOCK_SIZE
}
