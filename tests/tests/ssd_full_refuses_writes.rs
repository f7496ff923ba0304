//! A nearly full SSD: writes are slowed, then refused with a clear error before the disk fills,
//! keeping room for flushes and compaction; the shard stays writable-again-ready (not latched),
//! keeps serving reads, and loses nothing it acknowledged.

use std::cell::RefCell;
use std::rc::Rc;
use strata_ioengine::simexec::block_on;
use strata_ioengine::{SimClock, SimDisk, SimExecutor, SimFaults};
use strata_node::WriteError;
use strata_tests::harness::{get, open_shard, small_options, value_for};

#[test]
fn writes_are_refused_before_the_ssd_fills() {
    let disk = SimDisk::new(61, SimFaults::none());
    disk.set_capacity(3 << 20);
    let clock = SimClock::new(1_700_000_000_000_000);
    let mut options = small_options(128 * 1024);
    options.flush_bytes = 64 * 1024;
    options.ssd_reserve_bytes = 1 << 20;
    options.ssd_throttle_bytes = 3 << 19;
    let (shard, _) = open_shard(&disk, &clock, &options).unwrap();
    let exec = SimExecutor::new();
    exec.spawn(shard.background());
    exec.spawn(shard.maintenance());
    let outcome: Rc<RefCell<(Vec<u64>, Option<WriteError>)>> = Rc::default();
    let (s, out) = (shard.clone(), outcome.clone());
    exec.spawn(async move {
        for i in 0..100_000u64 {
            match s.put(b"filler", i, &value_for(b"filler", i, 500)).await {
                Ok(_) => out.borrow_mut().0.push(i),
                Err(e) => {
                    out.borrow_mut().1 = Some(e);
                    return;
                }
            }
        }
    });
    exec.run_until_idle();
    let (acked, refused) = outcome.take();
    let refused = refused.expect("writes must be refused before 100,000 puts fill a 3 MiB disk");
    println!("refused after {} puts: {refused}", acked.len());
    assert!(matches!(refused, WriteError::DiskFull { .. }), "expected DiskFull, got {refused}");
    assert!(refused.to_string().contains("SSD nearly full"));
    assert!(shard.read_only_reason().is_none(), "a full disk refuses writes; it does not latch the shard");
    let (s, last) = (shard.clone(), *acked.last().unwrap());
    assert_eq!(
        block_on(async move { s.get(b"filler", last).await.unwrap() }).map(|(_, v)| v),
        Some(value_for(b"filler", last, 500))
    );
    exec.clear();
    drop(shard);
    disk.crash();
    let (shard, _) = open_shard(&disk, &clock, &options).expect("reopens on a nearly full disk");
    for i in acked {
        assert_eq!(get(&shard, b"filler", i).map(|(_, v)| v), Some(value_for(b"filler", i, 500)), "entry {i}");
    }
}
