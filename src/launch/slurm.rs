//! `beatlab sweep --launcher slurm`: one sbatch script of a job array whose tasks are each a
//! `beatlab worker` pulling cells from the shared registry until none is left.
//!
//! The script asks Slurm for `--signal=USR2@120` (a warning two minutes before the time limit
//! or a preemption) and `--requeue`. A worker that gets USR2 or TERM checkpoints its cell, gives
//! it back (pending, not failed) and exits; a requeued or later task continues the cell from
//! that checkpoint. Because tasks pull, an array smaller than the grid works, and finished cells
//! are never run again. Logs go to `runs/<experiment>/slurm/%A_%a.{out,err}`.
//!
//! The worker runs as a job step (`srun`): Slurm's `--signal` and `scancel --signal` reach job
//! steps, not the batch shell.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::LaunchError;
use crate::registry::{Address, CellOffer, ClaimPolicy, Registry};
use crate::spec::PlanCells;
use crate::spec::cells::CHUNK;

/// `beatlab sweep --launcher slurm` options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SlurmArgs {
    /// Slurm: array tasks running at once (`--array=0-N%K`; default: all of them).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub array_parallelism: Option<u32>,
    /// Slurm: array tasks (default: one per cell that needs work). Tasks pull cells until none
    /// is left, so fewer tasks than cells works.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub array_tasks: Option<u32>,
    /// Slurm: partition of the array's tasks.
    #[arg(long, value_name = "P")]
    pub partition: Option<String>,
    /// Slurm: time limit of each task (`MINUTES`, `H:M:S`, `D-H`, `D-H:M:S`, ...).
    #[arg(long, value_name = "T")]
    pub time: Option<String>,
    /// Slurm: GPUs of each task.
    #[arg(long, value_name = "G", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub gpus_per_task: Option<u32>,
    /// Slurm: any other sbatch option, written into the script as given (repeatable):
    /// `--sbatch-arg=--mem=16G --sbatch-arg=--account=ecg`.
    #[arg(long = "sbatch-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// Slurm: print the sbatch script and submit nothing (nothing is written).
    #[arg(long)]
    pub dry_run: bool,
}

impl SlurmArgs {
    /// The first Slurm-only option given, if any (an error with `--launcher local`).
    pub fn first_given(&self) -> Option<&'static str> {
        [
            (self.array_parallelism.is_some(), "--array-parallelism"),
            (self.array_tasks.is_some(), "--array-tasks"),
            (self.partition.is_some(), "--partition"),
            (self.time.is_some(), "--time"),
            (self.gpus_per_task.is_some(), "--gpus-per-task"),
            (!self.sbatch_args.is_empty(), "--sbatch-arg"),
            (self.dry_run, "--dry-run"),
        ]
        .into_iter()
        .find_map(|(given, name)| given.then_some(name))
    }

    /// Checks the values sbatch would otherwise refuse only after the script is written.
    fn check(&self) -> Result<(), LaunchError> {
        let bad = |m: String| Err(LaunchError::Option(m));
        if let Some(t) = &self.time
            && !is_slurm_time(t)
        {
            return bad(format!(
                "--time `{t}`: expected a Slurm time limit: MINUTES, MINUTES:SECONDS, H:M:S, \
                 D-H, D-H:M, D-H:M:S or UNLIMITED"
            ));
        }
        if let Some(p) = &self.partition
            && (p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.,".contains(c)))
        {
            return bad(format!(
                "--partition `{p}`: expected a partition name (letters, digits, _ - . ,)"
            ));
        }
        for a in &self.sbatch_args {
            if !a.starts_with('-') || a.contains(['\n', '\r']) {
                return bad(format!(
                    "--sbatch-arg `{a}`: expected one sbatch option on one line, such as --mem=16G"
                ));
            }
            if a == "--array" || a.starts_with("--array=") || a.starts_with("-a") {
                return bad(format!(
                    "--sbatch-arg `{a}`: the array is beatlab's (--array-tasks, --array-parallelism)"
                ));
            }
        }
        Ok(())
    }
}

