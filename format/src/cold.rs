//! Cold tier layout: per-disk cold files of cold blocks, the cold link that points at a block,
//! the disk label, and the placement of a bucket's window on a disk.
//!
//! A cold file is preallocated at a fixed size. Its first 4 KiB hold a [`ColdFileHeader`]
//! (written last, once the file's blocks are in place); blocks follow, each 4 KiB-aligned:
//!
//! ```text
//! offset 0        4096                                                      file_bytes
//! | file header | block | block | ... | block | zeros (preallocated, unused) |
//! ```
//!
//! A block is a 64-byte [`ColdBlockHeader`] and its stored bytes (lz4, or raw when that is not
//! smaller), zero-padded to 4 KiB; a block is at most [`COLD_BLOCK_MAX`] bytes on disk unless it
//! holds a single entry larger than that. It holds the entries of one bucket of one window, in
//! key order, encoded as table data-block entries ([`crate::table::push_entry`]).
//!
//! Invariant: the encoding is deterministic: the same window contents, shard, generation and
//! placement give the same bytes, so replicas hold byte-identical disks and a lost disk is
//! rebuilt by copying a peer's. A block's CRC covers its file identity (window, shard,
//! generation, part), its offset and its bytes: a block read from the wrong file or place fails.

use crate::BLOCK_SIZE;
use crate::checksum::{crc32c, crc32c_append};
use crate::key::Bucket;
use crate::route::group_of;
use crate::table::{DecodedBlock, EntryIter, EntryLayout};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// "STCB": Strata cold block.
pub const COLD_BLOCK_MAGIC: u32 = u32::from_le_bytes(*b"STCB");
/// "STCF": Strata cold file.
pub const COLD_FILE_MAGIC: u32 = u32::from_le_bytes(*b"STCF");
/// "STDL": Strata disk label.
pub const DISK_LABEL_MAGIC: u32 = u32::from_le_bytes(*b"STDL");
pub const COLD_FORMAT_VERSION: u16 = 1;
/// The largest cold block on disk, header and padding included (one larger entry excepted).
pub const COLD_BLOCK_MAX: usize = 64 * 1024;
pub const COLD_BLOCK_HEADER_SIZE: usize = size_of::<ColdBlockHeader>();
/// The largest cold block on disk: a block holding one entry of the largest key and value,
/// stored raw, padded to 4 KiB. A cold file must hold at least one.
pub const COLD_BLOCK_LARGEST: usize = (COLD_BLOCK_HEADER_SIZE
    + crate::table::ENTRY_HEADER_SIZE
    + crate::table::KEY_LEN_MAX
    + crate::protocol::VALUE_LEN_MAX as usize)
    .next_multiple_of(BLOCK_SIZE);
/// Where the first block of a cold file starts (after the file header's block).
pub const COLD_DATA_START: u64 = BLOCK_SIZE as u64;
/// The name of the label file at the root of every cold disk.
pub const DISK_LABEL_FILE: &str = "STRATA-DISK";

/// Which file a block belongs to: the window's files of one shard, one sink generation, and a
/// part number on its disk (a window's data on one disk may span several fixed-size files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ColdFileId {
    pub window: u64,
    pub shard: u16,
    pub generation: u32,
    pub part: u16,
}

impl ColdFileId {
    /// The directory, under a disk's root, holding a shard's cold files.
    #[must_use]
    pub fn shard_dir(shard: u16) -> String {
        format!("s{shard:03}")
    }

    /// The file's name inside its shard directory.
    #[must_use]
    pub fn file_name(&self) -> String {
        format!("w{:012}-g{:06}-p{:04}.cold", self.window, self.generation, self.part)
    }

    /// The id a file name in shard `shard`'s directory names, if it is a cold file's.
    #[must_use]
    pub fn parse(shard: u16, name: &str) -> Option<Self> {
        let rest = name.strip_prefix('w')?.strip_suffix(".cold")?;
        let mut parts = rest.split('-');
        let window = parts.next()?.parse().ok()?;
        let generation = parts.next()?.strip_prefix('g')?.parse().ok()?;
        let part = parts.next()?.strip_prefix('p')?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        let id = Self { window, shard, generation, part };
        (id.file_name() == name).then_some(id)
    }

