//! Simulated scenarios: random schedules of edits, bursts, cuts, stalls,
//! offline periods, server restarts and clock jumps over 1–20 clients and
//! 1–5 documents. Every scenario must converge with every outbox
//! acknowledged, no busy loop, no oversized frame or queue, and no error.
//!
//! - `SIM_SEEDS=N` runs N scenarios (CI: 2,000) and prints scenarios/s;
//!   `SIM_SECONDS=S` runs for S seconds instead (long campaigns outside CI);
//!   `SIM_FIRST_SEED` moves the range.
//! - `SIM_SEED=S` replays one scenario (printed on failure).

use std::time::Instant;

use crdt_socket_sync::sim::{SimConfig, SimStats, config_for_seed, run_random};
use crdt_socket_sync::testing::OpLog;

fn steps_for(seed: u64) -> usize {
    20 + (seed % 7) as usize * 20
}

fn run(seed: u64) -> SimStats {
    match run_random::<OpLog>(config_for_seed(seed), steps_for(seed)) {
        Ok(stats) => stats,
        Err(f) => panic!("{f}"),
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
    // `SIM_SECONDS=S`: run seeds from `first` on until S seconds passed.
    let budget = std::env::var("SIM_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_secs);
    let count = if budget.is_some() {
        u64::MAX - first
    } else {
        count
    };
    let start = Instant::now();
    let mut total = SimStats::default();
    let mut done = 0u64;
    for seed in first..first + count {
        if budget.is_some_and(|b| start.elapsed() >= b) {
            break;
        }
        done += 1;
        let s = run(seed);
        total.steps += s.steps;
        total.edits += s.edits;
        total.backpressured += s.backpressured;
        total.cuts += s.cuts;
        total.restarts += s.restarts;
        total.connects += s.connects;
        total.bytes += s.bytes;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{done} scenarios (seeds {first}..{}) in {secs:.1} s: {:.0} scenarios/s; {total:?}",
        first + done,
        done as f64 / secs
    );
    // The scenarios really exercise faults.
    assert!(total.cuts > done / 2 && total.restarts > done / 20);
}

#[test]
fn replay() {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|v| v.parse().ok()) {
        println!("{:?}", run(seed));
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

/// The same scenarios with real yrs documents (fewer: yrs is heavier).
#[cfg(feature = "yrs")]
#[test]
fn random_scenarios_with_yrs_documents() {
    use crdt_socket_sync::adapters::yrs::YrsDocument;
    let count: u64 = std::env::var("SIM_YRS_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    for seed in 0..count {
        if let Err(f) = run_random::<YrsDocument>(config_for_seed(seed), steps_for(seed)) {
            panic!("yrs {f}");
        }
    }
}
