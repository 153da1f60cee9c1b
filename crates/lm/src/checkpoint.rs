//! Saving and restoring parameters: a [`ParamStore`] to one safetensors file (LoRA adapters, or
//! a fully fine-tuned tiny model), and a Hugging Face-layout model folder (`config.json`,
//! `model.safetensors`, `tokenizer.json`) that [`crate::hub`] and Hugging Face tools load.
//!
//! Files are written with [`beatlab_fsio::write_atomically`] (temporary sibling, fsync, rename,
//! folder fsync), so a crash never leaves a half-written checkpoint under the final name.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use beatlab_nn::ParamStore;
use candle_core::{Device, Tensor};

use crate::backbone::BackboneConfig;
use crate::error::{LmError, Result};
use crate::hub::WEIGHTS_FILE;
use crate::tokenizer::LmTokenizer;

/// Write every variable of `store` to `path` (safetensors).
pub fn save_store(store: &ParamStore, path: &Path) -> Result<()> {
    save_tensors(&store.tensors(), path)
}

/// Overwrite the variables of `store` from `path`. The file must hold exactly the store's
/// variables with the same shapes (so adapters never load silently into the wrong model).
pub fn load_store(store: &ParamStore, path: &Path) -> Result<()> {
    let tensors = load_tensors(path)?;
    store.load(&tensors).map_err(|source| LmError::Params {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// Write named tensors to `path` (safetensors), atomically.
pub fn save_tensors(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.detach()))
        .collect();
    let bytes = safetensors::serialize(&map, None).map_err(|e| LmError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    beatlab_fsio::write_atomically(path, &bytes).map_err(|e| LmError::io(path, e))
}

/// Read every tensor of a safetensors file onto the CPU.
pub fn load_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    if !path.is_file() {
        return Err(LmError::MissingFile {
            what: "checkpoint".into(),
            looked_for: path.to_path_buf(),
        });
    }
    let map =
        candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| LmError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(map.into_iter().collect())
}

/// Write a Hugging Face-layout folder: `config.json`, `model.safetensors` with `tensors` (named
/// as in the checkpoint, e.g. a tiny model's `ParamStore::tensors()`), and `tokenizer.json`.
pub fn save_pretrained(
    dir: &Path,
    config: &BackboneConfig,
    tensors: &BTreeMap<String, Tensor>,
    tokenizer: Option<&LmTokenizer>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| LmError::io(dir, e))?;
    let config_path = dir.join("config.json");
    beatlab_fsio::write_atomically(&config_path, config.to_json_string()?.as_bytes())
        .map_err(|e| LmError::io(&config_path, e))?;
    save_tensors(tensors, &dir.join(WEIGHTS_FILE))?;
    if let Some(tok) = tokenizer {
        tok.save(&dir.join("tokenizer.json"))?;
    }
    Ok(())
}
