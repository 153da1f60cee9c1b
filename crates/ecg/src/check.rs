//! `beatlab data check`: read and verify every record under a folder and summarise what is there.
//!
//! Every record is loaded the way [`crate::sources::load_any`] loads it (checksums and initial
//! values verified), except that PTB-XL is read at both 100 and 500 Hz so both copies are
//! verified. Beyond what a load checks, a record fails when it has no samples or no leads, or a
//! wave annotation lies outside the signal. Label counts (superclasses, SNOMED codes, LUDB
//! rhythms) are taken over the records `load_any` returns, so a PTB-XL ECG present at both
//! rates counts once; leads, rates and durations count every verified record.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::record::{Record, STANDARD_LEADS, SourceKind};
use crate::sources::{Plan, PtbxlRates, relative};

/// One record or dataset table that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckFailure {
    /// Path relative to the checked root.
    pub path: String,
    pub reason: String,
}

/// What [`check_root`] found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CheckReport {
    pub root: PathBuf,
    pub records_ok: usize,
    /// Records listed or found that failed to load or verify. A dataset table that cannot be
    /// read is listed in `failures` only, since its records are unknown.
    pub records_failed: usize,
    /// Verified records per source kind (`ptbxl`, `ludb`, `cinc`, `wfdb`).
    pub sources: BTreeMap<String, usize>,
    /// Verified records carrying each lead name.
    pub leads: BTreeMap<String, usize>,
    /// Verified records per sampling rate (Hz, as text).
    pub sampling_rates_hz: BTreeMap<String, usize>,
    /// Verified records per duration (seconds, as text, rounded to 1 ms).
    pub durations_s: BTreeMap<String, usize>,
    /// PTB-XL diagnostic superclasses: records carrying each.
    pub superclasses: BTreeMap<String, usize>,
    /// SNOMED-CT codes of CinC records: records carrying each.
    pub snomed_codes: BTreeMap<String, usize>,
    /// LUDB rhythm labels: records with each.
    pub ludb_rhythms: BTreeMap<String, usize>,
    /// Complete annotated waves by kind (P, QRS, T) over all leads.
    pub waves: BTreeMap<String, usize>,
    /// Annotated wave peaks without an onset or offset (left out of `waves`).
    pub incomplete_waves: usize,
    /// Samples marked invalid in the signal files (decoded as NaN).
    pub invalid_samples: usize,
    /// Records a dataset table lists whose file is absent (relative paths).
    pub skipped_missing: Vec<String>,
    pub failures: Vec<CheckFailure>,
}

/// Loads and verifies every record under `root`; never fails, failures go into the report.
pub fn check_root(root: &Path) -> CheckReport {
    let mut report = CheckReport {
        root: root.to_path_buf(),
        ..CheckReport::default()
    };
    let plan = match Plan::build(root, &[], PtbxlRates::Both) {
        Ok(plan) => plan,
        Err(error) => {
            report.failures.push(CheckFailure {
                path: String::new(),
                reason: error.to_string(),
            });
            return report;
        }
    };
    for (path, error) in plan.failures {
        report.failures.push(CheckFailure {
            path: relative(root, &path),
            reason: error.to_string(),
        });
    }
    report.skipped_missing = plan.skipped_missing;
    for item in &plan.items {
        let path = relative(root, &item.header_path());
        let verified = item.load().and_then(|loaded| {
            verify(&loaded.record).map(|()| loaded).map_err(|reason| {
                crate::error::DataError::Dataset {
                    path: item.header_path(),
                    message: reason,
                }
            })
        });
        match verified {
            Ok(loaded) => {
                report.incomplete_waves += loaded.incomplete_waves;
                report.tally(&loaded.record, item.is_primary());
            }
            Err(error) => {
                report.records_failed += 1;
                report.failures.push(CheckFailure {
                    path,
                    reason: error.to_string(),
                });
            }
        }
    }
    report
}

/// Checks a loaded record beyond what reading it verified.
fn verify(record: &Record) -> Result<(), String> {
    if record.leads.is_empty() {
        return Err("record has no signals".to_string());
    }
    if record.is_empty() {
        return Err("record has no samples".to_string());
    }
    let len = record.len();
    for (lead, waves) in &record.waves {
        if let Some(wave) = waves.iter().find(|w| w.offset >= len) {
            return Err(format!(
                "lead {lead}: {:?} wave ending at sample {} lies beyond the {len} samples",
                wave.kind, wave.offset
            ));
        }
    }
    Ok(())
}

