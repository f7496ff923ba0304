//! SIGTERM at any moment of start-up stops the node as it stops a serving one: exit 0, and
//! every write acknowledged before is read back afterwards.
//!
//! The node is loaded with enough writes that its restart replays a long WAL (the memtable holds
//! them all, so none is flushed), then SIGKILLed. It is started again and again on that data,
//! each time sent SIGTERM at a random moment between its first log line ("starting", written
//! once its handlers are installed) and somewhat past the time a full start takes, so the
//! signal lands in the start-up checks, in the replay, between the shards opening and
//! listening, and while serving. Last, a start that is left alone reads back every write.
//!
//! The moments come from a seed, printed at the start; replay a run with
//! `STRATA_START_SIGNAL_SEED=<seed>`.

mod common;

use common::Node;
use std::time::{Duration, Instant};
use strata_ioengine::SimRng;

const WRITERS: u64 = 8;
const LOAD_FOR: Duration = Duration::from_secs(3);
const VALUE_LEN: usize = 1024;
const STOPS: usize = 12;

/// A memtable that holds the whole load: the restart replays all of it from the WAL.
const CONFIG: &str = r#"
[shard]
memory-budget = "1 GiB"
block-cache = "16 MiB"
memtable-max = "512 MiB"
flush-at = "512 MiB"
"#;

fn value_of(writer: u64, i: u64) -> Vec<u8> {
    let mut value = format!("writer {writer} put {i} ").into_bytes();
    value.resize(VALUE_LEN, b'a' + (i % 26) as u8);
    value
}

fn pkey_of(writer: u64) -> String {
    format!("start-signal-{writer}")
}

/// Waits for the node's first log line, which it writes once its signal handlers are in.
fn wait_starting(node: &Node) {
    let start = Instant::now();
    while !node.log_text().contains("starting") {
        assert!(start.elapsed() < Duration::from_secs(10), "no \"starting\" line; log:\n{}", node.log_text());
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn sigterm_at_any_moment_of_start_up_exits_0_and_loses_nothing() {
    let mut rng = SimRng::new(common::seed("STRATA_START_SIGNAL_SEED", "start-signal"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("strata.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let args = ["--config", config.to_str().unwrap()];

    // Load: each writer puts a timeline under its own pkey; `acked[w]` writes were acknowledged.
    let mut node = Node::start(&data, &args);
    let base_ts = common::now_us();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut client = node.client();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut i = 0;
                while start.elapsed() < LOAD_FOR {
                    client.put(pkey_of(w).as_bytes(), base_ts + i, &value_of(w, i)).expect("a put during the load");
                    i += 1;
                }
                i
            })
        })
        .collect();
    let acked: Vec<u64> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    let total: u64 = acked.iter().sum();
    node.kill();
    println!("{total} puts of {VALUE_LEN} bytes acknowledged, then SIGKILL");

    // How long a whole start (with the replay) takes, from the first log line to answering.
    let mut timed = Node::spawn(&data, &args, "info");
    wait_starting(&timed);
    let began = Instant::now();
    let start = Instant::now();
    while !(strata_node::client::Client::connect(timed.addr).is_ok_and(|mut c| c.ping().is_ok())) {
        assert!(start.elapsed() < Duration::from_secs(60), "the node did not start; log:\n{}", timed.log_text());
        std::thread::sleep(Duration::from_millis(2));
    }
    let full_start = began.elapsed();
    assert!(timed.log_text().contains("records="), "the start replays the WAL; log:\n{}", timed.log_text());
    timed.kill();
    println!("a start with the replay takes {full_start:?}");

    let window_us = (full_start.as_micros() as u64 * 3 / 2).max(1000);
    let (mut while_starting, mut while_serving) = (0, 0);
    for stop in 0..STOPS {
        let delay = Duration::from_micros(if stop == 0 { 0 } else { rng.below(window_us) });
        let mut node = Node::spawn(&data, &args, "info");
        wait_starting(&node);
        std::thread::sleep(delay);
        let code = node.terminate();
        let log = node.log_text();
        assert_eq!(code, Some(0), "SIGTERM {delay:?} after \"starting\": exit {code:?}; log:\n{log}");
        assert!(
            !log.contains("panicked") && !log.contains("ERROR"),
            "SIGTERM {delay:?} after \"starting\"; log:\n{log}"
        );
        if log.contains("serving shards=") {
            while_serving += 1;
        } else {
            assert!(log.contains("stopped by a signal while starting"), "log:\n{log}");
            while_starting += 1;
        }
        println!(
            "stop {stop}: SIGTERM {delay:?} after \"starting\", exit 0, {}",
            if log.contains("serving shards=") { "had served" } else { "while starting" }
        );
    }
    assert!(while_starting > 0, "no SIGTERM landed before the node served");

    let mut node = Node::start(&data, &args);
    let mut client = node.client();
    let mut wrong = Vec::new();
    for (w, &count) in acked.iter().enumerate() {
        let w = w as u64;
        for i in 0..count {
            match client.get(pkey_of(w).as_bytes(), base_ts + i).expect("a get") {
                Some((_, value)) if value == value_of(w, i) => {}
                other => wrong.push(format!("{}@{}: {:?}", pkey_of(w), base_ts + i, other.map(|(v, _)| v))),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {total} acknowledged puts lost or changed; first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    assert_eq!(node.terminate(), Some(0), "log:\n{}", node.log_text());
    println!(
        "{total} acknowledged puts read back after {while_starting} stops while starting and {while_serving} while serving"
    );
}
