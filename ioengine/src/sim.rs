//! The simulated disk: an in-memory filesystem that injects faults from a seed.
//!
//! It models a drive with a volatile write cache under O_DIRECT (no page cache): reads see every
//! completed write; `fdatasync` makes every completed write of the file durable.
//!
//! Invariant: the simulated disk is never kinder than a real one. A write is durable only once an
//! `fdatasync` of its file completes after it; a directory change only once its directory is
//! fsynced. At [`SimDisk::crash`], every write not yet durable is kept, lost, or torn at sector
//! granularity, and unsynced directory changes may be lost; handles opened before the crash stop
//! working. Writes and fsyncs may fail (EIO) at random, and reads may return a flipped bit.

use crate::disk::{DirLock, Disk, DiskError, DiskFile, check_alignment};
use crate::rng::SimRng;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

const SECTOR: usize = strata_format::SECTOR_SIZE;

/// Fault probabilities. All zero is a perfect disk (still losing unsynced data at a crash).
#[derive(Debug, Clone, Copy)]
pub struct SimFaults {
    /// A write fails with EIO (having written some of its sectors, or none).
    pub write_fail: f64,
    /// An fdatasync fails with EIO; the writes it covered stay undurable.
    pub fsync_fail: f64,
    /// A read returns one flipped bit.
    pub read_bitflip: f64,
    /// At a crash, an undurable write is torn (some sectors kept); otherwise kept or lost evenly.
    pub crash_torn: f64,
    /// At a crash, a directory's unsynced changes survive (otherwise they are all lost).
    pub crash_keep_dir_changes: f64,
    /// Each operation yields to the executor up to this many times, to vary interleavings.
    pub yields_max: u64,
}

impl SimFaults {
    /// A disk that never fails an operation (crashes still lose unsynced data).
    #[must_use]
    pub fn none() -> Self {
        Self {
            write_fail: 0.0,
            fsync_fail: 0.0,
            read_bitflip: 0.0,
            crash_torn: 0.0,
            crash_keep_dir_changes: 0.5,
            yields_max: 2,
        }
    }
}

/// What the simulated disk actually did: the faults a run really hit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    pub writes: u64,
    pub fsyncs: u64,
    pub reads: u64,
    pub writes_failed: u64,
    pub fsyncs_failed: u64,
    pub bitflips: u64,
    pub crashes: u64,
    pub crash_writes_kept: u64,
    pub crash_writes_lost: u64,
    pub crash_writes_torn: u64,
    pub crash_dir_changes_lost: u64,
}

impl std::fmt::Display for SimStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "writes {} (failed {}), fsyncs {} (failed {}), reads {} (bit flips {}), crashes {} \
             (undurable writes kept {}, lost {}, torn {}; directories reverted {})",
            self.writes,
            self.writes_failed,
            self.fsyncs,
            self.fsyncs_failed,
            self.reads,
            self.bitflips,
            self.crashes,
            self.crash_writes_kept,
            self.crash_writes_lost,
            self.crash_writes_torn,
            self.crash_dir_changes_lost
        )
    }
}

