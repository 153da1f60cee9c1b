//! Differentiable building blocks shared by every trainable model of the workspace: `Linear`,
//! `LayerNorm`, `RmsNorm`, activations, a two-layer MLP, multi-head scaled-dot-product attention
//! and seeded dropout.
//!
//! Why not `candle_nn`'s versions: its fused `layer_norm`, `rms_norm` and `softmax_last_dim`
//! kernels have no backward pass and silently cut the autograd graph, and its `Linear` falls back
//! to a (slow) broadcast matmul for non-contiguous 3-D inputs. Everything here is composed from
//! primitive tensor ops that candle can differentiate. Weight names follow the Hugging Face
//! conventions (`weight`, `bias`) so pretrained checkpoints load through a `VarBuilder`.
//!
//! On the CPU in f32, the hot spots of a transformer step run as fused candle custom ops with
//! hand-written backward passes: the normalisation of LayerNorm / RmsNorm, their gain and every
//! bias (row-vector ops), the softmax, the tanh GELU, and attention itself (per-head products
//! straight from the gemm kernels on strided views; the softmax probabilities kept from the
//! forward pass for the backward pass). Composed from primitives, each of these is several graph
//! nodes, and candle's backward pass allocates and sweeps the activations once per node: that
//! overhead was most of a Beat training step (7 windows/s at the paper config on one core before,
//! about 21 after). Elsewhere (CUDA, half precision) the same functions use the composed,
//! differentiable primitives, and the tests check that both paths agree in value and gradient.
//!
//! The fused kernels split their work on the current rayon pool (the global one unless a caller
//! `install`s another; candle's matrix products use the same, so `RAYON_NUM_THREADS` sets the
//! thread count of both): attention over sequences or (batch, head) pairs, each worker with its
//! own scratch and writing its own blocks of the output or the gradient, the row-wise kernels
//! over chunks of rows, the column sums of the bias and gain gradients over blocks of columns.
//! No value is ever summed in an order that depends on the split, so the results are bit for
//! bit the same on any number of threads.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, DType, Layout, Module, Result, Shape, Tensor,
};
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
        // One 2-D matmul over all leading dimensions: the weight is shared, so there is no
        // reason to pay for a batched (broadcast) matmul. `reshape` copies only when `x` is not
        // contiguous, which is the copy a batched matmul would need anyway; 2-D inputs skip it
        // (even a no-op reshape is a graph node that the backward pass sweeps).
        let rows2d = if lead.len() == 1 {
            x.clone()
        } else {
            x.reshape((lead.iter().product::<usize>(), in_dim))?
        };
        let y = match &self.bias {
            Some(b) if fused_cpu(&rows2d) && fused_cpu(&self.weight) && fused_cpu(b) => {
                rows2d.contiguous()?.apply_op3(
                    &self.weight.contiguous()?,
                    &b.contiguous()?,
                    fused::LinearRows,
                )?
            }
            Some(b) => add_row_vector(&rows2d.matmul(&self.weight.t()?)?, b)?,
            None => rows2d.matmul(&self.weight.t()?)?,
        };
        if lead.len() == 1 {
            return Ok(y);
        }
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
        let normed = normalize_last_dim(x, self.eps, true)?;
        let y = mul_row_vector(&normed, &self.weight)?;
        match &self.bias {
            Some(b) => add_row_vector(&y, b),
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
        mul_row_vector(&normalize_last_dim(x, self.eps, false)?, &self.weight)
    }
}

/// `x + b` with the vector `b` added to every row (last dimension) of `x`: a bias.
/// Differentiable; on the CPU in f32 a fused op whose backward sums the rows of the gradient
/// directly (candle's generic broadcast backward reduces over a strided view, which was a tenth
/// of a Beat step).
pub fn add_row_vector(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    if row_vector_fits(x, b) {
        return x.contiguous()?.apply_op2(&b.contiguous()?, fused::AddRow);
    }
    x.broadcast_add(b)
}

/// `x * w` with the vector `w` multiplying every row (last dimension) of `x`: a norm's gain.
/// Differentiable; fused on the CPU in f32 like [`add_row_vector`].
pub fn mul_row_vector(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if row_vector_fits(x, w) {
        return x.contiguous()?.apply_op2(&w.contiguous()?, fused::MulRow);
    }
    x.broadcast_mul(w)
}

fn row_vector_fits(x: &Tensor, v: &Tensor) -> bool {
    fused_cpu(x) && fused_cpu(v) && v.rank() == 1 && x.dims().last() == Some(&v.dim(0).unwrap_or(0))
}

/// `(x - mean) / sqrt(var + eps)` (`remove_mean`, LayerNorm) or `x / sqrt(mean(x^2) + eps)`
/// (RmsNorm) over the last dimension, without the affine part; differentiable. Half-precision
/// inputs are normalised in f32 (as PyTorch does) and cast back.
pub fn normalize_last_dim(x: &Tensor, eps: f64, remove_mean: bool) -> Result<Tensor> {
    if fused_cpu(x) {
        return x
            .contiguous()?
            .apply_op1(fused::Normalize { eps, remove_mean });
    }
    let dtype = x.dtype();
    let xf = upcast(x)?;
    let centred = if remove_mean {
        xf.broadcast_sub(&xf.mean_keepdim(D::Minus1)?)?
    } else {
        xf
    };
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let inv_std = (var + eps)?.sqrt()?.recip()?;
    centred.broadcast_mul(&inv_std)?.to_dtype(dtype)
}

/// Softmax over the last dimension; differentiable (fused on the CPU in f32, otherwise
/// `candle_nn::ops::softmax`, never the backward-less `softmax_last_dim`). Half-precision inputs
/// are computed in f32 and cast back, as the Hugging Face models do, so bf16 stays stable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fused_cpu(x) {
        return x.contiguous()?.apply_op1(fused::Softmax);
    }
    candle_nn::ops::softmax(&upcast(x)?, D::Minus1)?.to_dtype(x.dtype())
}

/// GELU with the tanh approximation (PyTorch's `gelu(approximate="tanh")`, Hugging Face's
/// `gelu_pytorch_tanh`); differentiable (fused on the CPU in f32, candle's `gelu` elsewhere).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if fused_cpu(x) {
        return x.contiguous()?.apply_op1(fused::Gelu);
    }
    x.gelu()
}

/// Exact GELU with the error function (PyTorch's `nn.GELU()` default, Hugging Face's `gelu`).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

fn fused_cpu(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() > 0
}

fn upcast(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32),
        _ => Ok(x.clone()),
    }
}

/// Element-wise non-linearities with a backward pass in candle 0.11, named (and deserialised
/// from config files) as Hugging Face's `hidden_act` names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// GELU, tanh approximation ([`gelu_tanh`]): Beat, SigLIP.
    #[default]
    #[serde(
        rename = "gelu_pytorch_tanh",
        alias = "gelu_new",
        alias = "gelu_fast",
        alias = "gelu_tanh"
    )]
    GeluTanh,
    /// Exact GELU with the error function ([`gelu_erf`]).
    #[serde(rename = "gelu")]
    GeluErf,
    /// SiLU / swish: Qwen2, Phi-3.
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    /// ReLU.
    #[serde(rename = "relu")]
    Relu,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::GeluTanh => gelu_tanh(x),
            Activation::GeluErf => gelu_erf(x),
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
/// `q`: `[B, H, Tq, D]`, `k` and `v`: `[B, H, Tk, D]`. `mask`, if any, is added to the scores
/// and must broadcast to `[B, H, Tq, Tk]`: 0 where attention is allowed, `-inf` (or a large
/// negative) where not. Returns `[B, H, Tq, D]`, differentiable with respect to q, k and v.
///
/// Without a mask, on the CPU in f32, this is one fused op (per-head matrix products straight
/// from the gemm kernels, the probabilities kept for the backward pass: `B x H x Tq x Tk`
/// values for as long as the graph lives);
/// otherwise the batched matmuls of candle with the differentiable [`softmax_last_dim`].
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    match mask {
        None => attention_with(q, k, v, scale, false, None),
        Some(m) => attention_with(q, k, v, scale, false, Some(m)),
    }
}

