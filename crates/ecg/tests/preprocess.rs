//! Preprocessing tests on simulated and real (LUDB, PTB-XL) records: normalisation statistics,
//! the quality-based window choice against injected artefacts, padding, missing leads, window
//! modes, and errors.

use std::path::PathBuf;

use beatlab_ecg::preprocess::{
    N_LEADS, Normalise, PreprocessConfig, PreprocessError, QualityTrack, Window, WindowChoice,
    WindowMode, prepare, preprocess_record,
};
use beatlab_ecg::synthetic::{Condition, NoiseConfig, SimConfig, simulate};
use beatlab_ecg::{Record, STANDARD_LEADS, ptbxl, wfdb};

const INPUT: usize = 1000;
const PREDICT: usize = 500;
const WINDOW: usize = INPUT + PREDICT;

fn data_root() -> PathBuf {
    std::env::var_os("BEATLAB_ECG_DATA").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ecg"),
        PathBuf::from,
    )
}

/// A clean simulated 10 s, 500 Hz record.
fn sim_record(seed: u64) -> Record {
    let cfg = SimConfig {
        noise: NoiseConfig {
            baseline_wander_mv: 0.1,
            mains_mv: 0.01,
            mains_hz: 50.0,
            emg_mv: 0.01,
            random_scale: false,
        },
        ..SimConfig::default()
    };
    simulate(&cfg, Condition::NormalSinus, seed).record
}

fn lead_rows(w: &Window) -> Vec<&[f32]> {
    w.data.chunks(WINDOW).collect()
}

/// Per-lead mean and pooled std over the first `len` samples of the present leads.
fn input_stats(w: &Window, len: usize) -> (Vec<f64>, f64) {
    let mut means = Vec::new();
    let (mut sq, mut count) = (0.0f64, 0usize);
    for (k, row) in lead_rows(w).into_iter().enumerate() {
        if !w.lead_mask[k] {
            continue;
        }
        let x = &row[..len];
        let m = x.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
        means.push(m);
        sq += x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>();
        count += len;
    }
    (means, (sq / count as f64).sqrt())
}

fn assert_normalised(w: &Window, len: usize, what: &str) {
    let (means, std) = input_stats(w, len);
    assert!(
        means.iter().all(|m| m.abs() < 1e-4),
        "{what}: lead means {means:?}"
    );
    assert!((std - 1.0).abs() < 1e-4, "{what}: global std {std}");
}

#[test]
fn normalised_input_part_has_zero_lead_means_and_unit_global_std() {
    let cfg = PreprocessConfig::default();
    for seed in 0..3 {
        let w = &preprocess_record(&sim_record(seed), &cfg, INPUT, PREDICT).unwrap()[0];
        assert_eq!(w.data.len(), N_LEADS * WINDOW);
        assert_normalised(w, INPUT, "simulated");
        // The per-lead stds differ (one global divisor, not one per lead).
        let rows = lead_rows(w);
        let sd = |k: usize| {
            let x = &rows[k][..INPUT];
            (x.iter().map(|v| v * v).sum::<f32>() / INPUT as f32).sqrt()
        };
        assert!((sd(1) - sd(6)).abs() > 0.05);
        // The prediction part is transformed with the same statistics but not used for them.
        let (_, std_all) = input_stats(w, WINDOW);
        assert!((std_all - 1.0).abs() > 1e-4);
    }
}

#[test]
fn statistics_ignore_the_prediction_part() {
    // Two records identical over the input part of the centre window, different after it: the
    // normalised input parts must be identical.
    let cfg = PreprocessConfig {
        window: WindowMode::Center,
        bandpass: None,
        ..PreprocessConfig::default()
    };
    let a = sim_record(4);
    let mut b = a.clone();
    // Centre window at 250 Hz starts at (2500 - 1500) / 2 = 500, its prediction part starts at
    // 1500 (= 3000 at 500 Hz); change the source well after that (resampling taps reach ~40
    // source samples).
    for s in &mut b.signals {
        for v in &mut s[3100..] {
            *v += 5.0;
        }
    }
    let wa = &preprocess_record(&a, &cfg, INPUT, PREDICT).unwrap()[0];
    let wb = &preprocess_record(&b, &cfg, INPUT, PREDICT).unwrap()[0];
    assert_eq!(wa.start, 500);
    for (ra, rb) in lead_rows(wa).into_iter().zip(lead_rows(wb)) {
        assert_eq!(&ra[..INPUT], &rb[..INPUT]);
        assert_ne!(&ra[INPUT..], &rb[INPUT..]);
    }
}

