//! From a plan and the registry's summaries to a [`Table`]: which fields make the rows and
//! column groups, cells grouped by them, the header, one body row per row key, and the footer's
//! facts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;

use super::{AveragedAxis, Column, ColumnKind, Delta, Entry, Stat, Table};
use crate::registry::{Registry, RegistryError};
use crate::spec::cells::CHUNK;
use crate::spec::{Cell, PlanCells, Spec, get_field, sweep::same_value};

/// Cell hash -> summary of its latest finished run.
pub type Finished = HashMap<String, BTreeMap<String, f64>>;

/// The seed axis `[sweep] seeds` adds; the table aggregates over it.
const SEED_KEY: &str = "experiment.seed";

/// The fields that make rows and column groups, and the metrics shown.
struct Layout {
    rows: Vec<String>,
    columns: Vec<String>,
    metrics: Vec<String>,
}

/// A group of plan cells sharing row and column values.
struct Group {
    row: Vec<toml::Value>,
    col: Vec<toml::Value>,
    /// Metric -> one value per finished run (seeds).
    values: BTreeMap<String, Vec<f64>>,
    spec: Spec,
}

/// The summaries of the finished runs of a chunk of cells, by cell hash.
type Lookup<'a, E> = dyn FnMut(&[Cell]) -> Result<Finished, E> + 'a;

/// Builds the table of a plan from the registry (no registry: every cell is missing). The
/// cells and their summaries are read a chunk at a time: what is kept is the table.
pub fn build(plan: &dyn PlanCells, registry: Option<&Registry>) -> Result<Table, RegistryError> {
    from_lookup(plan, &mut |chunk: &[Cell]| match registry {
        Some(r) => r.finished_summaries(&chunk.iter().map(|c| c.hash.clone()).collect::<Vec<_>>()),
        None => Ok(Finished::new()),
    })
}

/// Builds the table of a plan from the summaries of the cells' finished runs, by cell hash (a
/// cell not in `finished` is missing).
pub fn from_summaries(plan: &dyn PlanCells, finished: &Finished) -> Table {
    let lookup = &mut |chunk: &[Cell]| {
        Ok::<_, Infallible>(
            chunk
                .iter()
                .filter_map(|c| Some((c.hash.clone(), finished.get(&c.hash)?.clone())))
                .collect(),
        )
    };
    match from_lookup(plan, lookup) {
        Ok(table) => table,
        Err(never) => match never {},
    }
}

/// The table, with the summaries of each chunk of cells from `lookup`: one pass over the
/// cells to find the metrics when `[table] metrics` does not name them, one to fill it.
fn from_lookup<E>(plan: &dyn PlanCells, lookup: &mut Lookup<'_, E>) -> Result<Table, E> {
    let t = &plan.base().table;
    let metrics = match t.metrics.is_empty() {
        true => every_metric(plan, lookup)?,
        false => t.metrics.clone(),
    };
    if t.metrics.is_empty() && t.rows.is_empty() && t.columns.is_empty() {
        return every_summary(plan, &metrics, lookup);
    }
    grid(plan, &layout(plan, metrics), lookup)
}

/// Every summary key of the finished runs, sorted.
fn every_metric<E>(plan: &dyn PlanCells, lookup: &mut Lookup<'_, E>) -> Result<Vec<String>, E> {
    let mut all = BTreeSet::new();
    for chunk in plan.chunks(CHUNK) {
        for summary in lookup(&chunk)?.into_values() {
            all.extend(summary.into_keys());
        }
    }
    Ok(all.into_iter().collect())
}

fn layout(plan: &dyn PlanCells, mut metrics: Vec<String>) -> Layout {
    let t = &plan.base().table;
    if t.metrics.is_empty() {
        metrics.retain(|k| !k.is_empty());
    }
    let rows = if t.rows.is_empty() && t.columns.is_empty() {
        plan.sweep_keys().to_vec()
    } else {
        t.rows.clone()
    };
    Layout {
        rows,
        columns: t.columns.clone(),
        metrics,
    }
}

