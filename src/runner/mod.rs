//! Runs cells: claims them from the registry, runs their enabled stages in order, and records
//! the outcome.
//!
//! A run's folder `runs/<experiment>/<run-id>/` holds `spec.toml` (the resolved cell), `log.txt`,
//! `checkpoints/` and `tb/`. A stage that already has a final checkpoint is skipped, and an
//! unfinished stage continues from its newest checkpoint, so a killed or interrupted run loses
//! at most the work since its last checkpoint. While a run is held, a heartbeat thread refreshes
//! its lease; if the lease is lost to another worker, the run stops without writing further.

pub mod checkpoint;
pub mod stage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use candle_core::Device;

use crate::registry::{CellOffer, Claim, ClaimPolicy, Registry, RegistryError, RunStatus};
use crate::spec::cells::CHUNK;
use crate::spec::{Cell, PlanCells, Spec};
use crate::tracking::{Console, Tracker};
use checkpoint::CheckpointStore;
pub use stage::{
    RunControl, RunResources, Stage, StageContext, StageError, StageOutcome, StageRegistry,
    StopReason,
};

/// Settings shared by every worker of a process.
#[derive(Clone)]
pub struct RunnerConfig {
    pub registry: Registry,
    pub runs_dir: PathBuf,
    pub device: Device,
    /// How the device is described in the registry (`cpu`, `cuda:0`).
    pub device_name: String,
    pub lease_s: f64,
    pub force: bool,
    pub rerun_failed: bool,
    /// A run that failed this many times (errors, panics, dead holders) is not taken again.
    pub max_failures: u32,
    /// When the only cells left are held by other live workers: wait for them (their lease, or
    /// their end) instead of returning them as [`CellOutcome::HeldElsewhere`].
    pub wait: bool,
    pub console: Console,
    pub stages: StageRegistry,
    /// Set by Ctrl-C / SIGTERM.
    pub interrupted: Arc<AtomicBool>,
}

/// How one cell ended in this process.
#[derive(Debug, Clone, PartialEq)]
pub enum CellOutcome {
    Finished,
    Failed(String),
    Stopped(StopReason),
    /// Not run here: another live worker holds it (which one, as text).
    HeldElsewhere(String),
}

/// One cell this process worked on.
#[derive(Debug, Clone)]
pub struct CellReport {
    pub run_id: String,
    pub label: String,
    pub outcome: CellOutcome,
}

