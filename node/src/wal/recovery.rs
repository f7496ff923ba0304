//! WAL recovery: replay segments in order up to the first invalid batch at the tail.
//!
//! Invariant: replay applies exactly the batches that form an unbroken chain (segment after
//! segment, batch sequence without gaps, each non-last segment ending where its successor's
//! header says). A bad batch that is followed by a valid later batch, or a segment that ends
//! early while the log continues, is corruption in the middle of the log: recovery refuses to
//! open and names the file and offset. A bad batch at the very end is a torn group commit: it is
//! truncated (never acknowledged) and reported.

use super::parse_segment_name;
use std::path::{Path, PathBuf};
use strata_format::BLOCK_SIZE;
use strata_format::version::Version;
use strata_format::wal::{
    BatchPlace, RecordRef, SEGMENT_DATA_OFFSET, SegmentHeader, SegmentInfo, WalFormatError, decode_batch,
    decode_batch_unplaced, peek_batch_len,
};
use strata_ioengine::{Disk, DiskError, DiskFile};

/// Times a bad batch is re-read before it is judged: a read can flip a bit in flight.
const REREADS_MAX: u32 = 2;

/// Why the WAL could not be recovered.
#[derive(Debug)]
pub enum RecoveryError {
    Disk(DiskError),
    /// The log is damaged somewhere other than its tail; opening would lose acknowledged writes.
    Corrupted {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
}

impl std::fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disk(e) => write!(f, "WAL recovery failed: {e}"),
            Self::Corrupted { file, offset, reason } => {
                write!(f, "WAL is corrupted in {} at offset {offset}: {reason}", file.display())
            }
        }
    }
}

impl std::error::Error for RecoveryError {}

impl From<DiskError> for RecoveryError {
    fn from(e: DiskError) -> Self {
        Self::Disk(e)
    }
}

/// A torn group commit found (and dropped) at the end of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    pub offset: u64,
    pub reason: String,
}

/// What recovery found.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub segments_replayed: u32,
    pub batches_replayed: u64,
    pub records_replayed: u64,
    pub torn_tail: Option<TornTail>,
}

/// The log's state after replay, from which the writer continues.
#[derive(Debug)]
pub struct RecoveredWal<F> {
    pub report: RecoveryReport,
    /// The last live segment: its sequence and where its valid batches end.
    pub last: Option<(u64, u64)>,
    pub next_batch_seq: u64,
    /// The highest version and version lease recorded anywhere in the log.
    pub version_max: Version,
    pub lease_max: Version,
    /// Live segments in sequence order (file number, header), oldest first.
    pub live: Vec<(u32, SegmentInfo, F)>,
    /// True when the last live segment holds no batch (it can be recycled at once).
    pub last_is_empty: bool,
    /// Segment files holding nothing live, free to recycle.
    pub free: Vec<(u32, F)>,
    pub file_no_max: u32,
    /// The highest segment sequence in any valid header, live or free: never to be reused.
    pub segment_seq_max: u64,
    /// The file of the last segment replayed, for messages.
    last_file: Option<PathBuf>,
}

struct Candidate<F> {
    file_no: u32,
    info: SegmentInfo,
    file: F,
}

