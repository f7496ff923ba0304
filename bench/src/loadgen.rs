//! A network load generator on one pinned thread: many non-blocking connections driven by one
//! epoll loop (mio), speaking Strata's native protocol or RESP (for redis-server).
//!
//! - Closed loop: each connection keeps `depth` requests outstanding.
//! - Open loop: requests are due at fixed or Poisson-distributed times at a total `rate`; each
//!   latency is measured from the request's *intended* send time, so a stalled server shows as
//!   latency instead of silently lowering the offered load (no coordinated omission).
//!
//! Rejections (OVERLOADED) are counted apart from successes; goodput counts successes answered
//! within the request's deadline.

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use strata_format::key::TS_TIMELESS;
use strata_format::protocol::{self, FrameHeader, HEADER_SIZE, Priority, RequestHead, Status};
use strata_ioengine::SimRng;
use strata_node::client::Throttle;

/// The wire protocol a load speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Proto {
    Native,
    Resp,
}

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    /// Native PUT of a timeless record (like Redis SET), or RESP SET.
    Put,
    Get,
    /// Native PING (answered before admission, no storage) or RESP PING: the network path alone.
    Ping,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Arrival {
    /// Every connection keeps this many requests outstanding.
    Closed { depth: usize },
    /// Requests due at `rate` per second in total, evenly spaced or Poisson.
    Open { rate: f64, poisson: bool },
}

/// How keys are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Keys {
    /// Uniform over `0..n`.
    Uniform(u64),
    /// `0, 1, 2, ...` up to `n` requests in total, then stop (preloading).
    Sequential(u64),
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub proto: Proto,
    pub op: Op,
    pub keys: Keys,
    pub value_bytes: usize,
    pub connections: usize,
    pub arrival: Arrival,
    pub seconds: f64,
    /// Budget of each request (sent in native headers; goodput threshold for both).
    pub deadline: Duration,
    pub priority: Priority,
    pub seed: u64,
    /// Back off like the client library: while the server refuses, a [`Throttle`] fails a share
    /// of the requests due at the client (counted as `client_shed`), so the generator sends
    /// about [`Throttle::K`] times what the server accepts.
    pub backoff: bool,
}

/// Results of one load.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub ok: u64,
    pub ok_within_deadline: u64,
    pub not_found: u64,
    pub rejected: u64,
    pub failed: u64,
    /// Requests still unanswered when the load ended.
    pub unanswered: u64,
    pub elapsed: Duration,
    pub latency_ok_us: Histogram<u64>,
    pub latency_rejected_us: Histogram<u64>,
    /// CPU time this generator used, µs.
    pub generator_cpu_us: u64,
    /// Requests the schedule asked for (open loop), whether sent in time or late.
    pub offered: u64,
    /// Requests the client did not send because it was backing off.
    pub client_shed: u64,
    /// From each request's intended send time to its last byte handed to the kernel, µs: the
    /// generator's own lag. A large one means part of every latency above is the generator's.
    pub send_lag_us: Histogram<u64>,
}

impl LoadResult {
    #[must_use]
    pub fn ok_per_s(&self) -> f64 {
        (self.ok + self.not_found) as f64 / self.elapsed.as_secs_f64()
    }

    #[must_use]
    pub fn goodput_per_s(&self) -> f64 {
        self.ok_within_deadline as f64 / self.elapsed.as_secs_f64()
    }

    #[must_use]
    pub fn generator_cpu_share(&self) -> f64 {
        self.generator_cpu_us as f64 / self.elapsed.as_micros() as f64
    }
}

/// The key of index `i` (its pkey for native, its key for RESP).
#[must_use]
pub fn key_of(i: u64) -> Vec<u8> {
    format!("key:{i:010}").into_bytes()
}

struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
    out_pos: usize,
    input: Vec<u8>,
    filled: usize,
    /// Native: intended send time and key index by request id.
    pending_by_id: HashMap<u64, (Instant, u64)>,
    /// Intended send times of the requests in `out` not yet written whole.
    unsent: Vec<Instant>,
    /// RESP: intended send times in order.
    pending_fifo: VecDeque<Instant>,
    next_id: u64,
    broken: bool,
}

impl Conn {
    fn outstanding(&self) -> usize {
        self.pending_by_id.len() + self.pending_fifo.len()
    }
}

/// Outcome of one response.
enum Outcome {
    Ok,
    NotFound,
    Rejected,
    Failed,
}

