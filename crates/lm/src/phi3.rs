//! Phi-3 configuration, as in a Hugging Face `config.json` with `model_type: phi3`
//! (Phi-3-mini-4k layout).
//!
//! Weight layout: `model.embed_tokens`, `model.layers.N.self_attn.qkv_proj` (fused, no bias),
//! `self_attn.o_proj`, `mlp.gate_up_proj` (fused), `mlp.down_proj`, `input_layernorm`,
//! `post_attention_layernorm`, `model.norm`, `lm_head`. Long-context variants (`rope_scaling`
//! `longrope` / `su`, the 128k checkpoints) are rejected rather than run with wrong positions.

use serde::{Deserialize, Serialize};

use crate::decoder::{DecoderSpec, Layout};
use crate::error::{LmError, Result};
use crate::layers::Activation;
use crate::qwen2::{check_heads, check_init_range, check_positive};

/// The fields of a Phi-3 `config.json` this crate uses (others are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phi3Config {
    /// Rows of the embedding table.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the gated MLP (the fused `gate_up_proj` has twice this many rows).
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads; defaults to `num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Longest context (informational).
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Context length of pre-training, present in long-context configs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    /// RoPE base.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Fraction of each head's channels that rotate (the rest pass through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// Epsilon of the RMS norms.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// Whether the output head shares the embedding table.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// MLP activation.
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    /// Attention window: keys this many or more positions back are masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Std of the normal random initialisation of weight matrices and embeddings (only used
    /// when a model is created rather than loaded).
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// RoPE scaling (`longrope` / `su`; not supported: must be null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
}

fn default_max_positions() -> usize {
    4096
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_eps() -> f64 {
    1e-5
}
fn default_init_range() -> f64 {
    crate::layers::INIT_STD
}
fn default_act() -> Activation {
    Activation::Silu
}

impl Phi3Config {
    /// Check the configuration and derive the decoder's sizes.
    pub(crate) fn spec(&self) -> Result<DecoderSpec> {
        if let Some(scaling) = self.rope_scaling.as_ref().filter(|s| !s.is_null()) {
            let kind = scaling
                .get("type")
                .or_else(|| scaling.get("rope_type"))
                .map(|t| t.to_string())
                .unwrap_or_else(|| scaling.to_string());
            return Err(LmError::config(
                "rope_scaling",
                format!(
                    "of type {kind} is not supported; only plain RoPE (rope_scaling null, \
                     the Phi-3-mini-4k checkpoints) is implemented"
                ),
            ));
        }
        let kv_heads = self.num_key_value_heads.unwrap_or(self.num_attention_heads);
        let head_dim = check_heads(self.hidden_size, self.num_attention_heads, kv_heads, None)?;
        check_init_range(self.initializer_range)?;
        check_positive(&[
            ("vocab_size", self.vocab_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
        ])?;
        let rotary_dim = match self.partial_rotary_factor {
            None => head_dim,
            Some(f) => {
                let dim = (f * head_dim as f64) as usize;
                if !(f > 0.0 && f <= 1.0) || dim == 0 || !dim.is_multiple_of(2) {
                    return Err(LmError::config(
                        "partial_rotary_factor",
                        format!(
                            "= {f} must be in (0, 1] and give an even number of rotated channels \
                             (head_dim {head_dim} gives {dim})"
                        ),
                    ));
                }
                dim
            }
        };
        if self.sliding_window == Some(0) {
            return Err(LmError::config(
                "sliding_window",
                "must be at least 1, found 0",
            ));
        }
        Ok(DecoderSpec {
            layout: Layout::Phi3,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: kv_heads,
            head_dim,
            rotary_dim,
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            tie_word_embeddings: self.tie_word_embeddings,
            hidden_act: self.hidden_act,
            initializer_range: self.initializer_range,
            sliding_window: self.sliding_window,
        })
    }
}
