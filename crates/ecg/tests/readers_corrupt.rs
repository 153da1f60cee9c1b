//! Corrupted copies of real records, written into temporary folders: every fault must come back
//! as an error that names the record and the header line or lead, never as a panic or as wrong
//! data.

use std::path::{Path, PathBuf};

use beatlab_ecg::DataError;
use beatlab_ecg::annotation::read_annotations;
use beatlab_ecg::check::check_root;
use beatlab_ecg::ptbxl;
use beatlab_ecg::wfdb::{parse_header, read_record, read_record_digital};

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

/// Copies `files` of a shared folder into a fresh temp dir.
fn copy_into_temp(folder: &str, files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in files {
        std::fs::copy(data_root().join(folder).join(file), dir.path().join(file)).unwrap();
    }
    dir
}

fn header_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Asserts the error's message contains every fragment.
fn assert_mentions(error: &DataError, fragments: &[&str]) {
    let message = error.to_string();
    for fragment in fragments {
        assert!(
            message.contains(fragment),
            "`{message}` should mention `{fragment}`"
        );
    }
}

/// LUDB record 1 (format 16, 12 leads, header lines 2-13 are the signals i..v6).
fn ludb_record_1() -> (tempfile::TempDir, PathBuf) {
    let dir = copy_into_temp("ludb/data", &["1.hea", "1.dat"]);
    let header = dir.path().join("1.hea");
    (dir, header)
}

#[test]
fn truncated_signal_file_names_record_and_file() {
    let (dir, header) = ludb_record_1();
    let dat = dir.path().join("1.dat");
    let bytes = std::fs::read(&dat).unwrap();
    std::fs::write(&dat, &bytes[..bytes.len() / 2]).unwrap();
    let error = read_record(&header).unwrap_err();
    assert!(
        matches!(error, DataError::TruncatedSignal { .. }),
        "{error}"
    );
    assert_mentions(
        &error,
        &[
            "record 1",
            "1.dat",
            "truncated",
            "120000 bytes",
            "found 60000",
        ],
    );
}

#[test]
fn truncating_signal_files_anywhere_gives_errors() {
    let (dir, header) = ludb_record_1();
    let dat = dir.path().join("1.dat");
    let bytes = std::fs::read(&dat).unwrap();
    for cut in (0..bytes.len()).step_by(997).chain([bytes.len() - 1]) {
        std::fs::write(&dat, &bytes[..cut]).unwrap();
        let error = read_record(&header).unwrap_err();
        assert!(
            matches!(error, DataError::TruncatedSignal { .. }),
            "cut {cut}: {error}"
        );
    }

    let cinc = copy_into_temp("cinc2021_samples", &["E07500.hea", "E07500.mat"]);
    let mat = cinc.path().join("E07500.mat");
    let bytes = std::fs::read(&mat).unwrap();
    for cut in (0..bytes.len())
        .step_by(1013)
        .chain([1, 19, 23, bytes.len() - 1])
    {
        std::fs::write(&mat, &bytes[..cut]).unwrap();
        let error = read_record(cinc.path().join("E07500")).unwrap_err();
        assert!(
            matches!(
                error,
                DataError::TruncatedSignal { .. } | DataError::Mat { .. }
            ),
            "cut {cut}: {error}"
        );
        assert_mentions(&error, &["record E07500", "E07500.mat"]);
    }
}

#[test]
fn truncating_a_header_anywhere_never_panics() {
    let (dir, header) = ludb_record_1();
    let text = std::fs::read(&header).unwrap();
    for cut in 0..text.len() {
        std::fs::write(&header, &text[..cut]).unwrap();
        // A cut in line 13 or later can leave a valid header (descriptions and comments are
        // free text); a cut before line 13 always loses a declared signal line.
        let result = read_record(&header);
        let line_13_start = text
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(11)
            .map(|(i, _)| i + 1)
            .unwrap();
        if cut < line_13_start {
            assert!(result.is_err(), "cut {cut} should fail");
        }
    }
    drop(dir);
}

