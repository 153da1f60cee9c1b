//! PhysioNet WFDB records: header (`.hea`) parsing and signal decoding.
//!
//! A header has a record line (`NAME NSIG [FS [NSAMP [BASETIME [BASEDATE]]]]`), one signal line
//! per signal (`FILE FORMAT[xSPF][:SKEW][+OFFSET] [GAIN[(BASELINE)][/UNITS] [ADCRES [ADCZERO
//! [INITVAL [CHECKSUM [BLOCKSIZE [DESCRIPTION]]]]]]]`) and `#` comment lines anywhere. Signal
//! files in formats 16, 61, 80, 160, 212, 24 and 32 are decoded, as are the MAT v4 files of the
//! PhysioNet/CinC challenges (see [`crate::mat`]). Every read verifies each lead's checksum and
//! initial value when the header gives them, and converts to millivolts with
//! `(adc - baseline) / gain`, scaled by the header's units.
//!
//! Decoding reads each signal file once, whole, and de-interleaves it in one tight loop per lead.

use std::path::{Path, PathBuf};

use crate::error::{DataError, read_file};
use crate::mat;
use crate::record::{Record, RecordMeta, STANDARD_LEADS, SourceKind};

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
    /// Samples per signal; `None` when the header gives none or 0 (then the file size decides).
    pub num_samples: Option<usize>,
    pub base_time: Option<String>,
    pub base_date: Option<String>,
    pub signals: Vec<SignalSpec>,
    /// Text of every `#` comment line, without the `#` and surrounding whitespace, in order.
    pub comments: Vec<String>,
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
    /// Signal files the header names, in order of first appearance.
    pub fn signal_files(&self) -> Vec<PathBuf> {
        let dir = self.path.parent().unwrap_or(Path::new(""));
        let mut files: Vec<PathBuf> = Vec::new();
        for spec in &self.signals {
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
    /// One vector per signal, all `num_samples` long.
    pub samples: Vec<Vec<i32>>,
}

impl DigitalRecord {
    /// Samples converted to millivolts; WFDB's invalid-sample marker becomes NaN.
    pub fn physical(&self) -> Vec<Vec<f32>> {
        self.header
            .signals
            .iter()
            .zip(&self.samples)
            .map(|(spec, digital)| {
                let scale = spec.millivolts_per_unit() / spec.gain();
                let baseline = spec.baseline;
                let invalid = invalid_sample(spec.format);
                digital
                    .iter()
                    .map(|&d| {
                        if Some(d) == invalid {
                            f32::NAN
                        } else {
                            ((f64::from(d) - f64::from(baseline)) * scale) as f32
                        }
                    })
                    .collect()
            })
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

/// Reads and parses a header (`path` to the `.hea`, or the record path without extension).
pub fn read_header(path: impl AsRef<Path>) -> Result<Header, DataError> {
    let path = header_path(path.as_ref());
    let bytes = read_file(&path)?;
    parse_header(&String::from_utf8_lossy(&bytes), &path)
}

/// Reads a record's digital samples, verifying checksums and initial values.
pub fn read_record_digital(path: impl AsRef<Path>) -> Result<DigitalRecord, DataError> {
    let header = read_header(path)?;
    let samples = read_signals(&header)?;
    Ok(DigitalRecord { header, samples })
}

/// Reads a record in millivolts (`id` = the header's record name, source [`SourceKind::Wfdb`],
/// no labels).
pub fn read_record(path: impl AsRef<Path>) -> Result<Record, DataError> {
    read_record_with_header(path).map(|(_, record)| record)
}

/// Like [`read_record`], also returning the header (its comments carry labels for some sources).
pub fn read_record_with_header(path: impl AsRef<Path>) -> Result<(Header, Record), DataError> {
    let digital = read_record_digital(path)?;
    let record = digital.to_record();
    Ok((digital.header, record))
}

/// Parses header text; `path` is recorded in the header and names the file in errors.
pub fn parse_header(text: &str, path: &Path) -> Result<Header, DataError> {
    let fallback_name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut comments = Vec::new();
    let mut header: Option<Header> = None;
    let mut declared_signals = 0usize;
    for (index, raw_line) in text.split('\n').enumerate() {
        let line_no = index + 1;
        let line = raw_line.trim_end_matches('\r').trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            comments.push(comment.trim().to_string());
            continue;
        }
        match header.as_mut() {
            None => {
                let (parsed, nsig) = parse_record_line(line, line_no, path, &fallback_name)?;
                declared_signals = nsig;
                header = Some(parsed);
            }
            Some(h) if h.signals.len() < declared_signals => {
                let spec = parse_signal_line(line, line_no, h.signals.len(), path, h)?;
                h.signals.push(spec);
            }
            Some(h) => {
                return Err(DataError::Header {
                    record: h.record_name.clone(),
                    path: path.to_path_buf(),
                    line: line_no,
                    message: format!(
                        "unexpected line after the {declared_signals} signal line(s) the record \
                         line declares (expected a `#` comment): `{}`",
                        truncate_for_message(line)
                    ),
                });
            }
        }
    }
    let mut header = header.ok_or_else(|| DataError::Header {
        record: fallback_name.clone(),
        path: path.to_path_buf(),
        line: text.split('\n').count(),
        message: "no record line (the header is empty or holds only comments)".to_string(),
    })?;
    if header.signals.len() < declared_signals {
        return Err(DataError::Header {
            record: header.record_name.clone(),
            path: path.to_path_buf(),
            line: header.record_line,
            message: format!(
                "record line declares {declared_signals} signal(s) but only {} signal line(s) follow",
                header.signals.len()
            ),
        });
    }
    header.comments = comments;
    check_signal_groups(&header)?;
    Ok(header)
}

fn truncate_for_message(line: &str) -> String {
    const MAX_CHARS: usize = 80;
    if line.chars().count() <= MAX_CHARS {
        line.to_string()
    } else {
        line.chars().take(MAX_CHARS).chain("...".chars()).collect()
    }
}

/// Splits a line into whitespace-separated tokens, each with its byte offset.
fn tokens(line: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, &line[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, &line[s..]));
    }
    out
}

