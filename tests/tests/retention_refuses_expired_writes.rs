//! Retention drops whole windows past their age: their tables go, reads stop seeing them, and a
//! write into an expired window is refused (never acknowledged and then silently dropped).

use strata_ioengine::simexec::block_on;
use strata_ioengine::{SimClock, SimDisk, SimExecutor, SimFaults};
use strata_node::WriteError;
use strata_tests::harness::{get, open_shard, small_options};

#[test]
fn expired_windows_are_dropped_and_writes_into_them_refused() {
    let disk = SimDisk::new(71, SimFaults::none());
    let clock = SimClock::new(9_600_000);
    let mut options = small_options(256 * 1024);
    options.window_us = 1_000_000;
    options.retention_us = Some(5_000_000);
    options.future_skew_us = 1_000_000;
    let (shard, _) = open_shard(&disk, &clock, &options).unwrap();
    let exec = SimExecutor::new();
    exec.spawn(shard.background());
    exec.spawn(shard.maintenance());
    // At t = 9.6 s: window 9 (ts 9.5 s) is live, window 4 lives until 10 s, window 2 expired at 8 s.
    let s = shard.clone();
    exec.spawn(async move {
        s.put(b"user", 9_500_000, b"recent").await.expect("a live window takes writes");
        s.put(b"user", 4_500_000, b"older").await.expect("window 4 expires only at 10 s");
        let refused = s.put(b"user", 2_500_000, b"too old").await.expect_err("an expired window refuses writes");
        assert!(matches!(refused, WriteError::Expired { .. }), "got {refused}");
        println!("refused: {refused}");
    });
    exec.run_until_idle();
    shard.flush_now();
    exec.run_until_idle();
    assert!(shard.table_stats().0 >= 2, "both windows were flushed into tables");
    assert_eq!(get(&shard, b"user", 4_500_000).map(|(_, v)| v), Some(b"older".to_vec()));
    // Time passes: window 4 expired at 4 + 1 + 5 = 10 s.
    clock.set(11_000_000);
    shard.wake_maintenance();
    exec.run_until_idle();
    assert_eq!(get(&shard, b"user", 4_500_000), None, "an expired window reads as empty");
    assert_eq!(get(&shard, b"user", 9_500_000).map(|(_, v)| v), Some(b"recent".to_vec()));
    let s = shard.clone();
    let page = block_on(async move { s.scan(b"user", 0, u64::MAX - 1, 10, true).await.unwrap() });
    assert_eq!(page.iter().map(|e| e.ts).collect::<Vec<_>>(), vec![9_500_000]);
    assert_eq!(shard.table_stats().0, 1, "the expired window's table was dropped");
}
