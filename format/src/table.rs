//! Table (SSTable) layout: sorted data blocks, an index block, a filter block and a footer.
//!
//! ```text
//! offset 0                                                        file end
//! | data block | data block | ... | index block | filter block | ... footer |
//! ```
//!
//! Every block is a 32-byte [`BlockHeader`] followed by its stored bytes (raw, or lz4), padded
//! with zeros to a 4 KiB boundary so it can be read with direct I/O in one aligned read. The
//! [`TableFooter`] is the last 64 bytes of the file (its last 4 KiB block holds nothing else).
//!
//! Invariant: a block's checksum covers the table id and the block's offset as well as its
//! bytes, so a block read from the wrong table or the wrong place fails its check; entries in a
//! table are sorted by encoded key, one entry per key.

use crate::checksum::{crc32c, crc32c_append};
use crate::varint::{get_varint, put_varint, unzigzag, varint_len, zigzag};
use crate::version::Version;
use crate::{BLOCK_SIZE, align_up_block};
use xxhash_rust::xxh3::xxh3_64;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// "STBK": Strata table block.
pub const BLOCK_MAGIC: u32 = u32::from_le_bytes(*b"STBK");
/// "STTB": Strata table.
pub const TABLE_MAGIC: u32 = u32::from_le_bytes(*b"STTB");
/// Version 2 stores data-block entries in the prefixed layout ([`EntryLayout::Prefixed`]);
/// version 1 tables (fixed layout only) are still read.
pub const TABLE_FORMAT_VERSION: u16 = 2;
/// The oldest table format version this code reads.
pub const TABLE_FORMAT_VERSION_MIN: u16 = 1;
pub const BLOCK_HEADER_SIZE: usize = size_of::<BlockHeader>();
pub const FOOTER_SIZE: usize = size_of::<TableFooter>();
/// The longest encoded key: bucket, length byte, 255-byte pkey, ts.
pub const KEY_LEN_MAX: usize = 2 + 1 + 255 + 8;

/// What a block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BlockKind {
    Data = 1,
    Index = 2,
    Filter = 3,
}

/// How a block's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Compression {
    None = 0,
    Lz4 = 1,
}

/// How a data block lays out its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EntryLayout {
    /// A 16-byte [`EntryHeader`], the whole key, the value (table format 1, cold blocks, and
    /// every index and filter block, which hold no entries).
    Fixed = 0,
    /// Varint fields, and each key stored as the bytes it does not share with the previous
    /// key of the block ([`BlockBuilder`]).
    Prefixed = 1,
}

/// Block header, at a 4 KiB-aligned offset of a table.
///
/// ```text
/// offset size field        meaning
/// 0      4    magic        "STBK"
/// 4      1    kind         1 data, 2 index, 3 filter
/// 5      1    compression  0 none, 1 lz4
/// 6      1    layout       entry layout: 0 fixed, 1 prefixed (only data blocks may be 1)
/// 7      1    reserved     0
/// 8      4    stored_len   bytes after this header (before padding)
/// 12     4    raw_len      bytes once decompressed
/// 16     4    entry_count  entries (data), blocks (index), 0 (filter)
/// 20     4    reserved     0
/// 24     4    crc          CRC32C of table_id (u64 LE), offset (u64 LE), bytes 0..24, stored bytes
/// 28     4    reserved     0
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct BlockHeader {
    pub magic: U32,
    pub kind: u8,
    pub compression: u8,
    pub layout: u8,
    pub reserved0: u8,
    pub stored_len: U32,
    pub raw_len: U32,
    pub entry_count: U32,
    pub reserved1: U32,
    pub crc: U32,
    pub reserved2: U32,
}
const _: () = assert!(size_of::<BlockHeader>() == 32);

/// Table footer: the last 64 bytes of a table file.
///
/// ```text
/// offset size field           meaning
/// 0      4    magic           "STTB"
/// 4      2    format_version  2 (1 is still read)
/// 6      2    reserved        0
/// 8      8    table_id        unique per shard, never reused
/// 16     8    window          the time window every entry's ts falls in
/// 24     8    index_offset    offset of the index block
/// 32     4    index_len       bytes of the index block, header and padding included
/// 36     4    filter_len      bytes of the filter block, header and padding included
/// 40     8    filter_offset   offset of the filter block
/// 48     8    entry_count     entries in the table
/// 56     4    stats_crc       format 2: CRC32C of the 64-byte `TableStats` just before the
///                             footer; format 1: 0 (no stats)
/// 60     4    crc             CRC32C of bytes 0..60
/// ```
///
/// `TableStats` (format 2), the 64 bytes before the footer in the same block:
///
/// ```text
/// offset size field    meaning
/// 0      8    ts_min   the lowest ts of any key the table holds or links to
/// 8      8    ts_max   the highest
/// 16     48   reserved 0
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct TableFooter {
    pub magic: U32,
    pub format_version: U16,
    pub reserved0: U16,
    pub table_id: U64,
    pub window: U64,
    pub index_offset: U64,
    pub index_len: U32,
    pub filter_len: U32,
    pub filter_offset: U64,
    pub entry_count: U64,
    pub stats_crc: U32,
    pub crc: U32,
}
const _: () = assert!(size_of::<TableFooter>() == 64);

/// Bytes of the stats that precede a format-2 footer.
pub const STATS_SIZE: usize = 64;

/// Entry header inside a data block, followed by the key and the value.
///
/// ```text
/// offset size field      meaning
/// 0      1    kind       1 value, 2 tombstone
/// 1      1    reserved   0
/// 2      2    key_len    bytes of encoded key
/// 4      4    value_len  bytes of value (0 for a tombstone)
/// 8      8    version
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EntryHeader {
    pub kind: u8,
    pub reserved: u8,
    pub key_len: U16,
    pub value_len: U32,
    pub version: U64,
}
const _: () = assert!(size_of::<EntryHeader>() == 16);
pub const ENTRY_HEADER_SIZE: usize = size_of::<EntryHeader>();

