//! What the decoders and the vision encoder add to the workspace's one layer library
//! (`beatlab_nn::layers`, whose linear layers, norms, activations, softmax and attention run as
//! fused CPU kernels with hand-written backward passes, and as candle's differentiable
//! primitives elsewhere): a [`Linear`] that carries a LoRA adapter, the rotary position
//! embedding, grouped-query head repetition, and the [`Builder`] that fetches weights. Norms and
//! softmax compute in f32 whatever the model dtype, as the Hugging Face implementations do.
//!
//! [`Builder`] fetches weights from a `VarBuilder` (a checkpoint or a [`beatlab_nn::ParamStore`]),
//! detaches them when the base model is frozen, attaches LoRA adapters to the targeted linear
//! layers and records which layers exist, so that a LoRA target matching nothing is an error.

use std::cell::RefCell;
use std::collections::BTreeSet;

use beatlab_nn::layers as nn;
pub use beatlab_nn::layers::{Activation, LayerNorm, RmsNorm};
use candle_core::{D, DType, Device, Module, Result as CResult, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::error::{LmError, Result};
use crate::lora::{Lora, LoraAdapter, module_kind};

/// Default standard deviation of freshly initialised linear and embedding weights: the
/// `initializer_range` default of the Hugging Face Qwen2 / Phi-3 / SigLIP configurations.
pub const INIT_STD: f64 = 0.02;

/// How a model is built on top of its weights.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// LoRA adapters to attach (their store is separate from the base weights).
    pub lora: Option<Lora>,
    /// Detach the base weights from the autograd graph: backward then computes no gradient for
    /// them (faster, and they cannot be trained by accident). Weights read from a checkpoint are
    /// never trainable; this matters for weights that live in a `ParamStore`.
    pub freeze_base: bool,
}

/// Fetches weights for one model and remembers which linear layers it built.
pub(crate) struct Builder<'a> {
    opts: &'a BuildOptions,
    init_std: f64,
    linear_paths: RefCell<BTreeSet<String>>,
}

impl<'a> Builder<'a> {
    /// A builder whose random initialisation (only used when `vb` creates weights) draws
    /// linear weights from N(0, `init_std`).
    pub(crate) fn new(opts: &'a BuildOptions, init_std: f64) -> Self {
        Self {
            opts,
            init_std,
            linear_paths: RefCell::new(BTreeSet::new()),
        }
    }

    /// The normal initialiser of this model's weight matrices.
    pub(crate) fn randn(&self) -> Init {
        Init::Randn {
            mean: 0.0,
            stdev: self.init_std,
        }
    }

    pub(crate) fn lora(&self) -> Option<&Lora> {
        self.opts.lora.as_ref()
    }

    /// A base weight, detached when the base is frozen.
    pub(crate) fn weight(
        &self,
        vb: &VarBuilder,
        shape: &[usize],
        name: &str,
        init: Init,
    ) -> CResult<Tensor> {
        let t = vb.get_with_hints(shape, name, init)?;
        Ok(if self.opts.freeze_base { t.detach() } else { t })
    }