/// Replays the WAL in `wal_dir`, calling `apply` for every record of every valid batch, in log
/// order. Segments older than `replay_from_seq` are treated as free.
pub async fn recover<D: Disk>(
    disk: &D,
    wal_dir: &Path,
    replay_from_seq: u64,
    apply: &mut dyn FnMut(&RecordRef<'_>),
) -> Result<RecoveredWal<D::File>, RecoveryError> {
    let mut candidates = Vec::new();
    let mut free = Vec::new();
    let mut file_no_max = 0;
    let mut lease_max = 0;
    let mut segment_seq_max = 0;
    for name in disk.list(wal_dir).await? {
        let Some(file_no) = parse_segment_name(&name) else { continue };
        file_no_max = file_no_max.max(file_no);
        let path = super::segment_path(wal_dir, file_no);
        let file = disk.open(&path).await?;
        let mut head = file.read_at(0, 2 * BLOCK_SIZE).await?.as_ref().to_vec();
        let mut decoded = SegmentHeader::decode(&head);
        for _ in 0..REREADS_MAX {
            if matches!(decoded, Ok(_) | Err(WalFormatError::Unwritten)) {
                break;
            }
            // Read again before judging: the first read may have been damaged in flight.
            head = file.read_at(0, 2 * BLOCK_SIZE).await?.as_ref().to_vec();
            decoded = SegmentHeader::decode(&head);
        }
        if let Ok(info) = &decoded {
            segment_seq_max = segment_seq_max.max(info.segment_seq);
        }
        match decoded {
            Ok(info) if info.segment_seq >= replay_from_seq => {
                lease_max = lease_max.max(info.version_lease);
                candidates.push(Candidate { file_no, info, file });
            }
            Ok(info) => {
                lease_max = lease_max.max(info.version_lease);
                free.push((file_no, file));
            }
            Err(header_error) => {
                refuse_if_batches_follow(&file, &path, &head, &header_error).await?;
                free.push((file_no, file));
            }
        }
    }
    // Entries read here may not be durable yet (a directory fsync that failed before a crash of
    // the process): make them durable before anything is built on them.
    disk.sync_dir(wal_dir).await?;
    candidates.sort_by_key(|c| c.info.segment_seq);
    check_chain(wal_dir, &candidates)?;
    // A segment whose header is torn (or that was never activated) may still claim a higher
    // sequence than the chain: that is caught above only if it holds batches.
    let mut recovered = RecoveredWal {
        report: RecoveryReport::default(),
        last: None,
        next_batch_seq: 1,
        version_max: 0,
        lease_max,
        live: Vec::new(),
        free,
        file_no_max,
        segment_seq_max,
        last_file: None,
        last_is_empty: false,
    };
    let count = candidates.len();
    for (index, candidate) in candidates.into_iter().enumerate() {
        replay_segment(wal_dir, &candidate, index + 1 == count, &mut recovered, apply).await?;
        // What was replayed may sit unsynced in the page cache (a failed fsync, or a process
        // killed between write and fsync): make it durable before anyone can see it.
        candidate.file.fdatasync().await?;
        recovered.live.push((candidate.file_no, candidate.info, candidate.file));
    }
    Ok(recovered)
}

/// A file whose header does not decode is free, unless a valid batch sits right behind the
/// header: then the header of a live segment was damaged, and skipping it would lose writes.
async fn refuse_if_batches_follow<F: DiskFile>(
    file: &F,
    path: &Path,
    head: &[u8],
    header_error: &WalFormatError,
) -> Result<(), RecoveryError> {
    let Some(block1) = head.get(BLOCK_SIZE..) else { return Ok(()) };
    let file_size = file.size().await?;
    let room = file_size.saturating_sub(SEGMENT_DATA_OFFSET);
    // Only a batch that fits in the file and passes its checksum counts.
    let Ok(len) = peek_batch_len(block1, room) else { return Ok(()) };
    let bytes = if len <= block1.len() {
        block1.to_vec()
    } else {
        file.read_at(SEGMENT_DATA_OFFSET, len).await?.as_ref().to_vec()
    };
    match decode_batch_unplaced(&bytes, room) {
        Ok((_, claimed)) if claimed.offset == SEGMENT_DATA_OFFSET => Err(RecoveryError::Corrupted {
            file: path.to_path_buf(),
            offset: 0,
            reason: format!(
                "segment header is invalid ({header_error}) but batch {} of segment {} follows it",
                claimed.batch_seq, claimed.segment_seq
            ),
        }),
        _ => Ok(()),
    }
}

fn check_chain<F>(wal_dir: &Path, candidates: &[Candidate<F>]) -> Result<(), RecoveryError> {
    for pair in candidates.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        if next.info.prev_segment_seq != prev.info.segment_seq {
            return Err(RecoveryError::Corrupted {
                file: super::segment_path(wal_dir, next.file_no),
                offset: 0,
                reason: format!(
                    "segment {} follows segment {} but says it follows segment {}: a segment is missing",
                    next.info.segment_seq, prev.info.segment_seq, next.info.prev_segment_seq
                ),
            });
        }
    }
    Ok(())
}

