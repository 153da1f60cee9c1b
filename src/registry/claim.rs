//! The claim rules, the same for every store: which cell a worker takes, which cells a sweep
//! queues, which runs are given up. They run inside a store's transaction; each store supplies
//! the SQL steps ([`ClaimSteps`]). Both stores read `$N` placeholders, so the statements that
//! do not depend on the store are written once here.

use super::{CellOffer, Claim, ClaimPolicy, Result, RunRow, RunStatus};

/// What the claim rules decide for one cell, given its latest run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CellDecision {
    /// Continue the existing run (pending or stale).
    TakeOver,
    /// Start a new run of the cell (none yet, or a finished/failed one run again on request).
    NewRun,
    /// Leave the cell alone (finished, failed, or held by a live worker).
    Skip,
    /// The run failed too often: mark it failed and leave the cell alone.
    GiveUp,
}

/// The claim rules.
pub(crate) fn decide(latest: Option<&RunRow>, policy: &ClaimPolicy) -> CellDecision {
    let Some(run) = latest else {
        return CellDecision::NewRun;
    };
    let before = |limit: Option<f64>| limit.is_some_and(|t0| run.finished_at.unwrap_or(0.0) < t0);
    match run.status {
        RunStatus::Pending | RunStatus::Stale if run.failures >= policy.max_failures => {
            CellDecision::GiveUp
        }
        RunStatus::Pending | RunStatus::Stale => CellDecision::TakeOver,
        RunStatus::Finished if before(policy.force_before) => CellDecision::NewRun,
        RunStatus::Failed if before(policy.rerun_failed_before) => CellDecision::NewRun,
        _ => CellDecision::Skip,
    }
}

/// Whether a worker with `policy` would take the cell whose latest run is `latest` at store
/// time `t` (a run whose lease expired counts as stale, as the next claim marks it).
pub fn needs_work(latest: Option<&RunRow>, policy: &ClaimPolicy, t: f64) -> bool {
    let run = latest.map(|r| {
        let mut r = r.clone();
        if r.effective_status(t) != r.status {
            r.status = RunStatus::Stale;
            r.failures += 1;
        }
        r
    });
    matches!(
        decide(run.as_ref(), policy),
        CellDecision::NewRun | CellDecision::TakeOver
    )
}

/// The error text of a run given up after too many failures.
fn given_up(run: &RunRow) -> String {
    format!(
        "not retaken: failed {} time(s) (--max-failures); last: {}",
        run.failures,
        run.error.as_deref().unwrap_or("its holder stopped")
    )
}

/// Gives a run up: `$1` run id, `$2` error, `$3` time.
pub(crate) const GIVE_UP: &str =
    "UPDATE runs SET status = 'failed', error = $2, finished_at = $3 WHERE id = $1";

/// Takes over a pending or stale run: `$1` run id, `$2`..`$7` the worker, host, device, code
/// revision, dirty flag and lease of the policy, `$8` time, `$9` batch job.
pub(crate) const TAKE_OVER: &str = "UPDATE runs SET status = 'running', worker = $2, host = $3,
         device = $4, code_rev = $5, code_dirty = $6, lease_s = $7, heartbeat_at = $8,
         attempt = attempt + (CASE WHEN started_at IS NULL THEN 0 ELSE 1 END),
         started_at = COALESCE(started_at, $8),
         error = NULL, job = $9
     WHERE id = $1";

/// Claims a run `beatlab resume` continues, whatever state it was left in: the values of
/// [`TAKE_OVER`].
pub(crate) const CLAIM_RUN: &str = "UPDATE runs SET status = 'running', worker = $2, host = $3,
         device = $4, code_rev = $5, code_dirty = $6, lease_s = $7, heartbeat_at = $8,
         attempt = attempt + 1, started_at = COALESCE(started_at, $8), finished_at = NULL,
         error = NULL, job = $9
     WHERE id = $1";

/// Inserts a run: `$1` id, `$2`..`$8` experiment and cell, `$9` status, `$10`..`$15` the
/// policy's code, host, device, worker and run folder, `$16` time, `$17` start, `$18` lease,
/// `$19` batch job.
pub(crate) const INSERT_RUN: &str = "INSERT INTO runs (id, experiment, cell_index, cell_label,
         overrides, spec_json, spec_hash, seed, status, attempt, code_rev, code_dirty, host,
         device, worker, run_dir, created_at, started_at, heartbeat_at, lease_s, job)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $11, $12, $13, $14, $15, $16, $17, $17,
         $18, $19)";

/// The store's SQL steps of a claim or an enqueue, inside its open transaction.
pub(crate) trait ClaimSteps {
    /// Locks a cell for the rest of the transaction; `false` when `wait` is not asked and
    /// another worker is claiming it right now.
    async fn lock(&mut self, hash: &str, wait: bool) -> Result<bool>;
    /// The cell's latest run.
    async fn latest(&mut self, hash: &str) -> Result<Option<RunRow>>;
    /// Marks a run failed with `error` ([`GIVE_UP`]).
    async fn give_up(&mut self, run_id: &str, error: &str, t: f64) -> Result<()>;
    /// Takes a pending or stale run over for the policy's worker ([`TAKE_OVER`]).
    async fn take_over(&mut self, run_id: &str, policy: &ClaimPolicy, t: f64) -> Result<()>;
    /// Inserts a new run of the cell with `status` ([`INSERT_RUN`]); returns its id.
    async fn insert(
        &mut self,
        policy: &ClaimPolicy,
        cell: &CellOffer,
        status: &str,
        t: f64,
    ) -> Result<String>;
}

