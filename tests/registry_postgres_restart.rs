//! A PostgreSQL restart while a worker writes: its writes wait for the server and go through
//! exactly once. Its own test binary, because the restart breaks every connection to the test
//! server, and cargo runs test binaries one at a time.

mod stores;

use beatlab::registry::Registry;
use stores::{offers, policy};

#[test]
fn a_postgres_restart_between_and_during_operations_loses_nothing() {
    let Some(server) = stores::postgres_server() else {
        return;
    };
    let Ok(ctl) = std::env::var("BEATLAB_TEST_POSTGRES_CTL") else {
        assert!(
            std::env::var_os("BEATLAB_TEST_SETUP").is_none() && std::env::var_os("CI").is_none(),
            "BEATLAB_TEST_POSTGRES_CTL is not set under the test setup"
        );
        eprintln!("skipping: BEATLAB_TEST_POSTGRES_CTL is not set (scripts/test.sh sets it)");
        return;
    };
    let address = stores::fresh_database(&server);
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(&address).unwrap();
    reg.upsert_experiment("x", "x.toml", "").unwrap();
    let p = policy("w", "h", dir.path());
    let run = reg.claim(&p, &offers(2)).unwrap().unwrap();
    let point = |step| beatlab::registry::MetricPoint {
        key: "train/loss".into(),
        step,
        value: step as f64,
        time: 1.0,
    };
    reg.log_metrics(&run.run_id, &[point(0)]).unwrap();
    // The server stops (dropping every connection) and comes back 1.5 s later, while this
    // thread keeps writing: the writes wait and go through once, exactly.
    let restart = std::thread::spawn(move || {
        let sh = |args: &str| {
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{ctl} {args} >/dev/null"))
                .status()
                .unwrap();
            assert!(status.success(), "{ctl} {args}");
        };
        sh("--mode=fast --wait stop");
        std::thread::sleep(std::time::Duration::from_millis(1500));
        sh("--wait start");
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    for step in 1..20 {
        reg.log_metrics(&run.run_id, &[point(step)]).unwrap();
        assert!(reg.heartbeat(&run.run_id, "w").unwrap());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    restart.join().unwrap();
    let steps: Vec<i64> = reg
        .metrics(&run.run_id)
        .unwrap()
        .iter()
        .map(|p| p.step)
        .collect();
    assert_eq!(steps, (0..20).collect::<Vec<_>>());
    let next = reg.claim(&p, &offers(2)).unwrap().unwrap();
    assert_eq!(next.cell_index, 1, "the held cell stays held");
}