/// Why the runner could not go on (as opposed to a run failing, which is recorded).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The run folder could not be prepared.
    #[error("cannot prepare run folder {}: {source}", path.display())]
    RunDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Logging could not start.
    #[error(transparent)]
    Track(#[from] crate::tracking::TrackError),
    /// `resume` was asked for a run that is finished or held by a live worker.
    #[error("run {id} is {status}; only failed, stale or interrupted runs can be resumed")]
    NotResumable { id: String, status: &'static str },
    /// A run failed and the registry could not record it (e.g. its disk is full); the run
    /// stays held by this process, and is taken over once the process is gone.
    #[error("run {run} failed ({failure}), and the registry could not record it: {source}")]
    Unrecorded {
        run: String,
        failure: String,
        #[source]
        source: Box<RegistryError>,
    },
    /// The run's stored spec no longer parses (written by another beatlab version).
    #[error("run {id}: stored spec does not load: {message}")]
    BadStoredSpec { id: String, message: String },
}

/// The git revision this binary was built from, and whether the tree had uncommitted changes.
pub fn code_revision() -> (String, bool) {
    (
        env!("BEATLAB_GIT_REV").to_string(),
        env!("BEATLAB_GIT_DIRTY") == "true",
    )
}

/// What the registry is offered of a chunk of cells.
fn offers(cells: &[Cell]) -> Vec<CellOffer> {
    cells.iter().map(CellOffer::of).collect()
}

impl CellOffer {
    /// The offer of one plan cell, as a worker makes it.
    pub fn of(c: &Cell) -> CellOffer {
        CellOffer {
            index: c.index as i64,
            label: c.label(),
            overrides: c.overrides_json(),
            spec_json: c.canonical.clone(),
            hash: c.hash.clone(),
            seed: c.spec.experiment.seed as i64,
        }
    }
}

impl RunnerConfig {
    fn policy(&self, experiment: &str, worker: &str, started: f64) -> ClaimPolicy {
        let (code_rev, code_dirty) = code_revision();
        ClaimPolicy {
            experiment: experiment.to_string(),
            worker: worker.to_string(),
            host: hostname(),
            device: self.device_name.clone(),
            code_rev,
            code_dirty,
            lease_s: self.lease_s,
            force_before: self.force.then_some(started),
            rerun_failed_before: self.rerun_failed.then_some(started),
            experiment_dir: self.runs_dir.join(experiment),
            max_failures: i64::from(self.max_failures),
            job: ClaimPolicy::slurm_job(),
        }
    }
}

fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Runs the cells of a plan that need work with `workers` threads, each claiming cells from
/// the registry until none is left. Other processes may work on the same plan at the same time.
///
/// The cells are enqueued, claimed and looked up a chunk at a time (a [`crate::spec::LazyPlan`]
/// makes each chunk again when asked), so the process holds the chunks in flight, not the grid.
pub fn run_plan(
    plan: &(impl PlanCells + ?Sized),
    cfg: &RunnerConfig,
    workers: usize,
) -> Result<Vec<CellReport>, RunnerError> {
    let started = crate::registry::now();
    cfg.registry.upsert_experiment(
        plan.experiment(),
        &plan.path().to_string_lossy(),
        plan.description(),
    )?;
    let base_policy = cfg.policy(plan.experiment(), "", started);
    for chunk in plan.chunks(CHUNK) {
        cfg.registry.enqueue(&base_policy, &offers(&chunk))?;
    }

    let workers = workers.max(1);
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|i| scope.spawn(move || worker_loop(plan, cfg, i, started)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker thread panicked"))
            .collect::<Vec<_>>()
    });
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    if !cfg.wait && !cfg.interrupted.load(Ordering::Relaxed) {
        for run in held_elsewhere(&cfg.registry, plan, &hostname())? {
            all.push(CellReport {
                run_id: run.id.clone(),
                label: run.cell_label.clone(),
                outcome: CellOutcome::HeldElsewhere(holder_text(&run, &cfg.registry)),
            });
        }
    }
    Ok(all)
}

/// One worker thread: claims and runs cells until none is left. When the only cells left are
/// held by other live workers, it waits (polling a few times per lease) if `cfg.wait`, so that
/// a cell whose holder dies is taken over, and returns otherwise.
fn worker_loop(
    plan: &(impl PlanCells + ?Sized),
    cfg: &RunnerConfig,
    thread: usize,
    started: f64,
) -> Result<Vec<CellReport>, RunnerError> {
    let worker = format!("{}:{}:{thread}", hostname(), std::process::id());
    let policy = cfg.policy(plan.experiment(), &worker, started);
    let mut reports = Vec::new();
    let mut announced = false;
    while !cfg.interrupted.load(Ordering::Relaxed) {
        if claim_pass(plan, cfg, &policy, &mut reports)? {
            // Cells before the last claimed one may need work again (an interrupted run was
            // given back, a holder died): the next pass starts from the first cell.
            announced = false;
            continue;
        }
        if !cfg.wait {
            break;
        }
        let held = held_elsewhere(&cfg.registry, plan, &policy.host)?;
        if held.is_empty() {
            break;
        }
        if !announced && thread == 0 {
            let who: Vec<String> = held
                .iter()
                .map(|r| format!("{} ({})", r.id, holder_text(r, &cfg.registry)))
                .collect();
            cfg.console.line(&format!(
                "waiting for {} cell(s) held by other workers: {}",
                held.len(),
                who.join(", ")
            ));
            announced = true;
        }
        cfg.registry.tidy()?;
        idle(
            cfg,
            Duration::from_secs_f64((cfg.lease_s / 4.0).clamp(0.2, 5.0)),
        );
    }
    Ok(reports)
}

