//! The benchmarks of `beatlab bench` (the `beatlab-bench` binary): speed against peers,
//! measured in one invocation and printed as a ratio. They live outside the product library:
//! the peers are Python scripts in the checkout's `bench/`, which the shipped binary never needs.
//!
//! Each benchmark measures our implementation, then runs its Python peer (a script in `bench/`,
//! run by the interpreter of `bench/.venv`) on the same work, and reports both figures and
//! `ours / peer`:
//! - [`beat`]: Beat training windows per second at the paper configuration, against PyTorch,
//!   with achieved FLOP/s over the machine's measured matrix-product peak;
//! - [`registry`]: metric points written per second by [`beatlab::registry::Registry`], against
//!   MLflow's tracking store (SQLite, or the same PostgreSQL server);
//! - [`wfdb`]: WFDB records decoded per second, against the Python `wfdb` package;
//! - [`sim`]: 12-lead records simulated per second by the built-in ECG simulator, against
//!   NeuroKit2's `ecg_simulate(method="multileads")`;
//! - [`delineate`]: LUDB records delineated per second, against NeuroKit2's `dwt` delineator
//!   and `ecgdeli`, all three scored against the cardiologists' annotations.
//!
//! Every figure is a median over several timed rounds after untimed warm-up. Wall-clock rates
//! are the headline; rates per CPU-second (user + system time of the process, all threads) are
//! reported beside them because on a shared machine the wall clock also counts the time other
//! processes held the cores. Speed is only ever measured here, never asserted by a test.

