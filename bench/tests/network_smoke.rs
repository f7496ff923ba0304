//! The network benches run briefly in the test suite so they never rot: `compare` against
//! redis-server and `overload` must produce every figure. (Speed is judged by full runs,
//! documented in docs/bench.md, not here.) They need redis-server and taskset (installed by
//! .ci/run); the CPU quota runs need a writable cgroup v1 cpu controller (root).

use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard};

/// The CPU thief takes most of core 0 from every process on it, the other tests' servers too:
/// it runs alone (a write lock) while the others share the core (read locks).
static CORE_0: RwLock<()> = RwLock::new(());

fn share_core_0() -> RwLockReadGuard<'static, ()> {
    CORE_0.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn cgroup_writable() -> bool {
    let probe = std::path::Path::new("/sys/fs/cgroup/cpu/strata-bench-probe");
    let ok = std::fs::create_dir_all(probe).is_ok();
    let _ = std::fs::remove_dir(probe);
    ok
}

fn bench(args: &[&str], dir: &std::path::Path) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_strata-bench"))
        .args(args)
        .arg("--json")
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("strata-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "strata-bench {args:?} failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    report
}

#[test]
fn compare_measures_strata_and_redis_side_by_side() {
    let _core = share_core_0();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let quota = if cgroup_writable() { "50" } else { "0" };
    if quota == "0" {
        eprintln!("NOTICE: no writable cgroup v1 cpu controller: the quota rows are skipped");
    }
    let report = bench(
        &[
            "compare",
            "--seconds",
            "0.5",
            "--keys",
            "2000",
            "--connections",
            "4",
            "--quota-percent",
            quota,
            "--rounds",
            "2",
        ],
        dir.path(),
    );
    let rows = report["rows"].as_array().expect("rows");
    assert!(rows.len() >= 10, "PUT x3 and GET x2 at least, in each of 2 rounds");
    assert_eq!(rows.iter().filter(|r| r["round"] == 1).count() * 2, rows.len(), "both rounds measure every row");
    for row in rows {
        assert!(row["ops_per_s"].as_f64().is_some_and(|v| v > 0.0), "no throughput in {row}");
        assert!(row["server_cpu_us_per_op"].as_f64().is_some_and(|v| v > 0.0), "no server CPU in {row}");
        assert_eq!(row["failed"].as_u64(), Some(0), "failures in {row}");
    }
    // The disk's limit beside the durable PUTs: fio's synced writes once per round, and
    // Strata's group commits, which can never hold more PUTs than the 4 connections send.
    let fio = report["fio_synced_writes"].as_array().expect("fio_synced_writes");
    assert_eq!(fio.len(), 2, "one fio run per round");
    for run in fio {
        assert!(run["iops"].as_f64().is_some_and(|v| v > 0.0), "fio completed no synced writes: {run}");
        assert!(run["cpu_us_per_op"].as_f64().is_some_and(|v| v > 0.0), "no fio CPU: {run}");
    }
    for row in rows.iter().filter(|r| r["server"] == "strata" && r["workload"] == "PUT") {
        assert!(row["commits_per_s"].as_f64().is_some_and(|v| v > 0.0), "no group commits in {row}");
        let per = row["ops_per_commit"].as_f64().expect("PUTs per commit");
        assert!((1.0..=4.0).contains(&per), "{per} PUTs per commit from 4 connections: {row}");
    }
    for row in rows.iter().filter(|r| r["server"] != "strata" || r["workload"] != "PUT") {
        assert!(row["commits_per_s"].is_null(), "group commits are counted for Strata's PUTs only: {row}");
    }
    let ratios = report["ratios"].as_array().expect("ratios");
    assert!(ratios.len() >= 6);
    for ratio in ratios {
        let (low, value, high) = (ratio["low"].as_f64(), ratio["value"].as_f64(), ratio["high"].as_f64());
        assert!(low <= value && value <= high, "the median within its rounds: {ratio}");
        // The PUT CPU less fio's per-cycle share may be below zero in a run this small.
        if !ratio["name"].as_str().is_some_and(|n| n.contains("less fio")) {
            assert!(low.is_some_and(|v| v > 0.0), "a ratio of two positive figures: {ratio}");
        }
    }
}

/// `overload` at smoke-test size (half-second steps, a small dataset, 4 connections), with
/// `extra` arguments.
fn short_overload(extra: &[&str], dir: &std::path::Path) -> serde_json::Value {
    let mut args = vec!["overload", "--seconds", "0.5", "--keys", "2000", "--connections", "4", "--rss-seconds", "1"];
    args.extend_from_slice(extra);
    bench(&args, dir)
}