/// Why table bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableFormatError {
    BadMagic { found: u32 },
    BadFormatVersion { found: u16 },
    ReservedNonZero { field: &'static str },
    ChecksumMismatch { stored: u32, computed: u32 },
    Truncated { needed: usize, available: usize },
    BadBlock { reason: &'static str },
    WrongKind { expected: u8, found: u8 },
    Decompress { reason: String },
}

impl std::fmt::Display for TableFormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadMagic { found } => write!(f, "bad magic {found:#010x}"),
            Self::BadFormatVersion { found } => write!(f, "unknown table format version {found}"),
            Self::ReservedNonZero { field } => write!(f, "reserved field {field} is not zero"),
            Self::ChecksumMismatch { stored, computed } => {
                write!(f, "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")
            }
            Self::Truncated { needed, available } => {
                write!(f, "truncated: needs {needed} bytes, {available} available")
            }
            Self::BadBlock { reason } => write!(f, "malformed block: {reason}"),
            Self::WrongKind { expected, found } => write!(f, "expected block kind {expected}, found {found}"),
            Self::Decompress { reason } => write!(f, "lz4 decompression failed: {reason}"),
        }
    }
}

impl std::error::Error for TableFormatError {}

fn block_crc(table_id: u64, offset: u64, header: &BlockHeader, stored: &[u8]) -> u32 {
    let mut crc = crc32c(&table_id.to_le_bytes());
    crc = crc32c_append(crc, &offset.to_le_bytes());
    crc = crc32c_append(crc, &header.as_bytes()[..24]);
    crc32c_append(crc, stored)
}

/// Encodes one block (header, stored bytes, zero padding to 4 KiB) for `offset` of `table_id`.
#[must_use]
pub fn encode_block(
    table_id: u64,
    offset: u64,
    kind: BlockKind,
    compression: Compression,
    layout: EntryLayout,
    raw: &[u8],
    entry_count: u32,
) -> Vec<u8> {
    assert!(offset.is_multiple_of(BLOCK_SIZE as u64), "blocks start 4 KiB-aligned");
    assert!(kind == BlockKind::Data || layout == EntryLayout::Fixed, "only data blocks hold entries");
    let compressed;
    let (compression, stored): (Compression, &[u8]) = match compression {
        Compression::None => (Compression::None, raw),
        Compression::Lz4 => {
            compressed = lz4_flex::block::compress(raw);
            // Keep raw bytes when compression does not help.
            if compressed.len() < raw.len() { (Compression::Lz4, &compressed) } else { (Compression::None, raw) }
        }
    };
    let mut header = BlockHeader {
        magic: BLOCK_MAGIC.into(),
        kind: kind as u8,
        compression: compression as u8,
        layout: layout as u8,
        reserved0: 0,
        stored_len: u32::try_from(stored.len()).expect("a block fits u32").into(),
        raw_len: u32::try_from(raw.len()).expect("a block fits u32").into(),
        entry_count: entry_count.into(),
        reserved1: 0.into(),
        crc: 0.into(),
        reserved2: 0.into(),
    };
    header.crc = block_crc(table_id, offset, &header, stored).into();
    let mut out = Vec::with_capacity(align_up_block(BLOCK_HEADER_SIZE + stored.len()));
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(stored);
    out.resize(align_up_block(out.len()), 0);
    out
}

/// Reads the header at the start of `bytes` to learn the block's stored length (for reading the
/// rest of a block whose size was not known in advance).
pub fn peek_block_len(bytes: &[u8]) -> Result<usize, TableFormatError> {
    let (header, _) = BlockHeader::read_from_prefix(bytes)
        .map_err(|_| TableFormatError::Truncated { needed: BLOCK_HEADER_SIZE, available: bytes.len() })?;
    if header.magic.get() != BLOCK_MAGIC {
        return Err(TableFormatError::BadMagic { found: header.magic.get() });
    }
    Ok(BLOCK_HEADER_SIZE + header.stored_len.get() as usize)
}

/// Decompresses an lz4 block of `raw_len` bytes. The output is allocated and then zeroed, not
/// allocated zeroed: for large sizes jemalloc zeroes by handing pages back to the kernel, and
/// every decode would then pay page faults to fault them in again.
#[expect(clippy::slow_vector_initialization, reason = "vec![0; n] is calloc, the slow path here")]
pub fn lz4_decompress(stored: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(raw_len);
    out.resize(raw_len, 0);
    let n = lz4_flex::block::decompress_into(stored, &mut out).map_err(|e| e.to_string())?;
    out.truncate(n);
    Ok(out)
}

/// A decoded block: its raw bytes (decompressed), entry count and entry layout, and, once a
/// reader asks for them, its restart points (not part of the format: built from the entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedBlock {
    pub raw: Vec<u8>,
    pub entry_count: u32,
    pub layout: EntryLayout,
    /// Built on first use by [`DecodedBlock::restarts`]; `None` inside when the block's
    /// entries do not decode (a seek from the start then reports why).
    pub restart_points: std::cell::OnceCell<Option<BlockRestarts>>,
}

impl DecodedBlock {
    #[must_use]
    pub fn new(raw: Vec<u8>, entry_count: u32, layout: EntryLayout) -> Self {
        Self { raw, entry_count, layout, restart_points: std::cell::OnceCell::new() }
    }

    /// The block's restart points, built by one walk of its entries the first time they are
    /// asked for (a block read once, as most blocks read from disk are, never pays for them).
    pub fn restarts(&self) -> Option<&BlockRestarts> {
        self.restart_points.get_or_init(|| BlockRestarts::build(self).ok()).as_ref()
    }
}

/// One restart point: the walker's state just after an entry, so a seek can resume there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RestartPoint {
    /// Where the next entry starts in the block's raw bytes.
    next_at: u32,
    /// Entries after this one.
    remaining: u32,
    version: Version,
    /// The entry's key is `keys[key_start..key_end]`.
    key_start: u32,
    key_end: u32,
}

/// Every [`BlockRestarts::EVERY`]th entry of a data block, with the key and version the walk
/// has there. A data block's entries share key prefixes and version deltas with the previous
/// entry, so a point lookup otherwise walks from the block's start: half of a 64 KiB block's
/// entries on average, most of a cached GET's CPU (`perf`: 46% in the walk for timeless keys,
/// whose tables use 64 KiB blocks). With these, a seek binary-searches the restarts and walks at
/// most `EVERY` entries. They cost about 1/`EVERY` of a key and 24 bytes per entry, in memory
/// only, and are not charged to the block cache.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockRestarts {
    points: Vec<RestartPoint>,
    keys: Vec<u8>,
}

impl BlockRestarts {
    pub const EVERY: u32 = 16;

    /// Walks `block` once and records every `EVERY`th entry.
    pub fn build(block: &DecodedBlock) -> Result<Self, TableFormatError> {
        let mut restarts = Self::default();
        let mut walker = BlockEntries::new(block);
        let mut index = 0u32;
        while let Some(step) = walker.advance() {
            step?;
            if index.is_multiple_of(Self::EVERY) {
                let key_start = restarts.keys.len() as u32;
                restarts.keys.extend_from_slice(&walker.key[..walker.key_len]);
                restarts.points.push(RestartPoint {
                    next_at: (block.raw.len() - walker.rest.len()) as u32,
                    remaining: walker.remaining,
                    version: walker.version,
                    key_start,
                    key_end: restarts.keys.len() as u32,
                });
            }
            index += 1;
        }
        Ok(restarts)
    }

