//! The memtable (C0): the shard's newest entries, in memory, sorted by encoded key.
//!
//! Invariant: it holds only durable writes (applied after their group commit), at most one entry
//! per key, and an entry's version only ever increases. It lives on one core: no locks.
//!
//! Entries live in a slab that only grows (a memtable never removes a key; it is frozen and
//! dropped whole). Each slab slot holds the key's bytes and its newest value in one allocation,
//! so a point lookup that finds the key has its value in the same cache lines (with the value in
//! an allocation of its own, copying it out was a cache miss of its own: 3.5% of a
//! memory-resident GET's server CPU in `perf`). Two indexes point into the slab: a B-tree in key
//! order for scans and flushes, and a hash table for point lookups and updates, so a GET or an
//! overwrite touches a few cache lines instead of descending a tree of a million keys (the
//! descent was 10% of a memory-resident GET's server CPU in `perf`).

use hashbrown::HashTable;
use std::collections::BTreeMap;
use strata_format::manifest::RangeTombstone;
use strata_format::version::Version;

/// Bookkeeping bytes charged per entry on top of its bytes (see `charge`): the tree's share (a
/// 32-byte key and a slot index, nodes partly full), the slab slot (32 bytes, the slab grown by
/// doubling), the hash slot (4 bytes and a control byte, below 7/8 load) and the allocator's
/// rounding. Measured: 1M entries of 32-byte keys and 100-byte values grew a process's RSS by
/// 159 bytes per entry beyond one copy of key and value, of which 32 are the tree's copy of the
/// key.
const ENTRY_OVERHEAD_BYTES: usize = 128;

/// One key's newest state, borrowed from the memtable: a value, or a tombstone (`value == None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemEntry<'a> {
    pub version: Version,
    pub value: Option<&'a [u8]>,
}

/// `key ++ value` in one allocation.
fn joined(key: &[u8], value: &[u8]) -> Box<[u8]> {
    let mut bytes = Vec::with_capacity(key.len() + value.len());
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(value);
    bytes.into_boxed_slice()
}

/// A slab slot: the key's bytes followed by the value's, in one allocation.
#[derive(Debug)]
struct Slot {
    /// `key ++ value` (the value is empty for a tombstone).
    bytes: Box<[u8]>,
    version: Version,
    /// Encoded keys are at most `table::KEY_LEN_MAX` (266) bytes.
    key_len: u16,
    tombstone: bool,
}

impl Slot {
    fn new(key: &[u8], version: Version, value: Option<&[u8]>) -> Self {
        let key_len = u16::try_from(key.len()).expect("an encoded key is at most 266 bytes");
        Self { bytes: joined(key, value.unwrap_or_default()), version, key_len, tombstone: value.is_none() }
    }

    fn key(&self) -> &[u8] {
        &self.bytes[..usize::from(self.key_len)]
    }

    fn entry(&self) -> MemEntry<'_> {
        let value = (!self.tombstone).then(|| &self.bytes[usize::from(self.key_len)..]);
        MemEntry { version: self.version, value }
    }

    /// Replaces the value, in place when the new one is as long as the old.
    fn set(&mut self, version: Version, value: Option<&[u8]>) {
        let key_len = usize::from(self.key_len);
        let value_bytes = value.unwrap_or_default();
        if self.bytes.len() - key_len == value_bytes.len() {
            self.bytes[key_len..].copy_from_slice(value_bytes);
        } else {
            self.bytes = joined(&self.bytes[..key_len], value_bytes);
        }
        self.version = version;
        self.tombstone = value.is_none();
    }
}

/// A key in the ordered index: the encoded key, with its first 16 bytes also kept inline as a
/// big-endian number. A tree search compares the numbers first and follows the pointer to the
/// key's bytes only when they tie: most comparisons then touch no memory outside the tree node
/// (with plain boxed keys every comparison was a cache miss). 16 bytes, not 8, so that pkeys
/// sharing their first bytes (`user:000…`, after the length byte) still differ in the number;
/// the key stays 32 bytes, so a node's keys span few cache lines (inline key bytes made nodes so
/// large that the search got slower). The order is the encoded keys' byte order. The tree keeps
/// its own copy of the key's bytes: a slot's allocation is replaced when a value of another
/// length overwrites it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MemKey {
    prefix: u128,
    key: Box<[u8]>,
}

/// The number a key's first 16 bytes make, zero-padded.
fn prefix_of(key: &[u8]) -> u128 {
    let mut head = [0u8; 16];
    let n = key.len().min(16);
    head[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(head)
}

impl MemKey {
    fn key(&self) -> &[u8] {
        &self.key
    }
}

impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Zero padding keeps the numbers' order the keys' order: a key shorter than 16 bytes
        // ties with its zero-extended forms, and the bytes decide.
        self.prefix.cmp(&other.prefix).then_with(|| self.key().cmp(other.key()))
    }
}

impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

