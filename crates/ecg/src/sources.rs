//! Loading every ECG record under a folder, whatever its source, and fingerprinting that set.
//!
//! The walk is recursive and sorted by file name, so the record order is deterministic. A folder
//! holding `ptbxl_database.csv` is read as PTB-XL at 500 Hz, one holding `ludb.csv` as LUDB; their
//! subtrees belong to them. Every other `.hea` is a plain WFDB record whose CinC-style comments
//! (`# Age:`, `# Sex:`, `# Dx:` SNOMED-CT codes) fill its labels ([`SourceKind::Cinc`] when `# Dx`
//! is present), and whose beat annotations (`NAME.atr` beside it, when there is one) give its
//! abnormal segments (`meta.abnormal_segments`, the truth of anyECG-chat's localization items).
//! Hidden entries (names starting with `.`) are ignored.
//!
//! Exclusion patterns are simple globs matched against `/`-separated paths relative to the root:
//! `?` is one character and `*` any run of characters except `/`, `**` any run including `/`.
//! A path is excluded when a pattern matches it, one of its ancestor folders, or (for a header)
//! the record path without `.hea`; e.g. `cinc2021_samples/HR*` drops `cinc2021_samples/HR06000`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::DataError;
use crate::ludb;
use crate::ptbxl::{self, PtbxlRate};
use crate::record::{Record, SourceKind};
use crate::wfdb;

/// Bumped whenever the set of files read (or what is derived from them) changes meaning, so
/// that fingerprints taken by an older reader never match.
const FINGERPRINT_VERSION: &str = "beatlab-ecg sources v2";

/// Loads every record under `root` except those matching `exclude`; fails on the first broken
/// record. PTB-XL rows without a 500 Hz file are skipped (see [`load_any_with_report`]).
pub fn load_any(root: &Path, exclude: &[String]) -> Result<Vec<Record>, DataError> {
    load_any_with_report(root, exclude).map(|(records, _)| records)
}

/// What [`load_any_with_report`] skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SourcesReport {
    /// Records listed by a dataset table whose file is absent (path relative to the root).
    pub skipped_missing: Vec<String>,
}

/// Like [`load_any`], also reporting dataset rows skipped because their file is absent.
pub fn load_any_with_report(
    root: &Path,
    exclude: &[String],
) -> Result<(Vec<Record>, SourcesReport), DataError> {
    let plan = Plan::build(root, exclude, PtbxlRates::Hz500)?;
    if let Some((_, error)) = plan.failures.into_iter().next() {
        return Err(error);
    }
    let records = plan
        .items
        .iter()
        .map(|item| item.load().map(|loaded| loaded.record))
        .collect::<Result<Vec<_>, _>>()?;
    let report = SourcesReport {
        skipped_missing: plan.skipped_missing,
    };
    Ok((records, report))
}

