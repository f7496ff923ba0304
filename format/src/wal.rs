//! WAL layouts: the segment header, the group-commit batch frame and the records inside it.
//!
//! A segment is a preallocated file. Block 0 holds the [`SegmentHeader`]; batches follow, each
//! starting on a fresh 4 KiB block: a [`BatchHeader`], then `record_count` records packed back to
//! back (a [`RecordHeader`], the pkey, the value), then zero padding to the next block boundary.
//!
//! Invariant: a batch is valid only at the offset, in the segment (sequence and nonce) and with
//! the checksum it was written with; stale batches from a recycled segment's earlier life, or a
//! batch copied elsewhere, fail to decode.

use crate::checksum::{crc32c, crc32c_append};
use crate::key::{PKEY_LEN_MAX, Timestamp};
use crate::varint::{get_varint, put_varint, unzigzag, zigzag};
use crate::version::Version;
use crate::{BLOCK_SIZE, align_up_block};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// "STWS": Strata WAL segment.
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"STWS");
/// "STWB": Strata WAL batch.
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"STWB");
/// The segment header's format version.
pub const WAL_FORMAT_VERSION: u16 = 1;
/// The batch format this code writes: 2 packs records with varint fields ([`BatchEncoder::push`]).
/// Batches of format 1 (fixed 24-byte [`RecordHeader`]s) are still read.
pub const BATCH_FORMAT_VERSION: u16 = 2;
/// The most bytes a record's fields take before its pkey and value, in either batch format.
pub const RECORD_HEADER_MAX: usize = 1 + 1 + 5 + 10 + 10;
/// Batches begin after the header block.
pub const SEGMENT_DATA_OFFSET: u64 = BLOCK_SIZE as u64;

/// Segment header, at offset 0 of a segment; the rest of block 0 is zero.
///
/// ```text
/// offset size field              meaning
/// 0      4    magic              "STWS"
/// 4      2    format_version     1
/// 6      2    reserved           0
/// 8      4    block_size         4096
/// 12     4    reserved           0
/// 16     8    segment_seq        monotonic across the WAL's life, never reused
/// 24     8    nonce              random per segment use; every batch repeats it
/// 32     8    segment_size       bytes, including the header block
/// 40     8    first_batch_seq    sequence of the first batch this segment will hold
/// 48     8    prev_segment_seq   the segment this one follows (0: none)
/// 56     8    prev_segment_end   where the previous segment's valid batches end
/// 64     8    version_lease      no version above this is issued until a later lease is durable
/// 72     4    reserved           0
/// 76     4    crc                CRC32C of bytes 0..76
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SegmentHeader {
    pub magic: U32,
    pub format_version: U16,
    pub reserved0: U16,
    pub block_size: U32,
    pub reserved1: U32,
    pub segment_seq: U64,
    pub nonce: U64,
    pub segment_size: U64,
    pub first_batch_seq: U64,
    pub prev_segment_seq: U64,
    pub prev_segment_end: U64,
    pub version_lease: U64,
    pub reserved2: U32,
    pub crc: U32,
}
const _: () = assert!(size_of::<SegmentHeader>() == 80);

/// Group-commit batch header, at a block-aligned offset of a segment.
///
/// ```text
/// offset size field            meaning
/// 0      4    magic            "STWB"
/// 4      2    format_version   2 (1 is still read)
/// 6      2    flags            0 (reserved)
/// 8      4    record_count     records in the payload
/// 12     4    payload_len      bytes of records after this header
/// 16     8    batch_seq        monotonic across segments, no gaps
/// 24     8    segment_seq      the segment this batch was written into
/// 32     8    offset           byte offset of this header in the segment
/// 40     8    nonce            the segment's nonce
/// 48     8    version_lease    durable bound on versions issued after this batch
/// 56     4    reserved         0
/// 60     4    crc              CRC32C of bytes 0..60, then of the payload
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct BatchHeader {
    pub magic: U32,
    pub format_version: U16,
    pub flags: U16,
    pub record_count: U32,
    pub payload_len: U32,
    pub batch_seq: U64,
    pub segment_seq: U64,
    pub offset: U64,
    pub nonce: U64,
    pub version_lease: U64,
    pub reserved: U32,
    pub crc: U32,
}
const _: () = assert!(size_of::<BatchHeader>() == 64);
pub const BATCH_HEADER_SIZE: usize = size_of::<BatchHeader>();

