//! WAL segments are preallocated, rolled over when full, and recycled under a new sequence
//! number once released, so a steady write load keeps a bounded number of segment files.

use strata_ioengine::simexec::block_on;
use strata_ioengine::{Disk, SimClock, SimDisk, SimFaults};
use strata_tests::harness::{get, open_shard, put_many, segments_by_seq, small_options, value_for};

#[test]
fn released_segments_are_recycled_with_new_sequences() {
    let disk = SimDisk::new(41, SimFaults::none());
    let clock = SimClock::new(1_700_000_000_000_000);
    let options = small_options(64 * 1024);
    let (shard, _) = open_shard(&disk, &clock, &options).unwrap();
    let wal_dir = options.dir.join("wal");
    let mut files_per_round = Vec::new();
    for round in 0..10 {
        put_many(&shard, 4, 100, 100);
        // Pretend everything before the active segment is persisted elsewhere (a flush).
        shard.release_segments_through(shard.active_segment_seq() - 1);
        let d = disk.clone();
        let dir = wal_dir.clone();
        let files = block_on(async move { d.list(&dir).await.unwrap() }).len();
        files_per_round.push(files);
        println!("round {round}: active segment {}, {files} files", shard.active_segment_seq());
    }
    assert!(shard.active_segment_seq() > 10, "the load rolled over many segments");
    // Each round fills several segments before releasing them; after the first round the files
    // are reused, so their number stops growing.
    let settled = files_per_round[1];
    assert!(files_per_round[1..].iter().all(|f| *f <= settled), "segment files pile up: {files_per_round:?}");
    let seqs: Vec<u64> = segments_by_seq(&disk, &wal_dir).iter().map(|(_, info)| info.segment_seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    drop(shard);
    let mut reopen = options.clone();
    reopen.replay_from_seq = *seqs.last().unwrap();
    let (shard, report) = open_shard(&disk, &clock, &reopen).unwrap();
    assert!(report.segments_replayed >= 1);
    // The last round's writes went to segments at or after the replay point.
    let (_, value) = get(&shard, b"w0", 99).expect("the newest write is recovered");
    assert_eq!(value, value_for(b"w0", 99, 100));
}
