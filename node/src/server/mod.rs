//! The server of one shard: its connections' frames in, the shard's answers out.
//!
//! Each core runs one [`Server`] on its uring runtime. The network layer hands it the bytes
//! each connection received; it cuts them into frames and, per frame:
//! 1. checks the header (magic, checksum, version, limits) without touching the body;
//! 2. asks [`Admission`] whether the request can start in time, refusing it at once with
//!    OVERLOADED and a retry hint if not (no body parsing, no allocation);
//! 3. checks the body, the connection's ticket, and the pkey's shard: a request for another
//!    shard is forwarded to that shard's core by message (or refused with WRONG_SHARD on a
//!    shard's own port, where clients are expected to know better);
//! 4. serves it: the request's future is polled once at once, so memory hits are answered in the
//!    same turn; a request that must wait for the disk or a group commit becomes a task, and all
//!    such requests of one turn go to the ring together (one group commit for the writes, their
//!    block reads submitted in one go).
//!
//! Invariant: every admitted request is finished in [`Admission`] exactly once, answered or not.
//! Invariant: a response goes to the connection (and request id) that asked, or nowhere if that
//! connection closed meanwhile.

pub mod admission;
pub mod metrics;

use admission::{Admission, AdmissionLimits, Decision};
use metrics::ShardMetrics;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};
use strata_format::key::bucket_of;
use strata_format::protocol::{
    self, FrameHeader, HEADER_SIZE, Header, MGetWriter, MPutWriter, Opcode, ProtocolError, ReplyTo, Request,
    ScanWriter, Status,
};
use strata_format::route::shard_of;
use strata_format::ticket::Ticket;
use strata_ioengine::uring::net::{ConnId, Net, NetHandler, Received};
use strata_ioengine::uring::{self, Priority as TaskPriority, Remote};
use strata_ioengine::{SystemClock, UringDisk};

use crate::error::WriteError;
use crate::shard::{ReadError, Shard};

/// The shard type a server serves.
pub type NodeShard = Shard<UringDisk, SystemClock>;

/// How a server is set up.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub shard_index: usize,
    pub shard_count: usize,
    /// Tickets are required when a secret is set.
    pub ticket_secret: Option<Arc<[u8]>>,
    pub admission: AdmissionLimits,
    /// Used for requests that carry no deadline.
    pub default_deadline: Duration,
    /// A connection whose peer reads nothing this long is closed.
    pub client_stall: Duration,
    /// The largest request body accepted (`limits.frame-max`, at most `FRAME_BODY_MAX`).
    pub frame_body_max: u32,
}

/// Where a response goes: a connection of this core, or one of another core (forwarded).
#[derive(Debug, Clone, Copy)]
enum Reply {
    Local(ConnId),
    Remote { origin: usize, conn: ConnId },
}

#[derive(Debug, Default)]
struct ConnState {
    ticket: Option<Rc<Ticket>>,
    /// Accepted on this shard's own port: requests for other shards are refused, not forwarded.
    shard_port: bool,
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<Server>>> = const { RefCell::new(None) };
}

fn with_local(f: impl FnOnce(&Rc<Server>)) {
    let server = LOCAL.with(|l| l.borrow().clone());
    if let Some(server) = server {
        f(&server);
    }
}

/// Verified tickets, by their bytes, so each is checked once (until it expires).
const TICKET_CACHE_MAX: usize = 4096;

/// One shard's server.
pub struct Server {
    options: ServerOptions,
    shard: NodeShard,
    net: Rc<Net>,
    peers: RefCell<Arc<Vec<Remote>>>,
    /// Listener index of this shard's own port (if any).
    shard_listener: Cell<Option<usize>>,
    conns: RefCell<HashMap<ConnId, ConnState>>,
    admission: RefCell<Admission>,
    metrics: Arc<ShardMetrics>,
    tickets: RefCell<HashMap<Vec<u8>, Rc<Ticket>>>,
    draining: Cell<bool>,
    /// The time the current turn's frames arrived (read once per receive).
    turn_now: Cell<Instant>,
    /// When the bytes being handled reached the socket (`None` when unknown), their length,
    /// and where the frame being handled ends in them: its requests' wait in the socket.
    turn_received: Cell<Option<Received>>,
    turn_input_len: Cell<usize>,
    turn_frame_end: Cell<usize>,
    /// When this turn's first answer was queued (a turn's answers go out together at its end).
    first_answer_at: Cell<Option<Instant>>,
    /// Admitted requests waiting for a slot, by priority (highest first).
    waiting: RefCell<[VecDeque<Waiting>; 4]>,
    /// GETs reading the disk now, by a hash of their key (collisions are told apart inside).
    reads_in_flight: RefCell<HashMap<u64, Vec<Rc<SharedRead>>>>,
}

