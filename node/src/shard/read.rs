//! Reads: point gets and timeline scans across the memtable, the frozen memtable and tables.
//!
//! Invariant: a read never holds the shard's state borrowed across an await; it takes what it
//! needs (entries from memory, handles to tables) in one synchronous step, then reads tables.
//! Versions of a key strictly increase from tables to frozen memtable to memtable, so when
//! sources disagree the highest version wins.

use super::{Shard, StoredEntry, Versioned};
use crate::cold::ColdError;
use crate::lsm::table::{Table, TableError};
use crate::lsm::{ts_of_key, window_of};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::rc::Rc;
use strata_format::key::{KeyError, Timestamp, decode_key, encode_key};
use strata_format::manifest::RangeTombstone;
use strata_format::version::Version;
use strata_ioengine::{Clock, Disk};

/// Why a read failed.
#[derive(Debug)]
pub enum ReadError {
    BadKey(KeyError),
    /// A table could not be read, or failed its checksum: nothing from it was returned.
    Table(TableError),
    /// A cold block could not be read, or failed its checksum: nothing from it was returned.
    Cold(ColdError),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadKey(e) => write!(f, "bad key: {e}"),
            Self::Table(e) => write!(f, "read failed: {e}"),
            Self::Cold(e) => write!(f, "read failed: {e}"),
        }
    }
}

impl std::error::Error for ReadError {}

impl From<TableError> for ReadError {
    fn from(e: TableError) -> Self {
        Self::Table(e)
    }
}

impl From<ColdError> for ReadError {
    fn from(e: ColdError) -> Self {
        Self::Cold(e)
    }
}

/// Entries as tables return them: key, version, value (`None`: tombstone).
pub(crate) type TableEntries = Vec<(Vec<u8>, Version, Option<Vec<u8>>)>;

/// One entry of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEntry {
    pub ts: Timestamp,
    pub version: Version,
    pub value: Vec<u8>,
}

/// Entries of one key range gathered from several sources: the highest version per key wins.
type Merged = BTreeMap<Vec<u8>, (Version, Option<Vec<u8>>)>;

fn merge_in(merged: &mut Merged, key: Vec<u8>, version: Version, value: Option<Vec<u8>>) {
    match merged.get(&key) {
        Some((held, _)) if *held >= version => {}
        _ => {
            merged.insert(key, (version, value));
        }
    }
}

impl<D: Disk, C: Clock> Shard<D, C> {
    /// The value at `(pkey, ts)` and its version, if present.
    pub async fn get(&self, pkey: &[u8], ts: Timestamp) -> Result<Option<(Version, Vec<u8>)>, ReadError> {
        Ok(self.get_entry(pkey, ts).await?.and_then(|(v, value)| value.map(|value| (v, value))))
    }

    /// The newest entry at `(pkey, ts)`, tombstones included.
    pub async fn get_entry(&self, pkey: &[u8], ts: Timestamp) -> Result<Option<Versioned>, ReadError> {
        let key = encode_key(pkey, ts).map_err(ReadError::BadKey)?;
        let window = window_of(ts, self.inner.options.window_us);
        if self.window_expired(window) {
            return Ok(None);
        }
        let (found, tables, ranges) = {
            let state = self.inner.state.borrow();
            let ranges = ranges_of(&state, pkey);
            let in_memory =
                state.memtable.get(&key).or_else(|| state.frozen.as_ref().and_then(|f| f.memtable.get(&key)));
            match in_memory {
                Some(entry) => (Some((entry.version, entry.value.as_ref().map(|v| v.to_vec()))), Vec::new(), ranges),
                None => (None, state.levels.probe_order(window, &key), ranges),
            }
        };
        let mut found = found;
        for table in tables {
            if let Some(entry) = table.get(&key, &self.inner.cache).await? {
                let resolved = self.resolve(&table, vec![(key.clone(), entry.0, entry.1)]).await?;
                found = resolved.into_iter().next().map(|(_, v, value)| (v, value));
                break;
            }
        }
        // A newer range delete covering the key reads as a tombstone at its version.
        let range_version = ranges.iter().filter(|rt| rt.ts_from <= ts && ts <= rt.ts_to).map(|rt| rt.version).max();
        Ok(match (found, range_version) {
            (Some((v, _)), Some(rv)) if rv > v => Some((rv, None)),
            (None, Some(rv)) => Some((rv, None)),
            (found, _) => found,
        })
    }

