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

/// An additive attention score bias: `[B or 1, H or 1, Tq, Tk]` values added to the scores
/// (0 where attention is allowed, `-inf` or a large negative where not; a leading size of 1 is
/// shared by every sequence or head). A constant: no gradient flows into it.
///
/// Build it once per forward pass and hand it to every layer: on the CPU its values are
/// converted to the fused kernels' f32 blocks here, once, rather than at every attention call.
#[derive(Clone, Debug)]
pub struct ScoreBias {
    tensor: Tensor,
    /// The values as the fused CPU kernels read them (CPU tensors only).
    blocks: Option<fused::BiasBlocks>,
}

impl ScoreBias {
    /// `bias`: `[B or 1, H or 1, Tq, Tk]`, any float dtype, detached from the graph.
    pub fn new(bias: &Tensor) -> Result<Self> {
        let tensor = bias.detach();
        let Ok((mb, mh, mq, mk)) = tensor.dims4() else {
            candle_core::bail!(
                "score bias: expected [B or 1, H or 1, Tq, Tk], got {:?}",
                tensor.dims()
            );
        };
        let blocks = if tensor.device().is_cpu() {
            let values: Vec<f32> = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            Some(fused::BiasBlocks {
                values: values.into(),
                dims: [mb, mh, mq, mk],
            })
        } else {
            None
        };
        Ok(Self { tensor, blocks })
    }

    /// The bias as a tensor `[B or 1, H or 1, Tq, Tk]`.
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// The fused kernels' blocks, if they serve attention of this shape.
    fn blocks_for(&self, shape: (usize, usize, usize, usize)) -> Option<fused::BiasBlocks> {
        self.blocks.as_ref().filter(|b| b.fits(shape)).cloned()
    }

    /// The bias in `dtype`, to add to scores `[B, H, Tq, Tk]` (the composed path).
    fn scores_term(&self, dtype: DType) -> Result<Tensor> {
        self.tensor.to_dtype(dtype)
    }
}

/// Whether a score bias of `dims` `[B or 1, H or 1, Tq, Tk]` serves attention of `b` sequences
/// of `h` heads, `tq` queries and `tk` keys.
fn bias_fits(dims: &[usize], (b, h, tq, tk): (usize, usize, usize, usize)) -> bool {
    let &[mb, mh, mq, mk] = dims else {
        return false;
    };
    (mb == b || mb == 1) && (mh == h || mh == 1) && (mq, mk) == (tq, tk)
}

/// Scaled-dot-product attention for all heads of a batch at once.
///
/// `q`: `[B, H, Tq, D]`, `k` and `v`: `[B, H, Tk, D]`. `bias`, if any, is added to the scores
/// and must broadcast to `[B, H, Tq, Tk]`. Returns `[B, H, Tq, D]`, differentiable with respect
/// to q, k and v.
///
/// On the CPU in f32, without a bias or with one shaped `[B or 1, H or 1, Tq, Tk]`, this is one
/// fused op (per-head matrix products straight from the gemm kernels, the bias added to each
/// head's scores, the probabilities kept for the backward pass: `B x H x Tq x Tk` values for as
/// long as the graph lives); otherwise the batched matmuls of candle with the differentiable
/// [`softmax_last_dim`].
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&ScoreBias>,
    scale: f64,
) -> Result<Tensor> {
    attention_with(q, k, v, scale, false, bias)
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
    bias: Option<&ScoreBias>,
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
    let fusable = fused_cpu(q) && fused_cpu(k) && fused_cpu(v);
    let blocks = bias.and_then(|bias| bias.blocks_for((b, h, tq, tk)));
    if fusable && (bias.is_none() || blocks.is_some()) {
        let op = fused::Attention {
            scale: scale as f32,
            causal,
            bias: blocks,
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
    let scores = match (bias, causal) {
        (Some(bias), _) => scores.broadcast_add(&bias.scores_term(scores.dtype())?)?,
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
/// `bias`, when given, is added to the scores: `[B or 1, heads or 1, T, T]` (e.g. a
/// position-dependent bias shared by every sequence).
pub fn packed_self_attention(
    qkv: &Tensor,
    heads: usize,
    head_dim: usize,
    scale: f64,
    bias: Option<&ScoreBias>,
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
    bias: Option<&ScoreBias>,
) -> Result<Tensor> {
    let (rows, width) = qkv.dims2()?;
    if width != 3 * heads * head_dim || seq_len == 0 || !rows.is_multiple_of(seq_len) {
        candle_core::bail!(
            "packed attention: [{rows}, {width}] is not [B * {seq_len}, 3 x {heads} heads x {head_dim}]"
        );
    }
    let b = rows / seq_len;
    let shape = (b, heads, seq_len, seq_len);
    if let Some(bias) = bias
        && !bias_fits(bias.tensor.dims(), shape)
    {
        candle_core::bail!(
            "packed attention: score bias {:?} does not fit [{b} or 1, {heads} heads or 1, {seq_len}, {seq_len}]",
            bias.tensor.dims()
        );
    }
    if fused_cpu(qkv) {
        let op = fused::PackedAttention {
            heads,
            head_dim,
            seq_len,
            scale: scale as f32,
            bias: bias.and_then(|bias| bias.blocks_for(shape)),
            saved: Default::default(),
        };
        return qkv.contiguous()?.apply_op1(op);
    }
    let qkv = qkv
        .reshape((b, seq_len, 3, heads, head_dim))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    let out = attention(&qkv.get(0)?, &qkv.get(1)?, &qkv.get(2)?, bias, scale)?;
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

mod fused;

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
