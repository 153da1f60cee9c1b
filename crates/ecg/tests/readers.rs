//! The readers against the real records in the shared data folder (`BEATLAB_ECG_DATA`, default
//! `<workspace>/../shared/data/ecg`). Expected values come from sources independent of this
//! crate: the data README, the header files themselves (initial values, checksums), the
//! PhysioNet Challenge 2024 labels shipped next to PTB-XL, Python's `csv` module, and a one-off
//! run of the Python `wfdb` package 4.3.1 (`rdrecord`, `rdann`) noted where used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use beatlab_ecg::annotation::{self, read_annotations};
use beatlab_ecg::check::check_root;
use beatlab_ecg::ptbxl::{self, PtbxlRate};
use beatlab_ecg::sources::{fingerprint, load_any, load_any_with_report};
use beatlab_ecg::wfdb::{self, read_header, read_record, read_record_digital};
use beatlab_ecg::{Record, STANDARD_LEADS, SourceKind, Superclass, WaveKind, ludb};

fn data_root() -> PathBuf {
    let root = std::env::var_os("BEATLAB_ECG_DATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ecg"),
        PathBuf::from,
    );
    assert!(
        root.join("README.md").is_file(),
        "shared ECG data not found at {} (set BEATLAB_ECG_DATA)",
        root.display()
    );
    root
}