    /// Up to `limit` live entries of `pkey` with `ts_from <= ts <= ts_to`, newest first or
    /// oldest first. Newest first with a limit is the timeline page.
    pub async fn scan(
        &self,
        pkey: &[u8],
        ts_from: Timestamp,
        ts_to: Timestamp,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<ScanEntry>, ReadError> {
        let from = encode_key(pkey, ts_from).map_err(ReadError::BadKey)?;
        let to = encode_key(pkey, ts_to).map_err(ReadError::BadKey)?;
        let window_us = self.inner.options.window_us;
        let (w_from, w_to) = (window_of(ts_from, window_us), window_of(ts_to, window_us));
        // Memory first, all windows at once; then tables, one window at a time.
        let (mut by_window, windows, tables_of, ranges) = {
            let state = self.inner.state.borrow();
            let ranges = ranges_of(&state, pkey);
            let mut by_window: BTreeMap<u64, Merged> = BTreeMap::new();
            let range = (Bound::Included(from.as_slice()), Bound::Included(to.as_slice()));
            let frozen = state.frozen.as_ref().map(|f| f.memtable.clone());
            for memtable in frozen.iter().map(Rc::as_ref).chain(std::iter::once(&state.memtable)) {
                for (key, entry) in memtable.range(range) {
                    let window = window_of(ts_of_key(key), window_us);
                    let merged = by_window.entry(window).or_default();
                    merge_in(merged, key.to_vec(), entry.version, entry.value.as_ref().map(|v| v.to_vec()));
                }
            }
            let mut windows: Vec<u64> =
                state.levels.windows_in(w_from, w_to).chain(by_window.keys().copied()).collect();
            windows.retain(|w| !self.window_expired(*w));
            windows.sort_unstable();
            windows.dedup();
            if newest_first {
                windows.reverse();
            }
            let tables_of: BTreeMap<u64, Vec<_>> =
                windows.iter().map(|w| (*w, state.levels.window(*w).to_vec())).collect();
            (by_window, windows, tables_of, ranges)
        };
        let mut out = Vec::new();
        for window in windows {
            let remaining = limit - out.len();
            if remaining == 0 {
                break;
            }
            let in_memory = by_window.remove(&window).unwrap_or_default();
            let tables: Vec<_> = tables_of[&window]
                .iter()
                .filter(|t| t.may_contain_pkey(crate::lsm::table::pkey_prefix(&from)))
                .cloned()
                .collect();
            let entries = if newest_first {
                self.window_newest(pkey, &from, &to, in_memory, &tables, &ranges, remaining).await?
            } else {
                let mut merged = in_memory;
                for table in &tables {
                    let got = table.range(&from, &to, &self.inner.cache).await?;
                    for (key, version, value) in self.resolve(table, got).await? {
                        merge_in(&mut merged, key, version, value);
                    }
                }
                live_entries(merged, pkey, &ranges, None).take(remaining).collect()
            };
            out.extend(entries.into_iter().take(remaining));
        }
        Ok(out)
    }

    /// The newest `want` live entries of one window. Tables are read backwards and only as far
    /// as needed: a table cut off after `n` entries may still hold, below its cut-off, newer
    /// versions (tombstones) of older keys, so only keys at or above the highest cut-off are
    /// trusted, and the read widens until `want` trusted entries are found or nothing was cut.
    #[allow(clippy::too_many_arguments, reason = "one window's inputs, gathered by scan")]
    async fn window_newest(
        &self,
        pkey: &[u8],
        from: &[u8],
        to: &[u8],
        in_memory: Merged,
        tables: &[Rc<crate::lsm::table::Table<D::File>>],
        ranges: &[RangeTombstone],
        want: usize,
    ) -> Result<Vec<ScanEntry>, ReadError> {
        let mut n = want.max(16);
        loop {
            let mut merged = in_memory.clone();
            let mut cutoff: Option<Vec<u8>> = None;
            for table in tables {
                let got = table.range_newest(from, to, n, &self.inner.cache).await?;
                let got = self.resolve(table, got).await?;
                if got.len() == n {
                    let oldest = got.last().expect("n > 0 entries").0.clone();
                    if cutoff.as_ref().is_none_or(|c| oldest > *c) {
                        cutoff = Some(oldest);
                    }
                }
                for (key, version, value) in got {
                    merge_in(&mut merged, key, version, value);
                }
            }
            let mut live: Vec<ScanEntry> = live_entries(merged, pkey, ranges, cutoff.as_deref()).collect();
            live.reverse();
            if live.len() >= want || cutoff.is_none() {
                live.truncate(want);
                return Ok(live);
            }
            n = n.saturating_mul(4);
        }
    }

    /// Every stored entry in key order, tombstones included, merged across memory and tables
    /// (for checks and tools; it reads every table).
    pub async fn dump(&self) -> Result<Vec<StoredEntry>, ReadError> {
        let (mut merged, tables, ranges) = {
            let state = self.inner.state.borrow();
            let mut merged = Merged::new();
            let frozen = state.frozen.as_ref().map(|f| f.memtable.clone());
            for memtable in frozen.iter().map(Rc::as_ref).chain(std::iter::once(&state.memtable)) {
                for (key, entry) in memtable.iter() {
                    merge_in(&mut merged, key.to_vec(), entry.version, entry.value.as_ref().map(|v| v.to_vec()));
                }
            }
            let ranges: Vec<RangeTombstone> = state.range_tombstones().cloned().collect();
            (merged, state.levels.all().cloned().collect::<Vec<_>>(), ranges)
        };
        for table in tables {
            let got = table.all(&self.inner.cache).await?;
            for (key, version, value) in self.resolve(&table, got).await? {
                merge_in(&mut merged, key, version, value);
            }
        }
        let window_us = self.inner.options.window_us;
        Ok(merged
            .into_iter()
            .filter(|(key, _)| !self.window_expired(window_of(ts_of_key(key), window_us)))
            .map(|(key, (version, value))| {
                let k = decode_key(&key).expect("stored keys are encoded by the shard");
                StoredEntry { pkey: k.pkey.to_vec(), ts: k.ts, version, value }
            })
            .filter(|e| !ranges.iter().any(|rt| rt.hides(&e.pkey, e.ts, e.version)))
            .collect())
    }
}

impl<D: Disk, C: Clock> Shard<D, C> {
    /// Replaces the cold links a sunk window's link table returned by the values they point
    /// at, reading each linked block once (entries of other tables pass through).
    pub(crate) async fn resolve(
        &self,
        table: &Table<D::File>,
        entries: TableEntries,
    ) -> Result<TableEntries, ReadError> {
        if table.meta.level != strata_format::manifest::LEVEL_COLD_LINKS {
            return Ok(entries);
        }
        let Some(store) = self.inner.cold.as_ref() else {
            return Err(ReadError::Table(TableError::Corrupted {
                file: table.path().to_path_buf(),
                offset: 0,
                reason: "a link table, but the shard has no cold tier".into(),
            }));
        };
        let mut resolver = LinkResolver::default();
        let mut out = Vec::with_capacity(entries.len());
        for (key, version, link) in entries {
            let value = match link {
                Some(link) => Some(resolver.value(store, table, &key, version, &link).await?),
                None => None,
            };
            out.push((key, version, value));
        }
        Ok(out)
    }
}

/// A cold block and where each entry's key and value lie in its raw bytes, in key order.
struct IndexedBlock {
    block: strata_format::cold::ColdBlock,
    /// Per entry: its key's and value's places in the raw bytes, and its version.
    entries: Vec<(std::ops::Range<usize>, std::ops::Range<usize>, Version)>,
}

impl IndexedBlock {
    fn new(block: strata_format::cold::ColdBlock) -> Result<Self, strata_format::table::TableFormatError> {
        let base = block.block.raw.as_ptr() as usize;
        let mut entries = Vec::with_capacity(block.block.entry_count as usize);
        for entry in block.entries() {
            let entry = entry?;
            let value = entry.value.unwrap_or_default();
            let (k, v) = (entry.key.as_ptr() as usize - base, value.as_ptr() as usize - base);
            entries.push((k..k + entry.key.len(), v..v + value.len(), entry.version));
        }
        Ok(Self { block, entries })
    }

