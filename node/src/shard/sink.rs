//! The sinker: the only writer of the cold tier. It moves a whole window past the hot horizon
//! from its SSD tables to cold blocks on the HDDs, leaving on SSD link tables that hold one
//! [`strata_format::cold::BlockLink`] per block, keyed by the block's last key.
//!
//! Two phases: (1) a manifest edit logs the intent (window, generation); (2) the window's
//! tables are merged and its live entries written, bucket by bucket, as cold blocks to the
//! files the placement names, each file synced; then one manifest edit swaps the window's
//! tables for the link tables, records the window's cold files, and clears the intent.
//!
//! Invariant: until that last edit is durable the old tables stay live and the new files are
//! not named by anything; at open an intent without its commit is rolled back (its files are
//! removed), so a crash leaves the tables or the links, never both live and never a gap. Writes
//! that arrive for a sunk window land in its delta tables, which reads consult first; when
//! they pile up, the window is sunk again as the next generation, folding them in (it keeps its
//! placement epoch, so its history never moves).

use super::maintenance::Merge;
use super::{Shard, State};
use crate::cold::{ColdWriter, LinkedBlock};
use crate::lsm::table::{Table, TableCursor, TableWriter, table_path};
use crate::lsm::{WINDOW_TIMELESS, window_of};
use std::rc::Rc;
use strata_format::manifest::{ColdWindow, IntentChange, LEVEL_COLD_LINKS, SinkIntent, TableMeta};
use strata_format::version::Version;
use strata_ioengine::{Clock, Disk, DiskError};

/// Delta tables a sunk window gathers before it is sunk again.
const SINK_DELTA_TABLES: usize = 4;
/// After a sink fails on a cold disk, sinking waits this long before trying again.
const SINK_RETRY_US: u64 = 60_000_000;

/// Why a sink stopped.
enum SinkFailure {
    /// A cold disk failed: the sink is abandoned and rolled back; the window stays on SSD.
    Cold(u16, DiskError),
    /// The previous generation could not be read back (a bad block, a down disk): the sink is
    /// abandoned; the window keeps its old generation and its deltas, and is retried later.
    Unreadable(String),
    /// The SSD side failed (a table or the manifest): the shard latches read-only.
    Fatal(String),
}

impl<D: Disk, C: Clock> Shard<D, C> {
    /// Whether `window` is the sinker's: `None` when it is not (normal compaction applies),
    /// `Some(true)` when it should be sunk now, `Some(false)` when it is sunk (or due) but has
    /// nothing to do now.
    pub(super) fn sink_due(&self, state: &State<D::File>, window: u64, tables: &[Rc<Table<D::File>>]) -> Option<bool> {
        let store = self.inner.cold.as_ref()?;
        if window == WINDOW_TIMELESS {
            return None;
        }
        let now = self.inner.clock.now_us();
        let sunk = state.manifest.cold_windows.contains_key(&window);
        let window_end = window.saturating_add(1).saturating_mul(self.inner.options.window_us);
        if !sunk && window_end.saturating_add(store.options.hot_horizon_us) > now {
            return None;
        }
        let paused = state.sink_failed_at_us.is_some_and(|at| now < at.saturating_add(SINK_RETRY_US))
            || store.disk_down().iter().any(Option::is_some);
        if !sunk {
            // While sinking pauses, a due window is compacted like any other.
            return (!paused).then_some(true);
        }
        if paused {
            return Some(false);
        }
        let deltas = tables.iter().filter(|t| t.meta.level != LEVEL_COLD_LINKS).count();
        Some(deltas >= SINK_DELTA_TABLES)
    }

