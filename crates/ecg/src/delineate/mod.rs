//! Wave delineation: R peaks, then P, QRS and T onsets, peaks and offsets per lead and per beat,
//! for any sampling rate and length, in the manner of the wavelet delineator of Martinez et al.
//! (2004) and NeuroKit2's `dwt` method.
//!
//! Each lead is resampled to [`WORK_FS`] (250 Hz, the rate the dyadic scales are made for: at
//! 2^2 the QRS, at 2^4 the P and T waves), gaps (non-finite samples) are bridged by holding the
//! last value, and a 0.5 Hz zero-phase high-pass removes the baseline. Beats are found once
//! over all leads ([`beats`]); every lead is then delineated around those beats on its own
//! ([`waves`]). Positions are given in samples of the record's own rate.

pub mod beats;
pub mod measure;
pub mod score;
pub mod wavelet;
pub mod waves;

use serde::{Deserialize, Serialize};

use crate::dsp::{self, ButterBand, DspError};
use crate::record::{Record, Wave};
pub use beats::BeatConfig;
pub use waves::WaveConfig;

/// The rate every lead is delineated at, Hz.
pub const WORK_FS: f64 = 250.0;
const LEVELS: usize = 5;
const HIGHPASS_HZ: f64 = 0.5;
const LOWPASS_HZ: f64 = 40.0;

/// Settings of the delineator.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DelineateConfig {
    pub beats: BeatConfig,
    pub waves: WaveConfig,
}

/// The waves of one beat in one lead; a wave that was not found is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BeatWaves {
    pub p: Option<Wave>,
    pub qrs: Option<Wave>,
    pub t: Option<Wave>,
}

/// One lead's waves, one entry per beat of [`Delineation::r_peaks`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadWaves {
    pub lead: String,
    pub beats: Vec<BeatWaves>,
}

impl LeadWaves {
    /// Every wave found in this lead, in time order of beats (P, QRS, T of each beat).
    pub fn waves(&self) -> Vec<Wave> {
        self.beats
            .iter()
            .flat_map(|b| [b.p, b.qrs, b.t])
            .flatten()
            .collect()
    }
}

/// The delineation of a record; sample indices at `fs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delineation {
    pub id: String,
    pub fs: f64,
    pub samples: usize,
    /// Beat times (the maximum of the multi-lead QRS curve).
    pub r_peaks: Vec<usize>,
    pub leads: Vec<LeadWaves>,
}

/// A lead at the working rate with its wavelet scales.
struct Prepared {
    x: Vec<f32>,
    w: Vec<Vec<f32>>,
}

fn prepare_lead(signal: &[f32], fs: f64) -> Result<Prepared, DspError> {
    let mut held = Vec::with_capacity(signal.len());
    let mut last = signal
        .iter()
        .copied()
        .find(|v| v.is_finite())
        .unwrap_or(0.0);
    for &v in signal {
        if v.is_finite() {
            last = v;
        }
        held.push(last);
    }
    let x = if (fs - WORK_FS).abs() < 1e-9 {
        held
    } else {
        dsp::resample(&held, fs, WORK_FS)?
    };
    let x = if x.len() > 3 * 12 {
        dsp::butter(2, ButterBand::Bandpass(HIGHPASS_HZ, LOWPASS_HZ), WORK_FS)?.filtfilt(&x)
    } else {
        x
    };
    let w = wavelet::transform(&x, LEVELS);
    Ok(Prepared { x, w })
}

/// Delineates every lead of `record`.
pub fn delineate(record: &Record, cfg: &DelineateConfig) -> Result<Delineation, DspError> {
    let leads: Vec<Prepared> = record
        .signals
        .iter()
        .map(|s| prepare_lead(s, record.fs))
        .collect::<Result<_, _>>()?;
    let scales: Vec<Vec<Vec<f32>>> = leads.iter().map(|l| l.w.clone()).collect();
    let curve = beats::detection_curve(&scales, WORK_FS);
    let beat_times = beats::detect(&curve, WORK_FS, &cfg.beats);
    let scale = record.fs / WORK_FS;
    let n = record.len();
    let to_record = |i: usize| ((i as f64 * scale).round() as usize).min(n.saturating_sub(1));
    let map_wave = |w: Wave| Wave {
        kind: w.kind,
        onset: to_record(w.onset),
        peak: to_record(w.peak),
        offset: to_record(w.offset),
    };
    let lead_waves = leads
        .iter()
        .zip(&record.leads)
        .map(|(p, name)| {
            let lead = waves::Lead {
                x: &p.x,
                w: &p.w,
                fs: WORK_FS,
            };
            let beats = waves::delineate_lead(&lead, &beat_times, &cfg.waves)
                .into_iter()
                .map(|b| BeatWaves {
                    p: b.p.map(map_wave),
                    qrs: b.qrs.map(map_wave),
                    t: b.t.map(map_wave),
                })
                .collect();
            LeadWaves {
                lead: name.clone(),
                beats,
            }
        })
        .collect();
    Ok(Delineation {
        id: record.id.clone(),
        fs: record.fs,
        samples: n,
        r_peaks: beat_times.into_iter().map(to_record).collect(),
        leads: lead_waves,
    })
}
