//! PTB-XL: `ptbxl_database.csv` rows, `scp_statements.csv`, and the WFDB records they name.
//!
//! Each database row becomes a [`Record`] whose `meta` carries the report, the SCP codes with
//! their likelihoods, the diagnostic superclasses (NORM/MI/STTC/CD/HYP: every code flagged
//! `diagnostic` in the statements contributes its `diagnostic_class`, whatever its likelihood,
//! as PTB-XL's own example code does), the statement descriptions as diagnoses, the rhythm
//! statement (highest likelihood when several), `strat_fold`, patient, age and sex.
//!
//! Rows whose record file is absent at the requested rate are skipped and counted in a
//! [`LoadReport`] ([`load_with_report`]); [`load`] drops that report. A row whose header exists
//! but whose record is broken is an error, never a skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{DataError, read_file};
use crate::record::{Record, RecordMeta, SourceKind, Superclass};
use crate::wfdb;

/// File name of the database table inside a PTB-XL root.
pub const DATABASE_FILE: &str = "ptbxl_database.csv";
/// File name of the statement table inside a PTB-XL root.
pub const STATEMENTS_FILE: &str = "scp_statements.csv";

/// PTB-XL ages above 89 are anonymised to this value (PTB-XL 1.0.2 and later).
const ANONYMISED_AGE: f32 = 300.0;
/// What an anonymised age becomes in [`RecordMeta::age`]: the lower bound of "older than 89".
const ANONYMISED_AGE_LOWER_BOUND: f32 = 90.0;

/// Which of PTB-XL's two sampling rates to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PtbxlRate {
    /// `filename_lr`, 100 Hz.
    Hz100,
    /// `filename_hr`, 500 Hz.
    Hz500,
}

impl PtbxlRate {
    pub fn hz(self) -> f64 {
        match self {
            Self::Hz100 => 100.0,
            Self::Hz500 => 500.0,
        }
    }
}

/// One row of `ptbxl_database.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct PtbxlRow {
    /// 1-based line of the CSV where the row starts.
    pub line: u64,
    pub ecg_id: u32,
    /// Patient id as an integer string (`1900.0` in the CSV becomes `1900`).
    pub patient_id: Option<String>,
    /// Age as written; 300 stands for "older than 89".
    pub age: Option<f32>,
    /// `M` or `F` (the CSV codes male as 0, female as 1).
    pub sex: Option<String>,
    pub height_cm: Option<f32>,
    pub weight_kg: Option<f32>,
    pub recording_date: Option<String>,
    /// The free-text report exactly as in the CSV (German or English, not trimmed).
    pub report: String,
    /// SCP codes with likelihoods, in the order of the CSV's dictionary.
    pub scp_codes: Vec<(String, f32)>,
    pub heart_axis: Option<String>,
    pub strat_fold: Option<u8>,
    pub filename_lr: String,
    pub filename_hr: String,
    /// Every column of the row as written, by column name.
    pub columns: BTreeMap<String, String>,
}

impl PtbxlRow {
    /// The record path (without extension, relative to the PTB-XL root) at a rate.
    pub fn filename(&self, rate: PtbxlRate) -> &str {
        match rate {
            PtbxlRate::Hz100 => &self.filename_lr,
            PtbxlRate::Hz500 => &self.filename_hr,
        }
    }
}

/// One row of `scp_statements.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScpStatement {
    pub code: String,
    pub description: String,
    pub diagnostic: bool,
    pub form: bool,
    pub rhythm: bool,
    pub diagnostic_class: Option<Superclass>,
    pub diagnostic_subclass: Option<String>,
    pub category: String,
}

/// What a load did besides returning records.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LoadReport {
    pub loaded: usize,
    /// `ecg_id`s of rows whose header file does not exist at the requested rate.
    pub skipped_missing: Vec<u32>,
}

/// Loads every row whose record exists at `rate`. See [`load_with_report`] for the skip count.
pub fn load(root: &Path, rate: PtbxlRate) -> Result<Vec<Record>, DataError> {
    load_with_report(root, rate).map(|(records, _)| records)
}

/// Loads every row whose record exists at `rate`, reporting the rows skipped for lack of a file.
pub fn load_with_report(
    root: &Path,
    rate: PtbxlRate,
) -> Result<(Vec<Record>, LoadReport), DataError> {
    let dataset = Dataset::open(root)?;
    let mut records = Vec::new();
    let mut report = LoadReport::default();
    for row in &dataset.rows {
        let header = dataset.header_path(row, rate);
        if !header.is_file() {
            report.skipped_missing.push(row.ecg_id);
            continue;
        }
        records.push(dataset.load_row(row, rate)?);
    }
    report.loaded = records.len();
    Ok((records, report))
}

