//! `strata-bench compare`: Strata against redis-server on the same machine, same load, same run.
//!
//! The server is pinned to one core and the generator to another. Durable PUT is compared with
//! Redis SET without persistence (the CPU bar) and with `appendfsync always` (the durability
//! peer); GET of memory-resident data with Redis GET. The same again with both servers held to
//! one cgroup CPU quota, so the server, not the generator, is the bottleneck. The generator's own
//! CPU is reported: a saturated generator makes every ratio meaningless.
//!
//! The machines are shared and noisy: a row moves by 10–20% between runs. So every row is
//! measured in several rounds, the servers taking turns within each, and each ratio is taken
//! within a round (Strata against the peer measured just before or after it); the reported
//! ratio is the median of the rounds', with the lowest and highest beside it.

use crate::fio;
use crate::loadgen::{self, Arrival, Keys, LoadSpec, Op, Proto};
use crate::servers::{Server, ServerKind};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use strata_format::protocol::Priority;

#[derive(Debug, Clone)]
pub struct Args {
    pub dir: PathBuf,
    pub server_cpu: usize,
    pub generator_cpu: usize,
    pub connections: usize,
    pub depth: usize,
    pub keys: u64,
    pub value_bytes: usize,
    pub seconds: f64,
    /// Percent of one CPU for the quota runs (none: skip them).
    pub quota_percent: Option<u32>,
    /// Rounds of every row.
    pub rounds: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Which round (from 0) measured it.
    pub round: usize,
    pub workload: &'static str,
    pub server: &'static str,
    pub quota_percent: Option<u32>,
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub server_cpu_us_per_op: f64,
    pub server_cpu_share: f64,
    pub generator_cpu_share: f64,
    pub failed: u64,
    /// Strata's PUT rows: group commits (each one write and one fdatasync) per second.
    pub commits_per_s: Option<f64>,
    /// Strata's PUT rows: PUTs acknowledged per group commit.
    pub ops_per_commit: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub name: &'static str,
    /// The median of the rounds' ratios.
    pub value: f64,
    /// The lowest and the highest round's ratio.
    pub low: f64,
    pub high: f64,
    pub goal: &'static str,
    /// Judged on the median.
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub connections: usize,
    pub depth: usize,
    pub keys: u64,
    pub value_bytes: usize,
    pub seconds: f64,
    pub rounds: usize,
    pub server_cpu: usize,
    pub generator_cpu: usize,
    pub rows: Vec<Row>,
    /// The disk's limit for durable PUTs, once per round before its PUT rows: fio writing 4 KiB
    /// with an fdatasync after each (io_uring, O_DIRECT, one in flight), pinned to the server's
    /// core, in the same directory: how many write + fdatasync cycles per second the disk
    /// completes, and what each costs fio in CPU.
    pub fio_synced_writes: Vec<fio::FioResult>,
    pub ratios: Vec<Ratio>,
}

/// Strata's configuration for the comparison: everything in memory, like Redis.
pub const STRATA_IN_MEMORY: &str = r#"
[shard]
memory-budget = "3 GiB"
memtable-max = "1536 MiB"
flush-at = "1536 MiB"
block-cache = "256 MiB"
ssd-reserve = "256 MiB"
ssd-throttle = "512 MiB"
"#;

fn spec(args: &Args, server: &Server, op: Op, keys: Keys, depth: usize, seconds: f64) -> LoadSpec {
    LoadSpec {
        addr: server.addr,
        proto: if server.kind == ServerKind::Strata { Proto::Native } else { Proto::Resp },
        op,
        keys,
        value_bytes: args.value_bytes,
        connections: args.connections,
        arrival: Arrival::Closed { depth },
        seconds,
        deadline: Duration::from_secs(10),
        priority: Priority::High,
        seed: 42,
        backoff: false,
    }
}

fn measure(
    args: &Args,
    round: usize,
    server: &Server,
    workload: &'static str,
    op: Op,
    quota: Option<u32>,
) -> Result<Row, String> {
    let load = spec(args, server, op, Keys::Uniform(args.keys), args.depth, args.seconds);
    let commits = server.kind == ServerKind::Strata && op == Op::Put;
    let fsyncs0 = if commits { strata_fsyncs(server)? } else { 0 };
    let cpu0 = server.cpu_us();
    let result = loadgen::run(&load)?;
    let server_cpu_us = server.cpu_us().saturating_sub(cpu0);
    let ops = result.ok + result.not_found;
    let fsyncs = if commits { strata_fsyncs(server)?.saturating_sub(fsyncs0) } else { 0 };
    let h = &result.latency_ok_us;
    Ok(Row {
        round,
        workload,
        server: server.kind.name(),
        quota_percent: quota,
        ops_per_s: result.ok_per_s(),
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        server_cpu_us_per_op: server_cpu_us as f64 / ops.max(1) as f64,
        server_cpu_share: server_cpu_us as f64 / result.elapsed.as_micros() as f64,
        generator_cpu_share: result.generator_cpu_share(),
        failed: result.failed + result.rejected,
        commits_per_s: commits.then(|| fsyncs as f64 / result.elapsed.as_secs_f64()),
        ops_per_commit: commits.then(|| ops as f64 / fsyncs.max(1) as f64),
    })
}

