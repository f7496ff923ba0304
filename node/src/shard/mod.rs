//! The shard: one core's WAL, memtable and version clock.
//!
//! A write is accepted (validated, given a version, encoded into the pending group commit) at
//! once, then waits. The flusher takes pending batches one at a time: one aligned write, one
//! fdatasync; only when both succeed is the batch applied to the memtable (made visible) and its
//! writes acknowledged, together and in order. Writes arriving meanwhile form the next batch.
//!
//! When the memtable reaches its flush size it is frozen (still readable) at a batch boundary,
//! the WAL rolls to a new segment, and the maintenance task writes the frozen memtable into one
//! table per time window, commits them in one manifest edit, and only then releases the WAL
//! segments they cover. Reads look in the memtable, the frozen memtable, then the tables of the
//! key's window, newest first.
//!
//! Invariant: nothing is visible or acknowledged before it is durable. After a failed write or
//! fsync the shard is latched read-only with the reason; the writes that batch covered are
//! answered `UnknownOutcome`, later accepted ones `NotWritten`; nothing is retried.

mod maintenance;
mod read;
mod sink;

pub use read::{ReadError, ScanEntry};

use crate::error::{OpenError, WriteError};
use crate::lsm::Levels;
use crate::lsm::cache::BlockCache;
use crate::lsm::manifest::{ManifestLog, ManifestState};
use crate::lsm::table::{BlockFormat, Table, parse_table_name, table_path};
use crate::memtable::Memtable;
use crate::sync::{Notify, Slot, SlotWait};
use crate::wal::recovery::{RecoveryReport, recover};
use crate::wal::segment::{ActiveSegment, SpareSegment, activate_segment, prepare_segment};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use strata_format::key::{TS_TIMELESS, Timestamp, encode_key_into, validate_pkey};
use strata_format::table::Compression;
use strata_format::version::{VERSION_LEASE_SPAN, Version, VersionClock};
use strata_format::wal::{
    BATCH_HEADER_SIZE, BatchEncoder, BatchPlace, RECORD_HEADER_MAX, RecordKind, SegmentInfo, decode_batch,
};
use strata_format::{BLOCK_SIZE, align_up_block};
use strata_ioengine::{Clock, DirLock, Disk, DiskError, DiskFile, SimRng, Trace, TraceOp};

/// Test-only mutations: deliberately broken behaviour that the suites must catch.
#[cfg(feature = "mutations")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// Acknowledge (and make visible) a batch after its write completes but before its
    /// fdatasync does.
    AckBeforeFsync,
    /// Commit a sink without syncing its cold files.
    SinkSkipsFsync,
}

/// How a shard is opened.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    /// The shard's data directory (the WAL goes in `wal/` under it).
    pub dir: PathBuf,
    /// Bytes per WAL segment file, header block included.
    pub segment_bytes: u64,
    /// Segments kept prepared (zero-filled) ahead of need.
    pub spare_segments: usize,
    /// The largest group commit, framed.
    pub batch_bytes_max: usize,
    /// Memory the memtable (plus writes waiting for their commit) may use.
    pub memtable_bytes_max: usize,
    pub value_bytes_max: usize,
    /// Segments with a lower sequence hold nothing that needs replay (their records are
    /// persisted elsewhere) and may be recycled.
    pub replay_from_seq: u64,
    /// Seeds segment nonces; vary it per process in production.
    pub nonce_seed: u64,
    /// Records acknowledgements into this trace (with a [`strata_ioengine::Traced`] disk).
    pub trace: Option<Trace>,
    /// Memtable bytes at which it is frozen and flushed to tables.
    pub flush_bytes: usize,
    /// Width of a time window, in the unit of `ts` (microseconds by convention).
    pub window_us: u64,
    /// A window this long past its end is settled: compacted into one run, with old-window blocks.
    pub settle_us: u64,
    /// Writes with `ts` further than this beyond the clock are refused (timeless ones excepted).
    pub future_skew_us: u64,
    /// Windows that ended longer ago than this are dropped whole (none when `None`).
    pub retention_us: Option<u64>,
    /// Flushed tables a window may hold before some are merged.
    pub tables_per_window_max: usize,
    pub block_cache_bytes: usize,
    /// Background compaction writes are paced to this many bytes per second.
    pub compaction_bytes_per_s: u64,
    /// Block format of windows that have not settled: small, uncompressed.
    pub hot_format: BlockFormat,
    /// Block format of settled windows and the compacted timeless run: larger, lz4.
    pub cold_format: BlockFormat,
    /// Output tables of a compaction are cut at about this many bytes.
    pub table_bytes_target: u64,
    /// SSD bytes kept free for flushes, compactions and WAL segments: below it writes are
    /// refused with `DiskFull`.
    pub ssd_reserve_bytes: u64,
    /// Below this many free bytes, writes are slowed, more the closer the reserve is.
    pub ssd_throttle_bytes: u64,
    /// The cold tier: windows past its hot horizon are sunk to these disks (none: never sunk).
    pub cold: Option<crate::cold::ColdOptions>,
    #[cfg(feature = "mutations")]
    pub mutation: Option<Mutation>,
}