/// One pass over the plan, a chunk at a time: claims and runs the cells of each chunk that
/// need work (the first in plan order each time) until the chunk has none. Returns whether
/// it ran any cell.
fn claim_pass(
    plan: &(impl PlanCells + ?Sized),
    cfg: &RunnerConfig,
    policy: &ClaimPolicy,
    reports: &mut Vec<CellReport>,
) -> Result<bool, RunnerError> {
    let mut ran = false;
    for chunk in plan.chunks(CHUNK) {
        let offers = offers(&chunk);
        while !cfg.interrupted.load(Ordering::Relaxed) {
            let Some(claim) = cfg.registry.claim(policy, &offers)? else {
                break;
            };
            // A claim is of one of the cells offered.
            let Some(cell) = chunk.iter().find(|c| c.index as i64 == claim.cell_index) else {
                break;
            };
            reports.push(run_claimed(cfg, policy, &claim, &cell.spec, &cell.label())?);
            cfg.registry.tidy()?;
            ran = true;
        }
        if cfg.interrupted.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(ran)
}

/// Sleeps for `period`, waking early on an interruption.
fn idle(cfg: &RunnerConfig, period: Duration) {
    let tick = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    while waited < period && !cfg.interrupted.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        waited += tick;
    }
}

/// Runs of the plan's cells that another process holds (running, lease not expired), looked
/// up a chunk at a time.
fn held_elsewhere(
    registry: &Registry,
    plan: &(impl PlanCells + ?Sized),
    this_host: &str,
) -> Result<Vec<crate::registry::RunRow>, RegistryError> {
    let t = registry.clock()?;
    let mut held = Vec::new();
    for chunk in plan.chunks(CHUNK) {
        let hashes: Vec<String> = chunk.iter().map(|c| c.hash.clone()).collect();
        held.extend(
            registry
                .latest_runs(&hashes)?
                .into_values()
                .filter(|r| r.effective_status(t) == RunStatus::Running)
                .filter(|r| !crate::registry::worker_is_this_process(&r.worker, this_host)),
        );
    }
    held.sort_by_key(|r| r.cell_index);
    Ok(held)
}

/// Who holds a run, for people: worker, batch job, age of the last heartbeat.
pub fn holder_text(run: &crate::registry::RunRow, registry: &Registry) -> String {
    let age = match (run.heartbeat_at, registry.clock()) {
        (Some(hb), Ok(t)) => format!(", heartbeat {:.0} s ago", (t - hb).max(0.0)),
        _ => String::new(),
    };
    let job = run
        .job
        .as_ref()
        .map(|j| format!(", Slurm job {j}"))
        .unwrap_or_default();
    format!("worker {}{job}{age}", run.worker)
}

/// Continues one run (failed, stale or interrupted) from its last checkpoint.
pub fn resume_run(run_id: &str, cfg: &RunnerConfig) -> Result<CellReport, RunnerError> {
    let run = cfg.registry.run(run_id)?;
    let worker = format!("{}:{}:resume", hostname(), std::process::id());
    let policy = cfg.policy(&run.experiment, &worker, crate::registry::now());
    let claim = match cfg.registry.claim_run(&run.id, &policy)? {
        Ok(claim) => claim,
        Err(row) => {
            return Err(RunnerError::NotResumable {
                id: row.id.clone(),
                status: row.effective_status(crate::registry::now()).as_str(),
            });
        }
    };
    let spec: Spec =
        serde_json::from_str(&run.spec_json).map_err(|e| RunnerError::BadStoredSpec {
            id: run.id.clone(),
            message: e.to_string(),
        })?;
    run_claimed(cfg, &policy, &claim, &spec, &run.cell_label)
}

