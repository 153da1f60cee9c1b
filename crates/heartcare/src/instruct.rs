//! Heartcare instruction items: the item format and its reader/writer, and the builder that turns
//! labelled records into closed-QA, open-QA, comparison-QA, report-generation, signal-prediction
//! and captioning items with patient-level splits.
//!
//! The item format is Heartcare-400K's: `type`, `question`, `answer`, `filename` (list of ECGs),
//! `label` (`"signal"` / `"img"` per ECG). The builder adds optional fields (`id`, `dimension`,
//! `options`, `correct_option`, `record_ids`, `patient_ids`, `split`, `prediction`); readers
//! ignore fields they do not know, so a user's own Heartcare file (a JSON array, or JSONL) loads
//! through the same [`read_jsonl`]. `type` is `<Dimension><Task>` as in Heartcare
//! ("DiagnosisClosedQA", "WaveformOpenQA", "RhythmComparisonQA", "ReportGeneration",
//! "SignalPrediction", plus "Caption" for the warm-up set).
//!
//! Answers are grounded in what the record carries: source reports (PTB-XL's German/English
//! text kept verbatim), diagnosis statements, SCP superclasses, rhythm labels, and intervals —
//! the source's or the simulator's true values, else measured from wave annotations (LUDB).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use beatlab_ecg::{Record, Superclass, WaveKind};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::metrics::{ChoiceOption, format_options, parse_options};

// ---------------------------------------------------------------------------------------------
// The item format

/// What an item asks for. Its name ([`Task::name`]: `closed_qa`, `report`, ...) is the one
/// spelling specs (`[[stage]] tasks`), metric keys (`eval/closed_qa/acc`) and serialised values
/// use; [`Task::type_suffix`] is the Heartcare item format's own (`DiagnosisClosedQA`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Task {
    #[serde(rename = "closed_qa")]
    ClosedQa,
    #[serde(rename = "open_qa")]
    OpenQa,
    #[serde(rename = "comparison_qa")]
    ComparisonQa,
    #[serde(rename = "report")]
    ReportGeneration,
    #[serde(rename = "prediction")]
    SignalPrediction,
    /// GEM's grounded interpretation: findings with per-lead measured evidence.
    #[serde(rename = "grounded")]
    Grounded,
    /// anyECG-chat's abnormal-segment localization ("Duration: 1.9s-3.1s").
    #[serde(rename = "localization")]
    Localization,
    /// anyECG-chat's questions over several ECGs (k >= 2).
    #[serde(rename = "multi_ecg")]
    MultiEcg,
    #[serde(rename = "caption")]
    Caption,
}

impl Task {
    /// Every task, the captioning set last.
    pub const ALL: [Task; 9] = [
        Task::ClosedQa,
        Task::OpenQa,
        Task::ComparisonQa,
        Task::ReportGeneration,
        Task::SignalPrediction,
        Task::Grounded,
        Task::Localization,
        Task::MultiEcg,
        Task::Caption,
    ];

    /// Every task's name, in [`Task::ALL`]'s order.
    pub const NAMES: [&'static str; 9] = [
        "closed_qa",
        "open_qa",
        "comparison_qa",
        "report",
        "prediction",
        "grounded",
        "localization",
        "multi_ecg",
        "caption",
    ];

