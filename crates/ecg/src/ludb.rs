//! The Lobachevsky University ECG Database (LUDB): 12-lead WFDB records with per-lead wave
//! annotation files and diagnoses.
//!
//! A LUDB root holds `ludb.csv`, a `RECORDS` list (`data/1`, ...) and `data/` with `N.hea`,
//! `N.dat` and one annotation file per lead named by the lead's lower-case header description
//! (`N.i`, `N.avr`, `N.v1`, ...). Labels come from the header comments (`#<age>: 51`,
//! `#<sex>: F`, then `#<diagnoses>:` followed by one `#` line per diagnosis, the first of them
//! `#Rhythm: ...`); entries of `ludb.csv` that the header lacks (e.g. "Pacemaker presence,
//! undefined") are appended to the diagnoses, and the CSV's age and sex fill gaps in the header.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::annotation;
use crate::error::{DataError, read_text};
use crate::record::{Record, SourceKind, Wave};
use crate::wfdb;

/// File name of the metadata table inside a LUDB root.
pub const CSV_FILE: &str = "ludb.csv";
const RECORDS_FILE: &str = "RECORDS";
/// `ludb.csv` writes ages above 89 as `>89`; the headers write 90.
const AGE_ABOVE_89: f32 = 90.0;

/// Loads every LUDB record under `root` with labels and wave annotations.
pub fn load(root: &Path) -> Result<Vec<Record>, DataError> {
    let dataset = Dataset::open(root)?;
    dataset
        .records
        .iter()
        .map(|r| dataset.load_record(r).map(|(record, _)| record))
        .collect()
}

/// One row of `ludb.csv`: every column's entries (a cell may hold several, one per line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LudbRow {
    pub line: u64,
    pub id: String,
    /// `(column name, entries)` for every column after `ID`, in file order.
    pub columns: Vec<(String, Vec<String>)>,
}

impl LudbRow {
    fn first(&self, column: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(name, _)| name == column)
            .and_then(|(_, entries)| entries.first())
            .map(String::as_str)
    }
}

/// Reads `ludb.csv` under `root`, keyed by record id.
pub fn read_csv(root: &Path) -> Result<BTreeMap<String, LudbRow>, DataError> {
    let path = root.join(CSV_FILE);
    let text = read_text(&path)?;
    let csv_error = |e: csv::Error| DataError::Csv {
        path: path.clone(),
        line: e.position().map_or(0, csv::Position::line),
        column: String::new(),
        message: e.to_string(),
    };
    let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let names: Vec<String> = reader
        .headers()
        .map_err(csv_error)?
        .iter()
        .map(|n| n.trim().to_string())
        .collect();
    if names.first().map(String::as_str) != Some("ID") {
        return Err(DataError::Dataset {
            path,
            message: "the first column must be `ID`".to_string(),
        });
    }
    let mut rows = BTreeMap::new();
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        let line = record.position().map_or(0, csv::Position::line);
        let id = record.get(0).unwrap_or("").trim().to_string();
        if id.is_empty() {
            return Err(DataError::Csv {
                path: path.clone(),
                line,
                column: "ID".to_string(),
                message: "empty record id".to_string(),
            });
        }
        let columns = names
            .iter()
            .zip(record.iter())
            .skip(1)
            .map(|(name, cell)| {
                let entries = cell
                    .lines()
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .collect();
                (name.clone(), entries)
            })
            .collect();
        rows.insert(id.clone(), LudbRow { line, id, columns });
    }
    Ok(rows)
}

/// Labels read from a LUDB header's comments.
#[derive(Debug, Clone, Default, PartialEq)]
struct HeaderLabels {
    age: Option<f32>,
    sex: Option<String>,
    diagnoses: Vec<String>,
    rhythm: Option<String>,
}

fn header_labels(comments: &[String]) -> HeaderLabels {
    let mut labels = HeaderLabels::default();
    let mut in_diagnoses = false;
    for comment in comments {
        if let Some(age) = comment.strip_prefix("<age>:") {
            labels.age = age.trim().parse().ok();
        } else if let Some(sex) = comment.strip_prefix("<sex>:") {
            labels.sex = Some(sex.trim().to_string()).filter(|s| !s.is_empty());
        } else if comment.starts_with("<diagnoses>") {
            in_diagnoses = true;
        } else if in_diagnoses {
            let diagnosis = comment.trim().trim_end_matches('.').trim();
            if diagnosis.is_empty() {
                continue;
            }
            if let Some(rhythm) = diagnosis.strip_prefix("Rhythm:") {
                labels.rhythm = Some(rhythm.trim().to_lowercase());
            }
            labels.diagnoses.push(diagnosis.to_string());
        }
    }
    labels
}

