//! Cold-disk tools: `scrub` (verify every block of every cold file the manifests name, at high
//! queue depth on io_uring), `repair` (rewrite damaged ranges from a peer's byte-identical copy,
//! verifying after the write), `rebuild-disk` (refill a replaced disk from the same-numbered disk
//! of a peer, resumably), and `route` (where a key lives).
//!
//! The tools read a node's layout from its data directory: `SHARDS`, `PLACEMENT`, `NODE_ID`, each
//! shard's manifest. Writing tools take the data directory's `LOCK`, so they refuse to run beside
//! the node.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use strata_format::cold::{
    COLD_BLOCK_HEADER_SIZE, COLD_DATA_START, ColdFileHeader, ColdFileId, DISK_LABEL_FILE, DiskLabel, check_cold_block,
    header_file, peek_cold_block,
};
use strata_format::manifest::decode_record;
use strata_ioengine::uring::{self, JoinHandle};
use strata_ioengine::{Disk, DiskError, DiskFile, UringDisk};
use strata_node::lsm::manifest::ManifestState;

/// Bytes per read while scrubbing or copying.
const CHUNK: u64 = 1 << 20;
/// Reads in flight per file while scrubbing.
const QUEUE_DEPTH: usize = 32;
/// The largest block a scrub will believe a header about (one value of the largest size).
const BLOCK_LEN_MAX: u64 = 4 << 20;

/// A node's layout, read from its data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub data_dir: PathBuf,
    pub hdd: Vec<PathBuf>,
    pub shards: u16,
    pub epochs: Vec<u16>,
}

impl Layout {
    pub fn read(data_dir: &Path, hdd: &[PathBuf]) -> Result<Self, String> {
        let shards_path = data_dir.join("SHARDS");
        let text = std::fs::read_to_string(&shards_path)
            .map_err(|e| format!("cannot read {} (is this a node's data directory?): {e}", shards_path.display()))?;
        let shards: u16 =
            text.trim().parse().map_err(|_| format!("{} is damaged: {:?}", shards_path.display(), text.trim()))?;
        let epochs = strata_node::disks::read_epochs(data_dir)?.ok_or_else(|| {
            format!("{} has no PLACEMENT file: the node never started with cold disks", data_dir.display())
        })?;
        let hdd = if hdd.is_empty() { strata_node::disks::default_hdd_paths(data_dir) } else { hdd.to_vec() };
        let newest = usize::from(*epochs.last().expect("read_epochs returns at least one"));
        if hdd.len() < newest {
            return Err(format!("{} disks given, but the node's newest placement epoch has {newest}", hdd.len()));
        }
        Ok(Self { data_dir: data_dir.to_path_buf(), hdd, shards, epochs })
    }

    /// The live state of shard `s`'s manifest (read-only decode).
    pub fn manifest(&self, shard: u16) -> Result<ManifestState, String> {
        let path = self.data_dir.join(format!("shard-{shard}")).join("tables").join("MANIFEST");
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ManifestState::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let mut state = ManifestState::default();
        let (mut offset, mut seq) = (0usize, 1u64);
        while offset < bytes.len() {
            match decode_record(&bytes[offset..], offset as u64) {
                Ok((record_seq, edit, len)) if record_seq == seq => {
                    state.apply(&edit);
                    offset += len as usize;
                    seq += 1;
                }
                // The first invalid record ends the log (a torn tail; the node says more at open).
                _ => break,
            }
        }
        Ok(state)
    }

    /// Every cold file the manifests name, on the given disks (all when `None`).
    pub fn expected_files(&self, only_disk: Option<u16>) -> Result<Vec<ExpectedFile>, String> {
        let mut files = Vec::new();
        for shard in 0..self.shards {
            for cold in self.manifest(shard)?.cold_windows.values() {
                for (disk, parts) in cold.parts.iter().enumerate() {
                    let disk = disk as u16;
                    if only_disk.is_some_and(|d| d != disk) {
                        continue;
                    }
                    for part in 0..*parts {
                        let id = ColdFileId { window: cold.window, shard, generation: cold.generation, part };
                        let path = self.hdd[usize::from(disk)].join(id.relative_path());
                        files.push(ExpectedFile { disk, id, path });
                    }
                }
            }
        }
        Ok(files)
    }
}

