//! Maintenance: flushing frozen memtables to tables, compacting windows, dropping expired ones.
//!
//! One maintenance task per shard runs these one job at a time, at low priority, so the
//! manifest has one writer. Each job writes and syncs its new tables, opens them, commits one
//! manifest edit, and publishes the change to readers in the same synchronous step; files that
//! left the live set are removed only after the edit is durable.
//!
//! Invariant: a job's edit names all its inputs and outputs; until it is durable, the old
//! tables (and WAL segments) stay live, so a crash at any point leaves either the old state or
//! the new one, never a gap. Tombstones are dropped only by a merge of every table of a window.

use super::Shard;
use crate::lsm::table::{BlockFormat, Table, TableCursor, TableWriter, table_path, write_table};
use crate::lsm::{WINDOW_TIMELESS, ts_of_key, window_of};
use crate::memtable::MemEntry;
use std::collections::BTreeMap;
use std::rc::Rc;
use strata_format::manifest::ManifestEdit;
use strata_format::manifest::TableMeta;
use strata_format::version::Version;
use strata_ioengine::{Clock, Disk};

/// A planned merge of tables of one window.
struct Compaction<F> {
    window: u64,
    inputs: Vec<Rc<Table<F>>>,
    level: u8,
    format: BlockFormat,
    drop_tombstones: bool,
    settle: bool,
}

enum Job<F> {
    Flush,
    Compact(Compaction<F>),
    Expire(Vec<u64>),
    Sink(u64),
}

/// Merges table cursors in key order: for each key, the entry with the highest version wins.
pub(super) struct Merge<F> {
    cursors: Vec<TableCursor<F>>,
    levels: Vec<u8>,
}

impl<F: strata_ioengine::DiskFile> Merge<F> {
    pub(super) fn new(tables: &[Rc<Table<F>>]) -> Self {
        Self {
            cursors: tables.iter().cloned().map(TableCursor::new).collect(),
            levels: tables.iter().map(|t| t.meta.level).collect(),
        }
    }

    /// The next key and its winning entry, with the level of the table it came from.
    pub(super) async fn next(
        &mut self,
    ) -> Result<Option<(Vec<u8>, Version, Option<Vec<u8>>, u8)>, crate::lsm::table::TableError> {
        let mut smallest: Option<Vec<u8>> = None;
        for cursor in &mut self.cursors {
            if let Some(key) = cursor.peek_key().await?
                && smallest.as_deref().is_none_or(|s| key < s)
            {
                smallest = Some(key.to_vec());
            }
        }
        let Some(key) = smallest else { return Ok(None) };
        let mut winner: Option<(Version, Option<Vec<u8>>, u8)> = None;
        for (cursor, level) in self.cursors.iter_mut().zip(&self.levels) {
            if cursor.peek_key().await? == Some(key.as_slice()) {
                let (_, version, value) = cursor.pop().expect("peeked an entry");
                if winner.as_ref().is_none_or(|(v, _, _)| version > *v) {
                    winner = Some((version, value, *level));
                }
            }
        }
        let (version, value, level) = winner.expect("the smallest key came from a cursor");
        Ok(Some((key, version, value, level)))
    }

    /// Bytes of blocks the cursors read.
    pub(super) fn bytes_read(&self) -> u64 {
        self.cursors.iter().map(|c| c.bytes_read).sum()
    }
}

