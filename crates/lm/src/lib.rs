//! Trainable multimodal language-model parts for beatlab: Qwen2 and Phi-3 decoders and the
//! SigLIP vision tower, built only from differentiable candle ops (so every weight gets a
//! gradient, unlike candle-transformers' inference models), with LoRA adapters, vocabulary
//! growth, a byte-level BPE tokenizer, `tiny-*` presets and offline-first checkpoint loading
//! with Hugging Face weight names; and a BERT encoder (candle-transformers', inference only)
//! for BERTScore.

pub mod backbone;
pub mod bert;
pub mod checkpoint;
mod decoder;
pub mod error;
pub mod hub;
pub mod layers;
pub mod lora;
pub mod loss;
pub mod phi3;
pub mod presets;
pub mod qwen2;
pub mod siglip;
pub mod tokenizer;
mod vocab;

pub use backbone::{Architecture, Backbone, BackboneConfig};
pub use bert::{BertScore, BertScorer};
pub use error::{LmError, Result};
pub use hub::{LoadedBackbone, ModelSource, load_backbone, load_siglip};
pub use layers::{Activation, BuildOptions};
pub use lora::{Lora, LoraConfig};
pub use loss::next_token_loss;
pub use phi3::Phi3Config;
pub use presets::BackbonePreset;
pub use qwen2::Qwen2Config;
pub use siglip::{SiglipVision, SiglipVisionConfig, VisionOutput};
pub use tokenizer::{LmTokenizer, SPECIAL_TOKENS, Special};
