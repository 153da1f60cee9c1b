//! `kill -9` at random points of every stage kind (issue #14): a run of the four-stage pipeline
//! (beat, warm-up, joint, eval) is SIGKILLed at a random moment inside a chosen stage, resumed
//! with `beatlab resume`, and must end with exactly the summaries and metric points of an
//! uninterrupted run, leaving no temporary file behind. Also: a resumed run whose newest
//! checkpoint is corrupt or deleted falls back to the one before, says so, and still ends
//! exactly where the uninterrupted run did (issue #14.14).
//!
//! `cargo test` runs `BEATLAB_KILL9_TRIALS` trials (default 8: two per stage kind);
//! `scripts/kill9.sh` runs 24. The random points come from `BEATLAB_KILL9_SEED` (default 1),
//! and every trial prints its stage, delay and outcome so that a failure can be replayed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use beatlab::registry::{Registry, RunRow, RunStatus};

#[allow(dead_code)]
mod common;
use common::TOY_MULTIMODAL;

const STAGES: [&str; 4] = ["beat", "warmup", "joint", "eval"];

/// Every stage long enough to be cut off more than once, with checkpoints every few steps.
fn spec() -> String {
    format!(
        r#"
[experiment]
name = "kill9"

{TOY_MULTIMODAL}
[backbone.lora]
rank = 4
alpha = 8
dropout = 0.2

[eval]
max_items = 3
max_new_tokens = 12

[[stage]]
name = "beat"
kind = "beat"
epochs = 8
batch = 8
checkpoint_every = 0
checkpoint_every_steps = 3

[[stage]]
name = "warmup"
kind = "warmup"
epochs = 2
batch = 4
data_fraction = 1.0
checkpoint_every = 0
checkpoint_every_steps = 3

[[stage]]
name = "joint"
kind = "joint"
epochs = 1
batch = 4
checkpoint_every = 0
checkpoint_every_steps = 4

[[stage]]
name = "eval"
kind = "eval"
"#
    )
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spec.toml"), spec()).unwrap();
        Self { dir }
    }

    fn cmd(&self, name: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_beatlab"));
        cmd.current_dir(self.dir.path())
            .env("BEATLAB_REGISTRY", self.registry_path(name))
            .env(
                "BEATLAB_RUNS_DIR",
                self.dir.path().join(format!("runs-{name}")),
            )
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    fn registry_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.db"))
    }

    fn spawn_run(&self, name: &str) -> Child {
        self.cmd(name, &["run", "spec.toml", "--lease", "1", "--quiet"])
            .spawn()
            .unwrap()
    }

    /// The registry's only run, once there is one.
    fn run(&self, name: &str) -> Option<RunRow> {
        let reg = Registry::open_existing(&self.registry_path(name)).ok()??;
        reg.runs(None, None).ok()?.into_iter().next()
    }

    fn resume(&self, name: &str, id: &str) {
        let out = self.cmd(name, &["resume", id, "--quiet"]).output().unwrap();
        assert!(
            out.status.success(),
            "resume of {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Summaries and metric points (key, step, value) of the only run, as comparable lines;
    /// fall-back records are left out (an uninterrupted run has none).
    fn results(&self, name: &str) -> Vec<String> {
        let reg = Registry::open_existing(&self.registry_path(name))
            .unwrap()
            .unwrap();
        let run = reg.runs(None, None).unwrap().remove(0);
        assert_eq!(run.status, RunStatus::Finished, "{name}: {:?}", run.error);
        let mut lines: Vec<String> = reg
            .summaries(&run.id)
            .unwrap()
            .into_iter()
            .map(|(k, v)| format!("summary {k} = {v:?}"))
            .collect();
        lines.extend(
            reg.metrics(&run.id)
                .unwrap()
                .into_iter()
                .filter(|m| m.key != beatlab::runner::CHECKPOINT_FALLBACK)
                .map(|m| format!("metric {} @{} = {:?}", m.key, m.step, m.value)),
        );
        lines
    }
}

fn wait(child: &mut Child) -> std::process::ExitStatus {
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
    }
    assert!(
        status.success() || status.code().is_none(),
        "the run failed ({status:?}):\n{stderr}"
    );
    status
}

