//! Shared helpers of the beatlab-nn integration tests: simulated windows and a small config.

#![allow(dead_code)]

use beatlab_nn::BeatConfig;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `batch` windows `[batch, leads, len]`, each lead a sum of three sines. Frequencies (0.5 to 4
/// cycles per 100 samples) and phases are fixed per lead and component; the amplitudes (in
/// [-1, 1]) are drawn per window, so a window is described by `3 * leads` numbers that a small
/// model can learn to encode within a short test. The sines run on across the whole window, so
/// the part after the input is predictable from the input. Seeded: same seed, same data.
pub fn sine_windows(batch: usize, leads: usize, len: usize, seed: u64) -> Tensor {
    let mut shape_rng = ChaCha8Rng::seed_from_u64(0);
    let waves: Vec<Vec<(f32, f32)>> = (0..leads)
        .map(|_| {
            (0..3)
                .map(|_| {
                    let freq = shape_rng.random_range(0.005f32..0.04);
                    let phase = shape_rng.random_range(0.0f32..std::f32::consts::TAU);
                    (freq, phase)
                })
                .collect()
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(batch * leads * len);
    for _ in 0..batch {
        for lead_waves in &waves {
            let amps: Vec<f32> = lead_waves
                .iter()
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            for t in 0..len {
                let v: f32 = lead_waves
                    .iter()
                    .zip(&amps)
                    .map(|(&(f, p), a)| a * (std::f32::consts::TAU * f * t as f32 + p).sin())
                    .sum();
                values.push(v);
            }
        }
    }
    Tensor::from_vec(values, (batch, leads, len), &Device::Cpu).expect("window tensor")
}

/// A Beat small enough to train in seconds on a CPU: 3 leads, patches of 10, 100 input and 50
/// predicted samples (10 patches, 5 queries), width 32, one block each side, 16 codes.
pub fn tiny_config() -> BeatConfig {
    BeatConfig {
        leads: 3,
        patch_size: 10,
        width: 32,
        encoder_depth: 1,
        decoder_depth: 1,
        heads: 4,
        head_dim: None,
        mlp_ratio: 2.0,
        query_ratio: 0.5,
        codebook_size: 16,
        input_len: 100,
        predict_len: 50,
        ..BeatConfig::default()
    }
}

/// A model, its store and its optimiser: one training run.
pub struct Run {
    pub store: beatlab_nn::ParamStore,
    pub beat: beatlab_nn::Beat,
    pub opt: beatlab_nn::optim::AdamW,
}

impl Run {
    pub fn new(cfg: BeatConfig, seed: u64, lr: f64) -> Run {
        let store = beatlab_nn::ParamStore::new(seed);
        let beat = beatlab_nn::Beat::new(cfg, &store, candle_core::DType::F32, &Device::Cpu)
            .expect("build Beat");
        let opt = beatlab_nn::optim::AdamW::new(
            store.vars(),
            beatlab_nn::optim::AdamWConfig {
                lr,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .expect("optimiser");
        Run { store, beat, opt }
    }

    /// One training step as the runner does it (forward, backward, clip at 1.0, AdamW, EMA
    /// codebook update); returns the loss before the step.
    pub fn step(&mut self, windows: &Tensor, step: u64) -> f32 {
        let out = self
            .beat
            .forward(windows, beatlab_nn::Mode::Train { step })
            .expect("forward");
        let mut grads = out.loss.backward().expect("backward");
        let vars = self.opt.vars();
        beatlab_nn::optim::clip_grad_norm(&mut grads, &vars, 1.0).expect("clip");
        self.opt.step(&grads).expect("optimiser step");
        self.beat.update_codebooks(&out).expect("codebook update");
        out.loss.to_scalar::<f32>().expect("loss value")
    }
}

/// The values of a tensor, flattened.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .expect("tensor values")
}
