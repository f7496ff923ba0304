//! The node's configuration: a TOML file with kebab-case keys and human units.
//!
//! Every key has a default, so an empty file (or no file) is a whole configuration: `strata serve`
//! with no arguments keeps its data in `./strata-data` and serves on loopback only. The binary
//! loads the file ([`Config::load`]), lets command-line flags override fields, then calls
//! [`Config::validate`]; loading alone does not validate, so a flag can repair what a file got
//! wrong.
//!
//! Sizes are written `"4096"`, `"4096 B"`, `"512 KiB"`, `"64 MiB"`, `"10 MB"` (binary and decimal
//! suffixes, any case, optional space; a TOML integer is bytes), durations `"100 us"`, `"5 ms"`,
//! `"30 s"`, `"2 min"`, `"1 h"`, `"2 days"`, `"1d"`.
//!
//! Invariant: [`Config::sample_toml`] shows every key at its default and parses back to
//! [`Config::default`]; a key the node does not know is an error that names it, never ignored.
//!
//! It reads the file and nothing else: the ticket secret is read by the server that uses it.

use crate::shard::ShardOptions;
use serde::de::{self, Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use strata_format::key::PKEY_LEN_MAX;
use strata_format::protocol::{FRAME_BODY_MAX, VALUE_LEN_MAX};

/// More shards than this is a typo, not a machine: each shard pins a core.
pub const SHARDS_MAX: usize = strata_format::route::GROUP_COUNT_MAX as usize;

/// The smallest useful `frame-max`: an MPUT of one item carrying the longest key and the
/// largest value (`count` 2, `pkey_len` 1, `ts` 8, `value_len` 4, then the key and the value).
const FRAME_MAX_MIN: u64 = 2 + 1 + 8 + 4 + PKEY_LEN_MAX as u64 + VALUE_LEN_MAX as u64;

/// Why a configuration could not be loaded or is not usable.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read { path: PathBuf, source: std::io::Error },
    /// The text is not a configuration: bad TOML, an unknown key, a value of the wrong type or
    /// unit. `message` is toml's, with the line, the column and the offending text.
    Parse { path: Option<PathBuf>, message: String },
    /// The values read, but do not work (together). `key` is dotted: `shard.flush-at`.
    Invalid { key: &'static str, reason: String },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Read { path, source } => write!(f, "cannot read config file {}: {source}", path.display()),
            Self::Parse { path: Some(path), message } => {
                write!(f, "config file {} is not valid: {}", path.display(), message.trim_end())
            }
            Self::Parse { path: None, message } => write!(f, "config is not valid: {}", message.trim_end()),
            Self::Invalid { key, reason } => write!(f, "config key {key}: {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read { source, .. } => Some(source),
            Self::Parse { .. } | Self::Invalid { .. } => None,
        }
    }
}

/// The whole node configuration, as read from TOML (top-level keys, then three tables).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Where the shards keep their data, one `shard-<i>` directory each.
    pub data_dir: PathBuf,
    /// Number of shards; 0 = one per CPU the process may use (see [`Config::shard_count`]).
    pub shards: usize,
    /// `ip:port` every shard accepts clients on (with SO_REUSEPORT).
    pub listen: String,
    /// Shard i also listens on `shard_port_base + i` for shard-aware clients; 0 = off.
    pub shard_port_base: u16,
    /// `ip:port` for Prometheus metrics over HTTP; empty = off.
    pub status_listen: String,
    /// The secret that signs client tickets. Without one the node serves only on loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket_secret_file: Option<PathBuf>,
    pub shard: ShardConfig,
    pub cold: ColdConfig,
    pub limits: LimitsConfig,
    pub admission: AdmissionConfig,
}

/// `[cold]`: the HDD tier that old windows sink to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ColdConfig {
    /// One path per HDD, each its own filesystem (no RAID). Empty: four folders under the data
    /// directory (`hdd0`..`hdd3`) stand in for disks.
    pub hdd: Vec<PathBuf>,
    /// Windows that ended longer ago than this are sunk to the HDDs.
    pub hot_horizon: Span,
    /// Every cold file is preallocated to this size.
    pub file_size: ByteSize,
    /// The sinker writes to each disk at most this fast.
    pub sink_rate: ByteRate,
}

impl Default for ColdConfig {
    fn default() -> Self {
        Self {
            hdd: Vec::new(),
            hot_horizon: Span::days(7),
            file_size: ByteSize::gib(1),
            sink_rate: ByteRate(ByteSize::mib(32)),
        }
    }
}

/// `[shard]`: one shard's memory, time windows and disk use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ShardConfig {
    /// All the memory one shard may use: block cache, memtable, requests in flight.
    pub memory_budget: ByteSize,
    pub block_cache: ByteSize,
    /// Memory the memtable (plus writes waiting for their commit) may use; past it writes are
    /// refused until a flush frees memory.
    pub memtable_max: ByteSize,
    /// Memtable size at which it is frozen and flushed to tables.
    pub flush_at: ByteSize,
    /// Width of a time window.
    pub window: Span,
    /// A window this long past its end is settled (compacted into one run).
    pub settle_after: Span,
    /// Windows that ended longer ago than this are dropped whole; `None` keeps them forever.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<Span>,
    /// Writes with `ts` further than this beyond the clock are refused.
    pub future_skew: Span,
    pub compaction_rate: ByteRate,
    /// SSD space kept free for flushes and compactions: below it writes are refused.
    pub ssd_reserve: ByteSize,
    /// Below this much free SSD space writes are slowed.
    pub ssd_throttle: ByteSize,
}

/// `[limits]`: what one connection and one shard may hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct LimitsConfig {
    /// The largest frame body accepted or sent.
    pub frame_max: ByteSize,
    /// Responses waiting to be sent on one connection, at most.
    pub connection_output_max: ByteSize,
    pub connections_max: usize,
    pub shard_inflight_requests_max: usize,
    pub shard_inflight_bytes_max: ByteSize,
    /// A connection whose peer reads nothing for this long is closed.
    pub client_stall: Span,
}

/// `[admission]`: deadlines and load shedding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct AdmissionConfig {
    /// The budget of a request that carries deadline 0.
    pub default_deadline: Span,
    /// Requests waiting longer than this are shed, lowest priority first.
    pub queue_delay_max: Span,
    /// The smallest retry hint sent with OVERLOADED.
    pub retry_after_min: Span,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./strata-data"),
            shards: 0,
            listen: "127.0.0.1:7400".into(),
            shard_port_base: 7401,
            status_listen: "127.0.0.1:7480".into(),
            ticket_secret_file: None,
            shard: ShardConfig::default(),
            cold: ColdConfig::default(),
            limits: LimitsConfig::default(),
            admission: AdmissionConfig::default(),
        }
    }
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            memory_budget: ByteSize::mib(256),
            block_cache: ByteSize::mib(64),
            memtable_max: ByteSize::mib(128),
            flush_at: ByteSize::mib(64),
            window: Span::days(1),
            settle_after: Span::days(2),
            retention: None,
            future_skew: Span::hours(1),
            compaction_rate: ByteRate(ByteSize::mib(64)),
            ssd_reserve: ByteSize::gib(1),
            ssd_throttle: ByteSize::gib(2),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            frame_max: ByteSize::mib(4),
            connection_output_max: ByteSize::mib(8),
            connections_max: 10_000,
            shard_inflight_requests_max: 4096,
            shard_inflight_bytes_max: ByteSize::mib(64),
            client_stall: Span::secs(30),
        }
    }
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self { default_deadline: Span::secs(1), queue_delay_max: Span::millis(3), retry_after_min: Span::millis(1) }
    }
}

