//! LoRA adapters: low-rank updates `W + (alpha / r) * B A` on chosen linear layers, kept in
//! their own [`ParamStore`] so that only they are optimised and saved while the base weights stay
//! bit-identical.
//!
//! `A` (`r x in`) starts Kaiming-uniform-like (uniform in `±1/sqrt(in)`, as PEFT's
//! `kaiming_uniform_(a = sqrt(5))`), `B` (`out x r`) starts at zero, so a freshly attached adapter
//! leaves the model's function unchanged. Adapter tensors are always f32 (master weights that an
//! optimiser can update in small steps even when the base model runs in bf16); the adapter path
//! casts its input to f32 and its output back to the model's dtype.
//!
//! Dropout on the adapter input uses a host-side ChaCha generator seeded by [`LoraConfig::seed`]
//! and restarted per optimiser step ([`Lora::start_step`]), so masks are reproducible and a
//! resumed run draws the same ones (candle cannot seed its own CPU generator).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use beatlab_nn::ParamStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::Init;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{LmError, Result};

/// What to adapt and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank `r` of the update.
    pub rank: usize,
    /// Scale numerator: the update is multiplied by `alpha / rank`.
    pub alpha: f64,
    /// Dropout probability on the adapter input during training (0 disables it).
    #[serde(default)]
    pub dropout: f64,
    /// Names of the linear layers to adapt, matched against the last component of each layer's
    /// path (`q_proj` adapts every `...self_attn.q_proj`).
    pub targets: Vec<String>,
    /// Seed of the dropout masks.
    #[serde(default)]
    pub seed: u64,
}

impl LoraConfig {
    /// A configuration with dropout seed 0.
    pub fn new(rank: usize, alpha: f64, dropout: f64, targets: &[&str]) -> Self {
        Self {
            rank,
            alpha,
            dropout,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            seed: 0,
        }
    }

    /// The factor `alpha / rank` applied to `B A x`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Check ranges: rank > 0, alpha finite, 0 <= dropout < 1, at least one target.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(LmError::config("lora.rank", "must be at least 1, found 0"));
        }
        if !self.alpha.is_finite() {
            return Err(LmError::config(
                "lora.alpha",
                format!("must be a finite number, found {}", self.alpha),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(LmError::config(
                "lora.dropout",
                format!("must be in [0, 1), found {}", self.dropout),
            ));
        }
        if self.targets.is_empty() {
            return Err(LmError::config(
                "lora.targets",
                "must name at least one linear layer (e.g. \"q_proj\")",
            ));
        }
        Ok(())
    }

    /// Whether the linear layer at `module_path` is a target.
    pub fn matches(&self, module_path: &str) -> bool {
        let kind = module_kind(module_path);
        self.targets.iter().any(|t| t == kind)
    }
}

/// The last component of a dotted module path (`model.layers.0.self_attn.q_proj` -> `q_proj`).
pub(crate) fn module_kind(module_path: &str) -> &str {
    module_path.rsplit('.').next().unwrap_or(module_path)
}

/// A LoRA configuration bound to the store that holds its adapters, plus the training switch
/// and dropout generator shared by every adapter of one model. Cloning shares all of it.
#[derive(Clone)]
pub struct Lora {
    inner: Arc<LoraInner>,
}

struct LoraInner {
    config: LoraConfig,
    store: ParamStore,
    training: AtomicBool,
    rng: Mutex<ChaCha8Rng>,
}

impl std::fmt::Debug for Lora {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lora")
            .field("config", &self.inner.config)
            .field("training", &self.is_training())
            .finish()
    }
}