    /// A linear layer `in_dim -> out_dim` at `vb`'s path (`weight [out, in]`, optional `bias`).
    pub(crate) fn linear(
        &self,
        vb: &VarBuilder,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> CResult<Linear> {
        let weight = self.weight(vb, &[out_dim, in_dim], "weight", self.randn())?;
        let bias = if bias {
            Some(self.weight(vb, &[out_dim], "bias", Init::Const(0.0))?)
        } else {
            None
        };
        let path = vb.prefix();
        let adapter = match self.lora() {
            Some(lora) => lora.adapter(&path, in_dim, out_dim, vb.device())?,
            None => None,
        };
        self.linear_paths.borrow_mut().insert(path);
        Ok(Linear {
            base: nn::Linear::from_tensors(weight, bias),
            adapter,
        })
    }

    /// An RMS norm over the last dimension (`weight [dim]`).
    pub(crate) fn rms_norm(&self, vb: &VarBuilder, dim: usize, eps: f64) -> CResult<RmsNorm> {
        let weight = self.weight(vb, &[dim], "weight", Init::Const(1.0))?;
        Ok(RmsNorm::from_tensors(weight, eps))
    }

    /// A layer norm over the last dimension (`weight [dim]`, `bias [dim]`).
    pub(crate) fn layer_norm(&self, vb: &VarBuilder, dim: usize, eps: f64) -> CResult<LayerNorm> {
        let weight = self.weight(vb, &[dim], "weight", Init::Const(1.0))?;
        let bias = self.weight(vb, &[dim], "bias", Init::Const(0.0))?;
        Ok(LayerNorm::from_tensors(weight, Some(bias), eps))
    }

    /// Fail when a LoRA target matched no linear layer of the model just built.
    pub(crate) fn finish(self) -> Result<()> {
        let Some(lora) = self.lora() else {
            return Ok(());
        };
        let paths = self.linear_paths.borrow();
        let kinds: BTreeSet<&str> = paths.iter().map(|p| module_kind(p)).collect();
        let unmatched: Vec<String> = lora
            .config()
            .targets
            .iter()
            .filter(|t| !kinds.contains(t.as_str()))
            .cloned()
            .collect();
        if unmatched.is_empty() {
            Ok(())
        } else {
            Err(LmError::LoraTargets {
                unmatched,
                available: kinds.iter().map(|k| k.to_string()).collect(),
            })
        }
    }
}

/// `y = x W^T + b` (the layer library's [`beatlab_nn::layers::Linear`]), plus a LoRA update
/// when one is attached.
#[derive(Debug, Clone)]
pub struct Linear {
    base: nn::Linear,
    adapter: Option<LoraAdapter>,
}

impl Linear {
    /// A linear layer over given tensors, with no adapter.
    pub(crate) fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            base: nn::Linear::from_tensors(weight, bias),
            adapter: None,
        }
    }

    /// Apply to `[..., in]`, giving `[..., out]`.
    pub fn forward(&self, xs: &Tensor) -> CResult<Tensor> {
        let ys = self.base.forward(xs)?;
        let Some(adapter) = &self.adapter else {
            return Ok(ys);
        };
        // The adapter works on rows: `[..., in]` as `[rows, in]`.
        let in_dim = xs.dim(D::Minus1)?;
        let rows = xs.elem_count() / in_dim.max(1);
        let update = adapter.forward(&xs.reshape((rows, in_dim))?)?;
        let update = update.reshape(ys.shape())?;
        ys + update
    }

    /// The base weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        self.base.weight()
    }

    /// Whether a LoRA adapter is attached.
    pub fn has_adapter(&self) -> bool {
        self.adapter.is_some()
    }

    /// Fold the adapter into the weight (`W += scale * B A`) and drop it. The merged weight is a
    /// new constant tensor; the stores are left untouched.
    pub fn merge_adapter(&mut self) -> CResult<()> {
        if let Some(adapter) = self.adapter.take() {
            let weight = self.base.weight();
            let delta = adapter.delta_weight()?.to_dtype(weight.dtype())?;
            let merged = (weight.detach() + delta)?.detach();
            self.base = nn::Linear::from_tensors(merged, self.base.bias().cloned());
        }
        Ok(())
    }
}

/// Scaled dot-product attention over `[batch, heads, seq, head_dim]` tensors with an optional
/// additive score bias `[batch or 1, heads or 1, q_len, k_len]` (0 = attend, [`MASKED`] = not):
/// the layer library's [`nn::attention`] at scale `1 / sqrt(head_dim)` (fused on the CPU in
/// f32), its scores and softmax in f32 for half-precision inputs.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&nn::ScoreBias>,
) -> CResult<Tensor> {
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let dtype = q.dtype();
    if dtype == DType::F32 {
        return nn::attention(q, k, v, bias, scale);
    }
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    nn::attention(&f32(q)?, &f32(k)?, &f32(v)?, bias, scale)?.to_dtype(dtype)
}

/// Rotary position embedding (the "rotate half" form of Qwen2 / Phi-3 / Llama) for positions
/// `0..seq_len`, applied by slicing, multiplication and concatenation so gradients flow.
#[derive(Debug, Clone)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
    rotary_dim: usize,
}