pub mod beat;
pub mod delineate;
pub mod mm;
pub mod query;
pub mod registry;
pub mod sim;
pub mod wfdb;

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why a benchmark could not produce its figures.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The Beat model could not be built or run.
    #[error("Beat benchmark: {0}")]
    Beat(#[from] beatlab_nn::BeatError),
    /// A multimodal model part (backbone, LoRA, projector, vision tower) failed.
    #[error("multimodal benchmark: {0}")]
    Model(Box<beatlab_mm::MmError>),
    /// The product's Beat training step failed.
    #[error("Beat benchmark: {0}")]
    Training(Box<beatlab::runner::StageError>),
    /// A tensor operation failed (matrix-product peak, window generation, backward pass).
    #[error("tensor operation: {0}")]
    Candle(#[from] candle_core::Error),
    /// The optimiser rejected its configuration or failed a step.
    #[error("optimiser: {0}")]
    Optim(#[from] beatlab_nn::optim::OptimError),
    /// The registry under test failed.
    #[error("registry benchmark: {0}")]
    Registry(#[from] beatlab::registry::RegistryError),
    /// A record of the data set failed to decode or verify.
    #[error("WFDB benchmark: {0}")]
    Data(#[from] beatlab_ecg::DataError),
    /// The data folder holds no WFDB header (`*.hea`).
    #[error("no WFDB records (*.hea) under {}", root.display())]
    NoRecords {
        /// The folder searched.
        root: PathBuf,
    },
    /// A file or folder the benchmark needs could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`create scratch folder`, `list`).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The PostgreSQL server of `bench registry --registry` refused a scratch database
    /// statement (`CREATE DATABASE`, `DROP DATABASE`) or could not be reached.
    #[error("PostgreSQL server of the registry benchmark: {statement}: {message}")]
    ScratchDatabase {
        /// The statement.
        statement: String,
        /// The server's or the connection's error.
        message: String,
    },
    /// The peer's interpreter could not be started.
    #[error(
        "cannot start the peer {script} with {}: {source} (run scripts/bench.sh once to create bench/.venv with the peers)",
        python.display()
    )]
    PeerStart {
        /// The interpreter.
        python: PathBuf,
        /// The peer script.
        script: String,
        #[source]
        source: std::io::Error,
    },
    /// The peer ran but exited with an error.
    #[error("peer {script} failed ({status}): {stderr_tail}")]
    PeerFailed {
        /// The peer script.
        script: String,
        /// Its exit status.
        status: String,
        /// The last lines of its standard error.
        stderr_tail: String,
    },
    /// The peer's last output line is not the JSON object expected.
    #[error("peer {script} printed no usable result: {reason}")]
    PeerOutput {
        /// The peer script.
        script: String,
        /// What was wrong with its output.
        reason: String,
    },
    /// Ours and the peer did not do the same work (e.g. different parameter counts or decoded
    /// values), so their speeds cannot be compared.
    #[error("{benchmark}: ours and the peer disagree: {what}")]
    Mismatch {
        /// The benchmark.
        benchmark: &'static str,
        /// What differs, with both values.
        what: String,
    },
}

impl From<beatlab_lm::LmError> for BenchError {
    fn from(e: beatlab_lm::LmError) -> Self {
        Self::Model(Box::new(e.into()))
    }
}

impl From<beatlab_mm::MmError> for BenchError {
    fn from(e: beatlab_mm::MmError) -> Self {
        Self::Model(Box::new(e))
    }
}

impl From<beatlab::runner::StageError> for BenchError {
    fn from(e: beatlab::runner::StageError) -> Self {
        Self::Training(Box::new(e))
    }
}

/// Which benchmarks to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Beat,
    Registry,
    Wfdb,
    Sim,
    Query,
    Mm,
    Delineate,
    All,
}

impl Which {
    /// Every choice with its name on the command line.
    pub const NAMES: [(Which, &'static str); 8] = [
        (Which::Beat, "beat"),
        (Which::Registry, "registry"),
        (Which::Wfdb, "wfdb"),
        (Which::Sim, "sim"),
        (Which::Query, "query"),
        (Which::Mm, "mm"),
        (Which::Delineate, "delineate"),
        (Which::All, "all"),
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(w, _)| *w == self)
            .map_or("all", |(_, n)| n)
    }

    /// Whether a run of `self` includes benchmark `one`.
    fn includes(self, one: Which) -> bool {
        self == one || self == Which::All
    }
}

impl FromStr for Which {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(w, _)| *w)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::NAMES.iter().map(|(_, n)| *n).collect();
                format!("`{s}`: expected one of {}", names.join(", "))
            })
    }
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to run the Python peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The interpreter (normally `bench/.venv/bin/python`).
    pub python: PathBuf,
    /// The folder holding the peer scripts (`bench/`).
    pub dir: PathBuf,
}

impl Peer {
    /// `bench/.venv/bin/python` and `bench/` under `repo_root`; the interpreter falls back to
    /// `python3` on the `PATH` when there is no venv.
    pub fn in_repo(repo_root: &Path) -> Self {
        let dir = repo_root.join("bench");
        let venv = dir.join(".venv/bin/python");
        let python = if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        };
        Self { python, dir }
    }

    /// Starts `script` with `args` and reads its hello (the JSON line it prints once set up).
    /// The session then runs one timed round per [`PeerSession::round`].
    pub fn start<H: DeserializeOwned>(
        &self,
        script: &str,
        args: &[String],
    ) -> Result<(PeerSession, H), BenchError> {
        let start_error = |source| BenchError::PeerStart {
            python: self.python.clone(),
            script: script.to_string(),
            source,
        };
        // Standard error goes to a file, not a pipe: a chatty peer could fill a pipe nobody
        // reads while we wait on its standard output.
        let stderr_path = std::env::temp_dir().join(format!(
            "beatlab-bench-{}-{}-{}.stderr",
            script.replace(['/', '.'], "_"),
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        let stderr = std::fs::File::create(&stderr_path).map_err(|source| BenchError::Io {
            action: "create",
            path: stderr_path.clone(),
            source,
        })?;
        let mut child = Command::new(&self.python)
            .arg(self.dir.join(script))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                let _ = std::fs::remove_file(&stderr_path);
                start_error(e)
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            unreachable!("stdin and stdout were configured as pipes");
        };
        let mut session = PeerSession {
            script: script.to_string(),
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            stderr_path,
        };
        let hello = session.read_json()?;
        Ok((session, hello))
    }
}

