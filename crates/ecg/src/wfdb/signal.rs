//! Decoding WFDB signal files: formats, interleaving, checksums and initial values.

use std::path::{Path, PathBuf};

use super::header::signal_groups;
use super::{Header, ReadLimits, SignalSpec};
use crate::error::DataError;
use crate::{mat, safe_read};

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
pub(crate) fn invalid_sample(format: u16) -> Option<i32> {
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
        check_limit(header, n as u64 * header.signals.len() as u64, limits)?;
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

/// Reads and de-interleaves the signals stored in one file.
fn read_group(
    header: &Header,
    specs: &[SignalSpec],
    limits: ReadLimits,
    samples_so_far: u64,
) -> Result<Vec<Vec<i32>>, DataError> {
    let first = &specs[0];
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
    let nsig = specs.len();
    let available = size - offset;
    let num_samples = match num_samples {
        Some(n) => n as u64,
        None => {
            let per_frame = bytes_for(layout, nsig).unwrap_or(usize::MAX) as u64;
            if layout == Layout::Packed212 {
                available * 2 / (3 * nsig as u64)
            } else {
                if !available.is_multiple_of(per_frame) {
                    return Err(truncated(offset + (available / per_frame + 1) * per_frame));
                }
                available / per_frame
            }
        }
    };
    check_limit(header, samples_so_far + num_samples * nsig as u64, limits)?;
    // The limit keeps this product far below overflow.
    let total = (num_samples * nsig as u64) as usize;
    let needed = bytes_for(layout, total).expect("bounded by the sample limit") as u64;
    if needed > available {
        return Err(truncated(offset + needed));
    }
    let data = safe_read::read_range(&mut opened.file, offset, needed).map_err(io_error)?;
    Ok(decode(layout, &data, nsig, num_samples as usize))
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
}
