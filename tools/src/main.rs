//! `strata-tool`: operator tools for Strata's data directories.
//!
//! `inspect` (read-only decoding of WAL segments and cold files, saying where damage starts),
//! `check-env` (the start-up checks, per SSD and HDD path), `scrub`, `repair` and `rebuild-disk`
//! (the cold disks), `route` (where a key lives; `route generate` writes the committed routing
//! table) and `ticket issue` (signs a ticket with the node's secret).

mod cold;
mod inspect;

use bpaf::Bpaf;
use std::path::{Path, PathBuf};
use std::time::Instant;
use strata_format::key::BUCKET_COUNT;
use strata_format::route::{GROUP_COUNT_MAX, ROUTE_BIN, RouteHeader, RouteTable};
use strata_ioengine::envcheck::{EnvRequirements, check_environment};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Clone, Bpaf)]
#[bpaf(options, version)]
/// Operator tools for Strata data directories.
enum Command {
    /// Decode a WAL segment, table, manifest or cold file, or a shard's `wal/` directory.
    ///
    /// Read-only. The file's kind is read from its first bytes. Exit status 1 when damage is
    /// found, 2 when the path is not a Strata file.
    #[bpaf(command)]
    Inspect {
        /// Print JSON instead of text.
        #[bpaf(long)]
        json: bool,
        /// A file, or a directory of WAL segment files.
        #[bpaf(positional("PATH"))]
        path: PathBuf,
    },
    /// Run the start-up checks for a data directory and its cold disks.
    ///
    /// io_uring, memlock, O_DIRECT, and each disk's logical block size, rotation and label.
    #[bpaf(command("check-env"))]
    CheckEnv {
        /// Print JSON instead of text.
        #[bpaf(long)]
        json: bool,
        #[bpaf(external(node_args))]
        node: NodeArgs,
    },
    /// Verify every cold block's CRC; report missing files and damaged ranges.
    ///
    /// Reads every block of every cold file the node's manifests name, at high queue depth.
    /// Exit status 0 when clean, 1 when damage was found, 2 on an error.
    #[bpaf(command)]
    Scrub {
        /// Print JSON instead of text.
        #[bpaf(long)]
        json: bool,
        /// Only this disk (by index).
        #[bpaf(long, argument("N"))]
        disk: Option<u16>,
        /// Record the damage found in `<disk>/QUARANTINE.json` for the repair runbook.
        #[bpaf(long)]
        quarantine: bool,
        #[bpaf(external(node_args))]
        node: NodeArgs,
    },
    /// Rewrite every damaged range a scrub finds from a peer's copy (the node stopped).
    ///
    /// The peer is a node of the same group (byte-identical disks); every range is verified
    /// after it is written.
    #[bpaf(command)]
    Repair {
        #[bpaf(long)]
        json: bool,
        /// Only this disk (by index).
        #[bpaf(long, argument("N"))]
        disk: Option<u16>,
        #[bpaf(external(peer_args))]
        peer: PeerArgs,
        #[bpaf(external(node_args))]
        node: NodeArgs,
    },
    /// Refill a replaced (empty) disk from a peer's same-numbered disk (the node stopped).
    ///
    /// Every block is verified; an interrupted rebuild resumes where it stopped.
    #[bpaf(command("rebuild-disk"))]
    RebuildDisk {
        #[bpaf(long)]
        json: bool,
        /// The disk to rebuild (by index).
        #[bpaf(long, argument("N"))]
        disk: u16,
        #[bpaf(external(peer_args))]
        peer: PeerArgs,
        #[bpaf(external(node_args))]
        node: NodeArgs,
    },
    /// The routing table: bucket -> group for every group count 1..=1000.
    #[bpaf(command)]
    Route(#[bpaf(external(route_command))] RouteCommand),
    /// Issue tickets: signed, expiring tokens naming the pkeys a client may touch.
    #[bpaf(command)]
    Ticket(#[bpaf(external(ticket_command))] TicketCommand),
}

/// The data directory of a node started with no configuration.
const DATA_DIR_DEFAULT: &str = "./strata-data";

/// Which node: its data directory and cold disks.
#[derive(Debug, Clone, Bpaf)]
struct NodeArgs {
    /// The node's data directory.
    #[bpaf(long("data-dir"), argument("DIR"), fallback(PathBuf::from(DATA_DIR_DEFAULT)), debug_fallback)]
    data_dir: PathBuf,
    /// The node's cold disks, in order (repeat); default: the four folders in the data directory.
    #[bpaf(long("hdd"), argument("PATH"))]
    hdd: Vec<PathBuf>,
}

/// The peer to copy from, a node of the same group: by its directories, or a running node
/// over the network.
#[derive(Debug, Clone, Bpaf)]
enum PeerArgs {
    Dirs {
        /// The peer's data directory.
        #[bpaf(long("from"), argument("DIR"))]
        from: PathBuf,
        /// The peer's cold disks, in order (repeat); default: the folders in its data directory.
        #[bpaf(long("from-hdd"), argument("PATH"))]
        from_hdd: Vec<PathBuf>,
    },
    Node {
        /// A running peer node's address (its node port), read with COLD_READ.
        #[bpaf(long("from-node"), argument("HOST:PORT"))]
        from_node: String,
        /// An admin ticket for the peer, in hex (`strata-tool ticket issue --admin`), when it
        /// requires tickets.
        #[bpaf(long("ticket"), argument("HEX"))]
        ticket: Option<String>,
    },
}

/// Opens the peer, refusing one whose layout differs from ours (directories only: a running
/// peer's files are checked one by one, by their headers).
fn open_peer(ours: &cold::Layout, peer: &PeerArgs) -> Result<cold::Peer, String> {
    match peer {
        PeerArgs::Dirs { from, from_hdd } => {
            let theirs = cold::Layout::read(from, from_hdd)?;
            cold::check_peer(ours, &theirs)?;
            Ok(cold::Peer::Dirs(theirs))
        }
        PeerArgs::Node { from_node, ticket } => {
            use std::net::ToSocketAddrs as _;
            let addr = from_node
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve --from-node {from_node}: {e}"))?
                .next()
                .ok_or_else(|| format!("--from-node {from_node} resolves to no address"))?;
            let ticket = ticket
                .as_deref()
                .map(strata_format::ticket::decode_hex)
                .transpose()
                .map_err(|e| format!("--ticket: {e}"))?;
            cold::Peer::node(addr, ticket)
        }
    }
}

#[derive(Debug, Clone, Bpaf)]
enum TicketCommand {
    /// Sign a ticket with the node's secret and print it in hex (pass it to the client library).
    #[bpaf(command)]
    Issue {
        /// The node's ticket secret (the file named by `ticket-secret-file`).
        #[bpaf(long("secret-file"), argument("FILE"))]
        secret_file: PathBuf,
        /// A pkey the ticket may touch (repeatable).
        #[bpaf(long, argument("PKEY"))]
        pkey: Vec<String>,
        /// A pkey prefix the ticket may touch (repeatable).
        #[bpaf(long, argument("PREFIX"))]
        prefix: Vec<String>,
        /// An admin ticket: every pkey, and admin operations.
        #[bpaf(long)]
        admin: bool,
        /// Seconds until the ticket expires.
        #[bpaf(long("ttl-seconds"), argument("SECONDS"), fallback(3600), display_fallback)]
        ttl_seconds: u64,
    },
}

#[derive(Debug, Clone, Bpaf)]
enum RouteCommand {
    /// Generate the routing table and write it.
    ///
    /// Run from the repository root to refresh the committed `format/data/route.bin`.
    #[bpaf(command)]
    Generate {
        /// Where to write the table.
        #[bpaf(long, argument("PATH"), fallback(PathBuf::from("format/data/route.bin")), debug_fallback)]
        out: PathBuf,
    },
    /// Where a key lives: bucket, group, shard, tier, disk and cold file.
    Key {
        #[bpaf(long)]
        json: bool,
        /// Groups in the cluster (1: a single node).
        #[bpaf(long, argument("N"), fallback(1), display_fallback)]
        groups: u16,
        /// The node's configuration: its window, hot horizon, data directory and cold disks
        /// (--data-dir and --hdd override the last two); default: the embedded defaults.
        #[bpaf(long, argument("FILE"))]
        config: Option<PathBuf>,
        /// The node's data directory (default: the configuration's, or ./strata-data).
        #[bpaf(long("data-dir"), argument("DIR"))]
        data_dir: Option<PathBuf>,
        /// The node's cold disks, in order (repeat); default: the configuration's, or the four
        /// folders in the data directory.
        #[bpaf(long("hdd"), argument("PATH"))]
        hdd: Vec<PathBuf>,
        /// The pkey (as text).
        #[bpaf(positional("PKEY"))]
        pkey: String,
        /// The timestamp (default: timeless).
        #[bpaf(positional("TS"))]
        ts: Option<u64>,
    },
}

fn main() {
    let code = match strata_node::config::parse_command_line(command()) {
        Command::Inspect { json, path } => inspect::run(&path, json),
        Command::CheckEnv { json, node } => check_env(&node, json),
        Command::Scrub { json, disk, quarantine, node } => report(scrub(&node, disk, quarantine, json)),
        Command::Repair { json, disk, peer, node } => report(repair(&node, &peer, disk, json)),
        Command::RebuildDisk { json, disk, peer, node } => report(rebuild_disk(&node, &peer, disk, json)),
        Command::Route(RouteCommand::Generate { out }) => route_generate(&out),
        Command::Route(RouteCommand::Key { json, groups, config, data_dir, hdd, pkey, ts }) => {
            report(route_key(data_dir, hdd, config.as_deref(), groups, pkey.as_bytes(), ts, json))
        }
        Command::Ticket(TicketCommand::Issue { secret_file, pkey, prefix, admin, ttl_seconds }) => {
            ticket_issue(&secret_file, pkey, prefix, admin, ttl_seconds)
        }
    };
    std::process::exit(code);
}

fn ticket_issue(
    secret_file: &std::path::Path,
    pkeys: Vec<String>,
    prefixes: Vec<String>,
    admin: bool,
    ttl_seconds: u64,
) -> i32 {
    use strata_format::ticket::{Scope, TICKET_SECRET_LEN_MIN, Ticket, encode_hex};
    let secret = match std::fs::read(secret_file) {
        Ok(secret) if secret.len() >= TICKET_SECRET_LEN_MIN => secret,
        Ok(secret) => {
            eprintln!(
                "{} holds {} bytes; a secret needs at least {TICKET_SECRET_LEN_MIN}",
                secret_file.display(),
                secret.len()
            );
            return 1;
        }
        Err(e) => {
            eprintln!("cannot read {}: {e}", secret_file.display());
            return 1;
        }
    };
    if pkeys.is_empty() && prefixes.is_empty() && !admin {
        eprintln!("this ticket would cover no pkey: give --pkey, --prefix or --admin");
        return 2;
    }
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // A TTL past the end of u64 seconds is refused by name rather than wrapped.
    let Some(expires_at_s) = now_s.checked_add(ttl_seconds).filter(|_| ttl_seconds > 0) else {
        eprintln!("--ttl-seconds {ttl_seconds} is out of range: give 1 or more, small enough to add to the time now");
        return 2;
    };
    let scopes: Vec<Scope> = pkeys
        .into_iter()
        .map(|p| Scope::Exact(p.into_bytes()))
        .chain(prefixes.into_iter().map(|p| Scope::Prefix(p.into_bytes())))
        .collect();
    let ticket = Ticket { admin, issued_at_s: now_s, expires_at_s, scopes };
    if let Err(e) = ticket.validate() {
        eprintln!("cannot issue this ticket: {e}");
        return 1;
    }
    println!("{}", encode_hex(&ticket.sign(&secret)));
    0
}

fn check_env(node: &NodeArgs, json: bool) -> i32 {
    let hdd =
        if node.hdd.is_empty() { strata_node::disks::default_hdd_paths(&node.data_dir) } else { node.hdd.clone() };
    let mut paths = vec![node.data_dir.clone()];
    paths.extend(hdd.iter().filter(|p| p.is_dir()).cloned());
    let req = EnvRequirements {
        // The node's uring runtime registers no memory: the locked-memory limit does not matter.
        memlock_bytes_needed: 0,
        direct_io_paths: paths,
    };
    let mut findings: Vec<(String, bool, String)> =
        check_environment(&req).into_iter().map(|f| (f.check.to_string(), f.ok, f.detail)).collect();
    for (i, root) in hdd.iter().enumerate() {
        if !root.is_dir() {
            findings.push(("cold disk".into(), false, format!("disk {i} at {} is not a directory", root.display())));
            continue;
        }
        let (lbs, rotational) = strata_node::disks::device_facts(root);
        let ok = lbs.is_none_or(|b| b <= strata_format::BLOCK_SIZE as u64);
        let label = match strata_node::cold::read_label(root) {
            Ok(Some(l)) => format!("labelled disk {} of node {:016x}", l.disk, l.node),
            Ok(None) => "no label yet".into(),
            Err(e) => format!("label unreadable: {e}"),
        };
        findings.push((
            "cold disk".into(),
            ok,
            format!(
                "disk {i} at {}: logical block {}, {}, {label}",
                root.display(),
                lbs.map_or("unknown".into(), |b| format!("{b} B")),
                match rotational {
                    Some(true) => "rotational",
                    Some(false) => "not rotational (an SSD standing in for an HDD)",
                    None => "rotational flag unknown",
                }
            ),
        ));
    }
    let ok = findings.iter().all(|f| f.1);
    if json {
        let list: Vec<_> =
            findings.iter().map(|f| serde_json::json!({ "check": f.0, "ok": f.1, "detail": f.2 })).collect();
        println!("{}", serde_json::json!({ "ok": ok, "findings": list }));
    } else {
        for f in &findings {
            println!("{:<11} {:<4} {}", f.0, if f.1 { "ok" } else { "FAIL" }, f.2);
        }
    }
    i32::from(!ok)
}

/// Exit code of a tool that printed its own report: 0 clean, 1 damage or failure left, 2 error.
fn report(outcome: Result<bool, String>) -> i32 {
    match outcome {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

fn layout(node: &NodeArgs) -> Result<cold::Layout, String> {
    cold::Layout::read(&node.data_dir, &node.hdd)
}

fn check_disk(layout: &cold::Layout, disk: Option<u16>) -> Result<(), String> {
    match disk {
        Some(d) if usize::from(d) >= layout.hdd.len() => {
            Err(format!("disk {d} does not exist: the node has {} disks", layout.hdd.len()))
        }
        _ => Ok(()),
    }
}

/// Scrubs; prints the report; `Ok(true)` when nothing is damaged.
fn scrub(node: &NodeArgs, disk: Option<u16>, quarantine: bool, json: bool) -> Result<bool, String> {
    let layout = layout(node)?;
    check_disk(&layout, disk)?;
    let (files, scans) = scan_all(&layout, disk, json)?;
    let damage: Vec<&cold::Damage> = scans.iter().flat_map(|s| &s.damage).collect();
    let blocks: u64 = scans.iter().map(|s| s.blocks).sum();
    let bytes: u64 = scans.iter().map(|s| s.bytes).sum();
    if quarantine {
        for (d, root) in layout.hdd.iter().enumerate() {
            let mine: Vec<&&cold::Damage> = damage.iter().filter(|x| usize::from(x.disk) == d).collect();
            if disk.is_some_and(|only| usize::from(only) != d) {
                continue;
            }
            let text = serde_json::to_string_pretty(&mine).expect("damage serializes");
            strata_node::disks::write_durably(root, "QUARANTINE.json", text.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", root.join("QUARANTINE.json").display()))?;
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "files": files.len(), "blocks": blocks, "bytes": bytes, "damage": damage, "ok": damage.is_empty() })
        );
    } else {
        println!("scrubbed {} files: {blocks} good blocks, {bytes} bytes", files.len());
        for d in &damage {
            if d.missing {
                println!("disk {}: MISSING {}", d.disk, d.file.display());
            } else {
                println!(
                    "disk {}: BAD {} offset {} length {}: {}",
                    d.disk,
                    d.file.display(),
                    d.offset,
                    d.len,
                    d.reason
                );
            }
        }
        if damage.is_empty() {
            println!("no damage");
        }
    }
    Ok(damage.is_empty())
}

fn scan_all(
    layout: &cold::Layout,
    disk: Option<u16>,
    quiet: bool,
) -> Result<(Vec<cold::ExpectedFile>, Vec<cold::FileScan>), String> {
    let files = layout.expected_files(disk)?;
    let progress = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(files.len() as u64).with_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} files {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        )
    };
    let scans = cold::scrub(&files, &progress)?;
    progress.finish_and_clear();
    Ok((files, scans))
}

fn repair(node: &NodeArgs, peer: &PeerArgs, disk: Option<u16>, json: bool) -> Result<bool, String> {
    let ours = layout(node)?;
    check_disk(&ours, disk)?;
    let theirs = open_peer(&ours, peer)?;
    let _lock = cold::lock(&ours.data_dir)?;
    let (_, scans) = scan_all(&ours, disk, json)?;
    let damage: Vec<cold::Damage> = scans.into_iter().flat_map(|s| s.damage).collect();
    let repaired = cold::repair(&ours, theirs, damage)?;
    let ok = repaired.iter().all(|r| r.ok);
    // Scrub again: the disk is clean only if a fresh scrub says so.
    let (_, after) = scan_all(&ours, disk, true)?;
    let left: Vec<cold::Damage> = after.into_iter().flat_map(|s| s.damage).collect();
    if json {
        println!("{}", serde_json::json!({ "repaired": repaired, "damage_left": left, "ok": ok && left.is_empty() }));
    } else {
        for r in &repaired {
            let status = if r.ok { "REPAIRED" } else { "FAILED" };
            println!(
                "disk {}: {status} {} offset {}: {}",
                r.damage.disk,
                r.damage.file.display(),
                r.damage.offset,
                r.detail
            );
        }
        println!("{} ranges repaired, {} damaged ranges left", repaired.iter().filter(|r| r.ok).count(), left.len());
    }
    Ok(ok && left.is_empty())
}

fn rebuild_disk(node: &NodeArgs, peer: &PeerArgs, disk: u16, json: bool) -> Result<bool, String> {
    let ours = layout(node)?;
    check_disk(&ours, Some(disk))?;
    let theirs = open_peer(&ours, peer)?;
    let _lock = cold::lock(&ours.data_dir)?;
    let root = &ours.hdd[usize::from(disk)];
    if let Ok(Some(label)) = strata_node::cold::read_label(root) {
        let node_id = strata_node::disks::node_id(&ours.data_dir, false)?;
        if label.node != node_id || label.disk != disk {
            return Err(format!(
                "{} is labelled disk {} of node {:016x}: not this node's disk {disk}; give it an empty disk",
                root.display(),
                label.disk,
                label.node
            ));
        }
    }
    let node_id = strata_node::disks::node_id(&ours.data_dir, false)?;
    let done = cold::rebuild_disk(&ours, theirs, disk, node_id)?;
    let (_, scans) = scan_all(&ours, Some(disk), true)?;
    let left: Vec<cold::Damage> = scans.into_iter().flat_map(|s| s.damage).collect();
    if json {
        println!("{}", serde_json::json!({ "rebuilt": done, "damage_left": left, "ok": left.is_empty() }));
    } else {
        println!(
            "disk {disk}: {} files copied ({} bytes), {} already present and verified; {} damaged ranges left",
            done.files_copied,
            done.bytes_copied,
            done.files_present,
            left.len()
        );
    }
    Ok(left.is_empty())
}

fn route_key(
    data_dir: Option<PathBuf>,
    hdd: Vec<PathBuf>,
    config: Option<&Path>,
    groups: u16,
    pkey: &[u8],
    ts: Option<u64>,
    json: bool,
) -> Result<bool, String> {
    use strata_format::cold::{ColdFileId, disk_of};
    let cfg = match config {
        Some(path) => strata_node::config::Config::load(path).map_err(|e| e.to_string())?,
        None => strata_node::config::Config::default(),
    };
    // The configuration locates the node too; the flags, when given, override it (a data
    // directory given alone comes with the disk folders in it, not the configuration's disks).
    let node = &NodeArgs {
        hdd: match (&data_dir, hdd.is_empty()) {
            (_, false) => hdd,
            (Some(_), true) => Vec::new(),
            (None, true) => cfg.cold.hdd.clone(),
        },
        data_dir: data_dir.unwrap_or_else(|| cfg.data_dir.clone()),
    };
    strata_format::key::validate_pkey(pkey).map_err(|e| e.to_string())?;
    if groups == 0 || groups > GROUP_COUNT_MAX {
        return Err(format!("--groups must be 1..={GROUP_COUNT_MAX}"));
    }
    let ts = ts.unwrap_or(strata_format::key::TS_TIMELESS);
    let bucket = strata_format::key::bucket_of(pkey);
    let group = strata_format::route::group_of(bucket, groups);
    let layout = layout(node)?;
    let shard = strata_format::route::shard_of(bucket, layout.shards);
    let window_us = cfg.shard.window.as_micros_u64().max(1);
    let window = strata_node::lsm::window_of(ts, window_us);
    let sunk = layout.manifest(shard)?.cold_windows.get(&window).cloned();
    let now = strata_ioengine::SystemClock::now_us_static();
    let due = window != strata_node::lsm::WINDOW_TIMELESS
        && window.saturating_add(1).saturating_mul(window_us).saturating_add(cfg.cold.hot_horizon.as_micros_u64())
            <= now;
    let (tier, epoch, disks, generation) = match &sunk {
        Some(c) => ("cold", c.epoch, c.disks, Some(c.generation)),
        None if window == strata_node::lsm::WINDOW_TIMELESS => ("ssd (timeless: never sinks)", 0, 0, None),
        None if due => ("ssd (due to sink)", layout.epochs.len() as u32, *layout.epochs.last().unwrap_or(&1), None),
        None => ("ssd", layout.epochs.len() as u32, *layout.epochs.last().unwrap_or(&1), None),
    };
    let disk = (disks > 0).then(|| disk_of(bucket, window, disks));
    let file = match (disk, generation) {
        (Some(d), Some(g)) => {
            let id = ColdFileId { window, shard, generation: g, part: 0 };
            let parts = sunk.as_ref().map_or(0, |c| c.parts[usize::from(d)]);
            Some(format!(
                "{}/{}-g{g:06}-p*.cold ({parts} part files)",
                layout.hdd[usize::from(d)].join(ColdFileId::shard_dir(shard)).display(),
                id.file_name().split("-g").next().unwrap_or_default()
            ))
        }
        (Some(d), None) => Some(format!(
            "{} once sunk (placement epoch {epoch})",
            layout.hdd[usize::from(d)].join(ColdFileId::shard_dir(shard)).display()
        )),
        _ => None,
    };
    if json {
        println!(
            "{}",
            serde_json::json!({ "bucket": bucket, "group": group, "shard": shard, "window": window, "tier": tier,
                "epoch": epoch, "disk": disk, "file": file })
        );
    } else {
        println!(
            "bucket {bucket}\ngroup  {group} (of {groups})\nshard  {shard} (of {})\nwindow {window}\ntier   {tier}",
            layout.shards
        );
        match (disk, file) {
            (Some(d), Some(f)) => println!("disk   {d} (placement epoch {epoch}, {disks} disks)\nfile   {f}"),
            _ => println!("disk   none"),
        }
    }
    Ok(true)
}

fn route_generate(out: &Path) -> i32 {
    let started = Instant::now();
    let table = RouteTable::generate();
    let bytes = table.encode();
    let generate_ms = started.elapsed().as_millis();
    // Check what is about to be written before writing it.
    let decoded = RouteTable::decode(&bytes).expect("a freshly encoded route table should decode");
    assert!(decoded == table, "a freshly encoded route table should decode to itself");
    let crc = RouteHeader::read(&bytes).expect("a freshly encoded route table should have a header").crc.get();
    if let Err(e) = std::fs::write(out, &bytes) {
        eprintln!("cannot write {}: {e}", out.display());
        return 1;
    }
    let embedded = if bytes == ROUTE_BIN {
        "same as the table built into this binary"
    } else {
        "differs from the table built into this binary: rebuild to embed it"
    };
    println!(
        "wrote {}: {} bytes, {} moves ({BUCKET_COUNT} buckets, 1..={GROUP_COUNT_MAX} groups), crc32c {crc:#010x}, \
         generated in {generate_ms} ms ({embedded})",
        out.display(),
        bytes.len(),
        table.move_count(),
    );
    0
}