/// One timed round as a peer reports it: seconds of wall clock and of process CPU time, the
/// items done, and the benchmark's extras.
#[derive(Debug, Deserialize)]
pub struct PeerRound<X> {
    pub wall: f64,
    pub cpu: f64,
    pub work: f64,
    #[serde(flatten)]
    pub extra: X,
}

impl<X> PeerRound<X> {
    /// The timing in the form [`Rates::push`] takes.
    fn timing(&self) -> (f64, Option<f64>) {
        (self.wall, Some(self.cpu))
    }
}

/// A running peer (see `bench/serve.py` for the protocol). Killed if dropped unfinished.
pub struct PeerSession {
    script: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr_path: PathBuf,
}

impl PeerSession {
    /// Runs one timed round.
    pub fn round<X: DeserializeOwned>(&mut self) -> Result<PeerRound<X>, BenchError> {
        let sent = self
            .stdin
            .as_mut()
            .map(|pipe| pipe.write_all(b"round\n").and_then(|()| pipe.flush()));
        if let Some(Err(_)) = sent {
            // The peer is gone; reading its output reports why.
            return self.read_json();
        }
        self.read_json()
    }

    /// Ends the session and checks that the peer exited cleanly.
    pub fn finish(mut self) -> Result<(), BenchError> {
        if let Some(mut pipe) = self.stdin.take() {
            let _ = pipe.write_all(b"done\n");
        }
        let status = self.child.wait().map_err(|source| BenchError::Io {
            action: "wait for the peer",
            path: PathBuf::from(&self.script),
            source,
        })?;
        if status.success() {
            Ok(())
        } else {
            Err(self.failed(status.to_string()))
        }
    }

    /// The next line of the peer's output, as JSON. At the end of its output the peer has
    /// exited (or closed its output); its status and error output say why.
    fn read_json<T: DeserializeOwned>(&mut self) -> Result<T, BenchError> {
        let mut line = String::new();
        let read = self.stdout.read_line(&mut line);
        match read {
            Ok(n) if n > 0 => serde_json::from_str(&line).map_err(|e| BenchError::PeerOutput {
                script: self.script.clone(),
                reason: format!("{e} in `{}`", truncate(line.trim_end(), 200)),
            }),
            _ => {
                self.stdin.take();
                let status = self
                    .child
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                Err(self.failed(status))
            }
        }
    }

    fn failed(&self, status: String) -> BenchError {
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        BenchError::PeerFailed {
            script: self.script.clone(),
            status,
            stderr_tail: tail_lines(&stderr, 8),
        }
    }
}

impl Drop for PeerSession {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(n)..].join(" | ");
    if tail.is_empty() {
        "(no error output)".into()
    } else {
        tail
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Everything the benchmarks need.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The Python peers; `None` measures ours only (no ratio).
    pub peer: Option<Peer>,
    pub beat: beat::BeatOptions,
    pub registry: registry::RegistryOptions,
    pub wfdb: wfdb::WfdbOptions,
    pub sim: sim::SimOptions,
    pub query: query::QueryOptions,
    pub mm: mm::MmOptions,
    pub delineate: delineate::DelineateOptions,
}

impl BenchOptions {
    /// Defaults for a checkout at `repo_root`: peers from `bench/`, ECG data from
    /// `BEATLAB_ECG_DATA` or `../shared/data/ecg` beside the repository, CPU.
    pub fn for_repo(repo_root: &Path) -> Self {
        Self {
            peer: Some(Peer::in_repo(repo_root)),
            beat: beat::BeatOptions::default(),
            registry: registry::RegistryOptions::default(),
            wfdb: wfdb::WfdbOptions {
                root: wfdb::default_data_root(repo_root),
                ..wfdb::WfdbOptions::default()
            },
            sim: sim::SimOptions::default(),
            query: query::QueryOptions::default(),
            mm: mm::MmOptions::default(),
            delineate: delineate::DelineateOptions {
                root: wfdb::default_data_root(repo_root).join("ludb"),
                ..delineate::DelineateOptions::default()
            },
        }
    }
}

