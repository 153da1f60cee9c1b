//! The multimodal stages (`warmup`, `joint`, `eval`): HeartcareGPT built from the spec, its
//! instruction data, and the state that passes between stages.
//!
//! The stages of a run share one [`Corpus`] (the cached windows, the records, the instruction
//! items) and one tokenizer ([`run_data::RunData`], built once per run, the tokenizer kept in
//! the run folder); each builds the model and restores what earlier stages of the run trained:
//! Beat from the `beat` stage's final checkpoint (a disabled Beat stage leaves the seeded random
//! tokenizer, frozen, as in the paper's ablation), and the projectors and LoRA adapters from the
//! latest completed `warmup` / `joint` stage. Item splits are the dataset's, so nothing a stage
//! trained on is ever evaluated.

pub mod eval;
pub mod peers;
pub mod run_data;
pub mod train;

use std::collections::{BTreeMap, HashMap};

use beatlab_ecg::Record;
use beatlab_ecg::dataset::{self as ecg_dataset, Dataset};
use beatlab_heartcare::instruct::{
    self, BuildConfig, InputForm, Item, Modality, PairForm, Split, Task,
};
use beatlab_heartcare::render::{Layout, RenderConfig};
use beatlab_lm::lora::LoraConfig;
use beatlab_lm::presets::{BackbonePreset, tiny_siglip};
use beatlab_lm::tokenizer::LmTokenizer;
use beatlab_lm::{BackboneConfig, hub::ModelSource};
use beatlab_mm::{
    BackboneSource, EcgInput, HeartcareConfig, HeartcareModel, MissingModality, ModelSpec, Part,
    SignalInput, VisionSource, render_image_input,
};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::runner::{StageContext, StageError};
use crate::spec::{self, BackboneModel, EcgLayout, InputMix, Spec, StageKind, VisionModel};

/// The data every multimodal stage works from.
pub struct Corpus {
    /// Preprocessed windows (as Beat was trained) with each record's split.
    pub dataset: Dataset,
    /// The raw records, for rendering images; same ids as `dataset.records`.
    pub records: Vec<Record>,
    /// Instruction items of every task and split.
    pub items: Vec<Item>,
    /// Captioning items (record -> description) for the warm-up.
    pub captions: Vec<Item>,
}

fn to_item_split(s: ecg_dataset::Split) -> Split {
    match s {
        ecg_dataset::Split::Train => Split::Train,
        ecg_dataset::Split::Val => Split::Validation,
        ecg_dataset::Split::Test => Split::Test,
    }
}

impl Corpus {
    pub fn load(spec: &Spec, cache_dir: &std::path::Path) -> Result<Self, StageError> {
        let dataset = crate::data::windows(spec, cache_dir)?;
        let records = crate::data::load_records(spec)?;
        let ins = &spec.instructions;
        let all_pairs = vec![
            PairForm::SignalSignal,
            PairForm::ImageImage,
            PairForm::SignalImage,
        ];
        let (inputs, pair_inputs) = match ins.inputs {
            InputMix::Mixed => (vec![InputForm::Signal, InputForm::Image], all_pairs),
            InputMix::Signal => (vec![InputForm::Signal], vec![PairForm::SignalSignal]),
            InputMix::Image => (vec![InputForm::Image], vec![PairForm::ImageImage]),
            InputMix::Both => (vec![InputForm::SignalAndImage], all_pairs),
        };
        let mut build = BuildConfig {
            seed: spec.data.seed,
            closed_qa_per_record: ins.closed_qa_per_record as usize,
            open_qa_per_record: ins.open_qa_per_record as usize,
            comparison_per_record: ins.comparison_per_record as usize,
            reports_per_record: ins.reports_per_record as usize,
            predictions_per_record: ins.predictions_per_record as usize,
            num_options: ins.num_options as usize,
            inputs,
            pair_inputs,
            // The waveform comes from Beat's prediction head: the item shows what Beat encodes.
            prediction: instruct::PredictionWindow {
                input_start_s: 0.0,
                input_s: (f64::from(spec.beat.input_len) / spec.data.target_fs) as f32,
                horizon_s: (f64::from(spec.beat.predict_len) / spec.data.target_fs) as f32,
            },
            grounded_per_record: ins.grounded_per_record as usize,
            grounding: peers::grounding_source(spec),
            localization_per_record: ins.localization_per_record as usize,
            multi_ecg_per_record: ins.multi_ecg_per_record as usize,
            multi_ecg_max: ins.multi_ecg_max as usize,
            ..BuildConfig::default()
        };
        build.split.assigned = dataset
            .records
            .iter()
            .map(|r| (r.id.clone(), to_item_split(r.split)))
            .collect();
        let items = instruct::build_items(&records, &build)?;
        let captions = instruct::build_captions(&records, &build)?;
        Ok(Self {
            dataset,
            records,
            items,
            captions,
        })
    }

