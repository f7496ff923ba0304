//! Identical GETs that arrive together while the key is read from the SSD share one read: the
//! node reports them as merged, and every one of them gets the right answer.

mod common;

use common::{Node, now_us};
use std::time::Duration;
use strata_format::protocol::{self, Priority, Response, Status};
use strata_node::client::Connection;

#[test]
fn identical_gets_in_one_turn_share_one_disk_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("strata.toml");
    // Small memtable and cache: the keys are read back from tables on the SSD.
    std::fs::write(
        &config,
        "[shard]\nmemory-budget = \"64 MiB\"\nmemtable-max = \"4 MiB\"\nflush-at = \"256 KiB\"\nblock-cache = \"1 MiB\"\n\
         [limits]\nshard-inflight-bytes-max = \"16 MiB\"\n",
    )
    .unwrap();
    let node = Node::start(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    let ts = now_us();
    let mut client = node.shard_aware_client();
    let value = vec![7u8; 1000];
    // Enough keys that most of them end in flushed tables, and the cache cannot hold them.
    for i in 0..6000u64 {
        client.put(format!("k{i}").as_bytes(), ts, &value).unwrap();
    }
    // Let the last flushes finish.
    std::thread::sleep(Duration::from_secs(1));
    let addr = format!("127.0.0.1:{}", node.shard_port_base).parse().unwrap();
    let shard0: Vec<String> = (0..6000u64)
        .map(|i| format!("k{i}"))
        .filter(|p| strata_format::route::shard_of(strata_format::key::bucket_of(p.as_bytes()), 2) == 0)
        .collect();
    let mut conn = Connection::connect(addr, Duration::from_secs(5)).unwrap();
    let mut merged_before = node.metric_sum("strata_merged_reads_total");
    let mut merged = 0;
    // Each round pipelines 20 GETs of one cold key in a single write.
    for pkey in shard0.iter().step_by(97).take(40) {
        for _ in 0..20 {
            conn.queue(1_000_000, Priority::High, |out, head| protocol::encode_get(out, head, pkey.as_bytes(), ts))
                .unwrap();
        }
        conn.flush().unwrap();
        for _ in 0..20 {
            let response = conn.receive(Duration::from_secs(5)).unwrap();
            assert_eq!(response.header.status, Status::Ok, "{pkey}");
            match response.response().unwrap() {
                Response::Value { value: got, .. } => assert_eq!(got, value.as_slice()),
                other => panic!("expected a value, got {other:?}"),
            }
        }
        let now = node.metric_sum("strata_merged_reads_total");
        merged += now - merged_before;
        merged_before = now;
    }
    assert!(merged > 0, "no GET was merged with an identical one in flight");
}
