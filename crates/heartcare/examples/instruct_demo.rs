//! Builds Heartcare items for a few hand-labelled records and prints them as JSONL.
//!
//! `cargo run -p beatlab-heartcare --example instruct_demo`

use beatlab_ecg::{Record, RecordMeta, STANDARD_LEADS, SourceKind, Superclass};
use beatlab_heartcare::instruct::{BuildConfig, build_captions, build_items};

fn record(id: &str, patient: &str, meta: RecordMeta) -> Record {
    Record {
        id: id.into(),
        source: SourceKind::Synthetic,
        fs: 100.0,
        leads: STANDARD_LEADS.iter().map(|s| s.to_string()).collect(),
        signals: vec![vec![0.0; 1000]; 12],
        meta: RecordMeta {
            patient_id: Some(patient.into()),
            ..meta
        },
        waves: Vec::new(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let records = vec![
        record(
            "ptbxl/00001",
            "15709",
            RecordMeta {
                age: Some(56.0),
                sex: Some("F".into()),
                report: Some("sinusrhythmus periphere niederspannung".into()),
                diagnoses: vec![
                    "normal ECG".into(),
                    "low QRS voltages in the frontal and horizontal leads".into(),
                ],
                superclasses: vec![Superclass::NORM],
                fold: Some(3),
                ..RecordMeta::default()
            },
        ),
        record(
            "sim/avb1",
            "sim-1",
            RecordMeta {
                age: Some(71.0),
                sex: Some("M".into()),
                diagnoses: vec!["first degree AV block".into()],
                rhythm: Some("sinus rhythm".into()),
                heart_rate_bpm: Some(64.0),
                pr_ms: Some(236.0),
                qrs_ms: Some(96.0),
                qt_ms: Some(410.0),
                axis_deg: Some(-42.0),
                ..RecordMeta::default()
            },
        ),
        record(
            "sim/afib1",
            "sim-2",
            RecordMeta {
                age: Some(300.0),
                sex: Some("F".into()),
                diagnoses: vec![
                    "atrial fibrillation".into(),
                    "complete left bundle branch block".into(),
                ],
                rhythm: Some("atrial fibrillation".into()),
                heart_rate_bpm: Some(118.0),
                qrs_ms: Some(148.0),
                qt_ms: Some(380.0),
                ..RecordMeta::default()
            },
        ),
    ];
    let config = BuildConfig::default();
    for item in build_items(&records, &config)?
        .iter()
        .chain(&build_captions(&records, &config)?)
    {
        println!("{}", serde_json::to_string(item)?);
    }
    Ok(())
}