#[derive(Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since the last successful fdatasync, in order.
    undurable: Vec<(u64, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct Dir {
    current: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct State {
    rng: SimRng,
    faults: SimFaults,
    stats: SimStats,
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    dirs: BTreeMap<PathBuf, Dir>,
    locks: HashSet<PathBuf>,
    generation: u64,
    capacity_bytes: u64,
}

/// The simulated disk. Clones share one state.
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Rc<RefCell<State>>,
}

/// A file of the simulated disk.
#[derive(Debug)]
pub struct SimFile {
    state: Rc<RefCell<State>>,
    inode: u64,
    generation: u64,
    path: PathBuf,
}

fn split(path: &Path) -> (PathBuf, String) {
    let dir = path.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    (dir, name)
}

fn errno(code: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(code)
}

fn injected(what: &str) -> std::io::Error {
    std::io::Error::other(format!("injected fault: {what} (EIO)"))
}

/// A future that returns `Pending` a few times before completing, waking itself each time.
struct Yield(u64);

impl Future for Yield {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 == 0 {
            return Poll::Ready(());
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl SimDisk {
    #[must_use]
    pub fn new(seed: u64, faults: SimFaults) -> Self {
        let state = State {
            rng: SimRng::new(seed),
            faults,
            stats: SimStats::default(),
            inodes: HashMap::new(),
            next_inode: 1,
            dirs: BTreeMap::new(),
            locks: HashSet::new(),
            generation: 0,
            capacity_bytes: u64::MAX / 2,
        };
        Self { state: Rc::new(RefCell::new(state)) }
    }

    /// Makes the disk this many bytes large: writes that would grow its files past it fail
    /// with ENOSPC.
    pub fn set_capacity(&self, bytes: u64) {
        self.state.borrow_mut().capacity_bytes = bytes;
    }

    /// Bytes held by files still reachable from a directory.
    fn used_bytes(state: &State) -> u64 {
        let live: HashSet<u64> = state.dirs.values().flat_map(|d| d.current.values().copied()).collect();
        live.iter().filter_map(|i| state.inodes.get(i)).map(|i| i.current.len() as u64).sum()
    }

    #[must_use]
    pub fn stats(&self) -> SimStats {
        self.state.borrow().stats
    }

    /// Changes the fault probabilities (for example, none during recovery checks).
    pub fn set_faults(&self, faults: SimFaults) {
        self.state.borrow_mut().faults = faults;
    }

    #[must_use]
    pub fn faults(&self) -> SimFaults {
        self.state.borrow().faults
    }

    /// Simulates power loss: decides the fate of every undurable write and directory change,
    /// and invalidates every open handle and lock.
    pub fn crash(&self) {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        state.generation += 1;
        state.stats.crashes += 1;
        state.locks.clear();
        let keep_dirs_p = state.faults.crash_keep_dir_changes;
        for dir in state.dirs.values_mut() {
            if dir.current != dir.durable {
                if state.rng.chance(keep_dirs_p) {
                    dir.durable = dir.current.clone();
                } else {
                    state.stats.crash_dir_changes_lost += 1;
                    dir.current = dir.durable.clone();
                }
            }
        }
        let mut inodes: Vec<_> = state.inodes.keys().copied().collect();
        inodes.sort_unstable();
        for id in inodes {
            let inode = state.inodes.get_mut(&id).expect("inode listed above");
            let mut image = std::mem::take(&mut inode.durable);
            for (offset, data) in std::mem::take(&mut inode.undurable) {
                if state.rng.chance(state.faults.crash_torn) {
                    state.stats.crash_writes_torn += 1;
                    for (s, sector) in data.chunks(SECTOR).enumerate() {
                        if state.rng.chance(0.5) {
                            write_into(&mut image, offset + (s * SECTOR) as u64, sector);
                        }
                    }
                } else if state.rng.chance(0.5) {
                    state.stats.crash_writes_kept += 1;
                    write_into(&mut image, offset, &data);
                } else {
                    state.stats.crash_writes_lost += 1;
                }
            }
            inode.current.clone_from(&image);
            inode.durable = image;
        }
    }

    fn entry(&self, path: &Path) -> Option<u64> {
        let (dir, name) = split(path);
        self.state.borrow().dirs.get(&dir).and_then(|d| d.current.get(&name).copied())
    }

    /// The directory fsync that follows every namespace change: a crash before it completes may
    /// lose the change; it may also fail.
    async fn sync_dir(&self, op: &'static str, dir: &Path, path: &Path) -> Result<(), DiskError> {
        Yield(1).await;
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        state.stats.fsyncs += 1;
        if state.rng.chance(state.faults.fsync_fail) {
            state.stats.fsyncs_failed += 1;
            return Err(DiskError::new(op, path, None, injected("directory fsync failed")));
        }
        if let Some(d) = state.dirs.get_mut(dir) {
            d.durable = d.current.clone();
        }
        Ok(())
    }

    async fn pause(&self) {
        let yields = {
            let mut state = self.state.borrow_mut();
            let max = state.faults.yields_max;
            if max == 0 { 0 } else { state.rng.below(max + 1) }
        };
        Yield(yields).await;
    }
}

fn write_into(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset as usize..end].copy_from_slice(data);
}

impl SimFile {
    fn check_live(&self, op: &'static str) -> Result<(), DiskError> {
        if self.state.borrow().generation != self.generation {
            return Err(DiskError::new(op, &self.path, None, std::io::Error::other("handle from before a crash")));
        }
        Ok(())
    }
}

impl Disk for SimDisk {
    type File = SimFile;

    async fn create(&self, path: &Path) -> Result<SimFile, DiskError> {
        self.pause().await;
        let (dir, name) = split(path);
        let (inode, generation) = {
            let mut guard = self.state.borrow_mut();
            let state = &mut *guard;
            let Some(d) = state.dirs.get_mut(&dir) else {
                return Err(DiskError::new("create", path, None, errno(libc::ENOENT)));
            };
            if d.current.contains_key(&name) {
                return Err(DiskError::new("create", path, None, errno(libc::EEXIST)));
            }
            let inode = state.next_inode;
            state.next_inode += 1;
            state.inodes.insert(inode, Inode::default());
            d.current.insert(name, inode);
            (inode, state.generation)
        };
        self.sync_dir("create", &dir, path).await?;
        Ok(SimFile { state: self.state.clone(), inode, generation, path: path.to_path_buf() })
    }

    async fn open(&self, path: &Path) -> Result<SimFile, DiskError> {
        self.pause().await;
        let inode = self.entry(path).ok_or_else(|| DiskError::new("open", path, None, errno(libc::ENOENT)))?;
        let generation = self.state.borrow().generation;
        Ok(SimFile { state: self.state.clone(), inode, generation, path: path.to_path_buf() })
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<(), DiskError> {
        self.pause().await;
        let (dir, from_name) = split(from);
        let (to_dir, to_name) = split(to);
        assert_eq!(dir, to_dir, "renames stay inside one directory");
        {
            let mut state = self.state.borrow_mut();
            let enoent = || DiskError::new("rename", from, None, errno(libc::ENOENT));
            let d = state.dirs.get_mut(&dir).ok_or_else(enoent)?;
            let inode = d.current.remove(&from_name).ok_or_else(enoent)?;
            d.current.insert(to_name, inode);
        }
        self.sync_dir("rename", &dir, to).await
    }

    async fn remove(&self, path: &Path) -> Result<(), DiskError> {
        self.pause().await;
        let (dir, name) = split(path);
        {
            let mut state = self.state.borrow_mut();
            let enoent = || DiskError::new("remove", path, None, errno(libc::ENOENT));
            let d = state.dirs.get_mut(&dir).ok_or_else(enoent)?;
            d.current.remove(&name).ok_or_else(enoent)?;
        }
        self.sync_dir("remove", &dir, path).await
    }

    async fn create_dir_all(&self, path: &Path) -> Result<(), DiskError> {
        self.pause().await;
        let mut state = self.state.borrow_mut();
        for ancestor in path.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                state.dirs.entry(ancestor.to_path_buf()).or_default();
            }
        }
        Ok(())
    }

    async fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
        SimDisk::sync_dir(self, "fsync directory", dir, dir).await
    }

    async fn space(&self, _dir: &Path) -> Result<(u64, u64), DiskError> {
        let state = self.state.borrow();
        let used = Self::used_bytes(&state);
        Ok((state.capacity_bytes.saturating_sub(used), state.capacity_bytes))
    }

    async fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
        self.pause().await;
        let state = self.state.borrow();
        let d = state.dirs.get(dir).ok_or_else(|| DiskError::new("list", dir, None, errno(libc::ENOENT)))?;
        Ok(d.current.keys().cloned().collect())
    }

    fn lock_dir(&self, dir: &Path) -> Result<DirLock, DiskError> {
        struct SimLock {
            state: Rc<RefCell<State>>,
            dir: PathBuf,
            generation: u64,
        }
        impl Drop for SimLock {
            fn drop(&mut self) {
                let mut state = self.state.borrow_mut();
                if state.generation == self.generation {
                    state.locks.remove(&self.dir);
                }
            }
        }
        let mut state = self.state.borrow_mut();
        if !state.locks.insert(dir.to_path_buf()) {
            return Err(DiskError::new(
                "lock",
                &dir.join("LOCK"),
                None,
                std::io::Error::new(std::io::ErrorKind::WouldBlock, "the data directory is locked by another process"),
            ));
        }
        let generation = state.generation;
        Ok(DirLock::new(Box::new(SimLock { state: self.state.clone(), dir: dir.to_path_buf(), generation })))
    }
}