/// Runs the uninterrupted reference and measures how long each stage took (polling the
/// registry's current stage), so that trials can aim inside a stage.
fn reference(env: &Env) -> (Vec<String>, BTreeMap<&'static str, Duration>) {
    let mut child = env.spawn_run("reference");
    let mut first_seen: BTreeMap<&str, Instant> = BTreeMap::new();
    while child.try_wait().unwrap().is_none() {
        if let Some(stage) = env.run("reference").and_then(|r| r.stage) {
            let stage = STAGES.into_iter().find(|s| *s == stage).unwrap();
            first_seen.entry(stage).or_insert_with(Instant::now);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let end = Instant::now();
    wait(&mut child);
    let mut windows = BTreeMap::new();
    for (i, stage) in STAGES.iter().enumerate() {
        let start = first_seen[stage];
        let next = STAGES.get(i + 1).map_or(end, |n| first_seen[n]);
        windows.insert(*stage, next - start);
    }
    (env.results("reference"), windows)
}

/// A small deterministic generator (splitmix64) for the kill points.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

/// What a trial hit.
struct Hit {
    stage: String,
    checkpoints: usize,
}

/// How a kill attempt ended.
enum Attempt {
    /// SIGKILLed inside the stage aimed at.
    Killed(Box<RunRow>, Hit),
    /// The run finished before the kill.
    Finished,
    /// The run left the stage before `delay` was up (it ran faster than the reference, e.g. on
    /// a machine whose load changed); the stage took this long.
    Overshot(Duration),
}

fn position(stage: &str) -> Option<usize> {
    STAGES.iter().position(|x| *x == stage)
}

/// Starts a run, waits until it is inside `stage`, lets it go on for `delay` (watching that it
/// stays there), SIGKILLs it, and reports where it was.
fn kill_inside(env: &Env, name: &str, stage: &str, delay: Duration) -> Attempt {
    let mut child = env.spawn_run(name);
    let started = Instant::now();
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{name}: the run ended before reaching `{stage}`"
        );
        assert!(started.elapsed() < Duration::from_secs(300), "timed out");
        let at = env.run(name).and_then(|r| r.stage);
        if at.as_deref().and_then(position) >= position(stage) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let entered = Instant::now();
    while entered.elapsed() < delay {
        let at = env.run(name).and_then(|r| r.stage);
        if at.as_deref().and_then(position) > position(stage) || child.try_wait().unwrap().is_some()
        {
            let _ = child.kill();
            wait(&mut child);
            return Attempt::Overshot(entered.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let status = wait(&mut child);
    let run = env.run(name).unwrap();
    if status.success() || run.status == RunStatus::Finished {
        return Attempt::Finished;
    }
    let reg = Registry::open_existing(&env.registry_path(name))
        .unwrap()
        .unwrap();
    let stage = run.stage.clone().unwrap_or_default();
    let checkpoints = reg
        .checkpoints(&run.id)
        .unwrap()
        .iter()
        .filter(|c| c.stage == stage && !c.is_final)
        .count();
    Attempt::Killed(Box::new(run), Hit { stage, checkpoints })
}

/// Names of files under `dir` that a write left half-done (`.NAME.tmp-PID-N`).
fn temp_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(temp_files(&path));
        } else if e.file_name().to_string_lossy().contains(".tmp-") {
            out.push(path.display().to_string());
        }
    }
    out
}

fn assert_same(reference: &[String], resumed: &[String], what: &str) {
    let first = reference
        .iter()
        .zip(resumed)
        .find(|(a, b)| a != b)
        .map(|(a, b)| format!("{a} vs {b}"));
    assert_eq!(first, None, "{what}: the resumed run drifted");
    assert_eq!(reference.len(), resumed.len(), "{what}: other entries");
}

#[test]
fn runs_killed_at_random_points_of_every_stage_resume_exactly() {
    let env = Env::new();
    let (reference, windows) = reference(&env);
    let trials = env_number("BEATLAB_KILL9_TRIALS", 8);
    let mut rng = Rng(env_number("BEATLAB_KILL9_SEED", 1));
    let mut hit_kinds = BTreeMap::new();
    eprintln!("stage windows of the reference run: {windows:?}");
    for trial in 0..trials {
        let stage = STAGES[trial as usize % STAGES.len()];
        // Anywhere in the stage but its very end, where the run may finish before the signal;
        // a run that leaves the stage early is tried again, aiming inside the time it took.
        let mut window = windows[stage];
        let mut attempt = 0;
        let (delay, run, hit) = loop {
            let delay = window.mul_f64(0.9 * rng.unit());
            let name = format!("trial{trial}-{attempt}");
            match kill_inside(&env, &name, stage, delay) {
                Attempt::Killed(run, hit) => break (delay, run, hit),
                Attempt::Finished => {
                    eprintln!("trial {trial}: {stage} +{delay:?}: finished before the kill");
                }
                Attempt::Overshot(took) => {
                    eprintln!("trial {trial}: {stage} +{delay:?}: left `{stage}` after {took:?}");
                    window = took;
                }
            }
            attempt += 1;
            assert!(
                attempt < 5,
                "trial {trial}: no kill inside `{stage}` in 5 attempts"
            );
        };
        let name = format!("trial{trial}-{attempt}");
        eprintln!(
            "trial {trial}: {stage} +{delay:?}: killed in `{}` with {} of its checkpoints kept",
            hit.stage, hit.checkpoints
        );
        // The killed worker's lease (1 s) runs out before `resume` may take the run.
        std::thread::sleep(Duration::from_millis(1200));
        env.resume(&name, &run.id);
        assert_same(
            &reference,
            &env.results(&name),
            &format!("trial {trial} (killed in `{}`)", hit.stage),
        );
        let left = temp_files(Path::new(&run.run_dir));
        assert!(
            left.is_empty(),
            "trial {trial}: temporary files left: {left:?}"
        );
        *hit_kinds.entry(hit.stage).or_insert(0) += 1;
    }
    eprintln!("interrupted per stage: {hit_kinds:?}");
    for stage in STAGES {
        assert!(
            hit_kinds.contains_key(stage),
            "no trial interrupted `{stage}`: {hit_kinds:?}"
        );
    }
}

#[test]
fn a_corrupt_or_deleted_newest_checkpoint_falls_back_to_the_one_before() {
    let env = Env::new();
    let (reference, _) = reference(&env);
    for (name, damage) in [("corrupt", true), ("deleted", false)] {
        // Killed inside `warmup` once it has two checkpoints there.
        let mut child = env.spawn_run(name);
        let reg_path = env.registry_path(name);
        let run = loop {
            assert!(child.try_wait().unwrap().is_none(), "{name}: ended early");
            let two = Registry::open_existing(&reg_path)
                .ok()
                .flatten()
                .and_then(|reg| {
                    let run = reg.runs(None, None).ok()?.into_iter().next()?;
                    let n = reg
                        .checkpoints(&run.id)
                        .ok()?
                        .iter()
                        .filter(|c| c.stage == "warmup" && !c.is_final)
                        .count();
                    (n >= 2).then_some(run)
                });
            if let Some(run) = two {
                break run;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let _ = child.kill();
        wait(&mut child);
        let reg = Registry::open_existing(&reg_path).unwrap().unwrap();
        let newest = reg
            .checkpoints(&run.id)
            .unwrap()
            .into_iter()
            .filter(|c| c.stage == "warmup" && !c.is_final)
            .max_by_key(|c| c.step)
            .unwrap();
        if damage {
            let mut bytes = std::fs::read(&newest.path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x10;
            std::fs::write(&newest.path, bytes).unwrap();
        } else {
            std::fs::remove_file(&newest.path).unwrap();
        }
        std::thread::sleep(Duration::from_millis(1200));
        env.resume(name, &run.id);
        assert_same(&reference, &env.results(name), name);
        let log = std::fs::read_to_string(Path::new(&run.run_dir).join("log.txt")).unwrap();
        assert!(
            log.contains(&format!(
                "warmup: the checkpoint of step {} is unusable",
                newest.step
            )) && log.contains("falling back to the checkpoint of step"),
            "{name}: the log does not say it fell back:\n{log}"
        );
        let fallback: Vec<_> = reg
            .metrics(&run.id)
            .unwrap()
            .into_iter()
            .filter(|m| m.key == beatlab::runner::CHECKPOINT_FALLBACK)
            .collect();
        assert_eq!(fallback.len(), 1, "{name}: one fall-back recorded");
        assert_eq!(fallback[0].step, newest.step);
        assert!(fallback[0].value < newest.step as f64);
        assert_eq!(
            Path::new(&format!("{}.corrupt", newest.path)).is_file(),
            damage,
            "{name}: a damaged file is kept aside for inspection"
        );
    }
}
