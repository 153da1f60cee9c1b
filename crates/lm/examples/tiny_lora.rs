//! End to end on a laptop CPU, in the shape of the real pipeline: train a BPE tokenizer on a few
//! chat items, pre-train `tiny-phi3` (random, seeded) briefly with every weight trainable (a
//! real checkpoint is the pre-trained model), then freeze it, attach LoRA to its attention
//! projections (the paper's targets) and train only the adapters on the answer tokens.
//! Run with `cargo run -p beatlab-lm --example tiny_lora`.

use beatlab_lm::{
    BackbonePreset, BuildOptions, LmTokenizer, Lora, LoraConfig, Special, next_token_loss,
};
use beatlab_nn::ParamStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let items = [
        ("What is the rhythm?", "Sinus rhythm at 72 bpm."),
        ("Is the QRS wide?", "No, the QRS duration is 90 ms."),
        ("Any ST changes?", "ST elevation in V2 to V4."),
        (
            "Is there atrial fibrillation?",
            "Yes, irregularly irregular without P waves.",
        ),
    ];
    let corpus: Vec<String> = items.iter().map(|(q, a)| format!("{q} {a}")).collect();
    let tokenizer = LmTokenizer::train(&corpus, 400)?;

    // `<|user|> question <|assistant|> answer <|end|>`, loss on the answer and `<|end|>` only.
    let mut rows = Vec::new();
    for (q, a) in items {
        let mut ids = vec![tokenizer.special_id(Special::User)];
        ids.extend(tokenizer.encode(&format!(" {q} "))?);
        ids.push(tokenizer.special_id(Special::Assistant));
        let answer_start = ids.len();
        ids.extend(tokenizer.encode(&format!(" {a}"))?);
        ids.push(tokenizer.special_id(Special::End));
        rows.push((ids, answer_start));
    }
    let seq = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
    let (mut ids, mut targets, mut attention) = (Vec::new(), Vec::new(), Vec::new());
    for (row, answer_start) in &rows {
        for t in 0..seq {
            ids.push(row.get(t).copied().unwrap_or(tokenizer.pad_id()));
            targets.push(u8::from(t >= *answer_start && t < row.len()));
            attention.push(u8::from(t < row.len()));
        }
    }
    let dev = Device::Cpu;
    let ids = Tensor::from_vec(ids, (rows.len(), seq), &dev)?;
    let targets = Tensor::from_vec(targets, (rows.len(), seq), &dev)?;
    let attention = Tensor::from_vec(attention, (rows.len(), seq), &dev)?;

    // Stage 0: full training of the tiny backbone (its weights are variables of `base`).
    let base = ParamStore::new(1);
    let full = BackbonePreset::TinyPhi3.build(
        tokenizer.vocab_size(),
        &base,
        DType::F32,
        &dev,
        &BuildOptions::default(),
    )?;
    let mut opt = AdamW::new(
        base.vars().into_iter().map(|(_, v)| v).collect(),
        ParamsAdamW {
            lr: 3e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    for step in 0..6 {
        let loss = next_token_loss(
            &full.forward(&ids, Some(&attention))?,
            &ids,
            Some(&attention),
        )?;
        if step % 5 == 0 {
            println!(
                "pre-train step {step:2}: loss {:.3}",
                loss.to_scalar::<f32>()?
            );
        }
        opt.backward_step(&loss)?;
    }

    // Stage 1: the same weights frozen, LoRA adapters on the attention projections.
    let lora = Lora::new(
        LoraConfig::new(8, 16.0, 0.05, &["qkv_proj", "o_proj"]),
        ParamStore::new(2),
    )?;
    let opts = BuildOptions {
        lora: Some(lora.clone()),
        freeze_base: true,
    };
    let model =
        BackbonePreset::TinyPhi3.build(tokenizer.vocab_size(), &base, DType::F32, &dev, &opts)?;
    let mut opt = AdamW::new(
        lora.store().vars().into_iter().map(|(_, v)| v).collect(),
        ParamsAdamW {
            lr: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    for step in 0..30 {
        let logits = model.forward(&ids, Some(&attention))?;
        let loss = next_token_loss(&logits, &ids, Some(&targets))?;
        if step % 5 == 0 {
            println!(
                "LoRA step {step:2}: answer loss {:.3}",
                loss.to_scalar::<f32>()?
            );
        }
        opt.backward_step(&loss)?;
    }
    println!(
        "{} adapter tensors, {} trainable parameters",
        lora.store().vars().len(),
        lora.store().num_params()
    );
    Ok(())
}
