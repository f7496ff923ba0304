//! Cold reads where block links are most likely to go wrong: link tables cut after a few links,
//! blocks of two or three entries, pkeys that share a bucket (so a block holds several pkeys),
//! a range delete and a tombstone it also covers (which a sink must keep). After a sink, after a
//! re-sink that folds late writes in, and after a restart, every get (of present and absent
//! keys) and every scan (oldest or newest first, any limit, ranges that start and end inside
//! blocks) must match a model that shares no engine code.
//!
//! Seeded: `STRATA_COLD_LINKS_SEED` replays a run; the seed is printed.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use strata_format::key::bucket_of;
use strata_ioengine::simexec::block_on;
use strata_ioengine::{SimClock, SimDisk, SimExecutor, SimFaults};
use strata_node::cold::ColdOptions;
use strata_node::{Shard, ShardOptions};
use strata_tests::harness::{open_shard, small_options, value_for};

/// Live entries: (pkey, ts) -> (version, value).
type Model = BTreeMap<(Vec<u8>, u64), (u64, Vec<u8>)>;

const WINDOW_US: u64 = 1_000_000;
const LOAD_CLOCK_US: u64 = 12_000_000;
const SINK_CLOCK_US: u64 = 30_000_000;
/// Entries live in window 5.
const BASE_TS: u64 = 5 * WINDOW_US;

