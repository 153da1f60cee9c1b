//! PhysioNet WFDB records: header (`.hea`) parsing and signal decoding.
//!
//! A header has a record line (`NAME[/SEGMENTS] NSIG [FS[/CF[(BASE)]] [NSAMP [BASETIME
//! [BASEDATE]]]]`), then one signal line per signal (`FILE FORMAT[xSPF][:SKEW][+OFFSET]
//! [GAIN[(BASELINE)][/UNITS] [ADCRES [ADCZERO [INITVAL [CHECKSUM [BLOCKSIZE [DESCRIPTION]]]]]]]`)
//! or, for a multi-segment record, one segment line per segment (`NAME SAMPLES`), and `#`
//! comment lines anywhere. Signal files in formats 8, 16, 24, 32, 61, 80, 160, 212, 310 and 311
//! are decoded ([`format`]), with several samples per frame, skew and byte offsets, as are the
//! MAT v4 files of the PhysioNet/CinC challenges (see [`crate::mat`]); multi-segment records of
//! fixed and variable layout are joined into one record ([`segments`]). The FLAC formats (508,
//! 516, 524) are refused wherever they appear. Every read verifies each lead's checksum and
//! initial value when the header gives them, and converts to millivolts with
//! `(adc - baseline) / gain` (a negative gain inverts), scaled by the header's units.
//!
//! Every header field is checked against a sane range when the header is parsed ([`header`]).
//! Signal files are opened only when they are regular files inside the record's folder, their
//! sizes are checked against the header before anything is read, and a read refuses a record
//! whose samples would exceed its memory bound ([`ReadLimits`]) before allocating them.
//! Decoding reads each signal file's sample bytes once and de-interleaves them in one tight loop
//! per lead ([`signal`]).

use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::record::{Record, RecordMeta, STANDARD_LEADS, SourceKind};
use crate::safe_read;

pub mod format;
pub mod header;
pub mod segments;
pub mod signal;

pub use header::parse_header;
pub use signal::read_signals;

/// WFDB's default ADC gain (units per millivolt), used when the header gives none or 0.
pub const DEFAULT_GAIN: f64 = 200.0;
/// WFDB's default sampling frequency when the record line gives none.
pub const DEFAULT_FS: f64 = 250.0;

/// A parsed WFDB header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// The `.hea` file this was read from (signal files are resolved relative to its folder).
    pub path: PathBuf,
    pub record_name: String,
    /// 1-based line number of the record line.
    pub record_line: usize,
    /// Sampling frequency in Hz.
    pub fs: f64,
    /// Counter frequency (Hz) and base counter value, when the record line gives them.
    pub counter_freq: Option<f64>,
    pub base_counter: Option<f64>,
    /// Samples per signal; `None` when the header gives none or 0 (then the file size decides).
    pub num_samples: Option<usize>,
    pub base_time: Option<String>,
    pub base_date: Option<String>,
    /// Signals the record line declares.
    pub num_signals: usize,
    /// Signal lines; empty for a multi-segment record, whose signals are in its segments.
    pub signals: Vec<SignalSpec>,
    /// Segment lines of a multi-segment record (`NAME/SEGMENTS` on the record line), in order.
    pub segments: Vec<Segment>,
    /// Text of every `#` comment line, without the `#` and surrounding whitespace, in order.
    pub comments: Vec<String>,
}

/// One segment line of a multi-segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// 1-based line number in the header.
    pub line: usize,
    /// The segment's record name (its header is `NAME.hea` beside this one), or `~` for a gap
    /// of invalid samples.
    pub name: String,
    /// Frames in the segment (0 for a variable-layout record's layout segment).
    pub num_samples: usize,
}

/// One signal line of a header.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalSpec {
    /// 1-based line number of this signal line in the header.
    pub line: usize,
    pub file_name: String,
    /// Storage format number (16, 212, ...).
    pub format: u16,
    pub samples_per_frame: u32,
    pub skew: u32,
    /// Bytes to skip at the start of the signal file, when given.
    pub byte_offset: Option<u64>,
    /// ADC gain as written (0 when absent: uncalibrated).
    pub adc_gain: f64,
    /// Baseline in ADC units (defaults to `adc_zero`).
    pub baseline: i32,
    pub units: String,
    pub adc_resolution: Option<u32>,
    pub adc_zero: i32,
    /// The first sample's value, when given.
    pub initial_value: Option<i32>,
    /// 16-bit sum of all samples, when given (either signed or unsigned spelling).
    pub checksum: Option<i32>,
    pub block_size: Option<u32>,
    /// Description as written (e.g. `i`, `AVR`, `V1`).
    pub description: String,
    /// The description normalised by [`normalize_lead_name`].
    pub lead: String,
}

