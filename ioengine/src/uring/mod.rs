//! A single-threaded runtime on one io_uring ring: the per-core loop of `strata serve`.
//!
//! One thread, one ring, three kinds of work, all advanced by the ring's completions:
//! - **tasks**: futures of the engine (group commit, reads, maintenance) in two queues. The
//!   foreground queue runs first; the background queue runs when the foreground one is empty,
//!   plus one background task per turn so background work is never starved outright.
//! - **operations owned by futures** ([`Op`]): disk reads and writes, fdatasync, timers. The
//!   future is woken when its completion is reaped.
//! - **raw operations** owned by a [`CompletionHandler`] (the network's connection state
//!   machines): their completions are handed to the handler by token, with no task, waker or
//!   allocation per operation. Before every submit the handler's `flush` runs, so what arrived
//!   together is processed together and answered with one submit (per-core batching).
//!
//! Other threads reach a runtime only through a [`Remote`]: a queue of closures and an eventfd
//! the ring keeps a read armed on.
//!
//! Invariant: memory handed to the kernel stays alive until its completion is reaped, even when
//! the future that submitted it is dropped first (the operation's slot keeps it).
//! Invariant: only the thread that built a ring submits to it (`IORING_SETUP_SINGLE_ISSUER`).

mod buf;
mod disk;
pub mod net;

pub use buf::AlignedBuf;
pub use disk::{UringDisk, UringFile};

use io_uring::{IoUring, opcode, squeue, types};
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

/// Tokens of raw operations carry this bit in their `user_data`.
const RAW_TOKEN_BIT: u64 = 1 << 63;
/// The `user_data` of the eventfd read that wakes the ring for a [`Remote`].
const REMOTE_TOKEN: u64 = 1 << 62;
/// Tokens a [`CompletionHandler`] may use: below both reserved bits.
pub const RAW_TOKEN_MAX: u64 = REMOTE_TOKEN - 1;
/// A wait in the kernel shorter than this is not checked for idleness (see [`idle_at`]).
const IDLE_WAIT_MIN: std::time::Duration = std::time::Duration::from_micros(20);
/// Tasks polled before the ring is visited again, so completions are never starved by tasks.
const TASKS_PER_TURN_MAX: usize = 4096;
/// Entries queued by tasks are submitted once this many wait, without waiting for the turn to
/// end: while the core works through a batch of completions, the device keeps its queue deep.
const SUBMIT_EARLY_ENTRIES: u32 = 4;
/// A turn still handling completions this long after it began (or after its last send) sends
/// what it has answered so far. Turns of a core that keeps up are shorter, so it costs them a
/// clock read per `LONG_TURN_CHECK_EVERY` completions. Under a 20% CPU quota at 5x, sending
/// every 1 ms cut the admitted p99 by 31% and 45% in two pairs (bench.md, "Sends from long
/// turns").
const LONG_TURN_SEND_EVERY: std::time::Duration = std::time::Duration::from_millis(1);
const LONG_TURN_CHECK_EVERY: usize = 8;

/// Receives the completions of raw operations (see [`submit_raw`]).
pub trait CompletionHandler {
    /// A raw operation submitted with `token` completed with `result` (a byte count or
    /// `-errno`) and CQE `flags` (`IORING_CQE_F_MORE` while a multishot operation continues).
    fn complete(&self, token: u64, result: i32, flags: u32);
    /// The ring is about to be entered: queue what this turn produced.
    fn flush(&self) {}
}

/// Which queue a task runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Foreground,
    Background,
}

struct TaskSlot {
    generation: u32,
    future: Option<Pin<Box<dyn Future<Output = ()>>>>,
    priority: Priority,
    queued: bool,
    live: bool,
}

enum OpState {
    Free,
    Pending(Option<Waker>),
    Done(i32),
    /// The future was dropped before completion: the slot frees itself when the kernel is done.
    Abandoned,
}

struct OpSlot {
    generation: u32,
    state: OpState,
    keep: Option<Box<dyn Any>>,
}

struct Inner {
    ring: RefCell<IoUring>,
    ops: RefCell<Vec<OpSlot>>,
    ops_free: RefCell<Vec<u32>>,
    tasks: RefCell<Vec<TaskSlot>>,
    tasks_free: RefCell<Vec<u32>>,
    ready_foreground: RefCell<VecDeque<u64>>,
    ready_background: RefCell<VecDeque<u64>>,
    /// Completions reaped while a submission had to make room, dispatched at the next turn.
    reaped: RefCell<Vec<(u64, i32, u32)>>,
    handler: RefCell<Option<Rc<dyn CompletionHandler>>>,
    remote: Arc<RemoteShared>,
    remote_buf: Box<[u8; 8]>,
    /// Entries pushed since the last submit.
    unsubmitted: Cell<u32>,
    /// When the loop last woke from sleeping in the kernel with nothing to do (see [`idle_at`]).
    idle_at: Cell<std::time::Instant>,
    /// The thread's voluntary and involuntary context switches when last read.
    switches: Cell<(i64, i64)>,
    /// When the ring last returned to this thread (see [`turn_time`]).
    turn_at: Cell<std::time::Instant>,
    /// The wall clock and the monotonic clock read together, once in the turn that first needs
    /// them (see [`wall_to_instant`]); cleared when a turn begins.
    turn_clocks: Cell<Option<(std::time::SystemTime, std::time::Instant)>>,
}

