//! Real disk: a shard on glommio with O_DIRECT flushes its memtable into tables, reads every
//! value back from the tables (one block read per probe), scans a timeline newest first, and
//! after reopening finds everything through the manifest. (This caught glommio caching io_poll
//! support from a probe of an empty file, which made every table read fail with ENOTSUP.)

use std::time::Duration;
use strata_ioengine::executor::{ExecutorSpec, online_cpus, run_pinned, sleep, spawn_detached};
use strata_ioengine::{DmaDisk, SystemClock};
use strata_node::{Shard, ShardOptions};

fn options(dir: std::path::PathBuf) -> ShardOptions {
    let mut options = ShardOptions::new(dir);
    options.segment_bytes = 4 << 20;
    options.batch_bytes_max = 2 << 20;
    // The machine's disk may be nearly full; these tests need little room.
    options.ssd_reserve_bytes = 16 << 20;
    options.ssd_throttle_bytes = 16 << 20;
    options.flush_bytes = 256 * 1024;
    options
}

fn value(i: u64) -> Vec<u8> {
    let mut v = format!("value-{i}-").into_bytes();
    v.resize(100, b'v');
    v
}

#[test]
fn flushed_tables_read_back_on_a_real_disk() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data = dir.path().join("shard-0");
    let spec = ExecutorSpec {
        name: "lsm-real".into(),
        cpu: online_cpus()[0],
        io_memory_bytes: 1 << 20,
        spin_before_park: None,
    };
    let shard_dir = data.clone();
    let flushes = run_pinned(&spec, move || async move {
        let (shard, _) = Shard::open(DmaDisk, SystemClock, options(shard_dir)).await.expect("shard opens");
        spawn_detached(shard.background());
        spawn_detached(shard.maintenance());
        let now = SystemClock::now_us_static();
        for i in 0..6000u64 {
            shard.put(format!("user-{}", i % 10).as_bytes(), now - 10_000 + i, &value(i)).await.expect("put succeeds");
        }
        for _ in 0..200 {
            if shard.stats().flushes >= 2 {
                break;
            }
            sleep(Duration::from_millis(10)).await;
        }
        let flushes = shard.stats().flushes;
        for i in 0..6000u64 {
            let got = shard.get(format!("user-{}", i % 10).as_bytes(), now - 10_000 + i).await.expect("read succeeds");
            assert_eq!(got.map(|(_, v)| v), Some(value(i)), "entry {i}");
        }
        let page = shard.scan(b"user-3", 0, u64::MAX, 20, true).await.expect("scan succeeds");
        assert_eq!(page.len(), 20);
        assert!(page.windows(2).all(|w| w[0].ts > w[1].ts), "newest first");
        shard.close().await;
        flushes
    })
    .unwrap();
    assert!(flushes >= 2, "the load should have flushed tables ({flushes} flushes)");
    run_pinned(&spec, move || async move {
        let (shard, report) = Shard::open(DmaDisk, SystemClock, options(data)).await.expect("shard reopens");
        println!("reopened: {} records replayed from the WAL, the rest from tables", report.records_replayed);
        let dump = shard.dump().await.expect("every table reads");
        assert_eq!(dump.len(), 6000);
    })
    .unwrap();
}