#[test]
fn mangled_header_fields_give_field_errors_or_valid_reads() {
    let (dir, header) = ludb_record_1();
    let original = header_lines(&header);
    let garbage = [
        "x",
        "-1",
        "99999999999999999999",
        "1e400",
        "16x",
        "(",
        "/",
        "+",
        "0",
        "200(-2147483648)/mV",
        "16+999999999999",
    ];
    for line in 0..13 {
        let fields = original[line].split_whitespace().count();
        for field in 0..fields {
            for junk in garbage {
                let mut lines = original.clone();
                let mut parts: Vec<&str> = lines[line].split_whitespace().collect();
                parts[field] = junk;
                lines[line] = parts.join(" ");
                write_lines(&header, &lines);
                // Conversion to millivolts included: extreme baselines must not overflow.
                if let Err(error) = read_record(&header) {
                    // Every error names the record (the record line may itself be mangled).
                    let message = error.to_string();
                    assert!(message.contains("record "), "{message}");
                }
            }
        }
    }
    drop(dir);
}

#[test]
fn a_bad_gain_names_the_field_and_line() {
    let (_dir, header) = ludb_record_1();
    let mut lines = header_lines(&header);
    lines[2] = lines[2].replace("1206(2)/mV", "12O6(2)/mV");
    write_lines(&header, &lines);
    let error = read_record(&header).unwrap_err();
    assert!(matches!(error, DataError::HeaderField { .. }), "{error}");
    assert_mentions(&error, &["record 1", "line 3", "`gain`", "12O6(2)/mV"]);
}

#[test]
fn a_wrong_signal_count_names_the_record_line() {
    let (_dir, header) = ludb_record_1();
    let mut lines = header_lines(&header);
    lines[0] = "1 13 500 5000".to_string();
    write_lines(&header, &lines);
    let error = read_record(&header).unwrap_err();
    assert_mentions(&error, &["record 1", "line 1", "13 signal(s)", "only 12"]);
}

#[test]
fn an_unsupported_format_names_the_lead_and_line() {
    let (_dir, header) = ludb_record_1();
    let mut lines = header_lines(&header);
    for line in &mut lines[1..13] {
        *line = line.replacen(" 16 ", " 524 ", 1);
    }
    write_lines(&header, &lines);
    let error = read_record(&header).unwrap_err();
    assert!(
        matches!(error, DataError::UnsupportedFormat { .. }),
        "{error}"
    );
    assert_mentions(&error, &["record 1", "lead I", "line 2", "format 524"]);
}

#[test]
fn an_altered_checksum_names_lead_and_both_values() {
    let (_dir, header) = ludb_record_1();
    let mut lines = header_lines(&header);
    // Line 10 is lead v3: `1.dat 16 2259(3)/mV 0 0 65 15400 0 v3`.
    assert!(lines[9].ends_with(" v3"));
    lines[9] = lines[9].replace(" 15400 ", " 15401 ");
    write_lines(&header, &lines);
    let error = read_record(&header).unwrap_err();
    assert!(matches!(error, DataError::Checksum { .. }), "{error}");
    assert_mentions(
        &error,
        &["record 1", "lead V3", "line 10", "15401", "15400"],
    );
}

#[test]
fn an_altered_initial_value_names_lead_and_both_values() {
    let (_dir, header) = ludb_record_1();
    let mut lines = header_lines(&header);
    assert!(lines[4].ends_with(" avr"));
    lines[4] = lines[4].replace(" 47 -23456 ", " 48 -23456 ");
    write_lines(&header, &lines);
    let error = read_record(&header).unwrap_err();
    assert!(matches!(error, DataError::InitialValue { .. }), "{error}");
    assert_mentions(&error, &["record 1", "lead aVR", "line 5", "48", "47"]);
}

#[test]
fn a_corrupted_sample_fails_that_leads_checksum() {
    let (dir, header) = ludb_record_1();
    let dat = dir.path().join("1.dat");
    let mut bytes = std::fs::read(&dat).unwrap();
    // Frame 100, signal 5 (avf), low byte; 12 signals x 2 bytes per frame.
    bytes[100 * 24 + 5 * 2] ^= 0x01;
    std::fs::write(&dat, &bytes).unwrap();
    let error = read_record(&header).unwrap_err();
    assert_mentions(&error, &["record 1", "lead aVF", "line 7", "checksum"]);
}

