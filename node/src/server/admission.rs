//! FastReject: decides, from a request's header alone, whether the shard can start it in time.
//!
//! Three signals. As in WeChat's DAGOR, the queueing delay requests see between arrival and
//! start (a moving average, updated as requests start), and the work in flight (requests and
//! bytes). And saturation: how long the core has gone without an idle moment. A saturated core
//! also queues work where the server cannot see it, in its sockets' receive buffers, so while it
//! stays saturated an admission level rises and a growing fraction of requests is refused at
//! once, from the header alone; it falls again when the core finds idle time.
//! Each priority gets a share of the limits: the lowest priority is refused first, the highest
//! last. A refusal costs a header decode and a 32-byte answer: no body parsing, no allocation.
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
    /// The core has had no idle moment for a while: its sockets hold a backlog.
    Saturated,
}

impl Refusal {
    pub const ALL: [Self; 5] =
        [Self::InflightRequests, Self::InflightBytes, Self::QueueDelay, Self::DeadlinePassed, Self::Saturated];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::InflightRequests => "inflight_requests",
            Self::InflightBytes => "inflight_bytes",
            Self::QueueDelay => "queue_delay",
            Self::DeadlinePassed => "deadline_passed",
            Self::Saturated => "saturated",
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

/// A core busy this long without an idle moment is saturated.
const SATURATION_MIN: Duration = Duration::from_millis(5);
/// How often the admission level is adjusted.
const LEVEL_ADJUST_EVERY: Duration = Duration::from_millis(2);
/// Level steps: up while saturated, down while not. One level sheds one priority fully.
const LEVEL_STEP_UP: f64 = 0.08;
const LEVEL_STEP_DOWN: f64 = 0.04;
const LEVEL_MAX: f64 = 3.9;

/// The admission state of one shard.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    inflight_requests: usize,
    inflight_bytes: usize,
    /// Moving average of arrival-to-start delay, µs.
    delay_avg_us: u64,
    /// 0: admit everything; level `l` refuses a fraction `clamp(l - (3 - p), 0, 1)` of
    /// priority `p` (3 is the lowest): the lowest priority goes first.
    level: f64,
    level_adjusted_at: Instant,
    /// Per priority: refusals owed, so a fraction is refused evenly.
    shed_debt: [f64; 4],
    /// How long the core has been saturated, at the last adjustment.
    saturated_for: Duration,
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
            level: 0.0,
            level_adjusted_at: Instant::now(),
            shed_debt: [0.0; 4],
            saturated_for: Duration::ZERO,
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

    /// The cheap first check, from the header alone: refuses a share of requests while the core
    /// is saturated (`busy`: the core's CPU time since it last had nothing to do; asked only
    /// when the level is adjusted).
    pub fn fast_reject(
        &mut self,
        priority: Priority,
        now: Instant,
        busy: impl FnOnce() -> Duration,
    ) -> Result<(), (Refusal, Duration)> {
        if now.saturating_duration_since(self.level_adjusted_at) >= LEVEL_ADJUST_EVERY {
            self.level_adjusted_at = now;
            self.saturated_for = busy();
            let saturated = self.saturated_for > SATURATION_MIN;
            self.level = if saturated {
                (self.level + LEVEL_STEP_UP).min(LEVEL_MAX)
            } else {
                (self.level - LEVEL_STEP_DOWN).max(0.0)
            };
        }
        if self.level == 0.0 {
            return Ok(());
        }
        let p = priority.index();
        let fraction = (self.level - (3 - p) as f64).clamp(0.0, 1.0);
        self.shed_debt[p] += fraction;
        if self.shed_debt[p] >= 1.0 {
            self.shed_debt[p] -= 1.0;
            // Come back after about a queue's worth of delay: long enough for the backlog to
            // shrink, short enough that a client does not idle while the core recovers.
            let retry = self.limits.queue_delay_max.max(self.limits.retry_after_min);
            return Err((Refusal::Saturated, retry));
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
    fn a_saturated_core_sheds_a_growing_share_lowest_priority_first() {
        let mut a = Admission::new(limits());
        let start = Instant::now();
        let busy_since = start;
        let mut refused = [0u32; 4];
        // 60 ms without an idle moment, 100 requests of each priority per 2 ms.
        for step in 1..=30u32 {
            let now = start + Duration::from_millis(2 * u64::from(step));
            for priority in Priority::ALL {
                for _ in 0..100 {
                    if a.fast_reject(priority, now, || now - busy_since).is_err() {
                        refused[priority.index()] += 1;
                    }
                }
            }
        }
        assert!(refused[3] > refused[2] && refused[2] > 0, "{refused:?}");
        assert_eq!(refused[0], 0, "{refused:?}");
        // Idle again: the level falls back to admitting everything.
        let later = start + Duration::from_secs(1);
        for step in 1..=200u32 {
            let now = later + Duration::from_millis(2 * u64::from(step));
            let _ = a.fast_reject(Priority::Lowest, now, || Duration::ZERO);
        }
        let now = later + Duration::from_millis(500);
        assert!(a.fast_reject(Priority::Lowest, now, || Duration::ZERO).is_ok());
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