    /// Items of a split whose task is in `tasks` (`caption` selects the captioning set).
    pub fn select(&self, split: Split, wanted: &[Task]) -> Vec<Item> {
        let mut out: Vec<Item> = Vec::new();
        if wanted.contains(&Task::Caption) {
            out.extend(
                self.captions
                    .iter()
                    .filter(|i| i.split == Some(split))
                    .cloned(),
            );
        }
        out.extend(
            self.items
                .iter()
                .filter(|i| i.split == Some(split) && i.task().is_some_and(|t| wanted.contains(&t)))
                .cloned(),
        );
        out
    }

    /// Texts the tiny presets' tokenizer is trained on: the training split's questions and
    /// answers (the test answers are never seen).
    fn training_texts(&self) -> Vec<String> {
        self.items
            .iter()
            .chain(&self.captions)
            .filter(|i| i.split == Some(Split::Train))
            .flat_map(|i| [i.question.clone(), i.answer.clone()])
            .collect()
    }
}

/// Task names, comma-separated, for messages.
pub fn task_list(tasks: &[Task]) -> String {
    tasks
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn missing(record: &str, what: &'static str) -> StageError {
    StageError::MissingInput {
        record: record.to_string(),
        what,
    }
}

/// A deterministic share of `items` (`fraction` of them, at least one when any).
pub fn subsample(mut items: Vec<Item>, fraction: f64, seed: u64) -> Vec<Item> {
    if fraction >= 1.0 || items.is_empty() {
        return items;
    }
    items.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5ab1));
    let keep = ((items.len() as f64 * fraction).round() as usize).max(1);
    items.truncate(keep);
    items
}

/// Where real weights come from: an existing folder, else a Hugging Face model id (offline
/// cache). A value that can only be a path (absolute, `./` or `../`, or more than one `/`,
/// which a Hub id `org/name` never has) is a folder even when it does not exist, so that its
/// absence is reported as a missing folder rather than as a model missing from the cache.
fn model_source(weights: &str) -> Result<ModelSource, StageError> {
    let expanded = spec::expand_env(weights).map_err(StageError::Environment)?;
    let path = std::path::PathBuf::from(&expanded);
    let path_like = path.is_absolute()
        || expanded.starts_with("./")
        || expanded.starts_with("../")
        || expanded.matches('/').count() > 1;
    if path.is_dir() || path_like {
        return Ok(ModelSource::Dir(path));
    }
    Ok(ModelSource::Hub {
        model_id: expanded,
        revision: None,
        allow_download: false,
        cache_dir: None,
    })
}

/// Checks that the real weights a spec names can be found (a local folder, or a model in the
/// Hugging Face cache): `(field, problem)` for each that cannot.
pub fn missing_weights(spec: &Spec) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut check = |field: &'static str, weights: &str, used: bool| {
        if !used {
            return;
        }
        let found = model_source(weights).and_then(|s| Ok(beatlab_lm::hub::locate(&s)?));
        if let Err(e) = found {
            out.push((field, crate::runner::error_chain(&e)));
        }
    };
    check(
        "backbone.weights",
        &spec.backbone.weights,
        matches!(
            spec.backbone.model,
            BackboneModel::Qwen2 | BackboneModel::Phi3
        ) && uses_language_model(spec),
    );
    check(
        "vision.weights",
        &spec.vision.weights,
        spec.vision.model == VisionModel::Siglip && uses_language_model(spec),
    );
    // The BERTScore encoder needs its tokenizer too, so it has its own lookup.
    let encoder = spec.eval.bertscore_encoder.trim();
    let evaluates = spec
        .stage
        .iter()
        .any(|s| s.enabled && s.kind == StageKind::Eval);
    if !encoder.is_empty() && evaluates {
        let found = model_source(encoder).and_then(|s| Ok(beatlab_lm::bert::locate_encoder(&s)?));
        if let Err(e) = found {
            out.push(("eval.bertscore_encoder", crate::runner::error_chain(&e)));
        }
    }
    out
}

