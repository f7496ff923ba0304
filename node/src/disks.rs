//! The node's cold disks at start-up: its identity, the placement epochs, and each disk's
//! label, logical block size and rotational flag. Blocking file I/O: it runs once, before the
//! shards start (and in `strata-tool`).
//!
//! Files under the data directory:
//! - `NODE_ID`: the node's identity, 16 hex digits, chosen at random at the first start.
//! - `PLACEMENT`: one line per placement epoch, `<epoch> <disks>`, oldest first. A start with more
//!   disks than the newest epoch appends a new epoch (windows keep the epoch they were sunk in, so
//!   adding a disk moves no history); fewer disks are refused.
//!
//! Invariant: every configured disk carries a label naming this node and its index; a disk
//! labelled for another node or another index is refused, and so is an unlabelled disk that
//! holds files (it may be someone's data).

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use strata_format::cold::{DISK_LABEL_FILE, DiskLabel};

/// What the node knows about one cold disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    pub root: PathBuf,
    pub label: DiskLabel,
    /// The device's logical block size, when it could be read from sysfs.
    pub logical_block_bytes: Option<u64>,
    /// Whether the device spins (sysfs `queue/rotational`), when known.
    pub rotational: Option<bool>,
    /// Why the disk is out of service from the start (an unlabelled disk the node used before:
    /// replaced, or not mounted). Its reads fail; nothing is written to it.
    pub down: Option<String>,
}

/// The node's cold disks, checked and labelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDisks {
    pub node_id: u64,
    /// Disk counts of every placement epoch; epoch `e` is `epochs[e - 1]`.
    pub epochs: Vec<u16>,
    pub disks: Vec<DiskInfo>,
}

impl NodeDisks {
    /// The placement epoch new sinks use.
    #[must_use]
    pub fn epoch(&self) -> u32 {
        self.epochs.len() as u32
    }

    #[must_use]
    pub fn roots(&self) -> Vec<PathBuf> {
        self.disks.iter().map(|d| d.root.clone()).collect()
    }
}

/// The default cold disks: four folders under the data directory standing in for HDDs.
#[must_use]
pub fn default_hdd_paths(data_dir: &Path) -> Vec<PathBuf> {
    (0..4).map(|i| data_dir.join(format!("hdd{i}"))).collect()
}

