//! Registry write throughput: metric points per second through
//! [`Registry::log_metrics`](beatlab::registry::Registry::log_metrics), batched as the runner's
//! `Tracker` batches them, against MLflow's SQLite tracking store (`MlflowClient.log_batch`,
//! `bench/registry_mlflow.py`) on the same runs, keys and steps.
//!
//! Each round writes into a fresh registry: a file in a scratch folder, or with
//! [`RegistryOptions::postgres`] a database made on that PostgreSQL server for the round and
//! dropped after it. Opening it (schema migrations) and registering the runs are not timed, only
//! the logging. After each round the points are read back and counted, so a store that dropped
//! writes cannot look fast. With a server, MLflow's peer writes to the same server
//! (`--postgres`), a database of its own per round.

use std::path::PathBuf;

use serde::Deserialize;

use super::{BenchError, Comparison, Peer, PeerRound, Timer, alternate, finish_peer};
use beatlab::registry::{CellOffer, ClaimPolicy, MetricPoint, Registry};

/// Knobs of the registry benchmark. `Default`: 4 runs x 8 keys x 2000 steps (64,000 points)
/// in batches of 512, 3 rounds.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    pub runs: usize,
    /// Metric keys logged at every step.
    pub keys: usize,
    pub steps: usize,
    /// Points per write: the `Tracker` flushes every 512 points (or every 5 s).
    pub batch: usize,
    /// Timed rounds, each on a fresh store; the median is reported.
    pub rounds: usize,
    /// Where the scratch stores go (default: the system's temporary folder). Put it on the
    /// disk the real registry lives on: SQLite's speed is the file system's.
    pub scratch: Option<PathBuf>,
    /// Ours on PostgreSQL: a server address (`postgres://USER@HOST/DB`, the database only to
    /// connect to) on which each round makes a fresh database; `None`: a SQLite file.
    pub postgres: Option<String>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            runs: 4,
            keys: 8,
            steps: 2000,
            batch: 512,
            rounds: 3,
            scratch: None,
            postgres: None,
        }
    }
}

impl RegistryOptions {
    fn points(&self) -> usize {
        self.runs * self.keys * self.steps
    }
}

/// A scratch folder removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(parent: Option<&PathBuf>, round: usize) -> Result<Self, BenchError> {
        let parent = parent.cloned().unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = parent.join(format!(
            "beatlab-bench-registry-{}-{round}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).map_err(|source| BenchError::Io {
            action: "create scratch folder",
            path: dir.clone(),
            source,
        })?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A database made on a PostgreSQL server for one round, dropped when dropped.
struct ScratchDatabase {
    server: String,
    name: String,
}