    fn key(&self, point: &RestartPoint) -> &[u8] {
        &self.keys[point.key_start as usize..point.key_end as usize]
    }

    /// A walker positioned just after the last restart whose key is below `target` (at the
    /// block's start if none is): the first entry at or above `target` is after it.
    #[must_use]
    pub fn walker_for<'a>(&self, block: &'a DecodedBlock, target: &[u8]) -> BlockEntries<'a> {
        let below = self.points.partition_point(|p| self.key(p) < target);
        let mut walker = BlockEntries::new(block);
        if below == 0 {
            return walker;
        }
        let point = &self.points[below - 1];
        let key = self.key(point);
        walker.key[..key.len()].copy_from_slice(key);
        walker.key_len = key.len();
        walker.version = point.version;
        walker.remaining = point.remaining;
        walker.rest = &block.raw[point.next_at as usize..];
        walker.shared = 0;
        walker.value = None;
        walker
    }
}

/// Checks and decodes the block at the start of `bytes`, expected at `offset` of `table_id`.
pub fn decode_block(
    bytes: &[u8],
    table_id: u64,
    offset: u64,
    kind: BlockKind,
) -> Result<DecodedBlock, TableFormatError> {
    let needed = peek_block_len(bytes)?;
    if bytes.len() < needed {
        return Err(TableFormatError::Truncated { needed, available: bytes.len() });
    }
    let (header, _) = BlockHeader::read_from_prefix(bytes).expect("peek checked the size");
    let stored = &bytes[BLOCK_HEADER_SIZE..needed];
    let computed = block_crc(table_id, offset, &header, stored);
    if computed != header.crc.get() {
        return Err(TableFormatError::ChecksumMismatch { stored: header.crc.get(), computed });
    }
    if header.reserved0 != 0 || header.reserved1.get() != 0 || header.reserved2.get() != 0 {
        return Err(TableFormatError::ReservedNonZero { field: "block header" });
    }
    if header.kind != kind as u8 {
        return Err(TableFormatError::WrongKind { expected: kind as u8, found: header.kind });
    }
    let layout = match header.layout {
        0 => EntryLayout::Fixed,
        1 if kind == BlockKind::Data => EntryLayout::Prefixed,
        _ => return Err(TableFormatError::BadBlock { reason: "unknown entry layout" }),
    };
    let raw_len = header.raw_len.get() as usize;
    let raw = match header.compression {
        0 if raw_len == stored.len() => stored.to_vec(),
        0 => return Err(TableFormatError::BadBlock { reason: "raw length differs from stored length" }),
        1 => lz4_decompress(stored, raw_len).map_err(|reason| TableFormatError::Decompress { reason })?,
        _ => return Err(TableFormatError::BadBlock { reason: "unknown compression" }),
    };
    if raw.len() != raw_len {
        return Err(TableFormatError::BadBlock { reason: "decompressed length differs from raw length" });
    }
    Ok(DecodedBlock::new(raw, header.entry_count.get(), layout))
}

/// What a table footer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FooterInfo {
    pub table_id: u64,
    pub window: u64,
    pub index_offset: u64,
    pub index_len: u32,
    pub filter_offset: u64,
    pub filter_len: u32,
    pub entry_count: u64,
    /// The lowest and highest ts of the table's keys. A format-1 table has no stats and reads
    /// as `(0, u64::MAX)`: it may hold any ts.
    pub ts_min: u64,
    pub ts_max: u64,
}

impl TableFooter {
    /// Encodes the footer as the last 64 bytes of a zeroed 4 KiB block.
    #[must_use]
    pub fn encode_block(info: &FooterInfo) -> Vec<u8> {
        let mut footer = Self {
            magic: TABLE_MAGIC.into(),
            format_version: TABLE_FORMAT_VERSION.into(),
            reserved0: 0.into(),
            table_id: info.table_id.into(),
            window: info.window.into(),
            index_offset: info.index_offset.into(),
            index_len: info.index_len.into(),
            filter_len: info.filter_len.into(),
            filter_offset: info.filter_offset.into(),
            entry_count: info.entry_count.into(),
            stats_crc: 0.into(),
            crc: 0.into(),
        };
        let mut block = vec![0u8; BLOCK_SIZE];
        let stats = &mut block[BLOCK_SIZE - FOOTER_SIZE - STATS_SIZE..BLOCK_SIZE - FOOTER_SIZE];
        stats[..8].copy_from_slice(&info.ts_min.to_le_bytes());
        stats[8..16].copy_from_slice(&info.ts_max.to_le_bytes());
        footer.stats_crc = crc32c(stats).into();
        footer.crc = crc32c(&footer.as_bytes()[..60]).into();
        block[BLOCK_SIZE - FOOTER_SIZE..].copy_from_slice(footer.as_bytes());
        block
    }