#[derive(Debug, Clone)]
pub struct ExpectedFile {
    pub disk: u16,
    pub id: ColdFileId,
    pub path: PathBuf,
}

/// A damaged range of a cold file (or the whole file, when it is missing).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Damage {
    pub disk: u16,
    pub file: PathBuf,
    pub offset: u64,
    pub len: u64,
    pub reason: String,
    pub missing: bool,
}

/// What a scan of one file found.
#[derive(Debug, Clone, Default)]
pub struct FileScan {
    pub blocks: u64,
    pub bytes: u64,
    pub damage: Vec<Damage>,
}

/// Scans one cold file: its header, then every block up to its used end, reading `CHUNK`s with
/// `QUEUE_DEPTH` reads in flight. A damaged range runs from the first bad byte to the next block
/// that checks (found by trying every 4 KiB boundary).
pub async fn scan_file(disk: u16, path: &Path, id: ColdFileId) -> Result<FileScan, DiskError> {
    let mut scan = FileScan::default();
    let damage = |offset: u64, len: u64, reason: String, missing: bool| Damage {
        disk,
        file: path.to_path_buf(),
        offset,
        len,
        reason,
        missing,
    };
    let file = match UringDisk.open(path).await {
        Ok(file) => Rc::new(file),
        Err(e) if e.is_not_found() => {
            scan.damage.push(damage(0, 0, "the file is missing".into(), true));
            return Ok(scan);
        }
        Err(e) => return Err(e),
    };
    let size = file.size().await?;
    let head = file.read_at(0, COLD_DATA_START as usize).await?;
    let end = match ColdFileHeader::decode(head.as_ref()) {
        Ok(h) if h.file == id && h.used_bytes <= size => h.used_bytes,
        Ok(h) => {
            scan.damage.push(damage(
                0,
                COLD_DATA_START,
                format!("file header names {}", h.file.relative_path()),
                false,
            ));
            size
        }
        Err(e) => {
            scan.damage.push(damage(0, COLD_DATA_START, format!("file header: {e}"), false));
            size
        }
    };
    let header_bad = !scan.damage.is_empty();
    let mut reader = ChunkReader::new(file, COLD_DATA_START, end);
    let mut pos = COLD_DATA_START;
    let mut bad: Option<(u64, String)> = None;
    while pos < end {
        match check_at(&mut reader, pos, end, id).await? {
            Ok(len) => {
                if let Some((start, reason)) = bad.take() {
                    scan.damage.push(damage(start, pos - start, reason, false));
                }
                scan.blocks += 1;
                scan.bytes += len;
                pos += len;
            }
            // With a damaged file header the used end is unknown: zeros after the last block
            // are the unused, preallocated rest (a damaged range ends where they begin).
            Err(strata_format::cold::ColdFormatError::Unwritten) if header_bad => break,
            Err(e) => {
                bad.get_or_insert((pos, e.to_string()));
                pos += COLD_DATA_START;
            }
        }
    }
    if let Some((start, reason)) = bad.take() {
        scan.damage.push(damage(start, pos.min(end) - start, reason, false));
    }
    Ok(scan)
}

/// Checks the block at `pos`: its length on success.
async fn check_at(
    reader: &mut ChunkReader,
    pos: u64,
    end: u64,
    id: ColdFileId,
) -> Result<Result<u64, strata_format::cold::ColdFormatError>, DiskError> {
    use strata_format::cold::ColdFormatError;
    let head = reader.bytes(pos, COLD_BLOCK_HEADER_SIZE as u64).await?;
    let header = match peek_cold_block(head) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    let len = u64::from(header.block_len.get());
    if len == 0 || len > BLOCK_LEN_MAX || pos + len > end {
        return Ok(Err(ColdFormatError::BadBlock { reason: "block length runs past the file's used end" }));
    }
    let bytes = reader.bytes(pos, len).await?;
    Ok(match check_cold_block(bytes) {
        Ok(h) if h.offset.get() == pos && header_file(&h) == id => Ok(len),
        Ok(h) => Err(ColdFormatError::Misplaced {
            reason: format!("it names {} at offset {}", header_file(&h).relative_path(), h.offset.get()),
        }),
        Err(e) => Err(e),
    })
}

