//! TCP on the uring runtime: listeners and connections whose receives and sends are raw ring
//! operations, surfaced to a [`NetHandler`] as plain events. No task, future or waker per
//! connection or per request: a connection is a slot with two buffers and two flags.
//!
//! - Each listener keeps one multishot accept armed (SO_REUSEPORT, so every core accepts).
//! - Each connection keeps at most one receive in flight, into the spare capacity of its input
//!   buffer. The handler sees every unconsumed byte and says how many it consumed. The buffer
//!   grows (doubling) only when it is full of bytes that did arrive, never from a length a peer
//!   declared, and never beyond `input_max`.
//! - Each connection keeps at most one send in flight; output queued meanwhile waits in a
//!   second buffer and goes out with the next send. Above `output_max` queued bytes the
//!   connection stops receiving until its peer reads, so a client that never reads holds
//!   bounded memory, and [`Net::close_stalled`] closes it after a while.
//!
//! Invariant: a connection's buffers are not touched (moved, grown, freed) while an operation
//! on them is in flight; a closing connection is freed only when it has none.

use super::{CompletionHandler, submit_raw};
use io_uring::{cqueue, opcode, types};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A connection: slot index and generation (a closed connection's id is never reused).
pub type ConnId = u64;

/// Receives the events of a [`Net`].
pub trait NetHandler {
    /// A connection was accepted on `listener` (the index [`Net::listen`] returned).
    fn accepted(&self, conn: ConnId, listener: usize);
    /// Bytes arrived: `input` holds every received byte not yet consumed. Returns how many
    /// bytes (a prefix) were consumed.
    fn received(&self, conn: ConnId, input: &[u8]) -> usize;
    /// The connection is gone (after its last operation completed); `reason` says why.
    fn closed(&self, conn: ConnId, reason: &str);
    /// The ring is about to be entered: process what arrived in this turn, queue responses.
    fn flush(&self) {}
}

/// Per-connection memory limits.
#[derive(Debug, Clone, Copy)]
pub struct NetLimits {
    /// The input buffer a connection starts with.
    pub input_initial: usize,
    /// The largest input buffer: a frame must fit in it.
    pub input_max: usize,
    /// Queued output above which the connection stops receiving.
    pub output_max: usize,
    /// Open connections per `Net`; more are accepted and closed at once.
    pub connections_max: usize,
}

impl Default for NetLimits {
    fn default() -> Self {
        Self { input_initial: 64 << 10, input_max: 8 << 20, output_max: 8 << 20, connections_max: 10_000 }
    }
}

/// `IORING_RECVSEND_POLL_FIRST`: arm the poll before trying the receive.
const RECV_POLL_FIRST: u16 = 1;

const KIND_ACCEPT: u64 = 1;
const KIND_RECV: u64 = 2;
const KIND_SEND: u64 = 3;

fn token(kind: u64, id: ConnId) -> u64 {
    debug_assert!(id < 1 << 56, "connection ids fit 56 bits");
    (kind << 56) | id
}

fn conn_id(index: u32, generation: u32) -> ConnId {
    u64::from(index) | (u64::from(generation & 0xff_ffff) << 32)
}

struct Conn {
    generation: u32,
    fd: Option<OwnedFd>,
    /// Received bytes (`len`) and room for the next receive (`capacity`).
    input: Vec<u8>,
    recv_in_flight: bool,
    /// The bytes of the send in flight and how many of them went out.
    sending: Vec<u8>,
    sent: usize,
    send_in_flight: bool,
    /// Output queued while a send is in flight.
    queued: Vec<u8>,
    /// Receiving stopped because too much output is queued.
    paused: bool,
    closing: Option<String>,
    /// Close once the queued output is sent, for this reason.
    linger: Option<String>,
    live: bool,
    /// The last time a send made progress (or output was first queued after an idle spell).
    send_progress_at: Instant,
    dirty: bool,
    /// The receive's message header, vector and control buffer (boxed: the kernel holds
    /// pointers into it while a receive is in flight, and `conns` may move).
    rx: Box<RxMsg>,
    /// The kernel's receive time of the last bytes of the previous receive.
    last_received_at: Option<Instant>,
}

/// When the bytes of one receive reached the socket: after `after` and by `last` (the kernel's
/// receive time of this receive's last bytes). `after` is the later of the previous receive's
/// last bytes and the end of the core's last idle moment: a receive is completed as soon as its
/// bytes arrive while the core idles, so bytes that waited arrived while it was busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub after: Instant,
    pub last: Instant,
}

