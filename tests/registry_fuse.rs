//! A SQLite registry on a real FUSE filesystem (a bindfs mount of a scratch folder) is refused:
//! exit code 2, an error naming the filesystem and pointing to `postgres://`, and nothing
//! written, neither the registry nor a run folder. `BEATLAB_SQLITE_NETWORK_FS=allow` lets it
//! through. Needs bindfs and /dev/fuse (scripts/test.d/25-fuse.sh installs bindfs); outside the
//! test setup (`BEATLAB_TEST_SETUP` or `CI`) a machine without them skips, saying so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[allow(dead_code)]
mod common;

/// A bindfs mount of `source` at `at`, unmounted when dropped.
struct Mount {
    at: PathBuf,
}

impl Mount {
    /// Mounts, or says why it cannot (`Err`): no /dev/fuse, no bindfs, or a refused mount.
    fn bindfs(source: &Path, at: &Path) -> Result<Mount, String> {
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse is missing (a container without the FUSE device)".into());
        }
        let out = Command::new("bindfs")
            .arg(source)
            .arg(at)
            .output()
            .map_err(|e| format!("bindfs did not start ({e}); apt-get install bindfs fuse3"))?;
        if !out.status.success() {
            return Err(format!(
                "bindfs {} {} failed: {}",
                source.display(),
                at.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Mount { at: at.into() })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        for unmount in [
            &["fusermount3", "-u"][..],
            &["fusermount", "-u"],
            &["umount"],
        ] {
            let done = Command::new(unmount[0])
                .args(&unmount[1..])
                .arg(&self.at)
                .status();
            if done.is_ok_and(|s| s.success()) {
                return;
            }
        }
        eprintln!("could not unmount {}", self.at.display());
    }
}

/// A scratch folder holding the spec, a `source/` folder and its bindfs mount `fuse/`; `None`
/// (the test skips, saying so) outside the test setup on a machine that cannot mount it.
fn fuse_scratch() -> Option<(tempfile::TempDir, Mount)> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nop.toml"), common::nop_spec(8)).unwrap();
    std::fs::create_dir(dir.path().join("source")).unwrap();
    std::fs::create_dir(dir.path().join("fuse")).unwrap();
    match Mount::bindfs(&dir.path().join("source"), &dir.path().join("fuse")) {
        Ok(mount) => Some((dir, mount)),
        Err(why) => {
            let under_setup = ["BEATLAB_TEST_SETUP", "CI"]
                .iter()
                .any(|v| std::env::var_os(v).is_some());
            assert!(!under_setup, "under the test setup: {why}");
            eprintln!("skipping the FUSE registry test: {why}");
            None
        }
    }
}

fn beatlab(dir: &Path, registry: &Path, allow: bool, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_beatlab"));
    c.current_dir(dir)
        .env_remove("BEATLAB_REGISTRY")
        .env_remove("BEATLAB_SQLITE_NETWORK_FS")
        .arg("--registry")
        .arg(registry)
        .arg("--runs-dir")
        .arg(dir.join("runs"))
        .args(args);
    if allow {
        c.env("BEATLAB_SQLITE_NETWORK_FS", "allow");
    }
    c.output().unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every file in `dir` with its bytes.
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    entries(dir)
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            (name, bytes)
        })
        .collect()
}

/// A refused command: exit code 2, an error naming the registry and the filesystem and pointing
/// to PostgreSQL.
fn assert_refused(out: &Output, registry: &Path, args: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?} {}: {err}",
        registry.display()
    );
    assert!(err.contains("FUSE"), "{args:?}: {err}");
    assert!(err.contains("postgres://"), "{args:?}: {err}");
    assert!(
        err.contains(&registry.display().to_string()),
        "{args:?}: {err}"
    );
}

#[test]
fn a_sqlite_registry_on_a_fuse_mount_is_refused_and_nothing_is_written() {
    let Some((dir, mount)) = fuse_scratch() else {
        return;
    };
    let root = dir.path();
    let source = root.join("source");
    for registry in ["reg.db", "not/yet/there/reg.db"] {
        let registry = mount.at.join(registry);
        let args = ["sweep", "nop.toml"];
        assert_refused(&beatlab(root, &registry, false, &args), &registry, &args);
        assert!(
            entries(&source).is_empty(),
            "{registry:?}: written on the mount"
        );
        assert!(
            !root.join("runs").exists(),
            "{registry:?}: a run folder was made"
        );
    }

    // The override: the same sweep runs, its registry on the mount.
    let registry = mount.at.join("reg.db");
    let out = beatlab(root, &registry, true, &["sweep", "nop.toml"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(entries(&source).contains(&"reg.db".to_string()));

    // Without it, an existing registry there is refused too, read or written, and untouched.
    let before = contents(&source);
    let runs = entries(&root.join("runs/nop"));
    for args in [
        &["sweep", "nop.toml", "--force"][..],
        &["runs"],
        &["table", "nop.toml"],
        &["registry", "check"],
    ] {
        assert_refused(&beatlab(root, &registry, false, args), &registry, args);
        assert!(
            contents(&source) == before,
            "{args:?}: the registry changed"
        );
        assert_eq!(entries(&root.join("runs/nop")), runs, "{args:?}");
    }
    drop(mount);
}
