//! Real disks on the uring runtime: files opened with O_DIRECT, read and written through the
//! runtime's ring, so one core keeps many block reads at the device at once.
//!
//! Namespace operations (create, rename, remove, directory fsync) are plain system calls: they
//! are rare, and each is followed by a directory fsync that makes it durable.

use super::{AlignedBuf, submit_linked, submit_op};
use crate::disk::{DirLock, Disk, DiskError, DiskFile, check_alignment};
use crate::real::{create_dirs, list_dir, lock_dir, parent_of, statvfs_space, sync_dir};
use io_uring::{opcode, types};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Reads are split into pieces of at most this many bytes (below every device's max sectors).
const READ_CHUNK_MAX: usize = 256 * 1024;

/// The real disk, driven by the current thread's uring runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct UringDisk;

/// A file opened with O_DIRECT for reading and writing.
#[derive(Debug)]
pub struct UringFile {
    fd: OwnedFd,
    path: PathBuf,
}

fn open_direct(path: &Path, create: bool) -> std::io::Result<OwnedFd> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).custom_flags(libc::O_DIRECT);
    if create {
        options.create_new(true);
    }
    Ok(options.open(path)?.into())
}

impl Disk for UringDisk {
    type File = UringFile;

    async fn create(&self, path: &Path) -> Result<UringFile, DiskError> {
        let fd = open_direct(path, true).map_err(|e| DiskError::new("create", path, None, e))?;
        sync_dir("fsync directory after create", parent_of(path)).await?;
        Ok(UringFile { fd, path: path.to_path_buf() })
    }

    async fn open(&self, path: &Path) -> Result<UringFile, DiskError> {
        let fd = open_direct(path, false).map_err(|e| DiskError::new("open", path, None, e))?;
        Ok(UringFile { fd, path: path.to_path_buf() })
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<(), DiskError> {
        assert_eq!(parent_of(from), parent_of(to), "renames stay inside one directory");
        std::fs::rename(from, to).map_err(|e| DiskError::new("rename", from, None, e))?;
        sync_dir("fsync directory after rename", parent_of(to)).await
    }

    async fn remove(&self, path: &Path) -> Result<(), DiskError> {
        std::fs::remove_file(path).map_err(|e| DiskError::new("remove", path, None, e))?;
        sync_dir("fsync directory after remove", parent_of(path)).await
    }

    async fn create_dir_all(&self, path: &Path) -> Result<(), DiskError> {
        create_dirs(path).await
    }

    async fn space(&self, dir: &Path) -> Result<(u64, u64), DiskError> {
        statvfs_space(dir)
    }

    async fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
        sync_dir("fsync directory", dir).await
    }

    async fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
        list_dir(dir)
    }

    fn lock_dir(&self, dir: &Path) -> Result<DirLock, DiskError> {
        lock_dir(dir)
    }
}

fn os_error(result: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(-result)
}

impl UringFile {
    fn datasync_entry(&self) -> io_uring::squeue::Entry {
        opcode::Fsync::new(types::Fd(self.fd.as_raw_fd())).flags(types::FsyncFlags::DATASYNC).build()
    }
}

