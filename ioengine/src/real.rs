//! Real disks: files opened with O_DIRECT and driven by glommio's io_uring reactor.
//!
//! Must be used from inside a glommio executor (see [`crate::executor`]).

use crate::disk::{DirLock, Disk, DiskError, DiskFile, check_alignment};
use glommio::io::{DmaFile, OpenOptions, ReadResult};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

/// Reads larger than this are split: glommio can hang on reads above the device's max sectors
/// (glommio issue #633), which is commonly 512 KiB or 1280 KiB.
const READ_CHUNK_MAX: usize = 256 * 1024;

fn io_error(error: glommio::GlommioError<()>) -> std::io::Error {
    std::io::Error::from(error)
}

/// The real disk: every path is a path of the host's filesystems.
#[derive(Debug, Clone, Copy, Default)]
pub struct DmaDisk;

/// A file opened with O_DIRECT for reading and writing.
#[derive(Debug)]
pub struct DmaDiskFile {
    file: DmaFile,
    path: PathBuf,
}

/// A full `fsync` of a directory (glommio's directory sync is an fdatasync, which need not
/// persist a new or removed entry). It blocks the core briefly; namespace changes are rare.
pub(crate) async fn sync_dir(op: &'static str, dir: &Path) -> Result<(), DiskError> {
    let err = |e| DiskError::new(op, dir, None, e);
    std::fs::File::open(dir).map_err(err)?.sync_all().map_err(err)
}

pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl Disk for DmaDisk {
    type File = DmaDiskFile;

    async fn create(&self, path: &Path) -> Result<DmaDiskFile, DiskError> {
        // DmaFile::create opens write-only; reads are needed too.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .dma_open(path)
            .await
            .map_err(|e| DiskError::new("create", path, None, io_error(e)))?;
        sync_dir("fsync directory after create", parent_of(path)).await?;
        Ok(DmaDiskFile { file, path: path.to_path_buf() })
    }

    async fn open(&self, path: &Path) -> Result<DmaDiskFile, DiskError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(path)
            .await
            .map_err(|e| DiskError::new("open", path, None, io_error(e)))?;
        Ok(DmaDiskFile { file, path: path.to_path_buf() })
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<(), DiskError> {
        assert_eq!(parent_of(from), parent_of(to), "renames stay inside one directory");
        glommio::io::rename(from, to).await.map_err(|e| DiskError::new("rename", from, None, io_error(e)))?;
        sync_dir("fsync directory after rename", parent_of(to)).await
    }

    async fn remove(&self, path: &Path) -> Result<(), DiskError> {
        glommio::io::remove(path).await.map_err(|e| DiskError::new("remove", path, None, io_error(e)))?;
        sync_dir("fsync directory after remove", parent_of(path)).await
    }

    async fn create_dir_all(&self, path: &Path) -> Result<(), DiskError> {
        create_dirs(path).await?;
        prime_iopoll_probe(path).await
    }

    async fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
        sync_dir("fsync directory", dir).await
    }

    async fn space(&self, dir: &Path) -> Result<(u64, u64), DiskError> {
        statvfs_space(dir)
    }

    async fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
        list_dir(dir)
    }

    fn lock_dir(&self, dir: &Path) -> Result<DirLock, DiskError> {
        lock_dir(dir)
    }
}

/// Free (for unprivileged writers) and total bytes of the filesystem holding `dir`.
pub(crate) fn statvfs_space(dir: &Path) -> Result<(u64, u64), DiskError> {
    use std::os::unix::ffi::OsStrExt as _;
    let err = |e| DiskError::new("statvfs", dir, None, e);
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte")))?;
    // SAFETY: statvfs is plain data; zeroed is a valid value for it.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `stat` a valid out-pointer, both live for
    // the call.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &raw mut stat) };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    let block = stat.f_frsize;
    Ok((stat.f_bavail.saturating_mul(block), stat.f_blocks.saturating_mul(block)))
}

thread_local! {
    /// Devices whose io_poll support glommio has already probed with real data.
    static PRIMED_DEVICES: std::cell::RefCell<std::collections::HashSet<u64>> = std::cell::RefCell::default();
}

/// glommio decides once per device whether reads may use the io_poll ring, by reading offset 0
/// of the first file it opens there. If that file is empty (a new WAL segment), the read
/// succeeds without reaching the device, glommio wrongly concludes io_poll works, and every
/// later read on a device without poll queues fails with ENOTSUP. So before any file is
/// created on a device, open one holding a block of real data, so the probe reaches the device.
async fn prime_iopoll_probe(dir: &Path) -> Result<(), DiskError> {
    use std::os::unix::fs::MetadataExt as _;
    let err = |e| DiskError::new("probe io_poll support", dir, None, e);
    let device = std::fs::metadata(dir).map_err(err)?.dev();
    if PRIMED_DEVICES.with(|primed| primed.borrow().contains(&device)) {
        return Ok(());
    }
    let probe = dir.join(format!(".strata-iopoll-probe-{}", std::process::id()));
    std::fs::write(&probe, vec![0x5a; 4096]).map_err(err)?;
    let opened = OpenOptions::new().read(true).dma_open(&probe).await;
    let _ = std::fs::remove_file(&probe);
    let file = opened.map_err(|e| DiskError::new("probe io_poll support", &probe, None, io_error(e)))?;
    let _ = file.close().await;
    PRIMED_DEVICES.with(|primed| primed.borrow_mut().insert(device));
    Ok(())
}

