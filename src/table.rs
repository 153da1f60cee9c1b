//! Result tables built from the registry, with the paper's numbers side by side.
//!
//! `[table]` names the fields whose values make the rows and the column groups, and the summary
//! metrics shown in each group. Cells of the plan that differ only in their seed are aggregated
//! (mean ± sample std). A cell without a finished run shows "—" and is counted. Where `[paper]`
//! has a published value for a row and metric, a `paper` and a `Δ` (ours − paper) column follow.

use std::collections::BTreeMap;

use crate::registry::{Registry, RegistryError};
use crate::spec::{Plan, Spec, get_field, sweep::same_value};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Md,
    Csv,
    Latex,
}

/// A rendered-ready table.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Plan cells without a finished run.
    pub missing: usize,
    pub cells: usize,
    /// Lines printed under the table (source, claims).
    pub notes: Vec<String>,
}

const MISSING: &str = "—";

/// A group of plan cells sharing row and column values.
struct Group {
    row: Vec<toml::Value>,
    col: Vec<toml::Value>,
    /// Metric -> one value per finished run (seeds).
    values: BTreeMap<String, Vec<f64>>,
    spec: Spec,
}

/// Builds the table of a plan from the registry (no registry: every cell is missing).
pub fn build(plan: &Plan, registry: Option<&Registry>) -> Result<Table, RegistryError> {
    let t = &plan.base.table;
    let hashes: Vec<String> = plan.cells.iter().map(|c| c.hash.clone()).collect();
    let finished = match registry {
        Some(r) => r.finished_summaries(&hashes)?,
        None => Default::default(),
    };
    if t.metrics.is_empty() && t.rows.is_empty() && t.columns.is_empty() {
        return Ok(every_summary(plan, &finished));
    }
    let metrics: Vec<String> = if t.metrics.is_empty() {
        let mut all: Vec<String> = finished.values().flat_map(|s| s.keys().cloned()).collect();
        all.sort();
        all.dedup();
        all.retain(|k| !k.is_empty());
        all
    } else {
        t.metrics.clone()
    };
    let rows_fields = if t.rows.is_empty() && t.columns.is_empty() {
        plan.sweep_keys.clone()
    } else {
        t.rows.clone()
    };

    let mut groups: Vec<Group> = Vec::new();
    let mut missing = 0;
    for cell in &plan.cells {
        let read = |fields: &[String]| -> Vec<toml::Value> {
            fields
                .iter()
                .map(|f| get_field(&cell.spec, f).unwrap_or(toml::Value::String(String::new())))
                .collect()
        };
        let (row, col) = (read(&rows_fields), read(&t.columns));
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
        match finished.get(&cell.hash) {
            Some(summary) => {
                for m in &metrics {
                    if let Some(v) = summary.get(m) {
                        group.values.entry(m.clone()).or_default().push(*v);
                    }
                }
            }
            None => missing += 1,
        }
    }

    let label = |key: &str| {
        t.labels
            .get(key)
            .cloned()
            .unwrap_or_else(|| key.to_string())
    };
    let value_label = |field: &str, v: &toml::Value| {
        let text = show_value(v);
        t.labels
            .get(&format!("{field}={text}"))
            .cloned()
            .unwrap_or(text)
    };

    // Column groups in plan order.
    let mut col_keys: Vec<Vec<toml::Value>> = Vec::new();
    for g in &groups {
        if !col_keys.iter().any(|c| values_eq(c, &g.col)) {
            col_keys.push(g.col.clone());
        }
    }
    let mut row_keys: Vec<Vec<toml::Value>> = Vec::new();
    for g in &groups {
        if !row_keys.iter().any(|r| values_eq(r, &g.row)) {
            row_keys.push(g.row.clone());
        }
    }
    // Paper columns only where the paper has a value for some row of that column group.
    let has_paper = |col: &[toml::Value], metric: &str| {
        groups
            .iter()
            .filter(|g| values_eq(&g.col, col))
            .any(|g| paper_value(&plan.base, &g.spec, metric).is_some())
    };

    let mut header: Vec<String> = rows_fields.iter().map(|f| label(f)).collect();
    for col in &col_keys {
        let col_label = t
            .columns
            .iter()
            .zip(col)
            .map(|(f, v)| value_label(f, v))
            .collect::<Vec<_>>()
            .join(", ");
        for m in &metrics {
            let name = if col_label.is_empty() {
                label(m)
            } else {
                format!("{col_label} {}", label(m))
            };
            header.push(name);
            if has_paper(col, m) {
                header.push("paper".into());
                header.push("Δ".into());
            }
        }
    }

    let digits = t.digits as usize;
    let mut rows = Vec::new();
    for row in &row_keys {
        let mut line: Vec<String> = rows_fields
            .iter()
            .zip(row)
            .map(|(f, v)| value_label(f, v))
            .collect();
        for col in &col_keys {
            let group = groups
                .iter()
                .find(|g| values_eq(&g.row, row) && values_eq(&g.col, col));
            for m in &metrics {
                let ours = group
                    .and_then(|g| g.values.get(m))
                    .filter(|v| !v.is_empty());
                line.push(match ours {
                    Some(v) => format_stat(v, digits),
                    None => MISSING.into(),
                });
                if has_paper(col, m) {
                    let paper = group.and_then(|g| paper_value(&plan.base, &g.spec, m));
                    line.push(paper.map_or(String::new(), |p| format!("{p:.digits$}")));
                    line.push(match (ours, paper) {
                        (Some(v), Some(p)) => format!("{:+.digits$}", mean(v) - p),
                        _ => String::new(),
                    });
                }
            }
        }
        rows.push(line);
    }

    let mut notes = Vec::new();
    if !plan.base.paper.source.is_empty() {
        notes.push(format!("Paper: {}", plan.base.paper.source));
    }
    for claim in &plan.base.paper.claims {
        notes.push(format!("Paper claim: {claim}"));
    }
    Ok(Table {
        title: if t.title.is_empty() {
            plan.experiment.clone()
        } else {
            t.title.clone()
        },
        header,
        rows,
        missing,
        cells: plan.cells.len(),
        notes,
    })
}

