//! `strata-bench`: Strata's bench suite. Every workload runs beside a peer or a physical limit
//! measured by the same harness in the same run, and reports ratios.

mod cold_get;
mod compare;
mod devstat;
mod engine_get;
mod engine_put;
mod fio;
mod loadgen;
mod netpath;
mod overload;
mod procstat;
mod promtext;
mod servers;
mod thief;

use bpaf::Bpaf;
use std::path::PathBuf;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Clone, Bpaf)]
#[bpaf(options, version)]
/// Strata's bench suite.
enum Command {
    /// Durable puts on one pinned core from concurrent writers, beside fio's synced 4 KiB writes.
    #[bpaf(command("engine-put"))]
    EnginePut {
        /// Directory on the disk under test (files are removed afterwards).
        #[bpaf(long, argument("DIR"), fallback(PathBuf::from("./strata-bench-data")), debug_fallback)]
        dir: PathBuf,
        /// Core to pin the engine and fio to.
        #[bpaf(long, argument("CPU"), fallback(0), display_fallback)]
        cpu: usize,
        /// Concurrent writers.
        #[bpaf(long, argument("N"), fallback(50), display_fallback)]
        writers: usize,
        /// Value size in bytes.
        #[bpaf(long("value-bytes"), argument("BYTES"), fallback(100), display_fallback)]
        value_bytes: usize,
        /// Measured seconds for each side.
        #[bpaf(long, argument("SECONDS"), fallback(10.0), display_fallback)]
        seconds: f64,
        /// Print one JSON object naming every figure.
        #[bpaf(long)]
        json: bool,
    },
    /// Random gets of sunk (cold) data: cold-disk and SSD reads per get, beside fio random reads
    /// of the cold blocks' size on the same directory.
    #[bpaf(command("cold-get"))]
    ColdGet {
        /// Directory for the shard (and the cold disks, unless --hdd names them).
        #[bpaf(long, argument("DIR"), fallback(PathBuf::from("./strata-bench-data")), debug_fallback)]
        dir: PathBuf,
        /// A cold disk directory (repeat; default: four folders under DIR).
        #[bpaf(long, argument("PATH"))]
        hdd: Vec<PathBuf>,
        /// Core to pin the engine and fio to.
        #[bpaf(long, argument("CPU"), fallback(0), display_fallback)]
        cpu: usize,
        /// Entries to load and sink.
        #[bpaf(long, argument("N"), fallback(2_000_000), display_fallback)]
        entries: u64,
        /// Value size in bytes.
        #[bpaf(long("value-bytes"), argument("BYTES"), fallback(100), display_fallback)]
        value_bytes: usize,
        /// Gets in flight (and fio's queue depth).
        #[bpaf(long, argument("N"), fallback(64), display_fallback)]
        inflight: usize,
        /// Measured seconds for each side.
        #[bpaf(long, argument("SECONDS"), fallback(10.0), display_fallback)]
        seconds: f64,
        /// Block cache for the link tables, in MiB (the node's default).
        #[bpaf(long("block-cache-mib"), argument("MIB"), fallback(64), display_fallback)]
        block_cache_mib: usize,
        /// Print one JSON object naming every figure.
        #[bpaf(long)]
        json: bool,
    },
    /// Random point gets over a dataset 10x the memory budget, beside fio random reads and db_bench.
    #[bpaf(command("engine-get"))]
    EngineGet {
        /// Directory on the disk under test (files are removed afterwards).
        #[bpaf(long, argument("DIR"), fallback(PathBuf::from("./strata-bench-data")), debug_fallback)]
        dir: PathBuf,
        /// Core to pin the engine, fio and db_bench to.
        #[bpaf(long, argument("CPU"), fallback(0), display_fallback)]
        cpu: usize,
        /// Entries to load.
        #[bpaf(long, argument("N"), fallback(20_000_000), display_fallback)]
        entries: u64,
        /// Value size in bytes.
        #[bpaf(long("value-bytes"), argument("BYTES"), fallback(100), display_fallback)]
        value_bytes: usize,
        /// Gets in flight (and db_bench threads).
        #[bpaf(long, argument("N"), fallback(64), display_fallback)]
        inflight: usize,
        /// Measured seconds for each side.
        #[bpaf(long, argument("SECONDS"), fallback(10.0), display_fallback)]
        seconds: f64,
        /// The shard's memory budget in MiB (memtable, block cache, pinned indexes and filters).
        #[bpaf(long("memory-budget-mib"), argument("MIB"), fallback(192), display_fallback)]
        memory_budget_mib: usize,
        /// Puts each of the 50 loading writers sends together, as one MPUT would (1: single puts).
        #[bpaf(long("ingest-batch"), argument("N"), fallback(16), display_fallback)]
        ingest_batch: usize,
        /// Skip RocksDB's db_bench.
        #[bpaf(long("no-db-bench"))]
        no_db_bench: bool,
        /// Print one JSON object naming every figure.
        #[bpaf(long)]
        json: bool,
    },
    /// Strata against redis-server over the network: durable PUT vs SET, GET vs GET, server CPU
    /// per request, with and without a CPU quota on the server.
    #[bpaf(command("compare"))]
    Compare {
        #[bpaf(external(net_args))]
        net: NetArgs,
        /// Pipeline depth per connection.
        #[bpaf(long, argument("N"), fallback(1), display_fallback)]
        depth: usize,
        /// CPU quota for the quota runs, percent of one core (0: skip them).
        #[bpaf(long("quota-percent"), argument("PERCENT"), fallback(50), display_fallback)]
        quota_percent: u32,
        /// Rounds of every row, servers taking turns; each ratio is the median of its rounds'.
        #[bpaf(long("rounds"), argument("N"), fallback(3), display_fallback)]
        rounds: usize,
        /// Print one JSON object naming every figure.
        #[bpaf(long)]
        json: bool,
    },
    /// The network path alone: PING answered by redis-server, a plain responder on glommio's
    /// sockets, one on the node's io_uring loop, and the node; server CPU per request.
    #[bpaf(command("netpath"))]
    Netpath {
        #[bpaf(external(net_args))]
        net: NetArgs,
        /// CPU quota for the quota rows, percent of one core (0: skip them).
        #[bpaf(long("quota-percent"), argument("PERCENT"), fallback(50), display_fallback)]
        quota_percent: u32,
        /// Rounds of every row, servers taking turns.
        #[bpaf(long("rounds"), argument("N"), fallback(3), display_fallback)]
        rounds: usize,
        /// Print one JSON object naming every figure.
        #[bpaf(long)]
        json: bool,
    },
    /// Serve RESP PINGs on one core until killed (`netpath` starts it).
    #[bpaf(command("echo-server"))]
    EchoServer {
        /// `glommio` or `uring`.
        #[bpaf(long, argument("RUNTIME"))]
        runtime: String,
        #[bpaf(long, argument("ADDR"))]
        addr: std::net::SocketAddr,
        #[bpaf(long, argument("CPU"), fallback(0), display_fallback)]
        cpu: usize,
    },
    /// Take PERCENT of this process's core in slices, until killed (`overload --shrink thief`
    /// starts it pinned and at real-time priority).
    #[bpaf(command("cpu-thief"))]
    CpuThief {
        #[bpaf(long, argument("PERCENT"))]
        percent: u32,
        #[bpaf(long("period-us"), argument("US"))]
        period_us: u32,
    },
    /// One load against a running server: throughput and latency.
    #[bpaf(command("load"))]
    Load {
        #[bpaf(external(load_args))]
        load: LoadArgs,
    },
    /// Open-loop overload at 1x, 2x, 5x and 10x of measured capacity, disk-bound (SSD gets) and
    /// CPU-bound (memory gets), with and without client back-off.
    #[bpaf(command("overload"))]
    Overload {
        #[bpaf(external(net_args))]
        net: NetArgs,
        /// CPU quota of the server, percent of one core, so the generator can offer 10x.
        #[bpaf(long("quota-percent"), argument("PERCENT"), fallback(20), display_fallback)]
        quota_percent: u32,
        /// Seconds of the RSS watch at 10x.
        #[bpaf(long("rss-seconds"), argument("SECONDS"), fallback(30.0), display_fallback)]
        rss_seconds: f64,
        /// Entries for the disk-bound workload (beyond the memory budget).
        #[bpaf(long("disk-keys"), argument("N"), fallback(2_000_000), display_fallback)]
        disk_keys: u64,
        /// Which workloads to run: `both`, `disk` (SSD gets) or `cpu` (memory gets, then RSS).
        #[bpaf(long("workload"), argument("NAME"), fallback("both".to_string()), display_fallback)]
        workload: String,
        /// Rounds of each workload, each on a fresh node; every figure is the median of the
        /// rounds'.
        #[bpaf(long("rounds"), argument("N"), fallback(3), display_fallback)]
        rounds: usize,
        /// How the CPU-bound server is held to its share of the core: `quota` (a cgroup v1 CFS
        /// quota, 5 ms period, so freezes of up to 4 ms) or `thief` (a real-time process on its
        /// core taking the rest in slices of `--thief-period-us`).
        #[bpaf(long("shrink"), argument("HOW"), fallback("quota".to_string()), display_fallback)]
        shrink: String,
        /// The period of the CPU thief's slices, µs.
        #[bpaf(long("thief-period-us"), argument("US"), fallback(500), display_fallback)]
        thief_period_us: u32,
        /// The CPU-bound node's `queue-delay-max`, in milliseconds. By default 6 under a quota
        /// (its priority's share, 5.1 ms, above the 5 ms period, as docs/operations.md advises;
        /// the node's default of 3 is under the 4 ms freezes) and 3 with the thief.
        #[bpaf(long("cpu-queue-delay-max"), argument("MS"))]
        cpu_queue_delay_max: Option<u32>,
        /// Print one JSON object naming every figure.
        #[bpaf(long)]
        json: bool,
    },
}

