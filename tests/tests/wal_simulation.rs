//! The WAL simulation over many seeds (a custom harness, so it takes its own arguments):
//!
//! ```text
//! cargo test -p strata-tests --test wal_simulation                     # 2,000 seeds (default run)
//! cargo test -p strata-tests --test wal_simulation -- --seeds 100000   # a longer run
//! cargo test -p strata-tests --test wal_simulation -- --seed 1234      # replay one seed
//! ```
//!
//! Every seed prints the faults it actually hit. A failing seed prints how to replay it.

use std::time::Instant;
use strata_tests::wal_sim::{SimConfig, run_seed};

fn arg_value(args: &[String], name: &str) -> Option<u64> {
    let at = args.iter().position(|a| a == name)?;
    let value = args.get(at + 1).unwrap_or_else(|| panic!("{name} needs a value"));
    Some(value.parse().unwrap_or_else(|_| panic!("{name} takes a number, got {value}")))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let config = SimConfig { ops_min: arg_value(&args, "--ops").unwrap_or(1000), ..SimConfig::default() };
    let (first, count) = match arg_value(&args, "--seed") {
        Some(seed) => (seed, 1),
        None => (arg_value(&args, "--first-seed").unwrap_or(0), arg_value(&args, "--seeds").unwrap_or(2000)),
    };
    let threads = arg_value(&args, "--threads").unwrap_or(2).max(1);
    println!(
        "wal simulation: seeds {first}..{} ({count}), at least {} ops and {} crash per seed",
        first + count,
        config.ops_min,
        config.crashes_min
    );
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let mut results = Vec::new();
                let mut seed = first + t;
                while seed < first + count {
                    let result = run_seed(seed, &config);
                    match &result {
                        Ok(report) => println!("{report}"),
                        Err(violation) => println!("{violation}"),
                    }
                    results.push(result);
                    seed += threads;
                }
                results
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().flat_map(|h| h.join().expect("a simulation thread panicked")).collect();
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let ops: u64 = results.iter().filter_map(|r| r.as_ref().ok()).map(|r| r.ops).sum();
    let crashes: u64 = results.iter().filter_map(|r| r.as_ref().ok()).map(|r| r.crashes).sum();
    println!(
        "wal simulation: {} seeds, {ops} ops, {crashes} crashes in {:.1}s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    for violation in &failed {
        println!("{violation}");
    }
    println!("{} passed, {} failed", results.len() - failed.len(), failed.len());
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
