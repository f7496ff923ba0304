//! `strata-tool`: operator tools for Strata's data directories.
//!
//! Today: `inspect` (read-only decoding of WAL segments, saying where damage starts),
//! `check-env` (the start-up checks), `route generate` (writes the committed routing table) and
//! `ticket issue` (signs a ticket with the node's secret).
//! Scrub, repair and rebuild-disk come with the cold tier.

mod inspect;

use bpaf::Bpaf;
use std::path::{Path, PathBuf};
use std::time::Instant;
use strata_format::key::BUCKET_COUNT;
use strata_format::route::{GROUP_COUNT_MAX, ROUTE_BIN, RouteHeader, RouteTable};
use strata_ioengine::envcheck::{EnvRequirements, check_environment};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Clone, Bpaf)]
#[bpaf(options, version)]
/// Operator tools for Strata data directories.
enum Command {
    /// Decode WAL segment files (or every segment of a shard's `wal/` directory), read-only.
    #[bpaf(command)]
    Inspect {
        /// Print JSON instead of text.
        #[bpaf(long)]
        json: bool,
        /// A segment file, or a directory of segment files.
        #[bpaf(positional("PATH"))]
        path: PathBuf,
    },
    /// Run the start-up checks (io_uring, memlock, O_DIRECT) for a data directory.
    #[bpaf(command("check-env"))]
    CheckEnv {
        /// Print JSON instead of text.
        #[bpaf(long)]
        json: bool,
        /// Data directory (SSD) to check.
        #[bpaf(long("data-dir"), argument("DIR"), fallback(PathBuf::from("./strata-data")), debug_fallback)]
        data_dir: PathBuf,
    },
    /// The routing table: bucket -> group for every group count 1..=1000.
    #[bpaf(command)]
    Route(#[bpaf(external(route_command))] RouteCommand),
    /// Issue tickets: signed, expiring tokens naming the pkeys a client may touch.
    #[bpaf(command)]
    Ticket(#[bpaf(external(ticket_command))] TicketCommand),
}

#[derive(Debug, Clone, Bpaf)]
enum TicketCommand {
    /// Sign a ticket with the node's secret and print it in hex (pass it to the client library).
    #[bpaf(command)]
    Issue {
        /// The node's ticket secret (the file named by `ticket-secret-file`).
        #[bpaf(long("secret-file"), argument("FILE"))]
        secret_file: PathBuf,
        /// A pkey the ticket may touch (repeatable).
        #[bpaf(long, argument("PKEY"))]
        pkey: Vec<String>,
        /// A pkey prefix the ticket may touch (repeatable).
        #[bpaf(long, argument("PREFIX"))]
        prefix: Vec<String>,
        /// An admin ticket: every pkey, and admin operations.
        #[bpaf(long)]
        admin: bool,
        /// Seconds until the ticket expires.
        #[bpaf(long("ttl-seconds"), argument("SECONDS"), fallback(3600), display_fallback)]
        ttl_seconds: u64,
    },
}

#[derive(Debug, Clone, Bpaf)]
enum RouteCommand {
    /// Generate the routing table and write it.
    ///
    /// Run from the repository root to refresh the committed `format/data/route.bin`.
    #[bpaf(command)]
    Generate {
        /// Where to write the table.
        #[bpaf(long, argument("PATH"), fallback(PathBuf::from("format/data/route.bin")), debug_fallback)]
        out: PathBuf,
    },
}

fn main() {
    let code = match command().run() {
        Command::Inspect { json, path } => inspect::run(&path, json),
        Command::CheckEnv { json, data_dir } => check_env(&data_dir, json),
        Command::Route(RouteCommand::Generate { out }) => route_generate(&out),
        Command::Ticket(TicketCommand::Issue { secret_file, pkey, prefix, admin, ttl_seconds }) => {
            ticket_issue(&secret_file, pkey, prefix, admin, ttl_seconds)
        }
    };
    std::process::exit(code);
}

fn ticket_issue(
    secret_file: &std::path::Path,
    pkeys: Vec<String>,
    prefixes: Vec<String>,
    admin: bool,
    ttl_seconds: u64,
) -> i32 {
    use strata_format::ticket::{Scope, TICKET_SECRET_LEN_MIN, Ticket, encode_hex};
    let secret = match std::fs::read(secret_file) {
        Ok(secret) if secret.len() >= TICKET_SECRET_LEN_MIN => secret,
        Ok(secret) => {
            eprintln!(
                "{} holds {} bytes; a secret needs at least {TICKET_SECRET_LEN_MIN}",
                secret_file.display(),
                secret.len()
            );
            return 1;
        }
        Err(e) => {
            eprintln!("cannot read {}: {e}", secret_file.display());
            return 1;
        }
    };
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let scopes: Vec<Scope> = pkeys
        .into_iter()
        .map(|p| Scope::Exact(p.into_bytes()))
        .chain(prefixes.into_iter().map(|p| Scope::Prefix(p.into_bytes())))
        .collect();
    let ticket = Ticket { admin, issued_at_s: now_s, expires_at_s: now_s + ttl_seconds, scopes };
    if let Err(e) = ticket.validate() {
        eprintln!("cannot issue this ticket: {e}");
        return 1;
    }
    println!("{}", encode_hex(&ticket.sign(&secret)));
    0
}

fn check_env(data_dir: &std::path::Path, json: bool) -> i32 {
    let req = EnvRequirements {
        // The node's uring runtime registers no memory: the locked-memory limit does not matter.
        memlock_bytes_needed: 0,
        direct_io_paths: vec![data_dir.to_path_buf()],
    };
    let findings = check_environment(&req);
    let ok = findings.iter().all(|f| f.ok);
    if json {
        let list: Vec<_> =
            findings.iter().map(|f| serde_json::json!({ "check": f.check, "ok": f.ok, "detail": f.detail })).collect();
        println!("{}", serde_json::json!({ "ok": ok, "findings": list }));
    } else {
        for f in &findings {
            println!("{:<11} {:<4} {}", f.check, if f.ok { "ok" } else { "FAIL" }, f.detail);
        }
    }
    i32::from(!ok)
}

fn route_generate(out: &Path) -> i32 {
    let started = Instant::now();
    let table = RouteTable::generate();
    let bytes = table.encode();
    let generate_ms = started.elapsed().as_millis();
    // Check what is about to be written before writing it.
    let decoded = RouteTable::decode(&bytes).expect("a freshly encoded route table should decode");
    assert!(decoded == table, "a freshly encoded route table should decode to itself");
    let crc = RouteHeader::read(&bytes).expect("a freshly encoded route table should have a header").crc.get();
    if let Err(e) = std::fs::write(out, &bytes) {
        eprintln!("cannot write {}: {e}", out.display());
        return 1;
    }
    let embedded = if bytes == ROUTE_BIN {
        "same as the table built into this binary"
    } else {
        "differs from the table built into this binary: rebuild to embed it"
    };
    println!(
        "wrote {}: {} bytes, {} moves ({BUCKET_COUNT} buckets, 1..={GROUP_COUNT_MAX} groups), crc32c {crc:#010x}, \
         generated in {generate_ms} ms ({embedded})",
        out.display(),
        bytes.len(),
        table.move_count(),
    );
    0
}
