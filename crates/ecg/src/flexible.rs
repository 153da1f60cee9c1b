//! anyECG-chat's flexible inputs (issue #12.4, `../shared/docs/paper-facts.md` §3): records of
//! any length cut into fixed-length chunks (10 s in the paper), each to be encoded on its own;
//! reduced lead sets zero-filled into the standard 12-lead order with the lead mask a model
//! sees; and the abnormal-segment localization metric, the interval IoU in seconds between an
//! answer such as `Duration: 1.9s-3.1s, 5.0s-6.2s` and the true segments.
//!
//! The IoU of one item is the summed intersection of the answer's and the truth's segments
//! divided by the length of their merged union (overlapping segments of one side are merged
//! first, so nothing counts twice). Two matching "none found" answers score 1, an answer that
//! cannot be parsed scores 0. [`score_localization`] gives the macro mean (of the items' IoUs)
//! and the micro mean (summed intersections over summed unions).

use std::path::Path;

use serde::Serialize;

use crate::error::DataError;
use crate::record::{Record, STANDARD_LEADS};

/// Invalid input to the chunking and lead-mask functions.
#[derive(Debug, thiserror::Error)]
pub enum FlexibleError {
    /// The record or its annotation file could not be read.
    #[error(transparent)]
    Read(#[from] DataError),
    /// The record could not be preprocessed into model chunks.
    #[error(transparent)]
    Preprocess(#[from] crate::preprocess::PreprocessError),
    /// The chunk length is not a positive, finite number of seconds, or is shorter than one
    /// sample at the record's rate.
    #[error(
        "record {record}: chunk length {seconds} s is not positive and at least one sample at {fs} Hz"
    )]
    ChunkLength {
        record: String,
        seconds: f64,
        fs: f64,
    },
    /// The record has no samples, or a sampling rate that is not positive and finite.
    #[error("record {record}: nothing to chunk ({samples} samples at {fs} Hz)")]
    EmptyRecord {
        record: String,
        samples: usize,
        fs: f64,
    },
    /// A lead asked for is not one of the twelve standard leads.
    #[error("lead {lead:?} is not a standard lead (expected one of {})", STANDARD_LEADS.join(", "))]
    UnknownLead { lead: String },
    /// A lead asked for is missing from the record.
    #[error("record {record}: has no lead {lead} (it has {})", present.join(", "))]
    MissingLead {
        record: String,
        lead: String,
        present: Vec<String>,
    },
}

/// One fixed-length piece of a record: every lead's samples from `start` on, zero-padded
/// after `valid` samples when the record ends inside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Position of the chunk in the record, from 0 (the chunk-position token's value).
    pub index: usize,
    /// First sample of the chunk in the record.
    pub start: usize,
    /// Start of the chunk in seconds.
    pub start_s: f64,
    /// Samples of the record inside the chunk; the rest are zero padding.
    pub valid: usize,
    /// One vector per lead of the record, in its order, each of the chunk's full length.
    pub signals: Vec<Vec<f32>>,
}

/// Samples per chunk of `chunk_s` seconds at the record's rate; an empty record or a chunk
/// under one sample is an error.
fn chunk_len(record: &Record, chunk_s: f64) -> Result<usize, FlexibleError> {
    let n = record.len();
    if n == 0 || !(record.fs.is_finite() && record.fs > 0.0) {
        return Err(FlexibleError::EmptyRecord {
            record: record.id.clone(),
            samples: n,
            fs: record.fs,
        });
    }
    let per_chunk = chunk_s * record.fs;
    if !(per_chunk.is_finite() && per_chunk.round() >= 1.0) {
        return Err(FlexibleError::ChunkLength {
            record: record.id.clone(),
            seconds: chunk_s,
            fs: record.fs,
        });
    }
    Ok(per_chunk.round() as usize)
}

/// Cuts `record` into consecutive chunks of `chunk_s` seconds (rounded to whole samples),
/// the last one zero-padded: a 25-s record gives three 10-s chunks, the third with 5 s of data.
pub fn chunks(record: &Record, chunk_s: f64) -> Result<Vec<Chunk>, FlexibleError> {
    let n = record.len();
    let len = chunk_len(record, chunk_s)?;
    Ok((0..n.div_ceil(len))
        .map(|index| {
            let start = index * len;
            let valid = len.min(n - start);
            let signals = record
                .signals
                .iter()
                .map(|lead| {
                    let mut out = vec![0.0; len];
                    out[..valid].copy_from_slice(&lead[start..start + valid]);
                    out
                })
                .collect();
            Chunk {
                index,
                start,
                start_s: start as f64 / record.fs,
                valid,
                signals,
            }
        })
        .collect())
}

