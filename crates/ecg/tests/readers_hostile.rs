//! Hostile records written into temporary folders (issue #14 items 2 and 3): absurd header
//! values, signal files that are devices, FIFOs or outside the record's folder, and sample counts
//! that would need gigabytes. Each must come back quickly as an error naming the file, line and
//! field (or the signal file and why it was refused), never as a hang, an out-of-memory kill or
//! a panic; `check_root` must list them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use beatlab_ecg::DataError;
use beatlab_ecg::check::check_root;
use beatlab_ecg::wfdb::{ReadLimits, read_header, read_record, read_record_digital_within};

/// A folder holding `rec.hea` with `header` and `rec.dat` with `dat` (4 frames of 2 signals
/// in format 16: every sample 1).
fn record(header: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rec.hea"), header).unwrap();
    std::fs::write(dir.path().join("rec.dat"), [1u8, 0].repeat(8)).unwrap();
    let path = dir.path().join("rec.hea");
    (dir, path)
}

const GOOD: &str = "rec 2 500 4\nrec.dat 16 200/mV 16 0 1 4 0 I\nrec.dat 16 200/mV 16 0 1 4 0 II\n";

/// The good header with one field replaced: `line` 0-based, `field` 0-based.
fn with_field(line: usize, field: usize, value: &str) -> String {
    let mut lines: Vec<String> = GOOD.lines().map(str::to_string).collect();
    let mut parts: Vec<&str> = lines[line].split_whitespace().collect();
    parts[field] = value;
    lines[line] = parts.join(" ");
    lines.join("\n") + "\n"
}

fn assert_mentions(error: &DataError, fragments: &[&str]) {
    let message = error.to_string();
    for fragment in fragments {
        assert!(
            message.contains(fragment),
            "`{message}` should mention `{fragment}`"
        );
    }
}

/// Reads with a deadline: the read must end (with an error) well within it.
fn read_quickly(path: &Path) -> Result<beatlab_ecg::Record, DataError> {
    let start = Instant::now();
    let result = read_record(path);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "reading {} took {:?}",
        path.display(),
        start.elapsed()
    );
    result
}

#[test]
fn the_good_record_reads() {
    let (_dir, path) = record(GOOD);
    let rec = read_record(&path).unwrap();
    assert_eq!(rec.signals, vec![vec![0.005f32; 4]; 2]);
}

#[test]
fn absurd_sampling_frequencies_name_file_line_field_and_range() {
    for fs in [
        "1e300",
        "1e-300",
        "0.001",
        "0",
        "-500",
        "inf",
        "NaN",
        "500/1e300",
        "500/0",
    ] {
        let (_dir, path) = record(&with_field(0, 2, fs));
        let error = read_quickly(&path).unwrap_err();
        assert!(
            matches!(error, DataError::HeaderField { .. }),
            "{fs}: {error}"
        );
        assert_mentions(&error, &["rec.hea", "line 1", "frequency", fs]);
        if !fs.contains('/') {
            assert_mentions(&error, &["from 1 to 100000 Hz"]);
        }
    }
    // Counter frequencies and base counters in range are accepted.
    let (_dir, path) = record(&with_field(0, 2, "500/1000(-5.5)"));
    let header = read_header(&path).unwrap();
    assert_eq!(
        (header.fs, header.counter_freq, header.base_counter),
        (500.0, Some(1000.0), Some(-5.5))
    );
}

#[test]
fn out_of_range_fields_name_their_line_and_field() {
    let cases: [(usize, usize, &str, &str); 11] = [
        (0, 1, "5000", "number of signals"),
        (0, 3, "2000000000", "number of samples"),
        (1, 2, "1e-300/mV", "gain"),
        (1, 2, "1e300/mV", "gain"),
        (1, 2, "-1e-30/mV", "gain"),
        (1, 3, "64", "ADC resolution"),
        (2, 5, "40000", "initial value"),
        (2, 6, "70000", "checksum"),
        (2, 6, "-40000", "checksum"),
        (0, 1, "-2", "number of signals"),
        (2, 3, "-1", "ADC resolution"),
    ];
    for (line, field, value, name) in cases {
        let (_dir, path) = record(&with_field(line, field, value));
        let error = read_quickly(&path).unwrap_err();
        assert!(
            matches!(error, DataError::HeaderField { .. }),
            "{value}: {error}"
        );
        assert_mentions(
            &error,
            &[
                "rec.hea",
                &format!("line {}", line + 1),
                name,
                value,
                "expected",
            ],
        );
    }
}