/// The table of a `[table]` with rows, columns or metrics.
fn grid<E>(plan: &dyn PlanCells, layout: &Layout, lookup: &mut Lookup<'_, E>) -> Result<Table, E> {
    let (groups, missing) = group_cells(plan, layout, lookup)?;
    let col_keys = distinct(groups.iter().map(|g| &g.col));
    let row_keys = distinct(groups.iter().map(|g| &g.row));
    let labels = Labels(&plan.base().table.labels);
    let has_paper = |col: &[toml::Value], metric: &str| {
        groups
            .iter()
            .filter(|g| values_eq(&g.col, col))
            .any(|g| paper_value(plan.base(), &g.spec, metric).is_some())
    };
    let columns = header(layout, &labels, &col_keys, &has_paper);
    let rows = row_keys
        .iter()
        .map(|row| {
            let mut line: Vec<Entry> = layout
                .rows
                .iter()
                .zip(row)
                .map(|(f, v)| Entry::Text(labels.value(f, v)))
                .collect();
            for col in &col_keys {
                let group = groups
                    .iter()
                    .find(|g| values_eq(&g.row, row) && values_eq(&g.col, col));
                for m in &layout.metrics {
                    line.extend(entries(plan, group, m, has_paper(col, m)));
                }
            }
            line
        })
        .collect();
    Ok(Table {
        rows,
        columns,
        missing,
        averaged: averaged_axes(plan, layout),
        ..frame(plan)
    })
}

/// Groups the plan's cells by their row and column values (in plan order), collecting the
/// finished runs' metrics; also counts the cells without a finished run.
fn group_cells<E>(
    plan: &dyn PlanCells,
    layout: &Layout,
    lookup: &mut Lookup<'_, E>,
) -> Result<(Vec<Group>, usize), E> {
    let mut groups: Vec<Group> = Vec::new();
    let mut missing = 0;
    for chunk in plan.chunks(CHUNK) {
        let finished = lookup(&chunk)?;
        for cell in chunk.iter() {
            let summary = finished.get(&cell.hash);
            missing += usize::from(summary.is_none());
            add_to_group(&mut groups, layout, cell, summary);
        }
    }
    Ok((groups, missing))
}

/// Adds a cell to the group of its row and column values (a new one at the end if none has
/// them), with the metrics of its finished run.
fn add_to_group(
    groups: &mut Vec<Group>,
    layout: &Layout,
    cell: &Cell,
    summary: Option<&BTreeMap<String, f64>>,
) {
    let read = |fields: &[String]| -> Vec<toml::Value> {
        fields
            .iter()
            .map(|f| get_field(&cell.spec, f).unwrap_or(toml::Value::String(String::new())))
            .collect()
    };
    let (row, col) = (read(&layout.rows), read(&layout.columns));
    let pos = groups
        .iter()
        .position(|g| values_eq(&g.row, &row) && values_eq(&g.col, &col));
    let group = match pos {
        Some(p) => &mut groups[p],
        None => {
            groups.push(Group {
                row,
                col,
                values: BTreeMap::new(),
                spec: cell.spec.clone(),
            });
            groups.last_mut().expect("just pushed")
        }
    };
    let Some(summary) = summary else {
        return;
    };
    for m in &layout.metrics {
        if let Some(v) = summary.get(m) {
            group.values.entry(m.clone()).or_default().push(*v);
        }
    }
}

/// The header: row fields, then per column group and metric ours (and paper, Δ where the
/// paper has a value in that group).
fn header(
    layout: &Layout,
    labels: &Labels,
    col_keys: &[Vec<toml::Value>],
    has_paper: &dyn Fn(&[toml::Value], &str) -> bool,
) -> Vec<Column> {
    let mut columns: Vec<Column> = layout
        .rows
        .iter()
        .map(|f| Column {
            label: labels.field(f),
            kind: ColumnKind::Key,
            group: String::new(),
        })
        .collect();
    for col in col_keys {
        let group_label = layout
            .columns
            .iter()
            .zip(col)
            .map(|(f, v)| labels.value(f, v))
            .collect::<Vec<_>>()
            .join(", ");
        for m in &layout.metrics {
            let label = match group_label.is_empty() {
                true => labels.field(m),
                false => format!("{group_label} {}", labels.field(m)),
            };
            let metric = m.clone();
            columns.push(Column {
                label,
                kind: ColumnKind::Metric {
                    metric: metric.clone(),
                },
                group: group_label.clone(),
            });
            if has_paper(col, m) {
                columns.push(Column {
                    label: "paper".into(),
                    kind: ColumnKind::Paper {
                        metric: metric.clone(),
                    },
                    group: group_label.clone(),
                });
                columns.push(Column {
                    label: "Δ".into(),
                    kind: ColumnKind::Delta { metric },
                    group: group_label.clone(),
                });
            }
        }
    }
    columns
}

/// Ours for one metric of one group, and paper and Δ when the column group has paper values.
fn entries(
    plan: &dyn PlanCells,
    group: Option<&Group>,
    metric: &str,
    paper_columns: bool,
) -> Vec<Entry> {
    let ours = group
        .and_then(|g| g.values.get(metric))
        .filter(|v| !v.is_empty())
        .map(|v| Stat::of(v));
    let mut out = vec![ours.map_or(Entry::Missing, Entry::Stat)];
    if paper_columns {
        let paper = group.and_then(|g| paper_value(plan.base(), &g.spec, metric));
        out.push(paper.map_or(Entry::Empty, Entry::Paper));
        out.push(match (ours, paper) {
            (Some(s), Some(p)) => Entry::Delta(Delta {
                value: s.mean - p,
                paper: p,
            }),
            _ => Entry::Empty,
        });
    }
    out
}

