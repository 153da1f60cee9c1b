//! Exact resume inside the multimodal training stages: a run killed (SIGKILL) right after a
//! mid-epoch checkpoint of its `warmup` or `joint` stage and then resumed ends with exactly the
//! summaries and metric points of an uninterrupted run (LoRA dropout on, so the dropout masks
//! must continue where they were, too).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use beatlab::registry::{Registry, RunStatus};

// Only the toy spec is shared; the runner here keeps several registries in one folder.
#[allow(dead_code)]
mod common;
use common::TOY_MULTIMODAL;

/// Beat, warm-up and joint each long enough to be cut off after a step checkpoint.
fn spec() -> String {
    format!(
        r#"
[experiment]
name = "resume"

{TOY_MULTIMODAL}
[backbone.lora]
rank = 4
alpha = 8
dropout = 0.2

[[stage]]
name = "beat"
kind = "beat"
epochs = 1
batch = 8

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
checkpoint_every_steps = 3
"#
    )
}

fn beatlab(dir: &Path, registry: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_beatlab"));
    cmd.current_dir(dir)
        .env("BEATLAB_REGISTRY", dir.join(registry))
        .env("BEATLAB_RUNS_DIR", dir.join(format!("runs-{registry}")))
        .args(args);
    cmd
}

fn ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every summary and metric point (key, step, value) of the registry's only run.
fn results(dir: &Path, registry: &str) -> (Vec<String>, RunStatus) {
    let reg = Registry::open_existing(&dir.join(registry))
        .unwrap()
        .unwrap();
    let run = reg.runs(None, None).unwrap().remove(0);
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
            .map(|m| format!("metric {} @{} = {:?}", m.key, m.step, m.value)),
    );
    (lines, run.status)
}

/// Runs the spec into `registry`, SIGKILLs it once `stage` has a mid-stage checkpoint, and
/// returns the run id.
fn kill_in_stage(dir: &Path, registry: &str, stage: &str) -> String {
    let mut child = beatlab(
        dir,
        registry,
        &["run", "spec.toml", "--lease", "1", "--quiet"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let started = Instant::now();
    let run_id = loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before `{stage}` checkpointed"
        );
        assert!(started.elapsed() < Duration::from_secs(300), "timed out");
        let found = Registry::open_existing(&dir.join(registry))
            .ok()
            .flatten()
            .and_then(|reg| {
                let run = reg.runs(None, None).ok()?.into_iter().next()?;
                let ckpts = reg.checkpoints(&run.id).ok()?;
                ckpts
                    .iter()
                    .any(|c| c.stage == stage && !c.is_final)
                    .then_some(run.id)
            });
        if let Some(id) = found {
            break id;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_secs_f64(1.5));
    run_id
}

/// The run folder of the registry's only run.
fn run_dir(dir: &Path, registry: &str) -> std::path::PathBuf {
    let reg = Registry::open_existing(&dir.join(registry))
        .unwrap()
        .unwrap();
    reg.runs(None, None).unwrap().remove(0).run_dir.into()
}

#[test]
fn runs_killed_inside_warmup_and_joint_resume_onto_the_same_trajectory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), spec()).unwrap();
    ok(&mut beatlab(
        dir.path(),
        "whole.db",
        &["run", "spec.toml", "--quiet"],
    ));
    let (whole, status) = results(dir.path(), "whole.db");
    assert_eq!(status, RunStatus::Finished);
    for stage in ["warmup", "joint"] {
        let registry = format!("{stage}.db");
        let run_id = kill_in_stage(dir.path(), &registry, stage);
        ok(&mut beatlab(
            dir.path(),
            &registry,
            &["resume", &run_id, "--quiet"],
        ));
        let log = std::fs::read_to_string(run_dir(dir.path(), &registry).join("log.txt")).unwrap();
        assert!(
            log.contains("tokenizer.json (kept from earlier)"),
            "the resumed attempt reuses the run's tokenizer:\n{log}"
        );
        let (resumed, status) = results(dir.path(), &registry);
        assert_eq!(status, RunStatus::Finished);
        let first_difference = whole
            .iter()
            .zip(&resumed)
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("{a} vs {b}"));
        assert_eq!(
            first_difference, None,
            "killed in `{stage}`: the resumed run drifted"
        );
        assert_eq!(whole.len(), resumed.len(), "killed in `{stage}`");
    }
}

/// A resumed run whose tokenizer file no longer is the one its checkpoints were trained with
/// fails with the reason instead of training embeddings against other token ids.
#[test]
fn a_replaced_tokenizer_is_refused_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), spec()).unwrap();
    let run_id = kill_in_stage(dir.path(), "t.db", "joint");
    let path = run_dir(dir.path(), "t.db").join("tokenizer.json");
    // The same tokenizer written out differently: other bytes, so another file than recorded.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let out = beatlab(dir.path(), "t.db", &["resume", &run_id, "--quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("written with tokenizer sha256"), "{stderr}");
}
