//! One lead's P, QRS and T waves around the detected beats, from the modulus maxima of its
//! wavelet transform (Martinez et al. 2004, section II).
//!
//! * **QRS** at scale 2^2: the largest maximum within `qrs_search_s` of the beat, then the
//!   maxima either side of it above `qrs_pre` / `qrs_post` of its size, each within `qrs_gap_s`
//!   of the last one taken; onset where `|W|` falls below `qrs_on` of the first maximum (or at
//!   a local minimum of `|W|`) before it, offset likewise after the last with `qrs_off`. The
//!   peak is the largest excursion of the signal between them from the level at the onset.
//! * **T** at scale 2^4, in a window after the QRS whose length follows the RR interval: the
//!   largest maximum and the largest opposite one next to it; peak at the zero crossing between
//!   them, onset and offset as for the QRS with `t_on` / `t_off`.
//! * **P** at scale 2^4 likewise, in a window before the QRS onset; a P is reported only when
//!   its maxima reach `p_min` of the lead's typical QRS maximum at that scale.

use super::BeatWaves;
use super::wavelet::{modulus_maxima, walk_to_edge, zero_crossing};
use crate::record::{Wave, WaveKind};

/// Thresholds and windows of the wave search (fractions and seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct WaveConfig {
    pub qrs_search_s: f64,
    pub qrs_gap_s: f64,
    pub qrs_gap_after_s: f64,
    pub qrs_pre: f32,
    pub qrs_post: f32,
    pub qrs_on: f32,
    pub qrs_off: f32,
    pub t_on: f32,
    pub t_off: f32,
    pub t_significant: f32,
    pub p_on: f32,
    pub p_off: f32,
    pub p_significant: f32,
    /// A P wave's largest maximum at scale 2^4 relative to the lead's median QRS maximum there.
    pub p_min: f32,
    /// A T wave's largest maximum at scale 2^4 relative to the lead's median QRS maximum there.
    pub t_min: f32,
}

/// How far a QRS onset or offset may lie from the first or last maximum, s.
const QRS_EDGE_REACH_S: f64 = 0.06;
/// How far past its search window a T offset may lie, s.
const T_EDGE_BEYOND_S: f64 = 0.1;
/// Shortest time from a QRS offset to the next P wave, s (the T wave lies between).
const MIN_QT_REST_S: f64 = 0.2;
const PR_NEAR_S: f64 = 0.025;
const PR_FAR_S: f64 = 0.06;
const PR_CONSISTENT: f32 = 0.5;

impl Default for WaveConfig {
    fn default() -> Self {
        WaveConfig {
            qrs_search_s: 0.06,
            qrs_gap_s: 0.05,
            qrs_gap_after_s: 0.05,
            qrs_pre: 0.2,
            qrs_post: 0.15,
            qrs_on: 0.05,
            qrs_off: 0.08,
            t_on: 0.25,
            t_off: 0.4,
            t_significant: 0.25,
            p_on: 0.5,
            p_off: 0.9,
            p_significant: 0.3,
            p_min: 0.02,
            t_min: 0.03,
        }
    }
}

/// One lead: its signal and wavelet scales at the working rate `fs`.
pub struct Lead<'a> {
    pub x: &'a [f32],
    pub w: &'a [Vec<f32>],
    pub fs: f64,
}

impl Lead<'_> {
    fn samples(&self, s: f64) -> usize {
        (s * self.fs).round() as usize
    }
}

