//! `cold-get --json` runs briefly in the suite so it never rots: a small dataset sunk to four
//! folder disks, every figure present beside fio in the same run, and the per-get read counts
//! that the design promises (exactly one cold-disk read per get, at most one SSD read). Speed is
//! judged by full runs, documented in docs/bench.md, not here.

use std::process::Command;

#[test]
fn cold_get_reads_one_cold_block_per_get_beside_fio() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_strata-bench"))
        .args(["cold-get", "--json", "--entries", "100000", "--seconds", "1", "--dir"])
        .arg(dir.path())
        .output()
        .expect("strata-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "strata-bench failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    for field in ["gets_per_s", "ratio_to_fio", "cold_bytes", "scan_pages_per_s", "hdd_reads_per_scan_page"] {
        assert!(report[field].as_f64().is_some_and(|v| v > 0.0), "{field} missing or zero");
    }
    assert_eq!(report["windows_sunk"].as_u64(), Some(8), "every window sank");
    let hdd = report["hdd_reads_per_get"].as_f64().unwrap();
    assert!((hdd - 1.0).abs() < 1e-9, "exactly one cold-disk read per get, not {hdd}");
    let ssd = report["ssd_reads_per_get"].as_f64().unwrap();
    assert!(ssd <= 1.0, "at most one SSD read per cold get, not {ssd}");
    assert!(report["absent_gets"].as_u64().is_some_and(|n| n > 0), "absent keys were read");
    let absent = report["hdd_reads_per_absent_get"].as_f64().unwrap();
    assert!(absent == 0.0, "a get of an absent key reads no cold disk, not {absent} per get");
}
