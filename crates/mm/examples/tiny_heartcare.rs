//! HeartcareGPT end to end at toy size on a CPU: a tiny Beat, tiny SigLIP and tiny Qwen2 (all
//! random, seeded), four items with the same question whose answers depend only on the ECG
//! (signal and image), a projector warm-up then a joint LoRA + projector stage, then likelihood
//! scoring and greedy generation. Prints the loss and the time per optimiser step.
//! Run with `cargo run --release -p beatlab-mm --example tiny_heartcare [phi3]`.

use std::time::Instant;

use beatlab_heartcare::instruct::{Item, ItemType, Modality};
use beatlab_lm::presets::tiny_siglip;
use beatlab_lm::{BackbonePreset, LmTokenizer, LoraConfig};
use beatlab_mm::{
    BackboneSource, EcgInput, Example, HeartcareConfig, HeartcareModel, ModelSpec, Part,
    VisionSource,
};
use beatlab_nn::optim::{AdamW, AdamWConfig};
use beatlab_nn::{BeatConfig, Mode};
use candle_core::{DType, Device, Tensor};

const QUESTION: &str = "What does this ECG show?";
const ANSWERS: [&str; 4] = [
    "Sinus rhythm.",
    "Atrial fibrillation.",
    "Left bundle branch block.",
    "Inferior infarction.",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let preset = match std::env::args().nth(1).as_deref() {
        Some("phi3") => BackbonePreset::TinyPhi3,
        _ => BackbonePreset::TinyQwen2,
    };
    let dev = Device::Cpu;
    let corpus: Vec<String> = ANSWERS.iter().map(|a| format!("{QUESTION} {a}")).collect();
    let tokenizer = LmTokenizer::train(&corpus, 320)?;
    let beat = BeatConfig {
        patch_size: 10,
        width: 32,
        encoder_depth: 1,
        decoder_depth: 1,
        heads: 2,
        head_dim: None,
        mlp_ratio: 2.0,
        codebook_size: 16,
        input_len: 100,
        predict_len: 50,
        ..BeatConfig::default()
    };
    let spec = ModelSpec {
        config: HeartcareConfig {
            max_seq_len: 96,
            ..HeartcareConfig::default()
        },
        backbone: BackboneSource::Preset(preset),
        lora: Some(LoraConfig::new(
            8,
            16.0,
            0.0,
            &["q_proj", "k_proj", "v_proj", "o_proj"],
        )),
        vision: VisionSource::Random(tiny_siglip()),
        beat: Some(beat),
        vit: None,
        seed: 7,
        dtype: DType::F32,
    };
    let mut model = HeartcareModel::new(spec, Some(tokenizer), &dev, &["projector"])?;

    let items: Vec<Item> = ANSWERS
        .iter()
        .enumerate()
        .map(|(k, a)| Item {
            item_type: ItemType::parse("DiagnosisOpenQA"),
            question: QUESTION.into(),
            answer: a.to_string(),
            filename: vec![format!("ecg{k}"); 2],
            label: vec![Modality::Signal, Modality::Image],
            id: Some(format!("mem{k}")),
            dimension: None,
            options: Vec::new(),
            correct_option: None,
            record_ids: Vec::new(),
            patient_ids: Vec::new(),
            split: None,
            prediction: None,
        })
        .collect();
    // Deterministic stand-ins for ECGs: a sine per lead whose frequency depends on the item,
    // and an image of stripes whose spacing does.
    let raw: Vec<Vec<EcgInput>> = (0..items.len())
        .map(|k| -> candle_core::Result<Vec<EcgInput>> {
            let f = 0.05 + 0.04 * k as f32;
            let window: Vec<f32> = (0..12 * 150)
                .map(|i| ((i % 150) as f32 * f + (i / 150) as f32).sin())
                .collect();
            let image: Vec<f32> = (0..3 * 64 * 64)
                .map(|i| ((i % 64) as f32 * f * 2.0 + (i / 4096) as f32).sin())
                .collect();
            Ok(vec![
                EcgInput::Window(Tensor::from_vec(window, (12, 150), &dev)?),
                EcgInput::Pixels(Tensor::from_vec(image, (3, 64, 64), &dev)?),
            ])
        })
        .collect::<candle_core::Result<_>>()?;
    // Stage 1, briefly: Beat on its own loss, so that its codes tell the windows apart (an
    // untrained Beat gives every window the same codes).
    let windows: Vec<Tensor> = raw
        .iter()
        .map(|x| match &x[0] {
            EcgInput::Window(w) => w.clone(),
            _ => unreachable!("the first input is the window"),
        })
        .collect();
    let windows = Tensor::stack(&windows, 0)?;
    let beat = model.beat().ok_or("the model has Beat")?;
    let mut beat_opt = AdamW::new(
        model.store(Part::Beat).ok_or("Beat has a store")?.vars(),
        AdamWConfig {
            lr: 3e-3,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    )?;
    let started = Instant::now();
    for step in 0..50 {
        let out = beat.forward(&windows, Mode::Train { step })?;
        beat_opt.step(&out.loss.backward()?)?;
        beat.update_codebooks(&out)?;
    }
    println!(
        "Beat: {:.1} ms per step",
        started.elapsed().as_secs_f64() * 1e3 / 50.0
    );

    // Beat and SigLIP stay frozen from here on: encode every ECG once.
    let started = Instant::now();
    let inputs: Vec<Vec<EcgInput>> = raw
        .iter()
        .map(|i| model.precompute(i))
        .collect::<Result<_, _>>()?;
    println!(
        "precomputed {} ECGs in {:.1} ms",
        items.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let examples: Vec<Example> = items
        .iter()
        .zip(&inputs)
        .map(|(i, x)| Example::new(i, x))
        .collect();

    for (stage, parts, lr, steps) in [
        ("warm-up", &["projector"][..], 3e-3, 40),
        ("joint", &["projector", "lora"][..], 2e-2, 80),
    ] {
        model.set_trainable(parts)?;
        let mut opt = AdamW::new(
            model.trainable_vars(parts)?,
            AdamWConfig {
                lr,
                weight_decay: 0.0,
                ..AdamWConfig::default()
            },
        )?;
        let started = Instant::now();
        let mut last = 0.0;
        for step in 0..steps {
            let stats = model.train_step(&mut opt, &examples, Some(1.0))?;
            if step == 0 || step + 1 == steps {
                println!("{stage} step {step:3}: loss {:.3}", stats.loss);
            }
            last = stats.loss;
        }
        let per_step = started.elapsed().as_secs_f64() * 1e3 / steps as f64;
        println!(
            "{stage}: {per_step:.1} ms per step (batch {}), final loss {last:.3}",
            examples.len()
        );
    }

    model.set_trainable::<&str>(&[])?;
    let options: Vec<String> = ANSWERS.iter().map(|a| a.to_string()).collect();
    for (k, ex) in examples.iter().enumerate() {
        let scores = model.score_options(ex.item, ex.inputs, &options)?;
        let best = (0..scores.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .unwrap_or(0);
        let generation = model.generate(ex.item, ex.inputs, 40)?;
        println!(
            "item {k}: best option {best} (right: {k}), generated {:?}",
            generation.text
        );
    }
    Ok(())
}