/// Reads a file forward in chunks, keeping `QUEUE_DEPTH` reads in flight, and serves byte
/// ranges from what arrived.
struct ChunkReader {
    file: Rc<strata_ioengine::UringFile>,
    next_read: u64,
    end: u64,
    pending: VecDeque<JoinHandle<Result<Vec<u8>, DiskError>>>,
    buf: Vec<u8>,
    base: u64,
}

impl ChunkReader {
    fn new(file: Rc<strata_ioengine::UringFile>, start: u64, end: u64) -> Self {
        Self { file, next_read: start, end, pending: VecDeque::new(), buf: Vec::new(), base: start }
    }

    fn fill(&mut self) {
        while self.pending.len() < QUEUE_DEPTH && self.next_read < self.end {
            let (file, at) = (self.file.clone(), self.next_read);
            let len = CHUNK.min(self.end - at);
            self.pending.push_back(uring::spawn(async move {
                file.read_at(at, len as usize).await.map(|b| b.as_ref().to_vec())
            }));
            self.next_read += len;
        }
    }

    /// `len` bytes at `pos` (`pos` never goes backwards by more than what is kept). Past the
    /// end of the file the bytes read as zeros.
    async fn bytes(&mut self, pos: u64, len: u64) -> Result<&[u8], DiskError> {
        // Drop what lies before `pos`: it will not be asked for again.
        if pos > self.base {
            let drop = ((pos - self.base) as usize).min(self.buf.len());
            self.buf.drain(..drop);
            self.base += drop as u64;
        }
        while self.base + (self.buf.len() as u64) < pos + len {
            self.fill();
            let Some(next) = self.pending.pop_front() else {
                self.buf.resize((pos + len - self.base) as usize, 0);
                break;
            };
            self.buf.extend_from_slice(&next.await?);
        }
        let start = (pos - self.base) as usize;
        Ok(&self.buf[start..start + len as usize])
    }
}

/// Scrubs the given files; returns per-file scans in order.
pub fn scrub(files: &[ExpectedFile], progress: &indicatif::ProgressBar) -> Result<Vec<FileScan>, String> {
    let files = files.to_vec();
    let progress = progress.clone();
    uring::block_on(async move {
        let mut out = Vec::new();
        for f in &files {
            progress.set_message(f.path.display().to_string());
            let scan = scan_file(f.disk, &f.path, f.id).await.map_err(|e| format!("scrub read failed: {e}"))?;
            progress.inc(1);
            out.push(scan);
        }
        Ok(out)
    })
    .map_err(|e| format!("cannot start io_uring: {e}"))?
}

/// Holds a data directory's LOCK (the node is not running while this lives).
pub fn lock(data_dir: &Path) -> Result<std::fs::File, String> {
    strata_node::disks::try_lock_data_dir(data_dir)?.ok_or_else(|| {
        format!(
            "{} is locked: stop the node first (repair and rebuild-disk write its disks)",
            data_dir.join("LOCK").display()
        )
    })
}

/// Refuses a peer whose layout differs: its disks would not be byte-identical to ours.
pub fn check_peer(ours: &Layout, peer: &Layout) -> Result<(), String> {
    if ours.shards != peer.shards || ours.epochs != peer.epochs {
        return Err(format!(
            "the peer at {} has {} shards and placement epochs {:?}, this node {} shards and {:?}: their cold disks \
             are not copies of each other",
            peer.data_dir.display(),
            peer.shards,
            peer.epochs,
            ours.shards,
            ours.epochs
        ));
    }
    Ok(())
}

/// Where `repair` and `rebuild-disk` copy from: a peer's directories (a stopped node, or one
/// whose disks are mounted here), or a running peer node, over the native protocol (COLD_READ,
/// an admin operation). Either way the bytes are verified before they are written.
pub enum Peer {
    Dirs(Layout),
    Node { addr: std::net::SocketAddr, client: std::cell::RefCell<strata_node::client::Client> },
}

impl Peer {
    /// Connects to a running peer node (with an admin ticket when it requires one).
    pub fn node(addr: std::net::SocketAddr, ticket: Option<Vec<u8>>) -> Result<Self, String> {
        let mut options = strata_node::client::ClientOptions::new(addr);
        options.ticket = ticket;
        options.deadline = std::time::Duration::from_secs(30);
        let mut client = strata_node::client::Client::new(options);
        client.ping().map_err(|e| format!("cannot reach the peer node at {addr}: {e}"))?;
        Ok(Self::Node { addr, client: std::cell::RefCell::new(client) })
    }

