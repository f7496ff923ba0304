//! Two PING responders on one core, for measuring what a network path costs per request: one
//! on glommio's sockets, one on this crate's io_uring network layer ([`crate::uring::net`], the
//! node's). Both answer RESP's `PING` with `+PONG`, so `redis-server` is measured beside them
//! by the same load generator (`strata-bench netpath`). They re-measure the choice of the node's
//! network path, made on the design brief's figures: on this VM a PING costs about 1.5x the CPU
//! on glommio's sockets that it costs on the node's loop (docs/bench.md).
//!
//! Each is written plainly, as a user of its runtime would: the glommio one runs a task per
//! connection that reads, answers and writes; the uring one answers in the network's receive
//! callback and leaves the sends to the turn's end.

use std::net::SocketAddr;
use std::rc::Rc;

/// The request both responders take (RESP's inline array form, as `redis-benchmark` and the
/// bench's generator send it).
pub const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
/// The answer to each.
pub const PONG: &[u8] = b"+PONG\r\n";

/// Answers every whole PING at the start of `input`; returns the bytes consumed, or what was
/// not a PING.
pub fn answer_pings(input: &[u8], out: &mut Vec<u8>) -> Result<usize, String> {
    let mut at = 0;
    while input.len() - at >= PING.len() {
        if &input[at..at + PING.len()] != PING {
            let end = (at + PING.len()).min(input.len());
            return Err(format!("not a PING: {:?}", String::from_utf8_lossy(&input[at..end])));
        }
        out.extend_from_slice(PONG);
        at += PING.len();
    }
    // A partial PING must be one's beginning.
    if !PING.starts_with(&input[at..]) {
        return Err(format!("not a PING: {:?}", String::from_utf8_lossy(&input[at..])));
    }
    Ok(at)
}

/// Which runtime answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Glommio,
    Uring,
}

/// Serves PINGs on `addr` from `cpu` until the process is killed.
pub fn serve(runtime: Runtime, addr: SocketAddr, cpu: usize) -> Result<(), String> {
    match runtime {
        Runtime::Glommio => serve_glommio(addr, cpu),
        Runtime::Uring => serve_uring(addr, cpu),
    }
}

fn serve_glommio(addr: SocketAddr, cpu: usize) -> Result<(), String> {
    use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
    let spec = crate::executor::ExecutorSpec {
        name: "echo-glommio".into(),
        cpu,
        io_memory_bytes: crate::executor::IO_MEMORY_BYTES_DEFAULT,
        spin_before_park: None,
    };
    crate::executor::run_pinned(&spec, move || async move {
        let listener = glommio::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        loop {
            let mut stream = listener.accept().await.map_err(|e| format!("accept failed: {e}"))?;
            let _ = stream.set_nodelay(true);
            glommio::spawn_local(async move {
                let mut input = vec![0u8; 16 << 10];
                let mut filled = 0;
                let mut out = Vec::with_capacity(4 << 10);
                loop {
                    let n = match stream.read(&mut input[filled..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    filled += n;
                    let Ok(used) = answer_pings(&input[..filled], &mut out) else { return };
                    input.copy_within(used..filled, 0);
                    filled -= used;
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
            })
            .detach();
        }
    })
    .map_err(|e| e.to_string())?
}

struct Pongs {
    net: std::cell::OnceCell<Rc<crate::uring::net::Net>>,
}

impl crate::uring::net::NetHandler for Pongs {
    fn accepted(&self, _conn: crate::uring::net::ConnId, _listener: usize) {}

    fn received(&self, conn: crate::uring::net::ConnId, input: &[u8]) -> usize {
        if input.len() < PING.len() {
            return 0;
        }
        let net = self.net.get().expect("set before listening");
        // Bytes that are not PINGs are dropped: the generator sends nothing else.
        let mut used = input.len();
        net.send_with(conn, |out| used = answer_pings(input, out).unwrap_or(input.len()));
        used
    }

    fn closed(&self, _conn: crate::uring::net::ConnId, _reason: &str) {}
}

fn serve_uring(addr: SocketAddr, cpu: usize) -> Result<(), String> {
    crate::uring::run_pinned("echo-uring", cpu, move || async move {
        let net = crate::uring::net::Net::install(crate::uring::net::NetLimits::default())
            .map_err(|e| format!("cannot set up the network: {e}"))?;
        let handler = Rc::new(Pongs { net: std::cell::OnceCell::new() });
        let _ = handler.net.set(net.clone());
        net.set_handler(handler);
        net.listen(addr, false).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        loop {
            crate::uring::sleep(std::time::Duration::from_secs(3600)).await;
        }
    })
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_pings_are_answered_and_a_partial_one_waits() {
        let mut out = Vec::new();
        let mut input = [PING, PING].concat();
        input.extend_from_slice(&PING[..5]);
        assert_eq!(answer_pings(&input, &mut out), Ok(2 * PING.len()));
        assert_eq!(out, [PONG, PONG].concat());
        out.clear();
        assert!(answer_pings(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", &mut out).is_err());
        assert!(answer_pings(b"GE", &mut out).is_err(), "a partial non-PING is refused at once");
        assert!(out.is_empty());
    }

    /// Both responders answer over TCP, several PINGs in one write and one split across writes.
    #[test]
    fn both_runtimes_answer_pings_over_tcp() {
        use std::io::{Read as _, Write as _};
        for runtime in [Runtime::Uring, Runtime::Glommio] {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            std::thread::spawn(move || serve(runtime, addr, 0));
            let start = std::time::Instant::now();
            let mut stream = loop {
                match std::net::TcpStream::connect(addr) {
                    Ok(stream) => break stream,
                    Err(e) => {
                        assert!(start.elapsed() < std::time::Duration::from_secs(10), "{runtime:?}: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
            };
            stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
            stream.write_all(&[PING, PING, &PING[..3]].concat()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            stream.write_all(&PING[3..]).unwrap();
            let mut got = vec![0u8; 3 * PONG.len()];
            stream.read_exact(&mut got).unwrap();
            assert_eq!(got, [PONG, PONG, PONG].concat(), "{runtime:?}");
        }
    }
}
