//! Checkpoints: safetensors files of model, optimiser and loop state, written atomically and
//! verified on load.
//!
//! A checkpoint is written to a temporary file, fsynced, renamed into place and its directory
//! fsynced; only then is it recorded (with its sha256) in the registry. A crash at any point
//! leaves either the previous checkpoint or the new one, never a torn file that loads. Loading
//! recomputes the sha256 and refuses a file that does not match the registry.
//!
//! A checkpoint that is corrupt, unreadable or gone when a run continues is set aside (its
//! registry row removed, the file renamed `*.corrupt`) and the next older one is used instead;
//! the runner says so in the run's log and records it as a `checkpoint/fallback` metric.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use crate::registry::{CheckpointRow, Registry, RegistryError};

/// Key of the safetensors metadata entry holding the loop state as JSON.
const META_KEY: &str = "beatlab";

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Writing or reading the file failed.
    #[error("checkpoint {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file's sha256 differs from the one recorded when it was written.
    #[error("checkpoint {} is corrupt: sha256 {found}, registry recorded {expected}", path.display())]
    Corrupt {
        path: PathBuf,
        expected: String,
        found: String,
    },
    /// The safetensors content could not be encoded or decoded.
    #[error("checkpoint {}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    /// The registry could not record or list checkpoints.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A loaded checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub stage: String,
    pub step: i64,
    pub epoch: i64,
    pub is_final: bool,
    pub tensors: HashMap<String, Tensor>,
    /// Loop state saved with the tensors (epoch counters, RNG positions, best metrics...).
    pub meta: serde_json::Value,
    pub path: PathBuf,
}

impl Checkpoint {
    /// The tensors whose names start with `prefix.`, with the prefix removed.
    pub fn with_prefix(&self, prefix: &str) -> BTreeMap<String, Tensor> {
        let p = format!("{prefix}.");
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&p).map(|rest| (rest.to_string(), v.clone())))
            .collect()
    }
}

/// A checkpoint that could not be used when a run continued, and was set aside.
#[derive(Debug, Clone)]
pub struct SetAside {
    pub stage: String,
    pub step: i64,
    pub is_final: bool,
    /// Where the file was recorded.
    pub path: PathBuf,
    /// Why it could not be used.
    pub reason: String,
    /// Where the file was moved for inspection (`None` when it was gone).
    pub moved_to: Option<PathBuf>,
}

impl std::fmt::Display for SetAside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} checkpoint of step {} is unusable ({}); ",
            if self.is_final { "final" } else { "the" },
            self.step,
            self.reason
        )?;
        match &self.moved_to {
            Some(p) => write!(f, "set aside as {}", p.display()),
            None => write!(f, "its registry entry was removed"),
        }
    }
}

/// Writes and finds the checkpoints of one run.
pub struct CheckpointStore {
    registry: Registry,
    run_id: String,
    dir: PathBuf,
    /// Non-final checkpoints kept per stage; older ones are deleted.
    keep: usize,
}

impl CheckpointStore {
    pub fn new(registry: Registry, run_id: &str, run_dir: &Path) -> Self {
        Self {
            registry,
            run_id: run_id.to_string(),
            dir: run_dir.join("checkpoints"),
            keep: 2,
        }
    }