impl Config {
    /// Reads a configuration from TOML text; absent keys keep their defaults. Does not validate.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: None, message: e.to_string() })
    }

    /// Reads the configuration file at `path`; errors name the file. Does not validate.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml_str(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: Some(path.to_path_buf()), message },
            other => other,
        })
    }

    /// The number of shards to run: `shards`, or one per CPU this process may use when it is 0.
    #[must_use]
    pub fn shard_count(&self) -> usize {
        if self.shards == 0 { strata_ioengine::uring::allowed_cpus().len().max(1) } else { self.shards }
    }

    /// The address clients connect to, read from `listen`.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("listen", &self.listen)
    }

    /// The metrics address, or `None` when `status-listen` is empty (off).
    pub fn status_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.status_listen.is_empty() {
            Ok(None)
        } else {
            parse_addr("status-listen", &self.status_listen).map(Some)
        }
    }

    /// Checks that the values work together; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_network()?;
        self.validate_shard()?;
        self.validate_cold()?;
        self.validate_limits()?;
        self.validate_admission()
    }

    /// The options of the shard kept in `dir`, from `[shard]`; the rest keep their defaults.
    /// Call after [`Config::validate`].
    #[must_use]
    pub fn shard_options(&self, dir: impl Into<PathBuf>) -> ShardOptions {
        let shard = &self.shard;
        let mut options = ShardOptions::new(dir);
        options.memtable_bytes_max = shard.memtable_max.as_usize();
        options.flush_bytes = shard.flush_at.as_usize();
        options.window_us = shard.window.as_micros_u64();
        options.settle_us = shard.settle_after.as_micros_u64();
        options.retention_us = shard.retention.map(Span::as_micros_u64);
        options.future_skew_us = shard.future_skew.as_micros_u64();
        options.block_cache_bytes = shard.block_cache.as_usize();
        options.compaction_bytes_per_s = shard.compaction_rate.0.0;
        options.ssd_reserve_bytes = shard.ssd_reserve.0;
        options.ssd_throttle_bytes = shard.ssd_throttle.0;
        options
    }

    fn validate_network(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason| Err(ConfigError::Invalid { key, reason });
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data-dir", "is empty; give a directory, like \"./strata-data\"".into());
        }
        if self.shards > SHARDS_MAX {
            return invalid("shards", format!("{} is more than {SHARDS_MAX}; each shard pins a core", self.shards));
        }
        let listen = self.listen_addr()?;
        if listen.port() == 0 {
            return invalid(
                "listen",
                format!(
                    "\"{}\" has port 0: each shard would get a port of its own from the kernel, and clients \
                     could not find the node. Give a port, like \"127.0.0.1:7400\"",
                    self.listen
                ),
            );
        }
        match &self.ticket_secret_file {
            Some(path) if path.as_os_str().is_empty() => {
                return invalid("ticket-secret-file", "is empty; give a file, or remove the key".into());
            }
            Some(_) => {}
            None if !listen.ip().is_loopback() => {
                return invalid(
                    "listen",
                    format!(
                        "\"{}\" is not a loopback address, and no ticket-secret-file is set: without a \
                         secret anyone who reaches the port could read and write every key. Set \
                         ticket-secret-file, or listen on 127.0.0.1 or [::1]",
                        self.listen
                    ),
                );
            }
            None => {}
        }
        let status = self.status_addr()?;
        if let Some(status) = status
            && status.port() != 0
            && status.port() == listen.port()
            && ips_overlap(status, listen)
        {
            return invalid("status-listen", format!("\"{}\" uses the port of listen", self.status_listen));
        }
        if self.shard_port_base != 0 {
            self.validate_shard_ports(listen, status)?;
        }
        Ok(())
    }

    fn validate_shard_ports(&self, listen: SocketAddr, status: Option<SocketAddr>) -> Result<(), ConfigError> {
        let first = self.shard_port_base;
        let last = u64::from(first) + self.shard_count() as u64 - 1;
        let Ok(last) = u16::try_from(last) else {
            return Err(ConfigError::Invalid {
                key: "shard-port-base",
                reason: format!(
                    "shard ports {first}..={last} pass 65535 with {} shards; lower shard-port-base",
                    self.shard_count()
                ),
            });
        };
        let in_range = |port: u16| port != 0 && (first..=last).contains(&port);
        if in_range(listen.port()) {
            return Err(ConfigError::Invalid {
                key: "shard-port-base",
                reason: format!("shard ports {first}..={last} include the port of listen \"{}\"", self.listen),
            });
        }
        if let Some(status) = status
            && in_range(status.port())
            && ips_overlap(status, listen)
        {
            return Err(ConfigError::Invalid {
                key: "shard-port-base",
                reason: format!(
                    "shard ports {first}..={last} include the port of status-listen \"{}\"",
                    self.status_listen
                ),
            });
        }
        Ok(())
    }

    fn validate_shard(&self) -> Result<(), ConfigError> {
        let s = &self.shard;
        let invalid = |key, reason| Err(ConfigError::Invalid { key, reason });
        let needed =
            s.block_cache.0.saturating_add(s.memtable_max.0).saturating_add(self.limits.shard_inflight_bytes_max.0);
        if s.memory_budget.0 < needed {
            return invalid(
                "shard.memory-budget",
                format!(
                    "{} cannot hold block-cache {} + memtable-max {} + limits.shard-inflight-bytes-max {} \
                     ({}); raise it or lower those",
                    s.memory_budget,
                    s.block_cache,
                    s.memtable_max,
                    self.limits.shard_inflight_bytes_max,
                    ByteSize(needed)
                ),
            );
        }
        if s.flush_at.0 == 0 || s.flush_at > s.memtable_max {
            return invalid(
                "shard.flush-at",
                format!("{} must be above 0 and at most memtable-max ({})", s.flush_at, s.memtable_max),
            );
        }
        if s.window.as_micros_u64() == 0 {
            return invalid("shard.window", format!("{} is less than a microsecond", s.window));
        }
        if let Some(retention) = s.retention
            && retention < s.window
        {
            return invalid(
                "shard.retention",
                format!("{retention} is shorter than a window ({}); windows are dropped whole", s.window),
            );
        }
        if s.compaction_rate.0.0 == 0 {
            return invalid("shard.compaction-rate", "must be above 0".into());
        }
        if s.ssd_reserve > s.ssd_throttle {
            return invalid(
                "shard.ssd-throttle",
                format!(
                    "{} must be at least ssd-reserve ({}): writes slow down before they stop",
                    s.ssd_throttle, s.ssd_reserve
                ),
            );
        }
        Ok(())
    }

    /// The cold disks: the configured HDD paths, or the default folders.
    #[must_use]
    pub fn hdd_paths(&self) -> Vec<PathBuf> {
        if self.cold.hdd.is_empty() { crate::disks::default_hdd_paths(&self.data_dir) } else { self.cold.hdd.clone() }
    }

    /// The cold-tier options of shard `index`, given the node's prepared disks.
    #[must_use]
    pub fn cold_options(&self, index: u16, disks: &crate::disks::NodeDisks) -> crate::cold::ColdOptions {
        let mut cold = crate::cold::ColdOptions::new(disks.roots(), index);
        cold.epoch = disks.epoch();
        cold.hot_horizon_us = self.cold.hot_horizon.as_micros_u64();
        cold.file_bytes = self.cold.file_size.0;
        cold.sink_bytes_per_s = self.cold.sink_rate.0.0;
        cold.disks_down = disks.disks.iter().filter_map(|d| d.down.clone().map(|why| (d.label.disk, why))).collect();
        cold
    }

    fn validate_cold(&self) -> Result<(), ConfigError> {
        let c = &self.cold;
        let invalid = |key, reason| Err(ConfigError::Invalid { key, reason });
        if c.hdd.len() > crate::disks::DISKS_MAX {
            return invalid("cold.hdd", format!("lists {} disks; at most {}", c.hdd.len(), crate::disks::DISKS_MAX));
        }
        if c.hdd.iter().any(|p| p.as_os_str().is_empty()) {
            return invalid("cold.hdd", "lists an empty path".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = c.hdd.iter().find(|p| !seen.insert(*p)) {
            return invalid("cold.hdd", format!("lists {} twice: each disk is its own filesystem", dup.display()));
        }
        // The file header's block and one block of the largest value.
        let block_min = strata_format::cold::COLD_DATA_START + strata_format::cold::COLD_BLOCK_LARGEST as u64;
        if c.file_size.0 < block_min || !c.file_size.0.is_multiple_of(strata_format::BLOCK_SIZE as u64) {
            return invalid(
                "cold.file-size",
                format!("{} must be a multiple of 4 KiB and at least {}", c.file_size, ByteSize(block_min)),
            );
        }
        if c.sink_rate.0.0 == 0 {
            return invalid("cold.sink-rate", "must be above 0".into());
        }
        if c.hot_horizon < self.shard.window {
            return invalid(
                "cold.hot-horizon",
                format!(
                    "{} is shorter than a window ({}): windows sink whole, once ended",
                    c.hot_horizon, self.shard.window
                ),
            );
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let invalid = |key, reason| Err(ConfigError::Invalid { key, reason });
        let (frame_min, frame_max) = (ByteSize(FRAME_MAX_MIN), ByteSize(u64::from(FRAME_BODY_MAX)));
        if l.frame_max < frame_min || l.frame_max > frame_max {
            return invalid(
                "limits.frame-max",
                format!(
                    "{} must lie between {frame_min} (a largest value with a longest key) and {frame_max} \
                     (the protocol's limit)",
                    l.frame_max
                ),
            );
        }
        if l.connection_output_max < l.frame_max {
            return invalid(
                "limits.connection-output-max",
                format!("{} cannot hold one largest frame (frame-max {})", l.connection_output_max, l.frame_max),
            );
        }
        if l.shard_inflight_bytes_max < l.frame_max {
            return invalid(
                "limits.shard-inflight-bytes-max",
                format!("{} cannot admit one largest frame (frame-max {})", l.shard_inflight_bytes_max, l.frame_max),
            );
        }
        if l.connections_max == 0 {
            return invalid("limits.connections-max", "must be at least 1".into());
        }
        if l.shard_inflight_requests_max == 0 {
            return invalid("limits.shard-inflight-requests-max", "must be at least 1".into());
        }
        if l.client_stall.0.is_zero() {
            return invalid("limits.client-stall", "must be above 0".into());
        }
        Ok(())
    }

    fn validate_admission(&self) -> Result<(), ConfigError> {
        let a = &self.admission;
        let invalid = |key, reason| Err(ConfigError::Invalid { key, reason });
        if a.default_deadline.as_micros_u64() == 0 {
            return invalid("admission.default-deadline", format!("{} is less than a microsecond", a.default_deadline));
        }
        if a.queue_delay_max.0.is_zero() || a.queue_delay_max > a.default_deadline {
            return invalid(
                "admission.queue-delay-max",
                format!(
                    "{} must be above 0 and at most default-deadline ({}): a request queued longer has \
                     missed its deadline anyway",
                    a.queue_delay_max, a.default_deadline
                ),
            );
        }
        // The hint travels as `retry_after_us: u32`.
        if a.retry_after_min.as_micros_u64() == 0 || a.retry_after_min.as_micros_u64() > u64::from(u32::MAX) {
            return invalid(
                "admission.retry-after-min",
                format!("{} must be between 1 us and {}", a.retry_after_min, Span::micros(u32::MAX.into())),
            );
        }
        Ok(())
    }

    /// A commented configuration file with every key at its default (`strata
    /// --print-sample-config`). Keys without a default are shown commented out.
    #[must_use]
    pub fn sample_toml() -> String {
        let c = Self::default();
        let (s, l, a, cold) = (&c.shard, &c.limits, &c.admission, &c.cold);
        format!(
            r#"# Strata node configuration. Every key is shown at its default: keep only what you change.
# Command-line flags override this file; --check-config checks a file without starting the node.
#
# Sizes: "4096" (bytes), "4096 B", "512 KiB", "64 MiB", "1 GiB", "10 MB" (KiB = 1024 B, KB = 1000 B).
# Durations: "100 us", "5 ms", "30 s", "2 min", "1 h", "2 days".

# Where the shards keep their data, one shard-<i> directory each (relative to the working directory).
data-dir = "{data_dir}"
# Number of shards, each pinned to a core; 0 = one per CPU the process may use.
shards = {shards}
# Address every shard accepts clients on (SO_REUSEPORT spreads connections among them).
listen = "{listen}"
# Shard i also listens on shard-port-base + i, for clients that send to the owning shard; 0 = off.
shard-port-base = {shard_port_base}
# Prometheus metrics over HTTP; "" = off.
status-listen = "{status_listen}"
# File holding the secret that signs client tickets. Without one the node serves only on
# loopback addresses.
# ticket-secret-file = "/etc/strata/ticket-secret"

[shard]
# All the memory one shard may use: block-cache + memtable-max + limits.shard-inflight-bytes-max.
memory-budget = "{memory_budget}"
block-cache = "{block_cache}"
# Memory the memtable (plus writes waiting for their commit) may use; past it writes are refused
# until a flush frees memory.
memtable-max = "{memtable_max}"
# Memtable size at which it is frozen and flushed to tables.
flush-at = "{flush_at}"
# Width of a time window: tables, compaction and retention work window by window.
window = "{window}"
# A window this long past its end is settled: compacted into one run.
settle-after = "{settle_after}"
# Windows that ended longer ago than this are dropped whole. Unset: data is kept forever.
# retention = "30 days"
# Writes with a timestamp further than this beyond the clock are refused.
future-skew = "{future_skew}"
# Background compaction writes at most this much per second.
compaction-rate = "{compaction_rate}"
# SSD space kept free for flushes and compactions: below it writes are refused.
ssd-reserve = "{ssd_reserve}"
# Below this much free SSD space writes are slowed, more the closer the reserve is.
ssd-throttle = "{ssd_throttle}"

[cold]
# One path per HDD, each its own filesystem (no RAID), listed in the order of their labels.
# Unset or empty: four folders under data-dir (hdd0..hdd3) stand in for disks.
# hdd = ["/mnt/hdd0", "/mnt/hdd1", "/mnt/hdd2", "/mnt/hdd3"]
# Windows that ended longer ago than this are sunk to the HDDs.
hot-horizon = "{hot_horizon}"
# Every cold file is preallocated to this size.
file-size = "{file_size}"
# The sinker writes to each disk at most this fast.
sink-rate = "{sink_rate}"

[limits]
# The largest frame body accepted or sent.
frame-max = "{frame_max}"
# Responses waiting to be sent on one connection, at most.
connection-output-max = "{connection_output_max}"
connections-max = {connections_max}
# Requests and request bytes a shard holds at once; beyond them it answers OVERLOADED.
shard-inflight-requests-max = {shard_inflight_requests_max}
shard-inflight-bytes-max = "{shard_inflight_bytes_max}"
# A connection whose peer reads nothing for this long is closed.
client-stall = "{client_stall}"

[admission]
# The budget of a request that carries deadline 0.
default-deadline = "{default_deadline}"
# Requests waiting longer than this are shed, lowest priority first: in the shard's queue, and
# in the sockets once a backlog has lasted 20 ms (keep it above scheduling stalls such as a
# CPU quota's period).
queue-delay-max = "{queue_delay_max}"
# The smallest retry hint sent with OVERLOADED.
retry-after-min = "{retry_after_min}"
"#,
            data_dir = c.data_dir.display(),
            shards = c.shards,
            listen = c.listen,
            shard_port_base = c.shard_port_base,
            status_listen = c.status_listen,
            memory_budget = s.memory_budget,
            block_cache = s.block_cache,
            memtable_max = s.memtable_max,
            flush_at = s.flush_at,
            window = s.window,
            settle_after = s.settle_after,
            future_skew = s.future_skew,
            compaction_rate = s.compaction_rate,
            ssd_reserve = s.ssd_reserve,
            ssd_throttle = s.ssd_throttle,
            hot_horizon = cold.hot_horizon,
            file_size = cold.file_size,
            sink_rate = cold.sink_rate,
            frame_max = l.frame_max,
            connection_output_max = l.connection_output_max,
            connections_max = l.connections_max,
            shard_inflight_requests_max = l.shard_inflight_requests_max,
            shard_inflight_bytes_max = l.shard_inflight_bytes_max,
            client_stall = l.client_stall,
            default_deadline = a.default_deadline,
            queue_delay_max = a.queue_delay_max,
            retry_after_min = a.retry_after_min,
        )
    }
}

fn parse_addr(key: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|e| ConfigError::Invalid {
        key,
        reason: format!("\"{text}\" is not an IP address and port, like \"127.0.0.1:7400\" or \"[::1]:7400\": {e}"),
    })
}

/// Whether sockets on the addresses of `a` and `b` could collide on a port: the same address,
/// or either is the wildcard.
fn ips_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

// ---------------------------------------------------------------------------------------------
// Human units.

/// A value in human units that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitError {
    /// The text as written.
    pub input: String,
    /// "size", "rate" or "duration".
    pub kind: &'static str,
    pub reason: String,
}