impl ScratchDatabase {
    fn new(server: &str, round: usize) -> Result<Self, BenchError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("beatlab_bench_{}_{round}_{nanos}", std::process::id());
        admin(server, &format!("CREATE DATABASE {name}"))?;
        Ok(Self {
            server: server.to_string(),
            name,
        })
    }

    /// The database's address: the server's with its database name replaced.
    fn address(&self) -> String {
        let (head, query) = match self.server.split_once('?') {
            Some((head, query)) => (head, format!("?{query}")),
            None => (self.server.as_str(), String::new()),
        };
        let base = match head.split_once("://") {
            Some((_, rest)) if rest.contains('/') => &head[..head.rfind('/').unwrap_or(head.len())],
            _ => head,
        };
        format!("{base}/{}{query}", self.name)
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let _ = admin(
            &self.server,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Runs one statement on the server's own database (`CREATE DATABASE` cannot run in a
/// transaction, so not through the registry).
fn admin(server: &str, statement: &str) -> Result<(), BenchError> {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::ScratchDatabase {
            statement: statement.to_string(),
            message: format!("no tokio runtime: {e}"),
        })?;
    rt.block_on(async {
        let mut conn = sqlx::PgConnection::connect(server).await?;
        sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(&mut conn)
            .await?;
        conn.close().await
    })
    .map_err(|e| BenchError::ScratchDatabase {
        statement: statement.to_string(),
        message: e.to_string(),
    })
}

/// Where one round's registry lives (removed when dropped).
enum Store {
    Sqlite(Scratch),
    Postgres(ScratchDatabase),
}

impl Store {
    fn new(options: &RegistryOptions, round: usize) -> Result<Self, BenchError> {
        Ok(match &options.postgres {
            Some(server) => Store::Postgres(ScratchDatabase::new(server, round)?),
            None => Store::Sqlite(Scratch::new(options.scratch.as_ref(), round)?),
        })
    }

    fn address(&self) -> std::ffi::OsString {
        match self {
            Store::Sqlite(dir) => dir.0.join("registry.db").into_os_string(),
            Store::Postgres(db) => db.address().into(),
        }
    }
}

/// Opens a fresh registry at `address` with `runs` pending runs of one experiment; returns it
/// and the run ids.
fn fresh_registry(
    address: &std::ffi::OsStr,
    runs: usize,
) -> Result<(Registry, Vec<String>), BenchError> {
    let registry = Registry::open(address)?;
    registry.upsert_experiment("bench", "bench.toml", "registry benchmark")?;
    let policy = ClaimPolicy {
        experiment: "bench".into(),
        worker: "bench:0:0".into(),
        host: "bench".into(),
        device: "cpu".into(),
        code_rev: "bench".into(),
        code_dirty: false,
        lease_s: 60.0,
        force_before: None,
        rerun_failed_before: None,
        experiment_dir: PathBuf::from("runs"),
        max_failures: 3,
        job: None,
    };
    let cells: Vec<CellOffer> = (0..runs)
        .map(|i| CellOffer {
            index: i as i64,
            label: format!("cell {i}"),
            overrides: serde_json::json!({}),
            spec_json: "{}".into(),
            // The registry names a run after the first 10 characters of its hash.
            hash: format!("{i:010}-bench-cell"),
            seed: i as i64,
        })
        .collect();
    registry.enqueue(&policy, &cells)?;
    let ids = registry
        .runs(Some("bench"), None)?
        .into_iter()
        .map(|r| r.id)
        .collect();
    Ok((registry, ids))
}

/// Logs every point of every run the way a training loop does: step by step, all keys at each
/// step, one `log_metrics` per `batch` points and one for the rest at the end of a run.
fn log_all(
    registry: &Registry,
    run_ids: &[String],
    options: &RegistryOptions,
) -> Result<(), BenchError> {
    let keys: Vec<String> = (0..options.keys)
        .map(|k| format!("train/metric_{k}"))
        .collect();
    let batch = options.batch.max(1);
    for run_id in run_ids {
        let mut pending = Vec::with_capacity(batch);
        for step in 0..options.steps {
            let time = beatlab::registry::now();
            for (k, key) in keys.iter().enumerate() {
                pending.push(MetricPoint {
                    key: key.clone(),
                    step: step as i64,
                    value: (step * options.keys + k) as f64 * 1e-3,
                    time,
                });
                if pending.len() >= batch {
                    registry.log_metrics(run_id, &pending)?;
                    pending.clear();
                }
            }
        }
        registry.log_metrics(run_id, &pending)?;
    }
    Ok(())
}

/// One timed round on a fresh store; returns the timing and the points read back.
fn one_round(
    options: &RegistryOptions,
    round: usize,
) -> Result<((f64, Option<f64>), usize), BenchError> {
    let store = Store::new(options, round)?;
    let (registry, run_ids) = fresh_registry(&store.address(), options.runs)?;
    let timer = Timer::start();
    log_all(&registry, &run_ids, options)?;
    let timing = timer.stop();
    let mut stored = 0;
    for id in &run_ids {
        stored += registry.metrics(id)?.len();
    }
    // The database is dropped only once no connection is left.
    drop(registry);
    drop(store);
    Ok((timing, stored))
}

/// The MLflow peer's hello.
#[derive(Debug, Deserialize)]
struct MlflowHello {
    mlflow: String,
    points: usize,
}

/// The extras of one of its rounds: the points it read back.
#[derive(Debug, Deserialize)]
struct MlflowRound {
    stored: usize,
}

fn check_stored(side: &str, points: usize, stored: usize) -> Result<(), BenchError> {
    if stored == points {
        Ok(())
    } else {
        Err(BenchError::Mismatch {
            benchmark: "registry",
            what: format!("{side} wrote {points} points but {stored} are stored"),
        })
    }
}

/// Runs the benchmark: our rounds alternating with MLflow's, on the same runs, keys, steps
/// and batches.
pub fn run(
    options: &RegistryOptions,
    peer: Option<&Peer>,
    progress: &mut dyn FnMut(&str),
) -> Result<Comparison, BenchError> {
    let points = options.points();
    let mut session = match peer {
        Some(peer) => {
            progress("registry: starting the MLflow peer (bench/registry_mlflow.py)");
            let mut args = [
                ("--runs", options.runs),
                ("--keys", options.keys),
                ("--steps", options.steps),
                ("--batch", options.batch.max(1)),
            ]
            .into_iter()
            .flat_map(|(k, v)| [k.to_string(), v.to_string()])
            .collect::<Vec<_>>();
            if let Some(dir) = &options.scratch {
                args.extend(["--scratch".to_string(), dir.display().to_string()]);
            }
            if let Some(server) = &options.postgres {
                args.extend(["--postgres".to_string(), server.clone()]);
            }
            let (session, hello): (_, MlflowHello) = peer.start("registry_mlflow.py", &args)?;
            if hello.points != points {
                return Err(BenchError::Mismatch {
                    benchmark: "registry",
                    what: format!("points: ours {points}, MLflow {}", hello.points),
                });
            }
            Some((session, hello))
        }
        None => None,
    };
    progress(&format!(
        "registry: {} rounds of {points} metric points ({} runs x {} keys x {} steps) in batches of {}{}",
        options.rounds,
        options.runs,
        options.keys,
        options.steps,
        options.batch,
        if session.is_some() {
            ", ours and MLflow's alternating"
        } else {
            ""
        }
    ));
    let mut round = 0;
    let (ours, theirs) = alternate(
        options.rounds,
        session.as_mut().map(|(session, _)| session),
        || {
            let (timing, stored) = one_round(options, round)?;
            round += 1;
            check_stored("ours", points, stored)?;
            Ok((points as f64, timing))
        },
        |theirs: &PeerRound<MlflowRound>| check_stored("MLflow", points, theirs.extra.stored),
    )?;
    let theirs_hello = finish_peer(session)?;
    let mut notes = vec![format!(
        "every round wrote {points} points into a fresh store and read back all of them{}",
        if theirs_hello.is_some() {
            " (both sides)"
        } else {
            ""
        }
    )];
    // The goals: 50x on SQLite files, 10x on a PostgreSQL server (network round trips
    // bound both sides there).
    let (store, goal) = match options.postgres {
        Some(_) => {
            notes.push(
                "both on the same PostgreSQL server, each round in a database of its own \
                 (MLflow through its SQLAlchemy store and psycopg2)"
                    .into(),
            );
            ("PostgreSQL", 10.0)
        }
        None => ("SQLite", 50.0),
    };
    Ok(Comparison {
        benchmark: "registry".into(),
        workload: format!(
            "metric points written to {store}: {} runs x {} keys x {} steps, batches of {}",
            options.runs, options.keys, options.steps, options.batch
        ),
        unit: "points/s".into(),
        goal: Some(goal),
        notes,
        details: serde_json::json!({
            "points": points,
            "rounds_points_per_s": { "ours": &ours.wall, "mlflow": &theirs.wall },
        }),
        ..Comparison::from_rates(
            &ours,
            theirs_hello.map(|t| (format!("mlflow {}", t.mlflow), &theirs)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small round writes and reads back exactly runs x keys x steps points, including a
    /// final partial batch, with the values the loop produced.
    #[test]
    fn a_round_stores_every_point_once() {
        let options = RegistryOptions {
            runs: 2,
            keys: 3,
            steps: 7,
            batch: 4,
            rounds: 1,
            scratch: None,
            postgres: None,
        };
        let scratch = Scratch::new(None, 0).unwrap();
        let (registry, ids) =
            fresh_registry(scratch.0.join("registry.db").as_os_str(), options.runs).unwrap();
        assert_eq!(ids.len(), 2);
        log_all(&registry, &ids, &options).unwrap();
        for id in &ids {
            let points = registry.metrics(id).unwrap();
            assert_eq!(points.len(), 21, "run {id}");
            let last = points
                .iter()
                .find(|p| p.key == "train/metric_2" && p.step == 6)
                .expect("the last point of the last partial batch");
            assert_eq!(last.value, (6 * 3 + 2) as f64 * 1e-3);
        }
    }

    #[test]
    fn scratch_folders_are_removed() {
        let scratch = Scratch::new(None, 9).unwrap();
        let path = scratch.0.clone();
        assert!(path.is_dir());
        drop(scratch);
        assert!(!path.exists());
    }
}
