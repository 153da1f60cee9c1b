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

/// The message of a spec given as text (no `extends`).
fn error_of_text(text: &str, sets: &[&str]) -> String {
    let overrides = Overrides {
        sets: sets.iter().map(|s| s.to_string()).collect(),
        env: vec![],
    };
    match spec::load_str("x.toml", text, &overrides).and_then(|l| l.plan().map(|_| ())) {
        Ok(()) => panic!("accepted: {text:?} with {sets:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_empty_spec_lacks_its_experiment_name() {
    // Issue #14.8: an empty file and /dev/null were accepted and ran under `runs/<id>`.
    let e = error_of_text("", &[]);
    assert!(
        e.contains("`experiment.name`: missing required key `name` in [experiment]"),
        "{e}"
    );
    let e = spec::load(Path::new("/dev/null"), &Overrides::default())
        .and_then(|l| l.plan().map(|_| ()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/dev/null:1:1: `experiment.name`: missing required key"),
        "{e}"
    );
    // A spec with other sections but no [experiment] at all.
    let e = error_of_text("[beat]\ncodebook_size = 64\n", &[]);
    assert!(
        e.contains("missing required key `name` in [experiment]"),
        "{e}"
    );
}

#[test]
fn set_keeps_text_after_a_newline() {
    // Issue #14.12: `64\nbeat.width=5` was read as 64, the rest dropped without a word.
    let spec = "[experiment]\nname = \"x\"\n";
    let e = error_of_text(spec, &["beat.codebook_size=64\nbeat.width=5"]);
    assert!(
        e.contains("expected an integer") && e.contains("beat.width=5"),
        "{e}"
    );
    let loaded = spec::load_str(
        "x.toml",
        spec,
        &Overrides {
            sets: vec!["experiment.description=two\nlines".into()],
            env: vec![],
        },
    )
    .unwrap();
    assert_eq!(loaded.spec.experiment.description, "two\nlines");
}

#[test]
fn thousands_of_problems_are_counted_after_the_first_ones() {
    // Issue #14.9: 80,000 unknown keys took 102 s to report (quadratic), and listed them all.
    let n = 20_000;
    let mut text = String::from("[experiment]\nname = \"x\"\n[beat]\n");
    for i in 0..n {
        text.push_str(&format!("unknown_key_{i} = {i}\n"));
    }
    let overrides = Overrides::default();
    let err = spec::load_str("x.toml", &text, &overrides).unwrap_err();
    assert_eq!(err.diagnostics().len(), n);
    let shown = err.to_string();
    let listed = shown.lines().filter(|l| l.contains("unknown key")).count();
    assert_eq!(listed, spec::diag::MAX_LISTED);
    assert!(
        shown.ends_with(&format!(
            "... and {} more not listed (fix these first)",
            n - spec::diag::MAX_LISTED
        )),
        "{}",
        shown.lines().last().unwrap()
    );
    // Lines are still right at the end of a long file.
    assert!(
        shown.contains("x.toml:4:1: `beat.unknown_key_0`"),
        "{}",
        shown.lines().nth(1).unwrap()
    );
}
