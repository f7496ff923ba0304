//! Timeline scans (newest first, reading tables backwards and only as far as needed; and oldest
//! first) return exactly what a brute-force filter of every stored entry returns, across
//! memtable, frozen memtable, many small tables, windows, tombstones and range deletes.
//! Randomized: each seed prints itself; `SCAN_SEED=n` replays one.
//!
//! A second run writes in time order (a table per span of time, so newest-first pages stop
//! after the newest tables by their `ts` bounds) with late writes, deletes and range deletes
//! into older spans, which widen a newer table's bounds over older ones.

use std::cell::Cell;
use std::rc::Rc;
use strata_ioengine::simexec::block_on;
use strata_ioengine::{SimClock, SimDisk, SimExecutor, SimFaults, SimRng};
use strata_tests::harness::{open_shard, small_options};

fn check_seed(seed: u64, time_ordered: bool) {
    println!("scan_matches_dump seed {seed} (time ordered: {time_ordered})");
    let disk = SimDisk::new(seed, SimFaults { yields_max: 0, ..SimFaults::none() });
    let clock = SimClock::new(1_000_000);
    let mut options = small_options(256 * 1024);
    options.flush_bytes = 8 * 1024;
    options.window_us = 4096;
    options.settle_us = u64::MAX / 4;
    options.tables_per_window_max = if time_ordered { 12 } else { 3 };
    options.hot_format.block_bytes = 512;
    options.future_skew_us = u64::MAX / 4;
    let (shard, _) = open_shard(&disk, &clock, &options).unwrap();
    let exec = SimExecutor::new();
    exec.spawn(shard.background());
    exec.spawn(shard.maintenance());
    let mut rng = SimRng::new(seed);
    let mismatches = Rc::new(Cell::new(0u32));
    // Keys written so far, for rounds that rewrite or delete exactly those.
    let mut written: Vec<(Vec<u8>, u64)> = Vec::new();
    for round in 0..10 {
        // In time order, every third round holds only late writes to keys already written: its
        // table's highest ts is then some older key's, shared with the tables holding that key.
        let late_round = time_ordered && round % 3 == 1;
        for _ in 0..200 {
            let mut pkey = format!("p{}", rng.below(3)).into_bytes();
            let ts = if late_round && !written.is_empty() {
                // Often the newest key so far: this table's highest ts then equals an older
                // table's, and it holds the newer version of that very key.
                let newest = written.iter().filter(|(_, ts)| *ts != u64::MAX).max_by_key(|(_, ts)| *ts);
                let (p, ts) = match newest {
                    Some(key) if rng.chance(0.2) => key.clone(),
                    _ => written[rng.below(written.len() as u64) as usize].clone(),
                };
                pkey = p;
                ts
            } else if rng.chance(0.05) {
                u64::MAX
            } else if !time_ordered {
                rng.below(20_000)
            } else if rng.chance(0.1) {
                // A late write into any earlier span.
                rng.below(2_000 * (round + 1))
            } else {
                2_000 * round + rng.below(2_000)
            };
            written.push((pkey.clone(), ts));
            let op = rng.below(20);
            let value = format!("v{}-{}", rng.next_u64(), "x".repeat(rng.below(60) as usize)).into_bytes();
            let end = ts.saturating_add(rng.below(3000));
            let s = shard.clone();
            exec.spawn(async move {
                let result = match op {
                    0..=13 => s.put(&pkey, ts, &value).await,
                    14..=17 => s.delete(&pkey, ts).await,
                    _ => s.delete_range(&pkey, ts, end).await,
                };
                result.expect("writes succeed on a fault-free disk");
            });
        }
        if round % 3 == 2 || time_ordered {
            shard.flush_now();
        }
        exec.run_until_idle();
        for _ in 0..25 {
            let pkey = format!("p{}", rng.below(3)).into_bytes();
            let from = if time_ordered && rng.chance(0.5) { 0 } else { rng.below(20_000) };
            let to = if rng.chance(0.2) { u64::MAX } else { from + rng.below(20_000) };
            let limit = 1 + rng.below(40) as usize;
            let newest_first = rng.chance(0.7);
            let (s, p, m) = (shard.clone(), pkey.clone(), mismatches.clone());
            let got = block_on(async move { s.scan(&p, from, to, limit, newest_first).await.unwrap() });
            let s = shard.clone();
            let mut expected: Vec<(u64, Vec<u8>)> = block_on(async move { s.dump().await.unwrap() })
                .into_iter()
                .filter(|e| e.pkey == pkey && from <= e.ts && e.ts <= to)
                .filter_map(|e| e.value.map(|v| (e.ts, v)))
                .collect();
            if newest_first {
                expected.reverse();
            }
            expected.truncate(limit);
            let got: Vec<(u64, Vec<u8>)> = got.into_iter().map(|e| (e.ts, e.value)).collect();
            if got != expected {
                m.set(m.get() + 1);
                panic!(
                    "seed {seed} round {round}: scan({}, {from}..={to}, limit {limit}, newest_first {newest_first}) returned {:?}, expected {:?}",
                    String::from_utf8_lossy(&pkey),
                    got.iter().map(|e| e.0).collect::<Vec<_>>(),
                    expected.iter().map(|e| e.0).collect::<Vec<_>>()
                );
            }
        }
    }
    assert!(shard.stats().flushes > 3, "the load must reach tables");
}

#[test]
fn scans_match_a_brute_force_filter_of_every_entry() {
    match std::env::var("SCAN_SEED") {
        Ok(seed) => check_seed(seed.parse().expect("SCAN_SEED is a number"), false),
        Err(_) => (0..40).for_each(|seed| check_seed(seed, false)),
    }
}

#[test]
fn time_ordered_scans_match_a_brute_force_filter_of_every_entry() {
    match std::env::var("SCAN_SEED") {
        Ok(seed) => check_seed(seed.parse().expect("SCAN_SEED is a number"), true),
        Err(_) => (0..40).for_each(|seed| check_seed(seed, true)),
    }
}
