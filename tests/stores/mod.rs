//! The registry stores a test can run against: always a fresh SQLite file; a fresh PostgreSQL
//! database too when `BEATLAB_TEST_POSTGRES` names a server (scripts/test.d/20-postgres.sh
//! starts one). Under the test setup (`BEATLAB_TEST_SETUP` or `CI` set) a missing server is a
//! failure, not a skip.

#![allow(dead_code)]

pub mod cluster;
// For tiny_beat!(), the spec section the binary's tests share.
#[path = "../common/mod.rs"]
pub mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use beatlab::registry::{CellOffer, ClaimPolicy, Registry};

/// Runs `f` with a fresh registry of each available store and a scratch folder.
pub fn each_store(f: impl Fn(&Registry, &Path)) {
    for (name, address, dir) in fresh_addresses() {
        eprintln!("store: {name}");
        let reg = Registry::open(&address).unwrap_or_else(|e| panic!("{name}: {e}"));
        f(&reg, dir.path());
    }
}

/// Fresh registry addresses, one per available store: (store name, address, scratch folder).
pub fn fresh_addresses() -> Vec<(&'static str, String, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("reg.db").to_string_lossy().into_owned();
    let mut out = vec![("sqlite", sqlite, dir)];
    if let Some(server) = postgres_server() {
        out.push((
            "postgres",
            fresh_database(&server),
            tempfile::tempdir().unwrap(),
        ));
    }
    out
}

/// The PostgreSQL server of the test setup, or `None` (saying so) outside it.
pub fn postgres_server() -> Option<String> {
    if let Ok(url) = std::env::var("BEATLAB_TEST_POSTGRES") {
        return Some(url);
    }
    let under_setup = ["BEATLAB_TEST_SETUP", "CI"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    assert!(
        !under_setup,
        "BEATLAB_TEST_POSTGRES is not set under the test setup: scripts/test.d/20-postgres.sh \
         starts the server these tests need"
    );
    eprintln!(
        "skipping the PostgreSQL store: BEATLAB_TEST_POSTGRES is not set (scripts/test.sh starts a server)"
    );
    None
}

/// A new, empty database on the server at `url` (a `postgres://.../DB` address); returns its
/// address.
pub fn fresh_database(url: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "beatlab_t{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {url}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
    });
    let (server, _db) = url.rsplit_once('/').expect("a postgres://HOST/DB address");
    format!("{server}/{name}")
}

/// `n` cells of experiment `x`, with distinct hashes.
pub fn offers(n: usize) -> Vec<CellOffer> {
    (0..n)
        .map(|i| CellOffer {
            index: i as i64,
            label: format!("cell {i}"),
            overrides: serde_json::json!({ "i": i }),
            spec_json: format!("{{\"i\":{i}}}"),
            hash: format!("{i:0>64}"),
            seed: 0,
        })
        .collect()
}

/// A claim policy of experiment `x` for `worker` on `host`, runs under `dir/x`.
pub fn policy(worker: &str, host: &str, dir: &Path) -> ClaimPolicy {
    ClaimPolicy {
        experiment: "x".into(),
        worker: worker.into(),
        host: host.into(),
        device: "cpu".into(),
        code_rev: "r".into(),
        code_dirty: false,
        lease_s: 60.0,
        force_before: None,
        rerun_failed_before: None,
        experiment_dir: dir.join("x"),
        max_failures: 3,
        job: None,
    }
}

/// Whether the test setup's Slurm cluster is up (`BEATLAB_TEST_SLURM`, from
/// scripts/test.d/30-slurm.sh, which also sets `SLURM_CONF`); `false`, saying so, outside it.
pub fn slurm_cluster() -> bool {
    if std::env::var_os("BEATLAB_TEST_SLURM").is_some() {
        return true;
    }
    let under_setup = ["BEATLAB_TEST_SETUP", "CI"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    assert!(
        !under_setup,
        "BEATLAB_TEST_SLURM is not set under the test setup: scripts/test.d/30-slurm.sh starts \
         the Slurm cluster these tests need"
    );
    eprintln!(
        "skipping: BEATLAB_TEST_SLURM is not set (scripts/test.sh starts a single-node Slurm)"
    );
    false
}
