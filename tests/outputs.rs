//! Where the binary writes: output paths a user names (never renamed over a symlink or device,
//! issue #14.1) and standard output that is closed or full (no panic, issue #14.10).

#[allow(dead_code)]
mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Stdio};

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
