//! Where the binary writes: output paths a user names (never renamed over a symlink or device,
//! issue #14.1) and standard output that is closed or full (no panic, issue #14.10).

#[allow(dead_code)]
mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Stdio};

use beatlab::registry::Registry;
use common::{beatlab, stderr};

/// A two-lead WFDB record of one flat second (all samples 0, so checksums are 0) in `dir`.
fn flat_record(dir: &Path) -> std::path::PathBuf {
    std::fs::write(dir.join("flat.dat"), vec![0u8; 2 * 2 * 500]).unwrap();
    let header = "flat 2 500 500\n\
                  flat.dat 16 200/mV 16 0 0 0 0 I\n\
                  flat.dat 16 200/mV 16 0 0 0 0 II\n";
    std::fs::write(dir.join("flat.hea"), header).unwrap();
    dir.join("flat.hea")
}

const PNG_MAGIC: &[u8] = b"\x89PNG";

#[test]
fn render_writes_through_a_symlink_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let record = flat_record(dir.path());
    std::fs::write(dir.path().join("real.png"), b"old").unwrap();
    std::os::unix::fs::symlink("real.png", dir.path().join("out.png")).unwrap();
    let out = beatlab(
        dir.path(),
        &["data", "render", record.to_str().unwrap(), "-o", "out.png"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let link = std::fs::symlink_metadata(dir.path().join("out.png")).unwrap();
    assert!(link.file_type().is_symlink(), "the link was replaced");
    let png = std::fs::read(dir.path().join("real.png")).unwrap();
    assert!(png.starts_with(PNG_MAGIC));
}

#[test]
fn render_writes_through_a_device_and_refuses_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let record = flat_record(dir.path());
    let out = beatlab(
        dir.path(),
        &[
            "data",
            "render",
            record.to_str().unwrap(),
            "-o",
            "/dev/null",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let meta = std::fs::metadata("/dev/null").unwrap();
    assert!(meta.file_type().is_char_device(), "/dev/null was replaced");

    std::fs::create_dir(dir.path().join("folder")).unwrap();
    let out = beatlab(
        dir.path(),
        &["data", "render", record.to_str().unwrap(), "-o", "folder"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("folder is a folder; refusing to replace it"),
        "{}",
        stderr(&out)
    );
    assert!(dir.path().join("folder").is_dir());
}

/// Runs the binary with its standard output closed before it writes anything.
fn with_stdout_closed(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_beatlab"))
        .current_dir(dir)
        .env("BEATLAB_REGISTRY", dir.join("reg.db"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_stdout_stops_quietly_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/table18_beat_fast.toml");
    for args in [vec!["reference"], vec!["plan", spec.to_str().unwrap()]] {
        let out = with_stdout_closed(dir.path(), &args);
        assert!(
            !stderr(&out).contains("panicked"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn a_full_stdout_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_beatlab"))
        .current_dir(dir.path())
        .arg("reference")
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error: writing to standard output: No space left on device"),
        "{}",
        stderr(&out)
    );
}

/// A Beat-only run on the toy data of `tests/common`: its data cache (~750 KB) fits in
/// [`SMALL_FS`], its first checkpoint (~580 KB with the optimiser state) does not.
fn full_disk_spec() -> String {
    format!(
        "[experiment]\nname = \"full\"\n{}\n[[stage]]\nname = \"beat\"\nkind = \"beat\"\n\
         epochs = 3\nbatch = 8\ncheckpoint_every = 0\ncheckpoint_every_steps = 3\n",
        common::TOY_MULTIMODAL
    )
}

/// The size of the file system the disk-full test runs on.
const SMALL_FS: &str = "1100k";

/// A tmpfs mounted over a folder for one test, unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// `None` (the test is skipped) where mounting is not allowed (not root) outside CI; in CI
    /// (`CI` or `BEATLAB_TEST_SETUP` set, as root) a failed mount fails the test.
    fn mount() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={SMALL_FS}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { dir }),
            other => {
                let why = format!("cannot mount a {SMALL_FS} tmpfs (needs root): {other:?}");
                let ci = ["CI", "BEATLAB_TEST_SETUP"]
                    .iter()
                    .any(|v| std::env::var_os(v).is_some());
                assert!(!ci, "{why}");
                eprintln!("skipping the disk-full test: {why}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.path()).status();
    }
}

/// Every file under `dir`, as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

/// Disk full during a checkpoint write (issue #14.13): the run fails with the OS's error
/// naming the checkpoint, no temporary file is left, the registry still opens and records the
/// failure; once there is room, `resume` finishes it with the results of an uninterrupted run.
#[test]
fn a_full_disk_fails_the_run_cleanly_and_resume_finishes_it() {
    let Some(fs) = SmallFs::mount() else {
        return;
    };
    let dir = fs.path().join("a");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("spec.toml"), full_disk_spec()).unwrap();
    let out = beatlab(&dir, &["run", "spec.toml", "--quiet"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("beat-00000003.safetensors: No space left on device"),
        "{err}"
    );
    let files = files_under(&dir);
    assert!(
        files.iter().all(|f| !f.contains(".tmp-")),
        "a temporary file was left: {files:?}"
    );
    let (_, run) = common::only_run(&dir);
    assert_eq!(run.status, beatlab::registry::RunStatus::Failed);
    assert!(
        run.error
            .as_deref()
            .is_some_and(|e| e.contains("No space left on device")),
        "{:?}",
        run.error
    );

    fs.resize("16m");
    let out = beatlab(&dir, &["resume", &run.id, "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (reg, resumed) = common::only_run(&dir);
    assert_eq!(resumed.status, beatlab::registry::RunStatus::Finished);

    let clean = fs.path().join("b");
    std::fs::create_dir(&clean).unwrap();
    std::fs::write(clean.join("spec.toml"), full_disk_spec()).unwrap();
    let out = beatlab(&clean, &["run", "spec.toml", "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (clean_reg, clean_run) = common::only_run(&clean);
    let summaries = reg.summaries(&resumed.id).unwrap();
    assert!(summaries.contains_key("beat/test/loss"), "{summaries:?}");
    assert_eq!(summaries, clean_reg.summaries(&clean_run.id).unwrap());
}

/// The binary in `dir` with the registry at `registry`.
fn beatlab_with_registry(dir: &Path, registry: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_beatlab"));
    command
        .current_dir(dir)
        .env("BEATLAB_REGISTRY", registry)
        .env("BEATLAB_RUNS_DIR", dir.join("runs"))
        .args(args);
    command
}

/// A Beat-only run long enough (48 steps, a checkpoint every 3) that the disk can be filled
/// while it trains.
fn long_spec() -> String {
    full_disk_spec().replace("epochs = 3", "epochs = 12")
}

/// Waits until a file named `name` exists somewhere under `dir`.
fn wait_for_file(dir: &Path, name: &str, child: &mut std::process::Child) {
    let start = std::time::Instant::now();
    while !files_under(dir).iter().any(|f| f.ends_with(name)) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before writing {name}"
        );
        assert!(start.elapsed().as_secs() < 120, "no {name} after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// The run's metric points (none measures time), by key and step.
fn deterministic_metrics(reg: &Registry, id: &str) -> Vec<(String, i64, f64)> {
    let mut m: Vec<_> = reg
        .metrics(id)
        .unwrap()
        .into_iter()
        .map(|p| (p.key, p.step, p.value))
        .collect();
    m.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    m
}

/// Disk full at a registry write (issue #14, the disk-full test): the registry alone is on a
/// small file system, filled up while the run trains (once its first checkpoint is written).
/// The run stops with an error naming the registry, the run and the OS's reason (exit 1, no
/// panic); once there is room the registry checks clean, and running again takes the run over
/// from its checkpoint (its holder is dead) and finishes it with the results and metric points
/// of an uninterrupted run.
#[test]
fn a_full_disk_at_a_registry_write_stops_cleanly_and_the_run_resumes() {
    let Some(fs) = SmallFs::mount() else {
        return;
    };
    fs.resize("8m");
    let dir = tempfile::tempdir().unwrap();
    let registry = fs.path().join("reg.db");
    std::fs::write(dir.path().join("spec.toml"), long_spec()).unwrap();
    let mut child = beatlab_with_registry(dir.path(), &registry, &["run", "spec.toml", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_file(dir.path(), "beat-00000003.safetensors", &mut child);
    // Every block the file system has left goes to the filler: the write stops at ENOSPC.
    let filler = fs.path().join("filler");
    let full = std::fs::write(&filler, vec![0u8; 8 << 20]);
    assert!(
        full.is_err(),
        "the filler fitted: the file system is not full"
    );
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("database or disk is full"), "{err}");
    assert!(err.contains(&registry.display().to_string()), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let log = files_under(&dir.path().join("runs"))
        .into_iter()
        .find(|f| f.ends_with("log.txt"))
        .unwrap();
    let log = std::fs::read_to_string(dir.path().join("runs").join(log)).unwrap();
    assert!(log.contains("database or disk is full"), "{log}");

    std::fs::remove_file(&filler).unwrap();
    let out = beatlab_with_registry(dir.path(), &registry, &["registry", "check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout)
    );
    let out = beatlab_with_registry(dir.path(), &registry, &["run", "spec.toml", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let reg = Registry::open_existing(&registry).unwrap().unwrap();
    let runs = reg.runs(None, None).unwrap();
    assert_eq!(runs.len(), 1, "the run was taken over, not started again");
    assert_eq!(runs[0].status, beatlab::registry::RunStatus::Finished);
    assert_eq!(runs[0].attempt, 2, "{:?}", runs[0]);

    let clean = tempfile::tempdir().unwrap();
    std::fs::write(clean.path().join("spec.toml"), long_spec()).unwrap();
    let out = beatlab(clean.path(), &["run", "spec.toml", "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (clean_reg, clean_run) = common::only_run(clean.path());
    let summaries = reg.summaries(&runs[0].id).unwrap();
    assert!(summaries.contains_key("beat/test/loss"), "{summaries:?}");
    assert_eq!(summaries, clean_reg.summaries(&clean_run.id).unwrap());
    assert_eq!(
        deterministic_metrics(&reg, &runs[0].id),
        deterministic_metrics(&clean_reg, &clean_run.id),
        "a metric point was lost or changed"
    );
}