impl<D: Disk, C: Clock> Shard<D, C> {
    /// The shard's maintenance work. Run it on the shard's executor, at low priority; it ends
    /// when the shard closes or turns read-only.
    pub fn maintenance(&self) -> impl std::future::Future<Output = ()> + 'static {
        let shard = self.clone();
        async move { shard.run_maintenance().await }
    }

    /// Asks maintenance to look for work (time-based work such as settling a window is found
    /// when maintenance wakes; call this periodically on an idle shard).
    pub fn wake_maintenance(&self) {
        self.inner.maintenance_wake.notify();
    }

    async fn run_maintenance(self) {
        loop {
            {
                let state = self.inner.state.borrow();
                if state.closing || state.read_only.is_some() {
                    drop(state);
                    self.inner.state.borrow_mut().maintenance_done = true;
                    return;
                }
            }
            self.refresh_space().await;
            let outcome = match self.next_job() {
                Some(Job::Flush) => self.flush().await,
                Some(Job::Compact(plan)) => self.compact(plan).await,
                Some(Job::Expire(windows)) => self.expire(windows).await,
                Some(Job::Sink(window)) => self.sink(window).await,
                None => {
                    self.inner.maintenance_wake.notified().await;
                    continue;
                }
            };
            if let Err(reason) = outcome {
                let reason = self.latch(reason);
                self.fail_pending(&reason);
                self.inner.flusher_wake.notify();
            }
        }
    }

    fn format_for(&self, window: u64, settled: bool) -> BlockFormat {
        let options = &self.inner.options;
        if settled || window == WINDOW_TIMELESS { options.cold_format } else { options.hot_format }
    }

    fn window_settled_by_age(&self, window: u64) -> bool {
        let options = &self.inner.options;
        let window_end = window.saturating_add(1).saturating_mul(options.window_us);
        window != WINDOW_TIMELESS && window_end.saturating_add(options.settle_us) <= self.inner.clock.now_us()
    }

    /// True when `window` is past retention: reads ignore it, writes into it are refused.
    pub(super) fn window_expired(&self, window: u64) -> bool {
        let options = &self.inner.options;
        let Some(retention) = options.retention_us else { return false };
        let window_end = window.saturating_add(1).saturating_mul(options.window_us);
        window != WINDOW_TIMELESS && window_end.saturating_add(retention) <= self.inner.clock.now_us()
    }

    pub(super) fn next_job_is_none(&self) -> bool {
        self.next_job().is_none()
    }

    /// Flushes the memtable soon (if it holds anything), as if it had reached its flush size.
    /// The freeze happens at a batch boundary: now if no batch is in flight, else when the
    /// batch in flight completes.
    pub fn flush_now(&self) {
        let mut state = self.inner.state.borrow_mut();
        if state.committing || !state.pending.is_empty() || state.frozen.is_some() {
            // Not at a batch boundary, or a flush is under way: freeze at the next boundary
            // after it.
            state.flush_requested = true;
        } else if !state.memtable.is_empty() {
            state.freeze();
        }
        drop(state);
        self.inner.maintenance_wake.notify();
    }

    /// True when a compaction of `inputs` can write its outputs (at most their size) without
    /// eating into the reserve kept for flushes and WAL segments.
    fn compaction_fits(&self, inputs: &[Rc<Table<D::File>>]) -> bool {
        let needed: u64 = inputs.iter().map(|t| t.file_bytes()).sum();
        let free = self.inner.state.borrow().ssd_free_bytes;
        let usable = free.saturating_sub(self.inner.options.ssd_reserve_bytes);
        if needed > usable {
            tracing::warn!(needed, free, "a compaction is skipped: its output would not fit beside the SSD reserve");
            return false;
        }
        true
    }

    fn next_job(&self) -> Option<Job<D::File>> {
        let state = self.inner.state.borrow();
        if state.frozen.is_some() {
            return Some(Job::Flush);
        }
        let mut expired: Vec<u64> = state
            .levels
            .windows()
            .map(|(w, _)| w)
            .chain(state.manifest.cold_windows.keys().copied())
            .filter(|w| self.window_expired(*w))
            .collect();
        expired.sort_unstable();
        expired.dedup();
        if !expired.is_empty() {
            return Some(Job::Expire(expired));
        }
        for (window, tables) in state.levels.windows() {
            let level0 = tables.iter().filter(|t| t.meta.level == 0).count();
            if let Some(sink) = self.sink_due(&state, window, tables) {
                if sink {
                    return Some(Job::Sink(window));
                }
                continue;
            }
            let settled = state.manifest.windows_settled.contains(&window);
            let whole = |settle| Compaction {
                window,
                inputs: tables.to_vec(),
                level: 1,
                format: self.format_for(window, true),
                drop_tombstones: true,
                settle,
            };
            let plan = if window == WINDOW_TIMELESS {
                (level0 >= 4).then(|| whole(false))
            } else if self.window_settled_by_age(window) {
                // A window settles once, into one run; late writes are folded in when they pile up.
                ((!settled && (level0 > 0)) || level0 >= 4).then(|| whole(true))
            } else if level0 > self.inner.options.tables_per_window_max {
                Some(self.tier_merge(window, tables))
            } else {
                None
            };
            // A merge that does not fit is skipped; other windows may still have work that does.
            if let Some(plan) = plan
                && self.compaction_fits(&plan.inputs)
            {
                return Some(Job::Compact(plan));
            }
        }
        None
    }

    /// Picks newest consecutive flushed tables of similar size (size-tiered), so a hot window
    /// rewrites each byte about log4(tables) times rather than on every merge.
    fn tier_merge(&self, window: u64, tables: &[Rc<Table<D::File>>]) -> Compaction<D::File> {
        let level0: Vec<&Rc<Table<D::File>>> = tables.iter().filter(|t| t.meta.level == 0).collect();
        let mut group: Vec<Rc<Table<D::File>>> = Vec::new();
        for table in &level0 {
            let smallest = group.iter().map(|t| t.file_bytes()).min().unwrap_or(table.file_bytes());
            if !group.is_empty() && table.file_bytes() > smallest.saturating_mul(4) && group.len() >= 4 {
                break;
            }
            group.push((*table).clone());
        }
        let everything = group.len() == tables.len();
        Compaction {
            window,
            inputs: group,
            level: 0,
            format: self.format_for(window, false),
            drop_tombstones: everything,
            settle: false,
        }
    }

    /// Commits `edit` to the manifest; on success it is the shard's manifest state.
    pub(super) async fn commit_edit(&self, edit: ManifestEdit) -> Result<(), String> {
        let mut log = self.inner.manifest_log.borrow_mut().take().expect("maintenance is the manifest's only writer");
        let mut next = self.inner.state.borrow().manifest.clone();
        next.apply(&edit);
        let result = log.append(&edit, &next).await;
        *self.inner.manifest_log.borrow_mut() = Some(log);
        result.map_err(|e| format!("manifest edit failed (its outcome is unknown until restart): {e}"))?;
        self.inner.state.borrow_mut().manifest = next;
        Ok(())
    }

    pub(super) fn alloc_table_id(&self) -> u64 {
        let mut state = self.inner.state.borrow_mut();
        let id = state.table_id_next.max(state.manifest.table_id_next);
        state.table_id_next = id + 1;
        id
    }

    fn alloc_order(&self) -> u64 {
        let mut state = self.inner.state.borrow_mut();
        let order = state.order_next.max(state.manifest.order_next);
        state.order_next = order + 1;
        order
    }

    /// Writes the frozen memtable as one table per window, then releases its WAL segments.
    pub(super) async fn flush(&self) -> Result<(), String> {
        let (memtable, wal_seq_through) = {
            let state = self.inner.state.borrow();
            let frozen = state.frozen.as_ref().expect("a flush job has a frozen memtable");
            (frozen.memtable.clone(), frozen.wal_seq_through)
        };
        let mut by_window: BTreeMap<u64, Vec<(&[u8], MemEntry<'_>)>> = BTreeMap::new();
        for (key, entry) in memtable.iter() {
            let window = window_of(ts_of_key(key), self.inner.options.window_us);
            if !self.window_expired(window) {
                by_window.entry(window).or_default().push((key, entry));
            }
        }
        let order = self.alloc_order();
        let mut added = Vec::new();
        let mut opened = Vec::new();
        let mut bytes = 0;
        for (window, entries) in by_window {
            let table_id = self.alloc_table_id();
            let path = table_path(&self.inner.tables_dir, table_id);
            let settled = self.inner.state.borrow().manifest.windows_settled.contains(&window);
            let format = self.format_for(window, settled);
            let rows = entries.iter().map(|(k, e)| (*k, e.version, e.value));
            let mut meta = write_table(&self.inner.disk, &path, table_id, window, format, rows)
                .await
                .map_err(|e| format!("flush failed writing a table: {e}"))?;
            meta.order = order;
            bytes += meta.file_bytes;
            let table =
                Table::open(&self.inner.disk, &path, meta.clone()).await.map_err(|e| format!("flush failed: {e}"))?;
            added.push(meta);
            opened.push(Rc::new(table));
        }
        let mut edit = self.edit(added, Vec::new(), Vec::new(), Some(wal_seq_through + 1));
        // Range deletes leave the WAL with the writes they cover: into the manifest.
        edit.range_tombstones = memtable.range_tombstones().to_vec();
        tracing::debug!(wal_seq_through, tables = ?edit.added.iter().map(|t| (t.table_id, t.window, t.order, t.entry_count)).collect::<Vec<_>>(), "flush");
        self.commit_edit(edit).await?;
        {
            let mut state = self.inner.state.borrow_mut();
            for table in opened {
                state.levels.insert(table);
            }
            state.frozen = None;
            state.stats.flushes += 1;
            state.stats.flush_bytes_written += bytes;
            // A flush asked for while this one ran happens now, if no batch is in flight.
            if state.flush_requested && !state.committing && state.pending.is_empty() && !state.memtable.is_empty() {
                state.freeze();
            }
        }
        // If no batch has arrived since the freeze, its last segment is still the active one:
        // it holds only flushed writes and no new ones (the next batch starts a new segment),
        // and it is released by a later flush once it is no longer active.
        let active = self.active_segment_seq();
        if active > 1 {
            self.release_segments_through(wal_seq_through.min(active - 1));
        }
        Ok(())
    }

    pub(super) fn edit(
        &self,
        added: Vec<TableMeta>,
        removed: Vec<u64>,
        settled: Vec<u64>,
        replay_from: Option<u64>,
    ) -> ManifestEdit {
        let state = self.inner.state.borrow();
        ManifestEdit {
            snapshot: false,
            table_id_next: state.table_id_next.max(state.manifest.table_id_next),
            order_next: state.order_next.max(state.manifest.order_next),
            wal_replay_from_seq: replay_from.unwrap_or(state.manifest.wal_replay_from_seq),
            version_floor: state.clock.lease_durable(),
            windows_settled: settled,
            added,
            removed,
            ..ManifestEdit::default()
        }
    }

    /// Merges the inputs (streaming, block by block), paced by the compaction byte rate.
    async fn compact(&self, plan: Compaction<D::File>) -> Result<(), String> {
        let failed = |e: &dyn std::fmt::Display| format!("compaction of window {} failed: {e}", plan.window);
        let order = plan.inputs.iter().map(|t| t.meta.order).max().expect("a compaction has inputs");
        let mut merge = Merge::new(&plan.inputs);
        let mut outputs: Vec<TableMeta> = Vec::new();
        let mut writer: Option<TableWriter<D::File>> = None;
        let started_us = self.inner.clock.now_us();
        let mut written_done = 0u64;
        while let Some((key, version, value, _)) = merge.next().await.map_err(|e| failed(&e))? {
            // A tombstone is dropped only when nothing else would answer for the key: if an older
            // range delete covers it, dropping it would make the key read at that older version.
            if plan.drop_tombstones && value.is_none() && !self.covered_by_range(&key) {
                continue;
            }
            // An entry a durable range delete hides is dropped (the range stays in force).
            if self.hidden_by_range(&key, version) {
                continue;
            }
            if writer.is_none() {
                let table_id = self.alloc_table_id();
                let path = table_path(&self.inner.tables_dir, table_id);
                writer = Some(
                    TableWriter::create(&self.inner.disk, &path, table_id, plan.window, plan.format)
                        .await
                        .map_err(|e| failed(&e))?,
                );
            }
            let w = writer.as_mut().expect("created above");
            let before = w.bytes_written();
            w.add(&key, version, value.as_deref()).await.map_err(|e| failed(&e))?;
            if w.bytes_written() > before {
                written_done += w.bytes_written() - before;
                self.pace(started_us, written_done).await;
            }
            // A flush never waits behind a long compaction: while the frozen memtable waits,
            // writes fill the active one towards its budget. It only adds newer tables; this
            // compaction's inputs, and so its output, are not affected.
            if self.inner.state.borrow().frozen.is_some() {
                self.flush().await?;
            }
            // Only a window's bottom run is cut into pieces (disjoint ranges, one order). A merge
            // of flushed tables yields one table, so tiers grow: cut pieces would be merged again
            // as tables of the same size, forever.
            if plan.level == 1 && w.bytes() >= self.inner.options.table_bytes_target {
                let mut meta = writer.take().expect("checked above").finish().await.map_err(|e| failed(&e))?;
                meta.order = order;
                meta.level = plan.level;
                outputs.push(meta);
            }
        }
        if let Some(w) = writer.take() {
            let mut meta = w.finish().await.map_err(|e| failed(&e))?;
            meta.order = order;
            meta.level = plan.level;
            outputs.push(meta);
        }
        let mut opened = Vec::new();
        for meta in &outputs {
            let path = table_path(&self.inner.tables_dir, meta.table_id);
            opened.push(Rc::new(Table::open(&self.inner.disk, &path, meta.clone()).await.map_err(|e| failed(&e))?));
        }
        let bytes_read = merge.bytes_read();
        let bytes_written: u64 = outputs.iter().map(|m| m.file_bytes).sum();
        let removed: Vec<u64> = plan.inputs.iter().map(|t| t.meta.table_id).collect();
        let settled = if plan.settle { vec![plan.window] } else { Vec::new() };
        tracing::debug!(window = plan.window, inputs = ?plan.inputs.iter().map(|t| t.meta.table_id).collect::<Vec<_>>(), outputs = ?outputs.iter().map(|t| t.table_id).collect::<Vec<_>>(), "compaction");
        self.commit_edit(self.edit(outputs, removed.clone(), settled, None)).await?;
        {
            let mut state = self.inner.state.borrow_mut();
            for id in &removed {
                state.levels.remove(plan.window, *id);
            }
            for table in opened {
                state.levels.insert(table);
            }
            state.stats.compactions += 1;
            state.stats.compaction_bytes_read += bytes_read;
            state.stats.compaction_bytes_written += bytes_written;
        }
        self.remove_tables(&removed).await
    }

    /// True when any range delete (durable or not yet flushed) covers encoded `key`.
    pub(super) fn covered_by_range(&self, key: &[u8]) -> bool {
        let state = self.inner.state.borrow();
        let k = strata_format::key::decode_key(key).expect("stored keys are encoded by the shard");
        state.range_tombstones().any(|rt| rt.pkey == k.pkey && rt.ts_from <= k.ts && k.ts <= rt.ts_to)
    }

    /// True when a durable range delete hides the entry at encoded `key` and `version`.
    pub(super) fn hidden_by_range(&self, key: &[u8], version: Version) -> bool {
        let state = self.inner.state.borrow();
        if state.manifest.range_tombstones.is_empty() {
            return false;
        }
        let k = strata_format::key::decode_key(key).expect("stored keys are encoded by the shard");
        state.manifest.range_tombstones.iter().any(|rt| rt.hides(k.pkey, k.ts, version))
    }

    /// Sleeps while compaction is ahead of its byte budget.
    async fn pace(&self, started_us: u64, written: u64) {
        let rate = self.inner.options.compaction_bytes_per_s.max(1);
        let due_us = started_us.saturating_add(written.saturating_mul(1_000_000) / rate);
        let now = self.inner.clock.now_us();
        if due_us > now {
            self.inner.clock.sleep_us(due_us - now).await;
        }
    }

    /// Drops every table of windows past retention, and their cold files if they were sunk.
    async fn expire(&self, windows: Vec<u64>) -> Result<(), String> {
        let (held, cold_removed) = {
            let state = self.inner.state.borrow();
            let tables: Vec<Rc<Table<D::File>>> =
                windows.iter().flat_map(|w| state.levels.window(*w).iter().cloned()).collect();
            let cold: Vec<u64> =
                windows.iter().copied().filter(|w| state.manifest.cold_windows.contains_key(w)).collect();
            (tables, cold)
        };
        let removed: Vec<(u64, u64)> = held.iter().map(|t| (t.meta.window, t.meta.table_id)).collect();
        let ids: Vec<u64> = removed.iter().map(|(_, id)| *id).collect();
        let mut edit = self.edit(Vec::new(), ids.clone(), Vec::new(), None);
        edit.cold_removed.clone_from(&cold_removed);
        self.commit_edit(edit).await?;
        {
            let mut state = self.inner.state.borrow_mut();
            for (window, id) in &removed {
                state.levels.remove(*window, *id);
            }
        }
        if let Some(store) = &self.inner.cold
            && !cold_removed.is_empty()
        {
            // Readers that took the windows' link tables may still read their files: wait.
            while held.iter().any(|t| Rc::strong_count(t) > 1) {
                self.inner.clock.sleep_us(1_000).await;
            }
            for window in cold_removed {
                // Not fatal: the manifest no longer names them, and the next open removes them.
                if let Err(e) = store.remove_window_files(window, None).await {
                    tracing::warn!(window, "cannot remove an expired window's cold files (removed at next open): {e}");
                }
            }
        }
        self.remove_tables(&ids).await
    }

    /// Removes table files the manifest does not name (written by a job that was abandoned).
    /// Only maintenance writes tables, so between its jobs every unnamed table is dead.
    pub(super) async fn remove_unnamed_tables(&self) -> Result<(), strata_ioengine::DiskError> {
        let dir = &self.inner.tables_dir;
        for name in self.inner.disk.list(dir).await? {
            if let Some(id) = crate::lsm::table::parse_table_name(&name)
                && !self.inner.state.borrow().manifest.tables.contains_key(&id)
            {
                self.inner.disk.remove(&dir.join(&name)).await?;
            }
        }
        Ok(())
    }

    /// Removes files of tables that left the live set. A failure is logged, not fatal: the
    /// manifest no longer names them, and the next open removes them as orphans.
    pub(super) async fn remove_tables(&self, ids: &[u64]) -> Result<(), String> {
        for id in ids {
            let path = table_path(&self.inner.tables_dir, *id);
            if let Err(e) = self.inner.disk.remove(&path).await {
                tracing::warn!(file = %path.display(), "cannot remove a dropped table (removed at next open): {e}");
            }
        }
        Ok(())
    }
}