    /// Sinks `window` (again, if it was sunk before).
    pub(super) async fn sink(&self, window: u64) -> Result<(), String> {
        let store = self.inner.cold.as_ref().expect("sinks are planned only with a cold tier");
        let (inputs, old) = {
            let state = self.inner.state.borrow();
            (state.levels.window(window).to_vec(), state.manifest.cold_windows.get(&window).cloned())
        };
        let generation = old.as_ref().map_or(1, |c| c.generation + 1);
        let (epoch, disks) =
            old.as_ref().map_or((store.options.epoch, store.disk_count() as u16), |c| (c.epoch, c.disks));
        let mut intent = self.edit(Vec::new(), Vec::new(), Vec::new(), None);
        intent.intent = IntentChange::Set(SinkIntent { window, generation, epoch });
        self.commit_edit(intent).await?;
        tracing::debug!(window, generation, epoch, inputs = inputs.len(), "sink started");
        let outcome = self.sink_write(window, &inputs, generation, epoch, disks).await;
        let (cold, outputs, opened) = match outcome {
            Ok(done) => done,
            Err(SinkFailure::Fatal(reason)) => return Err(reason),
            Err(SinkFailure::Cold(disk, e)) => {
                return self.abandon_sink(window, generation, &format!("cold disk {disk} failed: {e}")).await;
            }
            Err(SinkFailure::Unreadable(why)) => return self.abandon_sink(window, generation, &why).await,
        };
        let removed: Vec<u64> = inputs.iter().map(|t| t.meta.table_id).collect();
        let mut edit = self.edit(outputs, removed.clone(), Vec::new(), None);
        edit.cold_windows = vec![cold.clone()];
        edit.intent = IntentChange::Cleared;
        self.commit_edit(edit).await?;
        {
            let mut state = self.inner.state.borrow_mut();
            for id in &removed {
                state.levels.remove(window, *id);
            }
            for table in opened {
                state.levels.insert(table);
            }
            state.stats.sinks += 1;
            state.stats.sink_bytes_written += cold.bytes;
        }
        tracing::info!(
            window,
            generation,
            blocks = cold.blocks,
            entries = cold.entries,
            bytes = cold.bytes,
            "window sunk"
        );
        if old.is_some() {
            // Readers that took the old link tables may still read the old files: wait for them.
            while inputs.iter().any(|t| Rc::strong_count(t) > 1) {
                self.inner.clock.sleep_us(1_000).await;
            }
            if let Err(e) = store.remove_window_files(window, Some(generation)).await {
                tracing::warn!(window, "cannot remove a replaced generation's cold files (removed at next open): {e}");
            }
        }
        drop(inputs);
        self.remove_tables(&removed).await
    }

    /// Rolls back a sink that could not finish: removes the cold files and link tables it
    /// wrote and clears the intent. The window stays as it was; sinking pauses, then tries again.
    async fn abandon_sink(&self, window: u64, generation: u32, why: &str) -> Result<(), String> {
        let store = self.inner.cold.as_ref().expect("a sink has a cold tier");
        tracing::error!(window, generation, "sink abandoned: {why}");
        if let Err(e) = store.remove_window_files(window, self.live_generation(window)).await {
            tracing::warn!(window, "cannot remove an abandoned sink's files (removed at next open): {e}");
        }
        // Its link tables are named by no edit: remove them now, not at the next open.
        if let Err(e) = self.remove_unnamed_tables().await {
            tracing::warn!(window, "cannot remove an abandoned sink's link tables (removed at next open): {e}");
        }
        let mut edit = self.edit(Vec::new(), Vec::new(), Vec::new(), None);
        edit.intent = IntentChange::Cleared;
        self.commit_edit(edit).await?;
        let mut state = self.inner.state.borrow_mut();
        state.sink_failed_at_us = Some(self.inner.clock.now_us());
        state.stats.sinks_abandoned += 1;
        Ok(())
    }

    fn live_generation(&self, window: u64) -> Option<u32> {
        self.inner.state.borrow().manifest.cold_windows.get(&window).map(|c| c.generation)
    }