/// A GET that went to the disk, shared by identical GETs that arrive while it runs.
struct SharedRead {
    pkey: Vec<u8>,
    ts: u64,
    result: RefCell<Option<ReadOutcome>>,
    done: crate::sync::Notify,
}

/// What a GET found: a value and its version, nothing, or a failure to answer with.
type ReadOutcome = Result<Option<(u64, Vec<u8>)>, (Status, String)>;

/// A request waiting for a slot.
struct Waiting {
    reply: Reply,
    header: Header,
    body: Vec<u8>,
    arrival: Instant,
    deadline_us: u32,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("shard", &self.options.shard_index).finish()
    }
}

impl Server {
    /// A server for `shard` on the current runtime's network `net`; installs itself as the
    /// network's handler and as this thread's server (for forwarded requests).
    pub fn install(options: ServerOptions, shard: NodeShard, net: Rc<Net>, metrics: Arc<ShardMetrics>) -> Rc<Self> {
        let server = Rc::new(Self {
            admission: RefCell::new(Admission::new(options.admission)),
            options,
            shard,
            net: net.clone(),
            peers: RefCell::new(Arc::new(Vec::new())),
            shard_listener: Cell::new(None),
            conns: RefCell::default(),
            metrics,
            tickets: RefCell::default(),
            draining: Cell::new(false),
            turn_now: Cell::new(Instant::now()),
            turn_received: Cell::new(None),
            turn_input_len: Cell::new(0),
            turn_frame_end: Cell::new(0),
            first_answer_at: Cell::new(None),
            waiting: RefCell::new(Default::default()),
            reads_in_flight: RefCell::default(),
        });
        net.set_handler(server.clone());
        LOCAL.with(|l| *l.borrow_mut() = Some(server.clone()));
        server
    }

    /// Every shard's remote handle, indexed by shard (this one included).
    pub fn set_peers(&self, peers: Arc<Vec<Remote>>) {
        assert_eq!(peers.len(), self.options.shard_count, "one peer per shard");
        *self.peers.borrow_mut() = peers;
    }

    /// Marks a listener as this shard's own port.
    pub fn set_shard_listener(&self, listener: usize) {
        self.shard_listener.set(Some(listener));
    }

    #[must_use]
    pub fn net(&self) -> &Rc<Net> {
        &self.net
    }