impl DiskFile for SimFile {
    type ReadBuf = Vec<u8>;

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<(), DiskError> {
        check_alignment("write", &self.path, offset, data.len())?;
        Yield(1).await;
        self.check_live("write")?;
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        state.stats.writes += 1;
        let fail = state.rng.chance(state.faults.write_fail);
        let grows_by = {
            let len = state.inodes.get(&self.inode).map_or(0, |i| i.current.len() as u64);
            (offset + data.len() as u64).saturating_sub(len)
        };
        if grows_by > 0 && SimDisk::used_bytes(state) + grows_by > state.capacity_bytes {
            return Err(DiskError::new("write", &self.path, Some(offset), errno(libc::ENOSPC)));
        }
        let inode = state.inodes.get_mut(&self.inode).expect("a live handle's inode exists");
        if fail {
            state.stats.writes_failed += 1;
            // A failed write may still have reached some sectors.
            for (s, sector) in data.chunks(SECTOR).enumerate() {
                if state.rng.chance(0.3) {
                    let at = offset + (s * SECTOR) as u64;
                    write_into(&mut inode.current, at, sector);
                    inode.undurable.push((at, sector.to_vec()));
                }
            }
            return Err(DiskError::new("write", &self.path, Some(offset), injected("write failed")));
        }
        write_into(&mut inode.current, offset, data);
        inode.undurable.push((offset, data.to_vec()));
        Ok(())
    }

    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, DiskError> {
        Yield(1).await;
        self.check_live("read")?;
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        state.stats.reads += 1;
        let inode = state.inodes.get(&self.inode).expect("a live handle's inode exists");
        let start = (offset as usize).min(inode.current.len());
        let end = (offset as usize + len).min(inode.current.len());
        let mut out = inode.current[start..end].to_vec();
        if !out.is_empty() && state.rng.chance(state.faults.read_bitflip) {
            let bit = state.rng.below(out.len() as u64 * 8) as usize;
            out[bit / 8] ^= 1 << (bit % 8);
            state.stats.bitflips += 1;
        }
        Ok(out)
    }

