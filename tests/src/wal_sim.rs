//! Simulation of a shard on the simulated disk: random puts, deletes and gets from concurrent
//! writers, injected faults, crashes at random steps, recovery, and a check against a model.
//!
//! Invariants checked after every recovery:
//! - acknowledged ⊆ recovered ⊆ attempted, and what is recovered is a prefix of the attempted
//!   order (the model finds a prefix length that reproduces the recovered state exactly);
//! - nothing a reader saw is lost (every observed version is still there, or a newer one);
//! - no version is reused for different data, and a key's versions only increase;
//! - acknowledgements come in attempt order, and the shard never stalls.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use strata_ioengine::simexec::block_on;
use strata_ioengine::{Clock, SimClock, SimDisk, SimExecutor, SimFaults, SimRng, SimStats};
use strata_node::cold::ColdOptions;
use strata_node::{Mutation, Shard, ShardOptions, WriteError};

type Key = (Vec<u8>, u64);
/// What a key holds: a value or a tombstone (`None`).
type Cell_ = Option<Vec<u8>>;

/// How a simulation run is shaped.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    pub ops_min: u64,
    pub crashes_min: u64,
    /// A deliberately broken engine the simulation must catch.
    pub mutation: Option<Mutation>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self { ops_min: 1000, crashes_min: 1, mutation: None }
    }
}

/// What one seed did.
#[derive(Debug, Clone, Default)]
pub struct SeedReport {
    pub seed: u64,
    pub ops: u64,
    pub writes_acked: u64,
    pub crashes: u64,
    pub clean_closes: u64,
    pub process_crashes: u64,
    pub torn_tails: u64,
    pub latched_read_only: u64,
    pub flushes: u64,
    pub compactions: u64,
    pub sinks: u64,
    pub sinks_abandoned: u64,
    pub disk: SimStats,
}

impl std::fmt::Display for SeedReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: ops {}, acked {}, restarts {} (process crashes {}, clean closes {}), torn tails {}, \
             read-only latches {}, flushes {}, compactions {}, sinks {} ({} abandoned); disk: {}",
            self.seed,
            self.ops,
            self.writes_acked,
            self.crashes,
            self.process_crashes,
            self.clean_closes,
            self.torn_tails,
            self.latched_read_only,
            self.flushes,
            self.compactions,
            self.sinks,
            self.sinks_abandoned,
            self.disk
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    InFlight,
    Acked(u64),
    /// Accepted, but failed with unknown outcome: may or may not be recovered.
    Failed,
    /// Accepted, but answered "not written": must never be recovered.
    NotWritten,
    /// Refused before acceptance: must never be recovered.
    Refused,
}

#[derive(Debug, Clone)]
struct Attempt {
    key: Key,
    cell: Cell_,
    /// A range delete of `key.0` over `key.1..=end` (then `cell` is `None`).
    range_end: Option<u64>,
    status: Status,
}

impl Attempt {
    /// True when this attempt writes or deletes `key`.
    fn touches(&self, key: &Key) -> bool {
        match self.range_end {
            Some(end) => self.key.0 == key.0 && self.key.1 <= key.1 && key.1 <= end,
            None => self.key == *key,
        }
    }

    /// Applies this attempt to a model state.
    fn apply(&self, state: &mut BTreeMap<Key, Cell_>) {
        match self.range_end {
            Some(_) => {
                for (key, cell) in state.iter_mut() {
                    if self.touches(key) {
                        *cell = None;
                    }
                }
            }
            None => {
                state.insert(self.key.clone(), self.cell.clone());
            }
        }
    }
}

/// The model: everything the test knows, independent of the engine.
#[derive(Debug, Default)]
struct Model {
    /// The state recovered (and verified) at the last open.
    base: BTreeMap<Key, (u64, Cell_)>,
    /// Attempts since the last open, in the order they were made.
    attempts: Vec<Attempt>,
    /// The highest version a reader saw per key since the last open, with what it saw.
    seen: HashMap<Key, (u64, Cell_)>,
    /// Every (key, version) ever seen anywhere, with its content.
    versions: HashMap<(Key, u64), Cell_>,
    /// The newest state known visible per key over the whole run: its version, and whether it
    /// is a tombstone (which compaction may later drop: then reading nothing is right).
    version_high: HashMap<Key, (u64, bool)>,
}

