//! Reading WFDB signal files: opening them safely, checking their sizes against the header,
//! dealing frames out to signals (several samples per frame), format 8's differences, skew,
//! and each signal's checksum and initial value.

use std::path::{Path, PathBuf};

use super::format::{Layout, decode_flat, decode_lead, decode_strided, invalid_sample, layout};
use super::header::signal_groups;
use super::{Header, Millivolts, ReadLimits, SignalSpec};
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

/// Where one file's samples are: the open file, the byte range to read, and the frames in it.
struct StoredGroup {
    layout: Layout,
    opened: safe_read::RegularFile,
    /// The file as the header names it (for error messages).
    file: PathBuf,
    offset: u64,
    bytes: u64,
    frames: usize,
}

/// What one signal file (group of signals) holds.
enum Group {
    /// No file, or format 0: every one of `frames` frames is invalid.
    Null {
        frames: usize,
    },
    Stored(StoredGroup),
}

fn signal_file_error(
    header: &Header,
    spec: &SignalSpec,
    file: &Path,
    source: std::io::Error,
) -> DataError {
    DataError::SignalFile {
        record: header.record_name.clone(),
        lead: spec.lead.clone(),
        line: spec.line,
        path: file.to_path_buf(),
        source,
    }
}

/// Opens the file of one group of signals and finds the bytes of its samples, checking its
/// size against the header and the samples against `limits` before anything is read.
fn locate_group(
    header: &Header,
    specs: &[SignalSpec],
    limits: ReadLimits,
    samples_so_far: u64,
) -> Result<Group, DataError> {
    let first = &specs[0];
    let per_frame: usize = specs.iter().map(|s| s.samples_per_frame as usize).sum();
    if first.file_name == NULL_FILE || first.format == 0 {
        let frames = header.num_samples.unwrap_or(0);
        check_limit(header, samples_so_far + (frames * per_frame) as u64, limits)?;
        return Ok(Group::Null { frames });
    }
    let layout = layout(first.format).ok_or_else(|| DataError::UnsupportedFormat {
        record: header.record_name.clone(),
        lead: first.lead.clone(),
        line: first.line,
        format: first.format.to_string(),
    })?;
    let (mut opened, file) = open_signal_file(header, first)?;
    let (offset, num_samples) = if is_mat_file(&first.file_name) {
        mat_data(header, specs, &mut opened, &file)?
    } else {
        (first.byte_offset.unwrap_or(0), header.num_samples)
    };
    let size = opened.size;
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
            if let Some(width) = layout.width() {
                let frame_bytes = (width * per_frame) as u64;
                if !available.is_multiple_of(frame_bytes) {
                    let whole = available / frame_bytes + 1;
                    return Err(truncated(offset + whole * frame_bytes));
                }
            }
            layout.samples_in(available) / per_frame as u64
        }
    };
    check_limit(header, samples_so_far + frames * per_frame as u64, limits)?;
    // The limit keeps these products far below overflow.
    let frames = frames as usize;
    let bytes = layout
        .bytes_for(frames * per_frame)
        .expect("bounded by the sample limit") as u64;
    if bytes > available {
        return Err(truncated(offset + bytes));
    }
    Ok(Group::Stored(StoredGroup {
        layout,
        opened,
        file,
        offset,
        bytes,
        frames,
    }))
}

/// A MAT v4 signal file's data offset and columns (samples per signal), checked against the
/// header's signal lines.
fn mat_data(
    header: &Header,
    specs: &[SignalSpec],
    opened: &mut safe_read::RegularFile,
    file: &Path,
) -> Result<(u64, Option<usize>), DataError> {
    let first = &specs[0];
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
    let prefix_len = opened.size.min(mat::MAX_HEADER_BYTES as u64);
    let prefix = safe_read::read_range(&mut opened.file, 0, prefix_len)
        .map_err(|e| signal_file_error(header, first, file, e))?;
    let mat_header = mat::parse_header(&prefix, &header.record_name, file)?;
    mat::check_matches_wfdb(
        &mat_header,
        specs.len(),
        header.num_samples,
        first.byte_offset,
        &header.record_name,
        file,
    )?;
    Ok((mat_header.data_offset as u64, Some(mat_header.cols)))
}

impl StoredGroup {
    /// Reads the group's sample bytes into `buffer`.
    fn read_into(
        &mut self,
        header: &Header,
        first: &SignalSpec,
        buffer: &mut Vec<u8>,
    ) -> Result<(), DataError> {
        safe_read::read_range_into(&mut self.opened.file, self.offset, self.bytes, buffer)
            .map_err(|e| signal_file_error(header, first, &self.file, e))
    }
}

/// Reads and de-interleaves the signals stored in one file; each comes back with
/// `frames x samples_per_frame` samples.
fn read_group(
    header: &Header,
    specs: &[SignalSpec],
    limits: ReadLimits,
    samples_so_far: u64,
) -> Result<Vec<Vec<i32>>, DataError> {
    let group = locate_group(header, specs, limits, samples_so_far)?;
    digital_group(header, specs, group)
}