/// One benchmark's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// `beat`, `registry`, `wfdb` or `sim`.
    pub benchmark: String,
    /// What was measured, in words.
    pub workload: String,
    /// The unit of `ours` and `peer` (`windows/s`, `points/s`, `records/s`).
    pub unit: String,
    /// The peer's name and version (`pytorch 2.9.1`).
    pub peer_name: Option<String>,
    /// Our median rate.
    pub ours: f64,
    /// The peer's median rate.
    pub peer: Option<f64>,
    /// `ours / peer`.
    pub ratio: Option<f64>,
    /// Our rate per CPU-second.
    pub ours_per_cpu_s: f64,
    /// The peer's rate per CPU-second.
    pub peer_per_cpu_s: Option<f64>,
    /// `ours_per_cpu_s / peer_per_cpu_s`.
    pub cpu_ratio: Option<f64>,
    /// The ratio the project aims for, if any.
    pub goal: Option<f64>,
    /// Lines of further detail (FLOP/s, phases, cross-checks), printed under the figures.
    pub notes: Vec<String>,
    /// The same detail as numbers, for `--json`.
    pub details: serde_json::Value,
}

impl Comparison {
    /// The figures of `ours` against the peer's rates (`peer`: its name and rates, when it ran),
    /// ratios included; a benchmark fills in the rest by struct update.
    fn from_rates(ours: &Rates, peer: Option<(String, &Rates)>) -> Self {
        let ours_wall = ours.median_wall();
        let ours_cpu = ours.median_cpu();
        let peer_wall = peer.as_ref().map(|(_, t)| t.median_wall());
        let peer_cpu = peer.as_ref().map(|(_, t)| t.median_cpu());
        Self {
            benchmark: String::new(),
            workload: String::new(),
            unit: String::new(),
            peer_name: peer.map(|(name, _)| name),
            ours: ours_wall,
            peer: peer_wall,
            ratio: peer_wall.map(|p| ours_wall / p),
            ours_per_cpu_s: ours_cpu,
            peer_per_cpu_s: peer_cpu,
            cpu_ratio: peer_cpu.map(|p| ours_cpu / p),
            goal: None,
            notes: Vec::new(),
            details: serde_json::Value::Null,
        }
    }

    /// `Some(true)` when the ratio reaches the goal.
    pub fn meets_goal(&self) -> Option<bool> {
        Some(self.ratio? >= self.goal?)
    }
}

/// Where and when the figures were taken.
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    /// CPU model name (`/proc/cpuinfo`).
    pub cpu_model: String,
    /// Logical CPUs available to this process.
    pub logical_cpus: usize,
    /// Threads candle's CPU kernels use (`RAYON_NUM_THREADS`); the peers get the same.
    pub threads: usize,
    /// UTC, RFC 3339.
    pub date: String,
    /// 1-minute load average when the benchmarks started (other processes competing).
    pub load_before: Option<f64>,
    /// ... and when they ended.
    pub load_after: Option<f64>,
    /// The git revision beatlab was built from (`-dirty` when the tree had changes).
    pub git_rev: String,
    /// `release` or `debug` build.
    pub build: String,
}

