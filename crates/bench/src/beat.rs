//! Beat training throughput: windows per second of full training steps at the paper
//! configuration (forward, backward, global-norm clipping at 1.0, AdamW, EMA codebook update),
//! ours (`beatlab_nn::Beat` on candle) against the same model in PyTorch (`bench/beat_torch.py`).
//!
//! Both sides report achieved FLOP/s: the model's matrix-product FLOPs per step, counted
//! analytically layer by layer ([`train_step_flops`]), times steps per second. The machine's peak
//! is the best rate of a large f32 matrix product, measured in candle (gemm) and in PyTorch on
//! the same threads; the higher of the two is the peak both utilisations are taken against.

use std::collections::BTreeMap;

use beatlab::parity::{PAPER_LR, device_name as torch_device, paper_training, sine_windows};
use beatlab::stages::beat::{BeatTraining, PhaseTimes};
use beatlab_nn::{BeatConfig, ConfigError};
use candle_core::{Device, Tensor};
use serde::Deserialize;

use super::{BenchError, Comparison, Peer, PeerRound, Timer, alternate, finish_peer};

/// Knobs of the Beat benchmark. `Default`: the paper's batch of 32 on the CPU, 3 warm-up
/// steps, 5 timed rounds of 2 steps.
#[derive(Debug, Clone)]
pub struct BeatOptions {
    /// Where our model runs; the peer is given the same kind of device (`cpu`, `cuda:N`).
    pub device: Device,
    /// Windows per step.
    pub batch: usize,
    /// Untimed steps first (allocator, caches, lazily built kernels).
    pub warmup: usize,
    /// Timed rounds; the median round is reported.
    pub rounds: usize,
    /// Steps per timed round.
    pub steps: usize,
    /// Side of the square f32 matrices whose product measures the peak.
    pub peak_size: usize,
    /// Products timed for the peak (the best counts).
    pub peak_reps: usize,
    /// Seeds the parameters and the windows.
    pub seed: u64,
}

impl Default for BeatOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            batch: 32,
            warmup: 3,
            rounds: 5,
            steps: 2,
            peak_size: 2048,
            peak_reps: 10,
            seed: 0,
        }
    }
}

/// One matrix-product workload of a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulOp {
    /// A linear layer applied to `rows` rows. `input_grad`: the backward pass also needs the
    /// gradient of its input (false only for the first layer, which reads the data).
    Linear {
        rows: usize,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        input_grad: bool,
    },
    /// Self-attention of `sequences` (batch x heads) sequences of `seq_len` tokens with heads
    /// of `head_dim`: the score product and the weighted sum of values.
    Attention {
        sequences: usize,
        seq_len: usize,
        head_dim: usize,
    },
    /// Distances of `rows` vectors to `codes` codes of width `dim` (a quantizer level); no
    /// gradient flows through it.
    CodeDistances {
        rows: usize,
        codes: usize,
        dim: usize,
    },
}

impl MatmulOp {
    /// Forward FLOPs (a multiply-add counts 2).
    pub fn forward_flops(&self) -> f64 {
        match *self {
            Self::Linear {
                rows,
                in_dim,
                out_dim,
                ..
            } => 2.0 * (rows * in_dim * out_dim) as f64,
            Self::Attention {
                sequences,
                seq_len,
                head_dim,
            } => 2.0 * 2.0 * (sequences * seq_len * seq_len * head_dim) as f64,
            Self::CodeDistances { rows, codes, dim } => 2.0 * (rows * codes * dim) as f64,
        }
    }

    /// Backward FLOPs: for `y = x W`, `dW = x^T dy` and (when needed) `dx = dy W^T`, each as
    /// costly as the forward product; attention differentiates both of its products with
    /// respect to both operands. Recomputation an implementation may choose (ours recomputes
    /// the attention probabilities) is not model work and is not counted.
    pub fn backward_flops(&self) -> f64 {
        match *self {
            Self::Linear { input_grad, .. } => {
                self.forward_flops() * if input_grad { 2.0 } else { 1.0 }
            }
            Self::Attention { .. } => 2.0 * self.forward_flops(),
            Self::CodeDistances { .. } => 0.0,
        }
    }
}

