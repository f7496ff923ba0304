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
use strata_node::{Mutation, OpenError, Shard, ShardOptions, WriteError};

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
    pub torn_tails: u64,
    pub latched_read_only: u64,
    pub disk: SimStats,
}

impl std::fmt::Display for SeedReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: ops {}, acked {}, crashes {}, clean closes {}, torn tails {}, read-only latches {}; disk: {}",
            self.seed,
            self.ops,
            self.writes_acked,
            self.crashes,
            self.clean_closes,
            self.torn_tails,
            self.latched_read_only,
            self.disk
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    InFlight,
    Acked(u64),
    /// Accepted, but failed with unknown outcome or not written: may or may not be recovered.
    Failed,
    /// Refused before acceptance: must never be recovered.
    Refused,
}

#[derive(Debug, Clone)]
struct Attempt {
    key: Key,
    cell: Cell_,
    status: Status,
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
    /// The highest version known per key over the whole run.
    version_high: HashMap<Key, u64>,
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
        let attempts: Vec<&Attempt> = self.attempts.iter().filter(|a| a.status != Status::Refused).collect();
        let acked = attempts.iter().take_while(|a| matches!(a.status, Status::Acked(_))).count();
        if let Some(late) = attempts[acked..].iter().position(|a| matches!(a.status, Status::Acked(_))) {
            return Err(format!("attempt {} was acknowledged but attempt {acked} before it was not", acked + late));
        }
        let mut state: BTreeMap<Key, Cell_> = self.base.iter().map(|(k, (_, c))| (k.clone(), c.clone())).collect();
        for attempt in &attempts[..acked] {
            state.insert(attempt.key.clone(), attempt.cell.clone());
        }
        let recovered_cells: BTreeMap<Key, Cell_> =
            recovered.iter().map(|(k, (_, c))| (k.clone(), c.clone())).collect();
        let mut prefix = None;
        for p in acked..=attempts.len() {
            if p > acked {
                let attempt = attempts[p - 1];
                state.insert(attempt.key.clone(), attempt.cell.clone());
            }
            if state == recovered_cells {
                prefix = Some(p);
                break;
            }
        }
        let Some(prefix) = prefix else {
            let mut expected: BTreeMap<Key, Cell_> =
                self.base.iter().map(|(k, (_, c))| (k.clone(), c.clone())).collect();
            for attempt in &attempts[..acked] {
                expected.insert(attempt.key.clone(), attempt.cell.clone());
            }
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
            return Err(format!(
                "recovered state is no prefix of the attempted writes ({acked} acknowledged of {} attempted); first difference: {}",
                attempts.len(),
                diff.unwrap_or_else(|| "none among acknowledged".into())
            ));
        };
        // Versions: acknowledged versions are the recovered ones; versions only increase.
        for attempt in &attempts[..prefix] {
            if let Status::Acked(version) = attempt.status {
                let (rv, _) = recovered.get(&attempt.key).ok_or("acknowledged key missing")?;
                if *rv < version {
                    return Err(format!(
                        "{} recovered at version {rv}, below acknowledged {version}",
                        show_key(&attempt.key)
                    ));
                }
            }
        }
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
            let high = self.version_high.entry(key.clone()).or_insert(0);
            if let Some((base_version, base_cell)) = self.base.get(key)
                && (version < base_version || (version == base_version && cell != base_cell))
            {
                return Err(format!("{} went back from version {base_version} to {version}", show_key(key)));
            }
            *high = (*high).max(*version);
        }
        for (key, _) in self.seen.iter() {
            if !recovered.contains_key(key) {
                return Err(format!("{} was seen by a reader but is not recovered", show_key(key)));
            }
        }
        self.base = recovered;
        self.attempts.clear();
        self.seen.clear();
        Ok(prefix)
    }
}

fn options(seed: u64, config: &SimConfig) -> ShardOptions {
    let mut options = ShardOptions::new("/data/shard-0");
    options.segment_bytes = 64 * 1024;
    options.batch_bytes_max = 16 * 1024;
    options.value_bytes_max = 2048;
    options.memtable_bytes_max = 64 << 20;
    options.nonce_seed = seed;
    options.mutation = config.mutation;
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
            Err(OpenError::Disk(_)) => disk.crash(),
            Err(e) => return Err(Violation { seed, what: format!("open failed: {e}") }),
        }
    }
    Err(Violation { seed, what: "open kept failing on injected faults".into() })
}

fn dump(shard: &Shard<SimDisk, SimClock>) -> BTreeMap<Key, (u64, Cell_)> {
    shard.dump().into_iter().map(|e| ((e.pkey, e.ts), (e.version, e.value))).collect()
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
    let clock = SimClock::new(1_700_000_000_000_000);
    let options = options(seed, config);
    let model = Rc::new(RefCell::new(Model::default()));
    let violation = |what: String| Violation { seed, what };
    let mut report = SeedReport { seed, ..SeedReport::default() };
    let rng = Rc::new(RefCell::new(rng));
    loop {
        let (shard, torn) = open(&disk, &clock, &options, seed)?;
        report.torn_tails += torn;
        model.borrow_mut().verify_recovery(dump(&shard)).map_err(&violation)?;
        if report.ops >= config.ops_min && report.crashes >= config.crashes_min {
            break;
        }
        let exec = SimExecutor::new();
        exec.spawn(shard.background());
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
        report.writes_acked += shard.stats().writes_acked;
        let clean = epoch.writers_live.get() == 0 && rng.borrow_mut().chance(0.2);
        if clean {
            let closing = shard.clone();
            exec.spawn(async move { closing.close().await });
            exec.run_until_idle();
            report.clean_closes += 1;
        }
        exec.clear();
        drop(shard);
        disk.crash();
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
            let ts = [0, 1, 7, u64::MAX][rng.below(4) as usize];
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
        if op < 2 {
            match shard.get_entry(&key.0, key.1) {
                Ok(Some((version, cell))) => {
                    let mut m = model.borrow_mut();
                    if let Err(e) = m.note_version(&key, version, &cell) {
                        *failure.borrow_mut() = Some(e);
                    }
                    let seen = m.seen.entry(key.clone()).or_insert((0, None));
                    if version >= seen.0 {
                        *seen = (version, cell);
                    }
                }
                Ok(None) => {}
                Err(e) => *failure.borrow_mut() = Some(format!("get refused a valid key: {e}")),
            }
            continue;
        }
        let cell = if op < 4 { None } else { Some(value) };
        let index = {
            let mut m = model.borrow_mut();
            m.attempts.push(Attempt { key: key.clone(), cell: cell.clone(), status: Status::InFlight });
            m.attempts.len() - 1
        };
        let result = match &cell {
            Some(value) => shard.put(&key.0, key.1, value).await,
            None => shard.delete(&key.0, key.1).await,
        };
        let mut m = model.borrow_mut();
        let status = match result {
            Ok(version) => {
                let floor = m.base.get(&key).map_or(0, |(v, _)| *v);
                if version <= floor {
                    *failure.borrow_mut() = Some(format!(
                        "{} acknowledged at version {version}, not above recovered {floor}",
                        show_key(&key)
                    ));
                }
                let high = m.version_high.entry(key.clone()).or_insert(0);
                *high = (*high).max(version);
                if let Err(e) = m.note_version(&key, version, &cell) {
                    *failure.borrow_mut() = Some(e);
                }
                Status::Acked(version)
            }
            Err(WriteError::UnknownOutcome { .. } | WriteError::NotWritten { .. }) => Status::Failed,
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
