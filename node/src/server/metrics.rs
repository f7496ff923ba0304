//! Counters and histograms of one shard, written by its core and read by the status thread,
//! rendered in Prometheus' text format with a `shard` label.

use super::admission::Refusal;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use strata_format::protocol::{Opcode, Status};

/// Latency buckets: upper bounds in µs, powers of two from 16 µs to about 8 s.
const BUCKETS: usize = 20;

fn bucket_bound_us(i: usize) -> u64 {
    16 << i
}

/// A histogram of microseconds with fixed power-of-two buckets.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, us: u64) {
        let i = (0..BUCKETS).find(|&i| us <= bucket_bound_us(i)).unwrap_or(BUCKETS);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for i in 0..BUCKETS {
            cumulative += self.buckets[i].load(Relaxed);
            let le = bucket_bound_us(i) as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count.load(Relaxed));
    }
}

/// Everything one shard reports.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    pub requests: [AtomicU64; 13],
    pub responses: [AtomicU64; 12],
    pub rejections: [AtomicU64; 5],
    pub forwarded: AtomicU64,
    /// GETs answered by a read of the same key already in flight.
    pub merged_reads: AtomicU64,
    pub bad_frames: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_closed: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Receives that found no provided buffer free (armed again).
    pub receives_out_of_buffers: AtomicU64,
    pub latency_read: Histogram,
    pub latency_write: Histogram,
    pub queue_delay: Histogram,
    /// Time requests sat in the socket before the server read them (from the kernel's
    /// receive timestamp).
    pub socket_wait: Histogram,
    /// Each sending of answers by the shard's loop (at a turn's end, and every 1 ms of a long
    /// turn): from the turn's start (the ring's return) to the answers being handed to the sends.
    pub turn: Histogram,
    /// Each such send's oldest answer: from being queued to being handed to the sends.
    pub answer_hold: Histogram,
    /// Copied from the shard every 500 ms.
    pub wal_fsyncs: AtomicU64,
    pub wal_batches: AtomicU64,
    pub wal_bytes_written: AtomicU64,
    pub writes_acked: AtomicU64,
    pub flush_bytes_written: AtomicU64,
    pub compaction_bytes_written: AtomicU64,
    pub compaction_bytes_read: AtomicU64,
    pub block_cache_hits: AtomicU64,
    pub block_cache_misses: AtomicU64,
    pub inflight_requests: AtomicU64,
    pub sinks: AtomicU64,
    pub sink_bytes_written: AtomicU64,
    pub sinks_abandoned: AtomicU64,
    pub cold_windows: AtomicU64,
    pub repair_queue: AtomicU64,
    /// Per cold disk: its counters and whether it is down.
    pub cold_disks: std::sync::Mutex<Vec<(crate::cold::ColdDiskStats, bool)>>,
    pub open_connections: AtomicU64,
}

impl ShardMetrics {
    pub fn request(&self, opcode: Opcode) {
        self.requests[opcode as usize].fetch_add(1, Relaxed);
    }

    pub fn response(&self, status: Status) {
        self.responses[status as usize % 12].fetch_add(1, Relaxed);
    }

    pub fn rejection(&self, refusal: Refusal) {
        self.rejections[refusal as usize].fetch_add(1, Relaxed);
    }
}

