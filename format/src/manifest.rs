//! Manifest layout: an append-only log of edits to a shard's set of live tables.
//!
//! The manifest file is a sequence of records, each starting on a fresh 4 KiB block: a 32-byte
//! [`ManifestRecordHeader`], then the edit's bytes, then zero padding. A snapshot is a manifest
//! file whose first record is a full-state edit; it replaces the old file by rename.
//!
//! Invariant: every change of the live table set is exactly one record; a record is valid only
//! at its offset (bound into the checksum) with the next sequence number.

use crate::checksum::{crc32c, crc32c_append};
use crate::version::Version;
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// "STMF": Strata manifest.
pub const MANIFEST_MAGIC: u32 = u32::from_le_bytes(*b"STMF");
pub const MANIFEST_FORMAT_VERSION: u32 = 1;
pub const MANIFEST_HEADER_SIZE: usize = size_of::<ManifestRecordHeader>();

/// Manifest record header, at a 4 KiB-aligned offset of the manifest file.
///
/// ```text
/// offset size field           meaning
/// 0      4    magic           "STMF"
/// 4      4    format_version  1
/// 8      8    record_seq      1 for the first record of a file, then +1
/// 16     4    edit_len        bytes of the edit after this header
/// 20     4    reserved        0
/// 24     4    crc             CRC32C of the offset (u64 LE), bytes 0..24, and the edit
/// 28     4    reserved        0
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ManifestRecordHeader {
    pub magic: U32,
    pub format_version: U32,
    pub record_seq: U64,
    pub edit_len: U32,
    pub reserved0: U32,
    pub crc: U32,
    pub reserved1: U32,
}
const _: () = assert!(size_of::<ManifestRecordHeader>() == 32);

/// A live table as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMeta {
    pub table_id: u64,
    pub window: u64,
    /// Age order within the window: a table with a higher order holds newer writes for any key
    /// both hold. Tables of one sorted run share an order and have disjoint key ranges.
    pub order: u64,
    /// 0: a flushed table (or a merge of flushed tables); 1: part of the window's bottom run.
    pub level: u8,
    pub file_bytes: u64,
    pub entry_count: u64,
    pub version_max: Version,
    pub key_min: Vec<u8>,
    pub key_max: Vec<u8>,
}

/// A range delete: every entry of `pkey` with `ts_from <= ts <= ts_to` and a lower version
/// is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeTombstone {
    pub pkey: Vec<u8>,
    pub ts_from: u64,
    pub ts_to: u64,
    pub version: Version,
}

impl RangeTombstone {
    /// True when this range deletes the entry `(pkey, ts)` at `version`.
    #[must_use]
    pub fn hides(&self, pkey: &[u8], ts: u64, version: Version) -> bool {
        self.version > version && self.ts_from <= ts && ts <= self.ts_to && self.pkey == pkey
    }
}

/// The level of a sunk window's link tables: one entry per cold block, keyed by the block's last
/// key, whose value is its [`crate::cold::BlockLink`].
pub const LEVEL_COLD_LINKS: u8 = 3;
/// The level earlier builds gave link tables of one link per key: still decoded, so the node
/// can refuse them by name, never read.
pub const LEVEL_COLD_LINKS_PER_KEY: u8 = 2;

/// A window sunk to the cold tier: where its blocks are, and how they were placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColdWindow {
    pub window: u64,
    /// The placement epoch the window was first sunk in (kept by later sinks of it).
    pub epoch: u32,
    /// Disks in that epoch: placement of the window's buckets is `disk_of(bucket, window, disks)`.
    pub disks: u16,
    /// The sink that wrote the live files; each later sink of the window writes the next one.
    pub generation: u32,
    /// Part files per disk (index: disk), each numbered `0..parts`.
    pub parts: Vec<u16>,
    pub blocks: u64,
    pub entries: u64,
    /// Bytes of blocks on the cold disks.
    pub bytes: u64,
}

/// A sink in progress: files of this window and generation may exist and are not yet live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkIntent {
    pub window: u64,
    pub generation: u32,
    pub epoch: u32,
}

/// What an edit does to the sink intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IntentChange {
    #[default]
    Unchanged,
    Set(SinkIntent),
    Cleared,
}