/// Runs one load and returns what it measured.
pub fn run(spec: &LoadSpec) -> Result<LoadResult, String> {
    let mut poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
    let mut conns = Vec::with_capacity(spec.connections);
    for i in 0..spec.connections {
        let std_stream = std::net::TcpStream::connect(spec.addr).map_err(|e| format!("connect {}: {e}", spec.addr))?;
        std_stream.set_nodelay(true).map_err(|e| e.to_string())?;
        std_stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut stream = TcpStream::from_std(std_stream);
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| e.to_string())?;
        conns.push(Conn {
            stream,
            out: Vec::with_capacity(64 << 10),
            out_pos: 0,
            input: vec![0; 256 << 10],
            filled: 0,
            pending_by_id: HashMap::new(),
            unsent: Vec::new(),
            pending_fifo: VecDeque::new(),
            next_id: 1,
            broken: false,
        });
    }
    let mut rng = SimRng::new(spec.seed);
    let value = vec![b'v'; spec.value_bytes];
    let mut next_key = 0u64;
    let mut latency_ok_us = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
    let mut latency_rejected_us = latency_ok_us.clone();
    let mut send_lag_us = latency_ok_us.clone();
    let deadline_us = spec.deadline.as_micros().min(u128::from(u32::MAX)) as u32;
    let (mut sent, mut ok, mut ok_in_deadline, mut not_found, mut rejected, mut failed, mut offered) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut client_shed = 0u64;
    let mut throttle = Throttle::new(Instant::now());
    let cpu0 = crate::procstat::cpu_us("self");
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(spec.seconds);
    let mut next_due = start;
    let mut round_robin = 0usize;
    let mut events = Events::with_capacity(1024);
    let mut exhausted = false;
    // Sequential (preloading) keys a server refused, to send again.
    let mut retry_keys: Vec<u64> = Vec::new();

    // Queues one request on `conn`, due at `intended`.
    let enqueue =
        |conn: &mut Conn, intended: Instant, rng: &mut SimRng, next_key: &mut u64, retry: &mut Vec<u64>| -> bool {
            let index = match spec.keys {
                Keys::Uniform(n) => rng.below(n),
                Keys::Sequential(n) => {
                    if let Some(index) = retry.pop() {
                        index
                    } else if *next_key >= n {
                        return false;
                    } else {
                        *next_key += 1;
                        *next_key - 1
                    }
                }
            };
            let key = key_of(index);
            conn.unsent.push(intended);
            match spec.proto {
                Proto::Native => {
                    let head = RequestHead { request_id: conn.next_id, deadline_us, priority: spec.priority };
                    let encoded = match spec.op {
                        Op::Put => protocol::encode_put(&mut conn.out, head, &key, TS_TIMELESS, &value),
                        Op::Get => protocol::encode_get(&mut conn.out, head, &key, TS_TIMELESS),
                        Op::Ping => protocol::encode_ping(&mut conn.out, head, &[]),
                    };
                    encoded.expect("bench requests are valid");
                    conn.pending_by_id.insert(conn.next_id, (intended, index));
                    conn.next_id += 1;
                }
                Proto::Resp => {
                    let out = &mut conn.out;
                    match spec.op {
                        Op::Put => {
                            out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
                            resp_bulk(out, &key);
                            resp_bulk(out, &value);
                        }
                        Op::Get => {
                            out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
                            resp_bulk(out, &key);
                        }
                        Op::Ping => out.extend_from_slice(strata_ioengine::echo::PING),
                    }
                    conn.pending_fifo.push_back(intended);
                }
            }
            true
        };

    if let Arrival::Closed { depth } = spec.arrival {
        for conn in &mut conns {
            for _ in 0..depth {
                if enqueue(conn, start, &mut rng, &mut next_key, &mut retry_keys) {
                    sent += 1;
                }
            }
        }
    }
    loop {
        let now = Instant::now();
        let sending = now < end && !exhausted;
        let outstanding: usize = conns.iter().map(Conn::outstanding).sum();
        if !sending && (outstanding == 0 || now > end + Duration::from_secs(2)) {
            break;
        }
        if let (Arrival::Open { rate, poisson }, true) = (spec.arrival, sending) {
            while next_due <= now {
                offered += 1;
                let conn = &mut conns[round_robin % spec.connections];
                round_robin += 1;
                if spec.backoff && !throttle.admit(now) {
                    client_shed += 1;
                } else if enqueue(conn, next_due, &mut rng, &mut next_key, &mut retry_keys) {
                    sent += 1;
                } else {
                    exhausted = true;
                    break;
                }
                let gap_s = if poisson { -(1.0 - rng.unit_f64()).ln() / rate } else { 1.0 / rate };
                next_due += Duration::from_secs_f64(gap_s);
            }
        }
        for conn in &mut conns {
            flush(conn, &mut send_lag_us);
        }
        let timeout = match spec.arrival {
            Arrival::Open { .. } if sending => next_due.saturating_duration_since(Instant::now()),
            _ => Duration::from_millis(5),
        };
        poll.poll(&mut events, Some(timeout)).map_err(|e| format!("epoll: {e}"))?;
        for event in &events {
            let conn = &mut conns[event.token().0];
            if conn.broken {
                continue;
            }
            loop {
                if conn.filled == conn.input.len() {
                    conn.input.resize(conn.input.len() * 2, 0);
                }
                match conn.stream.read(&mut conn.input[conn.filled..]) {
                    Ok(0) => {
                        conn.broken = true;
                        break;
                    }
                    Ok(n) => conn.filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        conn.broken = true;
                        break;
                    }
                }
            }
            // Take every whole response.
            let mut pos = 0;
            loop {
                let parsed = match spec.proto {
                    Proto::Native => parse_native(&conn.input[pos..conn.filled], &mut conn.pending_by_id),
                    Proto::Resp => parse_resp(&conn.input[pos..conn.filled])
                        .map(|(len, outcome)| (len, outcome, conn.pending_fifo.pop_front().map(|t| (t, 0)))),
                };
                let Some((len, outcome, sent_as)) = parsed else { break };
                let (intended, key_index) = sent_as.map_or((None, None), |(t, k)| (Some(t), Some(k)));
                pos += len;
                let done = Instant::now();
                let intended = intended.unwrap_or(done);
                let latency_us = done.saturating_duration_since(intended).as_micros() as u64;
                if spec.backoff {
                    throttle.answered(done, !matches!(outcome, Outcome::Rejected));
                }
                match outcome {
                    Outcome::Ok | Outcome::NotFound => {
                        if matches!(outcome, Outcome::Ok) {
                            ok += 1;
                        } else {
                            not_found += 1;
                        }
                        let _ = latency_ok_us.record(latency_us.max(1));
                        if latency_us <= u64::from(deadline_us) {
                            ok_in_deadline += 1;
                        }
                    }
                    Outcome::Rejected => {
                        rejected += 1;
                        if let (Keys::Sequential(_), Some(index)) = (spec.keys, key_index) {
                            retry_keys.push(index);
                            exhausted = false;
                        }
                        let _ = latency_rejected_us.record(latency_us.max(1));
                    }
                    Outcome::Failed => failed += 1,
                }
                if let Arrival::Closed { .. } = spec.arrival
                    && done < end
                    && !exhausted
                {
                    if enqueue(conn, done, &mut rng, &mut next_key, &mut retry_keys) {
                        sent += 1;
                    } else {
                        exhausted = true;
                    }
                }
            }
            conn.input.copy_within(pos..conn.filled, 0);
            conn.filled -= pos;
            flush(conn, &mut send_lag_us);
        }
    }
    let elapsed = start.elapsed().min(Duration::from_secs_f64(spec.seconds)).max(Duration::from_millis(1));
    let elapsed = if exhausted { start.elapsed() } else { elapsed };
    let generator_cpu_us = crate::procstat::cpu_us("self").saturating_sub(cpu0);
    let unanswered = conns.iter().map(|c| c.outstanding() as u64).sum();
    if conns.iter().all(|c| c.broken) {
        return Err(format!("every connection to {} broke", spec.addr));
    }
    debug_assert!(sent >= ok + not_found + rejected + failed, "every answer matches a request sent");
    Ok(LoadResult {
        ok,
        ok_within_deadline: ok_in_deadline,
        not_found,
        rejected,
        failed,
        unanswered,
        elapsed,
        latency_ok_us,
        latency_rejected_us,
        generator_cpu_us,
        offered: if offered == 0 { sent } else { offered },
        client_shed,
        send_lag_us,
    })
}

