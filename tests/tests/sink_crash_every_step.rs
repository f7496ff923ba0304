//! Sinking survives a crash at every step. The same data is loaded afresh for each crash point;
//! the sink runs `k` executor steps (each disk operation is at least one step), the machine loses
//! power, and the shard reopens: every acknowledged write reads back once, with its value and
//! version, whether the window ended up on SSD or on the cold disks. A reader runs beside the
//! sink the whole time and must never miss an entry (no gap while the tables are swapped for
//! links). Then writes into sunk windows read back, before and after they are sunk again.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use strata_ioengine::simexec::block_on;
use strata_ioengine::{Disk, SimClock, SimDisk, SimExecutor, SimFaults};
use strata_node::cold::ColdOptions;
use strata_node::{Shard, ShardOptions};
use strata_tests::harness::{open_shard, small_options, value_for};

type Expected = BTreeMap<(Vec<u8>, u64), (u64, Vec<u8>)>;
/// A late write: the key and its new version and value (`None`: deleted).
type Change = ((Vec<u8>, u64), Option<(u64, Vec<u8>)>);

const LOAD_CLOCK_US: u64 = 12_000_000;
const SINK_CLOCK_US: u64 = 30_000_000;

fn options() -> ShardOptions {
    let mut options = small_options(64 * 1024);
    options.window_us = 1_000_000;
    options.flush_bytes = 16 * 1024;
    options.table_bytes_target = 24 * 1024;
    let disks = (0..3).map(|d| PathBuf::from(format!("/hdd{d}"))).collect();
    let mut cold = ColdOptions::new(disks, 0);
    cold.file_bytes = 4096 * 20;
    cold.block_raw_bytes = 2048;
    // Windows 5..=8 end by 9 s: not due at the load clock (12 s), due at the sink clock (30 s).
    cold.hot_horizon_us = 10_000_000;
    cold.sink_bytes_per_s = 1 << 40;
    options.cold = Some(cold);
    options
}

/// Loads 30 pkeys x 24 entries over windows 5..=8 and flushes them into tables.
fn load(disk: &SimDisk, clock: &SimClock) -> (Shard<SimDisk, SimClock>, Expected) {
    clock.set(LOAD_CLOCK_US);
    let (shard, _) = open_shard(disk, clock, &options()).expect("a fresh shard opens");
    let exec = SimExecutor::new();
    exec.spawn(shard.background());
    exec.spawn(shard.maintenance());
    let expected: Rc<RefCell<Expected>> = Rc::default();
    for w in 0..6u64 {
        let (shard, expected) = (shard.clone(), expected.clone());
        exec.spawn(async move {
            for p in (w * 5)..(w * 5 + 5) {
                let pkey = format!("user-{p}").into_bytes();
                for i in 0..24u64 {
                    let ts = 5_000_000 + i * 170_000 + p;
                    let value = value_for(&pkey, ts, 40 + (i as usize * 13) % 300);
                    let version = shard.put(&pkey, ts, &value).await.expect("a put on a perfect disk succeeds");
                    expected.borrow_mut().insert((pkey.clone(), ts), (version, value));
                }
            }
        });
    }
    exec.run_until_idle();
    shard.flush_now();
    exec.run_until_idle();
    assert!(shard.cold_windows().is_empty(), "nothing is due at the load clock");
    let expected = expected.borrow().clone();
    (shard, expected)
}

fn dump(shard: &Shard<SimDisk, SimClock>) -> Expected {
    let s = shard.clone();
    let entries = block_on(async move { s.dump().await }).expect("every entry reads back");
    entries.into_iter().filter_map(|e| e.value.map(|v| ((e.pkey, e.ts), (e.version, v)))).collect()
}

fn check(shard: &Shard<SimDisk, SimClock>, expected: &Expected, when: &str) {
    let got = dump(shard);
    assert_eq!(got.len(), expected.len(), "{when}: entry count");
    for (key, want) in expected {
        assert_eq!(got.get(key), Some(want), "{when}: {key:?}");
    }
    let s = shard.clone();
    let keys: Vec<_> = expected.keys().cloned().collect();
    let reads = block_on(async move {
        let mut out = Vec::new();
        for (pkey, ts) in keys {
            out.push(s.get(&pkey, ts).await.expect("a point read succeeds"));
        }
        out
    });
    for ((key, want), read) in expected.iter().zip(reads) {
        assert_eq!(read.as_ref(), Some(want), "{when}: get {key:?}");
    }
}

/// A reader that reads every expected key over and over, recording the first miss.
fn spawn_reader(
    exec: &SimExecutor,
    shard: &Shard<SimDisk, SimClock>,
    expected: &Expected,
) -> Rc<RefCell<Option<String>>> {
    let failure: Rc<RefCell<Option<String>>> = Rc::default();
    let (shard, expected, out) = (shard.clone(), expected.clone(), failure.clone());
    exec.spawn(async move {
        loop {
            for ((pkey, ts), (version, value)) in &expected {
                match shard.get(pkey, *ts).await {
                    Ok(Some((v, got))) if v == *version && got == *value => {}
                    other => {
                        out.borrow_mut().get_or_insert(format!("reader during the sink: {pkey:?}@{ts}: {other:?}"));
                        return;
                    }
                }
            }
        }
    });
    failure
}

