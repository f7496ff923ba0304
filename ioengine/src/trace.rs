//! Trace mode: a [`Disk`] wrapper that records the submission and completion of every write and
//! fsync, and lets the engine record its acknowledgements in the same log.
//!
//! Invariant checked by [`Trace::check_acks`]: every acknowledged byte range was covered by a
//! write that completed successfully, and an fdatasync of the same file was submitted after that
//! write completed and itself completed successfully, all before the acknowledgement.

use crate::disk::{DirLock, Disk, DiskError, DiskFile};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// One traced event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceOp {
    WriteSubmit {
        file: PathBuf,
        offset: u64,
        len: u64,
    },
    WriteComplete {
        file: PathBuf,
        offset: u64,
        len: u64,
        ok: bool,
    },
    FsyncSubmit {
        file: PathBuf,
    },
    FsyncComplete {
        file: PathBuf,
        ok: bool,
    },
    /// The engine acknowledged writes whose bytes are `offset..offset + len` of `file`.
    Ack {
        file: PathBuf,
        offset: u64,
        len: u64,
        writes: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    pub index: u64,
    pub op: TraceOp,
}

/// A shared, append-only trace log.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    events: Rc<RefCell<Vec<TraceEvent>>>,
}

/// Why a trace breaks the acknowledgement rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckViolation {
    pub ack_index: u64,
    pub file: PathBuf,
    pub offset: u64,
    pub reason: &'static str,
}

impl std::fmt::Display for AckViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acknowledgement #{} of {} at offset {}: {}",
            self.ack_index,
            self.file.display(),
            self.offset,
            self.reason
        )
    }
}

impl Trace {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&self, op: TraceOp) {
        let mut events = self.events.borrow_mut();
        let index = events.len() as u64;
        events.push(TraceEvent { index, op });
    }

    #[must_use]
    pub fn events(&self) -> Vec<TraceEvent> {
        self.events.borrow().clone()
    }

    /// Total writes acknowledged in the trace.
    #[must_use]
    pub fn acked_writes(&self) -> u64 {
        self.events.borrow().iter().map(|e| if let TraceOp::Ack { writes, .. } = e.op { writes } else { 0 }).sum()
    }

    /// Checks every acknowledgement against the rule in the module comment: the latest write
    /// overlapping the acknowledged bytes has exactly their range and completed successfully;
    /// no write overlapping them was submitted after it; an fdatasync of the file submitted
    /// after it completed successfully before the acknowledgement; and no fdatasync of the file
    /// failed in between (a failed sync leaves the write's fate unknown).
    pub fn check_acks(&self) -> Result<u64, AckViolation> {
        use std::collections::HashMap;
        #[derive(Clone, Copy)]
        struct Write {
            offset: u64,
            end: u64,
            submitted_at: u64,
            completed_at: Option<u64>,
            ok: bool,
        }
        let events = self.events.borrow();
        let mut writes: HashMap<&Path, Vec<Write>> = HashMap::new();
        let mut fsync_submits: HashMap<&Path, Vec<u64>> = HashMap::new();
        // (submitted_at, completed_at, ok) of finished fsyncs, per file.
        let mut fsyncs: HashMap<&Path, Vec<(u64, u64, bool)>> = HashMap::new();
        let mut checked = 0;
        for event in events.iter() {
            match &event.op {
                TraceOp::WriteSubmit { file, offset, len } => writes.entry(file).or_default().push(Write {
                    offset: *offset,
                    end: offset + len,
                    submitted_at: event.index,
                    completed_at: None,
                    ok: false,
                }),
                TraceOp::WriteComplete { file, offset, len, ok } => {
                    let list = writes.entry(file).or_default();
                    if let Some(w) = list
                        .iter_mut()
                        .find(|w| w.completed_at.is_none() && w.offset == *offset && w.end == offset + len)
                    {
                        w.completed_at = Some(event.index);
                        w.ok = *ok;
                    }
                }
                TraceOp::FsyncSubmit { file } => fsync_submits.entry(file).or_default().push(event.index),
                TraceOp::FsyncComplete { file, ok } => {
                    let submits = fsync_submits.entry(file).or_default();
                    if !submits.is_empty() {
                        let submitted = submits.remove(0);
                        fsyncs.entry(file).or_default().push((submitted, event.index, *ok));
                    }
                }
                TraceOp::Ack { file, offset, len, .. } => {
                    let violation =
                        |reason| AckViolation { ack_index: event.index, file: file.clone(), offset: *offset, reason };
                    let end = offset + len;
                    let overlapping = writes
                        .get(file.as_path())
                        .map(|ws| ws.iter().filter(|w| w.offset < end && *offset < w.end).copied().collect::<Vec<_>>());
                    let Some(latest) = overlapping.as_ref().and_then(|ws| ws.last().copied()) else {
                        return Err(violation("no write covers the acknowledged bytes"));
                    };
                    if latest.offset != *offset || latest.end != end {
                        return Err(violation("the latest write over the acknowledged bytes is not the batch's write"));
                    }
                    let Some(completed_at) = latest.completed_at.filter(|_| latest.ok) else {
                        return Err(violation("acknowledged before its write completed successfully"));
                    };
                    let file_fsyncs = fsyncs.get(file.as_path()).map(Vec::as_slice).unwrap_or_default();
                    if file_fsyncs.iter().any(|(_, done, ok)| !ok && *done > latest.submitted_at) {
                        return Err(violation("an fdatasync of the file failed after the write: its fate is unknown"));
                    }
                    if !file_fsyncs.iter().any(|(submitted, _, ok)| *ok && *submitted > completed_at) {
                        return Err(violation("acknowledged before an fdatasync submitted after its write completed"));
                    }
                    checked += 1;
                }
            }
        }
        Ok(checked)
    }
}

