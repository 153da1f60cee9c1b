//! Model-ready data sets: records split into train / validation / test at patient level,
//! preprocessed into windows ([`crate::preprocess`]), flattened into one `f32` block per split,
//! and cached on disk.
//!
//! # Splits
//! Records with a PTB-XL `strat_fold` use it (folds 1-8 train, 9 validation, 10 test by
//! default). Every other record goes by a stable hash (SHA-256) of its patient id (the record id
//! when the patient is unknown) and a salt, so all records of one patient land in one split and
//! the assignment never changes between runs or machines.
//!
//! # Cache layout
//! `cache_dir/<key>/` holds `manifest.json` (format version, key, shapes, per-window indices,
//! record summaries, and the length and SHA-256 of every data file) and one little-endian `f32`
//! file per split (`train.f32`, `val.f32`, `test.f32`). An entry is written into a temporary
//! sibling directory, every file fsynced, then renamed into place, so a crash leaves either the
//! old entry, no entry, or the complete new one. Loading verifies lengths and hashes; anything
//! that does not verify is removed and rebuilt.

use std::convert::Infallible;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::preprocess::{self, N_LEADS, PreprocessConfig, PreprocessError};
use crate::record::{Record, RecordMeta, SourceKind};

/// Version of the on-disk cache format; bump when the layout changes.
pub const CACHE_FORMAT_VERSION: u32 = 1;

/// A data split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// How records are assigned to splits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    /// Use PTB-XL `strat_fold` where a record has one.
    pub use_strat_fold: bool,
    /// Folds that go to validation (PTB-XL recommendation: 9).
    pub val_folds: Vec<u8>,
    /// Folds that go to test (PTB-XL recommendation: 10); all other folds train.
    pub test_folds: Vec<u8>,
    /// Fraction of patients without a fold that go to validation.
    pub val_fraction: f64,
    /// Fraction of patients without a fold that go to test.
    pub test_fraction: f64,
    /// Mixed into the patient hash; change it to draw a different random split.
    pub salt: String,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            use_strat_fold: true,
            val_folds: vec![9],
            test_folds: vec![10],
            val_fraction: 0.1,
            test_fraction: 0.1,
            salt: "beatlab".into(),
        }
    }
}

impl SplitConfig {
    /// The patient key a record is split by.
    pub fn patient_key(record: &Record) -> String {
        record
            .meta
            .patient_id
            .clone()
            .unwrap_or_else(|| record.id.clone())
    }

    /// The split of a record.
    pub fn assign(&self, record: &Record) -> Split {
        if self.use_strat_fold
            && let Some(fold) = record.meta.fold
        {
            return if self.test_folds.contains(&fold) {
                Split::Test
            } else if self.val_folds.contains(&fold) {
                Split::Val
            } else {
                Split::Train
            };
        }
        self.assign_patient(&Self::patient_key(record))
    }

    /// The split of a patient without a fold: a uniform number in [0, 1) from the hash of
    /// `salt` and the patient id, compared with the fractions.
    pub fn assign_patient(&self, patient: &str) -> Split {
        let mut h = Sha256::new();
        h.update(self.salt.as_bytes());
        h.update([0u8]);
        h.update(patient.as_bytes());
        let digest = h.finalize();
        let bits = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        let u = (bits >> 11) as f64 / (1u64 << 53) as f64;
        if u < self.test_fraction {
            Split::Test
        } else if u < self.test_fraction + self.val_fraction {
            Split::Val
        } else {
            Split::Train
        }
    }
}

/// The windows of one split.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowSet {
    /// `len() x 12 x window_len` values, window-major then lead-major.
    pub data: Vec<f32>,
    /// Leads present in each window's source record.
    pub lead_masks: Vec<[bool; N_LEADS]>,
    /// Index into [`Dataset::records`] of each window's source record.
    pub record_index: Vec<u32>,
    /// Start sample of each window in the resampled record.
    pub starts: Vec<u32>,
    /// Real (unpadded) samples per lead of each window.
    pub valid_len: Vec<u32>,
    /// Quality index of each window.
    pub quality: Vec<f32>,
}

impl WindowSet {
    pub fn len(&self) -> usize {
        self.record_index.len()
    }
    pub fn is_empty(&self) -> bool {
        self.record_index.is_empty()
    }
    /// The `12 x window_len` values of window `i`.
    pub fn window(&self, i: usize, window_len: usize) -> &[f32] {
        let size = N_LEADS * window_len;
        &self.data[i * size..(i + 1) * size]
    }
}