struct FieldContext<'a> {
    record: &'a str,
    path: &'a Path,
    line: usize,
}

impl FieldContext<'_> {
    fn error(&self, field: &'static str, expected: impl Into<String>, found: &str) -> DataError {
        DataError::HeaderField {
            record: self.record.to_string(),
            path: self.path.to_path_buf(),
            line: self.line,
            field,
            expected: expected.into(),
            found: truncate_for_message(found),
        }
    }

    fn int<T: std::str::FromStr>(
        &self,
        field: &'static str,
        expected: &str,
        text: &str,
    ) -> Result<T, DataError> {
        text.parse().map_err(|_| self.error(field, expected, text))
    }
}

fn parse_record_line(
    line: &str,
    line_no: usize,
    path: &Path,
    fallback_name: &str,
) -> Result<(Header, usize), DataError> {
    let fields = tokens(line);
    let name_field = fields.first().map_or("", |f| f.1);
    let ctx = FieldContext {
        record: if name_field.is_empty() {
            fallback_name
        } else {
            name_field
        },
        path,
        line: line_no,
    };
    if name_field.contains('/') {
        return Err(DataError::Header {
            record: name_field.to_string(),
            path: path.to_path_buf(),
            line: line_no,
            message: "multi-segment records (NAME/SEGMENTS) are not supported".to_string(),
        });
    }
    let nsig_text = fields
        .get(1)
        .map(|f| f.1)
        .ok_or_else(|| ctx.error("number of signals", "a non-negative integer", ""))?;
    let nsig: usize = ctx.int("number of signals", "a non-negative integer", nsig_text)?;
    // A header cannot meaningfully describe more signals than it has lines for; the cap keeps
    // a mangled count from driving a huge allocation.
    if nsig > 100_000 {
        return Err(ctx.error("number of signals", "at most 100000", nsig_text));
    }
    let fs = match fields.get(2) {
        None => DEFAULT_FS,
        Some(&(_, text)) => {
            let number = text.split(['/', '(']).next().unwrap_or("");
            match number.parse::<f64>() {
                Ok(fs) if fs.is_finite() && fs > 0.0 => fs,
                _ => {
                    return Err(ctx.error(
                        "sampling frequency",
                        "a positive number (optionally FS/COUNTERFREQ(BASE))",
                        text,
                    ));
                }
            }
        }
    };
    let num_samples = match fields.get(3) {
        None => None,
        Some(&(_, text)) => {
            let n: usize = ctx.int("number of samples", "a non-negative integer", text)?;
            (n > 0).then_some(n)
        }
    };
    let base_time = fields.get(4).map(|f| f.1.to_string());
    let base_date = fields.get(5).map(|f| f.1.to_string());
    if let Some(&(_, extra)) = fields.get(6) {
        return Err(ctx.error(
            "record line",
            "at most 6 fields (name, signals, fs, samples, base time, base date)",
            extra,
        ));
    }
    let header = Header {
        path: path.to_path_buf(),
        record_name: name_field.to_string(),
        record_line: line_no,
        fs,
        num_samples,
        base_time,
        base_date,
        signals: Vec::with_capacity(nsig.min(64)),
        comments: Vec::new(),
    };
    Ok((header, nsig))
}

