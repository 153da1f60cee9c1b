//! Runs the benchmarks of `src/bench` against their Python peers and prints the ratios: the
//! stand-in for `beatlab bench` until the CLI is wired to the library module.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release --example bench -- [beat|registry|wfdb|all] [--json]
//! [--device cpu|cuda[:N]] [--no-peer] [--python PATH] [--batch N] [--rounds N] ...`
//! (`--help` lists every option). The peers run with `bench/.venv/bin/python`, which
//! `scripts/bench.sh` creates.

// The module is compiled into this example directly (it is not yet declared in the library);
// these re-exports give it the `crate::` paths it has inside the library.
pub use beatlab::{device, registry};

#[path = "../src/bench/mod.rs"]
#[allow(dead_code)]
mod bench;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use bench::{BenchOptions, Peer, Which};

/// Speed against peers: Beat training (PyTorch), registry writes (MLflow), WFDB decoding
/// (Python wfdb).
#[derive(Parser, Debug)]
struct Args {
    /// beat, registry, wfdb or all.
    #[arg(default_value = "all")]
    which: Which,
    /// Print the report as JSON on standard output.
    #[arg(long)]
    json: bool,
    /// Measure ours only (no peer, no ratio).
    #[arg(long)]
    no_peer: bool,
    /// Python interpreter for the peers (default: bench/.venv/bin/python, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Where Beat trains: cpu, cuda or cuda:N (the PyTorch peer uses the same).
    #[arg(long, default_value = "cpu")]
    device: device::DeviceChoice,
    /// Beat: windows per step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed rounds (median reported) for every benchmark; defaults: beat 5, registry 3, wfdb 5.
    #[arg(long)]
    rounds: Option<usize>,
    /// Beat: training steps per timed round.
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Beat: untimed warm-up steps.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Registry: metric steps per run (runs x keys x steps points).
    #[arg(long, default_value_t = 2000)]
    metric_steps: usize,
    /// Registry: points per write (the runner's Tracker flushes every 512).
    #[arg(long, default_value_t = 512)]
    metric_batch: usize,
    /// WFDB: the records' root (default: BEATLAB_ECG_DATA or ../shared/data/ecg).
    #[arg(long)]
    data: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut options = BenchOptions::for_repo(&repo);
    if args.no_peer {
        options.peer = None;
    } else if let Some(python) = args.python {
        options.peer = Some(Peer {
            python,
            dir: repo.join("bench"),
        });
    }
    let resolved = match device::resolve(args.device) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    options.beat.device = resolved.device;
    options.beat.batch = args.batch;
    options.beat.steps = args.steps;
    options.beat.warmup = args.warmup;
    options.registry.steps = args.metric_steps;
    options.registry.batch = args.metric_batch;
    if let Some(rounds) = args.rounds {
        options.beat.rounds = rounds;
        options.registry.rounds = rounds;
        options.wfdb.rounds = rounds;
    }
    if let Some(data) = args.data {
        options.wfdb.root = data;
    }
    match bench::run(args.which, &options, &mut |line| eprintln!("{line}")) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{report}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