/// The quality-chosen window must not overlap `[bad_from, bad_to)` (samples at 250 Hz).
fn assert_avoids(rec: &Record, bad_from: usize, bad_to: usize, what: &str) {
    let cfg = PreprocessConfig::default();
    let w = &preprocess_record(rec, &cfg, INPUT, PREDICT).unwrap()[0];
    assert_eq!(w.choice, WindowChoice::Best, "{what}");
    let (start, end) = (w.start, w.start + WINDOW);
    assert!(
        end <= bad_from || start >= bad_to,
        "{what}: window {start}..{end} overlaps the artefact {bad_from}..{bad_to}"
    );
    // The centre crop would have overlapped, so the choice mattered.
    let centre = (2500 - WINDOW) / 2;
    assert!(centre < bad_to && centre + WINDOW > bad_from);
}

#[test]
fn quality_window_avoids_injected_artefacts() {
    // 10 s at 500 Hz = 2500 samples at 250 Hz; a 6 s window fits only if the artefact sits in
    // the first or last 4 s.
    let base = sim_record(7);

    // Flat line (lead off) on every lead over the first 3.5 s.
    let mut flat = base.clone();
    for s in &mut flat.signals {
        for v in &mut s[..1750] {
            *v = 0.0;
        }
    }
    assert_avoids(&flat, 0, 875, "flat line");

    // Saturation: the last 3.6 s clipped at the amplifier rail on most leads.
    let mut clipped = base.clone();
    for s in clipped.signals.iter_mut().take(9) {
        for v in &mut s[3200..] {
            *v = 5.0;
        }
    }
    assert_avoids(&clipped, 1600, 2500, "saturation");

    // Strong muscle noise (0.4 mV white) over the last 3 s.
    let mut noisy = base.clone();
    let mut state = 12345u64;
    for s in &mut noisy.signals {
        for v in &mut s[3500..] {
            // Sum of uniforms: an approximately Gaussian deviate without extra dependencies.
            let mut z = 0.0f32;
            for _ in 0..12 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                z += (state >> 40) as f32 / (1u64 << 24) as f32;
            }
            *v += 0.4 * (z - 6.0);
        }
    }
    assert_avoids(&noisy, 1750, 2500, "EMG burst");

    // NaN dropout (missing samples) in the first 3 s of three leads.
    let mut dropout = base.clone();
    for s in dropout.signals.iter_mut().take(3) {
        for v in &mut s[..1500] {
            *v = f32::NAN;
        }
    }
    assert_avoids(&dropout, 0, 750, "NaN dropout");
    let w = &preprocess_record(&dropout, &PreprocessConfig::default(), INPUT, PREDICT).unwrap()[0];
    assert!(w.data.iter().all(|v| v.is_finite()));
}

#[test]
fn quality_index_orders_clean_noisy_and_flat() {
    let cfg = PreprocessConfig::default();
    let clean = sim_record(8);
    let mut noise = clean.clone();
    let mut state = 99u64;
    for s in &mut noise.signals {
        for v in s.iter_mut() {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *v = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0;
        }
    }
    let mut flat = clean.clone();
    for s in &mut flat.signals {
        s.iter_mut().for_each(|v| *v = 0.3);
    }
    let score = |r: &Record| {
        let p = prepare(r, &cfg).unwrap();
        QualityTrack::new(&p, &cfg.quality)
            .unwrap()
            .score(0, p.len())
    };
    let (c, n, f) = (score(&clean), score(&noise), score(&flat));
    assert!(c > 0.8, "clean {c}");
    assert!(n < 0.4, "noise {n}");
    // (Only the resampler's zero-padded edges of the flat record are not flat.)
    assert!(f < 0.02, "flat {f}");
    // An all-noise record has no good window: centre crop fallback.
    let w = &preprocess_record(&noise, &cfg, INPUT, PREDICT).unwrap()[0];
    assert_eq!(w.choice, WindowChoice::CenterFallback);
    assert_eq!(w.start, (2500 - WINDOW) / 2);
    // A flat record normalises without dividing by zero.
    let w = &preprocess_record(&flat, &cfg, INPUT, PREDICT).unwrap()[0];
    assert!(w.data.iter().all(|v| v.is_finite()));
}

