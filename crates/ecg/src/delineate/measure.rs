//! Measurements from a delineation: per lead and per beat, heart rate, RR, PR, QRS duration,
//! QT, QTc (Bazett `QT / sqrt(RR)` and Fridericia `QT / cbrt(RR)`, RR in s), the P, R, S and T
//! amplitudes and the ST level at J + 60 ms; per record the medians of those, the global
//! intervals and the frontal electrical axis.
//!
//! * Amplitudes and the ST level are measured from the isoelectric level: the mean of the
//!   20 ms before the lead's QRS onset. R is the largest positive and S the largest negative
//!   excursion inside the QRS, P and T the value at their peaks.
//! * PR runs from P onset to QRS onset, QT from QRS onset to T offset, RR from the previous beat
//!   (the first beat has none).
//! * Global intervals take, per beat, the earliest onset and the latest offset over the leads,
//!   robustly: the first quartile of the onsets and the third quartile of the offsets.
//! * The axis is the direction of the mean net QRS area in leads I and aVF:
//!   `atan2(2 aVF / sqrt(3), I)` (aVF reads the inferior component scaled by sqrt(3)/2 in
//!   Einthoven's triangle), in degrees, -180 to 180.

use serde::{Deserialize, Serialize};

use super::{BeatWaves, Delineation};
use crate::record::Record;

/// One set of measurements (of a beat, or medians); `None` where a wave was not found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Measures {
    pub rr_ms: Option<f32>,
    pub heart_rate_bpm: Option<f32>,
    pub pr_ms: Option<f32>,
    pub qrs_ms: Option<f32>,
    pub qt_ms: Option<f32>,
    pub qtc_bazett_ms: Option<f32>,
    pub qtc_fridericia_ms: Option<f32>,
    pub p_mv: Option<f32>,
    pub r_mv: Option<f32>,
    pub s_mv: Option<f32>,
    pub t_mv: Option<f32>,
    pub st_mv: Option<f32>,
}

impl Measures {
    const FIELDS: usize = 12;

    fn fields(&self) -> [Option<f32>; Self::FIELDS] {
        [
            self.rr_ms,
            self.heart_rate_bpm,
            self.pr_ms,
            self.qrs_ms,
            self.qt_ms,
            self.qtc_bazett_ms,
            self.qtc_fridericia_ms,
            self.p_mv,
            self.r_mv,
            self.s_mv,
            self.t_mv,
            self.st_mv,
        ]
    }

    fn from_fields(f: [Option<f32>; Self::FIELDS]) -> Self {
        Measures {
            rr_ms: f[0],
            heart_rate_bpm: f[1],
            pr_ms: f[2],
            qrs_ms: f[3],
            qt_ms: f[4],
            qtc_bazett_ms: f[5],
            qtc_fridericia_ms: f[6],
            p_mv: f[7],
            r_mv: f[8],
            s_mv: f[9],
            t_mv: f[10],
            st_mv: f[11],
        }
    }

    /// Field by field median of `all`, ignoring missing values.
    pub fn median(all: &[Measures]) -> Measures {
        let mut out = [None; Self::FIELDS];
        for (k, slot) in out.iter_mut().enumerate() {
            let v: Vec<f32> = all.iter().filter_map(|m| m.fields()[k]).collect();
            if !v.is_empty() {
                *slot = Some(super::beats::median(&v));
            }
        }
        Measures::from_fields(out)
    }

    /// Fills the QTc fields from QT and RR.
    fn correct_qt(&mut self) {
        if let (Some(qt), Some(rr)) = (self.qt_ms, self.rr_ms) {
            let rr_s = rr / 1000.0;
            self.qtc_bazett_ms = Some(qt / rr_s.sqrt());
            self.qtc_fridericia_ms = Some(qt / rr_s.cbrt());
        }
    }
}

/// One lead's per-beat table and medians.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadMeasures {
    pub lead: String,
    /// One row per beat of the delineation.
    pub beats: Vec<Measures>,
    pub median: Measures,
}

