//! `beatlab data delineate`, `data measure`, `data score-delineation` and `data localize`: thin
//! wrappers over beatlab_ecg::delineate and beatlab_ecg::flexible.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use beatlab_ecg::delineate::{DelineateConfig, delineate, measure::measure, score};

use super::{Exit, bad};

/// Delineates one WFDB record and prints its measurements (or, as JSON, the waves per lead and
/// beat with the per-beat table).
pub fn data_delineate(record: &Path, json: bool) -> Result<Exit> {
    let rec = beatlab_ecg::wfdb::read_record(record).map_err(bad)?;
    let d = delineate(&rec, &DelineateConfig::default()).map_err(bad)?;
    let m = measure(&rec, &d);
    if json {
        let out = serde_json::json!({ "delineation": d, "measures": m });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{m}");
    }
    Ok(Exit::Done)
}

/// Measures every record under ROOT (any source), one entry per record.
pub fn data_measure(root: &Path, json: bool) -> Result<Exit> {
    if !root.is_dir() {
        return Err(bad(anyhow::anyhow!("{} is not a folder", root.display())));
    }
    let records = beatlab_ecg::sources::load_any(root, &[]).map_err(bad)?;
    let mut all = Vec::with_capacity(records.len());
    for rec in &records {
        let d = delineate(rec, &DelineateConfig::default()).map_err(bad)?;
        all.push(measure(rec, &d));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for m in &all {
            print!("{m}");
        }
    }
    Ok(Exit::Done)
}

/// Scores our delineator on every lead of the LUDB records under ROOT.
pub fn data_score_delineation(root: &Path, json: bool) -> Result<Exit> {
    let start = Instant::now();
    let scores = score::score_ours(root, &DelineateConfig::default()).map_err(bad)?;
    let seconds = start.elapsed().as_secs_f64();
    let total = score::total(&scores);
    if json {
        let out = serde_json::json!({ "total": total, "seconds": seconds, "records": scores });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} records, {} leads in {seconds:.2} s (reading included), tolerance ±{:.0} ms",
            total.records,
            total.leads,
            score::TOLERANCE_S * 1000.0
        );
        print!("{}", total.to_markdown());
    }
    Ok(Exit::Done)
}

/// A long annotated record's chunks and abnormal segments.
pub fn data_localize(record: &Path, annotator: &str, chunk_s: f64, json: bool) -> Result<Exit> {
    let l = beatlab_ecg::flexible::localize_wfdb(record, annotator, chunk_s).map_err(bad)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&l)?);
    } else {
        println!(
            "{}: {:.1} s at {} Hz, {} chunks of {} s, {} beats ({} abnormal)\n{}",
            l.record, l.duration_s, l.fs, l.chunks, l.chunk_s, l.beats, l.abnormal_beats, l.answer
        );
    }
    Ok(Exit::Done)
}