struct RemoteShared {
    eventfd: OwnedFd,
    queue: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Inner>>> = const { RefCell::new(None) };
}

fn with_current<R>(f: impl FnOnce(&Rc<Inner>) -> R) -> R {
    let inner = CURRENT.with(|c| c.borrow().clone()).expect("called on a thread running a uring runtime");
    f(&inner)
}

/// True when the calling thread runs a uring runtime.
#[must_use]
pub fn is_current() -> bool {
    CURRENT.with(|c| c.borrow().is_some())
}

/// A handle other threads use to run closures on a runtime's thread.
#[derive(Clone)]
pub struct Remote {
    shared: Arc<RemoteShared>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Remote")
    }
}

impl Remote {
    /// Runs `f` on the runtime's thread at its next turn (never, if the runtime has stopped).
    pub fn run(&self, f: impl FnOnce() + Send + 'static) {
        self.shared.queue.lock().expect("remote queue lock is never poisoned").push(Box::new(f));
        #[expect(clippy::host_endian_bytes, reason = "an eventfd counter is a native-endian u64")]
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to an eventfd this handle keeps open.
        let rc = unsafe { libc::write(self.shared.eventfd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        debug_assert_eq!(rc, 8, "an eventfd write of 8 bytes succeeds unless the counter overflows");
    }
}

/// The handle of the current thread's runtime for other threads.
#[must_use]
pub fn remote() -> Remote {
    with_current(|inner| Remote { shared: inner.remote.clone() })
}

/// When the current runtime last woke from an idle moment: a wait in the kernel with nothing
/// to do, in which the thread slept and was not preempted (a thread throttled by a CPU quota
/// is frozen, not idle). Bytes that arrive while the thread sleeps wake it, and their receives
/// complete at once; so bytes a receive returns later arrived after this, while it was busy.
#[must_use]
pub(crate) fn idle_at() -> std::time::Instant {
    with_current(|inner| inner.idle_at.get())
}

/// When the current runtime's ring last returned to it: the start of the turn that is handling
/// completions now. A clock for what needs no finer grain than a turn (progress of sends), read
/// once per turn instead of once per event.
#[must_use]
pub fn turn_time() -> std::time::Instant {
    with_current(|inner| inner.turn_at.get())
}

/// A wall-clock time (as the kernel stamps received packets) as an `Instant`, by the two
/// clocks' offset: read once per turn rather than twice per receive, since the offset moves only
/// with clock adjustments. A time in the future (a clock step) maps to the clocks' reading.
#[must_use]
pub(crate) fn wall_to_instant(at: std::time::SystemTime) -> std::time::Instant {
    with_current(|inner| {
        let (wall, now) = inner.turn_clocks.get().unwrap_or_else(|| {
            let clocks = (std::time::SystemTime::now(), std::time::Instant::now());
            inner.turn_clocks.set(Some(clocks));
            clocks
        });
        let age = wall.duration_since(at).unwrap_or(std::time::Duration::ZERO);
        now.checked_sub(age).unwrap_or(now)
    })
}

/// Voluntary and involuntary context switches of the calling thread so far.
fn context_switches() -> (i64, i64) {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage for the calling thread.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &raw mut usage) };
    (usage.ru_nvcsw, usage.ru_nivcsw)
}

/// Why a runtime could not start.
#[derive(Debug)]
pub struct RuntimeError(pub String);

impl std::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RuntimeError {}

/// Submission queue entries per ring; the completion queue is four times larger.
pub const RING_ENTRIES_DEFAULT: u32 = 1024;

/// Runs `future` to completion on a new runtime on this thread, with tasks it spawns.
pub fn block_on<T: 'static>(future: impl Future<Output = T> + 'static) -> Result<T, RuntimeError> {
    block_on_with(RING_ENTRIES_DEFAULT, future)
}

