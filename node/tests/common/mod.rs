//! Starts the real `strata` binary on free ports in a temporary data directory.
#![allow(dead_code, reason = "each test file uses part of this module")]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use strata_node::client::{Client, ClientOptions};

pub const SHARDS: usize = 2;

/// A running node.
pub struct Node {
    pub child: Child,
    pub addr: SocketAddr,
    pub shard_port_base: u16,
    pub status: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// A port nothing listens on now (and a run of `n` of them after it).
pub fn free_ports(n: u16) -> u16 {
    for _ in 0..1000 {
        let base = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if base > 65000 - n {
            continue;
        }
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no run of {n} free ports");
}

impl Node {
    /// Starts a node with `extra` arguments and waits until it answers.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_log(data_dir, extra, "info")
    }

    /// Starts a node whose log is filtered by `rust_log` (for example
    /// `"info,strata_node::server=debug"` to log why each connection was closed).
    pub fn start_with_log(data_dir: &Path, extra: &[&str], rust_log: &str) -> Self {
        let node = Self::spawn(data_dir, extra, rust_log);
        node.wait_ready();
        node
    }

    /// Starts a node without waiting for it to answer.
    pub fn spawn(data_dir: &Path, extra: &[&str], rust_log: &str) -> Self {
        let base = free_ports(2 + SHARDS as u16);
        let addr: SocketAddr = format!("127.0.0.1:{base}").parse().unwrap();
        let status: SocketAddr = format!("127.0.0.1:{}", base + 1).parse().unwrap();
        let shard_port_base = base + 2;
        let log = data_dir.with_extension("log");
        let child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("serve")
            .args(["--data-dir", data_dir.to_str().unwrap()])
            .args(["--shards", &SHARDS.to_string()])
            .args(["--listen", &addr.to_string()])
            .args(["--status-listen", &status.to_string()])
            .args(["--shard-port-base", &shard_port_base.to_string()])
            .args(extra)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the strata binary starts");
        Self { child, addr, shard_port_base, status, data_dir: data_dir.to_path_buf(), log }
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            if let Ok(mut client) = Client::connect(self.addr)
                && client.ping().is_ok()
            {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "node did not start; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The node's resident memory in bytes (`VmRSS` of /proc/<pid>/status).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
        let kib: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().unwrap();
        kib * 1024
    }

    /// The sum over shards of a metric (`name{shard="i"} value` lines of the metrics endpoint).
    pub fn metric_sum(&self, name: &str) -> u64 {
        let prefix = format!("{name}{{");
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn options(&self) -> ClientOptions {
        let mut options = ClientOptions::new(self.addr);
        options.deadline = Duration::from_secs(10);
        options
    }

    /// A client that goes straight to each pkey's shard port.
    pub fn shard_aware_client(&self) -> Client {
        let mut options = self.options();
        options.shard_ports = Some((self.shard_port_base, SHARDS));
        Client::new(options)
    }

    pub fn client(&self) -> Client {
        Client::new(self.options())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(start.elapsed() < Duration::from_secs(30), "node did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metrics(&self) -> String {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(self.status).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A randomized test's seed: from the environment variable `var` when set (to replay a run),
/// else from the clock; printed with how to replay it.
pub fn seed(var: &str, what: &str) -> u64 {
    let seed = match std::env::var(var) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{var} should be a u64")),
        Err(_) => now_us(),
    };
    println!("{what} seed {seed} (replay with {var}={seed})");
    seed
}

/// Timestamps near now (microseconds), inside the node's future-skew limit.
pub fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
}
