//! Routing table: bucket → group for every group count from 1 to [`GROUP_COUNT_MAX`].
//!
//! Invariant: for every group count `n` in `1..=GROUP_COUNT_MAX`, each of the groups `0..n` holds
//! `floor(65536 / n)` or `ceil(65536 / n)` buckets, and going from `n` to `n + 1` groups moves
//! buckets only into the new group `n`. Every layer (cache, SSD, HDD) routes with this one table,
//! and so do the shards inside a machine ([`shard_of`]).
//!
//! Construction ([`RouteTable::generate`]): with one group, group 0 holds every bucket. Going from
//! `n - 1` to `n` groups, the new group `n - 1` takes `floor(65536 / n)` buckets, one at a time,
//! each from the group holding the most buckets at that moment (ties: the lowest group number).
//! A group gives up its buckets in ascending order of their rank, `xxh3_64(bucket as u16 LE,
//! seed ROUTE_RANK_SEED)` (ties: the lower bucket), so what a group gives is spread over the
//! whole bucket space, not its lowest bucket numbers. A random virtual-node ring cannot keep
//! either promise of the invariant; this greedy construction keeps both by induction.
//!
//! Representation: each bucket keeps the ascending list of group counts at which it moved; at
//! count `m` it moved into group `m - 1`, the group that count added. So at `n` groups a bucket
//! belongs to group `m - 1` for its last move `m <= n` (found by binary search), or to group 0
//! when it has none. The table is committed as `format/data/route.bin` (written by `strata-tool
//! route generate`), embedded with `include_bytes!` and decoded once ([`route_table`]); a test
//! checks that it equals a fresh generation byte for byte, so the data cannot rot.

use crate::checksum::{crc32c, crc32c_append};
use crate::key::{BUCKET_COUNT, Bucket};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::OnceLock;
use xxhash_rust::xxh3::xxh3_64_with_seed;
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A group number, `0..n` for `n` groups.
pub type Group = u16;

/// "STRT": Strata route table.
pub const ROUTE_MAGIC: u32 = u32::from_le_bytes(*b"STRT");
pub const ROUTE_FORMAT_VERSION: u16 = 1;
/// The largest group (and shard) count the table covers.
pub const GROUP_COUNT_MAX: u16 = 1000;
/// The seed of the rank that orders the buckets a group gives up. Part of the format: changing
/// it changes the table.
pub const ROUTE_RANK_SEED: u64 = 1;
pub const ROUTE_HEADER_SIZE: usize = size_of::<RouteHeader>();

/// The committed table, `format/data/route.bin`.
pub static ROUTE_BIN: &[u8] = include_bytes!("../data/route.bin");

/// Route table header, at offset 0 of `route.bin`; the payload follows it.
///
/// ```text
/// offset size field            meaning
/// 0      4    magic            "STRT"
/// 4      2    format_version   1
/// 6      2    reserved         0
/// 8      4    bucket_count     65536
/// 12     4    group_count_max  1000
/// 16     4    move_count       moves in the payload
/// 20     4    payload_len      bytes after this header: 4 * (bucket_count + 1) + 2 * move_count
/// 24     4    reserved         0
/// 28     4    crc              CRC32C of bytes 0..28, then of the payload
/// ```
///
/// Payload, right after the header:
///
/// ```text
/// offset                      size                    field         meaning
/// 32                          4 * (bucket_count + 1)  move_offsets  u32 each; bucket b's moves are
///                                                                   moves[move_offsets[b]..move_offsets[b + 1]]
/// 32 + 4 * (bucket_count + 1) 2 * move_count          moves         u16 each: group counts at which the
///                                                                   bucket moved, ascending per bucket,
///                                                                   each in 2..=group_count_max
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RouteHeader {
    pub magic: U32,
    pub format_version: U16,
    pub reserved0: U16,
    pub bucket_count: U32,
    pub group_count_max: U32,
    pub move_count: U32,
    pub payload_len: U32,
    pub reserved1: U32,
    pub crc: U32,
}
const _: () = assert!(size_of::<RouteHeader>() == 32);
/// The header bytes the checksum covers.
const HEADER_CRC_COVERED: usize = 28;