    /// Decodes the footer from the last 64 bytes of `tail` (the file's last block).
    pub fn decode(tail: &[u8]) -> Result<FooterInfo, TableFormatError> {
        if tail.len() < FOOTER_SIZE {
            return Err(TableFormatError::Truncated { needed: FOOTER_SIZE, available: tail.len() });
        }
        let footer = Self::read_from_bytes(&tail[tail.len() - FOOTER_SIZE..]).expect("slice has the footer's size");
        if footer.magic.get() != TABLE_MAGIC {
            return Err(TableFormatError::BadMagic { found: footer.magic.get() });
        }
        let computed = crc32c(&footer.as_bytes()[..60]);
        if computed != footer.crc.get() {
            return Err(TableFormatError::ChecksumMismatch { stored: footer.crc.get(), computed });
        }
        if !(TABLE_FORMAT_VERSION_MIN..=TABLE_FORMAT_VERSION).contains(&footer.format_version.get()) {
            return Err(TableFormatError::BadFormatVersion { found: footer.format_version.get() });
        }
        if footer.reserved0.get() != 0 {
            return Err(TableFormatError::ReservedNonZero { field: "table footer" });
        }
        let (mut ts_min, mut ts_max) = (0, u64::MAX);
        if footer.format_version.get() == 1 {
            if footer.stats_crc.get() != 0 {
                return Err(TableFormatError::ReservedNonZero { field: "table footer" });
            }
        } else {
            let at = tail.len() - FOOTER_SIZE;
            let stats = tail.get(at.saturating_sub(STATS_SIZE)..at).filter(|s| s.len() == STATS_SIZE);
            let Some(stats) = stats else {
                return Err(TableFormatError::Truncated { needed: FOOTER_SIZE + STATS_SIZE, available: tail.len() });
            };
            let computed = crc32c(stats);
            if computed != footer.stats_crc.get() {
                return Err(TableFormatError::ChecksumMismatch { stored: footer.stats_crc.get(), computed });
            }
            if stats[16..].iter().any(|b| *b != 0) {
                return Err(TableFormatError::ReservedNonZero { field: "table stats" });
            }
            ts_min = u64::from_le_bytes(stats[..8].try_into().expect("8 bytes"));
            ts_max = u64::from_le_bytes(stats[8..16].try_into().expect("8 bytes"));
            if ts_min > ts_max {
                return Err(TableFormatError::BadBlock { reason: "table stats: ts_min above ts_max" });
            }
        }
        Ok(FooterInfo {
            table_id: footer.table_id.get(),
            window: footer.window.get(),
            index_offset: footer.index_offset.get(),
            index_len: footer.index_len.get(),
            filter_offset: footer.filter_offset.get(),
            filter_len: footer.filter_len.get(),
            entry_count: footer.entry_count.get(),
            ts_min,
            ts_max,
        })
    }
}

/// One entry of a data block, borrowing from the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub key: &'a [u8],
    pub version: Version,
    /// `None` for a tombstone.
    pub value: Option<&'a [u8]>,
}

/// Appends one entry to a fixed-layout block's raw bytes ([`EntryLayout::Fixed`]: cold blocks).
pub fn push_entry(raw: &mut Vec<u8>, key: &[u8], version: Version, value: Option<&[u8]>) {
    assert!(!key.is_empty() && key.len() <= KEY_LEN_MAX);
    let header = EntryHeader {
        kind: if value.is_some() { 1 } else { 2 },
        reserved: 0,
        key_len: (key.len() as u16).into(),
        value_len: u32::try_from(value.map_or(0, <[u8]>::len)).expect("values fit u32").into(),
        version: version.into(),
    };
    raw.extend_from_slice(header.as_bytes());
    raw.extend_from_slice(key);
    raw.extend_from_slice(value.unwrap_or_default());
}

/// Iterates the entries of a fixed-layout block (a cold block, or a data block of table format
/// 1); the first malformed entry ends it with an error. Tables use [`BlockEntries`], which reads
/// either layout.
#[derive(Debug, Clone)]
pub struct EntryIter<'a> {
    rest: &'a [u8],
    remaining: u32,
}

impl<'a> EntryIter<'a> {
    /// # Panics
    /// If `block` is not in the fixed layout.
    #[must_use]
    pub fn new(block: &'a DecodedBlock) -> Self {
        assert_eq!(block.layout, EntryLayout::Fixed, "EntryIter reads fixed-layout blocks");
        Self { rest: &block.raw, remaining: block.entry_count }
    }
}