/// A record's measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordMeasures {
    pub id: String,
    pub beats: usize,
    pub leads: Vec<LeadMeasures>,
    /// Medians over beats of the global (all-lead) intervals: RR, rate, PR, QRS, QT, QTc.
    pub global: Measures,
    /// Frontal QRS axis from leads I and aVF, degrees.
    pub axis_deg: Option<f32>,
}

const BASELINE_S: f64 = 0.02;
const ST_AFTER_J_S: f64 = 0.06;
const EDGE_QUANTILE: f32 = 0.25;

/// Measures every lead of `record` from its delineation `d`.
pub fn measure(record: &Record, d: &Delineation) -> RecordMeasures {
    let ms = |samples: f64| (samples * 1000.0 / d.fs) as f32;
    let rr: Vec<Option<f32>> = (0..d.r_peaks.len())
        .map(|k| (k > 0).then(|| ms((d.r_peaks[k] - d.r_peaks[k - 1]) as f64)))
        .collect();
    let leads: Vec<LeadMeasures> = d
        .leads
        .iter()
        .zip(&record.signals)
        .map(|(l, x)| {
            let beats: Vec<Measures> = l
                .beats
                .iter()
                .zip(&rr)
                .map(|(b, &rr)| beat_measures(x, d.fs, b, rr))
                .collect();
            let median = Measures::median(&beats);
            LeadMeasures {
                lead: l.lead.clone(),
                beats,
                median,
            }
        })
        .collect();
    let global_beats: Vec<Measures> = (0..d.r_peaks.len())
        .map(|k| global_beat(d, k, rr[k]))
        .collect();
    RecordMeasures {
        id: d.id.clone(),
        beats: d.r_peaks.len(),
        global: Measures::median(&global_beats),
        axis_deg: axis(record, d),
        leads,
    }
}

fn beat_measures(x: &[f32], fs: f64, b: &BeatWaves, rr_ms: Option<f32>) -> Measures {
    let ms = |a: usize, z: usize| ((z as f64 - a as f64) * 1000.0 / fs) as f32;
    let mut m = Measures {
        rr_ms,
        heart_rate_bpm: rr_ms.map(|rr| 60_000.0 / rr),
        ..Default::default()
    };
    let Some(q) = b.qrs else { return m };
    m.qrs_ms = Some(ms(q.onset, q.offset));
    m.pr_ms = b.p.map(|p| ms(p.onset, q.onset));
    m.qt_ms = b.t.map(|t| ms(q.onset, t.offset));
    m.correct_qt();
    let Some(base) = baseline(x, q.onset, fs) else {
        return m;
    };
    let at = |i: usize| {
        x.get(i)
            .copied()
            .filter(|v| v.is_finite())
            .map(|v| v - base)
    };
    m.p_mv = b.p.and_then(|p| at(p.peak));
    m.t_mv = b.t.and_then(|t| at(t.peak));
    let qrs: Vec<f32> = (q.onset..=q.offset).filter_map(at).collect();
    m.r_mv = qrs.iter().copied().reduce(f32::max).map(|v| v.max(0.0));
    m.s_mv = qrs.iter().copied().reduce(f32::min).map(|v| v.min(0.0));
    m.st_mv = at(q.offset + (ST_AFTER_J_S * fs).round() as usize);
    m
}

/// Mean of the finite samples in the 20 ms before `onset`.
fn baseline(x: &[f32], onset: usize, fs: f64) -> Option<f32> {
    let from = onset.saturating_sub((BASELINE_S * fs).round() as usize);
    let v: Vec<f32> = x[from..=onset.min(x.len() - 1)]
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f32>() / v.len() as f32)
}

/// An early (`from_end` false) or late edge over the leads: the [`EDGE_QUANTILE`] of the
/// onsets or its mirror of the offsets, robust to a few stray leads.
fn robust_edge(mut v: Vec<usize>, from_end: bool) -> Option<usize> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let k = ((v.len() - 1) as f32 * EDGE_QUANTILE).round() as usize;
    Some(if from_end { v[v.len() - 1 - k] } else { v[k] })
}