/// Whether `t` is one of the time-limit forms sbatch accepts.
fn is_slurm_time(t: &str) -> bool {
    if ["UNLIMITED", "INFINITE", "unlimited", "infinite"].contains(&t) {
        return true;
    }
    let numbers = |s: &str, most: usize| {
        let parts: Vec<&str> = s.split(':').collect();
        parts.len() <= most
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    match t.split_once('-') {
        Some((days, rest)) => numbers(days, 1) && numbers(rest, 3),
        None => numbers(t, 3),
    }
}

/// What a task runs: `beatlab worker` with the sweep's spec, overrides and training options.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    /// The beatlab binary (shared with the compute nodes).
    pub program: PathBuf,
    /// `--registry`, as given.
    pub registry: OsString,
    pub runs_dir: PathBuf,
    pub max_cells: u64,
    pub spec: PathBuf,
    pub sets: Vec<String>,
    pub device: String,
    pub lease_s: f64,
    pub max_failures: u32,
    pub quiet: bool,
}

/// Which cells that ended a launch queues to run again: `--force` (finished ones) and
/// `--rerun-failed` (failed ones), as of the moment of the launch by the registry's clock.
/// They are queued as new pending runs before the array starts, so every task agrees on them
/// and a cell the array itself finishes is not run again.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunAgain {
    pub finished: bool,
    pub failed: bool,
}

/// One sbatch script, ready to render.
#[derive(Debug, Clone)]
pub struct ArrayJob {
    pub experiment: String,
    /// Cells of the plan, and how many of them need work now.
    pub cells: usize,
    pub needing: usize,
    pub tasks: u32,
    pub parallelism: u32,
    /// Where `%A_%a.out` and `.err` go (absolute).
    pub log_dir: PathBuf,
    /// The folder the tasks start in (absolute).
    pub workdir: PathBuf,
    pub partition: Option<String>,
    pub time: Option<String>,
    pub gpus_per_task: Option<u32>,
    pub extra: Vec<String>,
    /// The registry address holds a password: it comes from the submitting environment
    /// (`BEATLAB_REGISTRY`, exported by sbatch) instead of the script.
    pub registry_from_env: bool,
    /// The worker's command line, program first.
    pub command: Vec<String>,
}

impl ArrayJob {
    /// The sbatch script.
    pub fn script(&self) -> String {
        let mut s = String::from("#!/bin/bash\n");
        s.push_str(&format!(
            "# beatlab sweep `{}` on Slurm: {} cell(s), {} needing work now; {} array task(s), at\n\
             # most {} at once. Each task is a `beatlab worker` pulling cells from the registry until\n\
             # none is left. On USR2 (120 s before the time limit) or TERM it checkpoints its cell,\n\
             # gives it back (pending) and exits; a requeued or later task continues from there.\n\
             # `beatlab status {}` shows the cells. Written by `beatlab sweep --launcher slurm`.\n",
            self.experiment,
            self.cells,
            self.needing,
            self.tasks,
            self.parallelism,
            self.experiment
        ));
        let log = self.log_dir.display();
        let mut opts = vec![
            format!("--job-name=beatlab-{}", self.experiment),
            format!("--array=0-{}%{}", self.tasks - 1, self.parallelism),
            "--ntasks=1".to_string(),
            format!("--output={log}/%A_%a.out"),
            format!("--error={log}/%A_%a.err"),
            "--open-mode=append".to_string(),
            "--signal=USR2@120".to_string(),
            "--requeue".to_string(),
        ];
        opts.extend(self.partition.iter().map(|p| format!("--partition={p}")));
        opts.extend(self.time.iter().map(|t| format!("--time={t}")));
        opts.extend(
            self.gpus_per_task
                .iter()
                .map(|g| format!("--gpus-per-task={g}")),
        );
        opts.extend(self.extra.iter().cloned());
        for o in opts {
            s.push_str(&format!("#SBATCH {o}\n"));
        }
        s.push_str("set -euo pipefail\n");
        s.push_str(&format!("cd {}\n", quote(&self.workdir.to_string_lossy())));
        if self.registry_from_env {
            s.push_str(
                ": \"${BEATLAB_REGISTRY:?the registry address (it holds a password) comes from the submitting environment}\"\n",
            );
        }
        s.push_str("# srun: Slurm signals job steps, not the batch shell.\n");
        let words: Vec<String> = self.command.iter().map(|w| quote(w)).collect();
        s.push_str(&format!("exec srun --ntasks=1 {}\n", words.join(" ")));
        s
    }
}

