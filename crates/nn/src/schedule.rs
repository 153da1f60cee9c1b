//! Learning-rate schedules as pure functions of a step or epoch counter.
//!
//! A schedule does not hold the optimiser: the training loop asks [`Schedule::lr_at`] for the
//! rate of the current step or epoch and hands it to `AdamW::set_lr`. Being a pure function of
//! the counter, a resumed run needs no schedule state in its checkpoint.

use serde::{Deserialize, Serialize};

/// What the schedule's counter counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Optimiser steps (updated every batch).
    #[default]
    Step,
    /// Epochs (updated once per pass over the data, as PyTorch's `CosineAnnealingLR` stepped
    /// at epoch end).
    Epoch,
}

/// A learning-rate schedule; `base_lr` is the optimiser's configured rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// `base_lr` throughout.
    Constant,
    /// Optional linear warm-up over `warmup` units (`base_lr * t / warmup`), then cosine
    /// annealing: `lr_min + (base_lr - lr_min) * (1 + cos(pi * (t - warmup) / t_max)) / 2`.
    /// With `warmup = 0` this is PyTorch's `CosineAnnealingLR` closed form, including its
    /// behaviour past `t_max` (the cosine keeps going, back up towards `base_lr`): the paper
    /// trains 50 epochs with `t_max` 100, i.e. it stops at half the cycle.
    Cosine {
        /// Half period of the cosine, in `unit`s.
        t_max: u64,
        /// The lowest rate.
        #[serde(default)]
        lr_min: f64,
        /// Linear warm-up length, in `unit`s.
        #[serde(default)]
        warmup: u64,
        #[serde(default)]
        unit: Unit,
    },
    /// Linear warm-up from 0 over `warmup` units, then linear decay to `lr_min` at `total`
    /// (and `lr_min` after): Hugging Face's `get_linear_schedule_with_warmup` when `lr_min = 0`.
    Linear {
        /// Warm-up length.
        warmup: u64,
        /// Where the decay reaches `lr_min` (the run's length).
        total: u64,
        #[serde(default)]
        lr_min: f64,
        #[serde(default)]
        unit: Unit,
    },
}

/// A schedule with unusable numbers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid learning-rate schedule: {0}")]
pub struct ScheduleError(pub String);

impl Schedule {
    /// Checks the numbers (`t_max > 0`, `total > warmup`, `lr_min >= 0`).
    pub fn validate(&self) -> Result<(), ScheduleError> {
        match *self {
            Schedule::Constant => Ok(()),
            Schedule::Cosine { t_max, lr_min, .. } => {
                if t_max == 0 {
                    return Err(ScheduleError("cosine `t_max` is 0, expected >= 1".into()));
                }
                check_lr_min(lr_min)
            }
            Schedule::Linear {
                warmup,
                total,
                lr_min,
                ..
            } => {
                if total <= warmup {
                    return Err(ScheduleError(format!(
                        "linear `total` = {total} must exceed `warmup` = {warmup}"
                    )));
                }
                check_lr_min(lr_min)
            }
        }
    }

    /// The counter this schedule reads.
    pub fn unit(&self) -> Unit {
        match self {
            Schedule::Constant => Unit::Step,
            Schedule::Cosine { unit, .. } | Schedule::Linear { unit, .. } => *unit,
        }
    }

    /// The rate at counter value `t` (0-based: `t = 0` is the first step or epoch).
    pub fn lr_at(&self, base_lr: f64, t: u64) -> f64 {
        match *self {
            Schedule::Constant => base_lr,
            Schedule::Cosine {
                t_max,
                lr_min,
                warmup,
                ..
            } => {
                if t < warmup {
                    return base_lr * t as f64 / warmup as f64;
                }
                let progress = (t - warmup) as f64 / t_max.max(1) as f64;
                lr_min + (base_lr - lr_min) * (1.0 + (std::f64::consts::PI * progress).cos()) / 2.0
            }
            Schedule::Linear {
                warmup,
                total,
                lr_min,
                ..
            } => {
                if t < warmup {
                    return base_lr * t as f64 / warmup as f64;
                }
                let span = total.saturating_sub(warmup).max(1) as f64;
                let left = (total.saturating_sub(t) as f64 / span).clamp(0.0, 1.0);
                lr_min + (base_lr - lr_min) * left
            }
        }
    }

    /// The rate for a loop that knows both counters: picks the one [`Schedule::unit`] names.
    pub fn lr_for(&self, base_lr: f64, epoch: u64, step: u64) -> f64 {
        match self.unit() {
            Unit::Step => self.lr_at(base_lr, step),
            Unit::Epoch => self.lr_at(base_lr, epoch),
        }
    }
}

fn check_lr_min(lr_min: f64) -> Result<(), ScheduleError> {
    if lr_min.is_finite() && lr_min >= 0.0 {
        Ok(())
    } else {
        Err(ScheduleError(format!(
            "`lr_min` = {lr_min} must be a finite number >= 0"
        )))
    }
}
