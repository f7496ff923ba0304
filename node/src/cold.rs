//! The cold tier of one shard: reading cold blocks from the HDDs, writing them for the sinker,
//! per-disk counters, the down state of a disk, and the repair queue.
//!
//! Each disk is its own filesystem. A shard's cold files live under `<disk>/sNNN/`; which disk
//! holds a bucket's window is [`disk_of`] of the bucket, the window and its epoch's disk count.
//!
//! Invariant: a block is returned only after its CRC (bound to file, offset and generation)
//! checks; a block that fails twice goes on the repair queue and the read fails with
//! [`ColdError::Corrupted`]. An I/O error marks the disk down: its reads fail at once, other
//! disks keep serving.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use strata_format::cold::{
    BlockLink, COLD_BLOCK_HEADER_SIZE, COLD_BLOCK_MAX, COLD_DATA_START, ColdBlock, ColdFileHeader, ColdFileId,
    ColdLink, decode_cold_block, disk_of, encode_cold_block,
};
use strata_format::key::Bucket;
use strata_format::manifest::ColdWindow;
use strata_format::table::{ENTRY_HEADER_SIZE, push_entry};
use strata_format::version::Version;
use strata_ioengine::{Disk, DiskError, DiskFile};

/// How a shard reaches its cold disks.
#[derive(Debug, Clone)]
pub struct ColdOptions {
    /// Disk roots, by disk index.
    pub disks: Vec<PathBuf>,
    /// The placement epoch new sinks use (its disk count is `disks.len()`).
    pub epoch: u32,
    /// This shard's index (its files live in `sNNN/` on every disk).
    pub shard: u16,
    /// Every cold file is preallocated to this size; a window's blocks on a disk continue in
    /// the next part file when one fills.
    pub file_bytes: u64,
    /// Windows that ended longer ago than this are sunk.
    pub hot_horizon_us: u64,
    /// The sinker writes to each disk at most this many bytes per second.
    pub sink_bytes_per_s: u64,
    /// Raw entry bytes per cold block before it is closed (the block, compressed, stays at
    /// most 64 KiB on disk).
    pub block_raw_bytes: usize,
    /// Disks out of service from the start, and why (see `disks::prepare`).
    pub disks_down: Vec<(u16, String)>,
    /// Test-only mutation: commit sinks without syncing their files.
    #[cfg(feature = "mutations")]
    pub skip_sync: bool,
}

impl ColdOptions {
    #[must_use]
    pub fn new(disks: Vec<PathBuf>, shard: u16) -> Self {
        Self {
            disks,
            epoch: 1,
            shard,
            file_bytes: 1 << 30,
            hot_horizon_us: 7 * 86_400_000_000,
            sink_bytes_per_s: 32 << 20,
            block_raw_bytes: COLD_BLOCK_MAX - COLD_BLOCK_HEADER_SIZE,
            disks_down: Vec::new(),
            #[cfg(feature = "mutations")]
            skip_sync: false,
        }
    }
}

/// Work counted per disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ColdDiskStats {
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub write_bytes: u64,
    pub errors: u64,
    pub corrupt_blocks: u64,
}

/// A block that failed its check (or could not be read), waiting for `strata-tool repair`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBlock {
    pub disk: u16,
    pub path: PathBuf,
    pub offset: u64,
    pub len: u32,
    pub reason: String,
}

/// Why a cold read failed.
#[derive(Debug, Clone)]
pub enum ColdError {
    /// The block is damaged or missing; nothing from it was returned. It is on the repair queue.
    Corrupted { disk: u16, path: PathBuf, offset: u64, reason: String },
    /// The disk failed earlier (or now) and is out of service until restart.
    DiskDown { disk: u16, reason: String },
    /// The manifest names a disk the node was not started with.
    NoSuchDisk { disk: u16, disks: usize },
}

impl std::fmt::Display for ColdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Corrupted { disk, path, offset, reason } => {
                write!(f, "cold block on disk {disk} ({} at offset {offset}) is unusable: {reason}", path.display())
            }
            Self::DiskDown { disk, reason } => write!(f, "cold disk {disk} is down: {reason}"),
            Self::NoSuchDisk { disk, disks } => {
                write!(f, "cold data is placed on disk {disk} but the node has {disks} disks")
            }
        }
    }
}

