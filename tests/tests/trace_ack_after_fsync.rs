//! Trace check: over 100,000 acknowledged puts from 50 concurrent writers, every acknowledgement
//! comes after a completed write covering its bytes and a completed fdatasync submitted after
//! that write; and the check catches an engine that acknowledges before the fdatasync.

use strata_ioengine::{SimClock, SimDisk, SimFaults, Trace, Traced};
use strata_node::Mutation;
use strata_tests::harness::{open_shard, put_many, small_options};

fn traced_run(mutation: Option<Mutation>, writers: u64, per_writer: u64) -> (Trace, u64) {
    let trace = Trace::new();
    let disk = Traced::new(SimDisk::new(11, SimFaults::none()), trace.clone());
    let clock = SimClock::new(1_700_000_000_000_000);
    let mut options = small_options(1 << 20);
    options.trace = Some(trace.clone());
    options.mutation = mutation;
    let (shard, _) = open_shard(&disk, &clock, &options).expect("a fresh shard opens");
    let acked = put_many(&shard, writers, per_writer, 100);
    (trace, acked.len() as u64)
}

#[test]
fn every_ack_follows_its_write_and_fdatasync() {
    let (trace, acked) = traced_run(None, 50, 2000);
    assert_eq!(acked, 100_000);
    assert_eq!(trace.acked_writes(), 100_000);
    let batches = trace.check_acks().unwrap_or_else(|v| panic!("{v}"));
    println!("checked {batches} group commits covering {acked} acknowledged puts");
    assert!(batches > 0);
}

#[test]
fn trace_check_catches_ack_before_fsync() {
    let (trace, acked) = traced_run(Some(Mutation::AckBeforeFsync), 50, 200);
    assert_eq!(acked, 10_000);
    let violation = trace.check_acks().expect_err("acknowledging before fdatasync must break the trace check");
    println!("caught: {violation}");
}