/// A broken invariant: the seed and what went wrong.
#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seed {} FAILED: {} (replay with --seed {})", self.seed, self.what, self.seed)
    }
}

/// A key for messages: `pkey@ts`.
fn show_key(key: &Key) -> String {
    format!("{}@{}", String::from_utf8_lossy(&key.0), key.1)
}

/// A value or tombstone for messages: its first bytes and length.
fn show_cell(cell: Option<&Cell_>) -> String {
    match cell {
        None => "absent".into(),
        Some(None) => "tombstone".into(),
        Some(Some(v)) => format!("{:?}.. ({} bytes)", String::from_utf8_lossy(&v[..v.len().min(24)]), v.len()),
    }
}

impl Model {
    fn note_version(&mut self, key: &Key, version: u64, cell: &Cell_) -> Result<(), String> {
        match self.versions.get(&(key.clone(), version)) {
            Some(known) if known != cell => {
                return Err(format!(
                    "version {version} of {} reused: held {}, now {}",
                    show_key(key),
                    show_cell(Some(known)),
                    show_cell(Some(cell))
                ));
            }
            _ => {}
        }
        self.versions.insert((key.clone(), version), cell.clone());
        Ok(())
    }

    /// Checks the recovered state against the model and makes it the new base.
    fn verify_recovery(&mut self, recovered: BTreeMap<Key, (u64, Cell_)>) -> Result<usize, String> {
        let all_attempts = std::mem::take(&mut self.attempts);
        let attempts: Vec<&Attempt> = all_attempts.iter().filter(|a| a.status != Status::Refused).collect();
        let acked = attempts.iter().take_while(|a| matches!(a.status, Status::Acked(_))).count();
        if let Some(late) = attempts[acked..].iter().position(|a| matches!(a.status, Status::Acked(_))) {
            return Err(format!("attempt {} was acknowledged but attempt {acked} before it was not", acked + late));
        }
        let mut state: BTreeMap<Key, Cell_> = self.base.iter().map(|(k, (_, c))| (k.clone(), c.clone())).collect();
        for attempt in &attempts[..acked] {
            attempt.apply(&mut state);
        }
        // Compaction drops tombstones once nothing older remains: a tombstone equals absence.
        let recovered_cells: BTreeMap<Key, Cell_> =
            recovered.iter().filter(|(_, (_, c))| c.is_some()).map(|(k, (_, c))| (k.clone(), c.clone())).collect();
        // Nothing answered "not written" may be recovered, so the prefix ends before the first.
        let prefix_max = attempts.iter().position(|a| a.status == Status::NotWritten).unwrap_or(attempts.len());
        // Every prefix length whose state matches (several can: a delete of an absent key
        // changes nothing); the recovery is right if one of them also matches on versions.
        let mut matching = Vec::new();
        for p in acked..=prefix_max {
            if p > acked {
                let attempt = attempts[p - 1];
                attempt.apply(&mut state);
            }
            if state.iter().filter(|(_, c)| c.is_some()).eq(recovered_cells.iter()) {
                matching.push(p);
            }
        }
        let mut version_error = None;
        let mut prefix = None;
        for p in matching {
            match check_versions(&attempts[..p], &recovered) {
                Ok(()) => {
                    prefix = Some(p);
                    break;
                }
                Err(e) => version_error = version_error.or(Some(e)),
            }
        }
        if let (None, Some(e)) = (prefix, version_error) {
            return Err(e);
        }
        let Some(prefix) = prefix else {
            let mut expected: BTreeMap<Key, Cell_> =
                self.base.iter().map(|(k, (_, c))| (k.clone(), c.clone())).collect();
            for attempt in &attempts[..acked] {
                attempt.apply(&mut expected);
            }
            expected.retain(|_, c| c.is_some());
            let diff = expected
                .iter()
                .find(|(k, c)| recovered_cells.get(*k) != Some(*c))
                .map(|(k, c)| {
                    format!(
                        "{}: expected at least {}, recovered {}",
                        show_key(k),
                        show_cell(Some(c)),
                        show_cell(recovered_cells.get(k))
                    )
                })
                .or_else(|| {
                    recovered_cells
                        .keys()
                        .find(|k| !expected.contains_key(*k))
                        .map(|k| format!("{} recovered but never acknowledged", show_key(k)))
                });
            if std::env::var("SIM_DEBUG").is_ok() {
                for (k, c) in &expected {
                    if recovered_cells.get(k) != Some(c) {
                        eprintln!(
                            "key {}: base {:?}",
                            show_key(k),
                            self.base.get(k).map(|(v, c)| (v, show_cell(Some(c))))
                        );
                        for (i, a) in attempts.iter().enumerate().filter(|(_, a)| &a.key == k) {
                            eprintln!("  attempt {i}: {:?} {}", a.status, show_cell(Some(&a.cell)));
                        }
                        eprintln!("  recovered {:?}", recovered.get(k).map(|(v, c)| (v, show_cell(Some(c)))));
                    }
                }
            }
            return Err(format!(
                "recovered state is no prefix of the attempted writes ({acked} acknowledged of {} attempted); first difference: {}",
                attempts.len(),
                diff.unwrap_or_else(|| "none among acknowledged".into())
            ));
        };
        for (key, (version, cell)) in &recovered {
            self.note_version(key, *version, cell)?;
            if let Some((seen_version, seen_cell)) = self.seen.get(key)
                && (version < seen_version || (version == seen_version && cell != seen_cell))
            {
                return Err(format!(
                    "{}: a reader saw version {seen_version} ({}), recovered {version} ({})",
                    show_key(key),
                    show_cell(Some(seen_cell)),
                    show_cell(Some(cell))
                ));
            }
            let high = self.version_high.entry(key.clone()).or_insert((0, true));
            if let Some((base_version, base_cell)) = self.base.get(key)
                && (version < base_version || (version == base_version && cell != base_cell))
                && base_cell.is_some()
            {
                return Err(format!("{} went back from version {base_version} to {version}", show_key(key)));
            }
            if *version >= high.0 {
                *high = (*version, cell.is_none());
            }
        }
        for (key, (_, cell)) in self.seen.iter() {
            // Absent is right only if the recovered prefix deletes the key after the put seen.
            let deleted_after = attempts[..prefix]
                .iter()
                .rev()
                .take_while(|a| !(a.key == *key && a.cell == *cell))
                .any(|a| a.touches(key) && a.cell.is_none());
            if cell.is_some() && !recovered.contains_key(key) && !deleted_after {
                return Err(format!("{} was seen by a reader but is not recovered", show_key(key)));
            }
        }
        self.base = recovered;
        self.attempts.clear();
        self.seen.clear();
        Ok(prefix)
    }
}