/// Delineates every beat of `beats` (sorted sample times) in one lead.
pub fn delineate_lead(lead: &Lead, beats: &[usize], cfg: &WaveConfig) -> Vec<BeatWaves> {
    let qrs: Vec<Option<Wave>> = beats
        .iter()
        .enumerate()
        .map(|(k, &b)| {
            let lo = if k > 0 { (beats[k - 1] + b) / 2 } else { 0 };
            let hi = beats.get(k + 1).map_or(lead.x.len(), |&n| (b + n) / 2);
            qrs_wave(lead, b, lo, hi, cfg)
        })
        .collect();
    let w4 = &lead.w[3];
    let qrs_level = super::beats::median(
        &qrs.iter()
            .flatten()
            .map(|q| max_abs(w4, q.onset, q.offset + 1))
            .collect::<Vec<_>>(),
    );
    let mut out: Vec<BeatWaves> = qrs
        .iter()
        .map(|&q| BeatWaves {
            qrs: q,
            ..Default::default()
        })
        .collect();
    // P waves first, each after the previous QRS by at least a short QT, so that a long PR
    // puts the P in front of its own QRS and not in the previous T's window.
    for k in 0..beats.len() {
        let Some(q) = qrs[k] else { continue };
        let rr = rr_around(beats, k, lead.fs);
        let prev_end = k
            .checked_sub(1)
            .and_then(|j| qrs[j])
            .map(|p| p.offset + lead.samples(MIN_QT_REST_S));
        out[k].p = p_wave(lead, &q, rr, prev_end, qrs_level, cfg);
    }
    keep_consistent_p(&mut out, lead.samples(PR_NEAR_S), lead.samples(PR_FAR_S));
    for k in 0..beats.len() {
        let Some(q) = qrs[k] else { continue };
        let rr = rr_around(beats, k, lead.fs);
        let next = out.get(k + 1).and_then(|n| Some(n.p.or(n.qrs)?.onset));
        out[k].t = t_wave(lead, &q, rr, next, qrs_level, cfg);
    }
    out
}

/// Sinus P waves keep their distance to the QRS from beat to beat; the "P waves" found in
/// fibrillation or flutter do not. If fewer than [`PR_CONSISTENT`] of a lead's P waves lie
/// within `near` of the median P-peak-to-QRS-onset time, the lead has none; otherwise those
/// further than `far` from it are dropped (a P of another beat or noise).
fn keep_consistent_p(beats: &mut [BeatWaves], near: usize, far: usize) {
    let pr: Vec<f32> = beats
        .iter()
        .filter_map(|b| Some(b.qrs?.onset as f32 - b.p?.peak as f32))
        .collect();
    if pr.is_empty() {
        return;
    }
    let median = super::beats::median(&pr);
    let close = pr
        .iter()
        .filter(|&&d| (d - median).abs() <= near as f32)
        .count();
    let consistent = close as f32 >= PR_CONSISTENT * pr.len() as f32;
    for b in beats.iter_mut() {
        if let (Some(p), Some(q)) = (b.p, b.qrs) {
            let d = q.onset as f32 - p.peak as f32;
            if !consistent || (d - median).abs() > far as f32 {
                b.p = None;
            }
        }
    }
}

/// RR interval around beat `k`, s (the previous one, else the next, else 1 s).
fn rr_around(beats: &[usize], k: usize, fs: f64) -> f64 {
    let d = if k > 0 {
        beats[k] - beats[k - 1]
    } else if k + 1 < beats.len() {
        beats[k + 1] - beats[k]
    } else {
        return 1.0;
    };
    d as f64 / fs
}

fn max_abs(w: &[f32], a: usize, b: usize) -> f32 {
    w[a.min(w.len())..b.min(w.len())]
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()))
}

fn argmax_abs(w: &[f32], a: usize, b: usize) -> Option<usize> {
    (a..b.min(w.len())).max_by(|&i, &j| w[i].abs().total_cmp(&w[j].abs()))
}

fn qrs_wave(lead: &Lead, beat: usize, lo: usize, hi: usize, cfg: &WaveConfig) -> Option<Wave> {
    let w = &lead.w[1];
    let search = lead.samples(cfg.qrs_search_s);
    let main = argmax_abs(
        w,
        beat.saturating_sub(search).max(lo),
        (beat + search).min(hi),
    )?;
    let amp = w[main].abs();
    if amp == 0.0 {
        return None;
    }
    let gap = lead.samples(cfg.qrs_gap_s);
    let maxima = modulus_maxima(w, lo, hi);
    let mut first = main;
    for &m in maxima.iter().rev().filter(|&&m| m < main) {
        if first - m > gap {
            break;
        }
        if w[m].abs() >= cfg.qrs_pre * amp {
            first = m;
        }
    }
    let mut last = main;
    let gap_after = lead.samples(cfg.qrs_gap_after_s);
    for &m in maxima.iter().filter(|&&m| m > main) {
        if m - last > gap_after {
            break;
        }
        if w[m].abs() >= cfg.qrs_post * amp {
            last = m;
        }
    }
    let reach = lead.samples(QRS_EDGE_REACH_S);
    let onset = walk_to_edge(
        w,
        first,
        -1,
        cfg.qrs_on * w[first].abs(),
        lo.max(first.saturating_sub(reach)),
    );
    let offset = walk_to_edge(
        w,
        last,
        1,
        cfg.qrs_off * w[last].abs(),
        hi.saturating_sub(1).min(last + reach),
    );
    let base = lead.x[onset];
    let peak = (onset..=offset).max_by(|&i, &j| {
        (lead.x[i] - base)
            .abs()
            .total_cmp(&(lead.x[j] - base).abs())
    })?;
    Some(Wave {
        kind: WaveKind::QRS,
        onset,
        peak,
        offset,
    })
}