/// Stores every key `0..keys` once (refused puts are sent again), for the workloads that read.
pub fn preload(
    addr: SocketAddr,
    proto: Proto,
    keys: u64,
    value_bytes: usize,
    connections: usize,
) -> Result<(), String> {
    let spec = LoadSpec {
        addr,
        proto,
        op: Op::Put,
        keys: Keys::Sequential(keys),
        value_bytes,
        connections,
        arrival: Arrival::Closed { depth: 16 },
        seconds: 3600.0,
        deadline: Duration::from_secs(10),
        priority: Priority::Highest,
        seed: 1,
        backoff: true,
    };
    let result = run(&spec)?;
    if result.ok < keys {
        return Err(format!("preload stored {} of {keys} keys on {addr} ({} refused)", result.ok, result.rejected));
    }
    Ok(())
}

/// Runs one load pinned to a core and describes what it measured.
pub fn run_once((spec, cpu): &(LoadSpec, usize)) -> Result<String, String> {
    strata_ioengine::uring::pin_current_thread(*cpu).map_err(|e| e.to_string())?;
    let r = run(spec)?;
    let h = &r.latency_ok_us;
    Ok(format!(
        "{:.0} ok/s, goodput {:.0}/s ({} ok, {} not found, {} rejected, {} shed by the client, {} failed, {} unanswered), p50 {} us, p99 {} us, max {} us, rejection p99 {} us, generator CPU {:.0}%, send lag p99 {} us",
        r.ok_per_s(),
        r.goodput_per_s(),
        r.ok,
        r.not_found,
        r.rejected,
        r.client_shed,
        r.failed,
        r.unanswered,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max(),
        r.latency_rejected_us.value_at_quantile(0.99),
        r.generator_cpu_share() * 100.0,
        r.send_lag_us.value_at_quantile(0.99)
    ))
}

