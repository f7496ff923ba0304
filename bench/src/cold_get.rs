//! `cold-get`: random point gets of sunk data on one pinned core with many in flight, beside
//! fio random reads of the cold blocks' size on the same directory, in the same run.
//!
//! The dataset is loaded into windows past the hot horizon, flushed, and sunk to the cold disks
//! (folders under the bench directory unless `--hdd` names real disks). Each cold get should cost
//! exactly one cold-disk read (counted by the node's per-disk counters) and at most one SSD read
//! (a link-table block, unless the block cache has it).

use crate::{devstat, fio};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};
use strata_ioengine::uring::{Priority, run_pinned, sleep, spawn as spawn_local, spawn_detached};
use strata_ioengine::{Clock, SimRng, SystemClock, UringDisk};
use strata_node::cold::ColdOptions;
use strata_node::{Shard, ShardOptions};

#[derive(Debug, Clone)]
pub struct Args {
    pub dir: PathBuf,
    /// Cold disks; empty: four folders under `dir`.
    pub hdd: Vec<PathBuf>,
    pub cpu: usize,
    pub entries: u64,
    pub value_bytes: usize,
    pub inflight: usize,
    pub seconds: f64,
    pub block_cache_bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub workload: &'static str,
    pub cpu: usize,
    pub entries: u64,
    pub value_bytes: usize,
    pub inflight: usize,
    pub seconds: f64,
    pub disks: usize,
    pub windows_sunk: usize,
    pub cold_blocks: u64,
    pub cold_bytes: u64,
    pub sink_seconds: f64,
    pub link_table_bytes: u64,
    pub gets: u64,
    pub gets_per_s: f64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    /// Cold-disk reads per get, from the node's per-disk counters (goal: exactly 1.0).
    pub hdd_reads_per_get: f64,
    /// Link-table block reads from SSD per get: block-cache misses (goal: at most 1.0).
    pub ssd_reads_per_get: f64,
    pub block_cache_hit_ratio: f64,
    pub block_cache_bytes: usize,
    /// Bytes per cold read, on average (the fio block size is this, rounded to 4 KiB).
    pub cold_read_bytes_avg: f64,
    /// Reads the device (`/sys/block/<dev>/stat`) counted per get: SSD and cold reads together
    /// when the "disks" are folders on the same device.
    pub device_reads_per_get: Option<f64>,
    /// The device's reads per second during the gets, against fio's: how busy the shared device
    /// was (when the cold "disks" share the SSD tier's device, link reads count here too).
    pub device_reads_to_fio: Option<f64>,
    pub cpu_us_per_get: f64,
    /// Gets of absent keys of sunk windows: cold-disk reads per get (goal 0: the link table's
    /// filter or one SSD block answers) and SSD reads per get.
    pub absent_gets: u64,
    pub hdd_reads_per_absent_get: f64,
    pub ssd_reads_per_absent_get: f64,
    /// Timeline pages over sunk windows: the 20 newest entries of a random pkey.
    pub scan_pages_per_s: f64,
    pub scan_page_p50_us: u64,
    pub scan_page_p99_us: u64,
    pub hdd_reads_per_scan_page: f64,
    pub fio: fio::FioResult,
    pub ratio_to_fio: f64,
}

/// The key of entry `i`: 100 entries per pkey, spread over eight hour-wide windows a month ago.
fn key_of(i: u64, base_ts: u64) -> (Vec<u8>, u64) {
    (format!("user{:010}", i / 100).into_bytes(), base_ts + (i % 100) * 8 * 3_600_000_000 / 100 + i / 100)
}

fn options(dir: &Path, hdd: Vec<PathBuf>, block_cache_bytes: usize, hot_horizon_us: u64) -> ShardOptions {
    let mut options = ShardOptions::new(dir);
    options.memtable_bytes_max = 96 << 20;
    options.flush_bytes = 48 << 20;
    options.block_cache_bytes = block_cache_bytes;
    options.window_us = 3_600_000_000;
    options.settle_us = 86_400_000_000;
    options.future_skew_us = 86_400_000_000;
    options.ssd_reserve_bytes = 256 << 20;
    options.ssd_throttle_bytes = 512 << 20;
    let mut cold = ColdOptions::new(hdd, 0);
    cold.hot_horizon_us = hot_horizon_us;
    cold.file_bytes = 64 << 20;
    cold.sink_bytes_per_s = 1 << 30;
    options.cold = Some(cold);
    options
}