/// A family of one value per shard: name, type, help, and how to read it.
type ScalarFamily = (&'static str, &'static str, &'static str, fn(&ShardMetrics) -> u64);

const SCALARS: [ScalarFamily; 22] = [
    ("strata_forwarded_requests_total", "counter", "Requests sent to the shard that owns their pkeys.", |m| {
        m.forwarded.load(Relaxed)
    }),
    ("strata_merged_reads_total", "counter", "GETs answered by an identical GET's read already in flight.", |m| {
        m.merged_reads.load(Relaxed)
    }),
    (
        "strata_bad_frames_total",
        "counter",
        "Frames refused for their header or body checksum, and response frames sent to the node.",
        |m| m.bad_frames.load(Relaxed),
    ),
    ("strata_connections_accepted_total", "counter", "Connections accepted.", |m| m.connections_accepted.load(Relaxed)),
    ("strata_connections_closed_total", "counter", "Connections closed.", |m| m.connections_closed.load(Relaxed)),
    ("strata_open_connections", "gauge", "Connections open now.", |m| m.open_connections.load(Relaxed)),
    ("strata_inflight_requests", "gauge", "Admitted requests not yet answered.", |m| m.inflight_requests.load(Relaxed)),
    ("strata_network_bytes_received_total", "counter", "Bytes received from clients.", |m| {
        m.bytes_received.load(Relaxed)
    }),
    (
        "strata_receive_buffer_exhaustions_total",
        "counter",
        "Receives that found no provided receive buffer free.",
        |m| m.receives_out_of_buffers.load(Relaxed),
    ),
    ("strata_wal_fsyncs_total", "counter", "WAL fdatasyncs (group commits made durable).", |m| {
        m.wal_fsyncs.load(Relaxed)
    }),
    ("strata_wal_batches_total", "counter", "WAL group-commit batches written.", |m| m.wal_batches.load(Relaxed)),
    ("strata_wal_bytes_written_total", "counter", "WAL bytes written.", |m| m.wal_bytes_written.load(Relaxed)),
    ("strata_writes_acked_total", "counter", "Writes acknowledged after their group commit.", |m| {
        m.writes_acked.load(Relaxed)
    }),
    ("strata_flush_bytes_written_total", "counter", "Table bytes written by memtable flushes.", |m| {
        m.flush_bytes_written.load(Relaxed)
    }),
    ("strata_compaction_bytes_written_total", "counter", "Table bytes written by compactions.", |m| {
        m.compaction_bytes_written.load(Relaxed)
    }),
    ("strata_compaction_bytes_read_total", "counter", "Table bytes read by compactions.", |m| {
        m.compaction_bytes_read.load(Relaxed)
    }),
    ("strata_block_cache_hits_total", "counter", "Block cache hits.", |m| m.block_cache_hits.load(Relaxed)),
    ("strata_block_cache_misses_total", "counter", "Block cache misses.", |m| m.block_cache_misses.load(Relaxed)),
    ("strata_sinks_total", "counter", "Windows sunk to the cold disks.", |m| m.sinks.load(Relaxed)),
    ("strata_sink_bytes_written_total", "counter", "Cold bytes written by sinks.", |m| {
        m.sink_bytes_written.load(Relaxed)
    }),
    ("strata_sinks_abandoned_total", "counter", "Sinks given up on a cold-disk error.", |m| {
        m.sinks_abandoned.load(Relaxed)
    }),
    ("strata_cold_windows", "gauge", "Windows on the cold tier.", |m| m.cold_windows.load(Relaxed)),
];

/// A family of one value per shard and cold disk (the disk's counters, and whether it is down).
type DiskFamily = (&'static str, &'static str, &'static str, fn(&crate::cold::ColdDiskStats, bool) -> u64);

const COLD_DISK: [DiskFamily; 7] = [
    ("strata_cold_disk_reads_total", "counter", "Cold-disk reads.", |s, _| s.reads),
    ("strata_cold_disk_read_bytes_total", "counter", "Cold-disk bytes read.", |s, _| s.read_bytes),
    ("strata_cold_disk_writes_total", "counter", "Cold-disk writes.", |s, _| s.writes),
    ("strata_cold_disk_write_bytes_total", "counter", "Cold-disk bytes written.", |s, _| s.write_bytes),
    ("strata_cold_disk_errors_total", "counter", "Cold-disk I/O errors.", |s, _| s.errors),
    (
        "strata_cold_disk_corrupt_blocks_total",
        "counter",
        "Cold blocks that failed their check or whose file is missing.",
        |s, _| s.corrupt_blocks,
    ),
    (
        "strata_cold_disk_down",
        "gauge",
        "1 while the disk is out of service (after an I/O error, or without its label at start).",
        |_, down| u64::from(down),
    ),
];

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The Prometheus text exposition of every shard's metrics: each family once, with its HELP and
/// TYPE lines, followed by all its samples (every shard's, labelled `shard`), as the format
/// requires.
pub fn render(out: &mut String, shards: &[std::sync::Arc<ShardMetrics>]) {
    let label = |shard: usize| format!("shard=\"{shard}\"");
    header(out, "strata_requests_total", "counter", "Requests received, by operation.");
    for (i, m) in shards.iter().enumerate() {
        for op in Opcode::ALL {
            let n = m.requests[op as usize].load(Relaxed);
            let _ = writeln!(out, "strata_requests_total{{{},op=\"{}\"}} {n}", label(i), op.name());
        }
    }
    header(out, "strata_responses_total", "counter", "Responses sent, by status.");
    for (i, m) in shards.iter().enumerate() {
        for status in Status::ALL {
            let n = m.responses[status as usize % 12].load(Relaxed);
            let _ = writeln!(out, "strata_responses_total{{{},status=\"{}\"}} {n}", label(i), status.name());
        }
    }
    header(out, "strata_rejections_total", "counter", "Requests refused by admission control, by reason.");
    for (i, m) in shards.iter().enumerate() {
        for refusal in Refusal::ALL {
            let n = m.rejections[refusal as usize].load(Relaxed);
            let _ = writeln!(out, "strata_rejections_total{{{},reason=\"{}\"}} {n}", label(i), refusal.name());
        }
    }
    for (name, kind, help, read) in SCALARS {
        header(out, name, kind, help);
        for (i, m) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{{}}} {}", label(i), read(m));
        }
    }
    header(out, "strata_cold_repair_queue", "gauge", "Cold blocks this shard found bad since it started.");
    for (i, m) in shards.iter().enumerate() {
        let _ = writeln!(out, "strata_cold_repair_queue{{{}}} {}", label(i), m.repair_queue.load(Relaxed));
    }
    let disks: Vec<Vec<(crate::cold::ColdDiskStats, bool)>> =
        shards.iter().map(|m| m.cold_disks.lock().map(|d| d.clone()).unwrap_or_default()).collect();
    for (name, kind, help, read) in COLD_DISK {
        header(out, name, kind, help);
        for (i, shard_disks) in disks.iter().enumerate() {
            for (disk, (stats, down)) in shard_disks.iter().enumerate() {
                let _ = writeln!(out, "{name}{{{},disk=\"{disk}\"}} {}", label(i), read(stats, *down));
            }
        }
    }
    header(out, "strata_request_seconds", "histogram", "Time from a request's arrival to its response.");
    for (i, m) in shards.iter().enumerate() {
        m.latency_read.render(out, "strata_request_seconds", &format!("{},kind=\"read\"", label(i)));
        m.latency_write.render(out, "strata_request_seconds", &format!("{},kind=\"write\"", label(i)));
    }
    for (name, help, histogram) in SHARD_HISTOGRAMS {
        header(out, name, "histogram", help);
        for (i, m) in shards.iter().enumerate() {
            histogram(m).render(out, name, &label(i));
        }
    }
}

