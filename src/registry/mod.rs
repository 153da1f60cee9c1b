//! The run registry: experiments, runs, metrics, summaries and checkpoints, kept in a store
//! chosen by the registry's address — a SQLite file (a path, or `sqlite://PATH`) for one
//! machine, or a PostgreSQL database (`postgres://user@host/db`) for many.
//!
//! Several worker processes share one registry. A worker claims a cell in a single transaction,
//! so two workers never take the same cell; while it runs, it heartbeats, and a run whose
//! heartbeat is older than its lease is stale and is taken over (resuming from its last
//! checkpoint) by the next worker that looks.
//!
//! [`Registry`] is the handle everyone uses: cheap to clone, blocking, and the same whatever
//! the store. A store implements [`RunStore`]; what the two stores share (the address, the
//! claim rules, run-id prefixes, effective status) lives here.

mod claim;
pub mod netfs;
mod postgres;
mod rows;
mod sqlite;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;

pub use claim::needs_work;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry address is neither a path, `sqlite://PATH` nor `postgres://...`.
    #[error("registry address `{address}`: {message}")]
    Address { address: String, message: String },
    /// The database could not be opened or created.
    #[error("cannot open registry {address}: {source}")]
    Open {
        address: String,
        #[source]
        source: sqlx::Error,
    },
    /// The schema migrations failed.
    #[error("cannot migrate registry {address}: {source}")]
    Migrate {
        address: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error("registry query failed while {context}: {source}")]
    Query {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// No run has this id (or id prefix).
    #[error("no run `{0}` in the registry")]
    NoSuchRun(String),
    /// An id prefix matches several runs.
    #[error("run id `{prefix}` is ambiguous: {}", candidates.join(", "))]
    Ambiguous {
        prefix: String,
        candidates: Vec<String>,
    },
    /// The async runtime could not start.
    #[error("cannot start the registry's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The database is not a beatlab registry (another program's database, or not a database).
    #[error(
        "{address} is not a beatlab registry: {detail}; point --registry at a beatlab registry or a new file"
    )]
    Foreign { address: String, detail: String },
    /// The registry was written by a newer beatlab.
    #[error(
        "registry {address} has schema version {found}, newer than this beatlab's {known}: use the \
         beatlab that wrote it (or a newer one)"
    )]
    SchemaNewer {
        address: String,
        found: i64,
        known: i64,
    },
    /// A command that only reads found a registry an older beatlab wrote; reading never
    /// migrates.
    #[error(
        "registry {address} has schema version {found}, older than this beatlab's {known}; \
         reading does not upgrade it: run `beatlab registry migrate` (or any command that trains)"
    )]
    SchemaOlder {
        address: String,
        found: i64,
        known: i64,
    },
    /// `registry backup` could not write its copy.
    #[error("cannot back up the registry to {}: {message}", dest.display())]
    Backup { dest: PathBuf, message: String },
    /// A SQLite registry on a network filesystem, where SQLite's locks are not safe.
    #[error(
        "registry {} is on a network filesystem ({filesystem}), where SQLite's locks and \
         write-ahead log are not safe with several workers: use a PostgreSQL registry \
         (--registry postgres://user@host/db), or set BEATLAB_SQLITE_NETWORK_FS=allow to use \
         this file anyway",
        path.display()
    )]
    NetworkFilesystem {
        path: PathBuf,
        filesystem: &'static str,
    },
    /// A stored row has a value of the wrong type in a column (of the run named, when the
    /// row is a run's and its id could be read).
    #[error(
        "malformed registry row: column `{column}`{}: {source}",
        run.as_ref().map(|r| format!(" of run {r}")).unwrap_or_default()
    )]
    Malformed {
        column: &'static str,
        run: Option<String>,
        #[source]
        source: sqlx::Error,
    },
}

impl RegistryError {
    /// Whether the error is the user's input (a wrong address, an unknown run id), as opposed
    /// to a failure of the store: commands exit with code 2 for these.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            RegistryError::Address { .. }
                | RegistryError::Open { .. }
                | RegistryError::Foreign { .. }
                | RegistryError::SchemaNewer { .. }
                | RegistryError::SchemaOlder { .. }
                | RegistryError::NoSuchRun(_)
                | RegistryError::Ambiguous { .. }
                | RegistryError::Backup { .. }
                | RegistryError::NetworkFilesystem { .. }
        )
    }
}

