//! TCP on the uring runtime: listeners and connections whose receives and sends are raw ring
//! operations, surfaced to a [`NetHandler`] as plain events. No task, future or waker per
//! connection or per request: a connection is a slot with two buffers and two flags.
//!
//! - Each listener keeps one multishot accept armed (SO_REUSEPORT, so every core accepts).
//! - Each connection keeps one multishot receive armed: the kernel fills buffers from the
//!   runtime's ring of provided buffers ([`RecvBuffers`]) as bytes arrive, with no new request,
//!   poll arming or message-header copy per receive. The handler sees the received bytes in
//!   place; only bytes it did not consume (a frame's beginning) are copied into the
//!   connection's input buffer, to be seen again with the next bytes. That buffer holds only
//!   bytes that did arrive, never room for a length a peer declared, and never more than
//!   `input_max`.
//! - Each connection keeps at most one send in flight; output queued meanwhile waits in a
//!   second buffer and goes out with the next send. Above `output_max` queued bytes the
//!   connection stops receiving (its receive is cancelled; bytes already received wait in its
//!   input buffer, unhandled) until its peer reads, so a client that never reads holds bounded
//!   memory, and [`Net::close_stalled`] closes it after a while.
//!
//! Invariant: a connection's output buffer is not touched (moved, grown, freed) while a send
//! from it is in flight; a provided buffer is handed back to the kernel only after its bytes
//! were handled or copied; a closing connection is freed only when it has no operation in
//! flight.

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
    /// The most received bytes a connection may hold unhandled: a frame must fit in it.
    pub input_max: usize,
    /// Queued output above which the connection stops receiving.
    pub output_max: usize,
    /// Open connections per `Net`; more are accepted and closed at once.
    pub connections_max: usize,
    /// Provided receive buffers (a power of two). A receive takes one per completion and the
    /// handler returns it in the same turn, so they run out only when more bytes arrive in one
    /// turn than they hold; the receives that found none end with `ENOBUFS` and are armed again.
    pub recv_buffers: u16,
}

impl Default for NetLimits {
    fn default() -> Self {
        Self { input_max: 8 << 20, output_max: 8 << 20, connections_max: 10_000, recv_buffers: 256 }
    }
}

/// `IORING_RECVSEND_POLL_FIRST`: arm the poll before trying the receive.
const RECV_POLL_FIRST: u16 = 1;

const KIND_ACCEPT: u64 = 1;
const KIND_RECV: u64 = 2;
const KIND_SEND: u64 = 3;
/// The cancel of a paused connection's receive (its completion carries nothing to act on).
const KIND_CANCEL: u64 = 4;

/// The size of a provided buffer: it holds a few hundred small requests; a larger frame arrives
/// over several buffers.
const RECV_BUFFER_BYTES: usize = 16 << 10;
/// Room for the receive timestamp's control message (SO_TIMESTAMPNS: a 16-byte header and a
/// timespec), at the front of every provided buffer.
const CONTROL_BYTES: usize = 64;

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
    /// Received bytes the handler did not consume yet (or, while paused, has not seen).
    input: Vec<u8>,
    /// The multishot receive is armed (until its last completion).
    recv_in_flight: bool,
    /// Its cancel was asked for (the connection paused).
    recv_cancelling: bool,
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
    /// The kernel's receive time of the last bytes of the previous receive.
    last_received_at: Option<Instant>,
    /// When the bytes kept unseen while paused arrived (the span of their receives), so they
    /// are dated when the handler gets them.
    paused_received: Option<Received>,
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