    /// The peer's copy of file `id` on `disk`, for messages.
    #[must_use]
    pub fn describe(&self, disk: u16, id: ColdFileId) -> String {
        match self {
            Self::Dirs(layout) => layout.hdd[usize::from(disk)].join(id.relative_path()).display().to_string(),
            Self::Node { addr, .. } => format!("node {addr} disk {disk} {}", id.relative_path()),
        }
    }

    /// `len` bytes at `offset` of the peer's file `id` on `disk`; `None` when the peer lacks
    /// the file.
    fn read(&self, disk: u16, id: ColdFileId, offset: u64, len: u64) -> Result<Option<Vec<u8>>, String> {
        let what = self.describe(disk, id);
        match self {
            Self::Dirs(layout) => {
                use std::os::unix::fs::FileExt as _;
                let path =
                    layout.hdd.get(usize::from(disk)).ok_or("the peer has fewer disks")?.join(id.relative_path());
                let file = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(format!("cannot open the peer's {what}: {e}")),
                };
                let mut out = vec![0u8; len as usize];
                file.read_exact_at(&mut out, offset)
                    .map_err(|e| format!("cannot read the peer's {what} at {offset}: {e}"))?;
                Ok(Some(out))
            }
            Self::Node { client, .. } => {
                let mut out = Vec::with_capacity(len as usize);
                let mut at = offset;
                while at < offset + len {
                    let n = (offset + len - at).min(u64::from(strata_format::protocol::COLD_READ_MAX));
                    let read = strata_format::protocol::ColdRead { disk, file: id, offset: at, len: n as u32 };
                    match client.borrow_mut().cold_read(&read) {
                        Ok(Some(bytes)) => out.extend_from_slice(&bytes),
                        Ok(None) => return Ok(None),
                        Err(e) => return Err(format!("cannot read the peer's {what} at {at}: {e}")),
                    }
                    at += n;
                }
                Ok(Some(out))
            }
        }
    }

    /// Like [`Self::read`], but a missing file is an error.
    fn read_some(&self, disk: u16, id: ColdFileId, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        self.read(disk, id, offset, len)?.ok_or_else(|| format!("the peer lacks {}", self.describe(disk, id)))
    }

    /// The header of the peer's file `id` on `disk`, checked to name that file; `None` when the
    /// peer lacks the file.
    fn header(&self, disk: u16, id: ColdFileId) -> Result<Option<ColdFileHeader>, String> {
        let Some(head) = self.read(disk, id, 0, COLD_DATA_START)? else { return Ok(None) };
        let what = self.describe(disk, id);
        let header = ColdFileHeader::decode(&head)
            .map_err(|e| format!("the peer's {what} has a damaged header ({e}): repair the peer first"))?;
        if header.file != id || header.disk != disk {
            return Err(format!(
                "the peer's {what} names {} on disk {}: not a copy of this file",
                header.file.relative_path(),
                header.disk
            ));
        }
        Ok(Some(header))
    }
}

/// Checks that `bytes`, found at `offset` of file `id`, are whole good blocks (or the file's
/// header block, at offset 0).
fn verify_range(bytes: &[u8], offset: u64, id: ColdFileId) -> Result<u64, String> {
    let mut at = 0usize;
    let mut blocks = 0;
    if offset == 0 {
        match ColdFileHeader::decode(&bytes[..COLD_DATA_START as usize]) {
            Ok(h) if h.file == id => {}
            Ok(h) => return Err(format!("the file header names {}", h.file.relative_path())),
            Err(e) => return Err(format!("the file header: {e}")),
        }
        at = COLD_DATA_START as usize;
    }
    while at < bytes.len() {
        let here = offset + at as u64;
        let header = check_cold_block(&bytes[at..]).map_err(|e| format!("block at {here}: {e}"))?;
        if header.offset.get() != here || header_file(&header) != id {
            return Err(format!("block at {here} belongs elsewhere"));
        }
        at += header.block_len.get() as usize;
        blocks += 1;
    }
    Ok(blocks)
}

