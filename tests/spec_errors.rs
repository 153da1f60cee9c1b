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

/// `plan --count` counts a 10^12-cell grid without expanding it; without `--count` the grid is
/// over the cell limit: a spec error naming `[sweep]` with its line, exit 2, before the registry
/// is opened; a higher `--max-cells` lets a grid over the default limit through.
#[test]
fn huge_grids_are_counted_not_expanded_and_refused_over_the_cell_limit() {
    let dir = tempfile::tempdir().unwrap();
    let spec = std::env::current_dir()
        .unwrap()
        .join("tests/specs/bad/sweep_too_many_cells.toml");
    let beatlab = |args: &[&str]| beatlab_on(dir.path(), args, &spec);
    let out = beatlab(&["plan", "--count"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1000000000000\n");

    let out = beatlab(&["plan"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sweep_too_many_cells.toml:9:1: `sweep`: the sweep has 1,000,000,000,000 cells, more than the limit of 10,000"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing written"
    );

    // The same refusal for the commands that run cells, with the limit given.
    let out = beatlab(&["run", "--max-cells", "999999999999"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("more than the limit of 999,999,999,999")
    );
}

/// A grid over the default limit is listed in full when the limit is raised.
#[test]
fn a_raised_cell_limit_lists_the_whole_grid() {
    let dir = tempfile::tempdir().unwrap();
    let values = |from: u32, n: u32| {
        (from..from + n)
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let spec = dir.path().join("grid.toml");
    std::fs::write(
        &spec,
        format!(
            "[experiment]\nname = \"g\"\n[sweep]\nbeat.codebook_size = [{}]\nbeat.width = [{}]\n",
            values(256, 101),
            values(64, 100)
        ),
    )
    .unwrap();
    let plan = |args: &[&str]| beatlab_on(dir.path(), &[&["plan"], args].concat(), &spec);
    assert_eq!(plan(&[]).status.code(), Some(2));
    let out = plan(&["--max-cells", "10100", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let cells: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cells.len(), 10_100);
    assert_eq!(cells[10_099]["index"], 10_099);
    assert_eq!(cells[10_099]["overrides"]["beat.codebook_size"], 356);
    assert_eq!(cells[10_099]["overrides"]["beat.width"], 163);
    let hashes: std::collections::BTreeSet<_> =
        cells.iter().map(|c| c["hash"].as_str().unwrap()).collect();
    assert_eq!(hashes.len(), 10_100, "every cell has its own hash");
}

/// Runs the binary in `dir` with `args` then `spec`, with the default cell limit.
fn beatlab_on(dir: &Path, args: &[&str], spec: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_beatlab"))
        .args(args)
        .arg(spec)
        .current_dir(dir)
        .env_remove("BEATLAB_MAX_CELLS")
        .output()
        .unwrap()
}
