//! Real-process tests of the runner: the `beatlab` binary on a tiny Beat spec over simulated
//! ECGs, with real registries, run folders, checkpoints and signals.
//!
//! - two concurrent `beatlab sweep` processes leave exactly one finished run per cell;
//! - a `kill -9`ed worker's cell is named and left while its holder may be alive (another
//!   host, within the lease), and taken over at once when its process is provably gone;
//! - a run killed mid-stage and resumed ends with the same metrics as an uninterrupted run, and
//!   two runs of one cell are identical (CPU determinism);
//! - Ctrl-C leaves a run resumable at once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use beatlab::registry::{Registry, RunRow, RunStatus};

#[allow(dead_code)]
mod common;

/// A tiny Beat on simulated records: a few seconds of CPU per cell.
const TINY: &str = concat!(
    r#"
[experiment]
name = "tiny"

[data]
source = "synthetic"
synthetic_records = 48
synthetic_duration_s = 4.0
val_fraction = 0.2
test_fraction = 0.1
"#,
    tiny_beat!(),
    r#"
[[stage]]
name = "beat"
kind = "beat"
epochs = 12
batch = 4
lr = 0.001
t_max = 12
checkpoint_every = 0
checkpoint_every_steps = 10
"#
);

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(spec: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tiny.toml"), spec).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cmd(&self, registry: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_beatlab"));
        c.current_dir(self.dir.path())
            .env("BEATLAB_REGISTRY", self.path(registry))
            .env("BEATLAB_RUNS_DIR", self.path("runs"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, registry: &str, args: &[&str]) -> std::process::Output {
        self.cmd(registry, args).output().unwrap()
    }

    fn spawn(&self, registry: &str, args: &[&str]) -> Child {
        self.cmd(registry, args).spawn().unwrap()
    }

    fn registry(&self, name: &str) -> Registry {
        Registry::open_existing(&self.path(name))
            .unwrap()
            .expect("registry exists")
    }
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "beatlab failed ({:?}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls until `f` returns `Some`, or panics after `secs`.
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn only_run(reg: &Registry) -> RunRow {
    let runs = reg.runs(None, None).unwrap();
    assert_eq!(runs.len(), 1, "expected one run, found {runs:?}");
    runs.into_iter().next().unwrap()
}

/// A run's summaries and its metric points (key, step, value).
type Results = (Vec<(String, f64)>, Vec<(String, i64, f64)>);

/// Summaries and every metric point except wall-clock times.
fn results(reg: &Registry, run: &str) -> Results {
    let summaries = reg.summaries(run).unwrap().into_iter().collect();
    let metrics = reg
        .metrics(run)
        .unwrap()
        .into_iter()
        .map(|m| (m.key, m.step, m.value))
        .collect();
    (summaries, metrics)
}

/// Asserts two result sets are equal, naming the first difference (they hold thousands of points).
fn assert_same(a: &Results, b: &Results, what: &str) {
    let sa: Vec<String> =
        a.0.iter()
            .map(|x| format!("{x:?}"))
            .chain(a.1.iter().map(|x| format!("{x:?}")))
            .collect();
    let sb: Vec<String> =
        b.0.iter()
            .map(|x| format!("{x:?}"))
            .chain(b.1.iter().map(|x| format!("{x:?}")))
            .collect();
    if let Some(i) = (0..sa.len().max(sb.len())).find(|&i| sa.get(i) != sb.get(i)) {
        panic!(
            "{what}: first difference at entry {i}: {:?} vs {:?}",
            sa.get(i),
            sb.get(i)
        );
    }
}

/// Starts a run and SIGKILLs it once it has written a mid-stage checkpoint.
fn kill_after_checkpoint(env: &Env, registry: &str, args: &[&str]) -> RunRow {
    let mut child = env.spawn(registry, args);
    let reg_path = env.path(registry);
    wait_for(120, "a mid-stage checkpoint", || {
        // A worker that ended before checkpointing would otherwise leave this waiting in vain.
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
            }
            panic!("the run ended before its first mid-stage checkpoint ({status:?}):\n{stderr}");
        }
        let reg = Registry::open_existing(&reg_path).ok()??;
        let run = reg.runs(None, None).ok()?.into_iter().next()?;
        let ckpts = reg.checkpoints(&run.id).ok()?;
        ckpts.iter().any(|c| !c.is_final).then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let run = only_run(&env.registry(registry));
    assert_eq!(
        run.status,
        RunStatus::Running,
        "the run should be cut off mid-stage (it finished before the kill: make TINY longer)"
    );
    run
}

#[test]
fn two_concurrent_sweeps_run_each_cell_exactly_once() {
    let spec =
        format!("{TINY}\n[sweep]\nbeat.codebook_size = [16, 32]\nbeat.dvq_levels = [1, 2]\n");
    let env = Env::new(&spec.replace("epochs = 12", "epochs = 2"));
    let a = env.spawn("reg.db", &["sweep", "tiny.toml", "--quiet"]);
    let b = env.spawn("reg.db", &["sweep", "tiny.toml", "--quiet"]);
    ok(&a.wait_with_output().unwrap());
    ok(&b.wait_with_output().unwrap());
    let runs = env.registry("reg.db").runs(None, None).unwrap();
    assert_eq!(runs.len(), 4, "one run per cell: {runs:#?}");
    let mut hashes: Vec<&str> = runs.iter().map(|r| r.hash.as_str()).collect();
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), 4);
    for r in &runs {
        assert_eq!(r.status, RunStatus::Finished, "{r:?}");
        assert_eq!(r.attempt, 1, "no cell was taken twice: {r:?}");
    }
    // A third sweep finds nothing to do.
    let out = env.run("reg.db", &["sweep", "tiny.toml", "--quiet"]);
    ok(&out);
    assert_eq!(env.registry("reg.db").runs(None, None).unwrap().len(), 4);
}