/// The reduced lead sets of anyECG-chat's ablation: 1 (lead II, the rhythm strip), 2 (I, II),
/// 6 (the limb leads) and 12 leads. The paper does not name its subsets; these are the usual ones.
pub fn reduced_leads(count: usize) -> Option<&'static [&'static str]> {
    match count {
        1 => Some(&STANDARD_LEADS[1..2]),
        2 => Some(&STANDARD_LEADS[..2]),
        6 => Some(&STANDARD_LEADS[..6]),
        12 => Some(&STANDARD_LEADS[..]),
        _ => None,
    }
}

/// A record's signals in the standard 12-lead order, leads not kept filled with zeros, and
/// which of the 12 carry signal.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskedLeads {
    /// Twelve vectors in [`STANDARD_LEADS`] order, each of the record's length.
    pub signals: Vec<Vec<f32>>,
    /// `mask[i]` is true when lead `STANDARD_LEADS[i]` is kept.
    pub mask: [bool; 12],
}

/// Keeps the leads named in `keep` (standard spellings) and zero-fills the others, in
/// standard order. A lead that is not standard, or that the record lacks, is an error.
pub fn mask_leads(record: &Record, keep: &[&str]) -> Result<MaskedLeads, FlexibleError> {
    let mut mask = [false; 12];
    let mut signals = vec![vec![0.0; record.len()]; 12];
    for &name in keep {
        let slot = STANDARD_LEADS
            .iter()
            .position(|&l| l == name)
            .ok_or_else(|| FlexibleError::UnknownLead { lead: name.into() })?;
        let lead = record
            .lead(name)
            .ok_or_else(|| FlexibleError::MissingLead {
                record: record.id.clone(),
                lead: name.into(),
                present: record.leads.clone(),
            })?;
        signals[slot].copy_from_slice(lead);
        mask[slot] = true;
    }
    Ok(MaskedLeads { signals, mask })
}

/// A record as a model takes it in chunks: preprocessed (lead mapping, resampling, cleaning),
/// cut into consecutive windows, each normalised on its own, leads not kept zero.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelChunks {
    /// `chunks x 12 x chunk_len` values: chunk-major, then lead-major in standard order.
    pub data: Vec<f32>,
    /// Chunks (at least 1).
    pub chunks: usize,
    /// Samples per chunk and lead.
    pub chunk_len: usize,
    /// Leads that carry signal: recorded and kept.
    pub lead_mask: [bool; 12],
}

/// Cuts `record`, preprocessed by `cfg`, into at most `max_chunks` consecutive chunks of
/// `chunk_len` samples at `cfg.target_fs` (the last zero-padded after the record ends), keeps the
/// leads named in `keep` (all 12 when empty) and zero-fills the others, and normalises each
/// chunk by `cfg.normalise` over its own samples and kept leads. A record longer than
/// `max_chunks` chunks keeps its first ones.
pub fn model_chunks(
    record: &Record,
    cfg: &crate::preprocess::PreprocessConfig,
    chunk_len: usize,
    max_chunks: usize,
    keep: &[&str],
) -> Result<ModelChunks, FlexibleError> {
    use crate::preprocess::{normalise, prepare};
    let prep = prepare(record, cfg)?;
    let n = prep.len();
    if chunk_len == 0 || n == 0 {
        return Err(FlexibleError::EmptyRecord {
            record: record.id.clone(),
            samples: n,
            fs: prep.fs,
        });
    }
    let mut lead_mask = prep.lead_mask;
    if !keep.is_empty() {
        for (k, name) in STANDARD_LEADS.iter().enumerate() {
            lead_mask[k] &= keep.contains(name);
        }
        if let Some(&lead) = keep.iter().find(|l| !STANDARD_LEADS.contains(l)) {
            return Err(FlexibleError::UnknownLead { lead: lead.into() });
        }
    }
    let chunks = n.div_ceil(chunk_len).clamp(1, max_chunks.max(1));
    let per_chunk = 12 * chunk_len;
    let mut data = vec![0.0; chunks * per_chunk];
    for c in 0..chunks {
        let start = c * chunk_len;
        let valid = chunk_len.min(n - start);
        let out = &mut data[c * per_chunk..(c + 1) * per_chunk];
        for (k, signal) in prep.signals.iter().enumerate() {
            if lead_mask[k] {
                out[k * chunk_len..k * chunk_len + valid]
                    .copy_from_slice(&signal[start..start + valid]);
            }
        }
        normalise(out, &lead_mask, chunk_len, valid, valid, cfg.normalise);
    }
    Ok(ModelChunks {
        data,
        chunks,
        chunk_len,
        lead_mask,
    })
}