/// Keeps a run's lease alive until dropped; flags `lease_lost` if another worker took the run.
struct Heartbeat {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    fn start(
        registry: Registry,
        run_id: String,
        worker: String,
        lease_s: f64,
        lost: Arc<AtomicBool>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        // Four beats per lease: one missed beat (a long GC-free pause, a slow disk) is harmless.
        let period = Duration::from_secs_f64((lease_s / 4.0).max(0.05));
        let handle = std::thread::spawn(move || {
            let tick = Duration::from_millis(50).min(period);
            let mut waited = Duration::ZERO;
            while !stop2.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                waited += tick;
                if waited < period {
                    continue;
                }
                waited = Duration::ZERO;
                match registry.heartbeat(&run_id, &worker) {
                    Ok(true) => {}
                    Ok(false) => {
                        lost.store(true, Ordering::Relaxed);
                        return;
                    }
                    // A transient registry error: try again next beat; the lease has slack.
                    Err(_) => {}
                }
            }
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn prepare_run_dir(dir: &Path, spec: &Spec) -> Result<(), RunnerError> {
    let err = |source| RunnerError::RunDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    // This worker holds the run: what an earlier, killed attempt left half-written goes.
    for folder in [dir.to_path_buf(), dir.join("checkpoints")] {
        beatlab_fsio::remove_stale_temps(&folder).map_err(err)?;
    }
    let spec_path = dir.join("spec.toml");
    if !spec_path.exists() {
        beatlab_fsio::write_atomically(&spec_path, crate::spec::to_toml_string(spec).as_bytes())
            .map_err(err)?;
    }
    Ok(())
}

/// Runs the stages of a claimed run and records how it ended.
fn run_claimed(
    cfg: &RunnerConfig,
    policy: &ClaimPolicy,
    claim: &Claim,
    spec: &Spec,
    label: &str,
) -> Result<CellReport, RunnerError> {
    let run_id = claim.run_id.as_str();
    prepare_run_dir(&claim.run_dir, spec)?;
    let control = RunControl {
        interrupted: cfg.interrupted.clone(),
        lease_lost: Arc::new(AtomicBool::new(false)),
    };
    let _heartbeat = Heartbeat::start(
        cfg.registry.clone(),
        run_id.to_string(),
        policy.worker.clone(),
        policy.lease_s,
        control.lease_lost.clone(),
    );
    let mut tracker = start_tracker(cfg, claim, spec, label)?;
    let store = CheckpointStore::new(cfg.registry.clone(), run_id, &claim.run_dir);
    let cache_dir = cfg.runs_dir.join(".cache");

    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_stages(
            cfg,
            spec,
            run_id,
            &claim.run_dir,
            &cache_dir,
            &mut tracker,
            &store,
            &control,
        )
    }))
    .unwrap_or_else(|payload| Err(StageError::Panicked(panic_text(payload.as_ref()))));
    let _ = tracker.flush();
    Ok(CellReport {
        run_id: run_id.to_string(),
        label: label.to_string(),
        outcome: record_end(cfg, &policy.worker, run_id, &mut tracker, outcome)?,
    })
}

/// The run's tracker, with its first log line (and, for a first attempt, the spec it runs).
fn start_tracker(
    cfg: &RunnerConfig,
    claim: &Claim,
    spec: &Spec,
    label: &str,
) -> Result<Tracker, RunnerError> {
    let run_id = claim.run_id.as_str();
    let mut tracker = Tracker::new(
        cfg.registry.clone(),
        run_id,
        &claim.run_dir,
        cfg.console.clone(),
    )?;
    tracker.log(&format!(
        "{} {label} (attempt {}, {}, device {})",
        if claim.resumed {
            "resuming"
        } else {
            "starting"
        },
        claim.attempt,
        spec.experiment.name,
        cfg.device_name
    ));
    if !claim.resumed {
        tracker.text(
            "spec",
            0,
            &format!("```toml\n{}\n```", crate::spec::to_toml_string(spec)),
        )?;
    }
    Ok(tracker)
}