/// [`block_on`] with a ring of `entries` submission entries.
pub fn block_on_with<T: 'static>(entries: u32, future: impl Future<Output = T> + 'static) -> Result<T, RuntimeError> {
    assert!(!is_current(), "one uring runtime per thread");
    let inner = Rc::new(Inner::new(entries)?);
    CURRENT.with(|c| *c.borrow_mut() = Some(inner.clone()));
    let output = Rc::new(RefCell::new(None));
    let slot = output.clone();
    spawn_with(Priority::Foreground, async move {
        let value = future.await;
        *slot.borrow_mut() = Some(value);
    });
    inner.arm_remote();
    let result = inner.run_until(|| output.borrow().is_some());
    // Drop every task while the runtime is still current (their drops may touch it), then
    // wait for the kernel to finish with memory that abandoned operations still hold.
    let futures: Vec<_> = inner.tasks.borrow_mut().iter_mut().filter_map(|t| t.future.take()).collect();
    drop(futures);
    inner.drain_abandoned();
    CURRENT.with(|c| *c.borrow_mut() = None);
    result?;
    let value = output.borrow_mut().take().expect("the main task finished");
    Ok(value)
}

/// Starts a new thread pinned to `cpu` that runs `make_future()` on its own runtime.
pub fn spawn_pinned<G, F, T>(
    name: &str,
    cpu: usize,
    make_future: G,
) -> std::io::Result<std::thread::JoinHandle<Result<T, RuntimeError>>>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new().name(name.to_string()).spawn(move || {
        pin_current_thread(cpu)?;
        block_on(make_future())
    })
}

/// Runs `make_future()` on a new runtime thread pinned to `cpu` and waits for its result.
pub fn run_pinned<G, F, T>(name: &str, cpu: usize, make_future: G) -> Result<T, RuntimeError>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let handle =
        spawn_pinned(name, cpu, make_future).map_err(|e| RuntimeError(format!("cannot start thread {name}: {e}")))?;
    handle.join().map_err(|_| RuntimeError(format!("thread {name} panicked")))?
}