/// Shuts a closing connection's socket down both ways: its receive and send in flight end.
fn shut_down(conn: &Conn) {
    if let Some(fd) = &conn.fd {
        // SAFETY: plain system call on a descriptor we own; it ends operations in flight.
        unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// Appends `bytes` to a connection's input, growing it by doubling but never past `cap` (the
/// input limit and one provided buffer: more than that closes the connection).
fn append(input: &mut Vec<u8>, bytes: &[u8], cap: usize) {
    let need = input.len() + bytes.len();
    if need > input.capacity() {
        let target = (input.capacity() * 2).max(need).min(cap.max(need));
        input.reserve_exact(target - input.len());
    }
    input.extend_from_slice(bytes);
}

/// The runtime's ring of provided buffers (`IORING_REGISTER_PBUF_RING`): the kernel takes the
/// next buffer for each receive completion and names it in the completion; the buffer goes back
/// at the ring's tail once its bytes are handled. Each buffer holds the kernel's
/// `io_uring_recvmsg_out` header, the control messages (the receive timestamp) and the bytes.
struct RecvBuffers {
    /// `count` entries, page-aligned (the kernel maps them).
    ring: *mut types::BufRingEntry,
    /// `count` buffers of `RECV_BUFFER_BYTES`.
    memory: *mut u8,
    count: u16,
    /// The next tail, as the kernel will see it once published.
    tail: std::cell::Cell<u16>,
    group: u16,
    /// The message header multishot receives are armed with: only its name and control lengths
    /// matter (no name, `CONTROL_BYTES` of control). Boxed: the kernel reads it when a receive
    /// is armed.
    template: Box<libc::msghdr>,
}

impl RecvBuffers {
    /// Allocates the buffers and registers them with the current runtime's ring as `group`.
    ///
    /// The memory is never freed: a ring's teardown in the kernel finishes asynchronously after
    /// the ring is closed, and a receive completing meanwhile may still write into a provided
    /// buffer. It is one set per runtime (per core), for the life of the process.
    fn register(group: u16, count: u16) -> std::io::Result<Self> {
        assert!(count.is_power_of_two(), "the ring's index is masked");
        // SAFETY: sysconf has no memory preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(4096);
        let ring_layout =
            std::alloc::Layout::from_size_align(usize::from(count) * size_of::<types::BufRingEntry>(), page)
                .expect("a valid layout");
        let memory_layout =
            std::alloc::Layout::from_size_align(usize::from(count) * RECV_BUFFER_BYTES, page).expect("a valid layout");
        // SAFETY: both layouts have a non-zero size.
        let (ring, memory) = unsafe {
            (std::alloc::alloc_zeroed(ring_layout).cast::<types::BufRingEntry>(), std::alloc::alloc(memory_layout))
        };
        let free = || {
            // SAFETY: each pointer, if not null, came from `alloc` with its layout, and the kernel
            // was never told of it.
            unsafe {
                if !ring.is_null() {
                    std::alloc::dealloc(ring.cast(), ring_layout);
                }
                if !memory.is_null() {
                    std::alloc::dealloc(memory, memory_layout);
                }
            }
        };
        if ring.is_null() || memory.is_null() {
            free();
            return Err(std::io::Error::from(std::io::ErrorKind::OutOfMemory));
        }
        // SAFETY: msghdr is a plain C struct for which all zeroes is valid.
        let mut template: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        template.msg_controllen = CONTROL_BYTES as _;
        let buffers = Self { ring, memory, count, tail: std::cell::Cell::new(0), group, template };
        for id in 0..count {
            buffers.give_back(id);
        }
        // SAFETY: the ring and the buffers are page-aligned, sized for `count`, and never freed
        // once registered (see above).
        if let Err(e) = unsafe { super::register_buf_ring(ring, count, group) } {
            free();
            return Err(e);
        }
        Ok(buffers)
    }

    /// The first `len` bytes of buffer `id`, as a completion left them.
    fn filled(&self, id: u16, len: usize) -> &[u8] {
        assert!(id < self.count && len <= RECV_BUFFER_BYTES, "the kernel names a buffer of the ring");
        // SAFETY: buffer `id` lies within `memory`; the kernel wrote `len` bytes into it and
        // does not touch it again until it is given back.
        unsafe { std::slice::from_raw_parts(self.memory.add(usize::from(id) * RECV_BUFFER_BYTES), len) }
    }

    /// Hands buffer `id` back to the kernel.
    fn give_back(&self, id: u16) {
        let tail = self.tail.get();
        let slot = usize::from(tail & (self.count - 1));
        // SAFETY: `slot` is within the ring; the kernel reads an entry only once the tail below
        // is published past it.
        unsafe {
            let entry = &mut *self.ring.add(slot);
            entry.set_addr(self.memory.add(usize::from(id) * RECV_BUFFER_BYTES) as u64);
            entry.set_len(RECV_BUFFER_BYTES as u32);
            entry.set_bid(id);
        }
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: the tail field of the ring's first entry, which the kernel reads; the store is
        // a release so the entry written above is visible first.
        unsafe {
            let at = types::BufRingEntry::tail(self.ring).cast_mut();
            std::sync::atomic::AtomicU16::from_ptr(at).store(tail, std::sync::atomic::Ordering::Release);
        }
    }
}

/// The kernel's receive time of the last bytes a receive returned (SO_TIMESTAMPNS), as an
/// `Instant`, from the receive's control messages; `None` when the kernel gave none.
fn received_at(control: &[u8]) -> Option<Instant> {
    // SAFETY: msghdr is a plain C struct for which all zeroes is valid.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_control = control.as_ptr().cast_mut().cast();
    hdr.msg_controllen = control.len() as _;
    let hdr = &raw const hdr;
    // SAFETY: `hdr` describes the control bytes the kernel wrote (whole cmsgs, within the
    // slice); CMSG_* stay within them, and the timestamp is read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                let at = std::time::UNIX_EPOCH
                    + Duration::new(u64::try_from(ts.tv_sec).ok()?, u32::try_from(ts.tv_nsec).ok()?);
                return Some(super::wall_to_instant(at));
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
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
    receives_out_of_buffers: u64,
}

/// Counters of a [`Net`].
#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    pub open_connections: usize,
    pub accept_errors: u64,
    pub bytes_received: u64,
    /// Receives that found no provided buffer free (each was armed again).
    pub receives_out_of_buffers: u64,
}

/// The network of one runtime: its listeners and connections.
pub struct Net {
    state: RefCell<State>,
    handler: RefCell<Option<Rc<dyn NetHandler>>>,
    limits: NetLimits,
    buffers: RecvBuffers,
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

/// A TCP socket bound to `addr`, with SO_REUSEADDR (connections in TIME_WAIT do not hold the
/// port, a listener does) and, if asked, SO_REUSEPORT.
fn bound_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<OwnedFd> {
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
    Ok(fd)
}

/// A TCP listening socket with SO_REUSEADDR and, if asked, SO_REUSEPORT.
fn listen_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<OwnedFd> {
    let fd = bound_socket(addr, reuse_port)?;
    // Receive timestamps from the listener on, for as long as it lives: the kernel stamps
    // packets on arrival only while some socket wants stamps (a global switch, turned on by
    // deferred work when the first socket asks), and stamps bytes that arrived while it was
    // off when they are read. Asked for only on accepted connections, a node with no other
    // connection open would date a new connection's first requests to the moment it read them.
    // Best effort, as on accepted connections: without stamps, requests are dated on reading.
    let _ = set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1);
    // SAFETY: plain system call on a descriptor we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 4096) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Fails with `AddrInUse` if any socket, of this process or another, listens on `addr`: binds
/// a socket without SO_REUSEPORT there and closes it unlistened (nothing can connect to it).
/// A node's shards share their port through SO_REUSEPORT, which the kernel grants to every
/// socket of the same user: without this check a second node started on the port would join
/// the group and take a share of the clients, silently.
pub fn check_port_free(addr: SocketAddr) -> std::io::Result<()> {
    bound_socket(addr, false).map(drop)
}

/// Binds a Unix socket to `name` in the abstract namespace, and listens on it: a lock on `name`
/// for as long as the socket is open, freed by the kernel when the process ends, however it
/// ends. Fails with `AddrInUse` while another process holds it.
pub fn hold_abstract_name(name: &str) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt as _;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    std::os::unix::net::UnixListener::bind_addr(&addr)
}

/// The pid of the process holding `name` (see [`hold_abstract_name`]), from the credentials
/// its socket recorded when it listened (`SO_PEERCRED`); `None` if no one holds it.
#[must_use]
pub fn abstract_name_holder(name: &str) -> Option<i32> {
    use std::os::linux::net::SocketAddrExt as _;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?;
    let stream = std::os::unix::net::UnixStream::connect_addr(&addr).ok()?;
    // SAFETY: ucred is plain data; zeroed is valid.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: passes a live ucred and its size for the kernel to fill.
    let rc = unsafe {
        libc::getsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &raw mut len)
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid)
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
    /// A network for the current runtime, registered as its completion handler. Fails when the
    /// kernel cannot take a ring of provided buffers (Linux 5.19) for its receives.
    pub fn install(limits: NetLimits) -> std::io::Result<Rc<Self>> {
        assert!(limits.input_max > 0, "a frame fits the input limit");
        thread_local! {
            static GROUPS: std::cell::Cell<u16> = const { std::cell::Cell::new(0) };
        }
        let group = GROUPS.with(|g| g.replace(g.get() + 1));
        let buffers = RecvBuffers::register(group, limits.recv_buffers).map_err(|e| {
            std::io::Error::new(e.kind(), format!("registering provided receive buffers with io_uring: {e}"))
        })?;
        let net = Rc::new(Self {
            state: RefCell::default(),
            handler: RefCell::default(),
            limits,
            buffers,
            received: std::cell::Cell::new(None),
        });
        super::set_completion_handler(net.clone());
        Ok(net)
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
            receives_out_of_buffers: state.receives_out_of_buffers,
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
                        recv_cancelling: false,
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
                        last_received_at: None,
                        paused_received: None,
                    });
                    (state.conns.len() - 1) as u32
                }
            };
            state.open += 1;
            let conn = &mut state.conns[index as usize];
            conn.fd = Some(fd);
            conn.input = Vec::new();
            conn.live = true;
            conn.closing = None;
            conn.linger = None;
            conn.paused = false;
            conn.last_received_at = None;
            conn.paused_received = None;
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
        // Poll first: the socket was just accepted or drained, so trying the receive at once
        // would mostly fail.
        let entry =
            opcode::RecvMsgMulti::new(types::Fd(fd.as_raw_fd()), &raw const *self.buffers.template, self.buffers.group)
                .ioprio(RECV_POLL_FIRST)
                .build();
        conn.recv_in_flight = true;
        drop(state);
        // SAFETY: the entry points at the buffers' message header, which lives as long as the
        // `Net`; the kernel writes only into provided buffers, which are never freed.
        unsafe { submit_raw(entry, token(KIND_RECV, id)) };
    }

    /// Stops a connection's receive (it paused): the kernel cancels it; bytes it received
    /// before that wait in the input buffer.
    fn cancel_recv(&self, index: usize) {
        let mut state = self.state.borrow_mut();
        let conn = &mut state.conns[index];
        if !conn.recv_in_flight || conn.recv_cancelling {
            return;
        }
        conn.recv_cancelling = true;
        let id = conn_id(index as u32, conn.generation);
        drop(state);
        super::cancel_raw(token(KIND_RECV, id), token(KIND_CANCEL, id));
    }

    fn on_recv(&self, id: ConnId, result: i32, flags: u32) {
        let more = cqueue::more(flags);
        let buffer = cqueue::buffer_select(flags);
        let index = id as u32 as usize;
        let (bytes, at) = match buffer {
            Some(buffer) if result >= 0 => {
                let filled = self.buffers.filled(buffer, result as usize);
                match types::RecvMsgOut::parse(filled, &self.buffers.template) {
                    Ok(out) => {
                        // The parse borrows its own header: find the bytes in the buffer again.
                        let payload = out.payload_data();
                        let start = payload.as_ptr() as usize - filled.as_ptr() as usize;
                        (&filled[start..start + payload.len()], received_at(out.control_data()))
                    }
                    Err(()) => (&[][..], None),
                }
            }
            _ => (&[][..], None),
        };
        let ended = {
            let mut state = self.state.borrow_mut();
            state.bytes_received += bytes.len() as u64;
            state.receives_out_of_buffers += u64::from(result == -libc::ENOBUFS);
            let conn = &mut state.conns[index];
            if !more {
                conn.recv_in_flight = false;
                conn.recv_cancelling = false;
            }
            // The receive ends with the peer's end of stream (no bytes), or an error; out of
            // provided buffers, or cancelled for a pause, it is only over for now.
            let ended = match result {
                0.. => bytes.is_empty() && !more,
                r if r == -libc::ENOBUFS || r == -libc::ECANCELED => false,
                _ => true,
            };
            if ended && conn.closing.is_none() {
                conn.closing =
                    Some(if result >= 0 { "peer closed the connection".to_string() } else { errno_text(result) });
            }
            ended || conn.closing.is_some()
        };
        if !ended && !bytes.is_empty() {
            self.deliver(id, bytes, at);
        }
        if let Some(buffer) = buffer {
            self.buffers.give_back(buffer);
        }
        if ended {
            self.finish_close(id);
        } else if !more {
            self.arm_recv(id);
        }
    }

    /// Hands received `bytes` (or, with none, the bytes waiting in the input buffer) to the
    /// handler, unless the connection is paused; keeps what it does not consume.
    fn deliver(&self, id: ConnId, bytes: &[u8], at: Option<Instant>) {
        let mut state = self.state.borrow_mut();
        let Some(index) = Self::index_of(&state, id) else { return };
        let conn = &mut state.conns[index];
        if (bytes.is_empty() && conn.input.is_empty()) || conn.closing.is_some() {
            return;
        }
        let received = if let Some(last) = at {
            let after = conn.last_received_at.replace(last);
            let after = after.map_or(super::idle_at(), |after| after.max(super::idle_at()));
            Some(Received { after: after.min(last), last })
        } else if bytes.is_empty() {
            // Resuming: the bytes kept while paused, dated by their receives.
            conn.paused_received.take()
        } else {
            conn.last_received_at = Some(Instant::now());
            None
        };
        let input_cap = self.limits.input_max + RECV_BUFFER_BYTES;
        if conn.paused {
            // Kept unseen until the connection resumes. Bounded without the input limit: only
            // what the kernel received before the receive's cancel (asked for when the
            // connection paused, submitted with this turn) lands here.
            append(&mut conn.input, bytes, input_cap);
            conn.paused_received = match (conn.paused_received, received) {
                (Some(kept), Some(new)) => Some(Received { after: kept.after.min(new.after), last: new.last }),
                (kept, new) => kept.or(new),
            };
            return;
        }
        self.received.set(received);
        if conn.input.is_empty() {
            // The common case: the handler reads the bytes where the kernel put them.
            drop(state);
            let consumed = self.handler().received(id, bytes);
            assert!(consumed <= bytes.len(), "a handler consumes only what it was given");
            state = self.state.borrow_mut();
            if consumed < bytes.len()
                && let Some(index) = Self::index_of(&state, id)
            {
                append(&mut state.conns[index].input, &bytes[consumed..], input_cap);
            }
        } else {
            append(&mut conn.input, bytes, input_cap);
            let input = std::mem::take(&mut conn.input);
            drop(state);
            let consumed = self.handler().received(id, &input);
            assert!(consumed <= input.len(), "a handler consumes only what it was given");
            state = self.state.borrow_mut();
            if let Some(index) = Self::index_of(&state, id) {
                let mut input = input;
                input.drain(..consumed);
                // A large frame's buffer is not kept by an idle connection.
                if input.is_empty() && input.capacity() > RECV_BUFFER_BYTES {
                    input = Vec::new();
                }
                state.conns[index].input = input;
            }
        }
        self.received.set(None);
        let Some(index) = Self::index_of(&state, id) else { return };
        let conn = &mut state.conns[index];
        if conn.input.len() > self.limits.input_max && conn.closing.is_none() {
            let reason = format!("a frame does not fit the input limit of {} bytes", self.limits.input_max);
            drop(state);
            self.close(id, &reason);
        }
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
        let pause = !conn.paused && conn.queued.len() + conn.sending.len() - conn.sent > self.limits.output_max;
        if pause {
            conn.paused = true;
        }
        if !conn.dirty {
            conn.dirty = true;
            state.dirty.push(index as u32);
        }
        drop(state);
        if pause {
            self.cancel_recv(index);
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
                    // Ends the armed receive, which would otherwise go on taking the peer's bytes.
                    shut_down(conn);
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
            // Bytes that came before the receive stopped were kept unseen: hand them over now.
            self.deliver(id, &[], None);
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
            shut_down(conn);
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
            (index, !conn.send_in_flight && conn.queued.is_empty())
        };
        let (index, drained) = drained;
        if drained {
            self.close(id, reason);
        } else {
            self.cancel_recv(index);
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
    /// A connection already closing (its peer hung up) whose last send is stuck is shut down,
    /// so that send ends and the connection is freed.
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
                        && (c.send_in_flight || (c.closing.is_none() && !c.queued.is_empty()))
                        && now.duration_since(c.send_progress_at) > stall
                })
                .map(|(i, c)| conn_id(i as u32, c.generation))
                .collect()
        };
        for &id in &stalled {
            let closing = {
                let state = self.state.borrow();
                let conn = &state.conns[id as u32 as usize];
                if conn.closing.is_some() {
                    shut_down(conn);
                }
                conn.closing.is_some()
            };
            if !closing {
                self.close(id, &format!("the peer read nothing for {} s", stall.as_secs()));
            }
        }
        stalled.len()
    }
}

