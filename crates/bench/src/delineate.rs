//! Delineation on LUDB: records per second delineating every lead of the 200 LUDB records with
//! [`beatlab_ecg::delineate`], against NeuroKit2's `ecg_delineate(method="dwt")` and the
//! `ecgdeli` package (`bench/delineate_peers.py`), and the three scored with the same scorer
//! ([`beatlab_ecg::delineate::score`]: ±150 ms, annotated span) against the cardiologists'
//! annotations, beside the LUDB paper's published wavelet figures.
//!
//! Each side reads and delineates every record per round (reading included on both sides). The
//! peers are slow (about a second per record), so they run one timed round each by default.

use std::path::PathBuf;

use beatlab_ecg::delineate::DelineateConfig;
use beatlab_ecg::delineate::score::{self, Detections, Fiducial, Score};
use serde::Deserialize;

use super::{BenchError, Comparison, Peer, PeerRound, Timer, alternate, finish_peer};

/// Knobs of the delineation benchmark.
#[derive(Debug, Clone)]
pub struct DelineateOptions {
    /// A LUDB root (`RECORDS`, `ludb.csv`, `data/`).
    pub root: PathBuf,
    /// Timed rounds of each side; the median is reported.
    pub rounds: usize,
}

impl Default for DelineateOptions {
    fn default() -> Self {
        Self {
            root: PathBuf::from("../shared/data/ecg/ludb"),
            rounds: 1,
        }
    }
}

/// One published figure set: Se %, PPV %, error mean and SD in ms; `None` where the paper
/// gives none.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    pub point: Fiducial,
    pub se: Option<f64>,
    pub ppv: Option<f64>,
    pub mean_ms: Option<f64>,
    pub sd_ms: Option<f64>,
}

/// The LUDB paper's figures for its wavelet delineator (Kalyakulina et al. 2020); its P
/// figures are for onsets and offsets together.
pub const PUBLISHED: [Published; 5] = [
    Published {
        point: Fiducial::POn,
        se: Some(98.46),
        ppv: Some(96.41),
        mean_ms: None,
        sd_ms: None,
    },
    Published {
        point: Fiducial::POff,
        se: Some(98.46),
        ppv: Some(96.41),
        mean_ms: None,
        sd_ms: None,
    },
    Published {
        point: Fiducial::QrsOn,
        se: Some(99.61),
        ppv: Some(99.87),
        mean_ms: Some(-8.1),
        sd_ms: Some(7.7),
    },
    Published {
        point: Fiducial::QrsOff,
        se: None,
        ppv: None,
        mean_ms: Some(3.8),
        sd_ms: Some(8.8),
    },
    Published {
        point: Fiducial::TOff,
        se: Some(98.03),
        ppv: Some(98.84),
        mean_ms: Some(5.7),
        sd_ms: Some(15.5),
    },
];

#[derive(Debug, Deserialize)]
struct Hello {
    peer: String,
    version: String,
    records: usize,
}

#[derive(Debug, Deserialize)]
struct Found {
    detections: Detections,
}

/// One scored delineator: its name, scores and records per second.
#[derive(Debug, Clone)]
pub struct Scored {
    pub name: String,
    pub score: Score,
    pub records_per_s: f64,
}

/// Markdown rows: one per delineator, Se / PPV / mean ± SD for every point.
pub fn table(rows: &[Scored]) -> Vec<String> {
    let mut out = vec![
        "| delineator | records/s | P on | P off | QRS on | QRS off | T on | T off |".to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for r in rows {
        let cells: Vec<String> = Fiducial::ALL
            .iter()
            .map(|&f| {
                let s = r.score.get(f);
                format!(
                    "{:.2} / {:.2} / {:.1} ± {:.1}",
                    s.sensitivity(),
                    s.ppv(),
                    s.mean_ms(),
                    s.sd_ms()
                )
            })
            .collect();
        out.push(format!(
            "| {} | {:.1} | {} |",
            r.name,
            r.records_per_s,
            cells.join(" | ")
        ));
    }
    let fmt = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |v| format!("{v:.d$}"));
    let published: Vec<String> = Fiducial::ALL
        .iter()
        .map(|&f| {
            PUBLISHED
                .iter()
                .find(|p| p.point == f)
                .map_or("-".to_string(), |p| {
                    format!(
                        "{} / {} / {} ± {}",
                        fmt(p.se, 2),
                        fmt(p.ppv, 2),
                        fmt(p.mean_ms, 1),
                        fmt(p.sd_ms, 1)
                    )
                })
        })
        .collect();
    out.push(format!(
        "| published (LUDB paper, wavelet) | - | {} |",
        published.join(" | ")
    ));
    out
}