/// Record header of batch format 1, followed by `pkey_len` bytes of pkey and `value_len` bytes
/// of value. Format 2 writes the same fields as varints ([`BatchEncoder::push`]).
///
/// ```text
/// offset size field      meaning
/// 0      8    version    assigned when the write was accepted
/// 8      8    ts         the key's timestamp
/// 16     4    value_len  bytes of value (0 for a delete)
/// 20     1    kind       1 put, 2 delete, 3 delete range (value: end ts, u64 LE; ts: start)
/// 21     1    pkey_len   1..=255
/// 22     2    reserved   0
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RecordHeader {
    pub version: U64,
    pub ts: U64,
    pub value_len: U32,
    pub kind: u8,
    pub pkey_len: u8,
    pub reserved: U16,
}
const _: () = assert!(size_of::<RecordHeader>() == 24);

/// What a record does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Put = 1,
    Delete = 2,
    /// Deletes every entry of the pkey with `ts <= t <= end`; the value holds `end` (u64 LE).
    DeleteRange = 3,
}

impl RecordKind {
    fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Put),
            2 => Some(Self::Delete),
            3 => Some(Self::DeleteRange),
            _ => None,
        }
    }
}

/// Why bytes in a segment are not a valid header, batch or record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalFormatError {
    /// The bytes hold no magic at all (all zero): the log was never written here.
    Unwritten,
    BadMagic {
        found: u32,
    },
    BadFormatVersion {
        found: u16,
    },
    ReservedNonZero {
        field: &'static str,
    },
    BadBlockSize {
        found: u32,
    },
    ChecksumMismatch {
        stored: u32,
        computed: u32,
    },
    WrongSegment {
        expected_seq: u64,
        found_seq: u64,
    },
    WrongNonce,
    WrongOffset {
        expected: u64,
        found: u64,
    },
    /// The declared payload runs past the end of the segment.
    PayloadTooLong {
        payload_len: u64,
        room: u64,
    },
    Truncated {
        needed: usize,
        available: usize,
    },
    BadRecord {
        index: u32,
        reason: &'static str,
    },
}

impl std::fmt::Display for WalFormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unwritten => write!(f, "never written (zero bytes)"),
            Self::BadMagic { found } => write!(f, "bad magic {found:#010x}"),
            Self::BadFormatVersion { found } => write!(f, "unknown format version {found}"),
            Self::ReservedNonZero { field } => write!(f, "reserved field {field} is not zero"),
            Self::BadBlockSize { found } => write!(f, "block size {found} is not {BLOCK_SIZE}"),
            Self::ChecksumMismatch { stored, computed } => {
                write!(f, "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")
            }
            Self::WrongSegment { expected_seq, found_seq } => {
                write!(f, "batch of segment {found_seq} found in segment {expected_seq}")
            }
            Self::WrongNonce => write!(f, "batch nonce does not match its segment"),
            Self::WrongOffset { expected, found } => {
                write!(f, "batch written for offset {found} found at offset {expected}")
            }
            Self::PayloadTooLong { payload_len, room } => {
                write!(f, "payload of {payload_len} bytes exceeds the {room} bytes left in the segment")
            }
            Self::Truncated { needed, available } => {
                write!(f, "truncated: needs {needed} bytes, {available} available")
            }
            Self::BadRecord { index, reason } => write!(f, "record {index}: {reason}"),
        }
    }
}

impl std::error::Error for WalFormatError {}

fn checked_magic(found: u32, expected: u32, bytes: &[u8]) -> Result<(), WalFormatError> {
    if found == expected {
        return Ok(());
    }
    if bytes.iter().all(|b| *b == 0) {
        return Err(WalFormatError::Unwritten);
    }
    Err(WalFormatError::BadMagic { found })
}

