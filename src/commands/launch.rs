//! `beatlab sweep --launcher slurm` and `beatlab status`: the arguments resolved, the library's
//! launcher ([`beatlab::launch`]) called, its outcome printed.

use anyhow::Result;
use beatlab::launch::slurm::{self, Launched, RunAgain, SlurmArgs, WorkerArgs};
use beatlab::launch::{LaunchError, status};
use beatlab::registry::Registry;
use beatlab::spec::PlanCells;

use super::args::{Global, SpecArgs, TrainArgs};
use super::{Exit, bad, check_weights, load_spec};

fn launch_error(e: LaunchError) -> anyhow::Error {
    if e.is_bad_input() { bad(e) } else { e.into() }
}

/// `--launcher local` takes none of the Slurm options.
pub fn local_only(args: &SlurmArgs) -> Result<()> {
    match args.first_given() {
        Some(option) => Err(bad(anyhow::anyhow!(
            "{option} is an option of --launcher slurm (this sweep runs with --launcher local)"
        ))),
        None => Ok(()),
    }
}

/// `beatlab sweep SPEC --launcher slurm`.
pub fn slurm(
    g: &Global,
    spec: &SpecArgs,
    train: &TrainArgs,
    workers: u32,
    args: &SlurmArgs,
) -> Result<Exit> {
    let refuse = |m: &str| Err(bad(anyhow::anyhow!("--launcher slurm: {m}")));
    if workers != 1 {
        return refuse(
            "--workers is for --launcher local; each array task is one worker \
             (--array-tasks, --array-parallelism)",
        );
    }
    if train.no_wait {
        // A task that did not wait for a cell held elsewhere would end the array with a dead
        // holder's cell unrun; the tasks wait until its lease ends and take it over.
        return refuse(
            "--no-wait is for --launcher local: each array task waits for cells held by other \
             workers until they finish or their lease ends, so that no cell is left unrun",
        );
    }
    // The cells are made a chunk at a time whenever they are needed, never all at once.
    let loaded = load_spec(&spec.file, spec.sets.clone())?;
    let plan = loaded.lazy_plan(g.max_cells).map_err(bad)?;
    loaded.check_runtime(&plan).map_err(bad)?;
    check_weights(&loaded, &plan)?;
    let worker = WorkerArgs {
        program: std::env::current_exe()?,
        registry: g.registry.clone().into_os_string(),
        runs_dir: g.runs_dir.clone(),
        max_cells: g.max_cells,
        spec: spec.file.clone(),
        sets: spec.sets.clone(),
        device: train.device.to_string(),
        lease_s: train.lease,
        max_failures: train.max_failures,
        quiet: g.quiet,
    };
    let cwd = std::env::current_dir()?;
    let again = RunAgain {
        finished: train.force,
        failed: train.rerun_failed,
    };
    match slurm::launch(&plan, args, &worker, again, &cwd).map_err(launch_error)? {
        Launched::DryRun(job) => print!("{}", job.script()),
        Launched::Nothing { cells } => eprintln!(
            "{}: nothing to submit: none of its {cells} cell(s) needs work (finished, failed, \
             or held by a live worker); `beatlab status {}` shows them",
            plan.experiment(),
            plan.experiment()
        ),
        Launched::Submitted {
            job,
            job_id,
            script,
        } => {
            println!("{job_id}");
            eprintln!(
                "{}: submitted Slurm job {job_id}: {} array task(s), at most {} at once, for {} \
                 cell(s) ({}); logs in {}; `beatlab status {}` shows the cells",
                plan.experiment(),
                job.tasks,
                job.parallelism,
                job.needing,
                script.display(),
                job.log_dir.display(),
                plan.experiment()
            );
        }
    }
    Ok(Exit::Done)
}

/// `beatlab status EXP`.
pub fn status(g: &Global, experiment: &str, all: bool, json: bool) -> Result<Exit> {
    let found = match Registry::open_existing(&g.registry)? {
        Some(r) => status::of(&r, experiment)?,
        None => None,
    };
    let Some(found) = found else {
        return Err(bad(anyhow::anyhow!(
            "no runs of experiment `{experiment}` in {} (`beatlab runs` lists the runs there)",
            beatlab::registry::Address::parse(g.registry.as_os_str())?.display()
        )));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        print!("{}", found.render(all));
    }
    Ok(Exit::Done)
}