#[test]
fn malformed_base_times_and_dates_are_field_errors() {
    for (time, date) in [("10:61:00", "01/01/2000"), ("10:00:00", "32/01/2000")] {
        let header = GOOD.replacen("rec 2 500 4", &format!("rec 2 500 4 {time} {date}"), 1);
        let (_dir, path) = record(&header);
        let error = read_quickly(&path).unwrap_err();
        assert_mentions(&error, &["line 1", "base"]);
    }
    for (time, date) in [
        ("10:59:59.250", "31/12/1999"),
        ("0", "1/2/2020"),
        ("25:00", "01/01/2000"),
    ] {
        let header = GOOD.replacen("rec 2 500 4", &format!("rec 2 500 4 {time} {date}"), 1);
        let (_dir, path) = record(&header);
        read_record(&path).unwrap_or_else(|e| panic!("{time} {date}: {e}"));
    }
}

#[test]
fn a_device_as_signal_file_is_refused_without_reading_it() {
    // Absolute path: refused whatever it is.
    for file in ["/dev/zero", "/dev/urandom", "/etc/passwd"] {
        let (_dir, path) = record(&format!(
            "rec 1 500 100000000\n{file} 16 200/mV 16 0 0 0 0 I\n"
        ));
        let error = read_quickly(&path).unwrap_err();
        assert!(
            matches!(error, DataError::SignalFileRefused { .. }),
            "{error}"
        );
        assert_mentions(&error, &["record rec", "line 2", file, "absolute"]);
    }
    // A symlink inside the folder pointing at a device.
    let (dir, path) = record("rec 1 500 100000000\nzero.dat 16 200/mV 16 0 0 0 0 I\n");
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.dat")).unwrap();
    let error = read_quickly(&path).unwrap_err();
    assert!(
        matches!(error, DataError::SignalFileRefused { .. }),
        "{error}"
    );
    assert_mentions(&error, &["zero.dat", "outside the record's folder"]);
}

#[test]
fn names_leaving_the_folder_are_refused() {
    let parent = tempfile::tempdir().unwrap();
    let inner = parent.path().join("data");
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(parent.path().join("secret.dat"), [1u8, 0].repeat(4)).unwrap();
    for name in ["../secret.dat", "./../secret.dat", "sub/../../secret.dat"] {
        std::fs::write(
            inner.join("rec.hea"),
            format!("rec 1 500 4\n{name} 16 200/mV 16 0 1 4 0 I\n"),
        )
        .unwrap();
        let error = read_quickly(&inner.join("rec.hea")).unwrap_err();
        assert!(
            matches!(error, DataError::SignalFileRefused { .. }),
            "{error}"
        );
        assert_mentions(&error, &["line 2", name, "leaves the record's folder"]);
    }
    // The same file through a symlink that leaves the folder.
    std::os::unix::fs::symlink("../secret.dat", inner.join("link.dat")).unwrap();
    std::fs::write(
        inner.join("rec.hea"),
        "rec 1 500 4\nlink.dat 16 200/mV 16 0 1 4 0 I\n",
    )
    .unwrap();
    let error = read_quickly(&inner.join("rec.hea")).unwrap_err();
    assert_mentions(&error, &["link.dat", "outside the record's folder"]);
}

fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file system entry.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
}

