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

    /// Checks every acknowledgement against the rule in the module comment.
    pub fn check_acks(&self) -> Result<u64, AckViolation> {
        use std::collections::HashMap;
        struct Written {
            offset: u64,
            end: u64,
            completed_at: u64,
        }
        let events = self.events.borrow();
        // Per file: successfully completed writes, and (submit, complete) of successful fsyncs.
        let mut writes: HashMap<&Path, Vec<Written>> = HashMap::new();
        let mut fsync_submits: HashMap<&Path, Vec<u64>> = HashMap::new();
        let mut synced_through: HashMap<&Path, Vec<(u64, u64)>> = HashMap::new();
        let mut checked = 0;
        for event in events.iter() {
            match &event.op {
                TraceOp::WriteSubmit { .. } => {}
                TraceOp::WriteComplete { file, offset, len, ok } => {
                    if *ok {
                        writes.entry(file).or_default().push(Written {
                            offset: *offset,
                            end: offset + len,
                            completed_at: event.index,
                        });
                    }
                }
                TraceOp::FsyncSubmit { file } => fsync_submits.entry(file).or_default().push(event.index),
                TraceOp::FsyncComplete { file, ok } => {
                    let submitted = fsync_submits
                        .get_mut(file.as_path())
                        .and_then(|s| if s.is_empty() { None } else { Some(s.remove(0)) });
                    if let (true, Some(submitted)) = (*ok, submitted) {
                        synced_through.entry(file).or_default().push((submitted, event.index));
                    }
                }
                TraceOp::Ack { file, offset, len, .. } => {
                    let violation =
                        |reason| AckViolation { ack_index: event.index, file: file.clone(), offset: *offset, reason };
                    let end = offset + len;
                    let covering = writes
                        .get(file.as_path())
                        .and_then(|ws| ws.iter().rev().find(|w| w.offset <= *offset && end <= w.end));
                    let Some(write) = covering else {
                        return Err(violation("no completed write covers the acknowledged bytes"));
                    };
                    let synced = synced_through
                        .get(file.as_path())
                        .is_some_and(|fs| fs.iter().any(|(submit, _)| *submit > write.completed_at));
                    if !synced {
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