    /// Writes a checkpoint and records it. `is_final` marks the stage as complete.
    pub fn save(
        &self,
        stage: &str,
        step: i64,
        epoch: i64,
        is_final: bool,
        tensors: &BTreeMap<String, Tensor>,
        meta: &serde_json::Value,
    ) -> Result<PathBuf, CheckpointError> {
        let name = if is_final {
            format!("{stage}-final.safetensors")
        } else {
            format!("{stage}-{step:08}.safetensors")
        };
        let path = self.dir.join(name);
        let io = |source| CheckpointError::Io {
            path: path.clone(),
            source,
        };
        let mut info = HashMap::new();
        info.insert(META_KEY.to_string(), meta.to_string());
        let bytes =
            safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(info))
                .map_err(|e| CheckpointError::Format {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        beatlab_fsio::write_atomically(&path, &bytes).map_err(io)?;
        self.registry.record_checkpoint(&CheckpointRow {
            run_id: self.run_id.clone(),
            stage: stage.to_string(),
            step,
            epoch,
            is_final,
            path: path.to_string_lossy().into_owned(),
            sha256: hex::encode(Sha256::digest(&bytes)),
            bytes: bytes.len() as i64,
        })?;
        self.prune(stage)?;
        Ok(path)
    }

    /// Deletes all but the newest `keep` non-final checkpoints of a stage.
    fn prune(&self, stage: &str) -> Result<(), CheckpointError> {
        let mut rows: Vec<CheckpointRow> = self
            .registry
            .checkpoints(&self.run_id)?
            .into_iter()
            .filter(|c| c.stage == stage && !c.is_final)
            .collect();
        rows.sort_by_key(|c| c.step);
        let excess = rows.len().saturating_sub(self.keep);
        for old in &rows[..excess] {
            self.registry
                .delete_checkpoint(&old.run_id, &old.stage, old.step)?;
            let _ = std::fs::remove_file(&old.path);
        }
        Ok(())
    }

    /// The newest usable checkpoint of a stage (final or not), verified and loaded onto
    /// `device`. Newer ones that are corrupt, unreadable or gone are set aside and returned, so
    /// that the caller can say that it fell back.
    pub fn latest(
        &self,
        stage: &str,
        device: &Device,
    ) -> Result<(Option<Checkpoint>, Vec<SetAside>), CheckpointError> {
        let mut rows: Vec<CheckpointRow> = self
            .registry
            .checkpoints(&self.run_id)?
            .into_iter()
            .filter(|c| c.stage == stage)
            .collect();
        rows.sort_by_key(|c| std::cmp::Reverse((c.is_final, c.step)));
        let mut set_aside = Vec::new();
        for row in rows {
            match load(&row, device) {
                Ok(c) => return Ok((Some(c), set_aside)),
                Err(CheckpointError::Registry(e)) => return Err(e.into()),
                Err(e) => set_aside.push(self.set_aside(&row, &e)?),
            }
        }
        Ok((None, set_aside))
    }

    /// Whether a stage completed: its final checkpoint is recorded and its sha256 verified. A
    /// final checkpoint that is corrupt or gone is set aside (returned), and the stage counts as
    /// incomplete, to be continued from its newest usable checkpoint.
    pub fn verified_complete(
        &self,
        stage: &str,
    ) -> Result<(bool, Option<SetAside>), CheckpointError> {
        let row = self
            .registry
            .checkpoints(&self.run_id)?
            .into_iter()
            .find(|c| c.stage == stage && c.is_final);
        let Some(row) = row else {
            return Ok((false, None));
        };
        match read_verified(&row) {
            Ok(_) => Ok((true, None)),
            Err(e) => Ok((false, Some(self.set_aside(&row, &e)?))),
        }
    }

    /// Removes an unusable checkpoint's registry row and moves its file out of the way.
    fn set_aside(
        &self,
        row: &CheckpointRow,
        why: &CheckpointError,
    ) -> Result<SetAside, CheckpointError> {
        self.registry
            .delete_checkpoint(&row.run_id, &row.stage, row.step)?;
        let path = PathBuf::from(&row.path);
        let corrupt = PathBuf::from(format!("{}.corrupt", row.path));
        let moved_to = std::fs::rename(&path, &corrupt).ok().map(|()| corrupt);
        Ok(SetAside {
            stage: row.stage.clone(),
            step: row.step,
            is_final: row.is_final,
            path,
            reason: why.to_string(),
            moved_to,
        })
    }

    /// The final checkpoint of a stage, if the stage completed.
    pub fn final_of(
        &self,
        stage: &str,
        device: &Device,
    ) -> Result<Option<Checkpoint>, CheckpointError> {
        let row = self
            .registry
            .checkpoints(&self.run_id)?
            .into_iter()
            .find(|c| c.stage == stage && c.is_final);
        row.map(|row| load(&row, device)).transpose()
    }

    /// Whether a stage completed (without loading its checkpoint).
    pub fn is_complete(&self, stage: &str) -> Result<bool, CheckpointError> {
        Ok(self
            .registry
            .checkpoints(&self.run_id)?
            .iter()
            .any(|c| c.stage == stage && c.is_final))
    }
}

/// Reads a recorded checkpoint, verifying its sha256.
pub fn load(row: &CheckpointRow, device: &Device) -> Result<Checkpoint, CheckpointError> {
    let bytes = read_verified(row)?;
    let path = PathBuf::from(&row.path);
    let (tensors, meta) = decode(&bytes, &path, device)?;
    Ok(Checkpoint {
        stage: row.stage.clone(),
        step: row.step,
        epoch: row.epoch,
        is_final: row.is_final,
        tensors,
        meta,
        path,
    })
}

/// The bytes of a recorded checkpoint, if their sha256 is the one the registry recorded.
fn read_verified(row: &CheckpointRow) -> Result<Vec<u8>, CheckpointError> {
    let path = PathBuf::from(&row.path);
    let bytes = std::fs::read(&path).map_err(|source| CheckpointError::Io {
        path: path.clone(),
        source,
    })?;
    let found = hex::encode(Sha256::digest(&bytes));
    if found != row.sha256 {
        return Err(CheckpointError::Corrupt {
            path,
            expected: row.sha256.clone(),
            found,
        });
    }
    Ok(bytes)
}

/// The tensors and loop state of a checkpoint file's bytes (`path` names it in errors).
pub fn decode(
    bytes: &[u8],
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, serde_json::Value), CheckpointError> {
    let format = |message: String| CheckpointError::Format {
        path: path.to_path_buf(),
        message,
    };
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| format(e.to_string()))?;
    let meta = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .map(|s| serde_json::from_str(s))
        .transpose()
        .map_err(|e| format(format!("bad loop state: {e}")))?
        .unwrap_or(serde_json::Value::Null);
    let tensors =
        candle_core::safetensors::load_buffer(bytes, device).map_err(|e| format(e.to_string()))?;
    Ok((tensors, meta))
}