/// A disk whose files record their writes and fsyncs in a [`Trace`].
#[derive(Debug, Clone)]
pub struct Traced<D> {
    inner: D,
    trace: Trace,
}

impl<D> Traced<D> {
    pub fn new(inner: D, trace: Trace) -> Self {
        Self { inner, trace }
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }
}

/// A traced file.
#[derive(Debug)]
pub struct TracedFile<F> {
    inner: F,
    trace: Trace,
}

impl<D: Disk> Disk for Traced<D> {
    type File = TracedFile<D::File>;

    async fn create(&self, path: &Path) -> Result<Self::File, DiskError> {
        Ok(TracedFile { inner: self.inner.create(path).await?, trace: self.trace.clone() })
    }
    async fn open(&self, path: &Path) -> Result<Self::File, DiskError> {
        Ok(TracedFile { inner: self.inner.open(path).await?, trace: self.trace.clone() })
    }
    async fn rename(&self, from: &Path, to: &Path) -> Result<(), DiskError> {
        self.inner.rename(from, to).await
    }
    async fn remove(&self, path: &Path) -> Result<(), DiskError> {
        self.inner.remove(path).await
    }
    async fn create_dir_all(&self, path: &Path) -> Result<(), DiskError> {
        self.inner.create_dir_all(path).await
    }
    async fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
        self.inner.sync_dir(dir).await
    }
    async fn space(&self, dir: &Path) -> Result<(u64, u64), DiskError> {
        self.inner.space(dir).await
    }
    async fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
        self.inner.list(dir).await
    }
    fn lock_dir(&self, dir: &Path) -> Result<DirLock, DiskError> {
        self.inner.lock_dir(dir)
    }
}