/// Our delineation of every record: scores, and the records delineated.
fn ours_once(root: &std::path::Path) -> Result<(Score, usize), BenchError> {
    let scores = score::score_ours(root, &DelineateConfig::default())?;
    let records = scores.len();
    Ok((score::total(&scores), records))
}

/// Scores a peer's detections with our scorer.
fn score_peer(root: &std::path::Path, found: &Detections) -> Result<Score, BenchError> {
    let scores = score::score_ludb(root, |record| {
        Ok(found.get(&record.id).cloned().unwrap_or_default())
    })?;
    Ok(score::total(&scores))
}

/// Starts `bench/delineate_peers.py` with peer `name` on the LUDB records under `root`, and
/// checks that it found as many records as we did.
fn start_peer(
    peer: &Peer,
    name: &str,
    root: &std::path::Path,
    records: usize,
) -> Result<(super::PeerSession, Hello), BenchError> {
    let args = [root.display().to_string(), "--peer".into(), name.into()];
    let (session, hello) = peer.start::<Hello>("delineate_peers.py", &args)?;
    if hello.records != records {
        return Err(BenchError::Mismatch {
            benchmark: "delineate",
            what: format!("records: ours {records}, {} {}", hello.peer, hello.records),
        });
    }
    Ok((session, hello))
}

/// Runs the benchmark: ours, then each peer, each scored; one comparison per peer.
pub fn run(
    options: &DelineateOptions,
    peer: Option<&Peer>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Comparison>, BenchError> {
    let root = std::fs::canonicalize(&options.root).unwrap_or_else(|_| options.root.clone());
    progress(&format!(
        "delineate: every lead of the LUDB records under {}",
        root.display()
    ));
    let (our_score, records) = ours_once(&root)?;
    if records == 0 {
        return Err(BenchError::NoRecords { root });
    }
    let mut rows = Vec::new();
    let mut results = Vec::new();
    let peers: &[&str] = if peer.is_some() {
        &["neurokit2", "ecgdeli"]
    } else {
        &[]
    };
    let mut our_rates = None;
    for name in peers
        .iter()
        .copied()
        .map(Some)
        .chain(peers.is_empty().then_some(None))
    {
        let mut session = match (peer, name) {
            (Some(peer), Some(name)) => {
                progress(&format!(
                    "delineate: starting {name} (bench/delineate_peers.py)"
                ));
                Some(start_peer(peer, name, &root, records)?)
            }
            _ => None,
        };
        let mut found: Option<Detections> = None;
        let (ours, theirs) = alternate(
            options.rounds,
            session.as_mut().map(|(s, _)| s),
            || {
                let timer = Timer::start();
                ours_once(&root)?;
                Ok((records as f64, timer.stop()))
            },
            |round: &PeerRound<Found>| {
                found = Some(round.extra.detections.clone());
                Ok(())
            },
        )?;
        let hello = finish_peer(session)?;
        let comparison = Comparison::from_rates(
            &ours,
            hello
                .as_ref()
                .map(|h| (format!("{} {}", h.peer, h.version), &theirs)),
        );
        if our_rates.is_none() {
            our_rates = Some(comparison.ours);
            rows.push(Scored {
                name: format!("beatlab {}", env!("CARGO_PKG_VERSION")),
                score: our_score.clone(),
                records_per_s: comparison.ours,
            });
        }
        let mut details = serde_json::json!({ "ours": our_score });
        if let (Some(h), Some(found)) = (&hello, &found) {
            let theirs_score = score_peer(&root, found)?;
            details["peer"] = serde_json::to_value(&theirs_score).unwrap_or_default();
            rows.push(Scored {
                name: format!("{} {}", h.peer, h.version),
                score: theirs_score,
                records_per_s: comparison.peer.unwrap_or(f64::NAN),
            });
        }
        results.push(Comparison {
            benchmark: "delineate".into(),
            workload: format!(
                "read and delineate the 12 leads of {records} LUDB records ({})",
                root.display()
            ),
            unit: "records/s".into(),
            details,
            ..comparison
        });
    }
    // The table of every delineator goes under the last comparison.
    if let Some(last) = results.last_mut() {
        last.notes.push("scored with beatlab's scorer: Se % / PPV % / error mean ± SD ms, ±150 ms, annotated span".into());
        last.notes.extend(table(&rows));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_delineator_and_the_published_one() {
        let rows = vec![Scored {
            name: "x".into(),
            score: Score::default(),
            records_per_s: 2.0,
        }];
        let t = table(&rows);
        assert_eq!(t.len(), 4);
        assert!(t[2].starts_with("| x | 2.0 |"));
        assert!(t[3].contains("99.61 / 99.87 / -8.1 ± 7.7"), "{}", t[3]);
    }
}