impl Received {
    /// An estimate of when the bytes ending at `end` of the receive's `len` arrived, spreading
    /// them evenly over the span: a backlog's bytes arrive all along while the server is busy.
    /// The last bytes are dated exactly, so a receive of a single request is never aged by the
    /// idle time before it.
    #[must_use]
    pub fn estimate(&self, end: usize, len: usize) -> Instant {
        let span = self.last.saturating_duration_since(self.after);
        let behind = len.saturating_sub(end);
        if len == 0 || behind == 0 {
            return self.last;
        }
        self.last - span.mul_f64(behind as f64 / len as f64)
    }
}

/// What a receive hands the kernel: one buffer, and room for the receive timestamp.
#[repr(C)]
struct RxMsg {
    hdr: libc::msghdr,
    iov: libc::iovec,
    control: [u64; 8],
}

impl RxMsg {
    fn new() -> Box<Self> {
        // SAFETY: msghdr and iovec are plain C structs for which all zeroes is valid (null
        // pointers, zero lengths).
        Box::new(Self { hdr: unsafe { std::mem::zeroed() }, iov: unsafe { std::mem::zeroed() }, control: [0; 8] })
    }

    /// The kernel's receive time of the last bytes this receive returned (SO_TIMESTAMPNS), as
    /// an `Instant`; `None` when the kernel gave none.
    fn received_at(&self) -> Option<Instant> {
        let hdr = &raw const self.hdr;
        // SAFETY: `hdr` points at a msghdr whose control buffer (`control`, its length as the
        // kernel left it, at most the buffer's size) holds whole cmsgs; CMSG_* stay within it.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                    let at = std::time::UNIX_EPOCH
                        + Duration::new(u64::try_from(ts.tv_sec).ok()?, u32::try_from(ts.tv_nsec).ok()?);
                    let age = std::time::SystemTime::now().duration_since(at).unwrap_or(Duration::ZERO);
                    let now = Instant::now();
                    return Some(now.checked_sub(age).unwrap_or(now));
                }
                cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
            }
        }
        None
    }
}

struct Listener {
    fd: Option<OwnedFd>,
    addr: SocketAddr,
    accepting: bool,
}

#[derive(Default)]
struct State {
    listeners: Vec<Listener>,
    conns: Vec<Conn>,
    free: Vec<u32>,
    dirty: Vec<u32>,
    open: usize,
    accept_errors: u64,
    bytes_received: u64,
}

/// Counters of a [`Net`].
#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    pub open_connections: usize,
    pub accept_errors: u64,
    pub bytes_received: u64,
}

/// The network of one runtime: its listeners and connections.
pub struct Net {
    state: RefCell<State>,
    handler: RefCell<Option<Rc<dyn NetHandler>>>,
    limits: NetLimits,
    /// While a handler runs for received bytes: when the kernel received the last of them.
    received: std::cell::Cell<Option<Received>>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net").field("limits", &self.limits).finish()
    }
}

fn errno_text(result: i32) -> String {
    std::io::Error::from_raw_os_error(-result).to_string()
}