#[test]
fn overload_reports_goodput_at_every_multiple() {
    let _core = share_core_0();
    if !cgroup_writable() {
        eprintln!("NOTICE: skipped: overload needs a writable cgroup v1 cpu controller (run as root)");
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let report = short_overload(&["--disk-keys", "5000", "--quota-percent", "20", "--rounds", "2"], dir.path());
    let workloads = report["workloads"].as_array().expect("workloads");
    assert_eq!(workloads.len(), 4, "two workloads in each of 2 rounds");
    for w in workloads {
        assert!(w["capacity_per_s"].as_f64().is_some_and(|v| v > 0.0), "{w}");
        assert_eq!(w["steps"].as_array().map(Vec::len), Some(6), "{w}");
        for s in w["steps"].as_array().expect("steps") {
            // The server worked in every step; held to 20% of a core, the CPU-bound one used
            // no more than about that (a quota is enforced per 5 ms period, so allow some over).
            let share = s["server_cpu_share"].as_f64().expect("server_cpu_share");
            assert!(share > 0.0, "{s}");
            if w["name"].as_str().is_some_and(|n| n.starts_with("CPU")) {
                assert!(share < 0.35, "a server held to 20% used {share}: {s}");
            }
            assert!(s["send_lag_p99_us"].as_u64().is_some_and(|v| v > 0), "{s}");
            // The node's loop, read from its metrics around the step: it answered in turns.
            assert!(s["turns_per_s"].as_f64().is_some_and(|v| v > 0.0), "{s}");
            assert!(s["turn_mean_us"].as_f64().is_some_and(|v| v > 0.0), "{s}");
            let hold = (s["answer_hold_p50_us"].as_u64(), s["answer_hold_p99_us"].as_u64());
            assert!(matches!(hold, (Some(p50), Some(p99)) if p50 > 0 && p50 <= p99), "{s}");
            let limited = &s["generator_limited"];
            assert!(limited.is_null() || limited.as_str().is_some_and(|why| why.starts_with("the generator")), "{s}");
        }
    }
    let summaries = report["summaries"].as_array().expect("summaries");
    assert_eq!(summaries.len(), 2);
    for w in summaries {
        assert_eq!(w["rounds"].as_u64(), Some(2), "{w}");
        for s in w["steps"].as_array().expect("steps") {
            // The medians are over the rounds whose generator kept up; none is a null.
            let g = &s["goodput_vs_peak"];
            if s["valid_rounds"].as_u64().expect("valid_rounds") == 0 {
                assert!(g.is_null(), "{s}");
                continue;
            }
            assert!(g["low"].as_f64() <= g["median"].as_f64() && g["median"].as_f64() <= g["high"].as_f64(), "{s}");
        }
    }
    assert!(report["rss_end_bytes"].as_u64().is_some_and(|v| v > 0));
    // Under the quota the node's queue-delay-max is raised above the quota's 4 ms freezes.
    assert_eq!(report["shrink"], "Quota");
    assert_eq!(report["cpu_queue_delay_max_ms"].as_u64(), Some(6));
}

/// Whether this machine lets a process run at real-time priority (root, and not a container
/// that withholds it).
fn realtime_allowed() -> bool {
    Command::new("chrt").args(["--fifo", "1", "true"]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn overload_can_shrink_the_server_with_a_cpu_thief() {
    let _core = CORE_0.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !realtime_allowed() {
        eprintln!("NOTICE: skipped: the CPU thief runs at real-time priority, which `chrt --fifo 1` may not use here");
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let report = short_overload(&["--workload", "cpu", "--shrink", "thief", "--rounds", "1"], dir.path());
    assert_eq!(report["shrink"]["Thief"]["period_us"].as_u64(), Some(500), "{}", report["shrink"]);
    assert_eq!(report["cpu_queue_delay_max_ms"].as_u64(), Some(3), "the node's default without long freezes");
    let workloads = report["workloads"].as_array().expect("workloads");
    assert_eq!(workloads.len(), 1, "the CPU-bound workload only");
    assert!(workloads[0]["capacity_per_s"].as_f64().is_some_and(|v| v > 0.0), "{}", workloads[0]);
    // The thief is gone with the run: nothing keeps spinning on the server's core.
    let left = Command::new("pgrep").args(["-f", "strata-bench cpu-thief"]).output().expect("pgrep runs");
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty(), "a CPU thief outlived its run");
}

#[test]
fn netpath_measures_each_network_path_beside_redis() {
    let _core = share_core_0();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let quota = if cgroup_writable() { "50" } else { "0" };
    let report = bench(
        &["netpath", "--seconds", "0.5", "--connections", "4", "--quota-percent", quota, "--rounds", "1"],
        dir.path(),
    );
    let rows = report["rows"].as_array().expect("rows");
    let servers: Vec<&str> =
        rows.iter().filter(|r| r["quota_percent"].is_null()).filter_map(|r| r["server"].as_str()).collect();
    assert_eq!(servers.len(), 4, "redis, two echo servers and the node: {servers:?}");
    for row in rows {
        assert!(row["ops_per_s"].as_f64().is_some_and(|v| v > 0.0), "no throughput in {row}");
        assert!(row["server_cpu_us_per_op"].as_f64().is_some_and(|v| v > 0.0), "no server CPU in {row}");
        assert_eq!(row["failed"].as_u64(), Some(0), "failures in {row}");
    }
    let ratios = report["ratios"].as_array().expect("ratios");
    assert_eq!(ratios.len(), if quota == "0" { 3 } else { 6 }, "each path against redis, free and held");
    for ratio in ratios {
        assert!(ratio["cpu_vs_redis"][0].as_f64().is_some_and(|v| v > 0.0), "{ratio}");
    }
}