#[test]
fn short_record_is_zero_padded() {
    let cfg = PreprocessConfig::default();
    let rec = simulate(
        &SimConfig {
            duration_s: 3.0,
            ..SimConfig::default()
        },
        Condition::SinusTachycardia,
        3,
    )
    .record;
    for mode in [WindowMode::Best, WindowMode::Center, WindowMode::Sliding] {
        let cfg = PreprocessConfig {
            window: mode,
            ..cfg.clone()
        };
        let windows = preprocess_record(&rec, &cfg, INPUT, PREDICT).unwrap();
        assert_eq!(windows.len(), 1, "{mode:?}");
        let w = &windows[0];
        assert_eq!(
            (w.start, w.valid_len, w.choice),
            (0, 750, WindowChoice::Padded)
        );
        for row in lead_rows(w) {
            assert!(row[750..].iter().all(|&v| v == 0.0), "padding not zero");
            assert!(row[..750].iter().any(|&v| v != 0.0));
        }
        // Statistics over the real samples of the input part only.
        assert_normalised(w, 750, "padded");
    }
}

#[test]
fn missing_leads_are_zero_filled_and_masked() {
    let cfg = PreprocessConfig::default();
    let full = sim_record(11);
    // Keep I, II and V2 only, in a scrambled order and odd spelling.
    let keep = [("V2", 7usize), ("ii", 1), ("I", 0)];
    let reduced = Record {
        leads: keep.iter().map(|(n, _)| n.to_string()).collect(),
        signals: keep.iter().map(|&(_, k)| full.signals[k].clone()).collect(),
        ..full.clone()
    };
    let w = &preprocess_record(&reduced, &cfg, INPUT, PREDICT).unwrap()[0];
    let expect_mask: Vec<bool> = (0..12).map(|k| [0, 1, 7].contains(&k)).collect();
    assert_eq!(w.lead_mask.to_vec(), expect_mask);
    for (k, row) in lead_rows(w).into_iter().enumerate() {
        if w.lead_mask[k] {
            assert!(
                row.iter().any(|&v| v != 0.0),
                "lead {} empty",
                STANDARD_LEADS[k]
            );
        } else {
            assert!(
                row.iter().all(|&v| v == 0.0),
                "lead {} not zero",
                STANDARD_LEADS[k]
            );
        }
    }
    assert_normalised(w, INPUT, "reduced leads");
    // Same lead data as the full record's window before normalisation (mode none, centre).
    let none = PreprocessConfig {
        normalise: Normalise::None,
        window: WindowMode::Center,
        ..cfg
    };
    let wr = &preprocess_record(&reduced, &none, INPUT, PREDICT).unwrap()[0];
    let wf = &preprocess_record(&full, &none, INPUT, PREDICT).unwrap()[0];
    for k in [0, 1, 7] {
        assert_eq!(lead_rows(wr)[k], lead_rows(wf)[k]);
    }
}

