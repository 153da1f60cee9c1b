//! The stage interface: what a training or evaluation stage gets from the runner, and the
//! registry of stage implementations by kind.
//!
//! A stage is handed a [`StageContext`]: the resolved spec, the device, the checkpoint to resume
//! from (if any), the final checkpoints of earlier stages, and sinks for metrics, summaries,
//! checkpoints and log lines. It checks [`StageContext::stop_requested`] between steps and
//! returns [`StageOutcome::Stopped`] (after checkpointing or not) when asked to.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};

use super::checkpoint::{Checkpoint, CheckpointError, CheckpointStore};
use crate::registry::{Registry, RegistryError};
use crate::spec::{Spec, StageKind, StageSpec};
use crate::tracking::{TrackError, Tracker};

/// Why a stage stopped before finishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Ctrl-C / SIGTERM / SIGUSR2: the run is checkpointed and given back (pending).
    Interrupted,
    /// Another worker took the run over after a missed lease: stop without writing.
    LeaseLost,
}

/// How a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageOutcome {
    Completed,
    Stopped(StopReason),
}

/// Why a stage failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Metrics or logs could not be written.
    #[error(transparent)]
    Track(#[from] TrackError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Beat could not be built or run.
    #[error(transparent)]
    Beat(#[from] beatlab_nn::BeatError),
    /// The optimiser rejected its settings or its saved state.
    #[error("optimiser: {0}")]
    Optim(#[from] beatlab_nn::optim::OptimError),
    /// A model's training state could not be gathered or restored.
    #[error(transparent)]
    ModelState(#[from] beatlab_nn::checkpoint::CheckpointError),
    /// The multimodal model could not be built, run, saved or restored.
    #[error(transparent)]
    Model(#[from] beatlab_mm::MmError),
    /// A language-model part (backbone, vision tower, tokenizer, BERTScore encoder) failed.
    #[error(transparent)]
    Language(#[from] beatlab_lm::LmError),
    /// The spec's records could not be loaded or preprocessed.
    #[error("data: {0}")]
    Records(#[from] crate::data::DataError),
    /// The instruction items could not be built from the records.
    #[error("instruction data: {0}")]
    Items(#[from] beatlab_heartcare::instruct::BuildError),
    /// A benchmark metric could not be computed.
    #[error("metric: {0}")]
    Metric(#[from] beatlab_heartcare::metrics::MetricError),
    /// A record's line of a JSON output could not be written.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The stage has nothing to work on (no windows, no items of its tasks, an empty split).
    #[error("data: {0}")]
    Data(String),
    /// An item refers to a record whose input the stage did not prepare.
    #[error("record `{record}`: {what}")]
    MissingInput {
        record: String,
        /// What is missing (`no window`, `not loaded`, ...).
        what: &'static str,
    },
    /// `experiment.precision = "bf16"` on the CPU.
    #[error("experiment.precision = \"bf16\" needs a GPU (use --device cuda, or f32 on the CPU)")]
    Bf16OnCpu,
    /// A path in the spec names an environment variable that is not set.
    #[error("{0}")]
    Environment(String),
    /// The BERTScore encoder named by `eval.bertscore_encoder` could not be loaded or run.
    #[error("eval.bertscore_encoder `{name}`: {source}")]
    BertScore {
        name: String,
        #[source]
        source: Box<beatlab_lm::LmError>,
    },
    /// A checkpoint's state does not fit the stage's model or optimiser.
    #[error("checkpoint {}: {source}", path.display())]
    Restore {
        path: std::path::PathBuf,
        #[source]
        source: Box<StageError>,
    },
    /// A checkpoint's loop progress does not parse.
    #[error("checkpoint {}: bad progress: {source}", path.display())]
    BadProgress {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A stage reported success without saving its final checkpoint (a bug of the stage).
    #[error("stage `{0}` returned without its final checkpoint")]
    NoFinalCheckpoint(String),
    /// A checkpoint was written with another tokenizer than the run's: its embedding rows
    /// belong to other token ids.
    #[error(
        "checkpoint {}: written with tokenizer sha256 {recorded}, but the run's tokenizer is {current} \
         (the run folder's tokenizer.json was replaced or removed and trained again differently)",
        checkpoint.display()
    )]
    TokenizerMismatch {
        checkpoint: std::path::PathBuf,
        recorded: String,
        current: String,
    },
    /// A file of the run could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Training diverged.
    #[error("loss is {value} at step {step}: training diverged (try a lower lr or grad_clip)")]
    Diverged { step: i64, value: f64 },
    /// No implementation is registered for this stage kind.
    #[error("stage kind `{0}` is not available in this build")]
    Unsupported(StageKind),
    /// The stage panicked (a bug, or an input nothing validated): the run is failed, not left
    /// running for the next worker to crash on.
    #[error("panicked: {0}")]
    Panicked(String),
}

/// Stop flags shared with the heartbeat thread and the signal handler.
#[derive(Clone, Default)]
pub struct RunControl {
    pub interrupted: Arc<AtomicBool>,
    pub lease_lost: Arc<AtomicBool>,
}

impl RunControl {
    pub fn stop_reason(&self) -> Option<StopReason> {
        if self.lease_lost.load(Ordering::Relaxed) {
            Some(StopReason::LeaseLost)
        } else if self.interrupted.load(Ordering::Relaxed) {
            Some(StopReason::Interrupted)
        } else {
            None
        }
    }
}

/// Everything a stage may use while it runs.
pub struct StageContext<'a> {
    pub spec: &'a Spec,
    pub stage: &'a StageSpec,
    pub device: &'a Device,
    pub run_id: &'a str,
    pub run_dir: &'a Path,
    /// Folder for cached preprocessed data shared by all runs.
    pub cache_dir: &'a Path,
    /// The newest checkpoint of this stage from an earlier attempt, if any.
    pub resume: Option<Checkpoint>,
    pub(crate) tracker: &'a mut Tracker,
    pub(crate) checkpoints: &'a CheckpointStore,
    pub(crate) registry: &'a Registry,
    pub(crate) control: &'a RunControl,
    /// What the stages of this run share (built by the first stage that needs it).
    pub(crate) resources: &'a mut RunResources,
}

/// Values built once per run and shared by its stages (the multimodal stages' corpus and
/// tokenizer), one per type.
#[derive(Default)]
pub struct RunResources {
    by_type: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl StageContext<'_> {
    /// Records a metric under `<stage>/<key>` (registry and TensorBoard).
    pub fn metric(&mut self, key: &str, step: i64, value: f64) -> Result<(), StageError> {
        let key = format!("{}/{key}", self.stage.name);
        self.tracker.metric(&key, step, value)?;
        Ok(())
    }

    /// Records summary values under `<stage>/<key>`: the numbers tables are made of.
    pub fn summaries(&mut self, values: &[(&str, f64)]) -> Result<(), StageError> {
        let values: Vec<(String, f64)> = values
            .iter()
            .map(|(k, v)| (format!("{}/{k}", self.stage.name), *v))
            .collect();
        self.registry.set_summaries(self.run_id, &values)?;
        Ok(())
    }

    /// Saves a resumable checkpoint (metrics logged so far are flushed first, so a resumed run
    /// never lacks the metrics of the steps its checkpoint covers).
    pub fn checkpoint(
        &mut self,
        step: i64,
        epoch: i64,
        tensors: &BTreeMap<String, Tensor>,
        meta: &serde_json::Value,
    ) -> Result<(), StageError> {
        self.tracker.flush()?;
        let path = self
            .checkpoints
            .save(&self.stage.name, step, epoch, false, tensors, meta)?;
        self.log(&format!("checkpoint {}", path.display()));
        Ok(())
    }

    /// Saves the stage's final checkpoint, which marks it complete and is what later stages load.
    pub fn finish(
        &mut self,
        step: i64,
        epoch: i64,
        tensors: &BTreeMap<String, Tensor>,
        meta: &serde_json::Value,
    ) -> Result<(), StageError> {
        self.tracker.flush()?;
        self.checkpoints
            .save(&self.stage.name, step, epoch, true, tensors, meta)?;
        Ok(())
    }

    /// The final checkpoint of the earlier stage named `name` in this run.
    pub fn completed_stage(&self, name: &str) -> Result<Option<Checkpoint>, StageError> {
        Ok(self.checkpoints.final_of(name, self.device)?)
    }

    /// The final checkpoint of the latest earlier enabled stage of this kind, if it completed.
    pub fn completed_kind(&self, kind: StageKind) -> Result<Option<Checkpoint>, StageError> {
        let earlier = self
            .spec
            .stage
            .iter()
            .take_while(|s| s.name != self.stage.name)
            .filter(|s| s.kind == kind && s.enabled)
            .last();
        match earlier {
            Some(s) => self.completed_stage(&s.name),
            None => Ok(None),
        }
    }

    /// The run's `T`, built by `build` the first time a stage of this run asks for it.
    pub fn resource<T: Any + Send + Sync>(
        &mut self,
        build: impl FnOnce(&mut Self) -> Result<T, StageError>,
    ) -> Result<Arc<T>, StageError> {
        let id = TypeId::of::<T>();
        if let Some(found) = self.resources.by_type.get(&id) {
            return Ok(Arc::clone(found)
                .downcast::<T>()
                .expect("resources are stored under their own type"));
        }
        let value = Arc::new(build(self)?);
        self.resources.by_type.insert(id, value.clone());
        Ok(value)
    }

    /// Set when the stage should stop at the next safe point.
    pub fn stop_requested(&self) -> Option<StopReason> {
        self.control.stop_reason()
    }

    /// A line in the run's log (and on the console).
    pub fn log(&mut self, text: &str) {
        let line = format!("{}: {text}", self.stage.name);
        self.tracker.log(&line);
    }

    /// A progress bar (hidden when the console is not a terminal).
    pub fn bar(&self, len: u64, what: &str) -> indicatif::ProgressBar {
        self.tracker
            .console()
            .bar(len, &format!("{} {what}", self.stage.name))
    }

    /// Marks in TensorBoard that this attempt's first metric has step `step` (earlier attempts'
    /// events from that step on are dropped).
    pub fn resumed_at(&mut self, step: i64) -> Result<(), StageError> {
        self.tracker.resumed_at(step)?;
        Ok(())
    }
}

/// A training or evaluation stage.
pub trait Stage {
    /// Runs the stage (or continues it from `ctx.resume`).
    fn run(&mut self, ctx: &mut StageContext<'_>) -> Result<StageOutcome, StageError>;
}

/// Builds a stage of one kind.
pub trait StageFactory: Send + Sync {
    fn create(&self, spec: &Spec, stage: &StageSpec) -> Result<Box<dyn Stage>, StageError>;
}

impl<F> StageFactory for F
where
    F: Fn(&Spec, &StageSpec) -> Result<Box<dyn Stage>, StageError> + Send + Sync,
{
    fn create(&self, spec: &Spec, stage: &StageSpec) -> Result<Box<dyn Stage>, StageError> {
        self(spec, stage)
    }
}

/// Stage implementations by kind.
#[derive(Clone, Default)]
pub struct StageRegistry {
    factories: BTreeMap<&'static str, Arc<dyn StageFactory>>,
}

impl StageRegistry {
    pub fn empty() -> Self {
        Self::default()
    }

    /// Registers (or replaces) the implementation of a kind.
    pub fn register(&mut self, kind: StageKind, factory: impl StageFactory + 'static) {
        self.factories.insert(kind.as_str(), Arc::new(factory));
    }

    /// Whether an implementation of `kind` is registered.
    pub fn has(&self, kind: StageKind) -> bool {
        self.factories.contains_key(kind.as_str())
    }

    pub fn create(&self, spec: &Spec, stage: &StageSpec) -> Result<Box<dyn Stage>, StageError> {
        match self.factories.get(stage.kind.as_str()) {
            Some(f) => f.create(spec, stage),
            None => Err(StageError::Unsupported(stage.kind)),
        }
    }
}