pub type Result<T> = std::result::Result<T, RegistryError>;

/// How often opening a fresh registry is tried while other processes open it too; the waits
/// between tries double from 50 ms, 6.4 s in all.
const RACE_ATTEMPTS: u32 = 8;

fn q(context: &'static str) -> impl FnOnce(sqlx::Error) -> RegistryError {
    move |source| RegistryError::Query { context, source }
}

/// Seconds since the Unix epoch, by this machine's clock.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Where a registry lives, parsed from `--registry` / `BEATLAB_REGISTRY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A SQLite file: a plain path, or `sqlite://PATH` / `sqlite:PATH`.
    Sqlite(PathBuf),
    /// A PostgreSQL database: `postgres://user[:password]@host[:port]/db` (or `postgresql://`).
    Postgres(String),
}

impl Address {
    /// Parses a registry address; anything that is not a URL of a known scheme is a path.
    pub fn parse(address: &OsStr) -> Result<Self> {
        let bad = |message: &str| RegistryError::Address {
            address: address.to_string_lossy().into_owned(),
            message: message.to_string(),
        };
        let Some(text) = address.to_str() else {
            return Ok(Address::Sqlite(PathBuf::from(address)));
        };
        if text.is_empty() {
            return Err(bad("empty: expected a SQLite file path or postgres://..."));
        }
        if let Some(rest) = text
            .strip_prefix("sqlite://")
            .or(text.strip_prefix("sqlite:"))
        {
            if rest.is_empty() {
                return Err(bad("sqlite:// needs a file path"));
            }
            return Ok(Address::Sqlite(PathBuf::from(rest)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Address::Postgres(text.to_string()));
        }
        if let Some((scheme, _)) = text.split_once("://")
            && !scheme.contains('/')
        {
            return Err(bad(&format!(
                "unknown scheme `{scheme}://`: expected a SQLite file path, sqlite://PATH or \
                 postgres://user@host/db"
            )));
        }
        Ok(Address::Sqlite(PathBuf::from(address)))
    }

    /// The address as it may be printed: a PostgreSQL password is replaced by `***`.
    pub fn display(&self) -> String {
        match self {
            Address::Sqlite(path) => path.display().to_string(),
            Address::Postgres(url) => redact_password(url),
        }
    }
}

/// `postgres://user:secret@host/db` -> `postgres://user:***@host/db`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// What a database holds, compared with this beatlab's migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SchemaCheck {
    /// No tables: a new registry.
    Empty,
    /// Every migration applied, and no other.
    Current,
    /// Some of this beatlab's migrations are not applied yet.
    Older { found: i64, known: i64 },
    /// Migrations this beatlab does not know were applied.
    Newer { found: i64, known: i64 },
    /// Not a beatlab registry (why).
    Foreign(String),
}

impl SchemaCheck {
    /// Compares applied migrations (version, checksum) with a migrator's.
    pub(crate) fn compare(applied: &[(i64, Vec<u8>)], migrator: &sqlx::migrate::Migrator) -> Self {
        let known: HashMap<i64, &[u8]> = migrator
            .iter()
            .map(|m| (m.version, m.checksum.as_ref()))
            .collect();
        let latest_known = known.keys().copied().max().unwrap_or(0);
        let found = applied.iter().map(|(v, _)| *v).max().unwrap_or(0);
        for (version, checksum) in applied {
            match known.get(version) {
                Some(ours) if *ours == checksum.as_slice() => {}
                Some(_) => {
                    return SchemaCheck::Foreign(format!(
                        "its schema step {version} is not beatlab's"
                    ));
                }
                None if *version > latest_known => {
                    return SchemaCheck::Newer {
                        found,
                        known: latest_known,
                    };
                }
                None => {
                    return SchemaCheck::Foreign(format!(
                        "its schema history has a step {version} beatlab never had"
                    ));
                }
            }
        }
        if applied.is_empty() {
            SchemaCheck::Foreign("its schema history is empty".into())
        } else if found < latest_known {
            SchemaCheck::Older {
                found,
                known: latest_known,
            }
        } else {
            SchemaCheck::Current
        }
    }

    /// Whether a writer may use (and migrate) this database.
    pub(crate) fn for_writing(self, address: &str) -> Result<()> {
        match self {
            SchemaCheck::Empty | SchemaCheck::Current | SchemaCheck::Older { .. } => Ok(()),
            other => Err(other.error(address)),
        }
    }

