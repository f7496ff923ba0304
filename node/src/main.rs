//! `strata`: the Strata storage node.
//!
//! `strata serve` runs one shard per core, each on its own pinned thread with its own io_uring
//! ring, WAL and tables under the data directory. Every shard accepts on the node's port
//! (SO_REUSEPORT) and on its own port; requests for another shard's pkeys are forwarded to it by
//! message. On SIGTERM or SIGINT it stops accepting, finishes what it admitted, commits, and
//! exits 0. `strata check-env` runs the start-up checks and prints what to fix.

use bpaf::Bpaf;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use strata_ioengine::envcheck::{EnvRequirements, check_environment};
use strata_ioengine::uring::net::{Net, NetLimits};
use strata_ioengine::uring::{self, Priority, Remote};
use strata_ioengine::{SystemClock, UringDisk};
use strata_node::config::Config;
use strata_node::server::admission::AdmissionLimits;
use strata_node::server::metrics::{self, ShardMetrics};
use strata_node::server::{Server, ServerOptions};
use strata_node::{Shard, ShardOptions};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Clone, Bpaf)]
#[bpaf(options, version)]
/// Strata: a storage node for time-ordered data.
enum Command {
    /// Run the node: one pinned shard per core, until SIGTERM or SIGINT.
    #[bpaf(command)]
    Serve {
        /// A TOML configuration file (kebab-case keys); without it, embedded defaults.
        #[bpaf(long, argument("FILE"))]
        config: Option<PathBuf>,
        /// Check the configuration (file, flags and their combination) and exit.
        #[bpaf(long("check-config"))]
        check_config: bool,
        /// Print a commented sample configuration (every key at its default) and exit.
        #[bpaf(long("print-sample-config"))]
        print_sample_config: bool,
        /// Data directory (overrides the file).
        #[bpaf(long("data-dir"), argument("DIR"))]
        data_dir: Option<PathBuf>,
        /// Number of shards (overrides the file; default one per CPU the process may use).
        #[bpaf(long, argument("N"))]
        shards: Option<usize>,
        /// Address every shard accepts on (overrides the file).
        #[bpaf(long, argument("ADDR"))]
        listen: Option<String>,
        /// Shard i also listens on this port + i; 0 turns shard ports off (overrides the file).
        #[bpaf(long("shard-port-base"), argument("PORT"))]
        shard_port_base: Option<u16>,
        /// Address of the Prometheus metrics endpoint; "" turns it off (overrides the file).
        #[bpaf(long("status-listen"), argument("ADDR"))]
        status_listen: Option<String>,
    },
    /// Run the start-up checks (io_uring, O_DIRECT) and say what to fix.
    #[bpaf(command("check-env"))]
    CheckEnv {
        /// Data directory to check.
        #[bpaf(long("data-dir"), argument("DIR"), fallback(PathBuf::from("./strata-data")), debug_fallback)]
        data_dir: PathBuf,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour for a terminal only: a log file or the journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let code = match strata_node::config::parse_command_line(command()) {
        Command::Serve {
            config,
            check_config,
            print_sample_config,
            data_dir,
            shards,
            listen,
            shard_port_base,
            status_listen,
        } => {
            if print_sample_config {
                print!("{}", Config::sample_toml());
                std::process::exit(0);
            }
            let mut cfg = match config {
                Some(path) => match Config::load(&path) {
                    Ok(cfg) => cfg,
                    Err(e) => {
                        tracing::error!("{e}");
                        std::process::exit(2);
                    }
                },
                None => Config::default(),
            };
            if let Some(v) = data_dir {
                cfg.data_dir = v;
            }
            if let Some(v) = shards {
                cfg.shards = v;
            }
            if let Some(v) = listen {
                cfg.listen = v;
            }
            if let Some(v) = shard_port_base {
                cfg.shard_port_base = v;
            }
            if let Some(v) = status_listen {
                cfg.status_listen = v;
            }
            if let Err(e) = cfg.validate() {
                tracing::error!("{e}");
                std::process::exit(2);
            }
            if check_config {
                println!("configuration is valid");
                std::process::exit(0);
            }
            serve(&cfg)
        }
        Command::CheckEnv { data_dir } => {
            if env_ok(&data_dir, &[]) {
                0
            } else {
                1
            }
        }
    };
    std::process::exit(code);
}

/// Runs the start-up checks, printing each finding; true when all pass.
fn env_ok(data_dir: &Path, hdd: &[std::path::PathBuf]) -> bool {
    // The uring runtime registers no memory, so the memlock limit does not matter.
    let mut paths = vec![data_dir.to_path_buf()];
    paths.extend(hdd.iter().cloned());
    let req = EnvRequirements { memlock_bytes_needed: 0, direct_io_paths: paths };
    let mut ok = true;
    for finding in check_environment(&req) {
        if finding.ok {
            tracing::info!(check = finding.check, "{}", finding.detail);
        } else {
            tracing::error!(check = finding.check, "{}", finding.detail);
            ok = false;
        }
    }
    ok
}

/// Everything one shard thread needs.
struct ShardPlan {
    index: usize,
    cpu: usize,
    config: Arc<Config>,
    disks: Arc<strata_node::disks::NodeDisks>,
    server: ServerOptions,
    metrics: Arc<ShardMetrics>,
    listen: SocketAddr,
    shard_port: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
    /// Each shard reports here once open (its handle, or why it could not open)...
    remotes: Option<std::sync::mpsc::Sender<(usize, Result<Remote, String>)>>,
    peers: Arc<OnceLock<Arc<Vec<Remote>>>>,
    /// ...and here once it listens (or why it cannot). A shard's failures are reported only
    /// through these, and logged by the main thread.
    listening: Option<std::sync::mpsc::Sender<(usize, Result<(), String>)>>,
}

fn serve(cfg: &Config) -> i32 {
    // First of all, so a SIGTERM or SIGINT at any moment of start-up (the checks, a long WAL
    // replay) stops the node the way it stops a serving one: exit 0, nothing acknowledged lost.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            tracing::error!("cannot install the handler for signal {signal}: {e}");
            return 1;
        }
    }
    tracing::info!(pid = std::process::id(), data_dir = %cfg.data_dir.display(), "starting");
    // Shards go on the CPUs this process may use (all online CPUs, unless `taskset` or a cpuset
    // says otherwise), one per CPU by default.
    let cpus = uring::allowed_cpus();
    let shard_count = cfg.shard_count();
    let listen: SocketAddr = match cfg.listen.parse() {
        Ok(addr) => addr,
        Err(e) => {
            tracing::error!("listen = {:?} is not a socket address: {e}", cfg.listen);
            return 2;
        }
    };
    let _lock = match lock_data_dir(&cfg.data_dir) {
        Ok(lock) => lock,
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    };
    let _port_lock = match lock_listen_port(listen) {
        Ok(lock) => lock,
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    };
    // At once, rather than after every shard has replayed its WAL; checked again just before
    // the shards listen.
    if !listen_port_free(listen) {
        return 1;
    }
    if let Err(e) = check_shard_count(&cfg.data_dir, shard_count) {
        tracing::error!("{e}");
        return 1;
    }
    let disks = match strata_node::disks::prepare(&cfg.data_dir, &cfg.hdd_paths(), cfg.cold.hdd.is_empty()) {
        Ok(disks) => Arc::new(disks),
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    };
    for d in &disks.disks {
        tracing::info!(
            disk = d.label.disk,
            root = %d.root.display(),
            logical_block_bytes = ?d.logical_block_bytes,
            rotational = ?d.rotational,
            joined_epoch = d.label.epoch,
            "cold disk"
        );
    }
    if !env_ok(&cfg.data_dir, &disks.roots()) {
        tracing::error!("start-up checks failed; fix the findings above and start again");
        return 1;
    }
    let ticket_secret = match &cfg.ticket_secret_file {
        Some(path) => match std::fs::read(path) {
            Ok(secret) if secret.len() >= strata_format::ticket::TICKET_SECRET_LEN_MIN => {
                Some(Arc::<[u8]>::from(secret))
            }
            Ok(secret) => {
                tracing::error!(
                    "the ticket secret in {} is {} bytes; it must be at least {}",
                    path.display(),
                    secret.len(),
                    strata_format::ticket::TICKET_SECRET_LEN_MIN
                );
                return 1;
            }
            Err(e) => {
                tracing::error!("cannot read the ticket secret {}: {e}", path.display());
                return 1;
            }
        },
        None => {
            tracing::warn!("no ticket secret configured: serving without tickets, on loopback only");
            None
        }
    };
    if stop.load(Ordering::SeqCst) {
        // Nothing is open yet: nothing to drain or sync.
        tracing::info!("stopped by a signal while starting");
        return 0;
    }
    let config = Arc::new(cfg.clone());
    let shard_metrics: Vec<Arc<ShardMetrics>> = (0..shard_count).map(|_| Arc::default()).collect();
    if !cfg.status_listen.is_empty()
        && let Err(e) = start_status_endpoint(&cfg.status_listen, shard_metrics.clone())
    {
        tracing::error!("cannot serve metrics on {}: {e}", cfg.status_listen);
        return 1;
    }
    let (remote_tx, remote_rx) = std::sync::mpsc::channel();
    let (listening_tx, listening_rx) = std::sync::mpsc::channel();
    let peers = Arc::new(OnceLock::new());
    let mut handles = Vec::new();
    for index in 0..shard_count {
        let shard_port =
            (cfg.shard_port_base != 0).then(|| SocketAddr::new(listen.ip(), cfg.shard_port_base + index as u16));
        let plan = ShardPlan {
            index,
            cpu: cpus[index % cpus.len()],
            config: config.clone(),
            disks: disks.clone(),
            server: ServerOptions {
                shard_index: index,
                shard_count,
                ticket_secret: ticket_secret.clone(),
                admission: AdmissionLimits {
                    inflight_requests_max: cfg.limits.shard_inflight_requests_max,
                    inflight_bytes_max: cfg.limits.shard_inflight_bytes_max.0 as usize,
                    queue_delay_max: cfg.admission.queue_delay_max.0,
                    retry_after_min: cfg.admission.retry_after_min.0,
                },
                default_deadline: cfg.admission.default_deadline.0,
                client_stall: cfg.limits.client_stall.0,
                frame_body_max: cfg.limits.frame_max.0.min(u64::from(strata_format::protocol::FRAME_BODY_MAX)) as u32,
            },
            metrics: shard_metrics[index].clone(),
            listen,
            shard_port,
            stop: stop.clone(),
            remotes: Some(remote_tx.clone()),
            peers: peers.clone(),
            listening: Some(listening_tx.clone()),
        };
        let name = format!("shard-{index}");
        match uring::spawn_pinned(&name, plan.cpu, move || run_shard(plan)) {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                tracing::error!("cannot start {name}: {e}");
                stop.store(true, Ordering::SeqCst);
            }
        }
    }
    drop(remote_tx);
    drop(listening_tx);
    // Every shard hands in its remote handle; then each learns all of them. A shard drops its
    // senders once it has reported, so a shard that dies before reporting ends the wait.
    let mut remotes: Vec<Option<Remote>> = (0..shard_count).map(|_| None).collect();
    let mut code = if handles.len() == shard_count { 0 } else { 1 };
    // A stop with no failure recorded came from SIGTERM or SIGINT.
    let signalled = |code: i32| code == 0 && stop.load(Ordering::SeqCst);
    for _ in 0..handles.len() {
        match remote_rx.recv() {
            Ok((index, Ok(remote))) => remotes[index] = Some(remote),
            Ok((index, Err(e))) => {
                tracing::error!("shard {index}: {e}");
                stop.store(true, Ordering::SeqCst);
                code = 1;
            }
            Err(_) => break,
        }
    }
    if !remotes.iter().all(Option::is_some) {
        if code == 0 {
            tracing::error!("a shard stopped before it opened; stopping the node");
            code = 1;
        }
        stop.store(true, Ordering::SeqCst);
    } else if signalled(code) {
        // The signal came while the shards opened (a WAL replay can take a while): they stop
        // without listening, so no client connects only to be cut off.
        tracing::info!("stopped by a signal while starting");
    } else if !listen_port_free(listen) {
        // The shards have not bound yet (they wait for `peers`): whatever holds the port is
        // another process.
        stop.store(true, Ordering::SeqCst);
        code = 1;
    } else {
        let all: Vec<Remote> = remotes.into_iter().map(|r| r.expect("checked")).collect();
        let _ = peers.set(Arc::new(all));
        let mut listening = 0;
        for _ in 0..shard_count {
            match listening_rx.recv() {
                Ok((_, Ok(()))) => listening += 1,
                Ok((index, Err(e))) => {
                    // A node missing a shard cannot serve that shard's buckets.
                    tracing::error!("shard {index}: {e}; stopping the node");
                    stop.store(true, Ordering::SeqCst);
                    code = 1;
                }
                Err(_) => break,
            }
        }
        if listening == shard_count {
            tracing::info!(shards = shard_count, %listen, shard_port_base = cfg.shard_port_base, "serving");
        } else if signalled(code) {
            tracing::info!("stopped by a signal while starting");
        } else {
            if code == 0 {
                tracing::error!("a shard stopped before it listened; stopping the node");
                code = 1;
            }
            stop.store(true, Ordering::SeqCst);
        }
    }
    for handle in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!("{e}");
                code = 1;
            }
            Err(_) => {
                tracing::error!("a shard thread panicked");
                code = 1;
            }
        }
    }
    code
}

