//! The Rust client of Strata's native protocol: what the bench, the tools and the tests use.
//!
//! - [`Connection`]: one TCP connection with pipelining: queue many requests, flush them in one
//!   write, read the responses (which may come back out of order) and match them by id.
//! - [`Client`]: request/response calls with deadlines, shard-aware routing (one pooled
//!   connection per shard port when the node's shard ports are known, so no request takes the
//!   forwarding hop) and adaptive back-off: an OVERLOADED answer is retried after the server's
//!   hint, stretched while overloads keep coming and shrunk as calls succeed, until the
//!   call's deadline; and while the server refuses work, a [`Throttle`] fails a share of calls
//!   at the client, so a refused server is not also kept busy refusing.
//!
//! It is blocking (std sockets): one `Client` per thread.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use strata_format::key::bucket_of;
use strata_format::protocol::{
    self, FrameHeader, HEADER_SIZE, Header, Key, Priority, ProtocolError, RequestHead, Response, Scan, Status,
};
use strata_format::route::shard_of;
use strata_format::version::Version;

/// A stored value and its version.
pub type Found = Option<(Version, Vec<u8>)>;

/// Why a call failed.
#[derive(Debug)]
pub enum ClientError {
    Io(std::io::Error),
    /// The server's bytes were not a valid frame, or a request could not be encoded.
    Protocol(ProtocolError),
    /// The server answered with a failure status.
    Failed {
        status: Status,
        message: String,
    },
    /// OVERLOADED until the call's deadline.
    Overloaded {
        retry_after: Duration,
    },
    /// The pkey belongs to another shard (answered on a shard's own port).
    WrongShard {
        shard: u16,
        message: String,
    },
    /// No answer before the deadline.
    Timeout,
    /// The server closed the connection.
    Closed,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "connection error: {e}"),
            Self::Protocol(e) => write!(f, "protocol error: {e}"),
            Self::Failed { status, message } => write!(f, "{status}: {message}"),
            Self::Overloaded { retry_after } => write!(f, "overloaded (retry after {} µs)", retry_after.as_micros()),
            Self::WrongShard { shard, message } => write!(f, "wrong shard (use shard {shard}): {message}"),
            Self::Timeout => f.write_str("no answer before the deadline"),
            Self::Closed => f.write_str("the server closed the connection"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Self::Timeout,
            _ => Self::Io(e),
        }
    }
}

impl From<ProtocolError> for ClientError {
    fn from(e: ProtocolError) -> Self {
        Self::Protocol(e)
    }
}

/// A response frame, owned.
#[derive(Debug, Clone)]
pub struct OwnedResponse {
    pub header: Header,
    pub body: Vec<u8>,
}

impl OwnedResponse {
    /// The decoded response.
    pub fn response(&self) -> Result<Response<'_>, ProtocolError> {
        protocol::decode_response(&self.header, &self.body)
    }
}

/// One pipelined connection.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    out: Vec<u8>,
    input: Vec<u8>,
    filled: usize,
    next_id: u64,
}