/// Why bytes are not a valid route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    Truncated {
        needed: usize,
        available: usize,
    },
    BadMagic {
        found: u32,
    },
    BadFormatVersion {
        found: u16,
    },
    /// The file is not as long as its header says.
    LengthMismatch {
        declared: u64,
        actual: u64,
    },
    ChecksumMismatch {
        stored: u32,
        computed: u32,
    },
    ReservedNonZero,
    WrongBucketCount {
        found: u32,
    },
    WrongGroupCountMax {
        found: u32,
    },
    /// `payload_len` disagrees with `move_count`.
    BadPayloadLength {
        payload_len: u32,
        move_count: u32,
    },
    /// A bucket's offsets or moves break the layout's rules.
    BadMoves {
        bucket: u32,
        reason: &'static str,
    },
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated { needed, available } => {
                write!(f, "truncated: the header needs {needed} bytes, {available} available")
            }
            Self::BadMagic { found } => write!(f, "bad magic {found:#010x} (not a route table)"),
            Self::BadFormatVersion { found } => {
                write!(f, "unknown format version {found} (this build reads {ROUTE_FORMAT_VERSION})")
            }
            Self::LengthMismatch { declared, actual } => {
                write!(f, "length mismatch: the header declares {declared} bytes, the file has {actual}")
            }
            Self::ChecksumMismatch { stored, computed } => {
                write!(f, "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")
            }
            Self::ReservedNonZero => write!(f, "a reserved header field is not zero"),
            Self::WrongBucketCount { found } => write!(f, "bucket count {found} is not {BUCKET_COUNT}"),
            Self::WrongGroupCountMax { found } => {
                write!(f, "group count max {found} is not {GROUP_COUNT_MAX}")
            }
            Self::BadPayloadLength { payload_len, move_count } => {
                write!(f, "payload of {payload_len} bytes does not fit {move_count} moves")
            }
            Self::BadMoves { bucket, reason } => write!(f, "bucket {bucket}: {reason}"),
        }
    }
}

impl std::error::Error for RouteError {}

impl RouteHeader {
    /// Reads the header at the start of `bytes`, checking its magic and format version only.
    pub fn read(bytes: &[u8]) -> Result<Self, RouteError> {
        let (header, _) = Self::read_from_prefix(bytes)
            .map_err(|_| RouteError::Truncated { needed: ROUTE_HEADER_SIZE, available: bytes.len() })?;
        if header.magic.get() != ROUTE_MAGIC {
            return Err(RouteError::BadMagic { found: header.magic.get() });
        }
        if header.format_version.get() != ROUTE_FORMAT_VERSION {
            return Err(RouteError::BadFormatVersion { found: header.format_version.get() });
        }
        Ok(header)
    }
}

/// The payload length for `move_count` moves.
fn payload_len_of(move_count: u32) -> u64 {
    4 * (u64::from(BUCKET_COUNT) + 1) + 2 * u64::from(move_count)
}

/// The checksum of a whole encoded table: the covered header bytes, then the payload.
fn route_crc(bytes: &[u8]) -> u32 {
    crc32c_append(crc32c(&bytes[..HEADER_CRC_COVERED]), &bytes[ROUTE_HEADER_SIZE..])
}

/// The rank that orders the buckets a group gives up: lowest first.
fn give_up_rank(bucket: Bucket) -> u64 {
    xxh3_64_with_seed(&bucket.to_le_bytes(), ROUTE_RANK_SEED)
}

/// Bucket → group for every group count in `1..=GROUP_COUNT_MAX`, as per-bucket move lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    /// `BUCKET_COUNT + 1` ascending offsets into `moves`, from 0 to `moves.len()`.
    move_offsets: Vec<u32>,
    /// Per bucket, ascending: the group counts at which it moved into the group they added.
    moves: Vec<u16>,
}

