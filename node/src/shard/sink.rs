//! The sinker: the only writer of the cold tier. It moves a whole window past the hot horizon
//! from its SSD tables to cold blocks on the HDDs, leaving on SSD one link table per run of
//! keys: each live key with its version and the [`ColdLink`] of its block.
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

use super::read::LinkResolver;
use super::{Shard, State};
use crate::cold::ColdWriter;
use crate::lsm::table::{Table, TableWriter, table_path};
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
        let mut merge = super::maintenance::Merge::new(inputs);
        let mut writer = ColdWriter::new(store, window, generation, epoch, disks, clock.now_us());
        let mut links = LinkTables { window, order, writer: None, outputs: Vec::new() };
        // Values of a previous generation, read back through its links.
        let mut resolver = LinkResolver::default();
        let link_tables: Vec<&Rc<Table<D::File>>> =
            inputs.iter().filter(|t| t.meta.level == LEVEL_COLD_LINKS).collect();
        while let Some((key, version, value, level)) = merge.next().await.map_err(|e| fatal(&e))? {
            debug_assert_eq!(window_of(crate::lsm::ts_of_key(&key), self.inner.options.window_us), window);
            if self.hidden_by_range(&key, version) {
                continue;
            }
            let value = match value {
                // A tombstone an older range delete also covers must stay (dropping it would
                // make the key read at the range's version): it stays in the link table.
                None if self.covered_by_range(&key) => {
                    let closed = writer.close_block(clock).await.map_err(|(d, e)| SinkFailure::Cold(d, e))?;
                    links.add_all(self, closed).await.map_err(|e| fatal(&e))?;
                    links.add(self, &key, version, None).await.map_err(|e| fatal(&e))?;
                    continue;
                }
                None => continue,
                Some(link) if level == LEVEL_COLD_LINKS => {
                    let table = link_tables
                        .iter()
                        .find(|t| {
                            key.as_slice() >= t.meta.key_min.as_slice() && key.as_slice() <= t.meta.key_max.as_slice()
                        })
                        .ok_or_else(|| fatal(&"a link outside every link table's key range"))?;
                    match resolver.value(store, table, &key, version, &link).await {
                        Ok(value) => value,
                        Err(super::ReadError::Cold(e)) => {
                            return Err(SinkFailure::Unreadable(format!(
                                "cannot read window {window}'s previous generation: {e}"
                            )));
                        }
                        Err(e) => return Err(fatal(&e)),
                    }
                }
                Some(value) => value,
            };
            let closed = writer.add(&key, version, &value, clock).await.map_err(|(d, e)| SinkFailure::Cold(d, e))?;
            links.add_all(self, closed).await.map_err(|e| fatal(&e))?;
            // A flush never waits behind a long sink (see compaction).
            if self.inner.state.borrow().frozen.is_some() {
                self.flush().await.map_err(SinkFailure::Fatal)?;
            }
        }
        drop(merge);
        let (cold, tail) = writer.finish(clock).await.map_err(|(d, e)| SinkFailure::Cold(d, e))?;
        links.add_all(self, tail).await.map_err(|e| fatal(&e))?;
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

/// The link tables a sink writes, cut at the table size target.
struct LinkTables<F> {
    window: u64,
    order: u64,
    writer: Option<TableWriter<F>>,
    outputs: Vec<TableMeta>,
}

impl<F: strata_ioengine::DiskFile> LinkTables<F> {
    async fn add<D: Disk<File = F>, C: Clock>(
        &mut self,
        shard: &Shard<D, C>,
        key: &[u8],
        version: Version,
        link: Option<&[u8]>,
    ) -> Result<(), DiskError> {
        if self.writer.is_none() {
            let table_id = shard.alloc_table_id();
            let path = table_path(&shard.inner.tables_dir, table_id);
            let format = shard.inner.options.hot_format;
            self.writer = Some(TableWriter::create(&shard.inner.disk, &path, table_id, self.window, format).await?);
        }
        let writer = self.writer.as_mut().expect("created above");
        writer.add(key, version, link).await?;
        if writer.bytes() >= shard.inner.options.table_bytes_target {
            self.cut().await?;
        }
        Ok(())
    }

    async fn add_all<D: Disk<File = F>, C: Clock>(
        &mut self,
        shard: &Shard<D, C>,
        entries: Vec<crate::cold::LinkedEntry>,
    ) -> Result<(), DiskError> {
        for (key, version, link) in entries {
            self.add(shard, &key, version, Some(&link.encode())).await?;
        }
        Ok(())
    }

    async fn cut(&mut self) -> Result<(), DiskError> {
        if let Some(writer) = self.writer.take() {
            let mut meta = writer.finish().await?;
            meta.order = self.order;
            meta.level = LEVEL_COLD_LINKS;
            self.outputs.push(meta);
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<Vec<TableMeta>, DiskError> {
        self.cut().await?;
        Ok(self.outputs)
    }
}