    /// Whether a reader can read this database as it is: `Ok(false)` when it holds nothing yet.
    pub(crate) fn for_reading(self, address: &str) -> Result<bool> {
        match self {
            SchemaCheck::Current => Ok(true),
            SchemaCheck::Empty => Ok(false),
            other => Err(other.error(address)),
        }
    }

    fn error(self, address: &str) -> RegistryError {
        let address = address.to_string();
        match self {
            SchemaCheck::Older { found, known } => RegistryError::SchemaOlder {
                address,
                found,
                known,
            },
            SchemaCheck::Newer { found, known } => RegistryError::SchemaNewer {
                address,
                found,
                known,
            },
            SchemaCheck::Foreign(detail) => RegistryError::Foreign { address, detail },
            SchemaCheck::Empty | SchemaCheck::Current => RegistryError::Foreign {
                address,
                detail: "its schema is usable (no error)".into(),
            },
        }
    }
}

/// Status of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Pending,
    Running,
    Finished,
    Failed,
    Stale,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Stale => "stale",
        }
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "pending" => RunStatus::Pending,
            "running" => RunStatus::Running,
            "finished" => RunStatus::Finished,
            "failed" => RunStatus::Failed,
            "stale" => RunStatus::Stale,
            other => {
                return Err(format!(
                    "unknown status `{other}`: expected pending, running, finished, failed or stale"
                ));
            }
        })
    }
}

/// One row of `runs`.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub id: String,
    pub experiment: String,
    pub cell_index: i64,
    pub cell_label: String,
    pub overrides: serde_json::Value,
    #[serde(skip)]
    pub spec_json: String,
    pub hash: String,
    pub seed: i64,
    pub status: RunStatus,
    pub attempt: i64,
    pub stage: Option<String>,
    pub code_rev: String,
    pub code_dirty: bool,
    pub host: String,
    pub device: String,
    pub worker: String,
    pub run_dir: String,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub heartbeat_at: Option<f64>,
    pub lease_s: f64,
    pub finished_at: Option<f64>,
    pub error: Option<String>,
    /// Attempts that ended without finishing (an error, a panic, a holder that died).
    pub failures: i64,
    /// The batch job holding (or that last held) the run: `JOBID_TASK` for a Slurm array task.
    pub job: Option<String>,
}

impl RunRow {
    /// The status as others should see it: a running run whose heartbeat expired is stale.
    pub fn effective_status(&self, now: f64) -> RunStatus {
        match (self.status, self.heartbeat_at) {
            (RunStatus::Running, Some(hb)) if now - hb > self.lease_s => RunStatus::Stale,
            (s, _) => s,
        }
    }
}

/// A cell offered for claiming.
#[derive(Debug, Clone)]
pub struct CellOffer {
    pub index: i64,
    pub label: String,
    pub overrides: serde_json::Value,
    pub spec_json: String,
    pub hash: String,
    pub seed: i64,
}

/// Who is claiming, and which finished or failed cells may be run again.
#[derive(Debug, Clone)]
pub struct ClaimPolicy {
    pub experiment: String,
    /// Worker identity (`host:pid:n`).
    pub worker: String,
    pub host: String,
    pub device: String,
    pub code_rev: String,
    pub code_dirty: bool,
    /// Lease in seconds: the worker heartbeats well within it.
    pub lease_s: f64,
    /// `--force`: run again cells whose latest run finished before this time.
    pub force_before: Option<f64>,
    /// `--rerun-failed`: run again cells whose latest run failed before this time.
    pub rerun_failed_before: Option<f64>,
    /// Folder of this experiment's runs (`runs/<experiment>`).
    pub experiment_dir: PathBuf,
    /// A run that has failed this many times is marked failed instead of being taken over.
    pub max_failures: i64,
    /// The batch job this worker runs in (`JOBID_TASK` for a Slurm array task), if any.
    pub job: Option<String>,
}

impl ClaimPolicy {
    /// The batch job of this process, from Slurm's environment: `JOBID_TASK` in an array task,
    /// `JOBID` in a plain job, `None` outside Slurm.
    pub fn slurm_job() -> Option<String> {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
            (Some(job), Some(task)) => Some(format!("{job}_{task}")),
            _ => var("SLURM_JOB_ID"),
        }
    }
}

