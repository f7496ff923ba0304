//! `engine-get`: uniform random point gets on one pinned core with many in flight, over a
//! dataset much larger than the shard's memory budget, beside fio's 4 KiB random reads and
//! RocksDB's `db_bench readrandom` on the same core, in the same run.

use crate::{devstat, fio};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};
use strata_ioengine::uring::{Priority, run_pinned, sleep, spawn as spawn_local, spawn_detached};
use strata_ioengine::{Clock, SimRng, SystemClock, UringDisk};
use strata_node::{Shard, ShardOptions};

#[derive(Debug, Clone)]
pub struct Args {
    pub dir: PathBuf,
    pub cpu: usize,
    pub entries: u64,
    pub value_bytes: usize,
    pub inflight: usize,
    pub seconds: f64,
    pub memory_budget_bytes: usize,
    /// Puts each loading writer sends together (an MPUT's worth).
    pub ingest_batch: usize,
    pub db_bench: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DbBenchResult {
    pub ops_per_s: f64,
    pub command: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: &'static str,
    pub cpu: usize,
    pub entries: u64,
    pub value_bytes: usize,
    pub inflight: usize,
    pub seconds: f64,
    pub memory_budget_bytes: usize,
    pub ingest_batch: usize,
    pub dataset_bytes_on_disk: u64,
    pub dataset_to_budget: f64,
    pub tables: usize,
    pub load_puts_per_s: f64,
    pub gets: u64,
    pub gets_per_s: f64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_max_us: u64,
    /// CPU time (user + system) of the whole process per get during the measured phase.
    pub cpu_us_per_get: f64,
    pub block_cache_hit_ratio: f64,
    pub device_reads_per_get: Option<f64>,
    pub device_reads_per_uncached_get: Option<f64>,
    pub rss_bytes: u64,
    pub memtable_bytes: usize,
    pub pinned_index_filter_bytes: usize,
    pub block_cache_bytes: usize,
    pub scan_pages_per_s: f64,
    pub scan_page_p50_us: u64,
    pub scan_page_p99_us: u64,
    /// Bytes written per byte of user data (key + value) during the load, by stage.
    pub write_amp_wal: f64,
    pub write_amp_flush: f64,
    pub write_amp_compaction: f64,
    pub write_amp_engine_total: f64,
    /// Device bytes written during the load per byte of user data (includes the zero-fill of
    /// new WAL segments and filesystem metadata).
    pub write_amp_device: Option<f64>,
    /// The same without the zeros written once to prepare new WAL segment files (a fresh
    /// shard's one-time cost: recycled segments are not zero-filled again).
    pub write_amp_device_steady: Option<f64>,
    /// Those zeros, in bytes.
    pub wal_prefill_bytes: u64,
    /// Table bytes on disk per byte of user data, after compaction.
    pub space_amp: f64,
    pub fio: fio::FioResult,
    pub ratio_to_fio: f64,
    pub db_bench: Option<DbBenchResult>,
    pub ratio_to_db_bench: Option<f64>,
}

/// The key of entry `i` of `entries`: 100 entries per pkey, 36 s apart over an hour in the
/// recent past, in time order: entries `0..pkeys` are every pkey's first point, the next
/// `pkeys` every pkey's second, and so on, as a time-series ingest writes them.
fn key_of(i: u64, entries: u64, base_ts: u64) -> (Vec<u8>, u64) {
    let pkeys = pkey_count(entries);
    (format!("user{:010}", i % pkeys).into_bytes(), base_ts + (i / pkeys) * 36_000_000)
}

fn pkey_count(entries: u64) -> u64 {
    entries.div_ceil(100)
}

fn options(dir: &Path, budget: usize) -> ShardOptions {
    let mut options = ShardOptions::new(dir);
    // The budget is split: a third memtable (flushed at half of it), a third block cache; the
    // rest is for pinned indexes and filters.
    options.memtable_bytes_max = budget / 3;
    options.flush_bytes = budget / 6;
    options.block_cache_bytes = budget / 3;
    options.window_us = 3_600_000_000;
    options.settle_us = 30 * 86_400_000_000;
    options.future_skew_us = 86_400_000_000;
    options
}

struct Measured {
    load_puts_per_s: f64,
    load_stats: strata_node::ShardStats,
    load_device_bytes_written: Option<u64>,
    wal_prefill_bytes: u64,
    scan_pages: u64,
    scan_elapsed: Duration,
    scan_latency_us: Histogram<u64>,
    gets: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    cache_hits: u64,
    cache_misses: u64,
    tables: usize,
    table_bytes: u64,
    memtable_bytes: usize,
    pinned_bytes: usize,
    cache_bytes: usize,
    device_reads: Option<u64>,
    rss_bytes: u64,
    cpu_us: u64,
}

pub fn run(args: &Args) -> Result<Report, String> {
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("cannot create {}: {e}", args.dir.display()))?;
    let shard_dir = args.dir.join("strata-engine-get");
    let _ = std::fs::remove_dir_all(&shard_dir);
    let stat_file = devstat::stat_file_for(&args.dir);
    let a = args.clone();
    let m =
        run_pinned("engine-get", args.cpu, move || measure(shard_dir, a, stat_file)).map_err(|e| e.to_string())??;
    let _ = std::fs::remove_dir_all(args.dir.join("strata-engine-get"));