/// SHA-256 (hex) over the sorted relative paths, sizes and modification times of every file
/// [`load_any`] would read with the same arguments: a cache key that changes whenever the data
/// may have.
pub fn fingerprint(root: &Path, exclude: &[String]) -> Result<String, DataError> {
    let plan = Plan::build(root, exclude, PtbxlRates::Hz500)?;
    let mut files: Vec<PathBuf> = plan.dataset_files.clone();
    for item in &plan.items {
        files.extend(item.files());
    }
    for (path, _) in &plan.failures {
        files.push(path.clone());
    }
    let mut entries: Vec<(String, String)> = files
        .iter()
        .map(|file| {
            let stamp = match std::fs::metadata(file) {
                Ok(meta) => {
                    let modified = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos());
                    format!("{}\t{modified}", meta.len())
                }
                Err(_) => "missing".to_string(),
            };
            (relative(root, file), stamp)
        })
        .collect();
    entries.sort();
    entries.dedup();
    let mut hasher = Sha256::new();
    hasher.update(FINGERPRINT_VERSION.as_bytes());
    hasher.update(b"\n");
    for (path, stamp) in &entries {
        hasher.update(path.as_bytes());
        hasher.update(b"\t");
        hasher.update(stamp.as_bytes());
        hasher.update(b"\n");
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The extension of the beat annotation file a plain WFDB record may have beside its header.
pub const BEAT_ANNOTATOR: &str = "atr";

/// The record's beat annotation file (`NAME.atr` beside `NAME.hea`), when there is one inside
/// the record's folder (the rule for signal files).
fn beat_annotation_file(header: &Path) -> Option<PathBuf> {
    let dir = header.parent().unwrap_or(Path::new(""));
    let name = header.with_extension(BEAT_ANNOTATOR);
    let name = name.file_name()?.to_str()?;
    let file = crate::safe_read::resolve_in_folder(dir, name).ok()?;
    file.is_file().then(|| dir.join(name))
}

/// The annotations of the record's `.atr`, when it has one.
fn beat_annotations(
    header: &Path,
) -> Result<Option<Vec<crate::annotation::Annotation>>, DataError> {
    beat_annotation_file(header)
        .map(crate::annotation::read_annotations)
        .transpose()
}

/// The abnormal segments (anyECG-chat's localization truth, [`crate::flexible`]) of a record
/// whose annotations are `annotations`; `None` when they hold no beat, so a rhythm- or
/// note-only file claims nothing.
fn annotated_abnormal_segments(
    annotations: &[crate::annotation::Annotation],
    record: &Record,
) -> Option<Vec<[f64; 2]>> {
    let beats = crate::annotation::beats(annotations, record.fs);
    if beats.is_empty() {
        return None;
    }
    let segments = crate::flexible::annotated_segments(&beats, record.duration_s());
    Some(
        crate::flexible::merged(segments)
            .iter()
            .map(|s| [s.start_s, s.end_s])
            .collect(),
    )
}

/// Fills a record's labels from CinC-style header comments (`Age: 78`, `Sex: Male`,
/// `Dx: 164934002,426783006`); marks it [`SourceKind::Cinc`] when a `Dx` line is present.
pub fn apply_cinc_comments(comments: &[String], record: &mut Record) {
    for comment in comments {
        let Some((key, value)) = comment.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim().to_ascii_lowercase().as_str() {
            "age" => record.meta.age = value.parse::<f32>().ok().filter(|a| a.is_finite()),
            "sex" => {
                record.meta.sex = match value.to_ascii_lowercase().as_str() {
                    "male" | "m" => Some("M".to_string()),
                    "female" | "f" => Some("F".to_string()),
                    _ => None,
                }
            }
            "dx" => {
                record.source = SourceKind::Cinc;
                record.meta.snomed = value
                    .split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            _ => {}
        }
    }
}

/// Whether a simple glob (`*`, `**`, `?`) matches a whole `/`-separated path.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = path.chars().collect();
    // matches[j]: the pattern prefix processed so far matches text[..j].
    let mut matches = vec![false; text.len() + 1];
    matches[0] = true;
    let mut p = 0;
    while p < pattern.len() {
        let mut next = vec![false; text.len() + 1];
        match pattern[p] {
            '*' => {
                let crosses_slash = pattern.get(p + 1) == Some(&'*');
                let mut reachable = false;
                for j in 0..=text.len() {
                    if matches[j] {
                        reachable = true;
                    } else if j > 0 && !crosses_slash && text[j - 1] == '/' {
                        reachable = false;
                    }
                    next[j] = reachable;
                }
                if crosses_slash {
                    p += 1;
                }
            }
            '?' => {
                for j in 1..=text.len() {
                    next[j] = matches[j - 1] && text[j - 1] != '/';
                }
            }
            literal => {
                for j in 1..=text.len() {
                    next[j] = matches[j - 1] && text[j - 1] == literal;
                }
            }
        }
        matches = next;
        p += 1;
    }
    matches[text.len()]
}

/// `/`-separated path of `path` relative to `root` (the path itself when not under root).
pub(crate) fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

struct Exclusions<'a>(&'a [String]);

impl Exclusions<'_> {
    fn excludes(&self, rel: &str) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let mut candidates = vec![rel.to_string()];
        if let Some(record) = rel.strip_suffix(".hea") {
            candidates.push(record.to_string());
        }
        let mut ancestor = rel;
        while let Some((parent, _)) = ancestor.rsplit_once('/') {
            candidates.push(parent.to_string());
            ancestor = parent;
        }
        self.0
            .iter()
            .any(|pattern| candidates.iter().any(|c| glob_match(pattern, c)))
    }
}

/// Which PTB-XL rates a plan reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PtbxlRates {
    /// Only 500 Hz, as [`load_any`] does.
    Hz500,
    /// Both rates (500 Hz first per row), as the checker does.
    Both,
}

/// One record to load.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Ptbxl {
        dataset: Arc<ptbxl::Dataset>,
        row: usize,
        rate: PtbxlRate,
    },
    Ludb {
        dataset: Arc<ludb::Dataset>,
        record: String,
    },
    Wfdb {
        header: PathBuf,
        id: String,
    },
}

/// A loaded item with what the checker wants beyond the record.
pub(crate) struct Loaded {
    pub record: Record,
    /// Annotated wave peaks without onset or offset (LUDB only).
    pub incomplete_waves: usize,
}

impl Item {
    pub fn header_path(&self) -> PathBuf {
        match self {
            Item::Ptbxl { dataset, row, rate } => dataset.header_path(&dataset.rows[*row], *rate),
            Item::Ludb { dataset, record } => dataset.header_path(record),
            Item::Wfdb { header, .. } => header.clone(),
        }
    }