/// Reads the node id, creating it at the first start.
pub fn node_id(data_dir: &Path, create: bool) -> Result<u64, String> {
    let path = data_dir.join("NODE_ID");
    match std::fs::read_to_string(&path) {
        Ok(text) => u64::from_str_radix(text.trim(), 16)
            .map_err(|_| format!("{} is damaged: {:?} is not 16 hex digits", path.display(), text.trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let id = random_u64();
            write_durably(data_dir, "NODE_ID", format!("{id:016x}\n").as_bytes())
                .map_err(|e| format!("cannot record the node id in {}: {e}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)).is_ok() {
        return u64::from_le_bytes(bytes);
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    xxhash_rust::xxh3::xxh3_64(&[nanos.to_le_bytes(), u64::from(std::process::id()).to_le_bytes()].concat())
}

/// Takes `<data-dir>/LOCK` (flock), creating the directory if needed: `Ok(None)` when another
/// process holds it. Held for as long as the returned file lives.
pub fn try_lock_data_dir(data_dir: &Path) -> Result<Option<std::fs::File>, String> {
    let path = data_dir.join("LOCK");
    std::fs::create_dir_all(data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// Writes `name` in `dir` through a temporary file, a rename and a directory fsync.
pub fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Reads the placement epochs (`None` when the file does not exist yet).
pub fn read_epochs(data_dir: &Path) -> Result<Option<Vec<u16>>, String> {
    let path = data_dir.join("PLACEMENT");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut epochs = Vec::new();
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let damaged =
            || format!("{} is damaged at line {}: {line:?} is not \"<epoch> <disks>\"", path.display(), i + 1);
        let mut words = line.split_whitespace();
        let epoch: usize = words.next().and_then(|w| w.parse().ok()).ok_or_else(damaged)?;
        let disks: u16 = words.next().and_then(|w| w.parse().ok()).ok_or_else(damaged)?;
        if epoch != i + 1 || disks == 0 || words.next().is_some() || epochs.last().is_some_and(|d| disks < *d) {
            return Err(damaged());
        }
        epochs.push(disks);
    }
    if epochs.is_empty() {
        return Err(format!("{} lists no placement epoch", path.display()));
    }
    Ok(Some(epochs))
}

fn write_epochs(data_dir: &Path, epochs: &[u16]) -> Result<(), String> {
    let text: String = epochs.iter().enumerate().map(|(i, d)| format!("{} {d}\n", i + 1)).collect();
    write_durably(data_dir, "PLACEMENT", text.as_bytes())
        .map_err(|e| format!("cannot record the placement epochs in {}: {e}", data_dir.join("PLACEMENT").display()))
}

/// The most cold disks a node may have (the placement uses the route table, built for up to
/// this many groups).
pub const DISKS_MAX: usize = strata_format::route::GROUP_COUNT_MAX as usize;

/// Checks (and on first use, labels) the node's cold disks. `create_folders`: create missing
/// disk roots (the default folders); configured HDD mount points must exist. Nothing is written
/// (epochs, labels) until every disk has passed its checks.
pub fn prepare(data_dir: &Path, hdd: &[PathBuf], create_folders: bool) -> Result<NodeDisks, String> {
    if hdd.is_empty() || hdd.len() > DISKS_MAX {
        return Err(format!("the node needs 1..={DISKS_MAX} cold disks, {} are configured", hdd.len()));
    }
    let first_start = !data_dir.join("NODE_ID").exists();
    let node = node_id(data_dir, true)?;
    let count = hdd.len() as u16;
    let old_epochs = read_epochs(data_dir)?;
    // Disks below this index were in use before this start (by this node: a data directory
    // copied from a peer gets an identity of its own and fresh disks).
    let newest = old_epochs.as_ref().and_then(|e| e.last().copied()).unwrap_or(0);
    let known = if first_start { 0 } else { newest };
    let mut epochs = old_epochs.clone().unwrap_or_default();
    if count < newest {
        return Err(format!(
            "placement epoch {} spreads windows over {newest} disks, but only {count} are configured: a disk cannot be \
             removed. Configure all {newest} (a lost disk is replaced in place and refilled with `strata-tool \
             rebuild-disk`)",
            epochs.len()
        ));
    }
    if count > newest {
        epochs.push(count);
    }
    // Check every disk before writing anything.
    let mut disks = Vec::with_capacity(hdd.len());
    let mut to_label = Vec::new();
    let mut identities: Vec<(usize, (u64, u64))> = Vec::with_capacity(hdd.len());
    for (i, root) in hdd.iter().enumerate() {
        let i = i as u16;
        if !root.is_dir() {
            if create_folders {
                std::fs::create_dir_all(root)
                    .map_err(|e| format!("cannot create disk folder {}: {e}", root.display()))?;
            } else {
                return Err(format!("cold disk {i} at {} is not a directory (is the disk mounted?)", root.display()));
            }
        }
        // The same directory under two spellings (`a` and `x/../a`, a symlink, a bind mount)
        // would be two disks writing one set of file names, each deleting the other's files.
        let identity = std::fs::metadata(root)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| format!("cannot read cold disk {i} at {}: {e}", root.display()))?;
        if let Some((j, other)) = identities.iter().find(|(_, id)| *id == identity).map(|(j, _)| (*j, &hdd[*j])) {
            return Err(format!(
                "cold disks {j} ({}) and {i} ({}) are the same directory: list each disk once",
                other.display(),
                root.display()
            ));
        }
        identities.push((usize::from(i), identity));
        let (logical_block_bytes, rotational) = device_facts(root);
        if let Some(lbs) = logical_block_bytes
            && lbs > strata_format::BLOCK_SIZE as u64
        {
            return Err(format!(
                "cold disk {i} at {} has {lbs}-byte logical blocks; cold blocks are aligned to {} bytes",
                root.display(),
                strata_format::BLOCK_SIZE
            ));
        }
        // The epoch a disk joined in: the first whose disk count includes it.
        let joined = epochs.iter().position(|d| *d > i).map_or(epochs.len(), |p| p + 1) as u32;
        let (label, down) = match check_label(root, i, node)? {
            Some(label) => (label, None),
            None if i < known => {
                // A disk the node used before, now without a label: a replacement, or a mount
                // that did not happen (the empty mount point would shadow the disk, and sinking
                // onto it would hide its files). Serve without it; never write to it.
                let why = format!(
                    "cold disk {i} at {} has no label, but this node used disk {i} before: if the disk was replaced, \
                     refill it with `strata-tool rebuild-disk --disk {i} --from <peer>`; if it is not mounted, mount it",
                    root.display()
                );
                tracing::error!(disk = i, "{why}; serving without it");
                (DiskLabel { node, disk: i, epoch: joined }, Some(why))
            }
            None => {
                if !create_folders && !is_mount_point(root) {
                    tracing::warn!(disk = i, root = %root.display(), "a new cold disk that is not a mount point: it shares the filesystem of its parent directory");
                }
                let label = DiskLabel { node, disk: i, epoch: joined };
                to_label.push((root.clone(), label));
                (label, None)
            }
        };
        disks.push(DiskInfo { root: root.clone(), label, logical_block_bytes, rotational, down });
    }
    if old_epochs.as_ref() != Some(&epochs) {
        write_epochs(data_dir, &epochs)?;
        if old_epochs.is_some() {
            tracing::info!(
                epoch = epochs.len(),
                disks = count,
                "disks added: new placement epoch (sunk windows stay where they are)"
            );
        }
    }
    for (root, label) in to_label {
        write_durably(&root, DISK_LABEL_FILE, &label.encode())
            .map_err(|e| format!("cannot label cold disk {} at {}: {e}", label.disk, root.display()))?;
        tracing::info!(disk = label.disk, root = %root.display(), "labelled an empty cold disk for this node");
    }
    Ok(NodeDisks { node_id: node, epochs, disks })
}

/// True when `path` is on another filesystem than its parent directory.
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Checks a disk's label: `Some` when it names this node and index, `None` when the disk is
/// unlabelled and empty; an error when it is another's, swapped, or unlabelled with files.
fn check_label(root: &Path, index: u16, node: u64) -> Result<Option<DiskLabel>, String> {
    let label = crate::cold::read_label(root).map_err(|e| format!("cold disk {index} at {}: {e}", root.display()))?;
    match label {
        Some(label) if label.node != node => Err(format!(
            "cold disk {index} at {} belongs to node {:016x}, and this is node {node:016x}: a disk from another \
             machine is never used (its data is not this node's). Put back this node's disk, or replace it with an \
             empty one and run `strata-tool rebuild-disk`",
            root.display(),
            label.node
        )),
        Some(label) if label.disk != index => Err(format!(
            "cold disk {index} at {} is labelled disk {}: disks are swapped or misconfigured. List the disks in \
             their labelled order",
            root.display(),
            label.disk
        )),
        Some(label) => Ok(Some(label)),
        None => {
            let entries: Vec<String> = std::fs::read_dir(root)
                .map_err(|e| format!("cannot list cold disk {index} at {}: {e}", root.display()))?
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .filter(|n| n != "lost+found" && !n.ends_with(".tmp"))
                .collect();
            if !entries.is_empty() {
                return Err(format!(
                    "cold disk {index} at {} has no Strata label but holds files ({}): it may be another system's \
                     data. Give the node an empty disk",
                    root.display(),
                    entries.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            Ok(None)
        }
    }
}

/// The logical block size and rotational flag of the device holding `path`, from sysfs.
#[must_use]
pub fn device_facts(path: &Path) -> (Option<u64>, Option<bool>) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(path) else { return (None, None) };
    let dev = meta.dev();
    // SAFETY-free decoding of the dev_t into major and minor (glibc's encoding).
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    let base = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    // A partition's queue is its parent device's.
    let queue = [base.join("queue"), base.join("../queue")].into_iter().find(|q| q.is_dir());
    let Some(queue) = queue else { return (None, None) };
    let read = |name: &str| std::fs::read_to_string(queue.join(name)).ok().and_then(|t| t.trim().parse::<u64>().ok());
    (read("logical_block_size"), read("rotational").map(|r| r == 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(dir: &Path, n: usize) -> Vec<PathBuf> {
        (0..n).map(|i| dir.join(format!("hdd{i}"))).collect()
    }

    #[test]
    fn first_start_labels_empty_disks_and_records_epoch_one() {
        let dir = tempfile::tempdir().unwrap();
        let disks = prepare(dir.path(), &roots(dir.path(), 4), true).unwrap();
        assert_eq!(disks.epochs, vec![4]);
        assert!(disks.disks.iter().all(|d| d.down.is_none() && d.label.node == disks.node_id && d.label.epoch == 1));
        // A second start finds the same labels.
        assert_eq!(prepare(dir.path(), &roots(dir.path(), 4), true).unwrap(), disks);
    }

    #[test]
    fn added_disk_starts_a_new_epoch_and_removing_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), &roots(dir.path(), 2), true).unwrap();
        let grown = prepare(dir.path(), &roots(dir.path(), 3), true).unwrap();
        assert_eq!(grown.epochs, vec![2, 3]);
        assert_eq!((grown.disks[1].label.epoch, grown.disks[2].label.epoch), (1, 2));
        let e = prepare(dir.path(), &roots(dir.path(), 2), true).unwrap_err();
        assert!(e.contains("cannot be removed"), "{e}");
    }

    #[test]
    fn foreign_swapped_and_unlabelled_nonempty_disks_are_refused_before_anything_is_written() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        prepare(a.path(), &roots(a.path(), 2), true).unwrap();
        prepare(b.path(), &roots(b.path(), 2), true).unwrap();
        // A disk of node B listed as a disk of node A, together with a new third disk.
        let mut foreign = roots(a.path(), 3);
        foreign[1] = b.path().join("hdd1");
        let e = prepare(a.path(), &foreign, true).unwrap_err();
        assert!(e.contains("belongs to node"), "{e}");
        assert_eq!(read_epochs(a.path()).unwrap(), Some(vec![2]), "no epoch was added for a refused start");
        assert!(!a.path().join("hdd2").join(DISK_LABEL_FILE).exists(), "no label was written either");
        let mut swapped = roots(a.path(), 2);
        swapped.swap(0, 1);
        assert!(prepare(a.path(), &swapped, true).unwrap_err().contains("is labelled disk"));
        let stranger = a.path().join("stranger");
        std::fs::create_dir_all(&stranger).unwrap();
        std::fs::write(stranger.join("somebody's.data"), b"x").unwrap();
        let mut with_files = roots(a.path(), 2);
        with_files.push(stranger);
        assert!(prepare(a.path(), &with_files, true).unwrap_err().contains("holds files"));
    }

    #[test]
    fn one_directory_listed_as_two_disks_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let mut hdd = roots(dir.path(), 3);
        std::fs::create_dir_all(&hdd[0]).unwrap();
        std::os::unix::fs::symlink(&hdd[0], dir.path().join("link")).unwrap();
        for alias in [dir.path().join("hdd2").join("..").join("hdd0"), dir.path().join("link")] {
            hdd[1] = alias.clone();
            let e = prepare(&data, &hdd, true).unwrap_err();
            assert!(e.contains("cold disks 0") && e.contains("are the same directory"), "{alias:?}: {e}");
            assert!(!hdd[0].join(DISK_LABEL_FILE).exists(), "{alias:?}: no label was written");
            assert_eq!(read_epochs(&data).unwrap(), None, "{alias:?}: no placement was recorded");
        }
    }

    #[test]
    fn an_unlabelled_disk_the_node_used_before_is_served_down_not_relabelled() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), &roots(dir.path(), 2), true).unwrap();
        // The disk was replaced (or its mount point is empty): no label now.
        std::fs::remove_file(dir.path().join("hdd1").join(DISK_LABEL_FILE)).unwrap();
        let disks = prepare(dir.path(), &roots(dir.path(), 2), true).unwrap();
        let why = disks.disks[1].down.as_ref().expect("disk 1 is down");
        assert!(why.contains("rebuild-disk"), "{why}");
        assert!(!dir.path().join("hdd1").join(DISK_LABEL_FILE).exists(), "it was not relabelled");
    }
}
