//! The shard: one core's WAL, memtable and version clock.
//!
//! A write is accepted (validated, given a version, encoded into the pending group commit) at
//! once, then waits. The flusher takes pending batches one at a time: one aligned write, one
//! fdatasync; only when both succeed is the batch applied to the memtable (made visible) and its
//! writes acknowledged, together and in order. Writes arriving meanwhile form the next batch.
//!
//! Invariant: nothing is visible or acknowledged before it is durable. After a failed write or
//! fsync the shard is latched read-only with the reason; the writes that batch covered are
//! answered `UnknownOutcome`, later accepted ones `NotWritten`; nothing is retried.

use crate::error::{OpenError, WriteError};
use crate::memtable::Memtable;
use crate::sync::{Notify, Slot, SlotWait};
use crate::wal::recovery::{RecoveryReport, recover};
use crate::wal::segment::{ActiveSegment, SpareSegment, activate_segment, prepare_segment};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use strata_format::key::{KeyError, Timestamp, decode_key, encode_key, encode_key_into, validate_pkey};
use strata_format::version::{VERSION_LEASE_SPAN, Version, VersionClock};
use strata_format::wal::{
    BATCH_HEADER_SIZE, BatchEncoder, BatchPlace, RECORD_HEADER_SIZE, RecordKind, SegmentInfo, decode_batch,
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
        let largest_record = align_up_block(BATCH_HEADER_SIZE + RECORD_HEADER_SIZE + 255 + self.value_bytes_max);
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
        Ok(())
    }
}

/// Counters of the shard's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub writes_acked: u64,
    pub batches: u64,
    pub fsyncs: u64,
    pub wal_bytes_written: u64,
    pub segments_started: u64,
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

struct State<F> {
    memtable: Memtable,
    clock: VersionClock,
    pending: VecDeque<Pending>,
    pending_bytes: usize,
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
    flusher_wake: Notify,
    preparer_wake: Notify,
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
        let mut memtable = Memtable::new();
        let mut key = Vec::new();
        let recovered = recover(&disk, &wal_dir, options.replay_from_seq, &mut |record| {
            key.clear();
            match encode_key_into(record.pkey, record.ts, &mut key) {
                Ok(()) => {
                    memtable.apply(&key, record.version, (record.kind == RecordKind::Put).then_some(record.value))
                }
                Err(e) => unreachable!("records decode with 1..=255-byte pkeys: {e}"),
            }
        })
        .await?;
        let floor = recovered.version_max.max(recovered.lease_max);
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
        let active = activate_segment(spare, info).await?;
        let state = State {
            memtable,
            clock: VersionClock::new(floor, lease),
            pending: VecDeque::new(),
            pending_bytes: 0,
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
            stats: ShardStats { segments_started: 1, ..ShardStats::default() },
        };
        let inner = Inner {
            disk,
            clock,
            options,
            wal_dir,
            state: RefCell::new(state),
            flusher_wake: Notify::default(),
            preparer_wake: Notify::default(),
            closed: Notify::default(),
            _lock: lock,
        };
        Ok((Self { inner: Rc::new(inner) }, recovered.report))
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
        self.accept(RecordKind::Put, pkey, ts, value)?.await
    }

    /// Deletes `(pkey, ts)` (writes a tombstone); returns its version once durable.
    pub async fn delete(&self, pkey: &[u8], ts: Timestamp) -> WriteResult {
        self.accept(RecordKind::Delete, pkey, ts, &[])?.await
    }

    /// The value at `(pkey, ts)` and its version, if present.
    pub fn get(&self, pkey: &[u8], ts: Timestamp) -> Result<Option<(Version, Vec<u8>)>, KeyError> {
        Ok(self.get_entry(pkey, ts)?.and_then(|(v, value)| value.map(|value| (v, value))))
    }

    /// The newest entry at `(pkey, ts)`, tombstones included.
    pub fn get_entry(&self, pkey: &[u8], ts: Timestamp) -> Result<Option<Versioned>, KeyError> {
        let key = encode_key(pkey, ts)?;
        let state = self.inner.state.borrow();
        Ok(state.memtable.get(&key).map(|e| (e.version, e.value.as_ref().map(|v| v.to_vec()))))
    }

    /// Every stored entry in key order, tombstones included.
    #[must_use]
    pub fn dump(&self) -> Vec<StoredEntry> {
        let state = self.inner.state.borrow();
        state
            .memtable
            .iter()
            .map(|(key, entry)| {
                let key = decode_key(key).expect("memtable keys are encoded by the shard");
                StoredEntry {
                    pkey: key.pkey.to_vec(),
                    ts: key.ts,
                    version: entry.version,
                    value: entry.value.as_ref().map(|v| v.to_vec()),
                }
            })
            .collect()
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
        while state.sealed.front().is_some_and(|(_, seq, _)| *seq <= segment_seq) {
            let (file_no, _, file) = state.sealed.pop_front().expect("front checked above");
            match Rc::try_unwrap(file) {
                Ok(file) => state.free.push((file_no, file)),
                // Still referenced by an in-flight operation: leave it, it is recycled later.
                Err(_) => break,
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
        let record_len = BatchEncoder::record_len(pkey.len(), value.len());
        let bytes = state.memtable.bytes() + state.pending_bytes + record_len;
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
        }
        if self.inner.state.borrow().active.room() < framed
            && let Err(e) = self.start_segment().await
        {
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
            file.write_at(bytes, place.offset).await?;
            #[cfg(feature = "mutations")]
            if self.inner.options.mutation == Some(Mutation::AckBeforeFsync) {
                self.complete(&file, place, bytes, lease, &mut batch.waiters);
                acked = true;
            }
            file.fdatasync().await
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
        state.clock.lease_made_durable(lease);
        let batch = decode_batch(bytes, place, bytes.len() as u64).expect("a batch decodes right after it was encoded");
        let mut key = Vec::with_capacity(64);
        for record in batch.records() {
            let record = record.expect("records decode right after they were encoded");
            key.clear();
            encode_key_into(record.pkey, record.ts, &mut key).expect("pkeys were validated on accept");
            state.memtable.apply(&key, record.version, (record.kind == RecordKind::Put).then_some(record.value));
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
        let mut state = self.inner.state.borrow_mut();
        state.clock.lease_made_durable(info.version_lease);
        let old = std::mem::replace(&mut state.active, active);
        state.sealed.push_back((old.file_no, old.info.segment_seq, old.file));
        state.stats.segments_started += 1;
        drop(state);
        self.inner.preparer_wake.notify();
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
                Ok(spare) => self.inner.state.borrow_mut().spares.push_back(spare),
                Err(e) => {
                    let reason = self.latch(format!("cannot prepare a WAL segment: {e}"));
                    self.fail_pending(&reason);
                }
            }
            self.inner.flusher_wake.notify();
        }
    }
}