/// The matrix products of one training step of Beat on `batch` windows, layer by layer:
/// patch embedding, each encoder block (q/k/v projection, attention, output projection, two MLP
/// layers), the quantizer's code distances per level, each decoder block, the output head on
/// the reconstructed patches and on the predicted ones, and the query map when the config has
/// one. Elementwise work (norms, softmax, GELU, losses, AdamW) is left out: it is a few percent
/// of the FLOPs and runs far from the matrix units' peak anyway.
pub fn matmul_inventory(cfg: &BeatConfig, batch: usize) -> Result<Vec<MatmulOp>, ConfigError> {
    let dims = cfg.validate()?;
    let w = cfg.width;
    let inner = cfg.heads * dims.head_dim;
    let seq = dims.patches + dims.queries;
    let linear = |rows, in_dim, out_dim| MatmulOp::Linear {
        rows,
        in_dim,
        out_dim,
        bias: true,
        input_grad: true,
    };
    let block = |ops: &mut Vec<MatmulOp>| {
        let rows = batch * seq;
        ops.push(linear(rows, w, 3 * inner));
        ops.push(MatmulOp::Attention {
            sequences: batch * cfg.heads,
            seq_len: seq,
            head_dim: dims.head_dim,
        });
        ops.push(linear(rows, inner, w));
        ops.push(linear(rows, w, dims.mlp_hidden));
        ops.push(linear(rows, dims.mlp_hidden, w));
    };
    let mut ops = vec![MatmulOp::Linear {
        rows: batch * dims.patches,
        in_dim: dims.patch_values,
        out_dim: w,
        bias: true,
        input_grad: false,
    }];
    for _ in 0..cfg.encoder_depth {
        block(&mut ops);
    }
    for _ in 0..cfg.dvq_levels {
        ops.push(MatmulOp::CodeDistances {
            rows: batch * dims.queries,
            codes: cfg.codebook_size,
            dim: w,
        });
    }
    for _ in 0..cfg.decoder_depth {
        block(&mut ops);
    }
    ops.push(linear(batch * dims.patches, w, dims.patch_values));
    if dims.predict_patches != dims.queries {
        // [B, W, Q] -> [B, W, P']: the map runs over the query axis of every channel.
        ops.push(linear(batch * w, dims.queries, dims.predict_patches));
    }
    ops.push(linear(batch * dims.predict_patches, w, dims.patch_values));
    Ok(ops)
}

/// Trainable parameters of Beat, counted from the config alone: every linear layer of
/// [`matmul_inventory`] once (the prediction head only when it is not shared), plus positional
/// and learned tokens and LayerNorm gains and biases. Checked against the built model by a
/// test, so that the inventory the FLOP count rests on is the model's real layer list.
pub fn param_count(cfg: &BeatConfig) -> Result<usize, ConfigError> {
    let dims = cfg.validate()?;
    let w = cfg.width;
    let inner = cfg.heads * dims.head_dim;
    let linear = |i: usize, o: usize| i * o + o;
    let norm = 2 * w;
    let block = 2 * norm
        + linear(w, 3 * inner)
        + linear(inner, w)
        + linear(w, dims.mlp_hidden)
        + linear(dims.mlp_hidden, w);
    let head = linear(w, dims.patch_values);
    let mut total = linear(dims.patch_values, w)
        + (dims.patches + dims.queries) * w // encoder positions
        + dims.queries * w // query tokens
        + cfg.encoder_depth * block
        + norm
        + dims.patches * w // decoder mask tokens
        + dims.queries * w // latent positions
        + cfg.decoder_depth * block
        + norm
        + head;
    if !cfg.share_output_head {
        total += head;
    }
    if dims.predict_patches != dims.queries {
        total += linear(dims.queries, dims.predict_patches);
    }
    Ok(total)
}

/// Forward and backward matrix-product FLOPs of one training step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepFlops {
    pub forward: f64,
    pub backward: f64,
}

impl StepFlops {
    pub fn total(&self) -> f64 {
        self.forward + self.backward
    }
}

/// The FLOPs of one training step on `batch` windows (see [`matmul_inventory`]).
pub fn train_step_flops(cfg: &BeatConfig, batch: usize) -> Result<StepFlops, ConfigError> {
    let ops = matmul_inventory(cfg, batch)?;
    Ok(StepFlops {
        forward: ops.iter().map(MatmulOp::forward_flops).sum(),
        backward: ops.iter().map(MatmulOp::backward_flops).sum(),
    })
}