/// Creates a directory and its missing parents, fsyncing each parent it changed.
pub(crate) async fn create_dirs(path: &Path) -> Result<(), DiskError> {
    let mut missing = Vec::new();
    let mut cursor = Some(path);
    while let Some(dir) = cursor {
        if dir.as_os_str().is_empty() || dir.exists() {
            break;
        }
        missing.push(dir.to_path_buf());
        cursor = dir.parent();
    }
    for dir in missing.iter().rev() {
        std::fs::create_dir(dir).map_err(|e| DiskError::new("create directory", dir, None, e))?;
        sync_dir("fsync directory after mkdir", parent_of(dir)).await?;
    }
    Ok(())
}

pub(crate) fn list_dir(dir: &Path) -> Result<Vec<String>, DiskError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DiskError::new("list", dir, None, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DiskError::new("list", dir, None, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

pub(crate) fn lock_dir(dir: &Path) -> Result<DirLock, DiskError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| DiskError::new("open lock file", &path, None, e))?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock::new(Box::new(file))),
        Err(std::fs::TryLockError::WouldBlock) => Err(DiskError::new(
            "lock",
            &path,
            None,
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "the data directory is locked by another process (is another strata running on it?)",
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(DiskError::new("lock", &path, None, e)),
    }
}

/// Bytes read from a [`DmaDiskFile`]: one glommio buffer, or several joined.
#[derive(Debug)]
pub enum DmaRead {
    One(ReadResult),
    Joined(Vec<u8>),
}

impl AsRef<[u8]> for DmaRead {
    fn as_ref(&self) -> &[u8] {
        match self {
            Self::One(r) => r,
            Self::Joined(v) => v,
        }
    }
}

impl DiskFile for DmaDiskFile {
    type ReadBuf = DmaRead;

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<(), DiskError> {
        check_alignment("write", &self.path, offset, data.len())?;
        let mut buf = self.file.alloc_dma_buffer(data.len());
        buf.as_bytes_mut().copy_from_slice(data);
        let written = self
            .file
            .write_at(buf, offset)
            .await
            .map_err(|e| DiskError::new("write", &self.path, Some(offset), io_error(e)))?;
        if written != data.len() {
            return Err(DiskError::new(
                "write",
                &self.path,
                Some(offset),
                std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short write: {written} of {} bytes", data.len()),
                ),
            ));
        }
        Ok(())
    }

    async fn read_at(&self, offset: u64, len: usize) -> Result<DmaRead, DiskError> {
        let err = |at, e| DiskError::new("read", &self.path, Some(at), io_error(e));
        let first = self.file.read_at(offset, len.min(READ_CHUNK_MAX)).await.map_err(|e| err(offset, e))?;
        if first.len() == len || first.is_empty() {
            return Ok(DmaRead::One(first));
        }
        // Large reads go in chunks; a short read is continued until the length or the end of
        // the file (a zero-length read).
        let mut joined = Vec::with_capacity(len);
        joined.extend_from_slice(&first);
        while joined.len() < len {
            let at = offset + joined.len() as u64;
            let want = READ_CHUNK_MAX.min(len - joined.len());
            let chunk = self.file.read_at(at, want).await.map_err(|e| err(at, e))?;
            if chunk.is_empty() {
                break;
            }
            joined.extend_from_slice(&chunk);
        }
        Ok(DmaRead::Joined(joined))
    }

    async fn fdatasync(&self) -> Result<(), DiskError> {
        self.file.fdatasync().await.map_err(|e| DiskError::new("fdatasync", &self.path, None, io_error(e)))
    }

    async fn allocate(&self, len: u64) -> Result<(), DiskError> {
        let len = i64::try_from(len)
            .map_err(|_| DiskError::new("fallocate", &self.path, None, std::io::Error::other("length exceeds i64")))?;
        // SAFETY: the descriptor is owned by this handle and open; fallocate takes no pointers.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, 0, len) };
        if rc != 0 {
            return Err(DiskError::new("fallocate", &self.path, None, std::io::Error::last_os_error()));
        }
        Ok(())
    }

    async fn size(&self) -> Result<u64, DiskError> {
        self.file.file_size().await.map_err(|e| DiskError::new("stat", &self.path, None, io_error(e)))
    }

    fn path(&self) -> &Path {
        &self.path
    }
}
