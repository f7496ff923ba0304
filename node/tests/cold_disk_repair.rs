//! The cold tier end to end on real per-disk filesystems: four loop-device ext4 filesystems
//! (as root; elsewhere, with a loud notice, four folders). Node A loads old data; a copy of its
//! SSD state becomes node B (a replica: same writes, same versions); both sink. Their cold disks
//! must be byte-identical. Then one block on A's disk 2 is corrupted and all of disk 3 deleted:
//! `strata-tool scrub` finds exactly that damage; A serves everything else and answers CORRUPTED
//! for exactly the damaged keys; `repair` and `rebuild-disk` from B restore byte-identical disks
//! and every read, first from B's directories, then (after new damage) from B running, over the
//! network; and a disk of another node, or a swapped disk, is refused at start.

mod common;

use common::{Node, free_ports, now_us};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use strata_format::cold::{ColdFileId, decode_cold_block, disk_of, peek_cold_block};
use strata_format::key::bucket_of;
use strata_format::protocol::Status;
use strata_node::client::ClientError;

const HOUR_US: u64 = 3_600_000_000;

/// Four disks: loop-mounted ext4 filesystems when possible, else folders. Unmounts on drop.
struct Disks {
    roots: Vec<PathBuf>,
    mounted: Vec<PathBuf>,
}

impl Drop for Disks {
    fn drop(&mut self) {
        for m in &self.mounted {
            let _ = Command::new("umount").arg(m).status();
        }
    }
}

fn run(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
}

fn make_disks(dir: &Path) -> Disks {
    let mut disks = Disks { roots: Vec::new(), mounted: Vec::new() };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let have_tools = run(Command::new("mkfs.ext4").arg("-V")) && run(Command::new("losetup").arg("--version"));
    for i in 0..4 {
        let mount = dir.join(format!("mnt{i}"));
        std::fs::create_dir_all(&mount).unwrap();
        if root && have_tools {
            let image = dir.join(format!("disk{i}.img"));
            std::fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
            let made = run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))
                && run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mount));
            if made {
                disks.mounted.push(mount.clone());
                // A fresh ext4 holds lost+found; the node accepts it on an unlabelled disk.
                disks.roots.push(mount);
                continue;
            }
        }
        disks.roots.push(mount);
    }
    if disks.mounted.len() == 4 {
        println!("cold disks: four loop-device ext4 filesystems");
    } else {
        eprintln!(
            "\n*** NOTICE: not root, or no mkfs.ext4/losetup/loop devices: the cold disks are plain folders, \
             not separate filesystems. The logic is the same; run as root to test real per-disk filesystems. ***\n"
        );
    }
    disks
}

fn config(path: &Path, hdd: &[PathBuf], hot_horizon: &str) {
    let list: Vec<String> = hdd.iter().map(|p| format!("{:?}", p.to_str().unwrap())).collect();
    let text = format!(
        "[shard]\nwindow = \"1 h\"\nsettle-after = \"1 h\"\n\n[cold]\nhdd = [{}]\nhot-horizon = \"{hot_horizon}\"\nfile-size = \"2 MiB\"\n",
        list.join(", ")
    );
    std::fs::write(path, text).unwrap();
}

fn tool() -> PathBuf {
    let strata = PathBuf::from(env!("CARGO_BIN_EXE_strata"));
    let tool = strata.with_file_name("strata-tool");
    if !tool.exists() {
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build.args(["build", "-p", "strata-tools"]);
        if strata.components().any(|c| c.as_os_str() == "release") {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success(), "strata-tool builds");
    }
    tool
}

