//! `beatlab sweep --launcher slurm` and `beatlab status`: the arguments resolved, the library's
//! launcher ([`beatlab::launch`]) called, its outcome printed.

use anyhow::Result;
use beatlab::launch::slurm::{self, Launched, SlurmArgs, WorkerArgs};
use beatlab::launch::{LaunchError, status};
use beatlab::registry::Registry;

use super::args::{Global, SpecArgs, TrainArgs};
use super::{Exit, bad, check_weights, load_plan};

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
    if train.force || train.rerun_failed || train.no_wait {
        // Tasks start at different times: "finished before this sweep started" would differ
        // between them, and a later task would run again what an earlier one finished.
        return refuse(
            "--force, --rerun-failed and --no-wait are for --launcher local; run those cells \
             with `beatlab sweep` on one machine, or `beatlab resume RUN`",
        );
    }
    let (loaded, plan) = load_plan(g, &spec.file, spec.sets.clone())?;
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
    match slurm::launch(&plan, args, &worker, &cwd).map_err(launch_error)? {
        Launched::DryRun(job) => print!("{}", job.script()),
        Launched::Nothing { cells } => eprintln!(
            "{}: nothing to submit: none of its {cells} cell(s) needs work (finished, failed, \
             or held by a live worker); `beatlab status {}` shows them",
            plan.experiment, plan.experiment
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
                plan.experiment,
                job.tasks,
                job.parallelism,
                job.needing,
                script.display(),
                job.log_dir.display(),
                plan.experiment
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
