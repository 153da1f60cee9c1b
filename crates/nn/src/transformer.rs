//! A bidirectional pre-norm transformer stack (the encoder and decoder of Beat): multi-head
//! self-attention with one fused q/k/v projection, a GELU MLP, residual dropout and a final
//! LayerNorm.
//!
//! Pre-norm (`x + attn(norm(x))`, then `x + mlp(norm(x))`, plus a final norm) rather than the
//! original post-norm: it trains stably at a fixed learning rate without a warm-up, which is how
//! Beat is trained (AdamW at 1e-4 with a cosine schedule and no warm-up), and it is what the
//! public Beat code uses (x-transformers' `Encoder`, pre-norm by default). The final norm also
//! keeps the latents that go into the vector quantizer at a stable scale.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;

use crate::layers::{Activation, LayerNorm, Linear, Mlp, attention, dropout};

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

    /// `x`: `[B, T, width]` -> `[B, T, width]`, every token attending to every token.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, d) = (self.heads, self.head_dim);
        // One projection for q, k and v, then one copy into [3, B, H, T, D] so that each of them
        // is a contiguous [B, H, T, D] block: all heads go through one batched matmul.
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, t, 3, h, d))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let q = qkv.get(0)?;
        let k = qkv.get(1)?;
        let v = qkv.get(2)?;
        let out = attention(&q, &k, &v, None, 1.0 / (d as f64).sqrt())?;
        // [B, H, T, D] -> [B, T, H*D]: the reshape makes the one copy this layout change needs.
        let out = out.transpose(1, 2)?.reshape((b, t, h * d))?;
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
            mlp: Mlp::new(cfg.width, cfg.mlp_hidden, Activation::Gelu, vb.pp("mlp"))?,
            dropout: cfg.dropout,
        })
    }

    /// `rng` is `Some` in training (dropout active), `None` in evaluation.
    pub fn forward(&self, x: &Tensor, mut rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let a = self.attn.forward(&self.norm1.forward(x)?)?;
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

    /// `x`: `[B, T, width]` -> normalised `[B, T, width]`.
    pub fn forward(&self, x: &Tensor, mut rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let mut x = x.clone();
        for block in &self.blocks {
            x = block.forward(&x, rng.as_deref_mut())?;
        }
        self.norm.forward(&x)
    }
}