/// Splits `FORMAT[xSPF][:SKEW][+OFFSET]`.
fn parse_format_field(
    text: &str,
    ctx: &FieldContext,
) -> Result<(u16, u32, u32, Option<u64>), DataError> {
    const EXPECTED: &str = "FORMAT[xSAMPLES_PER_FRAME][:SKEW][+BYTE_OFFSET] with integer parts";
    let bad = || ctx.error("format", EXPECTED, text);
    let (rest, offset) = match text.split_once('+') {
        Some((rest, offset)) => (rest, Some(offset.parse::<u64>().map_err(|_| bad())?)),
        None => (text, None),
    };
    let (rest, skew) = match rest.split_once(':') {
        Some((rest, skew)) => (rest, skew.parse::<u32>().map_err(|_| bad())?),
        None => (rest, 0),
    };
    let (format, spf) = match rest.split_once('x') {
        Some((format, spf)) => (format, spf.parse::<u32>().map_err(|_| bad())?),
        None => (rest, 1),
    };
    let format = format.parse::<u16>().map_err(|_| bad())?;
    Ok((format, spf, skew, offset))
}

/// Splits `GAIN[(BASELINE)][/UNITS]`.
fn parse_gain_field(
    text: &str,
    ctx: &FieldContext,
) -> Result<(f64, Option<i32>, Option<String>), DataError> {
    const EXPECTED: &str = "GAIN[(BASELINE)][/UNITS]: a non-negative number, an integer baseline";
    let bad = || ctx.error("gain", EXPECTED, text);
    let (gain_part, units) = match text.split_once('/') {
        Some((g, u)) if !u.is_empty() => (g, Some(u.to_string())),
        Some(_) => return Err(bad()),
        None => (text, None),
    };
    let (gain_text, baseline) = match gain_part.split_once('(') {
        Some((g, b)) => {
            let b = b.strip_suffix(')').ok_or_else(bad)?;
            (g, Some(b.parse::<i32>().map_err(|_| bad())?))
        }
        None => (gain_part, None),
    };
    match gain_text.parse::<f64>() {
        Ok(gain) if gain.is_finite() && gain >= 0.0 => Ok((gain, baseline, units)),
        _ => Err(bad()),
    }
}