/// The CPUs this process may run on (its affinity mask, as set by `taskset` or a cgroup
/// cpuset), ascending.
#[must_use]
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is a valid out-pointer of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) };
    if rc != 0 {
        return vec![0];
    }
    // SAFETY: CPU_ISSET reads inside the set for every cpu below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> Result<(), RuntimeError> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside the set for any cpu below CPU_SETSIZE, checked first.
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(RuntimeError(format!("CPU {cpu} is beyond what this system can address")));
    }
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) };
    if rc != 0 {
        return Err(RuntimeError(format!(
            "cannot pin to CPU {cpu}: {}; pick a CPU listed in /sys/devices/system/cpu/online",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

impl Inner {
    fn new(entries: u32) -> Result<Self, RuntimeError> {
        // Deferred task work runs completions' kernel-side work only when this thread enters
        // the ring, in a batch, instead of interrupting it at every network event.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(entries * 4)
            .build(entries)
            .or_else(|_| IoUring::builder().setup_single_issuer().setup_cqsize(entries * 4).build(entries))
            .or_else(|_| IoUring::builder().setup_cqsize(entries * 4).build(entries))
            .map_err(|e| {
                RuntimeError(format!(
                    "cannot create an io_uring ring of {entries} entries: {e}. Strata needs io_uring \
                     (Linux 6.0 or later, not disabled by kernel.io_uring_disabled or a seccomp profile)"
                ))
            })?;
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(RuntimeError(format!("cannot create an eventfd: {}", std::io::Error::last_os_error())));
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            ring: RefCell::new(ring),
            ops: RefCell::default(),
            ops_free: RefCell::default(),
            tasks: RefCell::default(),
            tasks_free: RefCell::default(),
            ready_foreground: RefCell::default(),
            ready_background: RefCell::default(),
            reaped: RefCell::default(),
            handler: RefCell::default(),
            remote: Arc::new(RemoteShared { eventfd, queue: Mutex::default() }),
            remote_buf: Box::new([0; 8]),
            unsubmitted: Cell::new(0),
            idle_at: Cell::new(std::time::Instant::now()),
            switches: Cell::new(context_switches()),
            turn_at: Cell::new(std::time::Instant::now()),
            turn_clocks: Cell::new(None),
        })
    }

    /// A pending operation slot holding `keep`: its id, for the entry's user data.
    fn new_op<T: 'static>(&self, keep: T) -> u64 {
        let free = self.ops_free.borrow_mut().pop();
        let mut ops = self.ops.borrow_mut();
        let index = match free {
            Some(index) => index,
            None => {
                ops.push(OpSlot { generation: 0, state: OpState::Free, keep: None });
                (ops.len() - 1) as u32
            }
        };
        let slot = &mut ops[index as usize];
        debug_assert!(matches!(slot.state, OpState::Free), "a free operation slot is free");
        slot.state = OpState::Pending(None);
        slot.keep = Some(Box::new(keep));
        u64::from(index) | (u64::from(slot.generation) << 32)
    }

    /// Queues `entries` side by side in the submission queue (submitting what is queued first,
    /// and parking its completions aside, if they do not all fit), so one submission carries
    /// them all.
    fn push_together(&self, entries: &[squeue::Entry]) {
        self.unsubmitted.set(self.unsubmitted.get() + entries.len() as u32);
        let mut ring = self.ring.borrow_mut();
        assert!(entries.len() <= ring.submission().capacity(), "the entries fit in the submission queue");
        loop {
            // SAFETY: callers guarantee every buffer an entry points to lives until its
            // completion is reaped (see `submit_op`, `submit_linked` and `submit_raw`).
            if unsafe { ring.submission().push_multiple(entries) }.is_ok() {
                return;
            }
            match ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => panic!("io_uring submit failed: {e}"),
            }
            let mut reaped = self.reaped.borrow_mut();
            for cqe in ring.completion() {
                reaped.push((cqe.user_data(), cqe.result(), cqe.flags()));
            }
        }
    }

    /// Pushes one entry (see [`Inner::push_together`]).
    fn push(&self, entry: &squeue::Entry) {
        self.push_together(std::slice::from_ref(entry));
    }

    fn arm_remote(&self) {
        let entry = opcode::Read::new(
            types::Fd(self.remote.eventfd.as_raw_fd()),
            self.remote_buf.as_ptr().cast_mut(),
            self.remote_buf.len() as u32,
        )
        .build()
        .user_data(REMOTE_TOKEN);
        // The buffer lives as long as `Inner`, which outlives the ring's use (see block_on).
        self.push(&entry);
    }

    fn schedule(&self, id: u64) {
        let (index, generation) = (id as u32, (id >> 32) as u32);
        let mut tasks = self.tasks.borrow_mut();
        let Some(task) = tasks.get_mut(index as usize) else { return };
        if !task.live || task.generation != generation || task.queued {
            return;
        }
        task.queued = true;
        match task.priority {
            Priority::Foreground => self.ready_foreground.borrow_mut().push_back(id),
            Priority::Background => self.ready_background.borrow_mut().push_back(id),
        }
    }

    fn poll_task(&self, id: u64) {
        let index = id as u32 as usize;
        let future = {
            let mut tasks = self.tasks.borrow_mut();
            let task = &mut tasks[index];
            if !task.live || task.generation != (id >> 32) as u32 {
                return;
            }
            task.queued = false;
            task.future.take()
        };
        let Some(mut future) = future else { return };
        let waker = task_waker(id);
        let mut cx = Context::from_waker(&waker);
        let done = future.as_mut().poll(&mut cx).is_ready();
        let mut tasks = self.tasks.borrow_mut();
        let task = &mut tasks[index];
        if done {
            task.live = false;
            task.generation = task.generation.wrapping_add(1);
            drop(tasks);
            drop(future);
            self.tasks_free.borrow_mut().push(index as u32);
        } else {
            task.future = Some(future);
        }
    }

    /// Submits every queued entry now, the last two being a linked pair: true if one system call
    /// took the pair whole (see [`submit_linked`]). Whatever is left after a short or failed
    /// submit goes with the turn's own submit, which reports errors.
    fn submit_pair_now(&self) -> bool {
        self.unsubmitted.set(0);
        let mut ring = self.ring.borrow_mut();
        // Entries still to go; the pair is the last two.
        let mut queued = ring.submission().len();
        loop {
            match ring.submit() {
                // The call took the pair, and everything before it, whole.
                Ok(taken) if taken >= queued => return true,
                // It stopped between the pair's entries (or took nothing): the link may not hold.
                Ok(taken) if taken == 0 || taken + 1 == queued => return false,
                // It stopped before the pair: submit the rest.
                Ok(taken) => queued -= taken,
                Err(_) => return false,
            }
        }
    }

    /// Submits every queued entry now (an error is left to the turn's own submit to report).
    fn submit_now(&self) {
        self.unsubmitted.set(0);
        let _ = self.ring.borrow_mut().submit();
    }

    /// Submits queued entries now if enough are waiting.
    fn submit_early(&self) {
        if self.unsubmitted.get() >= SUBMIT_EARLY_ENTRIES {
            self.submit_now();
        }
    }

    fn run_tasks(&self) {
        let mut polled = 0;
        while polled < TASKS_PER_TURN_MAX {
            let Some(id) = self.ready_foreground.borrow_mut().pop_front() else { break };
            self.poll_task(id);
            self.submit_early();
            polled += 1;
        }
        let background_budget = if self.ready_foreground.borrow().is_empty() { TASKS_PER_TURN_MAX } else { 1 };
        for _ in 0..background_budget {
            let Some(id) = self.ready_background.borrow_mut().pop_front() else { break };
            self.poll_task(id);
        }
    }

    fn has_ready(&self) -> bool {
        !self.ready_foreground.borrow().is_empty() || !self.ready_background.borrow().is_empty()
    }

    fn run_until(&self, done: impl Fn() -> bool) -> Result<(), RuntimeError> {
        let mut completions = Vec::with_capacity(256);
        loop {
            self.run_tasks();
            if done() {
                return Ok(());
            }
            let handler = self.handler.borrow().clone();
            if let Some(handler) = &handler {
                // What the tasks queued (block reads and writes, timers) goes to the kernel
                // before the turn's socket sends: submitted behind them, a block request waits
                // in the submission's plug until every send has run.
                if self.unsubmitted.get() > 0 {
                    self.submit_now();
                }
                handler.flush();
            }
            let wait = !self.has_ready() && self.reaped.borrow().is_empty();
            {
                self.unsubmitted.set(0);
                let mut ring = self.ring.borrow_mut();
                let result = if wait {
                    let before = std::time::Instant::now();
                    let result = ring.submit_and_wait(1);
                    let after = std::time::Instant::now();
                    self.turn_at.set(after);
                    self.turn_clocks.set(None);
                    // A wait this long may have been idle: it was if the thread slept and was not
                    // preempted (or frozen by a CPU quota) since the switches were last read.
                    // Shorter waits are not worth the system call; an old preemption counted
                    // against a later wait only makes the idle moment older, never newer.
                    if after.saturating_duration_since(before) >= IDLE_WAIT_MIN {
                        let (slept, preempted) = context_switches();
                        let (slept_before, preempted_before) = self.switches.replace((slept, preempted));
                        if slept > slept_before && preempted == preempted_before {
                            self.idle_at.set(after);
                        }
                    }
                    result
                } else {
                    let result = ring.submit();
                    self.turn_at.set(std::time::Instant::now());
                    self.turn_clocks.set(None);
                    result
                };
                match result {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) || e.raw_os_error() == Some(libc::EBUSY) => {}
                    Err(e) => return Err(RuntimeError(format!("io_uring submit failed: {e}"))),
                }
                completions.append(&mut self.reaped.borrow_mut());
                for cqe in ring.completion() {
                    completions.push((cqe.user_data(), cqe.result(), cqe.flags()));
                }
            }
            // A long turn (a flood of requests, or a core taken away by a CPU quota or a busier
            // thread) sends what it has answered every `LONG_TURN_SEND_EVERY`, rather than
            // holding every answer to its end.
            let mut sent_at = self.turn_at.get();
            for (i, (user_data, result, flags)) in completions.drain(..).enumerate() {
                self.dispatch(user_data, result, flags, handler.as_deref());
                if let Some(handler) = handler.as_deref().filter(|_| i % LONG_TURN_CHECK_EVERY == 0) {
                    let now = std::time::Instant::now();
                    if now.saturating_duration_since(sent_at) >= LONG_TURN_SEND_EVERY {
                        handler.flush();
                        self.submit_now();
                        sent_at = now;
                    }
                }
            }
        }
    }

    fn dispatch(&self, user_data: u64, result: i32, flags: u32, handler: Option<&dyn CompletionHandler>) {
        if user_data & RAW_TOKEN_BIT != 0 {
            let handler = handler.expect("raw operations are submitted only with a completion handler set");
            handler.complete(user_data & !RAW_TOKEN_BIT, result, flags);
            return;
        }
        if user_data == REMOTE_TOKEN {
            let jobs = std::mem::take(&mut *self.remote.queue.lock().expect("remote queue lock is never poisoned"));
            self.arm_remote();
            for job in jobs {
                job();
            }
            return;
        }
        let (index, generation) = (user_data as u32 as usize, (user_data >> 32) as u32);
        let mut ops = self.ops.borrow_mut();
        let slot = &mut ops[index];
        assert_eq!(slot.generation, generation, "a completion matches the operation that submitted it");
        match std::mem::replace(&mut slot.state, OpState::Done(result)) {
            OpState::Pending(waker) => {
                drop(ops);
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            OpState::Abandoned => {
                let keep = free_op_slot(slot);
                drop(ops);
                self.ops_free.borrow_mut().push(index as u32);
                drop(keep);
            }
            OpState::Free | OpState::Done(_) => unreachable!("an operation completes once"),
        }
    }

    /// Waits until the kernel has finished every operation whose future was dropped.
    fn drain_abandoned(&self) {
        loop {
            let abandoned = self.ops.borrow().iter().any(|op| matches!(op.state, OpState::Abandoned));
            if !abandoned {
                return;
            }
            // Completions parked while the queue was full come first: waiting for them in the
            // kernel would wait for ever.
            let mut cqes: Vec<_> =
                self.reaped.borrow_mut().drain(..).map(|(user_data, result, _)| (user_data, result)).collect();
            if cqes.is_empty() {
                let mut ring = self.ring.borrow_mut();
                if ring.submit_and_wait(1).is_err() {
                    // The ring is gone or broken: leak what the kernel might still touch.
                    for op in self.ops.borrow_mut().iter_mut() {
                        if let Some(keep) = op.keep.take() {
                            std::mem::forget(keep);
                        }
                    }
                    return;
                }
                cqes.extend(ring.completion().map(|c| (c.user_data(), c.result())));
            }
            for (user_data, _) in cqes {
                if user_data & (RAW_TOKEN_BIT | REMOTE_TOKEN) != 0 {
                    continue;
                }
                let mut ops = self.ops.borrow_mut();
                let slot = &mut ops[user_data as u32 as usize];
                if matches!(slot.state, OpState::Abandoned) {
                    let keep = free_op_slot(slot);
                    drop(ops);
                    drop(keep);
                } else {
                    slot.state = OpState::Done(0);
                }
            }
        }
    }
}

