//! Reads: point gets and timeline scans across the memtable, the frozen memtable and tables.
//!
//! Invariant: a read never holds the shard's state borrowed across an await; it takes what it
//! needs (entries from memory, handles to tables) in one synchronous step, then reads tables.
//! Versions of a key strictly increase from tables to frozen memtable to memtable, so when
//! sources disagree the highest version wins.

use super::{Shard, StoredEntry, Versioned};
use crate::cold::ColdError;
use crate::lsm::table::{Table, TableError, pkey_prefix};
use crate::lsm::{ts_of_key, window_of};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::rc::Rc;
use strata_format::cold::BlockLink;
use strata_format::key::{KeyError, Timestamp, decode_key, encode_key};
use strata_format::manifest::{LEVEL_COLD_LINKS, RangeTombstone};
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
                Some(entry) => (Some((entry.version, entry.value.map(<[u8]>::to_vec))), Vec::new(), ranges),
                None => (None, state.levels.probe_order(window), ranges),
            }
        };
        let mut found = found;
        for table in tables {
            if let Some(entry) = self.table_get(&table, &key).await? {
                found = Some(entry);
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
                    merge_in(merged, key.to_vec(), entry.version, entry.value.map(<[u8]>::to_vec));
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
            let tables: Vec<_> =
                tables_of[&window].iter().filter(|t| t.may_contain_pkey(pkey_prefix(&from))).cloned().collect();
            let entries = if newest_first {
                self.window_newest(pkey, &from, &to, in_memory, &tables, &ranges, remaining).await?
            } else {
                let mut merged = in_memory;
                for table in &tables {
                    for (key, version, value) in self.table_range(table, &from, &to).await? {
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
    ///
    /// Tables are probed in order of their highest ts, newest first, and only as many as the page
    /// needs: a table holds no key above its `ts_max`, so it can neither add nor shadow entries
    /// above it. Once `want` entries lie above the next table's `ts_max`, the page is complete.
    /// Time-ordered ingest leaves a window's tables holding successive spans of time, so a page of
    /// recent entries reads the newest few tables, not all of them.
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
        let mut tables = tables.to_vec();
        tables.sort_by_key(|t| std::cmp::Reverse(t.ts_max()));
        let mut n = want.max(16);
        // What the tables probed so far gave for `n` (the first `probed` of `tables`), merged.
        let (mut merged, mut cutoff, mut probed) = (in_memory.clone(), None::<Vec<u8>>, 0);
        loop {
            let mut live: Vec<ScanEntry> = live_entries(merged.clone(), pkey, ranges, cutoff.as_deref()).collect();
            live.reverse();
            if let Some(next) = tables.get(probed) {
                if live.iter().take_while(|e| e.ts > next.ts_max()).count() >= want {
                    live.truncate(want);
                    return Ok(live);
                }
                let got = self.table_range_newest(next, from, to, n).await?;
                probed += 1;
                if got.len() == n {
                    let oldest = &got.last().expect("n > 0 entries").0;
                    if cutoff.as_ref().is_none_or(|c| oldest > c) {
                        cutoff = Some(oldest.clone());
                    }
                }
                for (key, version, value) in got {
                    merge_in(&mut merged, key, version, value);
                }
                continue;
            }
            if live.len() >= want || cutoff.is_none() {
                live.truncate(want);
                return Ok(live);
            }
            n = n.saturating_mul(4);
            (merged, cutoff, probed) = (in_memory.clone(), None, 0);
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
                    merge_in(&mut merged, key.to_vec(), entry.version, entry.value.map(<[u8]>::to_vec));
                }
            }
            let ranges: Vec<RangeTombstone> = state.range_tombstones().cloned().collect();
            (merged, state.levels.all().cloned().collect::<Vec<_>>(), ranges)
        };
        for table in tables {
            for (key, version, value) in self.table_all(&table).await? {
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

/// Reads of tables, through their blocks' links for a sunk window's link tables: each entry of
/// a link table is a [`BlockLink`] keyed by its block's last key.
impl<D: Disk, C: Clock> Shard<D, C> {
    /// The entry `table` holds for `key`: its version and value (`None`: tombstone). For a link
    /// table: when its pinned filter admits the key, one link-table block (SSD, cached), and
    /// when the link's key range and fingerprints admit it, one cold block.
    pub(crate) async fn table_get(
        &self,
        table: &Table<D::File>,
        key: &[u8],
    ) -> Result<Option<(Version, Option<Vec<u8>>)>, ReadError> {
        if !is_links(table) {
            return Ok(table.get(key, &self.inner.cache).await?);
        }
        if !table.may_contain(key) {
            return Ok(None);
        }
        let Some((last_key, _, link)) = table.seek(key, &self.inner.cache).await? else { return Ok(None) };
        let linked = decode_link(table, &last_key, link.as_deref())?;
        if key < linked.first_key.as_slice() || !linked.may_hold(key) {
            return Ok(None);
        }
        let block = self.read_linked(table, &linked).await?;
        Ok(block.get(key).map(|(version, value)| (version, value.map(<[u8]>::to_vec))))
    }

    /// Every entry of `table` with `from <= key <= to`, in key order.
    pub(crate) async fn table_range(
        &self,
        table: &Table<D::File>,
        from: &[u8],
        to: &[u8],
    ) -> Result<TableEntries, ReadError> {
        if !is_links(table) {
            return Ok(table.range(from, to, &self.inner.cache).await?);
        }
        let mut out = Vec::new();
        for linked in self.links_meeting(table, from, to).await? {
            let block = self.read_linked(table, &linked).await?;
            out.extend(block.entries_in(from, to));
        }
        Ok(out)
    }

    /// Up to `n` entries of `table` with `from <= key <= to`, highest key first. For a link
    /// table it walks the links backwards from `to`, a few at a time, and stops once it has `n`.
    pub(crate) async fn table_range_newest(
        &self,
        table: &Table<D::File>,
        from: &[u8],
        to: &[u8],
        n: usize,
    ) -> Result<TableEntries, ReadError> {
        if !is_links(table) {
            return Ok(table.range_newest(from, to, n, &self.inner.cache).await?);
        }
        let mut out = Vec::new();
        if n == 0 {
            return Ok(out);
        }
        // The block whose last key lies above `to` comes first: it may start at or below it.
        if let Some(linked) = self.link_above(table, to).await?
            && linked.first_key.as_slice() <= to
            && may_hold_range(&linked, from, to)
        {
            let block = self.read_linked(table, &linked).await?;
            out.extend(block.entries_in(from, to).into_iter().rev().take(n));
        }
        // Then the blocks whose last key lies in the range, newest first.
        let (mut asked, mut seen) = (4, 0);
        while out.len() < n {
            let links = table.range_newest(from, to, asked, &self.inner.cache).await?;
            for (last_key, _, link) in &links[seen..] {
                let linked = decode_link(table, last_key, link.as_deref())?;
                if !may_hold_range(&linked, from, to) {
                    continue;
                }
                let block = self.read_linked(table, &linked).await?;
                out.extend(block.entries_in(from, to).into_iter().rev().take(n - out.len()));
                if out.len() >= n {
                    break;
                }
            }
            if links.len() < asked {
                break;
            }
            seen = links.len();
            asked = asked.saturating_mul(4);
        }
        Ok(out)
    }

    /// Every entry of `table`, in key order (checks and tools; it reads every block).
    pub(crate) async fn table_all(&self, table: &Table<D::File>) -> Result<TableEntries, ReadError> {
        if !is_links(table) {
            return Ok(table.all(&self.inner.cache).await?);
        }
        let mut out = Vec::new();
        for (last_key, _, link) in table.all(&self.inner.cache).await? {
            let linked = decode_link(table, &last_key, link.as_deref())?;
            out.extend(self.read_linked(table, &linked).await?.entries_from(&[], usize::MAX));
        }
        Ok(out)
    }

    /// The links of `table`'s blocks whose key ranges meet `from..=to`, in key order: those
    /// whose last key lies in the range, and the next one when it starts at or below `to`. When
    /// the range is one pkey's, blocks whose fingerprints rule the pkey out are left out.
    async fn links_meeting(&self, table: &Table<D::File>, from: &[u8], to: &[u8]) -> Result<Vec<BlockLink>, ReadError> {
        let mut links = Vec::new();
        for (last_key, _, link) in table.range(from, to, &self.inner.cache).await? {
            links.push(decode_link(table, &last_key, link.as_deref())?);
        }
        if let Some(linked) = self.link_above(table, to).await?
            && linked.first_key.as_slice() <= to
        {
            links.push(linked);
        }
        links.retain(|l| may_hold_range(l, from, to));
        Ok(links)
    }

    /// The link of the first block whose last key lies above `key`.
    async fn link_above(&self, table: &Table<D::File>, key: &[u8]) -> Result<Option<BlockLink>, ReadError> {
        let mut above = key.to_vec();
        above.push(0);
        match table.seek(&above, &self.inner.cache).await? {
            Some((last_key, _, link)) => Ok(Some(decode_link(table, &last_key, link.as_deref())?)),
            None => Ok(None),
        }
    }

    /// Reads the cold block `linked` names, from the files of `table`'s sunk window.
    pub(crate) async fn read_linked(
        &self,
        table: &Table<D::File>,
        linked: &BlockLink,
    ) -> Result<IndexedBlock, ReadError> {
        let corrupted = |reason: String| link_table_corrupted(table, reason);
        let Some(store) = self.inner.cold.as_ref() else {
            return Err(corrupted("a link table, but the shard has no cold tier".into()));
        };
        let Some(cold) = table.cold.as_ref() else {
            return Err(corrupted("a link table without a sunk window".into()));
        };
        let bucket = u16::from_be_bytes([linked.first_key[0], linked.first_key[1]]);
        let block = store.read_block(cold, bucket, linked).await?;
        IndexedBlock::new(block).map_err(|e| corrupted(e.to_string()))
    }
}

/// False only when the block `linked` names surely holds nothing of `from..=to`: when the range
/// is one pkey's (a scan's) and the block's fingerprints rule that pkey out.
fn may_hold_range(linked: &BlockLink, from: &[u8], to: &[u8]) -> bool {
    let one_pkey = from.len() > 8 && to.len() > 8 && pkey_prefix(from) == pkey_prefix(to);
    !one_pkey || linked.may_hold(pkey_prefix(from))
}

fn is_links<F>(table: &Table<F>) -> bool {
    table.meta.level == LEVEL_COLD_LINKS
}

/// A link table (or what it points at) that cannot be used, for `reason`.
fn link_table_corrupted<F: strata_ioengine::DiskFile>(table: &Table<F>, reason: String) -> ReadError {
    ReadError::Table(TableError::Corrupted { file: table.path().to_path_buf(), offset: 0, reason })
}

/// The [`BlockLink`] a link table's entry (keyed by its block's last key) holds.
pub(super) fn decode_link<F: strata_ioengine::DiskFile>(
    table: &Table<F>,
    last_key: &[u8],
    value: Option<&[u8]>,
) -> Result<BlockLink, ReadError> {
    let corrupted = |reason: String| link_table_corrupted(table, reason);
    let value = value.ok_or_else(|| corrupted("a link table holds a tombstone".into()))?;
    let linked = BlockLink::decode(value, last_key).map_err(|e| corrupted(e.to_string()))?;
    if linked.first_key.len() < 2 {
        return Err(corrupted("a block link without a first key".into()));
    }
    Ok(linked)
}

/// A cold block and where each entry's key and value lie in its raw bytes, in key order.
pub(crate) struct IndexedBlock {
    block: strata_format::cold::ColdBlock,
    /// Per entry: its key's and value's (`None`: tombstone) places in the raw bytes, and its
    /// version.
    entries: Vec<(std::ops::Range<usize>, Option<std::ops::Range<usize>>, Version)>,
}

impl IndexedBlock {
    fn new(block: strata_format::cold::ColdBlock) -> Result<Self, strata_format::table::TableFormatError> {
        let base = block.block.raw.as_ptr() as usize;
        let mut entries = Vec::with_capacity(block.block.entry_count as usize);
        for entry in block.entries() {
            let entry = entry?;
            let k = entry.key.as_ptr() as usize - base;
            let value = entry.value.map(|v| {
                let at = v.as_ptr() as usize - base;
                at..at + v.len()
            });
            entries.push((k..k + entry.key.len(), value, entry.version));
        }
        Ok(Self { block, entries })
    }

    /// The version and value (`None`: tombstone) the block holds for `key`.
    fn get(&self, key: &[u8]) -> Option<(Version, Option<&[u8]>)> {
        let raw = &self.block.block.raw;
        let i = self.entries.binary_search_by(|(k, _, _)| raw[k.clone()].cmp(key)).ok()?;
        let (_, value, version) = &self.entries[i];
        Some((*version, value.as_ref().map(|v| &raw[v.clone()])))
    }

    /// The entries with `from <= key <= to`, in key order, copied out.
    fn entries_in(&self, from: &[u8], to: &[u8]) -> TableEntries {
        let raw = &self.block.block.raw;
        let start = self.entries.partition_point(|(k, _, _)| &raw[k.clone()] < from);
        let end = self.entries.partition_point(|(k, _, _)| &raw[k.clone()] <= to).max(start);
        self.copied(start..end)
    }

    /// Up to `n` entries from the first at or above `from`, in key order, copied out.
    pub(crate) fn entries_from(&self, from: &[u8], n: usize) -> TableEntries {
        let raw = &self.block.block.raw;
        let start = self.entries.partition_point(|(k, _, _)| &raw[k.clone()] < from);
        self.copied(start..start.saturating_add(n).min(self.entries.len()))
    }

    fn copied(&self, range: std::ops::Range<usize>) -> TableEntries {
        let raw = &self.block.block.raw;
        self.entries[range]
            .iter()
            .map(|(k, value, version)| {
                (raw[k.clone()].to_vec(), *version, value.as_ref().map(|v| raw[v.clone()].to_vec()))
            })
            .collect()
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
