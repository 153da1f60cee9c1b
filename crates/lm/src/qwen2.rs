//! Qwen2 / Qwen2.5 configuration, as in a Hugging Face `config.json` with `model_type: qwen2`.
//!
//! Weight layout: `model.embed_tokens`, `model.layers.N.self_attn.{q,k,v}_proj` (with bias),
//! `self_attn.o_proj`, `mlp.{gate,up,down}_proj`, `input_layernorm`, `post_attention_layernorm`,
//! `model.norm`, and `lm_head` unless `tie_word_embeddings`.

use serde::{Deserialize, Serialize};

use crate::decoder::{DecoderSpec, Layout};
use crate::error::{LmError, Result};
use crate::layers::Activation;

/// The fields of a Qwen2 `config.json` this crate uses (others are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Qwen2Config {
    /// Rows of the embedding table.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the gated MLP.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to `num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Longest context the checkpoint was trained for (informational; RoPE is computed for any
    /// length).
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// RoPE base.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Epsilon of the RMS norms.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// Whether the output head shares the embedding table.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// MLP activation.
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    /// Sliding-window attention (not supported: must be false).
    #[serde(default)]
    pub use_sliding_window: bool,
    /// Window size, used only with `use_sliding_window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Layers using full attention before the window starts (only with `use_sliding_window`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<usize>,
    /// Std of the normal random initialisation of weight matrices and embeddings (only used
    /// when a model is created rather than loaded).
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// RoPE scaling (YaRN etc.; not supported: must be null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
}

fn default_max_positions() -> usize {
    32_768
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_init_range() -> f64 {
    crate::layers::INIT_STD
}
fn default_act() -> Activation {
    Activation::Silu
}

impl Qwen2Config {
    /// Check the configuration and derive the decoder's sizes.
    pub(crate) fn spec(&self) -> Result<DecoderSpec> {
        if self.use_sliding_window {
            return Err(LmError::config(
                "use_sliding_window",
                "is true; sliding-window attention is not supported for Qwen2 (Qwen2.5 checkpoints set it false)",
            ));
        }
        if let Some(scaling) = self.rope_scaling.as_ref().filter(|s| !s.is_null()) {
            return Err(LmError::config(
                "rope_scaling",
                format!("is {scaling}; only plain RoPE (rope_scaling null) is supported"),
            ));
        }
        let kv_heads = self.num_key_value_heads.unwrap_or(self.num_attention_heads);
        let head_dim = check_heads(
            self.hidden_size,
            self.num_attention_heads,
            kv_heads,
            self.head_dim,
        )?;
        check_init_range(self.initializer_range)?;
        check_positive(&[
            ("vocab_size", self.vocab_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
        ])?;
        Ok(DecoderSpec {
            layout: Layout::Qwen2,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: kv_heads,
            head_dim,
            rotary_dim: head_dim,
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            tie_word_embeddings: self.tie_word_embeddings,
            hidden_act: self.hidden_act,
            initializer_range: self.initializer_range,
            sliding_window: None,
        })
    }
}

/// Validate head counts; returns the head width.
pub(crate) fn check_heads(
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: Option<usize>,
) -> Result<usize> {
    check_positive(&[
        ("hidden_size", hidden),
        ("num_attention_heads", heads),
        ("num_key_value_heads", kv_heads),
    ])?;
    if !heads.is_multiple_of(kv_heads) {
        return Err(LmError::config(
            "num_key_value_heads",
            format!("= {kv_heads} must divide num_attention_heads = {heads}"),
        ));
    }
    let head_dim = match head_dim {
        Some(d) => d,
        None => {
            if !hidden.is_multiple_of(heads) {
                return Err(LmError::config(
                    "num_attention_heads",
                    format!("= {heads} must divide hidden_size = {hidden}"),
                ));
            }
            hidden / heads
        }
    };
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(LmError::config(
            "head_dim",
            format!("= {head_dim} must be even and positive (rotary embedding pairs channels)"),
        ));
    }
    Ok(head_dim)
}

pub(crate) fn check_init_range(std: f64) -> Result<()> {
    if std.is_finite() && std > 0.0 {
        Ok(())
    } else {
        Err(LmError::config(
            "initializer_range",
            format!("must be a positive number, found {std}"),
        ))
    }
}

pub(crate) fn check_positive(fields: &[(&str, usize)]) -> Result<()> {
    for (name, value) in fields {
        if *value == 0 {
            return Err(LmError::config(*name, "must be at least 1, found 0"));
        }
    }
    Ok(())
}