/// A segment of a record, in seconds from its start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub start_s: f64,
    pub end_s: f64,
}

impl Interval {
    fn len(self) -> f64 {
        self.end_s - self.start_s
    }
}

/// Reads an answer's segments: `Duration: 1.9s-3.1s, 5.0s-6.2s` (the `s` and spaces around the
/// dash optional, text after the list ignored) gives two; an answer with no `Duration:` that
/// says "none found" (any case) gives none; anything else, a segment that ends before it
/// starts or a number that is not finite is unparsable (`None`).
pub fn parse_localization(answer: &str) -> Option<Vec<Interval>> {
    let lower = answer.to_ascii_lowercase();
    let Some(at) = lower.find("duration:") else {
        return lower.contains("none found").then(Vec::new);
    };
    let mut rest = &answer[at + "duration:".len()..];
    let mut out = Vec::new();
    loop {
        let (start_s, after) = seconds(rest)?;
        let after = after.trim_start().strip_prefix('-')?;
        let (end_s, after) = seconds(after)?;
        if end_s < start_s {
            return None;
        }
        out.push(Interval { start_s, end_s });
        match after.trim_start().strip_prefix(',') {
            Some(next) if seconds(next).is_some() => rest = next,
            _ => return Some(out),
        }
    }
}

/// A non-negative number with an optional `s` after it, leading spaces skipped; the rest.
fn seconds(text: &str) -> Option<(f64, &str)> {
    let text = text.trim_start();
    let digits = |t: &str| t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let mut end = digits(text);
    // A fraction only when a digit follows the point: "3.1." ends a sentence after 3.1.
    if text[end..].starts_with('.') && text[end + 1..].starts_with(|c: char| c.is_ascii_digit()) {
        end += 1 + digits(&text[end + 1..]);
    }
    let value: f64 = text[..end].parse().ok().filter(|v: &f64| v.is_finite())?;
    let rest = &text[end..];
    Some((value, rest.strip_prefix('s').unwrap_or(rest)))
}

/// An answer naming `segments` as [`parse_localization`] reads it back: `Duration: 1.9s-3.1s,
/// 5.0s-6.2s` (one decimal, merged and sorted), or `None found.`.
pub fn format_localization(segments: &[Interval]) -> String {
    let merged = merged(segments.iter().copied());
    if merged.is_empty() {
        return "None found.".into();
    }
    let parts: Vec<String> = merged
        .iter()
        .map(|s| format!("{:.1}s-{:.1}s", s.start_s, s.end_s))
        .collect();
    format!("Duration: {}", parts.join(", "))
}

/// The abnormal segments of a beat sequence `(time of the beat's QRS in s, abnormal?)` in
/// time order: each run of consecutive abnormal beats becomes one segment from halfway to the
/// beat before it to halfway to the beat after it (the record's start or end at its edges).
pub fn abnormal_segments(beats: &[(f64, bool)], duration_s: f64) -> Vec<Interval> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < beats.len() {
        if !beats[i].1 {
            i += 1;
            continue;
        }
        let first = i;
        while i + 1 < beats.len() && beats[i + 1].1 {
            i += 1;
        }
        let start_s = if first == 0 {
            0.0
        } else {
            (beats[first - 1].0 + beats[first].0) / 2.0
        };
        let end_s = beats
            .get(i + 1)
            .map_or(duration_s, |next| (beats[i].0 + next.0) / 2.0);
        out.push(Interval { start_s, end_s });
        i += 1;
    }
    out
}