impl ShardOptions {
    /// Production defaults for a shard in `dir`.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            spare_segments: 1,
            batch_bytes_max: 4 << 20,
            memtable_bytes_max: 256 << 20,
            value_bytes_max: 1 << 20,
            replay_from_seq: 0,
            nonce_seed: std::process::id().into(),
            trace: None,
            flush_bytes: 64 << 20,
            window_us: 86_400_000_000,
            settle_us: 2 * 86_400_000_000,
            future_skew_us: 3_600_000_000,
            retention_us: None,
            tables_per_window_max: 16,
            block_cache_bytes: 64 << 20,
            compaction_bytes_per_s: 64 << 20,
            hot_format: BlockFormat { block_bytes: 4096 - 32, compression: Compression::None, bloom_bits_per_key: 10 },
            cold_format: BlockFormat {
                block_bytes: 64 * 1024 - 32,
                compression: Compression::Lz4,
                bloom_bits_per_key: 10,
            },
            table_bytes_target: 64 << 20,
            ssd_reserve_bytes: 1 << 30,
            ssd_throttle_bytes: 2 << 30,
            cold: None,
            #[cfg(feature = "mutations")]
            mutation: None,
        }
    }

    fn validate(&self) -> Result<(), OpenError> {
        let block = BLOCK_SIZE as u64;
        let bad = |why: String| Err(OpenError::BadOptions(why));
        if !self.segment_bytes.is_multiple_of(block) || self.segment_bytes < 4 * block {
            return bad(format!(
                "segment size {} must be a multiple of {block} and at least {}",
                self.segment_bytes,
                4 * block
            ));
        }
        let largest_record = align_up_block(BATCH_HEADER_SIZE + RECORD_HEADER_MAX + 255 + self.value_bytes_max);
        if self.batch_bytes_max < largest_record {
            return bad(format!(
                "batch limit {} cannot hold one largest record ({largest_record} bytes)",
                self.batch_bytes_max
            ));
        }
        if self.batch_bytes_max as u64 > self.segment_bytes - block {
            return bad(format!(
                "batch limit {} exceeds a segment's room {}",
                self.batch_bytes_max,
                self.segment_bytes - block
            ));
        }
        if self.spare_segments == 0 {
            return bad("at least one spare segment must be kept".into());
        }
        if self.flush_bytes == 0 || self.flush_bytes > self.memtable_bytes_max {
            return bad(format!(
                "flush size {} must be within the memtable budget {}",
                self.flush_bytes, self.memtable_bytes_max
            ));
        }
        if self.window_us == 0 {
            return bad("the window width must be positive".into());
        }
        if self.tables_per_window_max == 0 {
            return bad("a window must be allowed at least one flushed table".into());
        }
        if let Some(cold) = &self.cold {
            if cold.disks.is_empty() || cold.disks.len() > crate::disks::DISKS_MAX {
                return bad(format!(
                    "the cold tier needs 1..={} disks, not {}",
                    crate::disks::DISKS_MAX,
                    cold.disks.len()
                ));
            }
            let block_max = strata_format::cold::COLD_BLOCK_MAX as u64;
            if cold.file_bytes < strata_format::cold::COLD_DATA_START + block_max
                || !cold.file_bytes.is_multiple_of(block)
            {
                return bad(format!(
                    "cold file size {} must be a multiple of {block} and hold at least one {block_max}-byte block",
                    cold.file_bytes
                ));
            }
            if cold.block_raw_bytes == 0
                || cold.block_raw_bytes > block_max as usize - strata_format::cold::COLD_BLOCK_HEADER_SIZE
            {
                return bad(format!("cold block size {} must be within 1..=65472 raw bytes", cold.block_raw_bytes));
            }
        }
        Ok(())
    }
}

/// Counters of the shard's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub writes_acked: u64,
    pub flushes: u64,
    pub flush_bytes_written: u64,
    pub compactions: u64,
    pub compaction_bytes_written: u64,
    pub compaction_bytes_read: u64,
    pub batches: u64,
    pub fsyncs: u64,
    pub wal_bytes_written: u64,
    pub segments_started: u64,
    /// Zeros written to prepare new WAL segment files: a one-time cost per file (recycled
    /// segments are rewritten only by batches), not part of any write's amplification.
    pub wal_prefill_bytes: u64,
    pub sinks: u64,
    pub sink_bytes_written: u64,
    pub sinks_abandoned: u64,
}

type WriteResult = Result<Version, WriteError>;

/// A key's newest state with its version: a value, or `None` for a tombstone.
pub type Versioned = (Version, Option<Vec<u8>>);

/// One group commit being formed.
struct Pending {
    encoder: BatchEncoder,
    /// Bytes of records, as charged to `State::pending_bytes`.
    record_bytes: usize,
    waiters: Vec<(Slot<WriteResult>, Version)>,
}

/// A memtable frozen for flushing, and the last WAL segment holding its writes.
struct Frozen {
    memtable: Rc<Memtable>,
    wal_seq_through: u64,
}

