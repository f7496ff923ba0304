//! Bad input over TCP against the real binary. Each kind of bad input gets its answer, or the
//! connection closed with a logged reason, and after each one a fresh client can still put and
//! get:
//! - framing: wrong magic, bad header checksum, unknown version, a response frame: the
//!   connection is closed without an answer (nothing after the bad header is served);
//! - a sound header the server refuses (unknown opcode, reserved bits): BAD_REQUEST with the
//!   request's id, and the connection stays in step for the next frame;
//! - a declared body above FRAME_BODY_MAX: TOO_LARGE, then close, and nothing is allocated from
//!   the declared length (the server's RSS stays flat over many such connections);
//! - bad body checksum, bodies that do not decode, values and batches over their limits;
//! - truncated frames, and a frame dribbled in one byte at a time;
//! - tickets: none, another secret's, expired, malformed, out of scope, admin;
//! - a client that never reads: bounded server memory, other clients served meanwhile, and the
//!   connection closed once `limits.client-stall` passes without progress.

mod common;

use common::{Node, now_us};
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use strata_format::checksum::crc32c;
use strata_format::protocol::{
    self, FRAME_BODY_MAX, FRAME_MAGIC, HEADER_SIZE, PROTOCOL_VERSION, Priority, RequestHead, Status, VALUE_LEN_MAX,
};
use strata_format::ticket::{Scope, Ticket};
use strata_node::client::{Client, ClientError, ClientOptions, Connection};

/// One node at a time: these tests measure memory and latency on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Logs why each connection was closed (the server logs that at debug level).
const SERVER_DEBUG: &str = "info,strata_node::server=debug";

const OP_PING: u8 = 1;
const OP_PUT: u8 = 3;
const OP_GET: u8 = 4;
const OP_SCAN: u8 = 8;
const OP_MGET: u8 = 9;
const FLAG_RESPONSE: u8 = 0x80;

/// A frame header written field by field, so it can say anything; `seal` adds a valid checksum.
#[derive(Debug, Clone, Copy)]
struct RawHeader {
    magic: u32,
    version: u8,
    opcode: u8,
    flags: u8,
    status: u8,
    deadline_us: u32,
    body_len: u32,
    request_id: u64,
    body_crc: u32,
}

impl RawHeader {
    /// A well-formed request header for `body`.
    fn request(opcode: u8, request_id: u64, body: &[u8]) -> Self {
        Self {
            magic: FRAME_MAGIC,
            version: PROTOCOL_VERSION,
            opcode,
            flags: Priority::High as u8,
            status: 0,
            deadline_us: 5_000_000,
            body_len: body.len() as u32,
            request_id,
            body_crc: crc32c(body),
        }
    }