    let fio_dir = args.dir.join("fio");
    std::fs::create_dir_all(&fio_dir).map_err(|e| format!("cannot create {}: {e}", fio_dir.display()))?;
    let fio_size_mb = (m.table_bytes / (1 << 20)).max(256);
    let fio_args: Vec<String> = vec![
        "--rw=randread".into(),
        "--bs=4k".into(),
        format!("--size={fio_size_mb}m"),
        "--ioengine=io_uring".into(),
        "--direct=1".into(),
        "--iodepth=64".into(),
        "--numjobs=1".into(),
        "--time_based".into(),
        format!("--runtime={}s", args.seconds.ceil() as u64),
    ];
    let fio = fio::run(&fio_dir, args.cpu, "randread-4k-qd64", "read", &fio_args)?;
    let _ = std::fs::remove_dir_all(&fio_dir);

    let db_bench = if args.db_bench { Some(run_db_bench(args)?) } else { None };
    let gets_per_s = m.gets as f64 / m.elapsed.as_secs_f64();
    let lookups = (m.cache_hits + m.cache_misses).max(1);
    let hit_ratio = m.cache_hits as f64 / lookups as f64;
    let gets = m.gets.max(1) as f64;
    let key_bytes = 14 + 11; // "user" + 10 digits, plus bucket, length byte and ts
    let user_bytes = (args.entries * (key_bytes + args.value_bytes as u64)).max(1) as f64;
    let wal = m.load_stats.wal_bytes_written as f64 / user_bytes;
    let flush = m.load_stats.flush_bytes_written as f64 / user_bytes;
    let compaction = m.load_stats.compaction_bytes_written as f64 / user_bytes;
    Ok(Report {
        scan_pages_per_s: m.scan_pages as f64 / m.scan_elapsed.as_secs_f64(),
        scan_page_p50_us: m.scan_latency_us.value_at_quantile(0.5),
        scan_page_p99_us: m.scan_latency_us.value_at_quantile(0.99),
        write_amp_wal: wal,
        write_amp_flush: flush,
        write_amp_compaction: compaction,
        write_amp_engine_total: wal + flush + compaction,
        write_amp_device: m.load_device_bytes_written.map(|b| b as f64 / user_bytes),
        write_amp_device_steady: m
            .load_device_bytes_written
            .map(|b| b.saturating_sub(m.wal_prefill_bytes) as f64 / user_bytes),
        wal_prefill_bytes: m.wal_prefill_bytes,
        space_amp: m.table_bytes as f64 / user_bytes,
        workload: "engine-get",
        cpu: args.cpu,
        entries: args.entries,
        value_bytes: args.value_bytes,
        inflight: args.inflight,
        seconds: m.elapsed.as_secs_f64(),
        memory_budget_bytes: args.memory_budget_bytes,
        ingest_batch: args.ingest_batch,
        dataset_bytes_on_disk: m.table_bytes,
        dataset_to_budget: m.table_bytes as f64 / args.memory_budget_bytes as f64,
        tables: m.tables,
        load_puts_per_s: m.load_puts_per_s,
        gets: m.gets,
        gets_per_s,
        latency_p50_us: m.latency_us.value_at_quantile(0.5),
        latency_p99_us: m.latency_us.value_at_quantile(0.99),
        latency_max_us: m.latency_us.max(),
        cpu_us_per_get: m.cpu_us as f64 / gets,
        block_cache_hit_ratio: hit_ratio,
        device_reads_per_get: m.device_reads.map(|r| r as f64 / gets),
        device_reads_per_uncached_get: m.device_reads.map(|r| r as f64 / m.cache_misses.max(1) as f64),
        rss_bytes: m.rss_bytes,
        memtable_bytes: m.memtable_bytes,
        pinned_index_filter_bytes: m.pinned_bytes,
        block_cache_bytes: m.cache_bytes,
        ratio_to_fio: gets_per_s / fio.iops,
        ratio_to_db_bench: db_bench.as_ref().map(|d| gets_per_s / d.ops_per_s),
        fio,
        db_bench,
    })
}