/// Reads `ptbxl_database.csv` under `root`.
pub fn read_database(root: &Path) -> Result<Vec<PtbxlRow>, DataError> {
    let path = root.join(DATABASE_FILE);
    let table = Table::read(&path)?;
    let column = |name: &'static str| table.column(name);
    let ecg_id = column("ecg_id")?;
    let patient_id = column("patient_id")?;
    let age = column("age")?;
    let sex = column("sex")?;
    let height = column("height")?;
    let weight = column("weight")?;
    let recording_date = column("recording_date")?;
    let report = column("report")?;
    let scp_codes = column("scp_codes")?;
    let heart_axis = column("heart_axis")?;
    let strat_fold = column("strat_fold")?;
    let filename_lr = column("filename_lr")?;
    let filename_hr = column("filename_hr")?;
    let mut rows = Vec::with_capacity(table.rows.len());
    for (line, fields) in &table.rows {
        let line = *line;
        let get = |c: usize| fields.get(c).map_or("", String::as_str);
        let bad = |c: usize, message: String| DataError::Csv {
            path: path.clone(),
            line,
            column: table.names[c].clone(),
            message,
        };
        let optional_number = |c: usize| -> Result<Option<f32>, DataError> {
            let text = get(c).trim();
            if text.is_empty() {
                return Ok(None);
            }
            text.parse::<f32>()
                .map(Some)
                .map_err(|_| bad(c, format!("expected a number or nothing, found `{text}`")))
        };
        let id_text = get(ecg_id).trim();
        let id = id_text
            .parse::<u32>()
            .map_err(|_| bad(ecg_id, format!("expected an integer id, found `{id_text}`")))?;
        let patient = optional_number(patient_id)?.map(|p| {
            if p.fract() == 0.0 {
                format!("{}", p as i64)
            } else {
                get(patient_id).trim().to_string()
            }
        });
        let sex_value = match get(sex).trim() {
            "" => None,
            "0" | "0.0" => Some("M".to_string()),
            "1" | "1.0" => Some("F".to_string()),
            other => {
                return Err(bad(
                    sex,
                    format!("expected 0 (male) or 1 (female), found `{other}`"),
                ));
            }
        };
        let fold = optional_number(strat_fold)?
            .map(|f| {
                if f.fract() == 0.0 && (1.0..=10.0).contains(&f) {
                    Ok(f as u8)
                } else {
                    Err(bad(
                        strat_fold,
                        format!("expected a fold 1-10, found `{f}`"),
                    ))
                }
            })
            .transpose()?;
        let codes = parse_python_dict(get(scp_codes)).map_err(|message| bad(scp_codes, message))?;
        let non_empty = |c: usize| Some(get(c).trim().to_string()).filter(|s| !s.is_empty());
        rows.push(PtbxlRow {
            line,
            ecg_id: id,
            patient_id: patient,
            age: optional_number(age)?,
            sex: sex_value,
            height_cm: optional_number(height)?,
            weight_kg: optional_number(weight)?,
            recording_date: non_empty(recording_date),
            report: get(report).to_string(),
            scp_codes: codes,
            heart_axis: non_empty(heart_axis),
            strat_fold: fold,
            filename_lr: get(filename_lr).trim().to_string(),
            filename_hr: get(filename_hr).trim().to_string(),
            columns: table
                .names
                .iter()
                .cloned()
                .zip(fields.iter().cloned())
                .collect(),
        });
    }
    Ok(rows)
}

/// Reads `scp_statements.csv` under `root`, keyed by SCP code.
pub fn read_statements(root: &Path) -> Result<BTreeMap<String, ScpStatement>, DataError> {
    let path = root.join(STATEMENTS_FILE);
    let table = Table::read(&path)?;
    // The code column is the unnamed index column pandas wrote first.
    let code = 0;
    let description = table.column("description")?;
    let diagnostic = table.column("diagnostic")?;
    let form = table.column("form")?;
    let rhythm = table.column("rhythm")?;
    let class = table.column("diagnostic_class")?;
    let subclass = table.column("diagnostic_subclass")?;
    let category = table.column("Statement Category")?;
    let mut statements = BTreeMap::new();
    for (line, fields) in &table.rows {
        let get = |c: usize| fields.get(c).map_or("", |s| s.trim());
        let bad = |c: usize, message: String| DataError::Csv {
            path: path.clone(),
            line: *line,
            column: table.names[c].clone(),
            message,
        };
        let flag = |c: usize| match get(c) {
            "" | "0" | "0.0" => Ok(false),
            "1" | "1.0" => Ok(true),
            other => Err(bad(c, format!("expected 1.0 or nothing, found `{other}`"))),
        };
        let diagnostic_class = match get(class) {
            "" => None,
            text => Some(parse_superclass(text).ok_or_else(|| {
                bad(
                    class,
                    format!("expected one of NORM, MI, STTC, CD, HYP, found `{text}`"),
                )
            })?),
        };
        let statement = ScpStatement {
            code: get(code).to_string(),
            description: get(description).to_string(),
            diagnostic: flag(diagnostic)?,
            form: flag(form)?,
            rhythm: flag(rhythm)?,
            diagnostic_class,
            diagnostic_subclass: Some(get(subclass).to_string()).filter(|s| !s.is_empty()),
            category: get(category).to_string(),
        };
        if statement.code.is_empty() {
            return Err(bad(code, "empty SCP code".to_string()));
        }
        statements.insert(statement.code.clone(), statement);
    }
    Ok(statements)
}

