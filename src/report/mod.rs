//! `beatlab report`: one self-contained HTML page per experiment, from the registry and the run
//! folders alone: the experiment's table beside the paper's values, training curves, codebook
//! use, every cell's run with its provenance, and failed runs with their error.
//!
//! Plots are drawn by this module's own small SVG writer ([`svg`], [`chart`]) rather than a
//! plotting crate: the page needs a handful of chart kinds whose elements carry their data
//! (`data-points`, `data-series`) so tests and readers can check them against the registry,
//! and `plotters`' SVG backend offers no per-element attributes and would add a font stack.

pub mod chart;
pub mod curves;
pub mod ecg;
pub mod gather;
pub mod page;
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

/// Writes the report of `data` into `out`: `index.html` and every plot it shows as
/// `plots/<name>.svg`, each file atomically. Returns the page's path.
pub fn write(data: &ReportData, out: &Path) -> Result<PathBuf, ReportError> {
    let curves = curves::loss_plots(data);
    let codebook = curves::codebook_plots(data);
    let ecg = ecg::ecg_plots(data);
    let plots_dir = out.join("plots");
    std::fs::create_dir_all(&plots_dir).map_err(|source| ReportError::Write {
        path: plots_dir.clone(),
        source,
    })?;
    for p in curves.iter().chain(&codebook).chain(&ecg) {
        let path = plots_dir.join(format!("{}.svg", p.name));
        write_file(&path, p.svg.as_bytes())?;
    }
    let index = out.join(INDEX);
    write_file(
        &index,
        page::render(data, &curves, &codebook, &ecg).as_bytes(),
    )?;
    Ok(index)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    beatlab_fsio::write_atomically(path, bytes).map_err(|source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    })
}