fn free_op_slot(slot: &mut OpSlot) -> Option<Box<dyn Any>> {
    slot.state = OpState::Free;
    slot.generation = slot.generation.wrapping_add(1) & 0x3fff_ffff;
    slot.keep.take()
}

const TASK_WAKER_VTABLE: RawWakerVTable =
    RawWakerVTable::new(|data| RawWaker::new(data, &TASK_WAKER_VTABLE), wake_task, wake_task, |_| {});

fn wake_task(data: *const ()) {
    let id = data as usize as u64;
    // A waker used on a thread without this runtime has nothing to wake: that would be a bug
    // (other threads go through `Remote`), so it is caught in debug builds.
    let woke = CURRENT.with(|c| c.borrow().as_ref().map(|inner| inner.schedule(id)).is_some());
    debug_assert!(woke, "a task waker was used off its runtime's thread");
}

fn task_waker(id: u64) -> Waker {
    // SAFETY: the vtable's functions treat the data pointer as a plain integer (task index and
    // generation), never dereference it, and wake through the thread-local runtime, so the
    // RawWaker contract (clone/wake/drop valid for any copy) holds.
    unsafe { Waker::from_raw(RawWaker::new(id as usize as *const (), &TASK_WAKER_VTABLE)) }
}

/// The result of a spawned task.
pub struct JoinHandle<T> {
    state: Rc<RefCell<(Option<T>, Option<Waker>)>>,
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinHandle")
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut state = self.state.borrow_mut();
        if let Some(value) = state.0.take() {
            return Poll::Ready(value);
        }
        state.1 = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Starts `future` as a foreground task of the current runtime.
pub fn spawn<T: 'static>(future: impl Future<Output = T> + 'static) -> JoinHandle<T> {
    spawn_in(Priority::Foreground, future)
}