/// Holds `listen`'s port for this node while it runs: an abstract Unix socket named after the
/// port (`@strata/listen-port/<port>`), which the kernel frees when the process ends, however it
/// ends. The shards share their port with SO_REUSEPORT, so binding it cannot tell a second node
/// from a shard of this one; [`listen_port_free`] sees a process already listening, but two
/// nodes started at the same moment could both pass it. This lock admits one of them. It is
/// keyed by the port alone, so overlapping addresses (`0.0.0.0` and `127.0.0.1`) clash too.
/// Port 0 (any free port) needs no lock.
fn lock_listen_port(listen: SocketAddr) -> Result<Option<std::os::unix::net::UnixListener>, String> {
    if listen.port() == 0 {
        return Ok(None);
    }
    let name = format!("strata/listen-port/{}", listen.port());
    match uring::net::hold_abstract_name(&name) {
        Ok(lock) => Ok(Some(lock)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "cannot listen on {listen}: another strata node{} holds port {} (its lock @{name}). Two nodes on \
             one host need distinct ports: stop the other node, or choose another listen",
            uring::net::abstract_name_holder(&name).map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
            listen.port()
        )),
        Err(e) => Err(format!("cannot take the port lock @{name} for {listen}: {e}")),
    }
}

/// False (and says why) when another process listens on `listen`. The shards share the port
/// with SO_REUSEPORT, which the kernel grants to every process of the same user: a second node
/// there would take a share of the clients. A check, not a lock: [`lock_listen_port`] keeps two
/// strata nodes starting at the same moment apart; this catches any other process.
fn listen_port_free(listen: SocketAddr) -> bool {
    match uring::net::check_port_free(listen) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::error!(
                "cannot listen on {listen}: another process listens there ({e}). The shards share the port \
                 with SO_REUSEPORT, so a second node of the same user would join it and take a share of the \
                 clients: stop the other process, or choose another listen"
            );
            false
        }
        Err(e) => {
            tracing::error!("cannot listen on {listen}: {e}");
            false
        }
    }
}