/// A cell this worker now holds.
#[derive(Debug, Clone)]
pub struct Claim {
    pub run_id: String,
    pub cell_index: i64,
    pub attempt: i64,
    /// The run existed (stale, interrupted or pending) and continues from its checkpoints.
    pub resumed: bool,
    pub run_dir: PathBuf,
}

impl Claim {
    /// The claim of an existing run of cell `cell_index` that this worker takes over (pending
    /// or stale): a run that had started counts one attempt more and continues from its
    /// checkpoints.
    pub(crate) fn taken_over(run: &RunRow, cell_index: i64) -> Self {
        let resumed = run.started_at.is_some();
        Self {
            run_id: run.id.clone(),
            cell_index,
            attempt: run.attempt + i64::from(resumed),
            resumed,
            run_dir: PathBuf::from(&run.run_dir),
        }
    }

    /// The claim of a new run `id` of cell `cell_index`.
    pub(crate) fn fresh(id: &str, cell_index: i64, policy: &ClaimPolicy) -> Self {
        Self {
            run_id: id.to_string(),
            cell_index,
            attempt: 1,
            resumed: false,
            run_dir: policy.experiment_dir.join(id),
        }
    }

    /// The claim of a run `beatlab resume` continues, whatever state it was left in.
    pub(crate) fn resumed(run: &RunRow) -> Self {
        Self {
            run_id: run.id.clone(),
            cell_index: run.cell_index,
            attempt: run.attempt + 1,
            resumed: true,
            run_dir: PathBuf::from(&run.run_dir),
        }
    }
}

/// A metric point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricPoint {
    pub key: String,
    pub step: i64,
    pub value: f64,
    pub time: f64,
}

/// A checkpoint file recorded for a run.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointRow {
    pub run_id: String,
    pub stage: String,
    pub step: i64,
    pub epoch: i64,
    pub is_final: bool,
    pub path: String,
    pub sha256: String,
    pub bytes: i64,
}

/// Summary values by key.
pub type Summaries = BTreeMap<String, f64>;

/// Whether the holder of a run is provably dead: its worker id (`host:pid:n`) names this host
/// and a process id that no longer exists. Anything else (another host, a live or unparsable
/// process id) may still be alive and keeps its lease.
pub(crate) fn holder_is_dead(worker: &str, this_host: &str) -> bool {
    let mut parts = worker.rsplitn(3, ':');
    let (_thread, pid, host) = (parts.next(), parts.next(), parts.next());
    let Some(pid) = pid.and_then(|p| p.parse::<i32>().ok()).filter(|p| *p > 0) else {
        return false;
    };
    if host != Some(this_host) || pid as u32 == std::process::id() {
        return false;
    }
    // SAFETY: signal 0 only checks whether the process exists.
    let alive_or_hidden = unsafe { libc::kill(pid, 0) } == 0;
    !alive_or_hidden && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Whether a worker id belongs to this process (one of its worker threads).
pub fn worker_is_this_process(worker: &str, this_host: &str) -> bool {
    let mut parts = worker.rsplitn(3, ':');
    let (_thread, pid, host) = (parts.next(), parts.next(), parts.next());
    host == Some(this_host) && pid.and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id())
}