    /// Stops accepting; requests in flight complete. Returns when none is left (or `grace`
    /// passed).
    pub async fn drain(&self, grace: Duration) {
        self.draining.set(true);
        self.net.stop_listening();
        let start = Instant::now();
        while (self.admission.borrow().inflight_requests() > 0 || self.waiting.borrow().iter().any(|q| !q.is_empty()))
            && start.elapsed() < grace
        {
            uring::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Periodic upkeep: closes stalled connections and copies shard counters into metrics.
    pub async fn upkeep(self: Rc<Self>) {
        while !self.draining.get() {
            uring::sleep(Duration::from_millis(500)).await;
            self.net.close_stalled(self.options.client_stall);
            let stats = self.shard.stats();
            let m = &self.metrics;
            m.wal_fsyncs.store(stats.fsyncs, Relaxed);
            m.wal_batches.store(stats.batches, Relaxed);
            m.wal_bytes_written.store(stats.wal_bytes_written, Relaxed);
            m.writes_acked.store(stats.writes_acked, Relaxed);
            m.flush_bytes_written.store(stats.flush_bytes_written, Relaxed);
            m.compaction_bytes_written.store(stats.compaction_bytes_written, Relaxed);
            m.compaction_bytes_read.store(stats.compaction_bytes_read, Relaxed);
            m.sinks.store(stats.sinks, Relaxed);
            m.sink_bytes_written.store(stats.sink_bytes_written, Relaxed);
            m.sinks_abandoned.store(stats.sinks_abandoned, Relaxed);
            m.cold_windows.store(self.shard.cold_windows().len() as u64, Relaxed);
            if let Some(cold) = self.shard.cold() {
                m.repair_queue.store(cold.repair_queue().len() as u64, Relaxed);
                let disks =
                    cold.disk_stats().into_iter().zip(cold.disk_down()).map(|(s, d)| (s, d.is_some())).collect();
                if let Ok(mut held) = m.cold_disks.lock() {
                    *held = disks;
                }
            }
            let (hits, misses, _) = self.shard.cache_stats();
            m.block_cache_hits.store(hits, Relaxed);
            m.block_cache_misses.store(misses, Relaxed);
            let net = self.net.stats();
            m.open_connections.store(net.open_connections as u64, Relaxed);
            m.bytes_received.store(net.bytes_received, Relaxed);
            m.receives_out_of_buffers.store(net.receives_out_of_buffers, Relaxed);
        }
    }

    fn respond(&self, reply: Reply, status: Status, write: impl FnOnce(&mut Vec<u8>)) {
        self.metrics.response(status);
        match reply {
            Reply::Local(conn) => {
                if self.first_answer_at.get().is_none() {
                    self.first_answer_at.set(Some(Instant::now()));
                }
                self.net.send_with(conn, write);
            }
            Reply::Remote { origin, conn } => {
                let mut bytes = Vec::with_capacity(64);
                write(&mut bytes);
                let peers = self.peers.borrow().clone();
                peers[origin].run(move || {
                    with_local(|server| {
                        server.net.send(conn, &bytes);
                    });
                });
            }
        }
    }

    fn fail(&self, reply: Reply, to: ReplyTo, status: Status, message: &str) {
        self.respond(reply, status, |out| protocol::encode_failure(out, to, status, message));
    }

    /// Handles the frames at the start of `input`; returns the bytes consumed.
    fn on_input(self: &Rc<Self>, conn: ConnId, input: &[u8]) -> usize {
        self.turn_now.set(Instant::now());
        self.turn_received.set(self.net.received());
        self.turn_input_len.set(input.len());
        let mut consumed = 0;
        while let Some(header_bytes) = input[consumed..].first_chunk::<HEADER_SIZE>() {
            let header = match FrameHeader::decode(header_bytes) {
                Ok(header) => header,
                Err(error) => {
                    // Answered and skipped (in step): go on with the frames behind it. Waiting
                    // for its body (0), or closing (all consumed): stop here.
                    let used = self.refuse_header(conn, header_bytes, &input[consumed..], &error);
                    if used == 0 {
                        break;
                    }
                    consumed += used;
                    continue;
                }
            };
            let frame_len = HEADER_SIZE + header.body_len as usize;
            if header.response {
                self.metrics.bad_frames.fetch_add(1, Relaxed);
                self.net.close(conn, "the peer sent a response frame to the server");
                return input.len();
            }
            if header.body_len > self.options.frame_body_max {
                // Above this node's limit (below the protocol's): answered, then closed, since the
                // body will not be read and the stream is out of step.
                self.metrics.bad_frames.fetch_add(1, Relaxed);
                let reason = format!(
                    "a body of {} bytes is above this node's frame limit of {} bytes",
                    header.body_len, self.options.frame_body_max
                );
                let to = header.reply_to();
                self.metrics.response(Status::TooLarge);
                self.net.send_with(conn, |out| protocol::encode_failure(out, to, Status::TooLarge, &reason));
                self.net.close_after_send(conn, &reason);
                return input.len();
            }
            let Some(body) = input[consumed + HEADER_SIZE..].get(..header.body_len as usize) else {
                break; // Wait for the rest of the frame; the network grows the buffer as it comes.
            };
            self.turn_frame_end.set(consumed + frame_len);
            self.on_frame(Reply::Local(conn), conn, header, body);
            consumed += frame_len;
        }
        self.turn_received.set(None);
        consumed
    }

    /// A header that failed its checks: answer it if it can be answered, and close the
    /// connection if the stream cannot be trusted to be in step. Returns bytes consumed.
    fn refuse_header(
        &self,
        conn: ConnId,
        header_bytes: &[u8; HEADER_SIZE],
        rest: &[u8],
        error: &ProtocolError,
    ) -> usize {
        self.metrics.bad_frames.fetch_add(1, Relaxed);
        let reason = format!("bad frame header: {error}");
        let Some(to) = FrameHeader::peek_reply_to(header_bytes) else {
            tracing::debug!(conn, "{reason}; closing");
            self.net.close(conn, &reason);
            return rest.len();
        };
        let status = error.status();
        let body_len = u32::from_le_bytes(header_bytes[12..16].try_into().expect("4 bytes")) as usize;
        if matches!(error, ProtocolError::BodyTooLarge { .. }) || body_len > protocol::FRAME_BODY_MAX as usize {
            // The body will not be read: answer, then close, since the stream is out of step.
            self.metrics.response(status);
            self.net.send_with(conn, |out| protocol::encode_failure(out, to, status, &reason));
            self.net.close_after_send(conn, &reason);
            return rest.len();
        }
        if rest.len() < HEADER_SIZE + body_len {
            return 0; // The frame is still in step: skip its body once it is here.
        }
        self.metrics.response(status);
        self.net.send_with(conn, |out| protocol::encode_failure(out, to, status, &reason));
        HEADER_SIZE + body_len
    }

    fn on_frame(self: &Rc<Self>, reply: Reply, conn: ConnId, header: Header, body: &[u8]) {
        self.metrics.request(header.opcode);
        let to = header.reply_to();
        // FastReject: a request that waited too long in its socket (the core fell behind, or was
        // held back by a CPU quota) is refused from its header alone, before any body is
        // checked or parsed.
        if !matches!(header.opcode, Opcode::Ping | Opcode::Auth | Opcode::Stats)
            && let Some(received) = self.turn_received.get()
        {
            let now = self.turn_now.get();
            let arrived = received.estimate(self.turn_frame_end.get(), self.turn_input_len.get());
            let waited = now.saturating_duration_since(arrived);
            let budget = if header.deadline_us == 0 {
                self.options.default_deadline
            } else {
                Duration::from_micros(header.deadline_us.into())
            };
            self.metrics.socket_wait.record(waited.as_micros() as u64);
            let verdict = self.admission.borrow_mut().check_socket_wait(header.priority, waited, budget, now);
            if let Err((refusal, retry)) = verdict {
                self.metrics.rejection(refusal);
                let retry_us = retry.as_micros().min(u128::from(u32::MAX)) as u32;
                return self.respond(reply, Status::Overloaded, |out| protocol::encode_overloaded(out, to, retry_us));
            }
        }
        if let Err(error) = protocol::check_body(&header, body) {
            self.metrics.bad_frames.fetch_add(1, Relaxed);
            return self.fail(reply, to, error.status(), &error.to_string());
        }
        if self.draining.get() {
            // The node is shutting down: another node (or this one, restarted) will serve it.
            let retry_us = 100_000;
            return self.respond(reply, Status::Overloaded, |out| protocol::encode_overloaded(out, to, retry_us));
        }
        let request = match protocol::decode_request(&header, body) {
            Ok(request) => request,
            Err(error) => return self.fail(reply, to, error.status(), &error.to_string()),
        };
        match request {
            Request::Ping { echo } => {
                return self.respond(reply, Status::Ok, |out| protocol::encode_pong(out, to, echo));
            }
            Request::Auth { ticket } => return self.authenticate(conn, to, ticket),
            Request::Stats => {
                let text = self.stats_text();
                return self.respond(reply, Status::Ok, |out| protocol::encode_stats_text(out, to, &text));
            }
            _ => {}
        }
        // Every other request names pkeys: check them against the ticket and find their shard.
        let (ticket, shard_port) =
            self.conns.borrow().get(&conn).map_or((None, false), |c| (c.ticket.clone(), c.shard_port));
        if self.options.ticket_secret.is_some() {
            let Some(ticket) = &ticket else {
                return self.fail(
                    reply,
                    to,
                    Status::Unauthorized,
                    "this node requires a ticket: send AUTH with one first",
                );
            };
            // A ticket is honoured until its expiry second, also on a connection opened before.
            if SystemClock::now_us_static() / 1_000_000 >= ticket.expires_at_s {
                let message = format!(
                    "the connection's ticket expired at unix second {}: AUTH with a new one",
                    ticket.expires_at_s
                );
                return self.fail(reply, to, Status::Unauthorized, &message);
            }
        }
        if matches!(request, Request::ColdRead(_))
            && self.options.ticket_secret.is_some()
            && !ticket.as_ref().is_some_and(|t| t.admin)
        {
            return self.fail(reply, to, Status::Unauthorized, "COLD_READ needs an admin ticket");
        }
        let (target, denied) = self.route_and_check(ticket.as_deref(), &request);
        if let Some(pkey) = denied {
            let message = format!("the connection's ticket does not allow pkey {}", String::from_utf8_lossy(pkey));
            return self.fail(reply, to, Status::Unauthorized, &message);
        }
        let target = match target {
            Ok(target) => target,
            Err(message) => return self.fail(reply, to, Status::BadRequest, message),
        };
        if target != self.options.shard_index {
            if shard_port {
                let message = format!("pkey belongs to shard {target}");
                return self.respond(reply, Status::WrongShard, |out| {
                    protocol::encode_wrong_shard(out, to, target as u16, &message);
                });
            }
            return self.forward(conn, target, header, body);
        }
        self.admit_and_serve(reply, header, body);
    }

    /// The shard all pkeys of `request` belong to, and the first pkey the ticket denies.
    fn route_and_check<'a>(
        &self,
        ticket: Option<&Ticket>,
        request: &Request<'a>,
    ) -> (Result<usize, &'static str>, Option<&'a [u8]>) {
        let shard_count = self.options.shard_count as u16;
        let mut target: Option<usize> = None;
        let mut check = |pkey: &'a [u8]| -> Result<Option<&'a [u8]>, &'static str> {
            if let Some(ticket) = ticket
                && !ticket.allows(pkey)
            {
                return Ok(Some(pkey));
            }
            let shard = if shard_count == 1 { 0 } else { usize::from(shard_of(bucket_of(pkey), shard_count)) };
            match target {
                None => target = Some(shard),
                Some(t) if t != shard => {
                    return Err("the items of a batch belong to different shards; split it by shard");
                }
                Some(_) => {}
            }
            Ok(None)
        };
        let mut outcome = Ok(None);
        match request {
            Request::MGet(items) => {
                for key in items.iter() {
                    outcome = check(key.pkey);
                    if !matches!(outcome, Ok(None)) {
                        break;
                    }
                }
            }
            Request::MPut(items) => {
                for put in items.iter() {
                    outcome = check(put.pkey);
                    if !matches!(outcome, Ok(None)) {
                        break;
                    }
                }
            }
            Request::ColdRead(read) => {
                // No pkey: the request names its shard (the admin check is the caller's).
                if read.file.shard >= shard_count {
                    return (Err("COLD_READ names a shard this node does not have"), None);
                }
                target = Some(usize::from(read.file.shard));
            }
            other => {
                if let Some(pkey) = other.pkey() {
                    outcome = check(pkey);
                }
            }
        }
        match outcome {
            Ok(Some(denied)) => (Ok(self.options.shard_index), Some(denied)),
            Ok(None) => (Ok(target.unwrap_or(self.options.shard_index)), None),
            Err(message) => (Err(message), None),
        }
    }

