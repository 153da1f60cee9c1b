//! Training speed of Beat at the paper's configuration: forward, backward, gradient clipping,
//! AdamW step and EMA codebook update per batch, on simulated windows.
//!
//! `cargo run --release -p beatlab-nn --example beat_speed -- [batch] [steps] [head_dim]`
//! (defaults: batch 32, 10 timed steps after 2 warm-up steps, the paper's head width 64;
//! `head_dim` 0 means width / heads = 16). Prints the parameter count and windows per second.
//! Builds with `--features cuda` run on the GPU when one is present. Candle's CPU thread count
//! follows `RAYON_NUM_THREADS`.

use std::time::Instant;

use beatlab_nn::optim::{AdamW, AdamWConfig, clip_grad_norm};
use beatlab_nn::{Beat, BeatConfig, Mode, ParamStore};
use candle_core::{DType, Device, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let batch: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(32);
    let steps: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10);
    let head_dim: Option<usize> = args.next().map(|a| a.parse()).transpose()?;
    let warmup = 2;
    let device = if candle_core::utils::cuda_is_available() {
        Device::new_cuda(0)?
    } else {
        Device::Cpu
    };

    let mut cfg = BeatConfig::default();
    if let Some(d) = head_dim {
        cfg.head_dim = (d > 0).then_some(d);
    }
    let store = ParamStore::new(0);
    let beat = Beat::new(cfg.clone(), &store, DType::F32, &device)?;
    let vars = store.vars();
    let n_params = store.num_params();
    let n_buffers: usize = store.buffers().iter().map(|(_, b)| b.elem_count()).sum();
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            lr: 1e-4,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    )?;

    // Windows of sums of sines, varied per window and lead, on the device.
    let len = cfg.input_len + cfg.predict_len;
    let t = Tensor::arange(0u32, len as u32, &device)?.to_dtype(DType::F32)?;
    let freqs = Tensor::rand(0.005f32, 0.04, (batch, cfg.leads, 1), &device)?;
    let phase = Tensor::rand(0f32, std::f32::consts::TAU, (batch, cfg.leads, 1), &device)?;
    let windows = (t
        .reshape((1, 1, len))?
        .broadcast_mul(&(freqs * std::f64::consts::TAU)?)?)
    .broadcast_add(&phase)?
    .sin()?;

    // Seconds spent in: forward, backward, clipping + AdamW, EMA codebook update.
    let mut phases = [0.0f64; 4];
    let mut cpu_start = None;
    let mut last_loss = 0.0f32;
    for step in 0..warmup + steps {
        if step == warmup {
            cpu_start = process_cpu_seconds();
        }
        let mut marks = [Instant::now(); 5];
        let out = beat.forward(&windows, Mode::Train { step: step as u64 })?;
        last_loss = out.loss.to_scalar::<f32>()?;
        marks[1] = Instant::now();
        let mut grads = out.loss.backward()?;
        device.synchronize()?;
        marks[2] = Instant::now();
        clip_grad_norm(&mut grads, &vars, 1.0)?;
        opt.step(&grads)?;
        device.synchronize()?;
        marks[3] = Instant::now();
        beat.update_codebooks(&out)?;
        device.synchronize()?;
        marks[4] = Instant::now();
        if step >= warmup {
            for (i, p) in phases.iter_mut().enumerate() {
                *p += (marks[i + 1] - marks[i]).as_secs_f64();
            }
        }
    }
    let timed: f64 = phases.iter().sum();
    let cpu = cpu_start.zip(process_cpu_seconds()).map(|(a, b)| b - a);
    println!(
        "device: {device:?}, threads: {}",
        candle_core::utils::get_num_threads()
    );
    println!(
        "Beat paper config (head_dim {:?}): {n_params} trainable parameters ({:.2} M), \
         {n_buffers} buffer values",
        beat.dims().head_dim,
        n_params as f64 / 1e6
    );
    println!(
        "batch {batch}: {:.1} ms/step, {:.1} windows/s (last loss {last_loss:.4})",
        timed / steps as f64 * 1e3,
        (batch * steps) as f64 / timed
    );
    if let Some(cpu) = cpu {
        // On a shared machine the wall clock includes time other processes held the cores;
        // CPU time does not, so windows per CPU-second is the steadier number to compare.
        println!(
            "CPU time {:.1} ms/step, {:.1} windows per CPU-second",
            cpu / steps as f64 * 1e3,
            (batch * steps) as f64 / cpu
        );
    }
    let ms = |s: f64| s / steps as f64 * 1e3;
    println!(
        "per step: forward {:.1} ms, backward {:.1} ms, clip + AdamW {:.1} ms, codebook EMA {:.1} ms",
        ms(phases[0]),
        ms(phases[1]),
        ms(phases[2]),
        ms(phases[3])
    );
    Ok(())
}

/// User + system CPU time of this process (all threads), from `/proc/self/stat` (Linux; procfs
/// counts in USER_HZ = 100 ticks per second). `None` elsewhere.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start at state = field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