/// The operations the runner, tracking, tables and commands need from a store. Implemented by
/// [`SqliteStore`] and [`PostgresStore`]; every method blocks until the store answers.
pub trait RunStore: Send + Sync {
    /// The address, printable (no password).
    fn address(&self) -> String;
    /// The store's clock, in Unix seconds: leases and heartbeats are measured by it.
    fn now(&self) -> Result<f64>;
    /// Records (or refreshes) an experiment's spec path and description.
    fn upsert_experiment(&self, name: &str, spec_path: &str, description: &str) -> Result<()>;
    /// The latest run of each of these cell hashes.
    fn latest_runs(&self, hashes: &[String]) -> Result<HashMap<String, RunRow>>;
    /// Queues a new `pending` run of each cell the policy would start a new run of (no run
    /// yet; finished or failed before its `force_before` / `rerun_failed_before`), in one
    /// transaction; returns how many were added.
    fn enqueue(&self, policy: &ClaimPolicy, cells: &[CellOffer]) -> Result<usize>;
    /// Claims the first cell (in plan order) that needs work, in one transaction.
    fn claim(&self, policy: &ClaimPolicy, cells: &[CellOffer]) -> Result<Option<Claim>>;
    /// Claims one specific run (for `resume`); `Err(row)` when it is finished or held.
    fn claim_run(
        &self,
        run_id: &str,
        policy: &ClaimPolicy,
    ) -> Result<std::result::Result<Claim, RunRow>>;
    /// Refreshes a held run's heartbeat; `false` when the worker no longer holds it.
    fn heartbeat(&self, run_id: &str, worker: &str) -> Result<bool>;
    /// Records the stage a run is in.
    fn set_stage(&self, run_id: &str, stage: &str) -> Result<()>;
    /// Gives a held run back: pending again, no holder, its checkpoints kept (a signal asked
    /// the worker to stop; the next claim continues the run).
    fn release(&self, run_id: &str, worker: &str) -> Result<()>;
    /// Ends a run this worker holds with `status` (and an error text).
    fn end_run(
        &self,
        run_id: &str,
        worker: &str,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<()>;
    /// Writes metric points; a re-written (run, step, key) replaces the old value.
    fn log_metrics(&self, run_id: &str, points: &[MetricPoint]) -> Result<()>;
    /// Sets summary values of a run.
    fn set_summaries(&self, run_id: &str, values: &[(String, f64)]) -> Result<()>;
    /// Records a checkpoint file.
    fn record_checkpoint(&self, c: &CheckpointRow) -> Result<()>;
    /// Forgets a checkpoint.
    fn delete_checkpoint(&self, run_id: &str, stage: &str, step: i64) -> Result<()>;
    /// Checkpoints of a run, oldest first.
    fn checkpoints(&self, run_id: &str) -> Result<Vec<CheckpointRow>>;
    /// Runs, newest first, of one experiment or all (statuses as stored).
    fn list_runs(&self, experiment: Option<&str>) -> Result<Vec<RunRow>>;
    /// Runs whose id is `id` or starts with it, by id.
    fn runs_with_prefix(&self, id: &str) -> Result<Vec<RunRow>>;
    /// All metric points of a run, by key then step.
    fn metrics(&self, run_id: &str) -> Result<Vec<MetricPoint>>;
    /// Summary values of a run.
    fn summaries(&self, run_id: &str) -> Result<Summaries>;
    /// Summaries of the latest finished run of each of these cell hashes.
    fn finished_summaries(&self, hashes: &[String]) -> Result<HashMap<String, Summaries>>;
    /// Summary values `keys` (all when empty) of every run (of one experiment, or all), by run id.
    fn summaries_by_run(
        &self,
        experiment: Option<&str>,
        keys: &[String],
    ) -> Result<HashMap<String, Summaries>>;
    /// Makes the store's durable form complete while nothing else is to be done (SQLite: moves
    /// the write-ahead log into the database file).
    fn tidy(&self) -> Result<()>;
    /// Writes a consistent copy of the registry to `dest` while others may keep writing.
    fn backup(&self, dest: &Path) -> Result<()>;
    /// Checks the store's integrity and the registry's own consistency.
    fn check(&self) -> Result<CheckReport>;
}

/// What `beatlab registry check` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Schema version of the registry.
    pub schema_version: i64,
    /// Rows per table.
    pub counts: BTreeMap<String, i64>,
    /// Problems: each one line, naming what is wrong.
    pub problems: Vec<String>,
    /// Not wrong, but worth knowing (runs held by a worker whose lease expired).
    pub notes: Vec<String>,
}

/// Adds a problem to `report` when a recorded checkpoint file is missing or has another size.
fn check_checkpoint_file(
    report: &mut CheckReport,
    (run, stage, step): (String, String, i64),
    (path, bytes): (String, i64),
) {
    match std::fs::metadata(&path) {
        Ok(m) if m.len() as i64 == bytes => {}
        Ok(m) => report.problems.push(format!(
            "run {run}: checkpoint {stage} step {step} ({path}) has {} bytes, {bytes} recorded",
            m.len()
        )),
        Err(e) => report.problems.push(format!(
            "run {run}: checkpoint {stage} step {step} ({path}): {e}"
        )),
    }
}

/// Notes in `report` a run whose holder's lease expired.
fn note_expired(report: &mut CheckReport, id: String, worker: String) {
    report.notes.push(format!(
        "run {id}: its holder {worker} stopped heartbeating; the next worker takes it over"
    ));
}

/// Handle to a registry; cheap to clone and shareable across threads.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn RunStore>,
}