fn parse_superclass(text: &str) -> Option<Superclass> {
    Some(match text {
        "NORM" => Superclass::NORM,
        "MI" => Superclass::MI,
        "STTC" => Superclass::STTC,
        "CD" => Superclass::CD,
        "HYP" => Superclass::HYP,
        _ => return None,
    })
}

/// Parses a Python dict literal mapping strings to numbers, e.g. `{'NORM': 100.0, 'SR': 0.0}`,
/// keeping the written order.
pub fn parse_python_dict(text: &str) -> Result<Vec<(String, f32)>, String> {
    let mut parser = DictParser {
        chars: text.char_indices().peekable(),
        text,
    };
    parser.parse()
}

struct DictParser<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    text: &'a str,
}

impl DictParser<'_> {
    fn skip_space(&mut self) {
        while self.chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    }

    fn position(&mut self) -> usize {
        self.chars.peek().map_or(self.text.len(), |&(i, _)| i)
    }

    fn expect(&mut self, wanted: char) -> Result<(), String> {
        self.skip_space();
        let at = self.position();
        match self.chars.next() {
            Some((_, c)) if c == wanted => Ok(()),
            Some((_, c)) => Err(format!(
                "dict literal: expected `{wanted}` at character {at}, found `{c}` in `{}`",
                self.text
            )),
            None => Err(format!(
                "dict literal: expected `{wanted}` at character {at}, found the end of `{}`",
                self.text
            )),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.skip_space();
        let at = self.position();
        let quote = match self.chars.next() {
            Some((_, q @ ('\'' | '"'))) => q,
            _ => {
                return Err(format!(
                    "dict literal: expected a quoted key at character {at} in `{}`",
                    self.text
                ));
            }
        };
        let mut out = String::new();
        loop {
            match self.chars.next() {
                Some((_, '\\')) => match self.chars.next() {
                    Some((_, c)) => out.push(c),
                    None => break,
                },
                Some((_, c)) if c == quote => return Ok(out),
                Some((_, c)) => out.push(c),
                None => break,
            }
        }
        Err(format!(
            "dict literal: unterminated string starting at character {at} in `{}`",
            self.text
        ))
    }

    fn number(&mut self) -> Result<f32, String> {
        self.skip_space();
        let start = self.position();
        while self
            .chars
            .next_if(|(_, c)| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
            .is_some()
        {}
        let end = self.position();
        let literal = &self.text[start..end];
        literal.parse::<f32>().map_err(|_| {
            format!(
                "dict literal: expected a number at character {start}, found `{literal}` in `{}`",
                self.text
            )
        })
    }

    fn parse(&mut self) -> Result<Vec<(String, f32)>, String> {
        self.expect('{')?;
        let mut entries = Vec::new();
        self.skip_space();
        if self.chars.next_if(|&(_, c)| c == '}').is_none() {
            loop {
                let key = self.string()?;
                self.expect(':')?;
                let value = self.number()?;
                entries.push((key, value));
                self.skip_space();
                match self.chars.next() {
                    Some((_, ',')) => {
                        self.skip_space();
                        // Python allows a trailing comma before the closing brace.
                        if self.chars.next_if(|&(_, c)| c == '}').is_some() {
                            break;
                        }
                    }
                    Some((_, '}')) => break,
                    _ => {
                        return Err(format!(
                            "dict literal: expected `,` or `}}` after entry {} in `{}`",
                            entries.len(),
                            self.text
                        ));
                    }
                }
            }
        }
        self.skip_space();
        if let Some((at, _)) = self.chars.next() {
            return Err(format!(
                "dict literal: unexpected text after the closing brace at character {at} in `{}`",
                self.text
            ));
        }
        Ok(entries)
    }
}

/// A CSV file read whole: column names and each row with the line it starts on.
struct Table {
    path: PathBuf,
    names: Vec<String>,
    rows: Vec<(u64, Vec<String>)>,
}

impl Table {
    fn read(path: &Path) -> Result<Self, DataError> {
        let bytes = read_file(path)?;
        let csv_error = |e: csv::Error| {
            let line = e.position().map_or(0, csv::Position::line);
            DataError::Csv {
                path: path.to_path_buf(),
                line,
                column: String::new(),
                message: e.to_string(),
            }
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(bytes.as_slice());
        let names = reader
            .headers()
            .map_err(csv_error)?
            .iter()
            .map(str::to_string)
            .collect();
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.map_err(csv_error)?;
            let line = record.position().map_or(0, csv::Position::line);
            rows.push((line, record.iter().map(str::to_string).collect()));
        }
        Ok(Table {
            path: path.to_path_buf(),
            names,
            rows,
        })
    }

    fn column(&self, name: &str) -> Result<usize, DataError> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| DataError::Dataset {
                path: self.path.clone(),
                message: format!("missing column `{name}`"),
            })
    }
}

