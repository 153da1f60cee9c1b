//! What a report shows, read from the registry and the run folders: the plan's cells with the
//! run each one shows, their metric series, summaries, Beat samples and generations, and the
//! experiment's table built from exactly those runs.
//!
//! The plan is walked a chunk of [`CHUNK`] cells at a time ([`PlanCells`]), so a report of a
//! huge grid holds one chunk of cells, the cells that have a run (what the page shows of them)
//! and the first [`MISSING_LISTED`] missing ones; the rest are counted.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::LoadError;
use super::samples::{BeatSamples, load_beat_samples};
use crate::query::Query;
use crate::registry::{Registry, RegistryError, RunRow, RunStatus};
use crate::spec::cells::CHUNK;
use crate::spec::{Cell, PlanCells, Spec, StageKind, get_field};
use crate::table::{self, Table};
use beatlab_heartcare::instruct::{ItemType, Task};

/// The seed axis, which the report aggregates over.
pub const SEED_KEY: &str = "experiment.seed";

/// Generations shown per cell and task (open QA, report generation).
const GENERATIONS_PER_TASK: usize = 3;

/// Cells without a run that the page lists; the others are counted.
pub const MISSING_LISTED: usize = CHUNK;

/// Everything the page shows.
pub struct ReportData {
    pub experiment: String,
    pub description: String,
    pub spec_path: String,
    /// The `--where` expression, as given.
    pub filter: Option<String>,
    pub table: Table,
    /// The plan's cells with a (matching) run, and the first [`MISSING_LISTED`] without one
    /// (none under `--where`), in plan order.
    pub cells: Vec<CellData>,
    /// The cells shown, listed or not.
    pub cell_count: usize,
    /// Cells without a run beyond those listed.
    pub unlisted_missing: usize,
    /// Cells that differ only in their seed, in plan order.
    pub groups: Vec<Group>,
    /// Sweep axes other than the seed.
    pub axes: Vec<String>,
    /// The distinct values of each axis over the cells shown (listed or not), as text, in the
    /// order the plan first has them.
    pub axis_values: Vec<Vec<String>>,
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
    plan: &dyn PlanCells,
    registry: Option<&Registry>,
    runs_dir: &Path,
    filter: Option<(&str, &Query)>,
) -> Result<ReportData, ReportError> {
    let runs = newest_runs(plan, registry, filter)?;
    let axes: Vec<String> = plan
        .sweep_keys()
        .iter()
        .filter(|k| k.as_str() != SEED_KEY)
        .cloned()
        .collect();
    let mut walk = Walk {
        labels: &plan.base().table.labels,
        experiment: plan.experiment(),
        axis_values: vec![Vec::new(); axes.len()],
        axes,
        cells: Vec::new(),
        groups: Vec::new(),
        cell_count: 0,
        listed_missing: 0,
        unlisted_missing: 0,
        finished: table::Finished::new(),
        shown: HashSet::new(),
    };
    for chunk in plan.chunks(CHUNK) {
        for cell in chunk.iter() {
            // Under `--where` a cell is shown only with a matching run.
            let run = runs.get(&cell.hash).cloned();
            if filter.is_some() && run.is_none() {
                continue;
            }
            let Some(mut data) = walk.add(cell, run) else {
                continue;
            };
            if let (Some(registry), Some(run)) = (registry, data.run.clone()) {
                let dir = folder(&run, runs_dir, plan.experiment());
                read_run(registry, &run, &dir, &mut data)?;
            }
            if data.status() == Some(RunStatus::Finished) {
                walk.finished
                    .insert(cell.hash.clone(), data.summaries.clone());
            }
            walk.cells.push(data);
        }
    }
    let table = match filter {
        Some(_) => table::from_summaries(
            &Shown {
                plan,
                keep: &walk.shown,
            },
            &walk.finished,
        ),
        None => table::from_summaries(plan, &walk.finished),
    };
    Ok(walk.finish(plan, table, filter.map(|f| f.0.to_string())))
}

/// The newest (matching) run of each cell hash of the experiment.
fn newest_runs(
    plan: &dyn PlanCells,
    registry: Option<&Registry>,
    filter: Option<(&str, &Query)>,
) -> Result<HashMap<String, RunRow>, ReportError> {
    let Some(r) = registry else {
        return Ok(HashMap::new());
    };
    let mut newest = HashMap::new();
    // Runs come newest first: the first of a hash is the one shown.
    for run in crate::query::select_runs(r, Some(plan.experiment()), None, filter.map(|f| f.1))? {
        newest.entry(run.hash.clone()).or_insert(run);
    }
    Ok(newest)
}

