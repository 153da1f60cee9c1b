//! Data set tests: patient-level splits (PTB-XL folds and hashed patients), the window layout,
//! determinism, and the on-disk cache (bit-identical round trip; corrupted or partial entries
//! rebuilt, never loaded).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use beatlab_ecg::dataset::{CacheError, Dataset, Split, SplitConfig, build, load, load_or_build};
use beatlab_ecg::preprocess::{N_LEADS, PreprocessConfig};
use beatlab_ecg::synthetic::{SimConfig, generate};
use beatlab_ecg::{Record, ptbxl};

const INPUT: usize = 500;
const PREDICT: usize = 250;

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "beatlab-ecg-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn records(n: usize) -> Vec<Record> {
    let cfg = SimConfig {
        duration_s: 5.0,
        ..SimConfig::default()
    };
    generate(&cfg, n, 21)
}

fn small_dataset() -> Dataset {
    build(
        &records(30),
        &PreprocessConfig::default(),
        &SplitConfig {
            val_fraction: 0.2,
            test_fraction: 0.2,
            ..SplitConfig::default()
        },
        INPUT,
        PREDICT,
    )
    .unwrap()
}

fn data_root() -> PathBuf {
    std::env::var_os("BEATLAB_ECG_DATA").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ecg"),
        PathBuf::from,
    )
}

#[test]
fn strat_folds_decide_ptbxl_splits() {
    let split = SplitConfig::default();
    let check = |fold: u8, want: Split| {
        let mut r = records(1).remove(0);
        r.meta.fold = Some(fold);
        assert_eq!(split.assign(&r), want, "fold {fold}");
    };
    for fold in 1..=8 {
        check(fold, Split::Train);
    }
    check(9, Split::Val);
    check(10, Split::Test);
    // Folds can be switched off: the patient hash decides instead.
    let mut r = records(1).remove(0);
    r.meta.fold = Some(10);
    let hashed = SplitConfig {
        use_strat_fold: false,
        ..SplitConfig::default()
    };
    assert_eq!(
        hashed.assign(&r),
        hashed.assign_patient(r.meta.patient_id.as_ref().unwrap())
    );
}

#[test]
fn patient_hash_split_is_stable_patient_level_and_proportional() {
    let split = SplitConfig::default();
    let mut counts: BTreeMap<Split, usize> = BTreeMap::new();
    for p in 0..3000 {
        let id = format!("patient-{p}");
        let s = split.assign_patient(&id);
        assert_eq!(s, split.assign_patient(&id), "not stable");
        *counts.entry(s).or_default() += 1;
    }
    let frac = |s: Split| counts[&s] as f64 / 3000.0;
    assert!((frac(Split::Test) - 0.1).abs() < 0.025, "{counts:?}");
    assert!((frac(Split::Val) - 0.1).abs() < 0.025, "{counts:?}");
    // Another salt draws another split.
    let salted = SplitConfig {
        salt: "other".into(),
        ..SplitConfig::default()
    };
    let moved = (0..300)
        .filter(|p| {
            let id = format!("patient-{p}");
            split.assign_patient(&id) != salted.assign_patient(&id)
        })
        .count();
    assert!(moved > 20, "salt changed only {moved} of 300");

    // In a built data set, no patient spans two splits.
    let ds = small_dataset();
    let mut split_of: BTreeMap<&str, Split> = BTreeMap::new();
    for r in &ds.records {
        let prev = split_of.insert(&r.patient_id, r.split);
        assert!(
            prev.is_none_or(|p| p == r.split),
            "patient {} spans splits",
            r.patient_id
        );
    }
    assert!(
        ds.records.len() > split_of.len(),
        "the sample should repeat some patients"
    );
}

#[test]
fn build_lays_out_windows_per_split() {
    let recs = records(30);
    let ds = small_dataset();
    assert_eq!(ds.records.len(), 30);
    assert_eq!((ds.fs, ds.window_len()), (250.0, INPUT + PREDICT));
    let mut windows_seen = 0;
    for split in Split::ALL {
        let set = ds.split(split);
        assert_eq!(set.data.len(), set.len() * N_LEADS * ds.window_len());
        assert_eq!(set.lead_masks.len(), set.len());
        assert_eq!(set.quality.len(), set.len());
        for (i, &r) in set.record_index.iter().enumerate() {
            let summary = &ds.records[r as usize];
            assert_eq!(summary.split, split);
            assert_eq!(summary.id, recs[r as usize].id);
            assert_eq!(summary.meta, recs[r as usize].meta);
            assert!(set.lead_masks[i].iter().all(|&m| m));
            assert_eq!(
                set.window(i, ds.window_len()).len(),
                N_LEADS * ds.window_len()
            );
        }
        windows_seen += set.len();
    }
    // Best-window mode: one window per record.
    assert_eq!(windows_seen, 30);
    assert!(ds.records.iter().all(|r| r.n_windows == 1));
    assert!(!ds.train.is_empty() && !ds.val.is_empty() && !ds.test.is_empty());
    // Deterministic.
    assert_eq!(small_dataset(), ds);
}

#[test]
fn build_on_real_ptbxl_uses_folds() {
    let recs =
        ptbxl::load(&data_root().join("ptbxl_mini"), ptbxl::PtbxlRate::Hz500).expect("PTB-XL mini");
    let ds = build(
        &recs,
        &PreprocessConfig::default(),
        &SplitConfig::default(),
        1000,
        500,
    )
    .unwrap();
    assert_eq!(ds.records.len(), recs.len());
    for (summary, rec) in ds.records.iter().zip(&recs) {
        let fold = rec.meta.fold.expect("PTB-XL records carry strat_fold");
        let want = match fold {
            9 => Split::Val,
            10 => Split::Test,
            _ => Split::Train,
        };
        assert_eq!(summary.split, want, "{}", rec.id);
    }
    let total: usize = Split::ALL.iter().map(|&s| ds.split(s).len()).sum();
    assert_eq!(total, recs.len());
}

