//! Command-line arguments (clap derive). Parsing and validation only: no file is read here.

use std::path::PathBuf;

use beatlab::device::DeviceChoice;
use beatlab::registry::RunStatus;
use beatlab::table::Format;
use clap::{Args, Parser, Subcommand};

/// Declarative experiments for multimodal ECG language models (HeartcareGPT, GEM, anyECG-chat).
#[derive(Debug, Parser)]
#[command(name = "beatlab", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Run registry: a SQLite file (a path or sqlite://PATH) on a local disk, or a PostgreSQL
    /// database (postgres://user@host/db) when several machines share it.
    #[arg(
        long,
        global = true,
        env = "BEATLAB_REGISTRY",
        default_value = "registry/beatlab.db"
    )]
    pub registry: PathBuf,
    /// Folder of run folders (`<runs-dir>/<experiment>/<run-id>/`) and the data cache.
    #[arg(long, global = true, env = "BEATLAB_RUNS_DIR", default_value = "runs")]
    pub runs_dir: PathBuf,
    /// No progress output (results and errors are still printed).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Most cells a command expands a sweep into; a larger grid is an error (exit 2).
    /// `plan --count` counts any grid without expanding it.
    #[arg(
        long,
        global = true,
        env = "BEATLAB_MAX_CELLS",
        default_value_t = beatlab::spec::DEFAULT_MAX_CELLS,
        value_parser = clap::value_parser!(u64).range(1..),
    )]
    pub max_cells: u64,
}

/// Spec file plus overrides, shared by the commands that read a spec.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Experiment spec (TOML).
    pub file: PathBuf,
    /// Override a field: `--set beat.codebook_size=1024`, `--set stage.beat.epochs=3`
    /// (repeatable; typed by the schema; pins a swept key to one value).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

/// Options of commands that train.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Where to train: auto (GPU if available, else CPU), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto", value_parser = clap::value_parser!(DeviceChoice))]
    pub device: DeviceChoice,
    /// Run cells again even if they already finished.
    #[arg(long)]
    pub force: bool,
    /// Run failed cells again.
    #[arg(long)]
    pub rerun_failed: bool,
    /// Seconds without a heartbeat after which a running cell is stale and taken over (a
    /// holder on this host whose process is gone is taken over at once).
    #[arg(long, default_value_t = 60.0, value_parser = parse_lease)]
    pub lease: f64,
    /// A run that failed this many times (an error, a panic, or a worker that died while
    /// holding it) is marked failed and not taken again (--rerun-failed starts it anew).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_failures: u32,
    /// When the only cells left are held by other live workers, exit (code 1, naming them)
    /// instead of waiting until they finish or their lease expires.
    #[arg(long)]
    pub no_wait: bool,
}

/// Longest lease accepted: a week. A holder that dies is noticed only after its lease, and the
/// heartbeat period (a quarter of it) must be a representable duration.
pub const MAX_LEASE_S: f64 = 7.0 * 24.0 * 3600.0;