impl<F> State<F> {
    /// Every range delete in force: durable ones, then the frozen and the active memtable's.
    fn range_tombstones(&self) -> impl Iterator<Item = &strata_format::manifest::RangeTombstone> {
        let frozen = self.frozen.as_ref().map(|f| f.memtable.range_tombstones()).unwrap_or_default();
        self.manifest.range_tombstones.iter().chain(frozen).chain(self.memtable.range_tombstones())
    }

    /// Freezes the memtable at a batch boundary: every write in WAL segments up to the active
    /// one is in the frozen memtable, and the next batch starts a new segment.
    fn freeze(&mut self) {
        assert!(!self.committing && self.frozen.is_none());
        let memtable = std::mem::take(&mut self.memtable);
        self.frozen = Some(Frozen { memtable: Rc::new(memtable), wal_seq_through: self.active.info.segment_seq });
        self.roll_requested = true;
        self.flush_requested = false;
    }
}

struct State<F> {
    memtable: Memtable,
    frozen: Option<Frozen>,
    /// The next batch must start a new WAL segment (a memtable was just frozen).
    roll_requested: bool,
    /// A batch is between its write and its completion.
    committing: bool,
    /// Freeze the memtable at the next batch boundary, whatever its size.
    flush_requested: bool,
    levels: Levels<F>,
    manifest: ManifestState,
    maintenance_done: bool,
    /// Free SSD bytes, as last measured.
    ssd_free_bytes: u64,
    /// A sink failed on a cold disk at this clock time: sinking pauses for a while.
    sink_failed_at_us: Option<u64>,
    /// Next table id and order to hand out (at least the manifest's).
    table_id_next: u64,
    order_next: u64,
    clock: VersionClock,
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    /// Record bytes of the batch being written: charged until it reaches the memtable.
    inflight_bytes: usize,
    read_only: Option<Rc<str>>,
    active: ActiveSegment<F>,
    spares: VecDeque<SpareSegment<F>>,
    /// Segments filled before the active one that may still need replay, oldest first.
    sealed: VecDeque<(u32, u64, Rc<F>)>,
    free: Vec<(u32, F)>,
    file_no_next: u32,
    batch_seq_next: u64,
    nonces: SimRng,
    closing: bool,
    flusher_done: bool,
    stats: ShardStats,
}

struct Inner<D: Disk, C: Clock> {
    disk: D,
    clock: C,
    options: ShardOptions,
    wal_dir: PathBuf,
    state: RefCell<State<D::File>>,
    tables_dir: PathBuf,
    cache: RefCell<BlockCache>,
    cold: Option<crate::cold::ColdStore<D>>,
    /// Taken by whoever appends an edit; maintenance is its only user.
    manifest_log: RefCell<Option<ManifestLog<D>>>,
    flusher_wake: Notify,
    preparer_wake: Notify,
    maintenance_wake: Notify,
    closed: Notify,
    _lock: DirLock,
}

/// A shard. Clones are handles to the same shard, for the tasks of one core.
pub struct Shard<D: Disk, C: Clock> {
    inner: Rc<Inner<D, C>>,
}

impl<D: Disk, C: Clock> Clone for Shard<D, C> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<D: Disk, C: Clock> std::fmt::Debug for Shard<D, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("dir", &self.inner.options.dir).finish()
    }
}

/// One entry as stored: a value or a tombstone, with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub pkey: Vec<u8>,
    pub ts: Timestamp,
    pub version: Version,
    pub value: Option<Vec<u8>>,
}

