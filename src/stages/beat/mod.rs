//! The `beat` stage: trains the Beat tokenizer on preprocessed 12-lead windows (paper §1.1).
//!
//! Each step ([`BeatTraining::step`]): forward in training mode, backward, global-norm clipping,
//! AdamW, then the EMA codebook update. The training order of every epoch is a permutation seeded by
//! `(experiment.seed, epoch)` and dropout masks are seeded by the step, so a run is a function of
//! its spec and a checkpoint taken mid-epoch resumes onto exactly the same trajectory.
//!
//! Every `eval_every` epochs the whole validation split is evaluated: losses, Code% and
//! perplexity per quantizer level (over the split, not one batch as the public code did), and
//! the reconstruction error per lead. The final evaluation becomes the run's summaries.

mod evaluate;
mod step;

use std::collections::BTreeMap;
use std::time::Instant;

use beatlab_ecg::STANDARD_LEADS;
use beatlab_ecg::dataset::Dataset;
use beatlab_nn::beat::BeatConfig;
use beatlab_nn::optim::AdamWConfig;
use candle_core::{DType, Device, Tensor};

use evaluate::batch_tensor;
pub use evaluate::{Evaluation, evaluate};
pub use step::{BeatTraining, PhaseTimes, StepLosses, TrainingSetup};

use beatlab_mm::Part;
use toml::Value;

use super::catalog::{StageDeclaration, strings};
use super::trainer::{self, LoopEnd, Trainee};
use crate::runner::{Stage, StageContext, StageError, StageOutcome};
use crate::spec::{Precision, Spec, StageKind, StageSpec};

/// The `beat` kind: paper §1.1's schedule (AdamW lr 1e-4, cosine with T_max 100 stepped per
/// epoch, 50 epochs, batch 32, clip 1.0, a checkpoint every 5 epochs), training Beat.
pub const DECLARATION: StageDeclaration = StageDeclaration {
    kind: StageKind::Beat,
    defaults: || {
        vec![
            ("epochs", Value::Integer(50)),
            ("lr", Value::Float(1e-4)),
            ("schedule", Value::String("cosine".into())),
            ("t_max", Value::Integer(100)),
            ("batch", Value::Integer(32)),
            ("grad_clip", Value::Float(1.0)),
            ("checkpoint_every", Value::Integer(5)),
            ("train", strings(&[Part::Beat.name()])),
        ]
    },
    summaries: summary_keys,
    create: |_, _| Ok(Box::new(BeatStage)),
};

/// Every summary key the stage records: validation and test evaluations at the spec's number of
/// quantizer levels, and the run's sizes.
fn summary_keys(spec: &Spec, _: &StageSpec) -> Vec<String> {
    let levels = spec.beat.dvq_levels as usize;
    let shape = Evaluation {
        code_pct: vec![0.0; levels],
        perplexity: vec![0.0; levels],
        lead_mse: vec![0.0; STANDARD_LEADS.len()],
        ..Evaluation::default()
    };
    let mut keys: Vec<String> = ["val", "test"]
        .into_iter()
        .flat_map(|split| shape.entries(split))
        .map(|(key, _)| key)
        .collect();
    keys.extend(SIZE_KEYS.map(String::from));
    keys
}

/// The run-size summaries, recorded after training.
const SIZE_KEYS: [&str; 5] = [
    "train/steps",
    "train/epochs",
    "params",
    "data/train_windows",
    "data/val_windows",
];

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
        locality_slope: (b.locality_slope > 0.0).then_some(b.locality_slope),
        zero_init_output_heads: b.zero_init_heads,
        vq_warmup_steps: u64::from(b.vq_warmup_steps),
        ..BeatConfig::default()
    }
}

/// The tensor dtype of a spec's precision on a device.
pub fn dtype(spec: &Spec, device: &Device) -> Result<DType, StageError> {
    match (spec.experiment.precision, device) {
        (Precision::F32, _) => Ok(DType::F32),
        (Precision::Bf16, Device::Cpu) => Err(StageError::Bf16OnCpu),
        (Precision::Bf16, _) => Ok(DType::BF16),
    }
}

/// Beat's training and its data, as the shared training loop sees them.
struct BeatTrainee<'a> {
    training: BeatTraining,
    data: &'a Dataset,
    batch: usize,
    dtype: DType,
    device: Device,
}