/// An opened PTB-XL root: its rows and statements, ready to load records one at a time.
#[derive(Debug, Clone)]
pub(crate) struct Dataset {
    pub root: PathBuf,
    pub rows: Vec<PtbxlRow>,
    pub statements: BTreeMap<String, ScpStatement>,
}

impl Dataset {
    pub fn open(root: &Path) -> Result<Self, DataError> {
        let mut rows = read_database(root)?;
        rows.sort_by_key(|r| r.ecg_id);
        Ok(Dataset {
            root: root.to_path_buf(),
            rows,
            statements: read_statements(root)?,
        })
    }

    pub fn header_path(&self, row: &PtbxlRow, rate: PtbxlRate) -> PathBuf {
        wfdb::header_path(&self.root.join(row.filename(rate)))
    }

    /// Reads one row's record and fills its labels.
    pub fn load_row(&self, row: &PtbxlRow, rate: PtbxlRate) -> Result<Record, DataError> {
        let header_path = self.header_path(row, rate);
        let (header, mut record) = wfdb::read_record_with_header(&header_path)?;
        if (header.fs - rate.hz()).abs() > 1e-9 {
            return Err(DataError::Dataset {
                path: header_path,
                message: format!(
                    "ecg_id {}: header sampling frequency {} Hz, expected {} Hz for this column",
                    row.ecg_id,
                    header.fs,
                    rate.hz()
                ),
            });
        }
        let stem = Path::new(row.filename(rate))
            .file_name()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        record.id = format!("ptbxl/{stem}");
        record.source = SourceKind::Ptbxl;
        record.meta = self.meta(row)?;
        Ok(record)
    }

    fn meta(&self, row: &PtbxlRow) -> Result<RecordMeta, DataError> {
        let mut superclasses = Vec::new();
        let mut diagnoses = Vec::new();
        let mut rhythm: Option<(&ScpStatement, f32)> = None;
        for (code, likelihood) in &row.scp_codes {
            let statement = self.statements.get(code).ok_or_else(|| DataError::Csv {
                path: self.root.join(DATABASE_FILE),
                line: row.line,
                column: "scp_codes".to_string(),
                message: format!("code `{code}` is not in {STATEMENTS_FILE}"),
            })?;
            if statement.diagnostic
                && let Some(class) = statement.diagnostic_class
                && !superclasses.contains(&class)
            {
                superclasses.push(class);
            }
            if statement.rhythm && rhythm.is_none_or(|(_, best)| *likelihood > best) {
                rhythm = Some((statement, *likelihood));
            }
            diagnoses.push(statement.description.clone());
        }
        superclasses.sort();
        let age = row.age.map(|a| {
            if a == ANONYMISED_AGE {
                ANONYMISED_AGE_LOWER_BOUND
            } else {
                a
            }
        });
        Ok(RecordMeta {
            patient_id: row.patient_id.clone(),
            age,
            sex: row.sex.clone(),
            report: Some(row.report.clone()),
            diagnoses,
            scp_codes: row.scp_codes.clone(),
            superclasses,
            fold: row.strat_fold,
            rhythm: rhythm.map(|(s, _)| s.description.clone()),
            ..RecordMeta::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_dict_literals_parse() {
        let check = |text: &str, expected: &[(&str, f32)]| {
            let parsed = parse_python_dict(text).unwrap();
            let expected: Vec<(String, f32)> =
                expected.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            assert_eq!(parsed, expected, "{text}");
        };
        check(
            "{'NORM': 100.0, 'SR': 0.0}",
            &[("NORM", 100.0), ("SR", 0.0)],
        );
        check("{}", &[]);
        check(
            "  { \"A,B\" : 1e2 ,'x\\'y':-5, }",
            &[("A,B", 100.0), ("x'y", -5.0)],
        );
        for bad in [
            "",
            "{'A' 1}",
            "{'A': }",
            "{'A': 1",
            "{A: 1}",
            "{'A': 1} x",
            "{'A: 1}",
        ] {
            assert!(parse_python_dict(bad).is_err(), "{bad:?} should fail");
        }
    }
}