impl RouteTable {
    /// Builds the table by the greedy construction in the module doc. Deterministic.
    #[must_use]
    pub fn generate() -> Self {
        let ranks: Vec<u64> = (0..BUCKET_COUNT).map(|b| give_up_rank(b as Bucket)).collect();
        let mut all: Vec<Bucket> = (0..BUCKET_COUNT).map(|b| b as Bucket).collect();
        sort_for_giving_up(&mut all, &ranks);
        // members[g]: group g's buckets, the next to give up last (so `pop` yields it).
        let mut members: Vec<Vec<Bucket>> = vec![all];
        // (bucket, group count) in ascending group count: each bucket's moves come out sorted.
        let mut log: Vec<(Bucket, u16)> = Vec::new();
        for groups in 2..=GROUP_COUNT_MAX {
            let taken = take_for_new_group(&mut members, &ranks);
            log.extend(taken.iter().map(|&b| (b, groups)));
            members.push(taken);
            assert_balanced(&members);
        }
        assert_eq!(members.len(), usize::from(GROUP_COUNT_MAX));
        Self::from_log(&log)
    }

    /// Groups a move log, in ascending group count, by bucket.
    fn from_log(log: &[(Bucket, u16)]) -> Self {
        let bucket_count = BUCKET_COUNT as usize;
        let mut move_offsets = vec![0u32; bucket_count + 1];
        for &(bucket, _) in log {
            move_offsets[usize::from(bucket) + 1] += 1;
        }
        for b in 0..bucket_count {
            move_offsets[b + 1] += move_offsets[b];
        }
        let mut cursor = move_offsets.clone();
        let mut moves = vec![0u16; log.len()];
        for &(bucket, groups) in log {
            let at = &mut cursor[usize::from(bucket)];
            moves[*at as usize] = groups;
            *at += 1;
        }
        let table = Self { move_offsets, moves };
        assert_eq!(table.move_offsets[bucket_count] as usize, log.len());
        debug_assert!((0..BUCKET_COUNT).all(|b| table.moves_of(b as Bucket).is_sorted()));
        table
    }

    /// The group of `bucket` when there are `groups` groups.
    ///
    /// # Panics
    /// If `groups` is not in `1..=GROUP_COUNT_MAX`.
    #[must_use]
    pub fn group_of(&self, bucket: Bucket, groups: u16) -> Group {
        assert!((1..=GROUP_COUNT_MAX).contains(&groups), "group count {groups} is outside 1..={GROUP_COUNT_MAX}");
        let moves = self.moves_of(bucket);
        let moved = moves.partition_point(|&m| m <= groups);
        let group = if moved == 0 { 0 } else { moves[moved - 1] - 1 };
        debug_assert!(group < groups);
        group
    }

    /// The group counts at which `bucket` moved, ascending; at count `m` it moved into group `m - 1`.
    #[must_use]
    pub fn moves_of(&self, bucket: Bucket) -> &[u16] {
        let b = usize::from(bucket);
        &self.moves[self.move_offsets[b] as usize..self.move_offsets[b + 1] as usize]
    }

    /// Moves over all buckets and group counts.
    #[must_use]
    pub fn move_count(&self) -> u32 {
        self.moves.len() as u32
    }