impl std::fmt::Display for UnitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot read \"{}\" as a {}: {}", self.input, self.kind, self.reason)
    }
}

impl std::error::Error for UnitError {}

/// A size in bytes: `"64 MiB"`, `"10 MB"`, `"4096"`, `"4096 B"`, or a TOML integer (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// Size units by falling factor; `Display` takes the first that divides the value.
const SIZE_UNITS: [(&str, u64); 10] = [
    ("PiB", 1 << 50),
    ("PB", 1_000_000_000_000_000),
    ("TiB", 1 << 40),
    ("TB", 1_000_000_000_000),
    ("GiB", 1 << 30),
    ("GB", 1_000_000_000),
    ("MiB", 1 << 20),
    ("MB", 1_000_000),
    ("KiB", 1 << 10),
    ("KB", 1000),
];

const SIZE_UNITS_HELP: &str = "sizes take B, KB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB; a plain number is bytes";

impl ByteSize {
    #[must_use]
    pub const fn kib(n: u64) -> Self {
        Self(n << 10)
    }

    #[must_use]
    pub const fn mib(n: u64) -> Self {
        Self(n << 20)
    }

    #[must_use]
    pub const fn gib(n: u64) -> Self {
        Self(n << 30)
    }

    /// Reads `"64 MiB"`, `"10mb"`, `"1.5 KiB"`, `"4096"`: a number, an optional space, an
    /// optional unit (any case). The result must be a whole number of bytes.
    pub fn parse(text: &str) -> Result<Self, UnitError> {
        size_bytes(text, SIZE_UNITS_HELP).map(Self).map_err(|reason| UnitError {
            input: text.into(),
            kind: "size",
            reason,
        })
    }