/// The values a segment header is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub segment_seq: u64,
    pub nonce: u64,
    pub segment_size: u64,
    pub first_batch_seq: u64,
    pub prev_segment_seq: u64,
    pub prev_segment_end: u64,
    pub version_lease: Version,
}

impl SegmentHeader {
    /// Encodes a segment header into a full, zero-padded block.
    #[must_use]
    pub fn encode_block(info: &SegmentInfo) -> Vec<u8> {
        assert!(info.segment_seq > 0, "segment sequence 0 means none");
        assert!(info.segment_size.is_multiple_of(BLOCK_SIZE as u64) && info.segment_size > SEGMENT_DATA_OFFSET);
        let mut header = Self {
            magic: SEGMENT_MAGIC.into(),
            format_version: WAL_FORMAT_VERSION.into(),
            reserved0: 0.into(),
            block_size: (BLOCK_SIZE as u32).into(),
            reserved1: 0.into(),
            segment_seq: info.segment_seq.into(),
            nonce: info.nonce.into(),
            segment_size: info.segment_size.into(),
            first_batch_seq: info.first_batch_seq.into(),
            prev_segment_seq: info.prev_segment_seq.into(),
            prev_segment_end: info.prev_segment_end.into(),
            version_lease: info.version_lease.into(),
            reserved2: 0.into(),
            crc: 0.into(),
        };
        header.crc = crc32c(&header.as_bytes()[..76]).into();
        let mut block = vec![0u8; BLOCK_SIZE];
        block[..size_of::<Self>()].copy_from_slice(header.as_bytes());
        block
    }

    /// Decodes and checks a segment header from the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<SegmentInfo, WalFormatError> {
        let (header, _) = Self::read_from_prefix(bytes)
            .map_err(|_| WalFormatError::Truncated { needed: size_of::<Self>(), available: bytes.len() })?;
        checked_magic(header.magic.get(), SEGMENT_MAGIC, &bytes[..size_of::<Self>()])?;
        let computed = crc32c(&header.as_bytes()[..76]);
        if computed != header.crc.get() {
            return Err(WalFormatError::ChecksumMismatch { stored: header.crc.get(), computed });
        }
        if header.format_version.get() != WAL_FORMAT_VERSION {
            return Err(WalFormatError::BadFormatVersion { found: header.format_version.get() });
        }
        if header.reserved0.get() != 0 || header.reserved1.get() != 0 || header.reserved2.get() != 0 {
            return Err(WalFormatError::ReservedNonZero { field: "segment header" });
        }
        if header.block_size.get() != BLOCK_SIZE as u32 {
            return Err(WalFormatError::BadBlockSize { found: header.block_size.get() });
        }
        Ok(SegmentInfo {
            segment_seq: header.segment_seq.get(),
            nonce: header.nonce.get(),
            segment_size: header.segment_size.get(),
            first_batch_seq: header.first_batch_seq.get(),
            prev_segment_seq: header.prev_segment_seq.get(),
            prev_segment_end: header.prev_segment_end.get(),
            version_lease: header.version_lease.get(),
        })
    }
}

/// Where a batch is written: its sequence and its place in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPlace {
    pub batch_seq: u64,
    pub segment_seq: u64,
    pub offset: u64,
    pub nonce: u64,
}

/// Builds one batch frame in memory: records are appended, then `finish` fills the header and
/// pads to a block boundary.
#[derive(Debug, Default)]
pub struct BatchEncoder {
    buf: Vec<u8>,
    record_count: u32,
    /// The previous record's version and ts: records store their differences from them.
    last_version: Version,
    last_ts: Timestamp,
}

