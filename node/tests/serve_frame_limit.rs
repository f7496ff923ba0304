//! A node configured with a frame limit below the protocol's answers a larger frame TOO_LARGE,
//! naming the limit, closes that connection (its body will not be read) and keeps serving.

mod common;

use common::{Node, now_us};
use std::io::Read as _;
use std::time::Duration;
use strata_format::protocol::{self, Priority, Response, Status};
use strata_node::client::Connection;

#[test]
fn a_frame_above_the_configured_limit_is_answered_too_large_then_closed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("strata.toml");
    std::fs::write(&config, "[limits]\nframe-max = \"2 MiB\"\n").unwrap();
    let node = Node::start(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    let ts = now_us();
    let mut conn = Connection::connect(node.addr, Duration::from_secs(5)).unwrap();
    // A frame whose 3 MiB body is legal by the protocol (at most 4 MiB) but above this node's
    // limit: a PING header with its body length patched and both checksums fixed.
    let mut frame = Vec::new();
    protocol::encode_ping(
        &mut frame,
        protocol::RequestHead { request_id: 7, deadline_us: 0, priority: Priority::High },
        &[],
    )
    .unwrap();
    let body_len = 3u32 << 20;
    frame[12..16].copy_from_slice(&body_len.to_le_bytes());
    let body = vec![0u8; body_len as usize];
    let body_crc = strata_format::checksum::crc32c(&body);
    frame[24..28].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = strata_format::checksum::crc32c(&frame[..28]);
    frame[28..32].copy_from_slice(&header_crc.to_le_bytes());
    conn.queue_raw(&frame);
    conn.flush().unwrap();
    let response = conn.receive(Duration::from_secs(5)).unwrap();
    assert_eq!(response.header.status, Status::TooLarge);
    assert_eq!(response.header.request_id, 7);
    match response.response().unwrap() {
        Response::Failed { message, .. } => assert!(message.contains("frame limit of 2097152"), "{message}"),
        other => panic!("expected TOO_LARGE, got {other:?}"),
    }
    // The connection is closed: nothing more comes.
    let mut stream = conn.stream().try_clone().unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    // Others are served, and a value within the limit is accepted.
    let mut client = node.client();
    let value = vec![1u8; 1 << 20];
    let version = client.put(b"big", ts, &value).unwrap();
    assert_eq!(client.get(b"big", ts).unwrap(), Some((version, value)));
}
