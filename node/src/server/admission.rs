//! FastReject: decides, from a request's header alone, whether the shard can start it in time.
//!
//! Three signals. As in WeChat's DAGOR, the queueing delay requests see between arrival and
//! start (a moving average, updated as requests start), and the work in flight (requests and
//! bytes). And the wait in the sockets: a core that falls behind queues requests in its
//! sockets' receive buffers, where only the kernel's receive timestamps show them. While the
//! average socket wait of the last whole interval exceeds a priority's share of the target
//! (`queue-delay-max`), requests of that priority that waited longer than the share are refused
//! at once, from the header alone; a single stall (a scheduling hiccup) passes, since its
//! backlog is gone by the next interval. Each priority gets a share of the limits: the lowest
//! priority is refused first, the highest last. A refusal costs a header decode and a 32-byte answer: no
//! body parsing, no allocation.
//!
//! Invariant: an admitted request is counted in flight until `finish` is called for it, exactly
//! once.

use std::time::{Duration, Instant};
use strata_format::protocol::Priority;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many requests in flight for this priority.
    InflightRequests,
    /// Too many request bytes in flight for this priority.
    InflightBytes,
    /// Requests wait longer than this priority (or the request's deadline) allows.
    QueueDelay,
    /// The request's deadline passed before it could start.
    DeadlinePassed,
    /// The sockets hold a standing queue and the request waited in one longer than its
    /// priority allows.
    SocketWait,
}

impl Refusal {
    pub const ALL: [Self; 5] =
        [Self::InflightRequests, Self::InflightBytes, Self::QueueDelay, Self::DeadlinePassed, Self::SocketWait];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::InflightRequests => "inflight_requests",
            Self::InflightBytes => "inflight_bytes",
            Self::QueueDelay => "queue_delay",
            Self::DeadlinePassed => "deadline_passed",
            Self::SocketWait => "socket_wait",
        }
    }
}

/// What to do with a request that passed the header checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it now (it is counted in flight).
    Start,
    /// Queue it: it is expected to start within its budget once requests in flight finish.
    Queue,
    /// Refuse it now, with a retry hint.
    Refuse(Refusal, Duration),
}

/// Limits of one shard.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    pub inflight_requests_max: usize,
    pub inflight_bytes_max: usize,
    /// Requests are shed when the average queueing delay passes this (scaled by priority).
    pub queue_delay_max: Duration,
    /// The least retry hint given with a refusal.
    pub retry_after_min: Duration,
}

/// The share of each limit a priority may use, highest priority first.
const PRIORITY_SHARE_PERCENT: [usize; 4] = [100, 85, 70, 55];

/// Weight of a new queueing-delay sample in the moving average, as 1/N.
const DELAY_EWMA_WEIGHT: u64 = 16;

/// The sockets hold a backlog while the average wait of the requests read in the last whole
/// interval this long, or in the current one so far, is above target. Several CFS periods and
/// scheduler ticks, so that requests which merely waited out one freeze of the core do not
/// raise the average above a target set above the freezes.
const SOCKET_WAIT_INTERVAL: Duration = Duration::from_millis(20);

/// Requests read in the current interval before its own average can mark a backlog: enough
/// that a few old requests alone do not. Judged only by the last whole interval, a backlog that
/// built within one interval went unseen until the next, and its requests were served however
/// old: with clients backing off, whose rate swings within an interval, the admitted p99 at 5x
/// was twice what it is with this (bench.md, "socket-wait backlog within the interval").
const BACKLOG_SAMPLES_MIN: u64 = 32;

/// The admission state of one shard.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    inflight_requests: usize,
    inflight_bytes: usize,
    /// Moving average of arrival-to-start delay, µs.
    delay_avg_us: u64,
    /// Requests' wait in the sockets in the current interval: the sum (µs) and the count, and
    /// when the interval began.
    interval_wait_us: u64,
    interval_requests: u64,
    interval_started: Instant,
    /// The average wait of the last whole interval, µs: above target, the sockets hold a backlog.
    socket_wait_avg_us: u64,
    /// Moving average of start-to-finish time of requests, µs.
    service_avg_us: u64,
}

impl Admission {
    #[must_use]
    pub fn new(limits: AdmissionLimits) -> Self {
        assert!(limits.inflight_requests_max > 0 && limits.inflight_bytes_max > 0, "limits are positive");
        Self {
            limits,
            inflight_requests: 0,
            inflight_bytes: 0,
            delay_avg_us: 0,
            interval_wait_us: 0,
            interval_requests: 0,
            interval_started: Instant::now(),
            socket_wait_avg_us: 0,
            service_avg_us: 0,
        }
    }

