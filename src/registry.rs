//! The run registry: one SQLite file recording experiments, runs, metrics, summaries and
//! checkpoints.
//!
//! Several worker processes share one registry. A worker claims a cell in a single
//! `BEGIN IMMEDIATE` transaction (SQLite's write lock), so two workers never take the same cell;
//! while it runs, it heartbeats, and a run whose heartbeat is older than its lease is stale and
//! is taken over (resuming from its last checkpoint) by the next worker that looks. The file uses
//! WAL so that readers (`beatlab runs`, `table`) never block writers.
//!
//! sqlx is asynchronous while training loops are not; [`Registry`] owns a small Tokio runtime and
//! exposes blocking methods.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Row, SqlitePool};

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The database file could not be opened or created.
    #[error("cannot open registry {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    /// The schema migrations failed (e.g. a registry written by a newer beatlab).
    #[error("cannot migrate registry {}: {source}", path.display())]
    Migrate {
        path: PathBuf,
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
}

type Result<T> = std::result::Result<T, RegistryError>;

/// How often opening a fresh registry is tried while other processes open it too (see
/// `Registry::connect`); the waits between tries double from 50 ms, 6.4 s in all.
const RACE_ATTEMPTS: u32 = 8;

fn q(context: &'static str) -> impl FnOnce(sqlx::Error) -> RegistryError {
    move |source| RegistryError::Query { context, source }
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
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

const RUN_COLUMNS: &str = "id, experiment, cell_index, cell_label, overrides, spec_json, spec_hash, seed, status, \
     attempt, stage, code_rev, code_dirty, host, device, worker, run_dir, created_at, started_at, \
     heartbeat_at, lease_s, finished_at, error";

fn run_from_row(r: &sqlx::sqlite::SqliteRow) -> RunRow {
    let status: String = r.get("status");
    let overrides: String = r.get("overrides");
    RunRow {
        id: r.get("id"),
        experiment: r.get("experiment"),
        cell_index: r.get("cell_index"),
        cell_label: r.get("cell_label"),
        overrides: serde_json::from_str(&overrides).unwrap_or(serde_json::Value::Null),
        spec_json: r.get("spec_json"),
        hash: r.get("spec_hash"),
        seed: r.get("seed"),
        status: status.parse().unwrap_or(RunStatus::Failed),
        attempt: r.get("attempt"),
        stage: r.get("stage"),
        code_rev: r.get("code_rev"),
        code_dirty: r.get::<i64, _>("code_dirty") != 0,
        host: r.get("host"),
        device: r.get("device"),
        worker: r.get("worker"),
        run_dir: r.get("run_dir"),
        created_at: r.get("created_at"),
        started_at: r.get("started_at"),
        heartbeat_at: r.get("heartbeat_at"),
        lease_s: r.get("lease_s"),
        finished_at: r.get("finished_at"),
        error: r.get("error"),
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

/// Handle to the registry file; cheap to clone and shareable across threads.
#[derive(Clone)]
pub struct Registry {
    pool: SqlitePool,
    rt: Arc<tokio::runtime::Runtime>,
    path: PathBuf,
    /// Integer ids of runs and metric names already looked up (they never change).
    ids: Arc<std::sync::Mutex<IdCache>>,
}

#[derive(Default)]
struct IdCache {
    runs: std::collections::HashMap<String, i64>,
    keys: std::collections::HashMap<String, i64>,
}

impl Registry {
    /// Opens (creating if needed) the registry at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| RegistryError::Open {
                path: path.to_path_buf(),
                source: sqlx::Error::Io(e),
            })?;
        }
        Self::connect(path, true)
    }

    /// Opens an existing registry, or returns `None` if there is none (so that read-only commands
    /// such as `plan` create nothing).
    pub fn open_existing(path: &Path) -> Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        Self::connect(path, false).map(Some)
    }

    fn connect(path: &Path, create: bool) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(RegistryError::Runtime)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(create)
            // WAL: readers never block the writer, and a crash never corrupts the file.
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across application crashes in WAL mode; only a power loss may
            // drop the last transactions, which the next heartbeat-less lease recovers from.
            .synchronous(SqliteSynchronous::Normal)
            // Workers of a sweep contend for the write lock; waiting is right, failing is not.
            .busy_timeout(Duration::from_secs(60))
            .foreign_keys(true);
        // Switching a fresh file to WAL takes an exclusive lock that SQLite does not wait for:
        // a process opening it while another one does that gets "database is locked" at once.
        let mut attempt = 1;
        let pool = loop {
            let connecting = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options.clone());
            match rt.block_on(connecting) {
                Err(sqlx::Error::Database(e))
                    if e.code().as_deref() == Some("5") && attempt < RACE_ATTEMPTS =>
                {
                    std::thread::sleep(Duration::from_millis(25 << attempt));
                    attempt += 1;
                }
                result => {
                    break result.map_err(|source| RegistryError::Open {
                        path: path.to_path_buf(),
                        source,
                    })?;
                }
            }
        };
        Self::migrate(&rt, &pool).map_err(|source| RegistryError::Migrate {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            pool,
            rt: Arc::new(rt),
            path: path.to_path_buf(),
            ids: Default::default(),
        })
    }

    /// Applies the embedded migrations. Processes that open a fresh registry at the same moment
    /// (the workers of a sweep, a test polling a worker's registry) race to apply them: the
    /// loser's transaction fails (a busy snapshot, or "table already exists") and, once the
    /// winner has committed, finds them applied. So an execution error is retried a few times;
    /// anything else (a registry from a newer beatlab) fails at once.
    fn migrate(
        rt: &tokio::runtime::Runtime,
        pool: &SqlitePool,
    ) -> std::result::Result<(), sqlx::migrate::MigrateError> {
        use sqlx::migrate::MigrateError;
        let migrator = sqlx::migrate!("./migrations");
        let mut attempt = 1;
        loop {
            match rt.block_on(migrator.run(pool)) {
                Err(MigrateError::Execute(_) | MigrateError::ExecuteMigration(..))
                    if attempt < RACE_ATTEMPTS =>
                {
                    std::thread::sleep(Duration::from_millis(25 << attempt));
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Records (or refreshes) an experiment's spec path and description.
    pub fn upsert_experiment(&self, name: &str, spec_path: &str, description: &str) -> Result<()> {
        let t = now();
        self.block(
            sqlx::query(
                "INSERT INTO experiments (name, spec_path, description, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT(name) DO UPDATE SET spec_path = ?2, description = ?3, updated_at = ?4",
            )
            .bind(name)
            .bind(spec_path)
            .bind(description)
            .bind(t)
            .execute(&self.pool),
        )
        .map_err(q("recording the experiment"))?;
        Ok(())
    }

    /// The latest run of each of these cell hashes.
    pub fn latest_runs(
        &self,
        hashes: &[String],
    ) -> Result<std::collections::HashMap<String, RunRow>> {
        let mut out = std::collections::HashMap::new();
        for chunk in hashes.chunks(500) {
            let placeholders = vec!["?"; chunk.len()].join(",");
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE spec_hash IN ({placeholders})
                 ORDER BY created_at, rowid"
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for h in chunk {
                query = query.bind(h);
            }
            let rows = self
                .block(query.fetch_all(&self.pool))
                .map_err(q("reading cell status"))?;
            for r in &rows {
                let run = run_from_row(r);
                out.insert(run.hash.clone(), run);
            }
        }
        Ok(out)
    }

    /// Registers cells that have no run yet as `pending`, so that `beatlab runs` shows the
    /// queue of a sweep.
    pub fn enqueue(&self, policy: &ClaimPolicy, cells: &[CellOffer]) -> Result<usize> {
        let t = now();
        let mut added = 0;
        self.block(async {
            let mut tx = self
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(q("enqueueing cells"))?;
            for cell in cells {
                let exists: Option<String> =
                    sqlx::query_scalar("SELECT id FROM runs WHERE spec_hash = ?1 LIMIT 1")
                        .bind(&cell.hash)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(q("enqueueing cells"))?;
                if exists.is_some() {
                    continue;
                }
                let id = next_run_id(&mut tx, &cell.hash).await?;
                insert_run(&mut tx, &id, policy, cell, "pending", t).await?;
                added += 1;
            }
            tx.commit().await.map_err(q("enqueueing cells"))?;
            Ok::<_, RegistryError>(())
        })?;
        Ok(added)
    }

    /// Claims the first cell (in plan order) that needs work, in one `BEGIN IMMEDIATE`
    /// transaction. Returns `None` when every cell is finished, failed or held by a live worker.
    pub fn claim(&self, policy: &ClaimPolicy, cells: &[CellOffer]) -> Result<Option<Claim>> {
        self.block(async {
            let mut tx = self
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(q("claiming a cell"))?;
            let t = now();
            // Runs whose holder stopped heartbeating are stale: anyone may continue them.
            sqlx::query(
                "UPDATE runs SET status = 'stale'
                 WHERE status = 'running' AND heartbeat_at IS NOT NULL AND ?1 - heartbeat_at > lease_s",
            )
            .bind(t)
            .execute(&mut *tx)
            .await
            .map_err(q("marking stale runs"))?;

            let mut claim = None;
            for cell in cells {
                let latest = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE spec_hash = ?1 ORDER BY created_at DESC, rowid DESC LIMIT 1"
                )))
                .bind(&cell.hash)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("claiming a cell"))?
                .map(|r| run_from_row(&r));
                let take_over = |run: &RunRow| matches!(run.status, RunStatus::Pending | RunStatus::Stale);
                let again = |run: &RunRow| match run.status {
                    RunStatus::Finished => policy
                        .force_before
                        .is_some_and(|t0| run.finished_at.unwrap_or(0.0) < t0),
                    RunStatus::Failed => policy
                        .rerun_failed_before
                        .is_some_and(|t0| run.finished_at.unwrap_or(0.0) < t0),
                    _ => false,
                };
                match latest {
                    Some(run) if take_over(&run) => {
                        sqlx::query(
                            "UPDATE runs SET status = 'running', worker = ?2, host = ?3, device = ?4,
                                 code_rev = ?5, code_dirty = ?6, lease_s = ?7, heartbeat_at = ?8,
                                 started_at = COALESCE(started_at, ?8),
                                 attempt = attempt + (CASE WHEN status = 'stale' THEN 1 ELSE 0 END),
                                 error = NULL
                             WHERE id = ?1",
                        )
                        .bind(&run.id)
                        .bind(&policy.worker)
                        .bind(&policy.host)
                        .bind(&policy.device)
                        .bind(&policy.code_rev)
                        .bind(policy.code_dirty as i64)
                        .bind(policy.lease_s)
                        .bind(t)
                        .execute(&mut *tx)
                        .await
                        .map_err(q("claiming a cell"))?;
                        let resumed = run.status == RunStatus::Stale;
                        claim = Some(Claim {
                            run_id: run.id.clone(),
                            cell_index: cell.index,
                            attempt: run.attempt + i64::from(resumed),
                            resumed,
                            run_dir: PathBuf::from(&run.run_dir),
                        });
                        break;
                    }
                    Some(run) if !again(&run) => continue,
                    _ => {
                        let id = next_run_id(&mut tx, &cell.hash).await?;
                        insert_run(&mut tx, &id, policy, cell, "running", t).await?;
                        claim = Some(Claim {
                            run_id: id.clone(),
                            cell_index: cell.index,
                            attempt: 1,
                            resumed: false,
                            run_dir: policy.experiment_dir.join(&id),
                        });
                        break;
                    }
                }
            }
            tx.commit().await.map_err(q("claiming a cell"))?;
            Ok(claim)
        })
    }

    /// Claims one specific run for `beatlab resume`: it must not be finished, nor held by a live
    /// worker.
    pub fn claim_run(
        &self,
        run_id: &str,
        policy: &ClaimPolicy,
    ) -> Result<std::result::Result<Claim, RunRow>> {
        self.block(async {
            let mut tx = self
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(q("claiming a run"))?;
            let t = now();
            let run = sqlx::query(AssertSqlSafe(format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1")))
                .bind(run_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q("claiming a run"))?
                .map(|r| run_from_row(&r))
                .ok_or_else(|| RegistryError::NoSuchRun(run_id.to_string()))?;
            let status = run.effective_status(t);
            if matches!(status, RunStatus::Finished | RunStatus::Running) {
                return Ok(Err(run));
            }
            sqlx::query(
                "UPDATE runs SET status = 'running', worker = ?2, host = ?3, device = ?4, code_rev = ?5,
                     code_dirty = ?6, lease_s = ?7, heartbeat_at = ?8, attempt = attempt + 1,
                     started_at = COALESCE(started_at, ?8), finished_at = NULL, error = NULL
                 WHERE id = ?1",
            )
            .bind(run_id)
            .bind(&policy.worker)
            .bind(&policy.host)
            .bind(&policy.device)
            .bind(&policy.code_rev)
            .bind(policy.code_dirty as i64)
            .bind(policy.lease_s)
            .bind(t)
            .execute(&mut *tx)
            .await
            .map_err(q("claiming a run"))?;
            tx.commit().await.map_err(q("claiming a run"))?;
            Ok(Ok(Claim {
                run_id: run.id.clone(),
                cell_index: run.cell_index,
                attempt: run.attempt + 1,
                resumed: true,
                run_dir: PathBuf::from(&run.run_dir),
            }))
        })
    }

    /// Refreshes the heartbeat of a run this worker holds. Returns `false` if the worker lost
    /// the run (another worker took it over after a missed lease), in which case it must stop.
    pub fn heartbeat(&self, run_id: &str, worker: &str) -> Result<bool> {
        let done = self
            .block(
                sqlx::query(
                    "UPDATE runs SET heartbeat_at = ?3 WHERE id = ?1 AND worker = ?2 AND status = 'running'",
                )
                .bind(run_id)
                .bind(worker)
                .bind(now())
                .execute(&self.pool),
            )
            .map_err(q("heartbeating"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the stage a run is in.
    pub fn set_stage(&self, run_id: &str, stage: &str) -> Result<()> {
        self.block(
            sqlx::query("UPDATE runs SET stage = ?2 WHERE id = ?1")
                .bind(run_id)
                .bind(stage)
                .execute(&self.pool),
        )
        .map_err(q("recording the stage"))?;
        Ok(())
    }

    /// Ends a run: `finished`, `failed` (with the error), or `stale` (interrupted, to be resumed).
    pub fn end_run(
        &self,
        run_id: &str,
        worker: &str,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<()> {
        self.block(
            sqlx::query(
                "UPDATE runs SET status = ?3, error = ?4, finished_at = ?5,
                     heartbeat_at = CASE WHEN ?3 = 'stale' THEN NULL ELSE heartbeat_at END
                 WHERE id = ?1 AND worker = ?2",
            )
            .bind(run_id)
            .bind(worker)
            .bind(status.as_str())
            .bind(error)
            .bind(now())
            .execute(&self.pool),
        )
        .map_err(q("ending a run"))?;
        Ok(())
    }

    /// Writes metric points in one transaction (re-written steps replace the old values, so a
    /// resumed run that repeats steps after its checkpoint stays consistent).
    pub fn log_metrics(&self, run_id: &str, points: &[MetricPoint]) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        self.block(async {
            // IMMEDIATE: the transaction reads (the run's and keys' ids) before it writes, and a
            // deferred one whose read snapshot another worker's commit made stale cannot take
            // the write lock ("database is locked" at once, without the busy timeout's wait).
            let mut tx = self
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(q("writing metrics"))?;
            let run = self.run_num(&mut tx, run_id).await?;
            let mut keys = Vec::with_capacity(points.len());
            for p in points {
                keys.push(self.key_id(&mut tx, &p.key).await?);
            }
            // 5 bound values per row; SQLite allows 32766 variables per statement.
            for (chunk, chunk_keys) in points.chunks(1000).zip(keys.chunks(1000)) {
                let mut qb = sqlx::QueryBuilder::new(
                    "INSERT OR REPLACE INTO metrics (run, key, step, value, time) ",
                );
                qb.push_values(chunk.iter().zip(chunk_keys), |mut b, (p, key)| {
                    b.push_bind(run)
                        .push_bind(*key)
                        .push_bind(p.step)
                        .push_bind(p.value)
                        .push_bind(p.time);
                });
                qb.build()
                    .execute(&mut *tx)
                    .await
                    .map_err(q("writing metrics"))?;
            }
            tx.commit().await.map_err(q("writing metrics"))
        })
    }

    /// The integer id of a run (cached).
    async fn run_num(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        run_id: &str,
    ) -> Result<i64> {
        if let Some(n) = self.ids.lock().expect("id cache").runs.get(run_id) {
            return Ok(*n);
        }
        let n: i64 = sqlx::query_scalar("SELECT num FROM runs WHERE id = ?1")
            .bind(run_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(q("writing metrics"))?
            .ok_or_else(|| RegistryError::NoSuchRun(run_id.to_string()))?;
        self.ids
            .lock()
            .expect("id cache")
            .runs
            .insert(run_id.to_string(), n);
        Ok(n)
    }

    /// The integer id of a metric name, created on first use (cached).
    async fn key_id(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        name: &str,
    ) -> Result<i64> {
        if let Some(id) = self.ids.lock().expect("id cache").keys.get(name) {
            return Ok(*id);
        }
        sqlx::query("INSERT OR IGNORE INTO metric_keys (name) VALUES (?1)")
            .bind(name)
            .execute(&mut **tx)
            .await
            .map_err(q("naming a metric"))?;
        let id: i64 = sqlx::query_scalar("SELECT id FROM metric_keys WHERE name = ?1")
            .bind(name)
            .fetch_one(&mut **tx)
            .await
            .map_err(q("naming a metric"))?;
        self.ids
            .lock()
            .expect("id cache")
            .keys
            .insert(name.to_string(), id);
        Ok(id)
    }

    /// Sets summary values (the numbers tables are made of).
    pub fn set_summaries(&self, run_id: &str, values: &[(String, f64)]) -> Result<()> {
        self.block(async {
            let mut tx = self
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(q("writing summaries"))?;
            for (k, v) in values {
                sqlx::query(
                    "INSERT OR REPLACE INTO summaries (run_id, key, value) VALUES (?1, ?2, ?3)",
                )
                .bind(run_id)
                .bind(k)
                .bind(v)
                .execute(&mut *tx)
                .await
                .map_err(q("writing summaries"))?;
            }
            tx.commit().await.map_err(q("writing summaries"))
        })
    }

    /// Records a checkpoint file (already written and fsynced).
    pub fn record_checkpoint(&self, c: &CheckpointRow) -> Result<()> {
        self.block(
            sqlx::query(
                "INSERT OR REPLACE INTO checkpoints (run_id, stage, step, epoch, final, path, sha256, bytes, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .bind(&c.run_id)
            .bind(&c.stage)
            .bind(c.step)
            .bind(c.epoch)
            .bind(c.is_final as i64)
            .bind(&c.path)
            .bind(&c.sha256)
            .bind(c.bytes)
            .bind(now())
            .execute(&self.pool),
        )
        .map_err(q("recording a checkpoint"))?;
        Ok(())
    }

    /// Forgets a checkpoint (its file is being deleted).
    pub fn delete_checkpoint(&self, run_id: &str, stage: &str, step: i64) -> Result<()> {
        self.block(
            sqlx::query("DELETE FROM checkpoints WHERE run_id = ?1 AND stage = ?2 AND step = ?3")
                .bind(run_id)
                .bind(stage)
                .bind(step)
                .execute(&self.pool),
        )
        .map_err(q("deleting a checkpoint"))?;
        Ok(())
    }

    /// Checkpoints of a run, oldest first.
    pub fn checkpoints(&self, run_id: &str) -> Result<Vec<CheckpointRow>> {
        let rows = self
            .block(
                sqlx::query(
                    "SELECT run_id, stage, step, epoch, final, path, sha256, bytes FROM checkpoints
                     WHERE run_id = ?1 ORDER BY created_at, step",
                )
                .bind(run_id)
                .fetch_all(&self.pool),
            )
            .map_err(q("reading checkpoints"))?;
        Ok(rows
            .iter()
            .map(|r| CheckpointRow {
                run_id: r.get("run_id"),
                stage: r.get("stage"),
                step: r.get("step"),
                epoch: r.get("epoch"),
                is_final: r.get::<i64, _>("final") != 0,
                path: r.get("path"),
                sha256: r.get("sha256"),
                bytes: r.get("bytes"),
            })
            .collect())
    }

    /// Runs, newest first, optionally filtered.
    pub fn runs(&self, experiment: Option<&str>, status: Option<RunStatus>) -> Result<Vec<RunRow>> {
        let rows = self
            .block(
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR experiment = ?1)
                     ORDER BY created_at DESC, rowid DESC"
                )))
                .bind(experiment)
                .fetch_all(&self.pool),
            )
            .map_err(q("listing runs"))?;
        let t = now();
        Ok(rows
            .iter()
            .map(run_from_row)
            .filter(|r| status.is_none_or(|s| r.effective_status(t) == s))
            .collect())
    }

    /// A run by id or unique id prefix.
    pub fn run(&self, id: &str) -> Result<RunRow> {
        let pattern = format!("{}%", id.replace('%', "").replace('_', "\\_"));
        let rows = self
            .block(
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1 OR id LIKE ?2 ESCAPE '\\' ORDER BY id"
                )))
                .bind(id)
                .bind(pattern)
                .fetch_all(&self.pool),
            )
            .map_err(q("finding a run"))?;
        let runs: Vec<RunRow> = rows.iter().map(run_from_row).collect();
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
        let rows = self
            .block(
                sqlx::query(
                    "SELECT k.name AS key, m.step, m.value, m.time FROM metrics m
                     JOIN metric_keys k ON k.id = m.key JOIN runs r ON r.num = m.run
                     WHERE r.id = ?1 ORDER BY k.name, m.step",
                )
                .bind(run_id)
                .fetch_all(&self.pool),
            )
            .map_err(q("reading metrics"))?;
        Ok(rows
            .iter()
            .map(|r| MetricPoint {
                key: r.get("key"),
                step: r.get("step"),
                value: r.get("value"),
                time: r.get("time"),
            })
            .collect())
    }

    /// Summary values of a run, by key.
    pub fn summaries(&self, run_id: &str) -> Result<std::collections::BTreeMap<String, f64>> {
        let rows = self
            .block(
                sqlx::query("SELECT key, value FROM summaries WHERE run_id = ?1")
                    .bind(run_id)
                    .fetch_all(&self.pool),
            )
            .map_err(q("reading summaries"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get("key"), r.get("value")))
            .collect())
    }

    /// Summary values `keys` (all when empty) of every run (of one experiment, or all), by run
    /// id, in one query: what `--where` filters over many runs read.
    pub fn summaries_by_run(
        &self,
        experiment: Option<&str>,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, std::collections::BTreeMap<String, f64>>> {
        let key_filter = match keys.len() {
            0 => String::new(),
            n => {
                let numbered: Vec<String> = (2..n + 2).map(|i| format!("?{i}")).collect();
                format!(" AND s.key IN ({})", numbered.join(","))
            }
        };
        let sql = format!(
            "SELECT s.run_id, s.key, s.value FROM summaries s JOIN runs r ON r.id = s.run_id
             WHERE (?1 IS NULL OR r.experiment = ?1){key_filter}"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(experiment);
        for k in keys {
            query = query.bind(k);
        }
        let rows = self
            .block(query.fetch_all(&self.pool))
            .map_err(q("reading summaries"))?;
        let mut out: std::collections::HashMap<String, std::collections::BTreeMap<String, f64>> =
            Default::default();
        for r in &rows {
            out.entry(r.get("run_id"))
                .or_default()
                .insert(r.get("key"), r.get("value"));
        }
        Ok(out)
    }

    /// Summaries of the latest finished run of each of these cell hashes (a `--force` re-run
    /// supersedes the earlier one).
    pub fn finished_summaries(
        &self,
        hashes: &[String],
    ) -> Result<std::collections::HashMap<String, std::collections::BTreeMap<String, f64>>> {
        let mut latest: std::collections::HashMap<
            String,
            (String, std::collections::BTreeMap<String, f64>),
        > = Default::default();
        for chunk in hashes.chunks(500) {
            let placeholders = vec!["?"; chunk.len()].join(",");
            let sql = format!(
                "SELECT r.id, r.spec_hash, s.key, s.value FROM runs r JOIN summaries s ON s.run_id = r.id
                 WHERE r.status = 'finished' AND r.spec_hash IN ({placeholders})
                 ORDER BY r.created_at, r.rowid"
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for h in chunk {
                query = query.bind(h);
            }
            let rows = self
                .block(query.fetch_all(&self.pool))
                .map_err(q("reading summaries"))?;
            for r in &rows {
                let (id, hash): (String, String) = (r.get("id"), r.get("spec_hash"));
                let entry = latest
                    .entry(hash)
                    .or_insert_with(|| (id.clone(), Default::default()));
                if entry.0 != id {
                    *entry = (id, Default::default());
                }
                entry.1.insert(r.get("key"), r.get("value"));
            }
        }
        Ok(latest.into_iter().map(|(h, (_, s))| (h, s)).collect())
    }
}

/// A new run id: the hash's first 10 hex digits and a counter. The counter runs over every id
/// with that prefix, so two hashes that share it still get distinct ids.
async fn next_run_id(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, hash: &str) -> Result<String> {
    let prefix = &hash[..10];
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE id LIKE ?1")
        .bind(format!("{prefix}-%"))
        .fetch_one(&mut **tx)
        .await
        .map_err(q("numbering a run"))?;
    Ok(format!("{prefix}-{}", n + 1))
}

async fn insert_run(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: &str,
    policy: &ClaimPolicy,
    cell: &CellOffer,
    status: &str,
    t: f64,
) -> Result<()> {
    let running = status == "running";
    sqlx::query(
        "INSERT INTO runs (id, experiment, cell_index, cell_label, overrides, spec_json, spec_hash, seed,
             status, attempt, code_rev, code_dirty, host, device, worker, run_dir, created_at,
             started_at, heartbeat_at, lease_s)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?17, ?18)",
    )
    .bind(id)
    .bind(&policy.experiment)
    .bind(cell.index)
    .bind(&cell.label)
    .bind(cell.overrides.to_string())
    .bind(&cell.spec_json)
    .bind(&cell.hash)
    .bind(cell.seed)
    .bind(status)
    .bind(&policy.code_rev)
    .bind(policy.code_dirty as i64)
    .bind(&policy.host)
    .bind(&policy.device)
    .bind(if running { policy.worker.as_str() } else { "" })
    .bind(policy.experiment_dir.join(id).to_string_lossy().into_owned())
    .bind(t)
    .bind(running.then_some(t))
    .bind(policy.lease_s)
    .execute(&mut **tx)
    .await
    .map_err(q("creating a run"))?;
    Ok(())
}