fn bump(map: &mut BTreeMap<String, usize>, key: impl Into<String>) {
    *map.entry(key.into()).or_default() += 1;
}

/// A number as short text: `500`, `10`, `0.5`.
fn short_number(value: f64) -> String {
    let rounded = (value * 1000.0).round() / 1000.0;
    format!("{rounded}")
}

impl CheckReport {
    fn tally(&mut self, record: &Record, primary: bool) {
        self.records_ok += 1;
        let source = serde_json::to_value(record.source)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", record.source));
        bump(&mut self.sources, source);
        for lead in &record.leads {
            bump(&mut self.leads, lead.clone());
        }
        bump(&mut self.sampling_rates_hz, short_number(record.fs));
        bump(&mut self.durations_s, short_number(record.duration_s()));
        self.invalid_samples += record
            .signals
            .iter()
            .map(|s| s.iter().filter(|v| v.is_nan()).count())
            .sum::<usize>();
        for (_, waves) in &record.waves {
            for wave in waves {
                bump(&mut self.waves, format!("{:?}", wave.kind));
            }
        }
        if !primary {
            return;
        }
        for class in &record.meta.superclasses {
            bump(&mut self.superclasses, format!("{class:?}"));
        }
        for code in &record.meta.snomed {
            bump(&mut self.snomed_codes, code.clone());
        }
        if record.source == SourceKind::Ludb
            && let Some(rhythm) = &record.meta.rhythm
        {
            bump(&mut self.ludb_rhythms, rhythm.clone());
        }
    }
}

/// `key n, key n, ...`, largest counts first (ties by key), at most `limit` entries.
fn by_count(map: &BTreeMap<String, usize>, limit: usize) -> String {
    let mut entries: Vec<(&String, &usize)> = map.iter().collect();
    entries.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = entries
        .iter()
        .take(limit)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let more = entries.len().saturating_sub(limit);
    if more > 0 {
        format!("{} (+{more} more)", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "ECG data check of {}", self.root.display())?;
        writeln!(
            f,
            "  records: {} ok, {} failed",
            self.records_ok, self.records_failed
        )?;
        let line = |f: &mut fmt::Formatter<'_>, label: &str, text: String| {
            if text.is_empty() {
                Ok(())
            } else {
                writeln!(f, "  {label}: {text}")
            }
        };
        line(f, "sources", by_count(&self.sources, usize::MAX))?;
        let rates: Vec<String> = self
            .sampling_rates_hz
            .iter()
            .map(|(hz, n)| format!("{hz} Hz x{n}"))
            .collect();
        line(f, "sampling rates", rates.join(", "))?;
        let durations: Vec<String> = self
            .durations_s
            .iter()
            .map(|(s, n)| format!("{s} s x{n}"))
            .collect();
        line(f, "durations", durations.join(", "))?;
        // Standard leads in their conventional order, then any others alphabetically.
        let mut leads: Vec<String> = STANDARD_LEADS
            .iter()
            .filter_map(|l| self.leads.get(*l).map(|n| format!("{l} {n}")))
            .collect();
        leads.extend(
            self.leads
                .iter()
                .filter(|(l, _)| !STANDARD_LEADS.contains(&l.as_str()))
                .map(|(l, n)| format!("{l} {n}")),
        );
        line(f, "leads", leads.join(", "))?;
        line(
            f,
            "PTB-XL superclasses",
            by_count(&self.superclasses, usize::MAX),
        )?;
        if !self.snomed_codes.is_empty() {
            line(
                f,
                &format!("SNOMED-CT codes ({} distinct)", self.snomed_codes.len()),
                by_count(&self.snomed_codes, 10),
            )?;
        }
        line(f, "LUDB rhythms", by_count(&self.ludb_rhythms, usize::MAX))?;
        if !self.waves.is_empty() {
            line(
                f,
                "annotated waves",
                format!(
                    "{} ({} incomplete left out)",
                    by_count(&self.waves, usize::MAX),
                    self.incomplete_waves
                ),
            )?;
        }
        if self.invalid_samples > 0 {
            writeln!(f, "  invalid samples (NaN): {}", self.invalid_samples)?;
        }
        if !self.skipped_missing.is_empty() {
            writeln!(
                f,
                "  listed but absent (skipped): {}",
                self.skipped_missing.len()
            )?;
        }
        if !self.failures.is_empty() {
            writeln!(f, "  failures:")?;
            for failure in &self.failures {
                writeln!(f, "    {}: {}", failure.path, failure.reason)?;
            }
        }
        Ok(())
    }
}
