//! The published preprocessing (HeartcareGPT, paper-facts §1.1) that turns one [`Record`] into
//! model-ready windows: leads put in standard 12-lead order (missing leads zero-filled and
//! masked, as anyECG-chat), polyphase resampling to `target_fs`, band-pass cleaning, choice of
//! the window(s), and normalisation.
//!
//! # Cleaning
//! Default: Butterworth band-pass 0.5-40 Hz, order 3, applied forward and backward (zero phase,
//! effective order 6). The paper says only "per-lead bandpass cleaning", so these corners are
//! ours: 0.5 Hz removes respiration and electrode drift while zero-phase filtering keeps the ST
//! segment undistorted (the AHA allows up to 0.67 Hz for bidirectional filters); 40 Hz removes
//! EMG and 50/60 Hz mains, which the tokenizer would otherwise spend codebook entries on, at the
//! cost of some QRS notch detail the 25-sample patches at 250 Hz hardly resolve anyway. Order 3
//! gives a flat passband without ringing on sharp QRS edges.
//!
//! # Signal quality index (window choice)
//! Computed per lead on the resampled (not yet cleaned) signal, for a window `W`:
//! * **integrity** `1 - b`, where `b` is the fraction of samples in `W` that are
//!   - *flat*: inside a run of at least `flat_min_ms` whose sample-to-sample steps are all
//!     `<= flat_tol_mv` (lead off, dropout);
//!   - *saturated*: inside a run of at least `saturation_min_ms` of such small steps lying
//!     within `saturation_margin` (fraction of the lead's range) of the lead's record-wide
//!     maximum or minimum (amplifier clipping);
//!   - *missing*: non-finite in the source record.
//! * **kurtosis** `s_k = clamp((kurtosis - 3) / (kurtosis_good - 3), 0, 1)` of the 0.5-40 Hz
//!   signal: a clean ECG is dominated by sharp QRS peaks (kurtosis > 5, Li & Clifford), Gaussian
//!   noise has kurtosis 3.
//! * **QRS band ratio** `s_p = clamp(E[5-15 Hz] / E[5-40 Hz] / 0.5, 0, 1)`: QRS energy
//!   concentrates in 5-15 Hz (ratio 0.5-0.8 for clean ECG); broadband noise lowers it.
//! * **high-frequency ratio** `s_h = clamp(1 - E[>40 Hz] / (E[>40 Hz] + E[0.5-40 Hz]) /
//!   hf_ratio_bad, 0, 1)`: EMG and mains live above 40 Hz.
//!
//! The lead score is `(1 - b) * (s_k + s_p + s_h) / 3`; the window score is the mean over the
//! leads present in the record. Candidate windows start every `stride` samples (and at the last
//! possible start); the best-scoring one wins, ties going to the candidate nearest the centre. If
//! even the best scores below `min_quality`, the centre crop is used instead. A record shorter
//! than the window is zero-padded at the end.
//!
//! # Normalisation
//! `lead_mean_global_std` (the paper): subtract each lead's mean and divide all leads by one
//! standard deviation pooled over the present leads, both computed over the input part of the
//! window (the first `input_len` samples, real samples only) so the statistics never see the
//! part the model must predict. `minmax` (anyECG-chat): each lead mapped to [-1, 1] by its
//! min/max over the input part. Zero-filled leads and padding stay exactly zero.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::dsp::{self, ButterBand, DspError, Sos};
use crate::record::{Record, STANDARD_LEADS};

/// Number of leads of every prepared window.
pub const N_LEADS: usize = 12;

/// Errors of preprocessing one record; each names the record.
#[derive(Debug, Error)]
pub enum PreprocessError {
    /// The record has no samples or no leads.
    #[error("record `{record}`: no samples to preprocess")]
    Empty { record: String },
    /// A lead's length differs from the first lead's.
    #[error("record `{record}`: lead `{lead}` has {got} samples, expected {expected} like lead 0")]
    LeadLength {
        record: String,
        lead: String,
        expected: usize,
        got: usize,
    },
    /// The record carries none of the twelve standard leads.
    #[error("record `{record}`: none of the 12 standard leads present (leads: {leads:?})")]
    NoStandardLeads { record: String, leads: Vec<String> },
    /// `input_len` is zero.
    #[error("input_len must be positive")]
    ZeroInputLen,
    /// Resampling or filter design failed (bad rate or corner frequency).
    #[error("record `{record}`: {source}")]
    Dsp {
        record: String,
        #[source]
        source: DspError,
    },
}

