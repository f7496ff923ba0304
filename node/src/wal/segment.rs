//! Segment files: preallocated by writing zeros, activated by writing their header.
//!
//! Zeros are written rather than fallocated: fallocate leaves unwritten extents, and the first
//! write into an unwritten extent turns every `fdatasync` into a filesystem journal commit.
//! A recycled segment is already fully written, so it needs only a new header.

use super::segment_path;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use strata_format::BLOCK_SIZE;
use strata_format::wal::{SegmentHeader, SegmentInfo};
use strata_ioengine::{Disk, DiskError, DiskFile};

/// Zero-fill writes are issued in chunks of this size.
const FILL_CHUNK_BYTES: u64 = 1 << 20;

/// A segment file with all its bytes written, ready to become the active segment.
#[derive(Debug)]
pub struct SpareSegment<F> {
    pub file: F,
    pub file_no: u32,
    /// Zero bytes written to prepare it (0 for a recycled segment): a one-time cost per file.
    pub zero_filled: u64,
}

/// The segment batches are appended to.
#[derive(Debug)]
pub struct ActiveSegment<F> {
    pub file: Rc<F>,
    pub file_no: u32,
    pub info: SegmentInfo,
    /// Where the next batch goes.
    pub offset: u64,
}

impl<F: DiskFile> ActiveSegment<F> {
    #[must_use]
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Bytes left for batches.
    #[must_use]
    pub fn room(&self) -> u64 {
        self.info.segment_size - self.offset
    }
}

/// Makes `file` (or a new file `file_no`) a fully written segment of `segment_bytes`.
pub async fn prepare_segment<D: Disk>(
    disk: &D,
    wal_dir: &Path,
    file_no: u32,
    existing: Option<D::File>,
    segment_bytes: u64,
) -> Result<SpareSegment<D::File>, DiskError> {
    assert!(segment_bytes.is_multiple_of(BLOCK_SIZE as u64) && segment_bytes >= 2 * BLOCK_SIZE as u64);
    let file = match existing {
        Some(file) => file,
        None => disk.create(&segment_path(wal_dir, file_no)).await?,
    };
    let size = file.size().await?;
    let mut at = size - size % BLOCK_SIZE as u64;
    let zero_filled = segment_bytes.saturating_sub(at);
    if at < segment_bytes {
        let zeros = vec![0u8; FILL_CHUNK_BYTES.min(segment_bytes) as usize];
        while at < segment_bytes {
            let len = (segment_bytes - at).min(FILL_CHUNK_BYTES) as usize;
            file.write_at(&zeros[..len], at).await?;
            at += len as u64;
        }
        file.fdatasync().await?;
    }
    Ok(SpareSegment { file, file_no, zero_filled })
}

/// Writes and syncs the header that makes a spare segment the active one.
pub async fn activate_segment<F: DiskFile>(
    spare: SpareSegment<F>,
    info: SegmentInfo,
) -> Result<ActiveSegment<F>, DiskError> {
    let block = SegmentHeader::encode_block(&info);
    spare.file.write_at(&block, 0).await?;
    spare.file.fdatasync().await?;
    Ok(ActiveSegment {
        file: Rc::new(spare.file),
        file_no: spare.file_no,
        info,
        offset: strata_format::wal::SEGMENT_DATA_OFFSET,
    })
}

/// A path for messages about segment `file_no`.
#[must_use]
pub fn describe(wal_dir: &Path, file_no: u32) -> PathBuf {
    segment_path(wal_dir, file_no)
}
