//! CPU/accelerator parity of Beat training: one Beat cell trained for a fixed number of steps
//! on the CPU and on another device, from the same initial weights and the same windows (both
//! made on the host from the seed), with every step's loss on both sides and their relative
//! differences checked against the precision's tolerance (f32: under 1e-3 after 50 steps).
//!
//! Each side trains with [`BeatTraining::step`], the step the `beat` stage trains with, so parity
//! certifies the product's own loop. `beatlab parity --device cuda` runs it on a GPU machine
//! (through `scripts/run-on-gpu.sh`); with `--device cpu` both sides are the CPU, a self-check of
//! the procedure.

use std::fmt;

use beatlab_nn::beat::BeatConfig;
use beatlab_nn::optim::AdamWConfig;
use candle_core::{DType, Device, DeviceLocation, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::runner::StageError;
use crate::stages::beat::{BeatTraining, TrainingSetup};

/// Knobs of a parity run. `Default`: the paper configuration, 50 steps of 32 windows, seed 0,
/// f32 tolerance 1e-3.
#[derive(Debug, Clone)]
pub struct ParityOptions {
    /// The device compared with the CPU.
    pub device: Device,
    /// The Beat cell (the benchmark's paper configuration by default).
    pub config: BeatConfig,
    pub steps: usize,
    /// Windows per step.
    pub batch: usize,
    /// Seeds the weights and the windows of both sides.
    pub seed: u64,
    /// Largest relative difference of the last step's loss that counts as agreement.
    pub tolerance: f64,
}

impl Default for ParityOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            config: BeatConfig::paper(),
            steps: 50,
            batch: 32,
            seed: 0,
            tolerance: 1e-3,
        }
    }
}

/// The losses of both sides and how far apart they are.
#[derive(Debug, Clone, Serialize)]
pub struct ParityReport {
    /// The compared device (`cpu`, `cuda:N`).
    pub device: String,
    pub steps: usize,
    pub batch: usize,
    pub seed: u64,
    pub tolerance: f64,
    /// The loss of every step on the CPU.
    pub cpu_losses: Vec<f32>,
    /// The loss of every step on the device.
    pub device_losses: Vec<f32>,
    /// `|cpu - device| / |cpu|` of every step.
    pub relative_differences: Vec<f64>,
    /// The relative difference of the last step: the figure checked against the tolerance.
    pub final_relative_difference: f64,
    pub max_relative_difference: f64,
    pub agrees: bool,
}

/// The paper's optimiser (AdamW at 1e-4 without weight decay) and gradient clipping at 1.0, for
/// `config` on `device` with parameters seeded by `seed`.
pub fn paper_training(
    config: &BeatConfig,
    seed: u64,
    device: &Device,
) -> Result<BeatTraining, StageError> {
    BeatTraining::new(TrainingSetup {
        config: config.clone(),
        seed,
        optimizer: AdamWConfig {
            lr: PAPER_LR,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
        grad_clip: 1.0,
        dtype: DType::F32,
        device: device.clone(),
    })
}

/// The paper's Beat learning rate.
pub const PAPER_LR: f64 = 1e-4;

/// Trains the cell on the CPU, then on `options.device`, and compares the losses.
pub fn run(
    options: &ParityOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<ParityReport, StageError> {
    let device = device_name(&options.device);
    let losses = |on: &Device| -> Result<Vec<f32>, StageError> {
        let mut training = paper_training(&options.config, options.seed, on)?;
        let windows = sine_windows(&options.config, options.batch, options.seed, on)?;
        (0..options.steps as u64)
            .map(|step| {
                let losses = training.step(&windows, step, PAPER_LR, None)?;
                Ok(losses.loss as f32)
            })
            .collect()
    };
    let steps = options.steps;
    progress(&format!("parity: {steps} Beat training steps on the cpu"));
    let cpu_losses = losses(&Device::Cpu)?;
    progress(&format!("parity: the same {steps} steps on {device}"));
    let device_losses = losses(&options.device)?;
    let relative_differences: Vec<f64> = cpu_losses
        .iter()
        .zip(&device_losses)
        .map(|(&a, &b)| relative_difference(a, b))
        .collect();
    let final_relative_difference = relative_differences.last().copied().unwrap_or(0.0);
    let max_relative_difference = relative_differences.iter().copied().fold(0.0, f64::max);
    Ok(ParityReport {
        device,
        steps,
        batch: options.batch,
        seed: options.seed,
        tolerance: options.tolerance,
        agrees: final_relative_difference < options.tolerance,
        cpu_losses,
        device_losses,
        relative_differences,
        final_relative_difference,
        max_relative_difference,
    })
}

/// Training windows `[batch, leads, input_len + predict_len]`: sums of a few sines with random
/// frequencies and phases per window and lead, from a seeded generator (made on the host, so
/// every device gets the same values).
pub fn sine_windows(
    cfg: &BeatConfig,
    batch: usize,
    seed: u64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let len = cfg.input_len + cfg.predict_len;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(batch * cfg.leads * len);
    for _ in 0..batch * cfg.leads {
        let waves: Vec<(f32, f32, f32)> = (0..3)
            .map(|_| {
                (
                    rng.random_range(0.005f32..0.04) * std::f32::consts::TAU,
                    rng.random_range(0f32..std::f32::consts::TAU),
                    rng.random_range(0.2f32..1.0),
                )
            })
            .collect();
        values.extend((0..len).map(|t| {
            waves
                .iter()
                .map(|&(freq, phase, amp)| amp * (freq * t as f32 + phase).sin())
                .sum::<f32>()
        }));
    }
    Tensor::from_vec(values, (batch, cfg.leads, len), &Device::Cpu)?.to_device(device)
}

/// The device as PyTorch names it (`cpu`, `cuda:N`).
pub fn device_name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".into(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { .. } => "mps".into(),
    }
}

