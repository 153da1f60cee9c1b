//! HeartcareGPT assembled: Beat (signal stream), SigLIP (image stream), the DSPA projectors and
//! a Qwen2 / Phi-3 backbone with LoRA, plus the tokenizer and the chat sequence.
//!
//! **Parts and freezing.** Every part keeps its weights in a [`ParamStore`] of its own (see
//! [`Part`]), seeded from the model seed and the part's name. [`HeartcareModel::set_trainable`]
//! declares what a stage trains; everything else is cut from the autograd graph, so a backward
//! pass computes gradients for exactly the declared parts:
//! - Beat and the vision tower: their outputs are detached unless declared;
//! - the backbone's own weights: built detached unless declared;
//! - LoRA: attached as adapters when declared; otherwise folded into the base weights as
//!   constants (a fresh adapter folds to nothing, so warm-up runs the plain backbone);
//! - "codes" mode's `<|ecg_k|>` rows: served from the `projector.signal` store when declared,
//!   else from a detached snapshot of it.
//!
//! The backbone (and the vision tower) is therefore rebuilt from its stores when the declared
//! set changes what it needs, and after parts are loaded; for a checkpoint backbone that
//! re-reads the weight files (a second or so for a small model, once per stage).
//!
//! **Special tokens.** The marker rows (`<image_start>`, `<|user|>`, ...) belong to the base
//! embedding table, which is frozen in every stage unless the backbone itself is trained; then
//! [`HeartcareModel::mask_frozen_gradients`] zeroes their gradient rows so they stay as they
//! were (paper: special-token embeddings frozen). Ids the tokenizer has beyond the checkpoint's
//! table get rows of their own in a private store no optimiser sees.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use beatlab_heartcare::instruct::Item;
use beatlab_lm::hub::{ModelSource, load_backbone, load_siglip, locate};
use beatlab_lm::{
    Architecture, Backbone, BackboneConfig, BackbonePreset, BuildOptions, LmError, LmTokenizer,
    Lora, LoraConfig, SiglipVision, SiglipVisionConfig, next_token_loss,
};
use beatlab_nn::checkpoint::{restore_training_state, training_state};
use beatlab_nn::optim::{AdamW, clip_grad_norm};
use beatlab_nn::params::named_rng;
use beatlab_nn::{Beat, BeatConfig, ParamStore};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Init;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::ecg_vit::{EcgVit, EcgVitConfig};
use crate::error::{MmError, Result};
use crate::flexible::FlexibleTokens;
use crate::input::{EcgInput, TILES_PER_IMAGE};
use crate::parts::{self, Part};
use crate::projector::{ImageProjector, SignalProjector};
use crate::sequence::{Batch, ChatTokens, Encoded, Row, collate, item_name, layout_row};

/// What the signal stream feeds the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalInput {
    /// Beat's quantized latents through the signal projector (paper).
    Latents,
    /// Beat's code ids as added vocabulary tokens `<|ecg_k|>` (earlier release).
    Codes,
}

/// What to do with an input whose modality the model was built without.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingModality {
    /// Refuse the item.
    Error,
    /// Leave the input out of the sequence (modality ablations over a mixed data set).
    Drop,
}

/// The knobs of the multimodal assembly. `Default` is the paper's (§1.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartcareConfig {
    /// Linear + GELU blocks of the signal projector (paper: 1).
    pub signal_depth: usize,
    /// Linear layers of the image projector (paper: 2).
    pub image_depth: usize,
    /// Tokens each image feature becomes (paper: 2).
    pub image_tokens: usize,
    /// Projected latents (paper) or code tokens (earlier release).
    pub signal_input: SignalInput,
    /// 12-lead mode: each image is 12 lead tiles, one feature (and `image_tokens` tokens) each.
    pub tiles: bool,
    /// The signal stream exists (modality ablation: image-only models set it false).
    pub signal: bool,
    /// The image stream exists (signal-only models set it false).
    pub image: bool,
    /// Inputs of a stream the model lacks: an error, or left out.
    pub missing_modality: MissingModality,
    /// Longest row in tokens (see [`crate::sequence`] for how longer items are truncated).
    pub max_seq_len: usize,
    /// Width of precomputed signal latents when the model has no Beat (Beat's width otherwise).
    pub signal_feature_dim: usize,
    /// Width of precomputed image features when the model has no vision tower (the tower's
    /// width otherwise; SigLIP so400m: 1152).
    pub image_feature_dim: usize,
    /// Epsilon of the signal projector's LayerNorm (PyTorch's default).
    pub layer_norm_eps: f64,
    /// Most chunks of one signal input (anyECG-chat's long recordings), each after a learned
    /// chunk-position token (see [`crate::flexible`]); 0 = single windows, no such tokens.
    pub max_chunks: usize,
    /// Every signal block starts with a lead-mask token (reduced-lead recordings).
    pub lead_mask: bool,
}

impl Default for HeartcareConfig {
    fn default() -> Self {
        Self {
            signal_depth: 1,
            image_depth: 2,
            image_tokens: 2,
            signal_input: SignalInput::Latents,
            tiles: false,
            signal: true,
            image: true,
            missing_modality: MissingModality::Error,
            max_seq_len: 384,
            signal_feature_dim: 128,
            image_feature_dim: 1152,
            layer_norm_eps: 1e-5,
            max_chunks: 0,
            lead_mask: false,
        }
    }
}