    /// Phase two: merges the window's tables and writes cold blocks and link tables.
    async fn sink_write(
        &self,
        window: u64,
        inputs: &[Rc<Table<D::File>>],
        generation: u32,
        epoch: u32,
        disks: u16,
    ) -> Result<(ColdWindow, Vec<TableMeta>, Vec<Rc<Table<D::File>>>), SinkFailure> {
        let store = self.inner.cold.as_ref().expect("a sink has a cold tier");
        let clock = &self.inner.clock;
        let fatal = |e: &dyn std::fmt::Display| SinkFailure::Fatal(format!("sink of window {window} failed: {e}"));
        let order = inputs.iter().map(|t| t.meta.order).max().unwrap_or(0);
        let mut input = SinkInput::new(self, inputs);
        let mut writer = ColdWriter::new(store, window, generation, epoch, disks, clock.now_us());
        let mut links = LinkTables { window, order, writer: None, key_min: None, outputs: Vec::new() };
        while let Some((key, version, value)) = input.next().await? {
            debug_assert_eq!(window_of(crate::lsm::ts_of_key(&key), self.inner.options.window_us), window);
            if self.hidden_by_range(&key, version) {
                continue;
            }
            // A tombstone an older range delete also covers must stay (dropping it would make
            // the key read at the range's version): it is sunk like a value.
            if value.is_none() && !self.covered_by_range(&key) {
                continue;
            }
            let closed =
                writer.add(&key, version, value.as_deref(), clock).await.map_err(|(d, e)| SinkFailure::Cold(d, e))?;
            links.add(self, closed).await.map_err(|e| fatal(&e))?;
            // A flush never waits behind a long sink (see compaction).
            if self.inner.state.borrow().frozen.is_some() {
                self.flush().await.map_err(SinkFailure::Fatal)?;
            }
        }
        drop(input);
        let (cold, tail) = writer.finish(clock).await.map_err(|(d, e)| SinkFailure::Cold(d, e))?;
        links.add(self, tail).await.map_err(|e| fatal(&e))?;
        let outputs = links.finish().await.map_err(|e| fatal(&e))?;
        let mut opened = Vec::new();
        for meta in &outputs {
            let path = table_path(&self.inner.tables_dir, meta.table_id);
            let mut table = Table::open(&self.inner.disk, &path, meta.clone()).await.map_err(|e| fatal(&e))?;
            table.cold = Some(cold.clone());
            opened.push(Rc::new(table));
        }
        Ok((cold, outputs, opened))
    }
}

/// The link tables a sink writes, one entry per cold block, cut at the table size target.
/// A link table's key range starts at its first block's first key (its own first key is that
/// block's last), and its filter holds every key and pkey of its blocks, so reads find it for
/// every key its blocks hold and skip it, without a read, for most keys they do not.
struct LinkTables<F> {
    window: u64,
    order: u64,
    writer: Option<TableWriter<F>>,
    key_min: Option<Vec<u8>>,
    outputs: Vec<TableMeta>,
}

impl<F: strata_ioengine::DiskFile> LinkTables<F> {
    async fn add<D: Disk<File = F>, C: Clock>(
        &mut self,
        shard: &Shard<D, C>,
        block: Option<LinkedBlock>,
    ) -> Result<(), DiskError> {
        let Some(LinkedBlock { keys, version, link }) = block else { return Ok(()) };
        let last_key = keys.last().expect("a block holds an entry");
        if self.writer.is_none() {
            let table_id = shard.alloc_table_id();
            let path = table_path(&shard.inner.tables_dir, table_id);
            let format = shard.inner.options.hot_format;
            self.writer = Some(TableWriter::create(&shard.inner.disk, &path, table_id, self.window, format).await?);
            self.key_min = Some(link.first_key.clone());
        }
        let writer = self.writer.as_mut().expect("created above");
        writer.add(last_key, version, Some(&link.encode(last_key))).await?;
        writer.add_to_filter(&keys);
        if writer.bytes() >= shard.inner.options.table_bytes_target {
            self.cut().await?;
        }
        Ok(())
    }

