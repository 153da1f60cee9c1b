//! `beatlab sweep --launcher slurm` on a real single-node Slurm (scripts/test.d/30-slurm.sh)
//! against a real PostgreSQL (20-postgres.sh):
//!
//! - a grid of 8 tiny cells as an array of 3 tasks: every cell finished exactly once, by the
//!   array's tasks, with the same metric steps, and `beatlab table` prints it;
//! - `scancel --signal=USR2` of a running task: its cell is given back (pending), the next task
//!   continues it from its checkpoint, and it ends exactly where an uninterrupted run does;
//! - `scontrol requeue` of a running task: the same, by the requeued task itself.
//!
//! Skipped, saying so, when the servers are absent outside the test setup. The tests share the
//! cluster's two CPUs, so they run one at a time.

mod stores;

use std::collections::BTreeSet;
use std::sync::Mutex;

use beatlab::registry::{Registry, RunRow, RunStatus};
use stores::cluster::{Env, assert_finished_once_as, ok, reference, slurm, wait_for};

/// One test at a time on the cluster.
static CLUSTER: Mutex<()> = Mutex::new(());

#[test]
fn a_grid_of_8_cells_runs_as_an_array_of_3_tasks_each_cell_once() {
    let _one = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let Some(env) = Env::on_cluster("slurmgrid", 2, &[0, 1, 2, 3, 4, 5, 6, 7]) else {
        return;
    };
    let job = env.submit(&["--array-tasks", "3", "--quiet"]);
    let logs = env.wait_for_job(&job, 600);
    let runs = env.runs();
    let hashes: BTreeSet<&String> = runs.iter().map(|r| &r.hash).collect();
    assert_eq!((runs.len(), hashes.len()), (8, 8), "{runs:#?}\n{logs}");
    let reg = env.registry();
    let mut tasks = BTreeSet::new();
    let mut steps: Option<Vec<(String, i64)>> = None;
    for r in &runs {
        assert_eq!((r.status, r.attempt), (RunStatus::Finished, 1), "{r:#?}");
        let task = r.job.clone().expect("the array task is recorded");
        assert!(task.starts_with(&format!("{job}_")), "{task}");
        tasks.insert(task);
        // The same metric steps in every cell, each once (keys by step).
        let these: Vec<(String, i64)> = reg
            .metrics(&r.id)
            .unwrap()
            .into_iter()
            .map(|m| (m.key, m.step))
            .collect();
        let unique: BTreeSet<&(String, i64)> = these.iter().collect();
        assert_eq!(
            unique.len(),
            these.len(),
            "run {}: a metric step twice",
            r.id
        );
        assert!(!these.is_empty());
        match &steps {
            None => steps = Some(these),
            Some(first) => assert_eq!(first, &these, "run {}: other metric steps", r.id),
        }
    }
    // Two CPUs: two tasks at once, each pulling cells until none was left.
    assert!(tasks.len() >= 2, "cells taken by {tasks:?} only");
    let status = String::from_utf8(ok(env.beatlab(&["status", "slurmgrid"])).stdout).unwrap();
    assert!(
        status.starts_with("slurmgrid: 8 cell(s): 8 finished ("),
        "{status}"
    );
    let table = String::from_utf8(ok(env.beatlab(&["table", "spec.toml"])).stdout).unwrap();
    let rows = table.lines().filter(|l| l.starts_with('|')).count();
    assert!(rows >= 8 + 2, "a header, a rule and 8 cells:\n{table}");
    assert!(!table.contains("missing"), "{table}");
}

/// The task holding a running cell that has written a mid-stage checkpoint: (run, task).
fn wait_for_checkpointed_cell(env: &Env, job: &str) -> (RunRow, String) {
    wait_for(300, "a running cell with a mid-stage checkpoint", || {
        let reg = Registry::open_existing(&env.registry).ok()??;
        let runs = reg.runs(Some(&env.experiment), None).ok()?;
        runs.into_iter().find_map(|r| {
            let task = r.job.clone()?;
            let mid = reg.checkpoints(&r.id).ok()?.iter().any(|c| !c.is_final);
            (r.status == RunStatus::Running && mid && task.starts_with(job)).then_some((r, task))
        })
    })
}

#[test]
fn usr2_gives_the_cell_back_and_the_next_task_continues_it() {
    let _one = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let Some(env) = Env::on_cluster("slurmusr2", 12, &[0, 1]) else {
        return;
    };
    let reference = reference(&env);
    let job = env.submit(&["--array-tasks", "2", "--array-parallelism", "1", "--quiet"]);
    let (run, task) = wait_for_checkpointed_cell(&env, &job);
    slurm(&["scancel", "--signal=USR2", &task]);
    env.wait_for_job(&job, 600);
    let log = std::fs::read_to_string(std::path::Path::new(&run.run_dir).join("log.txt")).unwrap();
    assert!(
        log.contains("interrupted: checkpointed and released"),
        "the signalled worker gives its cell back:\n{log}"
    );
    assert_finished_once_as(&env, 2, &reference);
    let after = env.registry().run(&run.id).unwrap();
    assert_eq!(after.attempt, 2, "continued by the next task: {after:#?}");
    assert_ne!(after.job.as_deref(), Some(task.as_str()), "{after:#?}");
}

#[test]
fn a_requeued_task_continues_its_cell_from_the_checkpoint() {
    let _one = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let Some(env) = Env::on_cluster("slurmrequeue", 12, &[0]) else {
        return;
    };
    let reference = reference(&env);
    let job = env.submit(&["--quiet"]);
    let (run, task) = wait_for_checkpointed_cell(&env, &job);
    slurm(&["scontrol", "requeue", &task]);
    env.wait_for_job(&job, 600);
    assert_finished_once_as(&env, 1, &reference);
    let after = env.registry().run(&run.id).unwrap();
    assert_eq!(after.attempt, 2, "continued after the requeue: {after:#?}");
    assert_eq!(after.job.as_deref(), Some(task.as_str()), "{after:#?}");
}