fn strata_tool(args: &[&str]) -> (i32, String) {
    let out = Command::new(tool()).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.stderr.is_empty() {
        eprintln!("strata-tool {args:?} stderr: {}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.code().unwrap_or(-1), text)
}

fn hdd_args(hdd: &[PathBuf]) -> Vec<String> {
    hdd.iter().flat_map(|p| ["--hdd".to_string(), p.to_str().unwrap().to_string()]).collect()
}

fn entries() -> Vec<(Vec<u8>, u64, Vec<u8>)> {
    // Three whole hours, three days ago.
    let base = (now_us() - 72 * HOUR_US) / HOUR_US * HOUR_US;
    (0..3000u64)
        .map(|i| {
            let pkey = format!("user-{}", i % 300).into_bytes();
            let ts = base + (i * 7_919_000_003) % (3 * HOUR_US);
            let value = format!("value-{i}-").repeat(12).into_bytes();
            (pkey, ts, value)
        })
        .collect()
}

/// Waits until the node has sunk `windows` windows (over all shards) and is idle.
fn wait_sunk(node: &Node, windows: u64) {
    let start = Instant::now();
    while node.metric_sum("strata_cold_windows") < windows {
        assert!(start.elapsed() < Duration::from_secs(60), "windows did not sink; log:\n{}", node.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every file under each disk's shard directories, by disk and relative path.
fn disk_files(roots: &[PathBuf]) -> BTreeMap<(usize, String), Vec<u8>> {
    let mut out = BTreeMap::new();
    for (i, root) in roots.iter().enumerate() {
        for shard in std::fs::read_dir(root).unwrap().filter_map(Result::ok) {
            let name = shard.file_name().to_string_lossy().into_owned();
            if !shard.path().is_dir() || !name.starts_with('s') {
                continue;
            }
            for file in std::fs::read_dir(shard.path()).unwrap().filter_map(Result::ok) {
                let rel = format!("{name}/{}", file.file_name().to_string_lossy());
                out.insert((i, rel), std::fs::read(file.path()).unwrap());
            }
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().filter_map(Result::ok) {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Reads every entry; returns the keys that failed (each must fail with CORRUPTED).
/// Damages `path`: `bytes` written over it at `offset`, synced.
fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
    f.sync_all().unwrap();
}

/// Loses a whole disk: everything under its root, label included.
fn empty_disk(root: &Path) {
    for entry in std::fs::read_dir(root).unwrap().filter_map(Result::ok) {
        if entry.path().is_dir() {
            std::fs::remove_dir_all(entry.path()).unwrap();
        } else {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
}

fn read_all(node: &Node, data: &[(Vec<u8>, u64, Vec<u8>)]) -> BTreeSet<(Vec<u8>, u64)> {
    let mut client = node.client();
    let mut failed = BTreeSet::new();
    for (pkey, ts, value) in data {
        match client.get(pkey, *ts) {
            Ok(Some((_, got))) => assert_eq!(&got, value, "{pkey:?}@{ts}"),
            Ok(None) => panic!("{pkey:?}@{ts} reads as absent"),
            Err(ClientError::Failed { status: Status::Corrupted, message }) => {
                assert!(message.contains("cold"), "the error names the cold tier: {message}");
                failed.insert((pkey.clone(), *ts));
            }
            Err(e) => panic!("{pkey:?}@{ts}: {e}"),
        }
    }
    failed
}

#[test]
fn scrub_repair_and_rebuild_restore_damaged_cold_disks() {
    let tmp = tempfile::tempdir().unwrap();
    let disks = make_disks(tmp.path());
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let hdd_b: Vec<PathBuf> = (0..4).map(|i| dir_b.join(format!("hdd{i}"))).collect();
    let (cfg_a, cfg_b) = (tmp.path().join("a.toml"), tmp.path().join("b.toml"));
    let data = entries();

    // Load A with a far horizon (nothing sinks), stop it (the memtable is flushed at shutdown).
    config(&cfg_a, &disks.roots, "1000 days");
    let mut a = Node::start(&dir_a, &["--config", cfg_a.to_str().unwrap()]);
    let mut client = a.client();
    for (pkey, ts, value) in &data {
        client.put(pkey, *ts, value).unwrap();
    }
    drop(client);
    assert_eq!(a.terminate(), Some(0));
    // B: a replica of A's SSD state (same entries, same versions), with its own identity and disks.
    for name in ["SHARDS", "PLACEMENT", "shard-0", "shard-1"] {
        let from = dir_a.join(name);
        if from.is_dir() {
            copy_dir(&from, &dir_b.join(name));
        } else {
            std::fs::create_dir_all(&dir_b).unwrap();
            std::fs::copy(&from, dir_b.join(name)).unwrap();
        }
    }
    // Both sink.
    config(&cfg_a, &disks.roots, "1 day");
    config(&cfg_b, &hdd_b, "1 day");
    let windows: BTreeSet<(u16, u64)> = data
        .iter()
        .map(|(p, ts, _)| (strata_format::route::shard_of(bucket_of(p), common::SHARDS as u16), ts / HOUR_US))
        .collect();
    let mut a = Node::start(&dir_a, &["--config", cfg_a.to_str().unwrap()]);
    for h in &hdd_b {
        std::fs::create_dir_all(h).unwrap();
    }
    let mut b = Node::start(&dir_b, &["--config", cfg_b.to_str().unwrap()]);
    wait_sunk(&a, windows.len() as u64);
    wait_sunk(&b, windows.len() as u64);
    assert!(read_all(&a, &data).is_empty(), "every sunk entry reads back from A");
    assert_eq!(a.terminate(), Some(0));
    assert_eq!(b.terminate(), Some(0));
    let files_a = disk_files(&disks.roots);
    let files_b = disk_files(&hdd_b);
    assert!(files_a.len() >= 8, "sinking wrote cold files: {:?}", files_a.keys().collect::<Vec<_>>());
    if files_a != files_b {
        let a_keys: Vec<_> = files_a.keys().collect();
        let b_keys: Vec<_> = files_b.keys().collect();
        let differing: Vec<_> = files_a.iter().filter(|(k, v)| files_b.get(*k) != Some(v)).map(|(k, _)| k).collect();
        let first = differing.first().map(|k| {
            let (a, b) = (&files_a[*k], &files_b[*k]);
            let at = a.iter().zip(b.iter()).position(|(x, y)| x != y);
            (
                a.len(),
                b.len(),
                at,
                at.map(|i| (a[i.saturating_sub(8)..i + 24].to_vec(), b[i.saturating_sub(8)..i + 24].to_vec())),
            )
        });
        panic!(
            "independent sinks of the same data give byte-identical disks: A {a_keys:?}, B {b_keys:?}, differing {differing:?}, first {first:?}"
        );
    }
    println!("{} cold files, byte-identical on A and B", files_a.len());

    // Damage: corrupt one block of a file on disk 2; delete all of disk 3.
    let ((_, victim), bytes) = files_a.iter().find(|((d, _), _)| *d == 2).expect("disk 2 holds a file");
    let victim_path = disks.roots[2].join(victim);
    let block = peek_cold_block(&bytes[4096..]).unwrap();
    let block_len = u64::from(block.block_len.get());
    let id = ColdFileId::parse(victim[1..4].parse().unwrap(), victim.split('/').nth(1).unwrap()).unwrap();
    let in_block: BTreeSet<(Vec<u8>, u64)> = decode_cold_block(&bytes[4096..4096 + block_len as usize], id, 4096)
        .unwrap()
        .entries()
        .map(|e| {
            let k = strata_format::key::decode_key(e.unwrap().key).unwrap();
            (k.pkey.to_vec(), k.ts)
        })
        .collect();
    overwrite(&victim_path, 4096 + 200, &[0xAB; 16]);
    empty_disk(&disks.roots[3]);
    let disk3_files = files_a.keys().filter(|(d, _)| *d == 3).count();

    // inspect decodes a damaged cold file and says where the damage starts; it reads the
    // manifest and a link table of the sunk windows.
    let (code, out) = strata_tool(&["inspect", "--json", victim_path.to_str().unwrap()]);
    assert_eq!(code, 1, "inspect reports the damage: {out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["damage"][0]["offset"].as_u64(), Some(4096), "{out}");
    let manifest = dir_a.join("shard-0/tables/MANIFEST");
    let (code, out) = strata_tool(&["inspect", "--json", manifest.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["cold_windows"].as_u64().is_some_and(|n| n > 0), "{out}");
    let table = std::fs::read_dir(dir_a.join("shard-0/tables"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "sst"))
        .expect("shard 0 has link tables");
    let (code, out) = strata_tool(&["inspect", "--json", table.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["entries"].as_u64().is_some_and(|n| n > 0), "{out}");
    assert_eq!(report["block_links"], report["entries"], "every entry of a link table is a block link: {out}");
    // A file's kind comes from its first bytes, whatever its name; when they are damaged, from
    // its name, so the damage is reported as damage; a file neither names is refused.
    let copies = tempfile::tempdir().unwrap();
    let renamed = copies.path().join("MANIFEST.bak");
    std::fs::copy(&manifest, &renamed).unwrap();
    assert_eq!(strata_tool(&["inspect", renamed.to_str().unwrap()]).0, 0, "a manifest by its magic");
    let mut smashed = std::fs::read(&table).unwrap();
    smashed[..4].copy_from_slice(b"XXXX");
    let damaged = copies.path().join("tbl-damaged.sst");
    std::fs::write(&damaged, &smashed).unwrap();
    assert_eq!(strata_tool(&["inspect", damaged.to_str().unwrap()]).0, 1, "a table damaged at its start");
    let unknown = copies.path().join("table.bin");
    std::fs::write(&unknown, &smashed).unwrap();
    assert_eq!(strata_tool(&["inspect", unknown.to_str().unwrap()]).0, 2, "neither magic nor name");

    // Scrub finds exactly that damage.
    let mut args = vec!["scrub", "--json", "--data-dir", dir_a.to_str().unwrap()];
    let hdd_a = hdd_args(&disks.roots);
    args.extend(hdd_a.iter().map(String::as_str));
    let (code, out) = strata_tool(&args);
    assert_eq!(code, 1, "scrub exits 1 on damage: {out}");
    // A command line that does not parse is not damage: exit 2.
    let (bad_code, _) = strata_tool(&["scrub", "--disk", "three", "--data-dir", dir_a.to_str().unwrap()]);
    assert_eq!(bad_code, 2, "a bad command line exits 2");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let damage = report["damage"].as_array().unwrap();
    let missing: Vec<_> = damage.iter().filter(|d| d["missing"].as_bool() == Some(true)).collect();
    let bad: Vec<_> = damage.iter().filter(|d| d["missing"].as_bool() == Some(false)).collect();
    assert_eq!(missing.len(), disk3_files, "every file of disk 3 is reported missing: {out}");
    assert!(missing.iter().all(|d| d["disk"] == 3));
    assert_eq!(bad.len(), 1, "exactly one damaged range: {out}");
    assert_eq!(
        (bad[0]["disk"].as_u64(), bad[0]["offset"].as_u64(), bad[0]["len"].as_u64()),
        (Some(2), Some(4096), Some(block_len))
    );
    assert!(bad[0]["file"].as_str().unwrap().ends_with(victim.as_str()));

    // A serves everything else; exactly the damaged keys fail, with CORRUPTED.
    let a = Node::start(&dir_a, &["--config", cfg_a.to_str().unwrap()]);
    let failed = read_all(&a, &data);
    let expected_failed: BTreeSet<(Vec<u8>, u64)> = data
        .iter()
        .filter(|(p, ts, _)| disk_of(bucket_of(p), ts / HOUR_US, 4) == 3)
        .map(|(p, ts, _)| (p.clone(), *ts))
        .chain(in_block)
        .collect();
    assert_eq!(failed, expected_failed, "exactly the keys of the damaged block and of disk 3 fail");
    // Metrics are refreshed every half second.
    let start = Instant::now();
    while a.metric_sum("strata_cold_disk_corrupt_blocks_total") == 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "bad blocks are counted in the metrics");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(a.metric_sum("strata_cold_repair_queue") > 0, "bad blocks are on the repair queue");
    println!("{} of {} keys failed cleanly with CORRUPTED; the rest served", failed.len(), data.len());
    // The repair tools refuse to run beside the node.
    let (from, hdd_b_args) = (dir_b.to_str().unwrap(), hdd_args(&hdd_b));
    let mut repair = vec!["repair", "--json", "--data-dir", dir_a.to_str().unwrap(), "--from", from];
    repair.extend(hdd_a.iter().map(String::as_str));
    for h in hdd_b_args.chunks(2) {
        repair.extend(["--from-hdd", h[1].as_str()]);
    }
    let (code, _) = strata_tool(&repair);
    assert_eq!(code, 2, "repair refuses while the node runs");
    let mut a = a;
    assert_eq!(a.terminate(), Some(0));

    // Repair disk 2 and rebuild disk 3 from B: byte-identical again, and every read works.
    let mut repair2 = repair.clone();
    repair2.extend(["--disk", "2"]);
    let (code, out) = strata_tool(&repair2);
    assert_eq!(code, 0, "repair of disk 2 succeeds: {out}");
    // As if an earlier rebuild was interrupted: one file already copied, one half-copied (with
    // garbage where the copy had not reached yet).
    let disk3: Vec<&String> = files_b.keys().filter(|(d, _)| *d == 3).map(|(_, rel)| rel).collect();
    assert!(disk3.len() >= 2, "disk 3 holds at least two files");
    let done = disks.roots[3].join(disk3[0]);
    std::fs::create_dir_all(done.parent().unwrap()).unwrap();
    std::fs::write(&done, &files_b[&(3, disk3[0].clone())]).unwrap();
    let partial = disks.roots[3].join(disk3[1]).with_extension("cold.partial");
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    let mut half = files_b[&(3, disk3[1].clone())][..8192].to_vec();
    half.extend_from_slice(&[0xEE; 4096]);
    std::fs::write(&partial, &half).unwrap();
    let mut rebuild = repair.clone();
    rebuild[0] = "rebuild-disk";
    rebuild.extend(["--disk", "3"]);
    let (code, out) = strata_tool(&rebuild);
    assert_eq!(code, 0, "rebuild of disk 3 succeeds: {out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["rebuilt"]["files_present"].as_u64(), Some(1), "the copied file is kept: {out}");
    assert_eq!(report["rebuilt"]["files_copied"].as_u64(), Some(disk3.len() as u64 - 1), "{out}");
    assert!(!partial.exists(), "the partial copy was finished and renamed");
    let (code, out) = strata_tool(&args);
    assert_eq!(code, 0, "a scrub after repair finds nothing: {out}");
    assert!(disk_files(&disks.roots) == files_b, "A's disks are byte-identical to B's again");
    let mut a = Node::start(&dir_a, &["--config", cfg_a.to_str().unwrap()]);
    assert!(read_all(&a, &data).is_empty(), "every key reads back after repair");
    assert_eq!(a.terminate(), Some(0));

    // Again from a running B, over the network (COLD_READ): corrupt a block on disk 1, lose
    // disk 0 whole.
    let ((_, victim), _) = files_a.iter().find(|((d, _), _)| *d == 1).expect("disk 1 holds a file");
    overwrite(&disks.roots[1].join(victim), 4096 + 100, &[0x5A; 64]);
    empty_disk(&disks.roots[0]);
    let mut b = Node::start(&dir_b, &["--config", cfg_b.to_str().unwrap()]);
    let peer = b.addr.to_string();
    let mut over_net = vec!["repair", "--json", "--data-dir", dir_a.to_str().unwrap(), "--from-node", &peer];
    over_net.extend(hdd_a.iter().map(String::as_str));
    let mut repair1 = over_net.clone();
    repair1.extend(["--disk", "1"]);
    let (code, out) = strata_tool(&repair1);
    assert_eq!(code, 0, "repair of disk 1 from the running B succeeds: {out}");
    assert!(out.contains(&format!("node {peer}")), "the repair names the node it copied from: {out}");
    let mut rebuild0 = over_net.clone();
    rebuild0[0] = "rebuild-disk";
    rebuild0.extend(["--disk", "0"]);
    let (code, out) = strata_tool(&rebuild0);
    assert_eq!(code, 0, "rebuild of disk 0 from the running B succeeds: {out}");
    assert_eq!(b.terminate(), Some(0));
    let (code, out) = strata_tool(&args);
    assert_eq!(code, 0, "a scrub after the network repair finds nothing: {out}");
    assert!(disk_files(&disks.roots) == files_b, "A's disks are byte-identical to B's again");
    let mut a = Node::start(&dir_a, &["--config", cfg_a.to_str().unwrap()]);
    assert!(read_all(&a, &data).is_empty(), "every key reads back after the network repair");
    assert_eq!(a.terminate(), Some(0));

    // A disk from another node, and a swapped pair, are refused at start.
    let mut foreign = disks.roots.clone();
    foreign[1] = hdd_b[1].clone();
    let mut swapped = disks.roots.clone();
    swapped.swap(0, 1);
    for (hdd, why) in [(foreign, "belongs to node"), (swapped, "is labelled disk")] {
        let cfg = tmp.path().join("bad.toml");
        config(&cfg, &hdd, "1 day");
        let out = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["serve", "--data-dir", dir_a.to_str().unwrap(), "--config", cfg.to_str().unwrap()])
            .args(["--shards", "2", "--listen", &format!("127.0.0.1:{}", free_ports(1)), "--status-listen", ""])
            .args(["--shard-port-base", "0"])
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "the node refuses to start: {log}");
        assert!(log.contains(why), "the refusal says why ({why}): {log}");
    }
}
