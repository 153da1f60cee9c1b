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

/// How long a stage trains: its batch size, optimiser steps per epoch, epochs (`u64::MAX` when
/// only `steps` bounds it) and total steps.
struct Length {
    batch: usize,
    steps_per_epoch: u64,
    epochs: u64,
    total_steps: u64,
}

impl Length {
    fn of(stage: &StageSpec, n_examples: usize) -> Self {
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
        Length {
            batch,
            steps_per_epoch,
            epochs,
            total_steps,
        }
    }

    fn done(&self, at: &Progress) -> bool {
        at.epoch >= self.epochs || at.step >= self.total_steps
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
    let len = Length::of(stage, n_examples);
    let sched = schedule(stage, len.steps_per_epoch, len.total_steps);
    let mut at = resume(ctx, trainee)?;
    ctx.log(&format!(
        "{n_examples} examples, {} steps/epoch, {} epochs{}",
        len.steps_per_epoch,
        stage.epochs,
        if stage.steps > 0 {
            format!(", at most {} steps", stage.steps)
        } else {
            String::new()
        }
    ));

    let bar = ctx.bar(len.total_steps, "steps");
    bar.set_position(at.step);
    let mut last_eval = None;
    while !len.done(&at) {
        let mut order: Vec<usize> = (0..n_examples).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(
            seed ^ at.epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ));
        let batches: Vec<&[usize]> = order.chunks(len.batch).collect();
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
            let loss = train_step(ctx, trainee, batches[at.batch as usize], &mut at, lr)?;
            timed_batches += 1;
            bar.inc(1);
            bar.set_message(format!("epoch {} loss {loss:.4}", at.epoch + 1));
            if stage.checkpoint_every_steps > 0
                && at
                    .step
                    .is_multiple_of(u64::from(stage.checkpoint_every_steps))
                && at.step < len.total_steps
            {
                save(ctx, trainee, at)?;
            }
            if at.step >= len.total_steps {
                break;
            }
        }
        let examples_per_s = timed_batches as f64 * len.batch as f64
            / epoch_started.elapsed().as_secs_f64().max(1e-9);
        let end = end_epoch(ctx, trainee, &len, &mut at, batches.len(), examples_per_s)?;
        if end.last {
            last_eval = end.eval;
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

/// Restores the trainee from `ctx.resume` and returns where it stood; the start otherwise.
fn resume(ctx: &mut StageContext<'_>, trainee: &mut dyn Trainee) -> Result<Progress, StageError> {
    let Some(ckpt) = ctx.resume.take() else {
        return Ok(Progress {
            epoch: 0,
            batch: 0,
            step: 0,
            epoch_loss: 0.0,
        });
    };
    let state: BTreeMap<String, Tensor> = ckpt.tensors.into_iter().collect();
    let path = ckpt.path.clone();
    trainee
        .restore(&state)
        .map_err(|source| StageError::Restore {
            path: path.clone(),
            source: Box::new(source),
        })?;
    let at: Progress = serde_json::from_value(ckpt.meta["progress"].clone())
        .map_err(|source| StageError::BadProgress { path, source })?;
    ctx.resumed_at(at.step as i64 + 1)?;
    Ok(at)
}

/// Saves a checkpoint of the trainee's state with the loop's progress.
fn save(ctx: &mut StageContext<'_>, trainee: &dyn Trainee, at: Progress) -> Result<(), StageError> {
    let state = trainee.state()?;
    let mut meta = trainee.checkpoint_meta();
    meta.insert("progress".into(), serde_json::json!(at));
    ctx.checkpoint(at.step as i64, at.epoch as i64, &state, &meta.into())
}

/// One optimiser step on `indices`: records its metrics at the new step and returns the loss
/// (a non-finite loss is [`StageError::Diverged`]).
fn train_step(
    ctx: &mut StageContext<'_>,
    trainee: &mut dyn Trainee,
    indices: &[usize],
    at: &mut Progress,
    lr: f64,
) -> Result<f64, StageError> {
    let metrics = trainee.step(indices, at.step, lr)?;
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
    let s = at.step as i64;
    for (key, value) in &metrics {
        ctx.metric(&format!("train/{key}"), s, *value)?;
    }
    ctx.metric("train/lr", s, lr)?;
    Ok(loss)
}

/// What [`end_epoch`] found.
struct EpochEnd {
    /// The validation metrics, when validation was due.
    eval: Option<Vec<(String, f64)>>,
    /// Whether training is over.
    last: bool,
}

/// After an epoch's batches (or the step cap): the epoch's loss metrics, the next epoch when
/// every batch is done, validation when due, and the log line.
fn end_epoch(
    ctx: &mut StageContext<'_>,
    trainee: &mut dyn Trainee,
    len: &Length,
    at: &mut Progress,
    n_batches: usize,
    examples_per_s: f64,
) -> Result<EpochEnd, StageError> {
    // Batches of this epoch, including those trained before a resume.
    let epoch_batches = at.batch;
    let epoch_mean = at.epoch_loss / epoch_batches.max(1) as f64;
    if at.batch as usize >= n_batches {
        at.epoch += 1;
        at.batch = 0;
        at.epoch_loss = 0.0;
    }
    let last = len.done(at);
    let mut line = format!(
        "epoch {} train loss {epoch_mean:.4} ({examples_per_s:.1} examples/s)",
        at.epoch
    );
    if epoch_batches > 0 {
        // Logged at the global step, like every metric, so TensorBoard's resume purge covers
        // them and all curves share one x axis.
        ctx.metric("train/epoch_loss", at.step as i64, epoch_mean)?;
        ctx.metric("train/epoch", at.step as i64, at.epoch as f64)?;
    }
    let mut eval = None;
    if last || at.epoch.is_multiple_of(u64::from(ctx.stage.eval_every)) {
        let (metrics, summary) = trainee.evaluate()?;
        for (k, v) in &metrics {
            ctx.metric(k, at.step as i64, *v)?;
        }
        line.push_str(&format!(", {summary}"));
        eval = Some(metrics);
    }
    ctx.log(&line);
    Ok(EpochEnd { eval, last })
}
