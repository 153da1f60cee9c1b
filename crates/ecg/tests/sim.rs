//! Simulator tests: determinism, lead identities, and each condition's signature measured from
//! the signal itself with simple detectors written here (independent of the generator's
//! internals; they only see the 12 lead signals, noise switched off).

use beatlab_ecg::STANDARD_LEADS;
use beatlab_ecg::synthetic::{
    BeatKind, Condition, NoiseConfig, SimConfig, SimRecord, generate, generate_with_truth, simulate,
};

const FS: f32 = 500.0;

fn clean_config() -> SimConfig {
    SimConfig {
        noise: NoiseConfig::none(),
        ..SimConfig::default()
    }
}

fn lead<'a>(s: &'a SimRecord, name: &str) -> &'a [f32] {
    s.record.lead(name).expect("lead present")
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

/// Spatial velocity: norm over the 12 leads of the central difference.
fn velocity(sig: &[Vec<f32>]) -> Vec<f32> {
    let n = sig[0].len();
    (0..n)
        .map(|i| {
            if i == 0 || i + 1 >= n {
                0.0
            } else {
                sig.iter()
                    .map(|x| (x[i + 1] - x[i - 1]).powi(2))
                    .sum::<f32>()
                    .sqrt()
            }
        })
        .collect()
}

/// R peaks: where the spatial velocity exceeds 30 % of its 99th percentile, take the sample of
/// largest spatial magnitude nearby, then wait 250 ms. As in Pan-Tompkins, a candidate within
/// 330 ms of the previous beat whose steepest slope is under 60 % of that beat's is a T wave
/// (ventricular ectopics come later than that here: coupling >= 58 % of cycles >= 610 ms).
fn r_peaks(sig: &[Vec<f32>]) -> Vec<usize> {
    let v = velocity(sig);
    let mut sorted = v.clone();
    sorted.sort_by(f32::total_cmp);
    let thr = 0.3 * sorted[(sorted.len() as f32 * 0.99) as usize];
    let mut peaks: Vec<(usize, f32)> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        if v[i] > thr {
            let lo = i.saturating_sub((0.06 * FS) as usize);
            let hi = (i + (0.1 * FS) as usize).min(v.len() - 1);
            let best = (lo..=hi)
                .max_by(|&a, &b| {
                    let ma: f32 = sig.iter().map(|x| x[a] * x[a]).sum();
                    let mb: f32 = sig.iter().map(|x| x[b] * x[b]).sum();
                    ma.total_cmp(&mb)
                })
                .expect("non-empty range");
            let slope = v[lo..=hi].iter().copied().fold(0.0, f32::max);
            let t_wave = peaks.last().is_some_and(|&(prev, prev_slope)| {
                best - prev < (0.33 * FS) as usize && slope < 0.6 * prev_slope
            });
            // A maximum on the record's edge belongs to a beat whose peak lies outside.
            if !t_wave && best > 2 && best + 3 < v.len() {
                peaks.push((best, slope));
            }
            i = best + (0.25 * FS) as usize;
        } else {
            i += 1;
        }
    }
    peaks.into_iter().map(|(p, _)| p).collect()
}

fn rr_ms(peaks: &[usize]) -> Vec<f32> {
    peaks
        .windows(2)
        .map(|w| (w[1] - w[0]) as f32 / FS * 1000.0)
        .collect()
}

fn mean(x: &[f32]) -> f32 {
    x.iter().sum::<f32>() / x.len() as f32
}

fn coefficient_of_variation(x: &[f32]) -> f32 {
    let m = mean(x);
    (x.iter().map(|v| (v - m).powi(2)).sum::<f32>() / x.len() as f32).sqrt() / m
}

/// QRS boundaries around a peak: walk outwards until the spatial velocity has stayed below 5 %
/// of the local maximum for 10 ms.
fn qrs_bounds(sig: &[Vec<f32>], peak: usize) -> (usize, usize) {
    let v = velocity(sig);
    let lo = peak.saturating_sub((0.15 * FS) as usize);
    let hi = (peak + (0.15 * FS) as usize).min(v.len() - 1);
    let thr = 0.05 * v[lo..=hi].iter().copied().fold(0.0, f32::max);
    let hold = (0.01 * FS) as usize;
    let mut a = peak;
    while a > lo && !(a >= hold && (a - hold..a).all(|k| v[k] < thr)) {
        a -= 1;
    }
    let mut b = peak;
    while b < hi && !(b + hold < v.len() && (b + 1..=b + hold).all(|k| v[k] < thr)) {
        b += 1;
    }
    (a, b)
}

