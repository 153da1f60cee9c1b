//! Parsing a WFDB header (`.hea`) and checking every field against a sane range.
//!
//! A header is untrusted input: a sampling frequency of 1e300 or 0.001 Hz, a gain of 1e-300 or
//! a sample count in the billions parse as numbers but poison everything downstream (a resampler
//! asked for 10^300 samples, a division that yields infinities). Each field is therefore checked
//! here against the range below, and a value outside it is a [`DataError::HeaderField`] naming
//! the file, line, field, the range expected and the text found.

use std::ops::RangeInclusive;
use std::path::Path;

use super::{DEFAULT_FS, Header, Segment, SignalSpec, normalize_lead_name};
use crate::error::DataError;

/// Sampling frequencies accepted (Hz): ECGs are sampled at 50 Hz to a few tens of kHz.
pub const FS_RANGE_HZ: RangeInclusive<f64> = 1.0..=100_000.0;
/// Most signals one header may declare.
pub const MAX_SIGNALS: usize = 4096;
/// Most samples per signal one header may declare (about 11.6 days at 1 kHz). The memory bound
/// of a read ([`super::ReadLimits`]) is usually the tighter limit.
pub const MAX_SAMPLES_PER_SIGNAL: u64 = 1 << 30;
/// Accepted magnitudes of a non-zero ADC gain (ADC units per physical unit).
pub const GAIN_MAGNITUDE_RANGE: RangeInclusive<f64> = 1e-6..=1e9;
/// Most bits an ADC resolution may declare.
pub const MAX_ADC_RESOLUTION: u32 = 32;
/// Signal formats this reader decodes (0 is the null signal: nothing stored, all invalid).
pub const SUPPORTED_FORMATS: [u16; 11] = [0, 8, 16, 24, 32, 61, 80, 160, 212, 310, 311];
/// Most samples of one signal in one frame (`16x4`: 4).
pub const MAX_SAMPLES_PER_FRAME: u32 = 1024;
/// Largest skew (frames) accepted.
pub const MAX_SKEW: u32 = 1 << 20;
/// Most segments a multi-segment record may list.
pub const MAX_SEGMENTS: usize = 100_000;

