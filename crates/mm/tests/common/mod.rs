//! Shared fixtures: a tiny tokenizer, a tiny Beat, seeded random ECG inputs and item builders.
#![allow(dead_code)]

use beatlab_heartcare::instruct::{Item, ItemType, Modality};
use beatlab_lm::presets::tiny_siglip;
use beatlab_lm::{BackbonePreset, LmTokenizer, LoraConfig};
use beatlab_mm::{
    BackboneSource, EcgInput, EcgVitConfig, HeartcareConfig, HeartcareModel, ModelSpec, Part,
    PatchLayout, SignalInput, VisionSource,
};
use beatlab_nn::optim::{AdamW, AdamWConfig};
use beatlab_nn::{BeatConfig, Mode};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const QUESTION: &str = "What does this ECG show?";

pub const ANSWERS: [&str; 4] = [
    "Sinus rhythm.",
    "Atrial fibrillation.",
    "Left bundle branch block.",
    "Inferior infarction.",
];

/// A byte-level BPE tokenizer trained on the questions and answers used in the tests.
pub fn tokenizer() -> LmTokenizer {
    let mut corpus: Vec<String> = ANSWERS.iter().map(|a| format!("{QUESTION} {a}")).collect();
    corpus.push("Which ECG has the faster rate? The first. The second.".into());
    corpus.push("A: Sinus rhythm; B: Atrial fibrillation; C: Left bundle branch block".into());
    LmTokenizer::train(&corpus, 320).unwrap()
}

/// Beat at toy size: 12 leads, 100-sample input in patches of 10 (5 queries of width 32),
/// 50 samples predicted, DVQ with two codebooks of 16.
pub fn tiny_beat() -> BeatConfig {
    BeatConfig {
        leads: 12,
        patch_size: 10,
        width: 32,
        encoder_depth: 1,
        decoder_depth: 1,
        heads: 2,
        head_dim: None,
        mlp_ratio: 2.0,
        query_ratio: 0.5,
        codebook_size: 16,
        input_len: 100,
        predict_len: 50,
        dvq_levels: 2,
        ..BeatConfig::default()
    }
}

/// An ECG ViT at toy size over Beat's 100-sample input: per-lead patches of 25 (48 tokens
/// and a CLS token) of width 16.
pub fn tiny_vit() -> EcgVitConfig {
    EcgVitConfig {
        leads: 12,
        input_len: 100,
        patch_size: 25,
        layout: PatchLayout::PerLead,
        width: 16,
        depth: 1,
        heads: 2,
        head_dim: 8,
        mlp_ratio: 2.0,
        cls_token: true,
        norm_eps: 1e-6,
    }
}

pub const WINDOW_LEN: usize = 150;
pub const IMAGE_SIZE: usize = 64;

/// How a test model is put together.
#[derive(Clone)]
pub struct Setup {
    pub preset: BackbonePreset,
    pub config: HeartcareConfig,
    pub lora: bool,
    pub vision: bool,
    pub seed: u64,
    pub vit: Option<EcgVitConfig>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            preset: BackbonePreset::TinyQwen2,
            config: HeartcareConfig {
                max_seq_len: 96,
                ..HeartcareConfig::default()
            },
            lora: true,
            vision: true,
            seed: 11,
            vit: None,
        }
    }
}

impl Setup {
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            config: self.config.clone(),
            backbone: BackboneSource::Preset(self.preset),
            lora: self
                .lora
                .then(|| LoraConfig::new(8, 16.0, 0.0, &["q_proj", "k_proj", "v_proj", "o_proj"])),
            vision: if self.vision {
                VisionSource::Random(tiny_siglip())
            } else {
                VisionSource::None
            },
            beat: Some(tiny_beat()),
            vit: self.vit.clone(),
            seed: self.seed,
            dtype: DType::F32,
        }
    }

    pub fn build(&self, trainable: &[&str]) -> HeartcareModel {
        HeartcareModel::new(self.spec(), Some(tokenizer()), &Device::Cpu, trainable).unwrap()
    }

    pub fn codes(mut self) -> Self {
        self.config.signal_input = SignalInput::Codes;
        self
    }

    pub fn tiles(mut self) -> Self {
        self.config.tiles = true;
        self
    }
}

