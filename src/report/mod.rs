//! `beatlab report`: one self-contained HTML page per experiment, from the registry and the run
//! folders alone: the experiment's table beside the paper's values, bar charts of its metrics
//! ([`bars`]), the sweep's parallel coordinates ([`parallel`]), training curves, codebook use,
//! validation ECG windows, closed-QA answers and generations ([`qa`]), every cell's run with its
//! provenance, and failed runs with their error. Legends, titles and axes name fields and
//! metrics by the spec's `[table.labels]`.
//!
//! Plots are drawn by this module's own small SVG writer ([`svg`], [`chart`]) rather than a
//! plotting crate: the page needs a handful of chart kinds whose elements carry their data
//! (`data-points`, `data-series`) so tests and readers can check them against the registry,
//! and `plotters`' SVG backend offers no per-element attributes and would add a font stack.

pub mod bars;
pub mod chart;
pub mod curves;
pub mod ecg;
pub mod gather;
pub mod page;
pub mod parallel;
pub mod qa;
pub mod samples;
pub mod svg;

use std::path::{Path, PathBuf};

pub use gather::{ReportData, ReportError, gather};

/// The page's file name in the output folder.
pub const INDEX: &str = "index.html";

/// A run folder's file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file exists but could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not the JSON it should be.
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Every figure of a report, by section.
pub struct Figures {
    /// Grouped bars of each table metric.
    pub bars: Vec<curves::Plot>,
    /// Parallel coordinates over the sweep axes and the chosen metric.
    pub parallel: Option<curves::Plot>,
    pub curves: Vec<curves::Plot>,
    pub codebook: Vec<curves::Plot>,
    pub ecg: Vec<curves::Plot>,
    /// Closed-QA confusion matrices.
    pub confusion: Vec<curves::Plot>,
}

impl Figures {
    /// The figures of `data`; the parallel-coordinates plot shows `metric`, or the first
    /// table metric a cell has when `None`.
    pub fn of(data: &ReportData, metric: Option<&str>) -> Figures {
        let metric = metric
            .map(str::to_string)
            .or_else(|| parallel::chosen_metric(data));
        Figures {
            bars: bars::bar_plots(data),
            parallel: metric.and_then(|m| parallel::parallel_plot(data, &m)),
            curves: curves::loss_plots(data),
            codebook: curves::codebook_plots(data),
            ecg: ecg::ecg_plots(data),
            confusion: qa::confusion_plots(data),
        }
    }

    /// Every figure, in page order.
    pub fn all(&self) -> impl Iterator<Item = &curves::Plot> {
        self.bars
            .iter()
            .chain(&self.parallel)
            .chain(&self.curves)
            .chain(&self.codebook)
            .chain(&self.ecg)
            .chain(&self.confusion)
    }
}

/// Writes the report of `data` into `out`: `index.html` and every plot it shows as
/// `plots/<name>.svg`, each file atomically; `metric` is the parallel-coordinates plot's
/// ([`Figures::of`]). Returns the page's path.
pub fn write(data: &ReportData, out: &Path, metric: Option<&str>) -> Result<PathBuf, ReportError> {
    let figures = Figures::of(data, metric);
    let plots_dir = out.join("plots");
    std::fs::create_dir_all(&plots_dir).map_err(|source| ReportError::Write {
        path: plots_dir.clone(),
        source,
    })?;
    for p in figures.all() {
        let path = plots_dir.join(format!("{}.svg", p.name));
        write_file(&path, p.svg.as_bytes())?;
    }
    let index = out.join(INDEX);
    write_file(&index, page::render(data, &figures).as_bytes())?;
    Ok(index)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    beatlab_fsio::write_atomically(path, bytes).map_err(|source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    })
}
