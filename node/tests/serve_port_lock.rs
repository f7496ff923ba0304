//! Two nodes started at the same moment on one port: exactly one serves, the other exits 1
//! naming the holder. The shards share the port with SO_REUSEPORT, so without the port lock
//! both could pass the check for a listener and split the clients between them.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use strata_node::client::Client;

const RACES: usize = 5;

fn spawn(data: &std::path::Path, listen: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--data-dir", data.to_str().unwrap(), "--shards", "1", "--status-listen", ""])
        .args(["--listen", listen, "--shard-port-base", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the strata binary starts")
}

#[test]
fn of_two_nodes_started_together_on_one_port_one_serves() {
    let dir = tempfile::tempdir().unwrap();
    for race in 0..RACES {
        let listen = format!("127.0.0.1:{}", common::free_ports(1));
        let mut nodes = [dir.path().join(format!("a{race}")), dir.path().join(format!("b{race}"))]
            .map(|data| Some(spawn(&data, &listen)));
        // Wait for one to give up; the other must then serve.
        let started = Instant::now();
        let (loser, stderr) = loop {
            if let Some(i) = (0..2).find(|&i| nodes[i].as_mut().unwrap().try_wait().unwrap().is_some()) {
                let output = nodes[i].take().unwrap().wait_with_output().unwrap();
                break (i, output);
            }
            assert!(started.elapsed() < Duration::from_secs(30), "race {race}: neither node gave up the port");
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut winner = nodes[1 - loser].take().unwrap();
        let text = String::from_utf8_lossy(&stderr.stderr);
        assert_eq!(stderr.status.code(), Some(1), "race {race}: {text}");
        assert!(
            text.contains(&format!("cannot listen on {listen}: another strata node (pid {}) holds port", winner.id())),
            "race {race}: {text}"
        );
        let addr = listen.parse().unwrap();
        let started = Instant::now();
        while !Client::connect(addr).is_ok_and(|mut c| c.ping().is_ok()) {
            assert!(winner.try_wait().unwrap().is_none(), "race {race}: the winner stopped too");
            assert!(started.elapsed() < Duration::from_secs(30), "race {race}: the winner did not serve");
            std::thread::sleep(Duration::from_millis(10));
        }
        Command::new("kill").args(["-TERM", &winner.id().to_string()]).status().unwrap();
        assert_eq!(winner.wait().unwrap().code(), Some(0));
        println!("race {race}: node {} served, node {loser} exited 1 naming it", 1 - loser);
    }
}
