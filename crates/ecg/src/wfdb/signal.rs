//! Reading WFDB signal files: opening them safely, checking their sizes against the header,
//! dealing frames out to signals (several samples per frame), format 8's differences, skew,
//! and each signal's checksum and initial value.

use std::path::{Path, PathBuf};

use super::format::{Layout, decode_flat, decode_strided, invalid_sample, layout};
use super::header::signal_groups;
use super::{Header, ReadLimits, SignalSpec};
use crate::error::DataError;
use crate::{mat, safe_read};

/// The file name WFDB uses for a signal that has no file (all its samples invalid; format 0
/// says the same).
pub const NULL_FILE: &str = "~";

/// Decodes every signal of a header within the default [`ReadLimits`], verifying checksums and
/// initial values.
pub fn read_signals(header: &Header) -> Result<Vec<Vec<i32>>, DataError> {
    read_signals_within(header, ReadLimits::DEFAULT)
}

/// Decodes every signal of a header, refusing before any allocation a record whose samples
/// exceed `limits`.
pub fn read_signals_within(
    header: &Header,
    limits: ReadLimits,
) -> Result<Vec<Vec<i32>>, DataError> {
    if let Some(n) = header.num_samples {
        let per_frame: u64 = header
            .signals
            .iter()
            .map(|s| u64::from(s.samples_per_frame))
            .sum();
        check_limit(header, n as u64 * per_frame, limits)?;
    }
    let mut out: Vec<Vec<i32>> = Vec::with_capacity(header.signals.len());
    let mut samples_so_far = 0u64;
    for group in signal_groups(&header.signals) {
        let specs = &header.signals[group];
        let decoded = read_group(header, specs, limits, samples_so_far)?;
        samples_so_far += decoded.iter().map(|s| s.len() as u64).sum::<u64>();
        for (spec, samples) in specs.iter().zip(&decoded) {
            verify_signal(header, spec, samples)?;
        }
        out.extend(decoded);
    }
    Ok(out)
}

fn check_limit(header: &Header, samples: u64, limits: ReadLimits) -> Result<(), DataError> {
    if samples > limits.max_samples {
        return Err(DataError::RecordTooLarge {
            record: header.record_name.clone(),
            path: header.path.clone(),
            samples,
            limit: limits.max_samples,
        });
    }
    Ok(())
}

/// Opens a signal file the header names, if it is a regular file inside the record's folder.
fn open_signal_file(
    header: &Header,
    spec: &SignalSpec,
) -> Result<(safe_read::RegularFile, PathBuf), DataError> {
    let dir = header.path.parent().unwrap_or(Path::new(""));
    let shown = dir.join(&spec.file_name);
    let fail = |error: safe_read::OpenError| match error {
        safe_read::OpenError::Io(source) => DataError::SignalFile {
            record: header.record_name.clone(),
            lead: spec.lead.clone(),
            line: spec.line,
            path: shown.clone(),
            source,
        },
        safe_read::OpenError::Refused(refusal) => DataError::SignalFileRefused {
            record: header.record_name.clone(),
            lead: spec.lead.clone(),
            line: spec.line,
            name: spec.file_name.clone(),
            reason: refusal.to_string(),
        },
    };
    let real = safe_read::resolve_in_folder(dir, &spec.file_name).map_err(fail)?;
    let opened = safe_read::open_regular(&real, u64::MAX).map_err(fail)?;
    Ok((opened, shown))
}