/// The fdatasyncs Strata's shard has done so far (its STATS answer).
fn strata_fsyncs(server: &Server) -> Result<u64, String> {
    let mut client = strata_node::client::Client::connect(server.addr).map_err(|e| format!("STATS: {e}"))?;
    let text = client.stats().map_err(|e| format!("STATS: {e}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("fsyncs ")?.trim().parse().ok())
        .ok_or_else(|| format!("STATS has no fsyncs line: {text}"))
}

pub fn run(args: &Args) -> Result<Report, String> {
    strata_ioengine::uring::pin_current_thread(args.generator_cpu).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    let mut fio_synced = Vec::new();
    let quotas: Vec<Option<u32>> = std::iter::once(None).chain(args.quota_percent.map(Some)).collect();
    for round in 0..args.rounds {
        fio_synced.push(fio::synced_4k_writes(&args.dir, args.server_cpu, "io_uring", args.seconds)?);
        measure_round(args, round, &quotas, &mut rows)?;
    }
    let _ = std::fs::remove_dir_all(args.dir.join("server"));
    let ratios = ratios(args, &rows, &fio_synced);
    Ok(Report {
        connections: args.connections,
        depth: args.depth,
        keys: args.keys,
        value_bytes: args.value_bytes,
        seconds: args.seconds,
        rounds: args.rounds,
        server_cpu: args.server_cpu,
        generator_cpu: args.generator_cpu,
        rows,
        fio_synced_writes: fio_synced,
        ratios,
    })
}

/// One round: every row once. Odd rounds start each group with the peers, so neither server
/// always runs first (on a machine that warms up or tires during a group).
fn measure_round(args: &Args, round: usize, quotas: &[Option<u32>], rows: &mut Vec<Row>) -> Result<(), String> {
    let ordered = |mut kinds: Vec<ServerKind>| {
        if round % 2 == 1 {
            kinds.reverse();
        }
        kinds
    };
    for &quota in quotas {
        let puts = ordered(if quota.is_none() {
            vec![ServerKind::Strata, ServerKind::RedisNoPersistence, ServerKind::RedisFsyncAlways]
        } else {
            vec![ServerKind::Strata, ServerKind::RedisNoPersistence]
        });
        for kind in puts {
            let mut server = Server::start(kind, args.server_cpu, &args.dir.join("server"), STRATA_IN_MEMORY)?;
            if let Some(percent) = quota {
                server.limit_cpu(percent, 10_000)?;
            }
            rows.push(measure(args, round, &server, "PUT", Op::Put, quota)?);
        }
        for kind in ordered(vec![ServerKind::Strata, ServerKind::RedisNoPersistence]) {
            let mut server = Server::start(kind, args.server_cpu, &args.dir.join("server"), STRATA_IN_MEMORY)?;
            let proto = if kind == ServerKind::Strata { Proto::Native } else { Proto::Resp };
            loadgen::preload(server.addr, proto, args.keys, args.value_bytes, args.connections)?;
            if let Some(percent) = quota {
                server.limit_cpu(percent, 10_000)?;
            }
            rows.push(measure(args, round, &server, "GET", Op::Get, quota)?);
        }
    }
    Ok(())
}

/// The median of `values` (the mean of the middle two for an even count); leaves them sorted.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

fn ratios(args: &Args, rows: &[Row], fio_synced: &[fio::FioResult]) -> Vec<Ratio> {
    let find = |round: usize, workload: &str, server: ServerKind, quota: Option<u32>| {
        rows.iter().find(|r| {
            r.round == round && r.workload == workload && r.server == server.name() && r.quota_percent == quota
        })
    };
    // One ratio per round that measured both rows.
    let per_round = |of: &dyn Fn(usize) -> Option<f64>| -> Vec<f64> { (0..args.rounds).filter_map(of).collect() };
    let mut ratios = Vec::new();
    let mut ratio = |name: &'static str, mut values: Vec<f64>, goal: &'static str, met: fn(f64) -> bool| {
        if values.is_empty() {
            return;
        }
        let value = median(&mut values);
        let (low, high) = (values[0], values[values.len() - 1]);
        ratios.push(Ratio { name, value, low, high, goal, met: met(value) });
    };
    let (strata, redis, redis_fsync) =
        (ServerKind::Strata, ServerKind::RedisNoPersistence, ServerKind::RedisFsyncAlways);
    let cpu = |w: &'static str, q: Option<u32>| {
        per_round(&|round| {
            find(round, w, strata, q)
                .zip(find(round, w, redis, q))
                .map(|(s, r)| s.server_cpu_us_per_op / r.server_cpu_us_per_op)
        })
    };
    let tput = |w: &'static str, peer: ServerKind, q: Option<u32>| {
        per_round(&|round| {
            find(round, w, strata, q).zip(find(round, w, peer, q)).map(|(s, r)| s.ops_per_s / r.ops_per_s)
        })
    };
    ratio("PUT server CPU per op vs redis SET (no persistence)", cpu("PUT", None), "<= 1.0", |v| v <= 1.0);
    ratio("PUT throughput vs redis SET (no persistence)", tput("PUT", redis, None), ">= 0.9", |v| v >= 0.9);
    ratio("PUT throughput vs redis SET (appendfsync always)", tput("PUT", redis_fsync, None), ">= 2.0", |v| v >= 2.0);
    ratio("GET server CPU per op vs redis GET", cpu("GET", None), "<= 0.8", |v| v <= 0.8);
    // The disk's share of a durable PUT: Strata's commit rate against the most write + fdatasync
    // cycles the disk completes one at a time, and the PUT's CPU without the least that a cycle
    // costs (fio's CPU per cycle, spread over the PUTs that share it).
    ratio(
        "Strata group commits/s vs fio write+fdatasync/s (QD1)",
        per_round(&|round| {
            let fio = fio_synced.get(round)?;
            find(round, "PUT", strata, None)?.commits_per_s.map(|c| c / fio.iops)
        }),
        "(reported)",
        |_| true,
    );
    ratio(
        "PUT server CPU per op less fio's per-cycle CPU / PUTs per commit, vs redis SET",
        per_round(&|round| {
            let (fio, s, r) =
                (fio_synced.get(round)?, find(round, "PUT", strata, None)?, find(round, "PUT", redis, None)?);
            let floor = fio.cpu_us_per_op / s.ops_per_commit?;
            Some((s.server_cpu_us_per_op - floor) / r.server_cpu_us_per_op)
        }),
        "(reported)",
        |_| true,
    );
    if let Some(q) = args.quota_percent {
        ratio("PUT throughput vs redis SET, CPU quota", tput("PUT", redis, Some(q)), "(reported)", |_| true);
        ratio("GET throughput vs redis GET, CPU quota", tput("GET", redis, Some(q)), "(reported)", |_| true);
        ratio("PUT server CPU per op vs redis SET, CPU quota", cpu("PUT", Some(q)), "(reported)", |_| true);
        ratio("GET server CPU per op vs redis GET, CPU quota", cpu("GET", Some(q)), "(reported)", |_| true);
    }
    ratios
}

