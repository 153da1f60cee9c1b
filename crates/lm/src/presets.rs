//! `tiny-*` presets: the real architectures at toy sizes, randomly initialised through a seeded
//! [`ParamStore`], so every stage runs end to end on a laptop CPU in minutes. The vocabulary
//! size comes from the tokenizer trained on the instruction corpus.

use std::str::FromStr;

use beatlab_nn::ParamStore;
use candle_core::{DType, Device};

use crate::backbone::{Backbone, BackboneConfig};
use crate::error::{LmError, Result};
use crate::layers::{Activation, BuildOptions};
use crate::phi3::Phi3Config;
use crate::qwen2::Qwen2Config;
use crate::siglip::{SiglipVision, SiglipVisionConfig};

/// A named backbone preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackbonePreset {
    /// `tiny-qwen2`: Qwen2 layout, hidden 64, 2 layers, 4 query / 2 key-value heads, tied head.
    TinyQwen2,
    /// `tiny-phi3`: Phi-3 layout, hidden 64, 2 layers, 4 heads, separate head.
    TinyPhi3,
}

impl BackbonePreset {
    /// The preset names, as written in specs.
    pub const NAMES: [&'static str; 2] = ["tiny-qwen2", "tiny-phi3"];

    /// The configuration for a tokenizer of `vocab_size` ids.
    pub fn config(self, vocab_size: usize) -> BackboneConfig {
        match self {
            Self::TinyQwen2 => BackboneConfig::Qwen2(tiny_qwen2(vocab_size)),
            Self::TinyPhi3 => BackboneConfig::Phi3(tiny_phi3(vocab_size)),
        }
    }

    /// A randomly initialised backbone whose weights are variables of `store`.
    pub fn build(
        self,
        vocab_size: usize,
        store: &ParamStore,
        dtype: DType,
        device: &Device,
        opts: &BuildOptions,
    ) -> Result<Backbone> {
        Backbone::random(&self.config(vocab_size), store, dtype, device, opts)
    }
}

impl FromStr for BackbonePreset {
    type Err = LmError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tiny-qwen2" => Ok(Self::TinyQwen2),
            "tiny-phi3" => Ok(Self::TinyPhi3),
            other => Err(LmError::config(
                "backbone",
                format!(
                    "preset \"{other}\" is unknown; known presets: {:?}",
                    Self::NAMES
                ),
            )),
        }
    }
}

/// Initialisation std of the tiny presets: `1 / sqrt(hidden)`. Hugging Face's 0.02 is calibrated
/// for hidden sizes in the thousands (0.02 * sqrt(3584) = 1.2: logits of std ~1 at init); at
/// hidden 64 it would give near-flat logits std ~0.16 and a frozen head that caps every logit
/// near +-1, which no LoRA adapter can lift. `1 / sqrt(hidden)` gives a tiny model the logit
/// scale of a real one.
pub const TINY_INIT_STD: f64 = 0.125;

/// Qwen2 at toy size: hidden 64, MLP 176 (Qwen's ~2.7x ratio), 2 layers, 4 query heads sharing
/// 2 key-value heads (so grouped-query attention is exercised), tied embeddings as the small
/// Qwen2.5 checkpoints.
pub fn tiny_qwen2(vocab_size: usize) -> Qwen2Config {
    Qwen2Config {
        vocab_size,
        hidden_size: 64,
        intermediate_size: 176,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        head_dim: None,
        max_position_embeddings: 1024,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
        hidden_act: Activation::Silu,
        use_sliding_window: false,
        sliding_window: Some(1024),
        max_window_layers: Some(2),
        initializer_range: TINY_INIT_STD,
        rope_scaling: None,
    }
}

/// Phi-3 at toy size: hidden 64, MLP 172 (Phi-3-mini's 2.67x ratio), 2 layers, 4 heads,
/// separate output head as Phi-3-mini.
pub fn tiny_phi3(vocab_size: usize) -> Phi3Config {
    Phi3Config {
        vocab_size,
        hidden_size: 64,
        intermediate_size: 172,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(4),
        max_position_embeddings: 1024,
        original_max_position_embeddings: None,
        rope_theta: 10_000.0,
        partial_rotary_factor: None,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: false,
        hidden_act: Activation::Silu,
        sliding_window: None,
        initializer_range: TINY_INIT_STD,
        rope_scaling: None,
    }
}

/// SigLIP at toy size: 64 px images in 8 px patches (64 patch tokens), hidden 64, 2 layers,
/// 4 heads, MLP 128, with the pooling head.
pub fn tiny_siglip() -> SiglipVisionConfig {
    SiglipVisionConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_channels: 3,
        image_size: 64,
        patch_size: 8,
        hidden_act: Activation::GeluTanh,
        layer_norm_eps: 1e-6,
        vision_use_head: true,
    }
}

/// A vision preset by name (`tiny-siglip`, or `siglip-so400m` for the full-size architecture).
pub fn vision_preset(name: &str) -> Result<SiglipVisionConfig> {
    match name {
        "tiny-siglip" => Ok(tiny_siglip()),
        "siglip-so400m" => Ok(SiglipVisionConfig::so400m_patch14_384()),
        other => Err(LmError::config(
            "vision",
            format!(
                "preset \"{other}\" is unknown; known presets: [\"tiny-siglip\", \"siglip-so400m\"]"
            ),
        )),
    }
}

/// A randomly initialised SigLIP tower whose weights are variables of `store`.
pub fn random_siglip(
    config: &SiglipVisionConfig,
    store: &ParamStore,
    dtype: DType,
    device: &Device,
    opts: &BuildOptions,
) -> Result<SiglipVision> {
    SiglipVision::new(config, store.var_builder(dtype, device), opts)
}