struct Measured {
    windows_sunk: usize,
    cold_blocks: u64,
    cold_bytes: u64,
    sink_seconds: f64,
    link_table_bytes: u64,
    gets: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    cold_reads: u64,
    cold_read_bytes: u64,
    cache_hits: u64,
    cache_misses: u64,
    device_reads: Option<u64>,
    cpu_us: u64,
    absent_gets: u64,
    absent_cold_reads: u64,
    absent_cache_misses: u64,
    scan_pages: u64,
    scan_elapsed: Duration,
    scan_latency_us: Histogram<u64>,
    scan_cold_reads: u64,
}

pub fn run(args: &Args) -> Result<Report, String> {
    let root = args.dir.join("strata-cold-get");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let hdd: Vec<PathBuf> =
        if args.hdd.is_empty() { (0..4).map(|i| root.join(format!("hdd{i}"))).collect() } else { args.hdd.clone() };
    for d in &hdd {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let stat_file = devstat::stat_file_for(&hdd[0]);
    let (a, disks, shard_dir) = (args.clone(), hdd.clone(), root.join("shard"));
    let m = run_pinned("cold-get", args.cpu, move || measure(shard_dir, disks, a, stat_file))
        .map_err(|e| e.to_string())??;
    let _ = std::fs::remove_dir_all(&root);
    if !args.hdd.is_empty() {
        for d in &hdd {
            let _ = std::fs::remove_dir_all(d.join("s000"));
        }
    }

    // fio reads blocks of the cold reads' size at random from a file as large as the cold data,
    // in the first cold disk's directory.
    let read_avg = m.cold_read_bytes as f64 / m.cold_reads.max(1) as f64;
    let bs_kib = ((read_avg / 4096.0).round() as u64).max(1) * 4;
    let fio_dir = hdd[0].join("fio");
    std::fs::create_dir_all(&fio_dir).map_err(|e| format!("cannot create {}: {e}", fio_dir.display()))?;
    let fio_size_mb = (m.cold_bytes / (1 << 20)).max(256);
    let fio_args: Vec<String> = vec![
        "--rw=randread".into(),
        format!("--bs={bs_kib}k"),
        format!("--size={fio_size_mb}m"),
        "--ioengine=io_uring".into(),
        "--direct=1".into(),
        format!("--iodepth={}", args.inflight),
        "--numjobs=1".into(),
        "--time_based".into(),
        format!("--runtime={}s", args.seconds.ceil() as u64),
    ];
    let fio = fio::run(&fio_dir, args.cpu, &format!("randread-{bs_kib}k-qd{}", args.inflight), "read", &fio_args)?;
    let _ = std::fs::remove_dir_all(&fio_dir);
    if args.hdd.is_empty() {
        for d in &hdd {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    let gets = m.gets.max(1) as f64;
    let gets_per_s = m.gets as f64 / m.elapsed.as_secs_f64();
    let lookups = (m.cache_hits + m.cache_misses).max(1) as f64;
    Ok(Report {
        workload: "cold-get",
        cpu: args.cpu,
        entries: args.entries,
        value_bytes: args.value_bytes,
        inflight: args.inflight,
        seconds: m.elapsed.as_secs_f64(),
        disks: hdd.len(),
        windows_sunk: m.windows_sunk,
        cold_blocks: m.cold_blocks,
        cold_bytes: m.cold_bytes,
        sink_seconds: m.sink_seconds,
        link_table_bytes: m.link_table_bytes,
        gets: m.gets,
        gets_per_s,
        latency_p50_us: m.latency_us.value_at_quantile(0.5),
        latency_p99_us: m.latency_us.value_at_quantile(0.99),
        hdd_reads_per_get: m.cold_reads as f64 / gets,
        ssd_reads_per_get: m.cache_misses as f64 / gets,
        block_cache_hit_ratio: m.cache_hits as f64 / lookups,
        block_cache_bytes: args.block_cache_bytes,
        cold_read_bytes_avg: read_avg,
        device_reads_per_get: m.device_reads.map(|r| r as f64 / gets),
        device_reads_to_fio: m.device_reads.map(|r| r as f64 / m.elapsed.as_secs_f64() / fio.iops),
        cpu_us_per_get: m.cpu_us as f64 / gets,
        absent_gets: m.absent_gets,
        hdd_reads_per_absent_get: m.absent_cold_reads as f64 / m.absent_gets.max(1) as f64,
        ssd_reads_per_absent_get: m.absent_cache_misses as f64 / m.absent_gets.max(1) as f64,
        scan_pages_per_s: m.scan_pages as f64 / m.scan_elapsed.as_secs_f64(),
        scan_page_p50_us: m.scan_latency_us.value_at_quantile(0.5),
        scan_page_p99_us: m.scan_latency_us.value_at_quantile(0.99),
        hdd_reads_per_scan_page: m.scan_cold_reads as f64 / m.scan_pages.max(1) as f64,
        ratio_to_fio: gets_per_s / fio.iops,
        fio,
    })
}

async fn load(shard: &Shard<UringDisk, SystemClock>, args: &Args, base_ts: u64) -> Result<(), String> {
    let next = Rc::new(Cell::new(0u64));
    let mut writers = Vec::new();
    for _ in 0..50 {
        let (shard, next, entries, value_bytes) = (shard.clone(), next.clone(), args.entries, args.value_bytes);
        writers.push(spawn_local(async move {
            let mut value = vec![0u8; value_bytes];
            let mut rng = SimRng::new(next.get() ^ 0xc01d);
            loop {
                let i = next.get();
                if i >= entries {
                    return Ok(());
                }
                next.set(i + 1);
                let (pkey, ts) = key_of(i, base_ts);
                // Random bytes: values that compress make blocks smaller than an HDD would see.
                for chunk in value.chunks_mut(8) {
                    let r = rng.next_u64().to_le_bytes();
                    chunk.copy_from_slice(&r[..chunk.len()]);
                }
                value[..8].copy_from_slice(&i.to_le_bytes());
                loop {
                    match shard.put(&pkey, ts, &value).await {
                        Ok(_) => break,
                        Err(strata_node::WriteError::MemoryBudget { .. }) => sleep(Duration::from_millis(2)).await,
                        Err(e) => return Err(format!("load failed: {e}")),
                    }
                }
            }
        }));
    }
    for writer in writers {
        writer.await?;
    }
    Ok(())
}

async fn measure(dir: PathBuf, hdd: Vec<PathBuf>, args: Args, stat_file: Option<PathBuf>) -> Result<Measured, String> {
    // Load with a far horizon (nothing sinks while writes arrive, so no late deltas stay on
    // SSD), flush, close; reopen with a day's horizon: every window sinks whole.
    let far = 1000 * 86_400_000_000;
    let (shard, _) = Shard::open(UringDisk, SystemClock, options(&dir, hdd.clone(), args.block_cache_bytes, far))
        .await
        .map_err(|e| e.to_string())?;
    spawn_detached(Priority::Foreground, shard.background());
    spawn_detached(Priority::Background, shard.maintenance());
    let base_ts = (SystemClock.now_us() - 30 * 86_400_000_000) / 3_600_000_000 * 3_600_000_000;
    load(&shard, &args, base_ts).await?;
    shard.flush_now();
    while !shard.maintenance_idle() {
        sleep(Duration::from_millis(20)).await;
        shard.wake_maintenance();
    }
    shard.close().await;
    drop(shard);
    // Let the background tasks see the close and drop their handles (and the directory lock).
    sleep(Duration::from_millis(100)).await;
    let day = 86_400_000_000;
    let (shard, _) = Shard::open(UringDisk, SystemClock, options(&dir, hdd, args.block_cache_bytes, day))
        .await
        .map_err(|e| e.to_string())?;
    spawn_detached(Priority::Foreground, shard.background());
    spawn_detached(Priority::Background, shard.maintenance());
    let sink_started = Instant::now();
    while !shard.maintenance_idle() || shard.cold_windows().is_empty() {
        sleep(Duration::from_millis(20)).await;
        shard.wake_maintenance();
    }
    let sink_seconds = sink_started.elapsed().as_secs_f64();
    let sunk = shard.cold_windows();
    if sunk.is_empty() {
        return Err("nothing was sunk: the windows did not pass the hot horizon".into());
    }
    let cold = shard.cold().expect("the bench shard has a cold tier");
    let (_, link_table_bytes) = shard.table_stats();
    let disk_reads = |c: &strata_node::cold::ColdStore<UringDisk>| -> (u64, u64) {
        c.disk_stats().iter().fold((0, 0), |(r, b), s| (r + s.reads, b + s.read_bytes))
    };
    // A warm-up run, then the measured one; counters are read while no get is in flight, so
    // reads per get are exact.
    read_for(&shard, &args, base_ts, (args.seconds / 5.0).clamp(0.2, 2.0), false).await?;
    let (hits0, misses0, _) = shard.cache_stats();
    let (reads0, bytes0) = disk_reads(cold);
    let before = stat_file.as_deref().and_then(devstat::read);
    let cpu0 = crate::procstat::cpu_us("self");
    let (gets, elapsed, latency_us) = read_for(&shard, &args, base_ts, args.seconds, false).await?;
    let after = stat_file.as_deref().and_then(devstat::read);
    let cpu_us = crate::procstat::cpu_us("self") - cpu0;
    let (hits1, misses1, _) = shard.cache_stats();
    let (reads1, bytes1) = disk_reads(cold);
    // Absent keys of the same windows: no cold-disk read may happen.
    let (absent_gets, _, _) = read_for(&shard, &args, base_ts, (args.seconds / 5.0).clamp(0.2, 2.0), true).await?;
    let (_, misses2, _) = shard.cache_stats();
    let (reads2, _) = disk_reads(cold);
    let (scan_pages, scan_elapsed, scan_latency_us) =
        scan_for(&shard, &args, (args.seconds / 5.0).clamp(0.2, 2.0)).await?;
    let (reads3, _) = disk_reads(cold);
    let measured = Measured {
        windows_sunk: sunk.len(),
        cold_blocks: sunk.iter().map(|c| c.blocks).sum(),
        cold_bytes: sunk.iter().map(|c| c.bytes).sum(),
        sink_seconds,
        link_table_bytes,
        gets,
        elapsed,
        latency_us,
        cold_reads: reads1 - reads0,
        cold_read_bytes: bytes1 - bytes0,
        cache_hits: hits1 - hits0,
        cache_misses: misses1 - misses0,
        device_reads: before.zip(after).map(|(b, a)| a.reads - b.reads),
        cpu_us,
        absent_gets,
        absent_cold_reads: reads2 - reads1,
        absent_cache_misses: misses2 - misses1,
        scan_pages,
        scan_elapsed,
        scan_latency_us,
        scan_cold_reads: reads3 - reads2,
    };
    shard.close().await;
    Ok(measured)
}

/// Runs `inflight` readers of random entries (or, when `absent`, of keys next to them that were
/// never written) for `seconds`, then waits for every get in flight: returns the gets
/// completed, the time until the last one, and their latencies.
async fn read_for(
    shard: &Shard<UringDisk, SystemClock>,
    args: &Args,
    base_ts: u64,
    seconds: f64,
    absent: bool,
) -> Result<(u64, Duration, Histogram<u64>), String> {
    let (shard, entries) = (shard.clone(), args.entries);
    run_tasks(args.inflight, seconds, 0xc01d + (seconds * 1000.0) as u64, move |draw| {
        let shard = shard.clone();
        async move {
            let i = draw % entries;
            let (pkey, ts) = key_of(i, base_ts);
            // A timestamp one past an entry's belongs to no entry of this pkey.
            let found = shard.get(&pkey, ts + u64::from(absent)).await.map_err(|e| format!("get failed: {e}"))?;
            match found {
                None if absent => {
                    // An absent key is answered from the link table's filter without waiting:
                    // yield, or the timer that ends the run never gets to fire.
                    strata_ioengine::uring::yield_now().await;
                    Ok(())
                }
                Some((_, value)) if !absent && value[..8] == i.to_le_bytes() => Ok(()),
                _ => Err(format!("entry {i} (absent: {absent}) read wrong")),
            }
        }
    })
    .await
}

/// Runs `inflight` tasks paging the 20 newest entries of random pkeys (each page spans two or
/// three sunk windows) for `seconds`: pages, time until the last, latencies.
async fn scan_for(
    shard: &Shard<UringDisk, SystemClock>,
    args: &Args,
    seconds: f64,
) -> Result<(u64, Duration, Histogram<u64>), String> {
    let (shard, pkeys) = (shard.clone(), (args.entries / 100).max(1));
    run_tasks(args.inflight, seconds, 0x5ca7, move |draw| {
        let shard = shard.clone();
        async move {
            let pkey = format!("user{:010}", draw % pkeys).into_bytes();
            let page = shard.scan(&pkey, 0, u64::MAX - 1, 20, true).await.map_err(|e| format!("scan failed: {e}"))?;
            if page.len() != 20 || page.windows(2).any(|w| w[0].ts <= w[1].ts) {
                return Err(format!("a timeline page of {} entries, or out of order", page.len()));
            }
            Ok(())
        }
    })
    .await
}

/// Runs `inflight` tasks, each calling `op` with a fresh random draw over and over, for
/// `seconds`; then waits for every operation in flight. Returns the operations completed, the
/// time until the last one, and their latencies (µs).
async fn run_tasks<F, Fut>(
    inflight: usize,
    seconds: f64,
    seed: u64,
    op: F,
) -> Result<(u64, Duration, Histogram<u64>), String>
where
    F: Fn(u64) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + 'static,
{
    let running = Rc::new(Cell::new(true));
    let histogram = Rc::new(RefCell::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")));
    let done = Rc::new(Cell::new(0u64));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..inflight {
        let (op, running, histogram, done) = (op.clone(), running.clone(), histogram.clone(), done.clone());
        tasks.push(spawn_local(async move {
            let mut rng = SimRng::new(seed + t as u64);
            while running.get() {
                let start = Instant::now();
                op(rng.next_u64()).await?;
                let _ = histogram.borrow_mut().record(start.elapsed().as_micros() as u64);
                done.set(done.get() + 1);
            }
            Ok::<(), String>(())
        }));
    }
    sleep(Duration::from_secs_f64(seconds)).await;
    running.set(false);
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed();
    let latency = histogram.borrow().clone();
    Ok((done.get(), elapsed, latency))
}

pub fn summary(r: &Report) -> String {
    format!(
        "cold-get: {} entries of {} B sunk in {} windows to {} disks ({} blocks, {:.0} MiB; link tables {:.0} MiB on SSD; sink {:.1} s), {} gets in flight, core {}\n\
         \x20 strata: {:.0} cold gets/s, p50 {} us, p99 {} us, {:.1} us CPU per get\n\
         \x20         cold-disk reads per get {:.3} (goal exactly 1.0), SSD reads per get {:.3} (goal <= 1.0), block cache hit ratio {:.3} ({} MiB)\n\
         \x20         {:.0} bytes per cold read; device reads per get {} (the device at {} of fio's reads/s)\n\
         \x20 absent keys: {} gets, cold-disk reads per get {:.3} (goal 0), SSD reads per get {:.3}\n\
         \x20 timeline pages (20 newest of a random pkey): {:.0}/s, p50 {} us, p99 {} us, {:.2} cold-disk reads per page\n\
         \x20 fio:    {:.0} random {} reads/s (io_uring, O_DIRECT, QD{}, same core, same directory)\n\
         \x20 ratio:  {:.2}x fio (goal >= 0.8x)",
        r.entries,
        r.value_bytes,
        r.windows_sunk,
        r.disks,
        r.cold_blocks,
        r.cold_bytes as f64 / 1048576.0,
        r.link_table_bytes as f64 / 1048576.0,
        r.sink_seconds,
        r.inflight,
        r.cpu,
        r.gets_per_s,
        r.latency_p50_us,
        r.latency_p99_us,
        r.cpu_us_per_get,
        r.hdd_reads_per_get,
        r.ssd_reads_per_get,
        r.block_cache_hit_ratio,
        r.block_cache_bytes >> 20,
        r.cold_read_bytes_avg,
        r.device_reads_per_get.map_or("n/a".into(), |d| format!("{d:.3}")),
        r.device_reads_to_fio.map_or("n/a".into(), |d| format!("{d:.2}x")),
        r.absent_gets,
        r.hdd_reads_per_absent_get,
        r.ssd_reads_per_absent_get,
        r.scan_pages_per_s,
        r.scan_page_p50_us,
        r.scan_page_p99_us,
        r.hdd_reads_per_scan_page,
        r.fio.iops,
        r.fio.job,
        r.inflight,
        r.ratio_to_fio,
    )
}