/// Claims the first of `cells` (in plan order) that needs work, giving up on the way the runs
/// that failed too often. Cells another worker is claiming are skipped.
pub(crate) async fn claim_first(
    tx: &mut impl ClaimSteps,
    policy: &ClaimPolicy,
    cells: &[CellOffer],
    t: f64,
) -> Result<Option<Claim>> {
    for cell in cells {
        if !tx.lock(&cell.hash, false).await? {
            continue;
        }
        let latest = tx.latest(&cell.hash).await?;
        match (decide(latest.as_ref(), policy), latest) {
            (CellDecision::Skip, _) => {}
            (CellDecision::GiveUp, Some(run)) => {
                tx.give_up(&run.id, &given_up(&run), t).await?;
            }
            (CellDecision::TakeOver, Some(run)) => {
                tx.take_over(&run.id, policy, t).await?;
                return Ok(Some(Claim::taken_over(&run, cell.index)));
            }
            _ => {
                let id = tx.insert(policy, cell, "running", t).await?;
                return Ok(Some(Claim::fresh(&id, cell.index, policy)));
            }
        }
    }
    Ok(None)
}

/// Queues a new pending run of each of `cells` that the policy would start a new run of:
/// those with no run, and (with `force_before` / `rerun_failed_before`) those whose latest run
/// finished / failed before then. Waits for workers claiming one of them. Returns how many
/// were queued.
pub(crate) async fn enqueue_cells(
    tx: &mut impl ClaimSteps,
    policy: &ClaimPolicy,
    cells: &[CellOffer],
    t: f64,
) -> Result<usize> {
    let mut added = 0;
    for cell in cells {
        tx.lock(&cell.hash, true).await?;
        let latest = tx.latest(&cell.hash).await?;
        if decide(latest.as_ref(), policy) == CellDecision::NewRun {
            tx.insert(policy, cell, "pending", t).await?;
            added += 1;
        }
    }
    Ok(added)
}

/// Binds [`INSERT_RUN`]'s values to a query: `(query, id, policy, cell, status, t)`.
macro_rules! bind_insert_run {
    ($query:expr, $id:expr, $policy:expr, $cell:expr, $status:expr, $t:expr) => {{
        let (id, policy, cell, status, t): (&str, &ClaimPolicy, &CellOffer, &str, f64) =
            ($id, $policy, $cell, $status, $t);
        let running = status == "running";
        $query
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
            .bind(
                policy
                    .experiment_dir
                    .join(id)
                    .to_string_lossy()
                    .into_owned(),
            )
            .bind(t)
            .bind(running.then_some(t))
            .bind(policy.lease_s)
            .bind(if running { policy.job.as_deref() } else { None })
    }};
}
pub(crate) use bind_insert_run;

/// Binds [`TAKE_OVER`]'s (or [`CLAIM_RUN`]'s) values to a query: `(query, run_id, policy, t)`.
macro_rules! bind_take_over {
    ($query:expr, $run_id:expr, $policy:expr, $t:expr) => {{
        let (run_id, policy, t): (&str, &ClaimPolicy, f64) = ($run_id, $policy, $t);
        $query
            .bind(run_id)
            .bind(&policy.worker)
            .bind(&policy.host)
            .bind(&policy.device)
            .bind(&policy.code_rev)
            .bind(policy.code_dirty as i64)
            .bind(policy.lease_s)
            .bind(t)
            .bind(&policy.job)
    }};
}
pub(crate) use bind_take_over;

/// The [`ClaimSteps`] writes both stores run the same way, inside an `impl ClaimSteps` block
/// for a `Steps(&mut Transaction)` whose module has a `next_run_id(tx, hash)`: give up, take
/// over and insert. Only the transaction's type differs between the stores.
macro_rules! shared_claim_writes {
    () => {
        async fn give_up(&mut self, run_id: &str, error: &str, t: f64) -> Result<()> {
            sqlx::query($crate::registry::claim::GIVE_UP)
                .bind(run_id)
                .bind(error)
                .bind(t)
                .execute(&mut **self.0)
                .await
                .map_err($crate::registry::q("giving up a run"))?;
            Ok(())
        }

        async fn take_over(&mut self, run_id: &str, policy: &ClaimPolicy, t: f64) -> Result<()> {
            $crate::registry::claim::bind_take_over!(
                sqlx::query($crate::registry::claim::TAKE_OVER),
                run_id,
                policy,
                t
            )
            .execute(&mut **self.0)
            .await
            .map_err($crate::registry::q("claiming a cell"))?;
            Ok(())
        }

        async fn insert(
            &mut self,
            policy: &ClaimPolicy,
            cell: &CellOffer,
            status: &str,
            t: f64,
        ) -> Result<String> {
            let id = next_run_id(self.0, &cell.hash).await?;
            $crate::registry::claim::bind_insert_run!(
                sqlx::query($crate::registry::claim::INSERT_RUN),
                &id,
                policy,
                cell,
                status,
                t
            )
            .execute(&mut **self.0)
            .await
            .map_err($crate::registry::q("creating a run"))?;
            Ok(id)
        }
    };
}
pub(crate) use shared_claim_writes;
