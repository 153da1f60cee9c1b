//! beatlab: a declarative experiment framework for multimodal ECG language models.
//!
//! A TOML [`spec`] expands into a plan of cells; the [`registry`] records every run, metric and
//! checkpoint in SQLite; the [`runner`] trains each cell's stages; [`table`] renders the
//! published ablation tables from the registry.

pub mod data;
pub mod device;
pub mod launch;
pub mod parity;
pub mod query;
pub mod registry;
pub mod report;
pub mod runner;
pub mod spec;
pub mod stages;
pub mod table;
pub mod tracking;