impl HeartcareConfig {
    /// Check ranges.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("signal_depth", self.signal_depth),
            ("image_depth", self.image_depth),
            ("image_tokens", self.image_tokens),
            ("signal_feature_dim", self.signal_feature_dim),
            ("image_feature_dim", self.image_feature_dim),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(MmError::config(field, "is 0, expected at least 1"));
            }
        }
        // `<|user|>`, `<|assistant|>`, one answer token and room to predict it.
        if self.max_seq_len < 4 {
            return Err(MmError::config(
                "max_seq_len",
                format!("= {} is too short; at least 4 positions", self.max_seq_len),
            ));
        }
        if !self.signal && !self.image {
            return Err(MmError::config(
                "signal / image",
                "are both false; the model needs at least one ECG stream",
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(MmError::config(
                "layer_norm_eps",
                format!("= {} must be a finite number > 0", self.layer_norm_eps),
            ));
        }
        Ok(())
    }

    /// Image features per image: 12 in 12-lead mode, else 1.
    pub fn features_per_image(&self) -> usize {
        if self.tiles { TILES_PER_IMAGE } else { 1 }
    }
}

/// Where the backbone comes from.
#[derive(Debug, Clone)]
pub enum BackboneSource {
    /// A `tiny-*` preset, randomly initialised (seeded), vocabulary from the tokenizer.
    Preset(BackbonePreset),
    /// Any configuration, randomly initialised (seeded).
    Random(BackboneConfig),
    /// A Qwen2 / Phi-3 checkpoint; its weights are constants (LoRA and projectors train).
    Checkpoint(ModelSource),
}

/// Where the vision tower comes from.
#[derive(Debug, Clone)]
pub enum VisionSource {
    /// No tower: image inputs must be precomputed features (or the image stream is off).
    None,
    /// A randomly initialised tower (seeded), e.g. `tiny_siglip()`.
    Random(SiglipVisionConfig),
    /// A SigLIP checkpoint (frozen).
    Checkpoint(ModelSource),
}

/// Everything needed to build a [`HeartcareModel`].
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The multimodal knobs.
    pub config: HeartcareConfig,
    /// The language model.
    pub backbone: BackboneSource,
    /// LoRA adapters on the backbone. Target names of either family are accepted and mapped
    /// to the backbone's layout (see [`lora_targets_for`]).
    pub lora: Option<LoraConfig>,
    /// The image encoder.
    pub vision: VisionSource,
    /// Beat; `None` when signal inputs arrive as precomputed latents (a trained Beat is
    /// restored into the `beat` part with [`HeartcareModel::load_parts`]).
    pub beat: Option<BeatConfig>,
    /// An ECG ViT (GEM / anyECG-chat) that encodes the signal stream instead of Beat (Beat,
    /// when also given, stays for its own stage and its prediction head).
    pub vit: Option<EcgVitConfig>,
    /// Seeds every randomly initialised part.
    pub seed: u64,
    /// Dtype of the backbone and vision tower (projectors, LoRA and Beat keep f32 weights).
    pub dtype: DType,
}

/// LoRA target names mapped to `arch`'s layout: Phi-3 fuses `q_proj`, `k_proj`, `v_proj` into
/// `qkv_proj` and `gate_proj`, `up_proj` into `gate_up_proj` (so asking for any of them adapts
/// the fused layer), Qwen2 splits them back. Order kept, duplicates removed.
pub fn lora_targets_for(arch: Architecture, targets: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for target in targets {
        let mapped: Vec<&str> = match (arch, target.as_str()) {
            (Architecture::Phi3, "q_proj" | "k_proj" | "v_proj") => vec!["qkv_proj"],
            (Architecture::Phi3, "gate_proj" | "up_proj") => vec!["gate_up_proj"],
            (Architecture::Qwen2, "qkv_proj") => vec!["q_proj", "k_proj", "v_proj"],
            (Architecture::Qwen2, "gate_up_proj") => vec!["gate_proj", "up_proj"],
            (_, other) => vec![other],
        };
        for m in mapped {
            if !out.iter().any(|t| t == m) {
                out.push(m.to_string());
            }
        }
    }
    out
}

/// The `<|ecg_k|>` tokens of "codes" mode: one token per (level, code), or per code when the
/// levels share one codebook. A signal block lists, query by query, the code of each level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeVocab {
    /// Id of the first code token.
    pub first_id: u32,
    /// Quantization levels.
    pub levels: usize,
    /// Codes per codebook.
    pub codebook_size: usize,
    /// Whether all levels share one codebook (and so one set of tokens).
    pub shared: bool,
}

impl CodeVocab {
    /// Number of code tokens.
    pub fn len(&self) -> usize {
        if self.shared {
            self.codebook_size
        } else {
            self.levels * self.codebook_size
        }
    }

    /// Whether there are no code tokens (never, for a valid Beat).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The token of `code` at `level`.
    pub fn token(&self, level: usize, code: u32) -> u32 {
        let offset = if self.shared {
            0
        } else {
            level * self.codebook_size
        };
        self.first_id + (offset + code as usize) as u32
    }
}

/// One item and the tensors of its ECGs, one input per entry of `item.label`.
#[derive(Debug, Clone, Copy)]
pub struct Example<'a> {
    /// The instruction item.
    pub item: &'a Item,
    /// Its inputs, aligned with `item.filename` / `item.label`.
    pub inputs: &'a [EcgInput],
}

impl<'a> Example<'a> {
    /// Pair an item with its inputs.
    pub fn new(item: &'a Item, inputs: &'a [EcgInput]) -> Self {
        Self { item, inputs }
    }
}

/// A batch laid out and collated, with its projected embeddings.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The projected embeddings and blocks.
    pub encoded: Encoded,
    /// One row per item.
    pub rows: Vec<Row>,
    /// The padded tensors.
    pub batch: Batch,
}

/// What a training forward pass gives.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// `[B, T, V]` logits.
    pub logits: Tensor,
    /// Mean next-token cross-entropy over every answer token (and `<|end|>`) of the batch.
    pub loss: Tensor,
    /// Answer tokens the loss averages over.
    pub target_tokens: usize,
    /// The rows (layout, truncation counts).
    pub rows: Vec<Row>,
}