impl BatchEncoder {
    #[must_use]
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(2 * BLOCK_SIZE);
        buf.resize(BATCH_HEADER_SIZE, 0);
        Self { buf, record_count: 0, last_version: 0, last_ts: 0 }
    }

    #[must_use]
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes of header and records so far, before padding.
    #[must_use]
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of the frame once finished (header, records, padding).
    #[must_use]
    pub fn framed_len(&self) -> usize {
        align_up_block(self.buf.len())
    }

    /// The most bytes a record of this shape adds (its varint fields may take fewer).
    #[must_use]
    pub fn record_len(pkey_len: usize, value_len: usize) -> usize {
        RECORD_HEADER_MAX + pkey_len + value_len
    }

    /// Appends one record (batch format 2). The caller has validated the pkey.
    ///
    /// ```text
    /// kind           u8      1 put, 2 delete, 3 delete range (value: end ts, u64 LE; ts: start)
    /// pkey_len       u8      1..=255
    /// value_len      varint  bytes of value (0 for a delete, 8 for a delete range)
    /// version_delta  varint  zigzag(version - previous record's version), the first from 0
    /// ts_delta       varint  zigzag(ts - previous record's ts), the first from 0
    /// pkey           pkey_len bytes
    /// value          value_len bytes
    /// ```
    ///
    /// Records of one batch were accepted together, so their versions are nearly consecutive,
    /// and time-ordered writes have close timestamps: the fields take about 8 bytes instead of
    /// 24.
    pub fn push(&mut self, kind: RecordKind, version: Version, pkey: &[u8], ts: Timestamp, value: &[u8]) {
        assert!(!pkey.is_empty() && pkey.len() <= PKEY_LEN_MAX);
        assert!(match kind {
            RecordKind::Put => true,
            RecordKind::Delete => value.is_empty(),
            RecordKind::DeleteRange => value.len() == 8,
        });
        let value_len = u32::try_from(value.len()).expect("value length should fit u32");
        self.buf.push(kind as u8);
        self.buf.push(pkey.len() as u8);
        put_varint(&mut self.buf, u64::from(value_len));
        put_varint(&mut self.buf, zigzag(version.wrapping_sub(self.last_version) as i64));
        put_varint(&mut self.buf, zigzag(ts.wrapping_sub(self.last_ts) as i64));
        (self.last_version, self.last_ts) = (version, ts);
        self.buf.extend_from_slice(pkey);
        self.buf.extend_from_slice(value);
        self.record_count += 1;
    }

    /// Fills in the header for `place` and pads the frame to a block boundary. The returned
    /// bytes are the exact image to write at `place.offset`.
    pub fn finish(&mut self, place: BatchPlace, version_lease: Version) -> &[u8] {
        assert!(place.offset.is_multiple_of(BLOCK_SIZE as u64), "a batch starts on a fresh block");
        let payload_len = self.buf.len() - BATCH_HEADER_SIZE;
        let mut header = BatchHeader {
            magic: BATCH_MAGIC.into(),
            format_version: BATCH_FORMAT_VERSION.into(),
            flags: 0.into(),
            record_count: self.record_count.into(),
            payload_len: u32::try_from(payload_len).expect("batch payload should fit u32").into(),
            batch_seq: place.batch_seq.into(),
            segment_seq: place.segment_seq.into(),
            offset: place.offset.into(),
            nonce: place.nonce.into(),
            version_lease: version_lease.into(),
            reserved: 0.into(),
            crc: 0.into(),
        };
        let crc = crc32c_append(crc32c(&header.as_bytes()[..60]), &self.buf[BATCH_HEADER_SIZE..]);
        header.crc = crc.into();
        self.buf[..BATCH_HEADER_SIZE].copy_from_slice(header.as_bytes());
        let framed = align_up_block(self.buf.len());
        self.buf.resize(framed, 0);
        &self.buf
    }

    /// Empties the encoder for reuse, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.buf.resize(BATCH_HEADER_SIZE, 0);
        self.record_count = 0;
        (self.last_version, self.last_ts) = (0, 0);
    }
}

/// A decoded batch: its header fields and its (checked) payload.
#[derive(Debug, Clone, Copy)]
pub struct BatchRef<'a> {
    /// 1: fixed record headers; 2: varint record fields.
    pub format_version: u16,
    pub batch_seq: u64,
    pub record_count: u32,
    pub version_lease: Version,
    pub payload: &'a [u8],
}

