//! Simulator throughput: records per second for 10 s, 500 Hz, 12-lead records with the default
//! condition mix and noise, on one thread.
//!
//! `cargo run -p beatlab-ecg --release --example sim_bench [-- N]` (N records, default 2000).

use std::hint::black_box;
use std::time::Instant;

use beatlab_ecg::synthetic::{SimConfig, generate};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N must be a positive integer"))
        .unwrap_or(2000);
    let cfg = SimConfig::default();
    // Warm-up (page faults, caches) so the timed run measures steady state.
    black_box(generate(&cfg, 50, 1));

    let mut best = f64::INFINITY;
    let mut samples = 0usize;
    for round in 0..3u64 {
        let start = Instant::now();
        let records = black_box(generate(&cfg, n, 100 + round));
        let secs = start.elapsed().as_secs_f64();
        samples = records.iter().map(|r| r.len() * r.signals.len()).sum();
        best = best.min(secs);
    }
    println!(
        "simulated {n} records ({:.1} s, {} Hz, 12 leads; {samples} samples per round)",
        cfg.duration_s, cfg.fs
    );
    println!(
        "best of 3: {best:.3} s -> {:.0} records/s ({:.1} us per record), single thread",
        n as f64 / best,
        best / n as f64 * 1e6
    );
}