/// [`attention`] where query `i` sees keys `0..=i + (Tk - Tq)` (decoder self-attention; with
/// `Tq == Tk` the usual lower triangle). Fused on the CPU in f32 like [`attention`].
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    attention_with(q, k, v, scale, true, None)
}

fn attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    causal: bool,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, h, tq, d) = q.dims4()?;
    let tk = k.dim(2)?;
    if k.dims() != [b, h, tk, d] || v.dims() != [b, h, tk, d] {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit [B, H, T, D]",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if causal && tk < tq {
        candle_core::bail!("causal attention: {tk} keys for {tq} queries");
    }
    if mask.is_none() && fused_cpu(q) && fused_cpu(k) && fused_cpu(v) {
        let op = fused::Attention {
            scale: scale as f32,
            causal,
            saved: Default::default(),
        };
        return q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    // Scaling q (Tq x D values) is cheaper than scaling the Tq x Tk scores. The products need
    // row-major operands (heads split out of a projection are strided views).
    let q = (q * scale)?;
    let (k, v) = (&k.contiguous()?, &v.contiguous()?);
    let scores = q.matmul(&k.t()?)?;
    let scores = match (mask, causal) {
        (Some(m), _) => scores.broadcast_add(m)?,
        (None, true) => {
            let m = causal_mask_offset(tq, tk, scores.dtype(), scores.device())?;
            scores.broadcast_add(&m)?
        }
        (None, false) => scores,
    };
    softmax_last_dim(&scores)?.matmul(v)
}

/// Self-attention over a packed q/k/v projection: `qkv` is `[B, T, 3 * heads * head_dim]`
/// laid out as `(q | k | v)`, each `(head, dim)`; returns `[B, T, heads * head_dim]` with the
/// heads side by side, ready for the output projection. Differentiable.
///
/// This is the layout a fused `qkv` linear produces. On the CPU in f32 the heads are read in
/// place by one fused op, so splitting and merging them costs no copies and no graph nodes
/// (candle's backward pass sweeps every reshape, permute and narrow once more, which had made
/// attention a third of a Beat step); elsewhere it is split and merged with views and
/// [`attention`].
///
/// `bias`, when given, is an additive score bias `[heads, T, T]` shared by every sequence (e.g.
/// a position-dependent bias): a constant, no gradient flows into it.
pub fn packed_self_attention(
    qkv: &Tensor,
    heads: usize,
    head_dim: usize,
    scale: f64,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, t, _) = qkv.dims3()?;
    packed_self_attention_rows(&qkv.reshape((b * t, ()))?, t, heads, head_dim, scale, bias)?
        .reshape((b, t, heads * head_dim))
}

/// [`packed_self_attention`] on token rows: `qkv` is `[B * seq_len, 3 * heads * head_dim]`
/// (sequences one after the other), the result `[B * seq_len, heads * head_dim]`. For models
/// that keep their activations as rows between attention calls, which saves candle's backward
/// pass a sweep over every reshape.
pub fn packed_self_attention_rows(
    qkv: &Tensor,
    seq_len: usize,
    heads: usize,
    head_dim: usize,
    scale: f64,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (rows, width) = qkv.dims2()?;
    if width != 3 * heads * head_dim || seq_len == 0 || !rows.is_multiple_of(seq_len) {
        candle_core::bail!(
            "packed attention: [{rows}, {width}] is not [B * {seq_len}, 3 x {heads} heads x {head_dim}]"
        );
    }
    if let Some(bias) = bias
        && bias.dims() != [heads, seq_len, seq_len]
    {
        candle_core::bail!(
            "packed attention: score bias {:?} is not [{heads} heads, {seq_len}, {seq_len}]",
            bias.dims()
        );
    }
    if fused_cpu(qkv) {
        let bias = match bias {
            Some(b) => Some(
                b.to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .into(),
            ),
            None => None,
        };
        let op = fused::PackedAttention {
            heads,
            head_dim,
            seq_len,
            scale: scale as f32,
            bias,
            saved: Default::default(),
        };
        return qkv.contiguous()?.apply_op1(op);
    }
    let b = rows / seq_len;
    let qkv = qkv
        .reshape((b, seq_len, 3, heads, head_dim))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    let bias = bias.map(|b| b.detach().to_dtype(qkv.dtype())).transpose()?;
    let out = attention(
        &qkv.get(0)?,
        &qkv.get(1)?,
        &qkv.get(2)?,
        bias.as_ref(),
        scale,
    )?;
    out.transpose(1, 2)?.reshape((rows, heads * head_dim))
}

