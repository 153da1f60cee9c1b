//! A few validation windows of a trained Beat, saved by the `beat` stage at the end of training
//! (`samples-beat.json` in the run folder) so that the report can draw them without the model or
//! the data: each window's 12 leads, Beat's reconstruction of the input part and its predicted
//! continuation.

use std::path::Path;

use beatlab_ecg::STANDARD_LEADS;
use beatlab_ecg::dataset::WindowSet;
use beatlab_nn::beat::{Beat, Mode};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::LoadError;
use crate::runner::StageError;

/// The file in a run folder.
pub const BEAT_SAMPLES_FILE: &str = "samples-beat.json";

/// Validation windows kept per run.
const WINDOWS: usize = 2;

/// What `samples-beat.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BeatSamples {
    /// Sampling rate of the windows, in Hz.
    pub fs: f64,
    /// Samples Beat sees; the prediction covers the `predict_len` after them.
    pub input_len: usize,
    /// Samples of the predicted continuation.
    pub predict_len: usize,
    /// Lead names, in the order of every series.
    pub leads: Vec<String>,
    /// The windows, evenly spread over the validation split.
    pub windows: Vec<BeatWindow>,
}

/// One window, normalised as Beat saw it; every series is per lead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BeatWindow {
    /// Index in the validation split.
    pub index: usize,
    /// `input_len + predict_len` samples per lead.
    pub signal: Vec<Vec<f32>>,
    /// `input_len` samples per lead.
    pub reconstruction: Vec<Vec<f32>>,
    /// `predict_len` samples per lead.
    pub prediction: Vec<Vec<f32>>,
}

/// Rounds to 1e-3: plenty for a drawing, and a third of the file.
fn rounded(values: Vec<f32>, leads: usize) -> Vec<Vec<f32>> {
    let per_lead = values.len() / leads.max(1);
    values
        .chunks(per_lead.max(1))
        .map(|lead| lead.iter().map(|v| (v * 1000.0).round() / 1000.0).collect())
        .collect()
}

/// Runs `model` on a few windows of `set` (evenly spread) and returns them with its outputs.
pub fn beat_samples(
    model: &Beat,
    set: &WindowSet,
    window_len: usize,
    fs: f64,
    dtype: DType,
    device: &Device,
) -> Result<BeatSamples, StageError> {
    let cfg = model.config();
    let leads = STANDARD_LEADS.len();
    let n = set.len().min(WINDOWS);
    let indices: Vec<usize> = (0..n).map(|k| k * set.len() / n.max(1)).collect();
    let mut windows = Vec::with_capacity(n);
    for &i in &indices {
        let data = set.window(i, window_len).to_vec();
        let x = Tensor::from_vec(data.clone(), (1, leads, window_len), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)?;
        let out = model.forward(&x, Mode::Eval)?;
        let flat = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
            t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
        };
        windows.push(BeatWindow {
            index: i,
            signal: rounded(data, leads),
            reconstruction: rounded(flat(&out.reconstruction)?, leads),
            prediction: rounded(flat(&out.prediction)?, leads),
        });
    }
    Ok(BeatSamples {
        fs,
        input_len: cfg.input_len,
        predict_len: cfg.predict_len,
        leads: STANDARD_LEADS.iter().map(|l| l.to_string()).collect(),
        windows,
    })
}

/// Writes `samples` into `run_dir` as [`BEAT_SAMPLES_FILE`] (atomically).
pub fn save_beat_samples(run_dir: &Path, samples: &BeatSamples) -> Result<(), StageError> {
    let path = run_dir.join(BEAT_SAMPLES_FILE);
    let text = serde_json::to_string(samples)?;
    beatlab_fsio::write_atomically(&path, text.as_bytes())
        .map_err(|source| StageError::Io { path, source })
}

/// The samples of a run folder: `None` when the `beat` stage saved none (an older run, or a
/// run without a Beat stage); an error when the file is there but unreadable.
pub fn load_beat_samples(run_dir: &Path) -> Result<Option<BeatSamples>, LoadError> {
    let path = run_dir.join(BEAT_SAMPLES_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LoadError::Io { path, source }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| LoadError::Json { path, source })
}