/// Where the simulated clock starts (microseconds since the epoch).
const SIM_EPOCH_US: u64 = 1_700_000_000_000_000;

fn options(seed: u64, config: &SimConfig) -> ShardOptions {
    let mut options = ShardOptions::new("/data/shard-0");
    options.segment_bytes = 64 * 1024;
    options.batch_bytes_max = 16 * 1024;
    options.value_bytes_max = 2048;
    options.memtable_bytes_max = 64 << 20;
    options.nonce_seed = seed;
    // Small enough that flushes, hot and settled windows and compactions all happen in a seed.
    options.flush_bytes = 6 * 1024 + (seed % 4) as usize * 4096;
    options.window_us = 4096;
    options.settle_us = 200_000;
    options.tables_per_window_max = 2;
    options.table_bytes_target = 16 * 1024;
    options.compaction_bytes_per_s = 1 << 40;
    options.hot_format.block_bytes = 1024;
    options.cold_format.block_bytes = 2048;
    options.mutation = config.mutation;
    // A cold tier of 1..=4 disks on the same simulated machine: old windows sink to it (window 0
    // at once, windows near the clock's start after a jump), crash with it, and read from it.
    let disks = 1 + (seed / 4 % 4) as usize;
    let mut cold = ColdOptions::new((0..disks).map(|d| PathBuf::from(format!("/hdd{d}"))).collect(), 0);
    cold.file_bytes = 4096 * 33;
    cold.block_raw_bytes = 512 + (seed % 3) as usize * 1024;
    cold.hot_horizon_us = 400_000;
    cold.sink_bytes_per_s = 1 << 40;
    options.cold = Some(cold);
    options
}