    /// Decides for a request of `bytes` with `priority` and a budget of `deadline_us` (0: none),
    /// with `queued_ahead` requests of its priority or higher already waiting: start it now,
    /// queue it (when it should still start within its budget), or refuse it.
    pub fn decide(&mut self, priority: Priority, bytes: usize, deadline_us: u32, queued_ahead: usize) -> Decision {
        if self.inflight_requests == 0 && queued_ahead == 0 {
            // Nothing is queued, so a request starts at once, whatever the average remembers.
            self.delay_avg_us = 0;
        }
        let share = PRIORITY_SHARE_PERCENT[priority.index()];
        let slots = (self.limits.inflight_requests_max * share / 100).max(1);
        let bytes_max = self.limits.inflight_bytes_max * share / 100;
        let delay_max_us = self.limits.queue_delay_max.as_micros() as u64 * share as u64 / 100;
        let budget_us = if deadline_us == 0 { u64::MAX } else { u64::from(deadline_us) };
        if self.delay_avg_us > delay_max_us || self.delay_avg_us >= budget_us {
            return Decision::Refuse(Refusal::QueueDelay, self.retry_after());
        }
        if queued_ahead == 0 && self.inflight_requests < slots && self.inflight_bytes + bytes <= bytes_max {
            self.inflight_requests += 1;
            self.inflight_bytes += bytes;
            return Decision::Start;
        }
        if self.inflight_bytes + bytes > bytes_max && self.inflight_requests == 0 {
            return Decision::Refuse(Refusal::InflightBytes, self.retry_after());
        }
        // It waits for the requests ahead of it: about one service time per slot's worth.
        let expected_wait_us = (queued_ahead as u64 + 1) * self.service_avg_us.max(1) / slots as u64;
        if expected_wait_us > delay_max_us.min(budget_us) {
            let retry = Duration::from_micros(expected_wait_us).max(self.limits.retry_after_min);
            return Decision::Refuse(Refusal::InflightRequests, retry);
        }
        Decision::Queue
    }

    /// A queued request may start now if a slot of its priority is free.
    pub fn try_start_queued(&mut self, priority: Priority, bytes: usize) -> bool {
        let share = PRIORITY_SHARE_PERCENT[priority.index()];
        let slots = (self.limits.inflight_requests_max * share / 100).max(1);
        let bytes_max = self.limits.inflight_bytes_max * share / 100;
        let fits_bytes = self.inflight_bytes + bytes <= bytes_max || self.inflight_requests == 0;
        if self.inflight_requests < slots && fits_bytes {
            self.inflight_requests += 1;
            self.inflight_bytes += bytes;
            return true;
        }
        false
    }

    /// A request served for `service` finished: returns its slot.
    pub fn finish_served(&mut self, bytes: usize, service: Duration) {
        let us = service.as_micros() as u64;
        self.service_avg_us = (self.service_avg_us * (DELAY_EWMA_WEIGHT - 1) + us) / DELAY_EWMA_WEIGHT;
        self.finish(bytes);
    }

    /// The cheap first check, from the header alone, of a request that `waited` in its socket
    /// (from the kernel's receive time). Refused unstarted: a request that waited past its
    /// `budget`; and, while the sockets hold a backlog (the average wait of the last whole
    /// interval, or of the current one once it has read [`BACKLOG_SAMPLES_MIN`] requests, is
    /// above the request's priority's share of `queue-delay-max`), one that waited past that
    /// share. A backlog sheds its oldest requests, lowest priority first, as soon as it shows,
    /// while fresh requests pass. A stall of the core longer than the target is a backlog too:
    /// the first requests read after it pass, the rest of what it left that is older than the
    /// target is shed, so the node is caught up at once instead of serving the stall's old
    /// requests ahead of new ones. The retry hint is the wait: the backlog ahead of the client
    /// is that old.
    pub fn check_socket_wait(
        &mut self,
        priority: Priority,
        waited: Duration,
        budget: Duration,
        now: Instant,
    ) -> Result<(), (Refusal, Duration)> {
        if now.saturating_duration_since(self.interval_started) >= SOCKET_WAIT_INTERVAL {
            // An interval without requests (or several) ends any backlog.
            let whole = now.saturating_duration_since(self.interval_started) < 2 * SOCKET_WAIT_INTERVAL;
            self.socket_wait_avg_us =
                if whole && self.interval_requests > 0 { self.interval_wait_us / self.interval_requests } else { 0 };
            self.interval_wait_us = 0;
            self.interval_requests = 0;
            self.interval_started = now;
        }
        // The current interval is judged by the requests read before this one.
        let current_avg_us = if self.interval_requests >= BACKLOG_SAMPLES_MIN {
            self.interval_wait_us / self.interval_requests
        } else {
            0
        };
        let waited_us = waited.as_micros().min(u128::from(u32::MAX)) as u64;
        self.interval_wait_us += waited_us;
        self.interval_requests += 1;
        let retry = waited.max(self.limits.retry_after_min);
        if waited > budget {
            return Err((Refusal::DeadlinePassed, retry));
        }
        let share = PRIORITY_SHARE_PERCENT[priority.index()] as u64;
        let target_us = self.limits.queue_delay_max.as_micros() as u64 * share / 100;
        if (self.socket_wait_avg_us > target_us || current_avg_us > target_us) && waited_us > target_us {
            return Err((Refusal::SocketWait, retry));
        }
        Ok(())
    }