    /// The path of the file relative to its disk's root.
    #[must_use]
    pub fn relative_path(&self) -> String {
        format!("{}/{}", Self::shard_dir(self.shard), self.file_name())
    }
}

/// The disk that holds `bucket`'s entries of `window` when the window was sunk with `disks`
/// disks in its placement epoch. Balanced: over all buckets, disk counts differ by at most one
/// (the route table's guarantee, applied to a bijection of the buckets), and a bucket's windows
/// rotate over the disks. Adding a disk starts a new epoch; windows keep the epoch they were
/// sunk in, so their history never moves.
#[must_use]
pub fn disk_of(bucket: Bucket, window: u64, disks: u16) -> u16 {
    assert!(disks > 0, "a placement epoch has at least one disk");
    // A fixed bijection of bucket numbers: shards route with the same table, so without it a
    // shard's buckets would all land on one disk per window.
    let mixed = bucket.rotate_left(8) ^ 0xA5C3;
    let n = u64::from(disks);
    ((u64::from(group_of(mixed, disks)) + window % n) % n) as u16
}

/// Where a block lies: its part file on the bucket's disk, offset and length on disk.
///
/// ```text
/// offset size field     meaning
/// 0      2    part      part number of the window's file on the disk
/// 2      2    reserved  0
/// 4      4    len       bytes on disk, header and padding included
/// 8      8    offset    4 KiB-aligned offset in the file
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ColdLink {
    pub part: u16,
    pub offset: u64,
    pub len: u32,
}

pub const COLD_LINK_SIZE: usize = 16;

impl ColdLink {
    #[must_use]
    pub fn encode(&self) -> [u8; COLD_LINK_SIZE] {
        let mut out = [0u8; COLD_LINK_SIZE];
        out[0..2].copy_from_slice(&self.part.to_le_bytes());
        out[4..8].copy_from_slice(&self.len.to_le_bytes());
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ColdFormatError> {
        if bytes.len() != COLD_LINK_SIZE || bytes[2..4] != [0, 0] {
            return Err(ColdFormatError::BadLink);
        }
        let link = Self {
            part: u16::from_le_bytes([bytes[0], bytes[1]]),
            len: u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")),
            offset: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
        };
        let aligned = link.offset.is_multiple_of(BLOCK_SIZE as u64) && (link.len as usize).is_multiple_of(BLOCK_SIZE);
        if !aligned || link.offset < COLD_DATA_START || link.len == 0 {
            return Err(ColdFormatError::BadLink);
        }
        Ok(link)
    }
}

/// A sunk window's link to one cold block, kept on SSD as the value of a link-table entry whose
/// key is the block's last key. A get finds the first link whose key is at or above its own,
/// and reads the block only when the key lies in the block's key range and the fingerprints
/// say it may be there; a scan reads the blocks whose ranges meet its own.
///
/// ```text
/// offset size          field         meaning
/// 0      16            link          the block's place ([`ColdLink`])
/// 16     4             crc           the block header's CRC: a read returns exactly this block
/// 20     2             first_shared  bytes the block's first key shares with its last key
/// 22     2             first_suffix  length of the rest of the first key
/// 24     4             fp_count      fingerprints that follow
/// 28     first_suffix  first key     the first key's bytes after the shared ones
/// ..     4*fp_count    fingerprints  u32 LE, ascending, distinct: [`fingerprint`] of every key
///                                    and of every key's pkey prefix (bucket, length, pkey)
/// ```
///
/// Fingerprints cost four bytes per entry on SSD, not RAM: a key absent from a block reads it
/// only when its 32-bit fingerprint collides with one of the block's (about one in 2^32 per
/// fingerprint the block lists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockLink {
    pub link: ColdLink,
    pub crc: u32,
    pub first_key: Vec<u8>,
    pub fingerprints: Vec<u32>,
}

const BLOCK_LINK_FIXED: usize = 28;

/// A key's (or pkey prefix's) 32-bit fingerprint in a [`BlockLink`].
#[must_use]
pub fn fingerprint(bytes: &[u8]) -> u32 {
    (xxhash_rust::xxh3::xxh3_64_with_seed(bytes, 0x5354_4650) >> 32) as u32
}

