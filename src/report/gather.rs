//! What a report shows, read from the registry and the run folders: the plan's cells with the
//! run each one shows, their metric series, summaries, Beat samples and generations, and the
//! experiment's table built from exactly those runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::LoadError;
use super::samples::{BeatSamples, load_beat_samples};
use crate::query::Query;
use crate::registry::{Registry, RegistryError, RunRow, RunStatus};
use crate::spec::{Plan, StageKind, get_field};
use crate::table::{self, Table};
use beatlab_heartcare::instruct::{ItemType, Task};

/// The seed axis, which the report aggregates over.
pub const SEED_KEY: &str = "experiment.seed";

/// Generations shown per cell and task (open QA, report generation).
const GENERATIONS_PER_TASK: usize = 3;

/// Everything the page shows.
pub struct ReportData {
    pub experiment: String,
    pub description: String,
    pub spec_path: String,
    /// The `--where` expression, as given.
    pub filter: Option<String>,
    pub table: Table,
    /// The plan's cells (those with a matching run, under `--where`).
    pub cells: Vec<CellData>,
    /// Cells that differ only in their seed, in plan order.
    pub groups: Vec<Group>,
    /// Sweep axes other than the seed.
    pub axes: Vec<String>,
    /// `[table] labels`: display names of fields and metrics.
    pub labels: BTreeMap<String, String>,
    /// The spec's enabled stages, in order.
    pub stages: Vec<(String, StageKind)>,
    /// The table's metrics (`[table] metrics`).
    pub metrics: Vec<String>,
    /// The fields that make the table's rows and column groups (`[table] rows`, `columns`).
    pub table_rows: Vec<String>,
    pub table_columns: Vec<String>,
}

/// One plan cell and the run it shows.
pub struct CellData {
    pub index: usize,
    /// `key=value` of every sweep axis, seed included.
    pub label: String,
    /// Index into [`ReportData::groups`].
    pub group: usize,
    /// The value of every [`ReportData::axes`] entry, as text.
    pub axis_values: Vec<String>,
    /// The latest (matching) run, if any.
    pub run: Option<RunRow>,
    pub summaries: BTreeMap<String, f64>,
    /// Metric key -> (step, value), by step.
    pub metrics: BTreeMap<String, Vec<(i64, f64)>>,
    pub samples: Option<BeatSamples>,
    /// Closed-QA answers: (correct option, chosen option or `None`).
    pub answers: Vec<(char, Option<char>)>,
    /// A few open answers and reports beside their references.
    pub generations: Vec<Generation>,
}

/// Cells that differ only in their seed.
pub struct Group {
    /// The cell label without the seed (`beat.dvq_levels=2`), or the experiment's name for a
    /// plan without other axes.
    pub label: String,
    /// The same with `[table.labels]` applied (`VQ levels=2`): what legends and titles show.
    pub title: String,
    /// Indices into [`ReportData::cells`].
    pub cells: Vec<usize>,
}

/// One line of a `generations-<stage>.jsonl` file, as the report reads it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Generation {
    /// The item's Heartcare type (`DiagnosisClosedQA`, `ReportGeneration`, ...).
    #[serde(rename = "type")]
    pub item_type: String,
    #[serde(default)]
    pub question: String,
    #[serde(default)]
    pub reference: String,
    #[serde(default)]
    pub generation: Option<String>,
    #[serde(default)]
    pub correct: Option<char>,
    #[serde(default)]
    pub chosen_by_likelihood: Option<char>,
    #[serde(default)]
    pub chosen_by_generation: Option<char>,
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The registry could not be read.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A run folder's file is there but unreadable.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A file of the report could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl CellData {
    pub fn status(&self) -> Option<RunStatus> {
        self.run.as_ref().map(|r| r.status)
    }

    /// Seconds from the run's start to its end (or to its last heartbeat while it runs).
    pub fn wall_s(&self) -> Option<f64> {
        let r = self.run.as_ref()?;
        let end = r.finished_at.or(r.heartbeat_at)?;
        Some(end - r.started_at?)
    }

    pub fn series(&self, key: &str) -> Option<&[(i64, f64)]> {
        self.metrics.get(key).map(Vec::as_slice)
    }
}

/// Reads the report of `plan` from `registry` (none: every cell missing); `runs_dir` is where
/// run folders are looked for when a run's recorded folder is not there.
pub fn gather(
    plan: &Plan,
    registry: Option<&Registry>,
    runs_dir: &Path,
    filter: Option<(&str, &Query)>,
) -> Result<ReportData, ReportError> {
    let runs = match registry {
        Some(r) => crate::query::select_runs(r, Some(&plan.experiment), None, filter.map(|f| f.1))?,
        None => Vec::new(),
    };
    let axes: Vec<String> = plan
        .sweep_keys
        .iter()
        .filter(|k| k.as_str() != SEED_KEY)
        .cloned()
        .collect();
    let labels = &plan.base.table.labels;
    let mut cells = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    for cell in &plan.cells {
        // Runs come newest first: the first of this hash is the one shown.
        let run = runs.iter().find(|r| r.hash == cell.hash).cloned();
        if filter.is_some() && run.is_none() {
            continue;
        }
        let axis_values: Vec<String> = axes
            .iter()
            .map(|k| get_field(&cell.spec, k).map_or(String::new(), |v| show(&v)))
            .collect();
        let label = group_label(&axes, &axis_values, &plan.experiment);
        let group = match groups.iter().position(|g| g.label == label) {
            Some(g) => g,
            None => {
                groups.push(Group {
                    title: group_title(&axes, &axis_values, &plan.experiment, labels),
                    label,
                    cells: Vec::new(),
                });
                groups.len() - 1
            }
        };
        groups[group].cells.push(cells.len());
        let mut data = CellData {
            index: cell.index,
            label: cell.label(),
            group,
            axis_values,
            run,
            summaries: BTreeMap::new(),
            metrics: BTreeMap::new(),
            samples: None,
            answers: Vec::new(),
            generations: Vec::new(),
        };
        if let (Some(registry), Some(run)) = (registry, data.run.clone()) {
            read_run(
                registry,
                &run,
                &folder(&run, runs_dir, &plan.experiment),
                &mut data,
            )?;
        }
        cells.push(data);
    }
    let finished: table::Finished = cells
        .iter()
        .filter(|c| c.status() == Some(RunStatus::Finished))
        .map(|c| (plan.cells[c.index].hash.clone(), c.summaries.clone()))
        .collect();
    let mut shown = plan.clone();
    shown
        .cells
        .retain(|c| cells.iter().any(|d| d.index == c.index));
    Ok(ReportData {
        experiment: plan.experiment.clone(),
        description: plan.description.clone(),
        spec_path: plan.path.display().to_string(),
        filter: filter.map(|f| f.0.to_string()),
        table: table::from_summaries(&shown, &finished),
        cells,
        groups,
        axes,
        labels: labels.clone(),
        stages: plan
            .base
            .stage
            .iter()
            .filter(|s| s.enabled)
            .map(|s| (s.name.clone(), s.kind))
            .collect(),
        metrics: plan.base.table.metrics.clone(),
        table_rows: plan.base.table.rows.clone(),
        table_columns: plan.base.table.columns.clone(),
    })
}

