//! Multi-segment WFDB records: a master header (`NAME/SEGMENTS NSIG FS NSAMP`) listing segment
//! records (`SEG SAMPLES`, `~` for a gap of invalid samples) that are read one after the other.
//!
//! In a fixed layout every segment has the same signals in the same order. In a variable layout
//! the first segment has 0 samples: it is the layout header, whose signal lines name every signal
//! of the record; each later segment holds some of them, matched by name, and the others are
//! invalid (NaN) for its duration. Segments may differ in gain and baseline, so they are joined
//! in millivolts, at the record's frame rate, as python wfdb's `rdrecord(m2s=True)` does.
//! Segment headers are found only beside the master header (the same rule as signal files) and
//! may not themselves be multi-segment.

use std::path::Path;

use super::signal::{NULL_FILE, read_signals_within};
use super::{DigitalRecord, Header, ReadLimits, Segment, read_header};
use crate::error::DataError;
use crate::record::{Record, RecordMeta, SourceKind};
use crate::safe_read;

fn header_error(header: &Header, line: usize, message: String) -> DataError {
    DataError::Header {
        record: header.record_name.clone(),
        path: header.path.clone(),
        line,
        message,
    }
}

/// Reads a segment's header from beside the master header.
fn segment_header(master: &Header, segment: &Segment) -> Result<Header, DataError> {
    let dir = master.path.parent().unwrap_or(Path::new(""));
    let name = format!("{}.hea", segment.name);
    let real = safe_read::resolve_in_folder(dir, &name).map_err(|error| match error {
        safe_read::OpenError::Io(source) => DataError::SignalFile {
            record: master.record_name.clone(),
            lead: format!("segment {}", segment.name),
            line: segment.line,
            path: dir.join(&name),
            source,
        },
        safe_read::OpenError::Refused(refusal) => DataError::SignalFileRefused {
            record: master.record_name.clone(),
            lead: format!("segment {}", segment.name),
            line: segment.line,
            name: name.clone(),
            reason: refusal.to_string(),
        },
    })?;
    let header = read_header(&real)?;
    if !header.segments.is_empty() {
        return Err(header_error(
            master,
            segment.line,
            format!("segment {} is itself a multi-segment record", segment.name),
        ));
    }
    if (header.fs - master.fs).abs() > 1e-9 * master.fs {
        return Err(header_error(
            master,
            segment.line,
            format!(
                "segment {} is sampled at {} Hz, the record at {} Hz",
                segment.name, header.fs, master.fs
            ),
        ));
    }
    Ok(header)
}

/// Reads a multi-segment record into one record in millivolts.
pub fn read_segments(master: &Header, limits: ReadLimits) -> Result<Record, DataError> {
    let total: u64 = master.segments.iter().map(|s| s.num_samples as u64).sum();
    if let Some(declared) = master.num_samples
        && declared as u64 != total
    {
        return Err(header_error(
            master,
            master.record_line,
            format!("record line says {declared} samples, its segments add up to {total}"),
        ));
    }
    let samples = total.saturating_mul(master.num_signals as u64);
    if samples > limits.max_samples {
        return Err(DataError::RecordTooLarge {
            record: master.record_name.clone(),
            path: master.path.clone(),
            samples,
            limit: limits.max_samples,
        });
    }
    let (leads, variable) = record_layout(master)?;
    // A variable layout's first segment is the layout header and holds no samples.
    let segments = &master.segments[usize::from(variable)..];
    let total = total as usize;
    let mut signals = vec![vec![f32::NAN; total]; leads.len()];
    let mut start = 0;
    for segment in segments {
        if segment.name != NULL_FILE && segment.num_samples > 0 {
            let placed = Placement {
                leads: &leads,
                variable,
                start,
            };
            place_segment(master, segment, limits, &placed, &mut signals)?;
        }
        start += segment.num_samples;
    }
    Ok(Record {
        id: master.record_name.clone(),
        source: SourceKind::Wfdb,
        fs: master.fs,
        leads,
        signals,
        meta: RecordMeta::default(),
        waves: Vec::new(),
    })
}

/// The record's lead names (from its first data segment) and whether its layout is variable
/// (the first segment then has 0 samples and names every signal).
fn record_layout(master: &Header) -> Result<(Vec<String>, bool), DataError> {
    let first_data = master.segments.iter().find(|s| s.name != NULL_FILE);
    let (leads, variable) = match first_data {
        None => (
            (0..master.num_signals)
                .map(|i| format!("signal{i}"))
                .collect(),
            false,
        ),
        Some(first) => {
            let header = segment_header(master, first)?;
            let variable = first.num_samples == 0 && std::ptr::eq(first, &master.segments[0]);
            (header.leads(), variable)
        }
    };
    if leads.len() != master.num_signals {
        return Err(header_error(
            master,
            master.record_line,
            format!(
                "record line declares {} signals, its {} segment has {}",
                master.num_signals,
                if variable { "layout" } else { "first" },
                leads.len()
            ),
        ));
    }
    Ok((leads, variable))
}

/// Where a segment's samples go in the joined record.
struct Placement<'a> {
    leads: &'a [String],
    variable: bool,
    /// The segment's first sample in the record.
    start: usize,
}

/// Reads one data segment and copies its leads into `signals` (matched by name in a variable
/// layout, by position in a fixed one).
fn place_segment(
    master: &Header,
    segment: &Segment,
    limits: ReadLimits,
    at: &Placement,
    signals: &mut [Vec<f32>],
) -> Result<(), DataError> {
    let digital = read_segment(master, segment, limits)?;
    let physical = digital.physical();
    if !at.variable && physical.len() != at.leads.len() {
        return Err(header_error(
            master,
            segment.line,
            format!(
                "fixed-layout segment {} has {} signals, the first segment {}",
                segment.name,
                physical.len(),
                at.leads.len()
            ),
        ));
    }
    for (index, lead) in digital.header.leads().iter().enumerate() {
        let target = if at.variable {
            at.leads.iter().position(|l| l == lead).ok_or_else(|| {
                header_error(
                    master,
                    segment.line,
                    format!(
                        "segment {} has signal {lead}, which the layout segment does not list",
                        segment.name
                    ),
                )
            })?
        } else {
            index
        };
        signals[target][at.start..at.start + segment.num_samples].copy_from_slice(&physical[index]);
    }
    Ok(())
}

/// Reads one data segment, checking it against its segment line.
fn read_segment(
    master: &Header,
    segment: &Segment,
    limits: ReadLimits,
) -> Result<DigitalRecord, DataError> {
    let header = segment_header(master, segment)?;
    if header.num_samples != Some(segment.num_samples) {
        return Err(header_error(
            master,
            segment.line,
            format!(
                "segment {} has {} samples, the segment line says {}",
                segment.name,
                header.num_samples.unwrap_or(0),
                segment.num_samples
            ),
        ));
    }
    let samples = read_signals_within(&header, limits)?;
    Ok(DigitalRecord { header, samples })
}