impl<D: Disk, C: Clock> Shard<D, C> {
    /// Opens (or creates) the shard in `options.dir`, replaying its WAL. The caller must run
    /// [`Shard::background`] on the same executor for writes to complete.
    pub async fn open(disk: D, clock: C, options: ShardOptions) -> Result<(Self, RecoveryReport), OpenError> {
        options.validate()?;
        disk.create_dir_all(&options.dir).await?;
        let lock = disk.lock_dir(&options.dir).map_err(OpenError::Locked)?;
        let wal_dir = options.dir.join("wal");
        disk.create_dir_all(&wal_dir).await?;
        let tables_dir = options.dir.join("tables");
        disk.create_dir_all(&tables_dir).await?;
        let (mut manifest_log, mut manifest) =
            ManifestLog::open(&disk, &tables_dir).await.map_err(OpenError::Manifest)?;
        let levels = open_tables(&disk, &tables_dir, &manifest).await?;
        let cold = open_cold(&disk, &options, &mut manifest_log, &mut manifest).await?;
        let mut memtable = Memtable::new();
        let mut key = Vec::new();
        let replay_from = options.replay_from_seq.max(manifest.wal_replay_from_seq);
        let recovered = recover(&disk, &wal_dir, replay_from, &mut |record| {
            apply_record(&mut memtable, &mut key, record);
        })
        .await?;
        tracing::debug!(
            replay_from,
            tables = manifest.tables.len(),
            batches = recovered.report.batches_replayed,
            "shard recovered"
        );
        let table_version_max = manifest.tables.values().map(|t| t.version_max).max().unwrap_or(0);
        let floor = recovered.version_max.max(recovered.lease_max).max(manifest.version_floor).max(table_version_max);
        let lease = floor.max(clock.now_us()).saturating_add(VERSION_LEASE_SPAN);
        let mut free = recovered.free;
        let mut live = recovered.live;
        let mut file_no_next = recovered.file_no_max + 1;
        let (mut prev_seq, mut prev_end) = recovered.last.unwrap_or((0, 0));
        // A segment sequence is never reused, even one of a free segment.
        let seq_next = prev_seq.max(recovered.segment_seq_max) + 1;
        // An empty last segment (a restart with no writes) is recycled in place: the new segment
        // takes its file and its predecessor, so restarts do not pile up segments.
        let recycled = if recovered.last_is_empty { live.pop() } else { None };
        let (file_no, existing) = match (recycled, free.pop()) {
            (Some((file_no, info, file)), unused) => {
                free.extend(unused);
                (prev_seq, prev_end) = (info.prev_segment_seq, info.prev_segment_end);
                (file_no, Some(file))
            }
            (None, Some((file_no, file))) => (file_no, Some(file)),
            (None, None) => {
                file_no_next += 1;
                (file_no_next - 1, None)
            }
        };
        let spare = prepare_segment(&disk, &wal_dir, file_no, existing, options.segment_bytes).await?;
        let mut nonces = SimRng::new(options.nonce_seed ^ clock.now_us().rotate_left(17));
        let info = SegmentInfo {
            segment_seq: seq_next,
            nonce: nonces.next_u64(),
            segment_size: options.segment_bytes,
            first_batch_seq: recovered.next_batch_seq,
            prev_segment_seq: prev_seq,
            prev_segment_end: prev_end,
            version_lease: lease,
        };
        let prefilled = spare.zero_filled;
        let active = activate_segment(spare, info).await?;
        let state = State {
            memtable,
            frozen: None,
            roll_requested: false,
            committing: false,
            flush_requested: false,
            levels,
            ssd_free_bytes: u64::MAX,
            sink_failed_at_us: None,
            table_id_next: manifest.table_id_next,
            order_next: manifest.order_next,
            manifest,
            maintenance_done: false,
            clock: VersionClock::new(floor, lease),
            pending: VecDeque::new(),
            pending_bytes: 0,
            inflight_bytes: 0,
            read_only: None,
            active,
            spares: VecDeque::new(),
            sealed: live.into_iter().map(|(no, info, f)| (no, info.segment_seq, Rc::new(f))).collect(),
            free,
            file_no_next,
            batch_seq_next: recovered.next_batch_seq,
            nonces,
            closing: false,
            flusher_done: false,
            stats: ShardStats { segments_started: 1, wal_prefill_bytes: prefilled, ..ShardStats::default() },
        };
        let inner = Inner {
            disk,
            clock,
            wal_dir,
            cache: RefCell::new(BlockCache::new(options.block_cache_bytes)),
            cold,
            options,
            tables_dir,
            manifest_log: RefCell::new(Some(manifest_log)),
            state: RefCell::new(state),
            flusher_wake: Notify::default(),
            preparer_wake: Notify::default(),
            maintenance_wake: Notify::default(),
            closed: Notify::default(),
            _lock: lock,
        };
        let shard = Self { inner: Rc::new(inner) };
        shard.refresh_space().await;
        Ok((shard, recovered.report))
    }

