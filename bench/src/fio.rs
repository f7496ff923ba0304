//! fio as the physical limit: runs a job pinned to a core and reads its JSON report.

use serde::Serialize;
use std::path::Path;
use std::process::Command;

/// What fio measured for one job.
#[derive(Debug, Clone, Serialize)]
pub struct FioResult {
    pub job: String,
    pub iops: f64,
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
    /// fio's own CPU time (user + system, its I/O worker threads included) per operation, µs.
    pub cpu_us_per_op: f64,
    pub command: String,
}

/// Runs fio with `args` (besides the common ones) and returns its first job's figures for `rw`
/// ("read" or "write").
pub fn run(dir: &Path, cpu: usize, job: &str, rw_key: &str, args: &[String]) -> Result<FioResult, String> {
    let mut cmd = Command::new("fio");
    cmd.arg(format!("--name={job}"))
        .arg(format!("--directory={}", dir.display()))
        .arg(format!("--cpus_allowed={cpu}"))
        .arg("--output-format=json")
        .args(args);
    let shown = format!("fio --name={job} --directory={} --cpus_allowed={cpu} {}", dir.display(), args.join(" "));
    let output = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            "fio is not installed: `apt-get install fio` (the bench compares against it)".to_string()
        } else {
            format!("cannot run fio: {e}")
        }
    })?;
    if !output.status.success() {
        return Err(format!("{shown} failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    // fio may print notes before the JSON object.
    let json_start = text.find('{').ok_or_else(|| format!("{shown} printed no JSON"))?;
    let report: serde_json::Value = serde_json::from_str(&text[json_start..]).map_err(|e| format!("fio JSON: {e}"))?;
    let stats = &report["jobs"][0][rw_key];
    let percentile = |p: &str| stats["clat_ns"]["percentile"][p].as_f64().unwrap_or(0.0) / 1000.0;
    let sync = &report["jobs"][0]["sync"];
    let number = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let jobs0 = &report["jobs"][0];
    // usr_cpu and sys_cpu are percent of the job's runtime (ms), from getrusage of fio's process.
    let cpu_us =
        (number(&jobs0["usr_cpu"]) + number(&jobs0["sys_cpu"])) / 100.0 * number(&jobs0["job_runtime"]) * 1000.0;
    let mut result = FioResult {
        job: job.into(),
        iops: stats["iops"].as_f64().ok_or("fio JSON has no iops")?,
        lat_p50_us: percentile("50.000000"),
        lat_p99_us: percentile("99.000000"),
        cpu_us_per_op: cpu_us / number(&stats["total_ios"]).max(1.0),
        command: shown,
    };
    // With fdatasync=1 the fsync latency dominates: report write + sync at the median.
    if let Some(sync_p50) = sync["lat_ns"]["percentile"]["50.000000"].as_f64() {
        result.lat_p50_us += sync_p50 / 1000.0;
    }
    if let Some(sync_p99) = sync["lat_ns"]["percentile"]["99.000000"].as_f64() {
        result.lat_p99_us += sync_p99 / 1000.0;
    }
    Ok(result)
}

/// The disk's limit for durable writes: fio writing 4 KiB at a time with an fdatasync after
/// each (O_DIRECT, one in flight, `ioengine` `psync` or `io_uring`), pinned to `cpu`, in a
/// scratch directory under `dir` (removed afterwards), for `seconds`.
pub fn synced_4k_writes(dir: &Path, cpu: usize, ioengine: &str, seconds: f64) -> Result<FioResult, String> {
    let scratch = dir.join("fio");
    std::fs::create_dir_all(&scratch).map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let args: Vec<String> = [
        "--rw=write",
        "--bs=4k",
        "--size=64m",
        "--direct=1",
        "--fdatasync=1",
        "--iodepth=1",
        "--numjobs=1",
        "--overwrite=1",
        "--time_based",
    ]
    .iter()
    .map(ToString::to_string)
    .chain([format!("--ioengine={ioengine}"), format!("--runtime={}s", seconds.ceil().max(1.0) as u64)])
    .collect();
    let job = if ioengine == "psync" { "synced-4k-writes".to_string() } else { format!("synced-4k-writes-{ioengine}") };
    let result = run(&scratch, cpu, &job, "write", &args);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}