async fn replay_segment<F: DiskFile>(
    wal_dir: &Path,
    candidate: &Candidate<F>,
    is_last: bool,
    recovered: &mut RecoveredWal<F>,
    apply: &mut dyn FnMut(&RecordRef<'_>),
) -> Result<(), RecoveryError> {
    let info = &candidate.info;
    let path = super::segment_path(wal_dir, candidate.file_no);
    let corrupted = |offset, reason: String| RecoveryError::Corrupted { file: path.clone(), offset, reason };
    if let Some((prev_seq, prev_end)) = recovered.last {
        if info.prev_segment_end != prev_end {
            return Err(RecoveryError::Corrupted {
                file: recovered.last_file.clone().unwrap_or_else(|| path.clone()),
                offset: prev_end,
                reason: format!(
                    "segment {prev_seq}'s batches end at offset {prev_end}, but segment {} says they end at {}: \
                     the batch at {prev_end} is damaged and the log continues after it",
                    info.segment_seq, info.prev_segment_end
                ),
            });
        }
        if info.first_batch_seq != recovered.next_batch_seq {
            return Err(corrupted(
                0,
                format!(
                    "segment {} starts at batch {} but the log before it ends at batch {}",
                    info.segment_seq,
                    info.first_batch_seq,
                    recovered.next_batch_seq - 1
                ),
            ));
        }
    }
    let size = info.segment_size;
    let mut bytes = candidate.file.read_at(0, size as usize).await?.as_ref().to_vec();
    if (bytes.len() as u64) < size {
        return Err(corrupted(bytes.len() as u64, format!("segment is {} bytes, its header says {size}", bytes.len())));
    }
    let mut offset = SEGMENT_DATA_OFFSET;
    let mut batch_seq = info.first_batch_seq;
    let mut rereads = 0;
    let stop = loop {
        if offset >= size {
            break None;
        }
        let place = BatchPlace { batch_seq, segment_seq: info.segment_seq, offset, nonce: info.nonce };
        match decode_batch(&bytes[offset as usize..], place, size - offset) {
            Ok(batch) if batch.batch_seq == batch_seq => {
                let mut records = 0u64;
                for record in batch.records() {
                    let record = record.map_err(|e| corrupted(offset, format!("batch {batch_seq}: {e}")))?;
                    recovered.version_max = recovered.version_max.max(record.version);
                    apply(&record);
                    records += 1;
                }
                recovered.lease_max = recovered.lease_max.max(batch.version_lease);
                recovered.report.batches_replayed += 1;
                recovered.report.records_replayed += records;
                offset += batch.framed_len();
                batch_seq += 1;
                rereads = 0;
            }
            Ok(batch) => {
                return Err(corrupted(
                    offset,
                    format!("batch {} found where batch {batch_seq} belongs", batch.batch_seq),
                ));
            }
            Err(WalFormatError::Unwritten) => break Some(WalFormatError::Unwritten),
            Err(error) if rereads < REREADS_MAX => {
                // Read the rest again before judging: the first read may have been damaged in flight.
                rereads += 1;
                let again = candidate.file.read_at(offset, (size - offset) as usize).await?;
                bytes.truncate(offset as usize);
                bytes.extend_from_slice(again.as_ref());
                if bytes.len() as u64 != size {
                    return Err(corrupted(offset, format!("re-read after {error} came back short")));
                }
            }
            Err(error) => break Some(error),
        }
    };
    recovered.report.segments_replayed += 1;
    recovered.last = Some((info.segment_seq, offset));
    recovered.last_is_empty = offset == SEGMENT_DATA_OFFSET;
    recovered.last_file = Some(path.clone());
    recovered.next_batch_seq = batch_seq;
    let Some(error) = stop else { return Ok(()) };
    if !is_last {
        // The successor's header is checked against this end when it is replayed.
        return Ok(());
    }
    if let Some(later) = find_valid_batch_after(&bytes, info, offset) {
        return Err(corrupted(
            offset,
            format!(
                "invalid batch ({error}) is followed by valid batch {} at offset {}: the log is damaged in the middle",
                later.0, later.1
            ),
        ));
    }
    if error != WalFormatError::Unwritten {
        recovered.report.torn_tail = Some(TornTail { file: path, offset, reason: error.to_string() });
    }
    Ok(())
}

/// Looks for a batch of this segment at any block after `end`.
fn find_valid_batch_after(bytes: &[u8], info: &SegmentInfo, end: u64) -> Option<(u64, u64)> {
    let block = BLOCK_SIZE as u64;
    let mut at = end + block;
    while at < info.segment_size {
        let place = BatchPlace { batch_seq: 0, segment_seq: info.segment_seq, offset: at, nonce: info.nonce };
        if let Ok(batch) = decode_batch(&bytes[at as usize..], place, info.segment_size - at) {
            return Some((batch.batch_seq, at));
        }
        at += block;
    }
    None
}
