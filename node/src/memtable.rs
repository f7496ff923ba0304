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

#[derive(Debug, Default)]
pub struct Memtable {
    entries: BTreeMap<Box<[u8]>, MemEntry>,
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
        let new_entry = MemEntry { version, value: value.map(Box::from) };
        if let Some(entry) = self.entries.get_mut(key) {
            if entry.version >= version {
                return;
            }
            self.bytes -= Self::charge(key.len(), entry.value.as_deref());
            self.bytes += Self::charge(key.len(), value);
            *entry = new_entry;
            return;
        }
        self.bytes += Self::charge(key.len(), value);
        self.entries.insert(Box::from(key), new_entry);
    }

    #[must_use]
    pub fn get(&self, key: &[u8]) -> Option<&MemEntry> {
        self.entries.get(key)
    }

    /// Entries within `range`, in key order.
    pub fn range<'a>(
        &'a self,
        range: (std::ops::Bound<&'a [u8]>, std::ops::Bound<&'a [u8]>),
    ) -> impl Iterator<Item = (&'a [u8], &'a MemEntry)> + 'a {
        self.entries.range::<[u8], _>(range).map(|(k, v)| (&**k, v))
    }

    /// Every entry in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &MemEntry)> {
        self.entries.iter().map(|(k, v)| (&**k, v))
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
    fn memtable_accounts_bytes() {
        let mut m = Memtable::new();
        m.apply(b"key", 1, Some(&[0; 100]));
        assert_eq!(m.bytes(), 3 + 100 + ENTRY_OVERHEAD_BYTES);
        m.apply(b"key", 2, None);
        assert_eq!(m.bytes(), 3 + ENTRY_OVERHEAD_BYTES);
    }
}