fn assert_bit_identical(a: &Dataset, b: &Dataset) {
    assert_eq!(a.records, b.records);
    assert_eq!(
        (a.fs, a.input_len, a.predict_len),
        (b.fs, b.input_len, b.predict_len)
    );
    for s in Split::ALL {
        let (x, y) = (a.split(s), b.split(s));
        assert_eq!(x.data.len(), y.data.len());
        assert!(
            x.data
                .iter()
                .zip(&y.data)
                .all(|(p, q)| p.to_bits() == q.to_bits())
        );
        assert_eq!(
            (&x.lead_masks, &x.record_index, &x.starts, &x.valid_len),
            (&y.lead_masks, &y.record_index, &y.starts, &y.valid_len)
        );
        assert!(
            x.quality
                .iter()
                .zip(&y.quality)
                .all(|(p, q)| p.to_bits() == q.to_bits())
        );
    }
}

/// Calls `load_or_build` with a counting build function; returns the data set and whether the
/// build ran.
fn load_counting(dir: &Path, key: &str) -> (Dataset, bool) {
    let built = Cell::new(false);
    let ds = load_or_build(dir, key, || {
        built.set(true);
        Ok::<_, std::io::Error>(small_dataset())
    })
    .unwrap();
    (ds, built.get())
}

#[test]
fn cache_round_trip_is_bit_identical() {
    let tmp = TempDir::new("cache-roundtrip");
    let (first, built) = load_counting(&tmp.0, "abc123");
    assert!(built, "empty cache must build");
    let (second, built) = load_counting(&tmp.0, "abc123");
    assert!(!built, "second call must load");
    assert_bit_identical(&first, &second);
    assert_bit_identical(&first, &small_dataset());
    // Only the entry itself remains (no temporary directories).
    let names: Vec<String> = fs::read_dir(&tmp.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["abc123".to_string()]);
    // A different key is a different entry.
    let (_, built) = load_counting(&tmp.0, "other-key");
    assert!(built);
}

#[test]
fn corrupted_or_partial_cache_entries_are_rebuilt() {
    // check(damage): after damaging a valid entry, loading rebuilds, and the rebuilt entry
    // then loads again.
    let check = |what: &str, damage: &dyn Fn(&Path)| {
        let tmp = TempDir::new("cache-corrupt");
        let (reference, _) = load_counting(&tmp.0, "k");
        damage(&tmp.0.join("k"));
        assert!(
            load(&tmp.0, "k").unwrap().is_none(),
            "{what}: damaged entry loaded"
        );
        let (rebuilt, built) = load_counting(&tmp.0, "k");
        assert!(built, "{what}: not rebuilt");
        assert_bit_identical(&reference, &rebuilt);
        let (_, built) = load_counting(&tmp.0, "k");
        assert!(!built, "{what}: rebuilt entry does not load");
    };
    check("flipped data byte", &|dir| {
        let path = dir.join("train.f32");
        let mut bytes = fs::read(&path).unwrap();
        bytes[100] ^= 0x40;
        fs::write(&path, bytes).unwrap();
    });
    check("truncated data file", &|dir| {
        let path = dir.join("test.f32");
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
    });
    check("missing data file", &|dir| {
        fs::remove_file(dir.join("val.f32")).unwrap()
    });
    check("missing manifest (partial entry)", &|dir| {
        fs::remove_file(dir.join("manifest.json")).unwrap()
    });
    check("truncated manifest", &|dir| {
        let path = dir.join("manifest.json");
        let text = fs::read(&path).unwrap();
        fs::write(&path, &text[..text.len() / 2]).unwrap();
    });
    check("manifest of another key", &|dir| {
        let path = dir.join("manifest.json");
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replacen("\"key\":\"k\"", "\"key\":\"x\"", 1)).unwrap();
    });
    check("index out of range", &|dir| {
        let path = dir.join("manifest.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        v["train"]["record_index"][0] = serde_json::json!(999_999);
        fs::write(&path, v.to_string()).unwrap();
    });
}

#[test]
fn leftover_temporary_directories_do_not_count_as_entries() {
    let tmp = TempDir::new("cache-leftover");
    // What a crash in the middle of writing leaves behind.
    let partial = tmp.0.join(".k.tmp-1-2-3");
    fs::create_dir_all(&partial).unwrap();
    fs::write(partial.join("train.f32"), [0u8; 16]).unwrap();
    let (_, built) = load_counting(&tmp.0, "k");
    assert!(built);
    let (_, built) = load_counting(&tmp.0, "k");
    assert!(!built);
}

#[test]
fn cache_errors() {
    let tmp = TempDir::new("cache-errors");
    for bad in ["", ".hidden", "a/b", "..", "white space"] {
        let r = load_or_build(&tmp.0, bad, || Ok::<_, std::io::Error>(small_dataset()));
        assert!(matches!(r, Err(CacheError::BadKey(_))), "key {bad:?}");
    }
    let r = load_or_build(&tmp.0, "fails", || {
        Err::<Dataset, _>(std::io::Error::other("no data"))
    });
    match r {
        Err(CacheError::Build(e)) => assert_eq!(e.to_string(), "no data"),
        other => panic!("expected a build error, got {other:?}"),
    }
    assert!(
        !tmp.0.join("fails").exists(),
        "a failed build must not leave an entry"
    );
}