    fn seal(&self) -> [u8; HEADER_SIZE] {
        let mut bytes = [0u8; HEADER_SIZE];
        bytes[0..4].copy_from_slice(&self.magic.to_le_bytes());
        bytes[4] = self.version;
        bytes[5] = self.opcode;
        bytes[6] = self.flags;
        bytes[7] = self.status;
        bytes[8..12].copy_from_slice(&self.deadline_us.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.body_len.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.request_id.to_le_bytes());
        bytes[24..28].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32c(&bytes[..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    fn frame(&self, body: &[u8]) -> Vec<u8> {
        [&self.seal()[..], body].concat()
    }
}

/// A well-formed request frame with any opcode and body.
fn raw_frame(opcode: u8, request_id: u64, body: &[u8]) -> Vec<u8> {
    RawHeader::request(opcode, request_id, body).frame(body)
}

/// A PING frame made by the library encoder.
fn ping_frame(request_id: u64, echo: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    protocol::encode_ping(&mut out, head(request_id), echo).unwrap();
    out
}

fn head(request_id: u64) -> RequestHead {
    RequestHead { request_id, deadline_us: 5_000_000, priority: Priority::High }
}

/// A PUT body: `pkey_len u8, pkey, ts u64, value_len u32, value`, with any lengths.
fn put_body(pkey_len: u8, pkey: &[u8], ts: u64, value_len: u32, value: &[u8]) -> Vec<u8> {
    [&[pkey_len][..], pkey, &ts.to_le_bytes(), &value_len.to_le_bytes(), value].concat()
}

/// A response frame read without the library decoder (which refuses unknown opcodes).
#[derive(Debug)]
struct RawResponse {
    opcode: u8,
    flags: u8,
    status: u8,
    request_id: u64,
    body: Vec<u8>,
}

impl RawResponse {
    fn status(&self) -> Status {
        Status::from_u8(self.status).unwrap_or_else(|| panic!("unknown status {} in {self:?}", self.status))
    }

    /// The message of a failure body: `message_len u16, message`.
    fn message(&self) -> String {
        assert!(self.status().is_failure(), "{self:?} is not a failure");
        let len = usize::from(u16::from_le_bytes([self.body[0], self.body[1]]));
        assert_eq!(self.body.len(), 2 + len, "a failure body is its message");
        String::from_utf8(self.body[2..].to_vec()).unwrap()
    }
}

fn connect(node: &Node) -> TcpStream {
    let stream = TcpStream::connect(node.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// Reads one response frame, checking its header and body checksums by hand.
fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut header = [0u8; HEADER_SIZE];
    stream.read_exact(&mut header).expect("a response header");
    assert_eq!(&header[0..4], b"STRP", "response magic");
    assert_eq!(header[4], PROTOCOL_VERSION);
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
    assert_eq!(word(28), crc32c(&header[..28]), "response header checksum");
    let body_len = word(12);
    assert!(body_len <= FRAME_BODY_MAX);
    let mut body = vec![0; body_len as usize];
    stream.read_exact(&mut body).expect("a response body");
    assert_eq!(word(24), crc32c(&body), "response body checksum");
    let response = RawResponse {
        opcode: header[5],
        flags: header[6],
        status: header[7],
        request_id: u64::from_le_bytes(header[16..24].try_into().unwrap()),
        body,
    };
    assert_ne!(response.flags & FLAG_RESPONSE, 0, "{response:?} is not marked as a response");
    response
}

/// Reads until the server ends the connection (EOF or reset); returns the bytes read before.
/// Panics if it is still open after `within`.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let left = within.saturating_sub(start.elapsed());
        assert!(!left.is_zero(), "the connection is still open after {within:?} ({} bytes read)", got.len());
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => return got,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading until the server closes: {e}"),
        }
    }
}

/// A fresh client puts and gets at once (through the common port, and straight to the shard).
fn assert_serving(node: &Node, ticket: Option<&[u8]>, after: &str) {
    let start = Instant::now();
    let mut options = node.options();
    options.deadline = Duration::from_secs(2);
    options.ticket = ticket.map(<[u8]>::to_vec);
    let mut common = Client::new(options.clone());
    options.shard_ports = Some((node.shard_port_base, common::SHARDS));
    let mut direct = Client::new(options);
    let ts = now_us();
    let value = format!("served after {after}");
    for (i, pkey) in ["alive/a", "alive/b", "alive/c"].iter().enumerate() {
        let ts = ts + i as u64;
        let version = common
            .put(pkey.as_bytes(), ts, value.as_bytes())
            .unwrap_or_else(|e| panic!("after {after}: put failed: {e}; log:\n{}", node.log_text()));
        let got = direct.get(pkey.as_bytes(), ts).unwrap_or_else(|e| panic!("after {after}: get failed: {e}"));
        assert_eq!(got, Some((version, value.clone().into_bytes())), "after {after}");
    }
    assert!(start.elapsed() < Duration::from_secs(2), "after {after}: serving took {:?}", start.elapsed());
}

fn assert_log_contains(node: &Node, needle: &str) {
    let log = node.log_text();
    assert!(log.contains(needle), "the log does not say {needle:?}:\n{log}");
}

/// Sends `frame` on a pipelined connection and returns the one response (decoded by the library).
fn call_raw(conn: &mut Connection, frame: &[u8]) -> strata_node::client::OwnedResponse {
    conn.queue_raw(frame);
    conn.flush().unwrap();
    conn.receive(Duration::from_secs(5)).unwrap()
}

fn failure_of(response: &strata_node::client::OwnedResponse) -> (Status, String) {
    match response.response().unwrap() {
        protocol::Response::Failed { status, message } => (status, message.to_string()),
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn assert_pong(conn: &mut Connection, after: &str) {
    let response = conn
        .call(Duration::from_secs(5), Priority::High, |out, head| protocol::encode_ping(out, head, b"still here"))
        .unwrap_or_else(|e| panic!("after {after}: the connection no longer answers PING: {e}"));
    assert!(
        matches!(response.response(), Ok(protocol::Response::Pong { echo: b"still here" })),
        "after {after}: {response:?}"
    );
}

#[test]
fn framing_and_body_errors_are_answered_or_close_the_connection_and_the_node_keeps_serving() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with_log(&dir.path().join("data"), &[], SERVER_DEBUG);
    assert_serving(&node, None, "start");

    // A header whose stream cannot be trusted: closed, with no answer, and the PING queued
    // right behind it is not served either.
    let mut bad_magic = RawHeader::request(OP_PING, 1, b"");
    bad_magic.magic = u32::from_le_bytes(*b"GET ");
    let mut bad_checksum = RawHeader::request(OP_PING, 1, b"").seal();
    bad_checksum[28] ^= 0x01;
    let mut bad_version = RawHeader::request(OP_PING, 1, b"");
    bad_version.version = 2;
    let mut response_frame = RawHeader::request(OP_PING, 1, b"");
    response_frame.flags = FLAG_RESPONSE;
    response_frame.deadline_us = 0;
    let cases: [(&str, [u8; HEADER_SIZE], &str); 4] = [
        ("wrong magic", bad_magic.seal(), "bad frame magic"),
        ("bad header checksum", bad_checksum, "header checksum mismatch"),
        ("unknown protocol version", bad_version.seal(), "protocol version 2 is not supported"),
        ("a response frame sent to the server", response_frame.seal(), "the peer sent a response frame"),
    ];
    for (what, header, logged) in cases {
        let mut stream = connect(&node);
        stream.write_all(&[&header[..], &ping_frame(2, b"behind")].concat()).unwrap();
        let answered = read_until_closed(&mut stream, Duration::from_secs(5));
        assert!(answered.is_empty(), "{what}: the server answered {} bytes instead of closing", answered.len());
        assert_serving(&node, None, what);
        assert_log_contains(&node, logged);
    }

    // A sound header the server cannot serve: BAD_REQUEST with the request's id (and its opcode
    // byte), its body skipped, and the next frame on the connection served.
    let unknown_opcode = RawHeader::request(99, 7, b"0123456789");
    let mut reserved_flags = RawHeader::request(OP_PING, 7, b"0123456789");
    reserved_flags.flags |= 0b0001_0000;
    let mut request_status = RawHeader::request(OP_PING, 7, b"0123456789");
    request_status.status = Status::NotFound as u8;
    let cases = [
        ("unknown opcode", unknown_opcode, "unknown opcode 99"),
        ("reserved flag bits", reserved_flags, "reserved field flags is not zero"),
        ("a status in a request", request_status, "reserved field status (in a request) is not zero"),
    ];
    for (what, header, message) in cases {
        let mut stream = connect(&node);
        // The header first, its body a moment later: the server waits for the body to skip it.
        stream.write_all(&header.seal()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        stream.write_all(&[&b"0123456789"[..], &ping_frame(8, b"next")].concat()).unwrap();
        let refused = read_response(&mut stream);
        assert_eq!(refused.status(), Status::BadRequest, "{what}: {refused:?}");
        assert_eq!(refused.request_id, 7, "{what}");
        assert_eq!(refused.opcode, header.opcode, "{what}: the answer repeats the opcode byte");
        assert!(refused.message().contains(message), "{what}: {:?}", refused.message());
        let pong = read_response(&mut stream);
        assert_eq!((pong.status(), pong.request_id, pong.opcode), (Status::Ok, 8, OP_PING), "{what}");
        assert_eq!(pong.body, b"next");
        stream.write_all(&ping_frame(9, b"later")).unwrap();
        assert_eq!(read_response(&mut stream).body, b"later", "{what}: the connection stays open");
        assert_serving(&node, None, what);
    }

    // A declared body above the frame limit: TOO_LARGE, then close; never allocated.
    let baseline = node.rss_bytes();
    let mut streams = Vec::new();
    for i in 0..20u32 {
        let mut header = RawHeader::request(OP_PUT, u64::from(i) + 100, b"");
        header.body_len = if i % 2 == 0 { u32::MAX } else { FRAME_BODY_MAX + 1 + i };
        header.body_crc = 0x1234_5678;
        let mut stream = connect(&node);
        // Some of the "body" follows at once: the server must not wait for or buffer it.
        stream.write_all(&[&header.seal()[..], &[0xab; 4096]].concat()).unwrap();
        streams.push((header, stream));
    }
    for (header, stream) in &mut streams {
        let refused = read_response(stream);
        assert_eq!(refused.status(), Status::TooLarge, "{refused:?}");
        assert_eq!((refused.request_id, refused.opcode), (header.request_id, OP_PUT));
        let message = refused.message();
        assert!(message.contains("exceeds the limit") && message.contains(&header.body_len.to_string()), "{message}");
        read_until_closed(stream, Duration::from_secs(5));
    }
    drop(streams);
    // A body of the largest legal length, declared but only begun: the input buffer grows with
    // what arrives, not with what is declared (20 x 4 MiB would show).
    let mut held = Vec::new();
    for i in 0..20u64 {
        let mut header = RawHeader::request(OP_PUT, 200 + i, b"");
        header.body_len = FRAME_BODY_MAX;
        let mut stream = connect(&node);
        stream.write_all(&[&header.seal()[..], &[0xcd; 1024]].concat()).unwrap();
        held.push(stream);
    }
    std::thread::sleep(Duration::from_millis(300));
    let grown = node.rss_bytes().saturating_sub(baseline);
    assert!(grown < 50 << 20, "the server's RSS grew by {} MiB on declared lengths", grown >> 20);
    assert_serving(&node, None, "oversized declared lengths");
    drop(held);

    // Bodies that fail their checksum or do not decode: answered on a connection that stays
    // usable; nothing is written.
    let mut conn = Connection::connect(node.addr, Duration::from_secs(5)).unwrap();
    let ts = now_us();
    let mut corrupted = Vec::new();
    protocol::encode_put(&mut corrupted, head(300), b"crc/victim", ts, b"the value").unwrap();
    *corrupted.last_mut().unwrap() ^= 0x20;
    let too_big_value = vec![0x11; VALUE_LEN_MAX as usize + 1];
    let ts_bytes = ts.to_le_bytes();
    let cases: Vec<(&str, Vec<u8>, Status, &str)> = vec![
        ("bad body checksum", corrupted, Status::BadRequest, "body checksum mismatch"),
        ("empty pkey", raw_frame(OP_PUT, 301, &put_body(0, b"", ts, 1, b"v")), Status::BadRequest, "pkey is empty"),
        (
            "value shorter than declared",
            raw_frame(OP_PUT, 302, &put_body(1, b"k", ts, 100, b"short")),
            Status::BadRequest,
            "truncated at value",
        ),
        (
            "trailing bytes",
            raw_frame(OP_GET, 303, &[&[1u8, b'k'][..], &ts_bytes, b"!"].concat()),
            Status::BadRequest,
            "bytes after the last field",
        ),
        (
            "scan limit 0",
            raw_frame(OP_SCAN, 304, &[&[1u8, b'k'][..], &ts_bytes, &ts_bytes, &0u32.to_le_bytes(), &[0]].concat()),
            Status::BadRequest,
            "scan limit 0",
        ),
        ("empty batch", raw_frame(OP_MGET, 305, &0u16.to_le_bytes()), Status::BadRequest, "at least one item"),
        (
            "value above VALUE_LEN_MAX",
            raw_frame(OP_PUT, 306, &put_body(3, b"big", ts, VALUE_LEN_MAX + 1, &too_big_value)),
            Status::TooLarge,
            "value of 1048577 bytes exceeds the limit of 1048576",
        ),
        (
            "value length declared far above VALUE_LEN_MAX",
            raw_frame(OP_PUT, 307, &put_body(3, b"big", ts, u32::MAX, b"tiny")),
            Status::TooLarge,
            "exceeds the limit",
        ),
        (
            "too many batch items",
            raw_frame(OP_MGET, 308, &2000u16.to_le_bytes()),
            Status::TooLarge,
            "2000 items exceed the limit",
        ),
    ];
    for (what, frame, status, message) in cases {
        let id = u64::from_le_bytes(frame[16..24].try_into().unwrap());
        let response = call_raw(&mut conn, &frame);
        assert_eq!(response.header.request_id, id, "{what}");
        let (got_status, got_message) = failure_of(&response);
        assert!(got_status.is_failure());
        assert_eq!(got_status, status, "{what}: {got_message}");
        assert!(got_message.contains(message), "{what}: {got_message:?} does not say {message:?}");
        assert_pong(&mut conn, what);
        assert_serving(&node, None, what);
    }
    let mut client = node.client();
    assert_eq!(client.get(b"crc/victim", ts).unwrap(), None, "a PUT with a bad body checksum was applied");
    assert_eq!(client.get(b"big", ts).unwrap(), None);

    // Truncated frames: half a header, half a body, then the socket closes (or just stays
    // silent): nothing is answered and nothing goes wrong.
    let mut put = Vec::new();
    protocol::encode_put(&mut put, head(400), b"truncated", ts, &[7; 1000]).unwrap();
    for cut in [1, HEADER_SIZE / 2, HEADER_SIZE, HEADER_SIZE + 5, put.len() / 2, put.len() - 1] {
        let mut stream = connect(&node);
        stream.write_all(&put[..cut]).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let answered = read_until_closed(&mut stream, Duration::from_secs(5));
        assert!(answered.is_empty(), "half a frame ({cut} bytes) was answered");
    }
    let mut silent = connect(&node);
    silent.write_all(&put[..put.len() / 2]).unwrap();
    assert_serving(&node, None, "truncated frames");
    drop(silent);
    assert_eq!(client.get(b"truncated", ts).unwrap(), None, "a truncated PUT was applied");

    // A slow sender: two pipelined frames, one byte at a time; both are served. Answers come in
    // any order, and the GET runs beside the PUT: it sees the value only if the PUT's commit
    // finished first (a noisy disk's fdatasync can outlast the GET's 30-odd slow bytes).
    let value = vec![0x42; 300];
    let mut frames = Vec::new();
    protocol::encode_put(&mut frames, head(500), b"slow/sender", ts, &value).unwrap();
    protocol::encode_get(&mut frames, head(501), b"slow/sender", ts).unwrap();
    let mut conn = Connection::connect(node.addr, Duration::from_secs(5)).unwrap();
    let mut stream = conn.stream();
    for byte in &frames {
        stream.write_all(std::slice::from_ref(byte)).unwrap();
        std::thread::sleep(Duration::from_micros(500));
    }
    let mut answers = [conn.receive(Duration::from_secs(5)).unwrap(), conn.receive(Duration::from_secs(5)).unwrap()];
    answers.sort_by_key(|a| a.header.request_id);
    let [written, read] = answers;
    assert_eq!((written.header.request_id, read.header.request_id), (500, 501), "each request answered once");
    let protocol::Response::Written { version } = written.response().unwrap() else { panic!("{written:?}") };
    assert!(
        match read.response().unwrap() {
            protocol::Response::Value { version: v, value: got } => v == version && got == value,
            protocol::Response::NotFound => true,
            _ => false,
        },
        "{read:?}"
    );
    assert_eq!(client.get(b"slow/sender", ts).unwrap(), Some((version, value)));

    // Four closed, three refused headers, twenty oversized, and the bad body checksum.
    let bad_frames = node.metric_sum("strata_bad_frames_total");
    assert!(bad_frames > 4 + 3 + 20, "{bad_frames} bad frames counted:\n{}", node.metrics());
    let log = node.log_text();
    for fatal in ["ERROR", "panicked", "read-only"] {
        assert!(!log.contains(fatal), "the log says {fatal:?}:\n{log}");
    }
}

fn unix_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn ticket(secret: &[u8], admin: bool, scopes: Vec<Scope>, issued_at_s: u64, expires_at_s: u64) -> Vec<u8> {
    Ticket { admin, issued_at_s, expires_at_s, scopes }.sign(secret)
}

fn client_with(node: &Node, ticket: Option<&[u8]>, shard_aware: bool) -> Client {
    let mut options: ClientOptions = node.options();
    options.deadline = Duration::from_secs(5);
    options.ticket = ticket.map(<[u8]>::to_vec);
    if shard_aware {
        options.shard_ports = Some((node.shard_port_base, common::SHARDS));
    }
    Client::new(options)
}

#[track_caller]
fn assert_unauthorized<T: std::fmt::Debug>(result: Result<T, ClientError>, says: &str) {
    match result {
        Err(ClientError::Failed { status: Status::Unauthorized, message }) => {
            assert!(message.contains(says), "UNAUTHORIZED, but {message:?} does not say {says:?}");
        }
        other => panic!("expected UNAUTHORIZED ({says}), got {other:?}"),
    }
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("strata.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn tickets_gate_every_pkey_and_bad_expired_or_out_of_scope_ones_are_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let secret: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    let secret_path = dir.path().join("ticket-secret");
    std::fs::write(&secret_path, &secret).unwrap();
    let config = write_config(dir.path(), &format!("ticket-secret-file = \"{}\"\n", secret_path.display()));
    let node = Node::start(&dir.path().join("data"), &["--config", &config]);
    let now = unix_s();
    let admin = ticket(&secret, true, vec![], now - 10, now + 3600);
    let alice = ticket(&secret, false, vec![Scope::Prefix(b"alice/".to_vec())], now - 10, now + 3600);
    let ts = now_us();
    assert_serving(&node, Some(&admin), "start");

    // No ticket: PING is answered, every pkey is refused.
    let mut anonymous = client_with(&node, None, false);
    anonymous.ping().unwrap();
    assert_unauthorized(anonymous.get(b"alice/x", ts), "requires a ticket");
    assert_unauthorized(anonymous.put(b"alice/x", ts, b"v"), "requires a ticket");
    assert_unauthorized(client_with(&node, None, true).put(b"bob/x", ts, b"v"), "requires a ticket");

    // Tickets the node must refuse at AUTH.
    let other_secret: Vec<u8> = secret.iter().map(|b| b ^ 0x5a).collect();
    let forged = ticket(&other_secret, true, vec![], now - 10, now + 3600);
    let expired = ticket(&secret, true, vec![], now - 100, now - 10);
    let mut altered = alice.clone();
    altered[24 + 2] = b'b'; // "alice/" becomes "blice/": the tag no longer matches.
    let refused: [(&str, &[u8], &str); 4] = [
        ("another secret's ticket", &forged, "signature does not match"),
        ("an expired ticket", &expired, "expired"),
        ("an altered ticket", &altered, "signature does not match"),
        ("bytes that are not a ticket", b"let me in, please; I am the admin", "malformed ticket"),
    ];
    for (what, bytes, says) in refused {
        for shard_aware in [false, true] {
            let mut client = client_with(&node, Some(bytes), shard_aware);
            assert_unauthorized(client.get(b"alice/x", ts), says);
            assert_unauthorized(client.put(b"anything", ts, b"v"), says);
        }
        // A refused AUTH leaves the connection without a ticket.
        let mut conn = Connection::connect(node.addr, Duration::from_secs(5)).unwrap();
        let auth = conn
            .call(Duration::from_secs(5), Priority::High, |out, head| protocol::encode_auth(out, head, bytes))
            .unwrap();
        assert_eq!(auth.header.status, Status::Unauthorized, "{what}");
        let get = conn
            .call(Duration::from_secs(5), Priority::High, |out, head| protocol::encode_get(out, head, b"alice/x", ts))
            .unwrap();
        assert_eq!(get.header.status, Status::Unauthorized, "{what}: a GET after a refused AUTH");
        assert_serving(&node, Some(&admin), what);
    }
    assert_log_contains(&node, "ticket refused");

    // A prefix ticket: its pkeys, through the common port (forwarding) and the shard ports.
    let mut versions = Vec::new();
    for shard_aware in [false, true] {
        let mut client = client_with(&node, Some(&alice), shard_aware);
        for i in 0..20u64 {
            let pkey = format!("alice/{shard_aware}/{i}");
            let version = client.put(pkey.as_bytes(), ts + i, b"alice's").unwrap();
            assert_eq!(client.get(pkey.as_bytes(), ts + i).unwrap(), Some((version, b"alice's".to_vec())));
            versions.push((pkey, ts + i, version));
        }
        assert_unauthorized(client.put(b"bob/x", ts, b"v"), "does not allow pkey bob/x");
        assert_unauthorized(client.get(b"bob/x", ts), "does not allow pkey bob/x");
        assert_unauthorized(client.get(b"alice", ts), "does not allow pkey alice");
        assert_unauthorized(client.scan(b"bob/x", 0, u64::MAX, 10, false), "bob/x");
        assert_unauthorized(client.delete_range(b"bob/x", 0, u64::MAX), "bob/x");
        let first = versions.last().unwrap().0.clone();
        assert_unauthorized(client.mget(&[(first.as_bytes(), ts + 19), (b"bob/x".as_slice(), ts)]), "bob/x");
        // Refusals do not end the connection's rights.
        assert!(client.get(first.as_bytes(), ts + 19).unwrap().is_some());
    }
    // An admin ticket: every pkey, and it sees alice's writes.
    let mut root = client_with(&node, Some(&admin), true);
    let version = root.put(b"bob/x", ts, b"bob's").unwrap();
    assert_eq!(root.get(b"bob/x", ts).unwrap(), Some((version, b"bob's".to_vec())));
    for (pkey, ts, version) in &versions {
        assert_eq!(root.get(pkey.as_bytes(), *ts).unwrap(), Some((*version, b"alice's".to_vec())));
    }
    // COLD_READ (raw cold-file bytes, for a peer's repair) is an admin operation.
    let file = strata_format::cold::ColdFileId { window: 1, shard: 0, generation: 1, part: 0 };
    let read = protocol::ColdRead { disk: 0, file, offset: 0, len: 4096 };
    assert_unauthorized(client_with(&node, Some(&alice), false).cold_read(&read), "admin ticket");
    assert_unauthorized(anonymous.cold_read(&read), "requires a ticket");
    assert_eq!(root.cold_read(&read).unwrap(), None, "a cold file the node lacks is NOT_FOUND");
    let elsewhere = protocol::ColdRead { file: strata_format::cold::ColdFileId { shard: 9, ..file }, ..read };
    match root.cold_read(&elsewhere) {
        Err(ClientError::Failed { status: Status::BadRequest, message }) => {
            assert!(message.contains("shard this node does not have"), "{message}");
        }
        other => panic!("a COLD_READ of a shard the node lacks is BAD_REQUEST, not {other:?}"),
    }
    // Alice still cannot read what bob's pkey holds.
    assert_unauthorized(client_with(&node, Some(&alice), false).get(b"bob/x", ts), "bob/x");

    // A ticket that expires while its connection is open stops being honoured at its second.
    let now = unix_s();
    let short = ticket(&secret, false, vec![Scope::Prefix(b"alice/".to_vec())], now - 1, now + 2);
    let mut client = client_with(&node, Some(&short), false);
    let (pkey, pkey_ts, _) = versions[0].clone();
    client.get(pkey.as_bytes(), pkey_ts).unwrap().expect("written above");
    while unix_s() < now + 2 {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_unauthorized(client.get(pkey.as_bytes(), pkey_ts), "expired");
    assert_unauthorized(client_with(&node, Some(&short), true).get(pkey.as_bytes(), pkey_ts), "expired");
    assert_serving(&node, Some(&admin), "an expired ticket");
}

#[test]
fn a_client_that_never_reads_holds_bounded_memory_and_is_closed_when_it_stalls() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[limits]\nclient-stall = \"2 s\"\n");
    let node = Node::start_with_log(&dir.path().join("data"), &["--config", &config], SERVER_DEBUG);
    assert_serving(&node, None, "start");
    let baseline = node.rss_bytes();

    // 2000 pings with 64 KiB echoes, pipelined, and not one response read: 128 MiB of answers.
    const PINGS: u64 = 2000;
    let echo_len = 64 << 10;
    let mut hog = connect(&node);
    let mut writer = hog.try_clone().unwrap();
    let started = Instant::now();
    let flood = std::thread::spawn(move || {
        let echo = vec![0x5a; echo_len];
        let mut frame = Vec::new();
        let mut sent = 0usize;
        for id in 1..=PINGS {
            frame.clear();
            protocol::encode_ping(&mut frame, head(id), &echo).unwrap();
            if let Err(error) = writer.write_all(&frame) {
                return (sent, Some(error), Instant::now());
            }
            sent += frame.len();
        }
        (sent, None, Instant::now())
    });

    // Meanwhile other clients are served within their deadline, and the server's memory stays
    // bounded by connection-output-max (8 MiB) rather than by what the hog asked for.
    let mut peak = baseline;
    let mut rounds = 0;
    while !flood.is_finished() && started.elapsed() < Duration::from_secs(12) {
        let round = Instant::now();
        let mut options = node.options();
        options.deadline = Duration::from_secs(1);
        let mut client = Client::new(options);
        let ts = now_us();
        let version = client.put(b"bystander", ts, b"served").unwrap_or_else(|e| panic!("bystander put: {e}"));
        assert_eq!(client.get(b"bystander", ts).unwrap(), Some((version, b"served".to_vec())));
        assert!(round.elapsed() < Duration::from_secs(1), "a bystander waited {:?}", round.elapsed());
        rounds += 1;
        peak = peak.max(node.rss_bytes());
        std::thread::sleep(Duration::from_millis(100));
    }
    if !flood.is_finished() {
        hog.shutdown(std::net::Shutdown::Both).unwrap();
        let (sent, _, _) = flood.join().unwrap();
        panic!("the connection of a client that reads nothing is still open after 12 s ({sent} bytes sent)");
    }
    let (sent, error, ended) = flood.join().unwrap();
    let grown = peak.saturating_sub(baseline);
    assert!(grown < 100 << 20, "the server's RSS grew by {} MiB for a client that never reads", grown >> 20);
    assert!(rounds > 0);
    let error = error.unwrap_or_else(|| {
        panic!("the server took all {sent} bytes of pings from a client that reads nothing: it never stopped receiving")
    });
    assert!(sent < (PINGS as usize) * echo_len, "{sent}");
    let closed_after = ended.duration_since(started);
    assert!(
        closed_after < Duration::from_secs(10),
        "the stalled connection was closed only after {closed_after:?} ({error})"
    );
    // What the kernel still holds can be drained; then the connection ends, far short of the
    // 2000 answers asked for.
    let drained = read_until_closed(&mut hog, Duration::from_secs(10));
    assert!(drained.len() < (PINGS as usize) * echo_len / 2, "{} bytes of answers", drained.len());
    assert_log_contains(&node, "read nothing");
    println!(
        "stalled connection closed after {closed_after:?} ({error}); {rounds} bystander rounds; RSS +{} KiB; {} bytes \
         drained",
        grown >> 10,
        drained.len()
    );
    assert_serving(&node, None, "a client that never reads");
}

/// Stops process `pid` with SIGSTOP and returns once every one of its threads is stopped: the
/// signal is delivered asynchronously, and a thread that had not stopped yet would serve what
/// the test sends next at once.
fn stop_and_wait(pid: &str) {
    assert!(std::process::Command::new("kill").args(["-STOP", pid]).status().unwrap().success());
    let start = Instant::now();
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let running = tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
            // The state follows the command name's closing parenthesis.
            .filter(|stat| !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T')))
            .count();
        if running == 0 {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{running} threads of {pid} still run after SIGSTOP");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_request_that_outlived_its_deadline_in_the_socket_is_refused_unstarted() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]);
    assert_serving(&node, None, "start");
    let mut conn = Connection::connect(node.addr, Duration::from_secs(5)).unwrap();
    let ts = now_us();
    // Freeze the node: the requests wait in its socket, where the kernel dates them.
    let pid = node.child.id().to_string();
    stop_and_wait(&pid);
    let get = |out: &mut Vec<u8>, head| protocol::encode_get(out, head, b"alice", ts);
    let short = conn.queue(50_000, Priority::High, get).unwrap();
    let long = conn.queue(5_000_000, Priority::High, get).unwrap();
    conn.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let mut answers = std::collections::HashMap::new();
    let mut retry_after_us = 0;
    for _ in 0..2 {
        let response = conn.receive(Duration::from_secs(5)).unwrap();
        if let Ok(protocol::Response::Overloaded { retry_after_us: hint }) = response.response() {
            retry_after_us = hint;
        }
        answers.insert(response.header.request_id, response.header.status);
    }
    assert_eq!(answers[&short], Status::Overloaded, "a 50 ms deadline passed in the socket: refused unstarted");
    assert!(retry_after_us >= 250_000, "the retry hint is the wait in the socket, not {retry_after_us} µs");
    assert_eq!(answers[&long], Status::NotFound, "a 5 s deadline had not passed: served");
    let refused = node
        .metrics()
        .lines()
        .filter(|l| l.starts_with("strata_rejections_total{") && l.contains("reason=\"deadline_passed\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum::<u64>();
    assert!(refused >= 1, "counted as deadline_passed");
    assert!(node.metric_sum("strata_socket_wait_seconds_count") >= 2, "socket waits are measured");
    assert_serving(&node, None, "a frozen node");
}
