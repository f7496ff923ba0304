//! The manifest log: the durable record of which tables are live.
//!
//! Edits are appended, each on a fresh 4 KiB block, with one write and one fdatasync; an edit is
//! in force once that fdatasync completes. When the log grows long, a snapshot (one full-state
//! edit) is written to `MANIFEST.tmp`, synced, and renamed over `MANIFEST`.
//!
//! Invariant: recovery applies records up to the first invalid one at the tail (a torn edit was
//! never in force); an invalid record followed by a valid one is corruption and refuses to open.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use strata_format::BLOCK_SIZE;
use strata_format::manifest::{
    ColdWindow, IntentChange, ManifestEdit, ManifestFormatError, RangeTombstone, SinkIntent, TableMeta, decode_record,
    encode_record,
};
use strata_format::version::Version;
use strata_ioengine::{Disk, DiskError, DiskFile};

/// Edits appended before the log is rewritten as a snapshot.
const EDITS_PER_SNAPSHOT: u64 = 256;

/// The live state the manifest describes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestState {
    pub tables: BTreeMap<u64, TableMeta>,
    pub windows_settled: BTreeSet<u64>,
    pub table_id_next: u64,
    pub order_next: u64,
    pub wal_replay_from_seq: u64,
    pub version_floor: Version,
    /// Durable range deletes; they stay in force (a newer write over them survives by version).
    pub range_tombstones: Vec<RangeTombstone>,
    /// Windows sunk to the cold tier.
    pub cold_windows: BTreeMap<u64, ColdWindow>,
    /// A sink that started and neither committed nor was rolled back.
    pub sink_intent: Option<SinkIntent>,
}

impl ManifestState {
    /// Applies one edit.
    pub fn apply(&mut self, edit: &ManifestEdit) {
        if edit.snapshot {
            *self = Self::default();
        }
        for id in &edit.removed {
            self.tables.remove(id);
        }
        for table in &edit.added {
            self.tables.insert(table.table_id, table.clone());
        }
        self.windows_settled.extend(edit.windows_settled.iter().copied());
        self.range_tombstones.extend(edit.range_tombstones.iter().cloned());
        for w in &edit.cold_removed {
            self.cold_windows.remove(w);
        }
        for c in &edit.cold_windows {
            self.cold_windows.insert(c.window, c.clone());
        }
        match edit.intent {
            IntentChange::Unchanged => {}
            IntentChange::Set(intent) => self.sink_intent = Some(intent),
            IntentChange::Cleared => self.sink_intent = None,
        }
        self.table_id_next = self.table_id_next.max(edit.table_id_next);
        self.order_next = self.order_next.max(edit.order_next);
        self.wal_replay_from_seq = self.wal_replay_from_seq.max(edit.wal_replay_from_seq);
        self.version_floor = self.version_floor.max(edit.version_floor);
    }

    /// The whole state as one snapshot edit.
    #[must_use]
    pub fn snapshot(&self) -> ManifestEdit {
        ManifestEdit {
            snapshot: true,
            table_id_next: self.table_id_next,
            order_next: self.order_next,
            wal_replay_from_seq: self.wal_replay_from_seq,
            version_floor: self.version_floor,
            windows_settled: self.windows_settled.iter().copied().collect(),
            added: self.tables.values().cloned().collect(),
            removed: Vec::new(),
            range_tombstones: self.range_tombstones.clone(),
            cold_windows: self.cold_windows.values().cloned().collect(),
            cold_removed: Vec::new(),
            intent: self.sink_intent.map_or(IntentChange::Unchanged, IntentChange::Set),
        }
    }
}

/// Why the manifest could not be read.
#[derive(Debug)]
pub enum ManifestError {
    Disk(DiskError),
    Corrupted { file: PathBuf, offset: u64, reason: String },
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disk(e) => write!(f, "manifest: {e}"),
            Self::Corrupted { file, offset, reason } => {
                write!(f, "manifest {} is corrupted at offset {offset}: {reason}", file.display())
            }
        }
    }
}

impl std::error::Error for ManifestError {}

impl From<DiskError> for ManifestError {
    fn from(e: DiskError) -> Self {
        Self::Disk(e)
    }
}

/// The open manifest file, appended to by one writer at a time.
#[derive(Debug)]
pub struct ManifestLog<D: Disk> {
    disk: D,
    dir: PathBuf,
    file: D::File,
    offset: u64,
    record_seq_next: u64,
    edits_since_snapshot: u64,
}

fn manifest_path(dir: &Path) -> PathBuf {
    dir.join("MANIFEST")
}

fn manifest_tmp_path(dir: &Path) -> PathBuf {
    dir.join("MANIFEST.tmp")
}