/// What later stages need to know about a source record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordSummary {
    pub id: String,
    pub source: SourceKind,
    pub patient_id: String,
    pub split: Split,
    /// Original sampling rate, Hz.
    pub fs: f64,
    pub duration_s: f64,
    pub leads: Vec<String>,
    /// Number of windows taken from the record.
    pub n_windows: u32,
    pub meta: RecordMeta,
}

/// A preprocessed, split data set.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Sampling rate of the windows, Hz.
    pub fs: f64,
    pub input_len: usize,
    pub predict_len: usize,
    pub train: WindowSet,
    pub val: WindowSet,
    pub test: WindowSet,
    /// Every source record, in input order.
    pub records: Vec<RecordSummary>,
}

impl Dataset {
    pub fn window_len(&self) -> usize {
        self.input_len + self.predict_len
    }
    pub fn split(&self, split: Split) -> &WindowSet {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }
    fn split_mut(&mut self, split: Split) -> &mut WindowSet {
        match split {
            Split::Train => &mut self.train,
            Split::Val => &mut self.val,
            Split::Test => &mut self.test,
        }
    }
}

/// Errors of building a data set.
#[derive(Debug, Error)]
pub enum DatasetError {
    /// A record could not be preprocessed.
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    /// More records or samples than the index types hold.
    #[error("data set too large: {what} = {value} exceeds u32")]
    TooLarge { what: &'static str, value: usize },
}

/// Preprocesses `records` into windows of `input_len + predict_len` samples at
/// `prep.target_fs` and splits them. Records are processed in parallel; the result depends only
/// on the inputs.
pub fn build(
    records: &[Record],
    prep: &PreprocessConfig,
    split: &SplitConfig,
    input_len: usize,
    predict_len: usize,
) -> Result<Dataset, DatasetError> {
    if records.len() > u32::MAX as usize {
        return Err(DatasetError::TooLarge {
            what: "records",
            value: records.len(),
        });
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(records.len().max(1));
    let chunk = records.len().div_ceil(threads).max(1);
    let per_record: Vec<Result<Vec<preprocess::Window>, PreprocessError>> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = records
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|r| preprocess::preprocess_record(r, prep, input_len, predict_len))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("preprocessing thread panicked"))
                .collect()
        });

    let mut ds = Dataset {
        fs: prep.target_fs,
        input_len,
        predict_len,
        train: WindowSet::default(),
        val: WindowSet::default(),
        test: WindowSet::default(),
        records: Vec::with_capacity(records.len()),
    };
    for (index, (record, windows)) in records.iter().zip(per_record).enumerate() {
        let windows = windows?;
        let split_of = split.assign(record);
        let set = ds.split_mut(split_of);
        for w in &windows {
            set.data.extend_from_slice(&w.data);
            set.lead_masks.push(w.lead_mask);
            set.record_index.push(index as u32);
            set.starts.push(to_u32("window start", w.start)?);
            set.valid_len.push(to_u32("window length", w.valid_len)?);
            set.quality.push(w.quality);
        }
        ds.records.push(RecordSummary {
            id: record.id.clone(),
            source: record.source,
            patient_id: SplitConfig::patient_key(record),
            split: split_of,
            fs: record.fs,
            duration_s: record.duration_s(),
            leads: record.leads.clone(),
            n_windows: windows.len() as u32,
            meta: record.meta.clone(),
        });
    }
    Ok(ds)
}

fn to_u32(what: &'static str, value: usize) -> Result<u32, DatasetError> {
    u32::try_from(value).map_err(|_| DatasetError::TooLarge { what, value })
}

// ---------------------------------------------------------------------------------------------
// Cache
// ---------------------------------------------------------------------------------------------