/// Without a `[table]`: one row per summary metric, one column per cell.
fn every_summary(
    plan: &Plan,
    finished: &std::collections::HashMap<String, BTreeMap<String, f64>>,
) -> Table {
    let digits = plan.base.table.digits as usize;
    let mut metrics: Vec<&String> = finished.values().flat_map(|s| s.keys()).collect();
    metrics.sort();
    metrics.dedup();
    let mut header = vec!["metric".to_string()];
    header.extend(plan.cells.iter().map(|c| {
        if plan.cells.len() == 1 {
            c.short_hash().to_string()
        } else {
            c.label()
        }
    }));
    let rows = metrics
        .iter()
        .map(|m| {
            let mut row = vec![(*m).clone()];
            row.extend(plan.cells.iter().map(|c| {
                finished
                    .get(&c.hash)
                    .and_then(|s| s.get(*m))
                    .map_or(MISSING.to_string(), |v| format!("{v:.digits$}"))
            }));
            row
        })
        .collect();
    Table {
        title: plan.experiment.clone(),
        header,
        rows,
        missing: plan
            .cells
            .iter()
            .filter(|c| !finished.contains_key(&c.hash))
            .count(),
        cells: plan.cells.len(),
        notes: Vec::new(),
    }
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

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// `0.81`, or `0.81 ± 0.02` (sample std) over several runs.
pub fn format_stat(v: &[f64], digits: usize) -> String {
    let m = mean(v);
    if v.len() < 2 {
        return format!("{m:.digits$}");
    }
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    format!("{m:.digits$} ± {:.digits$}", var.sqrt())
}

impl Table {
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Md => self.markdown(),
            Format::Csv => self.csv(),
            Format::Latex => self.latex(),
        }
    }

    fn footer(&self) -> String {
        let mut s = String::new();
        if self.missing > 0 {
            s.push_str(&format!(
                "{} of {} cells have no finished run ({MISSING}).\n",
                self.missing, self.cells
            ));
        }
        for n in &self.notes {
            s.push_str(n);
            s.push('\n');
        }
        s
    }

    fn markdown(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let mut s = format!("**{}**\n\n", self.title);
        s.push_str(&line(&self.header));
        s.push_str(&format!(
            "|{}|\n",
            widths
                .iter()
                .map(|w| "-".repeat(w + 2))
                .collect::<Vec<_>>()
                .join("|")
        ));
        for r in &self.rows {
            s.push_str(&line(r));
        }
        let footer = self.footer();
        if !footer.is_empty() {
            s.push('\n');
            s.push_str(&footer);
        }
        s
    }

    fn csv(&self) -> String {
        let quote = |c: &String| {
            if c.contains([',', '"', '\n']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.clone()
            }
        };
        let mut s = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            s.push_str(&r.iter().map(quote).collect::<Vec<_>>().join(","));
            s.push('\n');
        }
        s
    }

    fn latex(&self) -> String {
        let esc = |c: &String| {
            c.replace('\\', "\\textbackslash{}")
                .replace('_', "\\_")
                .replace('%', "\\%")
                .replace('&', "\\&")
                .replace('#', "\\#")
                .replace('±', "$\\pm$")
                .replace('Δ', "$\\Delta$")
                .replace('—', "--")
        };
        let mut s = String::from("\\begin{table}[t]\n\\centering\n");
        s.push_str(&format!("\\caption{{{}}}\n", esc(&self.title)));
        s.push_str(&format!(
            "\\begin{{tabular}}{{{}}}\n\\toprule\n",
            "l".repeat(self.header.len())
        ));
        s.push_str(&format!(
            "{} \\\\\n\\midrule\n",
            self.header.iter().map(esc).collect::<Vec<_>>().join(" & ")
        ));
        for r in &self.rows {
            s.push_str(&format!(
                "{} \\\\\n",
                r.iter().map(esc).collect::<Vec<_>>().join(" & ")
            ));
        }
        s.push_str("\\bottomrule\n\\end{tabular}\n\\end{table}\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_show_mean_and_sample_std() {
        assert_eq!(format_stat(&[0.5], 2), "0.50");
        // mean 2, sample variance ((1)^2 + 0 + 1^2) / 2 = 1
        assert_eq!(format_stat(&[1.0, 2.0, 3.0], 1), "2.0 ± 1.0");
    }
}
