//! What every registry store must do the same way: claims, leases, dead holders, failure caps,
//! released runs. Each test runs once per available store (see `stores`).

mod stores;

use beatlab::registry::{ClaimPolicy, Registry, RunStatus};
use stores::{each_store, offers, policy};

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

#[test]
fn metrics_of_an_unknown_run_are_refused_and_nothing_is_written() {
    each_store(|reg, dir| {
        prepare(reg);
        // The metrics table has no foreign keys (they cost a third of the write rate); the writer
        // resolves the run itself.
        let point = beatlab::registry::MetricPoint {
            key: "train/loss".into(),
            step: 0,
            value: 1.0,
            time: 0.0,
        };
        let err = reg.log_metrics("nope-1", &[point]).unwrap_err();
        assert!(
            matches!(err, beatlab::registry::RegistryError::NoSuchRun(ref id) if id == "nope-1"),
            "{err}"
        );
        let run = reg
            .claim(&policy("w", "h", dir), &offers(1))
            .unwrap()
            .unwrap();
        assert!(reg.metrics(&run.run_id).unwrap().is_empty());
    });
}

#[test]
fn claims_skip_finished_and_failed_cells_unless_asked() {
    each_store(|reg, dir| {
        prepare(reg);
        let cells = offers(2);
        let p = policy("w1", "h", dir);
        let a = reg.claim(&p, &cells).unwrap().unwrap();
        let b = reg.claim(&p, &cells).unwrap().unwrap();
        assert_eq!((a.cell_index, b.cell_index), (0, 1));
        assert!(
            reg.claim(&p, &cells).unwrap().is_none(),
            "both cells are held"
        );
        reg.end_run(&a.run_id, "w1", RunStatus::Finished, None)
            .unwrap();
        reg.end_run(&b.run_id, "w1", RunStatus::Failed, Some("boom"))
            .unwrap();
        assert!(
            reg.claim(&p, &cells).unwrap().is_none(),
            "finished and failed cells are skipped"
        );

        let rerun = ClaimPolicy {
            rerun_failed_before: Some(reg.clock().unwrap() + 1.0),
            ..p.clone()
        };
        let c = reg.claim(&rerun, &cells).unwrap().unwrap();
        assert_eq!(c.cell_index, 1);
        assert_ne!(
            c.run_id, b.run_id,
            "a failed cell is run again as a new run"
        );
        assert!(
            reg.claim(&rerun, &cells).unwrap().is_none(),
            "the new run is held"
        );

        let force = ClaimPolicy {
            force_before: Some(reg.clock().unwrap() + 1.0),
            ..p.clone()
        };
        let d = reg.claim(&force, &cells).unwrap().unwrap();
        assert_eq!(d.cell_index, 0);
        assert_ne!(
            d.run_id, a.run_id,
            "a finished cell is run again as a new run"
        );
        assert_eq!(reg.run(&a.run_id).unwrap().error, None);
        assert_eq!(reg.run(&b.run_id).unwrap().error.as_deref(), Some("boom"));
    });
}

#[test]
fn an_expired_lease_makes_a_run_stale_and_the_next_worker_continues_it() {
    each_store(|reg, dir| {
        prepare(reg);
        let cells = offers(1);
        let short = ClaimPolicy {
            lease_s: 0.2,
            ..policy("w1", "h", dir)
        };
        let first = reg.claim(&short, &cells).unwrap().unwrap();
        assert!(reg.heartbeat(&first.run_id, "w1").unwrap());
        assert!(
            reg.claim(&policy("w2", "h", dir), &cells)
                .unwrap()
                .is_none()
        );
        std::thread::sleep(std::time::Duration::from_millis(350));
        assert_eq!(
            reg.run(&first.run_id)
                .unwrap()
                .effective_status(reg.clock().unwrap()),
            RunStatus::Stale
        );
        let second = reg.claim(&policy("w2", "h", dir), &cells).unwrap().unwrap();
        assert_eq!(second.run_id, first.run_id);
        assert_eq!((second.attempt, second.resumed), (2, true));
        // The first worker lost the run: its heartbeat says so, and it must stop.
        assert!(!reg.heartbeat(&first.run_id, "w1").unwrap());
        assert!(reg.heartbeat(&first.run_id, "w2").unwrap());
    });
}

#[test]
fn workers_claiming_at_once_take_every_cell_exactly_once() {
    for (name, address, dir) in stores::fresh_addresses() {
        eprintln!("store: {name}");
        prepare(&Registry::open(&address).unwrap());
        let cells = offers(24);
        let taken: Vec<Vec<i64>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..6)
                .map(|w| {
                    let (address, cells, dir) = (&address, &cells, dir.path());
                    s.spawn(move || {
                        // Each worker its own connection(s), as separate processes would have.
                        let reg = Registry::open(address).unwrap();
                        let p = policy(&format!("w{w}"), "h", dir);
                        let mut mine = Vec::new();
                        while let Some(c) = reg.claim(&p, cells).unwrap() {
                            reg.end_run(&c.run_id, &p.worker, RunStatus::Finished, None)
                                .unwrap();
                            mine.push(c.cell_index);
                        }
                        mine
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut all: Vec<i64> = taken.concat();
        all.sort();
        assert_eq!(all, (0..24).collect::<Vec<_>>(), "{name}: {taken:?}");
        let runs = Registry::open(&address)
            .unwrap()
            .runs(Some("x"), None)
            .unwrap();
        assert_eq!(runs.len(), 24, "{name}: one run per cell");
    }
}

#[test]
fn a_rewritten_metric_point_replaces_the_old_one() {
    each_store(|reg, dir| {
        prepare(reg);
        let run = reg
            .claim(&policy("w", "h", dir), &offers(1))
            .unwrap()
            .unwrap();
        let point = |step, value| beatlab::registry::MetricPoint {
            key: "train/loss".into(),
            step,
            value,
            time: 1.0,
        };
        // Twice in one batch (the later wins), then again in a later batch.
        reg.log_metrics(&run.run_id, &[point(0, 3.0), point(1, 2.0), point(0, 2.5)])
            .unwrap();
        reg.log_metrics(&run.run_id, &[point(1, 1.5), point(2, 1.0)])
            .unwrap();
        let got: Vec<(i64, f64)> = reg
            .metrics(&run.run_id)
            .unwrap()
            .iter()
            .map(|p| (p.step, p.value))
            .collect();
        assert_eq!(got, [(0, 2.5), (1, 1.5), (2, 1.0)]);
    });
}

#[test]
fn an_unreachable_or_unknown_postgres_database_is_bad_input() {
    let Some(server) = stores::postgres_server() else {
        return;
    };
    let (base, _) = server.rsplit_once('/').unwrap();
    // A port nobody listens on, and a database that does not exist on the test server.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    for address in [
        format!("postgres://beatlab:secret@127.0.0.1:{port}/x"),
        format!("{base}/no_such_database"),
    ] {
        let err = match Registry::open(&address) {
            Err(e) => e,
            Ok(_) => panic!("{address} opened"),
        };
        assert!(err.is_bad_input(), "{address}: {err}");
        let text = err.to_string();
        assert!(!text.contains("secret"), "the password is shown: {text}");
        assert!(text.contains("cannot open registry"), "{text}");
    }
}
