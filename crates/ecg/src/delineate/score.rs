//! Scoring a delineation against reference annotations, the usual protocol of the LUDB and
//! QTDB papers: for each fiducial kind (P on/off, QRS on/off, T on/off) a reference point is
//! found when a detected point of its kind lies within the tolerance (±150 ms); each detection
//! matches at most one reference, the closest pairs first. Only the annotated span of a lead
//! counts: from its first to its last reference point of any kind; an unmatched detection inside
//! it is a false positive, one outside is ignored. Errors are detection minus reference, in ms.
//!
//! Detections come as [`Points`] (per kind, sample indices at the record's rate), so any
//! delineator (ours, NeuroKit2, ecgdeli) is scored by the same code.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{DelineateConfig, Delineation, delineate};
use crate::error::DataError;
use crate::ludb;
use crate::record::{Wave, WaveKind};

/// The tolerance of the protocol, s.
pub const TOLERANCE_S: f64 = 0.150;

/// A scored fiducial point kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fiducial {
    POn,
    POff,
    QrsOn,
    QrsOff,
    TOn,
    TOff,
}

impl Fiducial {
    pub const ALL: [Fiducial; 6] = [
        Fiducial::POn,
        Fiducial::POff,
        Fiducial::QrsOn,
        Fiducial::QrsOff,
        Fiducial::TOn,
        Fiducial::TOff,
    ];