    /// Encodes the table as `route.bin` bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let move_count = self.move_count();
        let payload_len = payload_len_of(move_count);
        let header = RouteHeader {
            magic: ROUTE_MAGIC.into(),
            format_version: ROUTE_FORMAT_VERSION.into(),
            reserved0: 0.into(),
            bucket_count: BUCKET_COUNT.into(),
            group_count_max: u32::from(GROUP_COUNT_MAX).into(),
            move_count: move_count.into(),
            payload_len: u32::try_from(payload_len).expect("a route table payload should fit u32").into(),
            reserved1: 0.into(),
            crc: 0.into(),
        };
        let mut out = Vec::with_capacity(ROUTE_HEADER_SIZE + payload_len as usize);
        out.extend_from_slice(header.as_bytes());
        for offset in &self.move_offsets {
            out.extend_from_slice(&offset.to_le_bytes());
        }
        for groups in &self.moves {
            out.extend_from_slice(&groups.to_le_bytes());
        }
        assert_eq!(out.len() as u64, ROUTE_HEADER_SIZE as u64 + payload_len);
        let crc = route_crc(&out);
        out[HEADER_CRC_COVERED..ROUTE_HEADER_SIZE].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and checks `route.bin` bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, RouteError> {
        let header = RouteHeader::read(bytes)?;
        let declared = ROUTE_HEADER_SIZE as u64 + u64::from(header.payload_len.get());
        if declared != bytes.len() as u64 {
            return Err(RouteError::LengthMismatch { declared, actual: bytes.len() as u64 });
        }
        let computed = route_crc(bytes);
        if computed != header.crc.get() {
            return Err(RouteError::ChecksumMismatch { stored: header.crc.get(), computed });
        }
        if header.reserved0.get() != 0 || header.reserved1.get() != 0 {
            return Err(RouteError::ReservedNonZero);
        }
        if header.bucket_count.get() != BUCKET_COUNT {
            return Err(RouteError::WrongBucketCount { found: header.bucket_count.get() });
        }
        if header.group_count_max.get() != u32::from(GROUP_COUNT_MAX) {
            return Err(RouteError::WrongGroupCountMax { found: header.group_count_max.get() });
        }
        let move_count = header.move_count.get();
        if u64::from(header.payload_len.get()) != payload_len_of(move_count) {
            return Err(RouteError::BadPayloadLength { payload_len: header.payload_len.get(), move_count });
        }
        let (offset_bytes, move_bytes) = bytes[ROUTE_HEADER_SIZE..].split_at(4 * (BUCKET_COUNT as usize + 1));
        let move_offsets: Vec<u32> =
            offset_bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let moves: Vec<u16> = move_bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        check_moves(&move_offsets, &moves)?;
        Ok(Self { move_offsets, moves })
    }
}

/// Checks the payload's rules: offsets run from 0 to the move count without going back, and each
/// bucket's moves strictly ascend within `2..=GROUP_COUNT_MAX`.
fn check_moves(move_offsets: &[u32], moves: &[u16]) -> Result<(), RouteError> {
    assert_eq!(move_offsets.len(), BUCKET_COUNT as usize + 1);
    if move_offsets[0] != 0 {
        return Err(RouteError::BadMoves { bucket: 0, reason: "the first offset is not 0" });
    }
    if move_offsets[BUCKET_COUNT as usize] as usize != moves.len() {
        return Err(RouteError::BadMoves { bucket: BUCKET_COUNT - 1, reason: "the last offset is not the move count" });
    }
    for (bucket, pair) in move_offsets.windows(2).enumerate() {
        let bucket = bucket as u32;
        if pair[0] > pair[1] {
            return Err(RouteError::BadMoves { bucket, reason: "offsets go backwards" });
        }
        let own = &moves[pair[0] as usize..pair[1] as usize];
        if own.iter().any(|&m| !(2..=GROUP_COUNT_MAX).contains(&m)) {
            return Err(RouteError::BadMoves { bucket, reason: "a move is outside 2..=group_count_max" });
        }
        if own.windows(2).any(|w| w[0] >= w[1]) {
            return Err(RouteError::BadMoves { bucket, reason: "moves do not strictly ascend" });
        }
    }
    Ok(())
}

/// Orders `buckets` so that `pop` yields the lowest rank first.
fn sort_for_giving_up(buckets: &mut [Bucket], ranks: &[u64]) {
    buckets.sort_unstable_by_key(|&b| Reverse((ranks[usize::from(b)], b)));
}