#[test]
fn window_modes() {
    let rec = sim_record(12);
    let base = PreprocessConfig {
        stride: 250,
        ..PreprocessConfig::default()
    };
    let centre = preprocess_record(
        &rec,
        &PreprocessConfig {
            window: WindowMode::Center,
            ..base.clone()
        },
        INPUT,
        PREDICT,
    )
    .unwrap();
    assert_eq!(centre.len(), 1);
    assert_eq!(
        (centre[0].start, centre[0].choice),
        (500, WindowChoice::Center)
    );

    let sliding = preprocess_record(
        &rec,
        &PreprocessConfig {
            window: WindowMode::Sliding,
            ..base.clone()
        },
        INPUT,
        PREDICT,
    )
    .unwrap();
    let starts: Vec<usize> = sliding.iter().map(|w| w.start).collect();
    assert_eq!(starts, vec![0, 250, 500, 750, 1000]);
    assert!(sliding.iter().all(|w| w.choice == WindowChoice::Sliding));
    // Each sliding window is normalised on its own input part.
    for w in &sliding {
        assert_normalised(w, INPUT, "sliding");
    }
    // A stride that does not divide the slack still ends at the last possible start.
    let odd = preprocess_record(
        &rec,
        &PreprocessConfig {
            window: WindowMode::Sliding,
            stride: 300,
            ..base
        },
        INPUT,
        PREDICT,
    )
    .unwrap();
    let starts: Vec<usize> = odd.iter().map(|w| w.start).collect();
    assert_eq!(starts, vec![0, 300, 600, 900, 1000]);
}

#[test]
fn minmax_and_none_normalisation() {
    let rec = sim_record(13);
    let cfg = |normalise| PreprocessConfig {
        normalise,
        window: WindowMode::Center,
        ..PreprocessConfig::default()
    };
    let mm = &preprocess_record(&rec, &cfg(Normalise::Minmax), INPUT, PREDICT).unwrap()[0];
    for row in lead_rows(mm) {
        let x = &row[..INPUT];
        let lo = x.iter().copied().fold(f32::MAX, f32::min);
        let hi = x.iter().copied().fold(f32::MIN, f32::max);
        assert!(
            (lo + 1.0).abs() < 1e-5 && (hi - 1.0).abs() < 1e-5,
            "{lo} {hi}"
        );
    }
    // `none` keeps the cleaned millivolts: the window equals the prepared signal.
    let none = &preprocess_record(&rec, &cfg(Normalise::None), INPUT, PREDICT).unwrap()[0];
    let prep = prepare(&rec, &cfg(Normalise::None)).unwrap();
    for (k, row) in lead_rows(none).into_iter().enumerate() {
        assert_eq!(row, &prep.signals[k][none.start..none.start + WINDOW]);
    }
    // Cleaning removed the baseline: the prepared lead has (near) zero mean.
    let m = prep.signals[1].iter().sum::<f32>() / prep.len() as f32;
    assert!(m.abs() < 0.02, "mean after band-pass {m}");
}