    /// The name used in tables and JSON (`qrs_on`).
    pub fn name(self) -> &'static str {
        match self {
            Fiducial::POn => "p_on",
            Fiducial::POff => "p_off",
            Fiducial::QrsOn => "qrs_on",
            Fiducial::QrsOff => "qrs_off",
            Fiducial::TOn => "t_on",
            Fiducial::TOff => "t_off",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Points of each fiducial kind of one lead, sample indices, indexed by [`Fiducial`] order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Points(pub [Vec<usize>; 6]);

impl Points {
    /// The onsets and offsets of `waves`.
    pub fn from_waves(waves: &[Wave]) -> Self {
        let mut p = Points::default();
        for w in waves {
            let (on, off) = match w.kind {
                WaveKind::P => (Fiducial::POn, Fiducial::POff),
                WaveKind::QRS => (Fiducial::QrsOn, Fiducial::QrsOff),
                WaveKind::T => (Fiducial::TOn, Fiducial::TOff),
            };
            p.0[on.index()].push(w.onset);
            p.0[off.index()].push(w.offset);
        }
        p
    }

    pub fn get(&self, f: Fiducial) -> &[usize] {
        &self.0[f.index()]
    }

    /// First and last point of any kind.
    fn span(&self, peaks: &[usize]) -> Option<(usize, usize)> {
        let all = self.0.iter().flatten().chain(peaks);
        Some((*all.clone().min()?, *all.max()?))
    }
}

/// Counts and errors of one fiducial kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FiducialScore {
    pub true_positives: usize,
    pub false_negatives: usize,
    pub false_positives: usize,
    /// Sum and sum of squares of the errors of matched points, ms.
    pub error_sum_ms: f64,
    pub error_sum_sq_ms: f64,
}

impl FiducialScore {
    /// Sensitivity, %.
    pub fn sensitivity(&self) -> f64 {
        percent(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }

    /// Positive predictive value, %.
    pub fn ppv(&self) -> f64 {
        percent(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }

    /// Mean error, ms.
    pub fn mean_ms(&self) -> f64 {
        self.error_sum_ms / self.true_positives.max(1) as f64
    }

    /// Standard deviation of the error, ms (population).
    pub fn sd_ms(&self) -> f64 {
        let n = self.true_positives.max(1) as f64;
        (self.error_sum_sq_ms / n - self.mean_ms().powi(2))
            .max(0.0)
            .sqrt()
    }

    fn add(&mut self, o: &FiducialScore) {
        self.true_positives += o.true_positives;
        self.false_negatives += o.false_negatives;
        self.false_positives += o.false_positives;
        self.error_sum_ms += o.error_sum_ms;
        self.error_sum_sq_ms += o.error_sum_sq_ms;
    }
}

fn percent(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

/// Scores of every fiducial kind over some leads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub records: usize,
    pub leads: usize,
    pub fiducials: [FiducialScore; 6],
}

impl Score {
    pub fn get(&self, f: Fiducial) -> &FiducialScore {
        &self.fiducials[f.index()]
    }

    pub fn add(&mut self, o: &Score) {
        self.records += o.records;
        self.leads += o.leads;
        for (a, b) in self.fiducials.iter_mut().zip(&o.fiducials) {
            a.add(b);
        }
    }

    /// A Markdown table: one row per fiducial kind.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from("| point | Se % | PPV % | error ms (mean ± SD) | references |\n");
        s.push_str("|---|---|---|---|---|\n");
        for f in Fiducial::ALL {
            let x = self.get(f);
            let _ = writeln!(
                s,
                "| {} | {:.2} | {:.2} | {:.1} ± {:.1} | {} |",
                f.name(),
                x.sensitivity(),
                x.ppv(),
                x.mean_ms(),
                x.sd_ms(),
                x.true_positives + x.false_negatives
            );
        }
        s
    }
}

/// Scores one lead: `reference` and `detected` points at rate `fs`; `extra_span` are further
/// reference samples (e.g. wave peaks) that widen the annotated span.
pub fn score_lead(reference: &Points, extra_span: &[usize], detected: &Points, fs: f64) -> Score {
    let mut out = Score {
        records: 0,
        leads: 1,
        ..Default::default()
    };
    let Some((lo, hi)) = reference.span(extra_span) else {
        out.leads = 0;
        return out;
    };
    let tol = (TOLERANCE_S * fs).round() as i64;
    for f in Fiducial::ALL {
        let refs = reference.get(f);
        let dets = detected.get(f);
        let mut pairs: Vec<(i64, usize, usize)> = Vec::new();
        for (i, &r) in refs.iter().enumerate() {
            let from = dets.partition_point(|&d| (d as i64) < r as i64 - tol);
            for (j, &d) in dets.iter().enumerate().skip(from) {
                let e = d as i64 - r as i64;
                if e > tol {
                    break;
                }
                pairs.push((e.abs(), i, j));
            }
        }
        pairs.sort_unstable();
        let (mut ref_used, mut det_used) = (vec![false; refs.len()], vec![false; dets.len()]);
        let s = &mut out.fiducials[f.index()];
        for (_, i, j) in pairs {
            if ref_used[i] || det_used[j] {
                continue;
            }
            ref_used[i] = true;
            det_used[j] = true;
            let e = (dets[j] as f64 - refs[i] as f64) * 1000.0 / fs;
            s.true_positives += 1;
            s.error_sum_ms += e;
            s.error_sum_sq_ms += e * e;
        }
        s.false_negatives = ref_used.iter().filter(|u| !**u).count();
        s.false_positives = dets
            .iter()
            .zip(&det_used)
            .filter(|(d, u)| !**u && (lo..=hi).contains(*d))
            .count();
    }
    out
}

/// Detections of some delineator for a set of records: record id (`ludb/1`) -> lead -> points.
pub type Detections = BTreeMap<String, BTreeMap<String, Points>>;

/// Our detections of one record, as [`Points`] per lead.
pub fn points_of(d: &Delineation) -> BTreeMap<String, Points> {
    d.leads
        .iter()
        .map(|l| {
            let mut p = Points::from_waves(&l.waves());
            p.0.iter_mut().for_each(|v| v.sort_unstable());
            (l.lead.clone(), p)
        })
        .collect()
}

/// A LUDB record scored: its id and the score of its leads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordScore {
    pub id: String,
    pub score: Score,
}

/// Scores `detect`'s points against every lead of every LUDB record under `root`.
/// `detect` is given the record and returns its points per lead (a lead it leaves out counts
/// every reference point of that lead as missed).
pub fn score_ludb(
    root: &Path,
    mut detect: impl FnMut(&crate::record::Record) -> Result<BTreeMap<String, Points>, DataError>,
) -> Result<Vec<RecordScore>, DataError> {
    let dataset = ludb::Dataset::open(root)?;
    let mut out = Vec::new();
    for name in &dataset.records {
        let (record, _) = dataset.load_record(name)?;
        let detected = detect(&record)?;
        let mut score = Score {
            records: 1,
            ..Default::default()
        };
        for (lead, waves) in &record.waves {
            let reference = Points::from_waves(waves);
            let peaks: Vec<usize> = waves.iter().map(|w| w.peak).collect();
            let empty = Points::default();
            let d = detected.get(lead).unwrap_or(&empty);
            score.add(&score_lead(&reference, &peaks, d, record.fs));
        }
        out.push(RecordScore {
            id: record.id.clone(),
            score,
        });
    }
    Ok(out)
}

/// Our delineator scored on LUDB.
pub fn score_ours(root: &Path, cfg: &DelineateConfig) -> Result<Vec<RecordScore>, DataError> {
    score_ludb(root, |record| {
        let d = delineate(record, cfg).map_err(|e| DataError::Dataset {
            path: root.to_path_buf(),
            message: format!("{}: {e}", record.id),
        })?;
        Ok(points_of(&d))
    })
}

/// The sum of record scores.
pub fn total(scores: &[RecordScore]) -> Score {
    let mut s = Score::default();
    for r in scores {
        s.add(&r.score);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(qrs_on: &[usize]) -> Points {
        let mut p = Points::default();
        p.0[Fiducial::QrsOn.index()] = qrs_on.to_vec();
        p
    }

    #[test]
    fn matching_counts_and_errors_by_hand() {
        // fs 1000: tolerance 150 samples. References 1000, 2000, 3000 (span to 3300); detections
        // 1010, 1990, 2005, 3200, 5000. Closest pairs first: 2000-2005 (+5 ms), 1000-1010
        // (+10 ms); 1990 is left over inside the span (FP), 3200 is 200 ms from 3000 (FP, and
        // 3000 is missed), 5000 lies outside the span (ignored).
        let reference = pts(&[1000, 2000, 3000]);
        let detected = pts(&[1010, 1990, 2005, 3200, 5000]);
        let s = score_lead(&reference, &[3300], &detected, 1000.0);
        let q = s.get(Fiducial::QrsOn);
        assert_eq!(
            (q.true_positives, q.false_negatives, q.false_positives),
            (2, 1, 2)
        );
        assert!((q.mean_ms() - 7.5).abs() < 1e-9 && (q.sd_ms() - 2.5).abs() < 1e-9);
        assert!((q.sensitivity() - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!(q.ppv(), 50.0);
        assert_eq!(s.get(Fiducial::TOff).true_positives, 0);
    }

    #[test]
    fn a_lead_without_references_is_not_scored() {
        let s = score_lead(&Points::default(), &[], &pts(&[10]), 500.0);
        assert_eq!(s.leads, 0);
        assert_eq!(s.get(Fiducial::QrsOn).false_positives, 0);
    }
}