fn qrs_width_ms(sig: &[Vec<f32>], peak: usize) -> f32 {
    let (a, b) = qrs_bounds(sig, peak);
    (b - a) as f32 / FS * 1000.0
}

/// Median QRS width over the interior beats (edge beats may be cut).
fn median_qrs_ms(s: &SimRecord) -> f32 {
    let peaks = r_peaks(&s.record.signals);
    let mut w: Vec<f32> = peaks[1..peaks.len() - 1]
        .iter()
        .map(|&p| qrs_width_ms(&s.record.signals, p))
        .collect();
    w.sort_by(f32::total_cmp);
    w[w.len() / 2]
}

/// PR interval: walk back from the QRS onset over the flat PR segment to the first deflection
/// of lead II (the P wave), then on to where it falls below 10 % of its peak (P onset).
fn pr_ms(s: &SimRecord, peak: usize) -> Option<f32> {
    let (qrs_onset, _) = qrs_bounds(&s.record.signals, peak);
    let ii = lead(s, "II");
    let limit = qrs_onset.checked_sub((0.45 * FS) as usize)?;
    let mut t = qrs_onset - (0.005 * FS) as usize;
    while t > limit && ii[t].abs() < 0.02 {
        t -= 1;
    }
    let mut p_peak = 0.0f32;
    while t > limit && ii[t].abs() >= 0.1 * p_peak {
        p_peak = p_peak.max(ii[t].abs());
        t -= 1;
    }
    (t > limit && p_peak > 0.04).then(|| (qrs_onset - t) as f32 / FS * 1000.0)
}

