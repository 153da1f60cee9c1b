//! The `beat` stage: trains the Beat tokenizer on preprocessed 12-lead windows (paper §1.1).
//!
//! Each step: forward in training mode, backward, global-norm clipping, AdamW, then the EMA
//! codebook update. The training order of every epoch is a permutation seeded by
//! `(experiment.seed, epoch)` and dropout masks are seeded by the step, so a run is a function of
//! its spec and a checkpoint taken mid-epoch resumes onto exactly the same trajectory.
//!
//! Every `eval_every` epochs the whole validation split is evaluated: losses, Code% and
//! perplexity per quantizer level (over the split, not one batch as the public code did), and
//! the reconstruction error per lead. The final evaluation becomes the run's summaries.

use std::collections::BTreeMap;
use std::time::Instant;

use beatlab_ecg::STANDARD_LEADS;
use beatlab_ecg::dataset::{Dataset, WindowSet};
use beatlab_nn::ParamStore;
use beatlab_nn::beat::{Beat, BeatConfig, Mode};
use beatlab_nn::checkpoint::{restore_training_state, training_state};
use beatlab_nn::metrics::{CodeUsage, LeadErrors};
use beatlab_nn::optim::{AdamW, AdamWConfig, clip_grad_norm};
use beatlab_nn::schedule::{Schedule, Unit};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::runner::{Stage, StageContext, StageError, StageOutcome, StopReason};
use crate::spec::{self, Precision, Spec, StageSpec};

/// The Beat configuration of a spec.
pub fn beat_config(spec: &Spec) -> BeatConfig {
    let b = &spec.beat;
    BeatConfig {
        leads: STANDARD_LEADS.len(),
        patch_size: b.patch_size as usize,
        width: b.width as usize,
        encoder_depth: b.depth as usize,
        decoder_depth: b.decoder_depth as usize,
        heads: b.heads as usize,
        head_dim: (b.head_dim > 0).then_some(b.head_dim as usize),
        mlp_ratio: b.mlp_ratio,
        query_ratio: b.query_ratio,
        codebook_size: b.codebook_size as usize,
        input_len: b.input_len as usize,
        predict_len: b.predict_len as usize,
        dvq_levels: b.dvq_levels as usize,
        shared_codebook: b.shared_codebook,
        ema_decay: b.ema_decay,
        commitment: b.commitment,
        dead_code_threshold: (b.dead_code_threshold > 0.0).then_some(b.dead_code_threshold),
        dropout: b.dropout,
        w_recon: b.w_recon,
        w_pred: b.w_pred,
        w_vq: b.w_vq,
        ..BeatConfig::default()
    }
}

/// The tensor dtype of a spec's precision on a device.
pub fn dtype(spec: &Spec, device: &Device) -> Result<DType, StageError> {
    match (spec.experiment.precision, device) {
        (Precision::F32, _) => Ok(DType::F32),
        (Precision::Bf16, Device::Cpu) => Err(StageError::Invalid(
            "experiment.precision = \"bf16\" needs a GPU (use --device cuda, or f32 on the CPU)"
                .into(),
        )),
        (Precision::Bf16, _) => Ok(DType::BF16),
    }
}

/// The learning-rate schedule of a stage with `steps_per_epoch` optimiser steps per epoch.
pub fn schedule(stage: &StageSpec, steps_per_epoch: u64, total_steps: u64) -> Schedule {
    match stage.schedule {
        spec::Schedule::Constant => Schedule::Constant,
        spec::Schedule::Linear => Schedule::Linear {
            warmup: u64::from(stage.warmup_steps),
            total: total_steps.max(1),
            lr_min: stage.lr_min,
            unit: Unit::Step,
        },
        spec::Schedule::Cosine => {
            let t_max_epochs = u64::from(if stage.t_max > 0 {
                stage.t_max
            } else {
                stage.epochs.max(1)
            });
            if stage.warmup_steps == 0 {
                // Paper: PyTorch's CosineAnnealingLR stepped once per epoch.
                Schedule::Cosine {
                    t_max: t_max_epochs,
                    lr_min: stage.lr_min,
                    warmup: 0,
                    unit: Unit::Epoch,
                }
            } else {
                Schedule::Cosine {
                    t_max: t_max_epochs * steps_per_epoch.max(1),
                    lr_min: stage.lr_min,
                    warmup: u64::from(stage.warmup_steps),
                    unit: Unit::Step,
                }
            }
        }
    }
}

/// Where training stands; saved with every checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct Progress {
    /// Epochs completed.
    epoch: u64,
    /// Batches of the current epoch already trained.
    batch: u64,
    /// Optimiser steps taken.
    step: u64,
    /// Sum of the training losses of the current epoch's batches so far.
    #[serde(default)]
    epoch_loss: f64,
}