impl Connection {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, out: Vec::with_capacity(4096), input: vec![0; 64 << 10], filled: 0, next_id: 1 })
    }

    /// Queues a request built by `encode` (one of `protocol::encode_*`); returns its id.
    pub fn queue(
        &mut self,
        deadline_us: u32,
        priority: Priority,
        encode: impl FnOnce(&mut Vec<u8>, RequestHead) -> Result<(), ProtocolError>,
    ) -> Result<u64, ClientError> {
        let request_id = self.next_id;
        self.next_id += 1;
        encode(&mut self.out, RequestHead { request_id, deadline_us, priority })?;
        Ok(request_id)
    }

    /// Queues raw bytes (for tests of malformed input).
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Writes every queued request.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.stream.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// Reads the next response frame, waiting at most `timeout`.
    pub fn receive(&mut self, timeout: Duration) -> Result<OwnedResponse, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(header_bytes) = self.input[..self.filled].first_chunk::<HEADER_SIZE>() {
                let header = FrameHeader::decode(header_bytes)?;
                let frame_len = HEADER_SIZE + header.body_len as usize;
                if self.filled >= frame_len {
                    let body = self.input[HEADER_SIZE..frame_len].to_vec();
                    protocol::check_body(&header, &body)?;
                    self.input.copy_within(frame_len..self.filled, 0);
                    self.filled -= frame_len;
                    return Ok(OwnedResponse { header, body });
                }
                if self.input.len() < frame_len {
                    self.input.resize(frame_len, 0);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout);
            }
            self.stream.set_read_timeout(Some(left))?;
            let n = self.stream.read(&mut self.input[self.filled..])?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.filled += n;
        }
    }

    /// Sends one request and waits for its response (other responses are not expected).
    pub fn call(
        &mut self,
        deadline: Duration,
        priority: Priority,
        encode: impl FnOnce(&mut Vec<u8>, RequestHead) -> Result<(), ProtocolError>,
    ) -> Result<OwnedResponse, ClientError> {
        let deadline_us = deadline.as_micros().min(u128::from(u32::MAX)) as u32;
        let id = self.queue(deadline_us, priority, encode)?;
        self.flush()?;
        let response = self.receive(deadline)?;
        if response.header.request_id != id {
            return Err(ClientError::Protocol(ProtocolError::Invalid {
                field: "request_id",
                reason: "a response to another request",
            }));
        }
        Ok(response)
    }

    /// The underlying socket (for tests that misbehave on purpose).
    #[must_use]
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

/// How a [`Client`] connects and retries.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The node's common port: any shard accepts and forwards.
    pub addr: SocketAddr,
    /// The node's shard ports (`base + i` for shard `i`) and its shard count, when known: each
    /// request then goes straight to its shard.
    pub shard_ports: Option<(u16, usize)>,
    /// The budget of each call, retries included.
    pub deadline: Duration,
    pub priority: Priority,
    /// A signed ticket presented once per connection.
    pub ticket: Option<Vec<u8>>,
    /// Retry OVERLOADED answers (with adaptive back-off) until the deadline.
    pub retry_overloaded: bool,
}

impl ClientOptions {
    #[must_use]
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            shard_ports: None,
            deadline: Duration::from_secs(5),
            priority: Priority::High,
            ticket: None,
            retry_overloaded: true,
        }
    }
}

/// Adaptive back-off: the server's hint, stretched by a factor that doubles with every
/// overload and halves with every success.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    factor: u32,
}

impl Backoff {
    const FACTOR_MAX: u32 = 64;

    fn on_overload(&mut self, hint: Duration) -> Duration {
        let wait = hint.max(Duration::from_micros(100)) * self.factor;
        self.factor = (self.factor * 2).min(Self::FACTOR_MAX);
        wait
    }

    fn on_success(&mut self) {
        self.factor = (self.factor / 2).max(1);
    }
}

/// Client-side adaptive throttling, as in Google's SRE book ("Handling Overload"): over a
/// recent window the client counts the requests it wanted to send and the ones the server
/// accepted (answered with anything but OVERLOADED), and fails at once, without sending, a
/// fraction `max(0, (requests - K * accepts) / (requests + 1))` of new requests. While the
/// server accepts everything nothing is failed; while it refuses, the client sends about `K`
/// times what it accepts, so the server spends its time serving rather than refusing.
///
/// The counts decay exponentially (time constant [`Throttle::WINDOW`]), so the client follows
/// the server's capacity as it changes. A request counts once its outcome is known (answered,
/// or failed here), so a burst sent before the first answers arrive is not mistaken for refusals.
#[derive(Debug, Clone)]
pub struct Throttle {
    requests: f64,
    accepts: f64,
    decayed_at: Instant,
    /// Failures owed: the fraction accumulates and a request is failed each time it passes 1,
    /// so the failures are spread evenly (no random draw).
    debt: f64,
}

impl Throttle {
    /// How much more than it accepts the server is offered: above 1 so a healthy server is never
    /// throttled. It is also how fast the client recovers: with every `WINDOW` the share it
    /// sends can grow by this factor (1.1 took tens of seconds to recover from a burst of
    /// refusals). At 2 (the SRE book's choice) an overloaded server refuses about as much as
    /// it serves, which costs it a few percent: a refusal is decided from the header.
    pub const K: f64 = 2.0;
    /// Time constant of the counts' decay: long enough to smooth a server's bursts of refusals,
    /// short enough to follow it within a second or two.
    pub const WINDOW: Duration = Duration::from_millis(500);