fn global_beat(d: &Delineation, k: usize, rr_ms: Option<f32>) -> Measures {
    let ms = |a: usize, z: usize| ((z as f64 - a as f64) * 1000.0 / d.fs) as f32;
    let beats: Vec<&BeatWaves> = d.leads.iter().map(|l| &l.beats[k]).collect();
    let edge = |pick: fn(&BeatWaves) -> Option<usize>, from_end: bool| {
        robust_edge(beats.iter().filter_map(|b| pick(b)).collect(), from_end)
    };
    let q_on = edge(|b| b.qrs.map(|w| w.onset), false);
    let q_off = edge(|b| b.qrs.map(|w| w.offset), true);
    let p_on = edge(|b| b.p.map(|w| w.onset), false);
    let t_off = edge(|b| b.t.map(|w| w.offset), true);
    let mut m = Measures {
        rr_ms,
        heart_rate_bpm: rr_ms.map(|rr| 60_000.0 / rr),
        ..Default::default()
    };
    if let Some(on) = q_on {
        m.qrs_ms = q_off.filter(|&off| off > on).map(|off| ms(on, off));
        m.pr_ms = p_on.filter(|&p| p < on).map(|p| ms(p, on));
        m.qt_ms = t_off.filter(|&t| t > on).map(|t| ms(on, t));
    }
    m.correct_qt();
    m
}

/// Net QRS area of beat `b` in `x` (mV samples, from the baseline).
fn net_area(x: &[f32], fs: f64, b: &BeatWaves) -> Option<f32> {
    let q = b.qrs?;
    let base = baseline(x, q.onset, fs)?;
    Some(
        x[q.onset..=q.offset.min(x.len() - 1)]
            .iter()
            .filter(|v| v.is_finite())
            .map(|v| v - base)
            .sum(),
    )
}

fn axis(record: &Record, d: &Delineation) -> Option<f32> {
    let lead = |name: &str| {
        let i = record.leads.iter().position(|l| l == name)?;
        Some((&record.signals[i], &d.leads[i]))
    };
    let ((x_i, l_i), (x_f, l_f)) = (lead("I")?, lead("aVF")?);
    let (mut sum_i, mut sum_f, mut n) = (0.0f32, 0.0f32, 0);
    for (bi, bf) in l_i.beats.iter().zip(&l_f.beats) {
        if let (Some(a), Some(f)) = (net_area(x_i, d.fs, bi), net_area(x_f, d.fs, bf)) {
            sum_i += a;
            sum_f += f;
            n += 1;
        }
    }
    (n > 0).then(|| (2.0 * sum_f / 3f32.sqrt()).atan2(sum_i).to_degrees())
}

fn cell(v: Option<f32>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

impl std::fmt::Display for RecordMeasures {
    /// The record's global values and axis, then one row of medians per lead.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = &self.global;
        writeln!(
            f,
            "{}: {} beats, HR {} bpm, RR {} ms, PR {} ms, QRS {} ms, QT {} ms, QTc {} (Bazett) {} (Fridericia) ms, axis {} deg",
            self.id,
            self.beats,
            cell(g.heart_rate_bpm, 0),
            cell(g.rr_ms, 0),
            cell(g.pr_ms, 0),
            cell(g.qrs_ms, 0),
            cell(g.qt_ms, 0),
            cell(g.qtc_bazett_ms, 0),
            cell(g.qtc_fridericia_ms, 0),
            cell(self.axis_deg, 0),
        )?;
        writeln!(
            f,
            "lead   PR   QRS    QT  QTcB   P mV   R mV   S mV   T mV  ST mV"
        )?;
        for l in &self.leads {
            let m = &l.median;
            writeln!(
                f,
                "{:<4} {:>4} {:>5} {:>5} {:>5} {:>6} {:>6} {:>6} {:>6} {:>6}",
                l.lead,
                cell(m.pr_ms, 0),
                cell(m.qrs_ms, 0),
                cell(m.qt_ms, 0),
                cell(m.qtc_bazett_ms, 0),
                cell(m.p_mv, 2),
                cell(m.r_mv, 2),
                cell(m.s_mv, 2),
                cell(m.t_mv, 2),
                cell(m.st_mv, 2),
            )?;
        }
        Ok(())
    }
}