/// One load against a running server (for exploring; the reports come from `compare`).
#[derive(Debug, Clone, Bpaf)]
struct LoadArgs {
    /// Server address.
    #[bpaf(long, argument("ADDR"))]
    addr: std::net::SocketAddr,
    /// Speak RESP (redis) instead of Strata's native protocol.
    #[bpaf(long)]
    resp: bool,
    /// Send GETs instead of PUTs.
    #[bpaf(long)]
    get: bool,
    #[bpaf(long, argument("N"), fallback(50))]
    connections: usize,
    #[bpaf(long, argument("N"), fallback(1))]
    depth: usize,
    #[bpaf(long, argument("N"), fallback(100_000))]
    keys: u64,
    #[bpaf(long, argument("SECONDS"), fallback(5.0))]
    seconds: f64,
    /// Open loop at this rate (requests/s) instead of closed loop.
    #[bpaf(long, argument("PER_S"))]
    rate: Option<f64>,
    /// Core to pin the generator to.
    #[bpaf(long("generator-cpu"), argument("CPU"), fallback(1))]
    generator_cpu: usize,
    /// Each request's deadline budget, ms (also the goodput threshold).
    #[bpaf(long("deadline-ms"), argument("MS"), fallback(1000))]
    deadline_ms: u64,
    /// Back off like the client library while the server refuses.
    #[bpaf(long)]
    backoff: bool,
}