    /// The size as a `usize`; saturates where a `usize` is narrower (a limit beyond the address
    /// space is no limit).
    #[must_use]
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

fn size_factor(unit: &str) -> Option<u64> {
    if unit.is_empty() || ["b", "byte", "bytes"].contains(&unit.to_ascii_lowercase().as_str()) {
        return Some(1);
    }
    SIZE_UNITS.iter().find(|(name, _)| name.eq_ignore_ascii_case(unit)).map(|&(_, factor)| factor)
}

fn size_bytes(text: &str, units_help: &str) -> Result<u64, String> {
    let (mantissa, scale, unit) = split_quantity(text, "\"64 MiB\"")?;
    let Some(factor) = size_factor(unit) else {
        return Err(format!("unknown unit \"{unit}\" ({units_help})"));
    };
    scale_whole(mantissa, scale, factor.into(), "bytes", "more than 2^64 - 1 bytes")
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = SIZE_UNITS.iter().find(|&&(_, factor)| self.0 != 0 && self.0.is_multiple_of(factor));
        match unit {
            Some((name, factor)) => write!(f, "{} {name}", self.0 / factor),
            None => write!(f, "{} B", self.0),
        }
    }
}

/// A size per second: `"64 MiB/s"`, or `"64 MiB"` (the `/s` is implied), or a TOML integer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteRate(pub ByteSize);