    #[must_use]
    pub fn new(now: Instant) -> Self {
        Self { requests: 0.0, accepts: 0.0, decayed_at: now, debt: 0.0 }
    }

    fn decay(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.decayed_at);
        if dt >= Duration::from_millis(1) {
            let keep = (-dt.as_secs_f64() / Self::WINDOW.as_secs_f64()).exp();
            self.requests *= keep;
            self.accepts *= keep;
            self.decayed_at = now;
        }
    }

    /// The share of new requests failed at the client now.
    #[must_use]
    pub fn reject_fraction(&self) -> f64 {
        ((self.requests - Self::K * self.accepts) / (self.requests + 1.0)).clamp(0.0, 1.0)
    }

    /// A request is about to be sent: true to send it, false to fail it here.
    pub fn admit(&mut self, now: Instant) -> bool {
        self.decay(now);
        self.debt += self.reject_fraction();
        if self.debt >= 1.0 {
            self.debt -= 1.0;
            self.requests += 1.0;
            return false;
        }
        true
    }

    /// A sent request was answered: `accepted` unless the answer was OVERLOADED.
    pub fn answered(&mut self, now: Instant, accepted: bool) {
        self.decay(now);
        self.requests += 1.0;
        if accepted {
            self.accepts += 1.0;
        }
    }
}

/// Calls with deadlines, routing and back-off, over pooled connections.
#[derive(Debug)]
pub struct Client {
    options: ClientOptions,
    /// Connections by shard (`usize::MAX`: the common port).
    pool: HashMap<usize, Connection>,
    backoff: Backoff,
    throttle: Throttle,
    /// OVERLOADED answers seen (retried or not), and calls the throttle failed at the client.
    pub overloads: u64,
}

const COMMON: usize = usize::MAX;

impl Client {
    #[must_use]
    pub fn new(options: ClientOptions) -> Self {
        Self {
            options,
            pool: HashMap::new(),
            backoff: Backoff { factor: 1 },
            throttle: Throttle::new(Instant::now()),
            overloads: 0,
        }
    }

    pub fn connect(addr: SocketAddr) -> Result<Self, ClientError> {
        let mut client = Self::new(ClientOptions::new(addr));
        client.ping()?;
        Ok(client)
    }

    fn slot_for(&self, pkey: Option<&[u8]>) -> usize {
        match (self.options.shard_ports, pkey) {
            (Some((_, count)), Some(pkey)) => usize::from(shard_of(bucket_of(pkey), count as u16)),
            _ => COMMON,
        }
    }

    fn connection(&mut self, slot: usize) -> Result<&mut Connection, ClientError> {
        if !self.pool.contains_key(&slot) {
            let addr = match (slot, self.options.shard_ports) {
                (COMMON, _) | (_, None) => self.options.addr,
                (shard, Some((base, _))) => SocketAddr::new(self.options.addr.ip(), base + shard as u16),
            };
            let mut conn = Connection::connect(addr, self.options.deadline)?;
            if let Some(ticket) = &self.options.ticket {
                let response = conn.call(self.options.deadline, Priority::Highest, |out, head| {
                    protocol::encode_auth(out, head, ticket)
                })?;
                check_status(&response)?;
            }
            self.pool.insert(slot, conn);
        }
        Ok(self.pool.get_mut(&slot).expect("inserted above"))
    }