/// Reads and de-interleaves the signals stored in one file; each comes back with
/// `frames x samples_per_frame` samples.
fn read_group(
    header: &Header,
    specs: &[SignalSpec],
    limits: ReadLimits,
    samples_so_far: u64,
) -> Result<Vec<Vec<i32>>, DataError> {
    let first = &specs[0];
    let per_frame: usize = specs.iter().map(|s| s.samples_per_frame as usize).sum();
    if first.file_name == NULL_FILE || first.format == 0 {
        // A signal without a file, or in format 0: every sample is invalid.
        let frames = header.num_samples.unwrap_or(0);
        check_limit(header, samples_so_far + (frames * per_frame) as u64, limits)?;
        let invalid = invalid_sample(first.format).unwrap_or(i32::MIN);
        return Ok(specs
            .iter()
            .map(|s| vec![invalid; frames * s.samples_per_frame as usize])
            .collect());
    }
    let layout = layout(first.format).ok_or_else(|| DataError::UnsupportedFormat {
        record: header.record_name.clone(),
        lead: first.lead.clone(),
        line: first.line,
        format: first.format.to_string(),
    })?;
    let (mut opened, file) = open_signal_file(header, first)?;
    let io_error = |source: std::io::Error| DataError::SignalFile {
        record: header.record_name.clone(),
        lead: first.lead.clone(),
        line: first.line,
        path: file.clone(),
        source,
    };
    let size = opened.size;
    let mut offset = first.byte_offset.unwrap_or(0);
    let mut num_samples = header.num_samples;
    if is_mat_file(&first.file_name) {
        if first.format != 16
            || specs
                .iter()
                .any(|s| s.samples_per_frame != 1 || s.skew != 0)
        {
            return Err(DataError::UnsupportedFormat {
                record: header.record_name.clone(),
                lead: first.lead.clone(),
                line: first.line,
                format: format!(
                    "{} in a MAT file (MAT files hold format 16, one sample per frame)",
                    first.format
                ),
            });
        }
        let prefix_len = size.min(mat::MAX_HEADER_BYTES as u64);
        let prefix = safe_read::read_range(&mut opened.file, 0, prefix_len).map_err(io_error)?;
        let mat_header = mat::parse_header(&prefix, &header.record_name, &file)?;
        mat::check_matches_wfdb(
            &mat_header,
            specs.len(),
            num_samples,
            first.byte_offset,
            &header.record_name,
            &file,
        )?;
        offset = mat_header.data_offset as u64;
        num_samples = Some(mat_header.cols);
    }
    let truncated = |expected: u64| DataError::TruncatedSignal {
        record: header.record_name.clone(),
        path: file.clone(),
        first_lead: first.lead.clone(),
        group_size: specs.len(),
        expected,
        found: size,
    };
    if offset > size {
        return Err(truncated(offset));
    }
    let available = size - offset;
    let frames = match num_samples {
        Some(n) => n as u64,
        None => {
            let samples = layout.samples_in(available);
            if let Some(width) = layout.width() {
                let frame_bytes = (width * per_frame) as u64;
                if !available.is_multiple_of(frame_bytes) {
                    let whole = available / frame_bytes + 1;
                    return Err(truncated(offset + whole * frame_bytes));
                }
            }
            samples / per_frame as u64
        }
    };
    check_limit(header, samples_so_far + frames * per_frame as u64, limits)?;
    // The limit keeps these products far below overflow.
    let (frames, total) = (frames as usize, frames as usize * per_frame);
    let needed = layout
        .bytes_for(total)
        .expect("bounded by the sample limit") as u64;
    if needed > available {
        return Err(truncated(offset + needed));
    }
    let data = safe_read::read_range(&mut opened.file, offset, needed).map_err(io_error)?;
    let mut signals = deal_out(layout, &data, specs, frames);
    for (spec, samples) in specs.iter().zip(&mut signals) {
        if layout == Layout::Diff8 {
            accumulate_differences(samples, spec.initial_value.unwrap_or(0));
        }
        apply_skew(samples, spec);
    }
    Ok(signals)
}

/// Decodes the file's frames and gives each signal its samples, in order.
fn deal_out(layout: Layout, data: &[u8], specs: &[SignalSpec], frames: usize) -> Vec<Vec<i32>> {
    if specs.iter().all(|s| s.samples_per_frame == 1)
        && let Some(signals) = decode_strided(layout, data, specs.len(), frames)
    {
        return signals;
    }
    let per_frame: usize = specs.iter().map(|s| s.samples_per_frame as usize).sum();
    let flat = decode_flat(layout, data, frames * per_frame);
    let mut start = 0;
    specs
        .iter()
        .map(|spec| {
            let spf = spec.samples_per_frame as usize;
            let at = start;
            start += spf;
            let mut samples = Vec::with_capacity(frames * spf);
            for frame in flat.chunks_exact(per_frame) {
                samples.extend_from_slice(&frame[at..at + spf]);
            }
            samples
        })
        .collect()
}

/// Format 8: the stored values are differences, the first from the signal's initial value.
fn accumulate_differences(samples: &mut [i32], initial: i32) {
    let mut value = initial;
    for sample in samples {
        value = value.wrapping_add(*sample);
        *sample = value;
    }
}

/// Sample `t` of a signal skewed by `s` frames is stored in frame `t + s`: drop the first `s`
/// frames' samples and mark the last `s` frames (beyond the file) invalid.
fn apply_skew(samples: &mut Vec<i32>, spec: &SignalSpec) {
    let shift = (spec.skew as usize * spec.samples_per_frame as usize).min(samples.len());
    if shift == 0 {
        return;
    }
    samples.drain(..shift);
    let invalid = invalid_sample(spec.format).unwrap_or(i32::MIN);
    samples.extend(std::iter::repeat_n(invalid, shift));
}

fn is_mat_file(name: &str) -> bool {
    Path::new(name)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("mat"))
}

fn verify_signal(header: &Header, spec: &SignalSpec, samples: &[i32]) -> Result<(), DataError> {
    // Format 8's initial value is where its differences start, not a check.
    if let (Some(expected), Some(&first)) = (spec.initial_value, samples.first())
        && spec.format != 8
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
