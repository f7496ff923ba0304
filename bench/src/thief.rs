//! A CPU thief: shrinks a core for the server on it in short slices, where a CFS quota can only
//! freeze it for milliseconds.
//!
//! The kernel grants no CFS quota under 1 ms, so a quota of 20% freezes a busy server for 4 ms
//! in every 5: every request that arrives then waits out the freeze, and no reply, not even a
//! refusal, can come sooner. The thief runs on the server's core at real-time priority
//! (`SCHED_FIFO`, which preempts any normal task at once) and alternates: busy for
//! `percent` of each `period`, asleep for the rest. The server gets the core in the gaps, so it
//! is held to about `100 - percent`% in slices of a fraction of a millisecond.

use crate::servers::strata_bench_binary;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Spins for `percent` of every `period` and sleeps the rest, until its parent (the bench that
/// started it) is gone, so a bench killed outright leaves no real-time spinner behind. The
/// caller is expected to be pinned and real-time: [`Thief::start`] runs it so.
pub fn run(percent: u32, period: Duration) -> Result<String, String> {
    let busy = period * percent.min(100) / 100;
    let parent = std::os::unix::process::parent_id();
    let mut period_start = Instant::now();
    loop {
        if std::os::unix::process::parent_id() != parent {
            return Ok(String::new());
        }
        let busy_until = period_start + busy;
        while Instant::now() < busy_until {
            std::hint::spin_loop();
        }
        let next = period_start + period;
        let now = Instant::now();
        if next > now {
            // A real-time task's timer slack is zero: it wakes on time, give or take the
            // timer's latency.
            std::thread::sleep(next - now);
        }
        // The schedule holds through a wake-up up to half a period late (the next busy slice
        // is that much shorter); a later one drops the lost time rather than catching it up.
        period_start = next.max(Instant::now() - period / 2);
    }
}

/// A running thief process, stopped when dropped.
#[derive(Debug)]
pub struct Thief {
    child: Child,
}

impl Thief {
    /// Starts a thief of `percent` of `cpu` in slices of `period`, at real-time priority (root).
    pub fn start(cpu: usize, percent: u32, period: Duration) -> Result<Self, String> {
        let me = strata_bench_binary()?;
        let child = Command::new("chrt")
            .args(["--fifo", "1", "taskset", "-c", &cpu.to_string()])
            .arg(me)
            .args(["cpu-thief", "--percent", &percent.to_string(), "--period-us"])
            .arg(period.as_micros().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the CPU thief: {e} (chrt and taskset are in util-linux)"))?;
        let mut thief = Self { child };
        std::thread::sleep(Duration::from_millis(100));
        if let Some(status) = thief.child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("the CPU thief exited at once ({status}): real-time priority needs root"));
        }
        Ok(thief)
    }
}

impl Drop for Thief {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