    /// One call: routed by `pkey`, retried on OVERLOADED until the deadline.
    pub fn call(
        &mut self,
        pkey: Option<&[u8]>,
        encode: impl Fn(&mut Vec<u8>, RequestHead) -> Result<(), ProtocolError>,
    ) -> Result<OwnedResponse, ClientError> {
        let slot = self.slot_for(pkey);
        let start = Instant::now();
        loop {
            let left = self.options.deadline.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(ClientError::Timeout);
            }
            let priority = self.options.priority;
            let hint = if self.throttle.admit(Instant::now()) {
                let result = self.connection(slot).and_then(|conn| conn.call(left, priority, &encode));
                let response = match result {
                    Ok(response) => response,
                    Err(error) => {
                        // A broken connection is not reused.
                        self.pool.remove(&slot);
                        return Err(error);
                    }
                };
                let accepted = response.header.status != Status::Overloaded;
                self.throttle.answered(Instant::now(), accepted);
                if accepted {
                    self.backoff.on_success();
                    return Ok(response);
                }
                match response.response()? {
                    Response::Overloaded { retry_after_us } => Duration::from_micros(retry_after_us.into()),
                    _ => Duration::ZERO,
                }
            } else {
                // The server has been refusing: fail this attempt here, as if it had refused it.
                Duration::ZERO
            };
            self.overloads += 1;
            let wait = self.backoff.on_overload(hint);
            if !self.options.retry_overloaded || start.elapsed() + wait >= self.options.deadline {
                return Err(ClientError::Overloaded { retry_after: hint });
            }
            std::thread::sleep(wait);
        }
    }

    pub fn ping(&mut self) -> Result<(), ClientError> {
        let response = self.call(None, |out, head| protocol::encode_ping(out, head, b"ping"))?;
        check_status(&response)
    }

    /// Stores `value` at `(pkey, ts)`; returns its version once durable.
    pub fn put(&mut self, pkey: &[u8], ts: u64, value: &[u8]) -> Result<Version, ClientError> {
        let response = self.call(Some(pkey), |out, head| protocol::encode_put(out, head, pkey, ts, value))?;
        written(&response)
    }

    pub fn delete(&mut self, pkey: &[u8], ts: u64) -> Result<Version, ClientError> {
        let response = self.call(Some(pkey), |out, head| protocol::encode_delete(out, head, pkey, ts))?;
        written(&response)
    }

    pub fn delete_range(&mut self, pkey: &[u8], ts_from: u64, ts_to: u64) -> Result<Version, ClientError> {
        let response =
            self.call(Some(pkey), |out, head| protocol::encode_delete_range(out, head, pkey, ts_from, ts_to))?;
        written(&response)
    }

    /// The value at `(pkey, ts)` and its version.
    pub fn get(&mut self, pkey: &[u8], ts: u64) -> Result<Option<(Version, Vec<u8>)>, ClientError> {
        let response = self.call(Some(pkey), |out, head| protocol::encode_get(out, head, pkey, ts))?;
        check_status(&response)?;
        match response.response()? {
            Response::Value { version, value } => Ok(Some((version, value.to_vec()))),
            Response::NotFound => Ok(None),
            _ => Err(unexpected()),
        }
    }

    /// The value if its version is newer than `version`: `Ok(None)` when not modified.
    pub fn get_if_newer(&mut self, pkey: &[u8], ts: u64, version: Version) -> Result<Option<Found>, ClientError> {
        let response =
            self.call(Some(pkey), |out, head| protocol::encode_get_if_newer(out, head, pkey, ts, version))?;
        check_status(&response)?;
        match response.response()? {
            Response::Value { version, value } => Ok(Some(Some((version, value.to_vec())))),
            Response::NotFound => Ok(Some(None)),
            Response::NotModified { .. } => Ok(None),
            _ => Err(unexpected()),
        }
    }

    /// Entries `(ts, version, value)` of `pkey` in `ts_from..=ts_to`.
    pub fn scan(
        &mut self,
        pkey: &[u8],
        ts_from: u64,
        ts_to: u64,
        limit: u32,
        newest_first: bool,
    ) -> Result<Vec<(u64, Version, Vec<u8>)>, ClientError> {
        let scan = Scan { pkey, ts_from, ts_to, limit, newest_first };
        let response = self.call(Some(pkey), |out, head| protocol::encode_scan(out, head, &scan))?;
        check_status(&response)?;
        match response.response()? {
            Response::Scan(entries) => Ok(entries.iter().map(|e| (e.ts, e.version, e.value.to_vec())).collect()),
            _ => Err(unexpected()),
        }
    }

    /// Several gets of one shard's pkeys in one request.
    pub fn mget(&mut self, keys: &[(&[u8], u64)]) -> Result<Vec<Found>, ClientError> {
        let response = self.call(keys.first().map(|k| k.0), |out, head| {
            protocol::encode_mget(out, head, keys.iter().map(|&(pkey, ts)| Key { pkey, ts }))
        })?;
        check_status(&response)?;
        match response.response()? {
            Response::MGet(results) => results
                .iter()
                .map(|r| match r.status {
                    Status::Ok => Ok(Some((r.version, r.value.to_vec()))),
                    Status::NotFound => Ok(None),
                    status => Err(ClientError::Failed { status, message: "item failed".into() }),
                })
                .collect(),
            _ => Err(unexpected()),
        }
    }

    /// `read.len` raw bytes of one of the node's cold files (an admin operation); `None` when
    /// the node does not have the file.
    pub fn cold_read(&mut self, read: &protocol::ColdRead) -> Result<Option<Vec<u8>>, ClientError> {
        let response = self.call(None, |out, head| protocol::encode_cold_read(out, head, read))?;
        check_status(&response)?;
        match response.response()? {
            Response::ColdBytes { bytes } if bytes.len() == read.len as usize => Ok(Some(bytes.to_vec())),
            Response::NotFound => Ok(None),
            _ => Err(unexpected()),
        }
    }

    /// The node's statistics text (of the shard that answered).
    pub fn stats(&mut self) -> Result<String, ClientError> {
        let response = self.call(None, protocol::encode_stats)?;
        check_status(&response)?;
        match response.response()? {
            Response::Stats { text } => Ok(text.to_string()),
            _ => Err(unexpected()),
        }
    }
}