    /// Whether [`load_any`] returns this record (the checker also reads PTB-XL at 100 Hz).
    pub fn is_primary(&self) -> bool {
        !matches!(
            self,
            Item::Ptbxl {
                rate: PtbxlRate::Hz100,
                ..
            }
        )
    }

    pub fn load(&self) -> Result<Loaded, DataError> {
        match self {
            Item::Ptbxl { dataset, row, rate } => Ok(Loaded {
                record: dataset.load_row(&dataset.rows[*row], *rate)?,
                incomplete_waves: 0,
            }),
            Item::Ludb { dataset, record } => {
                let (record, incomplete_waves) = dataset.load_record(record)?;
                Ok(Loaded {
                    record,
                    incomplete_waves,
                })
            }
            Item::Wfdb { header, id } => {
                let (parsed, mut record) = wfdb::read_record_with_header(header)?;
                record.id = id.clone();
                apply_cinc_comments(&parsed.comments, &mut record);
                if let Some(annotations) = beat_annotations(header)? {
                    record.meta.abnormal_segments =
                        annotated_abnormal_segments(&annotations, &record);
                }
                Ok(Loaded {
                    record,
                    incomplete_waves: 0,
                })
            }
        }
    }

    /// Files loading this item reads. A header that does not parse contributes only itself (the
    /// load will fail on it anyway, and any edit to it changes its size or time).
    pub fn files(&self) -> Vec<PathBuf> {
        let header_path = self.header_path();
        let mut files = vec![header_path.clone()];
        if let Ok(header) = wfdb::read_header(&header_path) {
            files.extend(header.signal_files());
            if let Item::Wfdb { .. } = self {
                files.extend(beat_annotation_file(&header_path));
            }
            if let Item::Ludb { dataset, .. } = self {
                files.extend(
                    dataset
                        .annotation_files(&header)
                        .into_iter()
                        .map(|(_, f)| f),
                );
            }
        }
        files
    }
}

/// Everything under a root that a load would read, found without reading any signal.
pub(crate) struct Plan {
    pub items: Vec<Item>,
    /// Dataset tables read besides the records (CSV files, `RECORDS`).
    pub dataset_files: Vec<PathBuf>,
    /// Relative header paths a dataset table names but that do not exist.
    pub skipped_missing: Vec<String>,
    /// Datasets whose tables could not be read, with the folder.
    pub failures: Vec<(PathBuf, DataError)>,
}

impl Plan {
    pub fn build(root: &Path, exclude: &[String], rates: PtbxlRates) -> Result<Self, DataError> {
        let metadata = std::fs::metadata(root).map_err(|e| DataError::io(root, e))?;
        if !metadata.is_dir() {
            return Err(DataError::Dataset {
                path: root.to_path_buf(),
                message: "not a folder".to_string(),
            });
        }
        let mut plan = Plan {
            items: Vec::new(),
            dataset_files: Vec::new(),
            skipped_missing: Vec::new(),
            failures: Vec::new(),
        };
        let mut visited = Vec::new();
        plan.walk(root, root, &Exclusions(exclude), rates, &mut visited)?;
        Ok(plan)
    }

