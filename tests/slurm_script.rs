//! `beatlab sweep --launcher slurm` without a cluster: the generated sbatch script (golden
//! files, expect-test: `UPDATE_EXPECT=1 cargo test --test slurm_script` rewrites them), its
//! submission through a stand-in `sbatch` that records what it was given, and the bad inputs
//! (no sbatch, options that do not fit the launcher): exit 2 and nothing written. The queue a
//! launch leaves (a grid of several chunks, `--force`, `--rerun-failed`, a re-launch) is checked
//! on each available store.

mod stores;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use beatlab::launch::slurm::{self, SlurmArgs, WorkerArgs};
use beatlab::registry::{CellOffer, Registry, RunRow, RunStatus};
use beatlab::spec::{self, Overrides, Plan};
use expect_test::expect;
use stores::common::nop_spec;

fn plan() -> Plan {
    spec::load_str("nop.toml", &nop_spec(8), &Overrides::default())
        .unwrap()
        .plan()
        .unwrap()
}

fn worker(registry: &str) -> WorkerArgs {
    WorkerArgs {
        program: "/opt/beatlab/bin/beatlab".into(),
        registry: registry.into(),
        runs_dir: "runs".into(),
        max_cells: 10_000,
        spec: "experiments/nop.toml".into(),
        sets: vec!["stage.beat.epochs=2".into(), "data.source=it's here".into()],
        device: "cuda".into(),
        lease_s: 90.0,
        max_failures: 3,
        quiet: false,
    }
}

fn script(args: &SlurmArgs, registry: &str, needing: usize) -> String {
    slurm::array_job(
        &plan(),
        args,
        &worker(registry),
        needing,
        Path::new("/home/me/lab"),
    )
    .unwrap()
    .script()
}

