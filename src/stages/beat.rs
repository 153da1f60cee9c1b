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
use candle_core::{DType, Device, Tensor};

use super::trainer::{self, LoopEnd, Trainee};
use crate::runner::{Stage, StageContext, StageError, StageOutcome};
use crate::spec::{Precision, Spec};

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
        (Precision::Bf16, Device::Cpu) => Err(StageError::Invalid(
            "experiment.precision = \"bf16\" needs a GPU (use --device cuda, or f32 on the CPU)"
                .into(),
        )),
        (Precision::Bf16, _) => Ok(DType::BF16),
    }
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

/// Beat, its optimiser and its data, as the shared training loop sees them.
struct BeatTrainee<'a> {
    model: Beat,
    store: ParamStore,
    vars: Vec<(String, candle_core::Var)>,
    opt: AdamW,
    data: &'a Dataset,
    grad_clip: f64,
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
        self.opt.set_lr(lr);
        let x = batch_tensor(
            &self.data.train,
            indices,
            self.data.window_len(),
            self.dtype,
            &self.device,
        )?;
        let out = self
            .model
            .forward(&x, Mode::Train { step })
            .map_err(|e| StageError::Invalid(e.to_string()))?;
        let loss = scalar(&out.loss)?;
        let mut metrics = vec![
            ("loss", loss),
            ("loss_recon", scalar(&out.recon_loss)?),
            ("loss_pred", scalar(&out.pred_loss)?),
            ("loss_vq", scalar(&out.vq_loss)?),
        ];
        if !loss.is_finite() {
            return Ok(metrics);
        }
        let mut grads = out.loss.backward()?;
        if self.grad_clip > 0.0 {
            let norm = clip_grad_norm(&mut grads, &self.vars, self.grad_clip)?;
            if norm.is_finite() {
                metrics.push(("grad_norm", norm));
            }
        }
        self.opt
            .step(&grads)
            .map_err(|e| StageError::Invalid(e.to_string()))?;
        self.model
            .update_codebooks(&out)
            .map_err(|e| StageError::Invalid(e.to_string()))?;
        Ok(metrics)
    }

    fn evaluate(&mut self) -> Result<(Vec<(String, f64)>, String), StageError> {
        let eval = evaluate(
            &self.model,
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
        training_state(&self.store, Some(&self.opt)).map_err(|e| StageError::Invalid(e.to_string()))
    }

    fn restore(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), StageError> {
        restore_training_state(state, &self.store, Some(&mut self.opt))
            .map_err(|e| StageError::Invalid(e.to_string()))
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
        let data: Dataset = crate::data::windows(spec, ctx.cache_dir)
            .map_err(|e| StageError::Data(crate::runner::error_chain(&e)))?;
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

        let store = ParamStore::new(spec.experiment.seed);
        let model = Beat::new(beat_config(spec), &store, dtype, &device)
            .map_err(|e| StageError::Invalid(e.to_string()))?;
        let vars = store.vars();
        let opt = AdamW::new(
            vars.clone(),
            AdamWConfig {
                lr: stage.lr,
                weight_decay: stage.weight_decay,
                ..AdamWConfig::default()
            },
        )
        .map_err(|e| StageError::Invalid(e.to_string()))?;
        ctx.log(&format!("{} parameters", store.num_params()));
        let mut trainee = BeatTrainee {
            model,
            store,
            vars,
            opt,
            data: &data,
            grad_clip: stage.grad_clip,
            batch: stage.batch as usize,
            dtype,
            device: device.clone(),
        };
        let (at, last_eval) =
            match trainer::run(ctx, &mut trainee, data.train.len(), spec.experiment.seed)? {
                LoopEnd::Stopped(reason) => return Ok(StageOutcome::Stopped(reason)),
                LoopEnd::Completed { at, last_eval } => (at, last_eval),
            };

        let mut summary: Vec<(String, f64)> = match last_eval {
            Some(entries) => entries,
            None => trainee.evaluate()?.0,
        };
        let val_loss = summary
            .iter()
            .find(|(k, _)| k == "val/loss")
            .map_or(f64::NAN, |e| e.1);
        let window_len = data.window_len();
        if !data.test.is_empty() {
            let test = evaluate(
                &trainee.model,
                &data.test,
                window_len,
                trainee.batch,
                dtype,
                &device,
            )?;
            summary.extend(test.entries("test"));
        }
        summary.push(("train/steps".into(), at.step as f64));
        summary.push(("train/epochs".into(), at.epoch as f64));
        summary.push(("params".into(), trainee.store.num_params() as f64));
        summary.push(("data/train_windows".into(), data.train.len() as f64));
        summary.push(("data/val_windows".into(), data.val.len() as f64));
        let refs: Vec<(&str, f64)> = summary.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        ctx.summaries(&refs)?;

        // The final checkpoint holds the model (parameters and codebooks), not the optimiser:
        // later stages load it, nothing resumes from it.
        let final_state =
            training_state(&trainee.store, None).map_err(|e| StageError::Invalid(e.to_string()))?;
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
