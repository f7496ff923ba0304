//! The memtable (C0): the shard's newest entries, in memory, sorted by encoded key.
//!
//! Invariant: it holds only durable writes (applied after their group commit), at most one entry
//! per key, and an entry's version only ever increases. It lives on one core: no locks.

use std::collections::BTreeMap;
use strata_format::manifest::RangeTombstone;
use strata_format::version::Version;

/// Bookkeeping bytes charged per entry on top of key and value (tree node share, lengths).
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// One key's newest state: a value, or a tombstone (`value == None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemEntry {
    pub version: Version,
    pub value: Option<Box<[u8]>>,
}

/// A memtable key: the encoded key, with its first 16 bytes also kept inline as a big-endian
/// number. A tree search compares the numbers first and follows the pointer to the key's bytes
/// only when they tie: most comparisons then touch no memory outside the tree node (with plain
/// boxed keys every comparison was a cache miss). 16 bytes, not 8, so that pkeys sharing their
/// first bytes (`user:000…`, after the length byte) still differ in the number; the key stays
/// 32 bytes, so a node's keys span few cache lines (inline key bytes made nodes so large that
/// the search got slower). The order is the encoded keys' byte order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MemKey {
    prefix: u128,
    key: Box<[u8]>,
}

impl MemKey {
    fn new(key: &[u8]) -> Self {
        let mut head = [0u8; 16];
        let n = key.len().min(16);
        head[..n].copy_from_slice(&key[..n]);
        Self { prefix: u128::from_be_bytes(head), key: Box::from(key) }
    }

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

#[derive(Debug, Default)]
pub struct Memtable {
    entries: BTreeMap<MemKey, MemEntry>,
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
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.range_tombstones.is_empty()
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
        // One descent of the tree, whether the key is new or held.
        match self.entries.entry(MemKey::new(key)) {
            std::collections::btree_map::Entry::Occupied(mut held) => {
                let entry = held.get_mut();
                if entry.version >= version {
                    return;
                }
                self.bytes -= Self::charge(key.len(), entry.value.as_deref());
                self.bytes += Self::charge(key.len(), value);
                *entry = MemEntry { version, value: value.map(Box::from) };
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                self.bytes += Self::charge(key.len(), value);
                slot.insert(MemEntry { version, value: value.map(Box::from) });
            }
        }
    }

    #[must_use]
    pub fn get(&self, key: &[u8]) -> Option<&MemEntry> {
        self.entries.get(&MemKey::new(key))
    }

    /// Entries within `range`, in key order.
    pub fn range<'a>(
        &'a self,
        range: (std::ops::Bound<&'a [u8]>, std::ops::Bound<&'a [u8]>),
    ) -> impl Iterator<Item = (&'a [u8], &'a MemEntry)> + 'a {
        let bound = |b: std::ops::Bound<&[u8]>| b.map(MemKey::new);
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
        let iter = if empty { None } else { Some(self.entries.range((from, to))) };
        iter.into_iter().flatten().map(|(k, v)| (k.key(), v))
    }

    /// Every entry in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &MemEntry)> {
        self.entries.iter().map(|(k, v)| (k.key(), v))
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

    #[test]
    fn memtable_accounts_bytes() {
        let mut m = Memtable::new();
        m.apply(b"key", 1, Some(&[0; 100]));
        assert_eq!(m.bytes(), 3 + 100 + ENTRY_OVERHEAD_BYTES);
        m.apply(b"key", 2, None);
        assert_eq!(m.bytes(), 3 + ENTRY_OVERHEAD_BYTES);
    }
}
