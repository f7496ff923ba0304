//! `strata-tool`: operator tools for Strata's data directories.
//!
//! Today: `inspect` (read-only decoding of WAL segments, saying where damage starts),
//! `check-env` (the start-up checks) and `route generate` (writes the committed routing table).
//! Scrub, repair and rebuild-disk come with the cold tier.

mod inspect;

use bpaf::Bpaf;
use std::path::{Path, PathBuf};
use std::time::Instant;
use strata_format::key::BUCKET_COUNT;
use strata_format::route::{GROUP_COUNT_MAX, ROUTE_BIN, RouteHeader, RouteTable};
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
    /// The routing table: bucket -> group for every group count 1..=1000.
    #[bpaf(command)]
    Route(#[bpaf(external(route_command))] RouteCommand),
}

#[derive(Debug, Clone, Bpaf)]
enum RouteCommand {
    /// Generate the routing table and write it.
    ///
    /// Run from the repository root to refresh the committed `format/data/route.bin`.
    #[bpaf(command)]
    Generate {
        /// Where to write the table.
        #[bpaf(long, argument("PATH"), fallback(PathBuf::from("format/data/route.bin")), debug_fallback)]
        out: PathBuf,
    },
}

fn main() {
    let code = match command().run() {
        Command::Inspect { json, path } => inspect::run(&path, json),
        Command::CheckEnv { json, data_dir } => check_env(&data_dir, json),
        Command::Route(RouteCommand::Generate { out }) => route_generate(&out),
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

fn route_generate(out: &Path) -> i32 {
    let started = Instant::now();
    let table = RouteTable::generate();
    let bytes = table.encode();
    let generate_ms = started.elapsed().as_millis();
    // Check what is about to be written before writing it.
    let decoded = RouteTable::decode(&bytes).expect("a freshly encoded route table should decode");
    assert!(decoded == table, "a freshly encoded route table should decode to itself");
    let crc = RouteHeader::read(&bytes).expect("a freshly encoded route table should have a header").crc.get();
    if let Err(e) = std::fs::write(out, &bytes) {
        eprintln!("cannot write {}: {e}", out.display());
        return 1;
    }
    let embedded = if bytes == ROUTE_BIN {
        "same as the table built into this binary"
    } else {
        "differs from the table built into this binary: rebuild to embed it"
    };
    println!(
        "wrote {}: {} bytes, {} moves ({BUCKET_COUNT} buckets, 1..={GROUP_COUNT_MAX} groups), crc32c {crc:#010x}, \
         generated in {generate_ms} ms ({embedded})",
        out.display(),
        bytes.len(),
        table.move_count(),
    );
    0
}