impl BlockLink {
    /// The link of a block holding `keys` (encoded keys, in key order): the fingerprints of
    /// every key and of every key's pkey prefix.
    ///
    /// # Panics
    /// When a key is shorter than a timestamp (not an encoded key).
    #[must_use]
    pub fn new<K: AsRef<[u8]>>(link: ColdLink, crc: u32, keys: &[K]) -> Self {
        let mut fingerprints: Vec<u32> = keys
            .iter()
            .map(AsRef::as_ref)
            .flat_map(|k| [fingerprint(k), fingerprint(crate::key::pkey_prefix(k))])
            .collect();
        fingerprints.sort_unstable();
        fingerprints.dedup();
        Self { link, crc, first_key: keys.first().map(|k| k.as_ref().to_vec()).unwrap_or_default(), fingerprints }
    }

    /// Whether the block may hold `bytes` (a key or a pkey prefix): false only when surely not.
    #[must_use]
    pub fn may_hold(&self, bytes: &[u8]) -> bool {
        self.fingerprints.binary_search(&fingerprint(bytes)).is_ok()
    }

    /// The value of the link-table entry whose key is `last_key` (the block's last key).
    #[must_use]
    pub fn encode(&self, last_key: &[u8]) -> Vec<u8> {
        let shared = self.first_key.iter().zip(last_key).take_while(|(a, b)| a == b).count();
        let suffix = &self.first_key[shared..];
        let mut out = Vec::with_capacity(BLOCK_LINK_FIXED + suffix.len() + 4 * self.fingerprints.len());
        out.extend_from_slice(&self.link.encode());
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.extend_from_slice(&u16::try_from(shared).expect("keys are short").to_le_bytes());
        out.extend_from_slice(&u16::try_from(suffix.len()).expect("keys are short").to_le_bytes());
        out.extend_from_slice(&u32::try_from(self.fingerprints.len()).expect("at most 2^32").to_le_bytes());
        out.extend_from_slice(suffix);
        for fp in &self.fingerprints {
            out.extend_from_slice(&fp.to_le_bytes());
        }
        out
    }

    /// Decodes the value of the link-table entry whose key is `last_key`.
    pub fn decode(bytes: &[u8], last_key: &[u8]) -> Result<Self, ColdFormatError> {
        if bytes.len() < BLOCK_LINK_FIXED {
            return Err(ColdFormatError::BadLink);
        }
        let link = ColdLink::decode(&bytes[..COLD_LINK_SIZE])?;
        let u16_at = |at: usize| usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let (shared, suffix_len, fp_count) = (u16_at(20), u16_at(22), u32_at(24) as usize);
        let expected = fp_count.checked_mul(4).and_then(|n| n.checked_add(BLOCK_LINK_FIXED + suffix_len));
        // A block holds at least one entry, so its link lists at least one fingerprint.
        if shared > last_key.len() || fp_count == 0 || expected != Some(bytes.len()) {
            return Err(ColdFormatError::BadLink);
        }
        let mut first_key = last_key[..shared].to_vec();
        first_key.extend_from_slice(&bytes[BLOCK_LINK_FIXED..BLOCK_LINK_FIXED + suffix_len]);
        let fingerprints: Vec<u32> = bytes[BLOCK_LINK_FIXED + suffix_len..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        if fingerprints.windows(2).any(|w| w[0] >= w[1]) || first_key.as_slice() > last_key {
            return Err(ColdFormatError::BadLink);
        }
        Ok(Self { link, crc: u32_at(16), first_key, fingerprints })
    }
}

/// Cold block header, at a 4 KiB-aligned offset of a cold file.
///
/// ```text
/// offset size field          meaning
/// 0      4    magic          "STCB"
/// 4      2    format_version 1
/// 6      1    compression    0 none, 1 lz4
/// 7      1    reserved       0
/// 8      8    window         the file's window
/// 16     4    generation     the file's sink generation
/// 20     2    shard          the file's shard
/// 22     2    part           the file's part number
/// 24     8    offset         this block's offset in the file
/// 32     2    bucket         the bucket every entry belongs to
/// 34     2    reserved       0
/// 36     4    entry_count    entries in the block
/// 40     4    stored_len     bytes after this header (before padding)
/// 44     4    raw_len        bytes once decompressed
/// 48     4    block_len      bytes on disk, header and padding included
/// 52     4    reserved       0
/// 56     4    crc            CRC32C of bytes 0..56 and the stored bytes
/// 60     4    reserved       0
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ColdBlockHeader {
    pub magic: U32,
    pub format_version: U16,
    pub compression: u8,
    pub reserved0: u8,
    pub window: U64,
    pub generation: U32,
    pub shard: U16,
    pub part: U16,
    pub offset: U64,
    pub bucket: U16,
    pub reserved1: U16,
    pub entry_count: U32,
    pub stored_len: U32,
    pub raw_len: U32,
    pub block_len: U32,
    pub reserved2: U32,
    pub crc: U32,
    pub reserved3: U32,
}
const _: () = assert!(size_of::<ColdBlockHeader>() == 64);

/// Why cold bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColdFormatError {
    Unwritten,
    BadMagic {
        found: u32,
    },
    BadFormatVersion {
        found: u16,
    },
    ChecksumMismatch {
        stored: u32,
        computed: u32,
    },
    /// The block is intact but belongs elsewhere (another file, offset or generation).
    Misplaced {
        reason: String,
    },
    Truncated {
        needed: usize,
        available: usize,
    },
    BadBlock {
        reason: &'static str,
    },
    BadLink,
    Decompress {
        reason: String,
    },
}