#[test]
fn garbage_lines_are_reported_where_they_are() {
    let (_dir, header) = ludb_record_1();
    let original = header_lines(&header);

    let mut lines = original.clone();
    lines.insert(13, "garbage after the signals".to_string());
    write_lines(&header, &lines);
    let error = read_record(&header).unwrap_err();
    assert_mentions(
        &error,
        &["record 1", "line 14", "unexpected line", "garbage"],
    );

    let mut lines = original.clone();
    lines.insert(5, "1.dat sixteen".to_string());
    write_lines(&header, &lines);
    let error = read_record(&header).unwrap_err();
    assert_mentions(&error, &["record 1", "line 6", "`format`", "sixteen"]);

    write_lines(&header, &["# only a comment".to_string()]);
    let error = read_record(&header).unwrap_err();
    assert_mentions(&error, &["no record line"]);
}

#[test]
fn mangled_mat_headers_are_reported() {
    let dir = copy_into_temp("cinc2021_samples", &["E07500.hea", "E07500.mat"]);
    let mat = dir.path().join("E07500.mat");
    let original = std::fs::read(&mat).unwrap();
    let check = |offset: usize, value: i32, fragment: &str| {
        let mut bytes = original.clone();
        bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
        std::fs::write(&mat, &bytes).unwrap();
        let error = read_record(dir.path().join("E07500")).unwrap_err();
        assert!(matches!(error, DataError::Mat { .. }), "{error}");
        assert_mentions(&error, &["record E07500", "E07500.mat", fragment]);
    };
    check(0, 0, "F64"); // type 0: float64, not int16
    check(0, 7777, "type code");
    check(4, 11, "11 rows");
    check(8, 4999, "4999 columns");
    check(16, 8, "starts at byte 28");
    check(16, 0, "name length");
}

#[test]
fn annotation_files_truncated_anywhere_never_panic() {
    let path = data_root().join("ludb/data/1.ii");
    let bytes = std::fs::read(&path).unwrap();
    let full = read_annotations(&path).unwrap();
    for cut in 0..bytes.len() {
        let result = beatlab_ecg::annotation::parse_annotations(&bytes[..cut], Path::new("1.ii"));
        match result {
            // An even cut is a shorter valid stream: a prefix of the full decode.
            Ok(partial) => assert_eq!(partial[..], full[..partial.len()]),
            Err(error) => assert_mentions(&error, &["1.ii", "byte"]),
        }
    }
}

#[test]
fn broken_ptbxl_tables_name_line_and_column() {
    let source = data_root().join("ptbxl_mini");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        source.join("scp_statements.csv"),
        dir.path().join("scp_statements.csv"),
    )
    .unwrap();
    let table = std::fs::read_to_string(source.join("ptbxl_database.csv")).unwrap();
    let database = dir.path().join("ptbxl_database.csv");

    // The second data row (file line 3) loses the closing brace of its scp_codes.
    let broken = table.replacen("'NT_': 0.0, 'SR': 0.0}", "'NT_': 0.0, 'SR': 0.0", 1);
    assert_ne!(broken, table);
    std::fs::write(&database, broken).unwrap();
    let error = ptbxl::read_database(dir.path()).unwrap_err();
    assert_mentions(&error, &["ptbxl_database.csv line 3", "`scp_codes`"]);

    let broken = table.replacen(
        ",2,records100/00000/00841_lr",
        ",twelve,records100/00000/00841_lr",
        1,
    );
    assert_ne!(broken, table);
    std::fs::write(&database, broken).unwrap();
    let error = ptbxl::read_database(dir.path()).unwrap_err();
    assert_mentions(&error, &["line 2", "`strat_fold`", "twelve"]);

    let broken = table.replacen("'NDT': 100.0", "'NOPE': 100.0", 1);
    std::fs::write(&database, broken).unwrap();
    std::fs::create_dir_all(dir.path().join("records500/01000")).unwrap();
    for ext in ["hea", "dat"] {
        std::fs::copy(
            source.join(format!("records500/01000/01612_hr.{ext}")),
            dir.path().join(format!("records500/01000/01612_hr.{ext}")),
        )
        .unwrap();
    }
    let error = ptbxl::load(dir.path(), ptbxl::PtbxlRate::Hz500).unwrap_err();
    assert_mentions(&error, &["line 3", "`NOPE` is not in scp_statements.csv"]);
}