impl std::error::Error for ColdError {}

/// Why [`ColdStore::read_raw`] read nothing.
#[derive(Debug)]
pub enum RawReadError {
    /// The request names another shard's file or bytes past the file's end.
    Refused(String),
    /// The disk is down, unknown, or failed the read.
    Cold(ColdError),
}

impl std::fmt::Display for RawReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(why) => f.write_str(why),
            Self::Cold(e) => write!(f, "{e}"),
        }
    }
}

struct DiskState {
    root: PathBuf,
    down: RefCell<Option<String>>,
    stats: Cell<ColdDiskStats>,
}

/// Open cold files kept for reads.
const OPEN_FILES_MAX: usize = 256;

/// Open cold files, by disk and file.
type OpenFiles<F> = HashMap<(u16, ColdFileId), Rc<F>>;

/// One shard's view of the cold disks.
pub struct ColdStore<D: Disk> {
    disk: D,
    pub options: ColdOptions,
    disks: Vec<DiskState>,
    files: RefCell<OpenFiles<D::File>>,
    repair_queue: RefCell<Vec<BadBlock>>,
}

impl<D: Disk> std::fmt::Debug for ColdStore<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColdStore").field("disks", &self.options.disks).finish()
    }
}

impl<D: Disk> ColdStore<D> {
    #[must_use]
    pub fn new(disk: D, options: ColdOptions) -> Self {
        let disks = options
            .disks
            .iter()
            .map(|root| DiskState { root: root.clone(), down: RefCell::new(None), stats: Cell::default() })
            .collect();
        let store = Self { disk, options, disks, files: RefCell::default(), repair_queue: RefCell::default() };
        for (disk, why) in store.options.disks_down.clone() {
            if usize::from(disk) < store.disks.len() {
                *store.disks[usize::from(disk)].down.borrow_mut() = Some(why);
            }
        }
        store
    }

    /// The directory holding this shard's cold files on `disk`.
    #[must_use]
    pub fn shard_dir(&self, disk: u16) -> PathBuf {
        self.disks[usize::from(disk)].root.join(ColdFileId::shard_dir(self.options.shard))
    }

    #[must_use]
    pub fn file_path(&self, disk: u16, file: ColdFileId) -> PathBuf {
        self.shard_dir(disk).join(file.file_name())
    }

    #[must_use]
    pub fn disk_count(&self) -> usize {
        self.disks.len()
    }

    /// Per-disk counters, by disk index.
    #[must_use]
    pub fn disk_stats(&self) -> Vec<ColdDiskStats> {
        self.disks.iter().map(|d| d.stats.get()).collect()
    }

    /// Why each disk is down (`None`: in service).
    #[must_use]
    pub fn disk_down(&self) -> Vec<Option<String>> {
        self.disks.iter().map(|d| d.down.borrow().clone()).collect()
    }

    /// Blocks found bad since the shard opened.
    #[must_use]
    pub fn repair_queue(&self) -> Vec<BadBlock> {
        self.repair_queue.borrow().clone()
    }

    fn count(&self, disk: u16, f: impl FnOnce(&mut ColdDiskStats)) {
        let cell = &self.disks[usize::from(disk)].stats;
        let mut stats = cell.get();
        f(&mut stats);
        cell.set(stats);
    }

    /// Takes `disk` out of service (the first reason wins).
    pub fn mark_down(&self, disk: u16, reason: String) {
        let mut down = self.disks[usize::from(disk)].down.borrow_mut();
        if down.is_none() {
            tracing::error!(disk, root = %self.disks[usize::from(disk)].root.display(), %reason, "cold disk is now down");
            *down = Some(reason);
        }
    }

    fn check_up(&self, disk: u16) -> Result<(), ColdError> {
        match self.disks.get(usize::from(disk)) {
            None => Err(ColdError::NoSuchDisk { disk, disks: self.disks.len() }),
            Some(d) => match d.down.borrow().as_ref() {
                Some(reason) => Err(ColdError::DiskDown { disk, reason: reason.clone() }),
                None => Ok(()),
            },
        }
    }

