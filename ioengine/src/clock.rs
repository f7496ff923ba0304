//! Wall-clock time in microseconds, real or simulated.

use std::cell::Cell;
use std::rc::Rc;

/// A source of wall-clock microseconds since the Unix epoch.
pub trait Clock: Clone + 'static {
    fn now_us(&self) -> u64;
}

/// The system's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
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
}