/// `s` as one shell word: bare when it holds only safe characters, else single-quoted.
fn quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `path` made absolute against `cwd`, as UTF-8 text the script can hold.
fn absolute(what: &'static str, path: &Path, cwd: &Path) -> Result<String, LaunchError> {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    full.to_str()
        .map(str::to_string)
        .ok_or_else(|| LaunchError::Path {
            what,
            path: full.clone(),
            message: "not UTF-8; the sbatch script cannot name it".into(),
        })
}

/// The worker's command line and whether the registry address is left to the environment.
fn worker_command(w: &WorkerArgs, cwd: &Path) -> Result<(Vec<String>, bool), LaunchError> {
    let mut cmd = vec![absolute("the beatlab binary", &w.program, cwd)?];
    let registry_from_env = match Address::parse(&w.registry)? {
        Address::Sqlite(path) => {
            cmd.push("--registry".into());
            cmd.push(absolute("--registry", &path, cwd)?);
            false
        }
        Address::Postgres(url) => {
            let secret = Address::Postgres(url.clone()).display() != url;
            if !secret {
                cmd.push("--registry".into());
                cmd.push(url);
            }
            secret
        }
    };
    cmd.push("--runs-dir".into());
    cmd.push(absolute("--runs-dir", &w.runs_dir, cwd)?);
    cmd.push("--max-cells".into());
    cmd.push(w.max_cells.to_string());
    if w.quiet {
        cmd.push("--quiet".into());
    }
    cmd.push("worker".into());
    cmd.push(absolute("the spec", &w.spec, cwd)?);
    for set in &w.sets {
        cmd.push("--set".into());
        cmd.push(set.clone());
    }
    cmd.extend([
        "--device".to_string(),
        w.device.clone(),
        "--lease".to_string(),
        w.lease_s.to_string(),
        "--max-failures".to_string(),
        w.max_failures.to_string(),
    ]);
    Ok((cmd, registry_from_env))
}

/// A log folder an `#SBATCH --output=` line can name: sbatch splits those lines at white
/// space and reads `%` and `\` as patterns.
fn check_log_dir(log_dir: &str) -> Result<(), LaunchError> {
    match log_dir
        .chars()
        .find(|c| c.is_whitespace() || "%\\\"'".contains(*c))
    {
        None => Ok(()),
        Some(c) => Err(LaunchError::Path {
            what: "the Slurm log folder",
            path: log_dir.into(),
            message: format!(
                "holds {c:?}, which an #SBATCH line cannot hold; choose --runs-dir without it"
            ),
        }),
    }
}

/// The job for a plan, given how many of its cells need work.
pub fn array_job(
    plan: &(impl PlanCells + ?Sized),
    args: &SlurmArgs,
    worker: &WorkerArgs,
    needing: usize,
    cwd: &Path,
) -> Result<ArrayJob, LaunchError> {
    args.check()?;
    let (command, registry_from_env) = worker_command(worker, cwd)?;
    let log_dir = format!(
        "{}/{}/slurm",
        absolute("--runs-dir", &worker.runs_dir, cwd)?.trim_end_matches('/'),
        plan.experiment()
    );
    check_log_dir(&log_dir)?;
    let tasks = args
        .array_tasks
        .unwrap_or_else(|| needing.clamp(1, 100_000) as u32);
    Ok(ArrayJob {
        experiment: plan.experiment().to_string(),
        cells: plan.count(),
        needing,
        tasks,
        parallelism: args.array_parallelism.unwrap_or(tasks).min(tasks),
        log_dir: log_dir.into(),
        workdir: PathBuf::from(absolute("the working folder", cwd, cwd)?),
        partition: args.partition.clone(),
        time: args.time.clone(),
        gpus_per_task: args.gpus_per_task,
        extra: args.sbatch_args.clone(),
        registry_from_env,
        command,
    })
}