/// Records in the registry how the stages of `run_id` ended: finished, given back when
/// interrupted, left to the worker that took the lease, or failed with the error's chain.
fn record_end(
    cfg: &RunnerConfig,
    worker: &str,
    run_id: &str,
    tracker: &mut Tracker,
    outcome: Result<Option<StopReason>, StageError>,
) -> Result<CellOutcome, RunnerError> {
    match outcome {
        Ok(None) => {
            cfg.registry
                .end_run(run_id, worker, RunStatus::Finished, None)?;
            tracker.log("finished");
            Ok(CellOutcome::Finished)
        }
        Ok(Some(StopReason::Interrupted)) => {
            // Given back at once (no lease wait): any worker, or `beatlab resume`, continues it
            // from the checkpoint the stage wrote when it stopped.
            cfg.registry.release(run_id, worker)?;
            tracker.log("interrupted: checkpointed and released (pending); the next worker or `beatlab resume` continues it");
            Ok(CellOutcome::Stopped(StopReason::Interrupted))
        }
        Ok(Some(StopReason::LeaseLost)) => {
            tracker.log("lease lost to another worker; stopped");
            Ok(CellOutcome::Stopped(StopReason::LeaseLost))
        }
        Err(e) => {
            let text = error_chain(&e);
            // Logged first: when the registry is what failed (a full disk), recording the
            // failure fails too, and the run's log is where its cause stays.
            tracker.log(&format!("failed: {text}"));
            cfg.registry
                .end_run(run_id, worker, RunStatus::Failed, Some(&text))
                .map_err(|source| RunnerError::Unrecorded {
                    run: run_id.to_string(),
                    failure: text.clone(),
                    source: Box::new(source),
                })?;
            Ok(CellOutcome::Failed(text))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_stages(
    cfg: &RunnerConfig,
    spec: &Spec,
    run_id: &str,
    run_dir: &Path,
    cache_dir: &Path,
    tracker: &mut Tracker,
    store: &CheckpointStore,
    control: &RunControl,
) -> Result<Option<StopReason>, StageError> {
    let mut resources = RunResources::default();
    for stage_spec in &spec.stage {
        if let Some(reason) = control.stop_reason() {
            return Ok(Some(reason));
        }
        if !stage_spec.enabled {
            tracker.log(&format!("{}: disabled, skipped", stage_spec.name));
            continue;
        }
        let (complete, bad_final) = store.verified_complete(&stage_spec.name)?;
        if complete {
            tracker.log(&format!("{}: already complete", stage_spec.name));
            continue;
        }
        cfg.registry.set_stage(run_id, &stage_spec.name)?;
        let (resume, mut set_aside) = store.latest(&stage_spec.name, &cfg.device)?;
        set_aside.splice(0..0, bad_final);
        report_fallbacks(tracker, &stage_spec.name, &set_aside, resume.as_ref())?;
        if let Some(c) = &resume {
            tracker.log(&format!(
                "{}: continuing from checkpoint at step {} (epoch {})",
                stage_spec.name, c.step, c.epoch
            ));
        }
        let mut stage = cfg.stages.create(spec, stage_spec)?;
        let mut ctx = StageContext {
            spec,
            stage: stage_spec,
            device: &cfg.device,
            run_id,
            run_dir,
            cache_dir,
            resume,
            tracker,
            checkpoints: store,
            registry: &cfg.registry,
            control,
            resources: &mut resources,
        };
        match stage.run(&mut ctx)? {
            StageOutcome::Completed => {
                if !store.is_complete(&stage_spec.name)? {
                    return Err(StageError::NoFinalCheckpoint(stage_spec.name.clone()));
                }
            }
            StageOutcome::Stopped(reason) => return Ok(Some(reason)),
        }
    }
    Ok(None)
}

/// Says in the run's log that unusable checkpoints were set aside and where the stage goes on
/// from, and records each as a `checkpoint/fallback` metric point at the unusable step, whose
/// value is the step continued from (-1: the stage starts over).
fn report_fallbacks(
    tracker: &mut Tracker,
    stage: &str,
    set_aside: &[checkpoint::SetAside],
    resume: Option<&checkpoint::Checkpoint>,
) -> Result<(), StageError> {
    for s in set_aside {
        let from = match resume {
            Some(c) => format!("falling back to the checkpoint of step {}", c.step),
            None => "no usable checkpoint is left: the stage starts over".to_string(),
        };
        tracker.log(&format!("{stage}: {s}; {from}"));
        let value = resume.map_or(-1.0, |c| c.step as f64);
        tracker.metric(CHECKPOINT_FALLBACK, s.step, value)?;
    }
    Ok(())
}

/// The metric that records a fall-back past an unusable checkpoint.
pub const CHECKPOINT_FALLBACK: &str = "checkpoint/fallback";

/// The message of a panic payload (`panic!` with a literal or a formatted message).
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

/// An error and its causes, one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The status of each cell hash (`new` when no run has it) and its latest run's id.
pub fn hash_statuses(
    hashes: &[String],
    registry: Option<&Registry>,
) -> Result<Vec<(String, Option<String>)>, RegistryError> {
    let latest = match registry {
        Some(r) => r.latest_runs(hashes)?,
        None => Default::default(),
    };
    let t = match registry {
        Some(r) => r.clock()?,
        None => crate::registry::now(),
    };
    Ok(hashes
        .iter()
        .map(|h| match latest.get(h) {
            Some(run) => (
                run.effective_status(t).as_str().to_string(),
                Some(run.id.clone()),
            ),
            None => ("new".to_string(), None),
        })
        .collect())
}
