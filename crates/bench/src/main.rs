//! `beatlab-bench` (run as `beatlab bench ...`): every benchmark against its peer in one
//! invocation, with ratios. The peers are Python scripts in the checkout's `bench/` folder,
//! found from the current folder or from this binary's location (or `--peers DIR`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use beatlab::device::{self, DeviceChoice};
use beatlab_bench::mm::MmSize;
use beatlab_bench::{BenchOptions, Peer, Which};
use clap::Parser;

/// Speed against peers in one invocation, with ratios: Beat training (PyTorch), the multimodal
/// Qwen2 + LoRA step and SigLIP forward (PyTorch + transformers), registry
/// writes (MLflow's SQLite or PostgreSQL store), WFDB decoding (Python wfdb), ECG simulation (NeuroKit2),
/// `--where` filtering (the same filter in SQLite's SQL), LUDB delineation (NeuroKit2, ecgdeli).
/// `scripts/bench.sh` sets up the peers' Python environment.
///
/// Example: beatlab bench all --json > bench.json
#[derive(Debug, Parser)]
#[command(name = "beatlab bench", version)]
struct BenchArgs {
    /// beat, registry, wfdb, sim, query, mm, delineate or all.
    #[arg(default_value = "all", value_parser = clap::value_parser!(Which))]
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
    /// The folder of the peer scripts (default: `bench/` of the checkout around the current
    /// folder or around this binary).
    #[arg(long)]
    peers: Option<PathBuf>,
    /// Where Beat trains: cpu, cuda or cuda:N (the PyTorch peer uses the same).
    #[arg(long, default_value = "cpu", value_parser = clap::value_parser!(DeviceChoice))]
    device: DeviceChoice,
    /// Beat: windows per step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed rounds (median reported) for every benchmark; defaults: beat 5, registry 3, wfdb 5,
    /// sim 5, query 5, mm 3, delineate 1.
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
    /// Registry: both sides on this PostgreSQL server (`postgres://USER@HOST/DB`; each round
    /// makes fresh databases there and drops them) instead of SQLite files.
    #[arg(long, value_name = "ADDRESS")]
    registry: Option<String>,
    /// Query: runs in the registry the `--where` filter goes through.
    #[arg(long, default_value_t = 30_000)]
    query_runs: usize,
    /// Multimodal: quickstart (the quickstart's tiny backbone and vision tower), full
    /// (Qwen2.5-0.5B's and SigLIP so400m's shapes) or all.
    #[arg(long, default_value = "all", value_parser = ["quickstart", "full", "all"])]
    mm_size: String,
    /// WFDB and delineate: the records' root (default: BEATLAB_ECG_DATA or ../shared/data/ecg;
    /// delineate reads its `ludb/`).
    #[arg(long)]
    data: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Ours runs with the product binary's allocator and thread settings.
    beatlab::device::tune_cpu_runtime();
    let args = BenchArgs::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &BenchArgs) -> Result<()> {
    let repo = match &args.peers {
        Some(dir) => dir.parent().unwrap_or(Path::new(".")).to_path_buf(),
        None => find_checkout().context(
            "no bench/ folder with the peer scripts around the current folder or this binary \
             (run from the beatlab checkout, or pass --peers DIR)",
        )?,
    };
    let mut options = BenchOptions::for_repo(&repo);
    if args.no_peer {
        options.peer = None;
    } else if let Some(python) = &args.python {
        options.peer = Some(Peer {
            python: python.clone(),
            dir: repo.join("bench"),
        });
    }
    options.beat.device = device::resolve(args.device)?.device;
    options.beat.batch = args.batch;
    options.beat.steps = args.steps;
    options.beat.warmup = args.warmup;
    options.registry.steps = args.metric_steps;
    options.registry.batch = args.metric_batch;
    if let Some(address) = &args.registry {
        anyhow::ensure!(
            address.starts_with("postgres://") || address.starts_with("postgresql://"),
            "--registry {address}: expected a PostgreSQL server, postgres://USER@HOST/DB"
        );
        options.registry.postgres = Some(address.clone());
    }
    if let Some(rounds) = args.rounds {
        options.beat.rounds = rounds;
        options.registry.rounds = rounds;
        options.wfdb.rounds = rounds;
        options.sim.rounds = rounds;
        options.query.rounds = rounds;
        options.mm.rounds = rounds;
        options.delineate.rounds = rounds;
    }
    options.mm.sizes = match args.mm_size.as_str() {
        "quickstart" => vec![MmSize::Quickstart],
        "full" => vec![MmSize::Full],
        _ => vec![MmSize::Quickstart, MmSize::Full],
    };
    options.query.runs = args.query_runs;
    if let Some(data) = &args.data {
        options.wfdb.root = data.clone();
        options.delineate.root = data.join("ludb");
    }
    let report = beatlab_bench::run(args.which, &options, &mut |line| eprintln!("{line}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// The nearest folder holding `bench/beat_torch.py`: the current folder or one above it, else
/// one above this binary (`target/release/beatlab-bench` sits two below the checkout).
fn find_checkout() -> Option<PathBuf> {
    let starts = [
        std::env::current_dir().ok(),
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.canonicalize().ok()),
    ];
    starts.into_iter().flatten().find_map(|start| {
        start
            .ancestors()
            .find(|dir| dir.join("bench/beat_torch.py").is_file())
            .map(Path::to_path_buf)
    })
}