impl SignalSpec {
    /// Gain used for conversion: the ADC gain, or [`DEFAULT_GAIN`] when it is 0.
    pub fn gain(&self) -> f64 {
        if self.adc_gain == 0.0 {
            DEFAULT_GAIN
        } else {
            self.adc_gain
        }
    }

    /// Factor that turns one physical unit of this signal into millivolts (1 for unknown units).
    pub fn millivolts_per_unit(&self) -> f64 {
        match self.units.to_ascii_lowercase().as_str() {
            "v" => 1000.0,
            "uv" | "μv" | "µv" => 1e-3,
            "nv" => 1e-6,
            _ => 1.0,
        }
    }
}

impl Header {
    /// Signal files the header names, in order of first appearance (for a multi-segment
    /// record, its segments' headers).
    pub fn signal_files(&self) -> Vec<PathBuf> {
        let dir = self.path.parent().unwrap_or(Path::new(""));
        let mut files: Vec<PathBuf> = Vec::new();
        for segment in self.segments.iter().filter(|s| s.name != signal::NULL_FILE) {
            files.push(dir.join(format!("{}.hea", segment.name)));
        }
        for spec in self
            .signals
            .iter()
            .filter(|s| s.file_name != signal::NULL_FILE)
        {
            let file = dir.join(&spec.file_name);
            if !files.contains(&file) {
                files.push(file);
            }
        }
        files
    }

    /// Normalised lead names in signal order.
    pub fn leads(&self) -> Vec<String> {
        self.signals.iter().map(|s| s.lead.clone()).collect()
    }
}

/// Digital (ADC unit) samples of a record whose checksums and initial values were verified.
#[derive(Debug, Clone, PartialEq)]
pub struct DigitalRecord {
    pub header: Header,
    /// One vector per signal, `num_samples x samples_per_frame` long.
    pub samples: Vec<Vec<i32>>,
}

impl DigitalRecord {
    /// Every sample converted to millivolts (a signal with N samples per frame keeps all N per
    /// frame); WFDB's invalid-sample marker becomes NaN.
    pub fn physical_expanded(&self) -> Vec<Vec<f32>> {
        self.header
            .signals
            .iter()
            .zip(&self.samples)
            .map(|(spec, digital)| to_millivolts(spec, digital))
            .collect()
    }

    /// Samples in millivolts at the frame rate (the header's sampling frequency): a signal with
    /// several samples per frame gives the mean of each frame's valid samples (NaN when none is
    /// valid), as WFDB's and python wfdb's default reads do.
    pub fn physical(&self) -> Vec<Vec<f32>> {
        self.header
            .signals
            .iter()
            .zip(&self.samples)
            .map(|(spec, digital)| physical_at_frame_rate(spec, digital))
            .collect()
    }

    /// The record in millivolts, with `id` set to the header's record name and no labels.
    pub fn to_record(&self) -> Record {
        Record {
            id: self.header.record_name.clone(),
            source: SourceKind::Wfdb,
            fs: self.header.fs,
            leads: self.header.leads(),
            signals: self.physical(),
            meta: RecordMeta::default(),
            waves: Vec::new(),
        }
    }
}

/// The conversion of one signal's ADC units to millivolts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Millivolts {
    scale: f64,
    baseline: f64,
    /// The format's invalid-sample marker, or a value no sample has.
    invalid: i64,
}

impl Millivolts {
    pub(crate) fn of(spec: &SignalSpec) -> Self {
        Self {
            scale: spec.millivolts_per_unit() / spec.gain(),
            baseline: f64::from(spec.baseline),
            invalid: format::invalid_sample(spec.format).map_or(i64::MIN, i64::from),
        }
    }

    /// `(adc - baseline) / gain` in millivolts; NaN for the invalid-sample marker.
    #[inline(always)]
    pub(crate) fn convert(&self, adc: i32) -> f32 {
        if i64::from(adc) == self.invalid {
            f32::NAN
        } else {
            ((f64::from(adc) - self.baseline) * self.scale) as f32
        }
    }
}

fn to_millivolts(spec: &SignalSpec, digital: &[i32]) -> Vec<f32> {
    let to_mv = Millivolts::of(spec);
    digital.iter().map(|&d| to_mv.convert(d)).collect()
}

/// One signal in millivolts at the frame rate: a signal with several samples per frame gives
/// the mean of each frame's valid samples.
pub(crate) fn physical_at_frame_rate(spec: &SignalSpec, digital: &[i32]) -> Vec<f32> {
    let mv = to_millivolts(spec, digital);
    match spec.samples_per_frame as usize {
        1 => mv,
        spf => mv.chunks_exact(spf).map(mean_of_valid).collect(),
    }
}