#[test]
fn fifos_are_refused_without_blocking() {
    // A FIFO as the signal file (opening it for reading would block forever).
    let (dir, path) = record("rec 1 500 4\npipe.dat 16 200/mV 16 0 1 4 0 I\n");
    mkfifo(&dir.path().join("pipe.dat"));
    let error = read_quickly(&path).unwrap_err();
    assert!(
        matches!(error, DataError::SignalFileRefused { .. }),
        "{error}"
    );
    assert_mentions(&error, &["pipe.dat", "not a regular file", "FIFO"]);
    // A FIFO as the header, and a header that is a symlink to a device.
    let dir = tempfile::tempdir().unwrap();
    mkfifo(&dir.path().join("pipe.hea"));
    let error = read_quickly(&dir.path().join("pipe.hea")).unwrap_err();
    assert!(matches!(error, DataError::FileRefused { .. }), "{error}");
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.hea")).unwrap();
    let error = read_quickly(&dir.path().join("zero.hea")).unwrap_err();
    assert_mentions(&error, &["zero.hea", "character device"]);
}

#[test]
fn sizes_are_checked_before_reading() {
    // A sparse 8 GiB signal file and no sample count: reading it whole (as before) needs 8 GiB
    // of memory. Its size alone says it holds too many samples.
    let (dir, path) = record("rec 1 500\nbig.dat 16 200/mV 16 0 0 0 0 I\n");
    let big = std::fs::File::create(dir.path().join("big.dat")).unwrap();
    big.set_len(8 << 30).unwrap();
    let error = read_quickly(&path).unwrap_err();
    assert!(matches!(error, DataError::RecordTooLarge { .. }), "{error}");
    assert_mentions(&error, &["record rec", "4294967296 samples"]);
    // More samples than the file holds: a truncation error from the size, nothing read.
    std::fs::write(
        &path,
        "rec 1 500 100000000\nrec.dat 16 200/mV 16 0 0 0 0 I\n",
    )
    .unwrap();
    let error = read_quickly(&path).unwrap_err();
    assert!(
        matches!(error, DataError::TruncatedSignal { .. }),
        "{error}"
    );
    assert_mentions(&error, &["rec.dat", "200000000 bytes needed", "found 16"]);
    // A byte offset past the end of the file.
    let (_dir, path) = record(&GOOD.replace("rec.dat 16 ", "rec.dat 16+1000 "));
    let error = read_quickly(&path).unwrap_err();
    assert!(
        matches!(error, DataError::TruncatedSignal { .. }),
        "{error}"
    );
}

#[test]
fn a_record_over_the_memory_bound_is_refused_before_allocating() {
    // The header's count alone exceeds the default bound (2^28 samples over all signals).
    let (dir, path) = record(GOOD);
    let mut header = String::from("rec 12 500 30000000\n");
    for lead in 0..12 {
        header.push_str(&format!("big.dat 16 200/mV 16 0 0 0 0 L{lead}\n"));
    }
    std::fs::write(&path, header).unwrap();
    let big = std::fs::File::create(dir.path().join("big.dat")).unwrap();
    big.set_len(30_000_000 * 24).unwrap();
    let error = read_quickly(&path).unwrap_err();
    assert!(matches!(error, DataError::RecordTooLarge { .. }), "{error}");
    assert_mentions(&error, &["record rec", "360000000 samples", "268435456"]);
    // With no sample count, the size the file implies is bounded the same way; and a caller may
    // set a tighter bound.
    std::fs::write(&path, "rec 1 500\nbig.dat 16 200/mV 16 0 0 0 0 I\n").unwrap();
    let error = read_record_digital_within(&path, ReadLimits { max_samples: 1000 }).unwrap_err();
    assert_mentions(&error, &["360000000 samples", "limit of 1000"]);
}