fn random(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-1.0f32..1.0) * scale)
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// A signal window `[12, 150]` that depends on `seed`: per lead a sine whose frequency,
/// amplitude and phase come from the seed, plus a little seeded noise.
pub fn window(seed: u64) -> EcgInput {
    let noise = random(&[12, WINDOW_LEN], seed, 0.05);
    let k = (seed % 7) as f32;
    let values: Vec<f32> = (0..12 * WINDOW_LEN)
        .map(|i| {
            let (lead, t) = ((i / WINDOW_LEN) as f32, (i % WINDOW_LEN) as f32);
            (1.0 + 0.3 * k) * (t * (0.04 + 0.03 * k) + lead * (0.5 + k)).sin()
        })
        .collect();
    let clean = Tensor::from_vec(values, (12, WINDOW_LEN), &Device::Cpu).unwrap();
    EcgInput::Window((clean + noise).unwrap())
}

/// Train the model's Beat on its own loss (reconstruction, prediction, VQ) over `windows` for
/// `steps` steps, as stage 1 would, so that its codes tell the windows apart.
pub fn train_beat(model: &HeartcareModel, windows: &[EcgInput], steps: u64) {
    let batch: Vec<Tensor> = windows
        .iter()
        .map(|w| match w {
            EcgInput::Window(t) => t.clone(),
            other => panic!("not a window: {}", other.describe()),
        })
        .collect();
    let batch = Tensor::stack(&batch, 0).unwrap();
    let beat = model.beat().unwrap();
    let vars = model.store(Part::Beat).unwrap().vars();
    let mut opt = AdamW::new(
        vars,
        AdamWConfig {
            lr: 3e-3,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    )
    .unwrap();
    for step in 0..steps {
        let out = beat.forward(&batch, Mode::Train { step }).unwrap();
        opt.step(&out.loss.backward().unwrap()).unwrap();
        beat.update_codebooks(&out).unwrap();
    }
}

/// Seeded random pixels in [-1, 1]: `[3, 64, 64]`, or 12 tiles.
pub fn pixels(seed: u64, tiles: bool) -> EcgInput {
    if tiles {
        EcgInput::Pixels(random(&[12, 3, IMAGE_SIZE, IMAGE_SIZE], seed, 1.0))
    } else {
        EcgInput::Pixels(random(&[3, IMAGE_SIZE, IMAGE_SIZE], seed, 1.0))
    }
}

/// An item over ECGs `files` (name, modality), with no optional fields.
pub fn item(id: &str, question: &str, answer: &str, files: &[(&str, Modality)]) -> Item {
    Item {
        item_type: ItemType::parse("DiagnosisOpenQA"),
        question: question.into(),
        answer: answer.into(),
        filename: files.iter().map(|(f, _)| f.to_string()).collect(),
        label: files.iter().map(|(_, m)| *m).collect(),
        id: Some(id.into()),
        dimension: None,
        options: Vec::new(),
        correct_option: None,
        record_ids: Vec::new(),
        patient_ids: Vec::new(),
        split: None,
        prediction: None,
    }
}

/// The inputs of one ECG `k` in `modalities`, in that order.
pub fn inputs_for(k: u64, modalities: &[Modality], tiles: bool) -> Vec<EcgInput> {
    modalities
        .iter()
        .map(|m| match m {
            Modality::Signal => window(100 + k),
            Modality::Image => pixels(200 + k, tiles),
        })
        .collect()
}

/// Four items with the same question and different answers, told apart only by their ECG.
pub fn memory_set(modalities: &[Modality], tiles: bool) -> Vec<(Item, Vec<EcgInput>)> {
    ANSWERS
        .iter()
        .enumerate()
        .map(|(k, answer)| {
            let name = format!("ecg{k}");
            let files: Vec<(&str, Modality)> =
                modalities.iter().map(|m| (name.as_str(), *m)).collect();
            (
                item(&format!("mem{k}"), QUESTION, answer, &files),
                inputs_for(k as u64, modalities, tiles),
            )
        })
        .collect()
}

pub fn adamw(model: &HeartcareModel, parts: &[&str], lr: f64) -> AdamW {
    AdamW::new(
        model.trainable_vars(parts).unwrap(),
        AdamWConfig {
            lr,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    )
    .unwrap()
}
