//! The SQLite store: one file in WAL mode (readers never block the writer), migrations from
//! `migrations/sqlite/`. A worker claims a cell in one `BEGIN IMMEDIATE` transaction (SQLite's
//! write lock), so two workers never take the same cell.
//!
//! Commands that only read open the file read-only: they never create, migrate or otherwise
//! change it, and a file that is not a beatlab registry (another program's SQLite database) or
//! was written by a newer beatlab is refused with an error saying so.
//!
//! sqlx is asynchronous while training loops are not; the store owns a small Tokio runtime and
//! its methods block.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, SqlitePool};

use super::claim::{
    CLAIM_RUN, ClaimSteps, bind_take_over, claim_first, enqueue_cells, shared_claim_writes,
};
use super::rows::{RUN_COLUMNS, checkpoint_from_row, col, run_from_row, runs_from_rows, runtime};
use super::{
    CellOffer, CheckReport, CheckpointRow, Claim, ClaimPolicy, MetricPoint, RACE_ATTEMPTS,
    RegistryError, Result, RunRow, RunStatus, RunStore, SchemaCheck, Summaries, holder_is_dead,
    now, q,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A SQLite registry file.
pub struct SqliteStore {
    pool: SqlitePool,
    rt: tokio::runtime::Runtime,
    path: PathBuf,
    read_only: bool,
    /// Integer ids of runs and metric names already looked up (they never change).
    ids: Mutex<IdCache>,
}

#[derive(Default)]
struct IdCache {
    runs: HashMap<String, i64>,
    keys: HashMap<String, i64>,
}

impl SqliteStore {
    /// Opens (creating if needed) the registry file at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        let open_err = |source| RegistryError::Open {
            address: path.display().to_string(),
            source,
        };
        super::netfs::refuse_network_filesystem(path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(sqlx::Error::Io(e)))?;
        }
        let rt = runtime()?;
        // What is there is looked at read-only first: another program's database must not even
        // be switched to WAL.
        if path.exists() {
            rt.block_on(inspect(path))?
                .for_writing(&path.display().to_string())?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
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
                result => break result.map_err(open_err)?,
            }
        };
        migrate(&rt, &pool).map_err(|source| RegistryError::Migrate {
            address: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            pool,
            rt,
            path: path.to_path_buf(),
            read_only: false,
            ids: Default::default(),
        })
    }

    /// Opens an existing registry file read-only, or returns `None` if there is none (no file,
    /// or a file without tables yet). Nothing is created or changed; a foreign, older or newer
    /// schema is an error.
    pub fn open_existing(path: &Path) -> Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        super::netfs::refuse_network_filesystem(path)?;
        let address = path.display().to_string();
        let rt = runtime()?;
        if !rt.block_on(inspect(path))?.for_reading(&address)? {
            return Ok(None);
        }
        let pool = rt
            .block_on(
                SqlitePoolOptions::new()
                    .max_connections(2)
                    .connect_with(read_only_options(path)),
            )
            .map_err(|source| RegistryError::Open { address, source })?;
        Ok(Some(Self {
            pool,
            rt,
            path: path.to_path_buf(),
            read_only: true,
            ids: Default::default(),
        }))
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

/// Options that read a file without changing it. When its folder cannot be written (a
/// read-only mount) and no write-ahead log is beside it, SQLite cannot create the `-shm` file
/// a WAL reader needs, so the file is opened as immutable.
fn read_only_options(path: &Path) -> SqliteConnectOptions {
    let folder = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let immutable = !writable(folder) && !wal.exists();
    SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .immutable(immutable)
        .busy_timeout(Duration::from_secs(60))
}

fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// What the file at `path` holds, looked at through a read-only connection.
async fn inspect(path: &Path) -> Result<SchemaCheck> {
    let address = path.display().to_string();
    let open_err = |source| RegistryError::Open {
        address: address.clone(),
        source,
    };
    let mut conn = sqlx::ConnectOptions::connect(&read_only_options(path))
        .await
        .map_err(open_err)?;
    let tables: Vec<String> = match sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    {
        Ok(tables) => tables,
        // SQLITE_NOTADB: not an SQLite file at all.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("26") => {
            return Ok(SchemaCheck::Foreign("it is not an SQLite database".into()));
        }
        Err(e) => return Err(open_err(e)),
    };
    if tables.is_empty() {
        return Ok(SchemaCheck::Empty);
    }
    if !tables.iter().any(|t| t == "_sqlx_migrations") {
        return Ok(SchemaCheck::Foreign(format!(
            "it holds tables ({}) but no beatlab schema history",
            tables.join(", ")
        )));
    }
    let applied: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT version, checksum FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(open_err)?;
    // Another process is creating this registry: it made the history table and is applying
    // the first migration.
    if applied.is_empty() && tables.len() == 1 {
        return Ok(SchemaCheck::Empty);
    }
    Ok(SchemaCheck::compare(&applied, &MIGRATOR))
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
    let mut attempt = 1;
    loop {
        match rt.block_on(MIGRATOR.run(pool)) {
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

impl Drop for SqliteStore {
    /// Moves everything from the write-ahead log into the database file before closing, so
    /// that the `.db` file alone holds the registry (a copy of it is a backup).
    fn drop(&mut self) {
        let pool = self.pool.clone();
        let read_only = self.read_only;
        self.rt.block_on(async move {
            if !read_only {
                let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&pool)
                    .await;
            }
            pool.close().await;
        });
    }
}

impl RunStore for SqliteStore {
    fn address(&self) -> String {
        self.path.display().to_string()
    }

    fn now(&self) -> Result<f64> {
        Ok(now())
    }

    fn upsert_experiment(&self, name: &str, spec_path: &str, description: &str) -> Result<()> {
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

    fn latest_runs(&self, hashes: &[String]) -> Result<HashMap<String, RunRow>> {
        let mut out = HashMap::new();
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
            for run in runs_from_rows(&rows)? {
                out.insert(run.hash.clone(), run);
            }
        }
        Ok(out)
    }

    fn enqueue(&self, policy: &ClaimPolicy, cells: &[CellOffer]) -> Result<usize> {
        self.block(async {
            let mut tx = self
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(q("enqueueing cells"))?;
            let added = enqueue_cells(&mut Steps(&mut tx), policy, cells, now()).await?;
            tx.commit().await.map_err(q("enqueueing cells"))?;
            Ok(added)
        })
    }

    fn claim(&self, policy: &ClaimPolicy, cells: &[CellOffer]) -> Result<Option<Claim>> {
        self.block(async {
            let mut tx = self
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(q("claiming a cell"))?;
            let t = now();
            mark_abandoned(&mut tx, &policy.host, t).await?;
            let claim = claim_first(&mut Steps(&mut tx), policy, cells, t).await?;
            tx.commit().await.map_err(q("claiming a cell"))?;
            Ok(claim)
        })
    }

    fn claim_run(
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
            mark_abandoned(&mut tx, &policy.host, t).await?;
            let run = sqlx::query(AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"
            )))
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("claiming a run"))?
            .map(|r| run_from_row(&r))
            .transpose()?
            .ok_or_else(|| RegistryError::NoSuchRun(run_id.to_string()))?;
            let status = run.effective_status(t);
            if matches!(status, RunStatus::Finished | RunStatus::Running) {
                return Ok(Err(run));
            }
            bind_take_over!(sqlx::query(CLAIM_RUN), run_id, policy, t)
                .execute(&mut *tx)
                .await
                .map_err(q("claiming a run"))?;
            tx.commit().await.map_err(q("claiming a run"))?;
            Ok(Ok(Claim::resumed(&run)))
        })
    }

    fn heartbeat(&self, run_id: &str, worker: &str) -> Result<bool> {
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

    fn set_stage(&self, run_id: &str, stage: &str) -> Result<()> {
        self.block(
            sqlx::query("UPDATE runs SET stage = ?2 WHERE id = ?1")
                .bind(run_id)
                .bind(stage)
                .execute(&self.pool),
        )
        .map_err(q("recording the stage"))?;
        Ok(())
    }

    fn release(&self, run_id: &str, worker: &str) -> Result<()> {
        self.block(
            sqlx::query(
                "UPDATE runs SET status = 'pending', worker = '', heartbeat_at = NULL
                 WHERE id = ?1 AND worker = ?2 AND status = 'running'",
            )
            .bind(run_id)
            .bind(worker)
            .execute(&self.pool),
        )
        .map_err(q("releasing a run"))?;
        Ok(())
    }

    fn end_run(
        &self,
        run_id: &str,
        worker: &str,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<()> {
        self.block(
            sqlx::query(
                "UPDATE runs SET status = ?3, error = ?4, finished_at = ?5,
                     heartbeat_at = CASE WHEN ?3 = 'stale' THEN NULL ELSE heartbeat_at END,
                     failures = failures + (CASE WHEN ?3 = 'failed' THEN 1 ELSE 0 END)
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

    fn log_metrics(&self, run_id: &str, points: &[MetricPoint]) -> Result<()> {
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

    fn set_summaries(&self, run_id: &str, values: &[(String, f64)]) -> Result<()> {
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

    fn record_checkpoint(&self, c: &CheckpointRow) -> Result<()> {
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

    fn delete_checkpoint(&self, run_id: &str, stage: &str, step: i64) -> Result<()> {
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

    fn checkpoints(&self, run_id: &str) -> Result<Vec<CheckpointRow>> {
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
        rows.iter().map(checkpoint_from_row).collect()
    }

    fn list_runs(&self, experiment: Option<&str>) -> Result<Vec<RunRow>> {
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
        runs_from_rows(&rows)
    }

    fn runs_with_prefix(&self, id: &str) -> Result<Vec<RunRow>> {
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
        runs_from_rows(&rows)
    }

    fn metrics(&self, run_id: &str) -> Result<Vec<MetricPoint>> {
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
        rows.iter()
            .map(|r| {
                Ok(MetricPoint {
                    key: col(r, "key")?,
                    step: col(r, "step")?,
                    value: col(r, "value")?,
                    time: col(r, "time")?,
                })
            })
            .collect()
    }

    fn summaries(&self, run_id: &str) -> Result<Summaries> {
        let rows = self
            .block(
                sqlx::query("SELECT key, value FROM summaries WHERE run_id = ?1")
                    .bind(run_id)
                    .fetch_all(&self.pool),
            )
            .map_err(q("reading summaries"))?;
        rows.iter()
            .map(|r| Ok((col(r, "key")?, col(r, "value")?)))
            .collect()
    }

    fn finished_summaries(&self, hashes: &[String]) -> Result<HashMap<String, Summaries>> {
        let mut latest: HashMap<String, (String, Summaries)> = Default::default();
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
                let (id, hash): (String, String) = (col(r, "id")?, col(r, "spec_hash")?);
                let entry = latest
                    .entry(hash)
                    .or_insert_with(|| (id.clone(), Default::default()));
                if entry.0 != id {
                    *entry = (id, Default::default());
                }
                entry.1.insert(col(r, "key")?, col(r, "value")?);
            }
        }
        Ok(latest.into_iter().map(|(h, (_, s))| (h, s)).collect())
    }

    fn summaries_by_run(
        &self,
        experiment: Option<&str>,
        keys: &[String],
    ) -> Result<HashMap<String, Summaries>> {
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
        let mut out: HashMap<String, Summaries> = Default::default();
        for r in &rows {
            out.entry(col(r, "run_id")?)
                .or_default()
                .insert(col(r, "key")?, col(r, "value")?);
        }
        Ok(out)
    }

    fn tidy(&self) -> Result<()> {
        self.tidy_now()
    }

    fn backup(&self, dest: &Path) -> Result<()> {
        backup_to(self, dest)
    }

    fn check(&self) -> Result<CheckReport> {
        self.block(check(&self.pool))
    }
}

/// Integrity of the file (SQLite's own check, foreign keys) and of the registry: metric points
/// of unknown runs or keys, checkpoint files that are missing or of the wrong size, runs held
/// by a worker whose lease expired.
async fn check(pool: &SqlitePool) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let fetch = |sql: &'static str| sqlx::query(sql).fetch_all(pool);
    report.schema_version =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
            .map_err(q("reading the schema version"))?;
    for r in fetch("PRAGMA integrity_check")
        .await
        .map_err(q("checking integrity"))?
    {
        let line: String = col(&r, "integrity_check")?;
        if line != "ok" {
            report.problems.push(format!("integrity: {line}"));
        }
    }
    for r in fetch("PRAGMA foreign_key_check")
        .await
        .map_err(q("checking foreign keys"))?
    {
        let (table, parent): (String, String) = (col(&r, "table")?, col(&r, "parent")?);
        report
            .problems
            .push(format!("{table}: a row refers to a missing {parent} row"));
    }
    for table in [
        "experiments",
        "runs",
        "metric_keys",
        "metrics",
        "summaries",
        "checkpoints",
    ] {
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(pool)
            .await
            .map_err(q("counting rows"))?;
        report.counts.insert(table.to_string(), n);
    }
    let orphans: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM metrics m WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.num = m.run)
             OR NOT EXISTS (SELECT 1 FROM metric_keys k WHERE k.id = m.key)",
    )
    .fetch_one(pool)
    .await
    .map_err(q("checking metric points"))?;
    if orphans > 0 {
        report.problems.push(format!(
            "metrics: {orphans} point(s) of an unknown run or key"
        ));
    }
    let rows = fetch(
        "SELECT run_id, stage, step, path, bytes FROM checkpoints ORDER BY run_id, stage, step",
    )
    .await
    .map_err(q("reading checkpoints"))?;
    for r in &rows {
        super::check_checkpoint_file(
            &mut report,
            (col(r, "run_id")?, col(r, "stage")?, col(r, "step")?),
            (col(r, "path")?, col(r, "bytes")?),
        );
    }
    let expired = sqlx::query(
        "SELECT id, worker FROM runs WHERE status = 'running' AND heartbeat_at IS NOT NULL
             AND ?1 - heartbeat_at > lease_s ORDER BY id",
    )
    .bind(now())
    .fetch_all(pool)
    .await
    .map_err(q("reading runs"))?;
    for r in &expired {
        super::note_expired(&mut report, col(r, "id")?, col(r, "worker")?);
    }
    Ok(report)
}

impl SqliteStore {
    fn tidy_now(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        // PASSIVE: copies what no reader still needs, never waits for anyone.
        self.block(sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&self.pool))
            .map_err(q("checkpointing the write-ahead log"))?;
        Ok(())
    }

    /// Copies the database page by page with SQLite's online backup API into `tmp`.
    async fn backup_into(&self, tmp: &Path) -> std::result::Result<(), String> {
        use libsqlite3_sys as ffi;
        use std::os::unix::ffi::OsStrExt;
        let mut conn = self.pool.acquire().await.map_err(|e| e.to_string())?;
        let mut handle = conn.lock_handle().await.map_err(|e| e.to_string())?;
        let src = handle.as_raw_handle().as_ptr();
        let name = std::ffi::CString::new(tmp.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        let main = c"main";
        // SAFETY: `src` is the live connection sqlx holds locked for us; `dst` is ours, opened
        // and closed here; every pointer passed is valid for the duration of each call.
        unsafe {
            let mut dst = std::ptr::null_mut();
            let flags = ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE;
            let rc = ffi::sqlite3_open_v2(name.as_ptr(), &mut dst, flags, std::ptr::null());
            let outcome = if rc != ffi::SQLITE_OK {
                Err(errmsg(dst))
            } else {
                let backup = ffi::sqlite3_backup_init(dst, main.as_ptr(), src, main.as_ptr());
                if backup.is_null() {
                    Err(errmsg(dst))
                } else {
                    let mut rc;
                    loop {
                        // 1024 pages per step; writers of other processes proceed in between.
                        rc = ffi::sqlite3_backup_step(backup, 1024);
                        match rc {
                            ffi::SQLITE_OK => continue,
                            ffi::SQLITE_BUSY | ffi::SQLITE_LOCKED => {
                                std::thread::sleep(Duration::from_millis(20))
                            }
                            _ => break,
                        }
                    }
                    ffi::sqlite3_backup_finish(backup);
                    if rc == ffi::SQLITE_DONE {
                        Ok(())
                    } else {
                        Err(errmsg(dst))
                    }
                }
            };
            ffi::sqlite3_close(dst);
            outcome
        }
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
}

/// The last error of a SQLite connection, as text.
///
/// # Safety
/// `db` is null or a connection opened by `sqlite3_open_v2` and not yet closed.
unsafe fn errmsg(db: *mut libsqlite3_sys::sqlite3) -> String {
    if db.is_null() {
        return "out of memory".into();
    }
    // SAFETY: sqlite3_errmsg returns a NUL-terminated string owned by the connection.
    unsafe { std::ffi::CStr::from_ptr(libsqlite3_sys::sqlite3_errmsg(db)) }
        .to_string_lossy()
        .into_owned()
}

/// Writes a backup beside `dest` and renames it into place, so that `dest` is either the old
/// file or a complete copy; a `dest` that is not a regular file, or is the registry itself, is
/// refused.
fn backup_to(store: &SqliteStore, dest: &Path) -> Result<()> {
    let fail = |message: String| RegistryError::Backup {
        dest: dest.to_path_buf(),
        message,
    };
    beatlab_fsio::check_replaceable(dest).map_err(|e| fail(e.to_string()))?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(dest, &store.path) {
        return Err(fail("that is the registry itself".into()));
    }
    let folder = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = folder.join(format!(
        ".{}.backup-{}",
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let written = store.block(store.backup_into(&tmp)).and_then(|()| {
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .and_then(|()| beatlab_fsio::check_replaceable(dest))
            .and_then(|()| std::fs::rename(&tmp, dest))
            .and_then(|()| beatlab_fsio::sync_dir(folder))
            .map_err(|e| e.to_string())
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(fail)
}

/// Marks running runs whose holder is gone as stale (one more failure each): those whose lease
/// expired, and those held by a process of this host that no longer exists.
async fn mark_abandoned(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    this_host: &str,
    t: f64,
) -> Result<()> {
    sqlx::query(
        "UPDATE runs SET status = 'stale', failures = failures + 1,
             error = 'its holder ' || worker || ' stopped heartbeating (lease expired)'
         WHERE status = 'running' AND heartbeat_at IS NOT NULL AND ?1 - heartbeat_at > lease_s",
    )
    .bind(t)
    .execute(&mut **tx)
    .await
    .map_err(q("marking stale runs"))?;
    let held: Vec<(String, String)> =
        sqlx::query_as("SELECT id, worker FROM runs WHERE status = 'running' AND host = ?1")
            .bind(this_host)
            .fetch_all(&mut **tx)
            .await
            .map_err(q("marking stale runs"))?;
    for (id, worker) in held {
        if holder_is_dead(&worker, this_host) {
            sqlx::query(
                "UPDATE runs SET status = 'stale', failures = failures + 1,
                     error = 'its holder ' || worker || ' died (process gone)'
                 WHERE id = ?1 AND status = 'running'",
            )
            .bind(&id)
            .execute(&mut **tx)
            .await
            .map_err(q("marking stale runs"))?;
        }
    }
    Ok(())
}

/// Hands a pending or stale run to this worker.
/// The claim rules' steps inside a SQLite write transaction (`BEGIN IMMEDIATE` already keeps
/// every other writer out, so a cell needs no lock of its own).
struct Steps<'a, 'c>(&'a mut sqlx::Transaction<'c, sqlx::Sqlite>);

impl ClaimSteps for Steps<'_, '_> {
    async fn lock(&mut self, _hash: &str, _wait: bool) -> Result<bool> {
        Ok(true)
    }

    async fn latest(&mut self, hash: &str) -> Result<Option<RunRow>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE spec_hash = ?1 ORDER BY created_at DESC, rowid DESC LIMIT 1"
        )))
        .bind(hash)
        .fetch_optional(&mut **self.0)
        .await
        .map_err(q("claiming a cell"))?
        .map(|r| run_from_row(&r))
        .transpose()
    }

    shared_claim_writes!();
}

/// A new run id: the hash's first 10 hex digits and a counter. The counter runs over every id
/// with that prefix, so two hashes that share it still get distinct ids.
async fn next_run_id(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, hash: &str) -> Result<String> {
    let prefix = &hash[..hash.len().min(10)];
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE id LIKE ?1")
        .bind(format!("{prefix}-%"))
        .fetch_one(&mut **tx)
        .await
        .map_err(q("numbering a run"))?;
    Ok(format!("{prefix}-{}", n + 1))
}
