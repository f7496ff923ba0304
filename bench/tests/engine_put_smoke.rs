//! The bench binary runs briefly in the test suite so it never rots: `engine-put --json` must
//! produce every figure, measured beside fio in the same run. (Speed is judged by full runs,
//! documented in docs/bench.md, not here.)

use std::process::Command;

#[test]
fn engine_put_reports_every_figure_beside_fio() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_strata-bench"))
        .args(["engine-put", "--json", "--seconds", "1", "--writers", "50", "--dir"])
        .arg(dir.path())
        .output()
        .expect("strata-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "strata-bench failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    for field in [
        "puts_per_s",
        "puts_per_fsync",
        "latency_p50_us",
        "latency_p99_us",
        "wal_bytes_per_put",
        "ratio_to_fio_synced_writes",
    ] {
        assert!(report[field].as_f64().is_some_and(|v| v > 0.0), "{field} missing or zero");
    }
    assert!(report["fio"]["iops"].as_f64().is_some_and(|v| v > 0.0), "fio figure missing");
    assert!(report["puts_per_fsync"].as_f64().unwrap() > 1.0, "group commit should batch 50 writers");
}