fn faults_for(rng: &mut SimRng) -> SimFaults {
    let mut faults = SimFaults { crash_torn: 0.5, read_bitflip: 0.01, ..SimFaults::none() };
    match rng.below(4) {
        0 => {}
        1 => faults.write_fail = 0.003,
        2 => faults.fsync_fail = 0.003,
        _ => {
            faults.write_fail = 0.001;
            faults.fsync_fail = 0.001;
        }
    }
    faults
}

/// Opens the shard, retrying after injected I/O failures during open (an operator restarts).
fn open(
    disk: &SimDisk,
    clock: &SimClock,
    options: &ShardOptions,
    seed: u64,
) -> Result<(Shard<SimDisk, SimClock>, u64), Violation> {
    for _ in 0..50 {
        let (d, c, o) = (disk.clone(), clock.clone(), options.clone());
        match block_on(async move { Shard::open(d, c, o).await }) {
            Ok((shard, report)) => return Ok((shard, u64::from(report.torn_tail.is_some()))),
            Err(e) if e.is_disk_error() => disk.crash(),
            Err(e) => return Err(Violation { seed, what: format!("open failed: {e}") }),
        }
    }
    Err(Violation { seed, what: "open kept failing on injected faults".into() })
}

fn dump(shard: &Shard<SimDisk, SimClock>) -> Result<BTreeMap<Key, (u64, Cell_)>, String> {
    let shard = shard.clone();
    let entries =
        block_on(async move { shard.dump().await }).map_err(|e| format!("reading every entry failed: {e}"))?;
    Ok(entries.into_iter().map(|e| ((e.pkey, e.ts), (e.version, e.value))).collect())
}

struct Epoch {
    ops_left: Cell<u64>,
    writers_live: Cell<u64>,
    ops_done: Cell<u64>,
}