    async fn fdatasync(&self) -> Result<(), DiskError> {
        Yield(1).await;
        self.check_live("fdatasync")?;
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        state.stats.fsyncs += 1;
        if state.rng.chance(state.faults.fsync_fail) {
            state.stats.fsyncs_failed += 1;
            // The writes stay in the drive's volatile cache: a crash decides their fate, and a
            // later successful flush would persist them (O_DIRECT: there is no page cache).
            return Err(DiskError::new("fdatasync", &self.path, None, injected("fdatasync failed")));
        }
        let inode = state.inodes.get_mut(&self.inode).expect("a live handle's inode exists");
        inode.undurable.clear();
        inode.durable.clone_from(&inode.current);
        Ok(())
    }

    async fn allocate(&self, len: u64) -> Result<(), DiskError> {
        Yield(1).await;
        self.check_live("fallocate")?;
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let current = state.inodes.get(&self.inode).map_or(0, |i| i.current.len() as u64);
        if len <= current {
            return Ok(());
        }
        if SimDisk::used_bytes(state) + (len - current) > state.capacity_bytes {
            return Err(DiskError::new("fallocate", &self.path, Some(current), errno(libc::ENOSPC)));
        }
        let inode = state.inodes.get_mut(&self.inode).expect("a live handle's inode exists");
        let zeros = vec![0u8; (len - current) as usize];
        write_into(&mut inode.current, current, &zeros);
        inode.undurable.push((current, zeros));
        Ok(())
    }