    fn authenticate(&self, conn: ConnId, to: ReplyTo, bytes: &[u8]) {
        let reply = Reply::Local(conn);
        let Some(secret) = self.options.ticket_secret.clone() else {
            return self.respond(reply, Status::Ok, |out| protocol::encode_authenticated(out, to));
        };
        let now_s = SystemClock::now_us_static() / 1_000_000;
        let cached = self.tickets.borrow().get(bytes).cloned();
        let verified = match cached {
            Some(ticket) if ticket.expires_at_s > now_s => Ok(ticket),
            _ => Ticket::verify(bytes, &secret, now_s).map(Rc::new),
        };
        match verified {
            Ok(ticket) => {
                let mut cache = self.tickets.borrow_mut();
                if cache.len() >= TICKET_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(bytes.to_vec(), ticket.clone());
                drop(cache);
                self.conns.borrow_mut().entry(conn).or_default().ticket = Some(ticket);
                self.respond(reply, Status::Ok, |out| protocol::encode_authenticated(out, to));
            }
            Err(error) => {
                tracing::info!(conn, "ticket refused: {error}");
                self.fail(reply, to, Status::Unauthorized, &format!("ticket refused: {error}"));
            }
        }
    }

    /// Sends a request to the shard that owns its pkeys; its answer comes back by message.
    fn forward(&self, conn: ConnId, target: usize, header: Header, body: &[u8]) {
        self.metrics.forwarded.fetch_add(1, Relaxed);
        let origin = self.options.shard_index;
        let body = body.to_vec();
        let peers = self.peers.borrow().clone();
        peers[target].run(move || {
            with_local(|server| {
                server.turn_now.set(Instant::now());
                server.admit_and_serve(Reply::Remote { origin, conn }, header, &body);
            });
        });
    }