fn unexpected() -> ClientError {
    ClientError::Protocol(ProtocolError::Invalid { field: "status", reason: "a response of the wrong kind" })
}

/// Turns failure statuses into errors.
pub fn check_status(response: &OwnedResponse) -> Result<(), ClientError> {
    match response.response()? {
        Response::Failed { status, message } => Err(ClientError::Failed { status, message: message.to_string() }),
        Response::WrongShard { shard, message } => Err(ClientError::WrongShard { shard, message: message.to_string() }),
        Response::Overloaded { retry_after_us } => {
            Err(ClientError::Overloaded { retry_after: Duration::from_micros(retry_after_us.into()) })
        }
        _ => Ok(()),
    }
}

fn written(response: &OwnedResponse) -> Result<Version, ClientError> {
    check_status(response)?;
    match response.response()? {
        Response::Written { version } => Ok(version),
        _ => Err(unexpected()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offers 10,000 requests/s for `seconds` to a server that accepts at most `capacity` per
    /// second; returns what the client sent and what was accepted in the last second.
    fn offer(throttle: &mut Throttle, start: Instant, seconds: u64, capacity: u64) -> (u64, u64) {
        let mut next_accept = start;
        let (mut sent, mut accepted) = (0, 0);
        for i in 0..seconds * 10_000 {
            let now = start + Duration::from_micros(i * 100);
            let counted = i >= (seconds - 1) * 10_000;
            if !throttle.admit(now) {
                continue;
            }
            let ok = now >= next_accept;
            if ok {
                next_accept = now + Duration::from_micros(1_000_000 / capacity);
            }
            throttle.answered(now, ok);
            if counted {
                sent += 1;
                accepted += u64::from(ok);
            }
        }
        (sent, accepted)
    }

    #[test]
    fn the_throttle_sends_about_k_times_what_the_server_accepts_and_recovers() {
        let start = Instant::now();
        let mut throttle = Throttle::new(start);
        // A server that accepts everything is never throttled.
        let (sent, accepted) = offer(&mut throttle, start, 2, 1_000_000);
        assert_eq!((sent, accepted), (10_000, 10_000));
        // Overloaded (it accepts 1,000/s of 10,000/s): the client sends about K times that.
        let (sent, accepted) = offer(&mut throttle, start + Duration::from_secs(2), 3, 1_000);
        let ratio = sent as f64 / accepted as f64;
        assert!((1.6..2.4).contains(&ratio), "sent {sent}, accepted {accepted}");
        assert!(accepted >= 950, "accepted {accepted}");
        // Healthy again: within two seconds the client sends everything.
        let (sent, _) = offer(&mut throttle, start + Duration::from_secs(5), 3, 1_000_000);
        assert!(sent >= 9_900, "sent {sent} of 10,000 two seconds after the server recovered");
    }
}