/// A P or T wave from the maxima of scale 2^4 in `[a, b)`; edges searched within `[lo, hi]`.
fn slow_wave(
    lead: &Lead,
    kind: WaveKind,
    (a, b): (usize, usize),
    (lo, hi): (usize, usize),
    level: f32,
    (on, off, significant): (f32, f32, f32),
) -> Option<Wave> {
    let w = &lead.w[3];
    if b <= a + 2 {
        return None;
    }
    // Maxima strictly inside the window: a window edge on the slope of a neighbouring QRS is
    // not a maximum of this wave.
    let maxima = modulus_maxima(w, a + 1, b - 1);
    let main = *maxima
        .iter()
        .max_by(|&&i, &&j| w[i].abs().total_cmp(&w[j].abs()))?;
    let amp = w[main].abs();
    if amp < level || amp == 0.0 {
        return None;
    }
    let opposite =
        |m: &&usize| (w[**m] >= 0.0) != (w[main] >= 0.0) && w[**m].abs() >= significant * amp;
    // The nearest significant maxima of the other sign either side: the wave's other slope.
    let before = maxima.iter().filter(|&&m| m < main).rfind(opposite);
    let after = maxima.iter().filter(|&&m| m > main).find(opposite);
    let (first, last) = match (before, after) {
        (Some(&p), Some(&q)) if w[p].abs() >= w[q].abs() => (p, main),
        (_, Some(&q)) => (main, q),
        (Some(&p), None) => (p, main),
        (None, None) => return None,
    };
    let peak = zero_crossing(w, first, last, (first + last) / 2)?;
    let onset = walk_to_edge(w, first, -1, on * w[first].abs(), lo);
    let offset = walk_to_edge(w, last, 1, off * w[last].abs(), hi);
    Some(Wave {
        kind,
        onset,
        peak,
        offset,
    })
}

fn t_wave(
    lead: &Lead,
    q: &Wave,
    rr: f64,
    next_on: Option<usize>,
    qrs_level: f32,
    cfg: &WaveConfig,
) -> Option<Wave> {
    let start = q.offset + lead.samples(0.02);
    let span = if rr > 0.7 { 0.5 } else { 0.7 * rr }.max(0.2);
    let mut end = q.peak + lead.samples(span);
    let mut hi = q.peak + lead.samples((span + T_EDGE_BEYOND_S).min(0.9 * rr.max(0.3)));
    if let Some(n) = next_on {
        end = end.min(n.saturating_sub(lead.samples(0.05)));
        hi = hi.min(n.saturating_sub(lead.samples(0.02)));
    }
    let end = end.min(lead.x.len());
    let hi = hi.min(lead.x.len() - 1);
    slow_wave(
        lead,
        WaveKind::T,
        (start, end),
        (q.offset, hi),
        cfg.t_min * qrs_level,
        (cfg.t_on, cfg.t_off, cfg.t_significant),
    )
}

fn p_wave(
    lead: &Lead,
    q: &Wave,
    rr: f64,
    prev_end: Option<usize>,
    qrs_level: f32,
    cfg: &WaveConfig,
) -> Option<Wave> {
    let window = (0.3f64).min(0.45 * rr);
    let end = q.onset.saturating_sub(lead.samples(0.01));
    let mut start = q.onset.saturating_sub(lead.samples(window));
    let mut lo = q.onset.saturating_sub(lead.samples(window + 0.08));
    if let Some(p) = prev_end {
        start = start.max(p + lead.samples(0.02));
        lo = lo.max(p);
    }
    slow_wave(
        lead,
        WaveKind::P,
        (start, end),
        (lo, q.onset),
        cfg.p_min * qrs_level,
        (cfg.p_on, cfg.p_off, cfg.p_significant),
    )
}