/// The best rate, in GFLOP/s, of `reps` products of two `size x size` f32 matrices on `device`
/// (after one untimed product).
pub fn matmul_peak_gflops(device: &Device, size: usize, reps: usize) -> Result<f64, BenchError> {
    let a = Tensor::randn(0f32, 1.0, (size, size), device)?;
    let b = Tensor::randn(0f32, 1.0, (size, size), device)?;
    a.matmul(&b)?;
    device.synchronize()?;
    let flops = 2.0 * (size as f64).powi(3);
    let mut best = 0f64;
    for _ in 0..reps.max(1) {
        let start = std::time::Instant::now();
        let c = a.matmul(&b)?;
        device.synchronize()?;
        let seconds = start.elapsed().as_secs_f64();
        drop(c);
        best = best.max(flops / seconds / 1e9);
    }
    Ok(best)
}

/// Our side: the product's Beat training (the `beat` stage's step, with the paper's optimiser)
/// and a fixed batch, stepped like a training loop.
pub(super) struct Trainer {
    training: BeatTraining,
    batch: Tensor,
    steps_done: u64,
}

impl Trainer {
    pub(super) fn new(options: &BeatOptions, cfg: &BeatConfig) -> Result<Self, BenchError> {
        Ok(Self {
            training: paper_training(cfg, options.seed, &options.device)?,
            batch: sine_windows(cfg, options.batch, options.seed, &options.device)?,
            steps_done: 0,
        })
    }

    fn params(&self) -> usize {
        self.training.num_params()
    }

    /// One step; returns the milliseconds of forward, backward, clip + AdamW, codebook EMA,
    /// and the loss.
    pub(super) fn step(&mut self) -> Result<([f64; 4], f32), BenchError> {
        let mut phases = PhaseTimes::default();
        let losses =
            self.training
                .step(&self.batch, self.steps_done, PAPER_LR, Some(&mut phases))?;
        self.steps_done += 1;
        Ok((phases.as_array(), losses.loss as f32))
    }
}

/// The peer's hello.
#[derive(Debug, Deserialize)]
struct TorchHello {
    torch: String,
    threads: usize,
    params: usize,
    peak_gflops: f64,
}

/// The extras of one of the peer's rounds.
#[derive(Debug, Deserialize)]
struct TorchRound {
    /// Per phase, the milliseconds of each step.
    phase_ms: BTreeMap<String, Vec<f64>>,
    loss: f64,
}

const PHASES: [&str; 4] = ["forward", "backward", "clip_adamw", "codebook_ema"];

/// What the timed rounds measured, for the notes and details.
struct Measured {
    params: usize,
    threads: usize,
    flops: StepFlops,
    our_loss: f32,
    their_loss: f64,
    /// The best f32 matmul rate in candle, before and after the rounds.
    our_peak: f64,
    /// The higher of the two peaks: both utilisations are taken against it.
    machine_peak: f64,
    our_phase_ms: [f64; 4],
    their_phase_ms: Option<[f64; 4]>,
    ours_rate: f64,
    theirs_rate: Option<f64>,
}

impl Measured {
    fn achieved(&self, windows_per_s: f64, batch: usize) -> f64 {
        self.flops.total() * windows_per_s / batch as f64 / 1e9
    }
}