/// What network workloads share.
#[derive(Debug, Clone, Bpaf)]
struct NetArgs {
    /// Directory for the servers' data (removed afterwards).
    #[bpaf(long, argument("DIR"), fallback(PathBuf::from("./strata-bench-data")), debug_fallback)]
    dir: PathBuf,
    /// Core the server is pinned to.
    #[bpaf(long("server-cpu"), argument("CPU"), fallback(0), display_fallback)]
    server_cpu: usize,
    /// Core the load generator is pinned to.
    #[bpaf(long("generator-cpu"), argument("CPU"), fallback(1), display_fallback)]
    generator_cpu: usize,
    /// Connections.
    #[bpaf(long, argument("N"), fallback(50), display_fallback)]
    connections: usize,
    /// Distinct keys.
    #[bpaf(long, argument("N"), fallback(1_000_000), display_fallback)]
    keys: u64,
    /// Value size in bytes.
    #[bpaf(long("value-bytes"), argument("BYTES"), fallback(100), display_fallback)]
    value_bytes: usize,
    /// Measured seconds per row.
    #[bpaf(long, argument("SECONDS"), fallback(10.0), display_fallback)]
    seconds: f64,
}

/// One JSON object naming every figure, or the human-readable summary.
fn render<R: serde::Serialize>(report: &R, json: bool, summary: fn(&R) -> String) -> String {
    if json { serde_json::to_string_pretty(report).expect("the report serializes") } else { summary(report) }
}

impl LoadArgs {
    fn into_spec(self) -> (loadgen::LoadSpec, usize) {
        let spec = loadgen::LoadSpec {
            addr: self.addr,
            proto: if self.resp { loadgen::Proto::Resp } else { loadgen::Proto::Native },
            op: if self.get { loadgen::Op::Get } else { loadgen::Op::Put },
            keys: loadgen::Keys::Uniform(self.keys),
            value_bytes: 100,
            connections: self.connections,
            arrival: match self.rate {
                Some(rate) => loadgen::Arrival::Open { rate, poisson: true },
                None => loadgen::Arrival::Closed { depth: self.depth },
            },
            seconds: self.seconds,
            deadline: std::time::Duration::from_millis(self.deadline_ms),
            priority: strata_format::protocol::Priority::High,
            seed: 1,
            backoff: self.backoff,
        };
        (spec, self.generator_cpu)
    }
}