impl<'a> Iterator for EntryIter<'a> {
    type Item = Result<EntryRef<'a>, TableFormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return (!self.rest.is_empty()).then(|| {
                self.rest = &[];
                Err(TableFormatError::BadBlock { reason: "bytes after the last entry" })
            });
        }
        match decode_fixed_entry(self.rest) {
            Ok((entry, rest)) => {
                self.rest = rest;
                self.remaining -= 1;
                Some(Ok(entry))
            }
            Err(e) => {
                self.remaining = 0;
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// Decodes the fixed-layout entry at the start of `bytes`; returns it and the bytes after it.
fn decode_fixed_entry(bytes: &[u8]) -> Result<(EntryRef<'_>, &[u8]), TableFormatError> {
    let malformed = |reason| TableFormatError::BadBlock { reason };
    let (header, body) = EntryHeader::read_from_prefix(bytes).map_err(|_| malformed("truncated entry"))?;
    let key_len = usize::from(header.key_len.get());
    let value_len = header.value_len.get() as usize;
    let shape_ok = matches!(header.kind, 1 | 2) && header.reserved == 0 && key_len > 0 && key_len <= KEY_LEN_MAX;
    if !shape_ok || (header.kind == 2 && value_len != 0) || body.len() < key_len + value_len {
        return Err(malformed("malformed entry"));
    }
    let entry = EntryRef {
        key: &body[..key_len],
        version: header.version.get(),
        value: (header.kind == 1).then(|| &body[key_len..key_len + value_len]),
    };
    Ok((entry, &body[key_len + value_len..]))
}

/// Builds the raw bytes of a data block in the prefixed layout ([`EntryLayout::Prefixed`]):
///
/// ```text
/// kind            u8      1 value, 2 tombstone
/// shared          varint  leading bytes this key shares with the previous key (0 in the first entry)
/// unshared        varint  key bytes that follow (shared + unshared = key length, 1..=266)
/// value_len       varint  only for kind 1
/// version_delta   varint  zigzag(version - previous entry's version), the first entry's from 0
/// key suffix      unshared bytes
/// value           value_len bytes
/// ```
///
/// Keys strictly ascend within a block. A key shares on average all but its last few bytes
/// with the previous one (same bucket, pkey and high bytes of `ts`), and versions written
/// together are close, so an entry costs about 10 bytes besides its value instead of 16 plus
/// the whole key.
#[derive(Debug, Clone, Default)]
pub struct BlockBuilder {
    raw: Vec<u8>,
    count: u32,
    last_key: Vec<u8>,
    last_version: Version,
}

impl BlockBuilder {
    #[must_use]
    pub fn with_capacity(bytes: usize) -> Self {
        Self { raw: Vec::with_capacity(bytes), ..Self::default() }
    }

    fn shared(&self, key: &[u8]) -> usize {
        if self.count == 0 {
            return 0;
        }
        self.last_key.iter().zip(key).take_while(|(a, b)| a == b).count()
    }

    /// The bytes the entry would add to the block.
    #[must_use]
    pub fn encoded_len(&self, key: &[u8], version: Version, value: Option<&[u8]>) -> usize {
        let shared = self.shared(key);
        let delta = zigzag(version.wrapping_sub(self.last_version) as i64);
        1 + varint_len(shared as u64)
            + varint_len((key.len() - shared) as u64)
            + value.map_or(0, |v| varint_len(v.len() as u64) + v.len())
            + varint_len(delta)
            + (key.len() - shared)
    }

    /// Appends an entry; its key must be above the previous entry's.
    ///
    /// # Panics
    /// If the key is empty, too long, or not above the previous key.
    pub fn push(&mut self, key: &[u8], version: Version, value: Option<&[u8]>) {
        assert!(!key.is_empty() && key.len() <= KEY_LEN_MAX);
        assert!(self.count == 0 || key > self.last_key.as_slice(), "block keys ascend strictly");
        let shared = self.shared(key);
        self.raw.push(if value.is_some() { 1 } else { 2 });
        put_varint(&mut self.raw, shared as u64);
        put_varint(&mut self.raw, (key.len() - shared) as u64);
        if let Some(value) = value {
            put_varint(&mut self.raw, value.len() as u64);
        }
        put_varint(&mut self.raw, zigzag(version.wrapping_sub(self.last_version) as i64));
        self.raw.extend_from_slice(&key[shared..]);
        self.raw.extend_from_slice(value.unwrap_or_default());
        self.last_key.truncate(shared);
        self.last_key.extend_from_slice(&key[shared..]);
        self.last_version = version;
        self.count += 1;
    }

    #[must_use]
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    #[must_use]
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Empties the builder for the next block.
    pub fn clear(&mut self) {
        self.raw.clear();
        self.count = 0;
        self.last_key.clear();
        self.last_version = 0;
    }
}

/// Walks a data block's entries in key order, in either layout. A prefixed block's keys are
/// rebuilt in the walker, so each entry borrows the walker until the next call. The first
/// malformed entry ends the walk with an error; so do keys that do not ascend.
#[derive(Debug, Clone)]
pub struct BlockEntries<'a> {
    rest: &'a [u8],
    remaining: u32,
    layout: EntryLayout,
    /// The current entry: its key (rebuilt here), version and value.
    key: [u8; KEY_LEN_MAX],
    key_len: usize,
    version: Version,
    value: Option<&'a [u8]>,
    /// Leading bytes the current key is known to share with the previous one (0: unknown).
    shared: usize,
}

impl<'a> BlockEntries<'a> {
    #[must_use]
    pub fn new(block: &'a DecodedBlock) -> Self {
        Self {
            rest: &block.raw,
            remaining: block.entry_count,
            layout: block.layout,
            key: [0; KEY_LEN_MAX],
            key_len: 0,
            version: 0,
            value: None,
            shared: 0,
        }
    }

    /// The next entry, `None` after the last one.
    #[expect(clippy::should_implement_trait, reason = "entries borrow the walker: not an Iterator")]
    pub fn next(&mut self) -> Option<Result<EntryRef<'_>, TableFormatError>> {
        match self.advance()? {
            Ok(()) => Some(Ok(self.current())),
            Err(e) => Some(Err(e)),
        }
    }

    /// The first entry at or above `target` from here on, `None` if none is.
    ///
    /// Comparisons are incremental: the walk remembers how many leading bytes the current key
    /// shares with `target`, and a key that shares a prefix with the previous one is compared
    /// from there on. Most entries cost a byte or two of comparison, not a whole key.
    pub fn seek(&mut self, target: &[u8]) -> Option<Result<EntryRef<'_>, TableFormatError>> {
        // Leading bytes the current key (below `target`) shares with `target`.
        let mut common = 0usize;
        loop {
            if let Err(e) = self.advance()? {
                return Some(Err(e));
            }
            let key = &self.key[..self.key_len];
            // The key equals the previous one for `shared` bytes, and the previous one equals
            // `target` for `common`: so does this key for the lesser of them.
            let from = common.min(self.shared);
            common =
                from + key[from..].iter().zip(&target[from.min(target.len())..]).take_while(|(a, b)| a == b).count();
            let at_or_above = match (key.get(common), target.get(common)) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(k), Some(t)) => k > t,
            };
            if at_or_above {
                return Some(Ok(self.current()));
            }
        }
    }

    fn current(&self) -> EntryRef<'_> {
        EntryRef { key: &self.key[..self.key_len], version: self.version, value: self.value }
    }

    /// Decodes the next entry into the walker.
    fn advance(&mut self) -> Option<Result<(), TableFormatError>> {
        if self.remaining == 0 {
            return (!self.rest.is_empty()).then(|| {
                self.rest = &[];
                Err(TableFormatError::BadBlock { reason: "bytes after the last entry" })
            });
        }
        let first = self.key_len == 0;
        let step = match self.layout {
            EntryLayout::Fixed => decode_fixed_entry(self.rest).and_then(|(entry, rest)| {
                if !first && entry.key <= &self.key[..self.key_len] {
                    return Err(TableFormatError::BadBlock { reason: "keys out of order" });
                }
                self.key[..entry.key.len()].copy_from_slice(entry.key);
                (self.key_len, self.version, self.value, self.shared) =
                    (entry.key.len(), entry.version, entry.value, 0);
                Ok(rest)
            }),
            EntryLayout::Prefixed => self.step_prefixed(first),
        };
        match step {
            Ok(rest) => {
                self.rest = rest;
                self.remaining -= 1;
                Some(Ok(()))
            }
            Err(e) => {
                self.remaining = 0;
                self.rest = &[];
                Some(Err(e))
            }
        }
    }

    /// Decodes the prefixed entry at the start of `rest` into the walker; returns what follows.
    fn step_prefixed(&mut self, first: bool) -> Result<&'a [u8], TableFormatError> {
        let malformed = |reason| TableFormatError::BadBlock { reason };
        let rest: &'a [u8] = self.rest;
        let (&kind, rest) = rest.split_first().ok_or(malformed("truncated entry"))?;
        let (shared, rest) = get_varint(rest).ok_or(malformed("truncated or overlong varint"))?;
        let (unshared, rest) = get_varint(rest).ok_or(malformed("truncated or overlong varint"))?;
        let (value_len, rest) = match kind {
            1 => get_varint(rest).ok_or(malformed("truncated or overlong varint"))?,
            2 => (0, rest),
            _ => return Err(malformed("malformed entry")),
        };
        let (delta, rest) = get_varint(rest).ok_or(malformed("truncated or overlong varint"))?;
        let (shared, unshared) = (shared as usize, unshared as usize);
        if shared > self.key_len {
            return Err(malformed("an entry shares more key bytes than the previous key has"));
        }
        let key_len = shared.checked_add(unshared).filter(|&n| (1..=KEY_LEN_MAX).contains(&n));
        let Some(key_len) = key_len else { return Err(malformed("malformed entry")) };
        let value_len = usize::try_from(value_len).map_err(|_| malformed("malformed entry"))?;
        if rest.len() < unshared || rest.len() - unshared < value_len {
            return Err(malformed("truncated entry"));
        }
        let (suffix, rest) = rest.split_at(unshared);
        // Above the previous key: its shared part is equal, so compare the rest. The writer
        // shares every common byte, so the first byte after them usually decides.
        if !first {
            let previous = &self.key[shared..self.key_len];
            let above = match (suffix.first(), previous.first()) {
                (Some(s), Some(p)) if s != p => s > p,
                _ => suffix > previous,
            };
            if !above {
                return Err(malformed("keys out of order"));
            }
        }
        self.key[shared..key_len].copy_from_slice(suffix);
        self.key_len = key_len;
        self.shared = shared;
        self.version = self.version.wrapping_add(unzigzag(delta) as u64);
        let (value, rest) = rest.split_at(value_len);
        self.value = (kind == 1).then_some(value);
        Ok(rest)
    }
}