fn parse_signal_line(
    line: &str,
    line_no: usize,
    signal_index: usize,
    path: &Path,
    header: &Header,
) -> Result<SignalSpec, DataError> {
    let ctx = FieldContext {
        record: &header.record_name,
        path,
        line: line_no,
    };
    let fields = tokens(line);
    let field = |i: usize| fields.get(i).map(|f| f.1);
    let file_name = field(0).unwrap_or_default().to_string();
    let format_text = field(1)
        .ok_or_else(|| ctx.error("format", "a signal line `FILE FORMAT [GAIN ...]`", line))?;
    let (format, samples_per_frame, skew, byte_offset) = parse_format_field(format_text, &ctx)?;
    let (adc_gain, baseline, units) = match field(2) {
        Some(text) => parse_gain_field(text, &ctx)?,
        None => (0.0, None, None),
    };
    let adc_resolution = field(3)
        .map(|t| ctx.int("ADC resolution", "a non-negative integer (bits)", t))
        .transpose()?;
    let adc_zero = field(4)
        .map(|t| ctx.int("ADC zero", "an integer", t))
        .transpose()?
        .unwrap_or(0);
    let initial_value = field(5)
        .map(|t| ctx.int("initial value", "an integer", t))
        .transpose()?;
    let checksum = field(6)
        .map(|t| ctx.int("checksum", "an integer (16-bit sum of the samples)", t))
        .transpose()?;
    let block_size = field(7)
        .map(|t| ctx.int("block size", "a non-negative integer", t))
        .transpose()?;
    let description = fields.get(8).map_or(String::new(), |&(start, _)| {
        line[start..].trim().to_string()
    });
    let lead = if description.is_empty() {
        format!("signal{signal_index}")
    } else {
        normalize_lead_name(&description)
    };
    Ok(SignalSpec {
        line: line_no,
        file_name,
        format,
        samples_per_frame,
        skew,
        byte_offset,
        adc_gain,
        baseline: baseline.unwrap_or(adc_zero),
        units: units.unwrap_or_else(|| "mV".to_string()),
        adc_resolution,
        adc_zero,
        initial_value,
        checksum,
        block_size,
        description,
        lead,
    })
}

/// Signals sharing a file must be adjacent and agree on format and byte offset (WFDB reads them
/// as one interleaved group).
fn check_signal_groups(header: &Header) -> Result<(), DataError> {
    for group in signal_groups(&header.signals) {
        let first = &header.signals[group.start];
        for spec in &header.signals[group.clone()] {
            if spec.format != first.format || spec.byte_offset != first.byte_offset {
                return Err(DataError::Header {
                    record: header.record_name.clone(),
                    path: header.path.clone(),
                    line: spec.line,
                    message: format!(
                        "lead {} is stored in {} with format {} offset {:?}, but the file's first \
                         signal (line {}) says format {} offset {:?}",
                        spec.lead,
                        spec.file_name,
                        spec.format,
                        spec.byte_offset,
                        first.line,
                        first.format,
                        first.byte_offset
                    ),
                });
            }
        }
        if let Some(later) = header.signals[group.end..]
            .iter()
            .find(|s| s.file_name == first.file_name)
        {
            return Err(DataError::Header {
                record: header.record_name.clone(),
                path: header.path.clone(),
                line: later.line,
                message: format!(
                    "signals stored in {} must be on adjacent lines (first group starts at line {})",
                    first.file_name, first.line
                ),
            });
        }
    }
    Ok(())
}

/// Index ranges of runs of adjacent signals stored in the same file.
fn signal_groups(signals: &[SignalSpec]) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    for i in 1..=signals.len() {
        if i == signals.len() || signals[i].file_name != signals[start].file_name {
            if i > start {
                groups.push(start..i);
            }
            start = i;
        }
    }
    groups
}

/// Storage layouts this reader decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Little-endian two's complement integers of N bytes (formats 16, 24, 32).
    Le(usize),
    /// Big-endian 16-bit (format 61).
    Be16,
    /// Offset binary: unsigned 8-bit minus 128 (80), unsigned 16-bit minus 32768 (160).
    Offset8,
    Offset16,
    /// Two 12-bit samples packed in three bytes (212).
    Packed212,
}