/// What `repair` did to one damaged range.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Repaired {
    pub damage: Damage,
    pub ok: bool,
    pub detail: String,
}

/// Repairs every damaged range from the peer's copy of the same file.
pub fn repair(ours: &Layout, peer: Peer, damage: Vec<Damage>) -> Result<Vec<Repaired>, String> {
    let ours = ours.clone();
    uring::block_on(async move {
        let mut out = Vec::new();
        for d in damage {
            let outcome = repair_one(&ours, &peer, &d).await;
            let (ok, detail) = match outcome {
                Ok(detail) => (true, detail),
                Err(e) => (false, e),
            };
            out.push(Repaired { damage: d, ok, detail });
        }
        out
    })
    .map_err(|e| format!("cannot start io_uring: {e}"))
}

fn file_id_of(d: &Damage) -> Result<ColdFileId, String> {
    let shard_dir = d.file.parent().and_then(Path::file_name).and_then(|n| n.to_str()).unwrap_or_default();
    let shard: u16 = shard_dir.strip_prefix('s').and_then(|s| s.parse().ok()).ok_or("not in a shard directory")?;
    let name = d.file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    ColdFileId::parse(shard, name).ok_or_else(|| format!("{} is not a cold file name", d.file.display()))
}

async fn repair_one(ours: &Layout, peer: &Peer, d: &Damage) -> Result<String, String> {
    let id = file_id_of(d)?;
    if !d.file.starts_with(&ours.hdd[usize::from(d.disk)]) {
        return Err(format!("{} is not under disk {}", d.file.display(), d.disk));
    }
    let from = peer.describe(d.disk, id);
    if d.missing {
        let bytes = copy_file(peer, d.disk, &d.file, id, None).await?;
        return Ok(format!("copied the whole file ({bytes} bytes) from {from}"));
    }
    // The peer's file must be the same file, not just a valid one: replicas that sank
    // different contents have different (equally valid) blocks at the same offsets.
    let theirs = peer.header(d.disk, id)?.ok_or_else(|| format!("the peer lacks {from}"))?;
    let ours_head = UringDisk.open(&d.file).await.map_err(|e| e.to_string())?;
    let head = ours_head.read_at(0, COLD_DATA_START as usize).await.map_err(|e| e.to_string())?;
    if let Ok(mine) = ColdFileHeader::decode(head.as_ref())
        && mine != theirs
    {
        return Err(format!(
            "the peer's file differs ({} blocks in {} bytes, ours {} in {}): it is not a copy of this one",
            theirs.block_count, theirs.used_bytes, mine.block_count, mine.used_bytes
        ));
    }
    if theirs.file != id || d.offset + d.len > theirs.used_bytes.max(COLD_DATA_START) {
        return Err("the damaged range lies outside the peer's copy of the file".into());
    }
    let good = peer.read_some(d.disk, id, d.offset, d.len)?;
    let blocks = verify_range(&good, d.offset, id).map_err(|e| format!("the peer's copy is bad too: {e}"))?;
    let file = UringDisk.open(&d.file).await.map_err(|e| e.to_string())?;
    file.write_at(&good, d.offset).await.map_err(|e| e.to_string())?;
    file.fdatasync().await.map_err(|e| e.to_string())?;
    let back = file.read_at(d.offset, d.len as usize).await.map_err(|e| e.to_string())?;
    if back.as_ref() != good.as_slice() {
        return Err("the range reads back different from what was written: the disk may be failing".into());
    }
    Ok(format!("rewrote {} bytes ({blocks} blocks) from {from}, verified", d.len))
}

