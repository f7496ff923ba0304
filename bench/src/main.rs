//! `strata-bench`: Strata's bench suite. Every workload runs beside a peer or a physical limit
//! measured by the same harness in the same run, and reports ratios.

mod devstat;
mod engine_get;
mod engine_put;
mod fio;

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
        /// Skip RocksDB's db_bench.
        #[bpaf(long("no-db-bench"))]
        no_db_bench: bool,
        /// Print one JSON object naming every figure.
        #[bpaf(long)]
        json: bool,
    },
}

/// One JSON object naming every figure, or the human-readable summary.
fn render<R: serde::Serialize>(report: &R, json: bool, summary: fn(&R) -> String) -> String {
    if json { serde_json::to_string_pretty(report).expect("the report serializes") } else { summary(report) }
}

fn main() {
    let result = match command().run() {
        Command::EngineGet {
            dir,
            cpu,
            entries,
            value_bytes,
            inflight,
            seconds,
            memory_budget_mib,
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
                db_bench: !no_db_bench,
            };
            engine_get::run(&args).map(|report| render(&report, json, engine_get::summary))
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