fn layout(format: u16) -> Option<Layout> {
    Some(match format {
        16 => Layout::Le(2),
        24 => Layout::Le(3),
        32 => Layout::Le(4),
        61 => Layout::Be16,
        80 => Layout::Offset8,
        160 => Layout::Offset16,
        212 => Layout::Packed212,
        _ => return None,
    })
}

/// WFDB's "invalid sample" marker for a format: the most negative value it can store.
fn invalid_sample(format: u16) -> Option<i32> {
    Some(match format {
        16 | 61 | 160 => -32768,
        24 => -(1 << 23),
        32 => i32::MIN,
        80 => -128,
        212 => -2048,
        _ => return None,
    })
}

/// Bytes needed for `samples` interleaved samples in a layout, `None` on overflow.
fn bytes_for(layout: Layout, samples: usize) -> Option<usize> {
    match layout {
        Layout::Le(width) => samples.checked_mul(width),
        Layout::Be16 | Layout::Offset16 => samples.checked_mul(2),
        Layout::Offset8 => Some(samples),
        // An odd trailing sample occupies two bytes (its low byte and its high nibble).
        Layout::Packed212 => samples.checked_mul(3).map(|b| b.div_ceil(2)),
    }
}

/// Decodes every signal of a header, verifying checksums and initial values.
pub fn read_signals(header: &Header) -> Result<Vec<Vec<i32>>, DataError> {
    let dir = header.path.parent().unwrap_or(Path::new(""));
    let mut out: Vec<Vec<i32>> = Vec::with_capacity(header.signals.len());
    for group in signal_groups(&header.signals) {
        let specs = &header.signals[group];
        let first = &specs[0];
        let unsupported = || DataError::UnsupportedFormat {
            record: header.record_name.clone(),
            lead: first.lead.clone(),
            line: first.line,
            format: format!(
                "{}{}{}",
                first.format,
                if first.samples_per_frame == 1 {
                    String::new()
                } else {
                    format!("x{}", first.samples_per_frame)
                },
                if first.skew == 0 {
                    String::new()
                } else {
                    format!(":{}", first.skew)
                }
            ),
        };
        let layout = layout(first.format).ok_or_else(unsupported)?;
        if first.samples_per_frame != 1 || first.skew != 0 || first.file_name == "~" {
            return Err(unsupported());
        }
        let file = dir.join(&first.file_name);
        let bytes = std::fs::read(&file).map_err(|source| DataError::SignalFile {
            record: header.record_name.clone(),
            lead: first.lead.clone(),
            line: first.line,
            path: file.clone(),
            source,
        })?;
        let mut offset = first.byte_offset;
        let mut num_samples = header.num_samples;
        if is_mat_file(&first.file_name) {
            if first.format != 16 {
                return Err(unsupported());
            }
            let mat_header = mat::parse_header(&bytes, &header.record_name, &file)?;
            mat::check_matches_wfdb(
                &mat_header,
                specs.len(),
                num_samples,
                offset,
                &header.record_name,
                &file,
            )?;
            offset = Some(mat_header.data_offset as u64);
            num_samples = Some(mat_header.cols);
        }
        let truncated = |expected: u64| DataError::TruncatedSignal {
            record: header.record_name.clone(),
            path: file.clone(),
            first_lead: first.lead.clone(),
            group_size: specs.len(),
            expected,
            found: bytes.len() as u64,
        };
        let offset = offset.unwrap_or(0);
        let data = usize::try_from(offset)
            .ok()
            .and_then(|o| bytes.get(o..))
            .ok_or_else(|| truncated(offset))?;
        let nsig = specs.len();
        let num_samples = match num_samples {
            Some(n) => n,
            None => {
                let per_frame = bytes_for(layout, nsig).unwrap_or(usize::MAX);
                let n = if layout == Layout::Packed212 {
                    data.len() * 2 / (3 * nsig)
                } else {
                    data.len() / per_frame
                };
                if layout != Layout::Packed212 && data.len() % per_frame != 0 {
                    return Err(truncated(offset + ((n + 1) * per_frame) as u64));
                }
                n
            }
        };
        let needed = num_samples
            .checked_mul(nsig)
            .and_then(|total| bytes_for(layout, total));
        match needed {
            Some(needed) if needed <= data.len() => {}
            _ => {
                let expected = needed.map_or(u64::MAX, |n| n as u64).saturating_add(offset);
                return Err(truncated(expected));
            }
        }
        let first_new = out.len();
        out.extend(decode(layout, data, nsig, num_samples));
        for (spec, samples) in specs.iter().zip(&out[first_new..]) {
            verify_signal(header, spec, samples)?;
        }
    }
    Ok(out)
}