    async fn size(&self) -> Result<u64, DiskError> {
        self.check_live("stat")?;
        let state = self.state.borrow();
        Ok(state.inodes.get(&self.inode).map_or(0, |i| i.current.len() as u64))
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simexec::SimExecutor;

    fn run<T: 'static>(fut: impl Future<Output = T> + 'static) -> T {
        let exec = SimExecutor::new();
        let out = Rc::new(RefCell::new(None));
        let slot = out.clone();
        exec.spawn(async move { *slot.borrow_mut() = Some(fut.await) });
        exec.run_until_idle();
        out.borrow_mut().take().expect("task should finish")
    }

    #[test]
    fn sim_disk_keeps_synced_writes_across_crash() {
        let disk = SimDisk::new(1, SimFaults { crash_keep_dir_changes: 0.0, ..SimFaults::none() });
        let d = disk.clone();
        run(async move {
            d.create_dir_all(Path::new("/data")).await.unwrap();
            let f = d.create(Path::new("/data/a")).await.unwrap();
            f.write_at(&[7; 4096], 0).await.unwrap();
            f.fdatasync().await.unwrap();
        });
        disk.crash();
        let d = disk.clone();
        let bytes = run(async move { d.open(Path::new("/data/a")).await.unwrap().read_at(0, 4096).await.unwrap() });
        assert_eq!(bytes, vec![7; 4096]);
    }

    #[test]
    fn sim_disk_loses_or_tears_unsynced_writes() {
        let mut outcomes = HashSet::new();
        for seed in 0..64 {
            let disk = SimDisk::new(seed, SimFaults { crash_torn: 0.5, ..SimFaults::none() });
            let d = disk.clone();
            run(async move {
                d.create_dir_all(Path::new("/d")).await.unwrap();
                let f = d.create(Path::new("/d/f")).await.unwrap();
                f.write_at(&[0; 4096], 0).await.unwrap();
                f.fdatasync().await.unwrap();
                f.write_at(&[9; 4096], 0).await.unwrap();
            });
            disk.crash();
            let d = disk.clone();
            let bytes = run(async move { d.open(Path::new("/d/f")).await.unwrap().read_at(0, 4096).await.unwrap() });
            let nines = bytes.chunks(SECTOR).filter(|s| s[0] == 9).count();
            outcomes.insert(match nines {
                0 => "lost",
                8 => "kept",
                _ => "torn",
            });
        }
        assert_eq!(outcomes.len(), 3, "saw only {outcomes:?}");
    }

    #[test]
    fn sim_disk_can_lose_an_unsynced_directory_entry() {
        let disk = SimDisk::new(3, SimFaults { crash_keep_dir_changes: 0.0, ..SimFaults::none() });
        {
            let mut state = disk.state.borrow_mut();
            let dir = state.dirs.entry(PathBuf::from("/x")).or_default();
            dir.current.insert("ghost".into(), 99);
        }
        disk.crash();
        assert!(disk.entry(Path::new("/x/ghost")).is_none());
    }

    #[test]
    fn sim_disk_refuses_unaligned_direct_io() {
        let disk = SimDisk::new(4, SimFaults::none());
        let err = run(async move {
            disk.create_dir_all(Path::new("/d")).await.unwrap();
            let f = disk.create(Path::new("/d/f")).await.unwrap();
            f.write_at(&[1; 100], 0).await.unwrap_err()
        });
        assert_eq!(err.error.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn sim_disk_handles_die_at_crash() {
        let disk = SimDisk::new(5, SimFaults::none());
        let d = disk.clone();
        let f = run(async move {
            d.create_dir_all(Path::new("/d")).await.unwrap();
            d.create(Path::new("/d/f")).await.unwrap()
        });
        disk.crash();
        let err = run(async move { f.write_at(&[0; 512], 0).await.unwrap_err() });
        assert!(err.to_string().contains("before a crash"));
    }
}