/// Starts `future` in the given queue of the current runtime.
pub fn spawn_in<T: 'static>(priority: Priority, future: impl Future<Output = T> + 'static) -> JoinHandle<T> {
    let state: Rc<RefCell<(Option<T>, Option<Waker>)>> = Rc::new(RefCell::new((None, None)));
    let sender = state.clone();
    spawn_with(priority, async move {
        let value = future.await;
        let waker = {
            let mut state = sender.borrow_mut();
            state.0 = Some(value);
            state.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    });
    JoinHandle { state }
}

/// Starts `future` as a task whose output nobody waits for.
pub fn spawn_detached(priority: Priority, future: impl Future<Output = ()> + 'static) {
    spawn_with(priority, future);
}

fn spawn_with(priority: Priority, future: impl Future<Output = ()> + 'static) {
    with_current(|inner| {
        let future: Pin<Box<dyn Future<Output = ()>>> = Box::pin(future);
        let free = inner.tasks_free.borrow_mut().pop();
        let mut tasks = inner.tasks.borrow_mut();
        let index = match free {
            Some(index) => index,
            None => {
                tasks.push(TaskSlot { generation: 0, future: None, priority, queued: false, live: false });
                (tasks.len() - 1) as u32
            }
        };
        let task = &mut tasks[index as usize];
        debug_assert!(!task.live, "a free task slot holds no task");
        task.future = Some(future);
        task.priority = priority;
        task.live = true;
        task.queued = false;
        let id = u64::from(index) | (u64::from(task.generation) << 32);
        drop(tasks);
        inner.schedule(id);
    });
}

/// Lets other ready tasks run before continuing.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// An operation submitted by a future: resolves to the kernel's result and what it kept alive.
pub struct Op<T: 'static> {
    id: Option<u64>,
    _keep: std::marker::PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Op<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Op").field("id", &self.id).finish()
    }
}