pub fn summary(r: &Report) -> String {
    let mut out = format!(
        "compare: {} connections x depth {}, {} keys, {} B values, {} s per row, {} rounds; server on core {}, \
         generator on core {}\n",
        r.connections, r.depth, r.keys, r.value_bytes, r.seconds, r.rounds, r.server_cpu, r.generator_cpu
    );
    out.push_str(&format!(
        "  {:>5} {:<5} {:<28} {:>6} {:>10} {:>7} {:>7} {:>8} {:>8} {:>9} {:>7} {:>7}\n",
        "round",
        "op",
        "server",
        "quota",
        "ops/s",
        "p50us",
        "p99us",
        "p99.9us",
        "max us",
        "cpu us/op",
        "srv cpu",
        "gen cpu"
    ));
    for row in &r.rows {
        out.push_str(&format!(
            "  {:>5} {:<5} {:<28} {:>6} {:>10.0} {:>7} {:>7} {:>8} {:>8} {:>9.2} {:>6.0}% {:>6.0}%{}\n",
            row.round,
            row.workload,
            row.server,
            row.quota_percent.map_or("-".to_string(), |q| format!("{q}%")),
            row.ops_per_s,
            row.p50_us,
            row.p99_us,
            row.p999_us,
            row.max_us,
            row.server_cpu_us_per_op,
            row.server_cpu_share * 100.0,
            row.generator_cpu_share * 100.0,
            if row.failed > 0 { format!("  ({} failed)", row.failed) } else { String::new() },
        ));
    }
    for (round, fio) in r.fio_synced_writes.iter().enumerate() {
        out.push_str(&format!(
            "  round {round}: fio write 4 KiB + fdatasync, QD1, io_uring, O_DIRECT: {:.0} cycles/s, {:.0} us each at the \
             median, fio CPU {:.1} us per cycle\n",
            fio.iops, fio.lat_p50_us, fio.cpu_us_per_op
        ));
    }
    for (row, commits, per) in r.rows.iter().filter_map(|row| Some((row, row.commits_per_s?, row.ops_per_commit?))) {
        out.push_str(&format!(
            "  round {}: strata PUT{}: {commits:.0} group commits/s, {per:.1} PUTs per commit, server CPU {:.1} us per commit\n",
            row.round,
            row.quota_percent.map_or(String::new(), |q| format!(" at {q}%")),
            row.server_cpu_us_per_op * per
        ));
    }
    for ratio in &r.ratios {
        let verdict = if ratio.goal.starts_with('(') {
            String::new()
        } else if ratio.met {
            " met".into()
        } else {
            " NOT met".into()
        };
        out.push_str(&format!(
            "  {:<55} {:>6.2}x ({:.2}-{:.2})  goal {}{verdict}\n",
            ratio.name, ratio.value, ratio.low, ratio.high, ratio.goal
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_is_the_middle_round_or_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [7.0]), 7.0);
    }
}