    /// The shard's background work: the group-commit flusher and the segment preparer. Runs
    /// until [`Shard::close`] (or forever, if the shard is abandoned).
    pub fn background(&self) -> impl std::future::Future<Output = ()> + 'static {
        let flusher = self.clone();
        let preparer = self.clone();
        async move {
            futures_lite::future::zip(flusher.run_flusher(), preparer.run_preparer()).await;
        }
    }

    /// Writes `value` at `(pkey, ts)`; returns its version once durable.
    pub async fn put(&self, pkey: &[u8], ts: Timestamp, value: &[u8]) -> WriteResult {
        self.throttle().await;
        self.accept(RecordKind::Put, pkey, ts, value)?.await
    }

    /// Deletes `(pkey, ts)` (writes a tombstone); returns its version once durable.
    pub async fn delete(&self, pkey: &[u8], ts: Timestamp) -> WriteResult {
        self.throttle().await;
        self.accept(RecordKind::Delete, pkey, ts, &[])?.await
    }

    /// Deletes every entry of `pkey` with `ts_from <= ts <= ts_to`; returns the version of the
    /// range delete once durable. Writes after it (higher versions) are not affected.
    pub async fn delete_range(&self, pkey: &[u8], ts_from: Timestamp, ts_to: Timestamp) -> WriteResult {
        if ts_from > ts_to {
            return Err(WriteError::BadRange { ts_from, ts_to });
        }
        self.throttle().await;
        self.accept(RecordKind::DeleteRange, pkey, ts_from, &ts_to.to_le_bytes())?.await
    }

    /// Slows a write while free SSD space is between the throttle mark and the reserve: up to
    /// 10 ms, in proportion to how far into that band the disk has filled.
    async fn throttle(&self) {
        let options = &self.inner.options;
        let free = self.inner.state.borrow().ssd_free_bytes;
        if free >= options.ssd_throttle_bytes || free < options.ssd_reserve_bytes {
            return;
        }
        let band = options.ssd_throttle_bytes.saturating_sub(options.ssd_reserve_bytes).max(1);
        let depth = options.ssd_throttle_bytes - free;
        self.inner.clock.sleep_us(10_000 * depth / band).await;
    }

    /// Measures free SSD space (after work that changes it).
    pub(crate) async fn refresh_space(&self) {
        match self.inner.disk.space(&self.inner.options.dir).await {
            Ok((free, _)) => self.inner.state.borrow_mut().ssd_free_bytes = free,
            Err(e) => tracing::warn!(dir = %self.inner.options.dir.display(), "cannot measure free space: {e}"),
        }
    }

    /// Why the shard stopped acknowledging writes, if it did.
    #[must_use]
    pub fn read_only_reason(&self) -> Option<String> {
        self.inner.state.borrow().read_only.as_deref().map(str::to_string)
    }

    #[must_use]
    pub fn stats(&self) -> ShardStats {
        self.inner.state.borrow().stats
    }

    /// Block cache hits, misses and bytes held.
    #[must_use]
    pub fn cache_stats(&self) -> (u64, u64, usize) {
        let cache = self.inner.cache.borrow();
        (cache.hits, cache.misses, cache.bytes())
    }

    /// The cold tier, when the shard has one.
    #[must_use]
    pub fn cold(&self) -> Option<&crate::cold::ColdStore<D>> {
        self.inner.cold.as_ref()
    }

    /// Windows sunk to the cold tier, and their records.
    #[must_use]
    pub fn cold_windows(&self) -> Vec<strata_format::manifest::ColdWindow> {
        self.inner.state.borrow().manifest.cold_windows.values().cloned().collect()
    }

    /// Memory pinned by the indexes and filters of every live table.
    #[must_use]
    pub fn pinned_bytes(&self) -> usize {
        self.inner.state.borrow().levels.all().map(|t| t.pinned_bytes()).sum()
    }

    /// Live tables and their bytes on disk.
    #[must_use]
    pub fn table_stats(&self) -> (usize, u64) {
        let state = self.inner.state.borrow();
        (state.levels.all().count(), state.levels.all().map(|t| t.file_bytes()).sum())
    }

    /// True when no memtable waits for a flush and no compaction is due.
    #[must_use]
    pub fn maintenance_idle(&self) -> bool {
        let waiting = {
            let state = self.inner.state.borrow();
            state.frozen.is_some() || (state.flush_requested && !state.memtable.is_empty())
        };
        !waiting && self.next_job_is_none()
    }

    /// True while a memtable waits to be flushed (frozen, or asked for with writes in it).
    #[must_use]
    pub fn flush_pending(&self) -> bool {
        let state = self.inner.state.borrow();
        state.frozen.is_some() || (state.flush_requested && !state.memtable.is_empty())
    }

    /// Bytes the memtable holds, as charged against its budget.
    #[must_use]
    pub fn memtable_bytes(&self) -> usize {
        self.inner.state.borrow().memtable.bytes()
    }

    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.inner.options.dir
    }

    /// Stops accepting writes, commits what was accepted, and stops the background work.
    pub async fn close(&self) {
        {
            let mut state = self.inner.state.borrow_mut();
            state.closing = true;
        }
        self.inner.flusher_wake.notify();
        self.inner.preparer_wake.notify();
        self.inner.maintenance_wake.notify();
        loop {
            if self.inner.state.borrow().flusher_done {
                return;
            }
            self.inner.closed.notified().await;
        }
    }

    /// Marks segments with sequence `<= segment_seq` as no longer needed for replay (their
    /// records are persisted elsewhere), so their files are recycled.
    pub fn release_segments_through(&self, segment_seq: u64) {
        let mut state = self.inner.state.borrow_mut();
        assert!(segment_seq < state.active.info.segment_seq, "the active segment is never released");
        while state.sealed.front().is_some_and(|(_, seq, _)| *seq <= segment_seq) {
            let (file_no, segment_seq, file) = state.sealed.pop_front().expect("front checked above");
            match Rc::try_unwrap(file) {
                Ok(file) => state.free.push((file_no, file)),
                // Still referenced by an in-flight operation: keep it tracked, recycle it later.
                Err(file) => {
                    state.sealed.push_front((file_no, segment_seq, file));
                    break;
                }
            }
        }
        drop(state);
        self.inner.preparer_wake.notify();
    }

    /// The sequence of the segment batches are appended to.
    #[must_use]
    pub fn active_segment_seq(&self) -> u64 {
        self.inner.state.borrow().active.info.segment_seq
    }

    fn accept(
        &self,
        kind: RecordKind,
        pkey: &[u8],
        ts: Timestamp,
        value: &[u8],
    ) -> Result<SlotWait<WriteResult>, WriteError> {
        validate_pkey(pkey).map_err(WriteError::BadKey)?;
        let options = &self.inner.options;
        if value.len() > options.value_bytes_max {
            return Err(WriteError::ValueTooLarge { len: value.len(), max: options.value_bytes_max });
        }
        let mut state = self.inner.state.borrow_mut();
        let state = &mut *state;
        if let Some(reason) = &state.read_only {
            return Err(WriteError::ReadOnly { reason: reason.clone() });
        }
        if state.closing {
            return Err(WriteError::ReadOnly { reason: "the shard is closing".into() });
        }
        if state.ssd_free_bytes < options.ssd_reserve_bytes {
            return Err(WriteError::DiskFull {
                free_bytes: state.ssd_free_bytes,
                reserve_bytes: options.ssd_reserve_bytes,
            });
        }
        if kind != RecordKind::DeleteRange && self.window_expired(crate::lsm::window_of(ts, options.window_us)) {
            return Err(WriteError::Expired { ts });
        }
        if ts != TS_TIMELESS {
            let limit = self.inner.clock.now_us().saturating_add(options.future_skew_us);
            if ts > limit {
                return Err(WriteError::FutureTimestamp { ts, limit });
            }
        }
        let record_len = BatchEncoder::record_len(pkey.len(), value.len());
        let frozen_bytes = state.frozen.as_ref().map_or(0, |f| f.memtable.bytes());
        let bytes = state.memtable.bytes() + frozen_bytes + state.pending_bytes + state.inflight_bytes + record_len;
        if bytes > options.memtable_bytes_max {
            return Err(WriteError::MemoryBudget { bytes, max: options.memtable_bytes_max });
        }
        let version = match state.clock.next(self.inner.clock.now_us()) {
            Ok(version) => version,
            Err(e) => return Err(WriteError::ReadOnly { reason: e.to_string().into() }),
        };
        let fits = state
            .pending
            .back()
            .is_some_and(|p| align_up_block(p.encoder.len() + record_len) <= options.batch_bytes_max);
        if !fits {
            state.pending.push_back(Pending { encoder: BatchEncoder::new(), record_bytes: 0, waiters: Vec::new() });
        }
        let batch = state.pending.back_mut().expect("a pending batch exists");
        batch.encoder.push(kind, version, pkey, ts, value);
        batch.record_bytes += record_len;
        let slot = Slot::new();
        batch.waiters.push((slot.clone(), version));
        state.pending_bytes += record_len;
        self.inner.flusher_wake.notify();
        Ok(slot.wait())
    }

    /// Latches the shard read-only (the first reason wins) and returns the reason in force.
    fn latch(&self, reason: String) -> Rc<str> {
        let mut state = self.inner.state.borrow_mut();
        if state.read_only.is_none() {
            tracing::error!(dir = %self.inner.options.dir.display(), %reason, "shard is now read-only");
        }
        state.read_only.get_or_insert_with(|| reason.into()).clone()
    }

    /// Answers every accepted write not yet in flight: it will never be written.
    fn fail_pending(&self, reason: &Rc<str>) {
        let drained: Vec<Pending> = {
            let mut state = self.inner.state.borrow_mut();
            state.pending_bytes = 0;
            state.pending.drain(..).collect()
        };
        for batch in drained {
            for (slot, _) in batch.waiters {
                slot.fill(Err(WriteError::NotWritten { reason: reason.clone() }));
            }
        }
    }

    async fn run_flusher(self) {
        loop {
            let next = {
                let mut state = self.inner.state.borrow_mut();
                if state.read_only.is_some() && !state.pending.is_empty() {
                    let reason = state.read_only.clone().expect("checked above");
                    drop(state);
                    self.fail_pending(&reason);
                    continue;
                }
                let next = state.pending.pop_front();
                if next.is_none() && state.closing {
                    state.flusher_done = true;
                    drop(state);
                    self.inner.closed.notify();
                    self.inner.preparer_wake.notify();
                    return;
                }
                next
            };
            match next {
                Some(batch) => self.commit(batch).await,
                None => self.inner.flusher_wake.notified().await,
            }
        }
    }

    /// Writes, syncs, applies and acknowledges one batch.
    async fn commit(&self, mut batch: Pending) {
        let framed = batch.encoder.framed_len() as u64;
        {
            let mut state = self.inner.state.borrow_mut();
            state.pending_bytes -= batch.record_bytes;
            state.inflight_bytes = batch.record_bytes;
            state.committing = true;
        }
        let roll = {
            let state = self.inner.state.borrow();
            state.roll_requested || state.active.room() < framed
        };
        if roll && let Err(e) = self.start_segment().await {
            let reason = self.latch(format!("cannot start a new WAL segment: {e}"));
            for (slot, _) in batch.waiters {
                slot.fill(Err(WriteError::NotWritten { reason: reason.clone() }));
            }
            self.fail_pending(&reason);
            return;
        }
        let (file, place, lease) = {
            let mut state = self.inner.state.borrow_mut();
            let state = &mut *state;
            let place = BatchPlace {
                batch_seq: state.batch_seq_next,
                segment_seq: state.active.info.segment_seq,
                offset: state.active.offset,
                nonce: state.active.info.nonce,
            };
            state.batch_seq_next += 1;
            state.active.offset += framed;
            (state.active.file.clone(), place, state.clock.lease_to_record(self.inner.clock.now_us()))
        };
        let bytes = batch.encoder.finish(place, lease);
        assert_eq!(bytes.len() as u64, framed);
        #[cfg(feature = "mutations")]
        let mut acked = false;
        #[cfg(not(feature = "mutations"))]
        let acked = false;
        let outcome = async {
            #[cfg(feature = "mutations")]
            if self.inner.options.mutation == Some(Mutation::AckBeforeFsync) {
                file.write_at(bytes, place.offset).await?;
                self.complete(&file, place, bytes, lease, &mut batch.waiters);
                acked = true;
                return file.fdatasync().await;
            }
            file.write_at_synced(bytes, place.offset).await
        }
        .await;
        if let Err(e) = outcome {
            let reason = self.latch(format!("WAL {} failed: {e}", e.op));
            if !acked {
                for (slot, _) in batch.waiters.drain(..) {
                    slot.fill(Err(WriteError::UnknownOutcome { reason: reason.clone() }));
                }
            }
            self.fail_pending(&reason);
            return;
        }
        if !acked {
            self.complete(&file, place, bytes, lease, &mut batch.waiters);
        }
    }

    /// Makes a written and synced batch visible and acknowledges its writes in order.
    fn complete(
        &self,
        file: &Rc<D::File>,
        place: BatchPlace,
        bytes: &[u8],
        lease: Version,
        waiters: &mut Vec<(Slot<WriteResult>, Version)>,
    ) {
        let mut state = self.inner.state.borrow_mut();
        let state = &mut *state;
        state.inflight_bytes = 0;
        state.clock.lease_made_durable(lease);
        let batch = decode_batch(bytes, place, bytes.len() as u64).expect("a batch decodes right after it was encoded");
        let mut key = Vec::with_capacity(64);
        for record in batch.records() {
            let record = record.expect("records decode right after they were encoded");
            apply_record(&mut state.memtable, &mut key, &record);
        }
        state.stats.batches += 1;
        state.stats.fsyncs += 1;
        state.stats.wal_bytes_written += bytes.len() as u64;
        state.stats.writes_acked += waiters.len() as u64;
        if let Some(trace) = &self.inner.options.trace {
            trace.record(TraceOp::Ack {
                file: file.path().to_path_buf(),
                offset: place.offset,
                len: bytes.len() as u64,
                writes: waiters.len() as u64,
            });
        }
        for (slot, version) in waiters.drain(..) {
            slot.fill(Ok(version));
        }
        state.committing = false;
        let full = state.memtable.bytes() >= self.inner.options.flush_bytes || state.flush_requested;
        if full && state.frozen.is_none() && !state.memtable.is_empty() {
            state.freeze();
            self.inner.maintenance_wake.notify();
        }
    }

    /// Seals the active segment and starts the next one from a prepared spare.
    async fn start_segment(&self) -> Result<(), DiskError> {
        let spare = loop {
            if let Some(spare) = self.inner.state.borrow_mut().spares.pop_front() {
                break spare;
            }
            if let Some(reason) = self.inner.state.borrow().read_only.clone() {
                return Err(DiskError::new(
                    "start segment",
                    &self.inner.wal_dir,
                    None,
                    std::io::Error::other(reason.to_string()),
                ));
            }
            self.inner.preparer_wake.notify();
            self.inner.flusher_wake.notified().await;
        };
        let info = {
            let mut state = self.inner.state.borrow_mut();
            let state = &mut *state;
            SegmentInfo {
                segment_seq: state.active.info.segment_seq + 1,
                nonce: state.nonces.next_u64(),
                segment_size: self.inner.options.segment_bytes,
                first_batch_seq: state.batch_seq_next,
                prev_segment_seq: state.active.info.segment_seq,
                prev_segment_end: state.active.offset,
                version_lease: state.clock.lease_to_record(self.inner.clock.now_us()),
            }
        };
        let active = activate_segment(spare, info).await?;
        {
            let mut state = self.inner.state.borrow_mut();
            state.roll_requested = false;
            state.clock.lease_made_durable(info.version_lease);
            let old = std::mem::replace(&mut state.active, active);
            state.sealed.push_back((old.file_no, old.info.segment_seq, old.file));
            state.stats.segments_started += 1;
        }
        self.inner.preparer_wake.notify();
        self.refresh_space().await;
        Ok(())
    }

    async fn run_preparer(self) {
        loop {
            let job = {
                let mut state = self.inner.state.borrow_mut();
                if state.flusher_done || state.read_only.is_some() {
                    return;
                }
                if state.spares.len() >= self.inner.options.spare_segments {
                    None
                } else if let Some((file_no, file)) = state.free.pop() {
                    Some((file_no, Some(file)))
                } else {
                    state.file_no_next += 1;
                    Some((state.file_no_next - 1, None))
                }
            };
            let Some((file_no, existing)) = job else {
                self.inner.preparer_wake.notified().await;
                continue;
            };
            match prepare_segment(
                &self.inner.disk,
                &self.inner.wal_dir,
                file_no,
                existing,
                self.inner.options.segment_bytes,
            )
            .await
            {
                Ok(spare) => {
                    let mut state = self.inner.state.borrow_mut();
                    state.stats.wal_prefill_bytes += spare.zero_filled;
                    state.spares.push_back(spare);
                }
                Err(e) => {
                    let reason = self.latch(format!("cannot prepare a WAL segment: {e}"));
                    self.fail_pending(&reason);
                }
            }
            self.inner.flusher_wake.notify();
        }
    }
}