fn cold_files(disk: &SimDisk) -> Vec<String> {
    let disk = disk.clone();
    block_on(async move {
        let mut names = Vec::new();
        for d in 0..3 {
            let dir = PathBuf::from(format!("/hdd{d}/s000"));
            if let Ok(list) = disk.list(&dir).await {
                names.extend(list.into_iter().map(|n| format!("hdd{d}/{n}")));
            }
        }
        names
    })
}

#[test]
fn a_crash_at_any_step_of_a_sink_loses_nothing_and_leaves_no_gap() {
    let mut k = 0u64;
    let mut crash_points = 0;
    let mut sunk_before_crash = 0;
    loop {
        let disk = SimDisk::new(5, SimFaults { crash_torn: 0.5, ..SimFaults::none() });
        let clock = SimClock::new(LOAD_CLOCK_US);
        let (shard, expected) = load(&disk, &clock);
        clock.set(SINK_CLOCK_US);
        let exec = SimExecutor::new();
        exec.spawn(shard.background());
        exec.spawn(shard.maintenance());
        let reader = spawn_reader(&exec, &shard, &expected);
        shard.wake_maintenance();
        let mut finished = false;
        for _ in 0..k {
            exec.step();
            if shard.stats().sinks == 4 {
                finished = true;
                break;
            }
        }
        if let Some(failure) = reader.borrow_mut().take() {
            panic!("crash point {k}: {failure}");
        }
        sunk_before_crash += shard.stats().sinks;
        exec.clear();
        drop(shard);
        disk.crash();
        crash_points += 1;
        let (shard, _) = open_shard(&disk, &clock, &options()).expect("the shard reopens after a crash");
        check(&shard, &expected, &format!("crash point {k}, after reopening"));
        // Finish the work and check again: every window ends up sunk, exactly once.
        let exec = SimExecutor::new();
        exec.spawn(shard.background());
        exec.spawn(shard.maintenance());
        shard.wake_maintenance();
        exec.run_until_idle();
        assert_eq!(shard.cold_windows().len(), 4, "crash point {k}: all four windows sink after the restart");
        check(&shard, &expected, &format!("crash point {k}, after the sinks completed"));
        let files = cold_files(&disk);
        assert!(files.iter().all(|f| f.contains("-g000001-")), "crash point {k}: only live files remain: {files:?}");
        if finished {
            break;
        }
        k += 1 + k / 40;
    }
    println!("{crash_points} crash points; {sunk_before_crash} window sinks had committed before their crash");
    assert!(crash_points > 50, "the sink took only {crash_points} steps: the test is not crashing inside it");
}

#[test]
fn writes_into_sunk_windows_read_back_and_are_folded_in_by_the_next_sink() {
    let disk = SimDisk::new(9, SimFaults::none());
    let clock = SimClock::new(LOAD_CLOCK_US);
    let (shard, mut expected) = load(&disk, &clock);
    clock.set(SINK_CLOCK_US);
    let exec = SimExecutor::new();
    exec.spawn(shard.background());
    exec.spawn(shard.maintenance());
    shard.wake_maintenance();
    exec.run_until_idle();
    assert_eq!(shard.cold_windows().len(), 4);
    assert!(shard.cold_windows().iter().all(|c| c.generation == 1));
    check(&shard, &expected, "after the first sinks");
    // Four rounds of late writes into sunk window 5: overwrites, deletes, new keys; each round is
    // flushed into a delta table, and the fourth makes the window sink again.
    for round in 0..4u64 {
        let s = shard.clone();
        let changes: Rc<RefCell<Vec<Change>>> = Rc::default();
        let out = changes.clone();
        exec.spawn(async move {
            for p in 0..10u64 {
                let pkey = format!("user-{p}").into_bytes();
                let old_ts = 5_000_000 + round * 170_000 + p;
                if p % 3 == 0 {
                    s.delete(&pkey, old_ts).await.unwrap();
                    out.borrow_mut().push(((pkey.clone(), old_ts), None));
                } else {
                    let value = format!("late-{round}-{p}").into_bytes();
                    let version = s.put(&pkey, old_ts, &value).await.unwrap();
                    out.borrow_mut().push(((pkey.clone(), old_ts), Some((version, value))));
                }
                let new_ts = 5_999_000 - round * 10 - p;
                let value = format!("new-{round}-{p}").into_bytes();
                let version = s.put(&pkey, new_ts, &value).await.unwrap();
                out.borrow_mut().push(((pkey, new_ts), Some((version, value))));
            }
        });
        exec.run_until_idle();
        for (key, change) in changes.borrow_mut().drain(..) {
            match change {
                Some(v) => expected.insert(key, v),
                None => expected.remove(&key),
            };
        }
        check(&shard, &expected, &format!("round {round}, late writes in memory"));
        shard.flush_now();
        exec.run_until_idle();
        check(&shard, &expected, &format!("round {round}, late writes flushed"));
    }
    let window5 = shard.cold_windows().into_iter().find(|c| c.window == 5).unwrap();
    assert_eq!(window5.generation, 2, "four delta tables made window 5 sink again");
    let files = cold_files(&disk);
    assert!(
        files.iter().filter(|f| f.contains("w000000000005")).all(|f| f.contains("-g000002-")),
        "the replaced generation's files are gone: {files:?}"
    );
    check(&shard, &expected, "after the second sink of window 5");
    // And after a restart.
    let s = shard.clone();
    exec.spawn(async move { s.close().await });
    exec.run_until_idle();
    exec.clear();
    drop(shard);
    let (shard, _) = open_shard(&disk, &clock, &options()).unwrap();
    check(&shard, &expected, "after a restart");
}