fn main() {
    let result = match strata_node::config::parse_command_line(command()) {
        Command::EngineGet {
            dir,
            cpu,
            entries,
            value_bytes,
            inflight,
            seconds,
            memory_budget_mib,
            ingest_batch,
            no_db_bench,
            json,
        } => {
            let args = engine_get::Args {
                dir,
                cpu,
                entries,
                value_bytes,
                inflight,
                seconds,
                memory_budget_bytes: memory_budget_mib << 20,
                ingest_batch: ingest_batch.max(1),
                db_bench: !no_db_bench,
            };
            engine_get::run(&args).map(|report| render(&report, json, engine_get::summary))
        }
        Command::ColdGet { dir, hdd, cpu, entries, value_bytes, inflight, seconds, block_cache_mib, json } => {
            let args = cold_get::Args {
                dir,
                hdd,
                cpu,
                entries,
                value_bytes,
                inflight,
                seconds,
                block_cache_bytes: block_cache_mib << 20,
            };
            cold_get::run(&args).map(|report| render(&report, json, cold_get::summary))
        }
        Command::Load { load } => loadgen::run_once(&load.into_spec()),
        Command::Netpath { net, quota_percent, rounds, json } => {
            let args = netpath::Args {
                dir: net.dir,
                server_cpu: net.server_cpu,
                generator_cpu: net.generator_cpu,
                connections: net.connections,
                seconds: net.seconds,
                quota_percent: (quota_percent > 0).then_some(quota_percent),
                rounds: rounds.max(1),
            };
            netpath::run(&args).map(|report| render(&report, json, netpath::summary))
        }
        Command::CpuThief { percent, period_us } => {
            thief::run(percent, std::time::Duration::from_micros(period_us.max(1).into()))
        }
        Command::EchoServer { runtime, addr, cpu } => {
            let runtime = match runtime.as_str() {
                "glommio" => Ok(strata_ioengine::echo::Runtime::Glommio),
                "uring" => Ok(strata_ioengine::echo::Runtime::Uring),
                other => Err(format!("--runtime {other}: expected glommio or uring")),
            };
            runtime.and_then(|runtime| strata_ioengine::echo::serve(runtime, addr, cpu)).map(|()| String::new())
        }
        Command::Compare { net, depth, quota_percent, rounds, json } => {
            let args = compare::Args {
                dir: net.dir,
                server_cpu: net.server_cpu,
                generator_cpu: net.generator_cpu,
                connections: net.connections,
                depth,
                keys: net.keys,
                value_bytes: net.value_bytes,
                seconds: net.seconds,
                quota_percent: (quota_percent > 0).then_some(quota_percent),
                rounds: rounds.max(1),
            };
            compare::run(&args).map(|report| render(&report, json, compare::summary))
        }
        Command::Overload {
            net,
            quota_percent,
            rss_seconds,
            disk_keys,
            workload,
            rounds,
            shrink,
            thief_period_us,
            cpu_queue_delay_max,
            json,
        } => {
            let workloads = match workload.as_str() {
                "both" => Ok((true, true)),
                "disk" => Ok((true, false)),
                "cpu" => Ok((false, true)),
                other => Err(format!("--workload {other}: expected both, disk or cpu")),
            };
            let shrink = match shrink.as_str() {
                "quota" => Ok(overload::Shrink::Quota),
                "thief" if (1..=1_000_000).contains(&thief_period_us) => {
                    Ok(overload::Shrink::Thief { period_us: thief_period_us })
                }
                "thief" => Err(format!("--thief-period-us {thief_period_us}: expected 1 to 1000000")),
                other => Err(format!("--shrink {other}: expected quota or thief")),
            };
            workloads.and_then(|w| shrink.map(|s| (w, s))).and_then(|((disk, cpu), shrink)| {
                let args = overload::Args {
                    disk,
                    cpu,
                    dir: net.dir,
                    server_cpu: net.server_cpu,
                    generator_cpu: net.generator_cpu,
                    connections: net.connections,
                    memory_keys: net.keys,
                    disk_keys,
                    value_bytes: net.value_bytes,
                    seconds: net.seconds,
                    quota_percent,
                    shrink,
                    cpu_queue_delay_max_ms: cpu_queue_delay_max.unwrap_or(shrink.queue_delay_max_ms()),
                    rss_seconds,
                    rounds: rounds.max(1),
                };
                overload::run(&args).map(|report| render(&report, json, overload::summary))
            })
        }
        Command::EnginePut { dir, cpu, writers, value_bytes, seconds, json } => {
            let args = engine_put::Args { dir, cpu, writers, value_bytes, seconds };
            engine_put::run(&args).map(|report| render(&report, json, engine_put::summary))
        }
    };
    match result {
        Ok(text) => println!("{text}"),
        Err(e) => {
            eprintln!("strata-bench: {e}");
            std::process::exit(1);
        }
    }
}