impl ByteRate {
    pub fn parse(text: &str) -> Result<Self, UnitError> {
        let trimmed = text.trim_end();
        let per_s = trimmed.len().checked_sub(2).filter(|&at| trimmed.is_char_boundary(at));
        let size = match per_s {
            Some(at) if trimmed[at..].eq_ignore_ascii_case("/s") => &trimmed[..at],
            _ => trimmed,
        };
        let help =
            "a rate is a size per second, like \"64 MiB/s\"; sizes take B, KB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB";
        size_bytes(size, help).map(|bytes| Self(ByteSize(bytes))).map_err(|reason| UnitError {
            input: text.into(),
            kind: "rate",
            reason,
        })
    }
}

impl std::fmt::Display for ByteRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/s", self.0)
    }
}

/// A duration: `"100 us"`, `"5 ms"`, `"30 s"`, `"2 min"`, `"1 h"`, `"2 days"`, `"1d"`. The unit
/// is required (a bare number could be any of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub Duration);

const NS_PER_S: u64 = 1_000_000_000;

/// Duration units by falling length, as `Display` writes them; days are written "1 day", "2 days".
const SPAN_UNITS: [(&str, u64); 7] = [
    ("day", 86_400 * NS_PER_S),
    ("h", 3600 * NS_PER_S),
    ("min", 60 * NS_PER_S),
    ("s", NS_PER_S),
    ("ms", 1_000_000),
    ("us", 1000),
    ("ns", 1),
];

const SPAN_UNITS_HELP: &str = "durations take ns, us, ms, s, min, h, d or day(s), w or week(s)";

impl Span {
    #[must_use]
    pub const fn micros(n: u64) -> Self {
        Self(Duration::from_micros(n))
    }

    #[must_use]
    pub const fn millis(n: u64) -> Self {
        Self(Duration::from_millis(n))
    }

    #[must_use]
    pub const fn secs(n: u64) -> Self {
        Self(Duration::from_secs(n))
    }

    #[must_use]
    pub const fn hours(n: u64) -> Self {
        Self(Duration::from_secs(n * 3600))
    }

    #[must_use]
    pub const fn days(n: u64) -> Self {
        Self(Duration::from_secs(n * 86_400))
    }

    /// Reads `"30 s"`, `"1.5 h"`, `"2days"`: a number, an optional space, a unit (any case).
    pub fn parse(text: &str) -> Result<Self, UnitError> {
        span_nanos(text).map(|ns| Self(Duration::from_nanos(ns))).map_err(|reason| UnitError {
            input: text.into(),
            kind: "duration",
            reason,
        })
    }

    /// Whole microseconds (the unit of timestamps), saturating.
    #[must_use]
    pub fn as_micros_u64(self) -> u64 {
        u64::try_from(self.0.as_micros()).unwrap_or(u64::MAX)
    }
}

fn span_factor(unit: &str) -> Option<u64> {
    let factor = match unit.to_ascii_lowercase().as_str() {
        "ns" | "nsec" | "nanosecond" | "nanoseconds" => 1,
        "us" | "µs" | "μs" | "usec" | "microsecond" | "microseconds" => 1000,
        "ms" | "msec" | "millisecond" | "milliseconds" => 1_000_000,
        "s" | "sec" | "secs" | "second" | "seconds" => NS_PER_S,
        "min" | "mins" | "minute" | "minutes" => 60 * NS_PER_S,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600 * NS_PER_S,
        "d" | "day" | "days" => 86_400 * NS_PER_S,
        "w" | "week" | "weeks" => 7 * 86_400 * NS_PER_S,
        _ => return None,
    };
    Some(factor)
}

fn span_nanos(text: &str) -> Result<u64, String> {
    let (mantissa, scale, unit) = split_quantity(text, "\"30 s\"")?;
    if unit.is_empty() {
        return Err("a duration needs a unit, like \"30 s\" or \"5 ms\"".into());
    }
    let Some(factor) = span_factor(unit) else {
        return Err(format!("unknown unit \"{unit}\" ({SPAN_UNITS_HELP})"));
    };
    scale_whole(mantissa, scale, factor.into(), "nanoseconds", "longer than 584 years")
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every span `parse` makes fits in u64 nanoseconds (584 years); a longer one, built in
        // code, is shown in whole seconds, its fraction dropped.
        let Ok(ns) = u64::try_from(self.0.as_nanos()) else {
            return write!(f, "{} s", self.0.as_secs());
        };
        let unit = SPAN_UNITS.iter().find(|&&(_, factor)| ns != 0 && ns.is_multiple_of(factor));
        match unit {
            Some(&("day", factor)) if ns == factor => f.write_str("1 day"),
            Some(&("day", factor)) => write!(f, "{} days", ns / factor),
            Some((name, factor)) => write!(f, "{} {name}", ns / factor),
            None => f.write_str("0 s"),
        }
    }
}

/// Splits `"1.5 GiB"` into the number, exactly as `mantissa / 10^scale`, and the unit.
/// Digits may be grouped with `_`.
fn split_quantity<'t>(text: &'t str, example: &str) -> Result<(u128, u32, &'t str), String> {
    let text = text.trim();
    let end = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_')).unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    if !number.bytes().any(|b| b.is_ascii_digit()) {
        return Err(format!("expected a number and a unit, like {example}"));
    }
    let (mut mantissa, mut scale, mut fraction) = (0u128, 0u32, false);
    for byte in number.bytes() {
        match byte {
            b'_' => {}
            b'.' if fraction => return Err(format!("\"{number}\" is not a number")),
            b'.' => fraction = true,
            digit => {
                mantissa = mantissa
                    .checked_mul(10)
                    .and_then(|m| m.checked_add(u128::from(digit - b'0')))
                    .ok_or_else(|| "the number is too long".to_string())?;
                scale += u32::from(fraction);
            }
        }
    }
    Ok((mantissa, scale, unit.trim_start()))
}

/// `mantissa / 10^scale * factor`, when that is a whole number that fits in a `u64`.
fn scale_whole(mantissa: u128, scale: u32, factor: u128, whole: &str, too_large: &str) -> Result<u64, String> {
    let divisor = 10u128.checked_pow(scale).ok_or("the number has too many decimals")?;
    let product = mantissa.checked_mul(factor).ok_or_else(|| too_large.to_string())?;
    if !product.is_multiple_of(divisor) {
        return Err(format!("not a whole number of {whole}"));
    }
    u64::try_from(product / divisor).map_err(|_| too_large.to_string())
}

