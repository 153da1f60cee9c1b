//! The built-in stage kinds; [`catalog`] declares each (defaults, summaries, factory).

pub mod beat;
pub mod catalog;
pub mod multimodal;
pub mod trainer;

pub use catalog::builtin;