impl Trainee for BeatTrainee<'_> {
    fn step(
        &mut self,
        indices: &[usize],
        step: u64,
        lr: f64,
    ) -> Result<Vec<(&'static str, f64)>, StageError> {
        let x = batch_tensor(
            &self.data.train,
            indices,
            self.data.window_len(),
            self.dtype,
            &self.device,
        )?;
        Ok(self.training.step(&x, step, lr, None)?.metrics())
    }

    fn evaluate(&mut self) -> Result<(Vec<(String, f64)>, String), StageError> {
        let eval = evaluate(
            self.training.model(),
            &self.data.val,
            self.data.window_len(),
            self.batch,
            self.dtype,
            &self.device,
        )?;
        let line = format!(
            "val loss {:.4} (recon {:.4}, pred {:.4}, vq {:.4}), Code% {}",
            eval.loss,
            eval.recon,
            eval.pred,
            eval.vq,
            eval.code_pct
                .iter()
                .map(|p| format!("{p:.1}"))
                .collect::<Vec<_>>()
                .join("/")
        );
        Ok((eval.entries("val"), line))
    }

    fn state(&self) -> Result<BTreeMap<String, Tensor>, StageError> {
        self.training.state()
    }

    fn restore(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), StageError> {
        self.training.restore(state)
    }
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
        let data = load_windows(ctx)?;
        let training = BeatTraining::new(TrainingSetup {
            config: beat_config(spec),
            seed: spec.experiment.seed,
            optimizer: AdamWConfig {
                lr: stage.lr,
                weight_decay: stage.weight_decay,
                ..AdamWConfig::default()
            },
            grad_clip: stage.grad_clip,
            dtype,
            device: device.clone(),
        })?;
        ctx.log(&format!("{} parameters", training.num_params()));
        let mut trainee = BeatTrainee {
            training,
            data: &data,
            batch: stage.batch as usize,
            dtype,
            device,
        };
        let (at, last_eval) =
            match trainer::run(ctx, &mut trainee, data.train.len(), spec.experiment.seed)? {
                LoopEnd::Stopped(reason) => return Ok(StageOutcome::Stopped(reason)),
                LoopEnd::Completed { at, last_eval } => (at, last_eval),
            };
        let summary = trainee.final_summaries(ctx, last_eval, &at)?;
        let val_loss = summary
            .iter()
            .find(|(k, _)| k == "val/loss")
            .map_or(f64::NAN, |e| e.1);
        // The final checkpoint holds the model (parameters and codebooks), not the optimiser:
        // later stages load it, nothing resumes from it.
        let final_state = trainee.training.model_state()?;
        ctx.finish(
            at.step as i64,
            at.epoch as i64,
            &final_state,
            &serde_json::json!({ "progress": at, "beat": beat_config(spec) }),
        )?;
        ctx.log(&format!(
            "done: val loss {val_loss:.4} in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        Ok(StageOutcome::Completed)
    }
}

/// The spec's windows, with a training and a validation split that are not empty.
fn load_windows(ctx: &mut StageContext<'_>) -> Result<Dataset, StageError> {
    let spec = ctx.spec;
    let started = Instant::now();
    let data: Dataset = crate::data::windows(spec, ctx.cache_dir)?;
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
        data.window_len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(data)
}

impl BeatTrainee<'_> {
    /// The run's summaries after training: the last validation evaluation (or a fresh one),
    /// the test split's, and the run's sizes, recorded in the registry and returned. Also saves
    /// a few validation windows with their reconstruction and prediction, for the report.
    fn final_summaries(
        &mut self,
        ctx: &mut StageContext<'_>,
        last_eval: Option<Vec<(String, f64)>>,
        at: &trainer::Progress,
    ) -> Result<Vec<(String, f64)>, StageError> {
        let data = self.data;
        let window_len = data.window_len();
        let mut summary: Vec<(String, f64)> = match last_eval {
            Some(entries) => entries,
            None => self.evaluate()?.0,
        };
        let model = self.training.model();
        if !data.test.is_empty() {
            let test = evaluate(
                model,
                &data.test,
                window_len,
                self.batch,
                self.dtype,
                &self.device,
            )?;
            summary.extend(test.entries("test"));
        }
        let samples = crate::report::samples::beat_samples(
            model,
            &data.val,
            window_len,
            data.fs,
            self.dtype,
            &self.device,
        )?;
        crate::report::samples::save_beat_samples(ctx.run_dir, &samples)?;
        let sizes = [
            at.step as f64,
            at.epoch as f64,
            self.training.num_params() as f64,
            data.train.len() as f64,
            data.val.len() as f64,
        ];
        summary.extend(SIZE_KEYS.iter().map(|k| k.to_string()).zip(sizes));
        let refs: Vec<(&str, f64)> = summary.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        ctx.summaries(&refs)?;
        Ok(summary)
    }
}