impl<F: DiskFile> DiskFile for TracedFile<F> {
    type ReadBuf = F::ReadBuf;

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<(), DiskError> {
        let file = self.inner.path().to_path_buf();
        let len = data.len() as u64;
        self.trace.record(TraceOp::WriteSubmit { file: file.clone(), offset, len });
        let result = self.inner.write_at(data, offset).await;
        self.trace.record(TraceOp::WriteComplete { file, offset, len, ok: result.is_ok() });
        result
    }
    async fn read_at(&self, offset: u64, len: usize) -> Result<Self::ReadBuf, DiskError> {
        self.inner.read_at(offset, len).await
    }
    async fn fdatasync(&self) -> Result<(), DiskError> {
        let file = self.inner.path().to_path_buf();
        self.trace.record(TraceOp::FsyncSubmit { file: file.clone() });
        let result = self.inner.fdatasync().await;
        self.trace.record(TraceOp::FsyncComplete { file, ok: result.is_ok() });
        result
    }
    async fn size(&self) -> Result<u64, DiskError> {
        self.inner.size().await
    }
    async fn allocate(&self, len: u64) -> Result<(), DiskError> {
        self.inner.allocate(len).await
    }
    fn path(&self) -> &Path {
        self.inner.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> PathBuf {
        PathBuf::from("/w/seg")
    }

    #[test]
    fn trace_accepts_ack_after_write_and_fsync() {
        let t = Trace::new();
        t.record(TraceOp::WriteSubmit { file: p(), offset: 0, len: 4096 });
        t.record(TraceOp::WriteComplete { file: p(), offset: 0, len: 4096, ok: true });
        t.record(TraceOp::FsyncSubmit { file: p() });
        t.record(TraceOp::FsyncComplete { file: p(), ok: true });
        t.record(TraceOp::Ack { file: p(), offset: 0, len: 4096, writes: 3 });
        assert_eq!(t.check_acks(), Ok(1));
    }

    #[test]
    fn trace_refuses_ack_before_fsync_completes() {
        let t = Trace::new();
        t.record(TraceOp::WriteSubmit { file: p(), offset: 0, len: 4096 });
        t.record(TraceOp::WriteComplete { file: p(), offset: 0, len: 4096, ok: true });
        t.record(TraceOp::FsyncSubmit { file: p() });
        t.record(TraceOp::Ack { file: p(), offset: 0, len: 4096, writes: 1 });
        t.record(TraceOp::FsyncComplete { file: p(), ok: true });
        assert!(t.check_acks().is_err());
    }

    #[test]
    fn trace_refuses_fsync_submitted_before_the_write_completed() {
        let t = Trace::new();
        t.record(TraceOp::WriteSubmit { file: p(), offset: 0, len: 4096 });
        t.record(TraceOp::FsyncSubmit { file: p() });
        t.record(TraceOp::WriteComplete { file: p(), offset: 0, len: 4096, ok: true });
        t.record(TraceOp::FsyncComplete { file: p(), ok: true });
        t.record(TraceOp::Ack { file: p(), offset: 0, len: 4096, writes: 1 });
        assert!(t.check_acks().is_err());
    }

    #[test]
    fn trace_refuses_ack_whose_write_is_only_covered_by_an_older_write() {
        let t = Trace::new();
        // A zero-fill of the whole file completed and was synced...
        t.record(TraceOp::WriteSubmit { file: p(), offset: 0, len: 1 << 20 });
        t.record(TraceOp::WriteComplete { file: p(), offset: 0, len: 1 << 20, ok: true });
        t.record(TraceOp::FsyncSubmit { file: p() });
        t.record(TraceOp::FsyncComplete { file: p(), ok: true });
        // ...then the batch is acknowledged while its own write is still in flight.
        t.record(TraceOp::WriteSubmit { file: p(), offset: 4096, len: 4096 });
        t.record(TraceOp::Ack { file: p(), offset: 4096, len: 4096, writes: 1 });
        assert!(t.check_acks().is_err());
    }

    #[test]
    fn trace_refuses_ack_after_a_failed_then_retried_fsync() {
        let t = Trace::new();
        t.record(TraceOp::WriteSubmit { file: p(), offset: 0, len: 4096 });
        t.record(TraceOp::WriteComplete { file: p(), offset: 0, len: 4096, ok: true });
        t.record(TraceOp::FsyncSubmit { file: p() });
        t.record(TraceOp::FsyncComplete { file: p(), ok: false });
        t.record(TraceOp::FsyncSubmit { file: p() });
        t.record(TraceOp::FsyncComplete { file: p(), ok: true });
        t.record(TraceOp::Ack { file: p(), offset: 0, len: 4096, writes: 1 });
        assert!(t.check_acks().is_err());
    }

    #[test]
    fn trace_refuses_ack_after_failed_fsync() {
        let t = Trace::new();
        t.record(TraceOp::WriteSubmit { file: p(), offset: 0, len: 4096 });
        t.record(TraceOp::WriteComplete { file: p(), offset: 0, len: 4096, ok: true });
        t.record(TraceOp::FsyncSubmit { file: p() });
        t.record(TraceOp::FsyncComplete { file: p(), ok: false });
        t.record(TraceOp::Ack { file: p(), offset: 0, len: 4096, writes: 1 });
        assert!(t.check_acks().is_err());
    }
}