#[test]
fn config_serde_names_and_defaults() {
    let cfg = PreprocessConfig::default();
    assert_eq!(cfg.target_fs, 250.0);
    assert_eq!(cfg.window, WindowMode::Best);
    assert_eq!(cfg.normalise, Normalise::LeadMeanGlobalStd);
    let json = serde_json::to_value(&cfg).unwrap();
    assert_eq!(json["window"], "best");
    assert_eq!(json["normalise"], "lead_mean_global_std");
    let back: PreprocessConfig = serde_json::from_value(json).unwrap();
    assert_eq!(back, cfg);
    let partial: PreprocessConfig =
        serde_json::from_str(r#"{"window": "sliding", "normalise": "minmax", "stride": 50}"#)
            .unwrap();
    assert_eq!(
        (
            partial.window,
            partial.normalise,
            partial.stride,
            partial.target_fs
        ),
        (WindowMode::Sliding, Normalise::Minmax, 50, 250.0)
    );
    assert!(serde_json::from_str::<PreprocessConfig>(r#"{"windw": "best"}"#).is_err());
    assert!(serde_json::from_str::<PreprocessConfig>(r#"{"window": "middle"}"#).is_err());
}

#[test]
fn bad_records_are_errors_naming_the_record() {
    let cfg = PreprocessConfig::default();
    let good = sim_record(14);
    let check = |rec: Record, what: &str, matches: fn(&PreprocessError) -> bool| {
        let err = preprocess_record(&rec, &cfg, INPUT, PREDICT).unwrap_err();
        assert!(matches(&err), "{what}: {err:?}");
        assert!(err.to_string().contains(&rec.id), "{what}: {err}");
    };
    check(
        Record {
            signals: vec![Vec::new(); 12],
            ..good.clone()
        },
        "empty",
        |e| matches!(e, PreprocessError::Empty { .. }),
    );
    let mut ragged = good.clone();
    ragged.signals[3].pop();
    check(
        ragged,
        "ragged",
        |e| matches!(e, PreprocessError::LeadLength { lead, .. } if lead == "aVR"),
    );
    check(
        Record {
            leads: (0..12).map(|k| format!("X{k}")).collect(),
            ..good.clone()
        },
        "no standard lead",
        |e| matches!(e, PreprocessError::NoStandardLeads { .. }),
    );
    check(
        Record {
            fs: 0.0,
            ..good.clone()
        },
        "bad rate",
        |e| matches!(e, PreprocessError::Dsp { .. }),
    );
    assert!(matches!(
        preprocess_record(&good, &cfg, 0, 10),
        Err(PreprocessError::ZeroInputLen)
    ));
}

#[test]
fn real_ludb_records_preprocess() {
    let root = data_root().join("ludb/data");
    let cfg = PreprocessConfig::default();
    for name in ["1", "2", "57", "133", "200"] {
        let rec = wfdb::read_record(root.join(name))
            .unwrap_or_else(|e| panic!("LUDB record {name} under {}: {e}", root.display()));
        assert_eq!((rec.fs, rec.len()), (500.0, 5000));
        let windows = preprocess_record(&rec, &cfg, INPUT, PREDICT).unwrap();
        let w = &windows[0];
        assert!(
            w.lead_mask.iter().all(|&m| m),
            "LUDB {name} lead mask {:?}",
            w.lead_mask
        );
        assert_eq!(
            w.choice,
            WindowChoice::Best,
            "LUDB {name} quality {}",
            w.quality
        );
        assert!(w.quality > cfg.min_quality);
        assert!(w.start + WINDOW <= 2500);
        assert!(
            w.start.is_multiple_of(cfg.stride) || w.start == 2500 - WINDOW,
            "start {}",
            w.start
        );
        assert!(w.data.iter().all(|v| v.is_finite()));
        assert_normalised(w, INPUT, &format!("LUDB {name}"));
    }
}

#[test]
fn real_ptbxl_records_at_100_and_500_hz_agree() {
    let root = data_root().join("ptbxl_mini");
    let low = ptbxl::load(&root, ptbxl::PtbxlRate::Hz100).expect("PTB-XL 100 Hz");
    let high = ptbxl::load(&root, ptbxl::PtbxlRate::Hz500).expect("PTB-XL 500 Hz");
    let cfg = PreprocessConfig {
        window: WindowMode::Center,
        normalise: Normalise::None,
        ..PreprocessConfig::default()
    };
    let mut compared = 0;
    for r100 in &low {
        let Some(r500) = high.iter().find(|r| {
            r.meta.patient_id == r100.meta.patient_id
                && r.meta.fold == r100.meta.fold
                && r.meta.report == r100.meta.report
        }) else {
            continue;
        };
        let a = prepare(r100, &cfg).unwrap();
        let b = prepare(r500, &cfg).unwrap();
        assert_eq!((a.len(), b.len()), (2500, 2500), "both resample to 250 Hz");
        // The 100 Hz file is a downsampled copy of the 500 Hz one: after resampling both to
        // 250 Hz and band-passing to 40 Hz (below both Nyquists) lead II must agree closely.
        let (x, y) = (&a.signals[1][200..2300], &b.signals[1][200..2300]);
        let err = x.iter().zip(y).map(|(p, q)| (p - q).powi(2)).sum::<f32>() / x.len() as f32;
        let power = y.iter().map(|q| q * q).sum::<f32>() / y.len() as f32;
        assert!(
            err < 0.05 * power,
            "{}: relative error {}",
            r100.id,
            err / power
        );
        compared += 1;
    }
    assert!(compared >= 20, "only {compared} record pairs compared");
}