/// Sets who holds a run, as another machine's worker would appear.
fn set_holder(env: &Env, registry: &str, run: &str, host: &str, worker: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(env.path(registry));
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::query("UPDATE runs SET host = ?2, worker = ?3 WHERE id = ?1")
            .bind(run)
            .bind(host)
            .bind(worker)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
}

#[test]
fn a_killed_workers_cell_is_named_while_it_may_live_and_taken_over_once_provably_dead() {
    // #14.6: after kill -9, the next worker exited 0 with the cell still `running`.
    let env = Env::new(TINY);
    let args = ["worker", "tiny.toml", "--lease", "30", "--quiet"];
    let killed = kill_after_checkpoint(&env, "reg.db", &args);

    // Held by a worker of another machine (which may be alive): within the lease, a worker
    // that does not wait names the cell and exits 1.
    set_holder(&env, "reg.db", &killed.id, "elsewhere", "elsewhere:4242:0");
    let out = env.run("reg.db", &[&args[..], &["--no-wait"]].concat());
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&killed.id) && stderr.contains("elsewhere:4242:0"),
        "{stderr}"
    );
    let run = only_run(&env.registry("reg.db"));
    assert_eq!((run.status, run.attempt), (RunStatus::Running, 1));

    // Held by a process of this host that is gone: taken over at once, from its checkpoint.
    set_holder(&env, "reg.db", &killed.id, &killed.host, &killed.worker);
    ok(&env.run("reg.db", &args));
    let run = only_run(&env.registry("reg.db"));
    assert_eq!(run.id, killed.id);
    assert_eq!(
        (run.status, run.attempt, run.failures),
        (RunStatus::Finished, 2, 1)
    );
    let log = std::fs::read_to_string(Path::new(&run.run_dir).join("log.txt")).unwrap();
    assert!(log.contains("continuing from checkpoint"), "{log}");
}

#[test]
fn killed_and_resumed_runs_match_uninterrupted_ones_exactly() {
    let env = Env::new(TINY);
    ok(&env.run("a.db", &["run", "tiny.toml", "--quiet"]));
    ok(&env.run("b.db", &["run", "tiny.toml", "--quiet"]));
    let (ra, rb) = (env.registry("a.db"), env.registry("b.db"));
    let (run_a, run_b) = (only_run(&ra), only_run(&rb));
    assert_eq!(run_a.hash, run_b.hash);
    let (a, b) = (results(&ra, &run_a.id), results(&rb, &run_b.id));
    assert!(!a.0.is_empty() && !a.1.is_empty());
    assert_same(
        &a,
        &b,
        "two CPU runs of one cell with one seed must be identical",
    );

    let killed = kill_after_checkpoint(
        &env,
        "c.db",
        &["run", "tiny.toml", "--lease", "1", "--quiet"],
    );
    // Its process is gone: `resume` takes it over at once, without waiting for the lease.
    ok(&env.run("c.db", &["resume", &killed.id, "--quiet"]));
    let rc = env.registry("c.db");
    let run_c = only_run(&rc);
    assert_eq!((run_c.status, run_c.attempt), (RunStatus::Finished, 2));
    assert_same(
        &results(&rc, &run_c.id),
        &a,
        "the resumed run must end where the uninterrupted one did",
    );
}

#[test]
fn ctrl_c_leaves_the_run_resumable_at_once() {
    let env = Env::new(TINY);
    let child = env.spawn("reg.db", &["run", "tiny.toml", "--quiet"]);
    let reg_path = env.path("reg.db");
    wait_for(120, "the first training steps", || {
        let reg = Registry::open_existing(&reg_path).ok()??;
        let run = reg.runs(None, None).ok()?.into_iter().next()?;
        reg.metrics(&run.id)
            .ok()?
            .iter()
            .any(|m| m.step >= 3)
            .then_some(())
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "an interrupted run is not done");
    let run = only_run(&env.registry("reg.db"));
    assert_eq!(
        run.status,
        RunStatus::Pending,
        "interrupted runs are given back, resumable without a lease wait"
    );
    ok(&env.run("reg.db", &["resume", &run.id, "--quiet"]));
    assert_eq!(
        only_run(&env.registry("reg.db")).status,
        RunStatus::Finished
    );
}
