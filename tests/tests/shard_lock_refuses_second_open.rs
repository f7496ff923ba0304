//! A lock file keeps a second opener off a shard's data directory.

use strata_ioengine::{SimClock, SimDisk, SimFaults};
use strata_node::OpenError;
use strata_tests::harness::{open_shard, small_options};

#[test]
fn second_open_of_the_same_directory_is_refused() {
    let disk = SimDisk::new(51, SimFaults::none());
    let clock = SimClock::new(1);
    let options = small_options(64 * 1024);
    let (first, _) = open_shard(&disk, &clock, &options).unwrap();
    match open_shard(&disk, &clock, &options) {
        Err(OpenError::Locked(e)) => println!("refused: {e}"),
        Err(other) => panic!("expected a lock error, got {other}"),
        Ok(_) => panic!("two shards opened one directory"),
    }
    drop(first);
    assert!(open_shard(&disk, &clock, &options).is_ok(), "the lock is released with the shard");
}
