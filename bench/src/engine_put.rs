//! `engine-put`: durable puts on one pinned core from concurrent writers, beside fio's synced
//! 4 KiB writes at queue depth 1 on the same directory, in the same run.

use crate::{devstat, fio};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};
use strata_ioengine::uring::{Priority, run_pinned, sleep, spawn as spawn_local, spawn_detached};
use strata_ioengine::{SystemClock, UringDisk};
use strata_node::{Shard, ShardOptions};

#[derive(Debug, Clone)]
pub struct Args {
    pub dir: PathBuf,
    pub cpu: usize,
    pub writers: usize,
    pub value_bytes: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: &'static str,
    pub cpu: usize,
    pub writers: usize,
    pub value_bytes: usize,
    pub seconds: f64,
    pub puts: u64,
    pub puts_per_s: f64,
    pub fsyncs: u64,
    pub puts_per_fsync: f64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_p999_us: u64,
    pub latency_max_us: u64,
    pub wal_bytes_per_put: f64,
    pub device_bytes_written_per_put: Option<f64>,
    pub fio: fio::FioResult,
    pub ratio_to_fio_synced_writes: f64,
    pub goal_puts_per_s: f64,
    pub goal_ratio_to_fio: f64,
    pub goals_met: bool,
}

struct Measured {
    puts: u64,
    fsyncs: u64,
    wal_bytes: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

pub fn run(args: &Args) -> Result<Report, String> {
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("cannot create {}: {e}", args.dir.display()))?;
    let fio = fio::synced_4k_writes(&args.dir, args.cpu, "psync", args.seconds)?;

    let shard_dir = args.dir.join("strata-engine-put");
    let _ = std::fs::remove_dir_all(&shard_dir);
    let stat_file = devstat::stat_file_for(&args.dir);
    let before = stat_file.as_deref().and_then(devstat::read);
    let (writers, value_bytes, seconds) = (args.writers, args.value_bytes, args.seconds);
    let measured = run_pinned("engine-put", args.cpu, move || measure(shard_dir, writers, value_bytes, seconds))
        .map_err(|e| e.to_string())??;
    let after = stat_file.as_deref().and_then(devstat::read);
    let _ = std::fs::remove_dir_all(args.dir.join("strata-engine-put"));

    let puts = measured.puts.max(1);
    let puts_per_s = measured.puts as f64 / measured.elapsed.as_secs_f64();
    let ratio = puts_per_s / fio.iops;
    let device_bytes_written_per_put =
        before.zip(after).map(|(b, a)| (a.sectors_written - b.sectors_written) as f64 * 512.0 / puts as f64);
    let h = &measured.latency_us;
    Ok(Report {
        workload: "engine-put",
        cpu: args.cpu,
        writers: args.writers,
        value_bytes: args.value_bytes,
        seconds: measured.elapsed.as_secs_f64(),
        puts: measured.puts,
        puts_per_s,
        fsyncs: measured.fsyncs,
        puts_per_fsync: measured.puts as f64 / measured.fsyncs.max(1) as f64,
        latency_p50_us: h.value_at_quantile(0.50),
        latency_p99_us: h.value_at_quantile(0.99),
        latency_p999_us: h.value_at_quantile(0.999),
        latency_max_us: h.max(),
        wal_bytes_per_put: measured.wal_bytes as f64 / puts as f64,
        device_bytes_written_per_put,
        fio,
        ratio_to_fio_synced_writes: ratio,
        goal_puts_per_s: 150_000.0,
        goal_ratio_to_fio: 15.0,
        goals_met: puts_per_s >= 150_000.0 && ratio >= 15.0,
    })
}

async fn measure(dir: PathBuf, writers: usize, value_bytes: usize, seconds: f64) -> Result<Measured, String> {
    let mut options = ShardOptions::new(&dir);
    options.memtable_bytes_max = 8 << 30;
    let (shard, _) = Shard::open(UringDisk, SystemClock, options).await.map_err(|e| e.to_string())?;
    spawn_detached(Priority::Foreground, shard.background());
    spawn_detached(Priority::Background, shard.maintenance());
    // Warm up: the first segments are being prepared, caches are cold.
    let running = Rc::new(Cell::new(true));
    let measuring = Rc::new(Cell::new(false));
    let histogram = Rc::new(RefCell::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")));
    let puts = Rc::new(Cell::new(0u64));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (shard, running, measuring, histogram, puts) =
            (shard.clone(), running.clone(), measuring.clone(), histogram.clone(), puts.clone());
        tasks.push(spawn_local(async move {
            let pkey = format!("bench-writer-{w}").into_bytes();
            let value = vec![0x5a; value_bytes];
            let mut ts = 0u64;
            while running.get() {
                let start = Instant::now();
                let result = shard.put(&pkey, ts, &value).await;
                if let Err(e) = result {
                    return Err(format!("put failed: {e}"));
                }
                if measuring.get() {
                    let _ = histogram.borrow_mut().record(start.elapsed().as_micros() as u64);
                    puts.set(puts.get() + 1);
                }
                ts += 1;
            }
            Ok(())
        }));
    }
    sleep(Duration::from_secs_f64((seconds / 5.0).clamp(0.2, 2.0))).await;
    let stats_before = shard.stats();
    measuring.set(true);
    let started = Instant::now();
    sleep(Duration::from_secs_f64(seconds)).await;
    measuring.set(false);
    let elapsed = started.elapsed();
    let stats_after = shard.stats();
    running.set(false);
    for task in tasks {
        task.await?;
    }
    shard.close().await;
    let latency_us = histogram.borrow().clone();
    Ok(Measured {
        puts: puts.get(),
        fsyncs: stats_after.fsyncs - stats_before.fsyncs,
        wal_bytes: stats_after.wal_bytes_written - stats_before.wal_bytes_written,
        elapsed,
        latency_us,
    })
}

/// The human-readable summary.
#[must_use]
pub fn summary(r: &Report) -> String {
    format!(
        "engine-put: {writers} writers, {value} B values, core {cpu}, {secs:.1} s\n\
         \x20 strata: {pps:.0} durable puts/s, {ppf:.1} puts per fsync, p50 {p50} us, p99 {p99} us, p99.9 {p999} us, max {max} us\n\
         \x20         {wal:.0} WAL bytes per put{dev}\n\
         \x20 fio:    {fio:.0} synced 4 KiB writes/s (QD1, O_DIRECT, fdatasync), p50 {fp50:.0} us, p99 {fp99:.0} us\n\
         \x20 ratio:  {ratio:.1}x fio's synced writes/s (goal >= 15x; goal >= 150k puts/s: {met})",
        writers = r.writers,
        value = r.value_bytes,
        cpu = r.cpu,
        secs = r.seconds,
        pps = r.puts_per_s,
        ppf = r.puts_per_fsync,
        p50 = r.latency_p50_us,
        p99 = r.latency_p99_us,
        p999 = r.latency_p999_us,
        max = r.latency_max_us,
        wal = r.wal_bytes_per_put,
        dev =
            r.device_bytes_written_per_put.map_or(String::new(), |b| format!(", {b:.0} device bytes written per put")),
        fio = r.fio.iops,
        fp50 = r.fio.lat_p50_us,
        fp99 = r.fio.lat_p99_us,
        ratio = r.ratio_to_fio_synced_writes,
        met = if r.goals_met { "met" } else { "NOT met" },
    )
}
