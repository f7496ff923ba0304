//! Servers under test as child processes: Strata and redis-server, pinned to a core with
//! `taskset`, optionally held to a cgroup v1 CPU quota; their CPU time and RSS from /proc.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which server, and how it persists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ServerKind {
    /// Strata: every acknowledged PUT is durable (group commit + fdatasync).
    Strata,
    /// redis-server with no persistence at all.
    RedisNoPersistence,
    /// redis-server with `appendfsync always`: durable like Strata.
    RedisFsyncAlways,
    /// `strata-bench echo-server`: RESP PINGs answered on glommio's sockets.
    EchoGlommio,
    /// `strata-bench echo-server`: RESP PINGs answered on the node's io_uring network layer.
    EchoUring,
}

impl ServerKind {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Strata => "strata",
            Self::RedisNoPersistence => "redis (no persistence)",
            Self::RedisFsyncAlways => "redis (appendfsync always)",
            Self::EchoGlommio => "echo on glommio sockets",
            Self::EchoUring => "echo on the io_uring loop",
        }
    }
}

/// A running server.
pub struct Server {
    pub kind: ServerKind,
    pub addr: SocketAddr,
    /// Where a Strata node serves its metrics (none for the other servers).
    pub status: Option<SocketAddr>,
    child: Child,
    cgroup: Option<PathBuf>,
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// The `strata` binary next to this bench binary (same target directory).
pub fn strata_binary() -> Result<PathBuf, String> {
    let me = strata_bench_binary()?;
    let path = me.with_file_name("strata");
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{} not found: build it with `cargo build --release -p strata-node`", path.display()))
    }
}

/// Where the bench's Strata node serves its metrics: the address `STRATA_BENCH_STATUS` names (to
/// watch a run's turns, socket waits and refusals from outside as well), or a free loopback port.
fn status_listen() -> Result<SocketAddr, String> {
    match std::env::var("STRATA_BENCH_STATUS") {
        Ok(addr) if !addr.is_empty() => {
            addr.parse().map_err(|e| format!("STRATA_BENCH_STATUS={addr:?} is not an address: {e}"))
        }
        _ => Ok(SocketAddr::from(([127, 0, 0, 1], free_port()))),
    }
}

/// This bench binary, to run its helper commands (`echo-server`, `cpu-thief`).
pub fn strata_bench_binary() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))
}

impl Server {
    /// Starts `kind` on `cpu`, its data under `dir`; `strata_config` is Strata's TOML.
    pub fn start(kind: ServerKind, cpu: usize, dir: &Path, strata_config: &str) -> Result<Self, String> {
        let _ = std::fs::remove_dir_all(dir);
        Self::start_on(kind, cpu, dir, strata_config)
    }

    /// Starts `kind` on the data already in `dir` (after [`Server::stop`]).
    pub fn start_on(kind: ServerKind, cpu: usize, dir: &Path, strata_config: &str) -> Result<Self, String> {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("valid address");
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut command = Command::new("taskset");
        command.args(["-c", &cpu.to_string()]);
        let mut status = None;
        match kind {
            ServerKind::Strata => {
                let status_addr = status_listen()?;
                status = Some(status_addr);
                let config = dir.join("strata.toml");
                std::fs::write(&config, strata_config).map_err(|e| e.to_string())?;
                command
                    .arg(strata_binary()?)
                    .arg("serve")
                    .args(["--config", config.to_str().expect("utf-8 path")])
                    .args(["--data-dir", dir.join("data").to_str().expect("utf-8 path")])
                    .args([
                        "--shards",
                        "1",
                        "--listen",
                        &addr.to_string(),
                        "--status-listen",
                        &status_addr.to_string(),
                        "--shard-port-base",
                        "0",
                    ])
                    .env("RUST_LOG", "warn");
            }
            ServerKind::EchoGlommio | ServerKind::EchoUring => {
                let me = strata_bench_binary()?;
                let runtime = if kind == ServerKind::EchoGlommio { "glommio" } else { "uring" };
                command.arg(me).args(["echo-server", "--runtime", runtime, "--addr", &addr.to_string()]);
                command.args(["--cpu", &cpu.to_string()]);
            }
            ServerKind::RedisNoPersistence | ServerKind::RedisFsyncAlways => {
                let redis = which("redis-server").ok_or("redis-server not found: apt-get install redis-server")?;
                command
                    .arg(redis)
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
                    .args(["--dir", dir.to_str().expect("utf-8 path")])
                    .args(["--protected-mode", "no", "--io-threads", "1"]);
                if kind == ServerKind::RedisFsyncAlways {
                    command.args(["--appendonly", "yes", "--appendfsync", "always"]);
                } else {
                    command.args(["--appendonly", "no"]);
                }
            }
        }
        let log = std::fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
        let child =
            command.stdout(Stdio::null()).stderr(log).spawn().map_err(|e| {
                format!("cannot start {}: {e} (is taskset installed? it is in util-linux)", kind.name())
            })?;
        let server = Self { kind, addr, status, child, cgroup: None };
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                return Err(format!("{} did not start listening on {addr}: {log}", kind.name()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// Stops the server with SIGTERM (a clean shutdown) and waits for it.
    pub fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        // `taskset` execs the server, so the child's pid is the server's.
        self.child.id()
    }

    /// A Strata node's metrics, in Prometheus' text format, from its status port.
    pub fn metrics(&self) -> Result<String, String> {
        let addr = self.status.ok_or_else(|| format!("{} serves no metrics", self.kind.name()))?;
        let fail = |e: std::io::Error| format!("cannot read the metrics at {addr}: {e}");
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(fail)?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(fail)?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").map_err(fail)?;
        let mut text = String::new();
        stream.read_to_string(&mut text).map_err(fail)?;
        match text.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
            _ => Err(format!("the metrics at {addr} answered: {}", text.lines().next().unwrap_or("nothing"))),
        }
    }

    /// CPU time (user + system) the server has used, µs.
    #[must_use]
    pub fn cpu_us(&self) -> u64 {
        crate::procstat::cpu_us(&self.pid().to_string())
    }

    /// Resident set size, bytes.
    #[must_use]
    pub fn rss_bytes(&self) -> u64 {
        crate::procstat::rss_bytes(&self.pid().to_string())
    }

    /// Holds the server to `percent` of one CPU with a cgroup v1 CFS quota, granted per
    /// `period_us`: a throttled server freezes for up to the rest of the period, so the period
    /// is kept short (the default 100 ms would make every latency figure measure the quota).
    pub fn limit_cpu(&mut self, percent: u32, period_us: u32) -> Result<(), String> {
        let dir = PathBuf::from(format!("/sys/fs/cgroup/cpu/strata-bench-{}", self.pid()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create the cgroup {} (needs root and cgroup v1 cpu): {e}", dir.display()))?;
        let write = |file: &str, value: String| {
            std::fs::write(dir.join(file), value).map_err(|e| format!("cannot write {}/{file}: {e}", dir.display()))
        };
        let quota_us = u64::from(percent) * u64::from(period_us) / 100;
        if period_us < 1000 || quota_us < 1000 {
            return Err(format!(
                "a CFS quota of {percent}% per {period_us} us period is {quota_us} us: the kernel's least period and quota are 1,000 us"
            ));
        }
        write("cpu.cfs_period_us", period_us.to_string())?;
        write("cpu.cfs_quota_us", quota_us.to_string())?;
        write("cgroup.procs", self.pid().to_string())?;
        self.cgroup = Some(dir);
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.cgroup.take() {
            // A cgroup is removed once its processes are gone.
            for _ in 0..50 {
                if std::fs::remove_dir(&dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.exists())
}