/// Submits `entry` on the current runtime; `keep` is held until the kernel completes it.
///
/// # Safety
/// Every pointer in `entry` must point into heap memory owned by `keep` (which may move, its
/// heap allocations do not) or into memory that outlives the runtime.
pub unsafe fn submit_op<T: 'static>(entry: squeue::Entry, keep: T) -> Op<T> {
    with_current(|inner| {
        let id = inner.new_op(keep);
        inner.push(&entry.user_data(id));
        Op { id: Some(id), _keep: std::marker::PhantomData }
    })
}

/// Submits `first` linked to `second` (`IOSQE_IO_LINK`): the kernel starts `second` only once
/// `first` has completed in full, without waiting for this thread to see `first`'s completion,
/// and cancels it (`-ECANCELED`) if `first` failed or came up short. Both go to the kernel at
/// once, in a submission of their own (with whatever was queued before them): a block write
/// submitted with a turn's socket sends behind it is held in the submission's block plug until
/// they have all run (200–340 µs under load in a trace, longer than the device took for the
/// write).
///
/// A link does not span two `io_uring_enter` calls, and the kernel may take fewer entries than
/// were queued (when it cannot allocate a request, or an earlier entry is malformed). The third
/// value is true only if one call took both entries, so the link held; when false, `second` may
/// have started before `first` completed, and a caller that needs the order must do `second`'s
/// work again after `first` completes.
///
/// # Safety
/// As [`submit_op`], for each entry and what it keeps.
pub unsafe fn submit_linked<A: 'static, B: 'static>(
    first: squeue::Entry,
    keep_first: A,
    second: squeue::Entry,
    keep_second: B,
) -> (Op<A>, Op<B>, bool) {
    with_current(|inner| {
        let (a, b) = (inner.new_op(keep_first), inner.new_op(keep_second));
        inner.push_together(&[first.user_data(a).flags(squeue::Flags::IO_LINK), second.user_data(b)]);
        let linked = inner.submit_pair_now();
        (
            Op { id: Some(a), _keep: std::marker::PhantomData },
            Op { id: Some(b), _keep: std::marker::PhantomData },
            linked,
        )
    })
}

impl<T: 'static> Future for Op<T> {
    type Output = (i32, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(i32, T)> {
        let id = self.id.expect("an operation is not polled after it completed");
        let index = id as u32 as usize;
        let ready = with_current(|inner| {
            let mut ops = inner.ops.borrow_mut();
            let slot = &mut ops[index];
            match &mut slot.state {
                OpState::Done(result) => {
                    let result = *result;
                    let keep = free_op_slot(slot).expect("an operation keeps its memory until polled");
                    drop(ops);
                    inner.ops_free.borrow_mut().push(index as u32);
                    let keep = keep.downcast::<T>().expect("an operation keeps the type it was given");
                    Some((result, *keep))
                }
                OpState::Pending(waker) => {
                    if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *waker = Some(cx.waker().clone());
                    }
                    None
                }
                OpState::Free | OpState::Abandoned => unreachable!("a live operation's slot is pending or done"),
            }
        });
        match ready {
            Some(value) => {
                self.id = None;
                Poll::Ready(value)
            }
            None => Poll::Pending,
        }
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(id) = self.id else { return };
        let Some(inner) = CURRENT.with(|c| c.borrow().clone()) else {
            // The runtime is gone; so is its ring, which waited for its operations.
            return;
        };
        let index = id as u32 as usize;
        let mut ops = inner.ops.borrow_mut();
        let slot = &mut ops[index];
        if matches!(slot.state, OpState::Done(_)) {
            let keep = free_op_slot(slot);
            drop(ops);
            inner.ops_free.borrow_mut().push(index as u32);
            drop(keep);
        } else {
            slot.state = OpState::Abandoned;
        }
    }
}

/// Submits a raw operation whose completion goes to the handler set by
/// [`set_completion_handler`] with `token` (at most [`RAW_TOKEN_MAX`]).
///
/// # Safety
/// Every pointer in `entry` must stay valid until the handler receives the last completion for
/// `token` (for a multishot operation: one without `IORING_CQE_F_MORE`).
pub unsafe fn submit_raw(entry: squeue::Entry, token: u64) {
    assert!(token <= RAW_TOKEN_MAX, "raw tokens stay below the reserved bits");
    with_current(|inner| inner.push(&entry.user_data(token | RAW_TOKEN_BIT)));
}