impl DiskFile for UringFile {
    type ReadBuf = AlignedBuf;

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<(), DiskError> {
        check_alignment("write", &self.path, offset, data.len())?;
        let mut buf = AlignedBuf::copy_of(data);
        let mut written = 0usize;
        while written < data.len() {
            let at = offset + written as u64;
            let entry =
                opcode::Write::new(types::Fd(self.fd.as_raw_fd()), buf.ptr_at(written), (data.len() - written) as u32)
                    .offset(at)
                    .build();
            // SAFETY: the entry points into `buf`'s heap memory, which the operation keeps.
            let (result, back) = unsafe { submit_op(entry, buf) }.await;
            buf = back;
            if result < 0 {
                return Err(DiskError::new("write", &self.path, Some(at), os_error(result)));
            }
            if result == 0 {
                return Err(DiskError::new(
                    "write",
                    &self.path,
                    Some(at),
                    std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        format!("short write: {written} of {} bytes", data.len()),
                    ),
                ));
            }
            written += result as usize;
        }
        Ok(())
    }

    async fn read_at(&self, offset: u64, len: usize) -> Result<AlignedBuf, DiskError> {
        // Direct I/O reads whole sectors: read the aligned span around the request and show the
        // requested window of it.
        let align = super::buf::IO_ALIGN as u64;
        let start = offset / align * align;
        let end = (offset + len as u64).div_ceil(align) * align;
        let span = (end - start) as usize;
        let mut buf = AlignedBuf::zeroed(span);
        let mut filled = 0usize;
        while filled < span {
            let at = start + filled as u64;
            let want = READ_CHUNK_MAX.min(span - filled);
            let entry =
                opcode::Read::new(types::Fd(self.fd.as_raw_fd()), buf.ptr_at(filled), want as u32).offset(at).build();
            // SAFETY: the entry points into `buf`'s heap memory, which the operation keeps.
            let (result, back) = unsafe { submit_op(entry, buf) }.await;
            buf = back;
            if result < 0 {
                return Err(DiskError::new("read", &self.path, Some(at), os_error(result)));
            }
            if result == 0 {
                break;
            }
            filled += result as usize;
        }
        let head = (offset - start) as usize;
        buf.set_window(head, len.min(filled.saturating_sub(head)));
        Ok(buf)
    }

    async fn fdatasync(&self) -> Result<(), DiskError> {
        // SAFETY: an fsync entry points at no memory.
        let (result, ()) = unsafe { submit_op(self.datasync_entry(), ()) }.await;
        if result < 0 {
            return Err(DiskError::new("fdatasync", &self.path, None, os_error(result)));
        }
        Ok(())
    }

    /// The write and the fdatasync go to the kernel linked, in one submission: the sync starts
    /// the moment the write completes, not when this core next looks at its completions (under
    /// load, after a turn of network work: that doubled a group commit's time).
    async fn write_at_synced(&self, data: &[u8], offset: u64) -> Result<(), DiskError> {
        check_alignment("write", &self.path, offset, data.len())?;
        if data.is_empty() {
            return self.fdatasync().await;
        }
        let fd = types::Fd(self.fd.as_raw_fd());
        let mut buf = AlignedBuf::copy_of(data);
        let write = opcode::Write::new(fd, buf.ptr_at(0), data.len() as u32).offset(offset).build();
        // SAFETY: the write points into `buf`'s heap memory, which its operation keeps; the
        // fsync points at no memory.
        let (write, sync, linked) = unsafe { submit_linked(write, buf, self.datasync_entry(), ()) };
        let (written, _) = write.await;
        let (synced, ()) = sync.await;
        if written < 0 {
            return Err(DiskError::new("write", &self.path, Some(offset), os_error(written)));
        }
        // A sync that ran and failed is reported even when another sync follows: a failed
        // flush is not retried by the kernel, and a page's write error is told only once, so
        // a second sync can succeed over data the first one lost.
        if synced < 0 && synced != -libc::ECANCELED {
            return Err(DiskError::new("fdatasync", &self.path, None, os_error(synced)));
        }
        if (written as usize) < data.len() {
            // A short write cancels the linked sync: write the rest, then sync on their own.
            let written = written as usize;
            self.write_at(&data[written..], offset + written as u64).await?;
            return self.fdatasync().await;
        }
        if !linked {
            // The kernel took the pair in two calls, so the sync may have run before the write
            // completed: sync again now that it has.
            return self.fdatasync().await;
        }
        if synced < 0 {
            return Err(DiskError::new("fdatasync", &self.path, None, os_error(synced)));
        }
        Ok(())
    }

    async fn allocate(&self, len: u64) -> Result<(), DiskError> {
        let len = i64::try_from(len)
            .map_err(|_| DiskError::new("fallocate", &self.path, None, std::io::Error::other("length exceeds i64")))?;
        // SAFETY: the descriptor is owned by this handle and open; fallocate takes no pointers.
        let rc = unsafe { libc::fallocate(self.fd.as_raw_fd(), 0, 0, len) };
        if rc != 0 {
            return Err(DiskError::new("fallocate", &self.path, None, std::io::Error::last_os_error()));
        }
        Ok(())
    }

    async fn size(&self) -> Result<u64, DiskError> {
        let file = std::fs::File::from(self.fd.try_clone().map_err(|e| DiskError::new("stat", &self.path, None, e))?);
        Ok(file.metadata().map_err(|e| DiskError::new("stat", &self.path, None, e))?.len())
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uring::block_on;

    #[test]
    fn a_write_and_its_linked_sync_land_together_or_fail_as_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        // A ring of 4 entries, so a pair queued behind 3 waiting entries needs room made.
        crate::uring::block_on_with(4, async move {
            let file = UringDisk.create(&path).await.unwrap();
            let fd = types::Fd(file.fd.as_raw_fd());
            let block: Vec<u8> = (0..16384u32).map(|i| (i % 253) as u8).collect();
            // A write the kernel refuses at any file system (a negative position): its linked
            // sync is cancelled, not run. Unlinked, the sync would run and succeed.
            let mut buf = AlignedBuf::copy_of(&block[..4096]);
            let write = opcode::Write::new(fd, buf.ptr_at(0), 4096).offset(1 << 63).build();
            let sync = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build();
            // SAFETY: the write points into `buf`'s heap memory, which its operation keeps.
            let (write, sync, linked) = unsafe { crate::uring::submit_linked(write, buf, sync, ()) };
            assert!(linked, "one submit took the pair");
            assert_eq!(write.await.0, -libc::EINVAL);
            assert_eq!(sync.await.0, -libc::ECANCELED, "the sync waits for its write and falls with it");
            // Three entries waiting (not yet submitted) leave one free slot: the pair is queued
            // after a submit that makes room, and still goes whole.
            let waiting: Vec<_> =
                (0..3).map(|_| unsafe { crate::uring::submit_op(opcode::Nop::new().build(), ()) }).collect();
            let mut buf = AlignedBuf::copy_of(&block[..8192]);
            let write = opcode::Write::new(fd, buf.ptr_at(0), 8192).offset(8192).build();
            let sync = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build();
            // SAFETY: as above.
            let (write, sync, linked) = unsafe { crate::uring::submit_linked(write, buf, sync, ()) };
            assert!(linked);
            assert_eq!(write.await.0, 8192);
            assert_eq!(sync.await.0, 0);
            for nop in waiting {
                assert_eq!(nop.await.0, 0);
            }
            assert_eq!(file.read_at(8192, 8192).await.unwrap().as_ref(), &block[..8192]);
            // Through the file: many pairs in flight at once, each landing whole.
            let file = std::rc::Rc::new(file);
            let mut handles = Vec::new();
            for i in 0..64u64 {
                let (file, block) = (file.clone(), block.clone());
                handles.push(crate::uring::spawn(async move { file.write_at_synced(&block[..4096], i * 4096).await }));
            }
            for h in handles {
                h.await.unwrap();
            }
            for i in [0u64, 31, 63] {
                assert_eq!(file.read_at(i * 4096, 4096).await.unwrap().as_ref(), &block[..4096]);
            }
            // A refused write fails as a write, not as its cancelled sync; the ring goes on.
            let err = file.write_at_synced(&block[..4096], 1 << 63).await.unwrap_err();
            assert_eq!(err.op, "write", "{err}");
            file.write_at_synced(&block, 8192).await.unwrap();
            assert_eq!(file.read_at(8192, 16384).await.unwrap().as_ref(), &block[..]);
            let err = file.write_at_synced(&block[..100], 0).await.unwrap_err();
            assert!(err.to_string().contains("aligned"), "{err}");
        })
        .unwrap();
    }

    #[test]
    fn write_read_sync_on_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        block_on(async move {
            let disk = UringDisk;
            let file = disk.create(&path).await.unwrap();
            let mut block = vec![0u8; 8192];
            for (i, b) in block.iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
            file.write_at(&block, 4096).await.unwrap();
            file.fdatasync().await.unwrap();
            assert_eq!(file.size().await.unwrap(), 12288);
            let read = file.read_at(4096 + 100, 5000).await.unwrap();
            assert_eq!(read.as_ref(), &block[100..5100]);
            // A read running past the end is short.
            let tail = file.read_at(8192, 8192).await.unwrap();
            assert_eq!(tail.as_ref(), &block[4096..]);
            let err = file.write_at(&block[..100], 0).await.unwrap_err();
            assert!(err.to_string().contains("aligned"), "{err}");
            // Many reads in flight at once.
            let file = std::rc::Rc::new(file);
            let mut handles = Vec::new();
            for i in 0..64u64 {
                let file = file.clone();
                handles
                    .push(crate::uring::spawn(async move { file.read_at(4096 + (i % 2) * 4096, 4096).await.unwrap() }));
            }
            for (i, h) in handles.into_iter().enumerate() {
                let got = h.await;
                let at = (i % 2) * 4096;
                assert_eq!(got.as_ref(), &block[at..at + 4096]);
            }
        })
        .unwrap();
    }

    #[test]
    fn missing_file_names_the_path() {
        block_on(async {
            let err = UringDisk.open(Path::new("/nonexistent/strata/file")).await.unwrap_err();
            assert!(err.is_not_found());
            assert!(err.to_string().contains("/nonexistent/strata/file"), "{err}");
        })
        .unwrap();
    }
}
