//! The WFDB reader against the Python `wfdb` package on records made for each feature: formats
//! 8, 16, 24, 32, 61, 80, 160, 212, 310, 311, negative gains, units, invalid samples, several
//! samples per frame, skew, byte offsets, fixed and variable multi-segment layouts, and MIT
//! annotation files. `tests/python/wfdb_cases.py` writes the records into a temp folder (with
//! `wrsamp`/`wrann` where python wfdb can write the format, byte by byte otherwise, each checked
//! to read back through python wfdb as written) and what python wfdb reads from them; every
//! digital sample must match exactly and every physical one to f32 precision.
//!
//! Needs `python3` with `wfdb` (scripts/test.d/15-ecg-python.sh installs it). Without it the test
//! fails under the test setup or CI and is skipped, saying why, elsewhere.

use std::path::Path;
use std::process::Command;

use beatlab_ecg::annotation::{beats, read_annotations};
use beatlab_ecg::wfdb::{read_record, read_record_digital};
use serde_json::Value;

fn python_with_wfdb() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import wfdb"])
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let required = ["BEATLAB_TEST_SETUP", "CI"]
            .iter()
            .any(|v| std::env::var_os(v).is_some());
        assert!(
            !required,
            "python3 with the wfdb package is required under the test setup (scripts/test.sh)"
        );
        eprintln!("skipped: python3 with the wfdb package not found (scripts/test.sh installs it)");
    }
    found
}

fn make_cases(dir: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/wfdb_cases.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn close(ours: f32, theirs: &Value) -> bool {
    match theirs.as_f64() {
        None => ours.is_nan(),
        Some(v) => (f64::from(ours) - v).abs() <= 1e-6 * v.abs().max(1.0),
    }
}

#[test]
fn records_of_every_feature_read_like_python_wfdb() {
    if !python_with_wfdb() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reference = make_cases(dir.path());
    let records = reference["records"].as_object().unwrap();
    assert!(records.len() >= 20, "{} records", records.len());
    for (name, expected) in records {
        let path = dir.path().join(name);
        if let Some(digital) = expected.get("digital") {
            let ours = read_record_digital(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            let theirs: Vec<Vec<i64>> = serde_json::from_value(digital.clone()).unwrap();
            assert_eq!(ours.samples.len(), theirs.len(), "{name}");
            for (lead, (a, b)) in ours.samples.iter().zip(&theirs).enumerate() {
                let a: Vec<i64> = a.iter().map(|&v| i64::from(v)).collect();
                assert_eq!(&a, b, "{name}: signal {lead} digital samples");
            }
        }
        let record = read_record(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(record.fs, expected["fs"].as_f64().unwrap(), "{name}");
        let leads: Vec<String> = serde_json::from_value(expected["leads"].clone()).unwrap();
        assert_eq!(record.leads, leads, "{name}");
        let physical = expected["physical"].as_array().unwrap();
        assert_eq!(record.signals.len(), physical.len(), "{name}");
        for (lead, (ours, theirs)) in record.signals.iter().zip(physical).enumerate() {
            let theirs = theirs.as_array().unwrap();
            assert_eq!(ours.len(), theirs.len(), "{name}: signal {lead} length");
            let bad = ours.iter().zip(theirs).position(|(a, b)| !close(*a, b));
            assert!(
                bad.is_none(),
                "{name}: signal {lead} sample {bad:?}: ours {:?}, python {:?}",
                bad.map(|i| ours[i]),
                bad.map(|i| &theirs[i])
            );
        }
    }
}

#[test]
fn annotation_files_read_like_python_wfdb() {
    if !python_with_wfdb() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reference = make_cases(dir.path());
    for (file, expected) in reference["annotations"].as_object().unwrap() {
        let ours = read_annotations(dir.path().join(file)).unwrap();
        let column = |key: &str| expected[key].as_array().unwrap().clone();
        let samples: Vec<u64> = column("sample")
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            ours.iter().map(|a| a.sample).collect::<Vec<_>>(),
            samples,
            "{file}"
        );
        let symbols: Vec<&str> = ours.iter().map(|a| a.symbol()).collect();
        let their_symbols = theirs_symbols(&column("symbol"));
        let symbol_refs: Vec<&str> = their_symbols.iter().map(String::as_str).collect();
        assert_eq!(symbols, symbol_refs, "{file}");
        for (key, ours) in [
            (
                "subtype",
                ours.iter()
                    .map(|a| u64::from(a.subtype))
                    .collect::<Vec<_>>(),
            ),
            ("chan", ours.iter().map(|a| u64::from(a.chan)).collect()),
            ("num", ours.iter().map(|a| u64::from(a.num)).collect()),
        ] {
            let theirs: Vec<u64> = column(key).iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(ours, theirs, "{file}: {key}");
        }
        let aux: Vec<String> = ours
            .iter()
            .map(|a| a.aux.clone().unwrap_or_default())
            .collect();
        let theirs: Vec<String> = column("aux")
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(aux, theirs, "{file}: aux");
        // Beats: the QRS-labelled annotations with their times in seconds.
        let fs = expected["fs"].as_f64().unwrap();
        let beat_list = beats(&ours, fs);
        let expected_beats: Vec<(u64, &str)> = samples
            .iter()
            .zip(&symbol_refs)
            .filter(|(_, s)| matches!(**s, "N" | "V" | "A"))
            .map(|(&t, &s)| (t, s))
            .collect();
        assert_eq!(
            beat_list
                .iter()
                .map(|b| (b.sample, b.symbol))
                .collect::<Vec<_>>(),
            expected_beats,
            "{file}: beats"
        );
        for beat in &beat_list {
            assert!((beat.time_s - beat.sample as f64 / fs).abs() < 1e-12);
        }
    }
}

fn theirs_symbols(column: &[Value]) -> Vec<String> {
    column
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}