/// What one optimiser step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The loss before the step.
    pub loss: f32,
    /// Global gradient norm before clipping, when clipping was asked for.
    pub grad_norm: Option<f64>,
    /// Whether the step was skipped because the gradient norm was not finite.
    pub skipped: bool,
    /// Answer tokens in the batch.
    pub target_tokens: usize,
}

const CODE_ROWS: &str = "ecg_codes";
const ADDED_ROWS: &str = "added_tokens";

enum BackboneOrigin {
    Store(BackboneConfig),
    Checkpoint(ModelSource),
}

enum VisionOrigin {
    Store(SiglipVisionConfig),
    Checkpoint(ModelSource),
}

struct Stores {
    signal: ParamStore,
    image: ParamStore,
    lora: ParamStore,
    backbone: ParamStore,
    vision: ParamStore,
    beat: ParamStore,
    vit: ParamStore,
    /// Rows for tokenizer ids past the backbone's table: never trained, never saved (they are
    /// reproduced from the seed).
    added: ParamStore,
}

/// The assembled multimodal model.
pub struct HeartcareModel {
    pub(crate) config: HeartcareConfig,
    lora_config: Option<LoraConfig>,
    backbone_origin: BackboneOrigin,
    backbone_config: BackboneConfig,
    vision_origin: Option<VisionOrigin>,
    beat_config: Option<BeatConfig>,
    vit_config: Option<EcgVitConfig>,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    stores: Stores,
    pub(crate) tokenizer: LmTokenizer,
    pub(crate) chat: ChatTokens,
    backbone: Backbone,
    pub(crate) vision: Option<SiglipVision>,
    pub(crate) beat: Option<Beat>,
    pub(crate) vit: Option<EcgVit>,
    pub(crate) flexible: Option<FlexibleTokens>,
    pub(crate) signal_proj: Option<SignalProjector>,
    pub(crate) image_proj: Option<ImageProjector>,
    pub(crate) codes: Option<CodeVocab>,
    pub(crate) trainable: BTreeSet<Part>,
    training: AtomicBool,
}

impl std::fmt::Debug for HeartcareModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartcareModel")
            .field("config", &self.config)
            .field("backbone", &self.backbone)
            .field("vision", &self.vision.is_some())
            .field("beat", &self.beat.is_some())
            .field("vit", &self.vit.is_some())
            .field("trainable", &self.trainable)
            .finish()
    }
}

fn part_seed(seed: u64, part: &str) -> u64 {
    named_rng(seed, part).next_u64()
}

/// Create every variable of `from` in `to` (same name, shape, dtype) holding a copy of its value.
fn copy_store(from: &ParamStore, to: &ParamStore) -> Result<()> {
    for (name, var) in from.vars() {
        let vb = to.var_builder(var.dtype(), var.device());
        vb.get_with_hints(var.shape(), &name, Init::Const(0.0))?;
        let target = to
            .get(&name)
            .expect("a VarBuilder over a ParamStore creates the variable it returns");
        target.set(&var.as_tensor().copy()?)?;
    }
    Ok(())
}

/// The tokenizer given, else the one a checkpoint backbone ships.
fn resolve_tokenizer(
    tokenizer: Option<LmTokenizer>,
    backbone: &BackboneSource,
) -> Result<LmTokenizer> {
    Ok(match (tokenizer, backbone) {
        (Some(t), _) => t,
        (None, BackboneSource::Checkpoint(source)) => {
            let files = locate(source)?;
            let path = files.tokenizer.ok_or_else(|| LmError::MissingFile {
                what: "tokenizer".into(),
                looked_for: files.config.with_file_name("tokenizer.json"),
            })?;
            LmTokenizer::from_file(&path)?
        }
        (None, _) => {
            return Err(MmError::config(
                "tokenizer",
                "is required for a randomly initialised backbone (train one with \
                 LmTokenizer::train on the instruction corpus)",
            ));
        }
    })
}

/// The signal stream's options that need each other: code tokens need Beat and rule out the
/// ViT and the flexible tokens (which are embeddings beside projected latents).
fn check_signal_options(config: &HeartcareConfig, spec: &ModelSpec) -> Result<()> {
    if config.signal_input != SignalInput::Codes || !config.signal {
        return Ok(());
    }
    if spec.beat.is_none() {
        return Err(MmError::config(
            "signal_input",
            "= \"codes\" needs a Beat configuration (its levels and codebook size define \
             the code tokens)",
        ));
    }
    if spec.vit.is_some() {
        return Err(MmError::config(
            "signal_input",
            "= \"codes\" tokenizes Beat's codes; an ECG ViT gives latents (use \"latents\")",
        ));
    }
    if config.max_chunks > 0 || config.lead_mask {
        return Err(MmError::config(
            "max_chunks / lead_mask",
            "need signal_input = \"latents\" (their tokens are embeddings beside the projected \
             latents)",
        ));
    }
    Ok(())
}

/// Where the backbone's weights come from, and its configuration.
fn backbone_origin(
    backbone: &BackboneSource,
    tokenizer: &LmTokenizer,
) -> Result<(BackboneOrigin, BackboneConfig)> {
    Ok(match backbone {
        BackboneSource::Preset(p) => {
            let c = p.config(tokenizer.vocab_size());
            (BackboneOrigin::Store(c.clone()), c)
        }
        BackboneSource::Random(c) => (BackboneOrigin::Store(c.clone()), c.clone()),
        BackboneSource::Checkpoint(source) => {
            let files = locate(source)?;
            let c = BackboneConfig::from_file(&files.config)?;
            (BackboneOrigin::Checkpoint(source.clone()), c)
        }
    })
}

/// The code tokens of `signal_input = "codes"` (their first id is set when the backbone is
/// built).
fn code_vocab(beat: Option<&BeatConfig>, config: &HeartcareConfig) -> Option<CodeVocab> {
    match (beat, config.signal_input, config.signal) {
        (Some(c), SignalInput::Codes, true) => Some(CodeVocab {
            first_id: 0,
            levels: c.dvq_levels,
            codebook_size: c.codebook_size,
            shared: c.shared_codebook || c.dvq_levels == 1,
        }),
        _ => None,
    }
}