impl std::fmt::Display for ColdFormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unwritten => write!(f, "never written (zero bytes)"),
            Self::BadMagic { found } => write!(f, "bad magic {found:#010x}"),
            Self::BadFormatVersion { found } => write!(f, "unknown cold format version {found}"),
            Self::ChecksumMismatch { stored, computed } => {
                write!(f, "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")
            }
            Self::Misplaced { reason } => write!(f, "block belongs elsewhere: {reason}"),
            Self::Truncated { needed, available } => {
                write!(f, "truncated: needs {needed} bytes, {available} available")
            }
            Self::BadBlock { reason } => write!(f, "malformed cold block: {reason}"),
            Self::BadLink => write!(f, "malformed cold link"),
            Self::Decompress { reason } => write!(f, "lz4 decompression failed: {reason}"),
        }
    }
}

impl std::error::Error for ColdFormatError {}

fn block_crc(header: &ColdBlockHeader, stored: &[u8]) -> u32 {
    crc32c_append(crc32c(&header.as_bytes()[..56]), stored)
}

/// Encodes one cold block of `entry_count` entries (`raw`: entries as [`crate::table::push_entry`]
/// writes them) for `offset` of `file`, padded to 4 KiB.
#[must_use]
pub fn encode_cold_block(file: ColdFileId, offset: u64, bucket: Bucket, raw: &[u8], entry_count: u32) -> Vec<u8> {
    assert!(offset.is_multiple_of(BLOCK_SIZE as u64) && offset >= COLD_DATA_START, "blocks start 4 KiB-aligned");
    let compressed = lz4_flex::block::compress(raw);
    let (compression, stored): (u8, &[u8]) = if compressed.len() < raw.len() { (1, &compressed) } else { (0, raw) };
    let block_len = crate::align_up_block(COLD_BLOCK_HEADER_SIZE + stored.len());
    let mut header = ColdBlockHeader {
        magic: COLD_BLOCK_MAGIC.into(),
        format_version: COLD_FORMAT_VERSION.into(),
        compression,
        reserved0: 0,
        window: file.window.into(),
        generation: file.generation.into(),
        shard: file.shard.into(),
        part: file.part.into(),
        offset: offset.into(),
        bucket: bucket.into(),
        reserved1: 0.into(),
        entry_count: entry_count.into(),
        stored_len: u32::try_from(stored.len()).expect("a block fits u32").into(),
        raw_len: u32::try_from(raw.len()).expect("a block fits u32").into(),
        block_len: u32::try_from(block_len).expect("a block fits u32").into(),
        reserved2: 0.into(),
        crc: 0.into(),
        reserved3: 0.into(),
    };
    header.crc = block_crc(&header, stored).into();
    let mut out = Vec::with_capacity(block_len);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(stored);
    out.resize(block_len, 0);
    out
}