/// The shard count is part of the data: buckets map to shards by it.
fn check_shard_count(data_dir: &Path, shard_count: usize) -> Result<(), String> {
    let path = data_dir.join("SHARDS");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let recorded: usize = text
                .trim()
                .parse()
                .map_err(|_| format!("{} is damaged: {:?} is not a shard count", path.display(), text))?;
            if recorded != shard_count {
                let shards = |n: usize| if n == 1 { "1 shard".to_string() } else { format!("{n} shards") };
                return Err(format!(
                    "{} was created with {} and this start asks for {}; buckets cannot move \
                     between shards yet, so start with --shards {recorded} (or shards = {recorded} in the config)",
                    data_dir.display(),
                    shards(recorded),
                    shards(shard_count)
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            strata_node::disks::write_durably(data_dir, "SHARDS", format!("{shard_count}\n").as_bytes())
                .map_err(|e| format!("cannot record the shard count in {}: {e}", path.display()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Holds `<data-dir>/LOCK` for the life of the process: one node per data directory.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, String> {
    strata_node::disks::try_lock_data_dir(data_dir)?.ok_or_else(|| {
        format!("{} is locked: another strata is running on this data directory", data_dir.join("LOCK").display())
    })
}

/// Serves `GET /metrics` (Prometheus text) from a thread of its own.
fn start_status_endpoint(addr: &str, shards: Vec<Arc<ShardMetrics>>) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    tracing::info!(addr = %listener.local_addr()?, "metrics at /metrics");
    std::thread::Builder::new().name("status".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut request = [0u8; 1024];
            let n = std::io::Read::read(&mut stream, &mut request).unwrap_or(0);
            let head = String::from_utf8_lossy(&request[..n]);
            // The request line: `GET <path>[?query] HTTP/1.x`.
            let path = head.strip_prefix("GET ").and_then(|rest| rest.split([' ', '?']).next());
            let (status, body) = if matches!(path, Some("/metrics" | "/")) {
                let mut body = String::new();
                metrics::render(&mut body, &shards);
                ("200 OK", body)
            } else {
                ("404 Not Found", "try GET /metrics\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = std::io::Write::write_all(&mut stream, response.as_bytes());
        }
    })?;
    Ok(())
}

/// Runs one shard until the node stops. Failures go to the main thread through the plan's
/// channels.
async fn run_shard(mut plan: ShardPlan) {
    let index = plan.index;
    // Each report is sent once and its sender dropped with it, so that the main thread, once
    // every live shard has reported, is not left waiting on one that died.
    let (remotes, listening) = (plan.remotes.take(), plan.listening.take());
    let report_open = move |result| {
        if let Some(remotes) = remotes {
            let _ = remotes.send((index, result));
        }
    };
    let report_listening = move |result| {
        if let Some(listening) = listening {
            let _ = listening.send((index, result));
        }
    };
    let dir = plan.config.data_dir.join(format!("shard-{index}"));
    let mut options: ShardOptions = plan.config.shard_options(&dir);
    options.cold = Some(plan.config.cold_options(index as u16, &plan.disks));
    let opened = Shard::open(UringDisk, SystemClock, options).await;
    let (shard, report) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            report_open(Err(e.to_string()));
            return;
        }
    };
    tracing::info!(
        shard = index,
        dir = %dir.display(),
        segments = report.segments_replayed,
        batches = report.batches_replayed,
        records = report.records_replayed,
        "shard open"
    );
    if let Some(torn) = &report.torn_tail {
        tracing::warn!(shard = index, file = %torn.file.display(), offset = torn.offset, reason = %torn.reason, "dropped a bad group commit at the WAL tail: a crash while writing it leaves one, never acknowledged; if the node did not crash, its writes were acknowledged and lost: check the disk");
    }
    uring::spawn_detached(Priority::Foreground, shard.background());
    uring::spawn_detached(Priority::Background, shard.maintenance());
    let limits = &plan.config.limits;
    let installed = Net::install(NetLimits {
        input_max: limits.frame_max.0 as usize + strata_format::protocol::HEADER_SIZE,
        output_max: limits.connection_output_max.0 as usize,
        connections_max: limits.connections_max,
        ..NetLimits::default()
    });
    let net = match installed {
        Ok(net) => net,
        Err(e) => {
            shard.close().await;
            report_open(Err(e.to_string()));
            return;
        }
    };
    let server = Server::install(plan.server.clone(), shard.clone(), net.clone(), plan.metrics.clone());
    report_open(Ok(uring::remote()));
    // Forwarding needs every shard's handle: wait for the others before accepting.
    let peers = loop {
        if let Some(peers) = plan.peers.get() {
            break peers.clone();
        }
        if plan.stop.load(Ordering::SeqCst) {
            shard.close().await;
            return;
        }
        uring::sleep(Duration::from_millis(1)).await;
    };
    server.set_peers(peers);
    let listened =
        net.listen(plan.listen, true).map_err(|e| format!("cannot listen on {}: {e}", plan.listen)).and_then(|_| {
            let Some(addr) = plan.shard_port else { return Ok(()) };
            let listener = net.listen(addr, false).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            server.set_shard_listener(listener);
            Ok(())
        });
    if let Err(e) = listened {
        // A node missing a shard cannot serve that shard's buckets: stop the whole node now.
        plan.stop.store(true, Ordering::SeqCst);
        report_listening(Err(e));
        server.drain(Duration::ZERO).await;
        shard.close().await;
        return;
    }
    report_listening(Ok(()));
    uring::spawn_detached(Priority::Background, server.clone().upkeep());
    let mut ticks = 0u64;
    while !plan.stop.load(Ordering::SeqCst) {
        uring::sleep(Duration::from_millis(50)).await;
        ticks += 1;
        if ticks.is_multiple_of(100) {
            // Time-based maintenance (settling and expiring windows) is found when it wakes.
            shard.wake_maintenance();
        }
    }
    tracing::info!(shard = index, "stopping: no new connections, finishing admitted requests");
    server.drain(Duration::from_secs(10)).await;
    // Flush the memtable so the next start replays nothing (bounded: a flush of a full memtable
    // takes well under this).
    shard.flush_now();
    let flush_started = std::time::Instant::now();
    while shard.flush_pending() && flush_started.elapsed() < Duration::from_secs(30) {
        uring::sleep(Duration::from_millis(5)).await;
    }
    shard.close().await;
    tracing::info!(shard = index, "shard closed cleanly");
}
