//! The `warmup` and `joint` stages: train the parts a stage declares (`train = [...]`) on its
//! data mix (`tasks = [...]`, `data_fraction`), with the rest of HeartcareGPT frozen.
//!
//! Warm-up (paper §1.3): backbone frozen, projectors trained on captioning (record ->
//! description) over about a fifth of the data. Joint: LoRA adapters and projectors on the
//! instruction mix. The loss is the next-token cross-entropy over answer tokens only.

use std::collections::BTreeMap;
use std::time::Instant;

use beatlab_heartcare::instruct::{Item, Split, Task};
use beatlab_mm::{EcgInput, Example, HeartcareModel, PROJECTORS, Part};
use beatlab_nn::optim::{AdamW, AdamWConfig};
use candle_core::Tensor;
use toml::Value;

use super::run_data::RunData;
use super::{Inputs, build_model, parts_state, restore_earlier, restore_parts, subsample};
use crate::runner::{Stage, StageContext, StageError, StageOutcome};
use crate::spec::{Spec, StageKind, StageSpec};
use crate::stages::catalog::{StageDeclaration, strings};
use crate::stages::trainer::{self, LoopEnd, Trainee};

/// Prefix of the optimiser's tensors in a checkpoint (the model's are `<part>/<key>`).
const OPTIM: &str = "optim.";

struct InstructTrainee<'a> {
    model: HeartcareModel,
    opt: AdamW,
    parts: Vec<Part>,
    train: &'a [(Item, Vec<EcgInput>)],
    val: &'a [(Item, Vec<EcgInput>)],
    grad_clip: Option<f64>,
    batch: usize,
    /// Recorded in every checkpoint (the run's tokenizer).
    meta: serde_json::Map<String, serde_json::Value>,
}

impl InstructTrainee<'_> {
    fn examples<'b>(pairs: impl Iterator<Item = &'b (Item, Vec<EcgInput>)>) -> Vec<Example<'b>> {
        pairs
            .map(|(item, inputs)| Example::new(item, inputs))
            .collect()
    }
}

impl Trainee for InstructTrainee<'_> {
    fn step(
        &mut self,
        indices: &[usize],
        step: u64,
        lr: f64,
    ) -> Result<Vec<(&'static str, f64)>, StageError> {
        self.opt.set_lr(lr);
        self.model.start_step(step);
        let examples = Self::examples(indices.iter().map(|&i| &self.train[i]));
        let stats = self
            .model
            .train_step(&mut self.opt, &examples, self.grad_clip)?;
        let mut metrics = vec![
            ("loss", f64::from(stats.loss)),
            ("answer_tokens", stats.target_tokens as f64),
        ];
        if let Some(norm) = stats.grad_norm.filter(|n| n.is_finite()) {
            metrics.push(("grad_norm", norm));
        }
        Ok(metrics)
    }

    fn evaluate(&mut self) -> Result<(Vec<(String, f64)>, String), StageError> {
        if self.val.is_empty() {
            return Ok((Vec::new(), "no validation items".into()));
        }
        // Token-weighted mean over the split: each batch's loss is a mean over its answer tokens.
        let (mut total, mut tokens) = (0.0, 0usize);
        for chunk in self.val.chunks(self.batch.max(1)) {
            let out = self.model.forward(&Self::examples(chunk.iter()))?;
            total += f64::from(out.loss.to_scalar::<f32>()?) * out.target_tokens as f64;
            tokens += out.target_tokens;
        }
        let loss = total / tokens.max(1) as f64;
        Ok((vec![(VAL_LOSS.into(), loss)], format!("val loss {loss:.4}")))
    }

    fn checkpoint_meta(&self) -> serde_json::Map<String, serde_json::Value> {
        self.meta.clone()
    }

    fn state(&self) -> Result<BTreeMap<String, Tensor>, StageError> {
        let mut state = parts_state(&self.model, &self.parts)?;
        for (k, v) in self.opt.state()? {
            state.insert(format!("{OPTIM}{k}"), v);
        }
        Ok(state)
    }

    fn restore(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), StageError> {
        let model_state = state
            .iter()
            .filter(|(k, _)| !k.starts_with(OPTIM))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        restore_parts(&mut self.model, &model_state)?;
        let optim: BTreeMap<String, Tensor> = state
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(OPTIM).map(|k| (k.to_string(), v.clone())))
            .collect();
        Ok(self.opt.load_state(&optim)?)
    }
}

/// The items of a split with their precomputed inputs.
fn with_inputs(
    items: Vec<Item>,
    inputs: &Inputs,
) -> Result<Vec<(Item, Vec<EcgInput>)>, StageError> {
    items
        .into_iter()
        .map(|item| {
            let i = inputs.of(&item)?;
            Ok((item, i))
        })
        .collect()
}

/// The instruction tasks of the paper's joint stage and evaluation (all but captioning).
pub(crate) const INSTRUCTION_TASKS: [Task; 5] = [
    Task::ClosedQa,
    Task::OpenQa,
    Task::ComparisonQa,
    Task::ReportGeneration,
    Task::SignalPrediction,
];

/// The `warmup` kind: paper §1.3's projector warm-up (backbone frozen, projectors on captioning,
/// lr 2e-4, batch 16, about a fifth of the data).
pub const WARMUP: StageDeclaration = StageDeclaration {
    kind: StageKind::Warmup,
    defaults: || {
        vec![
            ("epochs", Value::Integer(1)),
            ("lr", Value::Float(2e-4)),
            ("schedule", Value::String("cosine".into())),
            ("batch", Value::Integer(16)),
            ("checkpoint_every", Value::Integer(1)),
            ("train", strings(&[PROJECTORS])),
            ("tasks", strings(&[Task::Caption.name()])),
            ("data_fraction", Value::Float(0.2)),
        ]
    },
    summaries: summary_keys,
    create: |_, _| Ok(Box::new(InstructStage)),
};