/// The index's entry for one data block: its last key and where it lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub last_key: Vec<u8>,
    pub offset: u64,
    /// Bytes of the block on disk, header and padding included.
    pub len: u32,
}

/// Encodes an index block's raw bytes: per data block, offset u64, len u32, key_len u16,
/// reserved u16 (0), then the last key.
#[must_use]
pub fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut raw = Vec::new();
    for e in entries {
        raw.extend_from_slice(&e.offset.to_le_bytes());
        raw.extend_from_slice(&e.len.to_le_bytes());
        raw.extend_from_slice(&(e.last_key.len() as u16).to_le_bytes());
        raw.extend_from_slice(&[0, 0]);
        raw.extend_from_slice(&e.last_key);
    }
    raw
}

/// Decodes an index block's raw bytes, checking keys ascend and blocks do not overlap.
pub fn decode_index(block: &DecodedBlock) -> Result<Vec<IndexEntry>, TableFormatError> {
    let bad = |reason| Err(TableFormatError::BadBlock { reason });
    let mut rest = &block.raw[..];
    let mut entries: Vec<IndexEntry> = Vec::with_capacity(block.entry_count as usize);
    for _ in 0..block.entry_count {
        if rest.len() < 16 {
            return bad("truncated index entry");
        }
        let offset = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
        let key_len = usize::from(u16::from_le_bytes(rest[12..14].try_into().expect("2 bytes")));
        if rest[14..16] != [0, 0] || key_len == 0 || key_len > KEY_LEN_MAX || rest.len() < 16 + key_len {
            return bad("malformed index entry");
        }
        let last_key = rest[16..16 + key_len].to_vec();
        if let Some(prev) = entries.last()
            && (prev.last_key >= last_key || prev.offset + u64::from(prev.len) > offset)
        {
            return bad("index entries out of order");
        }
        entries.push(IndexEntry { last_key, offset, len });
        rest = &rest[16 + key_len..];
    }
    if !rest.is_empty() {
        return bad("bytes after the last index entry");
    }
    Ok(entries)
}

/// A bloom filter over encoded keys (double hashing on xxh3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bloom {
    bits: Vec<u8>,
    hashes: u32,
}

impl Bloom {
    /// An empty filter sized for `keys` keys at `bits_per_key`.
    #[must_use]
    pub fn new(keys: usize, bits_per_key: u32) -> Self {
        let bits = (keys.max(1) * bits_per_key as usize).max(64);
        // k = bits_per_key * ln 2, rounded, within 1..=30.
        let hashes = ((f64::from(bits_per_key) * 0.69).round() as u32).clamp(1, 30);
        Self { bits: vec![0; bits.div_ceil(8)], hashes }
    }

    /// The hash a key is filtered by.
    #[must_use]
    pub fn hash(key: &[u8]) -> u64 {
        xxh3_64(key)
    }

    /// Inserts a key by its [`Bloom::hash`].
    pub fn insert_hash(&mut self, h: u64) {
        let probes: Vec<usize> = self.probes_of(h).collect();
        for bit in probes {
            self.bits[bit / 8] |= 1 << (bit % 8);
        }
    }

    fn probes(&self, key: &[u8]) -> impl Iterator<Item = usize> {
        self.probes_of(xxh3_64(key))
    }

    fn probes_of(&self, h: u64) -> impl Iterator<Item = usize> {
        let (h1, h2) = (h as u32, (h >> 32) as u32 | 1);
        let nbits = self.bits.len() as u64 * 8;
        (0..self.hashes).map(move |i| (u64::from(h1.wrapping_add(i.wrapping_mul(h2))) % nbits) as usize)
    }

    pub fn insert(&mut self, key: &[u8]) {
        let probes: Vec<usize> = self.probes(key).collect();
        for bit in probes {
            self.bits[bit / 8] |= 1 << (bit % 8);
        }
    }