impl Rotary {
    /// Tables for `seq_len` positions rotating the first `rotary_dim` (even) channels of each
    /// head with base `theta`. Angles are computed in f64 so long positions stay exact.
    pub fn new(
        seq_len: usize,
        rotary_dim: usize,
        theta: f64,
        dtype: DType,
        device: &Device,
    ) -> CResult<Self> {
        let half = rotary_dim / 2;
        let mut cos = Vec::with_capacity(seq_len * half);
        let mut sin = Vec::with_capacity(seq_len * half);
        for pos in 0..seq_len {
            for i in 0..half {
                let inv_freq = 1.0 / theta.powf((2 * i) as f64 / rotary_dim as f64);
                let angle = pos as f64 * inv_freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let shape = (1, 1, seq_len, half);
        Ok(Self {
            cos: Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?,
            rotary_dim,
        })
    }

    /// Rotate `[batch, heads, seq, head_dim]`.
    pub fn apply(&self, xs: &Tensor) -> CResult<Tensor> {
        let head_dim = xs.dim(D::Minus1)?;
        let half = self.rotary_dim / 2;
        let x1 = xs.narrow(D::Minus1, 0, half)?;
        let x2 = xs.narrow(D::Minus1, half, half)?;
        let r1 = (x1.broadcast_mul(&self.cos)? - x2.broadcast_mul(&self.sin)?)?;
        let r2 = (x2.broadcast_mul(&self.cos)? + x1.broadcast_mul(&self.sin)?)?;
        if self.rotary_dim < head_dim {
            let pass = xs.narrow(D::Minus1, self.rotary_dim, head_dim - self.rotary_dim)?;
            Tensor::cat(&[r1, r2, pass], D::Minus1)
        } else {
            Tensor::cat(&[r1, r2], D::Minus1)
        }
    }
}

/// Repeat each key/value head `n_rep` times (grouped-query attention): head `h` of the result
/// is head `h / n_rep` of the input, as in Hugging Face's `repeat_kv`.
pub fn repeat_kv(xs: &Tensor, n_rep: usize) -> CResult<Tensor> {
    if n_rep == 1 {
        return Ok(xs.clone());
    }
    let (b, heads, seq, dim) = xs.dims4()?;
    xs.unsqueeze(2)?
        .broadcast_as((b, heads, n_rep, seq, dim))?
        .contiguous()?
        .reshape((b, heads * n_rep, seq, dim))
}

/// Additive attention bias that masks keys, large enough that `exp` underflows to exactly 0 in
/// f32 but finite, so a query whose every key is masked (a left-pad position) gets a uniform
/// distribution instead of NaN that would spread to real positions.
pub const MASKED: f32 = -1.0e9;

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Tensor, b: &Tensor, tol: f32) -> bool {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        d <= tol
    }

    #[test]
    fn rotary_matches_candle_rope_and_keeps_norms() {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 1., (2, 3, 5, 8), &dev).unwrap();
        let rot = Rotary::new(5, 8, 10_000.0, DType::F32, &dev).unwrap();
        let ours = rot.apply(&xs).unwrap();
        let cos = rot.cos.squeeze(0).unwrap().squeeze(0).unwrap();
        let sin = rot.sin.squeeze(0).unwrap().squeeze(0).unwrap();
        let theirs = candle_nn::rotary_emb::rope(&xs, &cos, &sin).unwrap();
        assert!(close(&ours, &theirs, 1e-5));
        // A rotation preserves the norm of every (position, head) vector.
        let n_in = xs.sqr().unwrap().sum(D::Minus1).unwrap();
        let n_out = ours.sqr().unwrap().sum(D::Minus1).unwrap();
        assert!(close(&n_in, &n_out, 1e-4));
    }

    #[test]
    fn norms_match_candle_fused_versions() {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 2., (3, 4, 16), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.1, 16, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, 16, &dev).unwrap();
        let rms = RmsNorm::from_tensors(w.clone(), 1e-6);
        let fused = candle_nn::ops::rms_norm(&xs, &w, 1e-6).unwrap();
        assert!(close(&rms.forward(&xs).unwrap(), &fused, 1e-5));
        let ln = LayerNorm::from_tensors(w.clone(), Some(b.clone()), 1e-6);
        let fused = candle_nn::ops::layer_norm(&xs, &w, &b, 1e-6).unwrap();
        assert!(close(&ln.forward(&xs).unwrap(), &fused, 1e-5));
    }

    #[test]
    fn repeat_kv_orders_heads_as_hugging_face() {
        let dev = Device::Cpu;
        let xs = Tensor::arange(0f32, 2.0, &dev)
            .unwrap()
            .reshape((1, 2, 1, 1))
            .unwrap();
        let rep = repeat_kv(&xs, 3).unwrap().flatten_all().unwrap();
        assert_eq!(
            rep.to_vec1::<f32>().unwrap(),
            vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
        );
    }
}