/// The signal projector of `signal_input = "latents"`, from Beat's width (or the feature
/// dimension without Beat) to the backbone's.
fn build_signal_projector(
    config: &HeartcareConfig,
    encoder_width: Option<usize>,
    hidden: usize,
    stores: &Stores,
    device: &Device,
) -> Result<Option<SignalProjector>> {
    if !config.signal || config.signal_input != SignalInput::Latents {
        return Ok(None);
    }
    let in_dim = encoder_width.unwrap_or(config.signal_feature_dim);
    Ok(Some(SignalProjector::new(
        in_dim,
        hidden,
        config.signal_depth,
        config.layer_norm_eps,
        stores.signal.var_builder(DType::F32, device),
    )?))
}

/// The image projector, from the vision tower's width (or the feature dimension without one)
/// to the backbone's.
fn build_image_projector(
    config: &HeartcareConfig,
    vision: Option<&SiglipVision>,
    hidden: usize,
    stores: &Stores,
    device: &Device,
) -> Result<Option<ImageProjector>> {
    if !config.image {
        return Ok(None);
    }
    let in_dim = vision.map_or(config.image_feature_dim, |v| v.hidden_size());
    Ok(Some(ImageProjector::new(
        in_dim,
        hidden,
        config.image_tokens,
        config.image_depth,
        stores.image.var_builder(DType::F32, device),
    )?))
}

impl Stores {
    /// Empty stores, each seeded from `seed` and its part's name.
    fn seeded(seed: u64) -> Self {
        Stores {
            signal: ParamStore::new(part_seed(seed, Part::SignalProjector.name())),
            image: ParamStore::new(part_seed(seed, Part::ImageProjector.name())),
            lora: ParamStore::new(part_seed(seed, Part::Lora.name())),
            backbone: ParamStore::new(part_seed(seed, Part::Backbone.name())),
            vision: ParamStore::new(part_seed(seed, Part::Vision.name())),
            beat: ParamStore::new(part_seed(seed, Part::Beat.name())),
            vit: ParamStore::new(part_seed(seed, Part::Vit.name())),
            added: ParamStore::new(part_seed(seed, ADDED_ROWS)),
        }
    }
}

/// The signal encoders the spec asks for: Beat (its codes and features) and the ECG ViT.
fn build_signal_encoders(
    spec: &ModelSpec,
    stores: &Stores,
    device: &Device,
) -> Result<(Option<Beat>, Option<EcgVit>)> {
    let beat = match &spec.beat {
        Some(c) => Some(Beat::new(c.clone(), &stores.beat, DType::F32, device)?),
        None => None,
    };
    let vit = match &spec.vit {
        Some(c) => Some(EcgVit::new(
            c.clone(),
            stores.vit.var_builder(DType::F32, device),
        )?),
        None => None,
    };
    Ok((beat, vit))
}

/// The chunk-position and lead-mask tokens of a model with a signal projector (`None` when
/// the config asks for neither), for the signal encoder's leads.
fn build_flexible(
    spec: &ModelSpec,
    hidden: usize,
    stores: &Stores,
    device: &Device,
) -> Result<Option<FlexibleTokens>> {
    let leads = (spec.vit.as_ref().map(|v| v.leads))
        .or(spec.beat.as_ref().map(|b| b.leads))
        .unwrap_or(beatlab_ecg::STANDARD_LEADS.len());
    let config = &spec.config;
    FlexibleTokens::new(
        hidden,
        config.max_chunks,
        config.lead_mask,
        leads,
        stores.signal.var_builder(DType::F32, device).pp("flexible"),
    )
}

impl HeartcareModel {
    /// Build the model and declare `trainable` parts (see [`HeartcareModel::set_trainable`]).
    /// `tokenizer` may be `None` for a checkpoint backbone that ships one.
    pub fn new(
        spec: ModelSpec,
        tokenizer: Option<LmTokenizer>,
        device: &Device,
        trainable: &[&str],
    ) -> Result<Self> {
        let config = spec.config.clone();
        config.validate()?;
        let tokenizer = resolve_tokenizer(tokenizer, &spec.backbone)?;
        let (backbone_origin, backbone_config) = backbone_origin(&spec.backbone, &tokenizer)?;
        let lora_config = spec.lora.as_ref().map(|l| {
            let mut l = l.clone();
            l.targets = lora_targets_for(backbone_config.architecture(), &l.targets);
            l
        });
        let vision_origin = match &spec.vision {
            VisionSource::None => None,
            VisionSource::Random(c) => Some(VisionOrigin::Store(c.clone())),
            VisionSource::Checkpoint(s) => Some(VisionOrigin::Checkpoint(s.clone())),
        };
        check_signal_options(&config, &spec)?;
        let stores = Stores::seeded(spec.seed);
        let (beat, vit) = build_signal_encoders(&spec, &stores, device)?;
        let mut codes = code_vocab(spec.beat.as_ref(), &config);
        let chat = ChatTokens::from_tokenizer(&tokenizer);
        // Vet the trainable set before anything is loaded, so a bad request costs no checkpoint
        // read.
        let check = TrainableCheck {
            signal: config.signal,
            image: config.image,
            lora: lora_config.is_some(),
            backbone_store: matches!(backbone_origin, BackboneOrigin::Store(_)),
            vision: vision_origin
                .as_ref()
                .map(|o| matches!(o, VisionOrigin::Store(_))),
            beat: beat.is_some(),
            vit: vit.is_some(),
        };
        let trainable_set = check.resolve(trainable)?;
        check.check(&trainable_set)?;
        let hidden = backbone_config.hidden_size();
        let encoder_width =
            (spec.vit.as_ref().map(|v| v.width)).or(spec.beat.as_ref().map(|b| b.width));
        let signal_proj = build_signal_projector(&config, encoder_width, hidden, &stores, device)?;
        let flexible = match signal_proj {
            Some(_) => build_flexible(&spec, hidden, &stores, device)?,
            None => None,
        };
        let vision = build_vision(
            vision_origin.as_ref(),
            &stores.vision,
            trainable_set.contains(&Part::Vision),
            spec.dtype,
            device,
        )?;
        let image_proj = build_image_projector(&config, vision.as_ref(), hidden, &stores, device)?;
        let key = (
            trainable_set.contains(&Part::Backbone),
            trainable_set.contains(&Part::Lora),
            codes.is_some() && trainable_set.contains(&Part::SignalProjector),
        );
        let backbone = build_backbone(BackboneBuild {
            origin: &backbone_origin,
            lora: lora_config.as_ref(),
            stores: &stores,
            tokenizer_vocab: tokenizer.vocab_size(),
            codes: codes.as_mut(),
            key,
            dtype: spec.dtype,
            device,
        })?;
        let model = Self {
            config,
            lora_config,
            backbone_origin,
            backbone_config,
            vision_origin,
            beat_config: spec.beat.clone(),
            vit_config: spec.vit.clone(),
            dtype: spec.dtype,
            device: device.clone(),
            stores,
            tokenizer,
            chat,
            backbone,
            vision,
            beat,
            vit,
            flexible,
            signal_proj,
            image_proj,
            codes,
            training: AtomicBool::new(false),
            trainable: trainable_set,
        };
        model.set_training(!model.trainable.is_empty());
        Ok(model)
    }