impl Registry {
    /// Opens (creating if needed) the registry at `address` and brings its schema up to date.
    pub fn open(address: &(impl AsRef<OsStr> + ?Sized)) -> Result<Self> {
        match Address::parse(address.as_ref())? {
            Address::Sqlite(path) => Ok(Self::over(SqliteStore::open(&path)?)),
            Address::Postgres(url) => Ok(Self::over(PostgresStore::open(&url)?)),
        }
    }

    /// Opens an existing registry, or returns `None` if there is none (so that read-only commands
    /// such as `plan` create nothing).
    pub fn open_existing(address: &(impl AsRef<OsStr> + ?Sized)) -> Result<Option<Self>> {
        match Address::parse(address.as_ref())? {
            Address::Sqlite(path) => Ok(SqliteStore::open_existing(&path)?.map(Self::over)),
            Address::Postgres(url) => Ok(PostgresStore::open_existing(&url)?.map(Self::over)),
        }
    }

    /// A handle over a store.
    pub fn over(store: impl RunStore + 'static) -> Self {
        Self {
            store: Arc::new(store),
        }
    }

    /// The registry's address, printable (no password).
    pub fn address(&self) -> String {
        self.store.address()
    }

    /// The registry's clock (leases are measured by it).
    pub fn clock(&self) -> Result<f64> {
        self.store.now()
    }

    /// Records (or refreshes) an experiment's spec path and description.
    pub fn upsert_experiment(&self, name: &str, spec_path: &str, description: &str) -> Result<()> {
        self.store.upsert_experiment(name, spec_path, description)
    }

    /// The latest run of each of these cell hashes.
    pub fn latest_runs(&self, hashes: &[String]) -> Result<HashMap<String, RunRow>> {
        self.store.latest_runs(hashes)
    }

    /// Queues a new `pending` run of each cell that has none yet, or whose finished (failed)
    /// run the policy's `force_before` (`rerun_failed_before`) asks to run again, so that
    /// `beatlab runs` shows the queue of a sweep and workers started later take those cells.
    pub fn enqueue(&self, policy: &ClaimPolicy, cells: &[CellOffer]) -> Result<usize> {
        self.store.enqueue(policy, cells)
    }

    /// Claims the first cell (in plan order) that needs work, in one transaction. Returns
    /// `None` when every cell is finished, failed or held by a live worker.
    pub fn claim(&self, policy: &ClaimPolicy, cells: &[CellOffer]) -> Result<Option<Claim>> {
        self.store.claim(policy, cells)
    }

    /// Claims one specific run for `beatlab resume`: it must not be finished, nor held by a live
    /// worker.
    pub fn claim_run(
        &self,
        run_id: &str,
        policy: &ClaimPolicy,
    ) -> Result<std::result::Result<Claim, RunRow>> {
        self.store.claim_run(run_id, policy)
    }

    /// Refreshes the heartbeat of a run this worker holds. Returns `false` if the worker lost
    /// the run (another worker took it over after a missed lease), in which case it must stop.
    pub fn heartbeat(&self, run_id: &str, worker: &str) -> Result<bool> {
        self.store.heartbeat(run_id, worker)
    }

    /// Records the stage a run is in.
    pub fn set_stage(&self, run_id: &str, stage: &str) -> Result<()> {
        self.store.set_stage(run_id, stage)
    }

    /// Gives a held run back to the queue (pending, checkpoints kept) when a signal stops the
    /// worker: the next claim, here or on another machine, continues it.
    pub fn release(&self, run_id: &str, worker: &str) -> Result<()> {
        self.store.release(run_id, worker)
    }

    /// Ends a run: `finished`, `failed` (with the error), or `stale` (interrupted, to be resumed).
    pub fn end_run(
        &self,
        run_id: &str,
        worker: &str,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<()> {
        self.store.end_run(run_id, worker, status, error)
    }

    /// Writes metric points in one transaction (re-written steps replace the old values, so a
    /// resumed run that repeats steps after its checkpoint stays consistent).
    pub fn log_metrics(&self, run_id: &str, points: &[MetricPoint]) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        self.store.log_metrics(run_id, points)
    }

    /// Sets summary values (the numbers tables are made of).
    pub fn set_summaries(&self, run_id: &str, values: &[(String, f64)]) -> Result<()> {
        self.store.set_summaries(run_id, values)
    }

    /// Records a checkpoint file (already written and fsynced).
    pub fn record_checkpoint(&self, c: &CheckpointRow) -> Result<()> {
        self.store.record_checkpoint(c)
    }