impl Lora {
    /// Adapters of `config`, created in `store` (use a store of their own so that an optimiser
    /// over `store.vars()` trains only them). Starts in training mode.
    pub fn new(config: LoraConfig, store: ParamStore) -> Result<Self> {
        config.validate()?;
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Ok(Self {
            inner: Arc::new(LoraInner {
                config,
                store,
                training: AtomicBool::new(true),
                rng: Mutex::new(rng),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LoraConfig {
        &self.inner.config
    }

    /// The store holding the adapter tensors (`<module>.lora_A.weight`, `<module>.lora_B.weight`).
    pub fn store(&self) -> &ParamStore {
        &self.inner.store
    }

    /// Switch dropout on (training) or off (evaluation).
    pub fn set_training(&self, training: bool) {
        self.inner.training.store(training, Ordering::Relaxed);
    }

    /// Starts the dropout masks of optimiser step `step`: the generator restarts at stream
    /// `step` of the seed, so a step's masks depend on the step alone, and a run resumed from a
    /// checkpoint draws the masks the uninterrupted run drew.
    pub fn start_step(&self, step: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.inner.config.seed);
        rng.set_stream(step);
        *self
            .inner
            .rng
            .lock()
            .expect("LoRA dropout generator poisoned") = rng;
    }

    /// Whether dropout is active.
    pub fn is_training(&self) -> bool {
        self.inner.training.load(Ordering::Relaxed)
    }

    /// The adapter for the linear layer at `module_path` (`in_dim -> out_dim`), or `None` when it
    /// is not a target. Calling it twice for one path returns the same tensors.
    pub(crate) fn adapter(
        &self,
        module_path: &str,
        in_dim: usize,
        out_dim: usize,
        device: &Device,
    ) -> candle_core::Result<Option<LoraAdapter>> {
        let cfg = &self.inner.config;
        if !cfg.matches(module_path) {
            return Ok(None);
        }
        let vb = self
            .inner
            .store
            .var_builder(DType::F32, device)
            .pp(module_path);
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a = vb.pp("lora_A").get_with_hints(
            (cfg.rank, in_dim),
            "weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let b = vb
            .pp("lora_B")
            .get_with_hints((out_dim, cfg.rank), "weight", Init::Const(0.0))?;
        Ok(Some(LoraAdapter {
            a,
            b,
            scale: cfg.scale(),
            dropout: cfg.dropout,
            lora: self.clone(),
        }))
    }

    fn dropout_mask(&self, shape: &[usize], device: &Device) -> candle_core::Result<Tensor> {
        let p = self.inner.config.dropout;
        let keep_scale = (1.0 / (1.0 - p)) as f32;
        let n: usize = shape.iter().product();
        let mut rng = self
            .inner
            .rng
            .lock()
            .expect("LoRA dropout generator poisoned");
        let values: Vec<f32> = (0..n)
            .map(|_| {
                if rng.random::<f64>() < p {
                    0.0
                } else {
                    keep_scale
                }
            })
            .collect();
        Tensor::from_vec(values, shape, device)
    }
}

/// One adapter: `y += scale * B (A dropout(x))`.
#[derive(Clone)]
pub struct LoraAdapter {
    a: Tensor,
    b: Tensor,
    scale: f64,
    dropout: f64,
    lora: Lora,
}

impl std::fmt::Debug for LoraAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraAdapter")
            .field("a", &self.a.dims())
            .field("b", &self.b.dims())
            .field("scale", &self.scale)
            .finish()
    }
}

impl LoraAdapter {
    /// The update for a 2-D input `[n, in]`, in the input's dtype: `[n, out]`.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = xs.dtype();
        let mut h = xs.to_dtype(DType::F32)?;
        if self.dropout > 0.0 && self.lora.is_training() {
            let mask = self.lora.dropout_mask(h.dims(), h.device())?;
            h = (h * mask)?;
        }
        let h = h.matmul(&self.a.t()?)?.matmul(&self.b.t()?)?;
        (h * self.scale)?.to_dtype(dtype)
    }

    /// The dense update `scale * B A` (`[out, in]`, f32), what merging adds to the base weight.
    pub fn delta_weight(&self) -> candle_core::Result<Tensor> {
        self.b.matmul(&self.a)? * self.scale
    }
}