fn options() -> ShardOptions {
    let mut options = small_options(64 * 1024);
    options.window_us = WINDOW_US;
    options.flush_bytes = 8 * 1024;
    // A link is about 80 bytes here: a link table holds a handful before it is cut.
    options.table_bytes_target = 400;
    let disks = (0..2).map(|d| PathBuf::from(format!("/hdd{d}"))).collect();
    let mut cold = ColdOptions::new(disks, 0);
    cold.file_bytes = 4096 * 200;
    cold.block_raw_bytes = 200;
    cold.hot_horizon_us = 10_000_000;
    cold.sink_bytes_per_s = 1 << 40;
    options.cold = Some(cold);
    options
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Pkeys in pairs that share a bucket, and a few alone.
fn pkeys() -> Vec<Vec<u8>> {
    let mut by_bucket: BTreeMap<u16, Vec<Vec<u8>>> = BTreeMap::new();
    let mut pairs = Vec::new();
    for i in 0.. {
        let pkey = format!("k{i}").into_bytes();
        let same = by_bucket.entry(bucket_of(&pkey)).or_default();
        same.push(pkey);
        if same.len() == 2 {
            pairs.extend(same.iter().cloned());
            if pairs.len() >= 8 {
                break;
            }
        }
    }
    pairs.extend((0..4).map(|i| format!("alone-{i}").into_bytes()));
    pairs
}

fn run(exec: &SimExecutor, future: impl std::future::Future<Output = ()> + 'static) {
    exec.spawn(future);
    exec.run_until_idle();
}

fn check(shard: &Shard<SimDisk, SimClock>, model: &Model, pkeys: &[Vec<u8>], rng: &mut Rng, when: &str) {
    // Dump: everything, in order.
    let s = shard.clone();
    let dumped = block_on(async move { s.dump().await }).expect("the dump reads");
    let got: Model = dumped.into_iter().filter_map(|e| e.value.map(|v| ((e.pkey, e.ts), (e.version, v)))).collect();
    assert_eq!(&got, model, "{when}: dump");
    // Gets of every key and of the timestamps just beside them (absent).
    let s = shard.clone();
    let keys: Vec<(Vec<u8>, u64)> = model.keys().cloned().collect();
    let reads = block_on(async move {
        let mut out = Vec::new();
        for (pkey, ts) in keys {
            for t in [ts - 1, ts, ts + 1] {
                out.push(((pkey.clone(), t), s.get(&pkey, t).await.expect("a get reads")));
            }
        }
        out
    });
    for (key, read) in reads {
        assert_eq!(read.as_ref(), model.get(&key), "{when}: get {key:?}");
    }
    // Scans of random ranges, both directions, several limits.
    for pkey in pkeys {
        let mine: Vec<(u64, (u64, Vec<u8>))> =
            model.range((pkey.clone(), 0)..=(pkey.clone(), u64::MAX)).map(|((_, ts), v)| (*ts, v.clone())).collect();
        for _ in 0..12 {
            let (a, b) = (BASE_TS + rng.below(WINDOW_US / 10), BASE_TS + rng.below(WINDOW_US / 10));
            let (from, to) = if rng.below(4) == 0 { (0, u64::MAX) } else { (a.min(b), a.max(b)) };
            let limit = [1usize, 2, 3, 5, 1000][rng.below(5) as usize];
            let newest_first = rng.below(2) == 0;
            let mut want: Vec<(u64, u64, Vec<u8>)> = mine
                .iter()
                .filter(|(ts, _)| from <= *ts && *ts <= to)
                .map(|(ts, (v, value))| (*ts, *v, value.clone()))
                .collect();
            if newest_first {
                want.reverse();
            }
            want.truncate(limit);
            let s = shard.clone();
            let p = pkey.clone();
            let scanned =
                block_on(async move { s.scan(&p, from, to, limit, newest_first).await }).expect("a scan reads");
            let got: Vec<(u64, u64, Vec<u8>)> = scanned.into_iter().map(|e| (e.ts, e.version, e.value)).collect();
            assert_eq!(
                got,
                want,
                "{when}: scan {} {from}..={to} limit {limit} newest_first {newest_first}",
                String::from_utf8_lossy(pkey)
            );
        }
    }
}

#[test]
fn gets_and_scans_of_sunk_windows_match_the_model_at_every_block_and_table_boundary() {
    let seed = std::env::var("STRATA_COLD_LINKS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_c01d);
    println!("cold links seed {seed} (replay with STRATA_COLD_LINKS_SEED={seed})");
    let mut rng = Rng(seed | 1);
    let pkeys = pkeys();
    let disk = SimDisk::new(seed, SimFaults::none());
    let clock = SimClock::new(LOAD_CLOCK_US);
    let (shard, _) = open_shard(&disk, &clock, &options()).expect("a fresh shard opens");
    let exec = SimExecutor::new();
    exec.spawn(shard.background());
    exec.spawn(shard.maintenance());
    let model: Rc<RefCell<Model>> = Rc::default();

    // Load window 5: 12 pkeys x 15 entries of 20..60 bytes.
    let values: Vec<(Vec<u8>, u64, Vec<u8>)> = pkeys
        .iter()
        .flat_map(|p| (0..15u64).map(move |i| (p.clone(), BASE_TS + i * 5_000 + 7)))
        .map(|(p, ts)| {
            let len = 20 + rng.below(40) as usize;
            let value = value_for(&p, ts, len);
            (p, ts, value)
        })
        .collect();
    let (s, m) = (shard.clone(), model.clone());
    run(&exec, async move {
        for (pkey, ts, value) in values {
            let version = s.put(&pkey, ts, &value).await.unwrap();
            m.borrow_mut().insert((pkey, ts), (version, value));
        }
    });
    // A range delete over part of one pkey, and a tombstone it also covers (newer): the sink
    // must keep that tombstone. Another pkey loses one entry to a plain delete.
    let (ranged, deleted) = (pkeys[0].clone(), pkeys[1].clone());
    let (s, m) = (shard.clone(), model.clone());
    let (r, d) = (ranged.clone(), deleted.clone());
    run(&exec, async move {
        s.delete_range(&r, BASE_TS + 20_000, BASE_TS + 45_000).await.unwrap();
        s.delete(&r, BASE_TS + 30_007).await.unwrap();
        s.delete(&d, BASE_TS + 10_007).await.unwrap();
        let mut m = m.borrow_mut();
        m.retain(|(p, ts), _| !(*p == r && (BASE_TS + 20_000..=BASE_TS + 45_000).contains(ts)));
        m.remove(&(d, BASE_TS + 10_007));
    });
    shard.flush_now();
    exec.run_until_idle();
    let model_now = model.borrow().clone();
    check(&shard, &model_now, &pkeys, &mut rng, "before the sink");

    // Sink.
    clock.set(SINK_CLOCK_US);
    shard.wake_maintenance();
    exec.run_until_idle();
    assert_eq!(shard.cold_windows().len(), 1, "window 5 sank");
    let (link_tables, _) = shard.table_stats();
    assert!(link_tables >= 3, "the link tables were cut into several: {link_tables}");
    check(&shard, &model_now, &pkeys, &mut rng, "after the sink");

    // Late writes into the sunk window, flushed four times: the window sinks again.
    for round in 0..4u64 {
        let (s, m) = (shard.clone(), model.clone());
        let late: Vec<(Vec<u8>, u64, bool)> = (0..6)
            .map(|_| {
                let p = pkeys[rng.below(pkeys.len() as u64) as usize].clone();
                (p, BASE_TS + rng.below(15) * 5_000 + 7 + rng.below(2) * 1_000, rng.below(3) == 0)
            })
            .collect();
        run(&exec, async move {
            for (pkey, ts, delete) in late {
                if delete {
                    s.delete(&pkey, ts).await.unwrap();
                    m.borrow_mut().remove(&(pkey, ts));
                } else {
                    let value = format!("late-{round}-{ts}").into_bytes();
                    let version = s.put(&pkey, ts, &value).await.unwrap();
                    m.borrow_mut().insert((pkey, ts), (version, value));
                }
            }
        });
        shard.flush_now();
        exec.run_until_idle();
    }
    let generation = shard.cold_windows()[0].generation;
    assert_eq!(generation, 2, "four delta tables made the window sink again");
    let model_now = model.borrow().clone();
    check(&shard, &model_now, &pkeys, &mut rng, "after the re-sink");

    // Restart.
    let s = shard.clone();
    run(&exec, async move { s.close().await });
    exec.clear();
    drop(shard);
    let (shard, _) = open_shard(&disk, &clock, &options()).expect("the shard reopens");
    check(&shard, &model_now, &pkeys, &mut rng, "after a restart");
}
