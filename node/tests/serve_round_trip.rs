//! The real binary over TCP: every operation round-trips, through the common port (forwarding
//! to the owning shard) and through shard ports (straight to the shard, WRONG_SHARD otherwise);
//! STATS and the metrics endpoint report; SIGTERM exits 0 and the data is there after restart.

mod common;

use common::{Node, now_us};
use std::time::Duration;
use strata_format::key::bucket_of;
use strata_format::protocol::{self, Priority, Response, Status};
use strata_format::route::shard_of;
use strata_node::client::{ClientError, Connection};

#[test]
fn every_operation_round_trips_through_both_ports_and_survives_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = Node::start(&data, &[]);
    let ts = now_us();
    let mut common = node.client();
    let mut direct = node.shard_aware_client();
    let mut versions = Vec::new();
    for i in 0..200u64 {
        let pkey = format!("user-{i}");
        let client = if i % 2 == 0 { &mut common } else { &mut direct };
        let version = client.put(pkey.as_bytes(), ts + i, format!("v{i}").as_bytes()).unwrap();
        versions.push(version);
    }
    // Both shards got some keys, so forwarding was exercised.
    let shards: std::collections::HashSet<u16> =
        (0..200).map(|i| shard_of(bucket_of(format!("user-{i}").as_bytes()), 2)).collect();
    assert_eq!(shards.len(), 2);
    for i in 0..200u64 {
        let pkey = format!("user-{i}");
        let client = if i % 2 == 0 { &mut direct } else { &mut common };
        let got = client.get(pkey.as_bytes(), ts + i).unwrap().expect("written");
        assert_eq!(got, (versions[i as usize], format!("v{i}").into_bytes()));
        assert_eq!(client.get_if_newer(pkey.as_bytes(), ts + i, versions[i as usize]).unwrap(), None);
        assert!(client.get_if_newer(pkey.as_bytes(), ts + i, versions[i as usize] - 1).unwrap().is_some());
    }
    // A timeline: scan newest first with a limit; delete; delete_range.
    for k in 0..30u64 {
        common.put(b"timeline", ts + k, &k.to_le_bytes()).unwrap();
    }
    let page = common.scan(b"timeline", ts, ts + 100, 20, true).unwrap();
    assert_eq!(page.len(), 20);
    assert_eq!(page[0].0, ts + 29);
    common.delete(b"timeline", ts + 29).unwrap();
    common.delete_range(b"timeline", ts, ts + 9).unwrap();
    let all = direct.scan(b"timeline", ts, ts + 100, 100, false).unwrap();
    assert_eq!(all.iter().map(|e| e.0 - ts).collect::<Vec<_>>(), (10..29).collect::<Vec<_>>());
    assert_eq!(common.get(b"timeline", ts + 29).unwrap(), None);
    // MGET of one shard's keys.
    let same_shard: Vec<String> =
        (0..200).map(|i| format!("user-{i}")).filter(|p| shard_of(bucket_of(p.as_bytes()), 2) == 1).take(5).collect();
    let keys: Vec<(&[u8], u64)> =
        same_shard.iter().map(|p| (p.as_bytes(), ts + p.trim_start_matches("user-").parse::<u64>().unwrap())).collect();
    let got = common.mget(&keys).unwrap();
    assert!(got.iter().all(Option::is_some));
    // A shard port refuses another shard's pkey with WRONG_SHARD naming the right one.
    let wrong = same_shard[0].as_bytes();
    let mut conn =
        Connection::connect(format!("127.0.0.1:{}", node.shard_port_base).parse().unwrap(), Duration::from_secs(5))
            .unwrap();
    let response = conn
        .call(Duration::from_secs(5), Priority::High, |out, head| protocol::encode_get(out, head, wrong, ts))
        .unwrap();
    assert_eq!(response.header.status, Status::WrongShard);
    match response.response().unwrap() {
        Response::WrongShard { shard, .. } => assert_eq!(shard, 1),
        other => panic!("expected WRONG_SHARD, got {other:?}"),
    }
    let stats = common.stats().unwrap();
    assert!(stats.contains("shard_count 2"), "{stats}");
    let metrics = node.metrics();
    assert!(metrics.contains("strata_requests_total{shard=\"0\",op=\"PUT\"}"), "{metrics}");
    assert!(metrics.contains("strata_forwarded_requests_total"), "{metrics}");
    // Every turn that answered is timed, with how long it held its first answer.
    assert!(node.metric_sum("strata_turn_seconds_count") > 0, "{metrics}");
    assert!(node.metric_sum("strata_answer_hold_seconds_count") > 0, "{metrics}");

    // A second node (another data directory) on the node's port would join its SO_REUSEPORT
    // group and take a share of the clients: it is refused before it listens.
    let start = |data: &std::path::Path, listen: String, shard_port_base: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["serve", "--data-dir", data.to_str().unwrap(), "--shards", "1", "--status-listen", ""])
            .args(["--listen", &listen, "--shard-port-base", &shard_port_base])
            .output()
            .unwrap()
    };
    let second = start(&dir.path().join("second"), node.addr.to_string(), "0".into());
    let text = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{text}");
    let holder = format!("cannot listen on {}: another strata node (pid {}) holds port", node.addr, node.child.id());
    assert!(text.contains(&holder), "{text}");
    assert!(!text.contains("serving shards="), "{text}");
    // A port another program listens on (without SO_REUSEPORT) is refused the same way.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_addr = other.local_addr().unwrap();
    let fourth = start(&dir.path().join("fourth"), other_addr.to_string(), "0".into());
    let text = String::from_utf8_lossy(&fourth.stderr);
    assert_eq!(fourth.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("cannot listen on {other_addr}: another process listens there")), "{text}");
    drop(other);
    // A shard port held by another process stops a node before it says it serves, and the
    // reason is logged once.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_port = held.local_addr().unwrap().port();
    let third = start(&dir.path().join("third"), format!("127.0.0.1:{}", common::free_ports(1)), held_port.to_string());
    let text = String::from_utf8_lossy(&third.stderr);
    assert_eq!(third.status.code(), Some(1), "{text}");
    assert_eq!(text.matches(&format!("cannot listen on 127.0.0.1:{held_port}")).count(), 1, "{text}");
    assert!(!text.contains("serving shards="), "{text}");
    drop(held);
    assert!(common.ping().is_ok(), "the first node still serves");

    assert_eq!(node.terminate(), Some(0), "log:\n{}", node.log_text());
    let log = node.log_text();
    assert!(log.contains("shard closed cleanly"), "log:\n{log}");
    // Restarted at once on the same port, with the closed connections in TIME_WAIT: the check
    // for another listener does not refuse it.
    let mut again = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--data-dir", data.to_str().unwrap(), "--shards", "2", "--status-listen", ""])
        .args(["--listen", &node.addr.to_string(), "--shard-port-base", &node.shard_port_base.to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        if let Ok(mut client) = strata_node::client::Client::connect(node.addr)
            && client.ping().is_ok()
        {
            break;
        }
        assert!(again.try_wait().unwrap().is_none(), "the restart on the same port was refused");
        assert!(started.elapsed() < Duration::from_secs(30), "the restart did not serve");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::process::Command::new("kill").args(["-TERM", &again.id().to_string()]).status().unwrap();
    assert_eq!(again.wait().unwrap().code(), Some(0));

    // The shard count is part of the data.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--data-dir", data.to_str().unwrap(), "--shards", "3", "--status-listen", ""])
        .output()
        .unwrap();
    assert_ne!(refused.status.code(), Some(0));
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(text.contains("created with 2 shards"), "{text}");
    // A command line that does not parse exits 2, as a bad configuration does; help exits 0.
    for (args, code, says) in [
        (&["serve", "--shards", "two"][..], 2, "two"),
        (&["serve", "--bogus"], 2, "--bogus"),
        (&["serve", "--help"], 0, "--print-sample-config"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata")).args(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(code), "{args:?}: {text}");
        assert!(text.contains(says), "{args:?} says what: {text}");
    }

    let node = Node::start(&data, &[]);
    let mut client = node.client();
    for i in 0..200u64 {
        let got = client.get(format!("user-{i}").as_bytes(), ts + i).unwrap().expect("durable");
        assert_eq!(got.0, versions[i as usize]);
    }
    // The client refuses what cannot be encoded; the server refuses what the shard refuses.
    assert!(matches!(client.put(b"", ts, b"x").unwrap_err(), ClientError::Protocol(_)));
    let err = client.put(b"future", ts + 10 * 3_600_000_000, b"x").unwrap_err();
    assert!(
        matches!(&err, ClientError::Failed { status: Status::BadRequest, message } if message.contains("future")),
        "{err}"
    );
}