/// Errors of the on-disk cache (a corrupt entry is not an error: it is rebuilt).
#[derive(Debug, Error)]
pub enum CacheError<E> {
    /// The build function failed.
    #[error("building the data set failed: {0}")]
    Build(#[source] E),
    /// Reading or writing the cache failed.
    #[error("cache I/O on `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The key is not usable as a directory name.
    #[error("cache key `{0}` must be non-empty, not start with '.', and use only [A-Za-z0-9._-]")]
    BadKey(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct SplitManifest {
    file: String,
    bytes: u64,
    sha256: String,
    /// Lead masks as 12-bit integers (bit k = standard lead k).
    lead_masks: Vec<u16>,
    record_index: Vec<u32>,
    starts: Vec<u32>,
    valid_len: Vec<u32>,
    quality: Vec<f32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format_version: u32,
    key: String,
    fs: f64,
    input_len: usize,
    predict_len: usize,
    n_leads: usize,
    train: SplitManifest,
    val: SplitManifest,
    test: SplitManifest,
    records: Vec<RecordSummary>,
}

const MANIFEST: &str = "manifest.json";

fn io_err<E>(path: &Path) -> impl FnOnce(io::Error) -> CacheError<E> + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn mask_bits(mask: &[bool; N_LEADS]) -> u16 {
    mask.iter()
        .enumerate()
        .fold(0u16, |acc, (k, &b)| acc | ((b as u16) << k))
}

fn mask_from_bits(bits: u16) -> [bool; N_LEADS] {
    std::array::from_fn(|k| bits & (1 << k) != 0)
}

fn f32_bytes(data: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 4);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes `ds` as cache entry `key` under `cache_dir` (atomically replacing any old entry).
pub fn save(cache_dir: &Path, key: &str, ds: &Dataset) -> Result<PathBuf, CacheError<Infallible>> {
    write_and_publish(cache_dir, key, ds, true)
}

/// Writes the entry into a temporary sibling, then renames it into place. With `replace`, an
/// existing entry is moved aside first; without, an entry that appeared meanwhile (another
/// process built the same key: the same content) wins and ours is discarded.
fn write_and_publish(
    cache_dir: &Path,
    key: &str,
    ds: &Dataset,
    replace: bool,
) -> Result<PathBuf, CacheError<Infallible>> {
    if !valid_key(key) {
        return Err(CacheError::BadKey(key.to_string()));
    }
    fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    let tmp = cache_dir.join(format!(".{key}.tmp-{}", unique_suffix()));
    let target = cache_dir.join(key);
    let result = write_entry(&tmp, key, ds).and_then(|()| {
        if !replace && target.is_dir() {
            return Ok(target.clone());
        }
        if target.exists() {
            // Move the old entry aside first: rename cannot replace a non-empty directory.
            let old = cache_dir.join(format!(".{key}.old-{}", unique_suffix()));
            fs::rename(&target, &old).map_err(io_err(&target))?;
            fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        match fs::rename(&tmp, &target) {
            Ok(()) => {}
            // Renaming onto a non-empty directory fails: someone published first.
            Err(_) if !replace && target.is_dir() => return Ok(target.clone()),
            Err(e) => return Err(io_err(&target)(e)),
        }
        beatlab_fsio::sync_dir(cache_dir).map_err(io_err(cache_dir))?;
        Ok(target.clone())
    });
    // Our temporary copy is gone after a successful rename; otherwise it is surplus.
    let _ = fs::remove_dir_all(&tmp);
    result
}

fn write_entry(dir: &Path, key: &str, ds: &Dataset) -> Result<(), CacheError<Infallible>> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut splits = Vec::new();
    for split in Split::ALL {
        let set = ds.split(split);
        let file = format!("{}.f32", split.name());
        let bytes = f32_bytes(&set.data);
        let path = dir.join(&file);
        beatlab_fsio::write_atomically(&path, &bytes).map_err(io_err(&path))?;
        splits.push(SplitManifest {
            file,
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
            lead_masks: set.lead_masks.iter().map(mask_bits).collect(),
            record_index: set.record_index.clone(),
            starts: set.starts.clone(),
            valid_len: set.valid_len.clone(),
            quality: set.quality.clone(),
        });
    }
    let [train, val, test]: [SplitManifest; 3] = splits.try_into().expect("three splits");
    let manifest = Manifest {
        format_version: CACHE_FORMAT_VERSION,
        key: key.to_string(),
        fs: ds.fs,
        input_len: ds.input_len,
        predict_len: ds.predict_len,
        n_leads: N_LEADS,
        train,
        val,
        test,
        records: ds.records.clone(),
    };
    let json = serde_json::to_vec(&manifest).map_err(|e| CacheError::Io {
        path: dir.join(MANIFEST),
        source: io::Error::other(e),
    })?;
    let path = dir.join(MANIFEST);
    beatlab_fsio::write_atomically(&path, &json).map_err(io_err(&path))?;
    beatlab_fsio::sync_dir(dir).map_err(io_err(dir))
}

/// Why a cache entry was not loaded.
#[derive(Debug)]
enum LoadFailure {
    /// No entry.
    Absent,
    /// An entry that does not verify (truncated, altered, other format or key).
    Corrupt(String),
    /// The file system refused.
    Io(PathBuf, io::Error),
}

/// Reads and verifies cache entry `key`. `Ok(None)` when there is no entry; an entry that
/// fails verification is reported as `Ok(None)` too after being removed.
pub fn load(cache_dir: &Path, key: &str) -> Result<Option<Dataset>, CacheError<Infallible>> {
    if !valid_key(key) {
        return Err(CacheError::BadKey(key.to_string()));
    }
    let dir = cache_dir.join(key);
    match read_entry(&dir, key) {
        Ok(ds) => Ok(Some(ds)),
        Err(LoadFailure::Absent) => Ok(None),
        Err(LoadFailure::Corrupt(_why)) => {
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
            Ok(None)
        }
        Err(LoadFailure::Io(path, source)) => Err(CacheError::Io { path, source }),
    }
}

fn read_entry(dir: &Path, key: &str) -> Result<Dataset, LoadFailure> {
    let manifest_path = dir.join(MANIFEST);
    if !dir.exists() {
        return Err(LoadFailure::Absent);
    }
    let text = match fs::read(&manifest_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(LoadFailure::Corrupt("manifest missing".into()));
        }
        Err(e) => return Err(LoadFailure::Io(manifest_path, e)),
    };
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| LoadFailure::Corrupt(format!("manifest unreadable: {e}")))?;
    if manifest.format_version != CACHE_FORMAT_VERSION || manifest.key != key {
        return Err(LoadFailure::Corrupt("format version or key differ".into()));
    }
    if manifest.n_leads != N_LEADS {
        return Err(LoadFailure::Corrupt("lead count differs".into()));
    }
    let window_values = N_LEADS * (manifest.input_len + manifest.predict_len);
    let n_records = manifest.records.len();
    let mut sets = Vec::new();
    for sm in [&manifest.train, &manifest.val, &manifest.test] {
        let path = dir.join(&sm.file);
        if sm.file.contains(['/', '\\']) {
            return Err(LoadFailure::Corrupt("bad data file name".into()));
        }
        let mut bytes = Vec::new();
        match fs::File::open(&path) {
            Ok(mut f) => f
                .read_to_end(&mut bytes)
                .map_err(|e| LoadFailure::Io(path.clone(), e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LoadFailure::Corrupt(format!("{} missing", sm.file)));
            }
            Err(e) => return Err(LoadFailure::Io(path, e)),
        };
        let n = sm.record_index.len();
        let consistent = bytes.len() as u64 == sm.bytes
            && bytes.len() == n * window_values * 4
            && [
                sm.lead_masks.len(),
                sm.starts.len(),
                sm.valid_len.len(),
                sm.quality.len(),
            ]
            .iter()
            .all(|&l| l == n)
            && sm.record_index.iter().all(|&i| (i as usize) < n_records);
        if !consistent {
            return Err(LoadFailure::Corrupt(format!(
                "{} has the wrong size",
                sm.file
            )));
        }
        if hex::encode(Sha256::digest(&bytes)) != sm.sha256 {
            return Err(LoadFailure::Corrupt(format!(
                "{} checksum differs",
                sm.file
            )));
        }
        let data = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        sets.push(WindowSet {
            data,
            lead_masks: sm.lead_masks.iter().map(|&b| mask_from_bits(b)).collect(),
            record_index: sm.record_index.clone(),
            starts: sm.starts.clone(),
            valid_len: sm.valid_len.clone(),
            quality: sm.quality.clone(),
        });
    }
    let [train, val, test]: [WindowSet; 3] = sets.try_into().expect("three splits");
    Ok(Dataset {
        fs: manifest.fs,
        input_len: manifest.input_len,
        predict_len: manifest.predict_len,
        train,
        val,
        test,
        records: manifest.records,
    })
}

/// Loads cache entry `key` from `cache_dir`, or calls `build` and stores its result there.
/// A missing, partial or corrupted entry is rebuilt, never loaded. Processes that build the
/// same key at once all succeed: the first to finish publishes, the others keep its entry.
pub fn load_or_build<E>(
    cache_dir: &Path,
    key: &str,
    build: impl FnOnce() -> Result<Dataset, E>,
) -> Result<Dataset, CacheError<E>> {
    let relabel = |e: CacheError<Infallible>| match e {
        CacheError::Io { path, source } => CacheError::Io { path, source },
        CacheError::BadKey(k) => CacheError::BadKey(k),
        CacheError::Build(never) => match never {},
    };
    if let Some(ds) = load(cache_dir, key).map_err(relabel)? {
        return Ok(ds);
    }
    let ds = build().map_err(CacheError::Build)?;
    write_and_publish(cache_dir, key, &ds, false).map_err(relabel)?;
    Ok(ds)
}