    fn walk(
        &mut self,
        root: &Path,
        dir: &Path,
        exclusions: &Exclusions,
        rates: PtbxlRates,
        visited: &mut Vec<PathBuf>,
    ) -> Result<(), DataError> {
        // Symlinked folders are followed; remembering canonical paths stops loops.
        let canonical = dir.canonicalize().map_err(|e| DataError::io(dir, e))?;
        if visited.contains(&canonical) {
            return Ok(());
        }
        visited.push(canonical);
        let is_table = |name: &str| {
            let file = dir.join(name);
            file.is_file() && !exclusions.excludes(&relative(root, &file))
        };
        if is_table(ptbxl::DATABASE_FILE) {
            self.add_ptbxl(root, dir, exclusions, rates);
            return Ok(());
        }
        if is_table(ludb::CSV_FILE) {
            self.add_ludb(root, dir, exclusions);
            return Ok(());
        }
        let listing = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
        let mut entries = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| DataError::io(dir, e))?;
            entries.push(entry.file_name());
        }
        entries.sort();
        for name in entries {
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = dir.join(&name);
            let rel = relative(root, &path);
            if exclusions.excludes(&rel) {
                continue;
            }
            if path.is_dir() {
                self.walk(root, &path, exclusions, rates, visited)?;
            } else if path.extension().is_some_and(|e| e == "hea") && path.is_file() {
                let id = rel.strip_suffix(".hea").unwrap_or(&rel).to_string();
                self.items.push(Item::Wfdb { header: path, id });
            }
        }
        Ok(())
    }

    fn add_ptbxl(&mut self, root: &Path, dir: &Path, exclusions: &Exclusions, rates: PtbxlRates) {
        self.dataset_files.push(dir.join(ptbxl::DATABASE_FILE));
        self.dataset_files.push(dir.join(ptbxl::STATEMENTS_FILE));
        let dataset = match ptbxl::Dataset::open(dir) {
            Ok(dataset) => Arc::new(dataset),
            Err(error) => {
                self.failures.push((dir.join(ptbxl::DATABASE_FILE), error));
                return;
            }
        };
        let rates: &[PtbxlRate] = match rates {
            PtbxlRates::Hz500 => &[PtbxlRate::Hz500],
            PtbxlRates::Both => &[PtbxlRate::Hz500, PtbxlRate::Hz100],
        };
        for (index, row) in dataset.rows.iter().enumerate() {
            for &rate in rates {
                let header = dataset.header_path(row, rate);
                let rel = relative(root, &header);
                if exclusions.excludes(&rel) {
                    continue;
                }
                if !header.is_file() {
                    self.skipped_missing.push(rel);
                    continue;
                }
                self.items.push(Item::Ptbxl {
                    dataset: Arc::clone(&dataset),
                    row: index,
                    rate,
                });
            }
        }
    }

    fn add_ludb(&mut self, root: &Path, dir: &Path, exclusions: &Exclusions) {
        self.dataset_files.push(dir.join(ludb::CSV_FILE));
        let records_file = dir.join("RECORDS");
        if records_file.is_file() {
            self.dataset_files.push(records_file);
        }
        let dataset = match ludb::Dataset::open(dir) {
            Ok(dataset) => Arc::new(dataset),
            Err(error) => {
                self.failures.push((dir.join(ludb::CSV_FILE), error));
                return;
            }
        };
        for record in &dataset.records {
            let header = dataset.header_path(record);
            let rel = relative(root, &header);
            if exclusions.excludes(&rel) {
                continue;
            }
            if !header.is_file() {
                self.skipped_missing.push(rel);
                continue;
            }
            self.items.push(Item::Ludb {
                dataset: Arc::clone(&dataset),
                record: record.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_paths() {
        let check = |pattern: &str, path: &str, expected: bool| {
            assert_eq!(glob_match(pattern, path), expected, "{pattern} vs {path}");
        };
        check("cinc2021_samples/HR*", "cinc2021_samples/HR06000.hea", true);
        check("cinc2021_samples/HR*", "cinc2021_samples/E07500.hea", false);
        check(
            "cinc2021_samples/HR*",
            "x/cinc2021_samples/HR06000.hea",
            false,
        );
        check("*.hea", "a/b.hea", false);
        check("**.hea", "a/b.hea", true);
        check("**/b.hea", "a/c/b.hea", true);
        check("a/?.hea", "a/b.hea", true);
        check("a/?.hea", "a/bb.hea", false);
        check("a?b", "a/b", false);
        check("", "", true);
        check("*", "", true);
        check("ludb", "ludb", true);
    }

    #[test]
    fn exclusion_covers_ancestors_and_record_paths() {
        let patterns = vec![
            "ptbxl_mini/records500/06000".to_string(),
            "c/E1".to_string(),
        ];
        let exclusions = Exclusions(&patterns);
        assert!(exclusions.excludes("ptbxl_mini/records500/06000/06001_hr.hea"));
        assert!(!exclusions.excludes("ptbxl_mini/records500/07000/07189_hr.hea"));
        assert!(exclusions.excludes("c/E1.hea"));
        assert!(!exclusions.excludes("c/E1.mat"));
    }

    #[test]
    fn cinc_comments_fill_labels() {
        let mut record = Record {
            id: "x".to_string(),
            source: SourceKind::Wfdb,
            fs: 500.0,
            leads: Vec::new(),
            signals: Vec::new(),
            meta: Default::default(),
            waves: Vec::new(),
        };
        let comments: Vec<String> = [
            "Age: 84",
            "Sex: Female",
            "Dx: 284470004, 427084000",
            "Rx: Unknown",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        apply_cinc_comments(&comments, &mut record);
        assert_eq!(record.source, SourceKind::Cinc);
        assert_eq!(record.meta.age, Some(84.0));
        assert_eq!(record.meta.sex.as_deref(), Some("F"));
        assert_eq!(record.meta.snomed, vec!["284470004", "427084000"]);
        apply_cinc_comments(
            &["Age: NaN".to_string(), "Sex: Unknown".to_string()],
            &mut record,
        );
        assert_eq!((record.meta.age, record.meta.sex), (None, None));
    }
}