/// A TCP listening socket with SO_REUSEADDR and, if asked, SO_REUSEPORT.
fn listen_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket has no memory preconditions; the result is checked.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if reuse_port {
        set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    let (storage, len) = sockaddr_of(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes for the call's duration.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const storage).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: plain system call on a descriptor we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 4096) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn set_int_option(fd: RawFd, level: i32, name: i32, value: i32) -> std::io::Result<()> {
    // SAFETY: passes a pointer to a live i32 and its size.
    let rc = unsafe { libc::setsockopt(fd, level, name, (&raw const value).cast(), size_of::<i32>() as u32) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr_of(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zeroed is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr = libc::in_addr { s_addr: u32::from_be_bytes(v4.ip().octets()).to_be() };
            (storage, size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr = libc::in6_addr { s6_addr: v6.ip().octets() };
            (storage, size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

fn local_addr_of(fd: RawFd) -> std::io::Result<SocketAddr> {
    // SAFETY: getsockname on an owned fd; the std listener is only borrowed to read the address
    // and forgotten afterwards so the fd stays ours.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    let addr = listener.local_addr();
    std::mem::forget(listener);
    addr
}

impl Net {
    /// A network for the current runtime, registered as its completion handler.
    pub fn install(limits: NetLimits) -> Rc<Self> {
        assert!(
            limits.input_initial > 0 && limits.input_initial <= limits.input_max,
            "input buffer limits are ordered"
        );
        let net = Rc::new(Self {
            state: RefCell::default(),
            handler: RefCell::default(),
            limits,
            received: std::cell::Cell::new(None),
        });
        super::set_completion_handler(net.clone());
        net
    }

    /// While [`NetHandler::received`] runs: when this receive's bytes reached the socket (from
    /// the kernel's receive timestamps), so every request in them has waited in the socket at
    /// least since `last`, and at most since `after`. `None` outside a handler, or when the
    /// kernel gave no timestamp.
    #[must_use]
    pub fn received(&self) -> Option<Received> {
        self.received.get()
    }

    /// Sets who receives the network's events.
    pub fn set_handler(&self, handler: Rc<dyn NetHandler>) {
        *self.handler.borrow_mut() = Some(handler);
    }

    fn handler(&self) -> Rc<dyn NetHandler> {
        self.handler.borrow().clone().expect("a handler is set before listening")
    }

    /// Listens on `addr` and starts accepting. Returns the listener's index.
    pub fn listen(&self, addr: SocketAddr, reuse_port: bool) -> std::io::Result<usize> {
        let fd = listen_socket(addr, reuse_port)?;
        let addr = local_addr_of(fd.as_raw_fd())?;
        let index = {
            let mut state = self.state.borrow_mut();
            state.listeners.push(Listener { fd: Some(fd), addr, accepting: false });
            state.listeners.len() - 1
        };
        self.arm_accept(index);
        Ok(index)
    }

    /// The address a listener is bound to (its port, when it asked for port 0).
    #[must_use]
    pub fn local_addr(&self, listener: usize) -> SocketAddr {
        self.state.borrow().listeners[listener].addr
    }

    /// Stops accepting on every listener; open connections carry on.
    pub fn stop_listening(&self) {
        let mut state = self.state.borrow_mut();
        for listener in &mut state.listeners {
            if let Some(fd) = &listener.fd {
                // SAFETY: plain system call on a descriptor we own. It ends the pending accept.
                unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
            }
            if !listener.accepting {
                listener.fd = None;
            }
        }
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> NetStats {
        let state = self.state.borrow();
        NetStats {
            open_connections: state.open,
            accept_errors: state.accept_errors,
            bytes_received: state.bytes_received,
        }
    }

    fn arm_accept(&self, index: usize) {
        let mut state = self.state.borrow_mut();
        let listener = &mut state.listeners[index];
        let Some(fd) = &listener.fd else { return };
        let entry = opcode::AcceptMulti::new(types::Fd(fd.as_raw_fd())).flags(libc::SOCK_CLOEXEC).build();
        listener.accepting = true;
        drop(state);
        // SAFETY: an accept entry points at no memory.
        unsafe { submit_raw(entry, token(KIND_ACCEPT, index as u64)) };
    }

    fn on_accept(&self, index: usize, result: i32, flags: u32) {
        let more = cqueue::more(flags);
        if result >= 0 {
            // SAFETY: the kernel handed us a new descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(result) };
            self.adopt(fd, index);
        } else {
            self.state.borrow_mut().accept_errors += 1;
        }
        if !more {
            let mut state = self.state.borrow_mut();
            let listener = &mut state.listeners[index];
            listener.accepting = false;
            let stopped = listener.fd.as_ref().is_none_or(|_| result == -libc::EINVAL);
            if stopped {
                listener.fd = None;
                return;
            }
            drop(state);
            self.arm_accept(index);
        }
    }

    fn adopt(&self, fd: OwnedFd, listener: usize) {
        // Small requests must not wait for Nagle's algorithm.
        let _ = set_int_option(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        // The kernel's receive time comes with each receive: how long requests sat in the
        // socket before the server read them (see `received`).
        let _ = set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1);
        let id = {
            let mut state = self.state.borrow_mut();
            if state.open >= self.limits.connections_max {
                state.accept_errors += 1;
                return; // Dropping `fd` closes it: the client sees the connection reset.
            }
            let index = match state.free.pop() {
                Some(index) => index,
                None => {
                    state.conns.push(Conn {
                        generation: 0,
                        fd: None,
                        input: Vec::new(),
                        recv_in_flight: false,
                        sending: Vec::new(),
                        sent: 0,
                        send_in_flight: false,
                        queued: Vec::new(),
                        paused: false,
                        closing: None,
                        linger: None,
                        live: false,
                        send_progress_at: Instant::now(),
                        dirty: false,
                        rx: RxMsg::new(),
                        last_received_at: None,
                    });
                    (state.conns.len() - 1) as u32
                }
            };
            state.open += 1;
            let conn = &mut state.conns[index as usize];
            conn.fd = Some(fd);
            conn.input = Vec::with_capacity(self.limits.input_initial);
            conn.live = true;
            conn.closing = None;
            conn.linger = None;
            conn.paused = false;
            conn.last_received_at = None;
            conn.sent = 0;
            conn.send_progress_at = super::turn_time();
            conn_id(index, conn.generation)
        };
        self.handler().accepted(id, listener);
        self.arm_recv(id);
    }

    /// The live connection `id` names, if any.
    fn index_of(state: &State, id: ConnId) -> Option<usize> {
        let index = id as u32 as usize;
        let conn = state.conns.get(index)?;
        (conn.live && conn_id(index as u32, conn.generation) == id).then_some(index)
    }

    fn arm_recv(&self, id: ConnId) {
        let mut state = self.state.borrow_mut();
        let Some(index) = Self::index_of(&state, id) else { return };
        let conn = &mut state.conns[index];
        if conn.recv_in_flight || conn.paused || conn.closing.is_some() {
            return;
        }
        let Some(fd) = &conn.fd else { return };
        let filled = conn.input.len();
        let room = conn.input.capacity() - filled;
        debug_assert!(room > 0, "a receive has room");
        // SAFETY: `filled <= capacity`, so the pointer stays inside (or one past) the buffer.
        let ptr = unsafe { conn.input.as_mut_ptr().add(filled) };
        let fd = fd.as_raw_fd();
        let rx = &mut *conn.rx;
        rx.iov = libc::iovec { iov_base: ptr.cast(), iov_len: room };
        rx.control = [0; 8];
        rx.hdr.msg_name = std::ptr::null_mut();
        rx.hdr.msg_namelen = 0;
        rx.hdr.msg_iov = &raw mut rx.iov;
        rx.hdr.msg_iovlen = 1;
        rx.hdr.msg_control = rx.control.as_mut_ptr().cast();
        rx.hdr.msg_controllen = size_of_val(&rx.control);
        rx.hdr.msg_flags = 0;
        // Poll first: the socket was just drained, so trying the receive at once would mostly
        // fail and cost a second attempt when the data arrives.
        let entry = opcode::RecvMsg::new(types::Fd(fd), &raw mut rx.hdr).ioprio(RECV_POLL_FIRST).build();
        conn.recv_in_flight = true;
        drop(state);
        // SAFETY: the entry points at the connection's boxed message header and, through it, into
        // its input buffer; neither is touched, moved or freed until this receive completes
        // (recv_in_flight).
        unsafe { submit_raw(entry, token(KIND_RECV, id)) };
    }

    fn on_recv(&self, id: ConnId, result: i32) {
        let mut input = {
            let mut state = self.state.borrow_mut();
            let index = id as u32 as usize;
            state.bytes_received += u64::try_from(result).unwrap_or(0);
            let conn = &mut state.conns[index];
            conn.recv_in_flight = false;
            if result <= 0 || conn.closing.is_some() {
                let reason = if result == 0 { "peer closed the connection".to_string() } else { errno_text(result) };
                if conn.closing.is_none() {
                    conn.closing = Some(reason);
                }
                drop(state);
                self.finish_close(id);
                return;
            }
            let filled = conn.input.len() + result as usize;
            assert!(filled <= conn.input.capacity(), "the kernel received within the buffer");
            // SAFETY: the kernel initialised `result` bytes after the old length.
            unsafe { conn.input.set_len(filled) };
            let last = conn.rx.received_at();
            let after = conn.last_received_at.replace(last.unwrap_or(Instant::now()));
            let after = after.map_or(super::idle_at(), |after| after.max(super::idle_at()));
            self.received.set(last.map(|last| Received { after: after.min(last), last }));
            std::mem::take(&mut conn.input)
        };
        let consumed = self.handler().received(id, &input);
        self.received.set(None);
        assert!(consumed <= input.len(), "a handler consumes only what it was given");
        input.drain(..consumed);
        let mut state = self.state.borrow_mut();
        let conn = &mut state.conns[id as u32 as usize];
        if input.len() == input.capacity() {
            if input.capacity() >= self.limits.input_max {
                conn.input = input;
                let reason = format!("a frame does not fit the input limit of {} bytes", self.limits.input_max);
                drop(state);
                self.close(id, &reason);
                return;
            }
            input.reserve_exact(input.capacity().min(self.limits.input_max - input.capacity()));
        }
        conn.input = input;
        drop(state);
        self.arm_recv(id);
    }

    /// Queues `bytes` to go out on `conn` at the end of the turn. False when the connection is
    /// closed or closing (the bytes are dropped).
    pub fn send(&self, id: ConnId, bytes: &[u8]) -> bool {
        self.send_with(id, |out| out.extend_from_slice(bytes))
    }

    /// Queues output written by `write` into the connection's output buffer (no copy).
    pub fn send_with(&self, id: ConnId, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut state = self.state.borrow_mut();
        let Some(index) = Self::index_of(&state, id) else { return false };
        let conn = &mut state.conns[index];
        if conn.closing.is_some() {
            return false;
        }
        if conn.queued.is_empty() && !conn.send_in_flight {
            conn.send_progress_at = super::turn_time();
        }
        write(&mut conn.queued);
        if conn.queued.len() + conn.sending.len() - conn.sent > self.limits.output_max {
            conn.paused = true;
        }
        if !conn.dirty {
            conn.dirty = true;
            state.dirty.push(index as u32);
        }
        true
    }

    /// Output queued on `conn` and not yet sent, in bytes.
    #[must_use]
    pub fn output_bytes(&self, id: ConnId) -> usize {
        let state = self.state.borrow();
        Self::index_of(&state, id).map_or(0, |i| {
            let conn = &state.conns[i];
            conn.queued.len() + conn.sending.len() - conn.sent
        })
    }

    fn start_send(&self, index: usize) {
        let mut state = self.state.borrow_mut();
        let conn = &mut state.conns[index];
        if conn.send_in_flight || !conn.live || conn.closing.is_some() {
            return;
        }
        if conn.sent == conn.sending.len() {
            if conn.queued.is_empty() {
                return;
            }
            conn.sending.clear();
            std::mem::swap(&mut conn.sending, &mut conn.queued);
            conn.sent = 0;
        }
        let Some(fd) = &conn.fd else { return };
        let remaining = &conn.sending[conn.sent..];
        let entry = opcode::Send::new(types::Fd(fd.as_raw_fd()), remaining.as_ptr(), remaining.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        conn.send_in_flight = true;
        let id = conn_id(index as u32, conn.generation);
        drop(state);
        // SAFETY: the entry points into the `sending` buffer, which is not touched until this
        // send completes (send_in_flight).
        unsafe { submit_raw(entry, token(KIND_SEND, id)) };
    }

    fn on_send(&self, id: ConnId, result: i32) {
        let index = id as u32 as usize;
        let resume = {
            let mut state = self.state.borrow_mut();
            let conn = &mut state.conns[index];
            conn.send_in_flight = false;
            if result < 0 || conn.closing.is_some() {
                if conn.closing.is_none() {
                    conn.closing = Some(format!("send failed: {}", errno_text(result)));
                }
                drop(state);
                self.finish_close(id);
                return;
            }
            conn.sent += result as usize;
            conn.send_progress_at = super::turn_time();
            let pending = conn.queued.len() + conn.sending.len() - conn.sent;
            if pending == 0
                && let Some(reason) = conn.linger.take()
            {
                drop(state);
                self.close(id, &reason);
                return;
            }
            let resume = conn.paused && conn.linger.is_none() && pending <= self.limits.output_max / 2;
            if resume {
                conn.paused = false;
            }
            resume
        };
        self.start_send(index);
        if resume {
            self.arm_recv(id);
        }
    }

    /// Closes `conn`: no more sends or receives; the handler hears `closed` once its operations
    /// have completed. Output not yet sent is dropped.
    pub fn close(&self, id: ConnId, reason: &str) {
        {
            let mut state = self.state.borrow_mut();
            let Some(index) = Self::index_of(&state, id) else { return };
            let conn = &mut state.conns[index];
            if conn.closing.is_some() {
                return;
            }
            conn.closing = Some(reason.to_string());
            if let Some(fd) = &conn.fd {
                // SAFETY: plain system call on a descriptor we own; it ends operations in flight.
                unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
        self.finish_close(id);
    }

    /// Stops receiving on `conn`, sends what is queued, then closes it (after a final error
    /// response).
    pub fn close_after_send(&self, id: ConnId, reason: &str) {
        let drained = {
            let mut state = self.state.borrow_mut();
            let Some(index) = Self::index_of(&state, id) else { return };
            let conn = &mut state.conns[index];
            conn.paused = true;
            conn.linger = Some(reason.to_string());
            !conn.send_in_flight && conn.queued.is_empty()
        };
        if drained {
            self.close(id, reason);
        }
    }

    fn finish_close(&self, id: ConnId) {
        let reason = {
            let mut state = self.state.borrow_mut();
            let index = id as u32 as usize;
            let conn = &mut state.conns[index];
            if !conn.live || conn.recv_in_flight || conn.send_in_flight {
                return;
            }
            let Some(reason) = conn.closing.take() else { return };
            conn.live = false;
            conn.fd = None;
            conn.generation = conn.generation.wrapping_add(1);
            conn.input = Vec::new();
            conn.sending = Vec::new();
            conn.queued = Vec::new();
            conn.sent = 0;
            conn.paused = false;
            state.open -= 1;
            if !state.conns[index].dirty {
                state.free.push(index as u32);
            }
            reason
        };
        self.handler().closed(id, &reason);
    }

    /// Closes connections whose output has not moved for `stall` (a peer that stopped reading).
    pub fn close_stalled(&self, stall: Duration) -> usize {
        let now = Instant::now();
        let stalled: Vec<ConnId> = {
            let state = self.state.borrow();
            state
                .conns
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.live
                        && c.closing.is_none()
                        && (c.send_in_flight || !c.queued.is_empty())
                        && now.duration_since(c.send_progress_at) > stall
                })
                .map(|(i, c)| conn_id(i as u32, c.generation))
                .collect()
        };
        for &id in &stalled {
            self.close(id, &format!("the peer read nothing for {} s", stall.as_secs()));
        }
        stalled.len()
    }
}

impl CompletionHandler for Net {
    fn complete(&self, token: u64, result: i32, flags: u32) {
        let id = token & ((1 << 56) - 1);
        match token >> 56 {
            KIND_ACCEPT => self.on_accept(id as usize, result, flags),
            KIND_RECV => self.on_recv(id, result),
            KIND_SEND => self.on_send(id, result),
            kind => unreachable!("unknown network operation kind {kind}"),
        }
    }

    fn flush(&self) {
        if let Some(handler) = self.handler.borrow().clone() {
            handler.flush();
        }
        let dirty = std::mem::take(&mut self.state.borrow_mut().dirty);
        for &index in &dirty {
            let live = {
                let mut state = self.state.borrow_mut();
                let conn = &mut state.conns[index as usize];
                conn.dirty = false;
                conn.live
            };
            if live {
                self.start_send(index as usize);
            } else {
                // Closed while waiting to be flushed: its slot can be reused now.
                self.state.borrow_mut().free.push(index);
            }
        }
        let mut state = self.state.borrow_mut();
        if state.dirty.is_empty() {
            state.dirty = dirty;
            state.dirty.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uring::{block_on, sleep};
    use std::io::{Read as _, Write as _};

    #[test]
    fn the_bytes_of_a_receive_are_dated_back_from_its_last_over_its_span() {
        let after = Instant::now();
        let last = after + Duration::from_millis(10);
        let received = Received { after, last };
        // The last frame (ending at the end) is dated exactly; the others spread back evenly.
        assert_eq!(received.estimate(400, 400), last);
        assert_eq!(received.estimate(300, 400), last - Duration::from_micros(2_500));
        assert_eq!(received.estimate(100, 400), last - Duration::from_micros(7_500));
        assert_eq!(received.estimate(0, 400), after);
        // No span (the core idled until the bytes came): every frame is dated by the last bytes.
        let idle = Received { after: last, last };
        assert_eq!(idle.estimate(100, 400), last);
    }

    /// Echoes every byte back, upper-cased, and closes on "quit".
    struct Echo {
        net: RefCell<Option<Rc<Net>>>,
        closed: RefCell<Vec<String>>,
    }

    impl NetHandler for Echo {
        fn accepted(&self, _conn: ConnId, _listener: usize) {}
        fn received(&self, conn: ConnId, input: &[u8]) -> usize {
            let net = self.net.borrow().clone().unwrap();
            if input.starts_with(b"quit") {
                net.close(conn, "asked to quit");
                return input.len();
            }
            net.send_with(conn, |out| out.extend(input.iter().map(u8::to_ascii_uppercase)));
            input.len()
        }
        fn closed(&self, _conn: ConnId, reason: &str) {
            self.closed.borrow_mut().push(reason.to_string());
        }
    }

    #[test]
    fn echo_server_serves_clients_and_hears_closes() {
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            block_on(async move {
                let net = Net::install(NetLimits::default());
                let echo = Rc::new(Echo { net: RefCell::new(Some(net.clone())), closed: RefCell::default() });
                net.set_handler(echo.clone());
                let listener = net.listen("127.0.0.1:0".parse().unwrap(), true).unwrap();
                tx.send(net.local_addr(listener)).unwrap();
                while echo.closed.borrow().len() < 2 {
                    sleep(Duration::from_millis(1)).await;
                }
                net.stop_listening();
                let reasons = echo.closed.borrow().clone();
                echo.net.borrow_mut().take();
                reasons
            })
            .unwrap()
        });
        let addr = rx.recv().unwrap();
        let mut a = std::net::TcpStream::connect(addr).unwrap();
        let mut b = std::net::TcpStream::connect(addr).unwrap();
        for _ in 0..100 {
            a.write_all(b"hello").unwrap();
            b.write_all(b"world").unwrap();
            let mut buf = [0u8; 5];
            a.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"HELLO");
            b.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"WORLD");
        }
        a.write_all(b"quit").unwrap();
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).unwrap();
        drop(b);
        let mut reasons = server.join().unwrap();
        reasons.sort();
        assert_eq!(reasons, vec!["asked to quit".to_string(), "peer closed the connection".to_string()]);
    }
}