    fn queue_bad(&self, bad: BadBlock) {
        tracing::error!(disk = bad.disk, file = %bad.path.display(), offset = bad.offset, reason = %bad.reason, "cold block is bad: queued for repair");
        self.count(bad.disk, |s| s.corrupt_blocks += 1);
        let mut queue = self.repair_queue.borrow_mut();
        if !queue.iter().any(|b| b.path == bad.path && b.offset == bad.offset) {
            queue.push(bad);
        }
    }

    async fn open_file(&self, disk: u16, file: ColdFileId) -> Result<Rc<D::File>, DiskError> {
        if let Some(f) = self.files.borrow().get(&(disk, file)) {
            return Ok(f.clone());
        }
        let opened = Rc::new(self.disk.open(&self.file_path(disk, file)).await?);
        let mut files = self.files.borrow_mut();
        if files.len() >= OPEN_FILES_MAX {
            files.clear();
        }
        files.insert((disk, file), opened.clone());
        Ok(opened)
    }

    /// Forgets open handles of `window`'s files (before they are removed).
    pub fn forget_window(&self, window: u64) {
        self.files.borrow_mut().retain(|(_, f), _| f.window != window);
    }

    /// Reads and checks the block `linked` names, of `bucket` in the sunk window `cold`.
    pub async fn read_block(
        &self,
        cold: &ColdWindow,
        bucket: Bucket,
        linked: &BlockLink,
    ) -> Result<ColdBlock, ColdError> {
        let link = linked.link;
        let disk = disk_of(bucket, cold.window, cold.disks);
        self.check_up(disk)?;
        let file =
            ColdFileId { window: cold.window, shard: self.options.shard, generation: cold.generation, part: link.part };
        let path = self.file_path(disk, file);
        let corrupted = |reason: String| ColdError::Corrupted { disk, path: path.clone(), offset: link.offset, reason };
        let bad = |reason: String| BadBlock { disk, path: path.clone(), offset: link.offset, len: link.len, reason };
        let handle = match self.open_file(disk, file).await {
            Ok(h) => h,
            Err(e) if e.is_not_found() => {
                let reason = "the cold file is missing".to_string();
                self.queue_bad(bad(reason.clone()));
                return Err(corrupted(reason));
            }
            Err(e) => return Err(self.failed(disk, &e)),
        };
        // A read can be damaged in flight: only damage that persists over three reads is
        // corruption.
        let mut outcome = Err(strata_format::cold::ColdFormatError::Unwritten);
        for _ in 0..3 {
            let bytes = match handle.read_at(link.offset, link.len as usize).await {
                Ok(b) => b,
                Err(e) => return Err(self.failed(disk, &e)),
            };
            self.count(disk, |s| {
                s.reads += 1;
                s.read_bytes += u64::from(link.len);
            });
            outcome = decode_cold_block(bytes.as_ref(), file, link.offset);
            if outcome.is_ok() {
                break;
            }
        }
        match outcome {
            Ok(block) if block.bucket == bucket && block.crc == linked.crc => Ok(block),
            Ok(block) => {
                let reason = if block.bucket == bucket {
                    format!(
                        "the block is not the one its link names (CRC {:#010x}, the link says {:#010x})",
                        block.crc, linked.crc
                    )
                } else {
                    format!("the block holds bucket {}, the link was for bucket {bucket}", block.bucket)
                };
                self.queue_bad(bad(reason.clone()));
                Err(corrupted(reason))
            }
            Err(e) => {
                self.queue_bad(bad(e.to_string()));
                Err(corrupted(e.to_string()))
            }
        }
    }

    /// `len` raw bytes at `offset` of this shard's cold file `file` on `disk`, unchecked (a
    /// peer's `strata-tool repair` or `rebuild-disk` copies them, and verifies what it gets);
    /// `None` when the file does not exist.
    pub async fn read_raw(
        &self,
        disk: u16,
        file: ColdFileId,
        offset: u64,
        len: u32,
    ) -> Result<Option<Vec<u8>>, RawReadError> {
        if file.shard != self.options.shard {
            return Err(RawReadError::Refused(format!(
                "file {} is shard {}'s, this is shard {}",
                file.relative_path(),
                file.shard,
                self.options.shard
            )));
        }
        self.check_up(disk).map_err(RawReadError::Cold)?;
        let handle = match self.open_file(disk, file).await {
            Ok(h) => h,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(RawReadError::Cold(self.failed(disk, &e))),
        };
        let size = handle.size().await.map_err(|e| RawReadError::Cold(self.failed(disk, &e)))?;
        if offset.saturating_add(u64::from(len)) > size {
            return Err(RawReadError::Refused(format!(
                "{len} bytes at offset {offset} pass the end of {} ({size} bytes)",
                file.relative_path()
            )));
        }
        let bytes =
            handle.read_at(offset, len as usize).await.map_err(|e| RawReadError::Cold(self.failed(disk, &e)))?;
        self.count(disk, |s| {
            s.reads += 1;
            s.read_bytes += u64::from(len);
        });
        Ok(Some(bytes.as_ref().to_vec()))
    }

