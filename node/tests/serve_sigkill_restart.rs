//! SIGKILL the real binary under write load and restart it: every acknowledged write is read
//! back with its exact version and value.
//!
//! Eight writers, each with its own client (half through the common port, so forwarding is in
//! the path, half straight to the shard ports), put 1 KiB values at distinct keys and record
//! every acknowledged `(pkey, ts, version)`. The node is configured to flush every 256 KiB and
//! to cap its memtable at 4 MiB, so it is flushing (and, once a window holds enough tables,
//! compacting) most of the time; it is killed with SIGKILL after a few seconds, restarted on
//! the same data directory, and every write acknowledged so far (in every earlier life) is read
//! back, three times over, while the writers carry on against each new life.
//!
//! The kill times and the values come from a seed, printed at the start; replay a run with
//! `STRATA_SIGKILL_SEED=<seed>`.

mod common;

use common::{Node, SHARDS};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use strata_format::key::bucket_of;
use strata_format::route::shard_of;
use strata_node::client::{Client, ClientError, ClientOptions};

const WRITERS: usize = 8;
const CYCLES: usize = 3;
const VALUE_LEN: usize = 1024;
/// Pkeys per writer: each pkey gets a timeline of entries.
const PKEYS_PER_WRITER: u64 = 64;

const CONFIG: &str = r#"
[shard]
memory-budget = "64 MiB"
block-cache = "8 MiB"
memtable-max = "4 MiB"
flush-at = "256 KiB"

[limits]
shard-inflight-bytes-max = "16 MiB"
"#;

/// SplitMix64: replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    common::seed("STRATA_SIGKILL_SEED", "sigkill")
}

/// The value written at `(pkey, ts)`: its key in text, then seeded filler.
fn value_of(seed: u64, pkey: &str, ts: u64) -> Vec<u8> {
    let mut value = format!("{pkey}@{ts}:").into_bytes();
    let mut rng = Rng(seed
        ^ ts.rotate_left(17)
        ^ pkey.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)));
    while value.len() < VALUE_LEN {
        value.extend_from_slice(&rng.next().to_le_bytes());
    }
    value.truncate(VALUE_LEN);
    value
}

/// One acknowledged write.
#[derive(Debug, Clone)]
struct Acked {
    pkey: String,
    ts: u64,
    version: u64,
}

/// Where the writers send: the current life's client options, or `None` while the node is down.
type Target = Arc<RwLock<Option<ClientOptions>>>;

struct Writer {
    id: usize,
    seed: u64,
    base_ts: u64,
    target: Target,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
}

/// What a writer saw go wrong: errors a SIGKILL explains, and errors it does not.
#[derive(Debug, Default)]
struct WriterReport {
    attempts: u64,
    lost_connections: u64,
    unexpected: Vec<String>,
}