/// Whether an MIT-BIH beat label is outside AAMI's normal class (N, L, R, e, j): supraventricular
/// (A, a, J, S), ventricular (V, E), fusion (F) and paced or unclassifiable (/, f, Q) beats.
pub fn is_abnormal_beat(symbol: &str) -> bool {
    !matches!(symbol, "N" | "L" | "R" | "e" | "j")
}

/// The abnormal segments of an annotated record (an `.atr` read by
/// [`crate::annotation::beats`]), by [`is_abnormal_beat`].
pub fn annotated_segments(beats: &[crate::annotation::Beat], duration_s: f64) -> Vec<Interval> {
    let flags: Vec<(f64, bool)> = beats
        .iter()
        .map(|b| (b.time_s, is_abnormal_beat(b.symbol)))
        .collect();
    abnormal_segments(&flags, duration_s)
}

/// The abnormal segments of a simulated record from its truth: premature atrial and
/// ventricular beats, and every beat of atrial fibrillation or flutter.
pub fn simulated_segments(record: &crate::synthetic::SimRecord) -> Vec<Interval> {
    use crate::synthetic::BeatKind;
    let fs = record.record.fs;
    let flags: Vec<(f64, bool)> = record
        .truth
        .beats
        .iter()
        .map(|b| (b.qrs.peak as f64 / fs, b.kind != BeatKind::Sinus))
        .collect();
    abnormal_segments(&flags, record.record.duration_s())
}

/// A long annotated record's localization truth: how it chunks, and its abnormal segments.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Localized {
    pub record: String,
    pub fs: f64,
    pub duration_s: f64,
    pub chunk_s: f64,
    /// Chunks of `chunk_s` the record cuts into (the last may be partial).
    pub chunks: usize,
    pub beats: usize,
    /// Beats outside AAMI's normal class ([`is_abnormal_beat`]).
    pub abnormal_beats: usize,
    pub segments: Vec<Interval>,
    /// The reference answer, as [`format_localization`] writes it.
    pub answer: String,
}

/// Reads a WFDB record (its `.hea` or its path without extension) and its beat annotations
/// (the file with extension `annotator`, e.g. `atr`, beside it), and gives its chunk count and
/// abnormal segments.
pub fn localize_wfdb(
    record: &Path,
    annotator: &str,
    chunk_s: f64,
) -> Result<Localized, FlexibleError> {
    let rec = crate::wfdb::read_record(record)?;
    let chunks = rec.len().div_ceil(chunk_len(&rec, chunk_s)?);
    let base = if record.extension().is_some_and(|e| e == "hea") {
        record.with_extension("")
    } else {
        record.to_path_buf()
    };
    let mut ann = base.into_os_string();
    ann.push(".");
    ann.push(annotator);
    let beats = crate::annotation::beats(&crate::annotation::read_annotations(&ann)?, rec.fs);
    let segments = merged(annotated_segments(&beats, rec.duration_s()));
    Ok(Localized {
        record: rec.id.clone(),
        fs: rec.fs,
        duration_s: rec.duration_s(),
        chunk_s,
        chunks,
        beats: beats.len(),
        abnormal_beats: beats.iter().filter(|b| is_abnormal_beat(b.symbol)).count(),
        answer: format_localization(&segments),
        segments,
    })
}

/// Sorted, disjoint segments covering the same time as `segments`.
pub fn merged(segments: impl IntoIterator<Item = Interval>) -> Vec<Interval> {
    let mut all: Vec<Interval> = segments.into_iter().collect();
    all.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    let mut out: Vec<Interval> = Vec::with_capacity(all.len());
    for s in all {
        match out.last_mut() {
            Some(last) if s.start_s <= last.end_s => last.end_s = last.end_s.max(s.end_s),
            _ => out.push(s),
        }
    }
    out
}

/// Time covered by both sets of merged segments.
fn overlap(a: &[Interval], b: &[Interval]) -> f64 {
    let (mut i, mut j, mut total) = (0, 0, 0.0);
    while i < a.len() && j < b.len() {
        let lo = a[i].start_s.max(b[j].start_s);
        let hi = a[i].end_s.min(b[j].end_s);
        total += (hi - lo).max(0.0);
        if a[i].end_s < b[j].end_s {
            i += 1;
        } else {
            j += 1;
        }
    }
    total
}

