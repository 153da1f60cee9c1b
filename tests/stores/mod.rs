//! The registry stores a test can run against: always a fresh SQLite file; a fresh PostgreSQL
//! database too when `BEATLAB_TEST_POSTGRES` names a server (scripts/test.d/20-postgres.sh
//! starts one). Under the test setup (`BEATLAB_TEST_SETUP` or `CI` set) a missing server is a
//! failure, not a skip.

#![allow(dead_code)]

use std::path::Path;

use beatlab::registry::Registry;

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
    vec![("sqlite", sqlite, dir)]
}