impl<D: Disk> ManifestLog<D> {
    /// Opens the manifest in `dir` (creating an empty one), returning the log and its state.
    pub async fn open(disk: &D, dir: &Path) -> Result<(Self, ManifestState), ManifestError> {
        let path = manifest_path(dir);
        if disk.list(dir).await?.iter().any(|n| n == "MANIFEST.tmp") {
            // A snapshot that never replaced the manifest: the old manifest is still in force.
            disk.remove(&manifest_tmp_path(dir)).await?;
        }
        let file = match disk.open(&path).await {
            Ok(file) => file,
            Err(e) if e.is_not_found() => {
                let mut log = Self::write_snapshot(disk, dir, &ManifestState::default()).await?;
                log.edits_since_snapshot = 0;
                return Ok((log, ManifestState::default()));
            }
            Err(e) => return Err(e.into()),
        };
        let size = file.size().await?;
        let mut bytes = file.read_at(0, size as usize).await?.as_ref().to_vec();
        let mut rereads = 0;
        let mut state = ManifestState::default();
        let mut offset = 0u64;
        let mut seq = 1u64;
        let corrupted = |offset, reason: String| ManifestError::Corrupted { file: path.clone(), offset, reason };
        let stop = loop {
            if offset >= size {
                break None;
            }
            match decode_record(&bytes[offset as usize..], offset) {
                Ok((record_seq, edit, len)) if record_seq == seq => {
                    if seq == 1 && !edit.snapshot {
                        return Err(corrupted(offset, "the first record is not a snapshot".into()));
                    }
                    state.apply(&edit);
                    offset += len;
                    seq += 1;
                }
                Ok((record_seq, _, _)) => {
                    return Err(corrupted(offset, format!("record {record_seq} where {seq} belongs")));
                }
                Err(ManifestFormatError::Unwritten) => break Some(ManifestFormatError::Unwritten),
                // Read the rest again before judging: the first read may have been damaged in flight.
                Err(_) if rereads < 2 => {
                    rereads += 1;
                    let again = file.read_at(offset, (size - offset) as usize).await?;
                    bytes.truncate(offset as usize);
                    bytes.extend_from_slice(again.as_ref());
                }
                Err(e) => break Some(e),
            }
        };
        if seq == 1 {
            return Err(corrupted(
                0,
                format!("no valid snapshot record: {}", stop.map_or("empty".into(), |e| e.to_string())),
            ));
        }
        if let Some(error) = &stop {
            let mut at = offset + BLOCK_SIZE as u64;
            while at < size {
                if let Ok((record_seq, _, _)) = decode_record(&bytes[at as usize..], at) {
                    return Err(corrupted(
                        offset,
                        format!("invalid record ({error}) followed by valid record {record_seq} at offset {at}"),
                    ));
                }
                at += BLOCK_SIZE as u64;
            }
            if !matches!(error, ManifestFormatError::Unwritten) {
                tracing::warn!(file = %path.display(), offset, %error, "dropped a torn manifest edit (never in force)");
            }
        }
        // What was read may sit unsynced in the drive's cache (an edit whose fsync failed, or
        // a rename whose directory fsync did not complete): make it durable before acting on it.
        file.fdatasync().await?;
        disk.sync_dir(dir).await?;
        let log = Self {
            disk: disk.clone(),
            dir: dir.to_path_buf(),
            file,
            offset,
            record_seq_next: seq,
            edits_since_snapshot: seq - 2,
        };
        Ok((log, state))
    }

    /// Writes `state` as a fresh manifest (snapshot), replacing the current one by rename.
    async fn write_snapshot(disk: &D, dir: &Path, state: &ManifestState) -> Result<Self, ManifestError> {
        let tmp = manifest_tmp_path(dir);
        let file = disk.create(&tmp).await?;
        let record = encode_record(0, 1, &state.snapshot());
        file.write_at(&record, 0).await?;
        file.fdatasync().await?;
        disk.rename(&tmp, &manifest_path(dir)).await?;
        Ok(Self {
            disk: disk.clone(),
            dir: dir.to_path_buf(),
            file,
            offset: record.len() as u64,
            record_seq_next: 2,
            edits_since_snapshot: 0,
        })
    }

    /// Makes `edit` durable. `state` must already include it (it is used for snapshots).
    pub async fn append(&mut self, edit: &ManifestEdit, state: &ManifestState) -> Result<(), ManifestError> {
        if self.edits_since_snapshot >= EDITS_PER_SNAPSHOT {
            *self = Self::write_snapshot(&self.disk, &self.dir, state).await?;
            return Ok(());
        }
        let record = encode_record(self.offset, self.record_seq_next, edit);
        self.file.write_at(&record, self.offset).await?;
        self.file.fdatasync().await?;
        self.offset += record.len() as u64;
        self.record_seq_next += 1;
        self.edits_since_snapshot += 1;
        Ok(())
    }
}