// ---------------------------------------------------------------------------------------------
// Serde: each unit type reads from its text (sizes and rates also from an integer, in bytes)
// and writes its `Display` form.

struct HumanVisitor<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, UnitError>,
    from_integer: Option<fn(u64) -> T>,
}

impl<T> Visitor<'_> for HumanVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.parse)(text).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        match self.from_integer {
            Some(from_integer) => Ok(from_integer(n)),
            None => Err(E::invalid_type(Unexpected::Unsigned(n), &self)),
        }
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        match u64::try_from(n) {
            Ok(n) => self.visit_u64(n),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(n), &self)),
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(HumanVisitor {
            expecting: "a size, like \"64 MiB\", or a number of bytes",
            parse: Self::parse,
            from_integer: Some(Self),
        })
    }
}

impl<'de> Deserialize<'de> for ByteRate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(HumanVisitor {
            expecting: "a rate, like \"64 MiB/s\", or a number of bytes per second",
            parse: Self::parse,
            from_integer: Some(|n| Self(ByteSize(n))),
        })
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(HumanVisitor {
            expecting: "a duration with its unit, like \"30 s\"",
            parse: Self::parse,
            from_integer: None,
        })
    }
}

macro_rules! serialize_as_display {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
    )*};
}

serialize_as_display!(ByteSize, ByteRate, Span);