    fn admit_and_serve(self: &Rc<Self>, reply: Reply, header: Header, body: &[u8]) {
        let to = header.reply_to();
        let bytes = HEADER_SIZE + body.len();
        let deadline_us = if header.deadline_us == 0 {
            self.options.default_deadline.as_micros().min(u128::from(u32::MAX)) as u32
        } else {
            header.deadline_us
        };
        let arrival = self.turn_now.get();
        let p = header.priority.index();
        let queued_ahead: usize = self.waiting.borrow()[..=p].iter().map(VecDeque::len).sum();
        let decision = self.admission.borrow_mut().decide(header.priority, bytes, deadline_us, queued_ahead);
        match decision {
            Decision::Start => self.run(reply, header, body.to_vec(), arrival, deadline_us),
            Decision::Queue => {
                let waiting = Waiting { reply, header, body: body.to_vec(), arrival, deadline_us };
                self.waiting.borrow_mut()[p].push_back(waiting);
            }
            Decision::Refuse(refusal, retry) => {
                self.metrics.rejection(refusal);
                let retry_us = retry.as_micros().min(u128::from(u32::MAX)) as u32;
                self.respond(reply, Status::Overloaded, |out| protocol::encode_overloaded(out, to, retry_us));
            }
        }
    }

    /// Serves an admitted request that holds a slot; when it finishes, the slot goes to the
    /// next waiting request.
    fn run(self: &Rc<Self>, reply: Reply, header: Header, body: Vec<u8>, arrival: Instant, deadline_us: u32) {
        self.metrics.inflight_requests.fetch_add(1, Relaxed);
        let bytes = HEADER_SIZE + body.len();
        let server = self.clone();
        let mut future = Box::pin(async move {
            let started = Instant::now();
            let done = server.serve(reply, header, &body, arrival, started, deadline_us).await;
            server.admission.borrow_mut().finish_served(bytes, done.saturating_duration_since(started));
            server.metrics.inflight_requests.fetch_sub(1, Relaxed);
            server.start_waiting();
        });
        // Memory hits complete on the first poll: answered in this turn, with no task.
        if future.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending() {
            uring::spawn_detached(TaskPriority::Foreground, future);
        }
    }

