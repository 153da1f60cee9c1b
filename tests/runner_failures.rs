//! The runner when things go wrong: a stage that panics fails its run (with the panic's text)
//! instead of leaving it `running` for the next worker to crash on; cells held by other live
//! workers are waited for, or named and left.

mod stores;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use beatlab::registry::{CellOffer, ClaimPolicy, Registry, RunStatus};
use beatlab::runner::{
    self, CellOutcome, RunnerConfig, Stage, StageError, StageRegistry, stage::StageFactory,
};
use beatlab::spec::{self, Overrides, Plan, StageKind, StageSpec};
use beatlab::tracking::Console;
use candle_core::Device;

const SPEC: &str = r#"
[experiment]
name = "fail"

[[stage]]
name = "beat"
kind = "beat"
"#;

fn plan(text: &str) -> Plan {
    spec::load_str("fail.toml", text, &Overrides::default())
        .unwrap()
        .plan()
        .unwrap()
}

struct Poison;

/// Makes [`Poison`] stages.
struct PoisonFactory;

impl StageFactory for PoisonFactory {
    fn create(&self, _: &spec::Spec, _: &StageSpec) -> Result<Box<dyn Stage>, StageError> {
        Ok(Box::new(Poison))
    }
}

impl Stage for Poison {
    fn run(
        &mut self,
        _: &mut runner::StageContext<'_>,
    ) -> Result<runner::StageOutcome, StageError> {
        let fs = 1e300_f64;
        panic!("poison record: sampling frequency {fs:e} Hz");
    }
}

fn config(registry: Registry, dir: &Path, stages: StageRegistry, wait: bool) -> RunnerConfig {
    RunnerConfig {
        registry,
        runs_dir: dir.join("runs"),
        device: Device::Cpu,
        device_name: "cpu".into(),
        lease_s: 1.0,
        force: false,
        rerun_failed: false,
        max_failures: 3,
        wait,
        console: Console::new(true),
        stages,
        interrupted: Arc::new(AtomicBool::new(false)),
    }
}

#[test]
fn a_stage_that_panics_fails_its_run_with_the_panic_text() {
    stores::each_store(|reg, dir| {
        let mut stages = StageRegistry::empty();
        stages.register(StageKind::Beat, PoisonFactory);
        let cfg = config(reg.clone(), dir, stages, true);
        let plan = plan(SPEC);
        let reports = runner::run_plan(&plan, &cfg, 1).unwrap();
        assert_eq!(reports.len(), 1);
        let CellOutcome::Failed(text) = &reports[0].outcome else {
            panic!("expected a failed run: {reports:?}");
        };
        assert!(text.contains("panicked: poison record"), "{text}");
        let run = reg.run(&reports[0].run_id).unwrap();
        assert_eq!(run.status, RunStatus::Failed);
        assert!(run.error.unwrap().contains("sampling frequency 1e300"));
        // Not taken again by the next sweep.
        assert!(runner::run_plan(&plan, &cfg, 1).unwrap().is_empty());
    });
}

/// Makes the plan's only cell held by a live worker on another host, with `lease_s`.
fn hold_elsewhere(reg: &Registry, plan: &Plan, dir: &Path, lease_s: f64) -> String {
    let cell = &plan.cells[0];
    reg.upsert_experiment(&plan.experiment, "fail.toml", "")
        .unwrap();
    let offer = CellOffer {
        index: 0,
        label: cell.label(),
        overrides: cell.overrides_json(),
        spec_json: cell.canonical.clone(),
        hash: cell.hash.clone(),
        seed: 0,
    };
    let policy = ClaimPolicy {
        experiment: plan.experiment.clone(),
        worker: "elsewhere:4242:0".into(),
        host: "elsewhere".into(),
        device: "cpu".into(),
        code_rev: "r".into(),
        code_dirty: false,
        lease_s,
        force_before: None,
        rerun_failed_before: None,
        experiment_dir: dir.join("runs").join(&plan.experiment),
        max_failures: 3,
        job: Some("99_1".into()),
    };
    reg.claim(&policy, &[offer]).unwrap().unwrap().run_id
}

#[test]
fn cells_held_by_live_workers_elsewhere_are_named_and_left_without_waiting() {
    stores::each_store(|reg, dir| {
        // No stage runs: the cell only has to be claimed and finished.
        let plan = plan(&SPEC.replace("kind = \"beat\"", "kind = \"beat\"\nenabled = false"));
        let held = hold_elsewhere(reg, &plan, dir, 600.0);
        let cfg = config(reg.clone(), dir, StageRegistry::empty(), false);
        let reports = runner::run_plan(&plan, &cfg, 2).unwrap();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].run_id, held);
        let CellOutcome::HeldElsewhere(holder) = &reports[0].outcome else {
            panic!("expected the cell left to its holder: {reports:?}");
        };
        assert!(
            holder.contains("elsewhere:4242:0") && holder.contains("Slurm job 99_1"),
            "{holder}"
        );
    });
}

#[test]
fn a_waiting_worker_takes_a_cell_over_once_its_holders_lease_expires() {
    stores::each_store(|reg, dir| {
        let plan = plan(&SPEC.replace("kind = \"beat\"", "kind = \"beat\"\nenabled = false"));
        let held = hold_elsewhere(reg, &plan, dir, 1.0);
        let cfg = config(reg.clone(), dir, StageRegistry::empty(), true);
        let reports = runner::run_plan(&plan, &cfg, 1).unwrap();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(
            (reports[0].run_id.as_str(), &reports[0].outcome),
            (held.as_str(), &CellOutcome::Finished)
        );
        let run = reg.run(&held).unwrap();
        assert_eq!(
            (run.status, run.attempt, run.failures),
            (RunStatus::Finished, 2, 1)
        );
    });
}