fn causal_mask_offset(
    tq: usize,
    tk: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let shift = tk - tq;
    let values: Vec<f32> = (0..tq)
        .flat_map(|i| {
            (0..tk).map(move |j| {
                if j > i + shift {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(values, (tq, tk), device)?.to_dtype(dtype)
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

/// CPU f32 kernels with hand-written backward passes (see the module documentation). Each
/// forward op keeps what its backward needs as its input or output; the backward kernels are
/// applied without autograd (no second derivatives).
mod fused {
    use super::*;
    use rayon::prelude::*;
    use std::sync::{Arc, Mutex};

    /// Below this many values a row-wise kernel runs on the calling thread: handing a job to the
    /// pool and waiting for it costs microseconds.
    const PAR_MIN_VALUES: usize = 1 << 14;

    /// Whether there is more than one thread in the current rayon pool (the global one, or the
    /// one a caller `install`ed).
    fn parallel() -> bool {
        rayon::current_num_threads() > 1
    }

    /// Rows per parallel task for a row-wise kernel over `rows` rows of `n` values: at least
    /// [`PAR_MIN_VALUES`] values per task, and a few tasks per thread so that a thread the
    /// scheduler preempts does not hold up the rest (the cores are shared).
    fn rows_per_task(rows: usize, n: usize) -> usize {
        let threads = rayon::current_num_threads();
        let tasks = (rows * n / PAR_MIN_VALUES).clamp(1, 4 * threads);
        rows.div_ceil(tasks).max(1)
    }

    /// Runs `f` compiled for the widest vector unit the CPU has (AVX-512 or AVX2 + FMA on
    /// x86-64, chosen at run time by `pulp`, the dispatcher of candle's matrix kernels): the
    /// binary targets baseline x86-64 (SSE2), where the kernels' loops vectorise only four lanes
    /// wide. `f` and what it calls `#[inline(always)]` are compiled inside the dispatched
    /// function. Elementwise results are the same on every CPU: Rust never fuses `a * b + c`
    /// into an FMA on its own, and reductions use [`lane_sum`]'s fixed order.
    #[inline(always)]
    fn simd<R>(f: impl FnOnce() -> R) -> R {
        pulp::Arch::new().dispatch(f)
    }

    /// Lanes of [`lane_sum`] and [`lane_max`]: one AVX-512 register of f32.
    const LANES: usize = 16;

    /// The sum of `xs` as [`LANES`] interleaved partial sums added at the end: a fixed order
    /// (the same on every CPU and thread count) that vectorises, where one running sum is a
    /// serial chain of additions.
    #[inline(always)]
    pub(super) fn lane_sum(xs: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let chunks = xs.chunks_exact(LANES);
        let tail = chunks.remainder();
        for chunk in chunks {
            for (a, &v) in acc.iter_mut().zip(chunk) {
                *a += v;
            }
        }
        for (a, &v) in acc.iter_mut().zip(tail) {
            *a += v;
        }
        acc.iter().sum()
    }

    /// `sum(a * b)` in [`lane_sum`]'s order.
    #[inline(always)]
    fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (ta, tb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for ((s, &u), &v) in acc.iter_mut().zip(x).zip(y) {
                *s += u * v;
            }
        }
        for ((s, &u), &v) in acc.iter_mut().zip(ta).zip(tb) {
            *s += u * v;
        }
        acc.iter().sum()
    }

    /// The largest value of `xs` (NaN-ignoring like `f32::max`), [`LANES`] at a time.
    #[inline(always)]
    fn lane_max(xs: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let chunks = xs.chunks_exact(LANES);
        let tail = chunks.remainder();
        for chunk in chunks {
            for (a, &v) in acc.iter_mut().zip(chunk) {
                *a = a.max(v);
            }
        }
        for (a, &v) in acc.iter_mut().zip(tail) {
            *a = a.max(v);
        }
        acc.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }

    /// Softmax of one row in place: `exp(x - max) / sum`.
    #[inline(always)]
    fn softmax_in_place(row: &mut [f32]) {
        let max = lane_max(row);
        for x in row.iter_mut() {
            *x = fast_exp(*x - max);
        }
        let inv = 1.0 / lane_sum(row);
        row.iter_mut().for_each(|x| *x *= inv);
    }

    /// `f(first_row, chunk)` over chunks of whole rows (`n` values each) of `out`, in parallel
    /// when `out` is big enough. Every row is computed by the same code whatever the chunking,
    /// so the results do not depend on the thread count.
    fn for_row_chunks<T: Send>(out: &mut [T], n: usize, f: impl Fn(usize, &mut [T]) + Sync) {
        let rows = out.len() / n;
        let per = rows_per_task(rows, n);
        if per >= rows || !parallel() {
            simd(|| f(0, out));
        } else {
            out.par_chunks_mut(per * n)
                .enumerate()
                .for_each(|(i, chunk)| simd(|| f(i * per, chunk)));
        }
    }

    /// A new `[rows, n]` buffer filled row chunk by row chunk by `f(first_row, chunk)` (see
    /// [`for_row_chunks`]); `f` finds zeros.
    fn map_rows(len: usize, n: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
        map_rows_from(&vec![0f32; n], len, f)
    }

    /// Like [`map_rows`], every row starting as a copy of `row`. Each task writes its own
    /// chunk before `f` reads it, so the buffer is not first zeroed as a whole on the calling
    /// thread (with the binary's malloc settings buffers come from the heap, and that serial
    /// `memset`, or a bias copied row by row, was 6 % of a Beat forward pass).
    fn map_rows_from(row: &[f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
        let n = row.len();
        if n == 0 {
            // No row to copy (then `len` is 0 for any `[rows, 0]` buffer).
            return vec![0f32; len];
        }
        let mut out: Vec<f32> = Vec::with_capacity(len);
        for_row_chunks(&mut out.spare_capacity_mut()[..len], n, |r0, chunk| {
            for dst in chunk.chunks_mut(n) {
                for (d, &v) in dst.iter_mut().zip(row) {
                    d.write(v);
                }
            }
            // SAFETY: the loop above wrote every element of `chunk` (its rows cover it, a
            // shorter last row included), and `MaybeUninit<f32>` has the layout of `f32`.
            let chunk = unsafe { &mut *(chunk as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            f(r0, chunk)
        });
        // SAFETY: `for_row_chunks` hands every element of `out[..len]` to the closure exactly
        // once (in one call or in disjoint chunks), and the closure initialised all of them.
        unsafe { out.set_len(len) };
        out
    }

    /// `f(a_row, b_row, out_row)` over the rows (`n` values each) of two same-sized inputs into
    /// a new buffer (see [`map_rows`]); the gradient kernels that read an activation and its
    /// gradient side by side.
    #[inline(always)]
    fn map_row_pairs(
        op: &str,
        (a, b): (&[f32], &[f32]),
        n: usize,
        f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
    ) -> Result<Vec<f32>> {
        if a.len() != b.len() {
            candle_core::bail!("{op}: inputs of different sizes");
        }
        Ok(map_rows(a.len(), n, |r0, out| {
            let range = r0 * n..r0 * n + out.len();
            let (a, b) = (&a[range.clone()], &b[range]);
            for ((ar, br), or) in a
                .chunks_exact(n)
                .zip(b.chunks_exact(n))
                .zip(out.chunks_exact_mut(n))
            {
                f(ar, br, or);
            }
        }))
    }

    /// Per-column reductions over all rows of a `[rows, n]` layout: `f(first_col, sums)` adds
    /// the rows' values of columns `first_col..first_col + sums.len()` into `sums`, rows in
    /// order. Parallel over column blocks, so every column is still summed by one thread in row
    /// order: the result is the sequential one, bit for bit, whatever the thread count.
    fn column_reduce(rows: usize, n: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
        let mut sums = vec![0f32; n];
        let threads = rayon::current_num_threads();
        // Blocks of whole 64-byte lines of a row, a couple per thread.
        let width = n.div_ceil(2 * threads).next_multiple_of(16);
        if threads == 1 || rows * n < PAR_MIN_VALUES || width >= n {
            simd(|| f(0, &mut sums));
        } else {
            sums.par_chunks_mut(width)
                .enumerate()
                .for_each(|(i, block)| simd(|| f(i * width, block)));
        }
        sums
    }

    /// The contiguous f32 data of a custom op input.
    fn data<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("{op}: expected f32 data");
        };
        match layout.contiguous_offsets() {
            Some((start, end)) => Ok(&values[start..end]),
            None => candle_core::bail!("{op}: input must be contiguous"),
        }
    }

    fn last_dim(layout: &Layout, op: &str) -> Result<usize> {
        match layout.dims().last() {
            Some(&n) if n > 0 => Ok(n),
            _ => candle_core::bail!("{op}: needs a non-empty last dimension"),
        }
    }

    /// `sqrt(2 / pi)` and the cubic coefficient of the tanh GELU approximation.
    const GELU_K: f32 = 0.797_884_6;
    const GELU_A: f32 = 0.044_715;

    /// `exp(x)` for `x` in [-87, 88], to about 2e-7 relative error, in straight-line code that
    /// the compiler vectorises (libm's `expf` and `tanhf` are scalar calls; they were a tenth of
    /// a Beat step inside GELU). `x = n ln 2 + f` with `|f| <= ln 2 / 2`; `e^f` by its Taylor
    /// series to degree 7 (truncation below 1e-8 there); `2^n` put in the exponent bits.
    #[inline(always)]
    pub(super) fn fast_exp(x: f32) -> f32 {
        const LOG2_E: f32 = std::f32::consts::LOG2_E;
        // ln 2 split so that n * LN2_HI is exact for |n| < 2^9.
        const LN2_HI: f32 = 0.693_145_75;
        const LN2_LO: f32 = 1.428_606_8e-6;
        // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer in plain SSE2
        // arithmetic (`round` / `floor` are libm calls without SSE4.1).
        const ROUND: f32 = 12_582_912.0;
        let x = x.clamp(-87.0, 88.0);
        let n = (x * LOG2_E + ROUND) - ROUND;
        let f = (x - n * LN2_HI) - n * LN2_LO;
        let mut p = 1.0 / 5040.0;
        p = p * f + 1.0 / 720.0;
        p = p * f + 1.0 / 120.0;
        p = p * f + 1.0 / 24.0;
        p = p * f + 1.0 / 6.0;
        p = p * f + 0.5;
        p = p * f + 1.0;
        p = p * f + 1.0;
        let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
        p * scale
    }

    /// `tanh(x) = 1 - 2 / (e^{2x} + 1)`, absolute error about 3e-7 (it is added to 1 in GELU,
    /// so relative accuracy near 0 does not matter). Saturates cleanly: `e^{2x}` is clamped.
    #[inline(always)]
    pub(super) fn fast_tanh(x: f32) -> f32 {
        1.0 - 2.0 / (fast_exp(2.0 * x.clamp(-20.0, 20.0)) + 1.0)
    }

    pub(super) struct Gelu;

    impl CustomOp1 for Gelu {
        fn name(&self) -> &'static str {
            "beatlab-gelu"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
            let x = data(s, l, self.name())?;
            let n = last_dim(l, self.name())?;
            let y = map_rows(x.len(), n, |r0, out| {
                let x = &x[r0 * n..r0 * n + out.len()];
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = 0.5 * v * (1.0 + fast_tanh(GELU_K * (v + GELU_A * v * v * v)));
                }
            });
            Ok((CpuStorage::F32(y), l.shape().clone()))
        }

        fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
            Ok(Some(x.apply_op3_no_bwd(y, &dy.contiguous()?, &GeluGrad)?))
        }
    }

    /// `dy * gelu'(x)`, with `t = tanh(k (x + a x^3))` read back from the forward output
    /// `y = x (1 + t) / 2` where that is well conditioned (`|x| >= 0.01`), so that the
    /// backward pass does not compute the tanh a second time.
    struct GeluGrad;

    impl CustomOp3 for GeluGrad {
        fn name(&self) -> &'static str {
            "beatlab-gelu-grad"
        }

        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let x = data(s1, l1, self.name())?;
            let y = data(s2, l2, self.name())?;
            let dy = data(s3, l3, self.name())?;
            let n = last_dim(l1, self.name())?;
            if y.len() != x.len() || dy.len() != x.len() {
                candle_core::bail!("{}: inputs of different sizes", self.name());
            }
            let dx = map_rows(x.len(), n, |r0, out| {
                let range = r0 * n..r0 * n + out.len();
                let (x, y, dy) = (&x[range.clone()], &y[range.clone()], &dy[range]);
                for (((o, &v), &out), &g) in out.iter_mut().zip(x).zip(y).zip(dy) {
                    let t = if v.abs() >= 0.01 {
                        2.0 * out / v - 1.0
                    } else {
                        fast_tanh(GELU_K * (v + GELU_A * v * v * v))
                    };
                    let du = GELU_K * (1.0 + 3.0 * GELU_A * v * v);
                    *o = g * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du);
                }
            });
            Ok((CpuStorage::F32(dx), l1.shape().clone()))
        }
    }

    /// Sums of the rows of a contiguous `[.., n]` tensor: `[n]`.
    fn column_sums(values: &[f32], n: usize) -> Vec<f32> {
        column_reduce(values.len() / n, n, |c0, sums| {
            for row in values.chunks_exact(n) {
                for (s, &v) in sums.iter_mut().zip(&row[c0..]) {
                    *s += v;
                }
            }
        })
    }

    fn row_len(l: &Layout, v: &Layout, op: &str) -> Result<usize> {
        let n = last_dim(l, op)?;
        if v.dims() != [n] {
            candle_core::bail!("{op}: vector of shape {:?} for rows of {n}", v.dims());
        }
        Ok(n)
    }

    /// `x + b` per row; backward `(dy, column sums of dy)`.
    pub(super) struct AddRow;

    impl CustomOp2 for AddRow {
        fn name(&self) -> &'static str {
            "beatlab-add-row"
        }

        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let x = data(s1, l1, self.name())?;
            let b = data(s2, l2, self.name())?;
            let n = row_len(l1, l2, self.name())?;
            let y = map_rows(x.len(), n, |r0, out| {
                let x = &x[r0 * n..r0 * n + out.len()];
                for (orow, xrow) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                    for ((o, &v), &bv) in orow.iter_mut().zip(xrow).zip(b) {
                        *o = v + bv;
                    }
                }
            });
            Ok((CpuStorage::F32(y), l1.shape().clone()))
        }

        fn bwd(
            &self,
            _x: &Tensor,
            b: &Tensor,
            _y: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let db = dy.contiguous()?.apply_op1_no_bwd(&ColumnSums)?;
            Ok((Some(dy.clone()), Some(db.reshape(b.shape())?)))
        }
    }

    /// `y = x w^T + b` for token rows `x [rows, in]`, a weight `w [out, in]` and a bias `[out]`:
    /// one gemm adding into rows that start as the bias, where candle's matmul followed by
    /// [`AddRow`] zeroed, wrote and re-read the output. Backward: `dx = dy w`, `dw = dy^T x`
    /// (straight into the weight's layout; candle's `x.matmul(w.t())` made `x^T dy` and swept
    /// its transpose once more) and `db` the column sums of `dy`, each only for an argument
    /// that carries a gradient (a frozen weight costs no `dw`).
    pub(super) struct LinearRows;

    impl CustomOp3 for LinearRows {
        fn name(&self) -> &'static str {
            "beatlab-linear"
        }

        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let x = data(s1, l1, self.name())?;
            let w = data(s2, l2, self.name())?;
            let (rows, fan_in) = l1.shape().dims2()?;
            let (fan_out, w_in) = l2.shape().dims2()?;
            let b = data(s3, l3, self.name())?;
            if w_in != fan_in || b.len() != fan_out {
                candle_core::bail!(
                    "{}: rows of {fan_in}, weight {:?}, bias {:?}",
                    self.name(),
                    l2.dims(),
                    l3.dims()
                );
            }
            let mut y = map_rows_from(b, rows * fan_out, |_, _| {});
            // An empty product leaves the bias (x W^T is 0 for an input of no columns).
            if rows > 0 && fan_in > 0 && fan_out > 0 {
                let product = Product {
                    scale: 1.0,
                    accumulate: true,
                    threads: rayon::current_num_threads(),
                };
                gemm_views(
                    (rows, fan_out, fan_in),
                    (&mut y, View::rows(0, fan_out)),
                    (x, View::rows(0, fan_in)),
                    (w, View::rows(0, fan_in).t()),
                    product,
                )?;
            }
            Ok((CpuStorage::F32(y), Shape::from((rows, fan_out))))
        }

        fn bwd(
            &self,
            x: &Tensor,
            w: &Tensor,
            b: &Tensor,
            _y: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let dy = dy.contiguous()?;
            // Detached operands: the gradients need no graph of their own.
            let dx = x.track_op().then(|| dy.matmul(&w.detach())).transpose()?;
            let dw = w
                .track_op()
                .then(|| dy.t()?.matmul(&x.detach()))
                .transpose()?;
            let db = b
                .track_op()
                .then(|| dy.apply_op1_no_bwd(&ColumnSums))
                .transpose()?;
            Ok((dx, dw, db))
        }
    }

    /// `x * w` per row; backward `(dy * w, column sums of dy * x)`.
    pub(super) struct MulRow;

    impl CustomOp2 for MulRow {
        fn name(&self) -> &'static str {
            "beatlab-mul-row"
        }

        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let x = data(s1, l1, self.name())?;
            let w = data(s2, l2, self.name())?;
            let n = row_len(l1, l2, self.name())?;
            let y = map_rows(x.len(), n, |r0, out| {
                let x = &x[r0 * n..r0 * n + out.len()];
                for (orow, xrow) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                    for ((o, &v), &wv) in orow.iter_mut().zip(xrow).zip(w) {
                        *o = v * wv;
                    }
                }
            });
            Ok((CpuStorage::F32(y), l1.shape().clone()))
        }

        fn bwd(
            &self,
            x: &Tensor,
            w: &Tensor,
            _y: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let dy = dy.contiguous()?;
            let dx = dy.apply_op2_no_bwd(w, &MulRow)?;
            let dw = dy.apply_op2_no_bwd(x, &ColumnDots)?;
            Ok((Some(dx), Some(dw)))
        }
    }

    /// Column sums of a contiguous tensor over all rows.
    struct ColumnSums;

    impl CustomOp1 for ColumnSums {
        fn name(&self) -> &'static str {
            "beatlab-column-sums"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
            let x = data(s, l, self.name())?;
            let n = last_dim(l, self.name())?;
            Ok((CpuStorage::F32(column_sums(x, n)), Shape::from(n)))
        }
    }

    /// Column sums of `a * b` (same shapes), without materialising the product.
    struct ColumnDots;

    impl CustomOp2 for ColumnDots {
        fn name(&self) -> &'static str {
            "beatlab-column-dots"
        }

        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let a = data(s1, l1, self.name())?;
            let b = data(s2, l2, self.name())?;
            let n = last_dim(l1, self.name())?;
            if l1.dims() != l2.dims() {
                candle_core::bail!(
                    "{}: shapes {:?} and {:?}",
                    self.name(),
                    l1.dims(),
                    l2.dims()
                );
            }
            let sums = column_reduce(a.len() / n, n, |c0, sums| {
                for (ra, rb) in a.chunks_exact(n).zip(b.chunks_exact(n)) {
                    for ((s, &va), &vb) in sums.iter_mut().zip(&ra[c0..]).zip(&rb[c0..]) {
                        *s += va * vb;
                    }
                }
            });
            Ok((CpuStorage::F32(sums), Shape::from(n)))
        }
    }

    pub(super) struct Softmax;

    impl CustomOp1 for Softmax {
        fn name(&self) -> &'static str {
            "beatlab-softmax"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
            let x = data(s, l, self.name())?;
            let n = last_dim(l, self.name())?;
            let y = map_rows(x.len(), n, |r0, out| {
                let x = &x[r0 * n..r0 * n + out.len()];
                out.copy_from_slice(x);
                out.chunks_exact_mut(n).for_each(softmax_in_place);
            });
            Ok((CpuStorage::F32(y), l.shape().clone()))
        }

        fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
            Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxGrad)?))
        }
    }

    /// `y * (dy - sum(dy * y))` per row.
    struct SoftmaxGrad;

    impl CustomOp2 for SoftmaxGrad {
        fn name(&self) -> &'static str {
            "beatlab-softmax-grad"
        }

        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let y = data(s1, l1, self.name())?;
            let dy = data(s2, l2, self.name())?;
            let n = last_dim(l1, self.name())?;
            let dx = map_row_pairs(self.name(), (y, dy), n, |yr, gr, or| {
                let dot = lane_dot(yr, gr);
                for ((o, &a), &g) in or.iter_mut().zip(yr).zip(gr) {
                    *o = a * (g - dot);
                }
            })?;
            Ok((CpuStorage::F32(dx), l1.shape().clone()))
        }
    }

    /// LayerNorm (`remove_mean`) or RmsNorm normalisation over the last dimension.
    pub(super) struct Normalize {
        pub(super) eps: f64,
        pub(super) remove_mean: bool,
    }

    impl Normalize {
        /// Mean (0 for RmsNorm) and `1 / sqrt(var + eps)` of one row.
        #[inline(always)]
        fn stats(&self, row: &[f32]) -> (f32, f32) {
            let n = row.len() as f32;
            let mean = if self.remove_mean {
                lane_sum(row) / n
            } else {
                0.0
            };
            let mut square = [0f32; LANES];
            let chunks = row.chunks_exact(LANES);
            let tail = chunks.remainder();
            for chunk in chunks {
                for (a, &v) in square.iter_mut().zip(chunk) {
                    *a += (v - mean) * (v - mean);
                }
            }
            for (a, &v) in square.iter_mut().zip(tail) {
                *a += (v - mean) * (v - mean);
            }
            let var = square.iter().sum::<f32>() / n;
            (mean, 1.0 / (var + self.eps as f32).sqrt())
        }
    }

    impl CustomOp1 for Normalize {
        fn name(&self) -> &'static str {
            "beatlab-normalize"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
            let x = data(s, l, self.name())?;
            let n = last_dim(l, self.name())?;
            let y = map_rows(x.len(), n, |r0, out| {
                let x = &x[r0 * n..r0 * n + out.len()];
                for (xr, yr) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
                    let (mean, inv_std) = self.stats(xr);
                    for (o, &v) in yr.iter_mut().zip(xr) {
                        *o = (v - mean) * inv_std;
                    }
                }
            });
            Ok((CpuStorage::F32(y), l.shape().clone()))
        }

        fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
            let grad = NormalizeGrad {
                eps: self.eps,
                remove_mean: self.remove_mean,
            };
            Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &grad)?))
        }
    }

    /// With `y` the normalised row and `r = 1 / sqrt(var + eps)`:
    /// LayerNorm `dx = r * (dy - mean(dy) - y * mean(dy * y))`,
    /// RmsNorm `dx = r * (dy - y * mean(dy * y))`.
    struct NormalizeGrad {
        eps: f64,
        remove_mean: bool,
    }

    impl CustomOp2 for NormalizeGrad {
        fn name(&self) -> &'static str {
            "beatlab-normalize-grad"
        }

        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let x = data(s1, l1, self.name())?;
            let dy = data(s2, l2, self.name())?;
            let n = last_dim(l1, self.name())?;
            let norm = Normalize {
                eps: self.eps,
                remove_mean: self.remove_mean,
            };
            let dx = map_row_pairs(self.name(), (x, dy), n, |xr, gr, or| {
                let (mean, inv_std) = norm.stats(xr);
                let sum_g = lane_sum(gr);
                // sum(dy * y) = r * (sum(dy * x) - mean * sum(dy)).
                let sum_gy = inv_std * (lane_dot(gr, xr) - mean * sum_g);
                let mean_g = if self.remove_mean {
                    sum_g / n as f32
                } else {
                    0.0
                };
                let mean_gy = sum_gy / n as f32;
                for ((o, &v), &g) in or.iter_mut().zip(xr).zip(gr) {
                    let y = (v - mean) * inv_std;
                    *o = inv_std * (g - mean_g - y * mean_gy);
                }
            })?;
            Ok((CpuStorage::F32(dx), l1.shape().clone()))
        }
    }
    /// A matrix inside a flat buffer: element `(i, j)` at `off + i * rs + j * cs`.
    #[derive(Clone, Copy, Debug)]
    struct View {
        off: usize,
        rs: usize,
        cs: usize,
    }

    impl View {
        fn rows(off: usize, rs: usize) -> View {
            View { off, rs, cs: 1 }
        }

        fn t(self) -> View {
            View {
                off: self.off,
                rs: self.cs,
                cs: self.rs,
            }
        }

        /// One past the last element of a `rows x cols` matrix.
        fn end(self, rows: usize, cols: usize) -> usize {
            self.off + (rows - 1) * self.rs + (cols - 1) * self.cs + 1
        }

        /// The same matrix in a sub-slice of the buffer that starts at `start`.
        fn rebase(self, start: usize) -> Result<View> {
            match self.off.checked_sub(start) {
                Some(off) => Ok(View { off, ..self }),
                None => candle_core::bail!("attention kernel: view before its block"),
            }
        }
    }

    /// `dst = scale * lhs * rhs` for an `m x k` times `k x n` product, every matrix a strided
    /// view, on the calling thread (the attention kernels run one per head on the pool).
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        sizes: (usize, usize, usize),
        dst: &mut [f32],
        dv: View,
        lhs: &[f32],
        lv: View,
        rhs: &[f32],
        rv: View,
        scale: f32,
    ) -> Result<()> {
        let product = Product {
            scale,
            accumulate: false,
            threads: 1,
        };
        gemm_views(sizes, (dst, dv), (lhs, lv), (rhs, rv), product)
    }

    /// How [`gemm_views`] combines and runs a product.
    #[derive(Clone, Copy, Debug)]
    struct Product {
        scale: f32,
        /// `dst += scale * lhs * rhs` instead of `dst = scale * lhs * rhs`.
        accumulate: bool,
        /// Threads of the current rayon pool gemm may use (1: the calling thread only).
        threads: usize,
    }

    /// One gemm over strided views. Bounds are checked here, so the unsafe call only ever
    /// touches the three slices; `dst` cannot alias the inputs (it is borrowed mutably).
    fn gemm_views(
        (m, n, k): (usize, usize, usize),
        (dst, dv): (&mut [f32], View),
        (lhs, lv): (&[f32], View),
        (rhs, rv): (&[f32], View),
        product: Product,
    ) -> Result<()> {
        if m == 0 || n == 0 || k == 0 {
            candle_core::bail!("fused kernel: empty product {m}x{k} by {k}x{n}");
        }
        if dv.end(m, n) > dst.len() || lv.end(m, k) > lhs.len() || rv.end(k, n) > rhs.len() {
            candle_core::bail!("fused kernel: view outside its buffer");
        }
        let parallelism = if product.threads > 1 {
            gemm::Parallelism::Rayon(product.threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: the three views were just checked to lie inside their slices, and `dst` is a
        // unique borrow distinct from `lhs` and `rhs`.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr().add(dv.off),
                dv.cs as isize,
                dv.rs as isize,
                product.accumulate,
                lhs.as_ptr().add(lv.off),
                lv.cs as isize,
                lv.rs as isize,
                rhs.as_ptr().add(rv.off),
                rv.cs as isize,
                rv.rs as isize,
                if product.accumulate { 1.0 } else { 0.0 },
                product.scale,
                false,
                false,
                false,
                parallelism,
            );
        }
        Ok(())
    }

    /// Where one (batch, head) pair's matrices are: q `[tq, d]`, k and v `[tk, d]`, the output
    /// (or its gradient) `[tq, d]`.
    #[derive(Clone, Copy, Debug)]
    struct HeadViews {
        q: View,
        k: View,
        v: View,
        out: View,
        /// Start of this head's `[tq, tk]` block in the additive score bias, if there is one.
        bias: Option<usize>,
    }

    /// Sizes shared by every head of one attention call.
    #[derive(Clone, Copy, Debug)]
    struct Dims {
        tq: usize,
        tk: usize,
        d: usize,
        scale: f32,
        causal: bool,
    }

    /// `p = softmax(scale * q k^T + bias)` (masked above the shifted diagonal if causal) into
    /// `p`; the bias block is read at `hv.bias` in `bias`.
    #[inline(always)]
    fn probabilities(
        dims: Dims,
        (q, k, bias): (&[f32], &[f32], Option<&[f32]>),
        hv: HeadViews,
        p: &mut [f32],
    ) -> Result<()> {
        let Dims {
            tq,
            tk,
            d,
            scale,
            causal,
        } = dims;
        matmul(
            (tq, tk, d),
            p,
            View::rows(0, tk),
            q,
            hv.q,
            k,
            hv.k.t(),
            scale,
        )?;
        if let (Some(bias), Some(off)) = (bias, hv.bias) {
            let Some(block) = bias.get(off..off + tq * tk) else {
                candle_core::bail!("attention kernel: score bias block outside its buffer");
            };
            p.iter_mut().zip(block).for_each(|(x, b)| *x += b);
        }
        for (i, row) in p.chunks_exact_mut(tk).enumerate() {
            let visible = if causal {
                (i + 1 + tk - tq).min(tk)
            } else {
                tk
            };
            let (seen, hidden) = row.split_at_mut(visible);
            softmax_in_place(seen);
            hidden.iter_mut().for_each(|x| *x = 0.0);
        }
        Ok(())
    }

    /// The buffers an attention kernel reads: q, k, v (possibly one packed buffer three times)
    /// and the optional additive score bias.
    type Operands<'a> = (&'a [f32], &'a [f32], &'a [f32], Option<&'a [f32]>);

    /// Per-worker scratch of the backward attention kernel: one head's probabilities `p` (when
    /// they are recomputed) and their gradient `dp`, `[tq, tk]` each.
    struct Scratch {
        p: Vec<f32>,
        dp: Vec<f32>,
    }

    /// `f(index, item, scratch)` for every work item of an attention kernel, on the rayon pool
    /// when there are several items and threads, each worker with its own scratch. An item is
    /// the output (or gradient) block of some heads, disjoint from every other item's, and its
    /// heads are computed in order by one thread, so the results do not depend on the thread
    /// count or the scheduling.
    fn for_each_item<T: Send>(
        dims: Dims,
        with_scratch: bool,
        items: Vec<T>,
        f: impl Fn(usize, T, &mut Scratch) -> Result<()> + Sync,
    ) -> Result<()> {
        let square = if with_scratch { dims.tq * dims.tk } else { 0 };
        let scratch = || Scratch {
            p: vec![0f32; square],
            dp: vec![0f32; square],
        };
        if items.len() > 1 && parallel() {
            items
                .into_par_iter()
                .enumerate()
                .try_for_each_init(scratch, |s, (i, item)| simd(|| f(i, item, s)))
        } else {
            let mut s = scratch();
            items
                .into_iter()
                .enumerate()
                .try_for_each(|(i, item)| simd(|| f(i, item, &mut s)))
        }
    }

    /// The softmax probabilities of every head, `[pairs, tq, tk]` in the order of the work items
    /// and their heads, kept by a forward pass for its backward pass (which then skips the
    /// score product and the exponentials). Filled by the op's `cpu_fwd`; freed with the op,
    /// i.e. with the graph that holds it, or at once when no gradient is tracked.
    #[derive(Debug, Default)]
    pub(super) struct SavedProbabilities(Mutex<Option<Arc<[f32]>>>);

    impl SavedProbabilities {
        fn store(&self, probs: Vec<f32>) {
            let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(probs.into());
        }

        fn get(&self) -> Option<Arc<[f32]>> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
    }

    /// Forward pass of every head: `out = softmax(scale q k^T + bias) v`. `out` is split into
    /// `items` equal blocks; `heads_of(i)` lists the heads whose output lies in block `i`, with
    /// views into the whole buffers (`out` included). Returns the probabilities of every head
    /// (see [`SavedProbabilities`]).
    fn attend<I: Iterator<Item = HeadViews>>(
        dims: Dims,
        items: usize,
        heads_of: impl Fn(usize) -> I + Sync,
        (q, k, v, bias): Operands,
        out: &mut [f32],
    ) -> Result<Vec<f32>> {
        if items == 0 && out.is_empty() {
            return Ok(Vec::new());
        }
        if items == 0 || !out.len().is_multiple_of(items) {
            candle_core::bail!("attention kernel: {} outputs in {items} blocks", out.len());
        }
        let block = out.len() / items;
        let square = dims.tq * dims.tk;
        let per_item = heads_of(0).count();
        let mut probs = vec![0f32; items * per_item * square];
        let blocks: Vec<(&mut [f32], &mut [f32])> = out
            .chunks_mut(block)
            .zip(probs.chunks_mut(per_item * square))
            .collect();
        for_each_item(dims, false, blocks, |i, (out, probs), _| {
            let mut heads = 0;
            for (hv, p) in heads_of(i).zip(probs.chunks_exact_mut(square)) {
                probabilities(dims, (q, k, bias), hv, p)?;
                let pv = View::rows(0, dims.tk);
                let ov = hv.out.rebase(i * block)?;
                matmul((dims.tq, dims.d, dims.tk), out, ov, p, pv, v, hv.v, 1.0)?;
                heads += 1;
            }
            if heads != per_item {
                candle_core::bail!("attention kernel: work items of different head counts");
            }
            Ok(())
        })?;
        Ok(probs)
    }

    /// Where one work item's gradients go: one block holding its heads' dq, dk and dv (packed
    /// rows), or a block of each of dq, dk and dv.
    enum GradBlocks<'a> {
        One(&'a mut [f32]),
        Three([&'a mut [f32]; 3]),
    }

    impl GradBlocks<'_> {
        /// The block of dq (0), dk (1) or dv (2).
        fn part(&mut self, which: usize) -> &mut [f32] {
            match self {
                GradBlocks::One(block) => block,
                GradBlocks::Three(blocks) => blocks[which],
            }
        }
    }

    /// Backward pass of every head. Work item `i` writes `blocks[i]`: `heads_of(i)` gives its
    /// heads as (views into q, k, v and `dout`; views of dq, dk and dv relative to the item's
    /// blocks). The probabilities are read from `saved` (what [`attend`] returned for the same
    /// items) or, without it, recomputed.
    fn attend_backward<I: Iterator<Item = (HeadViews, HeadViews)>>(
        dims: Dims,
        heads_of: impl Fn(usize) -> I + Sync,
        (q, k, v, bias): Operands,
        (dout, saved): (&[f32], Option<&[f32]>),
        blocks: Vec<GradBlocks>,
    ) -> Result<()> {
        let Dims {
            tq, tk, d, scale, ..
        } = dims;
        let rows = View::rows(0, tk);
        let square = tq * tk;
        let items = blocks.len();
        let saved = match saved {
            Some(all) if items > 0 && all.len().is_multiple_of(items * square) => {
                Some((all, all.len() / items))
            }
            Some(_) => candle_core::bail!("attention kernel: saved probabilities do not fit"),
            None => None,
        };
        for_each_item(dims, true, blocks, |i, mut grads, s| {
            let Scratch { p: p_buf, dp } = s;
            for (j, (hv, gv)) in heads_of(i).enumerate() {
                let p: &[f32] = match saved {
                    Some((all, per_item)) => {
                        let start = i * per_item + j * square;
                        let Some(p) = all.get(start..start + square) else {
                            candle_core::bail!("attention kernel: saved probabilities too short");
                        };
                        p
                    }
                    None => {
                        probabilities(dims, (q, k, bias), hv, p_buf)?;
                        p_buf
                    }
                };
                // dv = p^T dout
                matmul(
                    (tk, d, tq),
                    grads.part(2),
                    gv.v,
                    p,
                    rows.t(),
                    dout,
                    hv.out,
                    1.0,
                )?;
                // dp = dout v^T, then ds = p * (dp - rowsum(dp * p)), in place
                matmul((tq, tk, d), dp, rows, dout, hv.out, v, hv.v.t(), 1.0)?;
                for (pr, gr) in p.chunks_exact(tk).zip(dp.chunks_exact_mut(tk)) {
                    let dot: f32 = pr.iter().zip(gr.iter()).map(|(a, b)| a * b).sum();
                    for (g, &a) in gr.iter_mut().zip(pr) {
                        *g = a * (*g - dot);
                    }
                }
                // dq = scale ds k, dk = scale ds^T q
                matmul((tq, d, tk), grads.part(0), gv.q, dp, rows, k, hv.k, scale)?;
                matmul(
                    (tk, d, tq),
                    grads.part(1),
                    gv.k,
                    dp,
                    rows.t(),
                    q,
                    hv.q,
                    scale,
                )?;
            }
            Ok(())
        })
    }

    /// Attention over separate contiguous q `[B, H, Tq, D]`, k, v `[B, H, Tk, D]`.
    pub(super) struct Attention {
        pub(super) scale: f32,
        pub(super) causal: bool,
        pub(super) saved: SavedProbabilities,
    }

    impl Attention {
        fn dims(&self, lq: &Layout, lk: &Layout) -> Result<(usize, Dims)> {
            let (&[b, h, tq, d], &[_, _, tk, _]) = (lq.dims(), lk.dims()) else {
                candle_core::bail!("attention: expected 4-d q, k, v");
            };
            let dims = Dims {
                tq,
                tk,
                d,
                scale: self.scale,
                causal: self.causal,
            };
            Ok((b * h, dims))
        }

        /// The views of (batch, head) pair `p`.
        fn head(p: usize, dims: Dims) -> HeadViews {
            let Dims { tq, tk, d, .. } = dims;
            HeadViews {
                q: View::rows(p * tq * d, d),
                k: View::rows(p * tk * d, d),
                v: View::rows(p * tk * d, d),
                out: View::rows(p * tq * d, d),
                bias: None,
            }
        }
    }

    impl CustomOp3 for Attention {
        fn name(&self) -> &'static str {
            "beatlab-attention"
        }

        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let (q, k, v) = (
                data(s1, l1, self.name())?,
                data(s2, l2, self.name())?,
                data(s3, l3, self.name())?,
            );
            let (pairs, dims) = self.dims(l1, l2)?;
            let mut out = vec![0f32; q.len()];
            let heads_of = |p| std::iter::once(Self::head(p, dims));
            let probs = attend(dims, pairs, heads_of, (q, k, v, None), &mut out)?;
            self.saved.store(probs);
            Ok((CpuStorage::F32(out), l1.shape().clone()))
        }

        fn bwd(
            &self,
            q: &Tensor,
            k: &Tensor,
            v: &Tensor,
            _out: &Tensor,
            dout: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            // A custom op takes at most three inputs: k and v travel together.
            let kv = Tensor::cat(&[&k.flatten_all()?, &v.flatten_all()?], 0)?;
            let grad = AttentionGrad {
                scale: self.scale,
                causal: self.causal,
                kv_dims: k.dims().to_vec(),
                saved: self.saved.get(),
            };
            let all = q.apply_op3_no_bwd(&kv, &dout.contiguous()?, &grad)?;
            let (nq, nk) = (q.elem_count(), k.elem_count());
            let dq = all.narrow(0, 0, nq)?.reshape(q.shape())?;
            let dk = all.narrow(0, nq, nk)?.reshape(k.shape())?;
            let dv = all.narrow(0, nq + nk, nk)?.reshape(v.shape())?;
            Ok((Some(dq), Some(dk), Some(dv)))
        }
    }

    /// Gradients of [`Attention`] from (q, k and v concatenated flat, dout), as one flat
    /// buffer `dq | dk | dv`.
    struct AttentionGrad {
        scale: f32,
        causal: bool,
        kv_dims: Vec<usize>,
        /// The forward pass's probabilities, if it kept them.
        saved: Option<Arc<[f32]>>,
    }

    impl CustomOp3 for AttentionGrad {
        fn name(&self) -> &'static str {
            "beatlab-attention-grad"
        }

        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let q = data(s1, l1, self.name())?;
            let kv = data(s2, l2, self.name())?;
            let dout = data(s3, l3, self.name())?;
            let op = Attention {
                scale: self.scale,
                causal: self.causal,
                saved: Default::default(),
            };
            let kv_layout = Layout::contiguous(self.kv_dims.as_slice());
            let (pairs, dims) = op.dims(l1, &kv_layout)?;
            let (nq, nk) = (q.len(), kv.len() / 2);
            let (k, v) = kv.split_at(nk);
            let (qn, kn) = (dims.tq * dims.d, dims.tk * dims.d);
            if nq != pairs * qn || nk != pairs * kn || qn == 0 || kn == 0 {
                candle_core::bail!("{}: q, k and v do not fit", self.name());
            }
            let mut grads = vec![0f32; nq + 2 * nk];
            // Pair p's gradients: its own blocks of dq, dk and dv.
            let (dq, dkv) = grads.split_at_mut(nq);
            let (dk, dv) = dkv.split_at_mut(nk);
            let blocks = dq
                .chunks_mut(qn)
                .zip(dk.chunks_mut(kn))
                .zip(dv.chunks_mut(kn))
                .map(|((dq, dk), dv)| GradBlocks::Three([dq, dk, dv]))
                .collect();
            let heads_of = |p| -> std::iter::Once<(HeadViews, HeadViews)> {
                let hv = Attention::head(p, dims);
                let gv = HeadViews {
                    q: View::rows(0, dims.d),
                    k: View::rows(0, dims.d),
                    v: View::rows(0, dims.d),
                    ..hv
                };
                std::iter::once((hv, gv))
            };
            let saved = self.saved.as_deref();
            attend_backward(dims, heads_of, (q, k, v, None), (dout, saved), blocks)?;
            Ok((CpuStorage::F32(grads), Shape::from(nq + 2 * nk)))
        }
    }

    /// Self-attention over packed rows `[B * T, 3 * H * D]` (see
    /// [`super::packed_self_attention_rows`]); output `[B * T, H * D]`.
    pub(super) struct PackedAttention {
        pub(super) heads: usize,
        pub(super) head_dim: usize,
        pub(super) seq_len: usize,
        pub(super) scale: f32,
        /// Additive score bias `[heads, T, T]`, the same for every sequence; a constant.
        pub(super) bias: Option<Arc<[f32]>>,
        pub(super) saved: SavedProbabilities,
    }

    impl PackedAttention {
        /// Sequences in the input, and the per-head sizes.
        fn dims(&self, l: &Layout) -> Result<(usize, Dims)> {
            let &[rows, width] = l.dims() else {
                candle_core::bail!("packed attention: expected [B * T, 3 * H * D] rows");
            };
            let t = self.seq_len;
            if width != 3 * self.heads * self.head_dim || t == 0 || !rows.is_multiple_of(t) {
                candle_core::bail!("packed attention: rows [{rows}, {width}] do not fit");
            }
            let dims = Dims {
                tq: t,
                tk: t,
                d: self.head_dim,
                scale: self.scale,
                causal: false,
            };
            Ok((rows / t, dims))
        }

        /// Views of the heads of sequence `bi` into the packed input (and its gradient) and
        /// into the merged output (and its gradient).
        fn heads(&self, bi: usize) -> impl Iterator<Item = HeadViews> + use<> {
            let (h, d, t) = (self.heads, self.head_dim, self.seq_len);
            let inner = h * d;
            let biased = self.bias.is_some();
            (0..h).map(move |hi| {
                let row = bi * t * 3 * inner + hi * d;
                HeadViews {
                    q: View::rows(row, 3 * inner),
                    k: View::rows(row + inner, 3 * inner),
                    v: View::rows(row + 2 * inner, 3 * inner),
                    out: View::rows(bi * t * inner + hi * d, inner),
                    bias: biased.then_some(hi * t * t),
                }
            })
        }
    }

    impl CustomOp1 for PackedAttention {
        fn name(&self) -> &'static str {
            "beatlab-packed-attention"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
            let qkv = data(s, l, self.name())?;
            let (b, dims) = self.dims(l)?;
            let inner = self.heads * self.head_dim;
            let mut out = vec![0f32; b * dims.tq * inner];
            let bias = self.bias.as_deref();
            // One work item per sequence: its rows of the output hold all its heads.
            let heads_of = |bi| self.heads(bi);
            let probs = attend(dims, b, heads_of, (qkv, qkv, qkv, bias), &mut out)?;
            self.saved.store(probs);
            Ok((CpuStorage::F32(out), Shape::from((b * dims.tq, inner))))
        }

        fn bwd(&self, qkv: &Tensor, _out: &Tensor, dout: &Tensor) -> Result<Option<Tensor>> {
            let grad = PackedAttentionGrad {
                op: PackedAttention {
                    heads: self.heads,
                    head_dim: self.head_dim,
                    seq_len: self.seq_len,
                    scale: self.scale,
                    bias: self.bias.clone(),
                    saved: Default::default(),
                },
                saved: self.saved.get(),
            };
            Ok(Some(qkv.apply_op2_no_bwd(&dout.contiguous()?, &grad)?))
        }
    }

    /// Gradient of [`PackedAttention`] with respect to its packed input.
    struct PackedAttentionGrad {
        op: PackedAttention,
        /// The forward pass's probabilities, if it kept them.
        saved: Option<Arc<[f32]>>,
    }

    impl CustomOp2 for PackedAttentionGrad {
        fn name(&self) -> &'static str {
            "beatlab-packed-attention-grad"
        }

        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            let qkv = data(s1, l1, self.name())?;
            let dout = data(s2, l2, self.name())?;
            let op = &self.op;
            let (b, dims) = op.dims(l1)?;
            let mut grads = vec![0f32; qkv.len()];
            // One work item per sequence: its rows of the gradient hold dq, dk and dv of all
            // its heads, and no other sequence's.
            let block = qkv.len() / b.max(1);
            let blocks = grads.chunks_mut(block).map(GradBlocks::One).collect();
            let heads_of = |bi: usize| {
                let start = bi * block;
                op.heads(bi).map(move |hv| {
                    let rebase = |v: View| View {
                        off: v.off - start,
                        ..v
                    };
                    let gv = HeadViews {
                        q: rebase(hv.q),
                        k: rebase(hv.k),
                        v: rebase(hv.v),
                        ..hv
                    };
                    (hv, gv)
                })
            };
            let bias = op.bias.as_deref();
            let saved = self.saved.as_deref();
            attend_backward(dims, heads_of, (qkv, qkv, qkv, bias), (dout, saved), blocks)?;
            Ok((CpuStorage::F32(grads), l1.shape().clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fused::{fast_exp, fast_tanh, lane_sum};

    #[test]
    fn lane_sums_cover_every_value_whatever_the_length() {
        // Lengths around the 16 lanes, with a tail and without; integers sum exactly.
        for len in [0usize, 1, 15, 16, 17, 60, 128, 131] {
            let xs: Vec<f32> = (0..len).map(|i| (i % 7) as f32 - 2.0).collect();
            let expected: f32 = xs.iter().sum();
            assert_eq!(lane_sum(&xs), expected, "length {len}");
        }
    }

    #[test]
    fn fast_exp_and_tanh_are_accurate() {
        let mut worst_exp = 0f64;
        let mut worst_tanh = 0f64;
        for i in -40_000..=40_000 {
            let x = i as f32 * 0.002; // -80 .. 80
            let e = f64::from(x).exp();
            worst_exp = worst_exp.max((f64::from(fast_exp(x)) - e).abs() / e);
            let t = f64::from(x).tanh();
            worst_tanh = worst_tanh.max((f64::from(fast_tanh(x)) - t).abs());
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp}");
        assert!(worst_tanh < 1e-6, "tanh absolute error {worst_tanh}");
        assert_eq!(fast_tanh(1e30), 1.0);
        assert_eq!(fast_tanh(-1e30), -1.0);
        assert!(
            fast_tanh(f32::NAN).is_nan(),
            "NaN must propagate, not saturate"
        );
    }
}