fn parse_lease(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.2..=MAX_LEASE_S).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{s}`: expected seconds from 0.2 to {MAX_LEASE_S} (a week)"
        )),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every cell of a spec that has no finished run, then print its table.
    ///
    /// Example: beatlab run experiments/quickstart.toml --set stage.beat.epochs=2
    Run {
        #[command(flatten)]
        spec: SpecArgs,
        #[command(flatten)]
        train: TrainArgs,
    },
    /// Print the cells of a spec, their hashes, overrides and registry status, without running.
    ///
    /// Example: beatlab plan experiments/table18_beat.toml --json
    Plan {
        #[command(flatten)]
        spec: SpecArgs,
        /// JSON array: one object per cell with `hash`, `status`, `overrides`.
        #[arg(long)]
        json: bool,
        /// Print only the number of cells, counted without expanding the grid (any size).
        #[arg(long, conflicts_with = "json")]
        count: bool,
    },
    /// Run a spec's cells with several workers (other processes may join the same sweep).
    ///
    /// Example: beatlab sweep experiments/table18_beat.toml --workers 2
    Sweep {
        #[command(flatten)]
        spec: SpecArgs,
        #[command(flatten)]
        train: TrainArgs,
        /// Worker threads in this process, each claiming cells from the registry.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
        workers: u32,
        /// Where the workers run: threads of this process, or the tasks of a Slurm job array
        /// (one sbatch script, submitted with sbatch; see README "Running on a cluster").
        #[arg(long, value_enum, default_value = "local")]
        launcher: beatlab::launch::Launcher,
        #[command(flatten)]
        slurm: beatlab::launch::slurm::SlurmArgs,
    },
    /// An experiment's cells by status: which worker and Slurm job/array task holds each
    /// running one and its last heartbeat, from the registry alone.
    ///
    /// Example: beatlab --registry postgres://beatlab@db/beatlab status table18_beat
    Status {
        /// Experiment name (as in the spec's `[experiment] name`).
        experiment: String,
        /// List finished cells too.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// One worker pulling cells of a spec from a shared registry (for cluster job arrays).
    ///
    /// Example: BEATLAB_REGISTRY=postgres://beatlab@dbhost/beatlab beatlab worker experiments/table18_beat.toml
    Worker {
        #[command(flatten)]
        spec: SpecArgs,
        #[command(flatten)]
        train: TrainArgs,
    },
    /// Render a spec's table from the registry, with the paper's values and deltas.
    ///
    /// Example: beatlab table experiments/table18_beat.toml --format latex
    Table {
        #[command(flatten)]
        spec: SpecArgs,
        #[arg(long, value_enum, default_value = "md")]
        format: Format,
    },
    /// Write an HTML report of an experiment: its table beside the paper's values, bar charts
    /// and parallel coordinates of its metrics, training curves, codebook use, ECG windows,
    /// closed-QA answers, generations and every cell's run, from the registry and the run folders.
    ///
    /// Example: beatlab report quickstart -o reports/quickstart --open
    Report {
        /// Experiment name (a file in experiments/) or a path to a spec.
        name: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Output folder for index.html and its plots (default: reports/<experiment>).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Only runs matching EXPR (as `beatlab runs --where`); cells without one are left out.
        #[arg(long = "where", value_name = "EXPR")]
        filter: Option<String>,
        /// The metric of the sweep's parallel-coordinates plot (default: the first table
        /// metric a run has), e.g. `eval/accuracy`.
        #[arg(long, value_name = "KEY")]
        metric: Option<String>,
        /// Open the page in the desktop's browser (xdg-open) when it is written.
        #[arg(long)]
        open: bool,
    },
    /// Run the missing cells of `experiments/NAME.toml`, then print its table.
    ///
    /// Example: beatlab reproduce table18_beat_fast
    Reproduce {
        /// Experiment name (a file in experiments/) or a path to a spec.
        name: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        #[command(flatten)]
        train: TrainArgs,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
        workers: u32,
        #[arg(long, value_enum, default_value = "md")]
        format: Format,
    },
    /// List runs.
    ///
    /// Example: beatlab runs --where 'beat.codebook_size = 512 and (eval/accuracy > 0.7 or status = failed)'
    Runs {
        #[arg(long)]
        status: Option<RunStatusArg>,
        #[arg(long)]
        experiment: Option<String>,
        /// Only runs matching EXPR: comparisons (= != < <= > >=) of run columns (`status`,
        /// `experiment`, `seed`, ...), summaries (`eval/accuracy`) and spec fields
        /// (`beat.codebook_size`), combined with and, or, not and parentheses.
        #[arg(long = "where", value_name = "EXPR")]
        filter: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one run: status, spec overrides, summaries, last metrics, checkpoints.
    ///
    /// Example: beatlab show 3f2a9c1b0d-1
    Show {
        /// Run id or a unique prefix of it.
        run: String,
        #[arg(long)]
        json: bool,
    },
    /// Compare two runs: the spec fields that differ and their summaries side by side.
    ///
    /// Example: beatlab compare 3f2a9c1b0d-1 77aa01c2e4-1
    Compare { a: String, b: String },
    /// Continue a failed, stale or interrupted run from its last checkpoint.
    ///
    /// Example: beatlab resume 3f2a9c1b0d-1
    Resume {
        run: String,
        #[arg(long, default_value = "auto", value_parser = clap::value_parser!(DeviceChoice))]
        device: DeviceChoice,
        #[arg(long, default_value_t = 60.0, value_parser = parse_lease)]
        lease: f64,
    },
    /// ECG data tools.
    #[command(subcommand)]
    Data(DataCommand),
    /// Registry maintenance: backup, integrity check, schema upgrade.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Speed against peers in one invocation, with ratios: Beat training (PyTorch), registry
    /// writes (MLflow's SQLite store), WFDB decoding (Python wfdb), ECG simulation (NeuroKit2).
    /// `scripts/bench.sh` sets up the peers' Python environment. The benchmarks are their own
    /// binary, `beatlab-bench` (built beside this one by scripts/bench.sh, or `cargo build
    /// --release -p beatlab-bench`); this command runs it with the arguments given.
    ///
    /// Example: beatlab bench all --json > bench.json
    #[command(disable_help_flag = true)]
    Bench {
        /// Arguments for beatlab-bench (`beatlab bench --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Train one Beat cell (the paper configuration) for a fixed number of steps on the CPU and
    /// on DEVICE from the same weights and windows, and compare the losses step by step; exit
    /// code 1 when the last step's relative difference is not under the tolerance.
    ///
    /// Example: scripts/run-on-gpu.sh parity --device cuda
    Parity(ParityArgs),
    /// Print the spec reference (every field, its type, default and meaning) as Markdown.
    ///
    /// Example: beatlab reference > docs/spec.md
    Reference,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Load and verify every record under ROOT; print counts of records, leads, rates, labels.
    ///
    /// Example: beatlab data check ../shared/data/ecg --json
    Check {
        root: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Draw a record as a printed 12-lead ECG (red millimetre grid, 25 mm/s, 10 mm/mV) to PNG.
    ///
    /// Example: beatlab data render ../shared/data/ecg/ludb/data/1 -o ludb1.png --layout 3x4
    Render {
        /// A WFDB record: its `.hea` file or its path without extension.
        record: PathBuf,
        /// The PNG to write.
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "6x2")]
        layout: LayoutArg,
        /// Pixels per millimetre of paper (the image size follows from the layout).
        #[arg(long, default_value_t = 8.0)]
        px_per_mm: f32,
    },
    /// Delineate a WFDB record (P, QRS and T onsets, peaks and offsets per lead and beat) and
    /// print its intervals, amplitudes, ST levels and axis; --json adds every wave and beat.
    ///
    /// Example: beatlab data delineate ../shared/data/ecg/ludb/data/1 --json
    Delineate {
        /// A WFDB record: its `.hea` file or its path without extension.
        record: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Delineate and measure every record under ROOT (per-beat tables and medians per lead).
    ///
    /// Example: beatlab data measure ../shared/data/ecg/ludb --json
    Measure {
        root: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Score the delineator against the cardiologists' annotations of every lead of a LUDB
    /// root (±150 ms; sensitivity, PPV, mean ± SD error per onset and offset).
    ///
    /// Example: beatlab data score-delineation ../shared/data/ecg/ludb
    ScoreDelineation {
        root: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Read a long WFDB record and its beat annotations (MIT-BIH style): how it cuts into
    /// chunks and its abnormal segments (runs of non-normal beats) as anyECG-chat's
    /// localization answer ("Duration: 1.9s-3.1s, ...").
    ///
    /// Example: beatlab data localize mitdb/100 --annotator atr --json
    Localize {
        /// A WFDB record: its `.hea` file or its path without extension.
        record: PathBuf,
        /// Extension of the annotation file beside the record.
        #[arg(long, default_value = "atr")]
        annotator: String,
        /// Chunk length in seconds.
        #[arg(long, default_value_t = 10.0)]
        chunk_s: f64,
        #[arg(long)]
        json: bool,
    },
    /// Build a spec's instruction data (the Heartcare item format) and write it as JSONL.
    ///
    /// Example: beatlab data build-instructions experiments/pipeline_ablation.toml -o items.jsonl
    BuildInstructions {
        #[command(flatten)]
        spec: SpecArgs,
        /// The JSONL file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Also write the warm-up's captioning items.
        #[arg(long)]
        captions: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Write a consistent copy of a SQLite registry to FILE while workers may keep writing
    /// (SQLite's online backup API; the registry is opened read-only).
    ///
    /// Example: beatlab registry backup backups/beatlab-$(date +%F).db
    Backup {
        /// The copy to write (replaced atomically if it exists).
        file: PathBuf,
    },
    /// Check the registry: the database's own integrity check, foreign keys, metric points of
    /// unknown runs, checkpoint files missing or of the wrong size; exit code 1 if anything is
    /// wrong.
    ///
    /// Example: beatlab registry check --json
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Bring the registry's schema up to date (what any command that trains also does).
    ///
    /// Example: beatlab --registry postgres://beatlab@db/beatlab registry migrate
    Migrate,
}

/// Printed-ECG layouts.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LayoutArg {
    #[value(name = "6x2")]
    SixByTwo,
    #[value(name = "3x4")]
    ThreeByFour,
}

/// `--status` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RunStatusArg {
    Pending,
    Running,
    Finished,
    Failed,
    Stale,
}

impl From<RunStatusArg> for RunStatus {
    fn from(s: RunStatusArg) -> Self {
        match s {
            RunStatusArg::Pending => RunStatus::Pending,
            RunStatusArg::Running => RunStatus::Running,
            RunStatusArg::Finished => RunStatus::Finished,
            RunStatusArg::Failed => RunStatus::Failed,
            RunStatusArg::Stale => RunStatus::Stale,
        }
    }
}

/// `beatlab parity` options.
#[derive(Debug, Args)]
pub struct ParityArgs {
    /// The device compared with the CPU: cuda, cuda:N (or cpu, a self-check).
    #[arg(long, default_value = "cuda", value_parser = clap::value_parser!(DeviceChoice))]
    pub device: DeviceChoice,
    /// Training steps on each side.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Seeds the weights and the windows.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Largest relative difference of the last step's loss that counts as agreement (f32).
    #[arg(long, default_value_t = 1e-3)]
    pub tolerance: f64,
    /// Print the report as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}