    fn failed(&self, disk: u16, e: &DiskError) -> ColdError {
        self.count(disk, |s| s.errors += 1);
        let reason = e.to_string();
        self.mark_down(disk, reason.clone());
        ColdError::DiskDown { disk, reason }
    }

    /// This shard's cold files on `disk`: path and identity (none when the directory is missing).
    async fn shard_files(&self, disk: u16) -> Result<Vec<(PathBuf, ColdFileId)>, DiskError> {
        let dir = self.shard_dir(disk);
        let names = match self.disk.list(&dir).await {
            Ok(names) => names,
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(names
            .into_iter()
            .filter_map(|name| ColdFileId::parse(self.options.shard, &name).map(|id| (dir.join(&name), id)))
            .collect())
    }

    /// Removes every file of `window` in this shard's directories except those of generation
    /// `keep` (all of them when `None`). Returns how many were removed.
    pub async fn remove_window_files(&self, window: u64, keep: Option<u32>) -> Result<usize, DiskError> {
        self.forget_window(window);
        let mut removed = 0;
        for disk in 0..self.disks.len() as u16 {
            if self.check_up(disk).is_err() {
                continue;
            }
            for (path, id) in self.shard_files(disk).await? {
                if id.window == window && Some(id.generation) != keep {
                    self.disk.remove(&path).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Removes cold files of this shard that no live window names (left by a sink that was
    /// rolled back, or by one that committed and crashed before removing the old generation).
    pub async fn remove_orphans(
        &self,
        live: &std::collections::BTreeMap<u64, ColdWindow>,
    ) -> Result<Vec<PathBuf>, DiskError> {
        let mut removed = Vec::new();
        for disk in 0..self.disks.len() as u16 {
            for (path, id) in self.shard_files(disk).await? {
                let wanted = live.get(&id.window).is_some_and(|c| {
                    c.generation == id.generation
                        && c.parts.get(usize::from(disk)).is_some_and(|parts| id.part < *parts)
                });
                if !wanted {
                    self.disk.remove(&path).await?;
                    removed.push(path);
                }
            }
        }
        Ok(removed)
    }
}

/// One disk's part file being filled by the sinker.
struct PartWriter<F> {
    file: F,
    id: ColdFileId,
    /// Where the next block goes.
    offset: u64,
    /// Blocks encoded but not yet written, and where they start.
    buffer: Vec<u8>,
    buffer_at: u64,
    blocks: u32,
}

/// Bytes of blocks gathered per disk before one write.
const SINK_WRITE_BYTES: usize = 1 << 20;

/// Writes one window's cold blocks, per bucket, to the files its placement names. Nothing it
/// writes is live until the manifest edit that names the generation.
pub struct ColdWriter<'a, D: Disk> {
    store: &'a ColdStore<D>,
    window: u64,
    generation: u32,
    epoch: u32,
    disks: u16,
    parts: Vec<u16>,
    open: Vec<Option<PartWriter<D::File>>>,
    /// The block being filled: its bucket, raw entries, the key of each and the highest version.
    bucket: Option<Bucket>,
    raw: Vec<u8>,
    keys: Vec<Vec<u8>>,
    max_version: Version,
    pub blocks: u64,
    pub entries: u64,
    pub bytes: u64,
    /// Bytes written per disk, and when the sink started (for pacing).
    written: Vec<u64>,
    started_us: u64,
}

/// A written block as the sinker hands it over for its link table.
#[derive(Debug)]
pub struct LinkedBlock {
    /// The block's keys, in order (the last one keys its link; all go in the table's filter).
    pub keys: Vec<Vec<u8>>,
    /// The highest version in the block.
    pub version: Version,
    pub link: BlockLink,
}

impl<'a, D: Disk> ColdWriter<'a, D> {
    #[must_use]
    pub fn new(store: &'a ColdStore<D>, window: u64, generation: u32, epoch: u32, disks: u16, now_us: u64) -> Self {
        Self {
            store,
            window,
            generation,
            epoch,
            disks,
            parts: vec![0; usize::from(disks)],
            open: (0..disks).map(|_| None).collect(),
            bucket: None,
            raw: Vec::new(),
            keys: Vec::new(),
            max_version: 0,
            blocks: 0,
            entries: 0,
            bytes: 0,
            written: vec![0; usize::from(disks)],
            started_us: now_us,
        }
    }

    /// Adds one entry (`None`: a tombstone that must stay); entries arrive in key order, so
    /// buckets arrive in order. Returns the block that was closed to make room, with its link.
    pub async fn add(
        &mut self,
        key: &[u8],
        version: Version,
        value: Option<&[u8]>,
        clock: &impl strata_ioengine::Clock,
    ) -> Result<Option<LinkedBlock>, (u16, DiskError)> {
        let bucket = u16::from_be_bytes([key[0], key[1]]);
        let entry_len = ENTRY_HEADER_SIZE + key.len() + value.map_or(0, <[u8]>::len);
        let mut closed = None;
        let full = !self.raw.is_empty() && self.raw.len() + entry_len > self.store.options.block_raw_bytes;
        if self.bucket.is_some_and(|b| b != bucket) || full {
            closed = self.close_block(clock).await?;
        }
        self.bucket = Some(bucket);
        push_entry(&mut self.raw, key, version, value);
        self.keys.push(key.to_vec());
        self.max_version = self.max_version.max(version);
        Ok(closed)
    }

    /// Closes the open block (if any): encodes it at its place and returns its link.
    async fn close_block(
        &mut self,
        clock: &impl strata_ioengine::Clock,
    ) -> Result<Option<LinkedBlock>, (u16, DiskError)> {
        let Some(bucket) = self.bucket.take() else { return Ok(None) };
        let disk = disk_of(bucket, self.window, self.disks);
        let file_bytes = self.store.options.file_bytes;
        // The encoded length does not depend on the offset: encode once to learn it.
        let probe = encode_cold_block(self.file_id(0), COLD_DATA_START, bucket, &self.raw, self.keys.len() as u32);
        let len = probe.len() as u64;
        let fits = self.open[usize::from(disk)].as_ref().is_some_and(|p| p.offset + len <= file_bytes);
        if !fits {
            if self.open[usize::from(disk)].is_some() {
                self.finish_part(disk).await.map_err(|e| (disk, e))?;
            }
            self.start_part(disk, len).await.map_err(|e| (disk, e))?;
        }
        let part = self.open[usize::from(disk)].as_mut().expect("a part is open");
        let offset = part.offset;
        let bytes = encode_cold_block(part.id, offset, bucket, &self.raw, self.keys.len() as u32);
        debug_assert_eq!(bytes.len() as u64, len);
        if part.buffer.is_empty() {
            part.buffer_at = offset;
        }
        part.buffer.extend_from_slice(&bytes);
        part.offset += len;
        part.blocks += 1;
        let link = ColdLink { part: part.id.part, offset, len: len as u32 };
        let crc = strata_format::cold::peek_cold_block(&bytes).expect("a block just encoded").crc.get();
        self.blocks += 1;
        self.entries += self.keys.len() as u64;
        self.bytes += len;
        self.raw.clear();
        let linked = LinkedBlock {
            link: BlockLink::new(link, crc, &self.keys),
            keys: std::mem::take(&mut self.keys),
            version: std::mem::take(&mut self.max_version),
        };
        if part.buffer.len() >= SINK_WRITE_BYTES {
            self.write_buffer(disk, clock).await.map_err(|e| (disk, e))?;
        }
        Ok(Some(linked))
    }

    fn file_id(&self, part: u16) -> ColdFileId {
        ColdFileId { window: self.window, shard: self.store.options.shard, generation: self.generation, part }
    }

    async fn start_part(&mut self, disk: u16, first_block: u64) -> Result<(), DiskError> {
        let part_no = self.parts[usize::from(disk)];
        let id = self.file_id(part_no);
        let file_bytes = self.store.options.file_bytes;
        if COLD_DATA_START + first_block > file_bytes {
            return Err(DiskError::new(
                "sink",
                &self.store.file_path(disk, id),
                None,
                std::io::Error::other(format!(
                    "a {first_block}-byte block does not fit a {file_bytes}-byte cold file (raise [cold] file-size)"
                )),
            ));
        }
        self.store.disk.create_dir_all(&self.store.shard_dir(disk)).await?;
        let path = self.store.file_path(disk, id);
        // A file left by an earlier attempt of the same generation (rolled back) is replaced.
        match self.store.disk.remove(&path).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let file = self.store.disk.create(&path).await?;
        file.allocate(file_bytes).await?;
        self.parts[usize::from(disk)] = part_no + 1;
        self.open[usize::from(disk)] = Some(PartWriter {
            file,
            id,
            offset: COLD_DATA_START,
            buffer: Vec::new(),
            buffer_at: COLD_DATA_START,
            blocks: 0,
        });
        Ok(())
    }

    /// Writes the blocks `disk`'s open part has gathered (one write), counting them.
    async fn write_gathered(&mut self, disk: u16) -> Result<(), DiskError> {
        let Some(part) = self.open[usize::from(disk)].as_mut() else { return Ok(()) };
        if part.buffer.is_empty() {
            return Ok(());
        }
        part.file.write_at(&part.buffer, part.buffer_at).await?;
        let n = part.buffer.len() as u64;
        part.buffer.clear();
        self.store.count(disk, |s| {
            s.writes += 1;
            s.write_bytes += n;
        });
        self.written[usize::from(disk)] += n;
        Ok(())
    }

    /// Writes what `disk` has gathered, then waits while the disk is ahead of its byte budget.
    async fn write_buffer(&mut self, disk: u16, clock: &impl strata_ioengine::Clock) -> Result<(), DiskError> {
        self.write_gathered(disk).await?;
        let rate = self.store.options.sink_bytes_per_s.max(1);
        let due_us = self.started_us.saturating_add(self.written[usize::from(disk)].saturating_mul(1_000_000) / rate);
        let now = clock.now_us();
        if due_us > now {
            clock.sleep_us(due_us - now).await;
        }
        Ok(())
    }

    /// Writes a part's remaining blocks and its header, and syncs it.
    async fn finish_part(&mut self, disk: u16) -> Result<(), DiskError> {
        self.write_gathered(disk).await?;
        let Some(part) = self.open[usize::from(disk)].take() else { return Ok(()) };
        let header = ColdFileHeader {
            file: part.id,
            disk,
            epoch: self.epoch,
            block_count: part.blocks,
            used_bytes: part.offset,
            file_bytes: self.store.options.file_bytes,
        };
        part.file.write_at(&header.encode(), 0).await?;
        #[cfg(feature = "mutations")]
        if self.store.options.skip_sync {
            return Ok(());
        }
        part.file.fdatasync().await?;
        Ok(())
    }

    /// Closes the last block, writes and syncs every part; returns the window's cold record.
    pub async fn finish(
        mut self,
        clock: &impl strata_ioengine::Clock,
    ) -> Result<(ColdWindow, Option<LinkedBlock>), (u16, DiskError)> {
        let tail = self.close_block(clock).await?;
        for disk in 0..self.disks {
            self.finish_part(disk).await.map_err(|e| (disk, e))?;
        }
        let cold = ColdWindow {
            window: self.window,
            epoch: self.epoch,
            disks: self.disks,
            generation: self.generation,
            parts: self.parts.clone(),
            blocks: self.blocks,
            entries: self.entries,
            bytes: self.bytes,
        };
        Ok((cold, tail))
    }
}

/// Reads the label at the root of a disk, if it has one.
pub fn read_label(root: &Path) -> std::io::Result<Option<strata_format::cold::DiskLabel>> {
    match std::fs::read(root.join(strata_format::cold::DISK_LABEL_FILE)) {
        Ok(bytes) => strata_format::cold::DiskLabel::decode(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("disk label: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