/// The header at the start of `bytes`, its fields checked for shape (magic, version, lengths)
/// but its CRC not yet (that needs the whole block).
pub fn peek_cold_block(bytes: &[u8]) -> Result<ColdBlockHeader, ColdFormatError> {
    let (header, _) = ColdBlockHeader::read_from_prefix(bytes)
        .map_err(|_| ColdFormatError::Truncated { needed: COLD_BLOCK_HEADER_SIZE, available: bytes.len() })?;
    if header.magic.get() != COLD_BLOCK_MAGIC {
        if bytes[..COLD_BLOCK_HEADER_SIZE].iter().all(|b| *b == 0) {
            return Err(ColdFormatError::Unwritten);
        }
        return Err(ColdFormatError::BadMagic { found: header.magic.get() });
    }
    if header.format_version.get() != COLD_FORMAT_VERSION {
        return Err(ColdFormatError::BadFormatVersion { found: header.format_version.get() });
    }
    let block_len = header.block_len.get() as usize;
    if block_len != crate::align_up_block(COLD_BLOCK_HEADER_SIZE + header.stored_len.get() as usize) {
        return Err(ColdFormatError::BadBlock { reason: "block length does not match stored length" });
    }
    Ok(header)
}

/// A checked cold block: its bucket and decoded entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColdBlock {
    pub bucket: Bucket,
    /// The CRC its header carries: a [`BlockLink`] names the block by it.
    pub crc: u32,
    pub block: DecodedBlock,
}

impl ColdBlock {
    /// The block's entries, in key order.
    #[must_use]
    pub fn entries(&self) -> EntryIter<'_> {
        EntryIter::new(&self.block)
    }
}

/// Checks and decodes the block at the start of `bytes`, expected at `offset` of `file`.
pub fn decode_cold_block(bytes: &[u8], file: ColdFileId, offset: u64) -> Result<ColdBlock, ColdFormatError> {
    let header = check_cold_block(bytes)?;
    let (at, id) = (header.offset.get(), header_file(&header));
    if at != offset || id != file {
        return Err(ColdFormatError::Misplaced {
            reason: format!(
                "it names {} at offset {at}, read from {} at offset {offset}",
                id.relative_path(),
                file.relative_path()
            ),
        });
    }
    let stored = &bytes[COLD_BLOCK_HEADER_SIZE..COLD_BLOCK_HEADER_SIZE + header.stored_len.get() as usize];
    let raw_len = header.raw_len.get() as usize;
    let raw = match header.compression {
        0 if raw_len == stored.len() => stored.to_vec(),
        0 => return Err(ColdFormatError::BadBlock { reason: "raw length differs from stored length" }),
        1 => crate::table::lz4_decompress(stored, raw_len).map_err(|reason| ColdFormatError::Decompress { reason })?,
        _ => return Err(ColdFormatError::BadBlock { reason: "unknown compression" }),
    };
    if raw.len() != raw_len {
        return Err(ColdFormatError::BadBlock { reason: "decompressed length differs from raw length" });
    }
    let block = ColdBlock {
        bucket: header.bucket.get(),
        crc: header.crc.get(),
        block: DecodedBlock::new(raw, header.entry_count.get(), EntryLayout::Fixed),
    };
    let mut previous: Option<&[u8]> = None;
    for entry in block.entries() {
        let entry = entry.map_err(|_| ColdFormatError::BadBlock { reason: "malformed entry" })?;
        // The shape of an encoded key (its pkey length byte agrees with its length), so readers
        // may take its pkey prefix and timestamp apart.
        let key = entry.key;
        if key.len() <= crate::key::KEY_OVERHEAD || usize::from(key[2]) != key.len() - crate::key::KEY_OVERHEAD {
            return Err(ColdFormatError::BadBlock { reason: "an entry's key is malformed" });
        }
        if u16::from_be_bytes([key[0], key[1]]) != block.bucket {
            return Err(ColdFormatError::BadBlock { reason: "entry of another bucket" });
        }
        if previous.is_some_and(|p| p >= entry.key) {
            return Err(ColdFormatError::BadBlock { reason: "entries out of key order" });
        }
        previous = Some(entry.key);
    }
    Ok(block)
}