/// `sbatch` on the `PATH`.
fn find_sbatch() -> Result<PathBuf, LaunchError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("sbatch"))
        .find(|p| is_executable(p))
        .ok_or_else(|| LaunchError::NoSbatch {
            path: path.to_string_lossy().into_owned(),
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What `beatlab sweep --launcher slurm` did.
#[derive(Debug)]
pub enum Launched {
    /// Every cell is finished, failed or held by a live worker: nothing was submitted.
    Nothing { cells: usize },
    /// `--dry-run`: the script, not written.
    DryRun(ArrayJob),
    /// Submitted: the job id sbatch printed, and the script written.
    Submitted {
        job: ArrayJob,
        job_id: String,
        script: PathBuf,
    },
}

/// The policy a launch queues cells with: no worker, the registry's time `t` as the limit of
/// what `again` runs again.
fn queue_policy(
    plan: &(impl PlanCells + ?Sized),
    worker: &WorkerArgs,
    cwd: &Path,
    again: RunAgain,
    t: f64,
) -> ClaimPolicy {
    let (code_rev, code_dirty) = crate::runner::code_revision();
    ClaimPolicy {
        experiment: plan.experiment().to_string(),
        worker: String::new(),
        host: gethostname::gethostname().to_string_lossy().into_owned(),
        device: worker.device.clone(),
        code_rev,
        code_dirty,
        lease_s: worker.lease_s,
        force_before: again.finished.then_some(t),
        rerun_failed_before: again.failed.then_some(t),
        // Absolute: the tasks may start elsewhere than this command.
        experiment_dir: cwd.join(&worker.runs_dir).join(plan.experiment()),
        max_failures: i64::from(worker.max_failures),
        job: None,
    }
}

/// Cells of `plan` that a worker would take now (no run yet, pending, stale, or to be run
/// again by the policy), looked up a chunk at a time.
fn cells_needing_work(
    plan: &(impl PlanCells + ?Sized),
    registry: Option<&Registry>,
    policy: &ClaimPolicy,
    t: f64,
) -> Result<usize, LaunchError> {
    let Some(registry) = registry else {
        return Ok(plan.count());
    };
    let mut needing = 0;
    for chunk in plan.chunks(CHUNK) {
        let hashes: Vec<String> = chunk.iter().map(|c| c.hash.clone()).collect();
        let latest = registry.latest_runs(&hashes)?;
        needing += hashes
            .iter()
            .filter(|h| crate::registry::needs_work(latest.get(*h), policy, t))
            .count();
    }
    Ok(needing)
}

/// Queues the plan's cells as pending runs (so that `beatlab status` shows the queue before
/// the first task starts), one transaction per chunk of [`CHUNK`] cells: the process holds one
/// chunk, and a PostgreSQL transaction at most that many advisory locks.
fn enqueue(
    plan: &(impl PlanCells + ?Sized),
    registry: &Registry,
    policy: &ClaimPolicy,
) -> Result<(), LaunchError> {
    registry.upsert_experiment(
        plan.experiment(),
        &plan.path().to_string_lossy(),
        plan.description(),
    )?;
    for chunk in plan.chunks(CHUNK) {
        let offers: Vec<CellOffer> = chunk.iter().map(CellOffer::of).collect();
        registry.enqueue(policy, &offers)?;
    }
    Ok(())
}

/// Writes the plan's sbatch script under `runs/<experiment>/slurm/` and submits it (or, with
/// `--dry-run`, only makes it). sbatch is looked for first: without it nothing is written.
pub fn launch(
    plan: &(impl PlanCells + ?Sized),
    args: &SlurmArgs,
    worker: &WorkerArgs,
    again: RunAgain,
    cwd: &Path,
) -> Result<Launched, LaunchError> {
    // Every input is checked before the registry is touched or anything is written.
    array_job(plan, args, worker, 1, cwd)?;
    let sbatch = if args.dry_run {
        None
    } else {
        Some(find_sbatch()?)
    };
    let needing = match &sbatch {
        None => {
            let registry = Registry::open_existing(&worker.registry)?;
            let t = match &registry {
                Some(r) => r.clock()?,
                None => crate::registry::now(),
            };
            let policy = queue_policy(plan, worker, cwd, again, t);
            cells_needing_work(plan, registry.as_ref(), &policy, t)?
        }
        Some(_) => {
            let registry = Registry::open(&worker.registry)?;
            let t = registry.clock()?;
            let policy = queue_policy(plan, worker, cwd, again, t);
            enqueue(plan, &registry, &policy)?;
            cells_needing_work(plan, Some(&registry), &policy, registry.clock()?)?
        }
    };
    let job = array_job(plan, args, worker, needing, cwd)?;
    let Some(sbatch) = sbatch else {
        return Ok(Launched::DryRun(job));
    };
    if needing == 0 {
        return Ok(Launched::Nothing {
            cells: plan.count(),
        });
    }
    let script = write_script(&job)?;
    match submit(&sbatch, &script, &job, worker) {
        Ok(job_id) => Ok(Launched::Submitted {
            job,
            job_id,
            script,
        }),
        Err(e) => {
            // Nothing half-done: the refused script goes (--dry-run prints it).
            let _ = std::fs::remove_file(&script);
            Err(e)
        }
    }
}

/// Creates the log folder and writes the script beside the logs.
fn write_script(job: &ArrayJob) -> Result<PathBuf, LaunchError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LaunchError::Write { path, source }
    };
    std::fs::create_dir_all(&job.log_dir).map_err(err(&job.log_dir))?;
    let stamp = time::OffsetDateTime::now_utc()
        .format(&time::macros::format_description!(
            "[year][month][day]-[hour][minute][second]"
        ))
        .unwrap_or_default();
    let path = job.log_dir.join(format!("sweep-{stamp}.sbatch"));
    beatlab_fsio::write_atomically(&path, job.script().as_bytes()).map_err(err(&path))?;
    Ok(path)
}

