//! The memtable (C0): the shard's newest entries, in memory, sorted by encoded key.
//!
//! Invariant: it holds only durable writes (applied after their group commit), at most one entry
//! per key, and an entry's version only ever increases. It lives on one core: no locks.
//!
//! Entries live in a slab that only grows (a memtable never removes a key; it is frozen and
//! dropped whole). Two indexes point into it: a B-tree in key order for scans and flushes, and a
//! hash table for point lookups and updates, so a GET or an overwrite touches a few cache lines
//! instead of descending a tree of a million keys (the descent was 10% of a memory-resident
//! GET's server CPU in `perf`).

use hashbrown::HashTable;
use std::collections::BTreeMap;
use std::rc::Rc;
use strata_format::manifest::RangeTombstone;
use strata_format::version::Version;

/// Bookkeeping bytes charged per entry on top of key and value: the tree's share (a 32-byte
/// key and a slot index, nodes partly full), the slab slot (40 bytes, the slab grown by
/// doubling), the hash slot (4 bytes and a control byte, below 7/8 load) and the allocator's
/// rounding of key and value. Measured: 1M entries of 32-byte keys and 100-byte values grew a
/// process's RSS by 147 bytes per entry beyond keys and values.
const ENTRY_OVERHEAD_BYTES: usize = 144;

/// One key's newest state: a value, or a tombstone (`value == None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemEntry {
    pub version: Version,
    pub value: Option<Box<[u8]>>,
}

/// A key in the ordered index: the encoded key, with its first 16 bytes also kept inline as a
/// big-endian number. A tree search compares the numbers first and follows the pointer to the
/// key's bytes only when they tie: most comparisons then touch no memory outside the tree node
/// (with plain boxed keys every comparison was a cache miss). 16 bytes, not 8, so that pkeys
/// sharing their first bytes (`user:000…`, after the length byte) still differ in the number;
/// the key stays 32 bytes, so a node's keys span few cache lines (inline key bytes made nodes so
/// large that the search got slower). The order is the encoded keys' byte order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MemKey {
    prefix: u128,
    key: Rc<[u8]>,
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
    /// Every key and its entry, in arrival order; indexes point here.
    slab: Vec<(Rc<[u8]>, MemEntry)>,
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

    fn charge(key_len: usize, value: Option<&[u8]>) -> usize {
        key_len + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD_BYTES
    }

    /// Sets `key` to `value` (or a tombstone) at `version`. An older version than the one held
    /// is ignored (replay may apply a write twice; the newest wins).
    pub fn apply(&mut self, key: &[u8], version: Version, value: Option<&[u8]>) {
        let hash = hash_of(key);
        let slab = &mut self.slab;
        if let Some(&at) = self.index.find(hash, |&i| *slab[i as usize].0 == *key) {
            let entry = &mut slab[at as usize].1;
            if entry.version >= version {
                return;
            }
            self.bytes -= Self::charge(key.len(), entry.value.as_deref());
            self.bytes += Self::charge(key.len(), value);
            *entry = MemEntry { version, value: value.map(Box::from) };
            return;
        }
        let at = u32::try_from(slab.len()).expect("a memtable is frozen long before 4 billion entries");
        let shared: Rc<[u8]> = Rc::from(key);
        slab.push((shared.clone(), MemEntry { version, value: value.map(Box::from) }));
        self.order.insert(MemKey { prefix: prefix_of(key), key: shared }, at);
        self.index.insert_unique(hash, at, |&i| hash_of(&slab[i as usize].0));
        self.bytes += Self::charge(key.len(), value);
    }

    #[must_use]
    pub fn get(&self, key: &[u8]) -> Option<&MemEntry> {
        let at = self.index.find(hash_of(key), |&i| *self.slab[i as usize].0 == *key)?;
        Some(&self.slab[*at as usize].1)
    }

    /// Entries within `range`, in key order.
    pub fn range<'a>(
        &'a self,
        range: (std::ops::Bound<&'a [u8]>, std::ops::Bound<&'a [u8]>),
    ) -> impl Iterator<Item = (&'a [u8], &'a MemEntry)> + 'a {
        let bound = |b: std::ops::Bound<&[u8]>| b.map(|key| MemKey { prefix: prefix_of(key), key: Rc::from(key) });
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
        iter.into_iter().flatten().map(|(k, &at)| (k.key(), &self.slab[at as usize].1))
    }

    /// Every entry in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &MemEntry)> {
        self.order.iter().map(|(k, &at)| (k.key(), &self.slab[at as usize].1))
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
        assert_eq!(m.get(b"k").unwrap().value.as_deref(), Some(&b"new"[..]));
        m.apply(b"k", 6, None);
        assert_eq!(m.get(b"k").unwrap(), &MemEntry { version: 6, value: None });
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
        let mut model: BTreeMap<Vec<u8>, MemEntry> = BTreeMap::new();
        let mut m = Memtable::new();
        for _ in 0..5000 {
            let key = &pool[(next() % pool.len() as u64) as usize];
            let version = 1 + next() % 1000;
            let value = (next() % 5 != 0).then(|| vec![next() as u8; (next() % 8) as usize]);
            m.apply(key, version, value.as_deref());
            let held = model.get(key).map_or(0, |e| e.version);
            if version > held {
                model.insert(key.clone(), MemEntry { version, value: value.map(Vec::into_boxed_slice) });
            }
        }
        assert_eq!(m.len(), model.len(), "seed {seed}");
        for key in &pool {
            assert_eq!(m.get(key), model.get(key), "seed {seed}: key {key:?}");
        }
        assert!(m.get(b"absent").is_none());
        let all: Vec<(Vec<u8>, MemEntry)> = m.iter().map(|(k, e)| (k.to_vec(), e.clone())).collect();
        assert_eq!(all, model.clone().into_iter().collect::<Vec<_>>(), "seed {seed}");
        let expected_bytes: usize = model.iter().map(|(k, e)| Memtable::charge(k.len(), e.value.as_deref())).sum();
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
        assert_eq!(m.bytes(), 3 + 100 + ENTRY_OVERHEAD_BYTES);
        m.apply(b"key", 2, None);
        assert_eq!(m.bytes(), 3 + ENTRY_OVERHEAD_BYTES);
    }
}