/// Runs one seed; returns what it did, or the first violation.
pub fn run_seed(seed: u64, config: &SimConfig) -> Result<SeedReport, Violation> {
    let mut rng = SimRng::new(seed);
    let disk = SimDisk::new(seed.wrapping_mul(31).wrapping_add(7), faults_for(&mut rng));
    let clock = SimClock::new(SIM_EPOCH_US);
    let options = options(seed, config);
    let model = Rc::new(RefCell::new(Model::default()));
    let violation = |what: String| Violation { seed, what };
    let mut report = SeedReport { seed, ..SeedReport::default() };
    let rng = Rc::new(RefCell::new(rng));
    loop {
        let (shard, torn) = open(&disk, &clock, &options, seed)?;
        report.torn_tails += torn;
        let recovered = dump(&shard).map_err(&violation)?;
        model.borrow_mut().verify_recovery(recovered).map_err(&violation)?;
        if report.ops >= config.ops_min && report.crashes >= config.crashes_min {
            break;
        }
        let exec = SimExecutor::new();
        exec.spawn(shard.background());
        exec.spawn(shard.maintenance());
        let epoch_ops = 100 + rng.borrow_mut().below(500);
        let writers = 1 + rng.borrow_mut().below(12);
        let epoch =
            Rc::new(Epoch { ops_left: Cell::new(epoch_ops), writers_live: Cell::new(writers), ops_done: Cell::new(0) });
        let failure: Rc<RefCell<Option<String>>> = Rc::default();
        for _ in 0..writers {
            exec.spawn(writer(
                shard.clone(),
                rng.clone(),
                model.clone(),
                epoch.clone(),
                clock.clone(),
                failure.clone(),
            ));
        }
        let crash_at = rng.borrow_mut().below(epoch_ops * 12);
        let mut steps = 0;
        while epoch.writers_live.get() > 0 && steps < crash_at {
            if !exec.step() {
                return Err(violation(format!(
                    "stalled: {} writers waiting and nothing runnable",
                    epoch.writers_live.get()
                )));
            }
            steps += 1;
        }
        if let Some(what) = failure.borrow_mut().take() {
            return Err(violation(what));
        }
        report.ops += epoch.ops_done.get();
        if shard.read_only_reason().is_some() {
            report.latched_read_only += 1;
        }
        let stats = shard.stats();
        report.writes_acked += stats.writes_acked;
        report.flushes += stats.flushes;
        report.compactions += stats.compactions;
        report.sinks += stats.sinks;
        report.sinks_abandoned += stats.sinks_abandoned;
        let clean = epoch.writers_live.get() == 0 && rng.borrow_mut().chance(0.2);
        if clean {
            let closing = shard.clone();
            exec.spawn(async move { closing.close().await });
            exec.run_until_idle();
            report.clean_closes += 1;
        }
        exec.clear();
        drop(shard);
        // A power loss decides the fate of everything not yet durable; a process crash keeps
        // the drive's cache, so recovery reads writes that were never synced.
        if rng.borrow_mut().chance(0.7) {
            disk.crash();
        } else {
            report.process_crashes += 1;
        }
        report.crashes += 1;
    }
    report.disk = disk.stats();
    Ok(report)
}