    // ---------------------------------------------------------------------------------------
    // Accessors

    /// The multimodal knobs.
    pub fn config(&self) -> &HeartcareConfig {
        &self.config
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &LmTokenizer {
        &self.tokenizer
    }

    /// The chat and modality marker ids.
    pub fn chat_tokens(&self) -> &ChatTokens {
        &self.chat
    }

    /// The backbone as currently built.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// The backbone's configuration.
    pub fn backbone_config(&self) -> &BackboneConfig {
        &self.backbone_config
    }

    /// The vision tower, if any.
    pub fn vision(&self) -> Option<&SiglipVision> {
        self.vision.as_ref()
    }

    /// Beat, if any.
    pub fn beat(&self) -> Option<&Beat> {
        self.beat.as_ref()
    }

    /// The ECG ViT, if the signal stream is encoded by one.
    pub fn vit(&self) -> Option<&EcgVit> {
        self.vit.as_ref()
    }

    /// The chunk-position and lead-mask tokens, when the model has any.
    pub fn flexible_tokens(&self) -> Option<&FlexibleTokens> {
        self.flexible.as_ref()
    }

    /// The signal projector ("latents" mode with the signal stream on).
    pub fn signal_projector(&self) -> Option<&SignalProjector> {
        self.signal_proj.as_ref()
    }

    /// The image projector (image stream on).
    pub fn image_projector(&self) -> Option<&ImageProjector> {
        self.image_proj.as_ref()
    }

    /// The code tokens ("codes" mode).
    pub fn code_vocab(&self) -> Option<&CodeVocab> {
        self.codes.as_ref()
    }

    /// The parts currently trainable.
    pub fn trainable_parts(&self) -> &BTreeSet<Part> {
        &self.trainable
    }

    /// Width of the backbone's embeddings.
    pub fn hidden_size(&self) -> usize {
        self.backbone_config.hidden_size()
    }

    /// The device everything runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The backbone's dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The store holding `part`'s weights, when the model has that part.
    pub fn store(&self, part: Part) -> Option<&ParamStore> {
        let s = &self.stores;
        match part {
            Part::SignalProjector => self.config.signal.then_some(&s.signal),
            Part::ImageProjector => self.config.image.then_some(&s.image),
            Part::Lora => self.lora_config.as_ref().map(|_| &s.lora),
            Part::Backbone => match self.backbone_origin {
                BackboneOrigin::Store(_) => Some(&s.backbone),
                BackboneOrigin::Checkpoint(_) => None,
            },
            Part::Vision => match self.vision_origin {
                Some(VisionOrigin::Store(_)) => Some(&s.vision),
                _ => None,
            },
            Part::Beat => self.beat.as_ref().map(|_| &s.beat),
            Part::Vit => self.vit.as_ref().map(|_| &s.vit),
        }
    }

    fn trainable_check(&self) -> TrainableCheck {
        TrainableCheck {
            signal: self.config.signal,
            image: self.config.image,
            lora: self.lora_config.is_some(),
            backbone_store: matches!(self.backbone_origin, BackboneOrigin::Store(_)),
            vision: self
                .vision_origin
                .as_ref()
                .map(|o| matches!(o, VisionOrigin::Store(_))),
            beat: self.beat.is_some(),
            vit: self.vit.is_some(),
        }
    }

    pub(crate) fn absent(&self, part: Part) -> MmError {
        self.trainable_check().absent(part)
    }

    fn resolve_parts<S: AsRef<str>>(&self, names: &[S]) -> Result<BTreeSet<Part>> {
        self.trainable_check().resolve(names)
    }

    /// Declare the parts the next steps train (`projector` = the projectors the model has): the
    /// model is rebuilt so that exactly these parts receive gradients. An empty list is
    /// evaluation. On error the model is left as it was.
    pub fn set_trainable<S: AsRef<str>>(&mut self, parts: &[S]) -> Result<()> {
        let wanted = self.resolve_parts(parts)?;
        self.trainable_check().check(&wanted)?;
        let old = std::mem::replace(&mut self.trainable, wanted);
        if self.backbone_key(&old) != self.backbone_key(&self.trainable) {
            self.rebuild_backbone()?;
        }
        if old.contains(&Part::Vision) != self.trainable.contains(&Part::Vision) {
            self.rebuild_vision()?;
        }
        self.set_training(!self.trainable.is_empty());
        Ok(())
    }

    /// The variables of `parts` (`projector` = the model's projectors), named `<part>/<variable>`, for an
    /// optimiser. Each part must be trainable now (see [`HeartcareModel::set_trainable`]).
    pub fn trainable_vars<S: AsRef<str>>(&self, parts: &[S]) -> Result<Vec<(String, Var)>> {
        let mut out = Vec::new();
        for part in self.resolve_parts(parts)? {
            if !self.trainable.contains(&part) {
                return Err(MmError::FrozenPart {
                    part: part.name().into(),
                    trainable: parts::list(&self.trainable),
                });
            }
            let store = self.store(part).ok_or_else(|| self.absent(part))?;
            out.extend(
                store
                    .vars()
                    .into_iter()
                    .map(|(name, var)| (format!("{}/{name}", part.name()), var)),
            );
        }
        Ok(out)
    }

    /// Zero the gradient rows of the special tokens in the backbone's embedding table and
    /// output head, so that training the backbone leaves them as they are (paper: special-token
    /// embeddings frozen). A no-op unless the backbone itself is trainable.
    pub fn mask_frozen_gradients(&self, grads: &mut GradStore) -> Result<()> {
        if !self.trainable.contains(&Part::Backbone) {
            return Ok(());
        }
        let special: BTreeSet<u32> = beatlab_lm::Special::ALL
            .iter()
            .map(|&s| self.tokenizer.special_id(s))
            .collect();
        for name in ["model.embed_tokens.weight", "lm_head.weight"] {
            let Some(var) = self.stores.backbone.get(name) else {
                continue;
            };
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let rows = var.dim(0)?;
            let keep: Vec<f32> = (0..rows as u32)
                .map(|id| if special.contains(&id) { 0.0 } else { 1.0 })
                .collect();
            let keep = Tensor::from_vec(keep, (rows, 1), grad.device())?.to_dtype(grad.dtype())?;
            let masked = grad.broadcast_mul(&keep)?;
            grads.insert(var.as_tensor(), masked);
        }
        Ok(())
    }

    /// Switch dropout (LoRA, vision LoRA) on for training or off for evaluation.
    pub fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
        self.backbone.set_training(training);
        if let Some(v) = &self.vision {
            v.set_training(training);
        }
    }