/// Validation results over a whole split.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub windows: usize,
    pub loss: f64,
    pub recon: f64,
    pub pred: f64,
    pub vq: f64,
    /// Per level: used codes / codebook size, in percent.
    pub code_pct: Vec<f64>,
    pub perplexity: Vec<f64>,
    /// Reconstruction MSE per lead (standard order).
    pub lead_mse: Vec<f64>,
}

impl Evaluation {
    /// `(key, value)` pairs as logged and summarised (`<split>/loss`, `<split>/code_pct_l1`, ...).
    pub fn entries(&self, split: &str) -> Vec<(String, f64)> {
        let mut out = vec![
            (format!("{split}/loss"), self.loss),
            (format!("{split}/loss_recon"), self.recon),
            (format!("{split}/loss_pred"), self.pred),
            (format!("{split}/loss_vq"), self.vq),
        ];
        for (l, (pct, ppl)) in self.code_pct.iter().zip(&self.perplexity).enumerate() {
            out.push((format!("{split}/code_pct_l{}", l + 1), *pct));
            out.push((format!("{split}/perplexity_l{}", l + 1), *ppl));
        }
        if !self.code_pct.is_empty() {
            let mean = self.code_pct.iter().sum::<f64>() / self.code_pct.len() as f64;
            out.push((format!("{split}/code_pct"), mean));
        }
        for (lead, mse) in STANDARD_LEADS.iter().zip(&self.lead_mse) {
            out.push((format!("{split}/recon_mse_{lead}"), *mse));
        }
        out
    }
}

/// Stacks windows `indices` of a split into a `[B, 12, window_len]` tensor.
fn batch_tensor(
    set: &WindowSet,
    indices: &[usize],
    window_len: usize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let size = STANDARD_LEADS.len() * window_len;
    let mut data = Vec::with_capacity(indices.len() * size);
    for &i in indices {
        data.extend_from_slice(set.window(i, window_len));
    }
    Tensor::from_vec(
        data,
        (indices.len(), STANDARD_LEADS.len(), window_len),
        &Device::Cpu,
    )?
    .to_dtype(dtype)?
    .to_device(device)
}

fn scalar(t: &Tensor) -> candle_core::Result<f64> {
    Ok(f64::from(t.to_dtype(DType::F32)?.to_scalar::<f32>()?))
}

/// Evaluates Beat over a whole split.
pub fn evaluate(
    model: &Beat,
    set: &WindowSet,
    window_len: usize,
    batch: usize,
    dtype: DType,
    device: &Device,
) -> Result<Evaluation, StageError> {
    let cfg = model.config();
    let mut usage = CodeUsage::new(cfg.dvq_levels, cfg.codebook_size);
    let mut leads = LeadErrors::new(cfg.leads);
    let (mut loss, mut recon, mut pred, mut vq) = (0.0, 0.0, 0.0, 0.0);
    let all: Vec<usize> = (0..set.len()).collect();
    for chunk in all.chunks(batch.max(1)) {
        let x = batch_tensor(set, chunk, window_len, dtype, device)?;
        let out = model
            .forward(&x, Mode::Eval)
            .map_err(|e| StageError::Invalid(e.to_string()))?;
        let n = chunk.len() as f64;
        loss += scalar(&out.loss)? * n;
        recon += scalar(&out.recon_loss)? * n;
        pred += scalar(&out.pred_loss)? * n;
        vq += scalar(&out.vq_loss)? * n;
        usage.add(&out.codes)?;
        leads.add(&out.reconstruction, &x.narrow(2, 0, cfg.input_len)?)?;
    }
    let n = set.len().max(1) as f64;
    Ok(Evaluation {
        windows: set.len(),
        loss: loss / n,
        recon: recon / n,
        pred: pred / n,
        vq: vq / n,
        code_pct: (0..cfg.dvq_levels).map(|l| usage.code_percent(l)).collect(),
        perplexity: (0..cfg.dvq_levels).map(|l| usage.perplexity(l)).collect(),
        lead_mse: leads.mse_per_lead(),
    })
}

/// The `beat` stage.
pub struct BeatStage;