/// What the walk over the plan keeps.
struct Walk<'a> {
    labels: &'a BTreeMap<String, String>,
    experiment: &'a str,
    axes: Vec<String>,
    axis_values: Vec<Vec<String>>,
    cells: Vec<CellData>,
    groups: Vec<Group>,
    cell_count: usize,
    listed_missing: usize,
    unlisted_missing: usize,
    finished: table::Finished,
    /// Plan indices of the cells shown (what the table of a `--where` report covers).
    shown: HashSet<usize>,
}

impl Walk<'_> {
    /// Counts `cell` as shown and makes its data, without the run's files; `None` for a missing
    /// cell past those listed.
    fn add(&mut self, cell: &Cell, run: Option<RunRow>) -> Option<CellData> {
        self.cell_count += 1;
        if run.is_some() {
            self.shown.insert(cell.index);
        }
        let axis_values: Vec<String> = self
            .axes
            .iter()
            .map(|k| get_field(&cell.spec, k).map_or(String::new(), |v| show(&v)))
            .collect();
        for (seen, v) in self.axis_values.iter_mut().zip(&axis_values) {
            if !seen.contains(v) {
                seen.push(v.clone());
            }
        }
        if run.is_none() {
            if self.listed_missing == MISSING_LISTED {
                self.unlisted_missing += 1;
                return None;
            }
            self.listed_missing += 1;
        }
        let label = group_label(&self.axes, &axis_values, self.experiment);
        let group = match self.groups.iter().position(|g| g.label == label) {
            Some(g) => g,
            None => {
                self.groups.push(Group {
                    title: group_title(&self.axes, &axis_values, self.experiment, self.labels),
                    label,
                    cells: Vec::new(),
                });
                self.groups.len() - 1
            }
        };
        self.groups[group].cells.push(self.cells.len());
        Some(CellData {
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
        })
    }

    fn finish(self, plan: &dyn PlanCells, table: Table, filter: Option<String>) -> ReportData {
        let base = plan.base();
        ReportData {
            experiment: plan.experiment().to_string(),
            description: plan.description().to_string(),
            spec_path: plan.path().display().to_string(),
            filter,
            table,
            cells: self.cells,
            cell_count: self.cell_count,
            unlisted_missing: self.unlisted_missing,
            groups: self.groups,
            axes: self.axes,
            axis_values: self.axis_values,
            labels: self.labels.clone(),
            stages: base
                .stage
                .iter()
                .filter(|s| s.enabled)
                .map(|s| (s.name.clone(), s.kind))
                .collect(),
            metrics: base.table.metrics.clone(),
            table_rows: base.table.rows.clone(),
            table_columns: base.table.columns.clone(),
        }
    }
}

/// The cells of a plan that a `--where` report shows, by plan index.
struct Shown<'a> {
    plan: &'a dyn PlanCells,
    keep: &'a HashSet<usize>,
}

impl PlanCells for Shown<'_> {
    fn experiment(&self) -> &str {
        self.plan.experiment()
    }

    fn description(&self) -> &str {
        self.plan.description()
    }

    fn path(&self) -> &Path {
        self.plan.path()
    }

    fn base(&self) -> &Spec {
        self.plan.base()
    }

    fn sweep_keys(&self) -> &[String] {
        self.plan.sweep_keys()
    }

    fn count(&self) -> usize {
        self.keep.len()
    }

    fn chunks(&self, size: usize) -> Box<dyn Iterator<Item = Cow<'_, [Cell]>> + '_> {
        Box::new(self.plan.chunks(size).filter_map(|chunk| {
            let kept: Vec<Cell> = chunk
                .iter()
                .filter(|c| self.keep.contains(&c.index))
                .cloned()
                .collect();
            (!kept.is_empty()).then_some(Cow::Owned(kept))
        }))
    }

    fn cells(&self) -> Box<dyn Iterator<Item = Cow<'_, Cell>> + '_> {
        Box::new(self.plan.cells().filter(|c| self.keep.contains(&c.index)))
    }
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
        out[3].1 = self.unlisted_missing;
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
