//! Every bad spec in `tests/specs/bad/` must be rejected with the message in its `.expected`
//! file (regenerate with `UPDATE_EXPECT=1 cargo test --test spec_errors`, then read the diff).
//!
//! Leading comment lines configure a case: `# set: key=value` adds a `--set`, `# env: NAME=value`
//! an environment variable, and `# runtime` also runs the checks `beatlab run` does before
//! training (data roots).

use std::path::{Path, PathBuf};

use beatlab::spec::{self, Overrides, SpecError};
use expect_test::expect_file;

fn bad_cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir("tests/specs/bad")
        .expect("tests/specs/bad exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    cases
}

/// Loads a case as `beatlab run` would and returns its error text.
fn error_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut overrides = Overrides::default();
    let mut runtime = false;
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        if let Some(set) = line.strip_prefix("# set: ") {
            overrides.sets.push(set.to_string());
        } else if let Some(env) = line.strip_prefix("# env: ") {
            let (k, v) = env.split_once('=').expect("env directive is NAME=value");
            overrides.env.push((k.to_string(), v.to_string()));
        } else if line.trim() == "# runtime" {
            runtime = true;
        }
    }
    let result: Result<(), SpecError> = spec::load(path, &overrides).and_then(|loaded| {
        let plan = loaded.plan()?;
        if runtime {
            loaded.check_runtime(&plan)?;
        }
        Ok(())
    });
    match result {
        Ok(()) => panic!("{} was accepted but should be rejected", path.display()),
        Err(e) => format!("{e}\n"),
    }
}

#[test]
fn bad_specs_are_rejected_with_located_messages() {
    let cases = bad_cases();
    assert!(
        cases.len() >= 25,
        "the suite should cover at least 25 bad specs"
    );
    for path in cases {
        let expected = path.with_extension("expected");
        expect_file![std::env::current_dir().unwrap().join(&expected)].assert_eq(&error_of(&path));
    }
}

#[test]
fn every_diagnostic_names_a_location_and_a_key() {
    for path in bad_cases() {
        let text = std::fs::read_to_string(&path).unwrap();
        let overrides = Overrides::default();
        if text.starts_with("# ") {
            continue; // override cases are located at the override, checked by the snapshots
        }
        if let Err(e) = spec::load(&path, &overrides).and_then(|l| l.plan().map(|_| ())) {
            for d in e.diagnostics() {
                assert!(
                    d.location.starts_with(&path.display().to_string())
                        || d.location.contains("tests/specs/bad/_bases"),
                    "{}: diagnostic without a file location: {d}",
                    path.display()
                );
                let (line, col) = {
                    let mut parts = d.location.rsplit(':');
                    (parts.nth(1).unwrap(), parts.next())
                };
                assert!(line.parse::<usize>().is_ok(), "{d}: no line number");
                let _ = col;
            }
        }
    }
}
