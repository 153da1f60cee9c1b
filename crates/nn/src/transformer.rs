//! A bidirectional pre-norm transformer stack (the encoder and decoder of Beat): multi-head
//! self-attention with one fused q/k/v projection, a GELU MLP, residual dropout and a final
//! LayerNorm.
//!
//! Pre-norm (`x + attn(norm(x))`, then `x + mlp(norm(x))`, plus a final norm) rather than the
//! original post-norm: it trains stably at a fixed learning rate without a warm-up, which is how
//! Beat is trained (AdamW at 1e-4 with a cosine schedule and no warm-up), and it is what the
//! public Beat code uses (x-transformers' `Encoder`, pre-norm by default). The final norm also
//! keeps the latents that go into the vector quantizer at a stable scale.
//!
//! Attention may carry a constant additive score bias shared by every sequence, such as the
//! distance-based [`locality_bias`].

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;

use crate::layers::{
    Activation, LayerNorm, Linear, Mlp, ScoreBias, dropout, packed_self_attention_rows,
};

/// The shape of a transformer stack.
#[derive(Clone, Debug, PartialEq)]
pub struct TransformerConfig {
    /// Token width (model dimension).
    pub width: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of one head; `heads * head_dim` need not equal `width` (the output projection maps
    /// it back).
    pub head_dim: usize,
    /// Hidden width of the MLP.
    pub mlp_hidden: usize,
    /// Dropout probability on the attention and MLP branches (training only).
    pub dropout: f64,
    /// LayerNorm epsilon.
    pub norm_eps: f64,
}

/// Multi-head self-attention: `qkv` projects to `3 * heads * head_dim`, `proj` back to `width`.
#[derive(Clone, Debug)]
pub struct SelfAttention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    pub fn new(width: usize, heads: usize, head_dim: usize, vb: VarBuilder) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            qkv: Linear::new(width, 3 * inner, true, vb.pp("qkv"))?,
            proj: Linear::new(inner, width, true, vb.pp("proj"))?,
            heads,
            head_dim,
        })
    }

    /// `x`: token rows `[B * seq_len, width]` -> `[B * seq_len, width]`, every token attending
    /// to every token of its sequence. All heads come from one q/k/v projection and go through
    /// one attention call ([`packed_self_attention_rows`]). `bias`: an optional additive score
    /// bias `[B or 1, heads or 1, seq_len, seq_len]`.
    pub fn forward(&self, x: &Tensor, seq_len: usize, bias: Option<&ScoreBias>) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        let out = packed_self_attention_rows(
            &qkv,
            seq_len,
            self.heads,
            self.head_dim,
            1.0 / (self.head_dim as f64).sqrt(),
            bias,
        )?;
        self.proj.forward(&out)
    }
}

/// One pre-norm block.
#[derive(Clone, Debug)]
pub struct Block {
    norm1: LayerNorm,
    attn: SelfAttention,
    norm2: LayerNorm,
    mlp: Mlp,
    dropout: f64,
}

impl Block {
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::new(cfg.width, cfg.norm_eps, vb.pp("norm1"))?,
            attn: SelfAttention::new(cfg.width, cfg.heads, cfg.head_dim, vb.pp("attn"))?,
            norm2: LayerNorm::new(cfg.width, cfg.norm_eps, vb.pp("norm2"))?,
            mlp: Mlp::new(
                cfg.width,
                cfg.mlp_hidden,
                Activation::GeluTanh,
                vb.pp("mlp"),
            )?,
            dropout: cfg.dropout,
        })
    }

    /// `x`: token rows `[B * seq_len, width]`. `rng` is `Some` in training (dropout active),
    /// `None` in evaluation. `bias`: see [`SelfAttention::forward`].
    pub fn forward(
        &self,
        x: &Tensor,
        seq_len: usize,
        mut rng: Option<&mut ChaCha8Rng>,
        bias: Option<&ScoreBias>,
    ) -> Result<Tensor> {
        let a = self.attn.forward(&self.norm1.forward(x)?, seq_len, bias)?;
        let x = (x + dropout(&a, self.dropout, rng.as_deref_mut())?)?;
        let m = self.mlp.forward(&self.norm2.forward(&x)?)?;
        x + dropout(&m, self.dropout, rng)?
    }
}

/// `depth` pre-norm blocks followed by a final LayerNorm; weights under `blocks.{i}` and `norm`.
#[derive(Clone, Debug)]
pub struct Transformer {
    blocks: Vec<Block>,
    norm: LayerNorm,
}

impl Transformer {
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = LayerNorm::new(cfg.width, cfg.norm_eps, vb.pp("norm"))?;
        Ok(Self { blocks, norm })
    }

    /// `x`: `[B, T, width]` -> normalised `[B, T, width]`. `bias`: an optional additive
    /// attention score bias `[B or 1, heads or 1, T, T]`, the same in every block.
    ///
    /// Inside, the tokens are rows `[B * T, width]`: every layer but attention is row-wise, and
    /// keeping one layout avoids a reshape per linear layer, which candle's backward pass would
    /// sweep once more each.
    pub fn forward(
        &self,
        x: &Tensor,
        mut rng: Option<&mut ChaCha8Rng>,
        bias: Option<&ScoreBias>,
    ) -> Result<Tensor> {
        let (b, t, w) = x.dims3()?;
        let mut rows = x.reshape((b * t, w))?;
        for block in &self.blocks {
            rows = block.forward(&rows, t, rng.as_deref_mut(), bias)?;
        }
        self.norm.forward(&rows)?.reshape((b, t, w))
    }
}

/// An ALiBi-style locality bias (Press et al., "Train Short, Test Long", 2022) for tokens at
/// `positions` (any unit): head `h` adds `-slope_h * |t_i - t_j|` to the score of query `i` for
/// key `j`, `[1, heads, T, T]` f32. The slopes fall geometrically from `slope` (head 0) by a factor
/// `2^(-8 / heads)` per head, ALiBi's spacing, so the first heads look mostly at their
/// neighbourhood and the last ones almost everywhere.
pub fn locality_bias(
    positions: &[f64],
    heads: usize,
    slope: f64,
    device: &Device,
) -> Result<ScoreBias> {
    let t = positions.len();
    let mut values = Vec::with_capacity(heads * t * t);
    for h in 0..heads {
        let slope_h = slope * (-8.0 * h as f64 / heads as f64).exp2();
        for &ti in positions {
            values.extend(
                positions
                    .iter()
                    .map(|&tj| (-slope_h * (ti - tj).abs()) as f32),
            );
        }
    }
    ScoreBias::new(&Tensor::from_vec(values, (1, heads, t, t), device)?)
}