/// Takes `floor(BUCKET_COUNT / n)` buckets for the new group `n - 1` (with `n - 1 = members.len()`
/// groups so far), one at a time from the group holding the most (ties: the lowest group number).
/// Returns them ordered for giving up.
fn take_for_new_group(members: &mut [Vec<Bucket>], ranks: &[u64]) -> Vec<Bucket> {
    let groups = members.len() as u32 + 1;
    let take = (BUCKET_COUNT / groups) as usize;
    let mut fullest: BinaryHeap<(usize, Reverse<usize>)> =
        members.iter().enumerate().map(|(g, m)| (m.len(), Reverse(g))).collect();
    let mut taken = Vec::with_capacity(take);
    for _ in 0..take {
        let (held, Reverse(g)) = fullest.pop().expect("an existing group should be there to give");
        let bucket = members[g].pop().expect("the fullest group should hold a bucket");
        assert_eq!(held, members[g].len() + 1);
        taken.push(bucket);
        fullest.push((held - 1, Reverse(g)));
    }
    sort_for_giving_up(&mut taken, ranks);
    taken
}

/// Asserts the construction's invariant: every bucket is held, and group sizes differ by at most 1.
fn assert_balanced(members: &[Vec<Bucket>]) {
    let held_min = members.iter().map(Vec::len).min().expect("there should be a group");
    let held_max = members.iter().map(Vec::len).max().expect("there should be a group");
    assert!(held_max - held_min <= 1, "{} groups hold {held_min}..={held_max} buckets", members.len());
    assert_eq!(members.iter().map(Vec::len).sum::<usize>(), BUCKET_COUNT as usize);
}

/// The committed table, decoded on first use.
///
/// # Panics
/// If the embedded `route.bin` does not decode (a build defect, not an operating error).
#[must_use]
pub fn route_table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        RouteTable::decode(ROUTE_BIN).unwrap_or_else(|e| {
            panic!("the embedded format/data/route.bin should decode ({e}); run `strata-tool route generate`")
        })
    })
}

/// The group of `bucket` when there are `groups` groups, by the committed table.
#[must_use]
pub fn group_of(bucket: Bucket, groups: u16) -> Group {
    route_table().group_of(bucket, groups)
}

