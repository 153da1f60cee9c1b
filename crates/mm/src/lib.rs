//! HeartcareGPT assembled for beatlab: the DSPA projectors ([`projector`]), the multimodal chat
//! sequence with spliced ECG embeddings ([`sequence`]), the model that ties Beat, SigLIP and a
//! Qwen2 / Phi-3 backbone together with per-part training and saving ([`model`]), the encoding
//! of ECG inputs ([`encode`]), and likelihood scoring and greedy generation ([`generate`]).
//! Beside Beat, the signal stream may be encoded by a GEM / anyECG-chat style ECG ViT
//! ([`ecg_vit`]), and take anyECG-chat's chunked, reduced-lead recordings ([`flexible`]).

pub mod ecg_vit;
pub mod encode;
pub mod error;
pub mod flexible;
pub mod generate;
pub mod input;
pub mod model;
pub mod parts;
pub mod projector;
pub mod sequence;

pub use ecg_vit::{EcgVit, EcgVitConfig, PatchLayout};
pub use error::{MmError, Result};
pub use flexible::FlexibleTokens;
pub use generate::Generation;
pub use input::{EcgInput, TILES_PER_IMAGE, pixels_from_image, render_image_input};
pub use model::{
    BackboneSource, CodeVocab, Example, ForwardOutput, HeartcareConfig, HeartcareModel,
    MissingModality, ModelSpec, Prepared, SignalInput, StepStats, VisionSource, lora_targets_for,
};
pub use parts::{PROJECTORS, Part};
pub use projector::{ImageProjector, SignalProjector};
pub use sequence::{
    Batch, Block, BlockContent, ChatTokens, Encoded, Row, Splice, block_order, collate, layout_row,
};