/// Asks the kernel to cancel the raw operation submitted with `target` (a multishot operation
/// then ends with `-ECANCELED`, or with its last completion if it was ending anyway). The
/// cancel's own completion comes to the handler with `token`.
pub fn cancel_raw(target: u64, token: u64) {
    assert!(target <= RAW_TOKEN_MAX && token <= RAW_TOKEN_MAX, "raw tokens stay below the reserved bits");
    let entry = opcode::AsyncCancel::new(target | RAW_TOKEN_BIT).build();
    with_current(|inner| inner.push(&entry.user_data(token | RAW_TOKEN_BIT)));
}

/// Registers a ring of provided buffers with the current runtime's ring as group `group`
/// (`IORING_REGISTER_PBUF_RING`, Linux 5.19).
///
/// # Safety
/// `ring` must point at `entries` page-aligned `BufRingEntry`s that stay valid, as must every
/// buffer they name, for as long as the kernel may use them: until the ring is gone.
pub unsafe fn register_buf_ring(ring: *const types::BufRingEntry, entries: u16, group: u16) -> std::io::Result<()> {
    with_current(|inner| {
        let ring_fd = inner.ring.borrow();
        // SAFETY: the caller vouches for the ring's memory and lifetime.
        unsafe { ring_fd.submitter().register_buf_ring_with_flags(ring as u64, entries, group, 0) }
    })
}

/// Sets the receiver of raw operations' completions on the current runtime.
pub fn set_completion_handler(handler: Rc<dyn CompletionHandler>) {
    with_current(|inner| *inner.handler.borrow_mut() = Some(handler));
}

/// Waits `duration` on the ring's timer.
pub async fn sleep(duration: std::time::Duration) {
    let timespec = Box::new(types::Timespec::new().sec(duration.as_secs()).nsec(duration.subsec_nanos()));
    let entry = opcode::Timeout::new(&raw const *timespec).build();
    // SAFETY: the entry points only at the boxed timespec, which the operation keeps.
    let (result, _) = unsafe { submit_op(entry, timespec) }.await;
    debug_assert!(result == -libc::ETIME || result >= 0, "a timeout ends by expiring, got {result}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn tasks_run_and_join() {
        let value = block_on(async {
            let a = spawn(async { 20 });
            let b = spawn_in(Priority::Background, async { 22 });
            a.await + b.await
        })
        .unwrap();
        assert_eq!(value, 42);
    }

    #[test]
    fn sleep_waits_about_its_duration() {
        let elapsed = block_on(async {
            let start = Instant::now();
            sleep(Duration::from_millis(20)).await;
            start.elapsed()
        })
        .unwrap();
        assert!(elapsed >= Duration::from_millis(20), "slept {elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "slept {elapsed:?}");
    }

    #[test]
    fn many_timers_complete_in_order_of_duration() {
        let order = block_on(async {
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut handles = Vec::new();
            for ms in [30u64, 10, 20] {
                let order = order.clone();
                handles.push(spawn(async move {
                    sleep(Duration::from_millis(ms)).await;
                    order.borrow_mut().push(ms);
                }));
            }
            for h in handles {
                h.await;
            }
            order.borrow().clone()
        })
        .unwrap();
        assert_eq!(order, vec![10, 20, 30]);
    }

    #[test]
    fn dropped_timer_is_reaped_before_the_runtime_ends() {
        block_on(async {
            let op = sleep(Duration::from_millis(5));
            // Poll once so the timeout is submitted, then drop it mid-flight.
            let mut op = Box::pin(op);
            let waker = task_waker(u64::MAX);
            let _ = op.as_mut().poll(&mut Context::from_waker(&waker));
            drop(op);
        })
        .unwrap();
    }

    #[test]
    fn remote_runs_closures_on_the_runtime_thread() {
        let got = block_on(async {
            let remote = remote();
            let (tx, rx) = std::sync::mpsc::channel();
            let thread = std::thread::spawn(move || {
                remote.run(move || tx.send(std::thread::current().id()).unwrap());
            });
            loop {
                if let Ok(id) = rx.try_recv() {
                    thread.join().unwrap();
                    return id;
                }
                sleep(Duration::from_millis(1)).await;
            }
        })
        .unwrap();
        assert_eq!(got, std::thread::current().id());
    }

    #[test]
    fn background_tasks_run_after_foreground_ones() {
        let order = block_on(async {
            let order = Rc::new(RefCell::new(Vec::new()));
            let (a, b) = (order.clone(), order.clone());
            let bg = spawn_in(Priority::Background, async move { a.borrow_mut().push("background") });
            let fg = spawn(async move { b.borrow_mut().push("foreground") });
            fg.await;
            bg.await;
            order.borrow().clone()
        })
        .unwrap();
        assert_eq!(order, vec!["foreground", "background"]);
    }
}