/// Letters and digits only, lower case: the CSV and the headers differ in case and punctuation
/// (`Iii degree av-block` vs `III degree AV-block.`).
fn comparable(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// An opened LUDB root.
#[derive(Debug, Clone)]
pub(crate) struct Dataset {
    pub root: PathBuf,
    /// Record paths relative to the root, without extension (`data/1`), in `RECORDS` order.
    pub records: Vec<String>,
    pub rows: BTreeMap<String, LudbRow>,
}

impl Dataset {
    pub fn open(root: &Path) -> Result<Self, DataError> {
        let rows = read_csv(root)?;
        let records_path = root.join(RECORDS_FILE);
        let records = if records_path.is_file() {
            read_text(&records_path)?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        } else {
            Self::records_in_data_folder(root)?
        };
        Ok(Dataset {
            root: root.to_path_buf(),
            records,
            rows,
        })
    }

    /// Without a `RECORDS` list: every `data/*.hea`, in numeric order of the record name.
    fn records_in_data_folder(root: &Path) -> Result<Vec<String>, DataError> {
        let data = root.join("data");
        let entries = std::fs::read_dir(&data).map_err(|e| DataError::io(&data, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| DataError::io(&data, e))?.path();
            if path.extension().is_some_and(|e| e == "hea")
                && let Some(stem) = path.file_stem()
            {
                names.push(stem.to_string_lossy().into_owned());
            }
        }
        names.sort_by_key(|n| (n.parse::<u64>().unwrap_or(u64::MAX), n.clone()));
        Ok(names.into_iter().map(|n| format!("data/{n}")).collect())
    }

    pub fn header_path(&self, record: &str) -> PathBuf {
        wfdb::header_path(&self.root.join(record))
    }

    /// Annotation files of a record (the ones that exist), in lead order.
    pub fn annotation_files(&self, header: &wfdb::Header) -> Vec<(String, PathBuf)> {
        let dir = header.path.parent().unwrap_or(Path::new(""));
        header
            .signals
            .iter()
            .map(|s| {
                let file = dir.join(format!(
                    "{}.{}",
                    header.record_name,
                    s.description.to_lowercase()
                ));
                (s.lead.clone(), file)
            })
            .filter(|(_, file)| file.is_file())
            .collect()
    }

    /// Loads one record (`data/1`) with labels and waves; also returns the number of annotated
    /// wave peaks left out for a missing onset or offset.
    pub fn load_record(&self, record: &str) -> Result<(Record, usize), DataError> {
        let (header, mut out) = wfdb::read_record_with_header(self.header_path(record))?;
        let name = header.record_name.clone();
        let labels = header_labels(&header.comments);
        let row = self.rows.get(&name).ok_or_else(|| DataError::Dataset {
            path: self.root.join(CSV_FILE),
            message: format!("record {name} has no row in {CSV_FILE}"),
        })?;
        let mut diagnoses = labels.diagnoses;
        let known: Vec<String> = diagnoses
            .iter()
            .map(|d| comparable(d.strip_prefix("Rhythm:").unwrap_or(d)))
            .collect();
        for (column, entries) in &row.columns {
            if matches!(column.as_str(), "Sex" | "Age") {
                continue;
            }
            for entry in entries {
                if !known.contains(&comparable(entry)) {
                    diagnoses.push(entry.clone());
                }
            }
        }
        let csv_age = row.first("Age").and_then(|a| {
            if a.trim() == ">89" {
                Some(AGE_ABOVE_89)
            } else {
                a.trim().parse().ok()
            }
        });
        let mut waves: Vec<(String, Vec<Wave>)> = Vec::new();
        let mut incomplete = 0;
        for (lead, file) in self.annotation_files(&header) {
            let delineation = annotation::read_waves(&file)?;
            incomplete += delineation.incomplete;
            waves.push((lead, delineation.waves));
        }
        out.id = format!("ludb/{name}");
        out.source = SourceKind::Ludb;
        out.meta.patient_id = Some(out.id.clone());
        out.meta.age = labels.age.or(csv_age);
        out.meta.sex = labels.sex.or_else(|| row.first("Sex").map(str::to_string));
        out.meta.rhythm = labels
            .rhythm
            .or_else(|| row.first("Rhythms").map(str::to_lowercase));
        out.meta.diagnoses = diagnoses;
        out.waves = waves;
        Ok((out, incomplete))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_comments_give_labels() {
        let comments: Vec<String> = [
            "<age>: 51",
            "<sex>: F",
            "<diagnoses>:",
            "Rhythm: Sinus bradycardia.",
            "Electric axis of the heart: left axis deviation. ",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let labels = header_labels(&comments);
        assert_eq!(labels.age, Some(51.0));
        assert_eq!(labels.sex.as_deref(), Some("F"));
        assert_eq!(labels.rhythm.as_deref(), Some("sinus bradycardia"));
        assert_eq!(
            labels.diagnoses,
            vec![
                "Rhythm: Sinus bradycardia",
                "Electric axis of the heart: left axis deviation"
            ]
        );
    }
}