    async fn cut(&mut self) -> Result<(), DiskError> {
        if let Some(writer) = self.writer.take() {
            let mut meta = writer.finish().await?;
            meta.order = self.order;
            meta.level = LEVEL_COLD_LINKS;
            meta.key_min = self.key_min.take().expect("set with the writer");
            self.outputs.push(meta);
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<Vec<TableMeta>, DiskError> {
        self.cut().await?;
        Ok(self.outputs)
    }
}

/// What a sink writes, in key order: the window's delta tables merged with the entries of its
/// previous generation (read back block by block through its link tables); for a key both
/// hold, the higher version wins.
struct SinkInput<'s, D: Disk, C: Clock> {
    shard: &'s Shard<D, C>,
    deltas: Merge<D::File>,
    delta_head: Option<Entry>,
    /// The previous generation's link tables in key order, the one being read, and the entries
    /// of its current block.
    links: Vec<TableCursor<D::File>>,
    link_at: usize,
    cold: std::collections::VecDeque<Entry>,
    started: bool,
    /// The last key returned: keys must ascend strictly, or the previous generation is not
    /// what its links say (nothing is committed then).
    last: Option<Vec<u8>>,
}

type Entry = (Vec<u8>, Version, Option<Vec<u8>>);

impl<'s, D: Disk, C: Clock> SinkInput<'s, D, C> {
    fn new(shard: &'s Shard<D, C>, inputs: &[Rc<Table<D::File>>]) -> Self {
        let deltas: Vec<_> = inputs.iter().filter(|t| t.meta.level != LEVEL_COLD_LINKS).cloned().collect();
        let mut links: Vec<_> =
            inputs.iter().filter(|t| t.meta.level == LEVEL_COLD_LINKS).map(|t| TableCursor::new(t.clone())).collect();
        links.sort_by(|a, b| a.table().meta.key_min.cmp(&b.table().meta.key_min));
        Self {
            shard,
            deltas: Merge::new(&deltas),
            delta_head: None,
            links,
            link_at: 0,
            cold: std::collections::VecDeque::new(),
            started: false,
            last: None,
        }
    }

    async fn next(&mut self) -> Result<Option<Entry>, SinkFailure> {
        if !self.started {
            self.started = true;
            self.delta_head = self.next_delta().await?;
        }
        self.fill_cold().await?;
        let take_delta = match (&self.delta_head, self.cold.front()) {
            (None, None) => return Ok(None),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(d), Some(c)) => match d.0.cmp(&c.0) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => {
                    // Both hold the key: the older entry goes.
                    let cold = self.cold.pop_front().expect("peeked");
                    if cold.1 > d.1 {
                        self.delta_head = Some(cold);
                    }
                    true
                }
            },
        };
        let entry = if take_delta {
            let next = self.next_delta().await?;
            std::mem::replace(&mut self.delta_head, next)
        } else {
            self.cold.pop_front()
        };
        if let Some((key, _, _)) = &entry {
            if self.last.as_ref().is_some_and(|last| key <= last) {
                return Err(SinkFailure::Unreadable(format!(
                    "the previous generation's entries are out of key order at key {key:02x?}: its links \
                     overlap"
                )));
            }
            self.last = Some(key.clone());
        }
        Ok(entry)
    }

    /// The delta tables' next entry.
    async fn next_delta(&mut self) -> Result<Option<Entry>, SinkFailure> {
        let next = self.deltas.next().await.map_err(|e| SinkFailure::Fatal(format!("sink failed: {e}")))?;
        Ok(next.map(|(key, version, value, _)| (key, version, value)))
    }

    /// Reads the previous generation's next block when its entries ran out.
    async fn fill_cold(&mut self) -> Result<(), SinkFailure> {
        let fatal = |e: &dyn std::fmt::Display| SinkFailure::Fatal(format!("sink failed: {e}"));
        while self.cold.is_empty() && self.link_at < self.links.len() {
            let cursor = &mut self.links[self.link_at];
            if cursor.peek_key().await.map_err(|e| fatal(&e))?.is_none() {
                self.link_at += 1;
                continue;
            }
            let (last_key, _, link) = cursor.pop().expect("peeked an entry");
            let table = cursor.table().clone();
            // A link that does not decode is a damaged previous generation, like a bad block:
            // the sink is abandoned, and the shard keeps serving.
            let linked = super::read::decode_link(&table, &last_key, link.as_deref()).map_err(|e| {
                SinkFailure::Unreadable(format!("cannot read window {}'s previous generation: {e}", table.meta.window))
            })?;
            match self.shard.read_linked(&table, &linked).await {
                Ok(block) => self.cold.extend(block.entries_from(&[], usize::MAX)),
                Err(super::ReadError::Cold(e)) => {
                    return Err(SinkFailure::Unreadable(format!(
                        "cannot read window {}'s previous generation: {e}",
                        table.meta.window
                    )));
                }
                Err(e) => return Err(fatal(&e)),
            }
        }
        Ok(())
    }
}