/// Writes what `conn` has queued; once all of it is written, records each request's send lag.
fn flush(conn: &mut Conn, send_lag_us: &mut Histogram<u64>) {
    while conn.out_pos < conn.out.len() && !conn.broken {
        match conn.stream.write(&conn.out[conn.out_pos..]) {
            Ok(n) => conn.out_pos += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => conn.broken = true,
        }
    }
    if !conn.unsent.is_empty() {
        let now = Instant::now();
        for intended in conn.unsent.drain(..) {
            let _ = send_lag_us.record(now.saturating_duration_since(intended).as_micros().max(1) as u64);
        }
    }
    conn.out.clear();
    conn.out_pos = 0;
}

fn resp_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// A parsed response: its length, outcome, (intended send time, key index).
type Parsed = (usize, Outcome, Option<(Instant, u64)>);

/// One native response at the start of `buf`: its length, outcome, intended send time.
fn parse_native(buf: &[u8], pending: &mut HashMap<u64, (Instant, u64)>) -> Option<Parsed> {
    let header_bytes = buf.first_chunk::<HEADER_SIZE>()?;
    let header = FrameHeader::decode(header_bytes).expect("the server sends valid frames");
    let len = HEADER_SIZE + header.body_len as usize;
    if buf.len() < len {
        return None;
    }
    let intended = pending.remove(&header.request_id);
    let outcome = match header.status {
        Status::Ok | Status::NotModified => Outcome::Ok,
        Status::NotFound => Outcome::NotFound,
        Status::Overloaded => Outcome::Rejected,
        _ => Outcome::Failed,
    };
    Some((len, outcome, intended))
}

/// One RESP reply at the start of `buf`: its length and outcome.
fn parse_resp(buf: &[u8]) -> Option<(usize, Outcome)> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = &buf[..line_end];
    match line.first()? {
        b'+' | b':' => Some((line_end + 2, Outcome::Ok)),
        b'-' => Some((line_end + 2, Outcome::Failed)),
        b'$' => {
            let n: i64 = std::str::from_utf8(&line[1..]).ok()?.parse().ok()?;
            if n < 0 {
                return Some((line_end + 2, Outcome::NotFound));
            }
            let total = line_end + 2 + n as usize + 2;
            (buf.len() >= total).then_some((total, Outcome::Ok))
        }
        _ => Some((line_end + 2, Outcome::Failed)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_replies_parse_whole_or_not_at_all() {
        assert!(matches!(parse_resp(b"+OK\r\n"), Some((5, Outcome::Ok))));
        assert!(matches!(parse_resp(b"$-1\r\n"), Some((5, Outcome::NotFound))));
        assert!(matches!(parse_resp(b"$3\r\nabc\r\n"), Some((9, Outcome::Ok))));
        assert!(parse_resp(b"$3\r\nab").is_none());
        assert!(matches!(parse_resp(b"-ERR x\r\n"), Some((8, Outcome::Failed))));
    }
}