    /// The value and version the block holds for `key`.
    fn value(&self, key: &[u8]) -> Option<(&[u8], Version)> {
        let raw = &self.block.block.raw;
        let i = self.entries.binary_search_by(|(k, _, _)| raw[k.clone()].cmp(key)).ok()?;
        let (_, value, version) = &self.entries[i];
        Some((&raw[value.clone()], *version))
    }
}

/// Turns cold links of one link table into values, keeping the last block read (consecutive
/// keys usually share a block). Only the values asked for are copied out of the block.
#[derive(Default)]
pub(crate) struct LinkResolver {
    /// The last block read: its bucket (which names its disk) and link, and the block.
    block: Option<((u16, strata_format::cold::ColdLink), IndexedBlock)>,
}

impl LinkResolver {
    /// The value `link` (from link table `table`, for `key` at `version`) points at. A block
    /// that holds the key at another version is not this window's block (a repair from a peer
    /// that sank different contents): it is refused, not served.
    pub(crate) async fn value<D: Disk>(
        &mut self,
        store: &crate::cold::ColdStore<D>,
        table: &Table<D::File>,
        key: &[u8],
        version: Version,
        link: &[u8],
    ) -> Result<Vec<u8>, ReadError> {
        let corrupted = |reason: String| {
            ReadError::Table(TableError::Corrupted { file: table.path().to_path_buf(), offset: 0, reason })
        };
        let Some(cold) = table.cold.as_ref() else {
            return Err(corrupted("a link table without a sunk window".into()));
        };
        let link = strata_format::cold::ColdLink::decode(link).map_err(|e| corrupted(e.to_string()))?;
        let bucket = u16::from_be_bytes([key[0], key[1]]);
        if self.block.as_ref().is_none_or(|(at, _)| *at != (bucket, link)) {
            let read = store.read_block(cold, bucket, link).await?;
            let indexed = IndexedBlock::new(read).map_err(|e| corrupted(e.to_string()))?;
            self.block = Some(((bucket, link), indexed));
        }
        let (_, block) = self.block.as_ref().expect("loaded above");
        match block.value(key) {
            Some((value, held)) if held == version => Ok(value.to_vec()),
            found => {
                let disk = strata_format::cold::disk_of(bucket, cold.window, cold.disks);
                let file = strata_format::cold::ColdFileId {
                    window: cold.window,
                    shard: store.options.shard,
                    generation: cold.generation,
                    part: link.part,
                };
                Err(ReadError::Cold(ColdError::Corrupted {
                    disk,
                    path: store.file_path(disk, file),
                    offset: link.offset,
                    reason: match found {
                        Some((_, held)) => {
                            format!("the block holds the key at version {held}, the link says {version}")
                        }
                        None => "the block lacks a key its link names".into(),
                    },
                }))
            }
        }
    }
}

/// Range deletes of `pkey` from every source: durable ones, the frozen and the active memtable.
fn ranges_of<F>(state: &super::State<F>, pkey: &[u8]) -> Vec<RangeTombstone> {
    state.range_tombstones().filter(|rt| rt.pkey == pkey).cloned().collect()
}
/// Live entries of `merged` in key (ts) order: values not hidden by a newer range delete, at or
/// above `cutoff` when one is given.
fn live_entries<'a>(
    merged: Merged,
    pkey: &'a [u8],
    ranges: &'a [RangeTombstone],
    cutoff: Option<&'a [u8]>,
) -> impl Iterator<Item = ScanEntry> + 'a {
    merged
        .into_iter()
        .filter(move |(key, _)| cutoff.is_none_or(|c| key.as_slice() >= c))
        .filter_map(|(key, (version, value))| value.map(|v| ScanEntry { ts: ts_of_key(&key), version, value: v }))
        .filter(move |e| !ranges.iter().any(|rt| rt.hides(pkey, e.ts, e.version)))
}