/// Opens every table the manifest lists and deletes table files it does not list (left by a
/// flush or compaction that crashed before its manifest edit).
async fn open_tables<D: Disk>(disk: &D, dir: &Path, manifest: &ManifestState) -> Result<Levels<D::File>, OpenError> {
    let mut levels = Levels::default();
    for meta in manifest.tables.values() {
        if meta.level == strata_format::manifest::LEVEL_COLD_LINKS_PER_KEY {
            return Err(OpenError::BadOptions(format!(
                "table {} of window {} is a link table of one link per key (level 2), written by an \
                 earlier build; this build reads only links per block (level 3): open this data \
                 directory with the build that sank it",
                meta.table_id, meta.window
            )));
        }
        let path = table_path(dir, meta.table_id);
        let mut table = Table::open(disk, &path, meta.clone()).await.map_err(OpenError::Table)?;
        if meta.level == strata_format::manifest::LEVEL_COLD_LINKS {
            let Some(cold) = manifest.cold_windows.get(&meta.window) else {
                return Err(OpenError::BadOptions(format!(
                    "link table {} belongs to window {}, which the manifest does not list as sunk",
                    meta.table_id, meta.window
                )));
            };
            table.cold = Some(cold.clone());
        }
        levels.insert(Rc::new(table));
    }
    for name in disk.list(dir).await? {
        if let Some(id) = parse_table_name(&name)
            && !manifest.tables.contains_key(&id)
        {
            tracing::info!(file = %dir.join(&name).display(), "removing an orphan table (its manifest edit never happened)");
            disk.remove(&dir.join(&name)).await?;
        }
    }
    Ok(levels)
}

