//! `engine-get --json` runs briefly in the suite so it never rots: a small dataset, every
//! figure present, measured beside fio and db_bench in the same run. (Speed is judged by full
//! runs, documented in docs/bench.md, not here.)

use std::process::Command;

#[test]
fn engine_get_reports_every_figure_beside_fio_and_db_bench() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_strata-bench"))
        .args(["engine-get", "--json", "--entries", "200000", "--memory-budget-mib", "12", "--seconds", "1", "--dir"])
        .arg(dir.path())
        .output()
        .expect("strata-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "strata-bench failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    for field in
        ["gets_per_s", "scan_pages_per_s", "ratio_to_fio", "ratio_to_db_bench", "write_amp_engine_total", "space_amp"]
    {
        assert!(report[field].as_f64().is_some_and(|v| v > 0.0), "{field} missing or zero");
    }
    let uncached = report["device_reads_per_uncached_get"].as_f64().expect("device counters are readable here");
    assert!(uncached >= 0.95, "uncached gets must reach the device ({uncached} reads each)");
}