/// The shard (core) of `bucket` inside a machine of `shard_count` shards: shards route with the
/// same table as groups, so adding a shard only moves buckets into it.
#[must_use]
pub fn shard_of(bucket: Bucket, shard_count: u16) -> u16 {
    route_table().group_of(bucket, shard_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reseal(bytes: &mut [u8]) {
        let crc = route_crc(bytes);
        bytes[HEADER_CRC_COVERED..ROUTE_HEADER_SIZE].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn route_embedded_table_equals_generated() {
        let generated = RouteTable::generate().encode();
        let first_difference = ROUTE_BIN.iter().zip(&generated).position(|(a, b)| a != b);
        assert!(
            ROUTE_BIN == generated.as_slice(),
            "format/data/route.bin ({} bytes) differs from a fresh generation ({} bytes) first at byte \
             {first_difference:?}: run `strata-tool route generate`",
            ROUTE_BIN.len(),
            generated.len(),
        );
    }

    #[test]
    fn route_table_round_trips() {
        let table = route_table();
        assert_eq!(&RouteTable::decode(&table.encode()).unwrap(), table);
        assert!(table.move_count() > 0);
    }

    #[test]
    fn route_decode_refuses_bad_magic_and_version() {
        let mut bad = ROUTE_BIN.to_vec();
        bad[0] ^= 0x20;
        assert!(matches!(RouteTable::decode(&bad), Err(RouteError::BadMagic { .. })));
        let mut bad = ROUTE_BIN.to_vec();
        bad[4] = 2;
        assert_eq!(RouteTable::decode(&bad), Err(RouteError::BadFormatVersion { found: 2 }));
    }

    #[test]
    fn route_decode_refuses_wrong_lengths() {
        let len = ROUTE_BIN.len() as u64;
        for cut in [1, 2, ROUTE_BIN.len() - ROUTE_HEADER_SIZE] {
            let short = &ROUTE_BIN[..ROUTE_BIN.len() - cut];
            let expected = RouteError::LengthMismatch { declared: len, actual: len - cut as u64 };
            assert_eq!(RouteTable::decode(short), Err(expected));
        }
        let mut long = ROUTE_BIN.to_vec();
        long.push(0);
        assert_eq!(RouteTable::decode(&long), Err(RouteError::LengthMismatch { declared: len, actual: len + 1 }));
        for available in [0, ROUTE_HEADER_SIZE - 1] {
            let expected = RouteError::Truncated { needed: ROUTE_HEADER_SIZE, available };
            assert_eq!(RouteTable::decode(&ROUTE_BIN[..available]), Err(expected));
        }
    }

    #[test]
    fn route_decode_detects_byte_flips() {
        let mut bad = ROUTE_BIN.to_vec();
        // Every header byte, then payload bytes at a stride that visits offsets and moves alike.
        let payload = (ROUTE_HEADER_SIZE..bad.len()).step_by(3_001);
        for at in (0..ROUTE_HEADER_SIZE).chain(payload).chain([bad.len() - 1]) {
            bad[at] ^= 0x5a;
            assert!(RouteTable::decode(&bad).is_err(), "a flip at byte {at} went unnoticed");
            bad[at] ^= 0x5a;
        }
        let mut bad = ROUTE_BIN.to_vec();
        bad[ROUTE_HEADER_SIZE + 7] ^= 1;
        assert!(matches!(RouteTable::decode(&bad), Err(RouteError::ChecksumMismatch { .. })));
    }

    #[test]
    fn route_decode_refuses_resealed_bad_fields() {
        let moves_at = ROUTE_HEADER_SIZE + 4 * (BUCKET_COUNT as usize + 1);
        let cases: [(usize, &[u8], RouteError); 4] = [
            (6, &[1, 0], RouteError::ReservedNonZero),
            (12, &1001u32.to_le_bytes(), RouteError::WrongGroupCountMax { found: 1001 }),
            (
                ROUTE_HEADER_SIZE,
                &1u32.to_le_bytes(),
                RouteError::BadMoves { bucket: 0, reason: "the first offset is not 0" },
            ),
            (
                moves_at,
                &1u16.to_le_bytes(),
                RouteError::BadMoves { bucket: 0, reason: "a move is outside 2..=group_count_max" },
            ),
        ];
        for (at, patch, expected) in cases {
            let mut bad = ROUTE_BIN.to_vec();
            bad[at..at + patch.len()].copy_from_slice(patch);
            reseal(&mut bad);
            assert_eq!(RouteTable::decode(&bad), Err(expected), "patch at byte {at}");
        }
    }

    #[test]
    fn route_decode_refuses_unordered_moves() {
        let table = route_table();
        let bucket = (0..BUCKET_COUNT).find(|&b| table.moves_of(b as Bucket).len() >= 2).unwrap();
        let first =
            ROUTE_HEADER_SIZE + 4 * (BUCKET_COUNT as usize + 1) + 2 * table.move_offsets[bucket as usize] as usize;
        let mut bad = ROUTE_BIN.to_vec();
        let (a, b) = (bad[first..first + 2].to_vec(), bad[first + 2..first + 4].to_vec());
        bad[first..first + 2].copy_from_slice(&b);
        bad[first + 2..first + 4].copy_from_slice(&a);
        reseal(&mut bad);
        let expected = RouteError::BadMoves { bucket, reason: "moves do not strictly ascend" };
        assert_eq!(RouteTable::decode(&bad), Err(expected));
    }

    #[test]
    #[should_panic(expected = "group count 0 is outside")]
    fn route_refuses_zero_groups() {
        let _ = group_of(7, 0);
    }

    #[test]
    #[should_panic(expected = "group count 1001 is outside")]
    fn route_refuses_more_groups_than_the_table_covers() {
        let _ = shard_of(7, GROUP_COUNT_MAX + 1);
    }
}