    /// The task's name in specs, metric keys and files.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The suffix used in Heartcare `type` strings.
    pub fn type_suffix(self) -> &'static str {
        match self {
            Task::ClosedQa => "ClosedQA",
            Task::OpenQa => "OpenQA",
            Task::ComparisonQa => "ComparisonQA",
            Task::ReportGeneration => "ReportGeneration",
            Task::SignalPrediction => "SignalPrediction",
            Task::Grounded => "GroundedInterpretation",
            Task::Localization => "Localization",
            Task::MultiEcg => "MultiECGQA",
            Task::Caption => "Caption",
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A task name that is none of [`Task::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task `{0}`: expected one of {names}", names = Task::NAMES.join(", "))]
pub struct UnknownTask(pub String);

impl std::str::FromStr for Task {
    type Err = UnknownTask;

    fn from_str(s: &str) -> Result<Self, UnknownTask> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownTask(s.to_string()))
    }
}

/// The question dimensions of Heartcare-Bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    Diagnosis,
    Waveform,
    Rhythm,
    /// Age, sex, axis and other facts about the patient or the recording.
    Misc,
}

impl Dimension {
    pub const ALL: [Dimension; 4] = [
        Dimension::Diagnosis,
        Dimension::Waveform,
        Dimension::Rhythm,
        Dimension::Misc,
    ];

    /// The prefix used in Heartcare `type` strings.
    pub fn type_prefix(self) -> &'static str {
        match self {
            Dimension::Diagnosis => "Diagnosis",
            Dimension::Waveform => "Waveform",
            Dimension::Rhythm => "Rhythm",
            Dimension::Misc => "Misc",
        }
    }
}

/// How one ECG enters the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Modality {
    #[serde(rename = "signal")]
    Signal,
    #[serde(rename = "img", alias = "image")]
    Image,
}

impl Modality {
    fn as_str(self) -> &'static str {
        match self {
            Modality::Signal => "signal",
            Modality::Image => "img",
        }
    }
}

/// Patient-level data split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    #[serde(alias = "val", alias = "valid", alias = "dev")]
    Validation,
    Test,
}

/// The part of a record a signal-prediction item shows and the part it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PredictionWindow {
    /// Start of the input window in the record, seconds.
    pub input_start_s: f32,
    /// Length of the input window, seconds (the paper's 1000 samples at 250 Hz = 4 s).
    pub input_s: f32,
    /// Length of the predicted continuation, seconds (the paper's 500 samples = 2 s).
    pub horizon_s: f32,
}

impl Default for PredictionWindow {
    fn default() -> Self {
        Self {
            input_start_s: 0.0,
            input_s: 4.0,
            horizon_s: 2.0,
        }
    }
}

/// One Heartcare item. The first five fields are the Heartcare format; the rest are optional.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    /// `<Dimension><Task>` (e.g. "DiagnosisClosedQA"), or whatever a user's file says.
    #[serde(rename = "type")]
    pub item_type: ItemType,
    pub question: String,
    pub answer: String,
    /// The ECGs the question is about (record ids for built items).
    pub filename: Vec<String>,
    /// How each ECG of `filename` is presented.
    pub label: Vec<Modality>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimension: Option<Dimension>,
    /// Option texts of a multiple-choice item, lettered A, B, ... in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correct_option: Option<char>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub record_ids: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub patient_ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction: Option<PredictionWindow>,
}

impl Item {
    /// The task, from the `type` string ("DiagnosisClosedQA" -> closed QA; spellings such as
    /// "closed_qa" or "close-QA" are accepted). `None` for types this crate does not know.
    pub fn task(&self) -> Option<Task> {
        self.item_type.task
    }

    /// The dimension: the explicit field, else the `type` string's prefix.
    pub fn dimension(&self) -> Option<Dimension> {
        self.dimension.or(self.item_type.dimension)
    }

    /// The options of a multiple-choice item: the `options` field, else parsed from the
    /// question's "A: ...; B: ..." text.
    pub fn choice_options(&self) -> Vec<ChoiceOption> {
        if self.options.is_empty() {
            parse_options(&self.question)
        } else {
            self.options
                .iter()
                .zip('A'..='Z')
                .map(|(text, letter)| ChoiceOption {
                    letter,
                    text: text.clone(),
                })
                .collect()
        }
    }

    /// The correct letter: the `correct_option` field, else the answer's leading "X:".
    pub fn correct_letter(&self) -> Option<char> {
        self.correct_option.or_else(|| {
            let mut chars = self.answer.trim().chars();
            match (chars.next(), chars.next()) {
                (Some(c), Some(':')) if c.is_ascii_uppercase() => Some(c),
                _ => None,
            }
        })
    }
}

/// An item's `type` string with the task and dimension read from it once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ItemType {
    text: String,
    task: Option<Task>,
    dimension: Option<Dimension>,
}

impl ItemType {
    /// Reads a `type` string ("DiagnosisClosedQA"; spellings such as "closed_qa" or "close-QA"
    /// are accepted); a type this crate does not know keeps its text with no task.
    pub fn parse(text: impl Into<String>) -> Self {
        let text = text.into();
        let (task, dimension) = parse_type(&text);
        Self {
            text,
            task,
            dimension,
        }
    }

    /// The Heartcare spelling of a task, with its dimension's prefix when it has one.
    pub fn of(dimension: Option<Dimension>, task: Task) -> Self {
        let prefix = dimension.map_or("", Dimension::type_prefix);
        Self {
            text: format!("{prefix}{}", task.type_suffix()),
            task: Some(task),
            dimension,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The task the type names; `None` for a type this crate does not know.
    pub fn task(&self) -> Option<Task> {
        self.task
    }
}

impl std::fmt::Display for ItemType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq<&str> for ItemType {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl Serialize for ItemType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

fn compact(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase()
}

fn parse_type(item_type: &str) -> (Option<Task>, Option<Dimension>) {
    let mut rest = compact(item_type);
    let mut dimension = None;
    for d in Dimension::ALL {
        let prefix = d.type_prefix().to_ascii_lowercase();
        if let Some(stripped) = rest.strip_prefix(&prefix) {
            dimension = Some(d);
            rest = stripped.to_string();
            break;
        }
    }
    let task = match rest.as_str() {
        "closedqa" | "closeqa" | "closeendedqa" | "closedendedqa" | "mcq" => Some(Task::ClosedQa),
        "openqa" | "openendedqa" => Some(Task::OpenQa),
        "comparisonqa" | "compareqa" | "comparison" => Some(Task::ComparisonQa),
        "reportgeneration" | "report" => Some(Task::ReportGeneration),
        "signalprediction" | "prediction" | "predict" => Some(Task::SignalPrediction),
        "groundedinterpretation" | "grounded" | "groundedqa" => Some(Task::Grounded),
        "localization" | "localisation" | "abnormallocalization" => Some(Task::Localization),
        "multiecgqa" | "multiecg" => Some(Task::MultiEcg),
        "caption" | "captioning" => Some(Task::Caption),
        _ => None,
    };
    (task, dimension)
}

/// Errors of reading and writing item files.
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line (JSONL) or the array (JSON) is not valid JSON.
    #[error("{path}:{line}: invalid JSON: {message}")]
    Json {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// An item is not a JSON object.
    #[error("{path}:{line}: expected an item object, found {found}")]
    NotAnObject {
        path: PathBuf,
        line: usize,
        found: &'static str,
    },
    /// A required field is absent.
    #[error("{path}:{line}: missing field `{field}`")]
    MissingField {
        path: PathBuf,
        line: usize,
        field: &'static str,
    },
    /// A field has the wrong JSON type or an invalid value.
    #[error("{path}:{line}: field `{field}`: expected {expected}, found {found}")]
    BadField {
        path: PathBuf,
        line: usize,
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    /// `filename` and `label` list different numbers of ECGs.
    #[error("{path}:{line}: `filename` has {filenames} entries but `label` has {labels}")]
    LabelCount {
        path: PathBuf,
        line: usize,
        filenames: usize,
        labels: usize,
    },
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A field-level problem, before the file and line are attached.
enum FieldProblem {
    Missing(&'static str),
    Bad {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    LabelCount(usize, usize),
}

fn bad(field: &'static str, expected: &'static str, value: &Value) -> FieldProblem {
    FieldProblem::Bad {
        field,
        expected,
        found: match value {
            Value::String(s) => format!("\"{s}\""),
            other => json_kind(other).to_string(),
        },
    }
}

fn required_string(
    object: &serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<String, FieldProblem> {
    match object.get(field) {
        None => Err(FieldProblem::Missing(field)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(bad(field, "a string", other)),
    }
}

/// A list of strings; a single string is accepted as a one-element list.
fn string_list(value: &Value, field: &'static str) -> Result<Vec<String>, FieldProblem> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(values) => values
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(bad(field, "a list of strings", other)),
            })
            .collect(),
        other => Err(bad(field, "a list of strings", other)),
    }
}

fn optional<T: serde::de::DeserializeOwned>(
    object: &serde_json::Map<String, Value>,
    field: &'static str,
    expected: &'static str,
) -> Result<Option<T>, FieldProblem> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value.clone())
            .map(Some)
            .map_err(|_| bad(field, expected, value)),
    }
}

fn item_from_value(value: &Value) -> Result<Item, FieldProblem> {
    let Value::Object(object) = value else {
        unreachable!("checked by the caller")
    };
    let item_type = ItemType::parse(required_string(object, "type")?);
    let question = required_string(object, "question")?;
    let answer = required_string(object, "answer")?;
    let filename = string_list(
        object
            .get("filename")
            .ok_or(FieldProblem::Missing("filename"))?,
        "filename",
    )?;
    let label = string_list(
        object.get("label").ok_or(FieldProblem::Missing("label"))?,
        "label",
    )?
    .into_iter()
    .map(|l| match l.to_ascii_lowercase().as_str() {
        "signal" => Ok(Modality::Signal),
        "img" | "image" => Ok(Modality::Image),
        _ => Err(FieldProblem::Bad {
            field: "label",
            expected: "\"signal\" or \"img\"",
            found: format!("\"{l}\""),
        }),
    })
    .collect::<Result<Vec<_>, _>>()?;
    if filename.len() != label.len() {
        return Err(FieldProblem::LabelCount(filename.len(), label.len()));
    }
    let options = match object.get("options") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => string_list(v, "options")?,
    };
    let list = |field: &'static str| match object.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => string_list(v, field),
    };
    Ok(Item {
        item_type,
        question,
        answer,
        filename,
        label,
        id: optional(object, "id", "a string")?,
        dimension: optional(
            object,
            "dimension",
            "one of \"diagnosis\", \"waveform\", \"rhythm\", \"misc\"",
        )?,
        options,
        correct_option: optional(object, "correct_option", "a single letter")?,
        record_ids: list("record_ids")?,
        patient_ids: list("patient_ids")?,
        split: optional(
            object,
            "split",
            "one of \"train\", \"validation\", \"test\"",
        )?,
        prediction: optional(
            object,
            "prediction",
            "an object {input_start_s, input_s, horizon_s}",
        )?,
    })
}

fn locate(path: &Path, line: usize, value: &Value) -> Result<Item, ItemError> {
    if !value.is_object() {
        return Err(ItemError::NotAnObject {
            path: path.to_path_buf(),
            line,
            found: json_kind(value),
        });
    }
    item_from_value(value).map_err(|problem| match problem {
        FieldProblem::Missing(field) => ItemError::MissingField {
            path: path.to_path_buf(),
            line,
            field,
        },
        FieldProblem::Bad {
            field,
            expected,
            found,
        } => ItemError::BadField {
            path: path.to_path_buf(),
            line,
            field,
            expected,
            found,
        },
        FieldProblem::LabelCount(filenames, labels) => ItemError::LabelCount {
            path: path.to_path_buf(),
            line,
            filenames,
            labels,
        },
    })
}

/// Parses items from text: JSON Lines (one item per line, blank lines skipped) or, when the
/// text starts with `[`, a JSON array of items (Heartcare's own files). `path` only names the
/// source in errors; line numbers are 1-based (for an array: the line where the item starts).
pub fn parse_items(text: &str, path: &Path) -> Result<Vec<Item>, ItemError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let raw: Vec<&serde_json::value::RawValue> =
            serde_json::from_str(text).map_err(|e| ItemError::Json {
                path: path.to_path_buf(),
                line: e.line(),
                message: e.to_string(),
            })?;
        let base = text.as_ptr() as usize;
        raw.iter()
            .map(|element| {
                let offset = element.get().as_ptr() as usize - base;
                let line = 1 + text[..offset].matches('\n').count();
                let value: Value =
                    serde_json::from_str(element.get()).map_err(|e| ItemError::Json {
                        path: path.to_path_buf(),
                        line,
                        message: e.to_string(),
                    })?;
                locate(path, line, &value)
            })
            .collect()
    } else {
        let mut items = Vec::new();
        for (index, line_text) in text.lines().enumerate() {
            if line_text.trim().is_empty() {
                continue;
            }
            let line = index + 1;
            let value: Value = serde_json::from_str(line_text).map_err(|e| ItemError::Json {
                path: path.to_path_buf(),
                line,
                message: e.to_string(),
            })?;
            items.push(locate(path, line, &value)?);
        }
        Ok(items)
    }
}

/// Reads an item file (JSONL, or a Heartcare JSON array).
pub fn read_jsonl(path: impl AsRef<Path>) -> Result<Vec<Item>, ItemError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ItemError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_items(&text, path)
}

/// Writes items as JSON Lines.
pub fn write_jsonl(path: impl AsRef<Path>, items: &[Item]) -> Result<(), ItemError> {
    let path = path.as_ref();
    let io = |source| ItemError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    for item in items {
        let line = serde_json::to_string(item).map_err(|e| ItemError::Json {
            path: path.to_path_buf(),
            line: 0,
            message: e.to_string(),
        })?;
        text.push_str(&line);
        text.push('\n');
    }
    beatlab_fsio::write_atomically(path, text.as_bytes()).map_err(io)
}

// ---------------------------------------------------------------------------------------------
// Facts about a record

/// What a record says about itself, normalised for question generation.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordFacts {
    pub record_id: String,
    pub patient_id: String,
    pub age: Option<f32>,
    /// "male" / "female".
    pub sex: Option<&'static str>,
    /// Human-readable diagnosis statements (source statements, else superclass names, else SCP
    /// codes), without duplicates.
    pub diagnoses: Vec<String>,
    pub superclasses: Vec<Superclass>,
    pub rhythm: Option<String>,
    pub heart_rate_bpm: Option<f32>,
    pub pr_ms: Option<f32>,
    pub qrs_ms: Option<f32>,
    pub qt_ms: Option<f32>,
    pub axis_deg: Option<f32>,
    pub report: Option<String>,
    pub fold: Option<u8>,
    pub duration_s: f64,
}

/// Long names of the PTB-XL diagnostic superclasses.
pub fn superclass_name(class: Superclass) -> &'static str {
    match class {
        Superclass::NORM => "normal ECG",
        Superclass::MI => "myocardial infarction",
        Superclass::STTC => "ST/T change",
        Superclass::CD => "conduction disturbance",
        Superclass::HYP => "hypertrophy",
    }
}

impl RecordFacts {
    pub fn from_record(record: &Record) -> Self {
        let meta = &record.meta;
        let mut diagnoses: Vec<String> = Vec::new();
        let mut push = |text: &str| {
            let text = text.trim();
            if !text.is_empty() && !diagnoses.iter().any(|d| d.eq_ignore_ascii_case(text)) {
                diagnoses.push(text.to_string());
            }
        };
        if !meta.diagnoses.is_empty() {
            meta.diagnoses.iter().for_each(|d| push(d));
        } else if !meta.superclasses.is_empty() {
            meta.superclasses
                .iter()
                .for_each(|c| push(superclass_name(*c)));
        } else {
            meta.scp_codes.iter().for_each(|(code, _)| push(code));
        }
        let measured = measure_from_waves(record);
        let sex = meta
            .sex
            .as_deref()
            .and_then(|s| match s.trim().to_ascii_uppercase().as_str() {
                "M" | "MALE" | "0" => Some("male"),
                "F" | "FEMALE" | "1" => Some("female"),
                _ => None,
            });
        let finite = |v: Option<f32>| v.filter(|x| x.is_finite());
        Self {
            record_id: record.id.clone(),
            patient_id: meta
                .patient_id
                .clone()
                .filter(|p| !p.trim().is_empty())
                .unwrap_or_else(|| record.id.clone()),
            age: finite(meta.age).filter(|a| *a >= 0.0),
            sex,
            diagnoses,
            superclasses: meta.superclasses.clone(),
            rhythm: meta
                .rhythm
                .as_deref()
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string),
            heart_rate_bpm: finite(meta.heart_rate_bpm).or(measured.heart_rate_bpm),
            pr_ms: finite(meta.pr_ms).or(measured.pr_ms),
            qrs_ms: finite(meta.qrs_ms).or(measured.qrs_ms),
            qt_ms: finite(meta.qt_ms).or(measured.qt_ms),
            axis_deg: finite(meta.axis_deg),
            report: meta
                .report
                .as_deref()
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string),
            fold: meta.fold,
            duration_s: record.duration_s(),
        }
    }

    /// Bazett-corrected QT (QT / sqrt(RR in s)).
    pub fn qtc_ms(&self) -> Option<f32> {
        let (qt, hr) = (self.qt_ms?, self.heart_rate_bpm?);
        (hr > 0.0).then(|| qt / (60.0 / hr).sqrt())
    }
}

/// Intervals measured from wave annotations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MeasuredIntervals {
    pub heart_rate_bpm: Option<f32>,
    pub pr_ms: Option<f32>,
    pub qrs_ms: Option<f32>,
    pub qt_ms: Option<f32>,
}

fn median(mut values: Vec<f32>) -> Option<f32> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f32::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// Median PR (P onset to QRS onset), QRS (onset to offset), QT (QRS onset to T offset) and
/// heart rate (from QRS peak intervals) over the beats of lead II's annotations (else the first
/// annotated lead). Waves count as one beat when the P ends before its QRS starts (within
/// 400 ms) and the T starts after the QRS ends (within 700 ms).
pub fn measure_from_waves(record: &Record) -> MeasuredIntervals {
    let Some((_, waves)) = record
        .waves
        .iter()
        .find(|(lead, w)| lead == "II" && !w.is_empty())
        .or_else(|| record.waves.iter().find(|(_, w)| !w.is_empty()))
    else {
        return MeasuredIntervals::default();
    };
    let ms = |samples: usize| (samples as f64 * 1000.0 / record.fs) as f32;
    let mut sorted = waves.clone();
    sorted.sort_by_key(|w| w.onset);
    let qrs: Vec<_> = sorted.iter().filter(|w| w.kind == WaveKind::QRS).collect();
    let (mut pr, mut qrs_d, mut qt) = (Vec::new(), Vec::new(), Vec::new());
    for q in &qrs {
        if q.offset > q.onset {
            qrs_d.push(ms(q.offset - q.onset));
        }
        if let Some(p) = sorted.iter().rev().find(|w| {
            w.kind == WaveKind::P && w.offset <= q.onset && ms(q.onset - w.onset) <= 400.0
        }) {
            pr.push(ms(q.onset - p.onset));
        }
        if let Some(t) = sorted.iter().find(|w| {
            w.kind == WaveKind::T && w.onset >= q.offset && ms(w.onset - q.offset) <= 700.0
        }) {
            qt.push(ms(t.offset - q.onset));
        }
    }
    let rr: Vec<f32> = qrs
        .windows(2)
        .filter(|w| w[1].peak > w[0].peak)
        .map(|w| ms(w[1].peak - w[0].peak))
        .collect();
    MeasuredIntervals {
        heart_rate_bpm: median(rr).filter(|rr| *rr > 0.0).map(|rr| 60_000.0 / rr),
        pr_ms: median(pr),
        qrs_ms: median(qrs_d),
        qt_ms: median(qt),
    }
}

// ---------------------------------------------------------------------------------------------
// Clinical interpretation of measurements (adult resting ECG conventions)

fn rate_category(hr: f32) -> usize {
    if hr < 60.0 {
        0
    } else if hr <= 100.0 {
        1
    } else {
        2
    }
}
const RATE_OPTIONS: [&str; 3] = [
    "Below 60 bpm (bradycardia)",
    "60-100 bpm (normal rate)",
    "Above 100 bpm (tachycardia)",
];
const RATE_MEANING: [&str; 3] = [
    "which is a bradycardia",
    "which is within the normal range",
    "which is a tachycardia",
];

fn pr_category(pr: f32) -> usize {
    if pr < 120.0 {
        0
    } else if pr <= 200.0 {
        1
    } else {
        2
    }
}
const PR_OPTIONS: [&str; 3] = [
    "Short (< 120 ms)",
    "Normal (120-200 ms)",
    "Prolonged (> 200 ms)",
];
const PR_MEANING: [&str; 3] = [
    "which is short and may indicate pre-excitation",
    "which is within normal limits",
    "which indicates first-degree AV block",
];

fn qrs_category(qrs: f32) -> usize {
    if qrs < 110.0 {
        0
    } else if qrs < 120.0 {
        1
    } else {
        2
    }
}
const QRS_OPTIONS: [&str; 3] = [
    "Narrow (< 110 ms)",
    "Borderline (110-119 ms)",
    "Wide (>= 120 ms)",
];
const QRS_MEANING: [&str; 3] = [
    "which is normal",
    "which suggests an incomplete bundle branch block or a mild intraventricular conduction delay",
    "which is wide and suggests a bundle branch block or an intraventricular conduction delay",
];

/// QTc limits: > 450 ms (men) / > 460 ms (women, or sex unknown) is prolonged, < 350 ms short.
fn qtc_category(qtc: f32, sex: Option<&str>) -> usize {
    let upper = if sex == Some("male") { 450.0 } else { 460.0 };
    if qtc < 350.0 {
        0
    } else if qtc <= upper {
        1
    } else {
        2
    }
}
const QTC_OPTIONS: [&str; 3] = ["Short", "Normal", "Prolonged"];
const QTC_MEANING: [&str; 3] = [
    "which is short",
    "which is within normal limits",
    "which is prolonged",
];

fn axis_category(axis: f32) -> usize {
    if (-30.0..=90.0).contains(&axis) {
        0
    } else if (-90.0..-30.0).contains(&axis) {
        1
    } else if axis > 90.0 && axis <= 180.0 {
        2
    } else {
        3
    }
}
const AXIS_OPTIONS: [&str; 4] = [
    "Normal axis (-30 to +90 degrees)",
    "Left axis deviation (below -30 degrees)",
    "Right axis deviation (above +90 degrees)",
    "Extreme axis deviation",
];
const AXIS_MEANING: [&str; 4] = [
    "which is a normal axis",
    "indicating left axis deviation",
    "indicating right axis deviation",
    "indicating an extreme (northwest) axis",
];

fn age_category(age: f32) -> usize {
    if age < 40.0 {
        0
    } else if age < 60.0 {
        1
    } else if age < 80.0 {
        2
    } else {
        3
    }
}
const AGE_OPTIONS: [&str; 4] = [
    "Under 40 years",
    "40-59 years",
    "60-79 years",
    "80 years or older",
];

/// PTB-XL stores ages above 89 as 300 (HIPAA); such ages print as "over 89".
fn age_is_masked(age: f32) -> bool {
    age >= 150.0
}

/// Rhythm names used as distractors when the records themselves carry too few.
const COMMON_RHYTHMS: [&str; 8] = [
    "sinus rhythm",
    "sinus bradycardia",
    "sinus tachycardia",
    "sinus arrhythmia",
    "atrial fibrillation",
    "atrial flutter",
    "junctional rhythm",
    "ventricular tachycardia",
];

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn lower_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

pub(crate) fn who(facts: &RecordFacts) -> String {
    let sex = facts.sex.map(|s| format!("{s} ")).unwrap_or_default();
    match facts.age {
        Some(age) if age_is_masked(age) => format!("a {sex}patient over 89 years old"),
        Some(age) => {
            let years = age.round() as u32;
            // "an" before 8, 11, 18, 80-89 and 800-899 ("an eighty...").
            let article = if years == 8 || years == 11 || years == 18 || (80..90).contains(&years) {
                "an"
            } else {
                "a"
            };
            format!("{article} {years}-year-old {sex}patient")
        }
        None => format!("a {sex}patient"),
    }
}

/// Generated description from labels and intervals, e.g. "Sinus rhythm, heart rate 72 bpm.
/// PR interval 160 ms, QRS duration 92 ms, QT/QTc 380/402 ms, QRS axis 45 degrees. Findings:
/// left ventricular hypertrophy." Empty when the record carries no labels at all.
pub fn describe(facts: &RecordFacts) -> String {
    let mut sentences = Vec::new();
    match (&facts.rhythm, facts.heart_rate_bpm) {
        (Some(r), Some(hr)) => {
            sentences.push(format!("{}, heart rate {:.0} bpm.", capitalise(r), hr))
        }
        (Some(r), None) => sentences.push(format!("{}.", capitalise(r))),
        (None, Some(hr)) => sentences.push(format!("Heart rate {hr:.0} bpm.")),
        (None, None) => {}
    }
    let mut measures = Vec::new();
    if let Some(pr) = facts.pr_ms {
        measures.push(format!("PR interval {pr:.0} ms"));
    }
    if let Some(qrs) = facts.qrs_ms {
        measures.push(format!("QRS duration {qrs:.0} ms"));
    }
    match (facts.qt_ms, facts.qtc_ms()) {
        (Some(qt), Some(qtc)) => measures.push(format!("QT/QTc {qt:.0}/{qtc:.0} ms")),
        (Some(qt), None) => measures.push(format!("QT interval {qt:.0} ms")),
        _ => {}
    }
    if let Some(axis) = facts.axis_deg {
        measures.push(format!("QRS axis {axis:.0} degrees"));
    }
    if !measures.is_empty() {
        sentences.push(format!("{}.", capitalise(&measures.join(", "))));
    }
    let mut notes = Vec::new();
    if let Some(pr) = facts.pr_ms
        && pr_category(pr) != 1
    {
        notes.push(format!(
            "The PR interval is {pr:.0} ms, {}.",
            PR_MEANING[pr_category(pr)]
        ));
    }
    if let Some(qrs) = facts.qrs_ms
        && qrs_category(qrs) != 0
    {
        notes.push(format!(
            "The QRS duration is {qrs:.0} ms, {}.",
            QRS_MEANING[qrs_category(qrs)]
        ));
    }
    if let Some(qtc) = facts.qtc_ms()
        && qtc_category(qtc, facts.sex) != 1
    {
        notes.push(format!(
            "The QTc is {qtc:.0} ms, {}.",
            QTC_MEANING[qtc_category(qtc, facts.sex)]
        ));
    }
    if let Some(axis) = facts.axis_deg
        && axis_category(axis) != 0
    {
        notes.push(format!(
            "The axis is {axis:.0} degrees, {}.",
            AXIS_MEANING[axis_category(axis)]
        ));
    }
    sentences.extend(notes);
    if !facts.diagnoses.is_empty() {
        sentences.push(format!("Findings: {}.", facts.diagnoses.join("; ")));
    }
    sentences.join(" ")
}

// ---------------------------------------------------------------------------------------------
// Builder configuration

/// How a single-ECG item presents its ECG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputForm {
    /// Bench^S.
    Signal,
    /// Bench^I.
    Image,
    /// Bench^C: the signal and its printed image together.
    SignalAndImage,
}

impl InputForm {
    fn labels(self) -> Vec<Modality> {
        match self {
            InputForm::Signal => vec![Modality::Signal],
            InputForm::Image => vec![Modality::Image],
            InputForm::SignalAndImage => vec![Modality::Signal, Modality::Image],
        }
    }

    fn phrase(self) -> &'static str {
        match self {
            InputForm::Signal => "ECG signal",
            InputForm::Image => "ECG image",
            InputForm::SignalAndImage => "ECG signal and its printed image",
        }
    }
}

/// How a comparison item presents its two ECGs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairForm {
    SignalSignal,
    ImageImage,
    /// One ECG as signal, the other as image (which one is drawn at random).
    SignalImage,
}

/// Patient-level split policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitConfig {
    /// Use PTB-XL `strat_fold` where known: 1-8 train, 9 validation, 10 test (the paper's
    /// split; PTB-XL's folds never separate a patient's records).
    pub use_ptbxl_folds: bool,
    /// Otherwise patients are hashed (with `seed`) into validation / test / train.
    pub validation_fraction: f64,
    pub test_fraction: f64,
    pub seed: u64,
    /// Splits decided elsewhere, by record id (e.g. the windows a signal tokenizer was trained
    /// on): a record listed here puts its patient in that split, overriding folds and hashing,
    /// so items never test on what an earlier stage trained on.
    #[serde(default)]
    pub assigned: BTreeMap<String, Split>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            use_ptbxl_folds: true,
            validation_fraction: 0.1,
            test_fraction: 0.1,
            seed: 0,
            assigned: BTreeMap::new(),
        }
    }
}

/// What the builder makes, per record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildConfig {
    /// Seeds every random choice (templates, dimensions, options, pairs): same seed, same items.
    pub seed: u64,
    pub closed_qa_per_record: usize,
    pub open_qa_per_record: usize,
    /// Comparison items per record (the record is the first ECG of the pair).
    pub comparison_per_record: usize,
    pub reports_per_record: usize,
    pub predictions_per_record: usize,
    /// Question dimensions to draw from.
    pub dimensions: Vec<Dimension>,
    /// Presentations of single-ECG items, drawn per item.
    pub inputs: Vec<InputForm>,
    /// Presentations of comparison items, drawn per item.
    pub pair_inputs: Vec<PairForm>,
    /// Chance that a comparison pairs the record with the same patient's next record (when the
    /// patient has one); otherwise the partner is an unrelated patient of the same split.
    pub consecutive_fraction: f64,
    /// Options per closed question (fewer when too few distinct labels exist; at least 2).
    pub num_options: usize,
    /// Report answers use the source's own report text when there is one.
    pub prefer_source_report: bool,
    pub prediction: PredictionWindow,
    pub split: SplitConfig,
    /// GEM-style grounded interpretations per record (see [`crate::peers`]).
    #[serde(default)]
    pub grounded_per_record: usize,
    /// What grounded answers cite.
    #[serde(default)]
    pub grounding: crate::peers::GroundingSource,
    /// anyECG-chat localization items per record with known abnormal segments.
    #[serde(default)]
    pub localization_per_record: usize,
    /// anyECG-chat multi-ECG questions per record.
    #[serde(default)]
    pub multi_ecg_per_record: usize,
    /// Most ECGs in a multi-ECG question (2..=8; anyECG-chat's k up to 4).
    #[serde(default = "default_multi_ecg_max")]
    pub multi_ecg_max: usize,
}

fn default_multi_ecg_max() -> usize {
    4
}

impl Default for BuildConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            closed_qa_per_record: 2,
            open_qa_per_record: 2,
            comparison_per_record: 1,
            reports_per_record: 1,
            predictions_per_record: 1,
            dimensions: Dimension::ALL.to_vec(),
            inputs: vec![InputForm::Signal, InputForm::Image],
            pair_inputs: vec![
                PairForm::SignalSignal,
                PairForm::ImageImage,
                PairForm::SignalImage,
            ],
            consecutive_fraction: 0.5,
            num_options: 4,
            prefer_source_report: true,
            prediction: PredictionWindow::default(),
            split: SplitConfig::default(),
            grounded_per_record: 0,
            grounding: crate::peers::GroundingSource::default(),
            localization_per_record: 0,
            multi_ecg_per_record: 0,
            multi_ecg_max: default_multi_ecg_max(),
        }
    }
}

/// Errors of the instruction builder's configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A configuration field is out of range.
    #[error("build config: field `{field}` {reason}")]
    BadConfig { field: &'static str, reason: String },
    /// Two records share an id, which would make items ambiguous.
    #[error("record id `{0}` appears more than once")]
    DuplicateRecord(String),
}

impl BuildConfig {
    fn validate(&self) -> Result<(), BuildError> {
        let bad = |field, reason: &str| {
            Err(BuildError::BadConfig {
                field,
                reason: reason.to_string(),
            })
        };
        if self.num_options < 2 || self.num_options > 26 {
            return bad("num_options", "must be in 2..=26");
        }
        if self.dimensions.is_empty() {
            return bad("dimensions", "must name at least one dimension");
        }
        if self.inputs.is_empty() {
            return bad("inputs", "must name at least one input form");
        }
        if self.pair_inputs.is_empty() && self.comparison_per_record > 0 {
            return bad("pair_inputs", "must name at least one pair form");
        }
        if !(2..=8).contains(&self.multi_ecg_max) {
            return bad("multi_ecg_max", "must be in 2..=8");
        }
        if !(0.0..=1.0).contains(&self.consecutive_fraction) {
            return bad("consecutive_fraction", "must be in [0, 1]");
        }
        let s = &self.split;
        if !(s.validation_fraction >= 0.0
            && s.test_fraction >= 0.0
            && s.validation_fraction + s.test_fraction <= 1.0)
        {
            return bad(
                "split",
                "validation_fraction and test_fraction must be >= 0 and sum to at most 1",
            );
        }
        let p = &self.prediction;
        if !(p.input_start_s >= 0.0 && p.input_s > 0.0 && p.horizon_s > 0.0) {
            return bad(
                "prediction",
                "needs input_start_s >= 0 and positive input_s and horizon_s",
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Splits

/// FNV-1a over the seed and a string: a stable hash (unlike `std`'s, which may change between
/// releases), so splits and per-record streams never move with the toolchain.
pub(crate) fn stable_hash(seed: u64, text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed.to_le_bytes().iter().chain(text.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (splitmix64) so nearby ids spread over [0, 1).
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The split of every patient: decided once per patient, so no patient is in two splits.
pub fn assign_splits(records: &[Record], config: &SplitConfig) -> BTreeMap<String, Split> {
    let mut folds: BTreeMap<String, Option<u8>> = BTreeMap::new();
    let mut fixed: BTreeMap<String, Split> = BTreeMap::new();
    for record in records {
        let facts_patient = RecordFacts::from_record(record).patient_id;
        if let Some(split) = config.assigned.get(&record.id) {
            fixed.insert(facts_patient.clone(), *split);
        }
        let entry = folds.entry(facts_patient).or_insert(None);
        if let Some(fold) = record.meta.fold {
            // A patient's smallest fold decides, should sources ever disagree.
            *entry = Some(entry.map_or(fold, |f| f.min(fold)));
        }
    }
    folds
        .into_iter()
        .map(|(patient, fold)| {
            if let Some(split) = fixed.get(&patient) {
                return (patient, *split);
            }
            let split = match fold {
                Some(fold) if config.use_ptbxl_folds => match fold {
                    10 => Split::Test,
                    9 => Split::Validation,
                    _ => Split::Train,
                },
                _ => {
                    let u = (stable_hash(config.seed, &patient) >> 11) as f64 / (1u64 << 53) as f64;
                    if u < config.test_fraction {
                        Split::Test
                    } else if u < config.test_fraction + config.validation_fraction {
                        Split::Validation
                    } else {
                        Split::Train
                    }
                }
            };
            (patient, split)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The builder

/// A question before it is phrased for a modality: a stem, an answer, and options if closed.
struct Draft {
    dimension: Dimension,
    stem: String,
    answer: String,
    /// Option texts and the index of the correct one.
    options: Option<(Vec<String>, usize)>,
    /// A grounding sentence appended after "X: text" in closed answers.
    evidence: Option<String>,
}

impl Draft {
    /// A multiple-choice draft (its answer is filled from the options).
    fn choice(
        dimension: Dimension,
        stem: &str,
        options: Option<(Vec<String>, usize)>,
        evidence: Option<String>,
    ) -> Self {
        Draft {
            dimension,
            stem: stem.into(),
            answer: String::new(),
            options,
            evidence,
        }
    }

    /// A free-answer draft.
    fn open(dimension: Dimension, stem: &str, answer: String) -> Self {
        Draft {
            dimension,
            stem: stem.into(),
            answer,
            options: None,
            evidence: None,
        }
    }
}

/// Label vocabularies over all records, for distractors.
struct Pools {
    diagnoses: Vec<String>,
    rhythms: Vec<String>,
}

impl Pools {
    fn new(facts: &[RecordFacts]) -> Self {
        let mut diagnoses = BTreeSet::new();
        let mut rhythms = BTreeSet::new();
        for f in facts {
            diagnoses.extend(f.diagnoses.iter().cloned());
            rhythms.extend(f.rhythm.iter().cloned());
        }
        rhythms.extend(COMMON_RHYTHMS.iter().map(|r| r.to_string()));
        Self {
            diagnoses: diagnoses.into_iter().collect(),
            rhythms: rhythms.into_iter().collect(),
        }
    }
}

const INTROS: [&str; 5] = [
    "Based on the {m} of {who}, ",
    "Looking at this {m} from {who}, ",
    "Considering the {m} of {who}, ",
    "For the {m} recorded from {who}, ",
    "Given the {m} of {who}, ",
];

fn intro(rng: &mut ChaCha8Rng, form: InputForm, facts: &RecordFacts) -> String {
    INTROS
        .choose(rng)
        .expect("non-empty")
        .replace("{m}", form.phrase())
        .replace("{who}", &who(facts))
}

fn pick<'a>(rng: &mut ChaCha8Rng, texts: &[&'a str]) -> &'a str {
    texts.choose(rng).expect("templates are non-empty")
}

/// Options: the correct text plus up to `n - 1` distractors drawn from `pool` minus `exclude`,
/// shuffled. `None` when not even one distractor exists.
fn make_options(
    rng: &mut ChaCha8Rng,
    correct: &str,
    pool: &[String],
    exclude: &[String],
    n: usize,
) -> Option<(Vec<String>, usize)> {
    let mut candidates: Vec<&String> = pool
        .iter()
        .filter(|p| {
            !p.eq_ignore_ascii_case(correct) && !exclude.iter().any(|e| e.eq_ignore_ascii_case(p))
        })
        .collect();
    if candidates.is_empty() {
        return None;
    }
    candidates.shuffle(rng);
    let mut options: Vec<String> = candidates
        .into_iter()
        .take(n - 1)
        .map(|c| capitalise(c))
        .collect();
    options.push(capitalise(correct));
    options.shuffle(rng);
    let index = options
        .iter()
        .position(|o| o.eq_ignore_ascii_case(correct))
        .expect("correct option was inserted");
    Some((options, index))
}

/// A fixed categorical scale as options (all categories, in their natural order).
fn scale_options(options: &[&str], correct: usize) -> Option<(Vec<String>, usize)> {
    Some((options.iter().map(|s| s.to_string()).collect(), correct))
}

fn closed_drafts(rng: &mut ChaCha8Rng, f: &RecordFacts, pools: &Pools, n: usize) -> Vec<Draft> {
    let mut drafts = closed_finding_drafts(rng, f, pools, n);
    for scale in &INTERVAL_SCALES {
        drafts.extend(scale_draft(rng, f, scale));
    }
    drafts.extend(closed_patient_drafts(rng, f));
    drafts
}

/// Closed questions on the diagnosis, the rhythm and the rate.
fn closed_finding_drafts(
    rng: &mut ChaCha8Rng,
    f: &RecordFacts,
    pools: &Pools,
    n: usize,
) -> Vec<Draft> {
    let mut drafts = Vec::new();
    if let Some(correct) = f.diagnoses.choose(rng)
        && let Some(options) = make_options(rng, correct, &pools.diagnoses, &f.diagnoses, n)
    {
        let stem = pick(
            rng,
            &[
                "which diagnosis is most likely?",
                "what is the most likely diagnosis?",
                "which of the following findings is present?",
                "which statement best describes this ECG?",
            ],
        );
        drafts.push(Draft::choice(
            Dimension::Diagnosis,
            stem,
            Some(options),
            None,
        ));
    }
    if let Some(rhythm) = &f.rhythm {
        let exclude = vec![rhythm.clone()];
        if let Some(options) = make_options(rng, rhythm, &pools.rhythms, &exclude, n) {
            let stem = pick(
                rng,
                &[
                    "what is the rhythm?",
                    "which rhythm does the ECG show?",
                    "how would you classify the underlying rhythm?",
                ],
            );
            let evidence = f
                .heart_rate_bpm
                .map(|hr| format!("The heart rate is {hr:.0} bpm."));
            drafts.push(Draft::choice(
                Dimension::Rhythm,
                stem,
                Some(options),
                evidence,
            ));
        }
    }
    drafts.extend(scale_draft(rng, f, &RATE_SCALE));
    drafts
}

/// A closed question on a measurement, answered by the category it falls into.
struct Scale {
    dimension: Dimension,
    stems: &'static [&'static str],
    value: fn(&RecordFacts) -> Option<f32>,
    options: &'static [&'static str],
    category: fn(f32, &RecordFacts) -> usize,
    /// The grounding sentence for the value and its category.
    evidence: fn(f32, usize) -> String,
}

const RATE_SCALE: Scale = Scale {
    dimension: Dimension::Rhythm,
    stems: &[
        "what is the ventricular rate?",
        "which range does the heart rate fall into?",
    ],
    value: |f| f.heart_rate_bpm,
    options: &RATE_OPTIONS,
    category: |hr, _| rate_category(hr),
    evidence: |hr, _| format!("The heart rate is {hr:.0} bpm."),
};

/// The closed questions on the PR, QRS and QTc intervals, in the order they are asked.
const INTERVAL_SCALES: [Scale; 3] = [
    Scale {
        dimension: Dimension::Waveform,
        stems: &[
            "how is the PR interval best described?",
            "what is the PR interval?",
        ],
        value: |f| f.pr_ms,
        options: &PR_OPTIONS,
        category: |pr, _| pr_category(pr),
        evidence: |pr, c| format!("The PR interval is {pr:.0} ms, {}.", PR_MEANING[c]),
    },
    Scale {
        dimension: Dimension::Waveform,
        stems: &[
            "how wide is the QRS complex?",
            "how is the QRS duration best described?",
        ],
        value: |f| f.qrs_ms,
        options: &QRS_OPTIONS,
        category: |qrs, _| qrs_category(qrs),
        evidence: |qrs, c| format!("The QRS duration is {qrs:.0} ms, {}.", QRS_MEANING[c]),
    },
    Scale {
        dimension: Dimension::Waveform,
        stems: &[
            "how is the corrected QT interval (QTc) best described?",
            "is the QTc short, normal or prolonged?",
        ],
        value: RecordFacts::qtc_ms,
        options: &QTC_OPTIONS,
        category: |qtc, f| qtc_category(qtc, f.sex),
        evidence: |qtc, c| format!("The QTc (Bazett) is {qtc:.0} ms, {}.", QTC_MEANING[c]),
    },
];

const AXIS_SCALE: Scale = Scale {
    dimension: Dimension::Misc,
    stems: &[
        "what is the electrical axis?",
        "how is the frontal QRS axis best described?",
    ],
    value: |f| f.axis_deg,
    options: &AXIS_OPTIONS,
    category: |axis, _| axis_category(axis),
    evidence: |axis, c| format!("The QRS axis is {axis:.0} degrees, {}.", AXIS_MEANING[c]),
};

/// The question of `scale` when the record has its value.
fn scale_draft(rng: &mut ChaCha8Rng, f: &RecordFacts, scale: &Scale) -> Option<Draft> {
    let value = (scale.value)(f)?;
    let stem = pick(rng, scale.stems);
    let category = (scale.category)(value, f);
    Some(Draft::choice(
        scale.dimension,
        stem,
        scale_options(scale.options, category),
        Some((scale.evidence)(value, category)),
    ))
}

/// Closed questions on the patient's sex and age and the electrical axis.
fn closed_patient_drafts(rng: &mut ChaCha8Rng, f: &RecordFacts) -> Vec<Draft> {
    let mut drafts = Vec::new();
    if let Some(sex) = f.sex {
        let stem = pick(
            rng,
            &[
                "what is the patient's sex?",
                "was this ECG recorded from a male or a female patient?",
            ],
        );
        let correct = usize::from(sex == "female");
        drafts.push(Draft::choice(
            Dimension::Misc,
            stem,
            scale_options(&["Male", "Female"], correct),
            None,
        ));
    }
    drafts.extend(scale_draft(rng, f, &AXIS_SCALE));
    if let Some(age) = f.age {
        drafts.push(Draft::choice(
            Dimension::Misc,
            "which age group does the patient belong to?",
            scale_options(&AGE_OPTIONS, age_category(age)),
            None,
        ));
    }
    drafts
}

fn open_drafts(rng: &mut ChaCha8Rng, f: &RecordFacts) -> Vec<Draft> {
    let mut drafts = Vec::new();
    if !f.diagnoses.is_empty() {
        let stem = pick(
            rng,
            &[
                "what are the main findings?",
                "what does this ECG indicate?",
                "what is the interpretation of this ECG?",
                "which abnormalities, if any, are present?",
            ],
        );
        let answer = if f.diagnoses.len() == 1 {
            capitalise(&f.diagnoses[0])
        } else {
            capitalise(&f.diagnoses.join("; "))
        };
        drafts.push(Draft::open(Dimension::Diagnosis, stem, answer));
    }
    if f.rhythm.is_some() || f.heart_rate_bpm.is_some() {
        let stem = pick(
            rng,
            &[
                "describe the rhythm.",
                "what is the rhythm and the heart rate?",
                "how would you characterise the rhythm?",
            ],
        );
        let answer = match (&f.rhythm, f.heart_rate_bpm) {
            (Some(r), Some(hr)) => format!(
                "{} at {hr:.0} bpm; the rate is {}.",
                capitalise(r),
                ["below 60 bpm", "between 60 and 100 bpm", "above 100 bpm"][rate_category(hr)]
            ),
            (Some(r), None) => format!("{}.", capitalise(r)),
            (None, Some(hr)) => format!(
                "The heart rate is {hr:.0} bpm, {}.",
                RATE_MEANING[rate_category(hr)]
            ),
            (None, None) => unreachable!("guarded above"),
        };
        drafts.push(Draft::open(Dimension::Rhythm, stem, answer));
    }
    drafts.extend(open_interval_drafts(rng, f));
    if let Some(axis) = f.axis_deg {
        let stem = pick(
            rng,
            &[
                "what is the QRS axis?",
                "what is the electrical axis of the heart?",
            ],
        );
        drafts.push(Draft::open(
            Dimension::Misc,
            stem,
            format!(
                "The QRS axis is {axis:.0} degrees, {}.",
                AXIS_MEANING[axis_category(axis)]
            ),
        ));
    }
    if let Some(age) = f.age {
        let answer = if age_is_masked(age) {
            "The patient is over 89 years old.".to_string()
        } else {
            format!("The patient is {:.0} years old.", age)
        };
        drafts.push(Draft::open(
            Dimension::Misc,
            "how old is the patient?",
            answer,
        ));
    }
    drafts
}

/// Open questions on the PR, QRS and QT intervals.
fn open_interval_drafts(rng: &mut ChaCha8Rng, f: &RecordFacts) -> Vec<Draft> {
    let mut drafts = Vec::new();
    if let Some(pr) = f.pr_ms {
        let stem = pick(
            rng,
            &["what is the PR interval?", "how long is the PR interval?"],
        );
        drafts.push(Draft::open(
            Dimension::Waveform,
            stem,
            format!(
                "The PR interval is {pr:.0} ms, {}.",
                PR_MEANING[pr_category(pr)]
            ),
        ));
    }
    if let Some(qrs) = f.qrs_ms {
        let stem = pick(
            rng,
            &["what is the QRS duration?", "how wide is the QRS complex?"],
        );
        drafts.push(Draft::open(
            Dimension::Waveform,
            stem,
            format!(
                "The QRS duration is {qrs:.0} ms, {}.",
                QRS_MEANING[qrs_category(qrs)]
            ),
        ));
    }
    if let Some(qt) = f.qt_ms {
        let stem = pick(
            rng,
            &[
                "what are the QT and QTc intervals?",
                "how long is the QT interval?",
            ],
        );
        let answer = match f.qtc_ms() {
            Some(qtc) => format!(
                "The QT interval is {qt:.0} ms and the QTc (Bazett) is {qtc:.0} ms, {}.",
                QTC_MEANING[qtc_category(qtc, f.sex)]
            ),
            None => format!("The QT interval is {qt:.0} ms."),
        };
        drafts.push(Draft::open(Dimension::Waveform, stem, answer));
    }
    drafts
}

/// A "which ECG has the larger value" comparison: asked when the two values differ by at least
/// `margin`.
struct Larger {
    dimension: Dimension,
    stems: &'static [&'static str],
    name: &'static str,
    value: fn(&RecordFacts) -> Option<f32>,
    unit: &'static str,
    margin: f32,
}

const LARGER: [Larger; 4] = [
    Larger {
        dimension: Dimension::Rhythm,
        stems: &[
            "which ECG has the faster heart rate?",
            "which ECG shows the higher ventricular rate?",
        ],
        name: "Heart rate",
        value: |f| f.heart_rate_bpm,
        unit: "bpm",
        margin: 5.0,
    },
    Larger {
        dimension: Dimension::Waveform,
        stems: &[
            "which ECG has the wider QRS complex?",
            "in which ECG is the QRS duration longer?",
        ],
        name: "QRS duration",
        value: |f| f.qrs_ms,
        unit: "ms",
        margin: 10.0,
    },
    Larger {
        dimension: Dimension::Waveform,
        stems: &["which ECG has the longer PR interval?"],
        name: "PR interval",
        value: |f| f.pr_ms,
        unit: "ms",
        margin: 20.0,
    },
    Larger {
        dimension: Dimension::Waveform,
        stems: &["which ECG has the longer corrected QT interval?"],
        name: "QTc",
        value: RecordFacts::qtc_ms,
        unit: "ms",
        margin: 20.0,
    },
];

fn yes_no(yes: bool) -> Option<(Vec<String>, usize)> {
    Some((vec!["Yes".to_string(), "No".to_string()], usize::from(!yes)))
}

/// Comparison drafts for (first, second); options are "ECG 1"/"ECG 2" or "Yes"/"No".
fn comparison_drafts(
    rng: &mut ChaCha8Rng,
    a: &RecordFacts,
    b: &RecordFacts,
    same_patient: bool,
) -> Vec<Draft> {
    let mut drafts = Vec::new();
    if let (Some(ra), Some(rb)) = (&a.rhythm, &b.rhythm) {
        let same = ra.eq_ignore_ascii_case(rb);
        let stem = pick(
            rng,
            &[
                "do both ECGs show the same rhythm?",
                "is the rhythm the same in the two ECGs?",
            ],
        );
        let evidence = if same {
            format!("Both show {}.", lower_first(ra))
        } else {
            format!(
                "ECG 1 shows {}, ECG 2 shows {}.",
                lower_first(ra),
                lower_first(rb)
            )
        };
        drafts.push(Draft::choice(
            Dimension::Rhythm,
            stem,
            yes_no(same),
            Some(evidence),
        ));
    }
    for q in &LARGER {
        if let (Some(va), Some(vb)) = ((q.value)(a), (q.value)(b))
            && (va - vb).abs() >= q.margin
        {
            let (name, unit) = (q.name, q.unit);
            let options = (
                vec!["ECG 1".to_string(), "ECG 2".to_string()],
                usize::from(va <= vb),
            );
            drafts.push(Draft::choice(
                q.dimension,
                pick(rng, q.stems),
                Some(options),
                Some(format!(
                    "{name}: ECG 1 {va:.0} {unit}, ECG 2 {vb:.0} {unit}."
                )),
            ));
        }
    }
    if !a.diagnoses.is_empty() && !b.diagnoses.is_empty() {
        let set = |f: &RecordFacts| -> BTreeSet<String> {
            f.diagnoses.iter().map(|d| d.to_lowercase()).collect()
        };
        let stem = pick(
            rng,
            &[
                "do the two ECGs lead to the same diagnosis?",
                "are the findings of both ECGs the same?",
            ],
        );
        drafts.push(Draft::choice(
            Dimension::Diagnosis,
            stem,
            yes_no(set(a) == set(b)),
            Some(format!(
                "ECG 1: {}. ECG 2: {}.",
                a.diagnoses.join("; "),
                b.diagnoses.join("; ")
            )),
        ));
    }
    drafts.push(Draft::choice(
        Dimension::Misc,
        "could these two ECGs have been recorded from the same patient?",
        yes_no(same_patient),
        None,
    ));
    drafts
}

fn closed_answer(options: &(Vec<String>, usize), evidence: &Option<String>) -> (String, char) {
    let letter = (b'A' + options.1 as u8) as char;
    let mut answer = format!("{letter}: {}", options.0[options.1]);
    if let Some(e) = evidence {
        answer.push_str(". ");
        answer.push_str(e);
    }
    (answer, letter)
}

/// Builds the items of every record (in record order), with patient-level splits.
pub fn build_items(records: &[Record], config: &BuildConfig) -> Result<Vec<Item>, BuildError> {
    config.validate()?;
    let mut seen = BTreeSet::new();
    for r in records {
        if !seen.insert(r.id.as_str()) {
            return Err(BuildError::DuplicateRecord(r.id.clone()));
        }
    }
    let facts: Vec<RecordFacts> = records.iter().map(RecordFacts::from_record).collect();
    let corpus = CorpusIndex::new(&facts, assign_splits(records, &config.split));
    let pools = Pools::new(&facts);
    let mut items = Vec::new();
    for (index, f) in facts.iter().enumerate() {
        let mut record = RecordItems::new(f, corpus.splits[&f.patient_id], config);
        record.qa(&pools, &mut items);
        record.comparisons(index, &corpus, &mut items);
        record.reports(&mut items);
        record.predictions(&mut items);
        crate::peers::PeerItems {
            record: &records[index],
            f,
            index,
            split: corpus.splits[&f.patient_id],
            config,
        }
        .build(&corpus, &mut items);
    }
    Ok(items)
}

/// The corpus as the item builder looks it up: every record's facts, the split of each
/// patient, each patient's records in id order (for consecutive pairs), the records by split.
pub(crate) struct CorpusIndex<'a> {
    pub(crate) facts: &'a [RecordFacts],
    pub(crate) splits: BTreeMap<String, Split>,
    pub(crate) by_patient: BTreeMap<&'a str, Vec<usize>>,
    pub(crate) by_split: BTreeMap<Split, Vec<usize>>,
}

impl<'a> CorpusIndex<'a> {
    fn new(facts: &'a [RecordFacts], splits: BTreeMap<String, Split>) -> Self {
        let mut by_patient: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, f) in facts.iter().enumerate() {
            by_patient.entry(f.patient_id.as_str()).or_default().push(i);
        }
        for list in by_patient.values_mut() {
            list.sort_by(|&x, &y| facts[x].record_id.cmp(&facts[y].record_id));
        }
        let mut by_split: BTreeMap<Split, Vec<usize>> = BTreeMap::new();
        for (i, f) in facts.iter().enumerate() {
            by_split.entry(splits[&f.patient_id]).or_default().push(i);
        }
        Self {
            facts,
            splits,
            by_patient,
            by_split,
        }
    }
}

/// The items of one record, built in a fixed order from one generator seeded by the record's
/// id: closed- and open-QA, comparisons, reports, predictions.
struct RecordItems<'a> {
    f: &'a RecordFacts,
    split: Split,
    config: &'a BuildConfig,
    rng: ChaCha8Rng,
    counter: usize,
}

impl<'a> RecordItems<'a> {
    fn new(f: &'a RecordFacts, split: Split, config: &'a BuildConfig) -> Self {
        Self {
            f,
            split,
            config,
            rng: ChaCha8Rng::seed_from_u64(stable_hash(config.seed, &f.record_id)),
            counter: 0,
        }
    }

    /// `<record>#<kind><n>`, numbered in build order.
    fn next_id(&mut self, kind: &str) -> String {
        self.counter += 1;
        format!("{}#{kind}{}", self.f.record_id, self.counter)
    }

    /// An item about this record alone, shown as `form`, with nothing asked yet.
    fn base(&self, form: InputForm) -> Item {
        let f = self.f;
        Item {
            item_type: ItemType::default(),
            question: String::new(),
            answer: String::new(),
            filename: vec![f.record_id.clone(); form.labels().len()],
            label: form.labels(),
            id: None,
            dimension: None,
            options: Vec::new(),
            correct_option: None,
            record_ids: vec![f.record_id.clone()],
            patient_ids: vec![f.patient_id.clone()],
            split: Some(self.split),
            prediction: None,
        }
    }

    fn input_form(&mut self) -> InputForm {
        *self
            .config
            .inputs
            .choose(&mut self.rng)
            .expect("validated non-empty")
    }

    /// Closed-QA and open-QA items.
    fn qa(&mut self, pools: &Pools, items: &mut Vec<Item>) {
        let config = self.config;
        for (task, count) in [
            (Task::ClosedQa, config.closed_qa_per_record),
            (Task::OpenQa, config.open_qa_per_record),
        ] {
            let drafts: Vec<Draft> = match task {
                Task::ClosedQa => closed_drafts(&mut self.rng, self.f, pools, config.num_options),
                _ => open_drafts(&mut self.rng, self.f),
            }
            .into_iter()
            .filter(|d| config.dimensions.contains(&d.dimension))
            .collect();
            for draft in choose_drafts(&mut self.rng, drafts, count, &config.dimensions) {
                let form = self.input_form();
                let mut item = self.base(form);
                item.item_type = ItemType::of(Some(draft.dimension), task);
                item.dimension = Some(draft.dimension);
                let stem = format!("{}{}", intro(&mut self.rng, form, self.f), draft.stem);
                match &draft.options {
                    Some(options) => {
                        let (answer, letter) = closed_answer(options, &draft.evidence);
                        item.question = format!("{stem} {}", format_options(&lettered(&options.0)));
                        item.answer = answer;
                        item.options = options.0.clone();
                        item.correct_option = Some(letter);
                    }
                    None => {
                        item.question = stem;
                        item.answer = draft.answer;
                    }
                }
                item.id = Some(self.next_id(task.type_suffix()));
                items.push(item);
            }
        }
    }

    /// Comparison-QA items with partners of the same split (the patient's next record first).
    fn comparisons(&mut self, index: usize, corpus: &CorpusIndex, items: &mut Vec<Item>) {
        let (f, config) = (self.f, self.config);
        for _ in 0..config.comparison_per_record {
            let partner = choose_partner(
                &mut self.rng,
                index,
                f,
                corpus.facts,
                &corpus.by_patient,
                &corpus.by_split,
                self.split,
                config,
            );
            let Some((partner, same_patient)) = partner else {
                break;
            };
            let g = &corpus.facts[partner];
            let drafts: Vec<Draft> = comparison_drafts(&mut self.rng, f, g, same_patient)
                .into_iter()
                .filter(|d| config.dimensions.contains(&d.dimension))
                .collect();
            let Some(draft) = choose_drafts(&mut self.rng, drafts, 1, &config.dimensions).pop()
            else {
                continue;
            };
            let label = pair_labels(&mut self.rng, config);
            let describe_input = |m: Modality| match m {
                Modality::Signal => "signal",
                Modality::Image => "image",
            };
            let relation = if same_patient {
                "two consecutive ECGs of the same patient"
            } else {
                "two ECGs"
            };
            let options = draft
                .options
                .as_ref()
                .expect("comparison drafts are closed");
            let (answer, letter) = closed_answer(options, &draft.evidence);
            let question = format!(
                "Given {relation} (ECG 1 as {}, ECG 2 as {}), {} {}",
                describe_input(label[0]),
                describe_input(label[1]),
                draft.stem,
                format_options(&lettered(&options.0))
            );
            let id = self.next_id("ComparisonQA");
            items.push(Item {
                item_type: ItemType::of(Some(draft.dimension), Task::ComparisonQa),
                question,
                answer,
                filename: vec![f.record_id.clone(), g.record_id.clone()],
                label,
                id: Some(id),
                dimension: Some(draft.dimension),
                options: options.0.clone(),
                correct_option: Some(letter),
                record_ids: vec![f.record_id.clone(), g.record_id.clone()],
                patient_ids: vec![f.patient_id.clone(), g.patient_id.clone()],
                split: Some(self.split),
                prediction: None,
            });
        }
    }

    /// Report-generation items: the record's own report, or one described from its facts.
    fn reports(&mut self, items: &mut Vec<Item>) {
        let f = self.f;
        for _ in 0..self.config.reports_per_record {
            let answer = match (&f.report, self.config.prefer_source_report) {
                (Some(report), true) => report.clone(),
                _ => describe(f),
            };
            if answer.is_empty() {
                break;
            }
            let form = self.input_form();
            let mut item = self.base(form);
            item.item_type = ItemType::of(None, Task::ReportGeneration);
            let template = pick(
                &mut self.rng,
                &[
                    "Write a clinical report for this {m} of {who}.",
                    "Generate a standardized ECG report for the {m} of {who}.",
                    "Interpret the {m} of {who} and write the report.",
                    "Provide a detailed ECG interpretation report for this {m} of {who}.",
                ],
            );
            item.question = template
                .replace("{m}", form.phrase())
                .replace("{who}", &who(f));
            item.answer = answer;
            item.id = Some(self.next_id("ReportGeneration"));
            items.push(item);
        }
    }

    /// Signal-prediction items, when the record is long enough for the prediction window.
    fn predictions(&mut self, items: &mut Vec<Item>) {
        let window = self.config.prediction;
        let needed = f64::from(window.input_start_s + window.input_s + window.horizon_s);
        if self.f.duration_s + 1e-9 < needed {
            return;
        }
        for _ in 0..self.config.predictions_per_record {
            let mut item = self.base(InputForm::Signal);
            item.item_type = ItemType::of(None, Task::SignalPrediction);
            let template = pick(
                &mut self.rng,
                &[
                    "Given the first {in} seconds of this 12-lead ECG signal, predict the waveform of the next {h} seconds.",
                    "Here are {in} seconds of a 12-lead ECG. Predict how the signal continues over the next {h} seconds.",
                    "Forecast the next {h} seconds of this ECG from the {in}-second segment shown.",
                ],
            );
            item.question = template
                .replace("{in}", &trim_number(window.input_s))
                .replace("{h}", &trim_number(window.horizon_s));
            item.answer = "<prediction>".into();
            item.prediction = Some(window);
            item.id = Some(self.next_id("SignalPrediction"));
            items.push(item);
        }
    }
}

/// How a comparison item shows its two ECGs.
fn pair_labels(rng: &mut ChaCha8Rng, config: &BuildConfig) -> Vec<Modality> {
    let form = *config.pair_inputs.choose(rng).expect("validated non-empty");
    match form {
        PairForm::SignalSignal => vec![Modality::Signal, Modality::Signal],
        PairForm::ImageImage => vec![Modality::Image, Modality::Image],
        PairForm::SignalImage => {
            if rng.random_bool(0.5) {
                vec![Modality::Signal, Modality::Image]
            } else {
                vec![Modality::Image, Modality::Signal]
            }
        }
    }
}

fn trim_number(x: f32) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

/// A multiple-choice question: the stem, then its options lettered "A: ...; B: ...".
pub(crate) fn format_choice_question(stem: &str, options: &[String]) -> String {
    format!("{stem} {}", format_options(&lettered(options)))
}

fn lettered(options: &[String]) -> Vec<ChoiceOption> {
    options
        .iter()
        .zip('A'..='Z')
        .map(|(text, letter)| ChoiceOption {
            letter,
            text: text.clone(),
        })
        .collect()
}

/// Up to `count` drafts, cycling through the dimensions (in a shuffled order) so each item of a
/// record tends to ask about something different, and never the same draft twice.
fn choose_drafts(
    rng: &mut ChaCha8Rng,
    mut drafts: Vec<Draft>,
    count: usize,
    dimensions: &[Dimension],
) -> Vec<Draft> {
    drafts.shuffle(rng);
    let mut order = dimensions.to_vec();
    order.shuffle(rng);
    let mut chosen = Vec::new();
    let mut d = 0;
    let mut misses = 0;
    while chosen.len() < count && !drafts.is_empty() && misses < order.len() {
        let dimension = order[d % order.len()];
        d += 1;
        if let Some(pos) = drafts.iter().position(|x| x.dimension == dimension) {
            chosen.push(drafts.remove(pos));
            misses = 0;
        } else {
            misses += 1;
        }
    }
    chosen
}

#[allow(clippy::too_many_arguments)]
fn choose_partner(
    rng: &mut ChaCha8Rng,
    index: usize,
    f: &RecordFacts,
    facts: &[RecordFacts],
    by_patient: &BTreeMap<&str, Vec<usize>>,
    by_split: &BTreeMap<Split, Vec<usize>>,
    split: Split,
    config: &BuildConfig,
) -> Option<(usize, bool)> {
    let own = &by_patient[f.patient_id.as_str()];
    let position = own
        .iter()
        .position(|&i| i == index)
        .expect("record is listed");
    let consecutive = own
        .get(position + 1)
        .or_else(|| position.checked_sub(1).and_then(|p| own.get(p)))
        .copied();
    let want_consecutive = rng.random_bool(config.consecutive_fraction);
    if want_consecutive && let Some(partner) = consecutive {
        return Some((partner, true));
    }
    let others: Vec<usize> = by_split
        .get(&split)
        .map(|v| {
            v.iter()
                .copied()
                .filter(|&i| facts[i].patient_id != f.patient_id)
                .collect()
        })
        .unwrap_or_default();
    match others.choose(rng) {
        Some(&partner) => Some((partner, false)),
        None => consecutive.map(|p| (p, true)),
    }
}

/// The captioning set of the warm-up stage: one "describe this ECG" item per record and
/// requested input form, answered with the generated description (the source report when a
/// record carries no labels to describe).
pub fn build_captions(records: &[Record], config: &BuildConfig) -> Result<Vec<Item>, BuildError> {
    config.validate()?;
    let splits = assign_splits(records, &config.split);
    let mut items = Vec::new();
    for record in records {
        let f = RecordFacts::from_record(record);
        let mut rng = ChaCha8Rng::seed_from_u64(stable_hash(config.seed ^ 0xCA97, &f.record_id));
        let description = describe(&f);
        let answer = if description.is_empty() {
            match &f.report {
                Some(report) => report.clone(),
                None => continue,
            }
        } else {
            description
        };
        let form = *config.inputs.choose(&mut rng).expect("validated non-empty");
        let question = pick(
            &mut rng,
            &[
                "Describe this {m}.",
                "Give a short description of the {m}.",
                "Summarise what the {m} shows.",
            ],
        )
        .replace("{m}", form.phrase());
        items.push(Item {
            item_type: ItemType::of(None, Task::Caption),
            question,
            answer,
            filename: vec![f.record_id.clone(); form.labels().len()],
            label: form.labels(),
            id: Some(format!("{}#Caption", f.record_id)),
            dimension: None,
            options: Vec::new(),
            correct_option: None,
            record_ids: vec![f.record_id.clone()],
            patient_ids: vec![f.patient_id.clone()],
            split: Some(splits[&f.patient_id]),
            prediction: None,
        });
    }
    Ok(items)
}

impl std::fmt::Display for Modality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