/// One edit: tables added and removed, and the shard-wide counters that move with them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ManifestEdit {
    /// A snapshot: the tables listed are the whole live set.
    pub snapshot: bool,
    pub table_id_next: u64,
    pub order_next: u64,
    /// WAL segments below this sequence are persisted in tables and need no replay.
    pub wal_replay_from_seq: u64,
    /// Every version ever issued is at most this (recovery restarts above it).
    pub version_floor: Version,
    /// Windows sealed against further compaction into one run.
    pub windows_settled: Vec<u64>,
    pub added: Vec<TableMeta>,
    pub removed: Vec<u64>,
    /// Range deletes made durable by this edit (they stay in force).
    pub range_tombstones: Vec<RangeTombstone>,
    /// Windows whose cold files this edit makes live (replacing an earlier generation).
    pub cold_windows: Vec<ColdWindow>,
    /// Windows whose cold files leave the live set (retention dropped them).
    pub cold_removed: Vec<u64>,
    pub intent: IntentChange,
}

/// Why manifest bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestFormatError {
    Unwritten,
    BadMagic { found: u32 },
    BadFormatVersion { found: u32 },
    ReservedNonZero,
    ChecksumMismatch { stored: u32, computed: u32 },
    Truncated { needed: usize, available: usize },
    BadEdit { reason: &'static str },
}

impl std::fmt::Display for ManifestFormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unwritten => write!(f, "never written (zero bytes)"),
            Self::BadMagic { found } => write!(f, "bad magic {found:#010x}"),
            Self::BadFormatVersion { found } => write!(f, "unknown manifest format version {found}"),
            Self::ReservedNonZero => write!(f, "reserved field is not zero"),
            Self::ChecksumMismatch { stored, computed } => {
                write!(f, "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")
            }
            Self::Truncated { needed, available } => {
                write!(f, "truncated: needs {needed} bytes, {available} available")
            }
            Self::BadEdit { reason } => write!(f, "malformed edit: {reason}"),
        }
    }
}

impl std::error::Error for ManifestFormatError {}

/// Marks the optional cold section at the end of an edit.
const COLD_SECTION_TAG: u8 = 0xC0;

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A little reader over edit bytes; every read is checked.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ManifestFormatError> {
        if self.rest.len() < n {
            return Err(ManifestFormatError::BadEdit { reason: "edit ends early" });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, ManifestFormatError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ManifestFormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, ManifestFormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, ManifestFormatError> {
        let len = usize::from(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")));
        Ok(self.take(len)?.to_vec())
    }
    /// A count of items at least `item_min` bytes each, bounded by the bytes left.
    fn count(&mut self, item_min: usize) -> Result<usize, ManifestFormatError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item_min) > self.rest.len() {
            return Err(ManifestFormatError::BadEdit { reason: "count exceeds the edit" });
        }
        Ok(n)
    }
}

