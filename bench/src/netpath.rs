//! `strata-bench netpath`: what the network path costs per request, re-measuring the choice of
//! the node's. Four servers answer PING on one pinned core, driven by the same closed-loop
//! generator on another: redis-server (RESP PING, the peer), a plain PING responder on glommio's
//! sockets and one on the node's own io_uring loop (`strata_ioengine::echo`, RESP), and the
//! node itself (native PING, answered before admission: the node's framing and dispatch, without
//! admission, tickets, routing or storage). Each is measured free and again held to a CPU quota, so the
//! server and not the generator is the bottleneck; the servers take turns within each round,
//! and every ratio is taken within a round against redis-server.

use crate::compare::median;
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
    pub seconds: f64,
    /// Percent of one CPU for the quota rows (none: skip them).
    pub quota_percent: Option<u32>,
    pub rounds: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub round: usize,
    pub server: &'static str,
    pub quota_percent: Option<u32>,
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub server_cpu_us_per_op: f64,
    pub server_cpu_share: f64,
    pub generator_cpu_share: f64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub server: &'static str,
    pub quota_percent: Option<u32>,
    /// Server CPU per request against redis-server's: median of the rounds (lowest, highest).
    pub cpu_vs_redis: (f64, f64, f64),
    /// Requests per second against redis-server's.
    pub throughput_vs_redis: (f64, f64, f64),
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub connections: usize,
    pub seconds: f64,
    pub rounds: usize,
    pub server_cpu: usize,
    pub generator_cpu: usize,
    pub rows: Vec<Row>,
    pub ratios: Vec<Ratio>,
}

const SERVERS: [ServerKind; 4] =
    [ServerKind::RedisNoPersistence, ServerKind::EchoGlommio, ServerKind::EchoUring, ServerKind::Strata];

fn measure(args: &Args, round: usize, server: &Server, quota: Option<u32>) -> Result<Row, String> {
    let load = LoadSpec {
        addr: server.addr,
        proto: if server.kind == ServerKind::Strata { Proto::Native } else { Proto::Resp },
        op: Op::Ping,
        keys: Keys::Uniform(1),
        value_bytes: 0,
        connections: args.connections,
        arrival: Arrival::Closed { depth: 1 },
        seconds: args.seconds,
        deadline: Duration::from_secs(10),
        priority: Priority::High,
        seed: 42,
        backoff: false,
    };
    let cpu0 = server.cpu_us();
    let result = loadgen::run(&load)?;
    let server_cpu_us = server.cpu_us().saturating_sub(cpu0);
    let h = &result.latency_ok_us;
    Ok(Row {
        round,
        server: server.kind.name(),
        quota_percent: quota,
        ops_per_s: result.ok_per_s(),
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        server_cpu_us_per_op: server_cpu_us as f64 / result.ok.max(1) as f64,
        server_cpu_share: server_cpu_us as f64 / result.elapsed.as_micros() as f64,
        generator_cpu_share: result.generator_cpu_share(),
        failed: result.failed + result.rejected + result.not_found,
    })
}

pub fn run(args: &Args) -> Result<Report, String> {
    strata_ioengine::uring::pin_current_thread(args.generator_cpu).map_err(|e| e.to_string())?;
    let quotas: Vec<Option<u32>> = std::iter::once(None).chain(args.quota_percent.map(Some)).collect();
    let mut rows = Vec::new();
    for round in 0..args.rounds {
        for &quota in &quotas {
            let mut kinds = SERVERS.to_vec();
            // Odd rounds run the servers in the other order: none always goes first.
            if round % 2 == 1 {
                kinds.reverse();
            }
            for kind in kinds {
                let dir = args.dir.join("server");
                let mut server = Server::start(kind, args.server_cpu, &dir, crate::compare::STRATA_IN_MEMORY)?;
                if let Some(percent) = quota {
                    server.limit_cpu(percent, 10_000)?;
                }
                let row = measure(args, round, &server, quota)?;
                server.stop();
                if row.failed > 0 || row.ops_per_s == 0.0 {
                    return Err(format!("{} answered {} PINGs wrongly (round {round})", kind.name(), row.failed));
                }
                rows.push(row);
            }
        }
    }
    let _ = std::fs::remove_dir_all(args.dir.join("server"));
    let find = |round: usize, server: &str, quota: Option<u32>| {
        rows.iter().find(|r| r.round == round && r.server == server && r.quota_percent == quota)
    };
    let spread = |mut values: Vec<f64>| {
        let m = median(&mut values);
        (m, values[0], values[values.len() - 1])
    };
    let mut ratios = Vec::new();
    for &quota in &quotas {
        for kind in &SERVERS[1..] {
            let pairs: Vec<(&Row, &Row)> = (0..args.rounds)
                .filter_map(|round| {
                    find(round, kind.name(), quota).zip(find(round, ServerKind::RedisNoPersistence.name(), quota))
                })
                .collect();
            ratios.push(Ratio {
                server: kind.name(),
                quota_percent: quota,
                cpu_vs_redis: spread(
                    pairs.iter().map(|(s, r)| s.server_cpu_us_per_op / r.server_cpu_us_per_op).collect(),
                ),
                throughput_vs_redis: spread(pairs.iter().map(|(s, r)| s.ops_per_s / r.ops_per_s).collect()),
            });
        }
    }
    Ok(Report {
        connections: args.connections,
        seconds: args.seconds,
        rounds: args.rounds,
        server_cpu: args.server_cpu,
        generator_cpu: args.generator_cpu,
        rows,
        ratios,
    })
}

pub fn summary(r: &Report) -> String {
    let mut out = format!(
        "netpath: PING over {} connections, one outstanding each, {} s per row, {} rounds; server on core {}, \
         generator on core {}\n",
        r.connections, r.seconds, r.rounds, r.server_cpu, r.generator_cpu
    );
    out.push_str(&format!(
        "  {:>5} {:<26} {:>6} {:>10} {:>7} {:>7} {:>9} {:>7} {:>7}\n",
        "round", "server", "quota", "ops/s", "p50us", "p99us", "cpu us/op", "srv cpu", "gen cpu"
    ));
    for row in &r.rows {
        out.push_str(&format!(
            "  {:>5} {:<26} {:>6} {:>10.0} {:>7} {:>7} {:>9.2} {:>6.0}% {:>6.0}%\n",
            row.round,
            row.server,
            row.quota_percent.map_or("-".to_string(), |q| format!("{q}%")),
            row.ops_per_s,
            row.p50_us,
            row.p99_us,
            row.server_cpu_us_per_op,
            row.server_cpu_share * 100.0,
            row.generator_cpu_share * 100.0
        ));
    }
    out.push_str("  against redis-server, median of the rounds (lowest-highest):\n");
    for ratio in &r.ratios {
        let (c, cl, ch) = ratio.cpu_vs_redis;
        let (t, tl, th) = ratio.throughput_vs_redis;
        out.push_str(&format!(
            "  {:<26} {:>6}  CPU per request {c:.2}x ({cl:.2}-{ch:.2}), throughput {t:.2}x ({tl:.2}-{th:.2})\n",
            ratio.server,
            ratio.quota_percent.map_or("-".to_string(), |q| format!("{q}%")),
        ));
    }
    out
}