async fn writer(
    shard: Shard<SimDisk, SimClock>,
    rng: Rc<RefCell<SimRng>>,
    model: Rc<RefCell<Model>>,
    epoch: Rc<Epoch>,
    clock: SimClock,
    failure: Rc<RefCell<Option<String>>>,
) {
    while epoch.ops_left.get() > 0 {
        epoch.ops_left.set(epoch.ops_left.get() - 1);
        epoch.ops_done.set(epoch.ops_done.get() + 1);
        let (key, op, value) = {
            let mut rng = rng.borrow_mut();
            let pkey = format!("p{}", rng.below(12)).into_bytes();
            // Old windows, two windows near the clock's start (hot until time moves on), timeless.
            let ts = [0, 1, 7, SIM_EPOCH_US + 100, SIM_EPOCH_US + 5000, u64::MAX][rng.below(6) as usize];
            // The clock jitters, sometimes backwards, as wall clocks do.
            let now = clock.now_us();
            // Rarely it jumps hours ahead (an idle shard, or an NTP step).
            clock.set(if rng.chance(0.05) {
                now.saturating_sub(rng.below(1_000_000))
            } else if rng.chance(0.003) {
                now + (1 << 33) + rng.below(1 << 33)
            } else {
                now + rng.below(50)
            });
            let op = rng.below(10);
            let mut value = format!("v{}-", rng.next_u64()).into_bytes();
            value.resize(value.len() + rng.below(600) as usize, b'x');
            ((pkey, ts), op, value)
        };
        if op == 1 && rng.borrow_mut().chance(0.3) {
            let newest_first = rng.borrow_mut().chance(0.5);
            let limit = 1 + rng.borrow_mut().below(4) as usize;
            // A read reflects the state when it started: compare with what was visible then.
            let visible_before: HashMap<Key, (u64, bool)> = model
                .borrow()
                .version_high
                .iter()
                .filter(|(k, _)| k.0 == key.0)
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            match shard.scan(&key.0, 0, u64::MAX, limit, newest_first).await {
                Ok(entries) => {
                    let mut m = model.borrow_mut();
                    if let Err(e) = check_scan(&mut m, &visible_before, &key.0, &entries, limit, newest_first) {
                        *failure.borrow_mut() = Some(e);
                    }
                }
                Err(e) => *failure.borrow_mut() = Some(format!("scan failed: {e}")),
            }
            continue;
        }
        if op < 2 {
            let visible_before = model.borrow().version_high.get(&key).copied();
            match shard.get_entry(&key.0, key.1).await {
                Ok(Some((version, cell))) => {
                    let mut m = model.borrow_mut();
                    let high = visible_before.map_or(0, |h| h.0);
                    if version < high {
                        if std::env::var("SIM_DEBUG").is_ok() {
                            for (i, a) in m.attempts.iter().enumerate().filter(|(_, a)| a.touches(&key)) {
                                eprintln!(
                                    "  attempt {i}: {:?} range {:?} {}",
                                    a.status,
                                    a.range_end.map(|e| (a.key.1, e)),
                                    show_cell(Some(&a.cell))
                                );
                            }
                            eprintln!("  base {:?}", m.base.get(&key).map(|(v, c)| (v, show_cell(Some(c)))));
                        }
                        *failure.borrow_mut() = Some(format!(
                            "{}: read version {version}, but version {high} was already visible",
                            show_key(&key)
                        ));
                    }
                    if let Err(e) = m.note_version(&key, version, &cell) {
                        *failure.borrow_mut() = Some(e);
                    }
                    let high = m.version_high.entry(key.clone()).or_insert((0, true));
                    if version >= high.0 {
                        *high = (version, cell.is_none());
                    }
                    let seen = m.seen.entry(key.clone()).or_insert((0, None));
                    if version >= seen.0 {
                        *seen = (version, cell);
                    }
                }
                Ok(None) => {
                    if let Some((high, false)) = visible_before {
                        *failure.borrow_mut() =
                            Some(format!("{}: read nothing, but version {high} was already visible", show_key(&key)));
                    }
                }
                Err(e) => *failure.borrow_mut() = Some(format!("get failed: {e}")),
            }
            continue;
        }
        let cell = if op < 4 { None } else { Some(value) };
        // Some deletes cover a range of the pkey's timeline instead of one entry.
        let range_end = (op == 2 && rng.borrow_mut().chance(0.5)).then(|| {
            if rng.borrow_mut().chance(0.3) { u64::MAX } else { key.1.saturating_add(rng.borrow_mut().below(6000)) }
        });
        let index = {
            let mut m = model.borrow_mut();
            m.attempts.push(Attempt { key: key.clone(), cell: cell.clone(), range_end, status: Status::InFlight });
            m.attempts.len() - 1
        };
        let result = match (&cell, range_end) {
            (_, Some(end)) => shard.delete_range(&key.0, key.1, end).await,
            (Some(value), None) => shard.put(&key.0, key.1, value).await,
            (None, None) => shard.delete(&key.0, key.1).await,
        };
        let mut m = model.borrow_mut();
        let status = match result {
            Ok(version) if range_end.is_some() => {
                // Every key the range covers now reads as deleted at this version (or newer).
                let probe = Attempt { key: key.clone(), cell: None, range_end, status: Status::InFlight };
                for (k, high) in m.version_high.iter_mut() {
                    if probe.touches(k) && version >= high.0 {
                        *high = (version, true);
                    }
                }
                Status::Acked(version)
            }
            Ok(version) => {
                let floor = m.base.get(&key).map_or(0, |(v, _)| *v);
                if version <= floor {
                    *failure.borrow_mut() = Some(format!(
                        "{} acknowledged at version {version}, not above recovered {floor}",
                        show_key(&key)
                    ));
                }
                let high = m.version_high.entry(key.clone()).or_insert((0, true));
                if version >= high.0 {
                    *high = (version, cell.is_none());
                }
                if let Err(e) = m.note_version(&key, version, &cell) {
                    *failure.borrow_mut() = Some(e);
                }
                Status::Acked(version)
            }
            Err(WriteError::UnknownOutcome { .. }) => Status::Failed,
            Err(WriteError::NotWritten { .. }) => Status::NotWritten,
            Err(WriteError::ReadOnly { reason }) => {
                // Refusing writes is legitimate only once the shard has latched read-only.
                if shard.read_only_reason().is_none() {
                    *failure.borrow_mut() =
                        Some(format!("write refused as read-only ({reason}) but the shard is not latched"));
                }
                Status::Refused
            }
            Err(WriteError::MemoryBudget { .. }) => Status::Refused,
            Err(e) => {
                *failure.borrow_mut() = Some(format!("unexpected write error: {e}"));
                Status::Refused
            }
        };
        m.attempts[index].status = status;
    }
    epoch.writers_live.set(epoch.writers_live.get() - 1);
}

