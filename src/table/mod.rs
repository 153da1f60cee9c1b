//! Result tables built from the registry, with the paper's numbers side by side.
//!
//! `[table]` names the fields whose values make the rows and the column groups, and the summary
//! metrics shown in each group. Cells of the plan that differ only in their seed are aggregated
//! (mean ± sample std). A cell without a finished run shows "—" and is counted. Where `[paper]`
//! has a published value for a row and metric, a `paper` and a `Δ` (ours − paper) column follow.
//!
//! A [`Table`] keeps numbers (mean, std, n, paper value, delta) until it is rendered; each
//! format ([`render`]) prints the same content: title, header, rows and the footer (missing
//! cells, axes averaged over, the paper's source and claims).

mod build;
pub mod render;

pub use build::{Finished, build, from_summaries};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Md,
    Csv,
    Latex,
    Html,
}

/// A table, numbers kept, ready to render.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub title: String,
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Entry>>,
    /// Digits after the decimal point.
    pub digits: usize,
    /// Plan cells without a finished run.
    pub missing: usize,
    /// Plan cells in all.
    pub cells: usize,
    /// Sweep axes other than the seed that are neither rows nor columns: each value averages
    /// over them.
    pub averaged: Vec<AveragedAxis>,
    /// Where the paper's numbers come from (empty: no paper).
    pub source: String,
    /// The paper's claims without numbers.
    pub claims: Vec<String>,
}

/// One column of the header.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub label: String,
    pub kind: ColumnKind,
    /// The label of the column group (`[table] columns` values) the column belongs to; empty
    /// for row keys and for a table without column groups.
    pub group: String,
}

/// What a column holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnKind {
    /// A row key (a spec field's value), or the metric name of a table without `[table]`.
    Key,
    /// Our value of `metric`.
    Metric { metric: String },
    /// The paper's value of `metric`.
    Paper { metric: String },
    /// Ours − paper for `metric`.
    Delta { metric: String },
}

/// One cell of the body.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A row key's label.
    Text(String),
    /// Our value over the finished runs of the cell (seeds).
    Stat(Stat),
    /// No finished run has the metric.
    Missing,
    /// Nothing to show (no paper value, or no delta).
    Empty,
    /// A published value.
    Paper(f64),
    /// Ours − paper.
    Delta(Delta),
}

/// Mean and sample standard deviation over `n` runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub mean: f64,
    /// `None` for a single run.
    pub std: Option<f64>,
    pub n: usize,
}

/// Ours − paper, with the paper's value for scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delta {
    pub value: f64,
    pub paper: f64,
}

/// A sweep axis the table averages over.
#[derive(Debug, Clone, PartialEq)]
pub struct AveragedAxis {
    pub key: String,
    /// The axis's values, as written.
    pub values: Vec<String>,
}

/// The marker of a missing value in text formats.
pub const MISSING: &str = "—";

impl Stat {
    /// Mean and sample std of `values` (not empty).
    pub fn of(values: &[f64]) -> Stat {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (n >= 2).then(|| {
            let var = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            var.sqrt()
        });
        Stat { mean, std, n }
    }
}

/// `0.81`, or `0.81 ± 0.02` (sample std) over several runs.
pub fn format_stat(v: &[f64], digits: usize) -> String {
    let s = Stat::of(v);
    match s.std {
        None => format!("{:.digits$}", s.mean),
        Some(std) => format!("{:.digits$} ± {std:.digits$}", s.mean),
    }
}

impl Table {
    /// The table in `format`.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Md => render::markdown(self),
            Format::Csv => render::csv(self),
            Format::Latex => render::latex(self),
            Format::Html => render::html(self),
        }
    }

    /// The lines under the table, the same in every format: missing cells, averaged axes,
    /// the paper's source and claims.
    pub fn footer(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.missing > 0 {
            lines.push(format!(
                "{} of {} cells have no finished run ({MISSING}).",
                self.missing, self.cells
            ));
        }
        for axis in &self.averaged {
            lines.push(format!(
                "Averaged over {} ({}), which is neither a row nor a column: ± spans those cells, not only seeds.",
                axis.key,
                axis.values.join(", ")
            ));
        }
        if !self.source.is_empty() {
            lines.push(format!("Paper: {}", self.source));
        }
        for claim in &self.claims {
            lines.push(format!("Paper claim: {claim}"));
        }
        lines
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
        assert_eq!(Stat::of(&[1.0, 2.0, 3.0]).n, 3);
    }
}
