//! Named tensor maps to and from safetensors bytes, and the training state of a run (model
//! parameters, buffers, optimiser) as one such map.
//!
//! Writing files (temp file, fsync, rename, sha256) is the runner's job; this module only turns
//! state into bytes and back, exactly: every dtype is stored as is, so a round trip is
//! bit-identical.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, View};

use crate::optim::{AdamW, OptimError};
use crate::params::{LoadError, ParamStore};

/// Prefix of model parameters in a training state.
pub const PARAM_PREFIX: &str = "param.";
/// Prefix of non-trainable buffers (codebooks, EMA statistics).
pub const BUFFER_PREFIX: &str = "buffer.";
/// Prefix of optimiser state.
pub const OPTIM_PREFIX: &str = "optim.";

/// Why state could not be serialised or restored.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The bytes are not a valid safetensors file.
    #[error("invalid safetensors data: {0}")]
    Format(#[from] safetensors::SafeTensorError),
    /// A tensor has a dtype safetensors cannot hold here.
    #[error("tensor `{name}` has dtype {dtype:?}, which cannot be saved")]
    Dtype {
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: DType,
    },
    /// Reading a tensor's values (or moving it to the device) failed.
    #[error("tensor `{name}`: {source}")]
    Tensor {
        /// The tensor.
        name: String,
        /// The underlying error.
        source: candle_core::Error,
    },
    /// Restoring model parameters or buffers failed.
    #[error("restoring {what}: {source}")]
    Model {
        /// `parameters` or `buffers`.
        what: &'static str,
        /// The underlying error.
        source: Box<LoadError>,
    },
    /// Restoring the optimiser failed.
    #[error("restoring the optimiser: {0}")]
    Optim(#[from] OptimError),
}

/// One tensor's bytes, ready for `safetensors::serialize`.
struct HostTensor {
    dtype: StDtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn host_tensor(name: &str, t: &Tensor) -> Result<HostTensor, CheckpointError> {
    let err = |source| CheckpointError::Tensor {
        name: name.to_string(),
        source,
    };
    let flat = t.flatten_all().map_err(err)?;
    let bytes: Vec<u8> = match t.dtype() {
        DType::F32 => le_bytes(flat.to_vec1::<f32>().map_err(err)?, f32::to_le_bytes),
        DType::F64 => le_bytes(flat.to_vec1::<f64>().map_err(err)?, f64::to_le_bytes),
        DType::BF16 => le_bytes(flat.to_vec1::<half::bf16>().map_err(err)?, |v| {
            v.to_le_bytes()
        }),
        DType::F16 => le_bytes(flat.to_vec1::<half::f16>().map_err(err)?, |v| {
            v.to_le_bytes()
        }),
        DType::U8 => flat.to_vec1::<u8>().map_err(err)?,
        DType::U32 => le_bytes(flat.to_vec1::<u32>().map_err(err)?, u32::to_le_bytes),
        DType::I64 => le_bytes(flat.to_vec1::<i64>().map_err(err)?, i64::to_le_bytes),
        dtype => {
            return Err(CheckpointError::Dtype {
                name: name.to_string(),
                dtype,
            });
        }
    };
    Ok(HostTensor {
        dtype: t.dtype().into(),
        shape: t.dims().to_vec(),
        bytes,
    })
}

fn le_bytes<T, const N: usize>(values: Vec<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.into_iter().flat_map(f).collect()
}

/// Serialises `tensors` (any device; f32, f64, bf16, f16, u8, u32, i64) with optional string
/// metadata (e.g. the config as JSON) into safetensors bytes.
pub fn to_safetensors(
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>, CheckpointError> {
    let host = tensors
        .iter()
        .map(|(name, t)| Ok((name.clone(), host_tensor(name, t)?)))
        .collect::<Result<Vec<_>, CheckpointError>>()?;
    Ok(safetensors::serialize(
        host.iter().map(|(n, t)| (n.as_str(), t)),
        metadata,
    )?)
}

/// Reads safetensors bytes into tensors on `device`.
pub fn from_safetensors(
    bytes: &[u8],
    device: &Device,
) -> Result<BTreeMap<String, Tensor>, CheckpointError> {
    let st = safetensors::SafeTensors::deserialize(bytes)?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let t = view
                .load(device)
                .map_err(|source| CheckpointError::Tensor {
                    name: name.clone(),
                    source,
                })?;
            Ok((name, t))
        })
        .collect()
}

/// The metadata of safetensors bytes (empty if there is none).
pub fn safetensors_metadata(bytes: &[u8]) -> Result<HashMap<String, String>, CheckpointError> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// `tensors` with `prefix` put before every name.
pub fn with_prefix(prefix: &str, tensors: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    tensors
        .iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
        .collect()
}

/// The entries of `tensors` whose name starts with `prefix`, with the prefix removed.
pub fn strip_prefix(prefix: &str, tensors: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
        .collect()
}

/// Everything a run needs to resume: the store's parameters (`param.*`) and buffers
/// (`buffer.*`), and the optimiser's state (`optim.*`) when given.
///
/// Parameters and buffers are live views of the model (the next optimiser or codebook step
/// changes them): serialise the map with [`to_safetensors`] before training on.
pub fn training_state(
    store: &ParamStore,
    optimizer: Option<&AdamW>,
) -> Result<BTreeMap<String, Tensor>, CheckpointError> {
    let mut state = with_prefix(PARAM_PREFIX, &store.tensors());
    state.extend(with_prefix(BUFFER_PREFIX, &store.buffer_tensors()));
    if let Some(opt) = optimizer {
        state.extend(with_prefix(OPTIM_PREFIX, &opt.state()?));
    }
    Ok(state)
}

/// Restores [`training_state`]'s output into a store holding the same model (built from the
/// same config) and, when given, an optimiser over its parameters. Strict: missing, extra or
/// misshapen tensors are errors.
pub fn restore_training_state(
    state: &BTreeMap<String, Tensor>,
    store: &ParamStore,
    optimizer: Option<&mut AdamW>,
) -> Result<(), CheckpointError> {
    store
        .load(&strip_prefix(PARAM_PREFIX, state))
        .map_err(|source| CheckpointError::Model {
            what: "parameters",
            source: Box::new(source),
        })?;
    store
        .load_buffers(&strip_prefix(BUFFER_PREFIX, state))
        .map_err(|source| CheckpointError::Model {
            what: "buffers",
            source: Box::new(source),
        })?;
    if let Some(opt) = optimizer {
        opt.load_state(&strip_prefix(OPTIM_PREFIX, state))?;
    }
    Ok(())
}