/// Where a simulation writes nothing: the simulated disk lives in memory.
#[must_use]
pub fn sim_root() -> PathBuf {
    PathBuf::from("/data")
}

/// A scan returns entries of its pkey only, in ts order, within the limit, each one a value some
/// write put there; what it returns counts as seen.
fn check_scan(
    m: &mut Model,
    visible_before: &HashMap<Key, (u64, bool)>,
    pkey: &[u8],
    entries: &[strata_node::ScanEntry],
    limit: usize,
    newest_first: bool,
) -> Result<(), String> {
    if entries.len() > limit {
        return Err(format!("scan returned {} entries for a limit of {limit}", entries.len()));
    }
    for pair in entries.windows(2) {
        let ordered = if newest_first { pair[0].ts > pair[1].ts } else { pair[0].ts < pair[1].ts };
        if !ordered {
            return Err(format!(
                "scan of {} out of order: ts {} then {}",
                String::from_utf8_lossy(pkey),
                pair[0].ts,
                pair[1].ts
            ));
        }
    }
    for entry in entries {
        let key = (pkey.to_vec(), entry.ts);
        let cell = Some(entry.value.clone());
        m.note_version(&key, entry.version, &cell)?;
        let high = visible_before.get(&key).map_or(0, |h| h.0);
        if entry.version < high {
            return Err(format!(
                "{}: scan saw version {}, but version {high} was already visible",
                show_key(&key),
                entry.version
            ));
        }
        let high = m.version_high.entry(key.clone()).or_insert((0, true));
        if entry.version >= high.0 {
            *high = (entry.version, false);
        }
        let seen = m.seen.entry(key.clone()).or_insert((0, None));
        if entry.version >= seen.0 {
            *seen = (entry.version, cell);
        }
    }
    Ok(())
}

/// A key whose last write in the prefix was acknowledged is recovered at exactly the
/// acknowledged version (or, for a delete, absent: its tombstone may have been compacted away).
fn check_versions(prefix: &[&Attempt], recovered: &BTreeMap<Key, (u64, Cell_)>) -> Result<(), String> {
    let mut keys: Vec<&Key> = recovered.keys().collect();
    keys.extend(prefix.iter().filter(|a| a.range_end.is_none()).map(|a| &a.key));
    keys.sort();
    keys.dedup();
    for key in keys {
        let Some(attempt) = prefix.iter().rev().find(|a| a.touches(key)) else { continue };
        let Status::Acked(version) = attempt.status else { continue };
        match recovered.get(key) {
            None if attempt.cell.is_none() => {}
            None => return Err(format!("{}: acknowledged at version {version}, not recovered", show_key(key))),
            Some((_, None)) if attempt.range_end.is_some() => {}
            Some(_) if attempt.range_end.is_some() => {
                return Err(format!("{}: deleted by an acknowledged range delete, but recovered", show_key(key)));
            }
            Some((rv, _)) if *rv != version => {
                return Err(format!("{} recovered at version {rv}, acknowledged at {version}", show_key(key)));
            }
            Some(_) => {}
        }
    }
    Ok(())
}