impl CompletionHandler for Net {
    fn complete(&self, token: u64, result: i32, flags: u32) {
        let id = token & ((1 << 56) - 1);
        match token >> 56 {
            KIND_ACCEPT => self.on_accept(id as usize, result, flags),
            KIND_RECV => self.on_recv(id, result, flags),
            KIND_SEND => self.on_send(id, result),
            KIND_CANCEL => {}
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
    fn an_abstract_name_is_held_by_one_socket_and_names_its_holder() {
        let name = format!("strata-test/hold/{}/{:?}", std::process::id(), Instant::now());
        assert_eq!(abstract_name_holder(&name), None, "no one holds a fresh name");
        let held = hold_abstract_name(&name).unwrap();
        let again = hold_abstract_name(&name).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AddrInUse, "{again}");
        assert_eq!(abstract_name_holder(&name), Some(std::process::id() as i32));
        drop(held);
        // Closed, the name is free again at once (no TIME_WAIT for Unix sockets).
        let _held = hold_abstract_name(&name).unwrap();
    }

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
                let net = Net::install(NetLimits::default()).unwrap();
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

    /// Echoes whole frames (a 4-byte little-endian length, then that many bytes) and keeps a
    /// frame's beginning until the rest arrives.
    struct FrameEcho {
        net: RefCell<Option<Rc<Net>>>,
        closed: RefCell<Vec<String>>,
        /// Blocks the runtime this long at the first bytes, so other clients' bytes pile up.
        stall_once: std::cell::Cell<Option<Duration>>,
        /// Handler calls that consumed frames whose bytes came without a receive time.
        undated: std::cell::Cell<u64>,
    }

    impl NetHandler for FrameEcho {
        fn accepted(&self, _conn: ConnId, _listener: usize) {}
        fn received(&self, conn: ConnId, input: &[u8]) -> usize {
            let net = self.net.borrow().clone().unwrap();
            if let Some(stall) = self.stall_once.take() {
                std::thread::sleep(stall);
            }
            let mut consumed = 0;
            while let Some(len) = input[consumed..].first_chunk::<4>() {
                let end = consumed + 4 + u32::from_le_bytes(*len) as usize;
                if end > input.len() {
                    break;
                }
                net.send(conn, &input[consumed..end]);
                consumed = end;
            }
            if consumed > 0 && net.received().is_none() {
                self.undated.set(self.undated.get() + 1);
            }
            consumed
        }
        fn closed(&self, _conn: ConnId, reason: &str) {
            self.closed.borrow_mut().push(reason.to_string());
        }
    }

    fn frame_echo_server(
        limits: NetLimits,
        clients: usize,
        stall_once: Option<Duration>,
    ) -> (SocketAddr, std::thread::JoinHandle<(Vec<String>, NetStats, u64)>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            block_on(async move {
                let net = Net::install(limits).unwrap();
                let echo = Rc::new(FrameEcho {
                    net: RefCell::new(Some(net.clone())),
                    closed: RefCell::default(),
                    stall_once: std::cell::Cell::new(stall_once),
                    undated: std::cell::Cell::new(0),
                });
                net.set_handler(echo.clone());
                let listener = net.listen("127.0.0.1:0".parse().unwrap(), true).unwrap();
                tx.send(net.local_addr(listener)).unwrap();
                while echo.closed.borrow().len() < clients {
                    sleep(Duration::from_millis(1)).await;
                    net.close_stalled(Duration::from_secs(1));
                }
                net.stop_listening();
                let reasons = echo.closed.borrow().clone();
                echo.net.borrow_mut().take();
                (reasons, net.stats(), echo.undated.get())
            })
            .unwrap()
        });
        (rx.recv().unwrap(), server)
    }

    /// Frames larger than a provided buffer, split anywhere, from a client that writes far ahead
    /// of its reads: the connection pauses (its receive cancelled) and resumes many times, and
    /// every byte comes back in order.
    #[test]
    fn frames_across_buffers_and_pauses_come_back_whole() {
        let seed = std::env::var("STRATA_NET_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        println!("seed {seed} (replay with STRATA_NET_SEED={seed})");
        let mut rng = crate::SimRng::new(seed);
        let limits = NetLimits { input_max: 256 << 10, output_max: 32 << 10, connections_max: 16, recv_buffers: 8 };
        let (addr, server) = frame_echo_server(limits, 1, None);
        let mut sent = Vec::new();
        for _ in 0..400 {
            let len = match rng.below(4) {
                0 => rng.below(16),
                1 => rng.below(4096),
                2 => RECV_BUFFER_BYTES as u64 + rng.below(1000),
                _ => rng.below(200_000),
            } as usize;
            let start = sent.len();
            sent.extend_from_slice(&(len as u32).to_le_bytes());
            sent.resize(start + 4 + len, 0);
            rng.fill(&mut sent[start + 4..]);
        }
        let stream = std::net::TcpStream::connect(addr).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let chunks: Vec<usize> = (0..2000).map(|_| 1 + rng.below(70_000) as usize).collect();
        let to_send = sent.clone();
        let writing = std::thread::spawn(move || {
            let mut at = 0;
            for chunk in chunks.into_iter().cycle() {
                if at == to_send.len() {
                    break;
                }
                let end = (at + chunk).min(to_send.len());
                writer.write_all(&to_send[at..end]).unwrap();
                at = end;
            }
        });
        // Read slowly at first, so the server's output backs up and it pauses.
        std::thread::sleep(Duration::from_millis(200));
        let mut back = vec![0; sent.len()];
        let mut reader = stream;
        reader.read_exact(&mut back).unwrap();
        writing.join().unwrap();
        assert!(back == sent, "the echo differs from what was sent (seed {seed})");
        drop(reader);
        let (reasons, _, undated) = server.join().unwrap();
        assert_eq!(reasons, vec!["peer closed the connection".to_string()]);
        // Bytes kept while paused keep the time they were received.
        assert_eq!(undated, 0, "every handler call had its bytes dated (seed {seed})");
    }

    /// More connections receive at once than there are provided buffers (the server stalls at
    /// the first bytes while every client sends): receives that find none end with ENOBUFS and
    /// are armed again, and every client is answered.
    #[test]
    fn more_receives_than_buffers_are_all_served() {
        let clients = 64;
        let limits = NetLimits { connections_max: clients, recv_buffers: 4, ..NetLimits::default() };
        let (addr, server) = frame_echo_server(limits, clients, Some(Duration::from_millis(300)));
        let mut streams: Vec<_> = (0..clients).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        for round in 0..20u32 {
            for (i, stream) in streams.iter_mut().enumerate() {
                let mut frame = 8u32.to_le_bytes().to_vec();
                frame.extend_from_slice(&round.to_le_bytes());
                frame.extend_from_slice(&(i as u32).to_le_bytes());
                stream.write_all(&frame).unwrap();
            }
            for (i, stream) in streams.iter_mut().enumerate() {
                let mut frame = [0u8; 12];
                stream.read_exact(&mut frame).unwrap();
                assert_eq!(frame[4..8], round.to_le_bytes());
                assert_eq!(frame[8..12], (i as u32).to_le_bytes());
            }
        }
        drop(streams);
        let (reasons, stats, _) = server.join().unwrap();
        assert_eq!(reasons.len(), clients);
        assert!(reasons.iter().all(|r| r == "peer closed the connection"), "{reasons:?}");
        assert!(stats.receives_out_of_buffers > 0, "the stall left more receives than buffers");
    }

    /// A frame larger than the input limit closes its connection with a reason.
    #[test]
    fn a_frame_over_the_input_limit_closes_the_connection() {
        let limits = NetLimits { input_max: 64 << 10, ..NetLimits::default() };
        let (addr, server) = frame_echo_server(limits, 1, None);
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        let mut frame = (200_000u32).to_le_bytes().to_vec();
        frame.resize(4 + 200_000, 7);
        // The server closes midway; the write may fail with a reset.
        let _ = stream.write_all(&frame);
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        assert!(rest.is_empty());
        let (reasons, _, _) = server.join().unwrap();
        assert_eq!(reasons, vec![format!("a frame does not fit the input limit of {} bytes", 64 << 10)]);
    }

    /// A peer that hangs up its sending side while a large answer to it is stuck (it never
    /// reads): the connection is closing, and once the send has not moved for the stall time
    /// it is shut down and freed, with the hang-up as its reason.
    #[test]
    fn a_stuck_send_to_a_peer_that_hung_up_is_ended() {
        let limits = NetLimits { input_max: 16 << 20, output_max: 64 << 20, ..NetLimits::default() };
        let (addr, server) = frame_echo_server(limits, 1, None);
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        let len = 12 << 20;
        let mut frame = (len as u32).to_le_bytes().to_vec();
        frame.resize(4 + len, 7);
        let writer = stream.try_clone().unwrap();
        let writing = std::thread::spawn(move || {
            let mut writer = writer;
            writer.write_all(&frame).unwrap();
            // Long enough for the echo to fill the socket buffers and its next send to wait.
            std::thread::sleep(Duration::from_millis(300));
            writer.shutdown(std::net::Shutdown::Write).unwrap();
        });
        writing.join().unwrap();
        let started = Instant::now();
        let (reasons, _, _) = server.join().unwrap();
        assert_eq!(reasons, vec!["peer closed the connection".to_string()]);
        let elapsed = started.elapsed();
        assert!(
            elapsed > Duration::from_millis(500) && elapsed < Duration::from_secs(10),
            "freed after the stall time: {elapsed:?}"
        );
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    }

    /// Echoes each receive's bytes upper-cased, after a pause per receive (a slow handler, or a
    /// core that runs in slices); input starting with `S` first stalls the runtime, so that the
    /// other clients' bytes pile up for one turn.
    struct SlowEcho {
        net: RefCell<Option<Rc<Net>>>,
        closed: std::cell::Cell<usize>,
        per_receive: Duration,
        stall: Duration,
    }

    impl NetHandler for SlowEcho {
        fn accepted(&self, _conn: ConnId, _listener: usize) {}
        fn received(&self, conn: ConnId, input: &[u8]) -> usize {
            let net = self.net.borrow().clone().unwrap();
            std::thread::sleep(if input.starts_with(b"S") { self.stall } else { self.per_receive });
            net.send_with(conn, |out| out.extend(input.iter().map(u8::to_ascii_uppercase)));
            input.len()
        }
        fn closed(&self, _conn: ConnId, _reason: &str) {
            self.closed.set(self.closed.get() + 1);
        }
    }

    /// A turn that handles many receives (here 29 of 400 µs each) sends its answers as it goes,
    /// every millisecond or so, instead of all of them at its end: the first answers arrive
    /// milliseconds before the last.
    #[test]
    fn a_long_turn_sends_its_answers_as_it_goes() {
        const CLIENTS: usize = 30;
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            block_on(async move {
                let net = Net::install(NetLimits::default()).unwrap();
                let echo = Rc::new(SlowEcho {
                    net: RefCell::new(Some(net.clone())),
                    closed: std::cell::Cell::new(0),
                    per_receive: Duration::from_micros(400),
                    stall: Duration::from_millis(50),
                });
                net.set_handler(echo.clone());
                let listener = net.listen("127.0.0.1:0".parse().unwrap(), true).unwrap();
                tx.send(net.local_addr(listener)).unwrap();
                while echo.closed.get() < CLIENTS {
                    sleep(Duration::from_millis(1)).await;
                }
                net.stop_listening();
                echo.net.borrow_mut().take();
            })
            .unwrap()
        });
        let addr = rx.recv().unwrap();
        // Every connection accepted and answering before the measured turn.
        let mut clients: Vec<std::net::TcpStream> =
            (0..CLIENTS).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        for client in &mut clients {
            client.write_all(b"a").unwrap();
            let mut answer = [0u8; 1];
            client.read_exact(&mut answer).unwrap();
            assert_eq!(&answer, b"A");
        }
        // The first client stalls the runtime; the others' bytes arrive meanwhile and are all
        // handled in the next turn, each receive taking 400 µs.
        clients[0].write_all(b"S").unwrap();
        std::thread::sleep(Duration::from_millis(10));
        let readers: Vec<_> = clients
            .drain(1..)
            .map(|mut client| {
                client.write_all(b"x").unwrap();
                std::thread::spawn(move || {
                    let mut answer = [0u8; 1];
                    client.read_exact(&mut answer).unwrap();
                    assert_eq!(&answer, b"X");
                    Instant::now()
                })
            })
            .collect();
        let arrivals: Vec<Instant> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        let (first, last) = (arrivals.iter().min().unwrap(), arrivals.iter().max().unwrap());
        let spread = last.saturating_duration_since(*first);
        // About 11.6 ms of handling in one turn: sent at its end, the answers would arrive
        // within a fraction of a millisecond of each other.
        assert!(spread >= Duration::from_millis(4), "the turn's answers arrived within {spread:?}");
        drop(clients);
        server.join().unwrap();
    }
}