/// Swept keys other than the seed that are neither rows nor columns, with several values.
fn averaged_axes(plan: &dyn PlanCells, layout: &Layout) -> Vec<AveragedAxis> {
    let shown = |k: &String| layout.rows.contains(k) || layout.columns.contains(k);
    plan.sweep_keys()
        .iter()
        .filter(|k| k.as_str() != SEED_KEY && !shown(k))
        .filter_map(|key| {
            let mut values: Vec<toml::Value> = Vec::new();
            for cell in plan.cells() {
                let v = get_field(&cell.spec, key)?;
                if !values.iter().any(|seen| same_value(seen, &v)) {
                    values.push(v);
                }
            }
            (values.len() > 1).then(|| AveragedAxis {
                key: key.clone(),
                values: values.iter().map(show_value).collect(),
            })
        })
        .collect()
}

/// Without a `[table]`: one row per summary metric, one column per cell.
fn every_summary<E>(
    plan: &dyn PlanCells,
    metrics: &[String],
    lookup: &mut Lookup<'_, E>,
) -> Result<Table, E> {
    let mut columns = vec![Column {
        label: "metric".into(),
        kind: ColumnKind::Key,
        group: String::new(),
    }];
    let mut rows: Vec<Vec<Entry>> = metrics
        .iter()
        .map(|m| vec![Entry::Text(m.clone())])
        .collect();
    let mut missing = 0;
    for chunk in plan.chunks(CHUNK) {
        let finished = lookup(&chunk)?;
        for c in chunk.iter() {
            let label = match plan.count() {
                1 => c.short_hash().to_string(),
                _ => c.label(),
            };
            columns.push(Column {
                group: label.clone(),
                label,
                kind: ColumnKind::Metric {
                    metric: String::new(),
                },
            });
            let summary = finished.get(&c.hash);
            missing += usize::from(summary.is_none());
            for (row, m) in rows.iter_mut().zip(metrics) {
                row.push(
                    summary
                        .and_then(|s| s.get(m))
                        .map_or(Entry::Missing, |v| Entry::Stat(Stat::of(&[*v]))),
                );
            }
        }
    }
    Ok(Table {
        columns,
        rows,
        missing,
        ..frame(plan)
    })
}

/// Title, digits, cell count and the paper's source and claims; no columns or rows yet.
fn frame(plan: &dyn PlanCells) -> Table {
    let t = &plan.base().table;
    Table {
        title: match t.title.is_empty() {
            true => plan.experiment().to_string(),
            false => t.title.clone(),
        },
        columns: Vec::new(),
        rows: Vec::new(),
        digits: t.digits as usize,
        missing: 0,
        cells: plan.count(),
        averaged: Vec::new(),
        source: plan.base().paper.source.clone(),
        claims: plan.base().paper.claims.clone(),
    }
}

/// `[table.labels]`: display names of fields, metrics and `field=value` pairs.
struct Labels<'a>(&'a BTreeMap<String, String>);

impl Labels<'_> {
    fn field(&self, key: &str) -> String {
        self.0.get(key).cloned().unwrap_or_else(|| key.to_string())
    }

    fn value(&self, field: &str, v: &toml::Value) -> String {
        let text = show_value(v);
        self.0
            .get(&format!("{field}={text}"))
            .cloned()
            .unwrap_or(text)
    }
}

/// The distinct keys, in first-seen order.
fn distinct<'a>(keys: impl Iterator<Item = &'a Vec<toml::Value>>) -> Vec<Vec<toml::Value>> {
    let mut out: Vec<Vec<toml::Value>> = Vec::new();
    for k in keys {
        if !out.iter().any(|seen| values_eq(seen, k)) {
            out.push(k.clone());
        }
    }
    out
}

fn values_eq(a: &[toml::Value], b: &[toml::Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(x, y))
}

fn show_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The published value for a metric in the paper cell matching this spec.
fn paper_value(base: &Spec, spec: &Spec, metric: &str) -> Option<f64> {
    base.paper
        .cell
        .iter()
        .find(|c| {
            c.at.iter()
                .all(|(k, v)| get_field(spec, k).is_some_and(|ours| same_value(&ours, v)))
        })
        .and_then(|c| c.values.get(metric).copied())
}