    /// An admitted request starts: records its queueing delay. Refuses it if its deadline
    /// passed while it waited (it must then be finished without being served).
    pub fn start(&mut self, arrival: Instant, deadline_us: u32, now: Instant) -> Result<(), Refusal> {
        let delay_us = now.saturating_duration_since(arrival).as_micros() as u64;
        self.delay_avg_us = (self.delay_avg_us * (DELAY_EWMA_WEIGHT - 1) + delay_us) / DELAY_EWMA_WEIGHT;
        if deadline_us != 0 && delay_us > u64::from(deadline_us) {
            return Err(Refusal::DeadlinePassed);
        }
        Ok(())
    }

    /// An admitted request is done (answered, refused at start, or abandoned).
    pub fn finish(&mut self, bytes: usize) {
        assert!(self.inflight_requests > 0, "finish matches an admit");
        assert!(self.inflight_bytes >= bytes, "finish returns the bytes admit took");
        self.inflight_requests -= 1;
        self.inflight_bytes -= bytes;
    }

    /// When a refused client should try again: about the time the queue needs to drain.
    #[must_use]
    pub fn retry_after(&self) -> Duration {
        Duration::from_micros(self.delay_avg_us.max(self.limits.retry_after_min.as_micros() as u64))
    }

    #[must_use]
    pub fn inflight_requests(&self) -> usize {
        self.inflight_requests
    }

    #[must_use]
    pub fn queue_delay_avg(&self) -> Duration {
        Duration::from_micros(self.delay_avg_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_beyond_the_slots_queue_while_they_can_start_in_time() {
        let mut a = Admission::new(AdmissionLimits { inflight_requests_max: 2, ..limits() });
        assert_eq!(a.decide(Priority::Highest, 1, 0, 0), Decision::Start);
        assert_eq!(a.decide(Priority::Highest, 1, 0, 0), Decision::Start);
        a.finish_served(1, Duration::from_millis(1));
        assert_eq!(a.decide(Priority::Highest, 1, 0, 0), Decision::Start);
        // Both slots busy: a request queues while the expected wait (a share of the average
        // service time per request ahead) fits its budget.
        assert_eq!(a.decide(Priority::Highest, 1, 100_000, 0), Decision::Queue);
        assert!(matches!(a.decide(Priority::Highest, 1, 10, 0), Decision::Refuse(Refusal::InflightRequests, _)));
        assert!(matches!(a.decide(Priority::Highest, 1, 0, 1000), Decision::Refuse(Refusal::InflightRequests, _)));
        assert!(!a.try_start_queued(Priority::Highest, 1));
        a.finish(1);
        assert!(a.try_start_queued(Priority::Highest, 1));
    }

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            inflight_requests_max: 100,
            inflight_bytes_max: 1 << 20,
            queue_delay_max: Duration::from_millis(10),
            retry_after_min: Duration::from_millis(1),
        }
    }

    #[test]
    fn lowest_priority_runs_out_of_slots_first() {
        let mut a = Admission::new(limits());
        for _ in 0..55 {
            assert_eq!(a.decide(Priority::Lowest, 10, 0, 0), Decision::Start);
        }
        // No slot left for the lowest priority: it waits (its slots free up in time).
        assert_eq!(a.decide(Priority::Lowest, 10, 0, 0), Decision::Queue);
        for _ in 0..45 {
            assert_eq!(a.decide(Priority::Highest, 10, 0, 0), Decision::Start);
        }
        assert_eq!(a.decide(Priority::Highest, 10, 0, 0), Decision::Queue);
        a.finish(10);
        assert_eq!(a.decide(Priority::Highest, 10, 0, 0), Decision::Start);
    }

