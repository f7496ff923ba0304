//! `strata`: the Strata storage node.
//!
//! `strata serve` runs one shard per core, each pinned with its own WAL under the data
//! directory, recovers them, and runs until SIGTERM or SIGINT, when it commits what it accepted
//! and exits 0. `strata check-env` runs the start-up checks and prints what to fix.

use bpaf::Bpaf;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use strata_ioengine::envcheck::{EnvRequirements, check_environment};
use strata_ioengine::executor::{
    ExecutorSpec, IO_MEMORY_BYTES_DEFAULT, online_cpus, sleep, spawn_detached, spawn_pinned,
};
use strata_ioengine::{DmaDisk, SystemClock};
use strata_node::{Shard, ShardOptions};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Clone, Bpaf)]
#[bpaf(options, version)]
/// Strata: a storage node for time-ordered data.
enum Command {
    /// Run the node: one pinned shard per core, until SIGTERM or SIGINT.
    #[bpaf(command)]
    Serve {
        /// Data directory (created if missing).
        #[bpaf(long("data-dir"), argument("DIR"), fallback(PathBuf::from("./strata-data")), debug_fallback)]
        data_dir: PathBuf,
        /// Number of shards (default: one per online CPU).
        #[bpaf(long, argument("N"))]
        shards: Option<usize>,
        /// Registered (locked) I/O memory per shard, in bytes.
        #[bpaf(long("io-memory"), argument("BYTES"), fallback(IO_MEMORY_BYTES_DEFAULT), display_fallback)]
        io_memory: usize,
    },
    /// Run the start-up checks (io_uring, memlock, O_DIRECT) and say what to fix.
    #[bpaf(command("check-env"))]
    CheckEnv {
        /// Data directory to check.
        #[bpaf(long("data-dir"), argument("DIR"), fallback(PathBuf::from("./strata-data")), debug_fallback)]
        data_dir: PathBuf,
        /// Registered (locked) I/O memory per shard, in bytes.
        #[bpaf(long("io-memory"), argument("BYTES"), fallback(IO_MEMORY_BYTES_DEFAULT), display_fallback)]
        io_memory: usize,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let code = match command().run() {
        Command::Serve { data_dir, shards, io_memory } => serve(data_dir, shards, io_memory),
        Command::CheckEnv { data_dir, io_memory } => {
            let cpus = online_cpus().len();
            if env_ok(&data_dir, io_memory * cpus) { 0 } else { 1 }
        }
    };
    std::process::exit(code);
}

/// Runs the start-up checks, printing each finding; true when all pass.
fn env_ok(data_dir: &std::path::Path, memlock_bytes_needed: usize) -> bool {
    let req = EnvRequirements {
        memlock_bytes_needed: memlock_bytes_needed as u64,
        direct_io_paths: vec![data_dir.to_path_buf()],
    };
    let mut ok = true;
    for finding in check_environment(&req) {
        if finding.ok {
            tracing::info!(check = finding.check, "{}", finding.detail);
        } else {
            tracing::error!(check = finding.check, "{}", finding.detail);
            ok = false;
        }
    }
    ok
}

fn serve(data_dir: PathBuf, shards: Option<usize>, io_memory: usize) -> i32 {
    let cpus = online_cpus();
    let shard_count = shards.unwrap_or(cpus.len()).max(1);
    if !env_ok(&data_dir, io_memory * shard_count) {
        tracing::error!("start-up checks failed; fix the findings above and start again");
        return 1;
    }
    let _lock = match lock_data_dir(&data_dir) {
        Ok(lock) => lock,
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            tracing::error!("cannot install the handler for signal {signal}: {e}");
            return 1;
        }
    }
    tracing::warn!("this build serves no network requests yet: shards open, recover and wait for SIGTERM");
    let mut handles = Vec::new();
    for index in 0..shard_count {
        let cpu = cpus[index % cpus.len()];
        let spec =
            ExecutorSpec { name: format!("shard-{index}"), cpu, io_memory_bytes: io_memory, spin_before_park: None };
        let dir = data_dir.join(format!("shard-{index}"));
        let shard_stop = stop.clone();
        match spawn_pinned(&spec, move || run_shard(index, dir, shard_stop)) {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                tracing::error!("{e}");
                stop.store(true, Ordering::SeqCst);
            }
        }
    }
    let mut code = 0;
    for handle in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!("{e}");
                code = 1;
            }
            Err(e) => {
                tracing::error!("{e}");
                code = 1;
            }
        }
    }
    code
}

/// Holds `<data-dir>/LOCK` for the life of the process: one node per data directory.
fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, String> {
    let path = data_dir.join("LOCK");
    std::fs::create_dir_all(data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(format!("{} is locked: another strata is running on this data directory", path.display()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

async fn run_shard(index: usize, dir: PathBuf, stop: Arc<AtomicBool>) -> Result<(), String> {
    let options = ShardOptions::new(&dir);
    let (shard, report) = match Shard::open(DmaDisk, SystemClock, options).await {
        Ok(opened) => opened,
        Err(e) => {
            // One shard down means the node cannot serve its buckets: stop the others too.
            stop.store(true, Ordering::SeqCst);
            return Err(format!("shard {index}: {e}"));
        }
    };
    tracing::info!(
        shard = index,
        dir = %dir.display(),
        segments = report.segments_replayed,
        batches = report.batches_replayed,
        records = report.records_replayed,
        "shard open"
    );
    if let Some(torn) = &report.torn_tail {
        tracing::warn!(shard = index, file = %torn.file.display(), offset = torn.offset, reason = %torn.reason, "dropped a torn (never acknowledged) group commit at the WAL tail");
    }
    spawn_detached(shard.background());
    spawn_detached(shard.maintenance());
    let mut ticks = 0u64;
    while !stop.load(Ordering::SeqCst) {
        sleep(Duration::from_millis(100)).await;
        ticks += 1;
        if ticks.is_multiple_of(50) {
            // Time-based maintenance (settling and expiring windows) is found when it wakes.
            shard.wake_maintenance();
        }
    }
    shard.close().await;
    tracing::info!(shard = index, "shard closed cleanly");
    Ok(())
}
