//! Rows of the registry's tables as Rust values, the same for every store: a column of the
//! wrong type is a [`RegistryError::Malformed`] naming it, never a panic.

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{CheckpointRow, RegistryError, Result, RunRow};

/// The columns [`run_from_row`] reads, in `SELECT` order.
pub(crate) const RUN_COLUMNS: &str = "id, experiment, cell_index, cell_label, overrides, spec_json, spec_hash, seed, status, \
     attempt, stage, code_rev, code_dirty, host, device, worker, run_dir, created_at, started_at, \
     heartbeat_at, lease_s, finished_at, error, failures, job";

/// A column of a row, or an error naming it.
pub(crate) fn col<'r, R, T>(r: &'r R, name: &'static str) -> Result<T>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    r.try_get(name).map_err(|source| RegistryError::Malformed {
        column: name,
        run: None,
        source,
    })
}

/// A [`RegistryError::Malformed`] of a column of run `id`, named so.
fn of_run(id: &str) -> impl Fn(RegistryError) -> RegistryError + '_ {
    move |e| match e {
        RegistryError::Malformed { column, source, .. } => RegistryError::Malformed {
            column,
            run: Some(id.to_string()),
            source,
        },
        other => other,
    }
}

/// A `runs` row read with [`RUN_COLUMNS`]; a malformed column names the run.
pub(crate) fn run_from_row<R>(r: &R) -> Result<RunRow>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> f64: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = col(r, "id")?;
    run_columns(r, id.clone()).map_err(of_run(&id))
}

/// The columns of a `runs` row after its id.
fn run_columns<R>(r: &R, id: String) -> Result<RunRow>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> f64: Decode<'r, R::Database> + Type<R::Database>,
{
    let malformed = |column, message: String| RegistryError::Malformed {
        column,
        run: None,
        source: sqlx::Error::Decode(message.into()),
    };
    let status: String = col(r, "status")?;
    let overrides: String = col(r, "overrides")?;
    Ok(RunRow {
        id,
        experiment: col(r, "experiment")?,
        cell_index: col(r, "cell_index")?,
        cell_label: col(r, "cell_label")?,
        // Written by beatlab as a JSON object; anything else was edited in.
        overrides: serde_json::from_str(&overrides)
            .map_err(|e| malformed("overrides", format!("not JSON: {e}")))?,
        spec_json: col(r, "spec_json")?,
        hash: col(r, "spec_hash")?,
        seed: col(r, "seed")?,
        status: status
            .parse()
            .map_err(|message: String| malformed("status", message))?,
        attempt: col(r, "attempt")?,
        stage: col(r, "stage")?,
        code_rev: col(r, "code_rev")?,
        code_dirty: col::<_, i64>(r, "code_dirty")? != 0,
        host: col(r, "host")?,
        device: col(r, "device")?,
        worker: col(r, "worker")?,
        run_dir: col(r, "run_dir")?,
        created_at: col(r, "created_at")?,
        started_at: col(r, "started_at")?,
        heartbeat_at: col(r, "heartbeat_at")?,
        lease_s: col(r, "lease_s")?,
        finished_at: col(r, "finished_at")?,
        error: col(r, "error")?,
        failures: col(r, "failures")?,
        job: col(r, "job")?,
    })
}

/// `runs` rows read with [`RUN_COLUMNS`].
pub(crate) fn runs_from_rows<R>(rows: &[R]) -> Result<Vec<RunRow>>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> f64: Decode<'r, R::Database> + Type<R::Database>,
{
    rows.iter().map(run_from_row).collect()
}

/// A `checkpoints` row (run_id, stage, step, epoch, final, path, sha256, bytes).
pub(crate) fn checkpoint_from_row<R>(r: &R) -> Result<CheckpointRow>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(CheckpointRow {
        run_id: col(r, "run_id")?,
        stage: col(r, "stage")?,
        step: col(r, "step")?,
        epoch: col(r, "epoch")?,
        is_final: col::<_, i64>(r, "final")? != 0,
        path: col(r, "path")?,
        sha256: col(r, "sha256")?,
        bytes: col(r, "bytes")?,
    })
}

/// The small Tokio runtime a store blocks on (sqlx is asynchronous, training loops are not).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(RegistryError::Runtime)
}