/// Parses a binary's command line (the node's, `strata-tool`'s, `strata-bench`'s). Help and
/// `--version` print and exit 0; a command line that does not parse is a usage error: exit 2,
/// as for a bad configuration (1 means the command ran and failed, or for `strata-tool` found
/// damage).
pub fn parse_command_line<T>(parser: bpaf::OptionParser<T>) -> T {
    match parser.run_inner(bpaf::Args::current_args()) {
        Ok(parsed) => parsed,
        Err(failure) => {
            failure.print_message(100);
            std::process::exit(if failure.exit_code() == 0 { 0 } else { 2 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid_key(config: &Config) -> &'static str {
        match config.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn sample_parses_back_to_default() {
        let sample = Config::sample_toml();
        let config = Config::from_toml_str(&sample).expect("the sample should parse");
        assert_eq!(config, Config::default());
        config.validate().expect("the defaults should validate");
    }

    #[test]
    fn sample_shows_every_key() {
        // Keys with a value by default are written out; optional ones commented out.
        let written: toml::Table = toml::from_str(&Config::sample_toml()).expect("the sample is TOML");
        let full = Config {
            ticket_secret_file: Some("/secret".into()),
            shard: ShardConfig { retention: Some(Span::days(30)), ..ShardConfig::default() },
            ..Config::default()
        };
        let all = toml::Value::try_from(&full).expect("a config serializes");
        let uncommented = Config::sample_toml()
            .replace("\n# ticket-secret-file", "\nticket-secret-file")
            .replace("\n# retention", "\nretention")
            .replace("\n# hdd", "\nhdd");
        let with_optional: toml::Table = toml::from_str(&uncommented).expect("the uncommented sample is TOML");
        assert_eq!(keys(&toml::Value::Table(with_optional)), keys(&all));
        assert!(keys(&toml::Value::Table(written)).len() + 3 == keys(&all).len());
    }

    fn keys(value: &toml::Value) -> Vec<String> {
        let mut out = Vec::new();
        if let toml::Value::Table(table) = value {
            for (key, inner) in table {
                out.push(key.clone());
                out.extend(keys(inner).into_iter().map(|k| format!("{key}.{k}")));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn empty_text_is_default() {
        assert_eq!(Config::from_toml_str("").expect("empty is valid"), Config::default());
    }

    #[test]
    fn size_reads_every_unit_form() {
        let cases: [(&str, u64); 16] = [
            ("4096", 4096),
            ("4096 B", 4096),
            ("4096b", 4096),
            ("0", 0),
            ("512 KiB", 512 << 10),
            ("4 MiB", 4 << 20),
            ("4mib", 4 << 20),
            ("1 GiB", 1 << 30),
            ("2 TiB", 2 << 40),
            ("1 PiB", 1 << 50),
            ("10 MB", 10_000_000),
            ("3 kb", 3000),
            ("1 GB", 1_000_000_000),
            ("1 TB", 1_000_000_000_000),
            ("1.5 KiB", 1536),
            (" 1_000 bytes ", 1000),
        ];
        for (text, bytes) in cases {
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn size_displays_in_the_largest_exact_unit_and_reads_back() {
        let cases: [(u64, &str); 8] = [
            (0, "0 B"),
            (1023, "1023 B"),
            (4096, "4 KiB"),
            (64 << 20, "64 MiB"),
            (10_000_000, "10 MB"),
            (1536, "1536 B"),
            (3 << 30, "3 GiB"),
            (1_500_000, "1500 KB"),
        ];
        for (bytes, text) in cases {
            assert_eq!(ByteSize(bytes).to_string(), text);
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(bytes)));
        }
        assert_eq!(ByteSize::parse(&ByteSize(u64::MAX).to_string()), Ok(ByteSize(u64::MAX)));
    }

    #[test]
    fn size_refuses_bad_text_saying_why() {
        let error = ByteSize::parse("4 MB/s").expect_err("a rate is not a size");
        assert!(error.to_string().starts_with("cannot read \"4 MB/s\" as a size: unknown unit \"MB/s\" (sizes take"));
        let reason = |text| ByteSize::parse(text).expect_err(text).reason;
        assert!(reason("4 M").contains("unknown unit \"M\""));
        assert!(reason("").contains("expected a number"));
        assert!(reason("MiB").contains("expected a number"));
        assert!(reason("-1 KiB").contains("expected a number"));
        assert!(reason("1.2.3 KiB").contains("is not a number"));
        assert_eq!(reason("1.3 B"), "not a whole number of bytes");
        assert_eq!(ByteSize::parse("16384 PiB").expect_err("2^64").reason, "more than 2^64 - 1 bytes");
        assert!(reason("16385 PiB").contains("more than 2^64 - 1 bytes"));
    }

    #[test]
    fn rate_reads_with_or_without_per_second() {
        assert_eq!(ByteRate::parse("64 MiB/s"), Ok(ByteRate(ByteSize::mib(64))));
        assert_eq!(ByteRate::parse("64 MiB"), Ok(ByteRate(ByteSize::mib(64))));
        assert_eq!(ByteRate::parse("10mb/S"), Ok(ByteRate(ByteSize(10_000_000))));
        assert_eq!(ByteRate(ByteSize::mib(64)).to_string(), "64 MiB/s");
        let error = ByteRate::parse("4 MB/h").expect_err("per hour is not supported");
        assert!(error.to_string().starts_with("cannot read \"4 MB/h\" as a rate: unknown unit \"MB/h\""));
    }

    #[test]
    fn span_reads_every_unit_form() {
        let cases: [(&str, Duration); 16] = [
            ("100 us", Duration::from_micros(100)),
            ("100µs", Duration::from_micros(100)),
            ("7 ns", Duration::from_nanos(7)),
            ("5 ms", Duration::from_millis(5)),
            ("5MS", Duration::from_millis(5)),
            ("30 s", Duration::from_secs(30)),
            ("30 seconds", Duration::from_secs(30)),
            ("2 min", Duration::from_secs(120)),
            ("1 h", Duration::from_secs(3600)),
            ("3 hours", Duration::from_secs(3 * 3600)),
            ("1 day", Duration::from_secs(86_400)),
            ("2 days", Duration::from_secs(2 * 86_400)),
            ("1d", Duration::from_secs(86_400)),
            ("1 w", Duration::from_secs(7 * 86_400)),
            ("1.5 s", Duration::from_millis(1500)),
            ("0 s", Duration::ZERO),
        ];
        for (text, duration) in cases {
            assert_eq!(Span::parse(text), Ok(Span(duration)), "{text}");
        }
    }

    #[test]
    fn span_displays_in_the_largest_exact_unit_and_reads_back() {
        let cases: [(Span, &str); 9] = [
            (Span::days(1), "1 day"),
            (Span::days(2), "2 days"),
            (Span::hours(1), "1 h"),
            (Span::secs(120), "2 min"),
            (Span::secs(90), "90 s"),
            (Span::millis(1500), "1500 ms"),
            (Span::micros(100), "100 us"),
            (Span(Duration::from_nanos(7)), "7 ns"),
            (Span(Duration::ZERO), "0 s"),
        ];
        for (span, text) in cases {
            assert_eq!(span.to_string(), text);
            assert_eq!(Span::parse(text), Ok(span));
        }
    }

    #[test]
    fn span_refuses_bad_text_saying_why() {
        let error = Span::parse("30").expect_err("a duration needs a unit");
        assert_eq!(
            error.to_string(),
            "cannot read \"30\" as a duration: a duration needs a unit, like \"30 s\" or \"5 ms\""
        );
        let reason = |text| Span::parse(text).expect_err(text).reason;
        assert!(reason("5 m").starts_with("unknown unit \"m\" (durations take"));
        assert!(reason("5 MiB").starts_with("unknown unit \"MiB\""));
        assert_eq!(reason("0.5 ns"), "not a whole number of nanoseconds");
        assert_eq!(reason("100000 w"), "longer than 584 years");
        assert!(reason("soon").contains("expected a number"));
    }

    #[test]
    fn toml_integers_are_bytes_but_not_durations() {
        let config = Config::from_toml_str("[limits]\nframe-max = 2097152\n").expect("an integer size is bytes");
        assert_eq!(config.limits.frame_max, ByteSize::mib(2));
        let error = Config::from_toml_str("[limits]\nclient-stall = 30\n").expect_err("30 what?");
        assert!(error.to_string().contains("a duration with its unit"), "{error}");
        let error = Config::from_toml_str("[limits]\nframe-max = -1\n").expect_err("negative");
        assert!(error.to_string().contains("-1"), "{error}");
    }

    #[test]
    fn bad_unit_in_a_file_names_line_and_value() {
        let error = Config::from_toml_str("[shard]\nblock-cache = \"4 MB/s\"\n").expect_err("bad unit");
        let text = error.to_string();
        assert!(matches!(error, ConfigError::Parse { path: None, .. }));
        assert!(text.contains("line 2"), "{text}");
        assert!(text.contains("cannot read \"4 MB/s\" as a size: unknown unit \"MB/s\""), "{text}");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        for (text, key) in [
            ("listn = \"127.0.0.1:1\"\n", "listn"),
            ("data_dir = \"x\"\n", "data_dir"),
            ("[shard]\nblock-cach = \"1 MiB\"\n", "block-cach"),
            ("[admission]\nqueue-delay = \"1 ms\"\n", "queue-delay"),
            ("[limit]\nframe-max = \"1 MiB\"\n", "limit"),
        ] {
            let error = Config::from_toml_str(text).expect_err(key);
            let message = error.to_string();
            assert!(message.contains(&format!("unknown field `{key}`")), "{message}");
        }
    }

    #[test]
    fn some_keys_override_the_defaults_and_the_rest_stay() {
        let text = "shards = 4\nlisten = \"127.0.0.1:9000\"\n[shard]\nwindow = \"1 h\"\nretention = \"7 days\"\n";
        let config = Config::from_toml_str(text).expect("valid");
        let expected = Config {
            shards: 4,
            listen: "127.0.0.1:9000".into(),
            shard: ShardConfig { window: Span::hours(1), retention: Some(Span::days(7)), ..ShardConfig::default() },
            ..Config::default()
        };
        assert_eq!(config, expected);
        config.validate().expect("valid");
        // A flag overriding the file is a field assignment before validation.
        let mut flagged = config.clone();
        flagged.data_dir = "/srv/strata".into();
        assert_eq!(flagged.data_dir, PathBuf::from("/srv/strata"));
        assert_eq!(flagged.shard.window, Span::hours(1));
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "shards = 2\n").expect("write");
        assert_eq!(Config::load(&good).expect("valid").shards, 2);

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "shards = 2\nshard = 3\n").expect("write");
        let error = Config::load(&bad).expect_err("shard is a table");
        assert!(matches!(&error, ConfigError::Parse { path: Some(p), .. } if *p == bad));
        assert!(error.to_string().contains(&bad.display().to_string()), "{error}");
        assert!(error.to_string().contains("line 2"), "{error}");

        let missing = dir.path().join("missing.toml");
        let error = Config::load(&missing).expect_err("no file");
        assert!(matches!(&error, ConfigError::Read { path, .. } if *path == missing));
        assert!(error.to_string().contains("missing.toml"), "{error}");
    }

    #[test]
    fn validate_refuses_a_public_listen_without_a_secret() {
        for listen in ["0.0.0.0:7400", "[::]:7400", "10.1.2.3:7400"] {
            let mut config = Config { listen: listen.into(), ..Config::default() };
            let error = config.validate().expect_err(listen);
            let message = error.to_string();
            assert!(matches!(error, ConfigError::Invalid { key: "listen", .. }));
            assert!(message.contains(listen) && message.contains("ticket-secret-file"), "{message}");
            config.ticket_secret_file = Some("/etc/strata/ticket-secret".into());
            config.validate().expect("with a secret any address is allowed");
        }
        let config = Config { listen: "[::1]:7400".into(), ..Config::default() };
        config.validate().expect("IPv6 loopback needs no secret");
        let config = Config { ticket_secret_file: Some(PathBuf::new()), ..Config::default() };
        assert_eq!(invalid_key(&config), "ticket-secret-file");
    }

    #[test]
    fn validate_refuses_unreadable_addresses() {
        let config = Config { listen: "localhost:7400".into(), ..Config::default() };
        assert_eq!(invalid_key(&config), "listen");
        let config = Config { status_listen: "7480".into(), ..Config::default() };
        assert_eq!(invalid_key(&config), "status-listen");
        // Port 0 would give every shard a port of its own, which no client could find.
        let config = Config { listen: "127.0.0.1:0".into(), ..Config::default() };
        assert_eq!(invalid_key(&config), "listen");
        let config = Config { status_listen: String::new(), ..Config::default() };
        config.validate().expect("an empty status-listen turns metrics off");
        assert_eq!(config.status_addr().expect("valid"), None);
    }

    #[test]
    fn validate_refuses_clashing_ports_and_too_many_shards() {
        let config = Config { shards: SHARDS_MAX + 1, ..Config::default() };
        assert_eq!(invalid_key(&config), "shards");
        let config = Config { shards: 100, shard_port_base: 65_500, ..Config::default() };
        assert_eq!(invalid_key(&config), "shard-port-base");
        let config = Config { shards: 4, shard_port_base: 7398, ..Config::default() };
        assert_eq!(invalid_key(&config), "shard-port-base");
        let config = Config { shards: 4, status_listen: "127.0.0.1:7402".into(), ..Config::default() };
        assert_eq!(invalid_key(&config), "shard-port-base");
        let config = Config { status_listen: "0.0.0.0:7400".into(), ..Config::default() };
        assert_eq!(invalid_key(&config), "status-listen");
        let config =
            Config { shards: 4, shard_port_base: 0, status_listen: "127.0.0.2:7401".into(), ..Config::default() };
        config.validate().expect("shard ports off and status on another port");
    }

    #[test]
    fn validate_refuses_cold_files_too_small_for_the_largest_value_and_repeated_disks() {
        // One value of the largest size, in a block of its own, must fit a cold file after the
        // file's header.
        let largest = strata_format::cold::COLD_DATA_START + strata_format::cold::COLD_BLOCK_LARGEST as u64;
        assert!(largest > strata_format::protocol::VALUE_LEN_MAX.into());
        let mut config = Config::default();
        config.cold.file_size = ByteSize(largest - strata_format::BLOCK_SIZE as u64);
        let error = config.validate().expect_err("too small for the largest value");
        assert!(matches!(error, ConfigError::Invalid { key: "cold.file-size", .. }), "{error}");
        config.cold.file_size = ByteSize(largest);
        config.validate().expect("the smallest file that holds the largest value");
        config.cold.file_size = ByteSize(largest + 512);
        assert_eq!(invalid_key(&config), "cold.file-size");
        let mut config = Config::default();
        config.cold.hdd = vec!["/mnt/a".into(), "/mnt/b".into(), "/mnt/a".into()];
        assert_eq!(invalid_key(&config), "cold.hdd");
        let mut config = Config::default();
        config.shard.compaction_rate = ByteRate(ByteSize(0));
        assert_eq!(invalid_key(&config), "shard.compaction-rate");
    }

    #[test]
    fn validate_refuses_limits_out_of_order() {
        let mut config = Config::default();
        config.limits.frame_max = ByteSize::mib(16);
        config.limits.connection_output_max = ByteSize::mib(32);
        assert_eq!(invalid_key(&config), "limits.frame-max");
        config.limits.frame_max = ByteSize::kib(64);
        assert_eq!(invalid_key(&config), "limits.frame-max");
        let mut config = Config::default();
        config.limits.connection_output_max = ByteSize::mib(2);
        let error = config.validate().expect_err("output smaller than a frame");
        assert!(error.to_string().contains("frame-max 4 MiB"), "{error}");
        let mut config = Config::default();
        config.limits.shard_inflight_bytes_max = ByteSize::mib(1);
        assert_eq!(invalid_key(&config), "limits.shard-inflight-bytes-max");
        let mut config = Config::default();
        config.limits.connections_max = 0;
        assert_eq!(invalid_key(&config), "limits.connections-max");
        let mut config = Config::default();
        config.admission.queue_delay_max = Span::secs(2);
        assert_eq!(invalid_key(&config), "admission.queue-delay-max");
        let mut config = Config::default();
        config.admission.retry_after_min = Span::hours(2);
        assert_eq!(invalid_key(&config), "admission.retry-after-min");
    }

    #[test]
    fn validate_refuses_a_shard_that_does_not_fit_its_budget() {
        let mut config = Config::default();
        config.shard.block_cache = ByteSize::mib(128);
        let error = config.validate().expect_err("over budget");
        assert!(matches!(error, ConfigError::Invalid { key: "shard.memory-budget", .. }));
        assert!(error.to_string().contains("(320 MiB)"), "{error}");
        let mut config = Config::default();
        config.shard.flush_at = ByteSize::mib(129);
        assert_eq!(invalid_key(&config), "shard.flush-at");
        let mut config = Config::default();
        config.shard.window = Span(Duration::from_nanos(500));
        assert_eq!(invalid_key(&config), "shard.window");
        let mut config = Config::default();
        config.shard.retention = Some(Span::hours(1));
        assert_eq!(invalid_key(&config), "shard.retention");
        let mut config = Config::default();
        config.shard.ssd_throttle = ByteSize::mib(512);
        assert_eq!(invalid_key(&config), "shard.ssd-throttle");
    }

    #[test]
    fn shard_options_take_the_shard_table() {
        let text = "[shard]\nmemtable-max = \"96 MiB\"\nflush-at = \"32 MiB\"\nwindow = \"1 h\"\n\
                    settle-after = \"3 h\"\nretention = \"2 days\"\nfuture-skew = \"5 min\"\n\
                    block-cache = \"16 MiB\"\ncompaction-rate = \"8 MiB/s\"\nssd-reserve = \"2 GiB\"\n\
                    ssd-throttle = \"4 GiB\"\n";
        let config = Config::from_toml_str(text).expect("valid");
        config.validate().expect("valid");
        let options = config.shard_options("/tmp/shard-0");
        assert_eq!(options.dir, PathBuf::from("/tmp/shard-0"));
        assert_eq!(options.memtable_bytes_max, 96 << 20);
        assert_eq!(options.flush_bytes, 32 << 20);
        assert_eq!(options.window_us, 3_600_000_000);
        assert_eq!(options.settle_us, 3 * 3_600_000_000);
        assert_eq!(options.retention_us, Some(2 * 86_400_000_000));
        assert_eq!(options.future_skew_us, 300_000_000);
        assert_eq!(options.block_cache_bytes, 16 << 20);
        assert_eq!(options.compaction_bytes_per_s, 8 << 20);
        assert_eq!(options.ssd_reserve_bytes, 2 << 30);
        assert_eq!(options.ssd_throttle_bytes, 4 << 30);
        assert_eq!(Config::default().shard_options("d").retention_us, None);
    }
}
