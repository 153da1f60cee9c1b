//! WFDB decoding throughput: records per second decoding every record under the ECG data root
//! (LUDB, PTB-XL, CinC) to millivolts with [`beatlab_ecg::wfdb::read_record`] (checksums and
//! initial values verified), against the Python `wfdb` package's `rdrecord(physical=True)` on
//! the same list of records (`bench/wfdb_read.py`).
//!
//! Both sides decode the list once untimed (which also warms the page cache), then time
//! several passes that only decode. From the untimed pass both report how many samples they
//! decoded, how many were invalid, and the sum of the valid values; they must agree, so the two
//! sides provably decode the same records to the same values.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{BenchError, Comparison, Peer, PeerRound, Timer, alternate, finish_peer};

/// Knobs of the WFDB benchmark.
#[derive(Debug, Clone)]
pub struct WfdbOptions {
    /// Folder searched recursively for `*.hea`.
    pub root: PathBuf,
    /// Timed passes over all records; the median is reported.
    pub rounds: usize,
}

impl Default for WfdbOptions {
    fn default() -> Self {
        Self {
            root: PathBuf::from("../shared/data/ecg"),
            rounds: 5,
        }
    }
}

/// The ECG data root the tests use: `BEATLAB_ECG_DATA`, or `../shared/data/ecg` beside the
/// repository.
pub fn default_data_root(repo_root: &Path) -> PathBuf {
    std::env::var_os("BEATLAB_ECG_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root.join("../shared/data/ecg"))
}

/// Every `*.hea` under `root`, sorted.
pub fn find_headers(root: &Path) -> Result<Vec<PathBuf>, BenchError> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| BenchError::Io {
            action: "list",
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| BenchError::Io {
                action: "list",
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "hea") {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// What one pass decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Decoded {
    /// Samples over all leads and records.
    pub samples: usize,
    /// Samples marked invalid (NaN).
    pub invalid: usize,
    /// Sum of the valid samples, in millivolts.
    pub sum_mv: f64,
    /// Sum of their absolute values (the scale the sums are compared at).
    pub sum_abs_mv: f64,
}

/// Decodes every record (verifying checksums) and totals what came out.
pub fn decode_all(headers: &[PathBuf]) -> Result<Decoded, BenchError> {
    let mut total = Decoded::default();
    for header in headers {
        let record = beatlab_ecg::wfdb::read_record(header)?;
        for lead in &record.signals {
            total.samples += lead.len();
            for &v in lead {
                if v.is_nan() {
                    total.invalid += 1;
                } else {
                    total.sum_mv += f64::from(v);
                    total.sum_abs_mv += f64::from(v).abs();
                }
            }
        }
    }
    Ok(total)
}

/// Decodes every record (verifying checksums), what a timed pass does: the totals of
/// [`decode_all`] are taken once, untimed, as are the peer's.
fn decode_only(headers: &[PathBuf]) -> Result<(), BenchError> {
    for header in headers {
        std::hint::black_box(beatlab_ecg::wfdb::read_record(header)?);
    }
    Ok(())
}

/// The wfdb peer's hello: what its untimed pass decoded.
#[derive(Debug, Deserialize)]
struct WfdbHello {
    wfdb: String,
    records: usize,
    samples: usize,
    invalid_samples: usize,
    sum_mv: f64,
}

/// Checks that the peer decoded the same records to the same values: equal counts, and sums
/// equal up to our f32 rounding (each value within 2^-24 relative, so the sums within
/// `sum_abs * 1e-7`; the bound allows ten times that).
fn check_same_work(ours: &Decoded, records: usize, theirs: &WfdbHello) -> Result<(), BenchError> {
    let mismatch = |what: String| {
        Err(BenchError::Mismatch {
            benchmark: "wfdb",
            what,
        })
    };
    if theirs.records != records {
        return mismatch(format!("records: ours {records}, wfdb {}", theirs.records));
    }
    if theirs.samples != ours.samples {
        return mismatch(format!(
            "samples: ours {}, wfdb {}",
            ours.samples, theirs.samples
        ));
    }
    if theirs.invalid_samples != ours.invalid {
        return mismatch(format!(
            "invalid samples: ours {}, wfdb {}",
            ours.invalid, theirs.invalid_samples
        ));
    }
    let tolerance = ours.sum_abs_mv * 1e-6 + 1e-6;
    if (theirs.sum_mv - ours.sum_mv).abs() > tolerance {
        return mismatch(format!(
            "sum of the decoded millivolts: ours {}, wfdb {} (tolerance {tolerance})",
            ours.sum_mv, theirs.sum_mv
        ));
    }
    Ok(())
}

/// Starts `bench/wfdb_read.py` on the list of `headers` (passed in a temporary file) and
/// checks that it decoded what we did.
fn start_peer(
    peer: &Peer,
    headers: &[PathBuf],
    decoded: &Decoded,
) -> Result<(super::PeerSession, WfdbHello), BenchError> {
    let listing = std::env::temp_dir().join(format!(
        "beatlab-bench-wfdb-records-{}.txt",
        std::process::id()
    ));
    let list: String = headers
        .iter()
        .map(|h| format!("{}\n", h.display()))
        .collect();
    beatlab_fsio::write_atomically(&listing, list.as_bytes()).map_err(|source| BenchError::Io {
        action: "write",
        path: listing.clone(),
        source,
    })?;
    let args = ["--records".to_string(), listing.display().to_string()];
    let started = peer.start::<WfdbHello>("wfdb_read.py", &args);
    let _ = std::fs::remove_file(&listing);
    let (session, hello) = started?;
    check_same_work(decoded, headers.len(), &hello)?;
    Ok((session, hello))
}

/// Runs the benchmark: ours, then the peer on the same list of records.
pub fn run(
    options: &WfdbOptions,
    peer: Option<&Peer>,
    progress: &mut dyn FnMut(&str),
) -> Result<Comparison, BenchError> {
    let root = std::fs::canonicalize(&options.root).unwrap_or_else(|_| options.root.clone());
    let headers = find_headers(&root)?;
    if headers.is_empty() {
        return Err(BenchError::NoRecords {
            root: options.root.clone(),
        });
    }
    let records = headers.len();
    progress(&format!(
        "wfdb: decoding {records} records under {} ({} timed rounds)",
        root.display(),
        options.rounds
    ));
    let warm = std::time::Instant::now();
    let decoded = decode_all(&headers)?;
    // Enough passes per round for a second of work: the CPU clock ticks in 10 ms.
    let passes = (1.0 / warm.elapsed().as_secs_f64().max(1e-3))
        .ceil()
        .max(1.0) as usize;
    let mut session = match peer {
        Some(peer) => {
            progress("wfdb: starting the Python wfdb peer (bench/wfdb_read.py): one untimed pass");
            Some(start_peer(peer, &headers, &decoded)?)
        }
        None => None,
    };
    progress(&format!(
        "wfdb: {} timed rounds{}",
        options.rounds,
        if session.is_some() {
            ", ours and wfdb's alternating"
        } else {
            ""
        }
    ));
    let (ours, theirs) = alternate(
        options.rounds,
        session.as_mut().map(|(session, _)| session),
        || {
            let timer = Timer::start();
            for _ in 0..passes {
                decode_only(&headers)?;
            }
            Ok(((records * passes) as f64, timer.stop()))
        },
        |_: &PeerRound<serde_json::Value>| Ok(()),
    )?;
    let theirs_hello = finish_peer(session)?;
    let hours = decoded.samples as f64 / 12.0 / 500.0 / 3600.0;
    let notes = vec![
        format!(
            "{} samples ({} invalid), about {hours:.2} h of 12-lead ECG at 500 Hz{}",
            decoded.samples,
            decoded.invalid,
            if theirs_hello.is_some() {
                "; both sides decoded the same counts and sums"
            } else {
                ""
            }
        ),
        "ours verifies every signal's checksum and initial value; wfdb.rdrecord does not".into(),
    ];
    Ok(Comparison {
        benchmark: "wfdb".into(),
        workload: format!(
            "decode {records} WFDB records to millivolts ({}; {passes} passes per round)",
            root.display()
        ),
        unit: "records/s".into(),
        goal: Some(20.0),
        notes,
        details: serde_json::json!({
            "records": records,
            "samples": decoded.samples,
            "invalid_samples": decoded.invalid,
            "rounds_records_per_s": { "ours": &ours.wall, "wfdb": &theirs.wall },
        }),
        ..Comparison::from_rates(
            &ours,
            theirs_hello.map(|t| (format!("wfdb {}", t.wfdb), &theirs)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_root() -> PathBuf {
        default_data_root(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
    }

    /// The shared data set as its README describes it: 200 LUDB + 70 PTB-XL + 50 CinC headers.
    #[test]
    fn every_record_of_the_shared_data_is_found_and_decodes() {
        let headers = find_headers(&data_root()).unwrap();
        let count = |part: &str| {
            headers
                .iter()
                .filter(|h| h.to_string_lossy().contains(part))
                .count()
        };
        assert_eq!(count("/ludb/"), 200);
        assert_eq!(count("/ptbxl_mini/"), 70);
        assert_eq!(count("/cinc2021_samples/"), 50);
        assert_eq!(headers.len(), 320);
        // LUDB alone: 200 records x 12 leads x 5000 samples.
        let ludb: Vec<PathBuf> = headers
            .iter()
            .filter(|h| h.to_string_lossy().contains("/ludb/"))
            .cloned()
            .collect();
        let decoded = decode_all(&ludb).unwrap();
        assert_eq!(decoded.samples, 200 * 12 * 5000);
        assert!(decoded.sum_abs_mv > 0.0);
    }

    #[test]
    fn a_missing_root_names_the_folder() {
        let err = find_headers(Path::new("/nonexistent/ecg-root")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ecg-root"), "{err}");
    }

    #[test]
    fn the_peer_must_decode_the_same_values() {
        let ours = Decoded {
            samples: 100,
            invalid: 2,
            sum_mv: 10.0,
            sum_abs_mv: 50.0,
        };
        let theirs = |records, samples, invalid_samples, sum_mv| WfdbHello {
            wfdb: "4".into(),
            records,
            samples,
            invalid_samples,
            sum_mv,
        };
        let check = |t: WfdbHello, expected_error: Option<&str>| match (
            check_same_work(&ours, 3, &t),
            expected_error,
        ) {
            (Ok(()), None) => {}
            (Err(e), Some(part)) => assert!(e.to_string().contains(part), "{e}"),
            (got, want) => panic!("{t:?}: got {got:?}, expected error {want:?}"),
        };
        check(theirs(3, 100, 2, 10.0 + 1e-6), None);
        check(theirs(4, 100, 2, 10.0), Some("records: ours 3, wfdb 4"));
        check(theirs(3, 99, 2, 10.0), Some("samples: ours 100, wfdb 99"));
        check(theirs(3, 100, 0, 10.0), Some("invalid samples"));
        check(
            theirs(3, 100, 2, 10.1),
            Some("sum of the decoded millivolts"),
        );
    }
}