impl BatchRef<'_> {
    /// Bytes the batch occupies in its segment, padding included.
    #[must_use]
    pub fn framed_len(&self) -> u64 {
        align_up_block(BATCH_HEADER_SIZE + self.payload.len()) as u64
    }

    /// The records, each checked for shape as it is read.
    #[must_use]
    pub fn records(&self) -> RecordIter<'_> {
        RecordIter {
            rest: self.payload,
            index: 0,
            remaining: self.record_count,
            compact: self.format_version >= 2,
            version: 0,
            ts: 0,
        }
    }
}

/// Reads the batch header at the start of `bytes` without checking the payload checksum, to
/// learn how many bytes the whole batch needs. `room` is the segment space from this offset on.
pub fn peek_batch_len(bytes: &[u8], room: u64) -> Result<usize, WalFormatError> {
    let (header, _) = BatchHeader::read_from_prefix(bytes)
        .map_err(|_| WalFormatError::Truncated { needed: BATCH_HEADER_SIZE, available: bytes.len() })?;
    checked_magic(header.magic.get(), BATCH_MAGIC, &bytes[..BATCH_HEADER_SIZE])?;
    let payload_len = u64::from(header.payload_len.get());
    if payload_len + BATCH_HEADER_SIZE as u64 > room {
        return Err(WalFormatError::PayloadTooLong { payload_len, room });
    }
    Ok(BATCH_HEADER_SIZE + payload_len as usize)
}

/// Decodes and checks the batch at the start of `bytes`, which must be the batch found at
/// `expected.offset` of segment `expected.segment_seq`. `expected.batch_seq` is not checked here
/// (recovery decides what a sequence gap means).
pub fn decode_batch(bytes: &[u8], expected: BatchPlace, room: u64) -> Result<BatchRef<'_>, WalFormatError> {
    let needed = peek_batch_len(bytes, room)?;
    if bytes.len() < needed {
        return Err(WalFormatError::Truncated { needed, available: bytes.len() });
    }
    let (header, _) = BatchHeader::read_from_prefix(bytes).expect("peek_batch_len checked the size");
    let payload = &bytes[BATCH_HEADER_SIZE..needed];
    let computed = crc32c_append(crc32c(&header.as_bytes()[..60]), payload);
    if computed != header.crc.get() {
        return Err(WalFormatError::ChecksumMismatch { stored: header.crc.get(), computed });
    }
    if !matches!(header.format_version.get(), 1 | BATCH_FORMAT_VERSION) {
        return Err(WalFormatError::BadFormatVersion { found: header.format_version.get() });
    }
    if header.flags.get() != 0 || header.reserved.get() != 0 {
        return Err(WalFormatError::ReservedNonZero { field: "batch header" });
    }
    if header.segment_seq.get() != expected.segment_seq {
        return Err(WalFormatError::WrongSegment {
            expected_seq: expected.segment_seq,
            found_seq: header.segment_seq.get(),
        });
    }
    if header.nonce.get() != expected.nonce {
        return Err(WalFormatError::WrongNonce);
    }
    if header.offset.get() != expected.offset {
        return Err(WalFormatError::WrongOffset { expected: expected.offset, found: header.offset.get() });
    }
    Ok(BatchRef {
        format_version: header.format_version.get(),
        batch_seq: header.batch_seq.get(),
        record_count: header.record_count.get(),
        version_lease: header.version_lease.get(),
        payload,
    })
}

/// Decodes the batch at the start of `bytes` checking only its checksum, and returns it with the
/// segment sequence and offset it claims. Recovery uses this to tell a torn segment header
/// (no batches behind it) from a corrupt header in front of acknowledged batches.
pub fn decode_batch_unplaced(bytes: &[u8], room: u64) -> Result<(BatchRef<'_>, BatchPlace), WalFormatError> {
    let (header, _) = BatchHeader::read_from_prefix(bytes)
        .map_err(|_| WalFormatError::Truncated { needed: BATCH_HEADER_SIZE, available: bytes.len() })?;
    let claimed = BatchPlace {
        batch_seq: header.batch_seq.get(),
        segment_seq: header.segment_seq.get(),
        offset: header.offset.get(),
        nonce: header.nonce.get(),
    };
    let batch = decode_batch(bytes, claimed, room)?;
    Ok((batch, claimed))
}

