//! Differentiable building blocks shared by every trainable model of the workspace: `Linear`,
//! `LayerNorm`, `RmsNorm`, activations, a two-layer MLP, multi-head scaled-dot-product attention
//! and seeded dropout.
//!
//! Why not `candle_nn`'s versions: its fused `layer_norm`, `rms_norm` and `softmax_last_dim`
//! kernels have no backward pass and silently cut the autograd graph, and its `Linear` falls back
//! to a (slow) broadcast matmul for non-contiguous 3-D inputs. Everything here is composed from
//! primitive tensor ops that candle can differentiate. Weight names follow the Hugging Face
//! conventions (`weight`, `bias`) so pretrained checkpoints load through a `VarBuilder`.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Standard deviation of the normal init used for learned tokens and positional embeddings
/// (the ViT / BERT convention, also what the Beat reference code uses).
pub const TOKEN_INIT_STD: f64 = 0.02;

/// `y = x W^T + b` over the last dimension of an input of any rank.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A new layer with weights `[out_dim, in_dim]` under `vb`'s `weight` (and `bias`).
    ///
    /// Initialised like PyTorch's `nn.Linear` (weight and bias uniform in `±1/sqrt(in_dim)`), so
    /// that a model trained here starts from the distribution its PyTorch reference does.
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let bound = 1.0 / (in_dim.max(1) as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
        let bias = if bias {
            Some(vb.get_with_hints(out_dim, "bias", init)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// A layer from existing tensors (`weight`: `[out_dim, in_dim]`, `bias`: `[out_dim]`).
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let Some((&in_dim, lead)) = dims.split_last() else {
            candle_core::bail!("linear: input must have at least one dimension");
        };
        let rows: usize = lead.iter().product();
        // One 2-D matmul over all leading dimensions: the weight is shared, so there is no
        // reason to pay for a batched (broadcast) matmul. `reshape` copies only when `x` is not
        // contiguous, which is the copy a batched matmul would need anyway.
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = lead.to_vec();
        out_dims.push(self.out_dim());
        y.reshape(out_dims)
    }
}

/// Layer normalisation over the last dimension, `(x - mean) / sqrt(var + eps) * weight + bias`,
/// built from primitive ops so that it has a backward pass. Half-precision inputs are
/// normalised in f32 (as PyTorch does) and cast back.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    /// `weight` initialised to 1 and `bias` to 0, under `vb`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias: Some(bias),
            eps,
        })
    }

    /// A layer norm without the additive bias (some checkpoints have none).
    pub fn without_bias(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        Ok(Self {
            weight,
            bias: None,
            eps,
        })
    }

    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>, eps: f64) -> Self {
        Self { weight, bias, eps }
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = upcast(x)?;
        let mean = xf.mean_keepdim(D::Minus1)?;
        let centred = xf.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let inv_std = (var + self.eps)?.sqrt()?.recip()?;
        let normed = centred.broadcast_mul(&inv_std)?.to_dtype(dtype)?;
        let y = normed.broadcast_mul(&self.weight)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Root-mean-square normalisation over the last dimension, `x / sqrt(mean(x^2) + eps) * weight`
/// (Qwen2, Phi-3), differentiable, computed in f32 for half-precision inputs.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// `weight` initialised to 1, under `vb`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        Ok(Self { weight, eps })
    }

    pub fn from_tensors(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = upcast(x)?;
        let mean_sq = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let inv_rms = (mean_sq + self.eps)?.sqrt()?.recip()?;
        xf.broadcast_mul(&inv_rms)?
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)
    }
}

fn upcast(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32),
        _ => Ok(x.clone()),
    }
}

/// Element-wise non-linearities with a backward pass in candle 0.11.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// GELU, tanh approximation (`gelu_pytorch_tanh`, `gelu_new`).
    #[default]
    Gelu,
    /// Exact GELU with the error function (PyTorch's `nn.GELU()` default, HF `gelu`).
    GeluErf,
    /// SiLU / swish (`silu`).
    Silu,
    /// ReLU.
    Relu,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Gelu => x.gelu(),
            Activation::GeluErf => x.gelu_erf(),
            Activation::Silu => x.silu(),
            Activation::Relu => x.relu(),
        }
    }
}

/// Two linear layers with an activation between them: `fc2(act(fc1(x)))`.
#[derive(Clone, Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl Mlp {
    /// `dim -> hidden -> dim`, weights under `vb`'s `fc1` and `fc2`.
    pub fn new(dim: usize, hidden: usize, activation: Activation, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(dim, hidden, true, vb.pp("fc1"))?,
            fc2: Linear::new(hidden, dim, true, vb.pp("fc2"))?,
            activation,
        })
    }

    pub fn from_layers(fc1: Linear, fc2: Linear, activation: Activation) -> Self {
        Self {
            fc1,
            fc2,
            activation,
        }
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.activation.apply(&self.fc1.forward(x)?)?;
        self.fc2.forward(&h)
    }
}

/// Scaled-dot-product attention for all heads of a batch at once.
///
/// `q`: `[B, H, Tq, D]`, `k` and `v`: `[B, H, Tk, D]`, each contiguous (the batch and head
/// dimensions are then one batch of `B*H` matrix products, which is what the CPU and CUDA
/// kernels want). `mask`, if any, is added to the scores and must broadcast to
/// `[B, H, Tq, Tk]`: 0 where attention is allowed, `-inf` (or a large negative) where not.
/// The softmax is `candle_nn::ops::softmax`, which is differentiable, unlike the fused
/// `softmax_last_dim`. Returns `[B, H, Tq, D]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    // Scaling q (Tq x D values) is cheaper than scaling the Tq x Tk scores.
    let q = (q * scale)?;
    let scores = q.matmul(&k.t()?)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    probs.matmul(v)
}

/// An additive causal mask `[t, t]`: 0 on and below the diagonal, `-inf` above.
pub fn causal_mask(t: usize, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (t, t), device)?.to_dtype(dtype)
}

/// Inverted dropout: zeroes each element with probability `p` and scales the rest by
/// `1 / (1 - p)`. The mask is drawn from `rng` on the host (candle's CPU generator cannot be
/// seeded), so a given generator state gives the same mask on every device. With `rng = None`
/// (evaluation) or `p == 0` the input is returned unchanged.
pub fn dropout<R: Rng>(x: &Tensor, p: f64, rng: Option<&mut R>) -> Result<Tensor> {
    let Some(rng) = rng else {
        return Ok(x.clone());
    };
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if p >= 1.0 {
        return x.zeros_like();
    }
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&mask)
}

/// Mean squared error over all elements, as a scalar tensor.
pub fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a - b)?.sqr()?.mean_all()
}