fn is_mat_file(name: &str) -> bool {
    Path::new(name)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("mat"))
}

fn verify_signal(header: &Header, spec: &SignalSpec, samples: &[i32]) -> Result<(), DataError> {
    if let (Some(expected), Some(&first)) = (spec.initial_value, samples.first())
        && expected != first
    {
        return Err(DataError::InitialValue {
            record: header.record_name.clone(),
            lead: spec.lead.clone(),
            line: spec.line,
            expected,
            found: first,
        });
    }
    if let Some(expected) = spec.checksum {
        // WFDB's checksum is the sum of the samples modulo 2^16; the low 16 bits of a wrapping
        // 32-bit sum are exactly that.
        let computed = samples.iter().fold(0i32, |acc, &s| acc.wrapping_add(s)) as u16;
        if computed != expected as u16 {
            return Err(DataError::Checksum {
                record: header.record_name.clone(),
                lead: spec.lead.clone(),
                line: spec.line,
                expected: expected as u16,
                computed,
            });
        }
    }
    Ok(())
}

/// De-interleaves `num_samples` frames of `nsig` signals. The caller has checked `data` is
/// long enough.
fn decode(layout: Layout, data: &[u8], nsig: usize, num_samples: usize) -> Vec<Vec<i32>> {
    if nsig == 0 {
        return Vec::new();
    }
    match layout {
        Layout::Le(2) => strided::<2>(data, nsig, num_samples, |b| {
            i32::from(i16::from_le_bytes([b[0], b[1]]))
        }),
        Layout::Le(3) => strided::<3>(data, nsig, num_samples, |b| {
            // Place the three bytes high in an i32 and shift back down to sign-extend.
            i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8
        }),
        Layout::Le(_) => strided::<4>(data, nsig, num_samples, |b| {
            i32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }),
        Layout::Be16 => strided::<2>(data, nsig, num_samples, |b| {
            i32::from(i16::from_be_bytes([b[0], b[1]]))
        }),
        Layout::Offset8 => strided::<1>(data, nsig, num_samples, |b| i32::from(b[0]) - 128),
        Layout::Offset16 => strided::<2>(data, nsig, num_samples, |b| {
            i32::from(u16::from_le_bytes([b[0], b[1]])) - 32768
        }),
        Layout::Packed212 => decode_212(data, nsig, num_samples),
    }
}

fn strided<const WIDTH: usize>(
    data: &[u8],
    nsig: usize,
    num_samples: usize,
    sample: impl Fn(&[u8]) -> i32,
) -> Vec<Vec<i32>> {
    let frame = WIDTH * nsig;
    let frames = &data[..frame * num_samples];
    (0..nsig)
        .map(|signal| {
            let at = signal * WIDTH;
            frames
                .chunks_exact(frame)
                .map(|f| sample(&f[at..at + WIDTH]))
                .collect()
        })
        .collect()
}