#[test]
fn the_default_script_runs_one_task_per_cell_that_needs_work() {
    let text = script(
        &SlurmArgs::default(),
        "postgres://beatlab@db.cluster/beatlab",
        8,
    );
    expect![[r#"
        #!/bin/bash
        # beatlab sweep `nop` on Slurm: 8 cell(s), 8 needing work now; 8 array task(s), at
        # most 8 at once. Each task is a `beatlab worker` pulling cells from the registry until
        # none is left. On USR2 (120 s before the time limit) or TERM it checkpoints its cell,
        # gives it back (pending) and exits; a requeued or later task continues from there.
        # `beatlab status nop` shows the cells. Written by `beatlab sweep --launcher slurm`.
        #SBATCH --job-name=beatlab-nop
        #SBATCH --array=0-7%8
        #SBATCH --ntasks=1
        #SBATCH --output=/home/me/lab/runs/nop/slurm/%A_%a.out
        #SBATCH --error=/home/me/lab/runs/nop/slurm/%A_%a.err
        #SBATCH --open-mode=append
        #SBATCH --signal=USR2@120
        #SBATCH --requeue
        set -euo pipefail
        cd /home/me/lab
        # srun: Slurm signals job steps, not the batch shell.
        exec srun --ntasks=1 /opt/beatlab/bin/beatlab --registry postgres://beatlab@db.cluster/beatlab --runs-dir /home/me/lab/runs --max-cells 10000 worker /home/me/lab/experiments/nop.toml --set stage.beat.epochs=2 --set 'data.source=it'\''s here' --device cuda --lease 90 --max-failures 3
    "#]]
    .assert_eq(&text);
}

#[test]
fn every_option_goes_into_the_script_and_a_password_stays_out_of_it() {
    let args = SlurmArgs {
        array_parallelism: Some(3),
        array_tasks: Some(5),
        partition: Some("gpu".into()),
        time: Some("04:00:00".into()),
        gpus_per_task: Some(1),
        sbatch_args: vec!["--mem=16G".into(), "--account=ecg".into()],
        dry_run: true,
    };
    let text = script(
        &args,
        "postgres://beatlab:s3cret@db.cluster:5433/beatlab",
        2,
    );
    assert!(!text.contains("s3cret"), "{text}");
    expect![[r#"
        #!/bin/bash
        # beatlab sweep `nop` on Slurm: 8 cell(s), 2 needing work now; 5 array task(s), at
        # most 3 at once. Each task is a `beatlab worker` pulling cells from the registry until
        # none is left. On USR2 (120 s before the time limit) or TERM it checkpoints its cell,
        # gives it back (pending) and exits; a requeued or later task continues from there.
        # `beatlab status nop` shows the cells. Written by `beatlab sweep --launcher slurm`.
        #SBATCH --job-name=beatlab-nop
        #SBATCH --array=0-4%3
        #SBATCH --ntasks=1
        #SBATCH --output=/home/me/lab/runs/nop/slurm/%A_%a.out
        #SBATCH --error=/home/me/lab/runs/nop/slurm/%A_%a.err
        #SBATCH --open-mode=append
        #SBATCH --signal=USR2@120
        #SBATCH --requeue
        #SBATCH --partition=gpu
        #SBATCH --time=04:00:00
        #SBATCH --gpus-per-task=1
        #SBATCH --mem=16G
        #SBATCH --account=ecg
        set -euo pipefail
        cd /home/me/lab
        : "${BEATLAB_REGISTRY:?the registry address (it holds a password) comes from the submitting environment}"
        # srun: Slurm signals job steps, not the batch shell.
        exec srun --ntasks=1 /opt/beatlab/bin/beatlab --runs-dir /home/me/lab/runs --max-cells 10000 worker /home/me/lab/experiments/nop.toml --set stage.beat.epochs=2 --set 'data.source=it'\''s here' --device cuda --lease 90 --max-failures 3
    "#]]
    .assert_eq(&text);
}

#[test]
fn a_sqlite_registry_is_named_by_its_absolute_path() {
    let text = script(&SlurmArgs::default(), "registry/beatlab.db", 1);
    assert!(text.contains("#SBATCH --array=0-0%1\n"), "{text}");
    assert!(
        text.contains(" --registry /home/me/lab/registry/beatlab.db --runs-dir "),
        "{text}"
    );
}

#[test]
fn options_sbatch_would_refuse_are_refused_first() {
    let job = |args: SlurmArgs| {
        slurm::array_job(&plan(), &args, &worker("r.db"), 8, Path::new("/lab")).unwrap_err()
    };
    for (args, says) in [
        (
            SlurmArgs {
                time: Some("4h".into()),
                ..Default::default()
            },
            "--time `4h`",
        ),
        (
            SlurmArgs {
                partition: Some("gpu; rm -rf /".into()),
                ..Default::default()
            },
            "--partition",
        ),
        (
            SlurmArgs {
                sbatch_args: vec!["--array=0-99".into()],
                ..Default::default()
            },
            "the array is beatlab's",
        ),
        (
            SlurmArgs {
                sbatch_args: vec!["--mem=1G\n#SBATCH --x".into()],
                ..Default::default()
            },
            "one sbatch option on one line",
        ),
    ] {
        let e = job(args);
        assert!(e.is_bad_input(), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
    let e = slurm::array_job(
        &plan(),
        &SlurmArgs::default(),
        &worker("r.db"),
        8,
        Path::new("/my lab"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("#SBATCH line"), "{e}");
}

/// A scratch folder with the spec, and a `bin/` that holds a stand-in sbatch when asked.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self::with_spec(&nop_spec(8))
    }

    /// The scratch folder with `spec` as `nop.toml`.
    fn with_spec(spec: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nop.toml"), spec).unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A stand-in sbatch that records its arguments, environment and script, and prints a job id.
    fn fake_sbatch(&self, exit: i32) {
        let record = self.path("sbatch.log");
        let body = format!(
            "#!/bin/sh\nPATH=/usr/bin:/bin\necho \"$@\" > {log}\necho \"registry=$BEATLAB_REGISTRY\" >> {log}\n\
             cat \"$2\" > {log}.script\necho 'bad partition' >&2\n[ {exit} = 0 ] && echo '4242;cluster'\nexit {exit}\n",
            log = record.display()
        );
        let sbatch = self.path("bin/sbatch");
        std::fs::write(&sbatch, body).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sbatch, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn beatlab(&self, registry: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_beatlab"))
            .current_dir(self.dir.path())
            .env_remove("BEATLAB_REGISTRY")
            .env("PATH", self.path("bin"))
            .arg("--registry")
            .arg(registry)
            .arg("--runs-dir")
            .arg("runs")
            .args(args)
            .output()
            .unwrap()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn without_sbatch_nothing_is_written_and_the_exit_code_is_2() {
    let env = Env::new();
    let out = env.beatlab("reg.db", &["sweep", "nop.toml", "--launcher", "slurm"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`sbatch` is not on the PATH"),
        "{}",
        stderr(&out)
    );
    assert!(!env.path("reg.db").exists(), "a registry was created");
    assert!(!env.path("runs").exists(), "a run folder was created");
}

#[test]
fn dry_run_prints_the_script_and_writes_nothing() {
    let env = Env::new();
    let out = env.beatlab(
        "reg.db",
        &[
            "sweep",
            "nop.toml",
            "--launcher",
            "slurm",
            "--dry-run",
            "--array-tasks",
            "3",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("#!/bin/bash\n"), "{text}");
    assert!(text.contains("#SBATCH --array=0-2%3\n"), "{text}");
    assert!(!env.path("reg.db").exists());
    assert!(!env.path("runs").exists());
    assert!(!env.path("sbatch.log").exists());
}

#[test]
fn submitting_enqueues_the_cells_writes_the_script_and_prints_the_job_id() {
    let env = Env::new();
    env.fake_sbatch(0);
    let out = env.beatlab(
        "reg.db",
        &[
            "sweep",
            "nop.toml",
            "--launcher",
            "slurm",
            "--array-parallelism",
            "2",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "4242\n");
    let args = std::fs::read_to_string(env.path("sbatch.log")).unwrap();
    assert!(args.starts_with("--parsable "), "{args}");
    let written: Vec<_> = std::fs::read_dir(env.path("runs/nop/slurm"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    let submitted = std::fs::read_to_string(env.path("sbatch.log.script")).unwrap();
    assert_eq!(std::fs::read_to_string(&written[0]).unwrap(), submitted);
    assert!(submitted.contains("#SBATCH --array=0-7%2\n"), "{submitted}");
    // The queue is in the registry before any task starts.
    let status = env.beatlab("reg.db", &["status", "nop"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.starts_with("nop: 8 cell(s): 8 pending ("), "{text}");
    let cells = text.lines().skip(2);
    assert_eq!(
        cells.filter(|l| l.contains(" pending ")).count(),
        8,
        "{text}"
    );
}

#[test]
fn a_refused_job_is_bad_input_and_leaves_no_script() {
    let env = Env::new();
    env.fake_sbatch(1);
    let out = env.beatlab("reg.db", &["sweep", "nop.toml", "--launcher", "slurm"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad partition"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_dir(env.path("runs/nop/slurm"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn options_of_the_other_launcher_are_bad_input() {
    let env = Env::new();
    env.fake_sbatch(0);
    for args in [
        &["sweep", "nop.toml", "--partition", "gpu"][..],
        &["sweep", "nop.toml", "--dry-run"],
        &["sweep", "nop.toml", "--launcher", "slurm", "--workers", "2"],
        &["sweep", "nop.toml", "--launcher", "slurm", "--no-wait"],
        &[
            "sweep",
            "nop.toml",
            "--launcher",
            "slurm",
            "--time",
            "forever",
        ],
    ] {
        let out = env.beatlab("reg.db", args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!env.path("reg.db").exists(), "{args:?}");
        assert!(!env.path("sbatch.log").exists(), "{args:?}");
    }
}

/// The runs of experiment `nop` in the registry at `address`, by cell then creation.
fn nop_runs(address: &str) -> Vec<RunRow> {
    let registry = Registry::open_existing(address)
        .unwrap()
        .expect("a registry");
    let mut runs = registry.runs(Some("nop"), None).unwrap();
    runs.sort_by(|a, b| {
        (a.cell_index, a.created_at)
            .partial_cmp(&(b.cell_index, b.created_at))
            .unwrap()
    });
    runs
}

/// `beatlab sweep nop.toml --launcher slurm ARGS` submitted to the stand-in sbatch: the
/// `--array=` line of the script it was given, or `None` when nothing was submitted.
fn launch(env: &Env, registry: &str, args: &[&str]) -> Option<String> {
    let _ = std::fs::remove_file(env.path("sbatch.log.script"));
    let mut all = vec!["sweep", "nop.toml", "--launcher", "slurm"];
    all.extend(args);
    let out = env.beatlab(registry, &all);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    let script = std::fs::read_to_string(env.path("sbatch.log.script")).ok()?;
    let array = script.lines().find(|l| l.starts_with("#SBATCH --array="));
    Some(array.expect("an --array line").to_string())
}

#[test]
fn a_grid_of_several_chunks_is_queued_once_per_cell_and_a_relaunch_adds_nothing() {
    let cells = 600; // more than two chunks of beatlab::spec::cells::CHUNK (256)
    let env = Env::with_spec(&nop_spec(cells));
    env.fake_sbatch(0);
    for (store, address, _dir) in stores::fresh_addresses() {
        let array = launch(&env, &address, &[]);
        assert_eq!(
            array.as_deref(),
            Some("#SBATCH --array=0-599%600"),
            "{store}"
        );
        let runs = nop_runs(&address);
        assert_eq!(runs.len(), cells, "{store}");
        assert!(
            runs.iter().all(|r| r.status == RunStatus::Pending),
            "{store}"
        );
        let indices: Vec<i64> = runs.iter().map(|r| r.cell_index).collect();
        assert_eq!(indices, (0..cells as i64).collect::<Vec<_>>(), "{store}");
        let hashes: BTreeSet<&str> = runs.iter().map(|r| r.hash.as_str()).collect();
        assert_eq!(hashes.len(), cells, "{store}: a cell queued twice");

        // The cells are still pending (no task ran): a re-launch submits an array for them
        // again and queues nothing new.
        let again = launch(&env, &address, &[]);
        assert_eq!(again, array, "{store}");
        let ids = |runs: &[RunRow]| runs.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&nop_runs(&address)), ids(&runs), "{store}");
    }
}

/// Cell `index` of the eight-cell [`nop_spec`] run once and failed, through the library, as a worker would.
fn fail_cell(address: &str, index: usize, dir: &Path) {
    let registry = Registry::open(address).unwrap();
    registry.upsert_experiment("nop", "nop.toml", "").unwrap();
    let mut policy = stores::policy("test:1:0", "testhost", dir);
    policy.experiment = "nop".into();
    let offer = CellOffer::of(&plan().cells[index]);
    let claim = registry.claim(&policy, &[offer]).unwrap().expect("a claim");
    registry
        .end_run(&claim.run_id, "test:1:0", RunStatus::Failed, Some("boom"))
        .unwrap();
}

/// How many runs each cell has, and the latest one's status, in cell order.
fn queue(address: &str) -> Vec<(usize, RunStatus)> {
    let runs = nop_runs(address);
    (0..8)
        .map(|i| {
            let of: Vec<&RunRow> = runs.iter().filter(|r| r.cell_index == i).collect();
            (of.len(), of.last().expect("a run of every cell").status)
        })
        .collect()
}

#[test]
fn force_and_rerun_failed_queue_the_cells_that_ended_before_the_launch_once() {
    use RunStatus::{Failed, Finished, Pending};
    let env = Env::new();
    env.fake_sbatch(0);
    for (store, address, dir) in stores::fresh_addresses() {
        fail_cell(&address, 7, dir.path());
        let out = env.beatlab(&address, &["sweep", "nop.toml"]);
        assert!(out.status.code().is_some(), "{store}: {}", stderr(&out));
        let mut want = vec![(1, Finished); 7];
        want.push((1, Failed));
        assert_eq!(queue(&address), want, "{store}: after the local sweep");
        assert_eq!(
            launch(&env, &address, &[]),
            None,
            "{store}: nothing needs work"
        );

        // --rerun-failed: the failed cell gets a new pending run, once however often it is given.
        for _ in 0..2 {
            let array = launch(&env, &address, &["--rerun-failed"]);
            assert_eq!(array.as_deref(), Some("#SBATCH --array=0-0%1"), "{store}");
            want[7] = (2, Pending);
            assert_eq!(queue(&address), want, "{store}: --rerun-failed");
        }
        // --force: every finished cell too; the pending one stays as it is.
        let array = launch(&env, &address, &["--force"]);
        assert_eq!(array.as_deref(), Some("#SBATCH --array=0-7%8"), "{store}");
        let mut forced = vec![(2, Pending); 7];
        forced.push((2, Pending));
        assert_eq!(queue(&address), forced, "{store}: --force");

        // A worker (as an array task runs it, without --force) runs each queued run once.
        let out = env.beatlab(&address, &["worker", "nop.toml"]);
        assert_eq!(out.status.code(), Some(0), "{store}: {}", stderr(&out));
        assert_eq!(
            queue(&address),
            vec![(2, Finished); 8],
            "{store}: after the worker"
        );
        assert_eq!(launch(&env, &address, &[]), None, "{store}: all finished");
        let _ = std::fs::remove_dir_all(env.path("runs"));
    }
}