/// One decoded record, borrowing from its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub kind: RecordKind,
    pub version: Version,
    pub pkey: &'a [u8],
    pub ts: Timestamp,
    pub value: &'a [u8],
}

/// Iterates a batch payload's records; the first malformed record ends it with an error.
#[derive(Debug)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
    index: u32,
    remaining: u32,
    /// Batch format 2: varint fields, version and ts as deltas from the previous record's.
    compact: bool,
    version: Version,
    ts: Timestamp,
}

/// A record's fields before its pkey and value.
struct Fields {
    kind: u8,
    pkey_len: usize,
    value_len: usize,
    version: Version,
    ts: Timestamp,
}

impl<'a> RecordIter<'a> {
    /// Reads the fields at the start of `rest` in either format; returns them and what follows.
    fn fields(&self) -> Result<(Fields, &'a [u8]), &'static str> {
        let rest: &'a [u8] = self.rest;
        if !self.compact {
            let (header, body) = RecordHeader::read_from_prefix(rest).map_err(|_| "truncated record header")?;
            if header.reserved.get() != 0 {
                return Err("malformed record");
            }
            let fields = Fields {
                kind: header.kind,
                pkey_len: usize::from(header.pkey_len),
                value_len: header.value_len.get() as usize,
                version: header.version.get(),
                ts: header.ts.get(),
            };
            return Ok((fields, body));
        }
        let [kind, pkey_len, rest @ ..] = rest else { return Err("truncated record header") };
        let (value_len, rest) = get_varint(rest).ok_or("truncated record header")?;
        let (version_delta, rest) = get_varint(rest).ok_or("truncated record header")?;
        let (ts_delta, rest) = get_varint(rest).ok_or("truncated record header")?;
        let value_len = u32::try_from(value_len).map_err(|_| "malformed record")?;
        let fields = Fields {
            kind: *kind,
            pkey_len: usize::from(*pkey_len),
            value_len: value_len as usize,
            version: self.version.wrapping_add(unzigzag(version_delta) as u64),
            ts: self.ts.wrapping_add(unzigzag(ts_delta) as u64),
        };
        Ok((fields, rest))
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordRef<'a>, WalFormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            if self.rest.is_empty() {
                return None;
            }
            self.rest = &[];
            return Some(Err(WalFormatError::BadRecord { index: self.index, reason: "bytes after the last record" }));
        }
        let index = self.index;
        let checked = self.fields().and_then(|(f, body)| {
            let kind = RecordKind::from_u8(f.kind).ok_or("unknown record kind")?;
            let value_ok = match kind {
                RecordKind::Put => true,
                RecordKind::Delete => f.value_len == 0,
                RecordKind::DeleteRange => f.value_len == 8,
            };
            if f.pkey_len == 0 || !value_ok || body.len() < f.pkey_len + f.value_len {
                return Err("malformed record");
            }
            Ok((kind, f, body))
        });
        let (kind, f, body) = match checked {
            Ok(found) => found,
            Err(reason) => {
                self.remaining = 0;
                self.rest = &[];
                return Some(Err(WalFormatError::BadRecord { index, reason }));
            }
        };
        let record = RecordRef {
            kind,
            version: f.version,
            pkey: &body[..f.pkey_len],
            ts: f.ts,
            value: &body[f.pkey_len..f.pkey_len + f.value_len],
        };
        (self.version, self.ts) = (f.version, f.ts);
        self.rest = &body[f.pkey_len + f.value_len..];
        self.index += 1;
        self.remaining -= 1;
        Some(Ok(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Rng, seed};

    fn info() -> SegmentInfo {
        SegmentInfo {
            segment_seq: 7,
            nonce: 0xdead_beef_1234_5678,
            segment_size: 1 << 20,
            first_batch_seq: 99,
            prev_segment_seq: 6,
            prev_segment_end: 81920,
            version_lease: 1 << 40,
        }
    }

    fn place() -> BatchPlace {
        BatchPlace { batch_seq: 100, segment_seq: 7, offset: 8192, nonce: 0xdead_beef_1234_5678 }
    }

    fn sample_batch() -> Vec<u8> {
        let mut enc = BatchEncoder::new();
        enc.push(RecordKind::Put, 11, b"alice", 5, b"hello");
        enc.push(RecordKind::Delete, 12, b"bob", u64::MAX, b"");
        enc.push(RecordKind::Put, 13, &[7; 255], 0, &[1; 300]);
        enc.finish(place(), 1 << 41).to_vec()
    }

    #[test]
    fn segment_header_round_trips() {
        let block = SegmentHeader::encode_block(&info());
        assert_eq!(block.len(), BLOCK_SIZE);
        assert_eq!(SegmentHeader::decode(&block), Ok(info()));
    }

    #[test]
    fn segment_header_detects_every_single_bit_flip() {
        let block = SegmentHeader::encode_block(&info());
        for bit in 0..size_of::<SegmentHeader>() * 8 {
            let mut bad = block.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&bad).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn segment_header_reports_unwritten_block() {
        assert_eq!(SegmentHeader::decode(&[0; BLOCK_SIZE]), Err(WalFormatError::Unwritten));
    }

    #[test]
    fn batch_round_trips() {
        let frame = sample_batch();
        assert_eq!(frame.len() % BLOCK_SIZE, 0);
        let batch = decode_batch(&frame, place(), 1 << 20).unwrap();
        assert_eq!(batch.batch_seq, 100);
        assert_eq!(batch.version_lease, 1 << 41);
        assert_eq!(batch.framed_len(), frame.len() as u64);
        let records: Vec<_> = batch.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(
            records[0],
            RecordRef { kind: RecordKind::Put, version: 11, pkey: b"alice", ts: 5, value: b"hello" }
        );
        assert_eq!(
            records[1],
            RecordRef { kind: RecordKind::Delete, version: 12, pkey: b"bob", ts: u64::MAX, value: b"" }
        );
        assert_eq!(records[2].value, &[1; 300][..]);
    }

    /// A batch of format 1 (24-byte record headers), as earlier versions wrote it.
    type Fields<'a> = (RecordKind, Version, &'a [u8], Timestamp, &'a [u8]);

    fn format1_batch(records: &[Fields<'_>]) -> Vec<u8> {
        let mut payload = Vec::new();
        for &(kind, version, pkey, ts, value) in records {
            let header = RecordHeader {
                version: version.into(),
                ts: ts.into(),
                value_len: (value.len() as u32).into(),
                kind: kind as u8,
                pkey_len: pkey.len() as u8,
                reserved: 0.into(),
            };
            payload.extend_from_slice(header.as_bytes());
            payload.extend_from_slice(pkey);
            payload.extend_from_slice(value);
        }
        let p = place();
        let mut header = BatchHeader {
            magic: BATCH_MAGIC.into(),
            format_version: 1.into(),
            flags: 0.into(),
            record_count: (records.len() as u32).into(),
            payload_len: (payload.len() as u32).into(),
            batch_seq: p.batch_seq.into(),
            segment_seq: p.segment_seq.into(),
            offset: p.offset.into(),
            nonce: p.nonce.into(),
            version_lease: (1u64 << 41).into(),
            reserved: 0.into(),
            crc: 0.into(),
        };
        header.crc = crc32c_append(crc32c(&header.as_bytes()[..60]), &payload).into();
        let mut frame = header.as_bytes().to_vec();
        frame.extend_from_slice(&payload);
        frame.resize(align_up_block(frame.len()), 0);
        frame
    }

    #[test]
    fn format1_batches_are_still_read() {
        let frame = format1_batch(&[
            (RecordKind::Put, 11, b"alice", 5, b"hello"),
            (RecordKind::DeleteRange, 9, b"bob", 3, &7u64.to_le_bytes()),
        ]);
        let batch = decode_batch(&frame, place(), 1 << 20).unwrap();
        assert_eq!(batch.format_version, 1);
        let records: Vec<_> = batch.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(
            records,
            vec![
                RecordRef { kind: RecordKind::Put, version: 11, pkey: b"alice", ts: 5, value: b"hello" },
                RecordRef {
                    kind: RecordKind::DeleteRange,
                    version: 9,
                    pkey: b"bob",
                    ts: 3,
                    value: &7u64.to_le_bytes()
                },
            ]
        );
    }

    /// Random records (versions and timestamps close together, far apart, at the extremes):
    /// every batch decodes to exactly what went in, within the length `record_len` promised;
    /// and damaged payloads never panic the decoder.
    #[test]
    fn compact_records_round_trip_random_batches() {
        let mut rng = Rng(seed("STRATA_WAL_SEED", "wal"));
        for round in 0..500 {
            let mut enc = BatchEncoder::new();
            let mut expected = Vec::new();
            let mut bound = BATCH_HEADER_SIZE;
            for _ in 0..1 + rng.below(40) {
                let kind = [RecordKind::Put, RecordKind::Delete, RecordKind::DeleteRange][rng.below(3) as usize];
                let pick = |rng: &mut Rng| match rng.below(4) {
                    0 => rng.next(),
                    1 => [0, u64::MAX, u64::MAX - 1][rng.below(3) as usize],
                    _ => 1_700_000_000_000_000 + rng.below(1 << 20),
                };
                let (version, ts) = (pick(&mut rng), pick(&mut rng));
                let pkey: Vec<u8> = (0..1 + rng.below(255)).map(|_| rng.next() as u8).collect();
                let value: Vec<u8> = match kind {
                    RecordKind::Put => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
                    RecordKind::Delete => Vec::new(),
                    RecordKind::DeleteRange => rng.next().to_le_bytes().to_vec(),
                };
                let before = enc.len();
                enc.push(kind, version, &pkey, ts, &value);
                assert!(enc.len() - before <= BatchEncoder::record_len(pkey.len(), value.len()), "round {round}");
                bound += BatchEncoder::record_len(pkey.len(), value.len());
                expected.push((kind, version, pkey, ts, value));
            }
            assert!(enc.len() <= bound);
            let frame = enc.finish(place(), 1 << 41).to_vec();
            let batch = decode_batch(&frame, place(), 1 << 20).unwrap();
            let records: Vec<_> = batch
                .records()
                .map(|r| r.map(|r| (r.kind, r.version, r.pkey.to_vec(), r.ts, r.value.to_vec())))
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(records, expected, "round {round}");
            // Damage the payload (past the checksum: as if the checksum had matched).
            for _ in 0..20 {
                let mut payload = batch.payload.to_vec();
                let at = rng.below(payload.len() as u64) as usize;
                payload[at] = rng.next() as u8;
                payload.truncate(payload.len() - rng.below(3) as usize);
                let damaged = BatchRef { payload: &payload, ..batch };
                for record in damaged.records() {
                    if record.is_err() {
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn batch_detects_every_single_bit_flip() {
        let frame = sample_batch();
        let covered = BATCH_HEADER_SIZE + decode_batch(&frame, place(), 1 << 20).unwrap().payload.len();
        for bit in 0..covered * 8 {
            let mut bad = frame.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_batch(&bad, place(), 1 << 20).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn batch_is_refused_out_of_place() {
        let frame = sample_batch();
        let elsewhere = BatchPlace { offset: 12288, ..place() };
        assert!(matches!(decode_batch(&frame, elsewhere, 1 << 20), Err(WalFormatError::WrongOffset { .. })));
        let recycled = BatchPlace { segment_seq: 8, ..place() };
        assert!(matches!(decode_batch(&frame, recycled, 1 << 20), Err(WalFormatError::WrongSegment { .. })));
        let other_nonce = BatchPlace { nonce: 1, ..place() };
        assert!(matches!(decode_batch(&frame, other_nonce, 1 << 20), Err(WalFormatError::WrongNonce)));
    }

    #[test]
    fn batch_refuses_a_declared_length_beyond_the_segment() {
        let frame = sample_batch();
        assert!(matches!(decode_batch(&frame, place(), 100), Err(WalFormatError::PayloadTooLong { .. })));
        assert!(matches!(decode_batch(&frame[..200], place(), 1 << 20), Err(WalFormatError::Truncated { .. })));
    }
}
