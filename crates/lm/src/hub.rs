//! Loading real checkpoints: a local folder (`config.json`, `model.safetensors` or sharded
//! `model-0000N-of-0000M.safetensors` with `model.safetensors.index.json`, `tokenizer.json`) or a
//! model id in the Hugging Face cache.
//!
//! Offline first: the cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`) is searched and the network is touched only when the caller
//! allows downloads. Weights are read through memory maps and converted to the requested dtype
//! (bf16 / f16 files load as f32 on CPU). Every tensor the model asks for is checked by name,
//! shape and dtype, and the first problem is reported with the tensor's name and file.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use beatlab_nn::ParamStore;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::backbone::{Backbone, BackboneConfig};
use crate::error::{LmError, Result};
use crate::layers::BuildOptions;
use crate::siglip::{SiglipVision, SiglipVisionConfig};
use crate::tokenizer::LmTokenizer;

/// The weights index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The weights of an unsharded checkpoint.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Where a checkpoint comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local folder.
    Dir(PathBuf),
    /// A Hugging Face model id, looked up in the local cache.
    Hub {
        /// e.g. `Qwen/Qwen2.5-7B-Instruct`.
        model_id: String,
        /// Branch, tag or commit; `main` when `None`.
        revision: Option<String>,
        /// Fetch files missing from the cache over the network.
        allow_download: bool,
        /// The hub cache directory; [`hf_cache_dir`] when `None`.
        cache_dir: Option<PathBuf>,
    },
}

impl ModelSource {
    /// A local folder if `spec` names an existing directory, else a Hub id (cache only).
    pub fn parse(spec: &str) -> Self {
        let path = Path::new(spec);
        if path.is_dir() {
            Self::Dir(path.to_path_buf())
        } else {
            Self::Hub {
                model_id: spec.to_string(),
                revision: None,
                allow_download: false,
                cache_dir: None,
            }
        }
    }
}

/// The files of one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// The safetensors files, in shard order.
    pub weights: Vec<PathBuf>,
    /// `tokenizer.json`, when present.
    pub tokenizer: Option<PathBuf>,
}

/// The Hugging Face hub cache directory this process would use.
pub fn hf_cache_dir() -> Result<PathBuf> {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = from_env("HF_HUB_CACHE") {
        return Ok(dir);
    }
    if let Some(home) = from_env("HF_HOME") {
        return Ok(home.join("hub"));
    }
    from_env("HOME")
        .map(|h| h.join(".cache").join("huggingface").join("hub"))
        .ok_or(LmError::NoCacheDir)
}

/// Find the files of a checkpoint without reading them. Missing `config.json` or weights are
/// errors naming the path looked for; a missing tokenizer is `None`.
pub fn locate(source: &ModelSource) -> Result<ModelFiles> {
    match source {
        ModelSource::Dir(dir) => locate_dir(dir),
        ModelSource::Hub {
            model_id,
            revision,
            allow_download,
            cache_dir,
        } => {
            let cache_dir = match cache_dir {
                Some(dir) => dir.clone(),
                None => hf_cache_dir()?,
            };
            locate_hub(
                &cache_dir,
                model_id,
                revision.as_deref().unwrap_or("main"),
                *allow_download,
            )
        }
    }
}

fn locate_dir(dir: &Path) -> Result<ModelFiles> {
    if !dir.is_dir() {
        return Err(LmError::MissingFile {
            what: "model folder".into(),
            looked_for: dir.to_path_buf(),
        });
    }
    let config = dir.join("config.json");
    if !config.is_file() {
        return Err(LmError::MissingFile {
            what: "model config".into(),
            looked_for: config,
        });
    }
    let index = dir.join(INDEX_FILE);
    let weights = if index.is_file() {
        let shards = read_index(&index)?;
        let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
            return Err(LmError::MissingFile {
                what: format!("weight shard listed in {INDEX_FILE}"),
                looked_for: missing.clone(),
            });
        }
        paths
    } else {
        let single = dir.join(WEIGHTS_FILE);
        if !single.is_file() {
            return Err(LmError::MissingFile {
                what: format!("weights ({WEIGHTS_FILE} or {INDEX_FILE})"),
                looked_for: single,
            });
        }
        vec![single]
    };
    let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
    Ok(ModelFiles {
        config,
        weights,
        tokenizer,
    })
}

/// The shard file names of an index, in first-appearance order of their sorted tensor names.
fn read_index(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| LmError::io(index, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| LmError::json(index, &e))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| LmError::Config {
            source_file: Some(index.to_path_buf()),
            field: "weight_map".into(),
            reason: "is missing or not an object of tensor name -> shard file".into(),
        })?;
    let mut shards = BTreeSet::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| LmError::Config {
            source_file: Some(index.to_path_buf()),
            field: format!("weight_map.{name}"),
            reason: "must be a file name string".into(),
        })?;
        shards.insert(file.to_string());
    }
    Ok(shards.into_iter().collect())
}