#[test]
fn check_root_lists_each_failure_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cinc = data_root().join("cinc2021_samples");
    for name in ["E07500.hea", "E07500.mat", "E07501.hea", "E07501.mat"] {
        std::fs::copy(cinc.join(name), dir.path().join(name)).unwrap();
    }
    let mat = dir.path().join("E07501.mat");
    let bytes = std::fs::read(&mat).unwrap();
    std::fs::write(&mat, &bytes[..bytes.len() - 2]).unwrap();
    let report = check_root(dir.path());
    assert_eq!((report.records_ok, report.records_failed), (1, 1));
    assert_eq!(report.failures[0].path, "E07501.hea");
    assert!(report.failures[0].reason.contains("truncated"), "{report}");
    assert!(report.to_string().contains("1 ok, 1 failed"));
}

#[test]
fn parse_header_keeps_description_text_and_defaults() {
    let header = parse_header(
        "# leading comment\nrec 2 360\nrec.dat 212 200/uV 12 1024 995 0 0 MLII lead\n\
         rec.dat 212\n# trailing\n",
        Path::new("dir/rec.hea"),
    )
    .unwrap();
    assert_eq!(header.record_name, "rec");
    assert_eq!((header.fs, header.num_samples), (360.0, None));
    assert_eq!(header.comments, ["leading comment", "trailing"]);
    let (a, b) = (&header.signals[0], &header.signals[1]);
    assert_eq!((a.line, b.line), (3, 4));
    assert_eq!(a.description, "MLII lead");
    assert_eq!(
        (a.baseline, a.adc_zero, a.units.as_str()),
        (1024, 1024, "uV")
    );
    assert_eq!(a.millivolts_per_unit(), 1e-3);
    assert_eq!(
        (b.gain(), b.units.as_str(), b.lead.as_str()),
        (200.0, "mV", "signal1")
    );
}

#[test]
fn format_212_files_decode_with_derived_length() {
    let dir = tempfile::tempdir().unwrap();
    // Two signals, three frames: (1, -1), (2047, -2048), (0, 300), packed by hand.
    let samples: [i32; 6] = [1, -1, 2047, -2048, 0, 300];
    let mut bytes = Vec::new();
    for pair in samples.chunks(2) {
        let (a, b) = ((pair[0] & 0xfff) as u32, (pair[1] & 0xfff) as u32);
        bytes.extend([
            (a & 0xff) as u8,
            (((a >> 8) & 0x0f) | ((b >> 8) << 4)) as u8,
            (b & 0xff) as u8,
        ]);
    }
    std::fs::write(dir.path().join("r.dat"), &bytes).unwrap();
    let sum = |s: &[i32]| s.iter().sum::<i32>();
    std::fs::write(
        dir.path().join("r.hea"),
        format!(
            "r 2 100\nr.dat 212 100(0)/mV 12 0 1 {} 0 A\nr.dat 212 100(0)/mV 12 0 -1 {} 0 B\n",
            sum(&[1, 2047, 0]),
            sum(&[-1, -2048, 300])
        ),
    )
    .unwrap();
    let digital = read_record_digital(dir.path().join("r")).unwrap();
    assert_eq!(
        digital.samples,
        vec![vec![1, 2047, 0], vec![-1, -2048, 300]]
    );
    let record = digital.to_record();
    assert_eq!(record.signals[0], vec![0.01, 20.47, 0.0]);
    assert!(
        record.signals[1][1].is_nan(),
        "-2048 is 212's invalid-sample marker"
    );
}

#[test]
fn a_missing_signal_file_names_record_and_lead() {
    let (dir, header) = ludb_record_1();
    std::fs::remove_file(dir.path().join("1.dat")).unwrap();
    let error = read_record(&header).unwrap_err();
    assert!(matches!(error, DataError::SignalFile { .. }), "{error}");
    assert_mentions(&error, &["record 1", "lead I", "line 2", "1.dat"]);
}