impl MachineInfo {
    fn now() -> Self {
        let date = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| "unknown".into());
        let (rev, dirty) = beatlab::runner::code_revision();
        Self {
            cpu_model: cpu_model().unwrap_or_else(|| "unknown".into()),
            logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads: candle_core::utils::get_num_threads(),
            date,
            load_before: load_average(),
            load_after: None,
            git_rev: format!("{}{}", rev, if dirty { "-dirty" } else { "" }),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .into(),
        }
    }
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// All figures of one `beatlab bench` invocation.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: MachineInfo,
    pub results: Vec<Comparison>,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.machine;
        writeln!(
            f,
            "machine: {} ({} logical CPUs), {} threads, {} build, beatlab {}",
            m.cpu_model, m.logical_cpus, m.threads, m.build, m.git_rev
        )?;
        let load = |l: Option<f64>| l.map_or("?".into(), |l| format!("{l:.2}"));
        writeln!(
            f,
            "date: {}, load average {} before, {} after",
            m.date,
            load(m.load_before),
            load(m.load_after)
        )?;
        for c in &self.results {
            writeln!(f)?;
            writeln!(f, "{}: {}", c.benchmark, c.workload)?;
            let peer_name = c.peer_name.as_deref().unwrap_or("peer");
            match (c.peer, c.ratio) {
                (Some(peer), Some(ratio)) => {
                    write!(
                        f,
                        "  ours {} {unit}, {peer_name} {} {unit}, ratio {ratio:.2}x",
                        fmt_rate(c.ours),
                        fmt_rate(peer),
                        unit = c.unit
                    )?;
                    match c.goal {
                        Some(goal) => writeln!(
                            f,
                            " (goal >= {goal}x: {})",
                            if ratio >= goal { "met" } else { "MISSED" }
                        )?,
                        None => writeln!(f)?,
                    }
                }
                _ => writeln!(f, "  ours {} {} (peer not run)", fmt_rate(c.ours), c.unit)?,
            }
            match (c.peer_per_cpu_s, c.cpu_ratio) {
                (Some(peer), Some(ratio)) => writeln!(
                    f,
                    "  per CPU-second: ours {}, {peer_name} {}, ratio {ratio:.2}x",
                    fmt_rate(c.ours_per_cpu_s),
                    fmt_rate(peer)
                )?,
                _ => writeln!(f, "  per CPU-second: ours {}", fmt_rate(c.ours_per_cpu_s))?,
            }
            for note in &c.notes {
                writeln!(f, "  {note}")?;
            }
        }
        Ok(())
    }
}