fn locate_hub(
    cache_dir: &Path,
    model_id: &str,
    revision: &str,
    allow_download: bool,
) -> Result<ModelFiles> {
    let cache_dir = cache_dir.to_path_buf();
    let repo = hf_hub::Repo::with_revision(
        model_id.to_string(),
        hf_hub::RepoType::Model,
        revision.to_string(),
    );
    let cached = hf_hub::Cache::new(cache_dir.clone()).repo(repo.clone());
    // A revision given as a commit hash has no `refs/` entry: look in its snapshot directly.
    let snapshot = cache_dir
        .join(repo.folder_name())
        .join("snapshots")
        .join(revision);
    let fetch = |file: &str, required: bool| -> Result<Option<PathBuf>> {
        if let Some(path) = cached.get(file) {
            return Ok(Some(path));
        }
        if snapshot.join(file).is_file() {
            return Ok(Some(snapshot.join(file)));
        }
        if !allow_download {
            return if required {
                Err(LmError::NotInCache {
                    model_id: model_id.to_string(),
                    revision: revision.to_string(),
                    file: file.to_string(),
                    cache: cache_dir.clone(),
                })
            } else {
                Ok(None)
            };
        }
        let download_err = |message: String| LmError::Download {
            model_id: model_id.to_string(),
            file: file.to_string(),
            message,
        };
        let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache_dir.clone()))
            .with_progress(false)
            .build()
            .map_err(|e| download_err(e.to_string()))?;
        match api.repo(repo.clone()).get(file) {
            Ok(path) => Ok(Some(path)),
            Err(_) if !required => Ok(None),
            Err(e) => Err(download_err(e.to_string())),
        }
    };
    let config = fetch("config.json", true)?.expect("required file");
    let weights = match fetch(INDEX_FILE, false)? {
        Some(index) => {
            let mut paths = Vec::new();
            for shard in read_index(&index)? {
                paths.push(fetch(&shard, true)?.expect("required file"));
            }
            paths
        }
        None => vec![fetch(WEIGHTS_FILE, true)?.expect("required file")],
    };
    let tokenizer = fetch("tokenizer.json", false)?;
    Ok(ModelFiles {
        config,
        weights,
        tokenizer,
    })
}

/// Opened weight files that check every request by name, shape and dtype.
pub struct CheckedWeights {
    inner: Arc<CheckedInner>,
}

struct CheckedInner {
    files: Vec<PathBuf>,
    maps: Vec<MmapedSafetensors>,
    /// Tensor name -> index into `files` (the last file wins, as in sharded checkpoints).
    owner: HashMap<String, usize>,
    /// The first problem found while building a model, reported instead of candle's message.
    issue: Mutex<Option<LmError>>,
}

impl CheckedWeights {
    /// Memory-map `files` and read their headers.
    pub fn open(files: &[PathBuf]) -> Result<Self> {
        let mut maps = Vec::with_capacity(files.len());
        let mut owner = HashMap::new();
        for (k, path) in files.iter().enumerate() {
            // SAFETY: the mapping is read-only; like every safetensors reader we rely on the
            // checkpoint file not being modified while the model is loaded.
            let map =
                unsafe { MmapedSafetensors::new(path) }.map_err(|e| LmError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            for (name, _) in map.tensors() {
                owner.insert(name, k);
            }
            maps.push(map);
        }
        Ok(Self {
            inner: Arc::new(CheckedInner {
                files: files.to_vec(),
                maps,
                owner,
                issue: Mutex::new(None),
            }),
        })
    }

    /// Every tensor name in the files, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.owner.keys().cloned().collect();
        names.sort();
        names
    }

    /// Load one tensor as `dtype`, checking it exists with `shape`.
    pub fn load(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        self.inner.load(name, shape, dtype, device)
    }