    /// Starts waiting requests, highest priority first, while slots are free.
    fn start_waiting(self: &Rc<Self>) {
        loop {
            let next = {
                let mut waiting = self.waiting.borrow_mut();
                let Some(queue) = waiting.iter_mut().find(|q| !q.is_empty()) else { return };
                let front = queue.front().expect("non-empty");
                let bytes = HEADER_SIZE + front.body.len();
                if !self.admission.borrow_mut().try_start_queued(front.header.priority, bytes) {
                    return;
                }
                queue.pop_front().expect("non-empty")
            };
            self.run(next.reply, next.header, next.body, next.arrival, next.deadline_us);
        }
    }

    /// Serves an admitted request and records its latency; returns when it finished (one clock
    /// read for both the latency and the service time).
    async fn serve(
        &self,
        reply: Reply,
        header: Header,
        body: &[u8],
        arrival: Instant,
        started: Instant,
        deadline_us: u32,
    ) -> Instant {
        let to = header.reply_to();
        let start = self.admission.borrow_mut().start(arrival, deadline_us, started);
        if let Err(refusal) = start {
            self.metrics.rejection(refusal);
            let retry_us = self.admission.borrow().retry_after().as_micros() as u32;
            self.respond(reply, Status::Overloaded, |out| protocol::encode_overloaded(out, to, retry_us));
            return Instant::now();
        }
        self.metrics.queue_delay.record(started.saturating_duration_since(arrival).as_micros() as u64);
        let request = protocol::decode_request(&header, body).expect("the body was decoded before it was admitted");
        let write =
            matches!(request, Request::Put(_) | Request::Delete(_) | Request::DeleteRange { .. } | Request::MPut(_));
        match request {
            Request::Put(put) => {
                let result = self.shard.put(put.pkey, put.ts, put.value).await;
                self.answer_write(reply, to, result);
            }
            Request::Delete(key) => {
                let result = self.shard.delete(key.pkey, key.ts).await;
                self.answer_write(reply, to, result);
            }
            Request::DeleteRange { pkey, ts_from, ts_to } => {
                let result = self.shard.delete_range(pkey, ts_from, ts_to).await;
                self.answer_write(reply, to, result);
            }
            Request::Get(key) => match self.get_merged(key.pkey, key.ts).await {
                Ok(Some((version, value))) => {
                    self.respond(reply, Status::Ok, |out| protocol::encode_value(out, to, version, &value));
                }
                Ok(None) => self.respond(reply, Status::NotFound, |out| protocol::encode_not_found(out, to)),
                Err((status, message)) => self.fail(reply, to, status, &message),
            },
            Request::GetIfNewer { key, version: held } => match self.shard.get(key.pkey, key.ts).await {
                Ok(Some((version, _))) if version <= held => {
                    self.respond(reply, Status::NotModified, |out| protocol::encode_not_modified(out, to, version));
                }
                Ok(Some((version, value))) => {
                    self.respond(reply, Status::Ok, |out| protocol::encode_value(out, to, version, &value));
                }
                Ok(None) => self.respond(reply, Status::NotFound, |out| protocol::encode_not_found(out, to)),
                Err(error) => self.answer_read_error(reply, to, &error),
            },
            Request::Scan(scan) => {
                match self.shard.scan(scan.pkey, scan.ts_from, scan.ts_to, scan.limit as usize, scan.newest_first).await
                {
                    Ok(entries) => self.respond(reply, Status::Ok, |out| {
                        let mut writer = ScanWriter::begin(out, to);
                        let mut truncated = false;
                        for entry in &entries {
                            if !writer.push(entry.ts, entry.version, &entry.value) {
                                truncated = true;
                                break;
                            }
                        }
                        writer.finish(truncated);
                    }),
                    Err(error) => self.answer_read_error(reply, to, &error),
                }
            }
            Request::MGet(items) => {
                // Every item's block reads go to the ring together.
                let results = join_all(items.iter().map(|key| self.shard.get(key.pkey, key.ts)).collect()).await;
                self.respond(reply, Status::Ok, |out| {
                    let mut writer = MGetWriter::begin(out, to);
                    for result in &results {
                        match result {
                            Ok(Some((version, value))) => {
                                if !writer.push_value(*version, value) {
                                    writer.push_status(Status::TooLarge);
                                }
                            }
                            Ok(None) => writer.push_status(Status::NotFound),
                            Err(error) => writer.push_status(read_error_status(error)),
                        }
                    }
                    writer.finish();
                });
            }
            Request::MPut(items) => {
                // All puts enter the same group commit before any is awaited.
                let results =
                    join_all(items.iter().map(|put| self.shard.put(put.pkey, put.ts, put.value)).collect()).await;
                self.respond(reply, Status::Ok, |out| {
                    let mut writer = MPutWriter::begin(out, to);
                    for result in &results {
                        match result {
                            Ok(version) => writer.push(Status::Ok, *version),
                            Err(error) => writer.push(write_status(error), 0),
                        }
                    }
                    writer.finish();
                });
            }
            Request::ColdRead(read) => {
                let outcome = match self.shard.cold() {
                    None => Err((Status::BadRequest, "this node has no cold tier".to_string())),
                    Some(store) => match store.read_raw(read.disk, read.file, read.offset, read.len).await {
                        Ok(found) => Ok(found),
                        Err(e @ crate::cold::RawReadError::Refused(_)) => Err((Status::BadRequest, e.to_string())),
                        Err(e @ crate::cold::RawReadError::Cold(_)) => Err((Status::Corrupted, e.to_string())),
                    },
                };
                match outcome {
                    Ok(Some(bytes)) => {
                        self.respond(reply, Status::Ok, |out| protocol::encode_cold_bytes(out, to, &bytes))
                    }
                    Ok(None) => self.respond(reply, Status::NotFound, |out| protocol::encode_not_found(out, to)),
                    Err((status, message)) => self.fail(reply, to, status, &message),
                }
            }
            Request::Ping { .. } | Request::Auth { .. } | Request::Stats => {
                unreachable!("answered before admission")
            }
        }
        let done = Instant::now();
        let elapsed_us = done.saturating_duration_since(arrival).as_micros() as u64;
        if write {
            self.metrics.latency_write.record(elapsed_us);
        } else {
            self.metrics.latency_read.record(elapsed_us);
        }
        done
    }