/// Band-pass cleaning settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandpassConfig {
    pub low_hz: f64,
    pub high_hz: f64,
    /// Butterworth order of each pass (the zero-phase result has twice this order).
    pub order: usize,
}

impl Default for BandpassConfig {
    fn default() -> Self {
        Self {
            low_hz: 0.5,
            high_hz: 40.0,
            order: 3,
        }
    }
}

/// How windows are taken from a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowMode {
    /// The single window with the best quality index (centre crop when none passes).
    Best,
    /// The centre crop.
    Center,
    /// Every `stride` samples (more windows per record).
    Sliding,
}

/// Normalisation of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalise {
    /// Leave millivolts as they are.
    None,
    /// Per-lead mean removed, divided by one global std (over the input part).
    LeadMeanGlobalStd,
    /// Per-lead min-max to [-1, 1] (over the input part).
    Minmax,
}

/// Thresholds of the signal quality index (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QualityConfig {
    /// Largest sample-to-sample step still counted as "not moving", mV.
    pub flat_tol_mv: f32,
    /// Shortest run of not-moving samples that counts as a flat line, ms.
    pub flat_min_ms: f64,
    /// Shortest not-moving run at the lead's extreme that counts as saturation, ms.
    pub saturation_min_ms: f64,
    /// How close to the record-wide extreme (fraction of the lead's range) saturation sits.
    pub saturation_margin: f32,
    /// Kurtosis at which the kurtosis score reaches 1.
    pub kurtosis_good: f32,
    /// High-frequency energy fraction at which the high-frequency score reaches 0.
    pub hf_ratio_bad: f32,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            // 1 uV is the resolution of PTB-XL and LUDB; a resampled flat line moves less.
            flat_tol_mv: 0.001,
            flat_min_ms: 200.0,
            saturation_min_ms: 40.0,
            saturation_margin: 0.01,
            kurtosis_good: 5.0,
            hf_ratio_bad: 0.3,
        }
    }
}

/// Preprocessing settings; defaults follow HeartcareGPT (paper-facts §1.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Output sampling rate, Hz (paper: 250).
    pub target_fs: f64,
    /// Band-pass cleaning; `None` skips it.
    pub bandpass: Option<BandpassConfig>,
    /// Optional mains notch frequency (50 or 60 Hz); off by default because the 40 Hz
    /// band-pass already removes mains.
    pub notch_hz: Option<f64>,
    /// Quality factor of the notch.
    pub notch_q: f64,
    pub window: WindowMode,
    /// Step between candidate windows (best) or between windows (sliding), in samples at
    /// `target_fs`. Default 125 = 0.5 s at 250 Hz.
    pub stride: usize,
    /// Best-window score below which the centre crop is used instead.
    pub min_quality: f32,
    pub normalise: Normalise,
    pub quality: QualityConfig,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            target_fs: 250.0,
            bandpass: Some(BandpassConfig::default()),
            notch_hz: None,
            notch_q: 30.0,
            window: WindowMode::Best,
            stride: 125,
            // Clean PTB-XL and LUDB windows score 0.8-1.0; white noise scores ~0.2, a flat line 0.
            min_quality: 0.5,
            normalise: Normalise::LeadMeanGlobalStd,
            quality: QualityConfig::default(),
        }
    }
}

/// How a window was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowChoice {
    /// Best quality index among the candidates.
    Best,
    /// Centre crop because no candidate reached `min_quality`.
    CenterFallback,
    /// Centre crop by configuration.
    Center,
    /// One of the sliding windows.
    Sliding,
    /// The record was shorter than the window and was zero-padded.
    Padded,
}

/// One model-ready window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// `12 x window_len` values, lead-major in standard lead order.
    pub data: Vec<f32>,
    /// Which of the 12 standard leads the record had (others are zero).
    pub lead_mask: [bool; N_LEADS],
    /// First sample of the window in the resampled record.
    pub start: usize,
    /// Number of real (not padded) samples per lead.
    pub valid_len: usize,
    /// Quality index of the window (0-1).
    pub quality: f32,
    pub choice: WindowChoice,
}