#[test]
fn unsupported_formats_and_absurd_frames_are_refused_on_any_signal() {
    // A skew on the second signal used to be ignored (samples silently shifted) and `16x2` on
    // the second signal was reported as a checksum mismatch; both are now read (see
    // wfdb_python.rs). What is still refused is refused on whichever line it appears.
    let second = |format: &str| {
        GOOD.replacen(
            "rec.dat 16 200/mV 16 0 1 4 0 II",
            &format!("rec.dat {format} 200/mV 16 0 1 4 0 II"),
            1,
        )
    };
    for (format, field) in [
        ("16x2000", "samples per frame"),
        ("16x0", "samples per frame"),
        ("16:9999999", "skew"),
    ] {
        let (_dir, path) = record(&second(format));
        let error = read_quickly(&path).unwrap_err();
        assert!(matches!(error, DataError::HeaderField { .. }), "{error}");
        assert_mentions(&error, &["line 3", field, format]);
    }
    for format in ["516", "508", "999"] {
        let (_dir, path) = record(&second(format));
        let error = read_quickly(&path).unwrap_err();
        assert!(
            matches!(error, DataError::UnsupportedFormat { .. }),
            "{error}"
        );
        assert_mentions(
            &error,
            &["lead II", "line 3", format, "not the FLAC formats"],
        );
    }
}

#[test]
fn check_root_lists_hostile_records_with_their_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("fs.hea", "fs 1 1e300 4\nfs.dat 16 200/mV 16 0 0 0 0 I\n");
    write("fs.dat", "\0\0\0\0\0\0\0\0");
    write(
        "zero.hea",
        "zero 1 500 100000000\n/dev/zero 16 200/mV 16 0 0 0 0 I\n",
    );
    write("up.hea", "up 1 500 4\n../up.dat 16 200/mV 16 0 0 0 0 I\n");
    mkfifo(&dir.path().join("pipe.dat"));
    write(
        "pipe.hea",
        "pipe 1 500 4\npipe.dat 16 200/mV 16 0 0 0 0 I\n",
    );
    let start = Instant::now();
    let report = check_root(dir.path());
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(report.records_ok, 0);
    assert_eq!(report.records_failed, 4, "{:?}", report.failures);
    let reason = |path: &str| {
        report
            .failures
            .iter()
            .find(|f| f.path == path)
            .map(|f| f.reason.clone())
            .unwrap_or_else(|| panic!("{path} not in {:?}", report.failures))
    };
    assert!(reason("fs.hea").contains("sampling frequency"));
    assert!(reason("zero.hea").contains("absolute path"));
    assert!(reason("up.hea").contains("leaves the record's folder"));
    assert!(reason("pipe.hea").contains("FIFO"));
}

#[test]
fn multi_segment_headers_are_checked_like_signal_files() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("m.hea");
    let write = |text: &str| std::fs::write(&master, text).unwrap();
    // A segment name leaving the folder, a missing segment line, sample counts that disagree.
    write("m/1 1 500 4\n../rec 4\n");
    assert_mentions(
        &read_quickly(&master).unwrap_err(),
        &["line 2", "segment name", "../rec"],
    );
    write("m/2 1 500 4\nrec 4\n");
    assert_mentions(
        &read_quickly(&master).unwrap_err(),
        &["2 segment(s)", "only 1"],
    );
    std::fs::write(dir.path().join("rec.hea"), GOOD).unwrap();
    std::fs::write(dir.path().join("rec.dat"), [1u8, 0].repeat(8)).unwrap();
    write("m/1 2 500 5\nrec 5\n");
    assert_mentions(
        &read_quickly(&master).unwrap_err(),
        &["line 2", "has 4 samples", "says 5"],
    );
    // A segment that is itself multi-segment; then a good one with a gap.
    write("m/1 2 500 4\nm 4\n");
    assert_mentions(
        &read_quickly(&master).unwrap_err(),
        &["itself a multi-segment"],
    );
    write("m/2 2 500 7\nrec 4\n~ 3\n");
    let rec = read_quickly(&master).unwrap();
    assert_eq!(rec.leads, ["I", "II"]);
    assert_eq!(rec.signals[1][..4], [0.005f32; 4]);
    assert!(rec.signals[1][4..].iter().all(|v| v.is_nan()));
}
