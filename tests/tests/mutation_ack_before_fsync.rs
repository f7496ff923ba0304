//! Mutation check: a deliberately broken engine that acknowledges a batch after its write but
//! before its fdatasync completes must be caught by the simulation (an acknowledged or seen
//! write lost at a crash). If this test fails, the simulation has gone blind.

use strata_node::Mutation;
use strata_tests::wal_sim::{SimConfig, Violation, run_seed};

/// Runs 400 seeds with `mutation` and returns the violations the simulation found, printing
/// how many and the first three.
fn caught(mutation: Mutation) -> Vec<Violation> {
    let config = SimConfig { mutation: Some(mutation), ..SimConfig::default() };
    let caught: Vec<Violation> = (0..400).filter_map(|seed| run_seed(seed, &config).err()).collect();
    println!("the simulation caught {mutation:?} on {} of 400 seeds", caught.len());
    for violation in caught.iter().take(3) {
        println!("  {violation}");
    }
    caught
}

#[test]
fn simulation_catches_ack_before_fsync() {
    assert!(
        !caught(Mutation::AckBeforeFsync).is_empty(),
        "acknowledging before fdatasync went unnoticed over 400 seeds"
    );
}

#[test]
fn simulation_passes_the_same_seeds_without_the_mutation() {
    for seed in 0..100 {
        if let Err(violation) = run_seed(seed, &SimConfig::default()) {
            panic!("{violation}");
        }
    }
}

/// A sinker that commits its manifest edit before its cold files are synced must be caught: a
/// crash loses blocks the links point at, and an acknowledged write reads back as damaged.
#[test]
fn simulation_catches_a_sink_committed_before_its_files_are_synced() {
    assert!(
        !caught(Mutation::SinkSkipsFsync).is_empty(),
        "a sink committed before its fdatasync went unnoticed over 400 seeds"
    );
}