    #[must_use]
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.probes(key).all(|bit| self.bits[bit / 8] & (1 << (bit % 8)) != 0)
    }

    /// The filter block's raw bytes: hashes u32, then the bit array.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut raw = self.hashes.to_le_bytes().to_vec();
        raw.extend_from_slice(&self.bits);
        raw
    }

    pub fn decode(block: &DecodedBlock) -> Result<Self, TableFormatError> {
        let raw = &block.raw;
        if raw.len() < 5 {
            return Err(TableFormatError::BadBlock { reason: "filter too short" });
        }
        let hashes = u32::from_le_bytes(raw[..4].try_into().expect("4 bytes"));
        if hashes == 0 || hashes > 30 {
            return Err(TableFormatError::BadBlock { reason: "filter hash count out of range" });
        }
        Ok(Self { bits: raw[4..].to_vec(), hashes })
    }

    /// Bytes held in memory.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Rng, seed};

    /// 40 entries of one pkey (every seventh a tombstone), in the given layout.
    fn data_raw(layout: EntryLayout) -> (Vec<u8>, u32) {
        let mut fixed = Vec::new();
        let mut prefixed = BlockBuilder::default();
        for i in 0..40u64 {
            let key = crate::key::encode_key(b"user", i).unwrap();
            let value = if i % 7 == 0 { None } else { Some(vec![i as u8; 90]) };
            push_entry(&mut fixed, &key, 1000 + i, value.as_deref());
            prefixed.push(&key, 1000 + i, value.as_deref());
        }
        match layout {
            EntryLayout::Fixed => (fixed, 40),
            EntryLayout::Prefixed => (prefixed.raw().to_vec(), prefixed.count()),
        }
    }

    type Owned = (Vec<u8>, Version, Option<Vec<u8>>);

    fn walk(block: &DecodedBlock) -> Result<Vec<Owned>, TableFormatError> {
        let mut out = Vec::new();
        let mut entries = BlockEntries::new(block);
        while let Some(entry) = entries.next() {
            let entry = entry?;
            out.push((entry.key.to_vec(), entry.version, entry.value.map(<[u8]>::to_vec)));
        }
        Ok(out)
    }

    const LAYOUTS: [EntryLayout; 2] = [EntryLayout::Fixed, EntryLayout::Prefixed];

    #[test]
    fn data_block_round_trips_raw_and_lz4_in_both_layouts() {
        for layout in LAYOUTS {
            let (raw, n) = data_raw(layout);
            for compression in [Compression::None, Compression::Lz4] {
                let bytes = encode_block(9, 8192, BlockKind::Data, compression, layout, &raw, n);
                assert_eq!(bytes.len() % BLOCK_SIZE, 0);
                let block = decode_block(&bytes, 9, 8192, BlockKind::Data).unwrap();
                assert_eq!(block.layout, layout);
                let entries = walk(&block).unwrap();
                assert_eq!(entries.len(), 40);
                assert_eq!(entries[0].2, None);
                assert_eq!(entries[1].2.as_deref(), Some(&[1u8; 90][..]));
                assert_eq!(entries[39].0, crate::key::encode_key(b"user", 39).unwrap());
                assert_eq!(entries[39].1, 1039);
            }
        }
        let (raw, n) = data_raw(EntryLayout::Fixed);
        let lz4 = encode_block(9, 0, BlockKind::Data, Compression::Lz4, EntryLayout::Fixed, &raw, n);
        assert_eq!(lz4[5], Compression::Lz4 as u8, "repetitive values compress");
        let (prefixed, _) = data_raw(EntryLayout::Prefixed);
        // 40 entries of 15-byte keys: 16 + 15 bytes each besides the value when fixed, under 9
        // when prefixed (the pkey and the high bytes of ts are shared).
        assert!(prefixed.len() + 40 * 22 < raw.len(), "prefixed {} bytes, fixed {}", prefixed.len(), raw.len());
    }

    #[test]
    fn data_block_detects_every_single_bit_flip() {
        for layout in LAYOUTS {
            let (raw, n) = data_raw(layout);
            for compression in [Compression::None, Compression::Lz4] {
                let bytes = encode_block(9, 4096, BlockKind::Data, compression, layout, &raw, n);
                let covered = peek_block_len(&bytes).unwrap();
                for bit in 0..covered * 8 {
                    let mut bad = bytes.clone();
                    bad[bit / 8] ^= 1 << (bit % 8);
                    assert!(
                        decode_block(&bad, 9, 4096, BlockKind::Data).is_err(),
                        "{layout:?} {compression:?}: flip of bit {bit} went unnoticed"
                    );
                }
            }
        }
    }

    #[test]
    fn only_data_blocks_may_be_prefixed() {
        let (raw, n) = data_raw(EntryLayout::Prefixed);
        let mut bytes = encode_block(9, 4096, BlockKind::Data, Compression::None, EntryLayout::Prefixed, &raw, n);
        bytes[4] = BlockKind::Index as u8;
        let header = BlockHeader::read_from_prefix(&bytes).unwrap().0;
        let crc = block_crc(9, 4096, &header, &bytes[BLOCK_HEADER_SIZE..peek_block_len(&bytes).unwrap()]);
        bytes[24..28].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_block(&bytes, 9, 4096, BlockKind::Index),
            Err(TableFormatError::BadBlock { reason: "unknown entry layout" })
        );
    }

    /// Random sorted keys (pkeys of 1..=255 bytes sharing prefixes, ts near and far apart),
    /// random versions (close and far, up and down) and values (tombstones, empty, large):
    /// every block decodes to exactly what went in, and the builder's predicted length is the
    /// length it writes.
    #[test]
    fn prefixed_blocks_round_trip_random_entries() {
        let mut rng = Rng(seed("STRATA_TABLE_SEED", "table"));
        for round in 0..300 {
            let mut keys = std::collections::BTreeSet::new();
            let pkeys: Vec<Vec<u8>> = (0..1 + rng.below(6))
                .map(|_| {
                    let len = if rng.below(4) == 0 { 255 } else { 1 + rng.below(12) } as usize;
                    (0..len).map(|_| b"ab\0\xff"[rng.below(4) as usize]).collect()
                })
                .collect();
            for _ in 0..1 + rng.below(60) {
                let pkey = &pkeys[rng.below(pkeys.len() as u64) as usize];
                let ts = match rng.below(3) {
                    0 => rng.below(100),
                    1 => 1_700_000_000_000_000 + rng.below(1 << 30),
                    _ => rng.next(),
                };
                keys.insert(crate::key::encode_key(pkey, ts).unwrap());
            }
            let mut builder = BlockBuilder::default();
            let mut expected = Vec::new();
            for key in keys {
                let version = match rng.below(3) {
                    0 => rng.next(),
                    _ => 1_700_000_000_000_000 + rng.below(1 << 24),
                };
                let value = match rng.below(5) {
                    0 => None,
                    1 => Some(Vec::new()),
                    2 => Some(vec![rng.next() as u8; rng.below(70_000) as usize]),
                    _ => Some((0..rng.below(200)).map(|_| rng.next() as u8).collect()),
                };
                let before = builder.raw().len();
                let predicted = builder.encoded_len(&key, version, value.as_deref());
                builder.push(&key, version, value.as_deref());
                assert_eq!(builder.raw().len() - before, predicted, "round {round}: predicted length");
                expected.push((key, version, value));
            }
            let block = DecodedBlock::new(builder.raw().to_vec(), builder.count(), EntryLayout::Prefixed);
            assert_eq!(walk(&block).unwrap(), expected, "round {round}");
            // Seeking finds the first entry at or above any target: present keys, keys beside
            // them, prefixes of them, and keys beyond either end.
            let mut targets: Vec<Vec<u8>> = Vec::new();
            for (key, _, _) in &expected {
                targets.push(key.clone());
                targets.push(key[..1 + rng.below(key.len() as u64) as usize].to_vec());
                let mut beside = key.clone();
                let at = rng.below(key.len() as u64) as usize;
                beside[at] = beside[at].wrapping_add(if rng.below(2) == 0 { 1 } else { 255 });
                targets.push(beside);
            }
            targets.push(vec![0]);
            targets.push(vec![0xff; KEY_LEN_MAX]);
            let restarts = block.restarts().expect("a well-formed block has restart points");
            for target in targets {
                let want = expected.iter().find(|(k, _, _)| k.as_slice() >= target.as_slice());
                let got = BlockEntries::new(&block).seek(&target).map(|e| e.unwrap().key.to_vec());
                assert_eq!(got.as_ref(), want.map(|(k, _, _)| k), "round {round}: seek {target:?}");
                // From the restart points: the same entry, key, version and value.
                let mut walker = restarts.walker_for(&block, &target);
                let got = walker.seek(&target).map(|e| {
                    let e = e.unwrap();
                    (e.key.to_vec(), e.version, e.value.map(<[u8]>::to_vec))
                });
                assert_eq!(got.as_ref(), want, "round {round}: seek {target:?} from a restart point");
            }
            // Seeking after walking part of the block starts from where the walk is.
            if expected.len() > 2 {
                let mut entries = BlockEntries::new(&block);
                entries.next().unwrap().unwrap();
                let got = entries.seek(&expected[0].0).map(|e| e.unwrap().key.to_vec());
                assert_eq!(got.as_ref(), Some(&expected[1].0), "round {round}");
            }
        }
    }

    /// Whatever bytes a prefixed block holds, the walk ends (with an error or not) without
    /// panicking, and keys it yields ascend.
    #[test]
    fn prefixed_walk_survives_garbage_and_refuses_disorder() {
        let mut rng = Rng(seed("STRATA_TABLE_SEED", "table"));
        let (raw, n) = data_raw(EntryLayout::Prefixed);
        for _ in 0..20_000 {
            let mut bad = raw.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bad.len() as u64) as usize;
                match rng.below(3) {
                    0 => bad[at] = rng.next() as u8,
                    1 => bad.truncate(at),
                    _ => bad.insert(at, rng.next() as u8),
                }
                if bad.is_empty() {
                    break;
                }
            }
            let block = DecodedBlock::new(bad, n, EntryLayout::Prefixed);
            let mut entries = BlockEntries::new(&block);
            let mut last: Option<Vec<u8>> = None;
            while let Some(Ok(entry)) = entries.next() {
                assert!(last.as_deref().is_none_or(|l| l < entry.key), "keys ascend");
                last = Some(entry.key.to_vec());
            }
        }
        // Two entries whose second key sorts below the first.
        let mut raw = vec![1, 0, 2, 0, 2, b'b', b'b'];
        raw.extend_from_slice(&[1, 0, 1, 0, 0, b'a']);
        let block = DecodedBlock::new(raw, 2, EntryLayout::Prefixed);
        assert_eq!(walk(&block), Err(TableFormatError::BadBlock { reason: "keys out of order" }));
    }

    #[test]
    fn block_is_bound_to_its_table_and_offset() {
        let (raw, n) = data_raw(EntryLayout::Prefixed);
        let bytes = encode_block(9, 4096, BlockKind::Data, Compression::None, EntryLayout::Prefixed, &raw, n);
        assert!(decode_block(&bytes, 10, 4096, BlockKind::Data).is_err());
        assert!(decode_block(&bytes, 9, 8192, BlockKind::Data).is_err());
        assert!(matches!(decode_block(&bytes, 9, 4096, BlockKind::Index), Err(TableFormatError::WrongKind { .. })));
    }

    #[test]
    fn footer_round_trips_and_detects_every_single_bit_flip() {
        let info = FooterInfo {
            table_id: 77,
            window: 19_000,
            index_offset: 65536,
            index_len: 4096,
            filter_offset: 69632,
            filter_len: 8192,
            entry_count: 1234,
            ts_min: 1_700_000_000_000_000,
            ts_max: u64::MAX,
        };
        let block = TableFooter::encode_block(&info);
        assert_eq!(TableFooter::decode(&block), Ok(info));
        for bit in (BLOCK_SIZE - FOOTER_SIZE - STATS_SIZE) * 8..BLOCK_SIZE * 8 {
            let mut bad = block.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(TableFooter::decode(&bad).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn format1_footer_reads_as_holding_any_ts() {
        let mut footer = TableFooter {
            magic: TABLE_MAGIC.into(),
            format_version: 1.into(),
            reserved0: 0.into(),
            table_id: 5.into(),
            window: 7.into(),
            index_offset: 4096.into(),
            index_len: 4096.into(),
            filter_len: 4096.into(),
            filter_offset: 8192.into(),
            entry_count: 3.into(),
            stats_crc: 0.into(),
            crc: 0.into(),
        };
        footer.crc = crc32c(&footer.as_bytes()[..60]).into();
        let mut block = vec![0u8; BLOCK_SIZE];
        block[BLOCK_SIZE - FOOTER_SIZE..].copy_from_slice(footer.as_bytes());
        let info = TableFooter::decode(&block).unwrap();
        assert_eq!((info.table_id, info.ts_min, info.ts_max), (5, 0, u64::MAX));
        footer.format_version = 3.into();
        footer.crc = crc32c(&footer.as_bytes()[..60]).into();
        block[BLOCK_SIZE - FOOTER_SIZE..].copy_from_slice(footer.as_bytes());
        assert_eq!(TableFooter::decode(&block), Err(TableFormatError::BadFormatVersion { found: 3 }));
    }

    #[test]
    fn index_round_trips() {
        let entries = vec![
            IndexEntry { last_key: b"b".to_vec(), offset: 0, len: 4096 },
            IndexEntry { last_key: b"d".to_vec(), offset: 4096, len: 8192 },
        ];
        let raw = encode_index(&entries);
        let bytes = encode_block(3, 12288, BlockKind::Index, Compression::None, EntryLayout::Fixed, &raw, 2);
        let block = decode_block(&bytes, 3, 12288, BlockKind::Index).unwrap();
        assert_eq!(decode_index(&block).unwrap(), entries);
    }

    #[test]
    fn bloom_has_no_false_negatives_and_few_false_positives() {
        let mut bloom = Bloom::new(10_000, 10);
        for i in 0..10_000u64 {
            bloom.insert(&i.to_le_bytes());
        }
        assert!((0..10_000u64).all(|i| bloom.may_contain(&i.to_le_bytes())));
        let false_positives = (10_000..110_000u64).filter(|i| bloom.may_contain(&i.to_le_bytes())).count();
        assert!(false_positives < 2_000, "{false_positives} false positives in 100k (expected about 1%)");
        let raw = bloom.encode();
        let block = DecodedBlock::new(raw, 0, EntryLayout::Fixed);
        assert_eq!(Bloom::decode(&block).unwrap(), bloom);
    }
}
