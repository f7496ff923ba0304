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
use crate::version::Version;
use crate::{BLOCK_SIZE, align_up_block};
use xxhash_rust::xxh3::xxh3_64;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// "STBK": Strata table block.
pub const BLOCK_MAGIC: u32 = u32::from_le_bytes(*b"STBK");
/// "STTB": Strata table.
pub const TABLE_MAGIC: u32 = u32::from_le_bytes(*b"STTB");
pub const TABLE_FORMAT_VERSION: u16 = 1;
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

/// Block header, at a 4 KiB-aligned offset of a table.
///
/// ```text
/// offset size field        meaning
/// 0      4    magic        "STBK"
/// 4      1    kind         1 data, 2 index, 3 filter
/// 5      1    compression  0 none, 1 lz4
/// 6      2    reserved     0
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
    pub reserved0: U16,
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
/// 4      2    format_version  1
/// 6      2    reserved        0
/// 8      8    table_id        unique per shard, never reused
/// 16     8    window          the time window every entry's ts falls in
/// 24     8    index_offset    offset of the index block
/// 32     4    index_len       bytes of the index block, header and padding included
/// 36     4    filter_len      bytes of the filter block, header and padding included
/// 40     8    filter_offset   offset of the filter block
/// 48     8    entry_count     entries in the table
/// 56     4    reserved        0
/// 60     4    crc             CRC32C of bytes 0..60
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
    pub reserved1: U32,
    pub crc: U32,
}
const _: () = assert!(size_of::<TableFooter>() == 64);

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
    raw: &[u8],
    entry_count: u32,
) -> Vec<u8> {
    assert!(offset.is_multiple_of(BLOCK_SIZE as u64), "blocks start 4 KiB-aligned");
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
        reserved0: 0.into(),
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

/// A decoded block: its raw bytes (decompressed) and entry count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedBlock {
    pub raw: Vec<u8>,
    pub entry_count: u32,
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
    if header.reserved0.get() != 0 || header.reserved1.get() != 0 || header.reserved2.get() != 0 {
        return Err(TableFormatError::ReservedNonZero { field: "block header" });
    }
    if header.kind != kind as u8 {
        return Err(TableFormatError::WrongKind { expected: kind as u8, found: header.kind });
    }
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
    Ok(DecodedBlock { raw, entry_count: header.entry_count.get() })
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
            reserved1: 0.into(),
            crc: 0.into(),
        };
        footer.crc = crc32c(&footer.as_bytes()[..60]).into();
        let mut block = vec![0u8; BLOCK_SIZE];
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
        if footer.format_version.get() != TABLE_FORMAT_VERSION {
            return Err(TableFormatError::BadFormatVersion { found: footer.format_version.get() });
        }
        if footer.reserved0.get() != 0 || footer.reserved1.get() != 0 {
            return Err(TableFormatError::ReservedNonZero { field: "table footer" });
        }
        Ok(FooterInfo {
            table_id: footer.table_id.get(),
            window: footer.window.get(),
            index_offset: footer.index_offset.get(),
            index_len: footer.index_len.get(),
            filter_offset: footer.filter_offset.get(),
            filter_len: footer.filter_len.get(),
            entry_count: footer.entry_count.get(),
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

/// Appends one entry to a data block's raw bytes.
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

/// Iterates a data block's entries; the first malformed entry ends it with an error.
#[derive(Debug, Clone)]
pub struct EntryIter<'a> {
    rest: &'a [u8],
    remaining: u32,
}

impl<'a> EntryIter<'a> {
    #[must_use]
    pub fn new(block: &'a DecodedBlock) -> Self {
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
        let fail = |this: &mut Self, reason| {
            this.remaining = 0;
            this.rest = &[];
            Some(Err(TableFormatError::BadBlock { reason }))
        };
        let Ok((header, body)) = EntryHeader::read_from_prefix(self.rest) else { return fail(self, "truncated entry") };
        let key_len = usize::from(header.key_len.get());
        let value_len = header.value_len.get() as usize;
        let shape_ok = matches!(header.kind, 1 | 2) && header.reserved == 0 && key_len > 0 && key_len <= KEY_LEN_MAX;
        if !shape_ok || (header.kind == 2 && value_len != 0) || body.len() < key_len + value_len {
            return fail(self, "malformed entry");
        }
        let entry = EntryRef {
            key: &body[..key_len],
            version: header.version.get(),
            value: (header.kind == 1).then(|| &body[key_len..key_len + value_len]),
        };
        self.rest = &body[key_len + value_len..];
        self.remaining -= 1;
        Some(Ok(entry))
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

    fn data_raw() -> (Vec<u8>, u32) {
        let mut raw = Vec::new();
        for i in 0..40u64 {
            let key = crate::key::encode_key(b"user", i).unwrap();
            let value = if i % 7 == 0 { None } else { Some(vec![i as u8; 90]) };
            push_entry(&mut raw, &key, 1000 + i, value.as_deref());
        }
        (raw, 40)
    }

    #[test]
    fn data_block_round_trips_raw_and_lz4() {
        let (raw, n) = data_raw();
        for compression in [Compression::None, Compression::Lz4] {
            let bytes = encode_block(9, 8192, BlockKind::Data, compression, &raw, n);
            assert_eq!(bytes.len() % BLOCK_SIZE, 0);
            let block = decode_block(&bytes, 9, 8192, BlockKind::Data).unwrap();
            let entries: Vec<_> = EntryIter::new(&block).collect::<Result<_, _>>().unwrap();
            assert_eq!(entries.len(), 40);
            assert_eq!(entries[0].value, None);
            assert_eq!(entries[1].value, Some(&[1u8; 90][..]));
            assert_eq!(entries[39].version, 1039);
        }
        let lz4 = encode_block(9, 0, BlockKind::Data, Compression::Lz4, &raw, n);
        assert_eq!(lz4[5], Compression::Lz4 as u8, "repetitive values compress");
    }

    #[test]
    fn data_block_detects_every_single_bit_flip() {
        let (raw, n) = data_raw();
        for compression in [Compression::None, Compression::Lz4] {
            let bytes = encode_block(9, 4096, BlockKind::Data, compression, &raw, n);
            let covered = peek_block_len(&bytes).unwrap();
            for bit in 0..covered * 8 {
                let mut bad = bytes.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    decode_block(&bad, 9, 4096, BlockKind::Data).is_err(),
                    "{compression:?}: flip of bit {bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn block_is_bound_to_its_table_and_offset() {
        let (raw, n) = data_raw();
        let bytes = encode_block(9, 4096, BlockKind::Data, Compression::None, &raw, n);
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
        };
        let block = TableFooter::encode_block(&info);
        assert_eq!(TableFooter::decode(&block), Ok(info));
        for bit in (BLOCK_SIZE - FOOTER_SIZE) * 8..BLOCK_SIZE * 8 {
            let mut bad = block.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(TableFooter::decode(&bad).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn index_round_trips() {
        let entries = vec![
            IndexEntry { last_key: b"b".to_vec(), offset: 0, len: 4096 },
            IndexEntry { last_key: b"d".to_vec(), offset: 4096, len: 8192 },
        ];
        let raw = encode_index(&entries);
        let bytes = encode_block(3, 12288, BlockKind::Index, Compression::None, &raw, 2);
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
        let block = DecodedBlock { raw, entry_count: 0 };
        assert_eq!(Bloom::decode(&block).unwrap(), bloom);
    }
}
