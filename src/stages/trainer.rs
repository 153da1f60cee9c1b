//! The training loop every training stage shares: seeded epoch order, batches, the learning-rate
//! schedule, per-step metrics, validation every `eval_every` epochs, checkpoints by epoch and by
//! step, and exact resume (mid-epoch included).
//!
//! A stage supplies a [`Trainee`]: one optimiser step on a batch of example indices, a
//! validation pass, and its state as tensors. The order of epoch `e` is a permutation seeded by
//! `(seed, e)`, so a resumed run trains on exactly the batches the uninterrupted run would have.

use std::collections::BTreeMap;
use std::time::Instant;

use beatlab_nn::schedule::{Schedule, Unit};
use candle_core::Tensor;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::runner::{StageContext, StageError, StopReason};
use crate::spec::{self, StageSpec};

/// Where training stands; saved with every checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// Epochs completed.
    pub epoch: u64,
    /// Batches of the current epoch already trained.
    pub batch: u64,
    /// Optimiser steps taken.
    pub step: u64,
    /// Sum of the training losses of the current epoch's batches so far.
    #[serde(default)]
    pub epoch_loss: f64,
}

/// The model side of a training stage.
pub trait Trainee {
    /// One optimiser step on the examples `indices` at learning rate `lr`; returns the metrics
    /// to log, the loss first.
    fn step(
        &mut self,
        indices: &[usize],
        step: u64,
        lr: f64,
    ) -> Result<Vec<(&'static str, f64)>, StageError>;
    /// Validation metrics (`val/...` keys) and a short human summary.
    fn evaluate(&mut self) -> Result<(Vec<(String, f64)>, String), StageError>;
    /// What every checkpoint records beside the loop's progress (e.g. the run's tokenizer).
    fn checkpoint_meta(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
    /// Everything needed to resume (model and optimiser state).
    fn state(&self) -> Result<BTreeMap<String, Tensor>, StageError>;
    /// Restores [`Trainee::state`]'s output.
    fn restore(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), StageError>;
}

/// How a loop ended.
pub enum LoopEnd {
    /// All epochs (or the step cap) done; the last validation, if it was at the final epoch.
    Completed {
        at: Progress,
        last_eval: Option<Vec<(String, f64)>>,
    },
    Stopped(StopReason),
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

/// Trains `trainee` on `n_examples` examples as the stage declares, resuming from
/// `ctx.resume` when present.
pub fn run(
    ctx: &mut StageContext<'_>,
    trainee: &mut dyn Trainee,
    n_examples: usize,
    seed: u64,
) -> Result<LoopEnd, StageError> {
    let stage = ctx.stage;
    let batch = stage.batch as usize;
    let steps_per_epoch = n_examples.div_ceil(batch) as u64;
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
        let path = ckpt.path.clone();
        trainee
            .restore(&state)
            .map_err(|source| StageError::Restore {
                path: path.clone(),
                source: Box::new(source),
            })?;
        at = serde_json::from_value(ckpt.meta["progress"].clone())
            .map_err(|source| StageError::BadProgress { path, source })?;
        ctx.resumed_at(at.step as i64 + 1)?;
    }
    ctx.log(&format!(
        "{n_examples} examples, {steps_per_epoch} steps/epoch, {} epochs{}",
        stage.epochs,
        if stage.steps > 0 {
            format!(", at most {} steps", stage.steps)
        } else {
            String::new()
        }
    ));
    let save = |ctx: &mut StageContext<'_>,
                trainee: &dyn Trainee,
                at: Progress|
     -> Result<(), StageError> {
        let state = trainee.state()?;
        let mut meta = trainee.checkpoint_meta();
        meta.insert("progress".into(), serde_json::json!(at));
        ctx.checkpoint(at.step as i64, at.epoch as i64, &state, &meta.into())
    };

    let bar = ctx.bar(total_steps, "steps");
    bar.set_position(at.step);
    let mut last_eval = None;
    while at.epoch < epochs && at.step < total_steps {
        let mut order: Vec<usize> = (0..n_examples).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(
            seed ^ at.epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ));
        let batches: Vec<&[usize]> = order.chunks(batch).collect();
        let epoch_started = Instant::now();
        let mut timed_batches = 0u64;
        while (at.batch as usize) < batches.len() {
            if let Some(reason) = ctx.stop_requested() {
                if reason == StopReason::Interrupted {
                    save(ctx, trainee, at)?;
                }
                bar.abandon();
                return Ok(LoopEnd::Stopped(reason));
            }
            let lr = sched.lr_for(stage.lr, at.epoch, at.step);
            let metrics = trainee.step(batches[at.batch as usize], at.step, lr)?;
            let loss = metrics.first().map_or(f64::NAN, |m| m.1);
            if !loss.is_finite() {
                return Err(StageError::Diverged {
                    step: at.step as i64,
                    value: loss,
                });
            }
            at.step += 1;
            at.batch += 1;
            at.epoch_loss += loss;
            timed_batches += 1;
            let s = at.step as i64;
            for (key, value) in &metrics {
                ctx.metric(&format!("train/{key}"), s, *value)?;
            }
            ctx.metric("train/lr", s, lr)?;
            bar.inc(1);
            bar.set_message(format!("epoch {} loss {loss:.4}", at.epoch + 1));
            if stage.checkpoint_every_steps > 0
                && at
                    .step
                    .is_multiple_of(u64::from(stage.checkpoint_every_steps))
                && at.step < total_steps
            {
                save(ctx, trainee, at)?;
            }
            if at.step >= total_steps {
                break;
            }
        }
        let seconds = epoch_started.elapsed().as_secs_f64();
        // Batches of this epoch, including those trained before a resume.
        let epoch_batches = at.batch;
        let epoch_mean = at.epoch_loss / epoch_batches.max(1) as f64;
        if at.batch as usize >= batches.len() {
            at.epoch += 1;
            at.batch = 0;
            at.epoch_loss = 0.0;
        }
        let last = at.epoch >= epochs || at.step >= total_steps;
        let mut line = format!(
            "epoch {} train loss {epoch_mean:.4} ({:.1} examples/s)",
            at.epoch,
            timed_batches as f64 * batch as f64 / seconds.max(1e-9)
        );
        if epoch_batches > 0 {
            // Logged at the global step, like every metric, so TensorBoard's resume purge covers
            // them and all curves share one x axis.
            ctx.metric("train/epoch_loss", at.step as i64, epoch_mean)?;
            ctx.metric("train/epoch", at.step as i64, at.epoch as f64)?;
        }
        if last || at.epoch.is_multiple_of(u64::from(stage.eval_every)) {
            let (metrics, summary) = trainee.evaluate()?;
            for (k, v) in &metrics {
                ctx.metric(k, at.step as i64, *v)?;
            }
            line.push_str(&format!(", {summary}"));
            last_eval = last.then_some(metrics);
        }
        ctx.log(&line);
        if last {
            break;
        }
        if stage.checkpoint_every > 0 && at.epoch.is_multiple_of(u64::from(stage.checkpoint_every))
        {
            save(ctx, trainee, at)?;
        }
    }
    bar.finish_and_clear();
    Ok(LoopEnd::Completed { at, last_eval })
}
