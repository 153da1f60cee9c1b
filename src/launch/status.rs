//! `beatlab status EXP`: an experiment's cells by status, from the registry alone (no `sacct`):
//! for each running cell, the Slurm job / array task and worker holding it and the age of its
//! last heartbeat, by the registry's clock.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::registry::{Registry, RegistryError, RunStatus};

/// The latest run of one cell.
#[derive(Debug, Clone, Serialize)]
pub struct CellState {
    pub cell_index: i64,
    pub label: String,
    pub run: String,
    pub status: RunStatus,
    pub attempt: i64,
    pub failures: i64,
    pub stage: Option<String>,
    pub worker: String,
    /// `JOBID_TASK` of the Slurm array task holding (or that last held) the run.
    pub job: Option<String>,
    /// Seconds since the last heartbeat, by the registry's clock.
    pub heartbeat_age_s: Option<f64>,
    pub error: Option<String>,
}

/// What the registry says about an experiment's cells.
#[derive(Debug, Clone, Serialize)]
pub struct SweepStatus {
    pub experiment: String,
    pub registry: String,
    /// Cells per status (the latest run of each cell).
    pub counts: BTreeMap<&'static str, usize>,
    pub cells: Vec<CellState>,
}

/// The order statuses are listed in: what needs attention first.
const ORDER: [RunStatus; 5] = [
    RunStatus::Running,
    RunStatus::Stale,
    RunStatus::Pending,
    RunStatus::Failed,
    RunStatus::Finished,
];

/// The latest run of every cell of `experiment`; `None` when the registry has no run of it.
pub fn of(registry: &Registry, experiment: &str) -> Result<Option<SweepStatus>, RegistryError> {
    let runs = registry.runs(Some(experiment), None)?;
    if runs.is_empty() {
        return Ok(None);
    }
    let mut hashes: Vec<String> = runs.iter().map(|r| r.hash.clone()).collect();
    hashes.sort();
    hashes.dedup();
    let t = registry.clock()?;
    let mut cells: Vec<CellState> = registry
        .latest_runs(&hashes)?
        .into_values()
        .map(|r| CellState {
            cell_index: r.cell_index,
            label: r.cell_label.clone(),
            status: r.effective_status(t),
            attempt: r.attempt,
            failures: r.failures,
            stage: r.stage.clone(),
            job: r.job.clone(),
            heartbeat_age_s: r.heartbeat_at.map(|hb| (t - hb).max(0.0)),
            error: r.error.clone(),
            worker: r.worker,
            run: r.id,
        })
        .collect();
    let rank = |s: RunStatus| ORDER.iter().position(|o| *o == s).unwrap_or(ORDER.len());
    cells.sort_by_key(|c| (rank(c.status), c.cell_index));
    let mut counts = BTreeMap::new();
    for c in &cells {
        *counts.entry(c.status.as_str()).or_insert(0) += 1;
    }
    Ok(Some(SweepStatus {
        experiment: experiment.to_string(),
        registry: registry.address(),
        counts,
        cells,
    }))
}

impl SweepStatus {
    /// The text `beatlab status` prints: counts, then one line per cell that is not finished
    /// (every cell with `all`).
    pub fn render(&self, all: bool) -> String {
        let counts: Vec<String> = ORDER
            .iter()
            .filter_map(|s| Some(format!("{} {}", self.counts.get(s.as_str())?, s.as_str())))
            .collect();
        let mut out = format!(
            "{}: {} cell(s): {} ({})\n",
            self.experiment,
            self.cells.len(),
            counts.join(", "),
            self.registry
        );
        let shown: Vec<&CellState> = self
            .cells
            .iter()
            .filter(|c| all || c.status != RunStatus::Finished)
            .collect();
        if shown.is_empty() {
            return out;
        }
        out.push_str(&format!(
            "  {:>4}  {:<14} {:<8} {:>3}  {:<10} {:<12} {:>9}  {:<24} cell\n",
            "cell", "run", "status", "try", "stage", "slurm job", "heartbeat", "worker"
        ));
        for c in shown {
            let live = matches!(c.status, RunStatus::Running | RunStatus::Stale);
            let dash = || "-".to_string();
            out.push_str(&format!(
                "  {:>4}  {:<14} {:<8} {:>3}  {:<10} {:<12} {:>9}  {:<24} {}\n",
                c.cell_index,
                c.run,
                c.status.as_str(),
                c.attempt,
                c.stage.clone().unwrap_or_else(dash),
                c.job.clone().filter(|_| live).unwrap_or_else(dash),
                c.heartbeat_age_s
                    .filter(|_| live)
                    .map_or_else(dash, |a| format!("{a:.0} s ago")),
                if live { c.worker.as_str() } else { "-" },
                c.label
            ));
            if let Some(e) = c.error.as_ref().filter(|_| c.status == RunStatus::Failed) {
                out.push_str(&format!("        error: {e}\n"));
            }
        }
        out
    }
}