impl Writer {
    fn run(self) -> WriterReport {
        let mut report = WriterReport::default();
        let mut client: Option<Client> = None;
        let mut n = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            if client.is_none() {
                let Some(mut options) = self.target.read().unwrap().clone() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                if self.id % 2 == 1 {
                    options.shard_ports = None; // Through the common port: forwarded for half the pkeys.
                }
                client = Some(Client::new(options));
            }
            let connected = client.as_mut().expect("set above");
            // Distinct keys: the pkey cycles, the timestamp never repeats.
            let pkey = format!("w{}/p{}", self.id, n % PKEYS_PER_WRITER);
            let ts = self.base_ts + n;
            n += 1;
            report.attempts += 1;
            match connected.put(pkey.as_bytes(), ts, &value_of(self.seed, &pkey, ts)) {
                Ok(version) => self.acked.lock().unwrap().push(Acked { pkey, ts, version }),
                Err(error) => {
                    match error {
                        // The node died under the call, or is not up yet.
                        ClientError::Io(_) | ClientError::Closed | ClientError::Timeout => report.lost_connections += 1,
                        other => report.unexpected.push(format!("put {pkey}@{ts}: {other}")),
                    }
                    client = None;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        report
    }
}

/// Reads back every acknowledged write (MGET by shard, and a sample by GET); panics naming the
/// first few that are missing or changed.
fn verify(node: &Node, acked: &[Acked], seed: u64, when: &str) {
    let start = Instant::now();
    let mut client = node.shard_aware_client();
    let mut by_shard: HashMap<u16, Vec<&Acked>> = HashMap::new();
    for write in acked {
        by_shard.entry(shard_of(bucket_of(write.pkey.as_bytes()), SHARDS as u16)).or_default().push(write);
    }
    let mut wrong = Vec::new();
    for writes in by_shard.values() {
        for chunk in writes.chunks(256) {
            let keys: Vec<(&[u8], u64)> = chunk.iter().map(|w| (w.pkey.as_bytes(), w.ts)).collect();
            let got = client.mget(&keys).unwrap_or_else(|e| panic!("{when}: MGET failed: {e}"));
            for (write, found) in chunk.iter().zip(got) {
                let expected = value_of(seed, &write.pkey, write.ts);
                match found {
                    Some((version, value)) if version == write.version && value == expected => {}
                    Some((version, value)) => wrong.push(format!(
                        "{}@{}: acknowledged version {}, read version {version}{}",
                        write.pkey,
                        write.ts,
                        write.version,
                        if value == expected { "" } else { " and another value" }
                    )),
                    None => wrong.push(format!(
                        "{}@{}: acknowledged version {}, not found",
                        write.pkey, write.ts, write.version
                    )),
                }
            }
        }
    }
    // A sample through GET on the common port (forwarded for half the pkeys).
    let mut common = node.client();
    for write in acked.iter().step_by((acked.len() / 200).max(1)) {
        let got = common.get(write.pkey.as_bytes(), write.ts).unwrap_or_else(|e| panic!("{when}: GET failed: {e}"));
        if got != Some((write.version, value_of(seed, &write.pkey, write.ts))) {
            wrong.push(format!("{}@{}: GET gave {:?}", write.pkey, write.ts, got.map(|g| g.0)));
        }
    }
    assert!(
        wrong.is_empty(),
        "{when}: {} of {} acknowledged writes lost or changed (seed {seed}); first: {:#?}\nlog:\n{}",
        wrong.len(),
        acked.len(),
        &wrong[..wrong.len().min(10)],
        node.log_text()
    );
    println!("{when}: {} acknowledged writes read back in {:?}", acked.len(), start.elapsed());
}

fn options_of(node: &Node) -> ClientOptions {
    let mut options = node.options();
    options.shard_ports = Some((node.shard_port_base, SHARDS));
    options
}

#[test]
fn every_acknowledged_write_survives_sigkill_during_flush_and_compaction() {
    let seed = seed();
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("strata.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let mut node = Node::start(&data, &args);

    let target: Target = Arc::new(RwLock::new(Some(options_of(&node))));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let base_ts = common::now_us();
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            let writer = Writer {
                id,
                seed,
                base_ts: base_ts + (id as u64) * 10_000_000,
                target: target.clone(),
                stop: stop.clone(),
                acked: acked.clone(),
            };
            std::thread::spawn(move || writer.run())
        })
        .collect();

    let mut flushed = Vec::new();
    let mut compacted = Vec::new();
    for cycle in 0..CYCLES {
        let before = acked.lock().unwrap().len();
        std::thread::sleep(Duration::from_millis(2500 + rng.below(1000)));
        // What this life did before it is killed (metrics are copied every 500 ms).
        let flush_bytes = node.metric_sum("strata_flush_bytes_written_total");
        let compaction_bytes = node.metric_sum("strata_compaction_bytes_written_total");
        let stats = Client::new(node.options()).stats().unwrap();
        *target.write().unwrap() = None;
        node.kill();
        let snapshot = acked.lock().unwrap().clone();
        assert!(
            snapshot.len() > before + 500,
            "cycle {cycle}: only {} writes were acknowledged in this life; log:\n{}",
            snapshot.len() - before,
            node.log_text()
        );
        println!(
            "cycle {cycle}: killed after {} more acknowledged writes, {flush_bytes} bytes flushed and \
             {compaction_bytes} compacted in this life; {}",
            snapshot.len() - before,
            stats
                .lines()
                .filter(|l| l.starts_with("tables") || l.starts_with("memtable"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        flushed.push(flush_bytes);
        compacted.push(compaction_bytes);
        let _ = std::fs::copy(&node.log, data.with_extension(format!("log.{cycle}")));

        node = Node::start(&data, &args);
        verify(&node, &snapshot, seed, &format!("after SIGKILL {}", cycle + 1));
        *target.write().unwrap() = Some(options_of(&node));
    }
    // The last life runs on a little, then everything, old and new, is read back once more.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let reports: Vec<WriterReport> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let all = acked.lock().unwrap().clone();
    verify(&node, &all, seed, "at the end");

    let unexpected: Vec<&String> = reports.iter().flat_map(|r| &r.unexpected).collect();
    assert!(unexpected.is_empty(), "writers saw errors a SIGKILL does not explain: {unexpected:#?}");
    let attempts: u64 = reports.iter().map(|r| r.attempts).sum();
    let lost: u64 = reports.iter().map(|r| r.lost_connections).sum();
    println!("{} of {attempts} writes acknowledged; {lost} calls lost to kills and restarts", all.len());
    // Every life flushed, so each SIGKILL hit a node whose maintenance was busy.
    assert!(flushed.iter().all(|&bytes| bytes > 0), "a life flushed nothing before its kill: {flushed:?}");
    let stats = Client::new(node.options()).stats().unwrap();
    let tables: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("tables "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tables line in STATS:\n{stats}"));
    assert!(tables > 0, "no table on disk after {CYCLES} lives:\n{stats}");
    // With a memtable flushed every 256 KiB, a window passes 16 tables within a life or two.
    assert!(compacted.iter().any(|&bytes| bytes > 0), "no life compacted before its kill: {compacted:?}");
    assert_eq!(node.terminate(), Some(0), "log:\n{}", node.log_text());
}
