//! `strata-bench`: Strata's bench suite. Every workload runs beside a peer or a physical limit
//! measured by the same harness in the same run, and reports ratios.

mod devstat;
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
}

fn main() {
    let result = match command().run() {
        Command::EnginePut { dir, cpu, writers, value_bytes, seconds, json } => {
            let args = engine_put::Args { dir, cpu, writers, value_bytes, seconds };
            engine_put::run(&args).map(|report| {
                if json {
                    serde_json::to_string_pretty(&report).expect("the report serializes")
                } else {
                    engine_put::summary(&report)
                }
            })
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