fn median(mut x: Vec<f32>) -> f32 {
    x.sort_by(f32::total_cmp);
    x[x.len() / 2]
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn same_seed_same_record_and_different_seed_different_record() {
    let cfg = SimConfig::default(); // with noise: the noise must be seeded too
    for c in Condition::ALL {
        let a = simulate(&cfg, c, 42);
        let b = simulate(&cfg, c, 42);
        assert_eq!(a, b, "{c:?} not deterministic");
        let other = simulate(&cfg, c, 43);
        assert_ne!(
            a.record.signals, other.record.signals,
            "{c:?} ignores the seed"
        );
    }
    assert_eq!(generate(&cfg, 12, 7), generate(&cfg, 12, 7));
    assert_ne!(generate(&cfg, 12, 7), generate(&cfg, 12, 8));
}

#[test]
fn shape_and_lead_order() {
    let cfg = SimConfig {
        fs: 500.0,
        duration_s: 10.0,
        ..SimConfig::default()
    };
    let s = simulate(&cfg, Condition::NormalSinus, 1);
    assert_eq!(s.record.leads, STANDARD_LEADS.map(String::from).to_vec());
    assert_eq!(s.record.signals.len(), 12);
    assert!(s.record.signals.iter().all(|x| x.len() == 5000));
    assert!(s.record.signals.iter().flatten().all(|v| v.is_finite()));
    let short = simulate(
        &SimConfig {
            fs: 100.0,
            duration_s: 2.5,
            ..cfg
        },
        Condition::AtrialFibrillation,
        1,
    );
    assert!(short.record.signals.iter().all(|x| x.len() == 250));
}

#[test]
fn tiny_and_odd_configurations_do_not_panic() {
    // check(fs, duration): every condition simulates, lengths follow, labels stay sane.
    let check = |fs: f64, duration_s: f64| {
        let cfg = SimConfig {
            fs,
            duration_s,
            ..SimConfig::default()
        };
        for c in Condition::ALL {
            let s = simulate(&cfg, c, 3);
            let n = (fs * duration_s).round().max(0.0) as usize;
            assert!(
                s.record.signals.iter().all(|x| x.len() == n),
                "{c:?} {fs} {duration_s}"
            );
            let hr = s.record.meta.heart_rate_bpm.unwrap();
            assert!(
                (35.0..200.0).contains(&hr),
                "{c:?} {fs} Hz {duration_s} s: {hr} bpm"
            );
            assert!(s.record.signals.iter().flatten().all(|v| v.is_finite()));
        }
    };
    check(500.0, 0.0);
    check(500.0, 0.4);
    check(250.0, 1.5);
    check(1000.0, 3.0);
    check(100.0, 60.0);
}

#[test]
fn einthoven_and_goldberger_identities_hold_exactly() {
    let cfg = SimConfig::default(); // noise on: it must respect the identities too
    for (k, c) in Condition::ALL.into_iter().enumerate() {
        let s = simulate(&cfg, c, 100 + k as u64);
        let (i, ii, iii) = (lead(&s, "I"), lead(&s, "II"), lead(&s, "III"));
        let (avr, avl, avf) = (lead(&s, "aVR"), lead(&s, "aVL"), lead(&s, "aVF"));
        for t in 0..i.len() {
            assert_eq!(iii[t], ii[t] - i[t], "{c:?} III at {t}");
            assert_eq!(avr[t], -(i[t] + ii[t]) / 2.0, "{c:?} aVR at {t}");
            assert_eq!(avl[t], i[t] - ii[t] / 2.0, "{c:?} aVL at {t}");
            assert_eq!(avf[t], ii[t] - i[t] / 2.0, "{c:?} aVF at {t}");
        }
        // And the augmented leads sum to zero (up to rounding).
        for t in 0..i.len() {
            assert!((avr[t] + avl[t] + avf[t]).abs() < 1e-5);
        }
    }
}

#[test]
fn heart_rate_from_detected_r_peaks_matches_label() {
    let cfg = clean_config();
    for c in Condition::ALL {
        for seed in 0..4 {
            let s = simulate(&cfg, c, 1000 + seed);
            let peaks = r_peaks(&s.record.signals);
            let measured = 60_000.0 / mean(&rr_ms(&peaks));
            let label = s.record.meta.heart_rate_bpm.expect("rate label");
            assert!(
                (measured - label).abs() < 3.0,
                "{c:?} seed {seed}: measured {measured:.1} bpm, label {label:.1}"
            );
        }
    }
}

#[test]
fn rate_ranges_follow_the_rhythm_label() {
    // check(condition, lowest, highest): rate labels and measured rates in range.
    let cfg = clean_config();
    let check = |c: Condition, lo: f32, hi: f32| {
        for seed in 0..6 {
            let s = simulate(&cfg, c, 2000 + seed);
            let measured = 60_000.0 / mean(&rr_ms(&r_peaks(&s.record.signals)));
            assert!(
                (lo..=hi).contains(&measured),
                "{c:?}: {measured:.1} bpm outside {lo}-{hi}"
            );
        }
    };
    check(Condition::SinusBradycardia, 35.0, 60.0);
    check(Condition::SinusTachycardia, 100.0, 160.0);
    check(Condition::NormalSinus, 58.0, 101.0);
}

#[test]
fn af_is_irregular_and_sinus_is_regular() {
    let cfg = clean_config();
    for seed in 0..6 {
        let af = simulate(&cfg, Condition::AtrialFibrillation, 300 + seed);
        let cv = coefficient_of_variation(&rr_ms(&r_peaks(&af.record.signals)));
        assert!(cv > 0.12, "AF RR coefficient of variation only {cv:.3}");
        assert!(af.truth.beats.iter().all(|b| b.p.is_none()));
        assert_eq!(af.record.meta.pr_ms, None);
        for c in [
            Condition::NormalSinus,
            Condition::SinusBradycardia,
            Condition::FirstDegreeAvBlock,
            Condition::AtrialFlutter,
        ] {
            let s = simulate(&cfg, c, 300 + seed);
            let cv = coefficient_of_variation(&rr_ms(&r_peaks(&s.record.signals)));
            assert!(cv < 0.06, "{c:?} RR coefficient of variation {cv:.3}");
        }
    }
}

/// Median peak-to-peak amplitude of a lead over the diastolic gaps (T end to the next P or QRS
/// onset), where a sinus rhythm is flat and fibrillation / flutter keeps moving.
fn diastolic_activity(s: &SimRecord, lead_name: &str) -> f32 {
    let x = lead(s, lead_name);
    let mut spans = Vec::new();
    for pair in s.truth.beats.windows(2) {
        let from = (pair[0].t.offset + 10).max(0) as usize;
        let to = (pair[1].p.map_or(pair[1].qrs.onset, |p| p.onset) - 10).min(x.len() as i64);
        if to as usize > from + 10 {
            let gap = &x[from..to as usize];
            let (lo, hi) = gap
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            spans.push(hi - lo);
        }
    }
    assert!(!spans.is_empty(), "no diastolic gap");
    median(spans)
}

#[test]
fn fibrillation_and_flutter_waves_fill_diastole() {
    let cfg = clean_config();
    for seed in 0..4 {
        let sinus = simulate(&cfg, Condition::NormalSinus, 400 + seed);
        let af = simulate(&cfg, Condition::AtrialFibrillation, 400 + seed);
        let fl = simulate(&cfg, Condition::AtrialFlutter, 400 + seed);
        assert!(diastolic_activity(&sinus, "V1") < 0.02);
        assert!(diastolic_activity(&af, "V1") > 0.04, "AF f-waves missing");
        assert!(
            diastolic_activity(&fl, "II") > 0.08,
            "flutter F-waves missing"
        );
    }
}

/// Dominant frequency of lead II within `lo..hi` Hz by a direct DFT (0.02 Hz steps).
fn dominant_frequency(x: &[f32], lo: f32, hi: f32) -> f32 {
    let m = mean(x);
    let mut best = (lo, 0.0f32);
    let mut f = lo;
    while f <= hi {
        let (mut re, mut im) = (0.0f64, 0.0f64);
        for (i, &v) in x.iter().enumerate() {
            let w = 2.0 * std::f64::consts::PI * f as f64 * i as f64 / FS as f64;
            re += (v - m) as f64 * w.cos();
            im += (v - m) as f64 * w.sin();
        }
        let p = (re * re + im * im) as f32;
        if p > best.1 {
            best = (f, p);
        }
        f += 0.02;
    }
    best.0
}

#[test]
fn flutter_is_regular_with_sawtooth_at_the_labelled_atrial_rate() {
    let cfg = clean_config();
    for seed in 0..4 {
        let s = simulate(&cfg, Condition::AtrialFlutter, 500 + seed);
        let ratio = s.truth.flutter_conduction.expect("conduction ratio") as f32;
        let atrial = s.truth.atrial_rate_per_min.expect("atrial rate");
        assert!((240.0..=340.0).contains(&atrial));
        // The ventricles follow every ratio-th F wave.
        let measured_hr = 60_000.0 / mean(&rr_ms(&r_peaks(&s.record.signals)));
        assert!(
            (measured_hr * ratio - atrial).abs() < 8.0,
            "HR {measured_hr:.1} x {ratio} != atrial {atrial:.1}"
        );
        // The F-waves are visible in diastole: the TQ segments of lead II oscillate at the
        // atrial rate. Blank out QRS-T so ventricular harmonics do not compete.
        let ii = lead(&s, "II");
        let mut gaps = vec![0.0f32; ii.len()];
        for pair in s.truth.beats.windows(2) {
            let from = pair[0].t.offset.max(0) as usize;
            let to = (pair[1].qrs.onset.max(0) as usize).max(from);
            gaps[from..to].copy_from_slice(&ii[from..to]);
        }
        let f = dominant_frequency(&gaps, 3.5, 6.0);
        assert!(
            (f - atrial / 60.0).abs() < 0.25,
            "dominant diastolic frequency {f:.2} Hz, atrial rate {:.2} Hz",
            atrial / 60.0
        );
    }
}

#[test]
fn bundle_branch_blocks_are_wide_and_normal_conduction_is_narrow() {
    let cfg = clean_config();
    for seed in 0..6 {
        for c in [Condition::Lbbb, Condition::Rbbb] {
            let s = simulate(&cfg, c, 600 + seed);
            let w = median_qrs_ms(&s);
            assert!(w >= 120.0, "{c:?} measured QRS {w:.0} ms");
            assert!(s.record.meta.qrs_ms.unwrap() >= 120.0);
        }
        for c in [
            Condition::NormalSinus,
            Condition::Rbbb,
            Condition::Lvh,
            Condition::FirstDegreeAvBlock,
        ] {
            // Where no ST shift blurs the J point, the measured width matches the label.
            let s = simulate(&cfg, c, 600 + seed);
            let w = median_qrs_ms(&s);
            let label = s.record.meta.qrs_ms.unwrap();
            assert!(
                (w - label).abs() < 12.0,
                "{c:?}: measured {w:.0}, label {label:.0}"
            );
            if c != Condition::Rbbb {
                assert!(w < 120.0, "{c:?} measured QRS {w:.0} ms");
            }
        }
    }
}

/// Signed extrema sequence of a lead within the QRS around `peak` (deflections above 0.05 mV).
fn deflections(x: &[f32], a: usize, b: usize) -> Vec<f32> {
    (a + 1..b)
        .filter(|&j| (x[j] - x[j - 1]) * (x[j + 1] - x[j]) < 0.0 && x[j].abs() > 0.05)
        .map(|j| x[j])
        .collect()
}

#[test]
fn bundle_branch_block_morphology() {
    let cfg = clean_config();
    for seed in 0..6 {
        let r = simulate(&cfg, Condition::Rbbb, 700 + seed);
        let peaks = r_peaks(&r.record.signals);
        let (a, b) = qrs_bounds(&r.record.signals, peaks[2]);
        // rSR' in V1: positive, negative, positive, with R' taller than r.
        let v1 = deflections(lead(&r, "V1"), a, b);
        assert!(v1.len() >= 3, "V1 deflections {v1:?}");
        let (r1, s1, r2) = (v1[0], v1[1], v1[2]);
        assert!(r1 > 0.0 && s1 < 0.0 && r2 > r1, "no rSR' in V1: {v1:?}");
        // Terminal S in I and V6.
        for name in ["I", "V6"] {
            let d = deflections(lead(&r, name), a, b);
            assert!(
                d.last().is_some_and(|&v| v < -0.1),
                "{name} lacks a wide S: {d:?}"
            );
        }

        let l = simulate(&cfg, Condition::Lbbb, 700 + seed);
        let peaks = r_peaks(&l.record.signals);
        let (a, b) = qrs_bounds(&l.record.signals, peaks[2]);
        // V1: QS or rS (dominantly negative); I and V6: broad positive without septal q.
        let v1 = &lead(&l, "V1")[a..b];
        let (mx, mn) = v1
            .iter()
            .fold((f32::MIN, f32::MAX), |(p, q), &v| (p.max(v), q.min(v)));
        assert!(
            mn < -0.5 && mx < 0.25 * -mn,
            "V1 not QS/rS: max {mx}, min {mn}"
        );
        for name in ["I", "V6"] {
            let x = &lead(&l, name)[a..b];
            let neg = x.iter().copied().fold(0.0f32, f32::min);
            let pos = x.iter().copied().fold(0.0f32, f32::max);
            assert!(pos > 0.3 && neg > -0.1, "{name}: max {pos}, min {neg}");
        }
    }
}

#[test]
fn first_degree_block_prolongs_pr() {
    let cfg = clean_config();
    for seed in 0..6 {
        let block = simulate(&cfg, Condition::FirstDegreeAvBlock, 800 + seed);
        let normal = simulate(&cfg, Condition::NormalSinus, 800 + seed);
        let pr = |s: &SimRecord| {
            let peaks = r_peaks(&s.record.signals);
            median(peaks[1..].iter().filter_map(|&p| pr_ms(s, p)).collect())
        };
        let (pb, pn) = (pr(&block), pr(&normal));
        assert!(pb > 200.0, "1st-degree block PR measured {pb:.0} ms");
        assert!(pn < 200.0, "normal PR measured {pn:.0} ms");
        assert!((pb - block.record.meta.pr_ms.unwrap()).abs() < 25.0);
        assert!((pn - normal.record.meta.pr_ms.unwrap()).abs() < 25.0);
    }
}

/// Sokolow-Lyon index measured on the second detected beat.
fn sokolow_lyon(s: &SimRecord) -> f32 {
    let peaks = r_peaks(&s.record.signals);
    let (a, b) = qrs_bounds(&s.record.signals, peaks[1]);
    let max = |n: &str| lead(s, n)[a..=b].iter().copied().fold(f32::MIN, f32::max);
    let min = |n: &str| lead(s, n)[a..=b].iter().copied().fold(f32::MAX, f32::min);
    -min("V1") + max("V5").max(max("V6"))
}

#[test]
fn lvh_meets_sokolow_lyon_and_others_do_not() {
    let cfg = clean_config();
    for seed in 0..6 {
        let lvh = sokolow_lyon(&simulate(&cfg, Condition::Lvh, 900 + seed));
        assert!(lvh >= 3.5, "LVH Sokolow-Lyon {lvh:.2} mV");
        for c in [
            Condition::NormalSinus,
            Condition::Rbbb,
            Condition::StDepression,
        ] {
            let v = sokolow_lyon(&simulate(&cfg, c, 900 + seed));
            assert!(v < 3.5, "{c:?} Sokolow-Lyon {v:.2} mV");
        }
    }
}

/// ST level per lead: 60 ms after the measured J point, against the level 15 ms before the
/// measured QRS onset (PR segment), on the second detected beat.
fn st_levels(s: &SimRecord) -> Vec<f32> {
    let peaks = r_peaks(&s.record.signals);
    let (a, b) = qrs_bounds(&s.record.signals, peaks[1]);
    let j60 = b + (0.06 * FS) as usize;
    let pr = a - (0.015 * FS) as usize;
    s.record.signals.iter().map(|x| x[j60] - x[pr]).collect()
}

#[test]
fn st_shifts_are_measurable_and_labelled() {
    let cfg = clean_config();
    for seed in 0..6 {
        let normal = st_levels(&simulate(&cfg, Condition::NormalSinus, 1100 + seed));
        assert!(
            normal.iter().all(|v| v.abs() < 0.1),
            "normal ST levels {normal:?}"
        );
        let ste = simulate(&cfg, Condition::StElevation, 1100 + seed);
        let levels = st_levels(&ste);
        let labelled = &ste.truth.st_shift.as_ref().expect("ST truth").leads;
        assert!(!labelled.is_empty());
        for name in labelled {
            let k = STANDARD_LEADS.iter().position(|l| l == name).unwrap();
            assert!(levels[k] >= 0.08, "STE lead {name}: {:.2} mV", levels[k]);
        }
        // At least 1 mm (0.1 mV) in two leads: the ECG criterion of ST elevation.
        assert!(
            levels.iter().filter(|&&v| v >= 0.1).count() >= 2,
            "{levels:?}"
        );
        assert!(
            ste.record
                .meta
                .diagnoses
                .iter()
                .any(|d| d.contains("ST elevation"))
        );

        let std = simulate(&cfg, Condition::StDepression, 1100 + seed);
        let levels = st_levels(&std);
        for name in &std.truth.st_shift.as_ref().expect("ST truth").leads {
            let k = STANDARD_LEADS.iter().position(|l| l == name).unwrap();
            assert!(levels[k] <= -0.08, "STD lead {name}: {:.2} mV", levels[k]);
        }
        assert!(
            levels.iter().filter(|&&v| v <= -0.1).count() >= 2,
            "{levels:?}"
        );
    }
}

#[test]
fn axis_from_leads_i_and_ii_matches_label() {
    let cfg = clean_config();
    for c in [
        Condition::NormalSinus,
        Condition::Lvh,
        Condition::Rbbb,
        Condition::Lbbb,
    ] {
        for seed in 0..6 {
            let s = simulate(&cfg, c, 1200 + seed);
            let peaks = r_peaks(&s.record.signals);
            let (a, b) = qrs_bounds(&s.record.signals, peaks[2]);
            let area = |n: &str| lead(&s, n)[a..=b].iter().sum::<f32>();
            let (i, ii) = (area("I"), area("II"));
            // Hexaxial reference: I at 0 degrees, II at 60.
            let axis = (2.0 * ii - i).atan2(3f32.sqrt() * i).to_degrees();
            let label = s.record.meta.axis_deg.unwrap();
            assert!(
                (axis - label).abs() < 10.0,
                "{c:?}: axis {axis:.1}, label {label:.1}"
            );
        }
    }
}

/// The sinus cycle around the premature pair `rr[k], rr[k + 1]`: the mean of the cycles just
/// before and after it that are ordinary sinus cycles themselves (within 15 % of the median).
fn local_cycle(rr: &[f32], k: usize, typical: f32) -> f32 {
    let neighbours: Vec<f32> = [k.checked_sub(1), Some(k + 2)]
        .into_iter()
        .flatten()
        .filter_map(|j| rr.get(j).copied())
        .filter(|&c| (c - typical).abs() < 0.15 * typical)
        .collect();
    if neighbours.is_empty() {
        typical
    } else {
        mean(&neighbours)
    }
}

#[test]
fn premature_ventricular_beats_are_early_wide_with_compensatory_pause() {
    let cfg = clean_config();
    for seed in 0..6 {
        let s = simulate(&cfg, Condition::PrematureVentricular, 1300 + seed);
        let peaks = r_peaks(&s.record.signals);
        let rr = rr_ms(&peaks);
        let typical = median(rr.clone());
        let mut found = 0;
        for k in 0..rr.len() - 1 {
            if rr[k] < 0.8 * typical {
                found += 1;
                let pvc = peaks[k + 1];
                let w = qrs_width_ms(&s.record.signals, pvc);
                assert!(w >= 120.0, "premature beat QRS {w:.0} ms");
                // Full compensation: the coupling interval plus the pause is two cycles (of
                // the neighbouring sinus cycles, which carry the same sinus arrhythmia).
                let pair = rr[k] + rr[k + 1];
                let local = local_cycle(&rr, k, typical);
                assert!(
                    (pair / local - 2.0).abs() < 0.15,
                    "coupling + pause {pair:.0} ms vs 2 x {local:.0}"
                );
            }
        }
        let labelled = s
            .truth
            .beats
            .iter()
            .filter(|b| b.kind == BeatKind::PrematureVentricular)
            .count();
        assert!(labelled >= 1);
        assert_eq!(found, labelled, "premature beats found vs labelled");
    }
}

#[test]
fn premature_atrial_beats_are_early_narrow_with_abnormal_p() {
    let cfg = clean_config();
    let mut visible_ectopic_p = 0;
    for seed in 0..6 {
        let s = simulate(&cfg, Condition::PrematureAtrial, 1400 + seed);
        let peaks = r_peaks(&s.record.signals);
        let rr = rr_ms(&peaks);
        let typical = median(rr.clone());
        let ii = lead(&s, "II");
        let mut found = 0;
        for k in 0..rr.len() - 1 {
            if rr[k] < 0.85 * typical {
                found += 1;
                let pac = peaks[k + 1];
                let w = qrs_width_ms(&s.record.signals, pac);
                assert!(w < 120.0, "premature atrial beat QRS {w:.0} ms");
                // Non-compensatory: the sinus node was reset.
                assert!(rr[k] + rr[k + 1] < 1.85 * local_cycle(&rr, k, typical));
                // Its P wave (in the 200 ms before the QRS) is negative in II, unlike the
                // sinus P of the beat before -- unless it is buried in the preceding T wave
                // (the truth says where that T ends), as early P waves often are.
                let (onset, _) = qrs_bounds(&s.record.signals, pac);
                let (prev_onset, _) = qrs_bounds(&s.record.signals, peaks[k]);
                let p_min = |o: usize| {
                    ii[o - (0.2 * FS) as usize..o]
                        .iter()
                        .copied()
                        .fold(f32::MAX, f32::min)
                };
                let p_max = |o: usize| {
                    ii[o - (0.25 * FS) as usize..o]
                        .iter()
                        .copied()
                        .fold(f32::MIN, f32::max)
                };
                assert!(p_max(prev_onset) > 0.05, "sinus P not upright");
                let beat = s
                    .truth
                    .beats
                    .iter()
                    .position(|b| b.qrs.peak.abs_diff(pac as i64) < 10);
                let beat = beat.expect("detected premature beat is in the truth");
                let p = s.truth.beats[beat]
                    .p
                    .expect("premature atrial beat has a P");
                if p.onset > s.truth.beats[beat - 1].t.offset {
                    visible_ectopic_p += 1;
                    assert!(
                        p_min(onset) < -0.04,
                        "ectopic P not inverted: {}",
                        p_min(onset)
                    );
                }
            }
        }
        let labelled = s
            .truth
            .beats
            .iter()
            .filter(|b| b.kind == BeatKind::PrematureAtrial)
            .count();
        assert!(labelled >= 1);
        assert_eq!(found, labelled);
    }
    assert!(
        visible_ectopic_p >= 3,
        "only {visible_ectopic_p} ectopic P waves checked"
    );
}

#[test]
fn labels_and_waves_are_consistent() {
    let cfg = SimConfig::default();
    for (k, c) in Condition::ALL.into_iter().enumerate() {
        let s = simulate(&cfg, c, 1500 + k as u64);
        let m = &s.record.meta;
        assert_eq!(m.scp_codes[0].0, c.scp_code());
        assert!(m.diagnoses.len() >= 2, "{c:?}: {:?}", m.diagnoses);
        assert!(m.diagnoses[0].starts_with("Rhythm: "));
        let report = m.report.as_deref().unwrap();
        let rate = format!("{:.0} bpm", m.heart_rate_bpm.unwrap());
        assert!(report.contains(&rate), "{report}");
        assert!(
            report.ends_with('.') && report.matches(". ").count() == 0,
            "{report}"
        );
        assert!(m.rhythm.is_some());
        assert_eq!(
            m.pr_ms.is_none(),
            matches!(c, Condition::AtrialFibrillation | Condition::AtrialFlutter)
        );
        // Every lead carries the same delineation; waves lie inside the record, ordered.
        assert_eq!(s.record.waves.len(), 12);
        let waves = &s.record.waves[0].1;
        assert!(s.record.waves.iter().all(|(_, w)| w == waves));
        assert!(
            waves
                .iter()
                .all(|w| w.onset <= w.peak && w.peak <= w.offset)
        );
        assert!(waves.iter().all(|w| w.offset < s.record.len()));
        assert!(waves.windows(2).all(|p| p[0].onset <= p[1].onset));
        // The QRS peaks of the truth are where the detector finds them.
        let clean = simulate(&clean_config(), c, 1500 + k as u64);
        let detected = r_peaks(&clean.record.signals);
        // (A peak within 3 samples of the edge cannot be told from a cut-off beat.)
        for b in &clean.truth.beats {
            let peak = b.qrs.peak as usize;
            if peak <= 2 || peak + 3 >= clean.record.len() {
                continue;
            }
            assert!(
                detected.iter().any(|&d| d.abs_diff(peak) <= 10),
                "{c:?}: truth R peak {peak} not detected"
            );
        }
    }
}

#[test]
fn generate_draws_the_mix_and_repeats_patients() {
    let cfg = SimConfig::default();
    let sims = generate_with_truth(&cfg, 120, 5);
    assert_eq!(sims.len(), 120);
    let ids: std::collections::BTreeSet<_> = sims.iter().map(|s| s.record.id.clone()).collect();
    assert_eq!(ids.len(), 120, "record ids must be unique");
    let mut by_patient: std::collections::BTreeMap<String, Vec<&SimRecord>> = Default::default();
    for s in &sims {
        by_patient
            .entry(s.record.meta.patient_id.clone().unwrap())
            .or_default()
            .push(s);
    }
    let repeated = by_patient.values().filter(|v| v.len() >= 2).count();
    assert!(
        repeated >= 5,
        "only {repeated} patients with several records"
    );
    for records in by_patient.values() {
        let first = &records[0].truth.patient;
        assert!(records.iter().all(|s| &s.truth.patient == first));
    }
    let conditions: std::collections::BTreeSet<_> =
        sims.iter().map(|s| s.truth.condition).collect();
    assert!(
        conditions.len() >= 10,
        "only {} conditions drawn",
        conditions.len()
    );

    // A mix with one condition yields only that condition.
    let only_af = SimConfig {
        mix: [(Condition::AtrialFibrillation, 1.0)].into_iter().collect(),
        ..SimConfig::default()
    };
    assert!(
        generate_with_truth(&only_af, 10, 1)
            .iter()
            .all(|s| s.truth.condition == Condition::AtrialFibrillation)
    );
}

#[test]
fn noise_levels_show_up_in_the_signal() {
    // Mains only: the 50 Hz component of lead V1 has the configured amplitude (the per-lead
    // factor is 0.6-1.0 of it).
    let cfg = SimConfig {
        noise: NoiseConfig {
            mains_mv: 0.1,
            ..NoiseConfig::none()
        },
        ..SimConfig::default()
    };
    let noisy = simulate(&cfg, Condition::NormalSinus, 9);
    let clean = simulate(&clean_config(), Condition::NormalSinus, 9);
    let diff: Vec<f32> = lead(&noisy, "V1")
        .iter()
        .zip(lead(&clean, "V1"))
        .map(|(a, b)| a - b)
        .collect();
    let (mut re, mut im) = (0.0f64, 0.0f64);
    for (i, &v) in diff.iter().enumerate() {
        let w = 2.0 * std::f64::consts::PI * 50.0 * i as f64 / FS as f64;
        re += v as f64 * w.cos();
        im += v as f64 * w.sin();
    }
    let amplitude = 2.0 * (re * re + im * im).sqrt() / diff.len() as f64;
    assert!(
        (0.055..=0.105).contains(&amplitude),
        "50 Hz amplitude {amplitude:.3} mV"
    );

    // EMG only: the residual standard deviation equals the level.
    let cfg = SimConfig {
        noise: NoiseConfig {
            emg_mv: 0.05,
            ..NoiseConfig::none()
        },
        ..SimConfig::default()
    };
    let noisy = simulate(&cfg, Condition::NormalSinus, 9);
    let diff: Vec<f32> = lead(&noisy, "V4")
        .iter()
        .zip(lead(&clean, "V4"))
        .map(|(a, b)| a - b)
        .collect();
    let sd = (diff.iter().map(|v| v * v).sum::<f32>() / diff.len() as f32).sqrt();
    assert!((sd - 0.05).abs() < 0.005, "EMG sd {sd:.4}");
}