/// One item's localization score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Iou {
    /// Seconds inside both the answer's and the truth's segments.
    pub intersection_s: f64,
    /// Seconds inside either.
    pub union_s: f64,
    /// `intersection_s / union_s`; 1 when both sides have no segment, 0 when the answer
    /// could not be parsed.
    pub iou: f64,
}

/// Scores one answer (`None`: unparsable) against the true segments.
pub fn localization_iou(answer: Option<&[Interval]>, truth: &[Interval]) -> Iou {
    let truth = merged(truth.iter().copied());
    let Some(answer) = answer else {
        let union_s = truth.iter().map(|s| s.len()).sum();
        return Iou {
            intersection_s: 0.0,
            union_s,
            iou: 0.0,
        };
    };
    let answer_m = merged(answer.iter().copied());
    let intersection_s = overlap(&answer_m, &truth);
    let union_s: f64 = merged(answer_m.iter().chain(&truth).copied())
        .iter()
        .map(|s| s.len())
        .sum();
    let iou = if union_s > 0.0 {
        intersection_s / union_s
    } else if answer.is_empty() == truth.is_empty() {
        1.0
    } else {
        0.0
    };
    Iou {
        intersection_s,
        union_s,
        iou,
    }
}

/// Localization over a set of items.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalizationScore {
    pub items: usize,
    /// Answers that could not be parsed (each scored 0).
    pub unparsable: usize,
    /// Mean of the items' IoUs.
    pub macro_iou: f64,
    /// Summed intersections over summed unions; `None` when no item has any segment (then
    /// only the macro mean says something).
    pub micro_iou: Option<f64>,
}

