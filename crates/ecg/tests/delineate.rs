//! Delineation of simulated records recovers the simulator's true beats and intervals.

use beatlab_ecg::delineate::{DelineateConfig, delineate, measure::measure};
use beatlab_ecg::synthetic::{Condition, SimConfig, simulate};

/// Conditions with organised P waves and the error bounds (ms, bpm, degrees) checked on them.
const CONDITIONS: [Condition; 4] = [
    Condition::NormalSinus,
    Condition::SinusBradycardia,
    Condition::SinusTachycardia,
    Condition::FirstDegreeAvBlock,
];

struct Errors {
    name: &'static str,
    values: Vec<f32>,
}

impl Errors {
    fn mean_abs(&self) -> f32 {
        self.values.iter().map(|v| v.abs()).sum::<f32>() / self.values.len() as f32
    }
    fn max_abs(&self) -> f32 {
        self.values.iter().fold(0.0, |m, v| m.max(v.abs()))
    }
}

#[test]
fn simulated_records_give_back_their_true_intervals() {
    let mut cfg = SimConfig::default();
    for fs in [500.0, 360.0] {
        cfg.fs = fs;
        let mut errors: Vec<Errors> = ["hr", "pr", "qrs", "qt", "axis"]
            .into_iter()
            .map(|name| Errors {
                name,
                values: Vec::new(),
            })
            .collect();
        for (k, &condition) in CONDITIONS.iter().enumerate() {
            for seed in 0..4u64 {
                let sim = simulate(&cfg, condition, 100 * k as u64 + seed);
                let d = delineate(&sim.record, &DelineateConfig::default()).unwrap();
                // Every true beat is found within 40 ms, and nothing else.
                let tol = (0.04 * fs) as i64;
                let peaks: Vec<i64> = sim.truth.beats.iter().map(|b| b.qrs.peak).collect();
                assert_eq!(
                    d.r_peaks.len(),
                    peaks.len(),
                    "{condition:?} seed {seed}: {:?} vs {peaks:?}",
                    d.r_peaks
                );
                for (&found, &truth) in d.r_peaks.iter().zip(&peaks) {
                    assert!(
                        (found as i64 - truth).abs() <= tol,
                        "{condition:?} {found} vs {truth}"
                    );
                }
                let m = measure(&sim.record, &d);
                let t = &sim.truth;
                let g = &m.global;
                errors[0]
                    .values
                    .push(g.heart_rate_bpm.unwrap() - 60_000.0 / median(&t.rr_ms));
                errors[1].values.push(g.pr_ms.unwrap() - t.pr_ms.unwrap());
                errors[2].values.push(g.qrs_ms.unwrap() - t.qrs_ms);
                errors[3].values.push(g.qt_ms.unwrap() - t.qt_ms);
                let da = m.axis_deg.unwrap() - t.axis_deg;
                errors[4]
                    .values
                    .push((da + 540.0).rem_euclid(360.0) - 180.0);
            }
        }
        for e in &errors {
            println!(
                "{fs} Hz {}: mean |error| {:.1}, max {:.1}",
                e.name,
                e.mean_abs(),
                e.max_abs()
            );
        }
        let bound = |name: &str| match name {
            "hr" => 2.0,
            "pr" => 40.0,
            "qrs" => 30.0,
            "qt" => 40.0,
            _ => 15.0,
        };
        for e in &errors {
            assert!(
                e.mean_abs() <= 0.7 * bound(e.name) && e.max_abs() <= bound(e.name),
                "{fs} Hz {}: {:?}",
                e.name,
                e.values
            );
        }
    }
}

fn median(x: &[f32]) -> f32 {
    let mut v = x.to_vec();
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

/// The shared data folder, as the reader tests find it.
fn data_root() -> std::path::PathBuf {
    let root = std::env::var_os("BEATLAB_ECG_DATA").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ecg"),
        std::path::PathBuf::from,
    );
    assert!(
        root.join("ludb").is_dir(),
        "LUDB not found under {} (set BEATLAB_ECG_DATA)",
        root.display()
    );
    root
}

/// Every lead of the 200 LUDB records scored against the cardiologists' annotations: the
/// figures docs/results.md reports, with a margin, so a regression of the delineator fails.
#[test]
fn ludb_scores_stay_at_the_reported_level() {
    use beatlab_ecg::delineate::score::{Fiducial, score_ours, total};
    let scores = score_ours(&data_root().join("ludb"), &DelineateConfig::default()).unwrap();
    let t = total(&scores);
    assert_eq!((t.records, t.leads), (200, 2400));
    let check = |f: Fiducial, se: f64, ppv: f64, sd: f64| {
        let s = t.get(f);
        assert!(
            s.sensitivity() >= se && s.ppv() >= ppv && s.sd_ms() <= sd,
            "{}: Se {:.2} PPV {:.2} {:.1} ± {:.1} ms",
            f.name(),
            s.sensitivity(),
            s.ppv(),
            s.mean_ms(),
            s.sd_ms()
        );
    };
    check(Fiducial::QrsOn, 99.5, 99.0, 17.0);
    check(Fiducial::QrsOff, 99.5, 99.0, 20.0);
    check(Fiducial::POn, 91.0, 94.0, 20.0);
    check(Fiducial::POff, 91.0, 94.0, 21.0);
    check(Fiducial::TOn, 94.0, 97.0, 33.0);
    check(Fiducial::TOff, 94.0, 97.5, 26.0);
}