/// Runs `sbatch --parsable SCRIPT`; returns the job id.
fn submit(
    sbatch: &Path,
    script: &Path,
    job: &ArrayJob,
    worker: &WorkerArgs,
) -> Result<String, LaunchError> {
    let mut cmd = Command::new(sbatch);
    cmd.arg("--parsable").arg(script).current_dir(&job.workdir);
    if job.registry_from_env {
        cmd.env("BEATLAB_REGISTRY", &worker.registry);
    }
    let out = cmd.output().map_err(|e| LaunchError::Sbatch {
        status: "did not start".into(),
        stderr: e.to_string(),
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let job_id = stdout.trim().split(';').next().unwrap_or("").to_string();
    if !out.status.success() || job_id.is_empty() {
        return Err(LaunchError::Sbatch {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(job_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_time_limits() {
        for good in [
            "30",
            "30:00",
            "4:00:00",
            "2-0",
            "2-12:00",
            "1-00:00:00",
            "UNLIMITED",
        ] {
            assert!(is_slurm_time(good), "{good}");
        }
        for bad in [
            "",
            "1h",
            "4:00:00:00",
            "-5",
            "1--2",
            "2-",
            ":30",
            "1-2:3:4:5",
        ] {
            assert!(!is_slurm_time(bad), "{bad}");
        }
    }

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(quote("/a/b.toml"), "/a/b.toml");
        assert_eq!(quote("stage.beat.epochs=2"), "stage.beat.epochs=2");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$HOME"), "'$HOME'");
        assert_eq!(quote(""), "''");
    }
}