    /// A GET, merged with an identical one already reading the disk: the key is read once and
    /// every waiter gets the answer. A memory hit (the first poll completes) touches no map.
    async fn get_merged(&self, pkey: &[u8], ts: u64) -> ReadOutcome {
        let hash = xxhash_rust::xxh3::xxh3_64_with_seed(pkey, ts);
        let existing = if self.reads_in_flight.borrow().is_empty() {
            None
        } else {
            self.reads_in_flight
                .borrow()
                .get(&hash)
                .and_then(|reads| reads.iter().find(|r| r.pkey == pkey && r.ts == ts).cloned())
        };
        if let Some(shared) = existing {
            self.metrics.merged_reads.fetch_add(1, Relaxed);
            loop {
                let notified = shared.done.notified();
                if let Some(result) = shared.result.borrow().clone() {
                    return result;
                }
                notified.await;
            }
        }
        let mut read = std::pin::pin!(self.shard.get(pkey, ts));
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx))).await;
        let found = match first {
            std::task::Poll::Ready(found) => found,
            std::task::Poll::Pending => {
                let shared = Rc::new(SharedRead {
                    pkey: pkey.to_vec(),
                    ts,
                    result: RefCell::new(None),
                    done: crate::sync::Notify::default(),
                });
                self.reads_in_flight.borrow_mut().entry(hash).or_default().push(shared.clone());
                let found = read.await;
                let outcome = read_outcome(found);
                let mut map = self.reads_in_flight.borrow_mut();
                if let Some(reads) = map.get_mut(&hash) {
                    reads.retain(|r| !Rc::ptr_eq(r, &shared));
                    if reads.is_empty() {
                        map.remove(&hash);
                    }
                }
                drop(map);
                // Waiters hold the shared read: copy the answer only when someone waits.
                if Rc::strong_count(&shared) > 1 {
                    *shared.result.borrow_mut() = Some(outcome.clone());
                    shared.done.notify();
                }
                return outcome;
            }
        };
        read_outcome(found)
    }

    fn answer_write(&self, reply: Reply, to: ReplyTo, result: Result<u64, WriteError>) {
        match result {
            Ok(version) => self.respond(reply, Status::Ok, |out| protocol::encode_written(out, to, version)),
            Err(WriteError::MemoryBudget { .. } | WriteError::DiskFull { .. }) => {
                // Transient: the client retries after a flush frees memory or space.
                let retry_us = 10_000;
                self.respond(reply, Status::Overloaded, |out| protocol::encode_overloaded(out, to, retry_us));
            }
            Err(error) => self.fail(reply, to, write_status(&error), &error.to_string()),
        }
    }

    fn answer_read_error(&self, reply: Reply, to: ReplyTo, error: &ReadError) {
        self.fail(reply, to, read_error_status(error), &error.to_string());
    }

    fn stats_text(&self) -> String {
        let stats = self.shard.stats();
        let (hits, misses, _) = self.shard.cache_stats();
        let (tables, table_bytes) = self.shard.table_stats();
        format!(
            "shard {}\nshard_count {}\nwrites_acked {}\nfsyncs {}\nbatches {}\ntables {tables}\ntable_bytes {table_bytes}\n\
             memtable_bytes {}\nblock_cache_hits {hits}\nblock_cache_misses {misses}\ninflight_requests {}\n\
             queue_delay_avg_us {}\nopen_connections {}\nread_only {}\ncold_windows {}\nsinks {}\n\
             cold_disk_reads {}\nrepair_queue {}\n",
            self.options.shard_index,
            self.options.shard_count,
            stats.writes_acked,
            stats.fsyncs,
            stats.batches,
            self.shard.memtable_bytes(),
            self.admission.borrow().inflight_requests(),
            self.admission.borrow().queue_delay_avg().as_micros(),
            self.net.stats().open_connections,
            self.shard.read_only_reason().unwrap_or_else(|| "no".into()),
            self.shard.cold_windows().len(),
            stats.sinks,
            self.shard.cold().map_or(String::new(), |c| {
                c.disk_stats().iter().map(|d| d.reads.to_string()).collect::<Vec<_>>().join(",")
            }),
            self.shard.cold().map_or(0, |c| c.repair_queue().len()),
        )
    }
}