    /// Build something over these weights; a missing, misshapen or non-float tensor is
    /// reported as [`LmError::MissingTensor`], [`LmError::ShapeMismatch`] or
    /// [`LmError::UnsupportedDtype`].
    pub fn build<T>(
        &self,
        dtype: DType,
        device: &Device,
        f: impl FnOnce(VarBuilder<'static>) -> Result<T>,
    ) -> Result<T> {
        *self.inner.issue.lock().expect("weights lock poisoned") = None;
        let vb = VarBuilder::from_backend(
            Box::new(CheckedBackend(self.inner.clone())),
            dtype,
            device.clone(),
        );
        match f(vb) {
            Ok(t) => Ok(t),
            Err(e) => Err(self
                .inner
                .issue
                .lock()
                .expect("weights lock poisoned")
                .take()
                .unwrap_or(e)),
        }
    }
}

impl CheckedInner {
    fn load(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let k = *self.owner.get(name).ok_or_else(|| LmError::MissingTensor {
            name: name.to_string(),
            searched: self.files.clone(),
        })?;
        let file = &self.files[k];
        let view = self.maps[k].get(name).map_err(|e| LmError::Safetensors {
            path: file.clone(),
            message: e.to_string(),
        })?;
        use safetensors::Dtype as St;
        if !matches!(view.dtype(), St::F32 | St::F16 | St::BF16 | St::F64) {
            return Err(LmError::UnsupportedDtype {
                name: name.to_string(),
                file: file.clone(),
                found: format!("{:?}", view.dtype()),
            });
        }
        if view.shape() != shape {
            return Err(LmError::ShapeMismatch {
                name: name.to_string(),
                file: file.clone(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let tensor = self.maps[k]
            .load(name, &Device::Cpu)
            .map_err(|e| LmError::Safetensors {
                path: file.clone(),
                message: format!("tensor `{name}`: {e}"),
            })?;
        Ok(tensor.to_dtype(dtype)?.to_device(device)?)
    }

    fn record(&self, err: LmError) -> candle_core::Error {
        let message = err.to_string();
        let mut issue = self.issue.lock().expect("weights lock poisoned");
        if issue.is_none() {
            *issue = Some(err);
        }
        candle_core::Error::Msg(message)
    }
}

struct CheckedBackend(Arc<CheckedInner>);

impl SimpleBackend for CheckedBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .load(name, s.dims(), dtype, dev)
            .map_err(|e| self.0.record(e))
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let k = *self.0.owner.get(name).ok_or_else(|| {
            self.0.record(LmError::MissingTensor {
                name: name.to_string(),
                searched: self.0.files.clone(),
            })
        })?;
        self.0.maps[k].load(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.owner.contains_key(name)
    }
}

/// A backbone loaded from a checkpoint.
#[derive(Debug)]
pub struct LoadedBackbone {
    /// The parsed `config.json`.
    pub config: BackboneConfig,
    /// The model; its checkpoint weights are constants (only LoRA and added rows can train).
    pub backbone: Backbone,
    /// The checkpoint's tokenizer with the special tokens added, when it has one.
    pub tokenizer: Option<LmTokenizer>,
    /// Where everything came from.
    pub files: ModelFiles,
}

impl LoadedBackbone {
    /// The tokenizer, or an error naming the `tokenizer.json` that is missing.
    pub fn require_tokenizer(&self) -> Result<&LmTokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| LmError::MissingFile {
            what: "tokenizer".into(),
            looked_for: self.files.config.with_file_name("tokenizer.json"),
        })
    }
}

/// Load a Qwen2 / Phi-3 checkpoint with frozen weights in `dtype` on `device`.
pub fn load_backbone(
    source: &ModelSource,
    dtype: DType,
    device: &Device,
    opts: &BuildOptions,
) -> Result<LoadedBackbone> {
    let files = locate(source)?;
    let config = BackboneConfig::from_file(&files.config)?;
    let tokenizer = files
        .tokenizer
        .as_deref()
        .map(LmTokenizer::from_file)
        .transpose()?;
    let weights = CheckedWeights::open(&files.weights)?;
    let backbone = weights.build(dtype, device, |vb| Backbone::new(&config, vb, opts))?;
    Ok(LoadedBackbone {
        config,
        backbone,
        tokenizer,
        files,
    })
}

/// Load a Qwen2 / Phi-3 checkpoint for full fine-tuning: its weights become variables of
/// `store` (which must be empty), so an optimiser over `store.vars()` trains them all.
pub fn load_backbone_trainable(
    source: &ModelSource,
    store: &ParamStore,
    dtype: DType,
    device: &Device,
    opts: &BuildOptions,
) -> Result<LoadedBackbone> {
    if !store.vars().is_empty() {
        return Err(LmError::input(
            "store",
            "an empty ParamStore (its variables become the checkpoint's weights)",
            format!("a store with {} variables", store.vars().len()),
        ));
    }
    let files = locate(source)?;
    let config = BackboneConfig::from_file(&files.config)?;
    let tokenizer = files
        .tokenizer
        .as_deref()
        .map(LmTokenizer::from_file)
        .transpose()?;
    let backbone = Backbone::random(&config, store, dtype, device, opts)?;
    let weights = CheckedWeights::open(&files.weights)?;
    for (name, var) in store.vars() {
        let value = weights.load(&name, var.dims(), var.dtype(), var.device())?;
        var.set(&value)?;
    }
    Ok(LoadedBackbone {
        config,
        backbone,
        tokenizer,
        files,
    })
}

/// Load a SigLIP vision tower (`vision_model.*` weights; a full SigLIP checkpoint's text tower
/// is ignored) with frozen weights.
pub fn load_siglip(
    source: &ModelSource,
    dtype: DType,
    device: &Device,
    opts: &BuildOptions,
) -> Result<SiglipVision> {
    let files = locate(source)?;
    let config = SiglipVisionConfig::from_file(&files.config)?;
    let weights = CheckedWeights::open(&files.weights)?;
    weights.build(dtype, device, |vb| SiglipVision::new(&config, vb, opts))
}
