//! The PostgreSQL store, for workers on many machines: migrations from `migrations/postgres/`
//! (the same version history as SQLite's), leases and heartbeats measured by the database's
//! clock, never the workers'.
//!
//! A claim is one transaction that walks the cells in plan order and takes a transaction-level
//! advisory lock per cell with `pg_try_advisory_xact_lock`, skipping cells another worker is
//! claiming at that moment (the `SKIP LOCKED` of a queue, over cells that may have no row yet);
//! the unique index on a cell's open run backs it up. Metric points are multi-row upserts keyed
//! by (run, step, key), so an operation retried after a lost connection never duplicates or
//! loses a point; every operation is retried with backoff while the server is unreachable
//! (a restart, a dropped connection).
//!
//! Commands that only read connect with `default_transaction_read_only`: they change nothing.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};

use super::claim::{
    CLAIM_RUN, ClaimSteps, bind_take_over, claim_first, enqueue_cells, shared_claim_writes,
};
use super::rows::{RUN_COLUMNS, checkpoint_from_row, col, run_from_row, runs_from_rows, runtime};
use super::{
    CellOffer, CheckReport, CheckpointRow, Claim, ClaimPolicy, MetricPoint, RegistryError, Result,
    RunRow, RunStatus, RunStore, SchemaCheck, Summaries, holder_is_dead, q, redact_password,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The database's clock in Unix seconds, as SQL.
macro_rules! db_now {
    () => {
        "extract(epoch from clock_timestamp())::float8"
    };
}

/// How often an operation is tried while the server cannot be reached; the waits double from
/// 100 ms up to 5 s, about 45 s in all (a server restart).
const RETRY_ATTEMPTS: u32 = 12;

/// Connections per process: the runner's worker threads and heartbeats share them.
const POOL_SIZE: u32 = 4;

/// A PostgreSQL registry database.
pub struct PostgresStore {
    pool: PgPool,
    rt: tokio::runtime::Runtime,
    /// The address without its password.
    shown: String,
    /// Integer ids of runs and metric names already looked up (they never change).
    ids: Mutex<HashMap<(bool, String), i64>>,
}

fn options(url: &str, shown: &str) -> Result<PgConnectOptions> {
    url.parse::<PgConnectOptions>()
        .map_err(|source| RegistryError::Open {
            address: shown.to_string(),
            source,
        })
}

impl PostgresStore {
    /// Connects to the database at `url` and brings its schema up to date (creating it in an
    /// empty database). A database that holds other tables and no beatlab schema is refused.
    pub fn open(url: &str) -> Result<Self> {
        let shown = redact_password(url);
        let store = Self::connect(options(url, &shown)?, shown.clone())?;
        store.block(store.inspect())?.for_writing(&shown)?;
        store
            .block(MIGRATOR.run(&store.pool))
            .map_err(|source| RegistryError::Migrate {
                address: shown,
                source,
            })?;
        Ok(store)
    }

    /// Connects read-only, or returns `None` when the database holds no registry yet.
    pub fn open_existing(url: &str) -> Result<Option<Self>> {
        let shown = redact_password(url);
        let opts = options(url, &shown)?.options([("default_transaction_read_only", "on")]);
        let store = Self::connect(opts, shown.clone())?;
        match store.block(store.inspect())?.for_reading(&shown)? {
            true => Ok(Some(store)),
            false => Ok(None),
        }
    }

    fn connect(opts: PgConnectOptions, shown: String) -> Result<Self> {
        let rt = runtime()?;
        let pool = rt
            .block_on(
                PgPoolOptions::new()
                    .max_connections(POOL_SIZE)
                    .acquire_timeout(Duration::from_secs(10))
                    .idle_timeout(Duration::from_secs(60))
                    .connect_with(opts),
            )
            .map_err(|source| RegistryError::Open {
                address: shown.clone(),
                source,
            })?;
        Ok(Self {
            pool,
            rt,
            shown,
            ids: Default::default(),
        })
    }

    fn block<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Runs `op` until it succeeds or fails for a reason other than the connection (each try is
    /// a whole transaction, so a retry repeats nothing that was committed... or, after a commit
    /// whose answer was lost, repeats an idempotent write).
    fn retry<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match self.block(op()) {
                Err(e) if attempt < RETRY_ATTEMPTS && is_transient(&e) => {
                    let wait = Duration::from_millis((100u64 << attempt.min(6)).min(5000));
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// What the database holds: nothing, beatlab's schema (at which version), or other tables.
    async fn inspect(&self) -> Result<SchemaCheck> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema() ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading the schema"))?;
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
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading the schema history"))?;
        if applied.is_empty() && tables.len() == 1 {
            return Ok(SchemaCheck::Empty);
        }
        Ok(SchemaCheck::compare(&applied, &MIGRATOR))
    }

    /// The integer id of a run (`key` false) or metric name (`key` true), cached.
    async fn id_of(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        key: bool,
        name: &str,
    ) -> Result<i64> {
        let cache_key = (key, name.to_string());
        if let Some(id) = self.ids.lock().expect("id cache").get(&cache_key) {
            return Ok(*id);
        }
        let id: i64 = if key {
            sqlx::query("INSERT INTO metric_keys (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .execute(&mut **tx)
                .await
                .map_err(q("naming a metric"))?;
            sqlx::query_scalar("SELECT id FROM metric_keys WHERE name = $1")
                .bind(name)
                .fetch_one(&mut **tx)
                .await
                .map_err(q("naming a metric"))?
        } else {
            sqlx::query_scalar("SELECT num FROM runs WHERE id = $1")
                .bind(name)
                .fetch_optional(&mut **tx)
                .await
                .map_err(q("writing metrics"))?
                .ok_or_else(|| RegistryError::NoSuchRun(name.to_string()))?
        };
        self.ids.lock().expect("id cache").insert(cache_key, id);
        Ok(id)
    }

    async fn begin(&self, context: &'static str) -> Result<Transaction<'_, Postgres>> {
        self.pool.begin().await.map_err(q(context))
    }
}

/// Whether an error is the connection's (retrying may succeed) rather than the query's.
fn is_transient(e: &RegistryError) -> bool {
    let RegistryError::Query { source, .. } = e else {
        return false;
    };
    match source {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            // 08: connection exception; 57P0x: the server shuts down or starts up; 40001 and
            // 40P01: serialization failure and deadlock, whose transaction may simply be rerun.
            c.starts_with("08") || c.starts_with("57P0") || c == "40001" || c == "40P01"
        }),
        _ => false,
    }
}

/// The database's clock, read inside a transaction.
async fn clock(tx: &mut Transaction<'_, Postgres>) -> Result<f64> {
    sqlx::query_scalar(concat!("SELECT ", db_now!()))
        .fetch_one(&mut **tx)
        .await
        .map_err(q("reading the clock"))
}

/// The claim rules' steps inside a PostgreSQL transaction. A cell's lock is a
/// transaction-level advisory lock on its hash, held to the commit.
struct Steps<'a, 'c>(&'a mut Transaction<'c, Postgres>);

impl ClaimSteps for Steps<'_, '_> {
    async fn lock(&mut self, hash: &str, wait: bool) -> Result<bool> {
        if wait {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(hash)
                .execute(&mut **self.0)
                .await
                .map_err(q("locking a cell"))?;
            return Ok(true);
        }
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(hash)
            .fetch_one(&mut **self.0)
            .await
            .map_err(q("locking a cell"))
    }

    async fn latest(&mut self, hash: &str) -> Result<Option<RunRow>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE spec_hash = $1 ORDER BY created_at DESC, num DESC LIMIT 1"
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

impl RunStore for PostgresStore {
    fn address(&self) -> String {
        self.shown.clone()
    }

    fn now(&self) -> Result<f64> {
        self.retry(|| async {
            sqlx::query_scalar(concat!("SELECT ", db_now!()))
                .fetch_one(&self.pool)
                .await
                .map_err(q("reading the clock"))
        })
    }

    fn upsert_experiment(&self, name: &str, spec_path: &str, description: &str) -> Result<()> {
        self.retry(|| async {
            sqlx::query(concat!(
                "INSERT INTO experiments (name, spec_path, description, created_at, updated_at)
                 VALUES ($1, $2, $3, ",
                db_now!(),
                ", ",
                db_now!(),
                ") ON CONFLICT (name) DO UPDATE SET spec_path = $2, description = $3,
                 updated_at = EXCLUDED.updated_at"
            ))
            .bind(name)
            .bind(spec_path)
            .bind(description)
            .execute(&self.pool)
            .await
            .map_err(q("recording the experiment"))?;
            Ok(())
        })
    }

    fn latest_runs(&self, hashes: &[String]) -> Result<HashMap<String, RunRow>> {
        let rows = self.retry(|| async {
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE spec_hash = ANY($1) ORDER BY created_at, num"
            )))
            .bind(hashes)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading cell status"))
        })?;
        Ok(runs_from_rows(&rows)?
            .into_iter()
            .map(|run| (run.hash.clone(), run))
            .collect())
    }

    fn enqueue(&self, policy: &ClaimPolicy, cells: &[CellOffer]) -> Result<usize> {
        self.retry(|| async {
            let mut tx = self.begin("enqueueing cells").await?;
            let t = clock(&mut tx).await?;
            let added = enqueue_cells(&mut Steps(&mut tx), policy, cells, t).await?;
            tx.commit().await.map_err(q("enqueueing cells"))?;
            Ok(added)
        })
    }

    fn claim(&self, policy: &ClaimPolicy, cells: &[CellOffer]) -> Result<Option<Claim>> {
        self.retry(|| async {
            let mut tx = self.begin("claiming a cell").await?;
            let t = clock(&mut tx).await?;
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
        self.retry(|| async {
            let mut tx = self.begin("claiming a run").await?;
            let t = clock(&mut tx).await?;
            mark_abandoned(&mut tx, &policy.host, t).await?;
            let run = sqlx::query(AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 FOR UPDATE"
            )))
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("claiming a run"))?
            .map(|r| run_from_row(&r))
            .transpose()?
            .ok_or_else(|| RegistryError::NoSuchRun(run_id.to_string()))?;
            if matches!(
                run.effective_status(t),
                RunStatus::Finished | RunStatus::Running
            ) {
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
        let done = self.retry(|| async {
            sqlx::query(concat!(
                "UPDATE runs SET heartbeat_at = ",
                db_now!(),
                " WHERE id = $1 AND worker = $2 AND status = 'running'"
            ))
            .bind(run_id)
            .bind(worker)
            .execute(&self.pool)
            .await
            .map_err(q("heartbeating"))
        })?;
        Ok(done.rows_affected() == 1)
    }

    fn set_stage(&self, run_id: &str, stage: &str) -> Result<()> {
        self.retry(|| async {
            sqlx::query("UPDATE runs SET stage = $2 WHERE id = $1")
                .bind(run_id)
                .bind(stage)
                .execute(&self.pool)
                .await
                .map_err(q("recording the stage"))?;
            Ok(())
        })
    }

    fn release(&self, run_id: &str, worker: &str) -> Result<()> {
        self.retry(|| async {
            sqlx::query(
                "UPDATE runs SET status = 'pending', worker = '', heartbeat_at = NULL
                 WHERE id = $1 AND worker = $2 AND status = 'running'",
            )
            .bind(run_id)
            .bind(worker)
            .execute(&self.pool)
            .await
            .map_err(q("releasing a run"))?;
            Ok(())
        })
    }

    fn end_run(
        &self,
        run_id: &str,
        worker: &str,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<()> {
        // A retry after a lost answer finds the status already set and counts no second failure.
        self.retry(|| async {
            sqlx::query(concat!(
                "UPDATE runs SET status = $3, error = $4, finished_at = ",
                db_now!(),
                ", heartbeat_at = CASE WHEN $3 = 'stale' THEN NULL ELSE heartbeat_at END,
                     failures = failures + (CASE WHEN $3 = 'failed' THEN 1 ELSE 0 END)
                 WHERE id = $1 AND worker = $2 AND status <> $3"
            ))
            .bind(run_id)
            .bind(worker)
            .bind(status.as_str())
            .bind(error)
            .execute(&self.pool)
            .await
            .map_err(q("ending a run"))?;
            Ok(())
        })
    }

    fn log_metrics(&self, run_id: &str, points: &[MetricPoint]) -> Result<()> {
        // One value per (step, key): the last written wins, as a later write replaces a stored
        // point (and an upsert may not touch a row twice).
        let mut last: HashMap<(i64, &str), usize> = HashMap::with_capacity(points.len());
        for (i, p) in points.iter().enumerate() {
            last.insert((p.step, p.key.as_str()), i);
        }
        let mut kept: Vec<&MetricPoint> = points
            .iter()
            .enumerate()
            .filter(|(i, p)| last[&(p.step, p.key.as_str())] == *i)
            .map(|(_, p)| p)
            .collect();
        kept.sort_by_key(|p| p.step);
        self.retry(|| async {
            let mut tx = self.begin("writing metrics").await?;
            let run = self.id_of(&mut tx, false, run_id).await?;
            let mut keys = Vec::with_capacity(kept.len());
            for p in &kept {
                keys.push(self.id_of(&mut tx, true, &p.key).await?);
            }
            // 5 bound values per row; PostgreSQL allows 65535 per statement.
            for (chunk, chunk_keys) in kept.chunks(5000).zip(keys.chunks(5000)) {
                let mut qb =
                    sqlx::QueryBuilder::<Postgres>::new("INSERT INTO metrics (run, key, step, value, time) ");
                qb.push_values(chunk.iter().zip(chunk_keys), |mut b, (p, key)| {
                    b.push_bind(run)
                        .push_bind(*key)
                        .push_bind(p.step)
                        .push_bind(p.value)
                        .push_bind(p.time);
                });
                qb.push(
                    " ON CONFLICT (run, step, key) DO UPDATE SET value = EXCLUDED.value, time = EXCLUDED.time",
                );
                qb.build()
                    .execute(&mut *tx)
                    .await
                    .map_err(q("writing metrics"))?;
            }
            tx.commit().await.map_err(q("writing metrics"))
        })
    }

    fn set_summaries(&self, run_id: &str, values: &[(String, f64)]) -> Result<()> {
        self.retry(|| async {
            let mut tx = self.begin("writing summaries").await?;
            for (k, v) in values {
                sqlx::query(
                    "INSERT INTO summaries (run_id, key, value) VALUES ($1, $2, $3)
                     ON CONFLICT (run_id, key) DO UPDATE SET value = EXCLUDED.value",
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
        self.retry(|| async {
            sqlx::query(concat!(
                "INSERT INTO checkpoints (run_id, stage, step, epoch, final, path, sha256, bytes, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, ",
                db_now!(),
                ") ON CONFLICT (run_id, stage, step) DO UPDATE SET epoch = EXCLUDED.epoch,
                     final = EXCLUDED.final, path = EXCLUDED.path, sha256 = EXCLUDED.sha256,
                     bytes = EXCLUDED.bytes, created_at = EXCLUDED.created_at"
            ))
            .bind(&c.run_id)
            .bind(&c.stage)
            .bind(c.step)
            .bind(c.epoch)
            .bind(c.is_final as i64)
            .bind(&c.path)
            .bind(&c.sha256)
            .bind(c.bytes)
            .execute(&self.pool)
            .await
            .map_err(q("recording a checkpoint"))?;
            Ok(())
        })
    }

    fn delete_checkpoint(&self, run_id: &str, stage: &str, step: i64) -> Result<()> {
        self.retry(|| async {
            sqlx::query("DELETE FROM checkpoints WHERE run_id = $1 AND stage = $2 AND step = $3")
                .bind(run_id)
                .bind(stage)
                .bind(step)
                .execute(&self.pool)
                .await
                .map_err(q("deleting a checkpoint"))?;
            Ok(())
        })
    }

    fn checkpoints(&self, run_id: &str) -> Result<Vec<CheckpointRow>> {
        let rows = self.retry(|| async {
            sqlx::query(
                "SELECT run_id, stage, step, epoch, final, path, sha256, bytes FROM checkpoints
                 WHERE run_id = $1 ORDER BY created_at, step",
            )
            .bind(run_id)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading checkpoints"))
        })?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    fn list_runs(&self, experiment: Option<&str>) -> Result<Vec<RunRow>> {
        let rows = self.retry(|| async {
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE ($1::text IS NULL OR experiment = $1)
                 ORDER BY created_at DESC, num DESC"
            )))
            .bind(experiment)
            .fetch_all(&self.pool)
            .await
            .map_err(q("listing runs"))
        })?;
        runs_from_rows(&rows)
    }

    fn runs_with_prefix(&self, id: &str) -> Result<Vec<RunRow>> {
        let pattern = format!("{}%", id.replace('%', "").replace('_', "\\_"));
        let rows = self.retry(|| async {
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 OR id LIKE $2 ESCAPE '\\' ORDER BY id"
            )))
            .bind(id)
            .bind(&pattern)
            .fetch_all(&self.pool)
            .await
            .map_err(q("finding a run"))
        })?;
        runs_from_rows(&rows)
    }

    fn metrics(&self, run_id: &str) -> Result<Vec<MetricPoint>> {
        let rows = self.retry(|| async {
            sqlx::query(
                "SELECT k.name AS key, m.step, m.value, m.time FROM metrics m
                 JOIN metric_keys k ON k.id = m.key JOIN runs r ON r.num = m.run
                 WHERE r.id = $1 ORDER BY k.name, m.step",
            )
            .bind(run_id)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading metrics"))
        })?;
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
        let rows = self.retry(|| async {
            sqlx::query("SELECT key, value FROM summaries WHERE run_id = $1")
                .bind(run_id)
                .fetch_all(&self.pool)
                .await
                .map_err(q("reading summaries"))
        })?;
        rows.iter()
            .map(|r| Ok((col(r, "key")?, col(r, "value")?)))
            .collect()
    }

    fn finished_summaries(&self, hashes: &[String]) -> Result<HashMap<String, Summaries>> {
        // The latest finished run of each hash, then its summaries.
        let rows = self.retry(|| async {
            sqlx::query(
                "SELECT l.spec_hash, s.key, s.value FROM (
                     SELECT DISTINCT ON (spec_hash) id, spec_hash FROM runs
                     WHERE status = 'finished' AND spec_hash = ANY($1)
                     ORDER BY spec_hash, created_at DESC, num DESC
                 ) l JOIN summaries s ON s.run_id = l.id",
            )
            .bind(hashes)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading summaries"))
        })?;
        let mut out: HashMap<String, Summaries> = Default::default();
        for r in &rows {
            out.entry(col(r, "spec_hash")?)
                .or_default()
                .insert(col(r, "key")?, col(r, "value")?);
        }
        Ok(out)
    }

    fn summaries_by_run(
        &self,
        experiment: Option<&str>,
        keys: &[String],
    ) -> Result<HashMap<String, Summaries>> {
        let rows = self.retry(|| async {
            sqlx::query(
                "SELECT s.run_id, s.key, s.value FROM summaries s JOIN runs r ON r.id = s.run_id
                 WHERE ($1::text IS NULL OR r.experiment = $1)
                   AND (cardinality($2::text[]) = 0 OR s.key = ANY($2))",
            )
            .bind(experiment)
            .bind(keys)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading summaries"))
        })?;
        let mut out: HashMap<String, Summaries> = Default::default();
        for r in &rows {
            out.entry(col(r, "run_id")?)
                .or_default()
                .insert(col(r, "key")?, col(r, "value")?);
        }
        Ok(out)
    }

    fn tidy(&self) -> Result<()> {
        // The server keeps its own files complete (its write-ahead log is its own business).
        Ok(())
    }

    fn backup(&self, dest: &Path) -> Result<()> {
        Err(RegistryError::Backup {
            dest: dest.to_path_buf(),
            message: format!(
                "{} is a PostgreSQL database: back it up with the server's tools, e.g. \
                 `pg_dump --format=custom --file={} '{}'`",
                self.shown,
                dest.display(),
                self.shown
            ),
        })
    }

    fn check(&self) -> Result<CheckReport> {
        self.retry(|| self.check_now())
    }
}

impl PostgresStore {
    /// Row counts, metric points of unknown runs or keys, checkpoint files missing or of the
    /// wrong size, runs whose holder's lease expired (the server checks its own pages).
    async fn check_now(&self) -> Result<CheckReport> {
        let pool = &self.pool;
        let schema_version = sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success",
        )
        .fetch_one(pool)
        .await
        .map_err(q("reading the schema version"))?;
        let mut report = CheckReport {
            schema_version,
            ..Default::default()
        };
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
        let rows = sqlx::query(
            "SELECT run_id, stage, step, path, bytes FROM checkpoints ORDER BY run_id, stage, step",
        )
        .fetch_all(pool)
        .await
        .map_err(q("reading checkpoints"))?;
        for r in &rows {
            super::check_checkpoint_file(
                &mut report,
                (col(r, "run_id")?, col(r, "stage")?, col(r, "step")?),
                (col(r, "path")?, col(r, "bytes")?),
            );
        }
        let expired = sqlx::query(concat!(
            "SELECT id, worker FROM runs WHERE status = 'running' AND heartbeat_at IS NOT NULL
                 AND ",
            db_now!(),
            " - heartbeat_at > lease_s ORDER BY id"
        ))
        .fetch_all(pool)
        .await
        .map_err(q("reading runs"))?;
        for r in &expired {
            super::note_expired(&mut report, col(r, "id")?, col(r, "worker")?);
        }
        Ok(report)
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        let pool = self.pool.clone();
        self.rt.block_on(async move { pool.close().await });
    }
}

/// Marks running runs whose holder is gone as stale (one more failure each): those whose lease
/// expired by the database's clock, and those held by a process of this host that is gone.
async fn mark_abandoned(tx: &mut Transaction<'_, Postgres>, this_host: &str, t: f64) -> Result<()> {
    sqlx::query(
        "UPDATE runs SET status = 'stale', failures = failures + 1,
             error = 'its holder ' || worker || ' stopped heartbeating (lease expired)'
         WHERE status = 'running' AND heartbeat_at IS NOT NULL AND $1 - heartbeat_at > lease_s",
    )
    .bind(t)
    .execute(&mut **tx)
    .await
    .map_err(q("marking stale runs"))?;
    let held: Vec<(String, String)> =
        sqlx::query_as("SELECT id, worker FROM runs WHERE status = 'running' AND host = $1")
            .bind(this_host)
            .fetch_all(&mut **tx)
            .await
            .map_err(q("marking stale runs"))?;
    for (id, worker) in held {
        if holder_is_dead(&worker, this_host) {
            sqlx::query(
                "UPDATE runs SET status = 'stale', failures = failures + 1,
                     error = 'its holder ' || worker || ' died (process gone)'
                 WHERE id = $1 AND status = 'running'",
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
/// A new run id: the hash's first 10 hex digits and a counter over every id with that prefix
/// (see the SQLite store). Two hashes sharing a prefix are serialised by a lock on the prefix.
async fn next_run_id(tx: &mut Transaction<'_, Postgres>, hash: &str) -> Result<String> {
    let prefix = &hash[..hash.len().min(10)];
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 1))")
        .bind(prefix)
        .execute(&mut **tx)
        .await
        .map_err(q("numbering a run"))?;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE id LIKE $1")
        .bind(format!("{prefix}-%"))
        .fetch_one(&mut **tx)
        .await
        .map_err(q("numbering a run"))?;
    Ok(format!("{prefix}-{}", n + 1))
}