/// Whether any enabled stage needs the multimodal model.
fn uses_language_model(spec: &Spec) -> bool {
    spec.stage.iter().any(|s| {
        s.enabled
            && matches!(
                s.kind,
                StageKind::Warmup | StageKind::Joint | StageKind::Eval
            )
    })
}

/// A tiny preset resized to the spec's `hidden_size`, `layers` and `heads`.
fn tiny_backbone(spec: &Spec, vocab: usize) -> BackboneConfig {
    let b = &spec.backbone;
    let preset = match b.model {
        BackboneModel::TinyPhi3 => BackbonePreset::TinyPhi3,
        _ => BackbonePreset::TinyQwen2,
    };
    let (hidden, layers, heads) = (b.hidden_size as usize, b.layers as usize, b.heads as usize);
    let init = 1.0 / (hidden as f64).sqrt();
    match preset.config(vocab) {
        BackboneConfig::Qwen2(mut c) => {
            c.intermediate_size = hidden * c.intermediate_size / c.hidden_size;
            c.hidden_size = hidden;
            c.num_hidden_layers = layers;
            c.num_attention_heads = heads;
            // Grouped-query attention as in Qwen2.5: two query heads per key-value head.
            c.num_key_value_heads = Some(if heads % 2 == 0 { heads / 2 } else { heads });
            c.initializer_range = init;
            c.max_position_embeddings = c.max_position_embeddings.max(b.max_seq_len as usize);
            BackboneConfig::Qwen2(c)
        }
        BackboneConfig::Phi3(mut c) => {
            c.intermediate_size = hidden * c.intermediate_size / c.hidden_size;
            c.hidden_size = hidden;
            c.num_hidden_layers = layers;
            c.num_attention_heads = heads;
            c.num_key_value_heads = Some(heads);
            c.initializer_range = init;
            c.max_position_embeddings = c.max_position_embeddings.max(b.max_seq_len as usize);
            BackboneConfig::Phi3(c)
        }
    }
}

/// The vision tower's input size.
fn image_size(spec: &Spec) -> usize {
    match (spec.vision.image_size, spec.vision.model) {
        (0, VisionModel::Siglip) => 384,
        (0, _) => tiny_siglip().image_size,
        (s, _) => s as usize,
    }
}

/// HeartcareGPT as the spec declares it, with `trainable` parts.
pub fn build_model(
    spec: &Spec,
    tokenizer: Option<LmTokenizer>,
    device: &Device,
    trainable: &[String],
) -> Result<HeartcareModel, StageError> {
    let dtype = super::beat::dtype(spec, device)?;
    let vocab = tokenizer.as_ref().map_or(0, |t| t.vocab_size());
    let backbone = match spec.backbone.model {
        BackboneModel::TinyQwen2 | BackboneModel::TinyPhi3 => {
            BackboneSource::Random(tiny_backbone(spec, vocab))
        }
        BackboneModel::Qwen2 | BackboneModel::Phi3 => {
            BackboneSource::Checkpoint(model_source(&spec.backbone.weights)?)
        }
    };
    let vision = match spec.vision.model {
        VisionModel::None => VisionSource::None,
        VisionModel::TinySiglip => {
            let mut cfg = tiny_siglip();
            cfg.image_size = image_size(spec);
            VisionSource::Random(cfg)
        }
        VisionModel::Siglip => VisionSource::Checkpoint(model_source(&spec.vision.weights)?),
    };
    let lora = &spec.backbone.lora;
    let targets: Vec<&str> = lora.targets.iter().map(String::as_str).collect();
    let beat = super::beat::beat_config(spec);
    let config = HeartcareConfig {
        signal_depth: spec.projector.signal_depth as usize,
        image_depth: spec.projector.image_depth as usize,
        image_tokens: spec.projector.image_tokens as usize,
        signal_input: match spec.projector.signal_input {
            spec::SignalInput::Latents => SignalInput::Latents,
            spec::SignalInput::Codes => SignalInput::Codes,
        },
        tiles: spec.vision.tiles,
        signal: true,
        image: spec.vision.model != VisionModel::None,
        // Items that show an image to a model without an image stream (the modality ablation's
        // signal-only arm) keep their other inputs.
        missing_modality: MissingModality::Drop,
        max_seq_len: spec.backbone.max_seq_len as usize,
        signal_feature_dim: beat.width,
        max_chunks: spec.signal.chunks as usize,
        lead_mask: spec.signal.lead_mask,
        ..HeartcareConfig::default()
    };
    let model_spec = ModelSpec {
        config,
        backbone,
        lora: (lora.rank > 0)
            .then(|| LoraConfig::new(lora.rank as usize, lora.alpha, lora.dropout, &targets)),
        vision,
        beat: Some(beat),
        vit: peers::vit_config(spec),
        seed: spec.experiment.seed,
        dtype,
    };
    let parts: Vec<&str> = trainable.iter().map(String::as_str).collect();
    Ok(HeartcareModel::new(model_spec, tokenizer, device, &parts)?)
}

