//! `strata-bench overload`: open-loop load at 1x, 2x, 5x and 10x of Strata's measured capacity.
//!
//! Two workloads: disk-bound (gets of a dataset larger than the memory budget, so most reads go
//! to the SSD) and CPU-bound (gets of memory-resident data). The CPU-bound server is held to a
//! CPU quota (or, with `--shrink thief`, by a real-time CPU thief on its core: see
//! [`crate::thief`]) so one generator core can offer 10x. Capacity is the closed-loop rate; the unloaded p99 is
//! measured open-loop at half of it. For each multiple: goodput (OK within the deadline) against
//! peak, rejections, p99 of admitted requests and of rejections; CPU-bound once more with the
//! client's back-off on retry hints. Last, RSS growth of the server over a long 10x run.
//!
//! On this shared machine one run of a workload moves a lot: the CPU-bound goodput at 5x went
//! from 46% to 98% between consecutive runs of the same build. So each workload runs in
//! several rounds, each on a fresh node, and the summary gives every step's median with the
//! lowest and highest round beside it.

use crate::loadgen::{self, Arrival, Keys, LoadResult, LoadSpec, Op, Proto};
use crate::promtext::Histogram;
use crate::servers::{Server, ServerKind};
use crate::thief::Thief;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use strata_format::protocol::Priority;

#[derive(Debug, Clone)]
pub struct Args {
    /// Run the disk-bound workload.
    pub disk: bool,
    /// Run the CPU-bound workload and the RSS watch.
    pub cpu: bool,
    pub dir: PathBuf,
    pub server_cpu: usize,
    pub generator_cpu: usize,
    pub connections: usize,
    pub memory_keys: u64,
    pub disk_keys: u64,
    pub value_bytes: usize,
    pub seconds: f64,
    pub quota_percent: u32,
    /// How the CPU-bound workload's server is held to `quota_percent` of its core.
    pub shrink: Shrink,
    /// The CPU-bound node's `queue-delay-max`, ms.
    pub cpu_queue_delay_max_ms: u32,
    pub rss_seconds: f64,
    /// Rounds of each workload.
    pub rounds: usize,
}

/// How the CPU-bound workload's server is made slow enough for one generator core to offer
/// 10x of what it can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Shrink {
    /// A cgroup v1 CFS quota with a 5 ms period: the server freezes for up to 4 ms at a time.
    Quota,
    /// A real-time [`Thief`] on the server's core taking the rest of each period of this many
    /// µs: the server freezes for a fraction of a millisecond at a time.
    Thief { period_us: u32 },
}

impl Shrink {
    /// The CPU-bound node's `queue-delay-max` unless given: under the quota 6 ms, the least
    /// whose share for the bench's priority (85%, 5.1 ms) is above the 5 ms period, as
    /// operations.md advises (the node's default, 3 ms, is under the 4 ms freezes); with the
    /// thief's short slices, the node's default.
    #[must_use]
    pub fn queue_delay_max_ms(self) -> u32 {
        match self {
            Self::Quota => 6,
            Self::Thief { .. } => 3,
        }
    }