/// Scores `(answer text, true segments)` pairs.
pub fn score_localization<'a>(
    items: impl IntoIterator<Item = (&'a str, &'a [Interval])>,
) -> LocalizationScore {
    let (mut n, mut bad, mut sum, mut inter, mut union) = (0, 0, 0.0, 0.0, 0.0);
    for (answer, truth) in items {
        let parsed = parse_localization(answer);
        bad += usize::from(parsed.is_none());
        let s = localization_iou(parsed.as_deref(), truth);
        n += 1;
        sum += s.iou;
        inter += s.intersection_s;
        union += s.union_s;
    }
    LocalizationScore {
        items: n,
        unparsable: bad,
        macro_iou: if n == 0 { 0.0 } else { sum / n as f64 },
        micro_iou: (union > 0.0).then(|| inter / union),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{RecordMeta, SourceKind};

    fn record(leads: &[&str], fs: f64, n: usize) -> Record {
        Record {
            id: "t/1".into(),
            source: SourceKind::Synthetic,
            fs,
            leads: leads.iter().map(|l| l.to_string()).collect(),
            signals: (0..leads.len())
                .map(|k| (0..n).map(|i| (k * 100_000 + i) as f32).collect())
                .collect(),
            meta: RecordMeta::default(),
            waves: Vec::new(),
        }
    }

    fn iv(start_s: f64, end_s: f64) -> Interval {
        Interval { start_s, end_s }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn a_25_s_record_gives_three_10_s_chunks_the_last_padded() {
        let r = record(&["I", "II"], 100.0, 2500);
        let c = chunks(&r, 10.0).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(
            c.iter()
                .map(|c| (c.index, c.start, c.valid))
                .collect::<Vec<_>>(),
            [(0, 0, 1000), (1, 1000, 1000), (2, 2000, 500)]
        );
        assert_eq!(c[2].start_s, 20.0);
        assert!(
            c.iter()
                .all(|c| c.signals.len() == 2 && c.signals[1].len() == 1000)
        );
        assert_eq!(c[1].signals[1][0], 101_000.0);
        assert_eq!(c[2].signals[0][499], 2499.0);
        assert!(c[2].signals[0][500..].iter().all(|&v| v == 0.0));
        // Exactly 20 s: two full chunks, no empty third one.
        assert_eq!(chunks(&record(&["I"], 100.0, 2000), 10.0).unwrap().len(), 2);
    }

    #[test]
    fn bad_chunk_lengths_and_empty_records_are_refused() {
        let r = record(&["I"], 100.0, 50);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 0.001] {
            assert!(
                matches!(chunks(&r, bad), Err(FlexibleError::ChunkLength { .. })),
                "{bad}"
            );
        }
        let err = chunks(&record(&["I"], 100.0, 0), 10.0).unwrap_err();
        assert!(err.to_string().contains("t/1"), "{err}");
    }

    #[test]
    fn kept_leads_go_to_their_standard_slot_the_rest_are_zero() {
        let r = record(&["V1", "I", "II"], 500.0, 10);
        let m = mask_leads(&r, &["I", "V1"]).unwrap();
        assert_eq!(m.signals.len(), 12);
        let expected: Vec<bool> = STANDARD_LEADS
            .iter()
            .map(|l| *l == "I" || *l == "V1")
            .collect();
        assert_eq!(m.mask.to_vec(), expected);
        assert_eq!(m.signals[0], r.lead("I").unwrap());
        assert_eq!(m.signals[6], r.lead("V1").unwrap());
        // II is in the record but not kept.
        assert!(m.signals[1].iter().all(|&v| v == 0.0));
        assert_eq!(reduced_leads(1), Some(&["II"][..]));
        assert_eq!(reduced_leads(6).unwrap().last(), Some(&"aVF"));
        assert_eq!(reduced_leads(3), None);
    }

    #[test]
    fn unknown_and_missing_leads_are_named() {
        let r = record(&["I"], 500.0, 10);
        let e = mask_leads(&r, &["V7"]).unwrap_err();
        assert!(
            matches!(e, FlexibleError::UnknownLead { ref lead } if lead == "V7"),
            "{e}"
        );
        let e = mask_leads(&r, &["II"]).unwrap_err().to_string();
        assert!(e.contains("t/1") && e.contains("no lead II"), "{e}");
    }

    #[test]
    fn answers_parse_as_anyecg_chat_writes_them() {
        assert_eq!(
            parse_localization("Duration: 1.9s-3.1s, 5.0s-6.2s. Premature ventricular beats."),
            Some(vec![iv(1.9, 3.1), iv(5.0, 6.2)])
        );
        assert_eq!(
            parse_localization("duration: 2 - 4s"),
            Some(vec![iv(2.0, 4.0)])
        );
        assert_eq!(
            parse_localization("Duration: 1.9-3.1."),
            Some(vec![iv(1.9, 3.1)])
        );
        assert_eq!(parse_localization("None found."), Some(vec![]));
        assert_eq!(parse_localization("The rhythm is normal."), None);
        assert_eq!(parse_localization("Duration: 3.1s-1.9s"), None);
        assert_eq!(parse_localization("Duration: soon"), None);
        assert_eq!(parse_localization("Duration: 1.9s"), None);
    }

    #[test]
    fn iou_is_the_summed_intersection_over_the_merged_union() {
        // [1,3] vs [2,4]: 1 s shared of 3 s covered.
        let s = localization_iou(Some(&[iv(1.0, 3.0)]), &[iv(2.0, 4.0)]);
        assert!(close(s.iou, 1.0 / 3.0) && close(s.union_s, 3.0), "{s:?}");
        // Two answer segments over one true one: 0.5 + 0.5 shared, union [0,3].
        let s = localization_iou(Some(&[iv(0.0, 1.0), iv(2.0, 3.0)]), &[iv(0.5, 2.5)]);
        assert!(
            close(s.intersection_s, 1.0) && close(s.iou, 1.0 / 3.0),
            "{s:?}"
        );
        // Overlapping answer segments are merged, not counted twice.
        let s = localization_iou(Some(&[iv(1.0, 3.0), iv(2.0, 5.0)]), &[iv(1.0, 5.0)]);
        assert!(close(s.iou, 1.0), "{s:?}");
        // Disjoint: 0.
        assert_eq!(
            localization_iou(Some(&[iv(0.0, 1.0)]), &[iv(2.0, 3.0)]).iou,
            0.0
        );
        // Both none: 1; one none: 0; unparsable: 0.
        assert_eq!(localization_iou(Some(&[]), &[]).iou, 1.0);
        assert_eq!(localization_iou(Some(&[]), &[iv(1.0, 2.0)]).iou, 0.0);
        assert_eq!(localization_iou(Some(&[iv(1.0, 2.0)]), &[]).iou, 0.0);
        assert_eq!(localization_iou(None, &[]).iou, 0.0);
    }

    #[test]
    fn runs_of_abnormal_beats_become_segments_between_the_neighbours() {
        // Beats at 1, 2, 3, 4, 5 s; 3 and 4 abnormal: one segment 2.5-4.5 s.
        let beats = [
            (1.0, false),
            (2.0, false),
            (3.0, true),
            (4.0, true),
            (5.0, false),
        ];
        assert_eq!(abnormal_segments(&beats, 6.0), [iv(2.5, 4.5)]);
        // Abnormal at both edges: from the start, to the end.
        let beats = [(1.0, true), (2.0, false), (3.0, true)];
        assert_eq!(abnormal_segments(&beats, 4.0), [iv(0.0, 1.5), iv(2.5, 4.0)]);
        assert!(abnormal_segments(&[(1.0, false)], 2.0).is_empty());
        assert!(is_abnormal_beat("V") && is_abnormal_beat("A") && !is_abnormal_beat("N"));
        let text = format_localization(&[iv(5.0, 6.25), iv(1.9, 3.1), iv(2.0, 2.5)]);
        assert_eq!(text, "Duration: 1.9s-3.1s, 5.0s-6.2s");
        assert_eq!(
            parse_localization(&text),
            Some(vec![iv(1.9, 3.1), iv(5.0, 6.2)])
        );
        assert_eq!(format_localization(&[]), "None found.");
        assert_eq!(parse_localization(&format_localization(&[])), Some(vec![]));
    }

    #[test]
    fn a_simulated_pvc_record_has_a_segment_around_each_pvc() {
        use crate::synthetic::{BeatKind, Condition, SimConfig, simulate};
        let cfg = SimConfig {
            duration_s: 30.0,
            ..SimConfig::default()
        };
        let sim = simulate(&cfg, Condition::PrematureVentricular, 11);
        let pvcs: Vec<f64> = sim
            .truth
            .beats
            .iter()
            .filter(|b| b.kind == BeatKind::PrematureVentricular)
            .map(|b| b.qrs.peak as f64 / sim.record.fs)
            .collect();
        assert!(!pvcs.is_empty());
        let segments = simulated_segments(&sim);
        assert!(!segments.is_empty() && segments.len() <= pvcs.len());
        for t in &pvcs {
            assert!(
                segments.iter().any(|s| s.start_s < *t && *t < s.end_s),
                "{t} {segments:?}"
            );
        }
        // No sinus beat lies inside a segment.
        for b in sim.truth.beats.iter().filter(|b| b.kind == BeatKind::Sinus) {
            let t = b.qrs.peak as f64 / sim.record.fs;
            assert!(
                !segments.iter().any(|s| s.start_s < t && t < s.end_s),
                "{t}"
            );
        }
        let af = simulate(&cfg, Condition::AtrialFibrillation, 11);
        assert_eq!(simulated_segments(&af), [iv(0.0, 30.0)]);
        // The record's metadata carries the same truth, merged.
        let in_meta = |r: &Record| -> Vec<Interval> {
            r.meta
                .abnormal_segments
                .clone()
                .unwrap()
                .iter()
                .map(|&[a, b]| iv(a, b))
                .collect()
        };
        assert_eq!(in_meta(&sim.record), merged(segments));
        assert_eq!(in_meta(&af.record), [iv(0.0, 30.0)]);
        let sinus = simulate(&cfg, Condition::NormalSinus, 11);
        assert!(in_meta(&sinus.record).is_empty());
    }

    #[test]
    fn model_chunks_tile_the_prepared_record_and_normalise_each_chunk_on_kept_leads() {
        use crate::preprocess::{PreprocessConfig, prepare};
        use crate::synthetic::{Condition, SimConfig, simulate};
        let sim = simulate(
            &SimConfig {
                duration_s: 9.0,
                ..SimConfig::default()
            },
            Condition::NormalSinus,
            3,
        );
        let cfg = PreprocessConfig::default();
        // 9 s at 250 Hz = 2250 samples: chunks of 1000 give 3, the last with 250 samples.
        let all = model_chunks(&sim.record, &cfg, 1000, 8, &[]).unwrap();
        assert_eq!((all.chunks, all.chunk_len), (3, 1000));
        assert_eq!(all.lead_mask, [true; 12]);
        assert_eq!(
            model_chunks(&sim.record, &cfg, 1000, 2, &[])
                .unwrap()
                .chunks,
            2
        );
        let two = model_chunks(&sim.record, &cfg, 1000, 8, &["I", "II"]).unwrap();
        assert_eq!(&two.lead_mask[..3], &[true, true, false]);
        // Recompute chunk 1 of lead II by hand: lead means removed, one std over leads I, II.
        let prep = prepare(&sim.record, &cfg).unwrap();
        let part = |k: usize| &prep.signals[k][1000..2000];
        let mean = |x: &[f32]| x.iter().map(|&v| f64::from(v)).sum::<f64>() / x.len() as f64;
        let (m0, m1) = (mean(part(0)), mean(part(1)));
        let var = (part(0)
            .iter()
            .map(|&v| (f64::from(v) - m0).powi(2))
            .sum::<f64>()
            + part(1)
                .iter()
                .map(|&v| (f64::from(v) - m1).powi(2))
                .sum::<f64>())
            / 2000.0;
        let at = 12 * 1000 + 1000;
        for t in [0, 137, 999] {
            let expected = (f64::from(part(1)[t]) - m1) / var.sqrt();
            assert!((f64::from(two.data[at + t]) - expected).abs() < 1e-4, "{t}");
        }
        // Dropped leads and the padding after the record's end are zeros.
        assert!(
            two.data[12 * 1000 + 2 * 1000..12 * 1000 + 3 * 1000]
                .iter()
                .all(|&v| v == 0.0)
        );
        let last = &all.data[2 * 12 * 1000..];
        assert!(last[250..1000].iter().all(|&v| v == 0.0));
        assert!(last[..250].iter().any(|&v| v != 0.0));
        assert!(model_chunks(&sim.record, &cfg, 1000, 8, &["V7"]).is_err());
    }

    #[test]
    fn an_annotated_wfdb_record_gives_its_segments_and_answer() {
        let dir = tempfile::tempdir().unwrap();
        // 30 s at 100 Hz, one lead of zeros; beats at 0.5 + k s, V at k = 10 and 11, A at 20.
        std::fs::write(
            dir.path().join("t.hea"),
            "t 1 100 3000\nt.dat 16 200 16 0 0 0 0 MLII\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("t.dat"), vec![0u8; 6000]).unwrap();
        let mut atr = Vec::new();
        for k in 0..30u16 {
            let code: u16 = match k {
                10 | 11 => 5, // V
                20 => 8,      // A
                _ => 1,       // N
            };
            let diff: u16 = if k == 0 { 50 } else { 100 };
            atr.extend_from_slice(&((code << 10) | diff).to_le_bytes());
        }
        atr.extend_from_slice(&[0, 0]);
        std::fs::write(dir.path().join("t.atr"), atr).unwrap();
        let l = localize_wfdb(&dir.path().join("t.hea"), "atr", 10.0).unwrap();
        assert_eq!((l.chunks, l.beats, l.abnormal_beats), (3, 30, 3));
        assert_eq!(l.segments, [iv(10.0, 12.0), iv(20.0, 21.0)]);
        assert_eq!(l.answer, "Duration: 10.0s-12.0s, 20.0s-21.0s");
        // A missing annotation file names it.
        let e = localize_wfdb(&dir.path().join("t"), "qrs", 10.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.qrs"), "{e}");
    }

    #[test]
    fn macro_and_micro_means_by_hand() {
        let t1 = [iv(2.0, 4.0)];
        let t3 = [iv(0.0, 2.0)];
        let items: Vec<(&str, &[Interval])> = vec![
            ("Duration: 1s-3s", &t1), // 1/3: 1 s of 3 s
            ("none found", &[]),      // 1, no time
            ("I cannot tell", &t3),   // unparsable: 0, 2 s of union
        ];
        let s = score_localization(items);
        assert_eq!((s.items, s.unparsable), (3, 1));
        assert!(close(s.macro_iou, (1.0 / 3.0 + 1.0 + 0.0) / 3.0), "{s:?}");
        assert!(close(s.micro_iou.unwrap(), 1.0 / 5.0), "{s:?}");
        let empty = score_localization(vec![("none found", &[][..])]);
        assert_eq!((empty.macro_iou, empty.micro_iou), (1.0, None));
    }
}
