//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use beatlab_nn::ParamStore;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Largest absolute element-wise difference of two same-shaped tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest absolute element of a tensor.
pub fn max_abs(a: &Tensor) -> f32 {
    a.to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Add seeded noise to every variable of `store` (so norm weights and biases are not 1 / 0 and
/// a parity test exercises every multiplication).
pub fn perturb(store: &ParamStore, seed: u64, std: f32) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (_, var) in store.vars() {
        let n = var.elem_count();
        let noise: Vec<f32> = (0..n)
            .map(|_| (rng.random::<f32>() - 0.5) * 2.0 * std)
            .collect();
        let noise = Tensor::from_vec(noise, var.shape(), var.device()).unwrap();
        let updated = (var.as_tensor().detach() + noise).unwrap();
        var.set(&updated).unwrap();
    }
}

/// Random token ids `[batch, seq]` below `vocab`.
pub fn random_ids(batch: usize, seq: usize, vocab: usize, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect();
    Tensor::from_vec(ids, (batch, seq), &Device::Cpu).unwrap()
}

/// Values of every variable, for bit-exact comparison later.
pub fn snapshot(store: &ParamStore) -> BTreeMap<String, Vec<f32>> {
    store
        .vars()
        .into_iter()
        .map(|(name, var)| {
            let values = var
                .as_tensor()
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (name, values)
        })
        .collect()
}

/// A small instruction-like corpus for tokenizer training.
pub fn corpus() -> Vec<String> {
    let mut lines = Vec::new();
    let rhythms = [
        "sinus rhythm",
        "atrial fibrillation",
        "sinus bradycardia",
        "sinus tachycardia",
    ];
    let findings = [
        "normal ECG",
        "left bundle branch block",
        "ST elevation in V2-V4",
        "prolonged QT interval",
    ];
    for (i, r) in rhythms.iter().enumerate() {
        for (j, f) in findings.iter().enumerate() {
            lines.push(format!(
                "<|user|> What is the rhythm of this ECG? <|assistant|> The rhythm is {r}; heart rate {} bpm, {f}.<|end|>",
                60 + 7 * i + 3 * j
            ));
            lines.push(format!(
                "<image_start><image_end><signal_start><signal_end> Describe the waveform: {f} with {r}."
            ));
        }
    }
    lines
}