/// Runs the benchmark: our warm-up, the peer's set-up and warm-up, then our timed rounds
/// alternating with the peer's (same shapes, threads and steps).
pub fn run(
    options: &BeatOptions,
    peer: Option<&Peer>,
    progress: &mut dyn FnMut(&str),
) -> Result<Comparison, BenchError> {
    let cfg = BeatConfig::paper();
    let threads = candle_core::utils::get_num_threads();
    let flops = train_step_flops(&cfg, options.batch).map_err(beatlab_nn::BeatError::from)?;
    let steps = options.steps.max(1);
    let rounds = options.rounds.max(1);
    progress(&format!(
        "beat: measuring the f32 matrix-product peak ({0} x {0}) in candle",
        options.peak_size
    ));
    let our_peak = matmul_peak_gflops(&options.device, options.peak_size, options.peak_reps)?;
    progress(&format!(
        "beat: Beat (paper config, batch {}) on {}: {} warm-up steps",
        options.batch,
        torch_device(&options.device),
        options.warmup,
    ));
    let mut trainer = Trainer::new(options, &cfg)?;
    let params = trainer.params();
    for _ in 0..options.warmup {
        trainer.step()?;
    }
    let mut session = match peer {
        Some(peer) => {
            progress("beat: starting the PyTorch peer (bench/beat_torch.py): peak, warm-up");
            Some(start_peer(peer, options, params, threads)?)
        }
        None => None,
    };
    progress(&format!(
        "beat: {rounds} timed rounds of {steps} steps{}",
        if session.is_some() {
            ", ours and PyTorch's alternating"
        } else {
            ""
        }
    ));
    let rounds = timed_rounds(&mut trainer, session.as_mut().map(|(s, _)| s), options)?;
    // Measured again after the rounds, the best of both counts: on a shared machine a
    // background burst during one measurement would understate the peak.
    let our_peak = our_peak.max(matmul_peak_gflops(
        &options.device,
        options.peak_size,
        options.peak_reps,
    )?);
    let their_hello = finish_peer(session)?;
    let medians = |phases: &[Vec<f64>; 4]| phases.clone().map(|p| super::median(&p));
    let Rounds {
        ours,
        theirs,
        our_phases,
        their_phases,
        our_loss,
        their_loss,
    } = rounds;
    let measured = Measured {
        params,
        threads,
        flops,
        our_loss,
        their_loss,
        our_peak,
        machine_peak: their_hello
            .as_ref()
            .map_or(our_peak, |t| our_peak.max(t.peak_gflops)),
        our_phase_ms: medians(&our_phases),
        their_phase_ms: their_hello.as_ref().map(|_| medians(&their_phases)),
        ours_rate: ours.median_wall(),
        theirs_rate: their_hello.as_ref().map(|_| theirs.median_wall()),
    };
    Ok(Comparison {
        benchmark: "beat".into(),
        workload: workload(&cfg, options),
        unit: "windows/s".into(),
        goal: None,
        notes: notes(&measured, options, their_hello.as_ref()),
        details: details(
            &measured,
            &cfg,
            options,
            their_hello.as_ref(),
            &ours,
            &theirs,
        ),
        ..Comparison::from_rates(
            &ours,
            their_hello.map(|t| (format!("pytorch {}", t.torch), &theirs)),
        )
    })
}

/// Our timed rounds and the peer's, alternating, with every step's phase times and the last
/// losses.
struct Rounds {
    ours: super::Rates,
    theirs: super::Rates,
    our_phases: [Vec<f64>; 4],
    their_phases: [Vec<f64>; 4],
    our_loss: f32,
    their_loss: f64,
}

fn timed_rounds(
    trainer: &mut Trainer,
    session: Option<&mut super::PeerSession>,
    options: &BeatOptions,
) -> Result<Rounds, BenchError> {
    let steps = options.steps.max(1);
    let mut our_phases: [Vec<f64>; 4] = Default::default();
    let mut their_phases: [Vec<f64>; 4] = Default::default();
    let (mut our_loss, mut their_loss) = (f32::NAN, f64::NAN);
    let (ours, theirs) = alternate(
        options.rounds.max(1),
        session,
        || {
            let timer = Timer::start();
            for _ in 0..steps {
                let (ms, loss) = trainer.step()?;
                for (all, m) in our_phases.iter_mut().zip(ms) {
                    all.push(m);
                }
                our_loss = loss;
            }
            Ok(((options.batch * steps) as f64, timer.stop()))
        },
        |round: &PeerRound<TorchRound>| {
            for (all, name) in their_phases.iter_mut().zip(PHASES) {
                all.extend(round.extra.phase_ms.get(name).into_iter().flatten());
            }
            their_loss = round.extra.loss;
            Ok(())
        },
    )?;
    Ok(Rounds {
        ours,
        theirs,
        our_phases,
        their_phases,
        our_loss,
        their_loss,
    })
}