impl Stage for BeatStage {
    fn run(&mut self, ctx: &mut StageContext<'_>) -> Result<StageOutcome, StageError> {
        let spec = ctx.spec;
        let stage = ctx.stage;
        let device = ctx.device.clone();
        let dtype = dtype(spec, &device)?;
        let started = Instant::now();
        let data: Dataset = crate::data::windows(spec, ctx.cache_dir)
            .map_err(|e| StageError::Data(crate::runner::error_chain(&e)))?;
        let window_len = data.window_len();
        if data.train.is_empty() {
            return Err(StageError::Data(format!(
                "no training windows from {} records (data.source = `{}`)",
                data.records.len(),
                spec.data.source
            )));
        }
        if data.val.is_empty() {
            return Err(StageError::Data(format!(
                "the validation split is empty ({} records); raise data.val_fraction or use more records",
                data.records.len()
            )));
        }
        ctx.log(&format!(
            "data: {} records -> {} train / {} val / {} test windows of {} samples ({:.1} s)",
            data.records.len(),
            data.train.len(),
            data.val.len(),
            data.test.len(),
            window_len,
            started.elapsed().as_secs_f64()
        ));

        let store = ParamStore::new(spec.experiment.seed);
        let model = Beat::new(beat_config(spec), &store, dtype, &device)
            .map_err(|e| StageError::Invalid(e.to_string()))?;
        let vars = store.vars();
        let mut opt = AdamW::new(
            vars.clone(),
            AdamWConfig {
                lr: stage.lr,
                weight_decay: stage.weight_decay,
                ..AdamWConfig::default()
            },
        )
        .map_err(|e| StageError::Invalid(e.to_string()))?;
        let batch = stage.batch as usize;
        let steps_per_epoch = data.train.len().div_ceil(batch) as u64;
        // `steps` caps the run; with `epochs = 0` it alone sets the length.
        let epochs = match stage.epochs {
            0 => u64::MAX,
            e => u64::from(e),
        };
        let total_steps = match stage.steps {
            0 => epochs * steps_per_epoch,
            s => u64::from(s).min(epochs.saturating_mul(steps_per_epoch)),
        };
        let sched = schedule(stage, steps_per_epoch, total_steps);

        let mut at = Progress {
            epoch: 0,
            batch: 0,
            step: 0,
            epoch_loss: 0.0,
        };
        if let Some(ckpt) = ctx.resume.take() {
            let state: BTreeMap<String, Tensor> = ckpt.tensors.into_iter().collect();
            restore_training_state(&state, &store, Some(&mut opt)).map_err(|e| {
                StageError::Invalid(format!("checkpoint {}: {e}", ckpt.path.display()))
            })?;
            at = serde_json::from_value(ckpt.meta["progress"].clone()).map_err(|e| {
                StageError::Invalid(format!(
                    "checkpoint {}: bad progress: {e}",
                    ckpt.path.display()
                ))
            })?;
            ctx.resumed_at(at.step as i64 + 1)?;
        }
        ctx.log(&format!(
            "{} parameters; {} steps/epoch, {} epochs{}",
            store.num_params(),
            steps_per_epoch,
            stage.epochs,
            if stage.steps > 0 {
                format!(", at most {} steps", stage.steps)
            } else {
                String::new()
            }
        ));

        let save =
            |ctx: &mut StageContext<'_>, at: Progress, opt: &AdamW| -> Result<(), StageError> {
                let state = training_state(&store, Some(opt))
                    .map_err(|e| StageError::Invalid(e.to_string()))?;
                ctx.checkpoint(
                    at.step as i64,
                    at.epoch as i64,
                    &state,
                    &serde_json::json!({ "progress": at }),
                )
            };