/// Checks a block's shape and CRC without decoding its entries (for scrubbing). `bytes` must
/// hold at least the whole block.
pub fn check_cold_block(bytes: &[u8]) -> Result<ColdBlockHeader, ColdFormatError> {
    let header = peek_cold_block(bytes)?;
    let block_len = header.block_len.get() as usize;
    if bytes.len() < block_len {
        return Err(ColdFormatError::Truncated { needed: block_len, available: bytes.len() });
    }
    let stored = &bytes[COLD_BLOCK_HEADER_SIZE..COLD_BLOCK_HEADER_SIZE + header.stored_len.get() as usize];
    let computed = block_crc(&header, stored);
    if computed != header.crc.get() {
        return Err(ColdFormatError::ChecksumMismatch { stored: header.crc.get(), computed });
    }
    if header.reserved0 != 0
        || header.reserved1.get() != 0
        || header.reserved2.get() != 0
        || header.reserved3.get() != 0
    {
        return Err(ColdFormatError::BadBlock { reason: "reserved field is not zero" });
    }
    Ok(header)
}

/// The file a block header names.
#[must_use]
pub fn header_file(header: &ColdBlockHeader) -> ColdFileId {
    ColdFileId {
        window: header.window.get(),
        shard: header.shard.get(),
        generation: header.generation.get(),
        part: header.part.get(),
    }
}

/// Cold file header, the first 4 KiB of a cold file (zero-padded), written once its blocks are.
///
/// ```text
/// offset size field          meaning
/// 0      4    magic          "STCF"
/// 4      2    format_version 1
/// 6      2    disk           the disk index the file was placed on
/// 8      8    window
/// 16     4    generation
/// 20     2    shard
/// 22     2    part
/// 24     4    epoch          placement epoch of the window
/// 28     4    block_count    blocks in the file
/// 32     8    used_bytes     end of the last block (blocks lie in 4096..used_bytes)
/// 40     8    file_bytes     the preallocated size
/// 48     4    reserved       0
/// 52     4    crc            CRC32C of bytes 0..52
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColdFileHeader {
    pub file: ColdFileId,
    pub disk: u16,
    pub epoch: u32,
    pub block_count: u32,
    pub used_bytes: u64,
    pub file_bytes: u64,
}

impl ColdFileHeader {
    /// The header's 4 KiB block.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; BLOCK_SIZE];
        out[0..4].copy_from_slice(&COLD_FILE_MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&COLD_FORMAT_VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&self.disk.to_le_bytes());
        out[8..16].copy_from_slice(&self.file.window.to_le_bytes());
        out[16..20].copy_from_slice(&self.file.generation.to_le_bytes());
        out[20..22].copy_from_slice(&self.file.shard.to_le_bytes());
        out[22..24].copy_from_slice(&self.file.part.to_le_bytes());
        out[24..28].copy_from_slice(&self.epoch.to_le_bytes());
        out[28..32].copy_from_slice(&self.block_count.to_le_bytes());
        out[32..40].copy_from_slice(&self.used_bytes.to_le_bytes());
        out[40..48].copy_from_slice(&self.file_bytes.to_le_bytes());
        let crc = crc32c(&out[..52]);
        out[52..56].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ColdFormatError> {
        if bytes.len() < 56 {
            return Err(ColdFormatError::Truncated { needed: 56, available: bytes.len() });
        }
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(0) != COLD_FILE_MAGIC {
            if bytes[..56].iter().all(|b| *b == 0) {
                return Err(ColdFormatError::Unwritten);
            }
            return Err(ColdFormatError::BadMagic { found: u32_at(0) });
        }
        let computed = crc32c(&bytes[..52]);
        if computed != u32_at(52) {
            return Err(ColdFormatError::ChecksumMismatch { stored: u32_at(52), computed });
        }
        if u16_at(4) != COLD_FORMAT_VERSION {
            return Err(ColdFormatError::BadFormatVersion { found: u16_at(4) });
        }
        let header = Self {
            disk: u16_at(6),
            file: ColdFileId { window: u64_at(8), generation: u32_at(16), shard: u16_at(20), part: u16_at(22) },
            epoch: u32_at(24),
            block_count: u32_at(28),
            used_bytes: u64_at(32),
            file_bytes: u64_at(40),
        };
        if header.used_bytes < COLD_DATA_START || header.used_bytes > header.file_bytes || u32_at(48) != 0 {
            return Err(ColdFormatError::BadBlock { reason: "file header lengths are inconsistent" });
        }
        Ok(header)
    }
}

