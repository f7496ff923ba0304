//! Corruption in the middle of the WAL (a bad batch followed by valid later ones) makes the shard
//! refuse to open, naming the file and offset, instead of silently dropping acknowledged writes.

use strata_ioengine::{SimClock, SimDisk, SimFaults};
use strata_node::{OpenError, RecoveryError};
use strata_tests::harness::{flip_bit, open_shard, put_many, read_segment, segments_by_seq, small_options};

fn corrupted(result: Result<impl Sized, OpenError>) -> (std::path::PathBuf, u64, String) {
    match result {
        Err(OpenError::Recovery(RecoveryError::Corrupted { file, offset, reason })) => (file, offset, reason),
        Err(other) => panic!("expected a corruption error, got: {other}"),
        Ok(_) => panic!("a WAL damaged in the middle must not open"),
    }
}

#[test]
fn bad_batch_followed_by_valid_batches_refuses_to_open() {
    let disk = SimDisk::new(31, SimFaults::none());
    let clock = SimClock::new(1_700_000_000_000_000);
    let options = small_options(1 << 20);
    let (shard, _) = open_shard(&disk, &clock, &options).unwrap();
    put_many(&shard, 4, 100, 100);
    drop(shard);
    let (path, _) = segments_by_seq(&disk, &options.dir.join("wal")).pop().unwrap();
    let (_, batches) = read_segment(&disk, &path);
    assert!(batches.len() > 3);
    let (victim, _) = batches[1];
    flip_bit(&disk, &path, victim + 100);
    let (file, offset, reason) = corrupted(open_shard(&disk, &clock, &options));
    assert_eq!((file.as_path(), offset), (path.as_path(), victim));
    let message = OpenError::Recovery(RecoveryError::Corrupted { file, offset, reason }).to_string();
    println!("{message}");
    assert!(message.contains(&path.display().to_string()) && message.contains(&format!("offset {victim}")));
}

#[test]
fn damaged_end_of_an_earlier_segment_refuses_to_open() {
    let disk = SimDisk::new(32, SimFaults::none());
    let clock = SimClock::new(1_700_000_000_000_000);
    let options = small_options(64 * 1024);
    let (shard, _) = open_shard(&disk, &clock, &options).unwrap();
    put_many(&shard, 4, 300, 100);
    drop(shard);
    let segments = segments_by_seq(&disk, &options.dir.join("wal"));
    assert!(segments.len() >= 3, "the load spans several segments");
    let (path, _) = &segments[segments.len() - 2];
    let (_, batches) = read_segment(&disk, path);
    let (victim, _) = *batches.last().unwrap();
    flip_bit(&disk, path, victim + 64);
    let (file, offset, reason) = corrupted(open_shard(&disk, &clock, &options));
    println!("{}: offset {offset}: {reason}", file.display());
    assert_eq!((file.as_path(), offset), (path.as_path(), victim));
}
