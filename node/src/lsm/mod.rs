//! The time-window LSM on SSD: tables grouped by the time window of their keys, a manifest that
//! records which tables are live, and a block cache.
//!
//! Invariant: within a window, a table with a higher `order` holds newer writes for every key it
//! shares with a lower one; tables with equal order form one sorted run with disjoint key
//! ranges. A point read therefore probes one window's tables from the highest order down and
//! stops at the first entry it finds.

pub mod cache;
pub mod manifest;
pub mod table;

use std::collections::BTreeMap;
use std::rc::Rc;
use strata_format::key::TS_TIMELESS;
use table::Table;

/// The window of timeless records (`ts == u64::MAX`): never settles, never sinks.
pub const WINDOW_TIMELESS: u64 = u64::MAX;

/// The window a timestamp falls in.
#[must_use]
pub fn window_of(ts: u64, window_us: u64) -> u64 {
    if ts == TS_TIMELESS { WINDOW_TIMELESS } else { ts / window_us }
}

pub use strata_format::key::ts_of_key;

/// The live tables, by window, each window's tables sorted by order, newest first.
#[derive(Debug)]
pub struct Levels<F> {
    windows: BTreeMap<u64, Vec<Rc<Table<F>>>>,
}

impl<F> Default for Levels<F> {
    fn default() -> Self {
        Self { windows: BTreeMap::new() }
    }
}

impl<F> Levels<F> {
    pub fn insert(&mut self, table: Rc<Table<F>>) {
        let tables = self.windows.entry(table.meta.window).or_default();
        tables.push(table);
        tables.sort_by(|a, b| b.meta.order.cmp(&a.meta.order).then(a.meta.key_min.cmp(&b.meta.key_min)));
    }

    pub fn remove(&mut self, window: u64, table_id: u64) {
        if let Some(tables) = self.windows.get_mut(&window) {
            tables.retain(|t| t.meta.table_id != table_id);
            if tables.is_empty() {
                self.windows.remove(&window);
            }
        }
    }

    /// The tables a point read in `window` may probe, newest first (each checks its own key
    /// range and filter: `Table::may_contain`).
    #[must_use]
    pub fn probe_order(&self, window: u64) -> Vec<Rc<Table<F>>> {
        self.windows.get(&window).map_or_else(Vec::new, Clone::clone)
    }

    /// The tables of `window`, newest first.
    #[must_use]
    pub fn window(&self, window: u64) -> &[Rc<Table<F>>] {
        self.windows.get(&window).map_or(&[], Vec::as_slice)
    }

    /// Windows holding tables within `from..=to`.
    pub fn windows_in(&self, from: u64, to: u64) -> impl Iterator<Item = u64> + '_ {
        self.windows.range(from..=to).map(|(w, _)| *w)
    }

    /// Every window with tables.
    pub fn windows(&self) -> impl Iterator<Item = (u64, &[Rc<Table<F>>])> {
        self.windows.iter().map(|(w, t)| (*w, t.as_slice()))
    }

    /// Every live table.
    pub fn all(&self) -> impl Iterator<Item = &Rc<Table<F>>> {
        self.windows.values().flatten()
    }
}