        let bar = ctx.bar(total_steps, "steps");
        bar.set_position(at.step);
        let mut last_eval: Option<(u64, Evaluation)> = None;
        'epochs: while at.epoch < epochs && at.step < total_steps {
            let mut order: Vec<usize> = (0..data.train.len()).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(
                spec.experiment.seed ^ (at.epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            ));
            let epoch_started = Instant::now();
            let mut timed_batches = 0u64;
            let batches: Vec<&[usize]> = order.chunks(batch).collect();
            while (at.batch as usize) < batches.len() {
                if let Some(reason) = ctx.stop_requested() {
                    if reason == StopReason::Interrupted {
                        save(ctx, at, &opt)?;
                    }
                    bar.abandon();
                    return Ok(StageOutcome::Stopped(reason));
                }
                let lr = sched.lr_for(stage.lr, at.epoch, at.step);
                opt.set_lr(lr);
                let x = batch_tensor(
                    &data.train,
                    batches[at.batch as usize],
                    window_len,
                    dtype,
                    &device,
                )?;
                let out = model
                    .forward(&x, Mode::Train { step: at.step })
                    .map_err(|e| StageError::Invalid(e.to_string()))?;
                let loss = scalar(&out.loss)?;
                if !loss.is_finite() {
                    return Err(StageError::Diverged {
                        step: at.step as i64,
                        value: loss,
                    });
                }
                let mut grads = out.loss.backward()?;
                let grad_norm = if stage.grad_clip > 0.0 {
                    clip_grad_norm(&mut grads, &vars, stage.grad_clip)?
                } else {
                    f64::NAN
                };
                opt.step(&grads)
                    .map_err(|e| StageError::Invalid(e.to_string()))?;
                model
                    .update_codebooks(&out)
                    .map_err(|e| StageError::Invalid(e.to_string()))?;
                at.step += 1;
                at.batch += 1;
                at.epoch_loss += loss;
                timed_batches += 1;
                let s = at.step as i64;
                ctx.metric("train/loss", s, loss)?;
                ctx.metric("train/loss_recon", s, scalar(&out.recon_loss)?)?;
                ctx.metric("train/loss_pred", s, scalar(&out.pred_loss)?)?;
                ctx.metric("train/loss_vq", s, scalar(&out.vq_loss)?)?;
                ctx.metric("train/lr", s, lr)?;
                if grad_norm.is_finite() {
                    ctx.metric("train/grad_norm", s, grad_norm)?;
                }
                bar.inc(1);
                bar.set_message(format!("epoch {} loss {loss:.4}", at.epoch + 1));
                if stage.checkpoint_every_steps > 0
                    && at.step % u64::from(stage.checkpoint_every_steps) == 0
                    && at.step < total_steps
                {
                    save(ctx, at, &opt)?;
                }
                if at.step >= total_steps {
                    break;
                }
            }
            let seconds = epoch_started.elapsed().as_secs_f64();
            let epoch_batches = at.batch;
            let epoch_mean = at.epoch_loss / epoch_batches.max(1) as f64;
            if at.batch as usize >= batches.len() {
                at.epoch += 1;
                at.batch = 0;
                at.epoch_loss = 0.0;
            }
            let last = at.epoch >= epochs || at.step >= total_steps;
            let mut line = format!(
                "epoch {} train loss {epoch_mean:.4} ({:.1} windows/s)",
                at.epoch,
                timed_batches as f64 * batch as f64 / seconds.max(1e-9)
            );
            if epoch_batches > 0 {
                ctx.metric("train/epoch_loss", at.step as i64, epoch_mean)?;
                ctx.metric("train/epoch", at.step as i64, at.epoch as f64)?;
            }
            if last || at.epoch % u64::from(stage.eval_every) == 0 {
                let eval = evaluate(&model, &data.val, window_len, batch, dtype, &device)?;
                // Logged at the global step, like every metric, so TensorBoard's resume purge
                // covers them and all curves share one x axis.
                for (k, v) in eval.entries("val") {
                    ctx.metric(&k, at.step as i64, v)?;
                }
                line.push_str(&format!(
                    ", val loss {:.4} (recon {:.4}, pred {:.4}, vq {:.4}), Code% {}",
                    eval.loss,
                    eval.recon,
                    eval.pred,
                    eval.vq,
                    eval.code_pct
                        .iter()
                        .map(|p| format!("{p:.1}"))
                        .collect::<Vec<_>>()
                        .join("/")
                ));
                last_eval = Some((at.epoch, eval));
            }
            ctx.log(&line);
            if last {
                break 'epochs;
            }
            if stage.checkpoint_every > 0 && at.epoch % u64::from(stage.checkpoint_every) == 0 {
                save(ctx, at, &opt)?;
            }
        }
        bar.finish_and_clear();

        let val = match last_eval {
            Some((epoch, eval)) if epoch == at.epoch => eval,
            _ => evaluate(&model, &data.val, window_len, batch, dtype, &device)?,
        };
        let mut summary: Vec<(String, f64)> = val.entries("val");
        if !data.test.is_empty() {
            let test = evaluate(&model, &data.test, window_len, batch, dtype, &device)?;
            summary.extend(test.entries("test"));
        }
        summary.push(("train/steps".into(), at.step as f64));
        summary.push(("train/epochs".into(), at.epoch as f64));
        summary.push(("params".into(), store.num_params() as f64));
        summary.push(("data/train_windows".into(), data.train.len() as f64));
        summary.push(("data/val_windows".into(), data.val.len() as f64));
        let refs: Vec<(&str, f64)> = summary.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        ctx.summaries(&refs)?;

        // The final checkpoint holds the model (parameters and codebooks), not the optimiser:
        // later stages load it, nothing resumes from it.
        let final_state =
            training_state(&store, None).map_err(|e| StageError::Invalid(e.to_string()))?;
        ctx.finish(
            at.step as i64,
            at.epoch as i64,
            &final_state,
            &serde_json::json!({ "progress": at, "beat": beat_config(spec) }),
        )?;
        ctx.log(&format!(
            "done: val loss {:.4}, Code% {} in {:.1} s",
            val.loss,
            val.code_pct
                .iter()
                .map(|p| format!("{p:.1}"))
                .collect::<Vec<_>>()
                .join("/"),
            started.elapsed().as_secs_f64()
        ));
        Ok(StageOutcome::Completed)
    }
}