/// `|a - b| / |a|`; infinite when only one side is finite or `a` is 0 and `b` is not.
fn relative_difference(a: f32, b: f32) -> f64 {
    let (a, b) = (f64::from(a), f64::from(b));
    if a == b {
        0.0
    } else if !a.is_finite() || !b.is_finite() || a == 0.0 {
        f64::INFINITY
    } else {
        (a - b).abs() / a.abs()
    }
}

impl fmt::Display for ParityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "parity: Beat, {} steps of {} windows, seed {}, cpu against {}",
            self.steps, self.batch, self.seed, self.device
        )?;
        writeln!(
            f,
            "  step  cpu loss    {:<11} relative difference",
            self.device
        )?;
        let last = self.steps.saturating_sub(1);
        for (step, ((a, b), d)) in self
            .cpu_losses
            .iter()
            .zip(&self.device_losses)
            .zip(&self.relative_differences)
            .enumerate()
        {
            if step % 10 == 0 || step == last {
                writeln!(f, "  {step:>4}  {a:<10.6}  {b:<10.6}  {}", sci(*d))?;
            }
        }
        writeln!(
            f,
            "  last step: relative difference {} (largest over the steps {}); tolerance {:.0e}: {}",
            sci(self.final_relative_difference),
            sci(self.max_relative_difference),
            self.tolerance,
            if self.agrees { "agree" } else { "DISAGREE" }
        )
    }
}

/// `0` for an exact zero, else two significant figures with an exponent.
fn sci(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else {
        format!("{x:.1e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny cell: both sides on the CPU give the same losses bit for bit, and the losses
    /// move (the steps train).
    #[test]
    fn the_cpu_against_itself_agrees_exactly_while_training() {
        let config = BeatConfig {
            width: 16,
            heads: 2,
            head_dim: Some(8),
            encoder_depth: 1,
            decoder_depth: 1,
            codebook_size: 16,
            input_len: 100,
            predict_len: 50,
            ..BeatConfig::paper()
        };
        let options = ParityOptions {
            config,
            steps: 3,
            batch: 2,
            ..ParityOptions::default()
        };
        let mut lines = Vec::new();
        let report = run(&options, &mut |l| lines.push(l.to_string())).unwrap();
        assert_eq!(report.cpu_losses, report.device_losses);
        assert_eq!(report.max_relative_difference, 0.0);
        assert!(report.agrees);
        assert_eq!(report.cpu_losses.len(), 3);
        assert_ne!(
            report.cpu_losses[0], report.cpu_losses[2],
            "the steps train"
        );
        assert_eq!(lines.len(), 2);
        let text = report.to_string();
        assert!(text.contains("tolerance 1e-3: agree"), "{text}");
    }

    #[test]
    fn windows_are_seeded_and_shaped_like_training_windows() {
        let cfg = BeatConfig::default();
        let a = sine_windows(&cfg, 2, 7, &Device::Cpu).unwrap();
        let b = sine_windows(&cfg, 2, 7, &Device::Cpu).unwrap();
        let c = sine_windows(&cfg, 2, 8, &Device::Cpu).unwrap();
        assert_eq!(a.dims(), &[2, 12, 1500]);
        let diff = |x: &Tensor, y: &Tensor| {
            (x - y)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(diff(&a, &b), 0.0);
        assert!(diff(&a, &c) > 0.1);
    }

    #[test]
    fn the_device_is_named_as_pytorch_names_it() {
        assert_eq!(device_name(&Device::Cpu), "cpu");
    }

    #[test]
    fn relative_differences_flag_one_sided_infinities() {
        assert_eq!(relative_difference(2.0, 2.0), 0.0);
        assert!((relative_difference(2.0, 2.002) - 1e-3).abs() < 1e-6);
        assert_eq!(relative_difference(1.0, f32::NAN), f64::INFINITY);
        assert_eq!(relative_difference(0.0, 1e-9), f64::INFINITY);
    }
}