/// Starts `bench/beat_torch.py` with our shapes and checks its parameter count.
fn start_peer(
    peer: &Peer,
    options: &BeatOptions,
    params: usize,
    threads: usize,
) -> Result<(super::PeerSession, TorchHello), BenchError> {
    let args = [
        ("--batch", options.batch.to_string()),
        ("--warmup", options.warmup.to_string()),
        ("--steps", options.steps.max(1).to_string()),
        ("--threads", threads.to_string()),
        ("--device", torch_device(&options.device)),
        ("--expect-params", params.to_string()),
        ("--peak-size", options.peak_size.to_string()),
        ("--peak-reps", options.peak_reps.to_string()),
        ("--seed", options.seed.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v])
    .collect::<Vec<_>>();
    let (session, hello): (_, TorchHello) = peer.start("beat_torch.py", &args)?;
    if hello.params != params {
        return Err(BenchError::Mismatch {
            benchmark: "beat",
            what: format!("parameter counts: ours {params}, PyTorch {}", hello.params),
        });
    }
    Ok((session, hello))
}

/// The workload in words.
fn workload(cfg: &BeatConfig, options: &BeatOptions) -> String {
    format!(
        "Beat training steps (paper config: codebook {}, input {}, predict {}, width {}, depth {} + {}, {} heads of {}, DVQ {} levels, AdamW, clip 1.0, EMA update), batch {}, {}",
        cfg.codebook_size,
        cfg.input_len,
        cfg.predict_len,
        cfg.width,
        cfg.encoder_depth,
        cfg.decoder_depth,
        cfg.heads,
        cfg.head_dim.unwrap_or(cfg.width / cfg.heads),
        cfg.dvq_levels,
        options.batch,
        torch_device(&options.device)
    )
}

/// The report's notes: parameters and losses, FLOPs, peaks, achieved rates, phase times.
fn notes(m: &Measured, options: &BeatOptions, their_hello: Option<&TorchHello>) -> Vec<String> {
    let batch = options.batch;
    let percent = |windows_per_s: f64| 100.0 * m.achieved(windows_per_s, batch) / m.machine_peak;
    let with_peer = |f: &dyn Fn(&TorchHello) -> String| their_hello.map_or(String::new(), f);
    let fmt_phases =
        |p: &[f64; 4]| format!("{:.0} / {:.0} / {:.0} / {:.0}", p[0], p[1], p[2], p[3]);
    let (our_loss, their_loss, our_peak) = (m.our_loss, m.their_loss, m.our_peak);
    vec![
        format!(
            "model: {} trainable parameters{}; loss after the last step: ours {our_loss:.4}{}",
            m.params,
            with_peer(&|_| " (PyTorch: the same count)".into()),
            with_peer(&|_| format!(", PyTorch {their_loss:.4}")),
        ),
        format!(
            "matrix-product FLOPs per step (analytic): forward {:.1} G, backward {:.1} G, total {:.1} G",
            m.flops.forward / 1e9,
            m.flops.backward / 1e9,
            m.flops.total() / 1e9
        ),
        format!(
            "f32 matmul peak ({0} x {0}, best of {2} before and {2} after the rounds), threads: {3}: candle {our_peak:.0} GFLOP/s{1}",
            options.peak_size,
            with_peer(&|t| format!(
                ", PyTorch {:.0} GFLOP/s (best of {}, threads: {})",
                t.peak_gflops, options.peak_reps, t.threads
            )),
            options.peak_reps,
            m.threads,
        ),
        format!(
            "achieved: ours {:.1} GFLOP/s ({:.1}% of {:.0}){}",
            m.achieved(m.ours_rate, batch),
            percent(m.ours_rate),
            m.machine_peak,
            m.theirs_rate.map_or(String::new(), |r| format!(
                ", PyTorch {:.1} GFLOP/s ({:.1}%)",
                m.achieved(r, batch),
                percent(r)
            )),
        ),
        format!(
            "median ms per step, forward / backward / clip + AdamW / codebook EMA: ours {}{}",
            fmt_phases(&m.our_phase_ms),
            m.their_phase_ms
                .map_or(String::new(), |p| format!("; PyTorch {}", fmt_phases(&p)))
        ),
    ]
}

