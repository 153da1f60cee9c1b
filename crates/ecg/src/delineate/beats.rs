//! QRS detection over all leads at once, on the wavelet scales that hold the QRS.
//!
//! Each lead's `|W_{2^2}| + |W_{2^3}|` is divided by that lead's typical QRS level (the median
//! of its maxima over 2-s segments), the leads are averaged and the result smoothed over 40 ms.
//! A beat is a local maximum of that curve above `threshold` times the local typical QRS level
//! (the median of segment maxima within ±10 segments), at least `refractory_s` from a larger
//! one. A gap longer than 1.6 times the running median RR is searched again at half the
//! threshold (Pan and Tompkins' search-back), and a beat less than half the height of the one
//! before it within 420 ms is taken for its T wave. The beat's time is the maximum of the curve.

/// Settings of the detector.
#[derive(Debug, Clone, PartialEq)]
pub struct BeatConfig {
    /// Fraction of the local typical QRS level a beat must reach.
    pub threshold: f32,
    /// Shortest distance between two beats, s.
    pub refractory_s: f64,
}

impl Default for BeatConfig {
    fn default() -> Self {
        BeatConfig {
            threshold: 0.4,
            refractory_s: 0.25,
        }
    }
}

const SEGMENT_S: f64 = 2.0;
const SEGMENTS_AROUND: usize = 10;
const SEARCH_BACK_RR: f64 = 1.6;
const T_WAVE_S: f64 = 0.42;
const T_WAVE_RATIO: f32 = 0.7;

/// Typical QRS level of `e` around each segment: median of segment maxima nearby.
fn segment_levels(e: &[f32], seg: usize) -> Vec<f32> {
    let maxima: Vec<f32> = e
        .chunks(seg.max(1))
        .map(|c| c.iter().copied().fold(0.0, f32::max))
        .collect();
    (0..maxima.len())
        .map(|i| {
            let lo = i.saturating_sub(SEGMENTS_AROUND);
            let hi = (i + SEGMENTS_AROUND + 1).min(maxima.len());
            median(&maxima[lo..hi])
        })
        .collect()
}

pub(crate) fn median(x: &[f32]) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    let mut v = x.to_vec();
    v.sort_by(f32::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The detection curve: mean over leads of normalised QRS-scale energy, smoothed.
pub fn detection_curve(scales: &[Vec<Vec<f32>>], fs: f64) -> Vec<f32> {
    let n = scales.first().map_or(0, |s| s[0].len());
    let seg = (SEGMENT_S * fs) as usize;
    let mut sum = vec![0.0f32; n];
    let mut used = 0;
    for lead in scales {
        let e: Vec<f32> = lead[1]
            .iter()
            .zip(&lead[2])
            .map(|(a, b)| a.abs() + b.abs())
            .collect();
        let level = median(&segment_levels(&e, seg));
        if level <= 0.0 || !level.is_finite() {
            continue;
        }
        used += 1;
        for (s, v) in sum.iter_mut().zip(&e) {
            *s += v / level;
        }
    }
    if used > 0 {
        sum.iter_mut().for_each(|s| *s /= used as f32);
    }
    moving_mean(&sum, ((0.04 * fs) as usize).max(1))
}

fn moving_mean(x: &[f32], width: usize) -> Vec<f32> {
    let half = width / 2;
    let mut prefix = vec![0.0f64; x.len() + 1];
    for (i, v) in x.iter().enumerate() {
        prefix[i + 1] = prefix[i] + f64::from(*v);
    }
    (0..x.len())
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + half + 1).min(x.len());
            ((prefix[hi] - prefix[lo]) / (hi - lo) as f64) as f32
        })
        .collect()
}

/// Beat times (samples of the curve's rate) from the detection curve.
pub fn detect(curve: &[f32], fs: f64, cfg: &BeatConfig) -> Vec<usize> {
    let seg = ((SEGMENT_S * fs) as usize).max(1);
    let levels = segment_levels(curve, seg);
    let level_at = |i: usize| levels[(i / seg).min(levels.len() - 1)];
    let refractory = (cfg.refractory_s * fs) as usize;
    let mut beats = peaks_above(
        curve,
        refractory,
        |i| cfg.threshold * level_at(i),
        0,
        curve.len(),
    );
    // Search back in long gaps at half the threshold.
    let mut added = Vec::new();
    for pair in beats.windows(2) {
        let rr = running_rr(&beats, pair[0]);
        let gap = pair[1] - pair[0];
        if rr > 0 && gap as f64 > SEARCH_BACK_RR * rr as f64 && gap > 2 * refractory {
            let found = peaks_above(
                curve,
                refractory,
                |i| 0.5 * cfg.threshold * level_at(i),
                pair[0] + refractory,
                pair[1] - refractory,
            );
            added.extend(found);
        }
    }
    beats.extend(added);
    beats.sort_unstable();
    drop_t_waves(curve, beats, (T_WAVE_S * fs) as usize)
}

/// Pan and Tompkins' T-wave rule: a beat within `window` of the previous kept one and less
/// than half its height is that beat's T wave.
fn drop_t_waves(curve: &[f32], beats: Vec<usize>, window: usize) -> Vec<usize> {
    let mut kept: Vec<usize> = Vec::with_capacity(beats.len());
    for b in beats {
        match kept.last() {
            Some(&p) if b - p < window && curve[b] < T_WAVE_RATIO * curve[p] => {}
            _ => kept.push(b),
        }
    }
    kept
}

/// Median RR of the (up to) 8 beats before `at`, 0 when unknown.
fn running_rr(beats: &[usize], at: usize) -> usize {
    let k = beats.partition_point(|&b| b <= at);
    let lo = k.saturating_sub(9);
    let rr: Vec<f32> = beats[lo..k]
        .windows(2)
        .map(|w| (w[1] - w[0]) as f32)
        .collect();
    if rr.is_empty() {
        beats.windows(2).map(|w| w[1] - w[0]).min().unwrap_or(0)
    } else {
        median(&rr) as usize
    }
}

/// Local maxima of `x` in `[from, to)` above `threshold(i)`, each the largest within
/// `refractory` samples either side.
fn peaks_above(
    x: &[f32],
    refractory: usize,
    threshold: impl Fn(usize) -> f32,
    from: usize,
    to: usize,
) -> Vec<usize> {
    let to = to.min(x.len());
    let mut out: Vec<usize> = Vec::new();
    let mut i = from;
    while i < to {
        let v = x[i];
        if v > threshold(i) && (i == 0 || v >= x[i - 1]) && (i + 1 >= x.len() || v > x[i + 1]) {
            match out.last() {
                Some(&last) if i - last < refractory => {
                    if v > x[last] {
                        *out.last_mut().unwrap() = i;
                    }
                }
                _ => out.push(i),
            }
        }
        i += 1;
    }
    out
}