    /// Starts optimiser step `step`: dropout masks (LoRA, vision LoRA) are drawn from that
    /// step's own stream, so a resumed run repeats the uninterrupted run's masks.
    pub fn start_step(&self, step: u64) {
        self.backbone.start_step(step);
        if let Some(v) = &self.vision {
            v.start_step(step);
        }
    }

    pub(crate) fn is_training(&self) -> bool {
        self.training.load(Ordering::Relaxed)
    }

    /// What the backbone's build depends on: base trainable, LoRA attached, code rows live.
    fn backbone_key(&self, parts: &BTreeSet<Part>) -> (bool, bool, bool) {
        (
            parts.contains(&Part::Backbone),
            parts.contains(&Part::Lora),
            self.codes.is_some() && parts.contains(&Part::SignalProjector),
        )
    }

    fn rebuild_backbone(&mut self) -> Result<()> {
        let key = self.backbone_key(&self.trainable);
        self.backbone = build_backbone(BackboneBuild {
            origin: &self.backbone_origin,
            lora: self.lora_config.as_ref(),
            stores: &self.stores,
            tokenizer_vocab: self.tokenizer.vocab_size(),
            codes: self.codes.as_mut(),
            key,
            dtype: self.dtype,
            device: &self.device,
        })?;
        self.backbone.set_training(self.is_training());
        Ok(())
    }