/// The digital samples of a located group.
fn digital_group(
    header: &Header,
    specs: &[SignalSpec],
    group: Group,
) -> Result<Vec<Vec<i32>>, DataError> {
    let mut stored = match group {
        Group::Null { frames } => {
            let invalid = invalid_sample(specs[0].format).unwrap_or(i32::MIN);
            return Ok(specs
                .iter()
                .map(|s| vec![invalid; frames * s.samples_per_frame as usize])
                .collect());
        }
        Group::Stored(stored) => stored,
    };
    with_buffer(|data| {
        stored.read_into(header, &specs[0], data)?;
        let mut signals = deal_out(stored.layout, data, specs, stored.frames);
        for (spec, samples) in specs.iter().zip(&mut signals) {
            if stored.layout == Layout::Diff8 {
                accumulate_differences(samples, spec.initial_value.unwrap_or(0));
            }
            apply_skew(samples, spec);
        }
        Ok(signals)
    })
}

/// Runs `f` with this thread's buffer for signal file bytes, kept between reads so that reading
/// a folder of records does not allocate (and fault in) a fresh buffer per file.
fn with_buffer<T>(f: impl FnOnce(&mut Vec<u8>) -> T) -> T {
    /// A buffer larger than this is freed after use rather than kept.
    const KEEP_BYTES: usize = 16 << 20;
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            let out = f(&mut buffer);
            if buffer.capacity() > KEEP_BYTES {
                *buffer = Vec::new();
            }
            out
        }
        // Re-entered (cannot happen today): use a buffer of its own.
        Err(_) => f(&mut Vec::new()),
    })
}

/// Decodes every signal of a header in millivolts at the frame rate, like
/// [`super::DigitalRecord::physical`] of [`read_signals_within`] (the same values, bit for bit),
/// but for files of one-sample-per-frame, unskewed signals in a byte-aligned format straight from
/// the file's bytes, checking checksums and initial values on the way.
pub fn read_physical_within(
    header: &Header,
    limits: ReadLimits,
) -> Result<Vec<Vec<f32>>, DataError> {
    if let Some(n) = header.num_samples {
        let per_frame: u64 = header
            .signals
            .iter()
            .map(|s| u64::from(s.samples_per_frame))
            .sum();
        check_limit(header, n as u64 * per_frame, limits)?;
    }
    let mut out: Vec<Vec<f32>> = Vec::with_capacity(header.signals.len());
    let mut samples_so_far = 0u64;
    for group in signal_groups(&header.signals) {
        let specs = &header.signals[group];
        let direct = specs
            .iter()
            .all(|s| s.samples_per_frame == 1 && s.skew == 0);
        let decoded = match locate_group(header, specs, limits, samples_so_far)? {
            Group::Stored(mut stored) if direct && stored.layout.is_direct() => {
                with_buffer(|data| {
                    stored.read_into(header, &specs[0], data)?;
                    physical_direct(header, specs, &stored, data)
                })?
            }
            group => {
                let digital = digital_group(header, specs, group)?;
                let mut leads = Vec::with_capacity(specs.len());
                for (spec, samples) in specs.iter().zip(&digital) {
                    verify_signal(header, spec, samples)?;
                    leads.push(super::physical_at_frame_rate(spec, samples));
                }
                leads
            }
        };
        samples_so_far += decoded.iter().map(|s| s.len() as u64).sum::<u64>();
        out.extend(decoded);
    }
    Ok(out)
}

/// One lead per spec, in millivolts, from a file of one-sample-per-frame signals in a
/// [direct](Layout::is_direct) layout.
fn physical_direct(
    header: &Header,
    specs: &[SignalSpec],
    stored: &StoredGroup,
    data: &[u8],
) -> Result<Vec<Vec<f32>>, DataError> {
    let signals = specs.len();
    let mut leads = Vec::with_capacity(signals);
    for (index, spec) in specs.iter().enumerate() {
        let to_mv = Millivolts::of(spec);
        let lead = decode_lead(stored.layout, data, signals, index, stored.frames, &to_mv);
        check_signal(header, spec, lead.first, lead.sum)?;
        leads.push(lead.millivolts);
    }
    Ok(leads)
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
    let sum = samples.iter().fold(0i32, |acc, &s| acc.wrapping_add(s));
    check_signal(header, spec, samples.first().copied(), sum)
}

/// Checks a signal's first sample and the wrapping 32-bit sum of its samples against the
/// header's initial value and checksum.
fn check_signal(
    header: &Header,
    spec: &SignalSpec,
    first: Option<i32>,
    sum: i32,
) -> Result<(), DataError> {
    // Format 8's initial value is where its differences start, not a check.
    if let (Some(expected), Some(first)) = (spec.initial_value, first)
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
        let computed = sum as u16;
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