fn read_outcome(found: Result<Option<(u64, Vec<u8>)>, ReadError>) -> ReadOutcome {
    match found {
        Ok(found) => Ok(found),
        Err(error) => Err((read_error_status(&error), error.to_string())),
    }
}

fn read_error_status(error: &ReadError) -> Status {
    match error {
        ReadError::BadKey(_) => Status::BadRequest,
        ReadError::Table(crate::lsm::table::TableError::Corrupted { .. }) => Status::Corrupted,
        ReadError::Table(_) => Status::Internal,
        // Damaged or lost cold data, a down disk: the data cannot be served (until repaired).
        ReadError::Cold(_) => Status::Corrupted,
    }
}

/// Runs futures concurrently on this task and returns their outputs in order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future finished")).collect()
}

fn write_status(error: &WriteError) -> Status {
    match error {
        WriteError::BadKey(_)
        | WriteError::BadRange { .. }
        | WriteError::Expired { .. }
        | WriteError::FutureTimestamp { .. } => Status::BadRequest,
        WriteError::ValueTooLarge { .. } => Status::TooLarge,
        WriteError::ReadOnly { .. } | WriteError::NotWritten { .. } => Status::ReadOnly,
        WriteError::MemoryBudget { .. } | WriteError::DiskFull { .. } => Status::Overloaded,
        WriteError::UnknownOutcome { .. } => Status::UnknownOutcome,
    }
}

impl NetHandler for Server {
    fn accepted(&self, conn: ConnId, listener: usize) {
        self.metrics.connections_accepted.fetch_add(1, Relaxed);
        let shard_port = self.shard_listener.get() == Some(listener);
        self.conns.borrow_mut().insert(conn, ConnState { ticket: None, shard_port });
    }

    fn received(&self, conn: ConnId, input: &[u8]) -> usize {
        // The handler is registered through an Rc; recover it to hand clones to tasks.
        let server = LOCAL.with(|l| l.borrow().clone()).expect("the server is installed on its thread");
        server.on_input(conn, input)
    }

    fn flush(&self) {
        // Answers to send (at the turn's end, or from the middle of a long turn): how long the
        // turn has run, and how long the first of them was held, both up to the sends that
        // start now.
        if let Some(first) = self.first_answer_at.take() {
            let now = Instant::now();
            self.metrics.turn.record(now.saturating_duration_since(uring::turn_time()).as_micros() as u64);
            self.metrics.answer_hold.record(now.saturating_duration_since(first).as_micros() as u64);
        }
    }

    fn closed(&self, conn: ConnId, reason: &str) {
        self.metrics.connections_closed.fetch_add(1, Relaxed);
        self.conns.borrow_mut().remove(&conn);
        if reason == "peer closed the connection" {
            tracing::debug!(shard = self.options.shard_index, conn, "connection closed: {reason}");
        } else {
            tracing::info!(shard = self.options.shard_index, conn, "connection closed: {reason}");
        }
    }
}