fn hash_of(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

#[derive(Debug, Default)]
pub struct Memtable {
    /// Every key and its newest state, in arrival order; indexes point here.
    slab: Vec<Slot>,
    /// Key order: key → slab index.
    order: BTreeMap<MemKey, u32>,
    /// Point lookups: slab indexes, hashed by key.
    index: HashTable<u32>,
    /// Range deletes applied since the memtable was created, in version order.
    range_tombstones: Vec<RangeTombstone>,
    bytes: usize,
}

impl Memtable {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes charged against the memory budget.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty() && self.range_tombstones.is_empty()
    }

    /// Records a range delete (replay may apply one twice: harmless).
    pub fn apply_range_delete(&mut self, tombstone: RangeTombstone) {
        self.bytes += tombstone.pkey.len() + ENTRY_OVERHEAD_BYTES;
        self.range_tombstones.push(tombstone);
    }

    #[must_use]
    pub fn range_tombstones(&self) -> &[RangeTombstone] {
        &self.range_tombstones
    }

    /// An entry's charge: its key twice (the slot's and the tree's copies), its value, and the
    /// bookkeeping.
    fn charge(key_len: usize, value: Option<&[u8]>) -> usize {
        2 * key_len + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD_BYTES
    }

    /// Sets `key` to `value` (or a tombstone) at `version`. An older version than the one held
    /// is ignored (replay may apply a write twice; the newest wins).
    pub fn apply(&mut self, key: &[u8], version: Version, value: Option<&[u8]>) {
        let hash = hash_of(key);
        let slab = &mut self.slab;
        if let Some(&at) = self.index.find(hash, |&i| slab[i as usize].key() == key) {
            let slot = &mut slab[at as usize];
            if slot.version >= version {
                return;
            }
            self.bytes -= Self::charge(key.len(), slot.entry().value);
            self.bytes += Self::charge(key.len(), value);
            slot.set(version, value);
            return;
        }
        let at = u32::try_from(slab.len()).expect("a memtable is frozen long before 4 billion entries");
        slab.push(Slot::new(key, version, value));
        self.order.insert(MemKey { prefix: prefix_of(key), key: Box::from(key) }, at);
        self.index.insert_unique(hash, at, |&i| hash_of(slab[i as usize].key()));
        self.bytes += Self::charge(key.len(), value);
    }

    #[must_use]
    pub fn get(&self, key: &[u8]) -> Option<MemEntry<'_>> {
        let at = self.index.find(hash_of(key), |&i| self.slab[i as usize].key() == key)?;
        Some(self.slab[*at as usize].entry())
    }

    /// Entries within `range`, in key order.
    pub fn range<'a>(
        &'a self,
        range: (std::ops::Bound<&'a [u8]>, std::ops::Bound<&'a [u8]>),
    ) -> impl Iterator<Item = (&'a [u8], MemEntry<'a>)> + 'a {
        let bound = |b: std::ops::Bound<&[u8]>| b.map(|key| MemKey { prefix: prefix_of(key), key: Box::from(key) });
        // An empty range (start past end) yields nothing, as `BTreeMap::range` would panic.
        let (from, to) = (bound(range.0), bound(range.1));
        let empty = match (&from, &to) {
            (
                std::ops::Bound::Included(a) | std::ops::Bound::Excluded(a),
                std::ops::Bound::Included(b) | std::ops::Bound::Excluded(b),
            ) => {
                a > b
                    || (a == b
                        && !(matches!(from, std::ops::Bound::Included(_))
                            && matches!(to, std::ops::Bound::Included(_))))
            }
            _ => false,
        };
        let iter = if empty { None } else { Some(self.order.range((from, to))) };
        iter.into_iter().flatten().map(|(k, &at)| (k.key(), self.slab[at as usize].entry()))
    }

    /// Every entry in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], MemEntry<'_>)> {
        self.order.iter().map(|(k, &at)| (k.key(), self.slab[at as usize].entry()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memtable_keeps_the_newest_version() {
        let mut m = Memtable::new();
        m.apply(b"k", 5, Some(b"new"));
        m.apply(b"k", 3, Some(b"old"));
        assert_eq!(m.get(b"k").unwrap().value, Some(&b"new"[..]));
        m.apply(b"k", 6, None);
        assert_eq!(m.get(b"k").unwrap(), MemEntry { version: 6, value: None });
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn memtable_orders_by_key_bytes_whatever_the_prefix() {
        // Keys that tie on their first 16 bytes, differ inside them, or are prefixes of others.
        let long = [b'q'; 60];
        let longer = [b'q'; 61];
        let keys: Vec<&[u8]> = vec![
            b"abcdefgh",
            b"abcdefgh\0",
            b"abcdefghz",
            b"abcdefgi",
            b"abc",
            b"ab\xff",
            b"b",
            b"abcdefga\xff",
            b"0123456789abcdef",
            b"0123456789abcdef\0",
            b"0123456789abcdeg",
            b"0123456789abcdef0123456789abcdef0123456",
            b"0123456789abcdef0123456789abcdef012345",
            &long,
            &longer,
            b"qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqr",
        ];
        let mut m = Memtable::new();
        for (i, k) in keys.iter().enumerate() {
            m.apply(k, i as u64 + 1, Some(b"v"));
        }
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(m.iter().map(|(k, _)| k).collect::<Vec<_>>(), sorted);
        for k in &keys {
            assert!(m.get(k).is_some());
        }
        assert!(m.get(b"abcdefg").is_none());
        use std::ops::Bound::{Excluded, Included};
        let got: Vec<&[u8]> =
            m.range((Included(&b"abcdefgh"[..]), Excluded(&b"abcdefgi"[..]))).map(|(k, _)| k).collect();
        assert_eq!(got, vec![&b"abcdefgh"[..], b"abcdefgh\0", b"abcdefghz"]);
        assert_eq!(m.range((Included(&b"b"[..]), Included(&b"a"[..]))).count(), 0, "an empty range");
    }

    /// Both indexes agree with a model map after random applies: gets, full order and ranges.
    #[test]
    fn memtable_matches_a_model_under_random_applies() {
        let seed = std::env::var("STRATA_MEMTABLE_SEED").map_or_else(
            |_| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
            |text| text.parse().expect("STRATA_MEMTABLE_SEED should be a u64"),
        );
        println!("memtable model seed {seed} (replay with STRATA_MEMTABLE_SEED={seed})");
        let mut rng = strata_ioengine::SimRng::new(seed);
        let mut next = move || rng.next_u64();
        // Keys that share long prefixes, are prefixes of each other, and straddle 16 bytes.
        let pool: Vec<Vec<u8>> = (0..300)
            .map(|_| {
                let len = 1 + (next() % 40) as usize;
                (0..len).map(|i| if i < 14 && next() % 4 != 0 { b'k' } else { b'a' + (next() % 3) as u8 }).collect()
            })
            .collect();
        // Each key's newest version and value (None: a tombstone).
        type Model = BTreeMap<Vec<u8>, (Version, Option<Vec<u8>>)>;
        let mut model = Model::new();
        let mut m = Memtable::new();
        for _ in 0..5000 {
            let key = &pool[(next() % pool.len() as u64) as usize];
            let version = 1 + next() % 1000;
            let value = (next() % 5 != 0).then(|| vec![next() as u8; (next() % 8) as usize]);
            m.apply(key, version, value.as_deref());
            let held = model.get(key).map_or(0, |e| e.0);
            if version > held {
                model.insert(key.clone(), (version, value));
            }
        }
        assert_eq!(m.len(), model.len(), "seed {seed}");
        for key in &pool {
            let got = m.get(key).map(|e| (e.version, e.value.map(<[u8]>::to_vec)));
            assert_eq!(got.as_ref(), model.get(key), "seed {seed}: key {key:?}");
        }
        assert!(m.get(b"absent").is_none());
        let all: Model = m.iter().map(|(k, e)| (k.to_vec(), (e.version, e.value.map(<[u8]>::to_vec)))).collect();
        let in_order: Vec<&[u8]> = m.iter().map(|(k, _)| k).collect();
        assert!(in_order.is_sorted(), "seed {seed}: iteration is in key order");
        assert_eq!(all, model, "seed {seed}");
        let expected_bytes: usize = model.iter().map(|(k, e)| Memtable::charge(k.len(), e.1.as_deref())).sum();
        assert_eq!(m.bytes(), expected_bytes, "seed {seed}");
        use std::ops::Bound::{Excluded, Included};
        for _ in 0..50 {
            let (mut a, mut b) = (&pool[(next() % 300) as usize], &pool[(next() % 300) as usize]);
            if a > b {
                std::mem::swap(&mut a, &mut b);
            }
            let got: Vec<&[u8]> = m.range((Included(a.as_slice()), Excluded(b.as_slice()))).map(|(k, _)| k).collect();
            let want: Vec<&[u8]> = model
                .range::<[u8], _>((Included(a.as_slice()), Excluded(b.as_slice())))
                .map(|(k, _)| k.as_slice())
                .collect();
            assert_eq!(got, want, "seed {seed}: range {a:?}..{b:?}");
        }
    }

    #[test]
    fn memtable_accounts_bytes() {
        let mut m = Memtable::new();
        m.apply(b"key", 1, Some(&[0; 100]));
        assert_eq!(m.bytes(), 2 * 3 + 100 + ENTRY_OVERHEAD_BYTES, "the key counts twice: the slot's and the tree's");
        m.apply(b"key", 2, None);
        assert_eq!(m.bytes(), 2 * 3 + ENTRY_OVERHEAD_BYTES);
        m.apply(b"key", 3, Some(&[1; 100]));
        assert_eq!(m.get(b"key"), Some(MemEntry { version: 3, value: Some(&[1; 100][..]) }));
        let before = m.get(b"key").unwrap().value.unwrap().as_ptr();
        m.apply(b"key", 4, Some(&[2; 100]));
        assert_eq!(m.get(b"key"), Some(MemEntry { version: 4, value: Some(&[2; 100][..]) }));
        assert_eq!(m.get(b"key").unwrap().value.unwrap().as_ptr(), before, "a same-length value is written in place");
        assert_eq!(m.bytes(), 2 * 3 + 100 + ENTRY_OVERHEAD_BYTES);
    }
}
