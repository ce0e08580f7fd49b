//! Simulated scenarios: random schedules of edits, bursts, cuts, stalls,
//! offline periods, server restarts and clock jumps over 1–20 clients and
//! 1–5 documents. Every scenario must converge with every outbox
//! acknowledged, no busy loop, no oversized frame or queue, and no error.
//!
//! - `SIM_SEEDS=N` runs N scenarios (CI: a fixed range) and prints
//!   scenarios/s, for long campaigns outside CI.
//! - `SIM_SEED=S` replays one scenario (printed on failure).

use std::time::Instant;

use crdt_socket_sync::sim::{SimConfig, config_for_seed, run_random};
use crdt_socket_sync::testing::OpLog;

fn steps_for(seed: u64) -> usize {
    20 + (seed % 7) as usize * 20
}

fn run(seed: u64) {
    if let Err(f) = run_random::<OpLog>(config_for_seed(seed), steps_for(seed)) {
        panic!("{f}");
    }
}

#[test]
fn many_random_scenarios() {
    let count: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let first: u64 = std::env::var("SIM_FIRST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let start = Instant::now();
    for seed in first..first + count {
        run(seed);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{count} scenarios in {secs:.1} s: {:.0} scenarios/s",
        count as f64 / secs
    );
}

#[test]
fn replay() {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|v| v.parse().ok()) {
        run(seed);
    }
}

#[test]
fn a_plain_scenario_converges() {
    let stats = run_random::<OpLog>(
        SimConfig {
            clients: 4,
            docs: 2,
            seed: 1,
            ..SimConfig::default()
        },
        200,
    )
    .unwrap();
    assert!(stats.edits > 50);
}
