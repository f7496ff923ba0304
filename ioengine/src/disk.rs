//! What a disk is: files read and written with direct I/O at sector-aligned offsets, synced with
//! `fdatasync`, and directory operations made durable by a directory fsync.
//!
//! Invariant: `create`, `rename` and `remove` return only after the directory holding the entry
//! has been fsynced, so a completed namespace change survives a crash.

use std::path::{Path, PathBuf};

/// An I/O error with the operation and the place it happened, for operators.
#[derive(Debug)]
pub struct DiskError {
    pub op: &'static str,
    pub path: PathBuf,
    pub offset: Option<u64>,
    pub error: std::io::Error,
}

impl DiskError {
    #[must_use]
    pub fn new(op: &'static str, path: &Path, offset: Option<u64>, error: std::io::Error) -> Self {
        Self { op, path: path.to_path_buf(), offset, error }
    }

    /// True when the error says the entry does not exist.
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        self.error.kind() == std::io::ErrorKind::NotFound
    }
}

impl std::fmt::Display for DiskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.op, self.path.display())?;
        if let Some(offset) = self.offset {
            write!(f, " at offset {offset}")?;
        }
        write!(f, ": {}", self.error)
    }
}

impl std::error::Error for DiskError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// A held lock on a data directory; released when dropped.
pub struct DirLock {
    _held: Box<dyn std::any::Any>,
}

impl DirLock {
    pub(crate) fn new(held: Box<dyn std::any::Any>) -> Self {
        Self { _held: held }
    }
}

impl std::fmt::Debug for DirLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirLock")
    }
}

/// A disk: a namespace of files under directories. All futures are `!Send`: each disk handle
/// lives on one core, like the shard that uses it.
#[expect(async_fn_in_trait, reason = "disks are used on one core by single-threaded executors")]
pub trait Disk: Clone + 'static {
    type File: DiskFile;

    /// Creates a new file (it must not exist) for reading and writing with direct I/O, then
    /// fsyncs its directory.
    async fn create(&self, path: &Path) -> Result<Self::File, DiskError>;
    /// Opens an existing file for reading and writing with direct I/O.
    async fn open(&self, path: &Path) -> Result<Self::File, DiskError>;
    /// Renames a file, then fsyncs the directory (both must be in the same directory).
    async fn rename(&self, from: &Path, to: &Path) -> Result<(), DiskError>;
    /// Removes a file, then fsyncs its directory.
    async fn remove(&self, path: &Path) -> Result<(), DiskError>;
    /// Creates a directory and its parents if missing, fsyncing each parent it changed.
    async fn create_dir_all(&self, path: &Path) -> Result<(), DiskError>;
    /// Free and total bytes of the filesystem holding `dir` (free: what unprivileged writers
    /// may still use).
    async fn space(&self, dir: &Path) -> Result<(u64, u64), DiskError>;
    /// Makes every entry of a directory durable (an fsync of the directory).
    async fn sync_dir(&self, dir: &Path) -> Result<(), DiskError>;
    /// Names of the entries of a directory, sorted.
    async fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError>;
    /// Takes the exclusive lock of a data directory, or says who holds it.
    fn lock_dir(&self, dir: &Path) -> Result<DirLock, DiskError>;
}

/// A file opened for direct I/O. Offsets and lengths of writes must be multiples of the sector
/// size (512 bytes); the engine uses 4 KiB blocks.
#[expect(async_fn_in_trait, reason = "files are used on one core by single-threaded executors")]
pub trait DiskFile: 'static {
    type ReadBuf: AsRef<[u8]>;

    /// Writes all of `data` at `offset`. Not durable until a later `fdatasync` completes.
    async fn write_at(&self, data: &[u8], offset: u64) -> Result<(), DiskError>;
    /// Reads `len` bytes at `offset`; short only at the end of the file.
    async fn read_at(&self, offset: u64, len: usize) -> Result<Self::ReadBuf, DiskError>;
    /// Makes every write completed before this call durable.
    async fn fdatasync(&self) -> Result<(), DiskError>;
    /// Writes all of `data` at `offset`, then makes it and every earlier completed write durable:
    /// `write_at` and then `fdatasync`, which a file may hand to the kernel together so the sync
    /// starts as soon as the write completes. An error names the step that failed.
    async fn write_at_synced(&self, data: &[u8], offset: u64) -> Result<(), DiskError> {
        self.write_at(data, offset).await?;
        self.fdatasync().await
    }
    /// The file's size in bytes.
    async fn size(&self) -> Result<u64, DiskError>;
    /// Reserves space so the file is at least `len` bytes (reading as zeros where unwritten).
    /// The new size is durable only after a later `fdatasync`.
    async fn allocate(&self, len: u64) -> Result<(), DiskError>;
    /// The path the file was opened at.
    fn path(&self) -> &Path;
}

/// Checks direct-I/O alignment of a write or read, as the kernel would (EINVAL otherwise).
pub(crate) fn check_alignment(op: &'static str, path: &Path, offset: u64, len: usize) -> Result<(), DiskError> {
    const SECTOR: u64 = strata_format::SECTOR_SIZE as u64;
    if !offset.is_multiple_of(SECTOR) || !(len as u64).is_multiple_of(SECTOR) {
        return Err(DiskError::new(
            op,
            path,
            Some(offset),
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("direct I/O needs offset and length aligned to {SECTOR} bytes (length {len})"),
            ),
        ));
    }
    Ok(())
}
