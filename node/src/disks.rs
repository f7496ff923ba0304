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

/// Checks (and on first use, labels) the node's cold disks. `create_folders`: create missing
/// disk roots (the default folders); configured HDD mount points must exist.
pub fn prepare(data_dir: &Path, hdd: &[PathBuf], create_folders: bool) -> Result<NodeDisks, String> {
    if hdd.is_empty() || hdd.len() > usize::from(u16::MAX) {
        return Err(format!("the node needs 1..=65535 cold disks, {} are configured", hdd.len()));
    }
    let node = node_id(data_dir, true)?;
    let count = hdd.len() as u16;
    let mut epochs = match read_epochs(data_dir)? {
        Some(epochs) => epochs,
        None => {
            write_epochs(data_dir, &[count])?;
            vec![count]
        }
    };
    let newest = *epochs.last().expect("at least one epoch");
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
        write_epochs(data_dir, &epochs)?;
        tracing::info!(
            epoch = epochs.len(),
            disks = count,
            "disks added: new placement epoch (sunk windows stay where they are)"
        );
    }
    let mut disks = Vec::with_capacity(hdd.len());
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
        let label = check_label(root, i, node, &epochs)?;
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
        disks.push(DiskInfo { root: root.clone(), label, logical_block_bytes, rotational });
    }
    Ok(NodeDisks { node_id: node, epochs, disks })
}

/// Checks a disk's label, writing one on an empty, unlabelled disk.
fn check_label(root: &Path, index: u16, node: u64, epochs: &[u16]) -> Result<DiskLabel, String> {
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
        Some(label) => Ok(label),
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
            // The epoch a disk joined in: the first whose disk count includes it.
            let joined = epochs.iter().position(|d| *d > index).map_or(epochs.len(), |p| p + 1) as u32;
            let label = DiskLabel { node, disk: index, epoch: joined };
            write_durably(root, DISK_LABEL_FILE, &label.encode())
                .map_err(|e| format!("cannot label cold disk {index} at {}: {e}", root.display()))?;
            tracing::info!(disk = index, root = %root.display(), "labelled an empty cold disk for this node");
            Ok(label)
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
