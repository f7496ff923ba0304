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

    /// Appends this shard's metrics; `header` adds the HELP/TYPE lines (once per family).
    pub fn render(&self, out: &mut String, shard: usize) {
        let l = format!("shard=\"{shard}\"");
        for op in Opcode::ALL {
            let n = self.requests[op as usize].load(Relaxed);
            let _ = writeln!(out, "strata_requests_total{{{l},op=\"{}\"}} {n}", op.name());
        }
        for status in Status::ALL {
            let n = self.responses[status as usize % 12].load(Relaxed);
            let _ = writeln!(out, "strata_responses_total{{{l},status=\"{}\"}} {n}", status.name());
        }
        for refusal in Refusal::ALL {
            let n = self.rejections[refusal as usize].load(Relaxed);
            let _ = writeln!(out, "strata_rejections_total{{{l},reason=\"{}\"}} {n}", refusal.name());
        }
        let counters: [(&str, &AtomicU64); 17] = [
            ("strata_forwarded_requests_total", &self.forwarded),
            ("strata_merged_reads_total", &self.merged_reads),
            ("strata_bad_frames_total", &self.bad_frames),
            ("strata_connections_accepted_total", &self.connections_accepted),
            ("strata_connections_closed_total", &self.connections_closed),
            ("strata_network_bytes_received_total", &self.bytes_received),
            ("strata_receive_buffer_exhaustions_total", &self.receives_out_of_buffers),
            ("strata_wal_fsyncs_total", &self.wal_fsyncs),
            ("strata_wal_batches_total", &self.wal_batches),
            ("strata_wal_bytes_written_total", &self.wal_bytes_written),
            ("strata_writes_acked_total", &self.writes_acked),
            ("strata_flush_bytes_written_total", &self.flush_bytes_written),
            ("strata_compaction_bytes_written_total", &self.compaction_bytes_written),
            ("strata_compaction_bytes_read_total", &self.compaction_bytes_read),
            ("strata_block_cache_hits_total", &self.block_cache_hits),
            ("strata_block_cache_misses_total", &self.block_cache_misses),
            ("strata_inflight_requests", &self.inflight_requests),
        ];
        for (name, value) in counters {
            let _ = writeln!(out, "{name}{{{l}}} {}", value.load(Relaxed));
        }
        let _ = writeln!(out, "strata_open_connections{{{l}}} {}", self.open_connections.load(Relaxed));
        for (name, value) in [
            ("strata_sinks_total", &self.sinks),
            ("strata_sink_bytes_written_total", &self.sink_bytes_written),
            ("strata_sinks_abandoned_total", &self.sinks_abandoned),
            ("strata_cold_windows", &self.cold_windows),
            ("strata_cold_repair_queue", &self.repair_queue),
        ] {
            let _ = writeln!(out, "{name}{{{l}}} {}", value.load(Relaxed));
        }
        let disks = self.cold_disks.lock().map(|d| d.clone()).unwrap_or_default();
        for (disk, (stats, down)) in disks.iter().enumerate() {
            let dl = format!("{l},disk=\"{disk}\"");
            for (name, value) in [
                ("strata_cold_disk_reads_total", stats.reads),
                ("strata_cold_disk_read_bytes_total", stats.read_bytes),
                ("strata_cold_disk_writes_total", stats.writes),
                ("strata_cold_disk_write_bytes_total", stats.write_bytes),
                ("strata_cold_disk_errors_total", stats.errors),
                ("strata_cold_disk_corrupt_blocks_total", stats.corrupt_blocks),
                ("strata_cold_disk_down", u64::from(*down)),
            ] {
                let _ = writeln!(out, "{name}{{{dl}}} {value}");
            }
        }
        self.latency_read.render(out, "strata_request_seconds", &format!("{l},kind=\"read\""));
        self.latency_write.render(out, "strata_request_seconds", &format!("{l},kind=\"write\""));
        self.queue_delay.render(out, "strata_queue_delay_seconds", &l);
        self.socket_wait.render(out, "strata_socket_wait_seconds", &l);
    }
}

/// The HELP and TYPE lines of every family, printed once before all shards.
#[must_use]
pub fn families() -> &'static str {
    "# HELP strata_requests_total Requests received, by operation.\n\
     # TYPE strata_requests_total counter\n\
     # HELP strata_responses_total Responses sent, by status.\n\
     # TYPE strata_responses_total counter\n\
     # HELP strata_rejections_total Requests refused by admission control, by reason.\n\
     # TYPE strata_rejections_total counter\n\
     # HELP strata_request_seconds Time from a request's arrival to its response.\n\
     # TYPE strata_request_seconds histogram\n\
     # HELP strata_queue_delay_seconds Time from a request's arrival to its start.\n\
     # TYPE strata_queue_delay_seconds histogram\n\
     # HELP strata_socket_wait_seconds Time from the kernel's receipt of a request to the server reading it.\n\
     # TYPE strata_socket_wait_seconds histogram\n\
     # HELP strata_wal_fsyncs_total WAL fdatasyncs (group commits made durable).\n\
     # TYPE strata_wal_fsyncs_total counter\n"
}

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
        m.render(&mut out, 3);
        assert!(out.contains("strata_requests_total{shard=\"3\",op=\"GET\"} 1"), "{out}");
        assert!(out.contains("strata_request_seconds_bucket{shard=\"3\",kind=\"read\",le=\"0.000016\"} 1"), "{out}");
        assert!(out.contains("strata_request_seconds_bucket{shard=\"3\",kind=\"read\",le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("strata_request_seconds_count{shard=\"3\",kind=\"read\"} 3"), "{out}");
    }
}