    #[test]
    fn a_socket_backlog_sheds_lowest_priority_first_and_as_soon_as_it_shows() {
        let mut a = Admission::new(limits());
        let ms = Duration::from_millis;
        let budget = Duration::from_secs(1);
        let start = Instant::now();
        // Bursts: one request in five waited 15 ms (a frozen core), the rest were read at once,
        // so the average stays below the target (5.5 ms for the lowest priority): nothing is
        // refused.
        for i in 0..1000u64 {
            let waited = if i % 5 == 0 { ms(15) } else { Duration::ZERO };
            assert!(a.check_socket_wait(Priority::Lowest, waited, budget, start + ms(i)).is_ok(), "request {i}");
        }
        // A stall of 300 ms, longer than the target: the first requests read after it pass,
        // too few to judge; once the interval has read enough, the rest of its old requests
        // are shed with their wait as the hint; and the fresh requests after them pass.
        let stall = start + ms(2000);
        let mut refused = 0;
        for i in 0..100u64 {
            let now = stall + Duration::from_micros(i * 10);
            match a.check_socket_wait(Priority::Lowest, ms(300), budget, now) {
                Ok(()) => assert!(i < BACKLOG_SAMPLES_MIN, "request {i} of the stall passed"),
                Err((why, retry)) => {
                    assert_eq!((why, retry), (Refusal::SocketWait, ms(300)), "request {i}");
                    refused += 1;
                }
            }
        }
        assert_eq!(refused, 100 - BACKLOG_SAMPLES_MIN);
        for i in 0..100u64 {
            let now = stall + ms(1 + i);
            assert!(a.check_socket_wait(Priority::Lowest, ms(1), budget, now).is_ok(), "request {i} after the stall");
        }
        // A backlog: every request waits 8 ms, for 100 ms. Once its first interval has read
        // enough requests, the two lowest priorities (targets 55% and 70% of 10 ms) are
        // refused; the two highest (85%, 100%) are not.
        let backlog = start + ms(5000);
        let mut refused = [0u32; 4];
        let mut first_refusal = None;
        for step in 0..100u64 {
            for priority in Priority::ALL {
                if let Err((why, retry)) = a.check_socket_wait(priority, ms(8), budget, backlog + ms(step)) {
                    assert_eq!((why, retry), (Refusal::SocketWait, ms(8)));
                    first_refusal.get_or_insert(step);
                    refused[priority.index()] += 1;
                }
            }
        }
        // Four requests a step: the interval has read 32 by its eighth step (from 0).
        assert_eq!(first_refusal, Some(8), "the backlog is seen within its first interval");
        assert!(refused[3] > 80 && refused[2] > 80, "{refused:?}");
        assert_eq!(refused[0] + refused[1], 0, "{refused:?}");
        let now = backlog + ms(100);
        // In a backlog, fresh requests still pass: only the old ones are shed.
        assert!(a.check_socket_wait(Priority::Lowest, ms(1), budget, now).is_ok());
        // Past its budget, a request is refused whatever the backlog.
        let past = a.check_socket_wait(Priority::Highest, ms(30), ms(20), now);
        assert_eq!(past.unwrap_err().0, Refusal::DeadlinePassed);
        // The backlog drains: the next whole interval's average is low and the shedding ends.
        for i in 0..50u64 {
            let _ = a.check_socket_wait(Priority::Lowest, Duration::ZERO, budget, now + ms(i));
        }
        assert!(a.check_socket_wait(Priority::Lowest, ms(7), budget, now + ms(50)).is_ok());
    }

    #[test]
    fn bytes_in_flight_are_bounded() {
        let mut a = Admission::new(limits());
        assert_eq!(a.decide(Priority::Highest, 1 << 19, 0, 0), Decision::Start);
        assert_eq!(a.decide(Priority::Highest, (1 << 19) + 1, 0, 0), Decision::Queue);
        assert!(!a.try_start_queued(Priority::Highest, (1 << 19) + 1));
        a.finish(1 << 19);
        assert_eq!(a.inflight_requests(), 0);
        assert!(a.try_start_queued(Priority::Highest, (1 << 19) + 1));
    }

    #[test]
    fn long_queueing_delay_sheds_and_passed_deadlines_are_refused_at_start() {
        let mut a = Admission::new(limits());
        let now = Instant::now();
        assert_eq!(a.decide(Priority::Low, 1, 0, 0), Decision::Start);
        let arrival = now - Duration::from_millis(500);
        assert_eq!(a.start(arrival, 100_000, now), Err(Refusal::DeadlinePassed));
        a.finish(1);
        for _ in 0..50 {
            assert_eq!(a.decide(Priority::Low, 1, 0, 0), Decision::Start);
        }
        for _ in 0..50 {
            a.start(arrival, 0, now).unwrap();
        }
        let Decision::Refuse(why, retry) = a.decide(Priority::Low, 1, 0, 0) else { panic!("refused") };
        assert_eq!(why, Refusal::QueueDelay);
        assert!(retry >= Duration::from_millis(10), "{retry:?}");
        // A tight deadline is refused even at the highest priority when the queue is long.
        assert!(matches!(a.decide(Priority::Highest, 1, 1_000, 0), Decision::Refuse(Refusal::QueueDelay, _)));
        // Once nothing is in flight, nothing is queued: requests are admitted again.
        for _ in 0..50 {
            a.finish(1);
        }
        assert_eq!(a.decide(Priority::Lowest, 1, 1_000, 0), Decision::Start);
    }
}