/// Loads `entries` entries from 50 writers; each sends `batch` puts together and waits for all of
/// them (they join one group commit), as a client sending MPUTs of `batch` entries would.
async fn load(
    shard: &Shard<UringDisk, SystemClock>,
    entries: u64,
    value_bytes: usize,
    batch: usize,
    base_ts: u64,
) -> Result<f64, String> {
    let next = Rc::new(Cell::new(0u64));
    let started = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..50 {
        let (shard, next) = (shard.clone(), next.clone());
        writers.push(spawn_local(async move {
            loop {
                let first = next.get();
                if first >= entries {
                    return Ok::<(), String>(());
                }
                let end = (first + batch as u64).min(entries);
                next.set(end);
                let puts: Vec<_> = (first..end)
                    .map(|i| spawn_local(put_entry(shard.clone(), i, entries, value_bytes, base_ts)))
                    .collect();
                for put in puts {
                    put.await?;
                }
            }
        }));
    }
    for writer in writers {
        writer.await?;
    }
    Ok(entries as f64 / started.elapsed().as_secs_f64())
}

/// Puts entry `i`, waiting out a memtable at its budget while a flush runs.
async fn put_entry(
    shard: Shard<UringDisk, SystemClock>,
    i: u64,
    entries: u64,
    value_bytes: usize,
    base_ts: u64,
) -> Result<(), String> {
    let (pkey, ts) = key_of(i, entries, base_ts);
    let mut value = vec![0u8; value_bytes];
    value[..8].copy_from_slice(&i.to_le_bytes());
    loop {
        match shard.put(&pkey, ts, &value).await {
            Ok(_) => return Ok(()),
            Err(strata_node::WriteError::MemoryBudget { .. }) => sleep(Duration::from_millis(2)).await,
            Err(e) => return Err(format!("load failed: {e}")),
        }
    }
}