/// A record after lead mapping, resampling and cleaning, before windowing.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub fs: f64,
    /// Cleaned signals in standard lead order (zeros for missing leads).
    pub signals: Vec<Vec<f32>>,
    /// Resampled signals before cleaning (zeros for missing leads); the quality index reads these.
    pub raw: Vec<Vec<f32>>,
    /// Samples that were non-finite in the source, per lead (mapped to the new rate).
    pub missing: Vec<Vec<bool>>,
    pub lead_mask: [bool; N_LEADS],
}

impl Prepared {
    pub fn len(&self) -> usize {
        self.signals.first().map_or(0, Vec::len)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Index of a lead name in [`STANDARD_LEADS`], case-insensitively.
pub fn standard_lead_index(name: &str) -> Option<usize> {
    STANDARD_LEADS
        .iter()
        .position(|l| l.eq_ignore_ascii_case(name.trim()))
}

/// Maps leads to the standard order, resamples to `cfg.target_fs` and cleans.
pub fn prepare(record: &Record, cfg: &PreprocessConfig) -> Result<Prepared, PreprocessError> {
    let id = || record.id.clone();
    let n_in = record.len();
    if n_in == 0 || record.signals.is_empty() {
        return Err(PreprocessError::Empty { record: id() });
    }
    for (k, s) in record.signals.iter().enumerate() {
        if s.len() != n_in {
            return Err(PreprocessError::LeadLength {
                record: id(),
                lead: record
                    .leads
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| k.to_string()),
                expected: n_in,
                got: s.len(),
            });
        }
    }
    let mut source: [Option<usize>; N_LEADS] = [None; N_LEADS];
    for (k, name) in record.leads.iter().enumerate() {
        if let Some(std_idx) = standard_lead_index(name) {
            source[std_idx].get_or_insert(k);
        }
    }
    if source.iter().all(Option::is_none) {
        return Err(PreprocessError::NoStandardLeads {
            record: id(),
            leads: record.leads.clone(),
        });
    }
    let dsp_err = |source| PreprocessError::Dsp {
        record: id(),
        source,
    };
    let (up, down) = dsp::rate_ratio(record.fs, cfg.target_fs).map_err(dsp_err)?;
    let n_out = (n_in * up).div_ceil(down);
    let cleaner = cleaning_filters(cfg).map_err(dsp_err)?;

    let mut signals = Vec::with_capacity(N_LEADS);
    let mut raw = Vec::with_capacity(N_LEADS);
    let mut missing = Vec::with_capacity(N_LEADS);
    let mut lead_mask = [false; N_LEADS];
    for (std_idx, src) in source.iter().enumerate() {
        let Some(k) = *src else {
            signals.push(vec![0.0; n_out]);
            raw.push(vec![0.0; n_out]);
            missing.push(vec![false; n_out]);
            continue;
        };
        lead_mask[std_idx] = true;
        let input = &record.signals[k];
        let finite: Vec<f32> = input
            .iter()
            .map(|&v| if v.is_finite() { v } else { 0.0 })
            .collect();
        let resampled = dsp::resample_poly(&finite, up, down).map_err(dsp_err)?;
        let bad_in: Vec<bool> = input.iter().map(|v| !v.is_finite()).collect();
        let bad: Vec<bool> = if bad_in.iter().any(|&b| b) {
            (0..n_out)
                .map(|j| bad_in[((j * down) / up).min(n_in - 1)])
                .collect()
        } else {
            vec![false; n_out]
        };
        let mut clean = resampled.clone();
        for f in &cleaner {
            clean = f.filtfilt(&clean);
        }
        signals.push(clean);
        raw.push(resampled);
        missing.push(bad);
    }
    Ok(Prepared {
        fs: cfg.target_fs,
        signals,
        raw,
        missing,
        lead_mask,
    })
}

fn cleaning_filters(cfg: &PreprocessConfig) -> Result<Vec<Sos>, DspError> {
    let mut filters = Vec::new();
    if let Some(bp) = &cfg.bandpass {
        filters.push(dsp::butter(
            bp.order,
            ButterBand::Bandpass(bp.low_hz, bp.high_hz),
            cfg.target_fs,
        )?);
    }
    if let Some(f) = cfg.notch_hz {
        filters.push(dsp::notch(f, cfg.notch_q, cfg.target_fs)?);
    }
    Ok(filters)
}

/// Per-lead running sums from which any window's quality index is computed in O(1).
pub struct QualityTrack {
    len: usize,
    present: Vec<usize>,
    // Per present lead: prefix sums (length len + 1).
    bad: Vec<Vec<u32>>,
    m1: Vec<Vec<f64>>,
    m2: Vec<Vec<f64>>,
    m3: Vec<Vec<f64>>,
    m4: Vec<Vec<f64>>,
    e_qrs: Vec<Vec<f64>>,
    e_wide: Vec<Vec<f64>>,
    e_ref: Vec<Vec<f64>>,
    e_hf: Vec<Vec<f64>>,
    kurtosis_good: f32,
    hf_ratio_bad: f32,
}

fn prefix<T: Copy, A: Copy + std::ops::Add<Output = A> + Default>(
    x: &[T],
    f: impl Fn(T) -> A,
) -> Vec<A> {
    let mut out = Vec::with_capacity(x.len() + 1);
    let mut acc = A::default();
    out.push(acc);
    for &v in x {
        acc = acc + f(v);
        out.push(acc);
    }
    out
}

/// Marks samples inside runs of at least `min_len` samples whose steps are all `<= tol`
/// and (when `extreme` is given) whose values all satisfy it.
fn mark_still_runs(
    x: &[f32],
    tol: f32,
    min_len: usize,
    extreme: Option<&dyn Fn(f32) -> bool>,
) -> Vec<bool> {
    let n = x.len();
    let mut out = vec![false; n];
    let ok = |i: usize| extreme.is_none_or(|e| e(x[i]));
    let mut i = 0;
    while i < n {
        if !ok(i) {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < n && (x[j] - x[j - 1]).abs() <= tol && ok(j) {
            j += 1;
        }
        if j - i >= min_len.max(2) {
            out[i..j].iter_mut().for_each(|b| *b = true);
        }
        i = j;
    }
    out
}

impl QualityTrack {
    /// Precomputes the quality features of every present lead of `prep`.
    pub fn new(prep: &Prepared, cfg: &QualityConfig) -> Result<Self, DspError> {
        let fs = prep.fs;
        let len = prep.len();
        // Quality bands are fixed (independent of the cleaning settings) but must fit below
        // Nyquist for low target rates.
        let top = 40.0f64.min(0.4 * fs);
        let qrs_top = 15.0f64.min(0.8 * top);
        let reference = dsp::butter(2, ButterBand::Bandpass(0.5, top), fs)?;
        let qrs = dsp::butter(2, ButterBand::Bandpass(5.0, qrs_top), fs)?;
        let wide = dsp::butter(2, ButterBand::Bandpass(5.0, top), fs)?;
        let hf = dsp::butter(2, ButterBand::Highpass(top), fs)?;
        let flat_min = ((cfg.flat_min_ms / 1000.0) * fs).round() as usize;
        let sat_min = ((cfg.saturation_min_ms / 1000.0) * fs).round() as usize;
        let mut track = Self {
            len,
            present: Vec::new(),
            bad: Vec::new(),
            m1: Vec::new(),
            m2: Vec::new(),
            m3: Vec::new(),
            m4: Vec::new(),
            e_qrs: Vec::new(),
            e_wide: Vec::new(),
            e_ref: Vec::new(),
            e_hf: Vec::new(),
            kurtosis_good: cfg.kurtosis_good,
            hf_ratio_bad: cfg.hf_ratio_bad,
        };
        for lead in 0..N_LEADS {
            if !prep.lead_mask[lead] {
                continue;
            }
            let raw = &prep.raw[lead];
            track.present.push(lead);
            let flat = mark_still_runs(raw, cfg.flat_tol_mv, flat_min, None);
            let (lo, hi) = raw
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            let margin = (hi - lo) * cfg.saturation_margin;
            let near_extreme = move |v: f32| v >= hi - margin || v <= lo + margin;
            // Clipped plateaus jitter by a few quantisation steps after resampling.
            let saturated =
                mark_still_runs(raw, 10.0 * cfg.flat_tol_mv, sat_min, Some(&near_extreme));
            let bad: Vec<bool> = (0..len)
                .map(|i| flat[i] || saturated[i] || prep.missing[lead][i])
                .collect();
            track.bad.push(prefix(&bad, |b| b as u32));
            let r = reference.filtfilt(raw);
            track.m1.push(prefix(&r, |v| v as f64));
            track.m2.push(prefix(&r, |v| (v as f64).powi(2)));
            track.m3.push(prefix(&r, |v| (v as f64).powi(3)));
            track.m4.push(prefix(&r, |v| (v as f64).powi(4)));
            track.e_ref.push(prefix(&r, |v| (v as f64).powi(2)));
            track
                .e_qrs
                .push(prefix(&qrs.filtfilt(raw), |v| (v as f64).powi(2)));
            track
                .e_wide
                .push(prefix(&wide.filtfilt(raw), |v| (v as f64).powi(2)));
            track
                .e_hf
                .push(prefix(&hf.filtfilt(raw), |v| (v as f64).powi(2)));
        }
        Ok(track)
    }

    /// Quality of each present lead over `[start, start + len)` (clipped to the record), in
    /// standard lead order; `None` for missing leads.
    pub fn lead_scores(&self, start: usize, len: usize) -> [Option<f32>; N_LEADS] {
        let mut out = [None; N_LEADS];
        let a = start.min(self.len);
        let b = (start + len).min(self.len);
        if b <= a {
            return out;
        }
        let n = (b - a) as f64;
        let diff = |p: &Vec<f64>| p[b] - p[a];
        for (slot, &lead) in self.present.iter().enumerate() {
            let bad_fraction = (self.bad[slot][b] - self.bad[slot][a]) as f64 / n;
            let mean = diff(&self.m1[slot]) / n;
            let ex2 = diff(&self.m2[slot]) / n;
            let ex3 = diff(&self.m3[slot]) / n;
            let ex4 = diff(&self.m4[slot]) / n;
            let var = ex2 - mean * mean;
            let central4 = ex4 - 4.0 * mean * ex3 + 6.0 * mean * mean * ex2 - 3.0 * mean.powi(4);
            let kurtosis = if var > 1e-12 {
                central4 / (var * var)
            } else {
                0.0
            };
            let s_k = ((kurtosis as f32 - 3.0) / (self.kurtosis_good - 3.0)).clamp(0.0, 1.0);
            let wide = diff(&self.e_wide[slot]);
            let s_p = if wide > 1e-12 {
                ((diff(&self.e_qrs[slot]) / wide) as f32 / 0.5).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let hf = diff(&self.e_hf[slot]);
            let total = hf + diff(&self.e_ref[slot]);
            let s_h = if total > 1e-12 {
                (1.0 - (hf / total) as f32 / self.hf_ratio_bad).clamp(0.0, 1.0)
            } else {
                0.0
            };
            out[lead] = Some((1.0 - bad_fraction as f32) * (s_k + s_p + s_h) / 3.0);
        }
        out
    }

    /// Window quality: mean lead score over the present leads.
    pub fn score(&self, start: usize, len: usize) -> f32 {
        let scores = self.lead_scores(start, len);
        let (sum, count) = scores
            .iter()
            .flatten()
            .fold((0.0f32, 0usize), |(s, c), &v| (s + v, c + 1));
        if count == 0 { 0.0 } else { sum / count as f32 }
    }
}

/// Candidate starts: every `stride` samples, plus the last possible start.
fn candidate_starts(n: usize, window_len: usize, stride: usize) -> Vec<usize> {
    let last = n - window_len;
    let mut starts: Vec<usize> = (0..=last).step_by(stride.max(1)).collect();
    if starts.last() != Some(&last) {
        starts.push(last);
    }
    starts
}

/// Chooses the windows of a prepared record and normalises them.
pub fn windows(
    prep: &Prepared,
    cfg: &PreprocessConfig,
    input_len: usize,
    predict_len: usize,
) -> Result<Vec<Window>, DspError> {
    let window_len = input_len + predict_len;
    let n = prep.len();
    let track = QualityTrack::new(prep, &cfg.quality)?;
    let mut chosen: Vec<(usize, f32, WindowChoice)> = Vec::new();
    if n <= window_len {
        let choice = if n == window_len {
            match cfg.window {
                WindowMode::Best => WindowChoice::Best,
                WindowMode::Center => WindowChoice::Center,
                WindowMode::Sliding => WindowChoice::Sliding,
            }
        } else {
            WindowChoice::Padded
        };
        chosen.push((0, track.score(0, n), choice));
    } else {
        let centre = (n - window_len) / 2;
        match cfg.window {
            WindowMode::Center => chosen.push((
                centre,
                track.score(centre, window_len),
                WindowChoice::Center,
            )),
            WindowMode::Sliding => {
                for s in candidate_starts(n, window_len, cfg.stride) {
                    chosen.push((s, track.score(s, window_len), WindowChoice::Sliding));
                }
            }
            WindowMode::Best => {
                let mut best: Option<(usize, f32)> = None;
                for s in candidate_starts(n, window_len, cfg.stride) {
                    let q = track.score(s, window_len);
                    let better = match best {
                        None => true,
                        Some((bs, bq)) => {
                            q > bq || (q == bq && s.abs_diff(centre) < bs.abs_diff(centre))
                        }
                    };
                    if better {
                        best = Some((s, q));
                    }
                }
                let (s, q) = best.expect("at least one candidate start");
                if q >= cfg.min_quality {
                    chosen.push((s, q, WindowChoice::Best));
                } else {
                    chosen.push((
                        centre,
                        track.score(centre, window_len),
                        WindowChoice::CenterFallback,
                    ));
                }
            }
        }
    }
    Ok(chosen
        .into_iter()
        .map(|(start, quality, choice)| {
            let valid_len = (n - start).min(window_len);
            let mut data = vec![0.0f32; N_LEADS * window_len];
            for lead in 0..N_LEADS {
                if prep.lead_mask[lead] {
                    data[lead * window_len..lead * window_len + valid_len]
                        .copy_from_slice(&prep.signals[lead][start..start + valid_len]);
                }
            }
            normalise(
                &mut data,
                &prep.lead_mask,
                window_len,
                input_len.min(valid_len),
                valid_len,
                cfg.normalise,
            );
            Window {
                data,
                lead_mask: prep.lead_mask,
                start,
                valid_len,
                quality,
                choice,
            }
        })
        .collect())
}

/// Normalises a `12 x window_len` window in place. Statistics come from the first `stats_len`
/// samples of each present lead; the transform applies to the first `valid_len` samples, so
/// padding and missing leads stay zero.
pub fn normalise(
    data: &mut [f32],
    lead_mask: &[bool; N_LEADS],
    window_len: usize,
    stats_len: usize,
    valid_len: usize,
    mode: Normalise,
) {
    if stats_len == 0 {
        return;
    }
    let lead = |data: &[f32], k: usize| -> Vec<f64> {
        data[k * window_len..k * window_len + stats_len]
            .iter()
            .map(|&v| v as f64)
            .collect()
    };
    match mode {
        Normalise::None => {}
        Normalise::LeadMeanGlobalStd => {
            let mut means = [0.0f64; N_LEADS];
            let mut sq = 0.0f64;
            let mut count = 0usize;
            for k in (0..N_LEADS).filter(|&k| lead_mask[k]) {
                let x = lead(data, k);
                let m = x.iter().sum::<f64>() / stats_len as f64;
                means[k] = m;
                sq += x.iter().map(|v| (v - m) * (v - m)).sum::<f64>();
                count += stats_len;
            }
            if count == 0 {
                return;
            }
            let std = (sq / count as f64).sqrt();
            // A window with no signal at all keeps its (zero) values instead of exploding.
            let scale = if std > 1e-9 { 1.0 / std } else { 1.0 };
            for k in (0..N_LEADS).filter(|&k| lead_mask[k]) {
                for v in &mut data[k * window_len..k * window_len + valid_len] {
                    *v = ((*v as f64 - means[k]) * scale) as f32;
                }
            }
        }
        Normalise::Minmax => {
            for k in (0..N_LEADS).filter(|&k| lead_mask[k]) {
                let x = lead(data, k);
                let lo = x.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let range = hi - lo;
                for v in &mut data[k * window_len..k * window_len + valid_len] {
                    *v = if range > 1e-12 {
                        (2.0 * (*v as f64 - lo) / range - 1.0) as f32
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// The whole pipeline for one record: [`prepare`] then [`windows`].
pub fn preprocess_record(
    record: &Record,
    cfg: &PreprocessConfig,
    input_len: usize,
    predict_len: usize,
) -> Result<Vec<Window>, PreprocessError> {
    if input_len == 0 {
        return Err(PreprocessError::ZeroInputLen);
    }
    let prep = prepare(record, cfg)?;
    windows(&prep, cfg, input_len, predict_len).map_err(|source| PreprocessError::Dsp {
        record: record.id.clone(),
        source,
    })
}