fn decode_212(data: &[u8], nsig: usize, num_samples: usize) -> Vec<Vec<i32>> {
    let total = nsig * num_samples;
    let mut flat = Vec::with_capacity(total + 1);
    // Sign-extend a 12-bit value by moving it to the top of an i32 and shifting back.
    let extend = |v: u32| ((v << 20) as i32) >> 20;
    for triple in data[..bytes_for(Layout::Packed212, total).unwrap_or(0)].chunks(3) {
        let b0 = u32::from(triple[0]);
        let b1 = u32::from(triple.get(1).copied().unwrap_or(0));
        flat.push(extend(b0 | ((b1 & 0x0f) << 8)));
        if let Some(&b2) = triple.get(2) {
            flat.push(extend(u32::from(b2) | ((b1 & 0xf0) << 4)));
        }
    }
    flat.truncate(total);
    (0..nsig)
        .map(|signal| flat[signal..].iter().step_by(nsig).copied().collect())
        .collect()
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

    #[test]
    fn format_212_unpacks_the_wfdb_spec_example() {
        // Samples 0x123 and 0x456: low byte of the first, then the two high nibbles (second's
        // in the upper half), then the low byte of the second.
        assert_eq!(
            decode_212(&[0x23, 0x41, 0x56], 2, 1),
            vec![vec![0x123], vec![0x456]]
        );
        // -1 and -2048 (all ones; sign bit only), and a trailing odd sample stored in 2 bytes.
        assert_eq!(
            decode_212(&[0xff, 0x8f, 0x00, 0x05, 0x00], 1, 3),
            vec![vec![-1, -2048, 5]]
        );
    }

    #[test]
    fn byte_formats_decode_per_the_wfdb_spec() {
        let check = |format: u16, bytes: &[u8], expected: Vec<i32>| {
            let layout = layout(format).unwrap();
            let n = expected.len();
            assert_eq!(bytes_for(layout, n), Some(bytes.len()), "format {format}");
            assert_eq!(
                decode(layout, bytes, 1, n),
                vec![expected],
                "format {format}"
            );
        };
        // 80: offset binary, 128 is zero.
        check(80, &[128, 0, 255], vec![0, -128, 127]);
        // 160: little-endian offset binary, 0x8000 is zero.
        check(
            160,
            &[0x00, 0x80, 0xff, 0xff, 0x00, 0x00],
            vec![0, 32767, -32768],
        );
        // 61: big-endian two's complement.
        check(61, &[0x01, 0x02, 0xff, 0xfe], vec![258, -2]);
        // 16, 24, 32: little-endian two's complement.
        check(16, &[0x02, 0x01, 0xfe, 0xff], vec![258, -2]);
        check(
            24,
            &[0xff, 0xff, 0xff, 0x01, 0x00, 0x80],
            vec![-1, -8_388_607],
        );
        check(32, &[0xfe, 0xff, 0xff, 0xff], vec![-2]);
        assert_eq!(layout(310), None);
    }

    #[test]
    fn format_fields_split_into_parts() {
        let path = Path::new("x.hea");
        let ctx = FieldContext {
            record: "x",
            path,
            line: 2,
        };
        assert_eq!(
            parse_format_field("16x1+24", &ctx).unwrap(),
            (16, 1, 0, Some(24))
        );
        assert_eq!(parse_format_field("212", &ctx).unwrap(), (212, 1, 0, None));
        assert_eq!(
            parse_format_field("16x2:3+8", &ctx).unwrap(),
            (16, 2, 3, Some(8))
        );
        assert!(parse_format_field("16+", &ctx).is_err());
        assert_eq!(
            parse_gain_field("1716(6)/mV", &ctx).unwrap(),
            (1716.0, Some(6), Some("mV".to_string()))
        );
        assert_eq!(
            parse_gain_field("1000.0", &ctx).unwrap(),
            (1000.0, None, None)
        );
        assert!(parse_gain_field("1000(x)/mV", &ctx).is_err());
        assert!(parse_gain_field("-5/mV", &ctx).is_err());
    }
}