/// Every `.hea` under a folder, found with a plain recursive listing (not the crate's walker).
fn headers_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "hea") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_shared_record_reads_with_checksums_and_initial_values_verified() {
    let root = data_root();
    let check_folder = |folder: &str, expected_headers: usize| {
        let headers = headers_under(&root.join(folder));
        assert_eq!(headers.len(), expected_headers, "{folder}");
        for path in headers {
            let digital =
                read_record_digital(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(digital.samples.len(), 12, "{}", path.display());
            for (spec, samples) in digital.header.signals.iter().zip(&digital.samples) {
                // Recomputed here from the decoded samples, independently of the reader's check.
                let initial = spec.initial_value.expect("headers give initial values");
                assert_eq!(samples[0], initial, "{} {}", path.display(), spec.lead);
                let sum: i64 = samples.iter().map(|&s| i64::from(s)).sum();
                let checksum = spec.checksum.expect("headers give checksums");
                assert_eq!(
                    sum.rem_euclid(65536),
                    i64::from(checksum).rem_euclid(65536),
                    "{} {}",
                    path.display(),
                    spec.lead
                );
                assert_eq!(samples.len(), digital.header.num_samples.unwrap());
            }
            let record = digital.to_record();
            assert_eq!(record.leads, STANDARD_LEADS, "{}", path.display());
            for ((spec, digital), physical) in digital
                .header
                .signals
                .iter()
                .zip(&digital.samples)
                .zip(&record.signals)
            {
                for (&d, &p) in digital.iter().zip(physical).step_by(97) {
                    let expected = (f64::from(d) - f64::from(spec.baseline)) / spec.adc_gain;
                    assert!((f64::from(p) - expected).abs() < 1e-6);
                }
            }
        }
    };
    check_folder("ludb", 200);
    check_folder("ptbxl_mini", 70);
    check_folder("cinc2021_samples", 50);
}

#[test]
fn digital_and_physical_values_match_python_wfdb() {
    let root = data_root();
    // Per-lead sums of the digital samples (int64, no wrap) and the physical values at one
    // sample, from wfdb 4.3.1 `rdrecord(path, physical=False)` / `rdrecord(path)`.
    let check = |record: &str, sums: [i64; 12], sample: usize, values: [f64; 12]| {
        let digital = read_record_digital(root.join(record)).unwrap();
        let got: Vec<i64> = digital
            .samples
            .iter()
            .map(|s| s.iter().map(|&v| i64::from(v)).sum())
            .collect();
        assert_eq!(got, sums, "{record}");
        let physical = read_record(root.join(format!("{record}.hea"))).unwrap();
        for (lead, expected) in values.iter().enumerate() {
            let value = f64::from(physical.signals[lead][sample]);
            assert!(
                (value - expected).abs() < 1e-6,
                "{record} lead {lead}: {value} vs {expected}"
            );
        }
    };
    check(
        "ludb/data/1",
        [
            33338, 12402, -20936, -23456, 26680, -4930, -1105, 10564, 15400, 20455, 24979, 7482,
        ],
        1234,
        [
            -0.02097902097902098,
            0.0,
            0.030105777054515868,
            0.013888888888888888,
            -0.02631578947368421,
            0.025787965616045846,
            -0.018950437317784258,
            -0.06297709923664122,
            -0.045595396193005754,
            -0.02762192490289167,
            -0.021215043394406944,
            -0.02608098833218943,
        ],
    );
    check(
        "ptbxl_mini/records500/00000/00841_hr",
        [
            24278, -354, -24668, -12240, 24427, -12825, -375, -5071, -5524, -31740, 364, 9600,
        ],
        1234,
        [
            -0.181, -0.045, 0.135, 0.113, -0.158, 0.045, 0.105, 0.035, -0.124, -0.17, -0.01, -0.15,
        ],
    );
    check(
        "ptbxl_mini/records100/00000/00841_lr",
        [
            6007, -101, -6121, -3006, 6033, -3174, -146, -992, -2607, -5957, -103, 2588,
        ],
        234,
        [
            1.333, 0.661, -0.672, -0.997, 1.002, -0.005, -1.219, -0.48, 0.946, 1.516, 1.617, 1.594,
        ],
    );
    check(
        "cinc2021_samples/E07500",
        [
            1250, -5598, -6996, 2114, 4235, -6469, -2044, -520375, 96791, -68456, -55526, 7912,
        ],
        1234,
        [
            -0.078, -0.087, -0.009, 0.082, -0.034, -0.048, -0.058, -0.239, -0.019, -0.131, -0.214,
            -0.136,
        ],
    );
    check(
        "cinc2021_samples/HR06003",
        [
            14861, 27909, 13084, -21000, 1284, 20839, -20691, -17828, -8167, -1416, -3268, -9636,
        ],
        1234,
        [
            -0.147, -0.135, 0.012, 0.141, -0.079, -0.061, -0.146, -0.49, -0.571, -0.48, -0.316,
            -0.127,
        ],
    );
}

#[test]
fn ptbxl_rows_parse_with_reports_intact() {
    let root = data_root().join("ptbxl_mini");
    let rows = ptbxl::read_database(&root).unwrap();
    assert_eq!(rows.len(), 40);
    let row = |id: u32| rows.iter().find(|r| r.ecg_id == id).unwrap();
    // Reports as Python's csv module reads them (csv.DictReader, UTF-8): quoted commas,
    // German umlauts, runs of spaces and a trailing space must come through unchanged.
    let check_report = |id: u32, expected: &str| assert_eq!(row(id).report, expected, "{id}");
    check_report(
        8257,
        "sinusrhythmus lagetyp normal qrs(t) abnormal    hochlateraler infarkt mÖglich st & t \
         abnormal, wahrscheinlich    anteriore ischÄmie oder linksbelastung Edit: PLMI 50, \
         QI,aVL, R/S>1V2,3 (PLMI 100)",
    );
    let gap = " ".repeat(26);
    check_report(
        12846,
        &format!(
            "supraventrikulÄre extrasystole(n) sinusrhythmus p-verbreiterung lagetyp normal \
             4.46{gap}unbestÄtigter bericht"
        ),
    );
    check_report(
        18155,
        &format!(
            "sinusrhythmus lagetyp normal periphere niederspannung unspezifisches abnormes t \
             4.46{gap}unbestÄtigter bericht Edit: ILMI 15, "
        ),
    );
    check_report(
        6000,
        "sinus rhythm. minor non-specific t wave flattening in v3,4.",
    );
    let first = row(841);
    let codes: Vec<(&str, f32)> = first
        .scp_codes
        .iter()
        .map(|(c, v)| (c.as_str(), *v))
        .collect();
    assert_eq!(
        codes,
        [
            ("NST_", 100.0),
            ("LVH", 35.0),
            ("PVC", 100.0),
            ("VCLVH", 0.0),
            ("LOWT", 0.0),
            ("SR", 0.0)
        ]
    );
    assert_eq!(first.patient_id.as_deref(), Some("1900"));
    assert_eq!(first.strat_fold, Some(2));
    assert_eq!(first.filename_hr, "records500/00000/00841_hr");
    assert_eq!(row(11848).age, Some(300.0));
}

/// The PhysioNet Challenge 2024 labels of the 30 records that have them, reduced to the five
/// superclasses ("Old MI"/"Acute MI" -> MI; PVC, PAC, TACHY... are not superclasses).
fn challenge_superclasses(root: &Path) -> BTreeMap<u32, (String, Vec<Superclass>)> {
    let mut reader =
        csv::Reader::from_path(root.join("record_labels_from_challenge_headers.csv")).unwrap();
    let mut out = BTreeMap::new();
    for row in reader.records() {
        let row = row.unwrap();
        let labels = &row[5];
        if labels.is_empty() {
            continue;
        }
        let mut classes: Vec<Superclass> = labels
            .split(',')
            .filter_map(|l| match l.trim() {
                "NORM" => Some(Superclass::NORM),
                "Old MI" | "Acute MI" => Some(Superclass::MI),
                "STTC" => Some(Superclass::STTC),
                "CD" => Some(Superclass::CD),
                "HYP" => Some(Superclass::HYP),
                _ => None,
            })
            .collect();
        classes.sort();
        let sex = if &row[2] == "Female" { "F" } else { "M" };
        out.insert(row[0].parse().unwrap(), (sex.to_string(), classes));
    }
    out
}

fn superclass_counts(records: &[Record]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for record in records {
        for class in &record.meta.superclasses {
            *counts.entry(format!("{class:?}")).or_default() += 1;
        }
    }
    counts
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn ptbxl_records_carry_labels_matching_independent_sources() {
    let root = data_root().join("ptbxl_mini");
    let (records, report) = ptbxl::load_with_report(&root, PtbxlRate::Hz500).unwrap();
    assert_eq!((records.len(), report.skipped_missing.len()), (40, 0));
    // The data README: "Superclass coverage (40 records): NORM 25, MI 8, STTC 8, CD 7, HYP 6".
    assert_eq!(
        superclass_counts(&records),
        counts(&[("NORM", 25), ("MI", 8), ("STTC", 8), ("CD", 7), ("HYP", 6)])
    );
    let challenge = challenge_superclasses(&root);
    assert_eq!(challenge.len(), 30);
    for record in &records {
        assert_eq!(record.source, SourceKind::Ptbxl);
        assert_eq!(record.fs, 500.0);
        assert_eq!(record.len(), 5000);
        let id: u32 = record.id["ptbxl/".len()..][..5].parse().unwrap();
        if let Some((sex, classes)) = challenge.get(&id) {
            assert_eq!(&record.meta.superclasses, classes, "{}", record.id);
            assert_eq!(record.meta.sex.as_ref(), Some(sex), "{}", record.id);
        }
        assert!(record.meta.fold.is_some_and(|f| (1..=10).contains(&f)));
        assert_eq!(record.meta.diagnoses.len(), record.meta.scp_codes.len());
    }
    let first = records.iter().find(|r| r.id == "ptbxl/00841_hr").unwrap();
    assert_eq!(first.meta.rhythm.as_deref(), Some("sinus rhythm"));
    assert_eq!(first.meta.age, Some(73.0));
    assert!(
        first
            .meta
            .diagnoses
            .contains(&"left ventricular hypertrophy".to_string())
    );
    let oldest = records.iter().find(|r| r.id == "ptbxl/11848_hr").unwrap();
    assert_eq!(oldest.meta.age, Some(90.0), "age 300 means older than 89");

    let (low, report) = ptbxl::load_with_report(&root, PtbxlRate::Hz100).unwrap();
    assert_eq!(low.len(), 30);
    assert_eq!(report.skipped_missing, (6000..6010).collect::<Vec<u32>>());
    assert!(low.iter().all(|r| r.fs == 100.0 && r.len() == 1000));
}

/// Symbol counts and per-symbol sums of sample indices over all 2400 LUDB annotation files,
/// from wfdb 4.3.1 `rdann`.
const LUDB_SYMBOLS: [(&str, usize, u64); 5] = [
    ("(", 58321, 144_017_350),
    (")", 58423, 147_900_556),
    ("N", 21965, 54_625_038),
    ("p", 16797, 43_969_626),
    ("t", 19661, 47_500_849),
];

const LUDB_LEAD_EXTENSIONS: [&str; 12] = [
    "i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6",
];

#[test]
fn ludb_annotations_decode_like_wfdb() {
    let data = data_root().join("ludb/data");
    let mut seen: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    let mut complete = BTreeMap::new();
    let mut incomplete = 0;
    for record in 1..=200 {
        for ext in LUDB_LEAD_EXTENSIONS {
            let anns = read_annotations(data.join(format!("{record}.{ext}"))).unwrap();
            assert!(anns.windows(2).all(|w| w[0].sample <= w[1].sample));
            for a in &anns {
                let entry = seen.entry(a.symbol()).or_default();
                entry.0 += 1;
                entry.1 += a.sample;
            }
            let delineation = annotation::waves_from_annotations(&anns);
            incomplete += delineation.incomplete;
            for wave in delineation.waves {
                assert!(wave.onset <= wave.peak && wave.peak <= wave.offset);
                *complete.entry(format!("{:?}", wave.kind)).or_insert(0usize) += 1;
            }
        }
    }
    let expected: BTreeMap<&str, (usize, u64)> = LUDB_SYMBOLS
        .iter()
        .map(|&(s, n, sum)| (s, (n, sum)))
        .collect();
    assert_eq!(seen, expected);
    // From wfdb 4.3.1 as well: peaks with `(` directly before and `)` directly after.
    assert_eq!(
        complete,
        counts(&[("QRS", 21843), ("T", 19650), ("P", 16796)])
    );
    // Every peak symbol is either a complete wave or counted as incomplete.
    assert_eq!(incomplete, 21965 + 16797 + 19661 - 21843 - 19650 - 16796);
}

#[test]
fn ludb_records_carry_waves_and_diagnoses() {
    let root = data_root().join("ludb");
    let records = ludb::load(&root).unwrap();
    assert_eq!(records.len(), 200);
    let mut rhythms: BTreeMap<String, usize> = BTreeMap::new();
    let mut waves = 0;
    for record in &records {
        assert_eq!(record.source, SourceKind::Ludb);
        assert_eq!((record.fs, record.len()), (500.0, 5000));
        assert_eq!(record.waves.len(), 12, "{}", record.id);
        waves += record.waves.iter().map(|(_, w)| w.len()).sum::<usize>();
        *rhythms
            .entry(record.meta.rhythm.clone().unwrap())
            .or_default() += 1;
        assert!(record.meta.age.is_some() && record.meta.sex.is_some());
    }
    assert_eq!(waves, 21843 + 19650 + 16796);
    // `grep -h '^#Rhythm' ludb/data/*.hea | sort | uniq -c`.
    assert_eq!(
        rhythms,
        counts(&[
            ("atrial fibrillation", 15),
            ("atrial flutter, typical", 3),
            ("irregular sinus rhythm", 2),
            ("sinus arrhythmia", 8),
            ("sinus bradycardia", 25),
            ("sinus rhythm", 143),
            ("sinus tachycardia", 4),
        ])
    );
    // README: 85 women and 115 men.
    let women = records
        .iter()
        .filter(|r| r.meta.sex.as_deref() == Some("F"))
        .count();
    assert_eq!(women, 85);

    let first = records.iter().find(|r| r.id == "ludb/1").unwrap();
    assert_eq!(first.meta.age, Some(51.0));
    assert_eq!(first.meta.rhythm.as_deref(), Some("sinus bradycardia"));
    assert_eq!(
        first.meta.diagnoses,
        [
            "Rhythm: Sinus bradycardia",
            "Electric axis of the heart: left axis deviation",
            "Left ventricular hypertrophy",
            "Left ventricular overload",
            "Non-specific repolarization abnormalities: posterior wall",
        ]
    );
    // wfdb 4.3.1 `rdann('1', 'ii')`: ( 644, N 662, ) 682, ( 776, t 843, ) 878, ( 1250, p 1278,
    // ) 1302.
    let (_, lead_ii) = first.waves.iter().find(|(lead, _)| lead == "II").unwrap();
    let summary: Vec<(WaveKind, usize, usize, usize)> = lead_ii[..3]
        .iter()
        .map(|w| (w.kind, w.onset, w.peak, w.offset))
        .collect();
    assert_eq!(
        summary,
        [
            (WaveKind::QRS, 644, 662, 682),
            (WaveKind::T, 776, 843, 878),
            (WaveKind::P, 1250, 1278, 1302)
        ]
    );
    // Record 34: ludb.csv lists "Pacemaker presence, undefined", the header does not; the
    // header gives age 90 where the CSV says >89.
    let paced = records.iter().find(|r| r.id == "ludb/34").unwrap();
    assert_eq!(paced.meta.age, Some(90.0));
    assert!(
        paced
            .meta
            .diagnoses
            .contains(&"Pacemaker presence, undefined".to_string())
    );
    assert!(
        paced
            .meta
            .diagnoses
            .contains(&"UNIpolar ventricular pacing".to_string())
    );
}

#[test]
fn cinc_headers_fill_snomed_labels() {
    let root = data_root();
    let records = load_any(&root.join("cinc2021_samples"), &[]).unwrap();
    assert_eq!(records.len(), 50);
    assert!(records.iter().all(|r| r.source == SourceKind::Cinc));
    let distinct: std::collections::BTreeSet<&String> =
        records.iter().flat_map(|r| &r.meta.snomed).collect();
    assert_eq!(distinct.len(), 25, "README: 25 distinct codes");
    let first = &records[0];
    assert_eq!(first.id, "E07500");
    assert_eq!(first.meta.age, Some(78.0));
    assert_eq!(first.meta.sex.as_deref(), Some("M"));
    assert_eq!(first.meta.snomed, ["67741000119109", "426177001"]);
    let header = read_header(root.join("cinc2021_samples/HR06000")).unwrap();
    assert_eq!(header.signals[0].units, "mv");
    assert_eq!(header.signals[0].byte_offset, Some(24));
}

#[test]
fn load_any_walks_all_sources_in_a_stable_order() {
    let root = data_root();
    let (records, report) = load_any_with_report(&root, &[]).unwrap();
    assert_eq!(records.len(), 50 + 200 + 40);
    assert!(report.skipped_missing.is_empty());
    let count = |kind: SourceKind| records.iter().filter(|r| r.source == kind).count();
    assert_eq!(
        (
            count(SourceKind::Cinc),
            count(SourceKind::Ludb),
            count(SourceKind::Ptbxl)
        ),
        (50, 200, 40)
    );
    // Sorted walk: cinc2021_samples < ludb < ptbxl_mini.
    assert_eq!(records[0].id, "cinc2021_samples/E07500");
    assert_eq!(records[50].id, "ludb/1");
    assert_eq!(records[250].id, "ptbxl/00841_hr");
    let ids: Vec<&String> = records.iter().map(|r| &r.id).collect();
    let unique: std::collections::BTreeSet<&&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());

    let without_hr = load_any(&root, &["cinc2021_samples/HR*".to_string()]).unwrap();
    assert_eq!(without_hr.len(), records.len() - 10);
    assert!(without_hr.iter().all(|r| !r.id.contains("/HR")));
    let without_ptbxl_6000 = load_any(&root, &["ptbxl_mini/records500/06000".to_string()]);
    assert_eq!(without_ptbxl_6000.unwrap().len(), records.len() - 11);
}

#[test]
fn fingerprint_is_stable_and_follows_the_files_read() {
    let root = data_root();
    let all = fingerprint(&root, &[]).unwrap();
    assert_eq!(all, fingerprint(&root, &[]).unwrap());
    assert_eq!(all.len(), 64);
    assert_ne!(
        all,
        fingerprint(&root, &["ludb/data/7*".to_string()]).unwrap()
    );

    let dir = tempfile::tempdir().unwrap();
    for name in ["E07500.hea", "E07500.mat", "E07501.hea", "E07501.mat"] {
        std::fs::copy(
            root.join("cinc2021_samples").join(name),
            dir.path().join(name),
        )
        .unwrap();
    }
    let before = fingerprint(dir.path(), &[]).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not read").unwrap();
    assert_eq!(before, fingerprint(dir.path(), &[]).unwrap(), "unread file");
    let mat = dir.path().join("E07501.mat");
    let mut bytes = std::fs::read(&mat).unwrap();
    bytes.push(0);
    std::fs::write(&mat, &bytes).unwrap();
    assert_ne!(
        before,
        fingerprint(dir.path(), &[]).unwrap(),
        "signal file changed"
    );
}

#[test]
fn check_root_reports_the_shared_folder() {
    let root = data_root();
    let report = check_root(&root);
    assert!(report.failures.is_empty(), "{report}");
    assert_eq!((report.records_ok, report.records_failed), (320, 0));
    assert_eq!(
        report.sources,
        counts(&[("cinc", 50), ("ludb", 200), ("ptbxl", 70)])
    );
    assert_eq!(
        report.sampling_rates_hz,
        counts(&[("100", 30), ("500", 290)])
    );
    assert_eq!(report.durations_s, counts(&[("10", 320)]));
    let leads: BTreeMap<String, usize> = STANDARD_LEADS
        .iter()
        .map(|l| (l.to_string(), 320))
        .collect();
    assert_eq!(report.leads, leads);
    assert_eq!(
        report.superclasses,
        counts(&[("NORM", 25), ("MI", 8), ("STTC", 8), ("CD", 7), ("HYP", 6)])
    );
    assert_eq!(report.snomed_codes.len(), 25);
    assert_eq!(report.ludb_rhythms.values().sum::<usize>(), 200);
    assert_eq!(report.ludb_rhythms["sinus rhythm"], 143);
    assert_eq!(
        report.waves,
        counts(&[("QRS", 21843), ("T", 19650), ("P", 16796)])
    );
    assert_eq!(report.incomplete_waves, 134);
    assert_eq!(report.invalid_samples, 0);
    assert_eq!(report.skipped_missing.len(), 10);
    let text = report.to_string();
    assert!(text.contains("320 ok, 0 failed"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["records_ok"], 320);
}

#[test]
fn header_path_accepts_record_paths() {
    assert_eq!(
        wfdb::header_path(Path::new("a/data/1")),
        PathBuf::from("a/data/1.hea")
    );
    assert_eq!(
        wfdb::header_path(Path::new("a/1.hea")),
        PathBuf::from("a/1.hea")
    );
}