/// Opens the cold tier: refuses a manifest with sunk windows the configured disks cannot hold,
/// rolls back a sink that never committed (its files are removed and its intent cleared), and
/// removes cold files no live window names.
async fn open_cold<D: Disk>(
    disk: &D,
    options: &ShardOptions,
    log: &mut ManifestLog<D>,
    manifest: &mut crate::lsm::manifest::ManifestState,
) -> Result<Option<crate::cold::ColdStore<D>>, OpenError> {
    let Some(cold_options) = options.cold.clone() else {
        if let Some(window) = manifest.cold_windows.keys().next() {
            return Err(OpenError::BadOptions(format!(
                "window {window} (and maybe others) is sunk to the cold tier, but no cold disks are configured"
            )));
        }
        return Ok(None);
    };
    for cold in manifest.cold_windows.values() {
        if usize::from(cold.disks) > cold_options.disks.len() {
            return Err(OpenError::BadOptions(format!(
                "window {} was sunk over {} disks, but only {} are configured",
                cold.window,
                cold.disks,
                cold_options.disks.len()
            )));
        }
    }
    #[cfg(feature = "mutations")]
    let cold_options =
        crate::cold::ColdOptions { skip_sync: options.mutation == Some(Mutation::SinkSkipsFsync), ..cold_options };
    let store = crate::cold::ColdStore::new(disk.clone(), cold_options);
    for path in store.remove_orphans(&manifest.cold_windows).await? {
        tracing::info!(file = %path.display(), "removed an orphan cold file (its sink never committed, or it was replaced)");
    }
    if let Some(intent) = manifest.sink_intent {
        tracing::warn!(
            window = intent.window,
            generation = intent.generation,
            "rolled back a sink that did not commit"
        );
        let edit = strata_format::manifest::ManifestEdit {
            table_id_next: manifest.table_id_next,
            order_next: manifest.order_next,
            wal_replay_from_seq: manifest.wal_replay_from_seq,
            version_floor: manifest.version_floor,
            intent: strata_format::manifest::IntentChange::Cleared,
            ..Default::default()
        };
        manifest.apply(&edit);
        log.append(&edit, manifest).await.map_err(OpenError::Manifest)?;
    }
    Ok(Some(store))
}

/// Applies one WAL record to a memtable (`key` is a scratch buffer).
fn apply_record(memtable: &mut Memtable, key: &mut Vec<u8>, record: &strata_format::wal::RecordRef<'_>) {
    match record.kind {
        RecordKind::DeleteRange => {
            let mut end = [0u8; 8];
            end.copy_from_slice(record.value);
            memtable.apply_range_delete(strata_format::manifest::RangeTombstone {
                pkey: record.pkey.to_vec(),
                ts_from: record.ts,
                ts_to: u64::from_le_bytes(end),
                version: record.version,
            });
        }
        kind => {
            key.clear();
            encode_key_into(record.pkey, record.ts, key).expect("records hold 1..=255-byte pkeys");
            memtable.apply(key, record.version, (kind == RecordKind::Put).then_some(record.value));
        }
    }
}