/// Parses header text; `path` is recorded in the header and names the file in errors.
pub fn parse_header(text: &str, path: &Path) -> Result<Header, DataError> {
    let fallback_name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut comments = Vec::new();
    let mut header: Option<Header> = None;
    let mut declared_signals = 0usize;
    let mut declared_segments = 0usize;
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
                let (parsed, nsig, nseg) = parse_record_line(line, line_no, path, &fallback_name)?;
                (declared_signals, declared_segments) = (nsig, nseg);
                header = Some(parsed);
            }
            Some(h) if h.segments.len() < declared_segments => {
                let segment = parse_segment_line(line, line_no, path, h)?;
                h.segments.push(segment);
            }
            Some(h) if declared_segments == 0 && h.signals.len() < declared_signals => {
                let spec = parse_signal_line(line, line_no, h.signals.len(), path, h)?;
                h.signals.push(spec);
            }
            Some(h) => {
                return Err(DataError::Header {
                    record: h.record_name.clone(),
                    path: path.to_path_buf(),
                    line: line_no,
                    message: format!(
                        "unexpected line after the {} {} line(s) the record line declares \
                         (expected a `#` comment): `{}`",
                        declared_segments.max(declared_signals),
                        if declared_segments > 0 {
                            "segment"
                        } else {
                            "signal"
                        },
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
    if header.segments.len() < declared_segments {
        return Err(DataError::Header {
            record: header.record_name.clone(),
            path: path.to_path_buf(),
            line: header.record_line,
            message: format!(
                "record line declares {declared_segments} segment(s) but only {} segment line(s) \
                 follow",
                header.segments.len()
            ),
        });
    }
    if declared_segments == 0 && header.signals.len() < declared_signals {
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
) -> Result<(Header, usize, usize), DataError> {
    let fields = tokens(line);
    let full_name = fields.first().map_or("", |f| f.1);
    let (name_field, segments_text) = match full_name.split_once('/') {
        Some((name, segments)) => (name, Some(segments)),
        None => (full_name, None),
    };
    let ctx = FieldContext {
        record: if name_field.is_empty() {
            fallback_name
        } else {
            name_field
        },
        path,
        line: line_no,
    };
    let nseg = match segments_text {
        None => 0,
        Some(text) => {
            let expected = format!("NAME/SEGMENTS with 1 to {MAX_SEGMENTS} segments");
            let n: usize = ctx.int("number of segments", &expected, text)?;
            if !(1..=MAX_SEGMENTS).contains(&n) {
                return Err(ctx.error("number of segments", expected, full_name));
            }
            n
        }
    };
    let nsig_text = fields
        .get(1)
        .map(|f| f.1)
        .ok_or_else(|| ctx.error("number of signals", "a non-negative integer", ""))?;
    let nsig: usize = ctx.int("number of signals", "a non-negative integer", nsig_text)?;
    if nsig > MAX_SIGNALS {
        return Err(ctx.error(
            "number of signals",
            format!("at most {MAX_SIGNALS}"),
            nsig_text,
        ));
    }
    let (fs, counter_freq, base_counter) = match fields.get(2) {
        None => (DEFAULT_FS, None, None),
        Some(&(_, text)) => parse_frequency_field(text, &ctx)?,
    };
    let num_samples = match fields.get(3) {
        None => None,
        Some(&(_, text)) => {
            let expected = format!("an integer from 0 to {MAX_SAMPLES_PER_SIGNAL}");
            let n: u64 = ctx.int("number of samples", &expected, text)?;
            if n > MAX_SAMPLES_PER_SIGNAL {
                return Err(ctx.error("number of samples", expected, text));
            }
            (n > 0).then_some(n as usize)
        }
    };
    let base_time = fields.get(4).map(|f| f.1.to_string());
    if let Some(time) = &base_time
        && !is_base_time(time)
    {
        return Err(ctx.error(
            "base time",
            "HH:MM:SS[.sss] (hours, minutes < 60, seconds < 60)",
            time,
        ));
    }
    let base_date = fields.get(5).map(|f| f.1.to_string());
    if let Some(date) = &base_date
        && !is_base_date(date)
    {
        return Err(ctx.error("base date", "DD/MM/YYYY (day 1-31, month 1-12)", date));
    }
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
        counter_freq,
        base_counter,
        num_samples,
        base_time,
        base_date,
        num_signals: nsig,
        signals: Vec::with_capacity(nsig.min(64)),
        segments: Vec::new(),
        comments: Vec::new(),
    };
    Ok((header, nsig, nseg))
}

/// A segment line of a multi-segment header: `NAME SAMPLES` (`~` for a gap).
fn parse_segment_line(
    line: &str,
    line_no: usize,
    path: &Path,
    header: &Header,
) -> Result<Segment, DataError> {
    let ctx = FieldContext {
        record: &header.record_name,
        path,
        line: line_no,
    };
    let fields = tokens(line);
    let expected = "a segment line `NAME SAMPLES` (NAME a record in this folder or `~`)";
    let [(_, name), (_, samples)] = fields[..] else {
        return Err(ctx.error("segment", expected, line));
    };
    if name != "~" && (name.contains(['/', '\\']) || name.starts_with('.')) {
        return Err(ctx.error(
            "segment name",
            "a record name in this folder (no `/`, no leading `.`) or `~`",
            name,
        ));
    }
    let range = format!("an integer from 0 to {MAX_SAMPLES_PER_SIGNAL}");
    let num_samples: u64 = ctx.int("segment samples", &range, samples)?;
    if num_samples > MAX_SAMPLES_PER_SIGNAL {
        return Err(ctx.error("segment samples", range, samples));
    }
    Ok(Segment {
        line: line_no,
        name: name.to_string(),
        num_samples: num_samples as usize,
    })
}

/// Splits `FS[/COUNTER_FREQUENCY[(BASE_COUNTER)]]`, checking each part.
fn parse_frequency_field(
    text: &str,
    ctx: &FieldContext,
) -> Result<(f64, Option<f64>, Option<f64>), DataError> {
    let fs_expected = || {
        format!(
            "a sampling frequency from {} to {} Hz, optionally FS/COUNTER_FREQUENCY(BASE)",
            FS_RANGE_HZ.start(),
            FS_RANGE_HZ.end()
        )
    };
    let (fs_text, counter) = match text.split_once('/') {
        Some((fs, counter)) => (fs, Some(counter)),
        None => (text, None),
    };
    let fs = fs_text
        .parse::<f64>()
        .ok()
        .filter(|fs| FS_RANGE_HZ.contains(fs))
        .ok_or_else(|| ctx.error("sampling frequency", fs_expected(), text))?;
    let Some(counter) = counter else {
        return Ok((fs, None, None));
    };
    let counter_expected = "FS/COUNTER_FREQUENCY[(BASE_COUNTER)] with a counter frequency in \
                            the sampling frequency's range and a finite base counter";
    let bad = || ctx.error("counter frequency", counter_expected, text);
    let (freq_text, base) = match counter.split_once('(') {
        Some((freq, base)) => {
            let base = base.strip_suffix(')').ok_or_else(bad)?;
            let base = base.parse::<f64>().ok().filter(|b| b.is_finite());
            (freq, Some(base.ok_or_else(bad)?))
        }
        None => (counter, None),
    };
    let freq = freq_text
        .parse::<f64>()
        .ok()
        .filter(|f| FS_RANGE_HZ.contains(f))
        .ok_or_else(bad)?;
    Ok((fs, Some(freq), base))
}

/// `[[HH:]MM:]SS[.sss]`: up to three numbers, each after the first below 60, a fraction only on
/// the seconds.
fn is_base_time(text: &str) -> bool {
    let digits = |p: &str| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() > 3 {
        return false;
    }
    parts.iter().enumerate().all(|(i, part)| {
        let (whole, fraction) = match part.split_once('.') {
            Some((whole, fraction)) if i + 1 == parts.len() => (whole, Some(fraction)),
            Some(_) => return false,
            None => (*part, None),
        };
        digits(whole)
            && fraction.is_none_or(digits)
            && (i == 0 || whole.parse::<u32>().is_ok_and(|v| v < 60))
    })
}

/// `DD/MM/YYYY` with a day 1-31 and a month 1-12.
fn is_base_date(text: &str) -> bool {
    let parts: Vec<&str> = text.split('/').collect();
    let number = |p: &str, max_len: usize| {
        (!p.is_empty() && p.len() <= max_len && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u32>().ok())
            .flatten()
    };
    match parts.as_slice() {
        [day, month, year] => {
            number(day, 2).is_some_and(|d| (1..=31).contains(&d))
                && number(month, 2).is_some_and(|m| (1..=12).contains(&m))
                && number(year, 4).is_some()
        }
        _ => false,
    }
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

/// The values a sample of a format can take (format 8 stores differences, so its samples are
/// bounded only by the 32-bit accumulator).
fn sample_range(format: u16) -> RangeInclusive<i64> {
    let bits = match format {
        80 => 8,
        310 | 311 => 10,
        212 => 12,
        16 | 61 | 160 => 16,
        24 => 24,
        _ => 32,
    };
    -(1i64 << (bits - 1))..=(1i64 << (bits - 1)) - 1
}

/// Splits `GAIN[(BASELINE)][/UNITS]`.
fn parse_gain_field(
    text: &str,
    ctx: &FieldContext,
) -> Result<(f64, Option<i32>, Option<String>), DataError> {
    let bad = || {
        ctx.error(
            "gain",
            format!(
                "GAIN[(BASELINE)][/UNITS]: a gain of 0 (uncalibrated) or of magnitude {:e} to {:e}, \
                 an integer baseline",
                GAIN_MAGNITUDE_RANGE.start(),
                GAIN_MAGNITUDE_RANGE.end()
            ),
            text,
        )
    };
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
        Ok(gain) if gain == 0.0 || GAIN_MAGNITUDE_RANGE.contains(&gain.abs()) => {
            Ok((gain, baseline, units))
        }
        _ => Err(bad()),
    }
}

fn parse_adc_resolution(text: &str, ctx: &FieldContext) -> Result<u32, DataError> {
    let expected = format!("an integer from 0 to {MAX_ADC_RESOLUTION} (bits)");
    let bits: u32 = ctx.int("ADC resolution", &expected, text)?;
    if bits > MAX_ADC_RESOLUTION {
        return Err(ctx.error("ADC resolution", expected, text));
    }
    Ok(bits)
}

fn parse_initial_value(text: &str, format: u16, ctx: &FieldContext) -> Result<i32, DataError> {
    let range = sample_range(format);
    let expected = format!(
        "an integer from {} to {} (format {format}'s sample range)",
        range.start(),
        range.end()
    );
    let value: i64 = ctx.int("initial value", &expected, text)?;
    if !range.contains(&value) {
        return Err(ctx.error("initial value", expected, text));
    }
    Ok(value as i32)
}

fn parse_checksum(text: &str, ctx: &FieldContext) -> Result<i32, DataError> {
    let expected = "an integer from -32768 to 65535 (16-bit sum of the samples)";
    let sum: i32 = ctx.int("checksum", expected, text)?;
    if !(-32768..=65535).contains(&sum) {
        return Err(ctx.error("checksum", expected, text));
    }
    Ok(sum)
}

/// Samples per frame and skew within their bounds (`format_text` is the FORMAT field).
fn check_frame_layout(
    samples_per_frame: u32,
    skew: u32,
    format_text: &str,
    ctx: &FieldContext,
) -> Result<(), DataError> {
    if !(1..=MAX_SAMPLES_PER_FRAME).contains(&samples_per_frame) {
        return Err(ctx.error(
            "samples per frame",
            format!("FORMATxN with N from 1 to {MAX_SAMPLES_PER_FRAME}"),
            format_text,
        ));
    }
    if skew > MAX_SKEW {
        return Err(ctx.error(
            "skew",
            format!("FORMAT:SKEW with a skew from 0 to {MAX_SKEW} frames"),
            format_text,
        ));
    }
    Ok(())
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
        .map(|t| parse_adc_resolution(t, &ctx))
        .transpose()?;
    let adc_zero = field(4)
        .map(|t| ctx.int("ADC zero", "an integer", t))
        .transpose()?
        .unwrap_or(0);
    let initial_value = field(5)
        .map(|t| parse_initial_value(t, format, &ctx))
        .transpose()?;
    let checksum = field(6).map(|t| parse_checksum(t, &ctx)).transpose()?;
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
    if !SUPPORTED_FORMATS.contains(&format) {
        return Err(DataError::UnsupportedFormat {
            record: header.record_name.clone(),
            lead,
            line: line_no,
            format: format_text.to_string(),
        });
    }
    check_frame_layout(samples_per_frame, skew, format_text, &ctx)?;
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
pub(crate) fn signal_groups(signals: &[SignalSpec]) -> Vec<std::ops::Range<usize>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            parse_gain_field("-5/mV", &ctx).unwrap(),
            (-5.0, None, Some("mV".to_string()))
        );
        assert!(parse_gain_field("1e-300/mV", &ctx).is_err());
        assert!(parse_gain_field("-1e300", &ctx).is_err());
    }
}