/// A disk's identity label: which node and which disk index it belongs to, and the placement
/// epoch in which it joined. Stored as the file [`DISK_LABEL_FILE`] at the disk's root.
///
/// ```text
/// offset size field       meaning
/// 0      4    magic       "STDL"
/// 4      2    version     1
/// 6      2    disk        disk index
/// 8      8    node        node id (random at the node's first start)
/// 16     4    epoch       placement epoch the disk joined in
/// 20     4    crc         CRC32C of bytes 0..20
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLabel {
    pub node: u64,
    pub disk: u16,
    pub epoch: u32,
}

impl DiskLabel {
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; 24];
        out[0..4].copy_from_slice(&DISK_LABEL_MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&COLD_FORMAT_VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&self.disk.to_le_bytes());
        out[8..16].copy_from_slice(&self.node.to_le_bytes());
        out[16..20].copy_from_slice(&self.epoch.to_le_bytes());
        let crc = crc32c(&out[..20]);
        out[20..24].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ColdFormatError> {
        if bytes.len() != 24 {
            return Err(ColdFormatError::Truncated { needed: 24, available: bytes.len() });
        }
        let magic = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
        if magic != DISK_LABEL_MAGIC {
            return Err(ColdFormatError::BadMagic { found: magic });
        }
        let stored = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
        let computed = crc32c(&bytes[..20]);
        if stored != computed {
            return Err(ColdFormatError::ChecksumMismatch { stored, computed });
        }
        Ok(Self {
            disk: u16::from_le_bytes([bytes[6], bytes[7]]),
            node: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
            epoch: u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{BUCKET_COUNT, bucket_of, encode_key};
    use crate::table::push_entry;

    fn file() -> ColdFileId {
        ColdFileId { window: 19_700, shard: 3, generation: 2, part: 1 }
    }

    fn block_of(pkey: &[u8], n: u64) -> (Bucket, Vec<u8>, u32) {
        let mut raw = Vec::new();
        for ts in 0..n {
            push_entry(&mut raw, &encode_key(pkey, ts).unwrap(), 100 + ts, Some(format!("value-{ts}").as_bytes()));
        }
        (bucket_of(pkey), raw, n as u32)
    }

    #[test]
    fn cold_block_round_trips_and_is_deterministic() {
        let (bucket, raw, n) = block_of(b"user-1", 200);
        let bytes = encode_cold_block(file(), 8192, bucket, &raw, n);
        assert_eq!(bytes, encode_cold_block(file(), 8192, bucket, &raw, n));
        assert!(bytes.len() <= COLD_BLOCK_MAX && bytes.len().is_multiple_of(BLOCK_SIZE));
        let block = decode_cold_block(&bytes, file(), 8192).unwrap();
        assert_eq!(block.bucket, bucket);
        let entries: Vec<_> = block.entries().map(Result::unwrap).collect();
        assert_eq!(entries.len(), 200);
        assert_eq!(entries[7].value, Some(&b"value-7"[..]));
    }

    #[test]
    fn cold_block_detects_every_single_bit_flip() {
        let (bucket, raw, n) = block_of(b"u", 20);
        let bytes = encode_cold_block(file(), 4096, bucket, &raw, n);
        let covered = COLD_BLOCK_HEADER_SIZE + peek_cold_block(&bytes).unwrap().stored_len.get() as usize;
        for bit in 0..covered * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_cold_block(&bad, file(), 4096).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn cold_block_is_bound_to_its_file_and_offset() {
        let (bucket, raw, n) = block_of(b"u", 20);
        let bytes = encode_cold_block(file(), 4096, bucket, &raw, n);
        assert!(matches!(decode_cold_block(&bytes, file(), 8192), Err(ColdFormatError::Misplaced { .. })));
        let other = ColdFileId { generation: 3, ..file() };
        assert!(matches!(decode_cold_block(&bytes, other, 4096), Err(ColdFormatError::Misplaced { .. })));
        assert_eq!(decode_cold_block(&[0; 4096], file(), 4096).unwrap_err(), ColdFormatError::Unwritten);
    }

    #[test]
    fn cold_file_names_round_trip() {
        let id = file();
        assert_eq!(ColdFileId::parse(3, &id.file_name()), Some(id));
        assert_eq!(ColdFileId::parse(3, "w1-g1-p1.cold"), None);
        assert_eq!(ColdFileId::parse(3, "tbl-0000000001.sst"), None);
    }

    #[test]
    fn cold_file_header_and_label_round_trip() {
        let header =
            ColdFileHeader { file: file(), disk: 2, epoch: 1, block_count: 9, used_bytes: 65_536, file_bytes: 1 << 20 };
        let bytes = header.encode();
        assert_eq!(ColdFileHeader::decode(&bytes), Ok(header));
        let mut bad = bytes.clone();
        bad[30] ^= 1;
        assert!(ColdFileHeader::decode(&bad).is_err());
        let label = DiskLabel { node: 0xdead_beef, disk: 3, epoch: 2 };
        assert_eq!(DiskLabel::decode(&label.encode()), Ok(label));
    }

    #[test]
    fn cold_link_round_trips_and_refuses_bad_shapes() {
        let link = ColdLink { part: 7, offset: 1 << 30, len: 65_536 };
        assert_eq!(ColdLink::decode(&link.encode()), Ok(link));
        let unaligned = ColdLink { offset: 4097, ..link };
        assert_eq!(ColdLink::decode(&unaligned.encode()), Err(ColdFormatError::BadLink));
        assert_eq!(ColdLink::decode(&[0; 15]), Err(ColdFormatError::BadLink));
    }

    #[test]
    fn block_link_round_trips_finds_its_keys_and_refuses_bad_shapes() {
        let keys: Vec<Vec<u8>> = (0..300).map(|ts| encode_key(b"user-1", ts * 7).unwrap()).collect();
        let last = keys.last().unwrap();
        let link = BlockLink::new(ColdLink { part: 2, offset: 8192, len: 12_288 }, 0xDEAD_BEEF, &keys);
        assert_eq!(link.first_key, keys[0]);
        let bytes = link.encode(last);
        assert!(bytes.len() <= 28 + 8 + 4 * 301, "the first key shares at least its pkey with the last");
        assert_eq!(BlockLink::decode(&bytes, last), Ok(link.clone()));
        assert!(keys.iter().all(|k| link.may_hold(k)), "every key of the block is found");
        assert!(link.may_hold(crate::key::pkey_prefix(&keys[0])), "and its pkey");
        let absent = (0..100_000u64).filter(|ts| link.may_hold(&encode_key(b"user-2", *ts).unwrap())).count();
        assert_eq!(absent, 0, "absent keys collide about once in 2^32 / 301");
        assert_eq!(BlockLink::decode(&bytes[..bytes.len() - 1], last), Err(ColdFormatError::BadLink));
        assert_eq!(BlockLink::decode(&bytes, &last[..3]), Err(ColdFormatError::BadLink), "shares more than the key");
        let mut unsorted = bytes.clone();
        let fp_at = bytes.len() - 4 * 301;
        unsorted.copy_within(fp_at..fp_at + 4, fp_at + 4);
        assert_eq!(BlockLink::decode(&unsorted, last), Err(ColdFormatError::BadLink));
    }

    #[test]
    fn placement_is_balanced_for_every_disk_count_and_window() {
        for disks in 1..=64u16 {
            for window in [0u64, 1, 19_700, u64::MAX - 1] {
                let mut counts = vec![0u32; usize::from(disks)];
                for bucket in 0..BUCKET_COUNT {
                    counts[usize::from(disk_of(bucket as u16, window, disks))] += 1;
                }
                let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                assert!(max - min <= 1, "{disks} disks, window {window}: {min}..{max} buckets per disk");
            }
        }
    }

    #[test]
    fn placement_spreads_one_shards_buckets_over_every_disk() {
        let shard_buckets: Vec<u16> =
            (0..BUCKET_COUNT).map(|b| b as u16).filter(|b| crate::route::shard_of(*b, 4) == 1).collect();
        let mut counts = [0u32; 4];
        for b in &shard_buckets {
            counts[usize::from(disk_of(*b, 5, 4))] += 1;
        }
        let mean = shard_buckets.len() as f64 / 4.0;
        for c in counts {
            assert!((f64::from(c) - mean).abs() < mean * 0.1, "disk counts {counts:?} for one shard");
        }
    }
}