async fn measure(dir: PathBuf, args: Args, stat_file: Option<PathBuf>) -> Result<Measured, String> {
    let (shard, _) = Shard::open(UringDisk, SystemClock, options(&dir, args.memory_budget_bytes))
        .await
        .map_err(|e| e.to_string())?;
    spawn_detached(Priority::Foreground, shard.background());
    spawn_detached(Priority::Background, shard.maintenance());
    let base_ts = SystemClock.now_us() - 2 * 86_400_000_000;
    let load_before = stat_file.as_deref().and_then(devstat::read);
    let prefill_before = shard.stats().wal_prefill_bytes;
    let load_puts_per_s = load(&shard, args.entries, args.value_bytes, args.ingest_batch, base_ts).await?;
    shard.flush_now();
    while !shard.maintenance_idle() {
        sleep(Duration::from_millis(20)).await;
        shard.wake_maintenance();
    }
    let load_stats = shard.stats();
    let load_after = stat_file.as_deref().and_then(devstat::read);
    let load_device_bytes_written =
        load_before.zip(load_after).map(|(b, a)| (a.sectors_written - b.sectors_written) * 512);
    let running = Rc::new(Cell::new(true));
    let measuring = Rc::new(Cell::new(false));
    let histogram = Rc::new(RefCell::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")));
    let gets = Rc::new(Cell::new(0u64));
    let mut readers = Vec::new();
    for r in 0..args.inflight {
        let (shard, running, measuring, histogram, gets) =
            (shard.clone(), running.clone(), measuring.clone(), histogram.clone(), gets.clone());
        let entries = args.entries;
        let reader = async move {
            let mut rng = SimRng::new(0x5eed + r as u64);
            while running.get() {
                let i = rng.below(entries);
                let (pkey, ts) = key_of(i, entries, base_ts);
                let start = Instant::now();
                let found = shard.get(&pkey, ts).await.map_err(|e| format!("get failed: {e}"))?;
                match found {
                    Some((_, value)) if value[..8] == i.to_le_bytes() => {}
                    _ => return Err(format!("entry {i} missing or wrong")),
                }
                if measuring.get() {
                    let _ = histogram.borrow_mut().record(start.elapsed().as_micros() as u64);
                    gets.set(gets.get() + 1);
                }
            }
            Ok::<(), String>(())
        };
        readers.push(spawn_local(reader));
    }
    sleep(Duration::from_secs_f64((args.seconds / 5.0).clamp(0.2, 2.0))).await;
    let (hits0, misses0, _) = shard.cache_stats();
    let before = stat_file.as_deref().and_then(devstat::read);
    let cpu0 = crate::procstat::cpu_us("self");
    measuring.set(true);
    let started = Instant::now();
    sleep(Duration::from_secs_f64(args.seconds)).await;
    measuring.set(false);
    let elapsed = started.elapsed();
    let after = stat_file.as_deref().and_then(devstat::read);
    let cpu_us = crate::procstat::cpu_us("self") - cpu0;
    let (hits1, misses1, cache_bytes) = shard.cache_stats();
    running.set(false);
    for reader in readers {
        reader.await?;
    }
    let (tables, table_bytes) = shard.table_stats();
    let (scan_pages, scan_elapsed, scan_latency_us) = scan_pages(&shard, &args).await?;
    let measured = Measured {
        load_puts_per_s,
        wal_prefill_bytes: load_stats.wal_prefill_bytes - prefill_before,
        load_stats,
        load_device_bytes_written,
        scan_pages,
        scan_elapsed,
        scan_latency_us,
        gets: gets.get(),
        elapsed,
        latency_us: histogram.borrow().clone(),
        cache_hits: hits1 - hits0,
        cache_misses: misses1 - misses0,
        tables,
        table_bytes,
        memtable_bytes: shard.memtable_bytes(),
        pinned_bytes: shard.pinned_bytes(),
        cache_bytes,
        device_reads: before.zip(after).map(|(b, a)| a.reads - b.reads),
        rss_bytes: crate::procstat::rss_bytes("self"),
        cpu_us,
    };
    shard.close().await;
    Ok(measured)
}

/// Timeline pages: newest-first scans of 20 entries of random pkeys, 64 in flight.
async fn scan_pages(
    shard: &Shard<UringDisk, SystemClock>,
    args: &Args,
) -> Result<(u64, Duration, Histogram<u64>), String> {
    let pkeys = pkey_count(args.entries);
    let running = Rc::new(Cell::new(true));
    let histogram = Rc::new(RefCell::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")));
    let pages = Rc::new(Cell::new(0u64));
    let mut scanners = Vec::new();
    for r in 0..args.inflight {
        let (shard, running, histogram, pages) = (shard.clone(), running.clone(), histogram.clone(), pages.clone());
        scanners.push(spawn_local(async move {
            let mut rng = SimRng::new(0xca11 + r as u64);
            while running.get() {
                let pkey = format!("user{:010}", rng.below(pkeys)).into_bytes();
                let start = Instant::now();
                let page =
                    shard.scan(&pkey, 0, u64::MAX - 1, 20, true).await.map_err(|e| format!("scan failed: {e}"))?;
                if page.is_empty() {
                    return Err("a timeline page came back empty".to_string());
                }
                let _ = histogram.borrow_mut().record(start.elapsed().as_micros() as u64);
                pages.set(pages.get() + 1);
            }
            Ok(())
        }));
    }
    let started = Instant::now();
    sleep(Duration::from_secs_f64(args.seconds / 2.0)).await;
    running.set(false);
    let elapsed = started.elapsed();
    for scanner in scanners {
        scanner.await?;
    }
    let latency = histogram.borrow().clone();
    Ok((pages.get(), elapsed, latency))
}

/// RocksDB's db_bench: load the same number of entries, then readrandom with as many threads
/// as Strata has gets in flight, direct reads, same block size, bloom bits and cache, pinned to
/// the same core.
fn run_db_bench(args: &Args) -> Result<DbBenchResult, String> {
    let db = args.dir.join("rocksdb");
    let _ = std::fs::remove_dir_all(&db);
    let common = vec![
        format!("--db={}", db.display()),
        format!("--num={}", args.entries),
        format!("--value_size={}", args.value_bytes),
        "--key_size=16".into(),
        "--block_size=4096".into(),
        "--bloom_bits=10".into(),
        format!("--cache_size={}", args.memory_budget_bytes / 3),
        "--compression_type=none".into(),
        "--use_direct_reads=true".into(),
        "--use_direct_io_for_flush_and_compaction=true".into(),
    ];
    let taskset = |extra: &[String]| {
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(args.cpu.to_string()).arg("db_bench").args(&common).args(extra);
        cmd
    };
    let fill = taskset(&["--benchmarks=fillseq".into(), "--threads=1".into()]).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            "taskset or db_bench is not installed: `apt-get install util-linux rocksdb-tools`".to_string()
        } else {
            format!("cannot run db_bench: {e}")
        }
    })?;
    if !fill.status.success() {
        return Err(format!("db_bench fillseq failed: {}", String::from_utf8_lossy(&fill.stderr)));
    }
    let read_args = vec![
        "--benchmarks=readrandom".to_string(),
        "--use_existing_db=true".into(),
        format!("--threads={}", args.inflight),
        format!("--duration={}", args.seconds.ceil() as u64),
    ];
    let shown = format!("taskset -c {} db_bench {} {}", args.cpu, common.join(" "), read_args.join(" "));
    let read = taskset(&read_args).output().map_err(|e| format!("cannot run db_bench: {e}"))?;
    let _ = std::fs::remove_dir_all(&db);
    let text = String::from_utf8_lossy(&read.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("readrandom"))
        .ok_or_else(|| format!("db_bench printed no readrandom line: {text}"))?;
    let ops = line
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1] == "ops/sec;" || w[1] == "ops/sec")
        .and_then(|w| w[0].parse::<f64>().ok())
        .ok_or_else(|| format!("cannot read ops/sec from: {line}"))?;
    Ok(DbBenchResult { ops_per_s: ops, command: shown })
}

