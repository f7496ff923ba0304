//! Tables on disk: writing one from sorted entries, and reading one with its index and filter
//! loaded at open and pinned in memory.
//!
//! Invariant: a point read costs at most one block read from disk per table probed (the filter
//! and index are in memory); every block is checked against its checksum, which binds it to
//! this table and offset, before any byte of it is used.

use super::cache::BlockCache;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use strata_format::BLOCK_SIZE;
use strata_format::manifest::TableMeta;
use strata_format::table::{
    BlockBuilder, BlockEntries, BlockKind, Bloom, Compression, DecodedBlock, EntryLayout, FooterInfo, IndexEntry,
    TableFooter, TableFormatError, decode_block, decode_index, encode_block, encode_index,
};
use strata_format::version::Version;
use strata_ioengine::{Disk, DiskError, DiskFile};

/// Buffered table bytes are written out in chunks of this size.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// How a table's blocks are built (chosen per window by its age).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockFormat {
    /// Raw bytes per data block before it is closed.
    pub block_bytes: usize,
    pub compression: Compression,
    pub bloom_bits_per_key: u32,
}

/// Why a table could not be read.
#[derive(Debug)]
pub enum TableError {
    Disk(DiskError),
    Corrupted { file: PathBuf, offset: u64, reason: String },
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disk(e) => write!(f, "{e}"),
            Self::Corrupted { file, offset, reason } => {
                write!(f, "table {} is corrupted at offset {offset}: {reason}", file.display())
            }
        }
    }
}

impl std::error::Error for TableError {}

impl From<DiskError> for TableError {
    fn from(e: DiskError) -> Self {
        Self::Disk(e)
    }
}

/// One entry handed to the writer: key, version, value (`None` for a tombstone).
pub type WriteEntry<'a> = (&'a [u8], Version, Option<&'a [u8]>);

/// Writes a table of `entries` (sorted by key, one per key) to a new file at `path`, syncs it,
/// and returns its metadata (the caller sets `order` and `level`). Nothing is live until a
/// manifest edit names the table.
pub async fn write_table<'a, D: Disk>(
    disk: &D,
    path: &Path,
    table_id: u64,
    window: u64,
    format: BlockFormat,
    entries: impl Iterator<Item = WriteEntry<'a>>,
) -> Result<TableMeta, DiskError> {
    let mut writer = TableWriter::create(disk, path, table_id, window, format).await?;
    for (key, version, value) in entries {
        writer.add(key, version, value).await?;
    }
    writer.finish().await
}

/// Builds one table file block by block, writing in large aligned chunks.
#[derive(Debug)]
pub struct TableWriter<F> {
    file: F,
    format: BlockFormat,
    out: Vec<u8>,
    written: u64,
    block: BlockBuilder,
    last_key: Vec<u8>,
    index: Vec<IndexEntry>,
    hashes: Vec<u64>,
    /// The lowest and highest ts of the keys added (or filtered, for a link table).
    ts_bounds: (u64, u64),
    meta: TableMeta,
}

impl<F: DiskFile> TableWriter<F> {
    pub async fn create<D: Disk<File = F>>(
        disk: &D,
        path: &Path,
        table_id: u64,
        window: u64,
        format: BlockFormat,
    ) -> Result<Self, DiskError> {
        let file = disk.create(path).await?;
        Ok(Self {
            file,
            format,
            out: Vec::with_capacity(WRITE_CHUNK_BYTES + 2 * BLOCK_SIZE),
            written: 0,
            block: BlockBuilder::with_capacity(format.block_bytes + 4096),
            last_key: Vec::new(),
            index: Vec::new(),
            hashes: Vec::new(),
            ts_bounds: (u64::MAX, 0),
            meta: TableMeta {
                table_id,
                window,
                order: 0,
                level: 0,
                file_bytes: 0,
                entry_count: 0,
                version_max: 0,
                key_min: Vec::new(),
                key_max: Vec::new(),
            },
        })
    }