    /// Holds `server` to `percent` of its core until the returned guard (if any) is dropped.
    fn apply(self, server: &mut Server, cpu: usize, percent: u32) -> Result<Option<Thief>, String> {
        match self {
            Self::Quota => server.limit_cpu(percent, QUOTA_PERIOD_US).map(|()| None),
            Self::Thief { period_us } => {
                let period = Duration::from_micros(period_us.into());
                Thief::start(cpu, 100 - percent.min(100), period).map(Some)
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub multiple: f64,
    pub backoff: bool,
    pub offered_per_s: f64,
    pub goodput_per_s: f64,
    pub goodput_vs_peak: f64,
    pub rejected_per_s: f64,
    pub client_shed_per_s: f64,
    pub admitted_p99_us: u64,
    pub admitted_p99_vs_unloaded: f64,
    pub rejection_p99_us: u64,
    pub failed: u64,
    pub generator_cpu_share: f64,
    /// The server's CPU time over the step (`utime + stime`) per second: under the CPU-bound
    /// workload's share, how much of that share it used; below the share, it sat idle.
    pub server_cpu_share: f64,
    /// The generator's own send lag at p99 (intended send time to the request handed to the
    /// kernel), µs: part of every latency of the step, the server's none of it.
    pub send_lag_p99_us: u64,
    /// The node's loop over the step, from its metrics: sends of answers per second (a turn
    /// sends at its end, and every 1 ms of a long turn).
    pub turns_per_s: f64,
    /// Their mean time since their turn began (the ring's return), µs.
    pub turn_mean_us: f64,
    /// How long a send's oldest answer was held, at the median and p99: the upper bound of the
    /// node's power-of-two bucket holding it, µs (the true figure is above half of it).
    pub answer_hold_p50_us: u64,
    pub answer_hold_p99_us: u64,
    /// Why the step measured the generator rather than the server, if it did: the generator's
    /// core was nearly saturated, or it sent late (each late send adds to the latencies, and a
    /// stalled generator offers less than the step's rate). Such a step is left out of the
    /// summary's medians.
    pub generator_limited: Option<String>,
}

/// A generator busier than this share of its core cannot keep to the offered rate.
const GENERATOR_CPU_SHARE_MAX: f64 = 0.85;

/// A generator's send lag p99 above this (a tenth of the requests' deadline; an unhindered
/// generator's is 1–3 ms, its epoll waits having millisecond resolution) means it was held up.
const SEND_LAG_P99_MAX_US: u64 = 5_000;

fn generator_limited(generator_cpu_share: f64, send_lag_p99_us: u64) -> Option<String> {
    if generator_cpu_share > GENERATOR_CPU_SHARE_MAX {
        Some(format!("the generator used {:.0}% of its core", generator_cpu_share * 100.0))
    } else if send_lag_p99_us > SEND_LAG_P99_MAX_US {
        Some(format!("the generator's send lag p99 was {:.1} ms", send_lag_p99_us as f64 / 1000.0))
    } else {
        None
    }
}

/// The node's loop over a step, from two scrapes of its metrics.
#[derive(Debug, Clone, Copy)]
struct LoopFigures {
    turns_per_s: f64,
    turn_mean_us: f64,
    answer_hold_p50_us: u64,
    answer_hold_p99_us: u64,
}

impl LoopFigures {
    fn between(before: &str, after: &str, secs: f64) -> Self {
        let family = |name| Histogram::parse(after, name).since(&Histogram::parse(before, name));
        let (turn, hold) = (family("strata_turn_seconds"), family("strata_answer_hold_seconds"));
        Self {
            turns_per_s: turn.count as f64 / secs,
            turn_mean_us: turn.mean_us(),
            answer_hold_p50_us: hold.quantile_bound_us(0.5),
            answer_hold_p99_us: hold.quantile_bound_us(0.99),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub name: &'static str,
    /// Which round (from 0) measured it.
    pub round: usize,
    /// Closed-loop rate: the base of the load multiples.
    pub capacity_per_s: f64,
    /// The best goodput seen (closed loop or any step): the base of `goodput_vs_peak`.
    pub peak_goodput_per_s: f64,
    pub unloaded_p99_us: u64,
    pub steps: Vec<Step>,
}

/// A figure over the rounds: the median, and the lowest and highest round's.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub low: f64,
    pub high: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Self {
        assert!(!values.is_empty(), "a spread of no rounds");
        let median = crate::compare::median(&mut values);
        Self { median, low: values[0], high: values[values.len() - 1] }
    }
}

/// One step of a workload over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct StepSummary {
    pub multiple: f64,
    pub backoff: bool,
    /// Rounds whose step measured the server (see [`Step::generator_limited`]): the figures
    /// below are theirs, absent when there is none.
    pub valid_rounds: usize,
    pub goodput_vs_peak: Option<Spread>,
    pub admitted_p99_vs_unloaded: Option<Spread>,
    pub rejection_p99_us: Option<Spread>,
}

/// A workload over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadSummary {
    pub name: &'static str,
    pub rounds: usize,
    pub capacity_per_s: Spread,
    pub unloaded_p99_us: Spread,
    pub steps: Vec<StepSummary>,
}

fn summarize(name: &'static str, rounds: &[&Workload]) -> WorkloadSummary {
    let spread = |f: &dyn Fn(&Workload) -> f64| Spread::of(rounds.iter().map(|w| f(w)).collect());
    let steps = rounds[0]
        .steps
        .iter()
        .enumerate()
        .map(|(i, first)| {
            let valid: Vec<&Step> =
                rounds.iter().map(|w| &w.steps[i]).filter(|s| s.generator_limited.is_none()).collect();
            let of = |f: &dyn Fn(&Step) -> f64| {
                (!valid.is_empty()).then(|| Spread::of(valid.iter().map(|s| f(s)).collect()))
            };
            StepSummary {
                multiple: first.multiple,
                backoff: first.backoff,
                valid_rounds: valid.len(),
                goodput_vs_peak: of(&|s| s.goodput_vs_peak),
                admitted_p99_vs_unloaded: of(&|s| s.admitted_p99_vs_unloaded),
                rejection_p99_us: of(&|s| s.rejection_p99_us as f64),
            }
        })
        .collect();
    WorkloadSummary {
        name,
        rounds: rounds.len(),
        capacity_per_s: spread(&|w| w.capacity_per_s),
        unloaded_p99_us: spread(&|w| w.unloaded_p99_us as f64),
        steps,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub quota_percent: u32,
    pub shrink: Shrink,
    pub cpu_queue_delay_max_ms: u32,
    pub deadline_ms: u64,
    pub connections: usize,
    pub rounds: usize,
    /// Every round of every workload.
    pub workloads: Vec<Workload>,
    /// Each workload's steps over its rounds.
    pub summaries: Vec<WorkloadSummary>,
    pub rss_seconds: f64,
    pub rss_start_bytes: u64,
    pub rss_end_bytes: u64,
    pub rss_growth: f64,
}

/// The CFS period of the CPU-bound workload's quota: the shortest that still grants the
/// kernel's least quota (1 ms) at 20%, so a throttled server freezes for at most 4 ms.
const QUOTA_PERIOD_US: u32 = 5_000;

/// The budget every request carries.
const DEADLINE: Duration = Duration::from_millis(50);

/// A small memory budget: the disk-bound dataset lives in tables on the SSD. Few reads in
/// flight, so the SSD (not the CPU) bounds the rate, low enough for one generator core to offer
/// 10x of it.
const STRATA_DISK_BOUND: &str = r#"
[shard]
memory-budget = "160 MiB"
memtable-max = "64 MiB"
flush-at = "32 MiB"
block-cache = "16 MiB"
ssd-reserve = "256 MiB"
ssd-throttle = "512 MiB"

[limits]
shard-inflight-requests-max = 2
"#;

/// The CPU-bound workload's node: everything in memory, and a `queue-delay-max` above the
/// quota's freezes (operations.md: keep it above the platform's scheduling stalls), so a
/// request that waited out one freeze is served, not shed as if the node were behind.
fn cpu_bound_config(queue_delay_max_ms: u32) -> String {
    format!("{}\n[admission]\nqueue-delay-max = \"{queue_delay_max_ms} ms\"\n", crate::compare::STRATA_IN_MEMORY)
}

fn load(args: &Args, server: &Server, keys: Keys, arrival: Arrival, seconds: f64, backoff: bool) -> LoadSpec {
    LoadSpec {
        addr: server.addr,
        proto: Proto::Native,
        op: Op::Get,
        keys,
        value_bytes: args.value_bytes,
        connections: args.connections,
        arrival,
        seconds,
        deadline: DEADLINE,
        priority: Priority::High,
        seed: 7,
        backoff,
    }
}

/// The `[shard]` part of a configuration (its `[limits]` apply only while measuring).
fn config_without_limits(config: &str) -> &str {
    config.split("[limits]").next().unwrap_or(config)
}

fn step(multiple: f64, backoff: bool, peak: f64, unloaded_p99_us: u64, m: &Measured) -> Step {
    let (r, server_cpu_us, turns) = (&m.result, m.server_cpu_us, m.turns);
    let secs = r.elapsed.as_secs_f64();
    let admitted_p99_us = r.latency_ok_us.value_at_quantile(0.99);
    Step {
        multiple,
        backoff,
        offered_per_s: r.offered as f64 / secs,
        goodput_per_s: r.goodput_per_s(),
        goodput_vs_peak: r.goodput_per_s() / peak,
        rejected_per_s: r.rejected as f64 / secs,
        client_shed_per_s: r.client_shed as f64 / secs,
        admitted_p99_us,
        admitted_p99_vs_unloaded: admitted_p99_us as f64 / unloaded_p99_us.max(1) as f64,
        rejection_p99_us: r.latency_rejected_us.value_at_quantile(0.99),
        failed: r.failed,
        generator_cpu_share: r.generator_cpu_share(),
        server_cpu_share: server_cpu_us as f64 / 1e6 / secs,
        send_lag_p99_us: r.send_lag_us.value_at_quantile(0.99),
        turns_per_s: turns.turns_per_s,
        turn_mean_us: turns.turn_mean_us,
        answer_hold_p50_us: turns.answer_hold_p50_us,
        answer_hold_p99_us: turns.answer_hold_p99_us,
        generator_limited: generator_limited(r.generator_cpu_share(), r.send_lag_us.value_at_quantile(0.99)),
    }
}

/// One step's load with what the server did over it.
struct Measured {
    result: LoadResult,
    server_cpu_us: u64,
    turns: LoopFigures,
}

/// Runs one step's load, timing the server's CPU and reading its loop's metrics around it.
fn measured(server: &Server, spec: &LoadSpec) -> Result<Measured, String> {
    let (metrics_before, cpu_before) = (server.metrics()?, server.cpu_us());
    let result = loadgen::run(spec)?;
    let server_cpu_us = server.cpu_us().saturating_sub(cpu_before);
    let turns = LoopFigures::between(&metrics_before, &server.metrics()?, result.elapsed.as_secs_f64());
    Ok(Measured { result, server_cpu_us, turns })
}

fn workload(
    args: &Args,
    round: usize,
    name: &'static str,
    config: &str,
    keys: u64,
    cpu_share: Option<u32>,
) -> Result<(Workload, Server, Option<Thief>), String> {
    // Load with default limits, then serve the measurements with the workload's own.
    let dir = args.dir.join("server");
    let server = Server::start(ServerKind::Strata, args.server_cpu, &dir, config_without_limits(config))?;
    loadgen::preload(server.addr, Proto::Native, keys, args.value_bytes, args.connections)?;
    // Let flushes and compactions settle before measuring.
    std::thread::sleep(Duration::from_secs(2));
    server.stop();
    let mut server = Server::start_on(ServerKind::Strata, args.server_cpu, &dir, config)?;
    let thief = match cpu_share {
        Some(percent) => args.shrink.apply(&mut server, args.server_cpu, percent)?,
        None => None,
    };
    let uniform = Keys::Uniform(keys);
    let capacity = loadgen::run(&load(args, &server, uniform, Arrival::Closed { depth: 4 }, args.seconds, false))?;
    let peak = capacity.ok_per_s();
    let open = |rate: f64| Arrival::Open { rate, poisson: true };
    let unloaded = loadgen::run(&load(args, &server, uniform, open(peak * 0.5), args.seconds, false))?;
    let unloaded_p99_us = unloaded.latency_ok_us.value_at_quantile(0.99);
    let mut steps = Vec::new();
    for multiple in [1.0, 2.0, 5.0, 10.0] {
        let m = measured(&server, &load(args, &server, uniform, open(peak * multiple), args.seconds, false))?;
        steps.push(step(multiple, false, peak, unloaded_p99_us, &m));
    }
    for multiple in [5.0, 10.0] {
        let m = measured(&server, &load(args, &server, uniform, open(peak * multiple), args.seconds, true))?;
        steps.push(step(multiple, true, peak, unloaded_p99_us, &m));
    }
    // Goodput is judged against the best the server showed: the closed-loop rate or any
    // open-loop step's goodput, whichever is higher.
    let best = steps.iter().map(|s| s.goodput_per_s).fold(peak, f64::max);
    for s in &mut steps {
        s.goodput_vs_peak = s.goodput_per_s / best;
    }
    let workload = Workload { name, round, capacity_per_s: peak, peak_goodput_per_s: best, unloaded_p99_us, steps };
    Ok((workload, server, thief))
}

pub fn run(args: &Args) -> Result<Report, String> {
    strata_ioengine::uring::pin_current_thread(args.generator_cpu).map_err(|e| e.to_string())?;
    let mut workloads = Vec::new();
    let (disk_name, cpu_name) = ("disk-bound (SSD gets)", "CPU-bound (memory gets)");
    let (mut rss_seconds, mut rss_start_bytes, mut rss_end_bytes) = (0.0, 0, 0);
    for round in 0..args.rounds {
        if args.disk {
            let (disk, _server, _) = workload(args, round, disk_name, STRATA_DISK_BOUND, args.disk_keys, None)?;
            workloads.push(disk);
        }
        if !args.cpu {
            continue;
        }
        let (memory, server, thief) = workload(
            args,
            round,
            cpu_name,
            &cpu_bound_config(args.cpu_queue_delay_max_ms),
            args.memory_keys,
            Some(args.quota_percent),
        )?;
        if round + 1 < args.rounds {
            drop((server, thief));
            workloads.push(memory);
            continue;
        }
        // RSS over a long run at 10x, from a warmed-up start.
        let rate = memory.capacity_per_s * 10.0;
        let open = Arrival::Open { rate, poisson: true };
        let keys = Keys::Uniform(args.memory_keys);
        loadgen::run(&load(args, &server, keys, open, (args.rss_seconds / 5.0).clamp(1.0, 10.0), false))?;
        rss_start_bytes = server.rss_bytes();
        let started = Instant::now();
        loadgen::run(&load(args, &server, keys, open, args.rss_seconds, false))?;
        rss_end_bytes = server.rss_bytes();
        rss_seconds = started.elapsed().as_secs_f64();
        drop((server, thief));
        workloads.push(memory);
    }
    let _ = std::fs::remove_dir_all(args.dir.join("server"));
    let summaries = [disk_name, cpu_name]
        .into_iter()
        .filter_map(|name| {
            let rounds: Vec<&Workload> = workloads.iter().filter(|w| w.name == name).collect();
            (!rounds.is_empty()).then(|| summarize(name, &rounds))
        })
        .collect();
    Ok(Report {
        quota_percent: args.quota_percent,
        shrink: args.shrink,
        cpu_queue_delay_max_ms: args.cpu_queue_delay_max_ms,
        deadline_ms: DEADLINE.as_millis() as u64,
        connections: args.connections,
        rounds: args.rounds,
        workloads,
        summaries,
        rss_seconds,
        rss_start_bytes,
        rss_end_bytes,
        rss_growth: rss_end_bytes as f64 / rss_start_bytes.max(1) as f64 - 1.0,
    })
}

/// A histogram bucket's upper bound for the table: `<=N` µs, or `+Inf` beyond the last.
fn bucket_bound(us: u64) -> String {
    if us == u64::MAX { "+Inf".to_string() } else { format!("<={us}") }
}

pub fn summary(r: &Report) -> String {
    let mut out = format!(
        "overload: {} connections, {} ms deadline, Poisson arrivals; disk-bound: 2 reads in flight; CPU-bound: server held to {}% of a core by {}, queue-delay-max {} ms\n",
        r.connections,
        r.deadline_ms,
        r.quota_percent,
        match r.shrink {
            Shrink::Quota => format!("a CFS quota ({} ms period)", QUOTA_PERIOD_US / 1000),
            Shrink::Thief { period_us } => format!("a real-time CPU thief ({period_us} us period)"),
        },
        r.cpu_queue_delay_max_ms
    );
    for w in &r.workloads {
        out.push_str(&format!(
            "  round {}, {}: capacity {:.0}/s (closed loop), peak goodput {:.0}/s, unloaded p99 {} us\n    {:>4} {:>8} {:>10} {:>10} {:>8} {:>10} {:>10} {:>9} {:>10} {:>11} {:>7} {:>7} {:>11} {:>8} {:>8} {:>9} {:>9}\n",
            w.round,
            w.name,
            w.capacity_per_s,
            w.peak_goodput_per_s,
            w.unloaded_p99_us,
            "load",
            "backoff",
            "offered/s",
            "goodput/s",
            "vs peak",
            "rejected/s",
            "shed/s",
            "p99 us",
            "p99/unld",
            "rej p99 us",
            "gen cpu",
            "srv cpu",
            "lag p99 us",
            "turns/s",
            "turn us",
            "hold p50",
            "hold p99"
        ));
        for s in &w.steps {
            out.push_str(&format!(
                "    {:>3}x {:>8} {:>10.0} {:>10.0} {:>7.0}% {:>10.0} {:>10.0} {:>9} {:>9.1}x {:>11} {:>6.0}% {:>6.1}% {:>11} {:>8.0} {:>8.0} {:>9} {:>9}\n",
                s.multiple,
                if s.backoff { "yes" } else { "no" },
                s.offered_per_s,
                s.goodput_per_s,
                s.goodput_vs_peak * 100.0,
                s.rejected_per_s,
                s.client_shed_per_s,
                s.admitted_p99_us,
                s.admitted_p99_vs_unloaded,
                s.rejection_p99_us,
                s.generator_cpu_share * 100.0,
                s.server_cpu_share * 100.0,
                s.send_lag_p99_us,
                s.turns_per_s,
                s.turn_mean_us,
                bucket_bound(s.answer_hold_p50_us),
                bucket_bound(s.answer_hold_p99_us)
            ));
            if let Some(why) = &s.generator_limited {
                out.push_str(&format!("          not a measure of the server, left out of the medians: {why}\n"));
            }
        }
    }
    for w in &r.summaries {
        out.push_str(&format!(
            "  {} over {} rounds: median (lowest-highest); capacity {:.0}/s ({:.0}-{:.0}), unloaded p99 {:.0} us \
             ({:.0}-{:.0})\n    {:>4} {:>8} {:>20} {:>20} {:>24} {:>7}\n",
            w.name,
            w.rounds,
            w.capacity_per_s.median,
            w.capacity_per_s.low,
            w.capacity_per_s.high,
            w.unloaded_p99_us.median,
            w.unloaded_p99_us.low,
            w.unloaded_p99_us.high,
            "load",
            "backoff",
            "goodput vs peak",
            "p99 / unloaded",
            "rejection p99 us",
            "rounds"
        ));
        for s in &w.steps {
            let load = format!("    {:>3}x {:>8}", s.multiple, if s.backoff { "yes" } else { "no" });
            let (Some(g), Some(p), Some(j)) = (s.goodput_vs_peak, s.admitted_p99_vs_unloaded, s.rejection_p99_us)
            else {
                out.push_str(&format!("{load} not valid: the generator limited every round\n"));
                continue;
            };
            out.push_str(&format!(
                "{load} {:>6.0}% ({:>3.0}-{:>3.0}%) {:>7.1}x ({:.1}-{:.1}x) {:>8.0} ({:.0}-{:.0}) {:>4} of {}\n",
                g.median * 100.0,
                g.low * 100.0,
                g.high * 100.0,
                p.median,
                p.low,
                p.high,
                j.median,
                j.low,
                j.high,
                s.valid_rounds,
                w.rounds
            ));
        }
    }
    if r.rss_start_bytes == 0 {
        return out;
    }
    out.push_str(&format!(
        "  RSS at 10x over {:.0} s: {:.1} MiB -> {:.1} MiB ({:+.1}%, goal <= +5%)\n",
        r.rss_seconds,
        r.rss_start_bytes as f64 / 1048576.0,
        r.rss_end_bytes as f64 / 1048576.0,
        r.rss_growth * 100.0
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn a_step_is_generator_limited_by_a_busy_core_or_late_sends() {
        use super::generator_limited;
        assert_eq!(generator_limited(0.5, 1_400), None);
        assert_eq!(generator_limited(0.92, 1_400).as_deref(), Some("the generator used 92% of its core"));
        assert_eq!(generator_limited(0.3, 42_111).as_deref(), Some("the generator's send lag p99 was 42.1 ms"));
    }

    #[test]
    fn a_spread_is_the_median_round_between_the_lowest_and_highest() {
        let s = Spread::of(vec![0.9, 0.5, 0.7]);
        assert_eq!((s.median, s.low, s.high), (0.7, 0.5, 0.9));
        let s = Spread::of(vec![2.0, 1.0]);
        assert_eq!((s.median, s.low, s.high), (1.5, 1.0, 2.0));
    }
}