/// Restores what earlier stages trained: Beat, then the latest warm-up / joint stage's parts.
pub fn restore_earlier(
    ctx: &mut StageContext<'_>,
    data: &run_data::RunData,
    model: &mut HeartcareModel,
) -> Result<(), StageError> {
    match ctx.completed_kind(StageKind::Beat)? {
        Some(beat) => {
            let state: BTreeMap<String, Tensor> = beat.tensors.into_iter().collect();
            model.load_part_state(Part::Beat, &state)?;
            ctx.log("Beat: trained tokenizer restored");
        }
        None => {
            ctx.log("Beat: no trained tokenizer in this run; using the seeded random one, frozen")
        }
    }
    let earlier = ctx
        .spec
        .stage
        .iter()
        .take_while(|s| s.name != ctx.stage.name)
        .filter(|s| s.enabled && matches!(s.kind, StageKind::Warmup | StageKind::Joint))
        .last()
        .map(|s| s.name.clone());
    if let Some(name) = earlier
        && let Some(ckpt) = ctx.completed_stage(&name)?
    {
        data.check_checkpoint(&ckpt.meta, &ckpt.path)?;
        let parts = restore_parts(model, &ckpt.tensors)?;
        ctx.log(&format!(
            "restored {} from stage `{name}`",
            parts.join(", ")
        ));
    }
    Ok(())
}

/// `<part>/<key>` tensors of the given parts.
pub fn parts_state(
    model: &HeartcareModel,
    parts: &[Part],
) -> Result<BTreeMap<String, Tensor>, StageError> {
    let mut out = BTreeMap::new();
    for part in parts {
        for (k, v) in model.part_state(*part)? {
            out.insert(format!("{}/{k}", part.name()), v);
        }
    }
    Ok(out)
}

/// Restores every `<part>/<key>` group found in `tensors`; returns the part names.
pub fn restore_parts(
    model: &mut HeartcareModel,
    tensors: &HashMap<String, Tensor>,
) -> Result<Vec<String>, StageError> {
    let mut by_part: BTreeMap<String, BTreeMap<String, Tensor>> = BTreeMap::new();
    for (name, t) in tensors {
        if let Some((part, key)) = name.split_once('/') {
            by_part
                .entry(part.to_string())
                .or_default()
                .insert(key.to_string(), t.clone());
        }
    }
    for (part, state) in &by_part {
        let p: Part = part.parse()?;
        model.load_part_state(p, state)?;
    }
    Ok(by_part.into_keys().collect())
}

/// The model inputs of every record the items refer to, precomputed through the frozen
/// encoders once per stage: record id -> (signal input, image input).
pub struct Inputs {
    by_record: HashMap<String, (Option<EcgInput>, Option<EcgInput>)>,
}