    fn rebuild_vision(&mut self) -> Result<()> {
        self.vision = build_vision(
            self.vision_origin.as_ref(),
            &self.stores.vision,
            self.trainable.contains(&Part::Vision),
            self.dtype,
            &self.device,
        )?;
        if let Some(v) = &self.vision {
            v.set_training(self.is_training());
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Saving and restoring parts

    /// A part's state: its parameters (`param.*`) and buffers (`buffer.*`, Beat's codebooks).
    /// The tensors are live views; serialise them before training on.
    pub fn part_state(&self, part: Part) -> Result<BTreeMap<String, Tensor>> {
        let store = self.store(part).ok_or_else(|| self.absent(part))?;
        training_state(store, None).map_err(|source| MmError::State {
            part: part.name().into(),
            source: Box::new(source),
        })
    }

    /// Restore a part's state saved by [`HeartcareModel::part_state`] (strict: the same
    /// variables and shapes), then rebuild what depends on it.
    pub fn load_part_state(&mut self, part: Part, state: &BTreeMap<String, Tensor>) -> Result<()> {
        self.restore_part(part, state)?;
        self.rebuild_all()
    }

    fn restore_part(&self, part: Part, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let store = self.store(part).ok_or_else(|| self.absent(part))?;
        restore_training_state(state, store, None).map_err(|source| MmError::State {
            part: part.name().into(),
            source: Box::new(source),
        })
    }

    fn rebuild_all(&mut self) -> Result<()> {
        if let (Some(beat), Some(config)) = (&mut self.beat, &self.beat_config) {
            *beat = Beat::new(config.clone(), &self.stores.beat, DType::F32, &self.device)?;
        }
        if let (Some(vit), Some(config)) = (&mut self.vit, &self.vit_config) {
            *vit = EcgVit::new(
                config.clone(),
                self.stores.vit.var_builder(DType::F32, &self.device),
            )?;
        }
        self.rebuild_backbone()?;
        self.rebuild_vision()
    }

    /// Write the state of `parts` (`projector` = the model's projectors) to one safetensors file, each tensor
    /// named `<part>/<param|buffer>.<name>`.
    pub fn save_parts<S: AsRef<str>>(&self, parts: &[S], path: &Path) -> Result<()> {
        let mut all = BTreeMap::new();
        for part in self.resolve_parts(parts)? {
            for (key, tensor) in self.part_state(part)? {
                all.insert(format!("{}/{key}", part.name()), tensor);
            }
        }
        beatlab_lm::checkpoint::save_tensors(&all, path)?;
        Ok(())
    }

    /// Restore every part a file written by [`HeartcareModel::save_parts`] holds; returns them.
    pub fn load_parts(&mut self, path: &Path) -> Result<BTreeSet<Part>> {
        let tensors = beatlab_lm::checkpoint::load_tensors(path)?;
        let mut by_part: BTreeMap<Part, BTreeMap<String, Tensor>> = BTreeMap::new();
        for (name, tensor) in tensors {
            let Some((part, key)) = name.split_once('/') else {
                return Err(MmError::StateFile {
                    path: path.to_path_buf(),
                    reason: format!("tensor `{name}` is not named `<part>/<key>`"),
                });
            };
            let part: Part = part.parse().map_err(|e: MmError| MmError::StateFile {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}`: {e}"),
            })?;
            by_part
                .entry(part)
                .or_default()
                .insert(key.to_string(), tensor);
        }
        for (part, state) in &by_part {
            self.restore_part(*part, state)
                .map_err(|e| MmError::StateFile {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
        }
        self.rebuild_all()?;
        Ok(by_part.into_keys().collect())
    }

    // ---------------------------------------------------------------------------------------
    // Sequences and the forward pass

    pub(crate) fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode(text)?)
    }

    /// Encode, lay out (answers as loss targets) and collate a training batch.
    pub fn prepare(&self, examples: &[Example]) -> Result<Prepared> {
        if examples.is_empty() {
            return Err(MmError::EmptyBatch);
        }
        let encoded = self.encode(examples)?;
        let mut rows = Vec::with_capacity(examples.len());
        for (k, (ex, blocks)) in examples.iter().zip(&encoded.blocks).enumerate() {
            rows.push(layout_row(
                &self.chat,
                blocks,
                &self.encode_text(&ex.item.question)?,
                Some(&self.encode_text(&ex.item.answer)?),
                self.config.max_seq_len,
                &item_name(ex.item, k),
            )?);
        }
        let batch = collate(&rows, self.chat.pad, &self.device)?;
        Ok(Prepared {
            encoded,
            rows,
            batch,
        })
    }

    /// `[B, T, H]` input embeddings: token embeddings, with the projected embeddings of `table`
    /// written over the spliced positions (a gather from the table plus a mask, so gradients
    /// reach the projectors).
    pub fn input_embeds(&self, batch: &Batch, table: Option<&Tensor>) -> Result<Tensor> {
        let tokens = self.backbone.embed_tokens(&batch.ids)?;
        let (Some(index), Some(keep)) = (&batch.splice_index, &batch.token_keep) else {
            return Ok(tokens);
        };
        let (b, t, h) = tokens.dims3()?;
        let table = table.ok_or_else(|| {
            MmError::config("table", "the batch splices embeddings but none were given")
        })?;
        if table.dims().len() != 2 || table.dim(0)? < batch.table_rows || table.dim(1)? != h {
            return Err(MmError::config(
                "table",
                format!(
                    "has shape {:?}; the batch needs at least {} rows of width {h}",
                    table.dims(),
                    batch.table_rows
                ),
            ));
        }
        let dtype = tokens.dtype();
        // Row 0 is zero, so positions that keep their token take nothing from the table.
        let padded = Tensor::cat(
            &[
                Tensor::zeros((1, h), dtype, &self.device)?,
                table.to_dtype(dtype)?,
            ],
            0,
        )?;
        let spliced = padded.index_select(index, 0)?;
        let kept = tokens
            .reshape((b * t, h))?
            .broadcast_mul(&keep.to_dtype(dtype)?)?;
        Ok((kept + spliced)?.reshape((b, t, h))?)
    }

    pub(crate) fn logits_of(&self, batch: &Batch, table: Option<&Tensor>) -> Result<Tensor> {
        let embeds = self.input_embeds(batch, table)?;
        Ok(self
            .backbone
            .forward_embeds(&embeds, Some(&batch.attention_mask))?)
    }

    /// Logits of every position and the loss on the answer tokens (and `<|end|>`): the mean
    /// next-token cross-entropy over all answer tokens of the batch.
    pub fn forward(&self, examples: &[Example]) -> Result<ForwardOutput> {
        let prepared = self.prepare(examples)?;
        let logits = self.logits_of(&prepared.batch, prepared.encoded.table.as_ref())?;
        let loss = next_token_loss(
            &logits,
            &prepared.batch.ids,
            Some(&prepared.batch.target_mask),
        )?;
        Ok(ForwardOutput {
            logits,
            loss,
            target_tokens: prepared.rows.iter().map(|r| r.targets.len()).sum(),
            rows: prepared.rows,
        })
    }

    /// One optimiser step on `examples`: loss, backward, special rows masked, optional
    /// clipping to `grad_clip` (a non-finite norm skips the step), update.
    pub fn train_step(
        &self,
        optimizer: &mut AdamW,
        examples: &[Example],
        grad_clip: Option<f64>,
    ) -> Result<StepStats> {
        let out = self.forward(examples)?;
        let loss = out.loss.to_scalar::<f32>()?;
        let mut grads = out.loss.backward()?;
        self.mask_frozen_gradients(&mut grads)?;
        let mut grad_norm = None;
        if let Some(max) = grad_clip {
            let norm = clip_grad_norm(&mut grads, &optimizer.vars(), max)?;
            grad_norm = Some(norm);
            if !norm.is_finite() {
                return Ok(StepStats {
                    loss,
                    grad_norm,
                    skipped: true,
                    target_tokens: out.target_tokens,
                });
            }
        }
        optimizer.step(&grads)?;
        Ok(StepStats {
            loss,
            grad_norm,
            skipped: false,
            target_tokens: out.target_tokens,
        })
    }
}

/// Which parts a model has and which can train: enough to vet a trainable set.
struct TrainableCheck {
    signal: bool,
    image: bool,
    lora: bool,
    backbone_store: bool,
    /// `None`: no tower; `Some(true)`: randomly initialised (trainable).
    vision: Option<bool>,
    beat: bool,
    vit: bool,
}

impl TrainableCheck {
    pub(crate) fn absent(&self, part: Part) -> MmError {
        let (trainable_elsewhere, reason) = match part {
            Part::SignalProjector => (false, "the signal stream is off (config.signal = false)"),
            Part::ImageProjector => (false, "the image stream is off (config.image = false)"),
            Part::Lora => (false, "no LoRA configuration was given"),
            Part::Backbone => (
                true,
                "the backbone is a checkpoint, whose weights load as constants",
            ),
            Part::Vision if self.vision.is_some() => (
                true,
                "the vision tower is a checkpoint, whose weights load as constants",
            ),
            Part::Vision => (false, "the model has no vision tower"),
            Part::Beat => (false, "the model was built without a Beat configuration"),
            Part::Vit => (
                false,
                "the model was built without an ECG ViT configuration",
            ),
        };
        if trainable_elsewhere {
            MmError::NotTrainable {
                part: part.name().into(),
                reason: reason.into(),
            }
        } else {
            MmError::AbsentPart {
                part: part.name().into(),
                reason: reason.into(),
            }
        }
    }

    fn has(&self, part: Part) -> bool {
        match part {
            Part::SignalProjector => self.signal,
            Part::ImageProjector => self.image,
            Part::Lora => self.lora,
            Part::Backbone => self.backbone_store,
            Part::Vision => self.vision == Some(true),
            Part::Beat => self.beat,
            Part::Vit => self.vit,
        }
    }

    /// Part names to parts; `projector` stands for the projectors this model has (an
    /// image-only model's is the image projector), a named part must exist.
    fn resolve<S: AsRef<str>>(&self, names: &[S]) -> Result<BTreeSet<Part>> {
        let mut parts = BTreeSet::new();
        for name in names {
            if name.as_ref() == "projector" {
                parts.extend(
                    [Part::SignalProjector, Part::ImageProjector]
                        .into_iter()
                        .filter(|&p| self.has(p)),
                );
            } else {
                parts.extend(Part::parse_list(&[name.as_ref()])?);
            }
        }
        Ok(parts)
    }

    fn check(&self, parts: &BTreeSet<Part>) -> Result<()> {
        if let Some(&part) = parts.iter().find(|&&p| !self.has(p)) {
            return Err(self.absent(part));
        }
        if parts.contains(&Part::Backbone) && self.lora && !parts.contains(&Part::Lora) {
            return Err(MmError::NotTrainable {
                part: Part::Backbone.name().into(),
                reason: "with LoRA configured, train `lora` too: a frozen adapter is folded into \
                         the base weights, which would freeze them"
                    .into(),
            });
        }
        Ok(())
    }
}

/// What building the backbone needs.
struct BackboneBuild<'a> {
    origin: &'a BackboneOrigin,
    lora: Option<&'a LoraConfig>,
    stores: &'a Stores,
    tokenizer_vocab: usize,
    codes: Option<&'a mut CodeVocab>,
    /// (base trainable, LoRA trainable, code rows trainable).
    key: (bool, bool, bool),
    dtype: DType,
    device: &'a Device,
}

/// Build the backbone from its stores (or checkpoint) for the given trainability: vocabulary
/// grown to the tokenizer's, code rows appended in "codes" mode, frozen LoRA folded in.
fn build_backbone(b: BackboneBuild) -> Result<Backbone> {
    let (base_trainable, lora_trainable, codes_trainable) = b.key;
    let lora = match b.lora {
        Some(c) => Some(Lora::new(c.clone(), b.stores.lora.clone())?),
        None => None,
    };
    let opts = BuildOptions {
        lora,
        freeze_base: !base_trainable,
    };
    let mut backbone = match b.origin {
        BackboneOrigin::Store(c) => {
            Backbone::random(c, &b.stores.backbone, b.dtype, b.device, &opts)?
        }
        BackboneOrigin::Checkpoint(source) => {
            load_backbone(source, b.dtype, b.device, &opts)?.backbone
        }
    };
    backbone.ensure_vocab(b.tokenizer_vocab, &b.stores.added, ADDED_ROWS)?;
    if let Some(codes) = b.codes {
        let n = codes.len();
        codes.first_id = backbone.vocab_size() as u32;
        let signal = &b.stores.signal;
        if codes_trainable {
            backbone.grow_vocab(n, signal, CODE_ROWS)?;
        } else {
            // A copy of the part's rows: same values, but no gradient reaches its variables.
            let snapshot = ParamStore::new(signal.seed());
            copy_store(signal, &snapshot)?;
            backbone.grow_vocab(n, &snapshot, CODE_ROWS)?;
            if signal.vars().is_empty() {
                copy_store(&snapshot, signal)?;
            }
        }
    }
    if b.lora.is_some() && !lora_trainable {
        backbone.merge_lora()?;
    }
    Ok(backbone)
}

/// Build the vision tower, detached unless `trainable`.
fn build_vision(
    origin: Option<&VisionOrigin>,
    store: &ParamStore,
    trainable: bool,
    dtype: DType,
    device: &Device,
) -> Result<Option<SiglipVision>> {
    let opts = BuildOptions {
        lora: None,
        freeze_base: !trainable,
    };
    Ok(match origin {
        None => None,
        Some(VisionOrigin::Store(c)) => Some(SiglipVision::new(
            c,
            store.var_builder(dtype, device),
            &opts,
        )?),
        Some(VisionOrigin::Checkpoint(source)) => Some(load_siglip(source, dtype, device, &opts)?),
    })
}
