//! Checkpoints: safetensors files of model, optimiser and loop state, written atomically and
//! verified on load.
//!
//! A checkpoint is written to a temporary file, fsynced, renamed into place and its directory
//! fsynced; only then is it recorded (with its sha256) in the registry. A crash at any point
//! leaves either the previous checkpoint or the new one, never a torn file that loads. Loading
//! recomputes the sha256 and refuses a file that does not match the registry.

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

    /// The newest checkpoint of a stage (final or not), verified and loaded onto `device`.
    pub fn latest(
        &self,
        stage: &str,
        device: &Device,
    ) -> Result<Option<Checkpoint>, CheckpointError> {
        let newest = self
            .registry
            .checkpoints(&self.run_id)?
            .into_iter()
            .filter(|c| c.stage == stage)
            .max_by_key(|c| (c.is_final, c.step));
        newest.map(|row| load(&row, device)).transpose()
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
    let format = |message: String| CheckpointError::Format {
        path: path.clone(),
        message,
    };
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| format(e.to_string()))?;
    let meta = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .map(|s| serde_json::from_str(s))
        .transpose()
        .map_err(|e| format(format!("bad loop state: {e}")))?
        .unwrap_or(serde_json::Value::Null);
    let tensors =
        candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| format(e.to_string()))?;
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
