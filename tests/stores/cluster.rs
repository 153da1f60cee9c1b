//! What the Slurm and chaos tests share: a spec of tiny Beat cells in a scratch folder, the
//! `beatlab` binary run there, Slurm jobs waited for (by `squeue`, never `sacct`), and each
//! cell's results compared with an uninterrupted run's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use beatlab::registry::{Registry, RunRow, RunStatus};

/// A tiny Beat on simulated records; `{epochs}` and `{seeds}` filled in per test.
pub const TINY: &str = concat!(
    r#"
[experiment]
name = "NAME"

[data]
source = "synthetic"
synthetic_records = 48
synthetic_duration_s = 4.0
val_fraction = 0.2
test_fraction = 0.1
"#,
    crate::tiny_beat!(),
    r#"
[[stage]]
name = "beat"
kind = "beat"
epochs = EPOCHS
batch = 4
lr = 0.001
t_max = 12
checkpoint_every = 0
checkpoint_every_steps = 10

[sweep]
seeds = SEEDS
"#
);

/// A scratch folder holding a spec of [`TINY`] cells, and the registry its sweeps use.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub registry: String,
    pub experiment: String,
}

impl Env {
    /// `experiment`'s spec with `epochs` per cell, one cell per seed; `registry` an address, or
    /// a file name in the scratch folder.
    pub fn new(experiment: &str, epochs: u32, seeds: &[u32], registry: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let spec = TINY
            .replace("NAME", experiment)
            .replace("EPOCHS", &epochs.to_string())
            .replace("SEEDS", &format!("{seeds:?}"));
        std::fs::write(dir.path().join("spec.toml"), spec).unwrap();
        let registry = if registry.contains("://") {
            registry.to_string()
        } else {
            dir.path().join(registry).to_string_lossy().into_owned()
        };
        Self {
            dir,
            registry,
            experiment: experiment.into(),
        }
    }

    /// [`Env::new`] on a fresh PostgreSQL database, for the Slurm tests; `None` (the test
    /// skips, saying so) outside the test setup when Slurm or PostgreSQL is absent.
    pub fn on_cluster(experiment: &str, epochs: u32, seeds: &[u32]) -> Option<Self> {
        if !super::slurm_cluster() {
            return None;
        }
        let server = super::postgres_server()?;
        Some(Self::new(
            experiment,
            epochs,
            seeds,
            &super::fresh_database(&server),
        ))
    }

    /// A `beatlab` command in the scratch folder with this registry and `runs/`.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_on(&self.registry, args)
    }

    /// A `beatlab` command in the scratch folder with `registry` and `runs/`.
    pub fn command_on(&self, registry: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_beatlab"));
        c.current_dir(self.dir.path())
            .env_remove("BEATLAB_REGISTRY")
            .arg("--registry")
            .arg(registry)
            .arg("--runs-dir")
            .arg(self.path("runs"))
            .args(args);
        c
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn beatlab(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Submits the spec as an array; returns the job id.
    pub fn submit(&self, args: &[&str]) -> String {
        let mut all = vec!["sweep", "spec.toml", "--launcher", "slurm", "--lease", "20"];
        all.extend_from_slice(args);
        let out = ok(self.beatlab(&all));
        let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(id.parse::<u64>().is_ok(), "sbatch's job id: {id:?}");
        id
    }

    pub fn registry(&self) -> Registry {
        Registry::open_existing(&self.registry)
            .unwrap()
            .expect("the registry exists")
    }

    pub fn runs(&self) -> Vec<RunRow> {
        self.registry().runs(Some(&self.experiment), None).unwrap()
    }

    /// Waits until Slurm lists none of the job's tasks, then prints and returns the tasks' logs.
    pub fn wait_for_job(&self, job: &str, secs: u64) -> String {
        wait_for(secs, &format!("Slurm job {job} to end"), || {
            let out = Command::new("squeue")
                .args(["--noheader", "--jobs", job, "--format=%i %T"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            text.trim().is_empty().then_some(())
        });
        let logs = self.logs(job);
        eprintln!("{logs}");
        logs
    }

    /// Every task's `.out` and `.err` under `runs/<experiment>/slurm/`.
    pub fn logs(&self, job: &str) -> String {
        let dir = self.path("runs").join(&self.experiment).join("slurm");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        names.sort();
        let mut text = String::new();
        for p in names.iter().filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(&format!("{job}_"))
        }) {
            text.push_str(&format!(
                "--- {}\n{}",
                p.display(),
                std::fs::read_to_string(p).unwrap_or_default()
            ));
        }
        text
    }
}

pub fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "beatlab failed ({:?}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn slurm(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A run's summaries and its metric points (key, step, value), wall-clock times left out.
pub type Results = (Vec<(String, f64)>, Vec<(String, i64, f64)>);

pub fn results(reg: &Registry, run: &str) -> Results {
    let summaries = reg.summaries(run).unwrap().into_iter().collect();
    let metrics = reg
        .metrics(run)
        .unwrap()
        .into_iter()
        .map(|m| (m.key, m.step, m.value))
        .collect();
    (summaries, metrics)
}

/// Each cell's results from an uninterrupted local sweep of the same spec (a SQLite registry
/// of its own), by cell hash.
pub fn reference(env: &Env) -> BTreeMap<String, Results> {
    let file = env.path("reference.db");
    let out = env
        .command_on(file.to_str().unwrap(), &["sweep", "spec.toml", "--quiet"])
        .output()
        .unwrap();
    ok(out);
    let reg = Registry::open_existing(&file).unwrap().unwrap();
    reg.runs(None, None)
        .unwrap()
        .into_iter()
        .map(|r| (r.hash.clone(), results(&reg, &r.id)))
        .collect()
}

/// Every cell has exactly one run, finished, ending exactly as in the reference.
pub fn assert_finished_once_as(env: &Env, cells: usize, reference: &BTreeMap<String, Results>) {
    let runs = env.runs();
    let hashes: BTreeSet<&String> = runs.iter().map(|r| &r.hash).collect();
    assert_eq!((runs.len(), hashes.len()), (cells, cells), "{runs:#?}");
    let reg = env.registry();
    for r in &runs {
        assert_eq!(r.status, RunStatus::Finished, "{r:#?}");
        assert!(
            results(&reg, &r.id) == reference[&r.hash],
            "run {} (attempt {}) does not end as the uninterrupted run of its cell",
            r.id,
            r.attempt
        );
    }
}
