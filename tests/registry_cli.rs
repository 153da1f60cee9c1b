//! The registry through the `beatlab` binary: what reading commands may not do (create,
//! migrate, take over another program's database), exit codes of bad registry input, the
//! write-ahead log folded into the file at the end of a command, `registry backup` and
//! `registry check`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[allow(dead_code)]
mod common;

use beatlab::registry::{CheckpointRow, Registry, RunStatus};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nop.toml"), common::nop_spec(2)).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs beatlab with `--registry registry` (a file name in the test folder, or an address).
    fn beatlab(&self, registry: &str, args: &[&str]) -> Output {
        let address = if registry.contains("://") {
            registry.to_string()
        } else {
            self.path(registry).to_string_lossy().into_owned()
        };
        Command::new(env!("CARGO_BIN_EXE_beatlab"))
            .current_dir(self.dir.path())
            .env_remove("BEATLAB_REGISTRY")
            .arg("--registry")
            .arg(address)
            .arg("--runs-dir")
            .arg(self.path("runs"))
            .args(args)
            .output()
            .unwrap()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

/// A SQLite file of another program: one table, no beatlab schema.
fn foreign_file(path: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::query("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO notes (text) VALUES ('mine')")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
}

#[test]
fn another_programs_database_is_refused_by_every_command_and_left_unchanged() {
    // #14.11: `beatlab runs` on a foreign SQLite file gave it beatlab's tables.
    let env = Env::new();
    let file = env.path("notes.db");
    foreign_file(&file);
    let before = std::fs::read(&file).unwrap();
    for args in [
        &["runs"][..],
        &["plan", "nop.toml"],
        &["registry", "check"],
        &["run", "nop.toml", "--quiet"],
        &["registry", "migrate"],
    ] {
        let out = env.beatlab("notes.db", args);
        assert_exit(&out, 2, &format!("{args:?}"));
        assert!(
            stderr(&out).contains("is not a beatlab registry: it holds tables (notes)"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the file was changed"
    );
    assert!(!env.path("notes.db-wal").exists());
    assert!(!env.path("runs").exists(), "nothing is written to runs/");

    std::fs::write(env.path("text.db"), "not a database at all\n").unwrap();
    let out = env.beatlab("text.db", &["runs"]);
    assert_exit(&out, 2, "a text file");
    assert!(
        stderr(&out).contains("not an SQLite database"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_registry_of_a_newer_beatlab_is_refused() {
    let env = Env::new();
    let file = env.path("reg.db");
    drop(Registry::open(&file).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(&file),
        )
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (999, 'from the future', TRUE, X'00', 0)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    });
    for args in [&["runs"][..], &["run", "nop.toml", "--quiet"]] {
        let out = env.beatlab("reg.db", args);
        assert_exit(&out, 2, &format!("{args:?}"));
        assert!(
            stderr(&out).contains("schema version 999, newer than this beatlab's"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn bad_registry_addresses_and_leases_are_bad_input() {
    let env = Env::new();
    // #14.16: `--lease 1e308` was accepted (and then overflowed the heartbeat period).
    let out = env.beatlab("reg.db", &["run", "nop.toml", "--lease", "1e308"]);
    assert_exit(&out, 2, "--lease 1e308");
    assert!(stderr(&out).contains("expected seconds from 0.2 to 604800"));
    let out = env.beatlab("mysql://me@host/db", &["runs"]);
    assert_exit(&out, 2, "an unknown scheme");
    assert!(
        stderr(&out).contains("unknown scheme `mysql://`"),
        "{}",
        stderr(&out)
    );
    // A registry path whose folder cannot be made.
    std::fs::write(env.path("file"), "").unwrap();
    let out = env.beatlab("file/reg.db", &["run", "nop.toml", "--quiet"]);
    assert_exit(&out, 2, "a registry under a file");
    assert!(!env.path("runs").exists());
}

#[test]
fn after_a_command_the_registry_file_alone_holds_everything() {
    // #14.7: all data stayed in the -wal file and a copy of the .db had no tables.
    let env = Env::new();
    let out = env.beatlab("reg.db", &["run", "nop.toml", "--quiet"]);
    assert_exit(&out, 0, "run");
    let wal = std::fs::metadata(env.path("reg.db-wal")).map_or(0, |m| m.len());
    assert_eq!(
        wal, 0,
        "the write-ahead log is folded into the file at the end"
    );
    std::fs::create_dir(env.path("copy")).unwrap();
    std::fs::copy(env.path("reg.db"), env.path("copy/reg.db")).unwrap();
    let copy = Registry::open_existing(&env.path("copy/reg.db"))
        .unwrap()
        .expect("the copy is a registry");
    let runs = copy.runs(None, None).unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r.status == RunStatus::Finished));
}

#[test]
fn reading_commands_read_a_registry_they_cannot_write() {
    // #14.11: a registry on a read-only mount could not be read at all.
    let env = Env::new();
    assert_exit(
        &env.beatlab("reg.db", &["run", "nop.toml", "--quiet"]),
        0,
        "run",
    );
    let ro = env.path("ro");
    std::fs::create_dir(&ro).unwrap();
    let mount = |args: &[&str]| {
        Command::new("mount")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    let src = env.dir.path().to_string_lossy().into_owned();
    let dst = ro.to_string_lossy().into_owned();
    if !(mount(&["--bind", &src, &dst]) && mount(&["-o", "remount,bind,ro", &dst])) {
        let _ = Command::new("umount").arg(&dst).status();
        let setup =
            std::env::var_os("CI").is_some() || std::env::var_os("BEATLAB_TEST_SETUP").is_some();
        assert!(
            !setup,
            "the test setup must allow a read-only bind mount (run as root)"
        );
        eprintln!("skipped: cannot make a read-only bind mount here (needs root)");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_beatlab"))
        .args(["--registry", &format!("{dst}/reg.db"), "runs"])
        .output()
        .unwrap();
    let _ = Command::new("umount").arg(&dst).status();
    assert_exit(&out, 0, "runs on a read-only mount");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches(" finished ")
            .count(),
        2
    );
}

#[test]
fn backup_writes_a_complete_copy_and_check_finds_missing_checkpoints() {
    let env = Env::new();
    assert_exit(
        &env.beatlab("reg.db", &["run", "nop.toml", "--quiet"]),
        0,
        "run",
    );
    // A writer keeps the registry open (its points in the write-ahead log) during the backup.
    let writer = Registry::open(&env.path("reg.db")).unwrap();
    let run = writer.runs(None, None).unwrap().remove(0);
    writer
        .log_metrics(
            &run.id,
            &[beatlab::registry::MetricPoint {
                key: "k".into(),
                step: 3,
                value: 0.5,
                time: 1.0,
            }],
        )
        .unwrap();
    let out = env.beatlab("reg.db", &["registry", "backup", "backup.db"]);
    assert_exit(&out, 0, "backup");
    let copy = Registry::open_existing(&env.path("backup.db"))
        .unwrap()
        .unwrap();
    assert_eq!(copy.runs(None, None).unwrap().len(), 2);
    assert_eq!(copy.metrics(&run.id).unwrap().len(), 1);
    drop(copy);
    let out = env.beatlab("backup.db", &["registry", "check"]);
    assert_exit(&out, 0, "check of a good registry");
    assert!(String::from_utf8_lossy(&out.stdout).contains("  ok"));

    // Backing up onto the registry itself, or into a folder, is refused.
    assert_exit(
        &env.beatlab(
            "reg.db",
            &["registry", "backup", &env.path("reg.db").to_string_lossy()],
        ),
        2,
        "onto itself",
    );
    assert_exit(
        &env.beatlab("reg.db", &["registry", "backup", "runs"]),
        2,
        "onto a folder",
    );

    writer
        .record_checkpoint(&CheckpointRow {
            run_id: run.id.clone(),
            stage: "beat".into(),
            step: 10,
            epoch: 1,
            is_final: false,
            path: env.path("gone.safetensors").to_string_lossy().into_owned(),
            sha256: "00".repeat(32),
            bytes: 10,
        })
        .unwrap();
    let out = env.beatlab("reg.db", &["registry", "check"]);
    assert_exit(&out, 1, "check with a missing checkpoint file");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("checkpoint beat step 10") && text.contains("gone.safetensors"),
        "{text}"
    );
}