/// The histograms with only a `shard` label: name, help, and where each shard keeps it.
type ShardHistogram = (&'static str, &'static str, fn(&ShardMetrics) -> &Histogram);
const SHARD_HISTOGRAMS: [ShardHistogram; 4] = [
    ("strata_queue_delay_seconds", "Time from a request's arrival to its start.", |m| &m.queue_delay),
    ("strata_socket_wait_seconds", "Time from the kernel's receipt of a request to the server reading it.", |m| {
        &m.socket_wait
    }),
    (
        "strata_turn_seconds",
        "Each sending of answers by the shard's loop: from the start of its turn (the ring's return) to the send.",
        |m| &m.turn,
    ),
    ("strata_answer_hold_seconds", "Each such send's oldest answer: from being queued to being sent.", |m| {
        &m.answer_hold
    }),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_counters_and_cumulative_buckets() {
        let m = ShardMetrics::default();
        m.request(Opcode::Get);
        m.latency_read.record(10);
        m.latency_read.record(100);
        m.latency_read.record(u64::MAX / 4);
        let mut out = String::new();
        render(
            &mut out,
            &[std::sync::Arc::default(), std::sync::Arc::default(), std::sync::Arc::default(), std::sync::Arc::new(m)],
        );
        assert!(out.contains("strata_requests_total{shard=\"3\",op=\"GET\"} 1"), "{out}");
        assert!(out.contains("strata_request_seconds_bucket{shard=\"3\",kind=\"read\",le=\"0.000016\"} 1"), "{out}");
        assert!(out.contains("strata_request_seconds_bucket{shard=\"3\",kind=\"read\",le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("strata_request_seconds_count{shard=\"3\",kind=\"read\"} 3"), "{out}");
        assert!(out.contains("strata_requests_total{shard=\"0\",op=\"GET\"} 0"), "{out}");
    }

    /// The text format: every family has its TYPE line before its samples, and a family's
    /// samples (all shards', all disks') form one group.
    #[test]
    fn every_family_is_typed_and_contiguous_across_shards() {
        let shards: Vec<std::sync::Arc<ShardMetrics>> = (0..3).map(|_| std::sync::Arc::default()).collect();
        for m in &shards {
            *m.cold_disks.lock().unwrap() = vec![Default::default(); 2];
        }
        let mut out = String::new();
        render(&mut out, &shards);
        let helped: std::collections::HashSet<&str> =
            out.lines().filter_map(|l| l.strip_prefix("# HELP ")?.split(' ').next()).collect();
        let mut typed = std::collections::HashMap::new();
        let mut finished = std::collections::HashSet::new();
        let mut current: Option<String> = None;
        let mut samples = 0;
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(typed.insert(name.to_string(), kind.to_string()).is_none(), "{name} typed twice");
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix).filter(|base| typed.get(*base).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name)
                .to_string();
            assert!(typed.contains_key(&family), "{family} has no TYPE line before its samples");
            if current.as_ref() != Some(&family) {
                assert!(!finished.contains(&family), "{family}'s samples are split");
                if let Some(previous) = current.replace(family.clone()) {
                    finished.insert(previous);
                }
            }
            samples += 1;
        }
        assert!(typed.len() > 30 && samples > 3 * typed.len(), "{} families, {samples} samples", typed.len());
        let typed_names: std::collections::HashSet<&str> = typed.keys().map(String::as_str).collect();
        assert_eq!(helped, typed_names, "every family has a HELP line and a TYPE line");
    }
}
