//! ECG data for beatlab: readers for real recordings (WFDB, MAT v4, PTB-XL, LUDB, CinC), the
//! built-in 12-lead simulator, and the published preprocessing (resampling, cleaning, window
//! choice, normalisation) that turns records into model-ready windows.

pub mod annotation;
pub mod check;
pub mod dataset;
pub mod delineate;
pub mod dsp;
pub mod error;
pub mod flexible;
pub mod grounding;
pub mod ludb;
pub mod mat;
pub mod preprocess;
pub mod ptbxl;
pub mod record;
pub mod safe_read;
pub mod sources;
pub mod synthetic;
pub mod wfdb;

pub use error::DataError;
pub use record::{Record, RecordMeta, STANDARD_LEADS, SourceKind, Superclass, Wave, WaveKind};