/// The `joint` kind: paper §1.3's joint stage (LoRA and projectors on the full instruction set,
/// lr 2e-5, linear schedule with warm-up).
pub const JOINT: StageDeclaration = StageDeclaration {
    kind: StageKind::Joint,
    defaults: || {
        vec![
            ("epochs", Value::Integer(1)),
            ("lr", Value::Float(2e-5)),
            ("schedule", Value::String("linear".into())),
            ("warmup_steps", Value::Integer(10)),
            ("batch", Value::Integer(16)),
            ("checkpoint_every", Value::Integer(1)),
            ("train", strings(&[PROJECTORS, Part::Lora.name()])),
            ("tasks", strings(&INSTRUCTION_TASKS.map(Task::name))),
        ]
    },
    summaries: summary_keys,
    create: |_, _| Ok(Box::new(InstructStage)),
};

/// The run-size summaries a training stage records after its final validation.
const SIZE_KEYS: [&str; 4] = [
    "train/steps",
    "trainable_params",
    "data/train_items",
    "data/val_items",
];

fn summary_keys(_: &Spec, _: &StageSpec) -> Vec<String> {
    std::iter::once(VAL_LOSS)
        .chain(SIZE_KEYS)
        .map(String::from)
        .collect()
}

/// The validation loss key.
const VAL_LOSS: &str = "val/loss";

/// The final checkpoint's metadata: where training ended, the parts saved, the run's tokenizer.
fn final_meta(data: &RunData, at: trainer::Progress, parts: &[Part]) -> serde_json::Value {
    let mut meta = data.checkpoint_meta();
    meta.insert("progress".into(), serde_json::json!(at));
    meta.insert(
        "parts".into(),
        parts.iter().map(|p| p.name()).collect::<Vec<_>>().into(),
    );
    meta.into()
}

/// The `warmup` and `joint` stages.
pub struct InstructStage;

impl Stage for InstructStage {
    fn run(&mut self, ctx: &mut StageContext<'_>) -> Result<StageOutcome, StageError> {
        let spec = ctx.spec;
        let stage = ctx.stage;
        let started = Instant::now();
        let data = RunData::of_run(ctx)?;
        let corpus = &data.corpus;
        if let Some(c) = &ctx.resume {
            data.check_checkpoint(&c.meta, &c.path)?;
        }
        let seed = spec.experiment.seed;
        let train_items = subsample(
            corpus.select(Split::Train, &stage.tasks),
            stage.data_fraction,
            seed,
        );
        let val_items = subsample(
            corpus.select(Split::Validation, &stage.tasks),
            stage.data_fraction,
            seed,
        );
        if train_items.is_empty() {
            return Err(StageError::Data(format!(
                "no training items for tasks {} in {} records",
                super::task_list(&stage.tasks),
                corpus.records.len()
            )));
        }
        let mut model = build_model(spec, data.tokenizer(), ctx.device, &stage.train)?;
        restore_earlier(ctx, &data, &mut model)?;
        let parts: Vec<Part> = model.trainable_parts().iter().copied().collect();
        let all: Vec<Item> = train_items.iter().chain(&val_items).cloned().collect();
        let inputs = Inputs::prepare(spec, corpus, &model, &all, ctx.device)?;
        let train = with_inputs(train_items, &inputs)?;
        let val = with_inputs(val_items, &inputs)?;
        ctx.log(&format!(
            "{} train / {} val items ({}), training {}; data ready in {:.1} s",
            train.len(),
            val.len(),
            super::task_list(&stage.tasks),
            parts
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", "),
            started.elapsed().as_secs_f64()
        ));

        let vars = model.trainable_vars(&stage.train)?;
        let params: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
        let opt = AdamW::new(
            vars,
            AdamWConfig {
                lr: stage.lr,
                weight_decay: stage.weight_decay,
                ..AdamWConfig::default()
            },
        )?;
        let mut trainee = InstructTrainee {
            model,
            opt,
            parts: parts.clone(),
            train: &train,
            val: &val,
            grad_clip: (stage.grad_clip > 0.0).then_some(stage.grad_clip),
            batch: stage.batch as usize,
            meta: data.checkpoint_meta(),
        };
        let (at, last_eval) = match trainer::run(ctx, &mut trainee, train.len(), seed)? {
            LoopEnd::Stopped(reason) => return Ok(StageOutcome::Stopped(reason)),
            LoopEnd::Completed { at, last_eval } => (at, last_eval),
        };
        let mut summary = match last_eval {
            Some(entries) => entries,
            None => trainee.evaluate()?.0,
        };
        let sizes = [
            at.step as f64,
            params as f64,
            train.len() as f64,
            val.len() as f64,
        ];
        summary.extend(SIZE_KEYS.iter().map(|k| k.to_string()).zip(sizes));
        let refs: Vec<(&str, f64)> = summary.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        ctx.summaries(&refs)?;
        let final_state = parts_state(&trainee.model, &parts)?;
        ctx.finish(
            at.step as i64,
            at.epoch as i64,
            &final_state,
            &final_meta(&data, at, &parts),
        )?;
        ctx.log(&format!("done in {:.1} s", started.elapsed().as_secs_f64()));
        Ok(StageOutcome::Completed)
    }
}
