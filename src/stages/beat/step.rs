//! One Beat training step — forward in training mode, backward, global-norm clipping, AdamW,
//! then the EMA codebook update — and the model, parameters and optimiser it steps.
//!
//! This is the only implementation of the step: the `beat` stage trains with it, `beatlab
//! parity` compares it across devices, and the benchmark (`crates/bench`) times it.

use std::collections::BTreeMap;
use std::time::Instant;

use beatlab_nn::ParamStore;
use beatlab_nn::beat::{Beat, BeatConfig, BeatOutput, Mode};
use beatlab_nn::checkpoint::{restore_training_state, training_state};
use beatlab_nn::optim::{AdamW, AdamWConfig, clip_grad_norm};
use candle_core::{DType, Device, Tensor, Var};

use crate::runner::StageError;

/// The losses of one step (and the gradient norm before clipping, when it was clipped).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLosses {
    pub loss: f64,
    pub recon: f64,
    pub pred: f64,
    pub vq: f64,
    pub grad_norm: Option<f64>,
}

impl StepLosses {
    /// The metrics a training stage logs, the loss first.
    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        let mut out = vec![
            ("loss", self.loss),
            ("loss_recon", self.recon),
            ("loss_pred", self.pred),
            ("loss_vq", self.vq),
        ];
        out.extend(self.grad_norm.map(|n| ("grad_norm", n)));
        out
    }
}

/// Milliseconds of a step's phases. Measured only when asked for, since measuring waits for
/// the device after every phase.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseTimes {
    pub forward: f64,
    pub backward: f64,
    /// Gradient clipping and the AdamW update.
    pub optimizer: f64,
    /// The EMA codebook update.
    pub codebooks: f64,
}

impl PhaseTimes {
    /// The phases in step order.
    pub fn as_array(&self) -> [f64; 4] {
        [self.forward, self.backward, self.optimizer, self.codebooks]
    }
}

/// How a [`BeatTraining`] is set up.
#[derive(Debug, Clone)]
pub struct TrainingSetup {
    pub config: BeatConfig,
    /// Seeds the parameters (drawn per tensor name).
    pub seed: u64,
    pub optimizer: AdamWConfig,
    /// Largest global gradient norm; 0 = no clipping.
    pub grad_clip: f64,
    pub dtype: DType,
    pub device: Device,
}

/// Beat with its parameters and optimiser, stepped one batch at a time.
pub struct BeatTraining {
    model: Beat,
    store: ParamStore,
    vars: Vec<(String, Var)>,
    opt: AdamW,
    grad_clip: f64,
    device: Device,
}

impl BeatTraining {
    pub fn new(setup: TrainingSetup) -> Result<Self, StageError> {
        let store = ParamStore::new(setup.seed);
        let model = Beat::new(setup.config, &store, setup.dtype, &setup.device)?;
        let vars = store.vars();
        let opt = AdamW::new(vars.clone(), setup.optimizer)?;
        Ok(Self {
            model,
            store,
            vars,
            opt,
            grad_clip: setup.grad_clip,
            device: setup.device,
        })
    }

    pub fn model(&self) -> &Beat {
        &self.model
    }

    pub fn num_params(&self) -> usize {
        self.store.num_params()
    }

    /// One optimiser step on `windows` (`[B, leads, input_len + predict_len]`, on the model's
    /// device) at learning rate `lr`. Dropout masks are seeded by `step`. A non-finite loss is
    /// returned without a backward pass or an update, for the caller to stop on.
    pub fn step(
        &mut self,
        windows: &Tensor,
        step: u64,
        lr: f64,
        timing: Option<&mut PhaseTimes>,
    ) -> Result<StepLosses, StageError> {
        let mut clock = PhaseClock::new(&self.device, timing.is_some());
        self.opt.set_lr(lr);
        let out = self.model.forward(windows, Mode::Train { step })?;
        let mut losses = losses_of(&out)?;
        let forward = clock.lap()?;
        if !losses.loss.is_finite() {
            return Ok(losses);
        }
        let mut grads = out.loss.backward()?;
        let backward = clock.lap()?;
        if self.grad_clip > 0.0 {
            let norm = clip_grad_norm(&mut grads, &self.vars, self.grad_clip)?;
            losses.grad_norm = norm.is_finite().then_some(norm);
        }
        self.opt.step(&grads)?;
        let optimizer = clock.lap()?;
        self.model.update_codebooks(&out)?;
        let codebooks = clock.lap()?;
        if let Some(t) = timing {
            *t = PhaseTimes {
                forward,
                backward,
                optimizer,
                codebooks,
            };
        }
        Ok(losses)
    }

    /// Parameters, codebooks and optimiser moments: what a resumable checkpoint holds.
    pub fn state(&self) -> Result<BTreeMap<String, Tensor>, StageError> {
        Ok(training_state(&self.store, Some(&self.opt))?)
    }

    /// The model alone (parameters and codebooks): what later stages load.
    pub fn model_state(&self) -> Result<BTreeMap<String, Tensor>, StageError> {
        Ok(training_state(&self.store, None)?)
    }

    /// Restores [`BeatTraining::state`]'s output.
    pub fn restore(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), StageError> {
        Ok(restore_training_state(
            state,
            &self.store,
            Some(&mut self.opt),
        )?)
    }
}

fn losses_of(out: &BeatOutput) -> candle_core::Result<StepLosses> {
    Ok(StepLosses {
        loss: scalar(&out.loss)?,
        recon: scalar(&out.recon_loss)?,
        pred: scalar(&out.pred_loss)?,
        vq: scalar(&out.vq_loss)?,
        grad_norm: None,
    })
}

/// A scalar tensor of any float dtype as `f64`.
pub(crate) fn scalar(t: &Tensor) -> candle_core::Result<f64> {
    Ok(f64::from(t.to_dtype(DType::F32)?.to_scalar::<f32>()?))
}

/// Milliseconds between laps, waiting for the device first; free when not measuring.
struct PhaseClock<'a> {
    device: &'a Device,
    last: Option<Instant>,
}

impl<'a> PhaseClock<'a> {
    fn new(device: &'a Device, measure: bool) -> Self {
        Self {
            device,
            last: measure.then(Instant::now),
        }
    }

    fn lap(&mut self) -> candle_core::Result<f64> {
        let Some(last) = self.last else {
            return Ok(0.0);
        };
        self.device.synchronize()?;
        let now = Instant::now();
        self.last = Some(now);
        Ok((now - last).as_secs_f64() * 1e3)
    }
}