/// The report's machine-readable details.
fn details(
    m: &Measured,
    cfg: &BeatConfig,
    options: &BeatOptions,
    their_hello: Option<&TorchHello>,
    ours: &super::Rates,
    theirs: &super::Rates,
) -> serde_json::Value {
    let phase_json = |p: &[f64; 4]| {
        PHASES
            .iter()
            .zip(p)
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect::<serde_json::Map<_, _>>()
    };
    serde_json::json!({
        "config": cfg,
        "batch": options.batch,
        "threads": m.threads,
        "params": m.params,
        "flops_per_step": { "forward": m.flops.forward, "backward": m.flops.backward },
        "peak_gflops": { "candle": m.our_peak, "torch": their_hello.map(|t| t.peak_gflops) },
        "achieved_gflops": {
            "ours": m.achieved(m.ours_rate, options.batch),
            "torch": m.theirs_rate.map(|r| m.achieved(r, options.batch)),
        },
        "phase_ms": {
            "ours": phase_json(&m.our_phase_ms),
            "torch": m.their_phase_ms.as_ref().map(phase_json),
        },
        "rounds_windows_per_s": { "ours": &ours.wall, "torch": &theirs.wall },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use beatlab_nn::{Beat, ParamStore};
    use candle_core::DType;

    fn built_params(cfg: &BeatConfig) -> usize {
        let store = ParamStore::new(0);
        Beat::new(cfg.clone(), &store, DType::F32, &Device::Cpu).unwrap();
        store.num_params()
    }

    /// The analytic count matches the built model, for the paper config and for variants that
    /// add or remove layers, so the layer inventory behind the FLOP count is the real one.
    #[test]
    fn param_count_matches_the_built_model() {
        let check = |cfg: BeatConfig| {
            assert_eq!(param_count(&cfg).unwrap(), built_params(&cfg), "{cfg:?}");
        };
        check(BeatConfig::default());
        check(BeatConfig {
            share_output_head: false,
            ..BeatConfig::default()
        });
        // input 1000 with predict 250: 20 queries but 10 predicted patches, so a query map.
        check(BeatConfig {
            predict_len: 250,
            head_dim: None,
            encoder_depth: 2,
            decoder_depth: 1,
            mlp_ratio: 2.0,
            ..BeatConfig::default()
        });
    }

    /// A tiny config counted by hand: leads 2, patch 5, input 10, predict 5 (2 patches,
    /// 1 query, 1 predicted patch), width 4, one encoder and one decoder block, 2 heads of 3,
    /// MLP 8, codebook 6, 2 levels, batch 3.
    #[test]
    fn flops_of_a_tiny_config_counted_by_hand() {
        let cfg = BeatConfig {
            leads: 2,
            patch_size: 5,
            width: 4,
            encoder_depth: 1,
            decoder_depth: 1,
            heads: 2,
            head_dim: Some(3),
            mlp_ratio: 2.0,
            codebook_size: 6,
            input_len: 10,
            predict_len: 5,
            ..BeatConfig::default()
        };
        // Sequence 3 tokens, 9 rows per block. Forward, per block: qkv 2*9*4*18 = 1296,
        // attention 2 * 2*(3*2 sequences)*3*3*3 = 648, proj 2*9*6*4 = 432, fc1 2*9*4*8 = 576,
        // fc2 576: 3528. Patch embed 2*6*10*4 = 480; distances 2 levels x 2*3*6*4 = 288;
        // head on 6 patch rows 2*6*4*10 = 480, on 3 predicted rows 240.
        let forward = 480.0 + 2.0 * 3528.0 + 288.0 + 480.0 + 240.0;
        // Backward: twice every linear and attention product except the patch embedding
        // (once, its input is data) and the distances (none).
        let backward = 480.0 + 2.0 * 2.0 * 3528.0 + 2.0 * (480.0 + 240.0);
        let got = train_step_flops(&cfg, 3).unwrap();
        assert_eq!(got, StepFlops { forward, backward });
    }

    #[test]
    fn an_invalid_config_is_an_error_not_a_count() {
        let cfg = BeatConfig {
            input_len: 1001,
            ..BeatConfig::default()
        };
        let err = train_step_flops(&cfg, 32).unwrap_err();
        assert_eq!(err.field, "input_len");
        assert_eq!(param_count(&cfg).unwrap_err().field, "input_len");
    }
}