fn mean_of_valid(frame: &[f32]) -> f32 {
    let (sum, n) = frame
        .iter()
        .filter(|v| !v.is_nan())
        .fold((0f64, 0u32), |(s, n), &v| (s + f64::from(v), n + 1));
    if n == 0 {
        f32::NAN
    } else {
        (sum / f64::from(n)) as f32
    }
}

/// Maps standard lead names in any case (`AVR`, `avr`, `v1`, `i`) to [`STANDARD_LEADS`]
/// spelling; other names come back trimmed but otherwise unchanged.
pub fn normalize_lead_name(name: &str) -> String {
    let trimmed = name.trim();
    STANDARD_LEADS
        .iter()
        .find(|standard| standard.eq_ignore_ascii_case(trimmed))
        .map_or_else(|| trimmed.to_string(), |standard| standard.to_string())
}

/// The `.hea` path for a record given either as the header path or as the record path without
/// extension (`data/1` -> `data/1.hea`).
pub fn header_path(path: &Path) -> PathBuf {
    if path.extension().is_some_and(|e| e == "hea") {
        path.to_path_buf()
    } else {
        let mut with_ext = path.as_os_str().to_owned();
        with_ext.push(".hea");
        PathBuf::from(with_ext)
    }
}

/// The most bytes a header file may have (PhysioNet's largest are a few kB).
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Bounds on what one record read may allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Most samples (over all signals) one record may hold. Each costs 4 bytes as a digital
    /// sample and 4 more in millivolts.
    pub max_samples: u64,
}

impl ReadLimits {
    /// 2^28 samples: 1 GiB of digital samples (e.g. 12 leads at 500 Hz for 12 hours).
    pub const DEFAULT: ReadLimits = ReadLimits {
        max_samples: 1 << 28,
    };
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Reads and parses a header (`path` to the `.hea`, or the record path without extension).
pub fn read_header(path: impl AsRef<Path>) -> Result<Header, DataError> {
    let path = header_path(path.as_ref());
    let bytes = safe_read::read_regular(&path, MAX_HEADER_BYTES)?;
    parse_header(&String::from_utf8_lossy(&bytes), &path)
}

/// Reads a record's digital samples, verifying checksums and initial values, within the
/// default [`ReadLimits`].
pub fn read_record_digital(path: impl AsRef<Path>) -> Result<DigitalRecord, DataError> {
    read_record_digital_within(path, ReadLimits::DEFAULT)
}

/// Like [`read_record_digital`] with explicit limits.
pub fn read_record_digital_within(
    path: impl AsRef<Path>,
    limits: ReadLimits,
) -> Result<DigitalRecord, DataError> {
    let header = read_header(path)?;
    if let Some(segment) = header.segments.first() {
        return Err(DataError::Header {
            record: header.record_name.clone(),
            path: header.path.clone(),
            line: segment.line,
            message: "a multi-segment record's segments may differ in gain and baseline, so it \
                      is read in millivolts only (read_record), not as digital samples"
                .to_string(),
        });
    }
    let samples = signal::read_signals_within(&header, limits)?;
    Ok(DigitalRecord { header, samples })
}

/// Reads a record in millivolts (`id` = the header's record name, source [`SourceKind::Wfdb`],
/// no labels).
pub fn read_record(path: impl AsRef<Path>) -> Result<Record, DataError> {
    read_record_with_header(path).map(|(_, record)| record)
}

/// Like [`read_record`], also returning the header (its comments carry labels for some sources).
pub fn read_record_with_header(path: impl AsRef<Path>) -> Result<(Header, Record), DataError> {
    read_record_with_header_within(path, ReadLimits::DEFAULT)
}

/// Like [`read_record_with_header`] with explicit limits. A multi-segment record comes back
/// as one record: its segments' samples in millivolts, one after the other.
pub fn read_record_with_header_within(
    path: impl AsRef<Path>,
    limits: ReadLimits,
) -> Result<(Header, Record), DataError> {
    let header = read_header(path)?;
    if !header.segments.is_empty() {
        let record = segments::read_segments(&header, limits)?;
        return Ok((header, record));
    }
    let signals = signal::read_physical_within(&header, limits)?;
    let record = Record {
        id: header.record_name.clone(),
        source: SourceKind::Wfdb,
        fs: header.fs,
        leads: header.leads(),
        signals,
        meta: RecordMeta::default(),
        waves: Vec::new(),
    };
    Ok((header, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_names_normalise_to_standard_spelling() {
        let check = |raw: &str, expected: &str| assert_eq!(normalize_lead_name(raw), expected);
        check("AVR", "aVR");
        check("avr", "aVR");
        check("aVL", "aVL");
        check("i", "I");
        check("iii", "III");
        check("v1", "V1");
        check(" V6 ", "V6");
        check("MLII", "MLII");
    }
}
