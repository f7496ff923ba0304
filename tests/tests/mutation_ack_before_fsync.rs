//! Mutation check: a deliberately broken engine that acknowledges a batch after its write but
//! before its fdatasync completes must be caught by the simulation (an acknowledged or seen
//! write lost at a crash). If this test fails, the simulation has gone blind.

use strata_node::Mutation;
use strata_tests::wal_sim::{SimConfig, run_seed};

#[test]
fn simulation_catches_ack_before_fsync() {
    let config = SimConfig { mutation: Some(Mutation::AckBeforeFsync), ..SimConfig::default() };
    let mut caught = Vec::new();
    for seed in 0..400 {
        if let Err(violation) = run_seed(seed, &config) {
            caught.push(violation);
        }
    }
    println!("the simulation caught the mutation on {} of 400 seeds", caught.len());
    for violation in caught.iter().take(3) {
        println!("  {violation}");
    }
    assert!(!caught.is_empty(), "acknowledging before fdatasync went unnoticed over 400 seeds");
}

#[test]
fn simulation_passes_the_same_seeds_without_the_mutation() {
    for seed in 0..100 {
        if let Err(violation) = run_seed(seed, &SimConfig::default()) {
            panic!("{violation}");
        }
    }
}