    /// Forgets a checkpoint (its file is being deleted).
    pub fn delete_checkpoint(&self, run_id: &str, stage: &str, step: i64) -> Result<()> {
        self.store.delete_checkpoint(run_id, stage, step)
    }

    /// Checkpoints of a run, oldest first.
    pub fn checkpoints(&self, run_id: &str) -> Result<Vec<CheckpointRow>> {
        self.store.checkpoints(run_id)
    }

    /// Runs, newest first, optionally filtered (by effective status).
    pub fn runs(&self, experiment: Option<&str>, status: Option<RunStatus>) -> Result<Vec<RunRow>> {
        let rows = self.store.list_runs(experiment)?;
        let Some(status) = status else {
            return Ok(rows);
        };
        let t = self.store.now()?;
        Ok(rows
            .into_iter()
            .filter(|r| r.effective_status(t) == status)
            .collect())
    }

    /// A run by id or unique id prefix.
    pub fn run(&self, id: &str) -> Result<RunRow> {
        let runs = self.store.runs_with_prefix(id)?;
        if let Some(exact) = runs.iter().find(|r| r.id == id) {
            return Ok(exact.clone());
        }
        match runs.len() {
            0 => Err(RegistryError::NoSuchRun(id.to_string())),
            1 => Ok(runs.into_iter().next().expect("one run")),
            _ => Err(RegistryError::Ambiguous {
                prefix: id.to_string(),
                candidates: runs.into_iter().map(|r| r.id).collect(),
            }),
        }
    }

    /// All metric points of a run, by key then step.
    pub fn metrics(&self, run_id: &str) -> Result<Vec<MetricPoint>> {
        self.store.metrics(run_id)
    }

    /// Summary values of a run, by key.
    pub fn summaries(&self, run_id: &str) -> Result<Summaries> {
        self.store.summaries(run_id)
    }

    /// Summaries of the latest finished run of each of these cell hashes (a `--force` re-run
    /// supersedes the earlier one).
    pub fn finished_summaries(&self, hashes: &[String]) -> Result<HashMap<String, Summaries>> {
        self.store.finished_summaries(hashes)
    }

    /// Summary values `keys` (all when empty) of every run (of one experiment, or all), by run
    /// id, in one query: what `--where` filters over many runs read.
    pub fn summaries_by_run(
        &self,
        experiment: Option<&str>,
        keys: &[String],
    ) -> Result<HashMap<String, Summaries>> {
        self.store.summaries_by_run(experiment, keys)
    }

    /// Makes the registry's files complete while the caller is idle (see [`RunStore::tidy`]).
    pub fn tidy(&self) -> Result<()> {
        self.store.tidy()
    }

    /// Writes a consistent copy of the registry to `dest` (SQLite's online backup).
    pub fn backup(&self, dest: &Path) -> Result<()> {
        self.store.backup(dest)
    }

    /// Checks integrity and consistency.
    pub fn check(&self) -> Result<CheckReport> {
        self.store.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_paths_sqlite_or_postgres_urls() {
        let parse = |s: &str| Address::parse(OsStr::new(s));
        assert_eq!(
            parse("registry/beatlab.db").unwrap(),
            Address::Sqlite("registry/beatlab.db".into())
        );
        assert_eq!(
            parse("sqlite:///tmp/r.db").unwrap(),
            Address::Sqlite("/tmp/r.db".into())
        );
        assert_eq!(
            parse("sqlite:r.db").unwrap(),
            Address::Sqlite("r.db".into())
        );
        assert_eq!(
            parse("postgres://u@h/db").unwrap(),
            Address::Postgres("postgres://u@h/db".into())
        );
        assert!(parse("mysql://u@h/db").unwrap_err().is_bad_input());
        assert!(parse("").is_err());
        assert!(parse("sqlite://").is_err());
        // A relative path with `://` further on is still a path.
        assert_eq!(
            parse("dir/x://y").unwrap(),
            Address::Sqlite("dir/x://y".into())
        );
    }

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            redact_password("postgres://me:secret@db.example:5433/beatlab?sslmode=require"),
            "postgres://me:***@db.example:5433/beatlab?sslmode=require"
        );
        assert_eq!(redact_password("postgres://me@h/db"), "postgres://me@h/db");
        assert_eq!(redact_password("postgres://h/db"), "postgres://h/db");
    }
}
