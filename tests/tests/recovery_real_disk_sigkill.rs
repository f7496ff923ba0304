//! Real disk: a shard on glommio with O_DIRECT in a temporary directory takes writes from 50
//! concurrent writers in a child process, printing each acknowledgement; the child is killed
//! with SIGKILL (no clean shutdown); the directory is reopened and every acknowledged write is
//! there with its version. While the child runs, a second open is refused by the lock file.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use strata_ioengine::executor::{ExecutorSpec, online_cpus, run_pinned, spawn_detached};
use strata_ioengine::{DmaDisk, SystemClock};
use strata_node::{OpenError, Shard, ShardOptions};

const CHILD_ENV: &str = "STRATA_TEST_CHILD_DIR";

fn spec(name: &str, cpu_index: usize) -> ExecutorSpec {
    let cpus = online_cpus();
    ExecutorSpec {
        name: name.into(),
        cpu: cpus[cpu_index % cpus.len()],
        io_memory_bytes: 1 << 20,
        spin_before_park: None,
    }
}

fn options(dir: PathBuf) -> ShardOptions {
    let mut options = ShardOptions::new(dir);
    options.segment_bytes = 4 << 20;
    options.batch_bytes_max = 2 << 20;
    // The machine's disk may be nearly full; these tests need little room.
    options.ssd_reserve_bytes = 16 << 20;
    options.ssd_throttle_bytes = 16 << 20;
    options
}

fn value(writer: u64, i: u64) -> Vec<u8> {
    let mut v = format!("w{writer}-{i}-").into_bytes();
    v.resize(100, b'x');
    v
}

/// The child: 50 writers putting until killed, one line per acknowledgement.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    run_pinned(&spec("child", 0), move || async move {
        let (shard, _) = Shard::open(DmaDisk, SystemClock, options(dir.into())).await.expect("child opens the shard");
        spawn_detached(shard.background());
        spawn_detached(shard.maintenance());
        let mut writers = Vec::new();
        for w in 0..50u64 {
            let shard = shard.clone();
            writers.push(strata_ioengine::executor::spawn_local(async move {
                let pkey = format!("writer-{w}").into_bytes();
                for i in 0.. {
                    let version = shard.put(&pkey, i, &value(w, i)).await.expect("put succeeds");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {w} {i} {version}").expect("stdout open");
                    out.flush().expect("stdout open");
                }
            }));
        }
        for writer in writers {
            writer.await;
        }
    })
    .expect("child executor runs");
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let data = dir.path().join("shard-0");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &data)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("child starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked: Vec<(u64, u64, u64)> = Vec::new();
    let started = Instant::now();
    while acked.len() < 30_000 && started.elapsed() < Duration::from_secs(30) {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.strip_prefix("ack ") {
            let f: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
            acked.push((f[0], f[1], f[2]));
        }
    }
    assert!(acked.len() > 1000, "the child acknowledged only {} writes", acked.len());

    // While the child holds the directory, a second opener is refused.
    let locked_dir = data.clone();
    let second = run_pinned(&spec("second", 1), move || async move {
        match Shard::open(DmaDisk, SystemClock, options(locked_dir)).await {
            Err(OpenError::Locked(e)) => Ok(e.to_string()),
            Err(e) => Err(format!("unexpected error: {e}")),
            Ok(_) => Err("a second shard opened a locked directory".to_string()),
        }
    })
    .unwrap();
    println!("second open refused: {}", second.expect("lock refuses the second opener"));

    child.kill().expect("SIGKILL the child");
    // Acknowledgements printed before the kill count too.
    for line in lines.map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("ack ") {
            let f: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
            acked.push((f[0], f[1], f[2]));
        }
    }
    child.wait().unwrap();
    println!("child killed after {} acknowledged writes", acked.len());

    let missing = run_pinned(&spec("verify", 1), move || async move {
        let (shard, report) = Shard::open(DmaDisk, SystemClock, options(data)).await.expect("reopen after SIGKILL");
        println!(
            "recovered {} records in {} batches; torn tail: {:?}",
            report.records_replayed, report.batches_replayed, report.torn_tail
        );
        let mut missing = Vec::new();
        for (w, i, version) in acked {
            let pkey = format!("writer-{w}").into_bytes();
            match shard.get(&pkey, i).await.unwrap() {
                Some((v, bytes)) if v == version && bytes == value(w, i) => {}
                other => missing.push(format!("writer-{w}@{i} v{version}: found {:?}", other.map(|(v, _)| v))),
            }
        }
        missing
    })
    .unwrap();
    assert!(missing.is_empty(), "{} acknowledged writes lost, first: {:?}", missing.len(), missing.first());
}