    /// Bytes the table will take so far (written, buffered, and the open block).
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.written + self.out.len() as u64 + self.block.raw().len() as u64
    }

    /// Bytes already handed to the disk.
    #[must_use]
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    #[must_use]
    pub fn entry_count(&self) -> u64 {
        self.meta.entry_count
    }

    fn close_block(&mut self) {
        let offset = self.written + self.out.len() as u64;
        let block = encode_block(
            self.meta.table_id,
            offset,
            BlockKind::Data,
            self.format.compression,
            EntryLayout::Prefixed,
            self.block.raw(),
            self.block.count(),
        );
        self.index.push(IndexEntry { last_key: self.last_key.clone(), offset, len: block.len() as u32 });
        self.out.extend_from_slice(&block);
        self.block.clear();
    }

    async fn write_out(&mut self) -> Result<(), DiskError> {
        self.file.write_at(&self.out, self.written).await?;
        self.written += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    /// Adds the next entry; keys must ascend strictly.
    pub async fn add(&mut self, key: &[u8], version: Version, value: Option<&[u8]>) -> Result<(), DiskError> {
        assert!(self.meta.entry_count == 0 || key > self.last_key.as_slice(), "table entries are sorted and unique");
        // Close the block before an entry that would overflow it, so a block of a 4 KiB format
        // is read with exactly one aligned 4 KiB read.
        let entry_len = self.block.encoded_len(key, version, value);
        if self.block.count() > 0 && self.block.raw().len() + entry_len > self.format.block_bytes {
            self.close_block();
            if self.out.len() >= WRITE_CHUNK_BYTES {
                self.write_out().await?;
            }
        }
        if self.meta.entry_count == 0 {
            self.meta.key_min = key.to_vec();
        }
        self.block.push(key, version, value);
        self.widen_ts_bounds(key);
        self.meta.entry_count += 1;
        self.meta.version_max = self.meta.version_max.max(version);
        self.hashes.push(Bloom::hash(key));
        // The pkey's prefix goes in the filter too (once per pkey), so a timeline scan can
        // skip tables that hold nothing of its pkey.
        let prefix = pkey_prefix(key);
        if self.meta.entry_count == 1 || pkey_prefix(&self.last_key) != prefix {
            self.hashes.push(Bloom::hash(prefix));
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        Ok(())
    }

    /// Puts `keys` (sorted) and their pkeys in the table's filter without adding entries: a
    /// link table, whose entries are its blocks' last keys, filters on every key its blocks hold.
    pub fn add_to_filter<K: AsRef<[u8]>>(&mut self, keys: &[K]) {
        let mut previous: Option<&[u8]> = None;
        for key in keys.iter().map(AsRef::as_ref) {
            self.widen_ts_bounds(key);
            self.hashes.push(Bloom::hash(key));
            let prefix = pkey_prefix(key);
            if previous != Some(prefix) {
                self.hashes.push(Bloom::hash(prefix));
                previous = Some(prefix);
            }
        }
    }

    fn widen_ts_bounds(&mut self, key: &[u8]) {
        let ts = super::ts_of_key(key);
        self.ts_bounds = (self.ts_bounds.0.min(ts), self.ts_bounds.1.max(ts));
    }

    /// Writes the last block, index, filter and footer, and syncs the file.
    pub async fn finish(mut self) -> Result<TableMeta, DiskError> {
        assert!(self.meta.entry_count > 0, "a table holds at least one entry");
        if self.block.count() > 0 {
            self.close_block();
        }
        self.meta.key_max = self.last_key.clone();
        let table_id = self.meta.table_id;
        let index_offset = self.written + self.out.len() as u64;
        let index_raw = encode_index(&self.index);
        let index_block = encode_block(
            table_id,
            index_offset,
            BlockKind::Index,
            Compression::None,
            EntryLayout::Fixed,
            &index_raw,
            self.index.len() as u32,
        );
        self.out.extend_from_slice(&index_block);
        let mut bloom = Bloom::new(self.hashes.len(), self.format.bloom_bits_per_key);
        for h in &self.hashes {
            bloom.insert_hash(*h);
        }
        let filter_offset = self.written + self.out.len() as u64;
        let filter_block = encode_block(
            table_id,
            filter_offset,
            BlockKind::Filter,
            Compression::None,
            EntryLayout::Fixed,
            &bloom.encode(),
            0,
        );
        self.out.extend_from_slice(&filter_block);
        self.out.extend_from_slice(&TableFooter::encode_block(&FooterInfo {
            table_id,
            window: self.meta.window,
            index_offset,
            index_len: index_block.len() as u32,
            filter_offset,
            filter_len: filter_block.len() as u32,
            entry_count: self.meta.entry_count,
            ts_min: self.ts_bounds.0,
            ts_max: self.ts_bounds.1,
        }));
        self.write_out().await?;
        self.file.fdatasync().await?;
        self.meta.file_bytes = self.written;
        Ok(self.meta)
    }
}

/// An open table: metadata, pinned index and filter, and the file for block reads.
#[derive(Debug)]
pub struct Table<F> {
    pub meta: TableMeta,
    /// For a sunk window's link table: the cold files its links point into.
    pub cold: Option<strata_format::manifest::ColdWindow>,
    file: F,
    index: Vec<IndexEntry>,
    bloom: Bloom,
    /// No key of the table (or of the cold blocks it links to) has a ts outside these bounds.
    ts_bounds: (u64, u64),
}

impl<F: DiskFile> Table<F> {
    /// Opens a table, reading and checking its footer, index and filter.
    pub async fn open<D: Disk<File = F>>(disk: &D, path: &Path, meta: TableMeta) -> Result<Self, TableError> {
        let file = disk.open(path).await?;
        let corrupted = |offset, reason: String| TableError::Corrupted { file: path.to_path_buf(), offset, reason };
        let size = file.size().await?;
        if size != meta.file_bytes || size < BLOCK_SIZE as u64 || !size.is_multiple_of(BLOCK_SIZE as u64) {
            return Err(corrupted(0, format!("file is {size} bytes, the manifest says {}", meta.file_bytes)));
        }
        let tail_at = size - BLOCK_SIZE as u64;
        let footer = read_checked(&file, tail_at, BLOCK_SIZE, TableFooter::decode)
            .await?
            .map_err(|e| corrupted(tail_at, format!("footer: {e}")))?;
        if footer.table_id != meta.table_id || footer.window != meta.window || footer.entry_count != meta.entry_count {
            return Err(corrupted(tail_at, "footer does not match the manifest".into()));
        }
        let in_file = |offset: u64, len: u32| offset + u64::from(len) <= tail_at && len as usize >= BLOCK_SIZE;
        if !in_file(footer.index_offset, footer.index_len) || !in_file(footer.filter_offset, footer.filter_len) {
            return Err(corrupted(tail_at, "footer points outside the file".into()));
        }
        let table_id = meta.table_id;
        let index = read_checked(&file, footer.index_offset, footer.index_len as usize, |bytes| {
            decode_block(bytes, table_id, footer.index_offset, BlockKind::Index).and_then(|b| decode_index(&b))
        })
        .await?
        .map_err(|e| corrupted(footer.index_offset, format!("index block: {e}")))?;
        let bloom = read_checked(&file, footer.filter_offset, footer.filter_len as usize, |bytes| {
            decode_block(bytes, table_id, footer.filter_offset, BlockKind::Filter).and_then(|b| Bloom::decode(&b))
        })
        .await?
        .map_err(|e| corrupted(footer.filter_offset, format!("filter block: {e}")))?;
        if index.last().is_some_and(|e| e.last_key != meta.key_max) {
            return Err(corrupted(footer.index_offset, "index does not end at the table's last key".into()));
        }
        Ok(Self { meta, cold: None, file, index, bloom, ts_bounds: (footer.ts_min, footer.ts_max) })
    }

    /// The highest ts of any key the table holds or links to (`u64::MAX` for a format-1 table,
    /// which does not record it).
    #[must_use]
    pub fn ts_max(&self) -> u64 {
        self.ts_bounds.1
    }

    /// The table's file.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Memory pinned by this table's index and filter.
    #[must_use]
    pub fn pinned_bytes(&self) -> usize {
        self.bloom.bytes() + self.index.iter().map(|e| e.last_key.len() + 32).sum::<usize>()
    }

    /// False only when this table surely holds no entry of the pkey whose encoded prefix
    /// (bucket, length, pkey) is `prefix`.
    #[must_use]
    pub fn may_contain_pkey(&self, prefix: &[u8]) -> bool {
        self.bloom.may_contain(prefix)
    }

    #[must_use]
    pub fn may_contain(&self, key: &[u8]) -> bool {
        key >= self.meta.key_min.as_slice() && key <= self.meta.key_max.as_slice() && self.bloom.may_contain(key)
    }

    /// The index position of the first block that may hold keys `>= key`.
    fn block_for(&self, key: &[u8]) -> usize {
        self.index.partition_point(|e| e.last_key.as_slice() < key)
    }

    /// Reads (or finds cached) data block `i`.
    async fn block(&self, i: usize, cache: &RefCell<BlockCache>) -> Result<Rc<DecodedBlock>, TableError> {
        Ok(self.block_and_whence(i, cache).await?.0)
    }

    /// Reads (or finds cached) data block `i`; true when it was in the cache.
    async fn block_and_whence(
        &self,
        i: usize,
        cache: &RefCell<BlockCache>,
    ) -> Result<(Rc<DecodedBlock>, bool), TableError> {
        let entry = &self.index[i];
        if let Some(block) = cache.borrow_mut().get(self.meta.table_id, entry.offset) {
            return Ok((block, true));
        }
        let table_id = self.meta.table_id;
        let decoded = read_checked(&self.file, entry.offset, entry.len as usize, |bytes| {
            decode_block(bytes, table_id, entry.offset, BlockKind::Data)
        })
        .await?
        .map_err(|e| self.corrupted(entry.offset, e.to_string()))?;
        let block = Rc::new(decoded);
        cache.borrow_mut().insert(self.meta.table_id, entry.offset, block.clone());
        Ok((block, false))
    }

    /// Reads data block `i` without the cache (background work must not evict hot blocks).
    async fn block_uncached(&self, i: usize) -> Result<DecodedBlock, TableError> {
        let entry = &self.index[i];
        let table_id = self.meta.table_id;
        read_checked(&self.file, entry.offset, entry.len as usize, |bytes| {
            decode_block(bytes, table_id, entry.offset, BlockKind::Data)
        })
        .await?
        .map_err(|e| self.corrupted(entry.offset, e.to_string()))
    }

    fn corrupted(&self, offset: u64, reason: String) -> TableError {
        TableError::Corrupted { file: self.file.path().to_path_buf(), offset, reason }
    }

    /// The entry for `key`, if this table holds one: its version and value (`None`: tombstone).
    pub async fn get(
        &self,
        key: &[u8],
        cache: &RefCell<BlockCache>,
    ) -> Result<Option<(Version, Option<Vec<u8>>)>, TableError> {
        if !self.may_contain(key) {
            return Ok(None);
        }
        let i = self.block_for(key);
        if i == self.index.len() {
            return Ok(None);
        }
        let (block, cached) = self.block_and_whence(i, cache).await?;
        let found = self.first_at_or_after(i, &block, cached, key, |entry| {
            (entry.key == key).then(|| (entry.version, entry.value.map(<[u8]>::to_vec)))
        })?;
        Ok(found.flatten())
    }

    /// The first entry with a key at or above `key`, if any (no filter: a link table's keys
    /// are its blocks' last keys, and the block that may hold `key` is the first at or above).
    /// One block read at most.
    pub async fn seek(
        &self,
        key: &[u8],
        cache: &RefCell<BlockCache>,
    ) -> Result<Option<(Vec<u8>, Version, Option<Vec<u8>>)>, TableError> {
        let i = self.block_for(key);
        if i == self.index.len() {
            return Ok(None);
        }
        let (block, cached) = self.block_and_whence(i, cache).await?;
        let found = self.first_at_or_after(i, &block, cached, key, |entry| {
            (entry.key.to_vec(), entry.version, entry.value.map(<[u8]>::to_vec))
        })?;
        match found {
            Some(entry) => Ok(Some(entry)),
            None => Err(self.corrupted(self.index[i].offset, "a block ends below the last key its index names".into())),
        }
    }

    /// `take` of the first entry of data block `i` (`block`) with a key at or above `key`. A
    /// block found in the cache is searched from its restart points (built on its first hit); a
    /// block just read is walked from its start, so blocks read once never pay to build them.
    fn first_at_or_after<T>(
        &self,
        i: usize,
        block: &DecodedBlock,
        cached: bool,
        key: &[u8],
        take: impl FnOnce(strata_format::table::EntryRef<'_>) -> T,
    ) -> Result<Option<T>, TableError> {
        let restarts = if cached { block.restarts() } else { None };
        let mut walker = restarts.map_or_else(|| BlockEntries::new(block), |r| r.walker_for(block, key));
        match walker.seek(key) {
            None => Ok(None),
            Some(Ok(entry)) => Ok(Some(take(entry))),
            Some(Err(e)) => Err(self.corrupted(self.index[i].offset, e.to_string())),
        }
    }

    /// Every entry with `from <= key <= to`, in key order.
    pub async fn range(
        &self,
        from: &[u8],
        to: &[u8],
        cache: &RefCell<BlockCache>,
    ) -> Result<Vec<(Vec<u8>, Version, Option<Vec<u8>>)>, TableError> {
        let mut out = Vec::new();
        if to < self.meta.key_min.as_slice() || from > self.meta.key_max.as_slice() {
            return Ok(out);
        }
        let mut i = self.block_for(from);
        while i < self.index.len() {
            let block = self.block(i, cache).await?;
            let mut entries = BlockEntries::new(&block);
            while let Some(entry) = entries.next() {
                let entry = entry.map_err(|e| self.corrupted(self.index[i].offset, e.to_string()))?;
                if entry.key > to {
                    return Ok(out);
                }
                if entry.key >= from {
                    out.push((entry.key.to_vec(), entry.version, entry.value.map(<[u8]>::to_vec)));
                }
            }
            i += 1;
        }
        Ok(out)
    }

    /// Up to `n` entries with `from <= key <= to`, newest (highest key) first, reading blocks
    /// backwards from the end of the range and stopping as soon as it has `n`.
    pub async fn range_newest(
        &self,
        from: &[u8],
        to: &[u8],
        n: usize,
        cache: &RefCell<BlockCache>,
    ) -> Result<Vec<(Vec<u8>, Version, Option<Vec<u8>>)>, TableError> {
        let mut out = Vec::new();
        if n == 0 || self.index.is_empty() || to < self.meta.key_min.as_slice() || from > self.meta.key_max.as_slice() {
            return Ok(out);
        }
        let mut i = self.block_for(to).min(self.index.len() - 1);
        loop {
            let block = self.block(i, cache).await?;
            let mut in_range = Vec::new();
            let mut reaches_below_from = false;
            let mut entries = BlockEntries::new(&block);
            while let Some(entry) = entries.next() {
                let entry = entry.map_err(|e| self.corrupted(self.index[i].offset, e.to_string()))?;
                if entry.key < from {
                    reaches_below_from = true;
                } else if entry.key <= to {
                    in_range.push((entry.key.to_vec(), entry.version, entry.value.map(<[u8]>::to_vec)));
                }
            }
            for entry in in_range.into_iter().rev() {
                out.push(entry);
                if out.len() == n {
                    return Ok(out);
                }
            }
            if reaches_below_from || i == 0 {
                return Ok(out);
            }
            i -= 1;
        }
    }

    /// Every entry, in key order (compaction and checks read whole tables).
    pub async fn all(
        &self,
        cache: &RefCell<BlockCache>,
    ) -> Result<Vec<(Vec<u8>, Version, Option<Vec<u8>>)>, TableError> {
        let (from, to) = (self.meta.key_min.clone(), self.meta.key_max.clone());
        self.range(&from, &to, cache).await
    }

    /// Bytes of data blocks, index, filter and footer this table adds to the file (its size).
    #[must_use]
    pub fn file_bytes(&self) -> u64 {
        self.meta.file_bytes
    }
}

/// Reads `len` bytes at `offset` and decodes them, reading again (twice at most) when the
/// decode fails: a read can be damaged in flight; only damage that persists is corruption.
async fn read_checked<F: DiskFile, T>(
    file: &F,
    offset: u64,
    len: usize,
    decode: impl Fn(&[u8]) -> Result<T, TableFormatError>,
) -> Result<Result<T, TableFormatError>, DiskError> {
    let mut outcome = decode(file.read_at(offset, len).await?.as_ref());
    for _ in 0..2 {
        if outcome.is_ok() {
            break;
        }
        outcome = decode(file.read_at(offset, len).await?.as_ref());
    }
    Ok(outcome)
}

/// The path of table `table_id` in `dir`.
#[must_use]
pub fn table_path(dir: &Path, table_id: u64) -> PathBuf {
    dir.join(format!("tbl-{table_id:010}.sst"))
}

/// The id of a table file name, if it is one.
#[must_use]
pub fn parse_table_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("tbl-")?.strip_suffix(".sst")?;
    (digits.len() >= 10 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// A sequential reader over a whole table, one block in memory at a time (for compaction).
#[derive(Debug)]
pub struct TableCursor<F> {
    table: Rc<Table<F>>,
    next_block: usize,
    entries: std::collections::VecDeque<(Vec<u8>, Version, Option<Vec<u8>>)>,
    /// Bytes of blocks read so far.
    pub bytes_read: u64,
}

impl<F: DiskFile> TableCursor<F> {
    #[must_use]
    pub fn new(table: Rc<Table<F>>) -> Self {
        Self { table, next_block: 0, entries: std::collections::VecDeque::new(), bytes_read: 0 }
    }

    /// The next entry's key, loading the next block when needed; `None` at the end.
    pub async fn peek_key(&mut self) -> Result<Option<&[u8]>, TableError> {
        while self.entries.is_empty() && self.next_block < self.table.index.len() {
            let i = self.next_block;
            self.next_block += 1;
            let block = self.table.block_uncached(i).await?;
            self.bytes_read += u64::from(self.table.index[i].len);
            let mut entries = BlockEntries::new(&block);
            while let Some(entry) = entries.next() {
                let entry = entry.map_err(|e| self.table.corrupted(self.table.index[i].offset, e.to_string()))?;
                self.entries.push_back((entry.key.to_vec(), entry.version, entry.value.map(<[u8]>::to_vec)));
            }
        }
        Ok(self.entries.front().map(|(k, _, _)| k.as_slice()))
    }

    /// The table this cursor reads.
    #[must_use]
    pub fn table(&self) -> &Rc<Table<F>> {
        &self.table
    }

    /// Takes the entry `peek_key` returned.
    pub fn pop(&mut self) -> Option<(Vec<u8>, Version, Option<Vec<u8>>)> {
        self.entries.pop_front()
    }
}

pub use strata_format::key::pkey_prefix;