/// The human-readable summary.
#[must_use]
pub fn summary(r: &Report) -> String {
    let mut text = format!(
        "engine-get: {} entries of {} B ({:.0} MiB on disk, {:.1}x the {} MiB budget, {} tables), {} gets in flight, core {}\n\
         \x20 strata: {:.0} gets/s, p50 {} us, p99 {} us, max {} us, {:.1} us CPU per get; block cache hit ratio {:.3}; device reads per get {}, per uncached get {}\n\
         \x20         RSS {:.0} MiB (memtable {:.0} MiB, pinned index+filter {:.0} MiB, block cache {:.0} MiB); load {:.0} puts/s\n\
         \x20 scans:  {:.0} timeline pages/s (20 newest entries of a random pkey), p50 {} us, p99 {} us\n\
         \x20 write amplification per user byte: WAL {:.2}, flush {:.2}, compaction {:.2}, engine total {:.2}, device {} ({} without {:.0} MiB of one-time WAL segment zero-fill); space amplification {:.2}\n\
         \x20 fio:    {:.0} random 4 KiB reads/s (io_uring, O_DIRECT, QD64, same core)\n\
         \x20 ratio:  {:.2}x fio (goal >= 0.8x)",
        r.entries,
        r.value_bytes,
        r.dataset_bytes_on_disk as f64 / 1048576.0,
        r.dataset_to_budget,
        r.memory_budget_bytes >> 20,
        r.tables,
        r.inflight,
        r.cpu,
        r.gets_per_s,
        r.latency_p50_us,
        r.latency_p99_us,
        r.latency_max_us,
        r.cpu_us_per_get,
        r.block_cache_hit_ratio,
        r.device_reads_per_get.map_or("n/a".into(), |v| format!("{v:.3}")),
        r.device_reads_per_uncached_get.map_or("n/a".into(), |v| format!("{v:.3}")),
        r.rss_bytes as f64 / 1048576.0,
        r.memtable_bytes as f64 / 1048576.0,
        r.pinned_index_filter_bytes as f64 / 1048576.0,
        r.block_cache_bytes as f64 / 1048576.0,
        r.load_puts_per_s,
        r.scan_pages_per_s,
        r.scan_page_p50_us,
        r.scan_page_p99_us,
        r.write_amp_wal,
        r.write_amp_flush,
        r.write_amp_compaction,
        r.write_amp_engine_total,
        r.write_amp_device.map_or("n/a".into(), |v| format!("{v:.2}")),
        r.write_amp_device_steady.map_or("n/a".into(), |v| format!("{v:.2}")),
        r.wal_prefill_bytes as f64 / 1048576.0,
        r.space_amp,
        r.fio.iops,
        r.ratio_to_fio,
    );
    if let (Some(d), Some(ratio)) = (&r.db_bench, r.ratio_to_db_bench) {
        text.push_str(&format!("\n  rocksdb: {:.0} readrandom ops/s (db_bench 64 threads, direct reads)\n  ratio:  {ratio:.2}x db_bench (goal >= 1.3x)", d.ops_per_s));
    }
    text
}
