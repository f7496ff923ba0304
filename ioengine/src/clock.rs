//! Wall-clock time in microseconds, real or simulated.

use std::cell::Cell;
use std::rc::Rc;

/// A source of wall-clock microseconds since the Unix epoch.
pub trait Clock: Clone + 'static {
    fn now_us(&self) -> u64;

    /// Waits about `us` microseconds (used to pace background work).
    fn sleep_us(&self, us: u64) -> impl std::future::Future<Output = ()>;
}

/// The system's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The wall clock in microseconds, without a clock value at hand.
    #[must_use]
    pub fn now_us_static() -> u64 {
        Self.now_us()
    }
}

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
    }

    /// Must run inside a uring runtime or a glommio executor.
    fn sleep_us(&self, us: u64) -> impl std::future::Future<Output = ()> {
        let duration = std::time::Duration::from_micros(us);
        let on_uring = crate::uring::is_current();
        async move {
            if on_uring {
                crate::uring::sleep(duration).await;
            } else {
                crate::executor::sleep(duration).await;
            }
        }
    }
}

/// A clock the simulation sets; it may even go backwards, as real clocks do after NTP steps.
#[derive(Debug, Clone, Default)]
pub struct SimClock {
    now_us: Rc<Cell<u64>>,
}

impl SimClock {
    #[must_use]
    pub fn new(now_us: u64) -> Self {
        Self { now_us: Rc::new(Cell::new(now_us)) }
    }

    pub fn set(&self, now_us: u64) {
        self.now_us.set(now_us);
    }
}

impl Clock for SimClock {
    fn now_us(&self) -> u64 {
        self.now_us.get()
    }

    /// Simulated time passes at once; the caller still yields to other tasks once.
    fn sleep_us(&self, us: u64) -> impl std::future::Future<Output = ()> {
        self.now_us.set(self.now_us.get().saturating_add(us));
        YieldOnce(false)
    }
}

/// Returns `Pending` once (waking itself), then `Ready`.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
