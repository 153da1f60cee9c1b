//! The in-memory ECG record every source produces and every consumer reads.
//!
//! A [`Record`] holds physical-unit signals (millivolts) for a set of leads, in the standard
//! 12-lead order where known, together with whatever labels its source carries. Sources fill
//! the parts of [`RecordMeta`] they know and leave the rest empty; nothing here is source-specific.

use serde::{Deserialize, Serialize};

/// The twelve standard leads, in the conventional order used for every model input.
pub const STANDARD_LEADS: [&str; 12] = [
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
];

/// Where a record came from; decides which metadata is meaningful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// PTB-XL (`ptbxl_database.csv` metadata).
    Ptbxl,
    /// Lobachevsky University ECG database (diagnoses in header comments, wave annotations).
    Ludb,
    /// PhysioNet/CinC challenge records (SNOMED-CT `# Dx` header comments).
    Cinc,
    /// Any other WFDB record.
    Wfdb,
    /// The built-in simulator.
    Synthetic,
}

/// PTB-XL diagnostic superclasses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Superclass {
    NORM,
    MI,
    STTC,
    CD,
    HYP,
}

/// One delineated wave (P, QRS or T) in sample indices of the record's own sampling rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub kind: WaveKind,
    pub onset: usize,
    pub peak: usize,
    pub offset: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WaveKind {
    P,
    QRS,
    T,
}

/// Labels and facts about a record. Every field is optional because sources differ.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordMeta {
    /// Patient identifier used for patient-level splits (the record id when unknown).
    pub patient_id: Option<String>,
    pub age: Option<f32>,
    /// "M" or "F".
    pub sex: Option<String>,
    /// Free-text report (PTB-XL `report`, or the simulator's generated description).
    pub report: Option<String>,
    /// Human-readable diagnosis statements (LUDB header lines, simulator conditions, SCP
    /// descriptions), in the source's order.
    pub diagnoses: Vec<String>,
    /// PTB-XL SCP codes with their likelihoods.
    pub scp_codes: Vec<(String, f32)>,
    pub superclasses: Vec<Superclass>,
    /// SNOMED-CT codes (CinC `# Dx`).
    pub snomed: Vec<String>,
    /// PTB-XL `strat_fold` (1-10) when known.
    pub fold: Option<u8>,
    /// Rhythm label when known (e.g. "sinus rhythm", "atrial fibrillation").
    pub rhythm: Option<String>,
    /// Measured or true intervals, in milliseconds / beats per minute / degrees, when known.
    pub heart_rate_bpm: Option<f32>,
    pub pr_ms: Option<f32>,
    pub qrs_ms: Option<f32>,
    pub qt_ms: Option<f32>,
    pub axis_deg: Option<f32>,
    /// Abnormal segments `[start_s, end_s]` (runs of non-sinus beats: ectopic beats, AF and
    /// flutter), merged and sorted, when known (the simulator's truth, or beat annotations);
    /// `Some(empty)` for a record known to have none. anyECG-chat's localization truth.
    #[serde(default)]
    pub abnormal_segments: Option<Vec<[f64; 2]>>,
}

/// A multi-lead ECG in physical units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Stable identifier, unique within a dataset (e.g. `ludb/1`, `ptbxl/00001_hr`).
    pub id: String,
    pub source: SourceKind,
    /// Sampling frequency in Hz.
    pub fs: f64,
    /// Lead names, normalised to [`STANDARD_LEADS`] spelling where they are standard leads.
    pub leads: Vec<String>,
    /// One vector per lead, all of equal length, in millivolts.
    pub signals: Vec<Vec<f32>>,
    pub meta: RecordMeta,
    /// Wave annotations per lead name (LUDB, simulator), empty when unknown.
    pub waves: Vec<(String, Vec<Wave>)>,
}

impl Record {
    /// Number of samples per lead.
    pub fn len(&self) -> usize {
        self.signals.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Duration in seconds.
    pub fn duration_s(&self) -> f64 {
        self.len() as f64 / self.fs
    }

    /// The signal of a lead by (normalised) name.
    pub fn lead(&self, name: &str) -> Option<&[f32]> {
        self.leads
            .iter()
            .position(|l| l == name)
            .map(|i| self.signals[i].as_slice())
    }
}