impl ManifestEdit {
    /// The edit's bytes (all integers little-endian; byte strings prefixed by a u16 length).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.added.len() * 96);
        out.push(u8::from(self.snapshot));
        for v in [self.table_id_next, self.order_next, self.wal_replay_from_seq, self.version_floor] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.windows_settled.len() as u32).to_le_bytes());
        for w in &self.windows_settled {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&(self.added.len() as u32).to_le_bytes());
        for t in &self.added {
            for v in [t.table_id, t.window, t.order] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.push(t.level);
            for v in [t.file_bytes, t.entry_count, t.version_max] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            put_bytes(&mut out, &t.key_min);
            put_bytes(&mut out, &t.key_max);
        }
        out.extend_from_slice(&(self.removed.len() as u32).to_le_bytes());
        for id in &self.removed {
            out.extend_from_slice(&id.to_le_bytes());
        }
        out.extend_from_slice(&(self.range_tombstones.len() as u32).to_le_bytes());
        for rt in &self.range_tombstones {
            put_bytes(&mut out, &rt.pkey);
            for v in [rt.ts_from, rt.ts_to, rt.version] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        // The cold section is written only when it says something, so edits of a shard without
        // a cold tier keep their original bytes.
        if !self.cold_windows.is_empty() || !self.cold_removed.is_empty() || self.intent != IntentChange::Unchanged {
            out.push(COLD_SECTION_TAG);
            out.extend_from_slice(&(self.cold_windows.len() as u32).to_le_bytes());
            for c in &self.cold_windows {
                out.extend_from_slice(&c.window.to_le_bytes());
                out.extend_from_slice(&c.epoch.to_le_bytes());
                out.extend_from_slice(&c.disks.to_le_bytes());
                out.extend_from_slice(&c.generation.to_le_bytes());
                out.extend_from_slice(&(c.parts.len() as u32).to_le_bytes());
                for p in &c.parts {
                    out.extend_from_slice(&p.to_le_bytes());
                }
                for v in [c.blocks, c.entries, c.bytes] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            out.extend_from_slice(&(self.cold_removed.len() as u32).to_le_bytes());
            for w in &self.cold_removed {
                out.extend_from_slice(&w.to_le_bytes());
            }
            match self.intent {
                IntentChange::Unchanged => out.push(0),
                IntentChange::Set(i) => {
                    out.push(1);
                    out.extend_from_slice(&i.window.to_le_bytes());
                    out.extend_from_slice(&i.generation.to_le_bytes());
                    out.extend_from_slice(&i.epoch.to_le_bytes());
                }
                IntentChange::Cleared => out.push(2),
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestFormatError> {
        let mut c = Cursor { rest: bytes };
        let snapshot = match c.u8()? {
            0 => false,
            1 => true,
            _ => return Err(ManifestFormatError::BadEdit { reason: "snapshot flag is neither 0 nor 1" }),
        };
        let mut edit = Self {
            snapshot,
            table_id_next: c.u64()?,
            order_next: c.u64()?,
            wal_replay_from_seq: c.u64()?,
            version_floor: c.u64()?,
            ..Self::default()
        };
        for _ in 0..c.count(8)? {
            edit.windows_settled.push(c.u64()?);
        }
        for _ in 0..c.count(53)? {
            let (table_id, window, order) = (c.u64()?, c.u64()?, c.u64()?);
            let level = c.u8()?;
            let (file_bytes, entry_count, version_max) = (c.u64()?, c.u64()?, c.u64()?);
            let (key_min, key_max) = (c.bytes()?, c.bytes()?);
            if level > LEVEL_COLD_LINKS || key_min > key_max {
                return Err(ManifestFormatError::BadEdit { reason: "bad table level or key range" });
            }
            edit.added.push(TableMeta {
                table_id,
                window,
                order,
                level,
                file_bytes,
                entry_count,
                version_max,
                key_min,
                key_max,
            });
        }
        for _ in 0..c.count(8)? {
            edit.removed.push(c.u64()?);
        }
        for _ in 0..c.count(27)? {
            let pkey = c.bytes()?;
            let (ts_from, ts_to, version) = (c.u64()?, c.u64()?, c.u64()?);
            if pkey.is_empty() || pkey.len() > crate::key::PKEY_LEN_MAX || ts_from > ts_to {
                return Err(ManifestFormatError::BadEdit { reason: "bad range tombstone" });
            }
            edit.range_tombstones.push(RangeTombstone { pkey, ts_from, ts_to, version });
        }
        if !c.rest.is_empty() {
            if c.u8()? != COLD_SECTION_TAG {
                return Err(ManifestFormatError::BadEdit { reason: "bytes after the edit" });
            }
            for _ in 0..c.count(42)? {
                let (window, epoch) = (c.u64()?, c.u32()?);
                let disks = u16::from_le_bytes(c.take(2)?.try_into().expect("2 bytes"));
                let generation = c.u32()?;
                let mut parts = Vec::new();
                for _ in 0..c.count(2)? {
                    parts.push(u16::from_le_bytes(c.take(2)?.try_into().expect("2 bytes")));
                }
                let (blocks, entries, bytes) = (c.u64()?, c.u64()?, c.u64()?);
                if disks == 0
                    || disks > crate::route::GROUP_COUNT_MAX
                    || parts.len() != usize::from(disks)
                    || generation == 0
                {
                    return Err(ManifestFormatError::BadEdit { reason: "bad cold window" });
                }
                edit.cold_windows.push(ColdWindow { window, epoch, disks, generation, parts, blocks, entries, bytes });
            }
            for _ in 0..c.count(8)? {
                edit.cold_removed.push(c.u64()?);
            }
            edit.intent = match c.u8()? {
                0 => IntentChange::Unchanged,
                1 => IntentChange::Set(SinkIntent { window: c.u64()?, generation: c.u32()?, epoch: c.u32()? }),
                2 => IntentChange::Cleared,
                _ => return Err(ManifestFormatError::BadEdit { reason: "bad sink intent" }),
            };
            if !c.rest.is_empty() {
                return Err(ManifestFormatError::BadEdit { reason: "bytes after the edit" });
            }
        }
        Ok(edit)
    }
}

/// Frames an edit as the record `record_seq` at `offset`, padded to a 4 KiB boundary.
#[must_use]
pub fn encode_record(offset: u64, record_seq: u64, edit: &ManifestEdit) -> Vec<u8> {
    let body = edit.encode();
    let mut header = ManifestRecordHeader {
        magic: MANIFEST_MAGIC.into(),
        format_version: MANIFEST_FORMAT_VERSION.into(),
        record_seq: record_seq.into(),
        edit_len: u32::try_from(body.len()).expect("an edit fits u32").into(),
        reserved0: 0.into(),
        crc: 0.into(),
        reserved1: 0.into(),
    };
    let crc = crc32c_append(crc32c_append(crc32c(&offset.to_le_bytes()), &header.as_bytes()[..24]), &body);
    header.crc = crc.into();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(&body);
    out.resize(crate::align_up_block(out.len()), 0);
    out
}

/// Decodes the record at the start of `bytes`, found at `offset`; returns its sequence, its
/// edit, and the bytes it occupies (padding included).
pub fn decode_record(bytes: &[u8], offset: u64) -> Result<(u64, ManifestEdit, u64), ManifestFormatError> {
    let (header, rest) = ManifestRecordHeader::read_from_prefix(bytes)
        .map_err(|_| ManifestFormatError::Truncated { needed: MANIFEST_HEADER_SIZE, available: bytes.len() })?;
    if header.magic.get() != MANIFEST_MAGIC {
        if bytes[..MANIFEST_HEADER_SIZE].iter().all(|b| *b == 0) {
            return Err(ManifestFormatError::Unwritten);
        }
        return Err(ManifestFormatError::BadMagic { found: header.magic.get() });
    }
    let len = header.edit_len.get() as usize;
    if rest.len() < len {
        return Err(ManifestFormatError::Truncated { needed: MANIFEST_HEADER_SIZE + len, available: bytes.len() });
    }
    let body = &rest[..len];
    let computed = crc32c_append(crc32c_append(crc32c(&offset.to_le_bytes()), &header.as_bytes()[..24]), body);
    if computed != header.crc.get() {
        return Err(ManifestFormatError::ChecksumMismatch { stored: header.crc.get(), computed });
    }
    if header.format_version.get() != MANIFEST_FORMAT_VERSION {
        return Err(ManifestFormatError::BadFormatVersion { found: header.format_version.get() });
    }
    if header.reserved0.get() != 0 || header.reserved1.get() != 0 {
        return Err(ManifestFormatError::ReservedNonZero);
    }
    let edit = ManifestEdit::decode(body)?;
    Ok((header.record_seq.get(), edit, crate::align_up_block(MANIFEST_HEADER_SIZE + len) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit() -> ManifestEdit {
        ManifestEdit {
            snapshot: false,
            table_id_next: 42,
            order_next: 17,
            wal_replay_from_seq: 9,
            version_floor: 1 << 50,
            windows_settled: vec![19_000, 19_001],
            added: vec![TableMeta {
                table_id: 41,
                window: 19_002,
                order: 16,
                level: 0,
                file_bytes: 1 << 20,
                entry_count: 5000,
                version_max: 1 << 49,
                key_min: b"aaa".to_vec(),
                key_max: b"zzz".to_vec(),
            }],
            removed: vec![3, 4, 5],
            range_tombstones: vec![RangeTombstone { pkey: b"u".to_vec(), ts_from: 5, ts_to: 9, version: 77 }],
            cold_windows: vec![ColdWindow {
                window: 18_000,
                epoch: 1,
                disks: 2,
                generation: 3,
                parts: vec![1, 2],
                blocks: 40,
                entries: 9000,
                bytes: 1 << 21,
            }],
            cold_removed: vec![17_000],
            intent: IntentChange::Set(SinkIntent { window: 18_001, generation: 1, epoch: 1 }),
        }
    }

    #[test]
    fn manifest_edit_without_cold_section_keeps_its_bytes() {
        let plain = ManifestEdit {
            cold_windows: Vec::new(),
            cold_removed: Vec::new(),
            intent: IntentChange::Unchanged,
            ..edit()
        };
        let bytes = plain.encode();
        assert_ne!(bytes.last(), Some(&COLD_SECTION_TAG));
        assert_eq!(ManifestEdit::decode(&bytes), Ok(plain));
    }

    #[test]
    fn manifest_record_round_trips() {
        let bytes = encode_record(8192, 3, &edit());
        assert_eq!(bytes.len() % crate::BLOCK_SIZE, 0);
        let (seq, decoded, len) = decode_record(&bytes, 8192).unwrap();
        assert_eq!((seq, decoded, len), (3, edit(), bytes.len() as u64));
    }

    #[test]
    fn manifest_record_detects_every_single_bit_flip() {
        let bytes = encode_record(8192, 3, &edit());
        let covered = MANIFEST_HEADER_SIZE + edit().encode().len();
        for bit in 0..covered * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_record(&bad, 8192).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn manifest_record_is_bound_to_its_offset() {
        let bytes = encode_record(8192, 3, &edit());
        assert!(matches!(decode_record(&bytes, 4096), Err(ManifestFormatError::ChecksumMismatch { .. })));
        assert_eq!(decode_record(&[0; 4096], 0).unwrap_err(), ManifestFormatError::Unwritten);
    }

    #[test]
    fn manifest_edit_refuses_counts_beyond_its_bytes() {
        let mut bytes = edit().encode();
        let at = 1 + 32;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ManifestEdit::decode(&bytes).is_err());
    }
}
