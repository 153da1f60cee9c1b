//! What every registry store must do the same way: claims, leases, dead holders, failure caps,
//! released runs. Each test runs once per available store (see `stores`).

mod stores;

use std::path::Path;

use beatlab::registry::{CellOffer, ClaimPolicy, Registry, RunStatus};
use stores::each_store;

fn offers(n: usize) -> Vec<CellOffer> {
    (0..n)
        .map(|i| CellOffer {
            index: i as i64,
            label: format!("cell {i}"),
            overrides: serde_json::json!({ "i": i }),
            spec_json: format!("{{\"i\":{i}}}"),
            hash: format!("{i:0>64}"),
            seed: 0,
        })
        .collect()
}

fn policy(worker: &str, host: &str, dir: &Path) -> ClaimPolicy {
    ClaimPolicy {
        experiment: "x".into(),
        worker: worker.into(),
        host: host.into(),
        device: "cpu".into(),
        code_rev: "r".into(),
        code_dirty: false,
        lease_s: 60.0,
        force_before: None,
        rerun_failed_before: None,
        experiment_dir: dir.join("x"),
        max_failures: 3,
        job: None,
    }
}

fn this_host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// The id of a process that existed and is gone now (spawned and reaped).
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn prepare(reg: &Registry) {
    reg.upsert_experiment("x", "x.toml", "").unwrap();
}

#[test]
fn a_dead_holder_on_this_host_loses_its_cell_at_once() {
    // #14.6: after kill -9 of a worker, its cell stayed `running` for the whole lease and a new
    // worker exited 0 without it.
    each_store(|reg, dir| {
        prepare(reg);
        let host = this_host();
        let cells = offers(1);
        let dead = format!("{host}:{}:0", dead_pid());
        let first = reg
            .claim(&policy(&dead, &host, dir), &cells)
            .unwrap()
            .unwrap();
        let mine = format!("{host}:{}:0", std::process::id());
        let second = reg
            .claim(&policy(&mine, &host, dir), &cells)
            .unwrap()
            .expect("a dead holder's cell is taken over within its lease");
        assert_eq!(second.run_id, first.run_id);
        assert_eq!((second.attempt, second.resumed), (2, true));
        let run = reg.run(&first.run_id).unwrap();
        assert_eq!((run.status, run.failures), (RunStatus::Running, 1));
        assert_eq!(run.worker, mine);
    });
}

#[test]
fn a_holder_that_may_be_alive_keeps_its_cell_for_its_lease() {
    each_store(|reg, dir| {
        prepare(reg);
        let host = this_host();
        let cells = offers(2);
        // Another host (its processes cannot be seen from here), and a live process here.
        reg.claim(&policy("elsewhere:1:0", "elsewhere", dir), &cells[..1])
            .unwrap()
            .unwrap();
        let live = format!("{host}:1:0");
        reg.claim(&policy(&live, &host, dir), &cells[1..])
            .unwrap()
            .unwrap();
        let mine = format!("{host}:{}:0", std::process::id());
        assert!(
            reg.claim(&policy(&mine, &host, dir), &cells)
                .unwrap()
                .is_none()
        );
    });
}

#[test]
fn a_run_that_failed_max_failures_times_is_not_retaken() {
    // #14.2: a cell whose run crashes its worker (a poison record) was taken over, and crashed
    // the next worker, forever.
    each_store(|reg, dir| {
        prepare(reg);
        let cells = offers(1);
        let short = |worker: &str| ClaimPolicy {
            lease_s: 0.2,
            max_failures: 2,
            ..policy(worker, "elsewhere", dir)
        };
        let first = reg.claim(&short("a:1:0"), &cells).unwrap().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let second = reg.claim(&short("b:1:0"), &cells).unwrap().unwrap();
        assert_eq!(
            (second.run_id.as_str(), second.attempt),
            (first.run_id.as_str(), 2)
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            reg.claim(&short("c:1:0"), &cells).unwrap().is_none(),
            "failed twice: not taken a third time"
        );
        let run = reg.run(&first.run_id).unwrap();
        assert_eq!((run.status, run.failures), (RunStatus::Failed, 2));
        let error = run.error.unwrap();
        assert!(
            error.contains("failed 2 time(s)") && error.contains("b:1:0"),
            "{error}"
        );
    });
}

#[test]
fn a_failed_run_counts_as_a_failure_and_is_left_alone() {
    each_store(|reg, dir| {
        prepare(reg);
        let cells = offers(1);
        let p = policy("w:1:0", "elsewhere", dir);
        let claim = reg.claim(&p, &cells).unwrap().unwrap();
        reg.end_run(
            &claim.run_id,
            "w:1:0",
            RunStatus::Failed,
            Some("panicked: boom"),
        )
        .unwrap();
        let run = reg.run(&claim.run_id).unwrap();
        assert_eq!((run.status, run.failures), (RunStatus::Failed, 1));
        assert!(reg.claim(&p, &cells).unwrap().is_none());
    });
}

#[test]
fn a_released_run_is_pending_and_the_next_claim_continues_it() {
    each_store(|reg, dir| {
        prepare(reg);
        let cells = offers(1);
        let a = policy("a:1:0", "elsewhere", dir);
        let first = reg.claim(&a, &cells).unwrap().unwrap();
        assert!(!first.resumed);
        reg.release(&first.run_id, "a:1:0").unwrap();
        let run = reg.run(&first.run_id).unwrap();
        assert_eq!((run.status, run.failures), (RunStatus::Pending, 0));
        assert!(!reg.heartbeat(&first.run_id, "a:1:0").unwrap());
        let b = ClaimPolicy {
            job: Some("77_2".into()),
            ..policy("b:1:0", "elsewhere", dir)
        };
        let second = reg.claim(&b, &cells).unwrap().unwrap();
        assert_eq!(second.run_id, first.run_id);
        assert_eq!((second.attempt, second.resumed), (2, true));
        let run = reg.run(&first.run_id).unwrap();
        assert_eq!(run.job.as_deref(), Some("77_2"));
        assert_eq!(run.failures, 0, "a release is not a failure");
    });
}
