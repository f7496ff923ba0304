//! CRC32C (Castagnoli) checksums, hardware-accelerated where the CPU has it.
//!
//! Invariant: a checksum always covers the bytes that say where the data belongs (file number,
//! offset, sequence) as well as the data, so a block copied to the wrong place fails its check.

/// CRC32C of `bytes`.
#[must_use]
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Continues a CRC32C over more bytes.
#[must_use]
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}