/// Three significant figures at least, no exponent.
fn fmt_rate(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Runs the chosen benchmarks; `progress` receives a line before each long phase.
pub fn run(
    which: Which,
    options: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BenchReport, BenchError> {
    let mut machine = MachineInfo::now();
    let mut results = Vec::new();
    let peer = options.peer.as_ref();
    if which.includes(Which::Beat) {
        results.push(beat::run(&options.beat, peer, progress)?);
    }
    if which.includes(Which::Registry) {
        results.push(registry::run(&options.registry, peer, progress)?);
    }
    if which.includes(Which::Wfdb) {
        results.push(wfdb::run(&options.wfdb, peer, progress)?);
    }
    if which.includes(Which::Sim) {
        results.push(sim::run(&options.sim, peer, progress)?);
    }
    if which.includes(Which::Query) {
        results.push(query::run(&options.query, progress)?);
    }
    if which.includes(Which::Mm) {
        results.extend(mm::run(&options.mm, peer, progress)?);
    }
    if which.includes(Which::Delineate) {
        results.extend(delineate::run(&options.delineate, peer, progress)?);
    }
    machine.load_after = load_average();
    Ok(BenchReport { machine, results })
}

/// The median of `values` (the mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// User + system CPU time of this process (all threads) in seconds, from `/proc/self/stat`
/// (Linux; procfs counts in USER_HZ = 100 ticks per second). `None` elsewhere.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start at the state, field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// `rounds` timed rounds, ours and the peer's alternating so that both see the same background
/// load (while one runs, the other waits idle on a pipe). `ours` runs our round and returns its
/// work and timing; `check` looks at each of the peer's rounds (cross-checks, extra figures).
/// Returns our rates and the peer's (empty without a peer).
fn alternate<X: DeserializeOwned>(
    rounds: usize,
    peer: Option<&mut PeerSession>,
    mut ours: impl FnMut() -> Result<(f64, (f64, Option<f64>)), BenchError>,
    mut check: impl FnMut(&PeerRound<X>) -> Result<(), BenchError>,
) -> Result<(Rates, Rates), BenchError> {
    let (mut our_rates, mut their_rates) = (Rates::default(), Rates::default());
    let mut peer = peer;
    for _ in 0..rounds.max(1) {
        let (work, timing) = ours()?;
        our_rates.push(work, timing);
        if let Some(session) = peer.as_deref_mut() {
            let round: PeerRound<X> = session.round()?;
            check(&round)?;
            their_rates.push(round.work, round.timing());
        }
    }
    Ok((our_rates, their_rates))
}

/// Ends a benchmark's peer session after its last round: the peer's greeting, or `None` when
/// the benchmark ran without a peer.
fn finish_peer<H>(session: Option<(PeerSession, H)>) -> Result<Option<H>, BenchError> {
    session
        .map(|(session, hello)| session.finish().map(|()| hello))
        .transpose()
}

/// Wall-clock and CPU seconds of one timed round.
#[derive(Debug, Clone, Copy)]
struct Timer {
    wall: std::time::Instant,
    cpu: Option<f64>,
}

impl Timer {
    fn start() -> Self {
        Self {
            wall: std::time::Instant::now(),
            cpu: process_cpu_seconds(),
        }
    }

    /// `(wall seconds, CPU seconds)` since `start`. The CPU figure has a 10 ms resolution, so
    /// rounds should last well over a second; `None` where procfs is unavailable.
    fn stop(self) -> (f64, Option<f64>) {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = self.cpu.zip(process_cpu_seconds()).map(|(a, b)| b - a);
        (wall, cpu)
    }
}

/// Median rates over rounds: `work / seconds` per round, wall clock and CPU time.
#[derive(Debug, Clone, Default)]
struct Rates {
    wall: Vec<f64>,
    cpu: Vec<f64>,
}

impl Rates {
    fn push(&mut self, work: f64, (wall, cpu): (f64, Option<f64>)) {
        self.wall.push(work / wall);
        if let Some(cpu) = cpu.filter(|&c| c > 0.0) {
            self.cpu.push(work / cpu);
        }
    }

    fn median_wall(&self) -> f64 {
        median(&self.wall)
    }

    fn median_cpu(&self) -> f64 {
        median(&self.cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty_sets() {
        let check = |values: &[f64], expected: f64| {
            let got = median(values);
            assert!(
                got == expected || (got.is_nan() && expected.is_nan()),
                "median({values:?}) = {got}, expected {expected}"
            );
        };
        check(&[3.0, 1.0, 2.0], 2.0);
        check(&[4.0, 1.0, 3.0, 2.0], 2.5);
        check(&[7.0], 7.0);
        check(&[], f64::NAN);
    }

    #[test]
    fn which_parses_and_prints_back() {
        for (_, name) in Which::NAMES {
            assert_eq!(name.parse::<Which>().unwrap().to_string(), name);
        }
        let err = "wfbd".parse::<Which>().unwrap_err();
        assert!(err.contains("`wfbd`") && err.contains("registry"), "{err}");
    }

    /// A stand-in peer: `sh -c SCRIPT` (the "script" is `-c`, the argument the shell code).
    fn shell_peer(code: &str) -> Result<(PeerSession, serde_json::Value), BenchError> {
        let peer = Peer {
            python: PathBuf::from("sh"),
            dir: PathBuf::new(),
        };
        peer.start("-c", &[code.to_string()])
    }

    #[test]
    fn a_session_alternates_rounds_and_ends_cleanly() {
        let (mut session, hello) = shell_peer(
            r#"echo '{"peer": "sh"}'; n=0
               while read cmd; do
                 [ "$cmd" = round ] || break
                 n=$((n + 1)); echo "{\"wall\": $n, \"cpu\": 0.5, \"work\": 4, \"tag\": \"r$n\"}"
               done"#,
        )
        .unwrap();
        assert_eq!(hello, serde_json::json!({"peer": "sh"}));
        #[derive(Deserialize)]
        struct Tag {
            tag: String,
        }
        for n in 1..=3 {
            let round: PeerRound<Tag> = session.round().unwrap();
            assert_eq!(
                (round.wall, round.cpu, round.work),
                (f64::from(n), 0.5, 4.0)
            );
            assert_eq!(round.extra.tag, format!("r{n}"));
        }
        session.finish().unwrap();
    }

    #[test]
    fn a_missing_interpreter_is_reported_with_the_fix() {
        let peer = Peer {
            python: PathBuf::from("/nonexistent/python-for-beatlab-bench"),
            dir: PathBuf::from("bench"),
        };
        let err = peer
            .start::<serde_json::Value>("beat_torch.py", &[])
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(matches!(err, BenchError::PeerStart { .. }), "{text}");
        assert!(
            text.contains("beat_torch.py") && text.contains("scripts/bench.sh"),
            "{text}"
        );
    }

    #[test]
    fn a_peer_that_dies_reports_its_status_and_error_output() {
        let check = |code: &str, status_part: &str, stderr: &str| {
            let err = match shell_peer(code) {
                Ok((mut session, _)) => session.round::<serde_json::Value>().unwrap_err(),
                Err(e) => e,
            };
            match err {
                BenchError::PeerFailed {
                    status,
                    stderr_tail,
                    ..
                } => {
                    assert!(status.contains(status_part), "{code}: {status}");
                    assert_eq!(stderr_tail, stderr, "{code}");
                }
                other => panic!("{code}: expected PeerFailed, got {other}"),
            }
        };
        // Before its hello, and in the middle of a round.
        check("echo boom >&2; exit 3", "3", "boom");
        check(
            "echo '{}'; read cmd; echo bad >&2; echo worse >&2; exit 4",
            "4",
            "bad | worse",
        );
    }

    #[test]
    fn a_peer_printing_garbage_is_reported() {
        let err = shell_peer("echo Traceback").err().unwrap();
        assert!(
            matches!(&err, BenchError::PeerOutput { reason, .. } if reason.contains("Traceback")),
            "{err}"
        );
    }

    #[test]
    fn report_prints_ratio_goal_and_cpu_figures() {
        let ours = Rates {
            wall: vec![200_000.0],
            cpu: vec![100_000.0],
        };
        let theirs = Rates {
            wall: vec![5_000.0],
            cpu: vec![4_000.0],
        };
        let c = Comparison {
            benchmark: "registry".into(),
            workload: "4 runs".into(),
            unit: "points/s".into(),
            goal: Some(50.0),
            notes: vec!["stored 64000 of 64000".into()],
            ..Comparison::from_rates(&ours, Some(("mlflow 3.0".into(), &theirs)))
        };
        assert_eq!(c.ratio, Some(40.0));
        assert_eq!(c.cpu_ratio, Some(25.0));
        assert_eq!(c.meets_goal(), Some(false));
        let report = BenchReport {
            machine: MachineInfo::now(),
            results: vec![c],
        };
        let text = report.to_string();
        assert!(
            text.contains(
                "ours 200000 points/s, mlflow 3.0 5000 points/s, ratio 40.00x (goal >= 50x: MISSED)"
            ),
            "{text}"
        );
        assert!(
            text.contains("per CPU-second: ours 100000, mlflow 3.0 4000, ratio 25.00x"),
            "{text}"
        );
        assert!(text.contains("  stored 64000 of 64000"), "{text}");
    }
}
