//! `strata-tool`: operator tools for Strata's data directories.
//!
//! Today: `inspect` (read-only decoding of WAL segments, saying where damage starts) and
//! `check-env` (the start-up checks). Scrub, repair, rebuild-disk and route come with the cold
//! tier and the routing table.

mod inspect;

use bpaf::Bpaf;
use std::path::PathBuf;
use strata_ioengine::envcheck::{EnvRequirements, check_environment};
use strata_ioengine::executor::{IO_MEMORY_BYTES_DEFAULT, online_cpus};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Clone, Bpaf)]
#[bpaf(options, version)]
/// Operator tools for Strata data directories.
enum Command {
    /// Decode WAL segment files (or every segment of a shard's `wal/` directory), read-only.
    #[bpaf(command)]
    Inspect {
        /// Print JSON instead of text.
        #[bpaf(long)]
        json: bool,
        /// A segment file, or a directory of segment files.
        #[bpaf(positional("PATH"))]
        path: PathBuf,
    },
    /// Run the start-up checks (io_uring, memlock, O_DIRECT) for a data directory.
    #[bpaf(command("check-env"))]
    CheckEnv {
        /// Print JSON instead of text.
        #[bpaf(long)]
        json: bool,
        /// Data directory (SSD) to check.
        #[bpaf(long("data-dir"), argument("DIR"), fallback(PathBuf::from("./strata-data")), debug_fallback)]
        data_dir: PathBuf,
    },
}

fn main() {
    let code = match command().run() {
        Command::Inspect { json, path } => inspect::run(&path, json),
        Command::CheckEnv { json, data_dir } => check_env(&data_dir, json),
    };
    std::process::exit(code);
}

fn check_env(data_dir: &std::path::Path, json: bool) -> i32 {
    let req = EnvRequirements {
        memlock_bytes_needed: (IO_MEMORY_BYTES_DEFAULT * online_cpus().len()) as u64,
        direct_io_paths: vec![data_dir.to_path_buf()],
    };
    let findings = check_environment(&req);
    let ok = findings.iter().all(|f| f.ok);
    if json {
        let list: Vec<_> =
            findings.iter().map(|f| serde_json::json!({ "check": f.check, "ok": f.ok, "detail": f.detail })).collect();
        println!("{}", serde_json::json!({ "ok": ok, "findings": list }));
    } else {
        for f in &findings {
            println!("{:<11} {:<4} {}", f.check, if f.ok { "ok" } else { "FAIL" }, f.detail);
        }
    }
    i32::from(!ok)
}