/// Copies cold file `id` of `disk` from a peer into `to` (through `to.partial`, resuming one
/// left by an interrupted copy), preallocated to the peer's size, and verifies every block
/// before the rename makes it live. Returns the bytes copied.
pub async fn copy_file(
    peer: &Peer,
    disk: u16,
    to: &Path,
    id: ColdFileId,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<u64, String> {
    let from = peer.describe(disk, id);
    let header = peer.header(disk, id)?.ok_or_else(|| format!("the peer lacks {from}"))?;
    let dir = to.parent().ok_or("a cold file has a directory")?;
    UringDisk.create_dir_all(dir).await.map_err(|e| e.to_string())?;
    let partial = to.with_extension("cold.partial");
    let (file, mut at) = match std::fs::metadata(&partial) {
        Ok(meta) => {
            // Resume at the last whole chunk the earlier copy wrote (synced every chunk), and
            // cut what lies beyond it: bytes there are unknown, and the copy must end up
            // byte-identical (zeros past the used end).
            let at = meta.len().min(header.used_bytes) / CHUNK * CHUNK;
            let cut = std::fs::OpenOptions::new().write(true).open(&partial).and_then(|f| {
                f.set_len(at)?;
                f.sync_all()
            });
            cut.map_err(|e| format!("cannot resume {}: {e}", partial.display()))?;
            (UringDisk.open(&partial).await.map_err(|e| e.to_string())?, at)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (UringDisk.create(&partial).await.map_err(|e| e.to_string())?, 0)
        }
        Err(e) => return Err(format!("cannot read {}: {e}", partial.display())),
    };
    let resumed_at = at;
    while at < header.used_bytes {
        let len = CHUNK.min(header.used_bytes - at);
        let bytes = peer.read_some(disk, id, at, len)?;
        file.write_at(&bytes, at).await.map_err(|e| e.to_string())?;
        file.fdatasync().await.map_err(|e| e.to_string())?;
        at += len;
        if let Some(p) = progress {
            p.inc(len);
        }
    }
    file.allocate(header.file_bytes).await.map_err(|e| e.to_string())?;
    file.fdatasync().await.map_err(|e| e.to_string())?;
    let scan = scan_file(0, &partial, id).await.map_err(|e| e.to_string())?;
    if let Some(bad) = scan.damage.first() {
        return Err(format!("the copy of {from} does not verify at offset {}: {}", bad.offset, bad.reason));
    }
    UringDisk.rename(&partial, to).await.map_err(|e| e.to_string())?;
    Ok(header.used_bytes - resumed_at)
}

/// What `rebuild-disk` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Rebuilt {
    pub files_copied: u64,
    pub files_present: u64,
    pub bytes_copied: u64,
}

/// Refills disk `disk` of `ours` from the same-numbered disk of `peer`: every cold file the
/// peer holds there, each verified; files already present and verified are kept (so an
/// interrupted rebuild resumes). Then labels the disk for this node.
pub fn rebuild_disk(ours: &Layout, peer: Peer, disk: u16, node_id: u64) -> Result<Rebuilt, String> {
    let to_root = ours.hdd[usize::from(disk)].clone();
    // The files this node's manifests name on the disk: copied from the peer's same files.
    let mut files = Vec::new();
    for f in ours.expected_files(Some(disk))? {
        let Some(header) = peer.header(disk, f.id)? else {
            return Err(format!(
                "the peer lacks {}, which this node's manifest names: the peer does not hold the same data",
                peer.describe(disk, f.id)
            ));
        };
        files.push((f.path, f.id, header.file_bytes));
    }
    let total: u64 = files.iter().map(|(_, _, size)| size).sum();
    let progress = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    std::fs::create_dir_all(&to_root).map_err(|e| format!("cannot create {}: {e}", to_root.display()))?;
    let result = uring::block_on(async move {
        let mut done = Rebuilt::default();
        for (to, id, size) in files {
            progress.set_message(id.relative_path());
            let present = std::fs::metadata(&to).is_ok_and(|m| m.len() == size)
                && scan_file(disk, &to, id).await.is_ok_and(|s| s.damage.is_empty());
            if present {
                done.files_present += 1;
                progress.inc(size);
                continue;
            }
            done.bytes_copied += copy_file(&peer, disk, &to, id, Some(&progress)).await?;
            done.files_copied += 1;
        }
        progress.finish_and_clear();
        Ok::<_, String>(done)
    })
    .map_err(|e| format!("cannot start io_uring: {e}"))??;
    let label_path = to_root.join(DISK_LABEL_FILE);
    if !label_path.exists() {
        let joined = ours.epochs.iter().position(|d| *d > disk).map_or(ours.epochs.len(), |p| p + 1) as u32;
        let label = DiskLabel { node: node_id, disk, epoch: joined };
        strata_node::disks::write_durably(&to_root, DISK_LABEL_FILE, &label.encode())
            .map_err(|e| format!("cannot label {}: {e}", to_root.display()))?;
    }
    Ok(result)
}
