//! A torn group commit at the end of the WAL (never acknowledged) is truncated and reported;
//! everything acknowledged before it is recovered; the torn batch's records are not.

use strata_format::wal::{BatchEncoder, BatchPlace, RecordKind};
use strata_ioengine::{SimClock, SimDisk, SimFaults};
use strata_tests::harness::{
    get, open_shard, overwrite, put_many, read_segment, segments_by_seq, small_options, value_for,
};

#[test]
fn torn_batch_at_the_tail_is_truncated_and_reported() {
    let disk = SimDisk::new(21, SimFaults::none());
    let clock = SimClock::new(1_700_000_000_000_000);
    let options = small_options(256 * 1024);
    let (shard, _) = open_shard(&disk, &clock, &options).unwrap();
    let acked = put_many(&shard, 8, 50, 100);
    drop(shard);

    // Write the next batch by hand, then tear it: a sector in the middle never reached the disk.
    let wal_dir = options.dir.join("wal");
    let (path, info) = segments_by_seq(&disk, &wal_dir).pop().unwrap();
    let (_, batches) = read_segment(&disk, &path);
    let (last_offset, last_len) = *batches.last().unwrap();
    let end = last_offset + last_len;
    let mut encoder = BatchEncoder::new();
    for i in 0..30 {
        encoder.push(RecordKind::Put, u64::MAX / 2 + i, b"torn", i, &[7u8; 300]);
    }
    let batch_seq = info.first_batch_seq + batches.len() as u64;
    let mut frame = encoder
        .finish(BatchPlace { batch_seq, segment_seq: info.segment_seq, offset: end, nonce: info.nonce }, 0)
        .to_vec();
    assert!(frame.len() >= 8192, "the torn batch spans blocks");
    frame[4096..4608].fill(0);
    overwrite(&disk, &path, end, frame);

    let (shard, report) = open_shard(&disk, &clock, &options).expect("a torn tail does not stop recovery");
    let torn = report.torn_tail.expect("the torn batch is reported");
    assert_eq!(torn.file, path);
    assert_eq!(torn.offset, end);
    println!("reported: {} at offset {}: {}", torn.file.display(), torn.offset, torn.reason);
    for (pkey, ts, version) in &acked {
        let (v, value) = get(&shard, pkey, *ts).expect("acknowledged write recovered");
        assert_eq!((v, value), (*version, value_for(pkey, *ts, 100)));
    }
    assert_eq!(get(&shard, b"torn", 0), None, "the torn batch's records are dropped");
}