impl Inputs {
    pub fn prepare(
        spec: &Spec,
        corpus: &Corpus,
        model: &HeartcareModel,
        items: &[Item],
        device: &Device,
    ) -> Result<Self, StageError> {
        let mut needed: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
        for item in items {
            for (file, label) in item.filename.iter().zip(&item.label) {
                let entry = needed.entry(file.as_str()).or_default();
                match label {
                    Modality::Signal => entry.0 = true,
                    Modality::Image => entry.1 = true,
                }
            }
        }
        let records: HashMap<&str, &Record> =
            corpus.records.iter().map(|r| (r.id.as_str(), r)).collect();
        let windows = first_windows(&corpus.dataset);
        let window_len = corpus.dataset.window_len();
        let size = image_size(spec);
        let render = RenderConfig {
            layout: match spec.vision.layout {
                EcgLayout::SixByTwo => Layout::SixByTwo,
                EcgLayout::ThreeByFour => Layout::ThreeByFourRhythm,
            },
            ..RenderConfig::six_by_two(size, size)
        };
        let image_on = spec.vision.model != VisionModel::None;
        let mut ids = Vec::new();
        let mut raw = Vec::new();
        for (id, (signal, image)) in &needed {
            if *signal && peers::flexible(spec) {
                let record = records
                    .get(*id)
                    .ok_or_else(|| missing(id, "is not loaded"))?;
                ids.push((id.to_string(), false));
                raw.push(peers::chunked_input(spec, record, device)?);
            } else if *signal {
                let (set, i) = windows
                    .get(*id)
                    .ok_or_else(|| missing(id, "has no window"))?;
                let w = corpus.dataset.split(*set).window(*i, window_len);
                let t =
                    Tensor::from_slice(w, (beatlab_ecg::STANDARD_LEADS.len(), window_len), device)?;
                ids.push((id.to_string(), false));
                raw.push(EcgInput::Window(t));
            }
            if *image && image_on {
                let record = records
                    .get(*id)
                    .ok_or_else(|| missing(id, "is not loaded"))?;
                ids.push((id.to_string(), true));
                raw.push(render_image_input(
                    record,
                    &render,
                    spec.vision.tiles,
                    device,
                )?);
            }
        }
        let mut done = Vec::with_capacity(raw.len());
        // Bounded batches keep memory flat for large corpora.
        for chunk in raw.chunks(64) {
            done.extend(model.precompute(chunk)?);
        }
        let mut by_record: HashMap<String, (Option<EcgInput>, Option<EcgInput>)> = HashMap::new();
        for ((id, is_image), input) in ids.into_iter().zip(done) {
            let entry = by_record.entry(id).or_default();
            if is_image {
                entry.1 = Some(input);
            } else {
                entry.0 = Some(input);
            }
        }
        Ok(Self { by_record })
    }

    /// The inputs of an item, in `filename` order; an image the model has no stream for is
    /// passed as a placeholder the model drops.
    pub fn of(&self, item: &Item) -> Result<Vec<EcgInput>, StageError> {
        item.filename
            .iter()
            .zip(&item.label)
            .map(|(file, label)| {
                let (signal, image) = self
                    .by_record
                    .get(file)
                    .ok_or_else(|| missing(file, "has no prepared inputs"))?;
                match (label, signal, image) {
                    (Modality::Signal, Some(s), _) => Ok(s.clone()),
                    (Modality::Image, _, Some(i)) => Ok(i.clone()),
                    // No image stream: a placeholder the model leaves out (missing_modality = drop).
                    (Modality::Image, _, None) => Ok(EcgInput::Features(Tensor::zeros(
                        (1, 1),
                        candle_core::DType::F32,
                        &Device::Cpu,
                    )?)),
                    (Modality::Signal, None, _) => {
                        Err(missing(file, "has no prepared signal input"))
                    }
                }
            })
            .collect()
    }
}

/// The first window of every record: record id -> (split, index in that split).
fn first_windows(ds: &Dataset) -> HashMap<String, (ecg_dataset::Split, usize)> {
    let mut out = HashMap::new();
    for split in [
        ecg_dataset::Split::Train,
        ecg_dataset::Split::Val,
        ecg_dataset::Split::Test,
    ] {
        for (i, &r) in ds.split(split).record_index.iter().enumerate() {
            out.entry(ds.records[r as usize].id.clone())
                .or_insert((split, i));
        }
    }
    out
}