/// The run's metrics, summaries and files.
fn read_run(
    registry: &Registry,
    run: &RunRow,
    dir: &Path,
    data: &mut CellData,
) -> Result<(), ReportError> {
    data.summaries = registry.summaries(&run.id)?;
    for p in registry.metrics(&run.id)? {
        data.metrics
            .entry(p.key)
            .or_default()
            .push((p.step, p.value));
    }
    data.samples = load_beat_samples(dir)?;
    let mut shown: BTreeMap<Task, usize> = BTreeMap::new();
    for path in generation_files(dir) {
        for g in load_generations(&path)? {
            let task = ItemType::parse(g.item_type.as_str()).task();
            if task == Some(Task::ClosedQa)
                && let Some(c) = g.correct
            {
                data.answers
                    .push((c, g.chosen_by_likelihood.or(g.chosen_by_generation)));
            }
            let Some(task @ (Task::OpenQa | Task::ReportGeneration)) = task else {
                continue;
            };
            let n = shown.entry(task).or_default();
            if g.generation.is_some() && *n < GENERATIONS_PER_TASK {
                *n += 1;
                data.generations.push(g);
            }
        }
    }
    Ok(())
}

/// The run's folder: as recorded when it is there, else `runs_dir/<experiment>/<id>`.
fn folder(run: &RunRow, runs_dir: &Path, experiment: &str) -> PathBuf {
    let recorded = PathBuf::from(&run.run_dir);
    if recorded.is_dir() {
        recorded
    } else {
        runs_dir.join(experiment).join(&run.id)
    }
}

/// `generations-*.jsonl` of a run folder, sorted.
fn generation_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("generations-") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    files
}

/// Every line of a generations file.
fn load_generations(path: &Path) -> Result<Vec<Generation>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|source| LoadError::Json {
                path: path.to_path_buf(),
                source,
            })
        })
        .collect()
}

/// `a=1, b=x` over the axes, or `name` when there are none.
fn group_label(axes: &[String], values: &[String], name: &str) -> String {
    if axes.is_empty() {
        return name.to_string();
    }
    axes.iter()
        .zip(values)
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// [`group_label`] with `[table.labels]`: a `field=value` label where there is one, else the
/// field's label, `=` and the value.
fn group_title(
    axes: &[String],
    values: &[String],
    name: &str,
    labels: &BTreeMap<String, String>,
) -> String {
    if axes.is_empty() {
        return name.to_string();
    }
    axes.iter()
        .zip(values)
        .map(|(k, v)| value_label(labels, k, v))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `field=value` as a reader sees it: the `[table.labels]` entry of the pair, else the
/// field's label (or key), `=` and the value.
pub fn value_label(labels: &BTreeMap<String, String>, field: &str, value: &str) -> String {
    if let Some(l) = labels.get(&format!("{field}={value}")) {
        return l.clone();
    }
    let field = labels.get(field).map_or(field, String::as_str);
    format!("{field}={value}")
}

/// A spec value as text (strings without quotes).
pub fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl ReportData {
    /// The display name of a field or metric (`[table.labels]`), or the key itself.
    pub fn label(&self, key: &str) -> String {
        self.labels
            .get(key)
            .cloned()
            .unwrap_or_else(|| key.to_string())
    }

    /// The cells of a group.
    pub fn group_cells(&self, g: &Group) -> impl Iterator<Item = &CellData> {
        g.cells.iter().map(|&i| &self.cells[i])
    }

    /// Cells by status: finished, failed, stale and missing (no run) always, then running or
    /// pending where there are any.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        let mut out: Vec<(&'static str, usize)> = ["finished", "failed", "stale", "missing"]
            .into_iter()
            .map(|k| (k, 0))
            .collect();
        for c in &self.cells {
            let key = c.status().map_or("missing", RunStatus::as_str);
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => out.push((key, 1)),
            }
        }
        out
    }

    /// The code revisions of the shown runs (`abc1234`, `abc1234+dirty`), distinct.
    pub fn revisions(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self.cells.iter().filter_map(|c| c.run.as_ref()) {
            let rev = match r.code_dirty {
                true => format!("{}+dirty", r.code_rev),
                false => r.code_rev.clone(),
            };
            if !out.contains(&rev) {
                out.push(rev);
            }
        }
        out
    }
}
