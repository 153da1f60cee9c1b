//! `beatlab runs --where`: the binary over a real registry file, and a parse error that points
//! at its column with exit code 2.

use std::path::Path;
use std::process::{Command, Output};

use beatlab::registry::{CellOffer, ClaimPolicy, Registry, RunStatus};
use beatlab::spec::{self, Overrides};

const SPEC: &str = r#"
[experiment]
name = "q"

[[stage]]
name = "beat"
kind = "beat"

[sweep]
beat.codebook_size = [256, 512]
beat.dvq_levels = [1, 2]
"#;

/// A registry with the four cells of [`SPEC`]: (512, DVQ) failed, the others finished with
/// `beat/val/loss` = codebook / 1000 + levels.
fn registry(dir: &Path) {
    let plan = spec::load_str("q.toml", SPEC, &Overrides::default())
        .unwrap()
        .plan()
        .unwrap();
    let reg = Registry::open(&dir.join("reg.db")).unwrap();
    reg.upsert_experiment("q", "q.toml", "").unwrap();
    let policy = ClaimPolicy {
        experiment: "q".into(),
        worker: "w".into(),
        host: "h".into(),
        device: "cpu".into(),
        code_rev: "r".into(),
        code_dirty: false,
        lease_s: 60.0,
        force_before: None,
        rerun_failed_before: None,
        experiment_dir: dir.join("runs/q"),
        max_failures: 3,
        job: None,
    };
    for c in &plan.cells {
        let offer = CellOffer {
            index: c.index as i64,
            label: c.label(),
            overrides: c.overrides_json(),
            spec_json: c.canonical.clone(),
            hash: c.hash.clone(),
            seed: 0,
        };
        let claim = reg.claim(&policy, &[offer]).unwrap().unwrap();
        let (cb, levels) = (c.spec.beat.codebook_size, c.spec.beat.dvq_levels);
        if (cb, levels) == (512, 2) {
            reg.end_run(&claim.run_id, "w", RunStatus::Failed, Some("boom"))
                .unwrap();
            continue;
        }
        let loss = f64::from(cb) / 1000.0 + f64::from(levels);
        reg.set_summaries(&claim.run_id, &[("beat/val/loss".into(), loss)])
            .unwrap();
        reg.end_run(&claim.run_id, "w", RunStatus::Finished, None)
            .unwrap();
    }
}

fn runs_where(dir: &Path, expr: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_beatlab"))
        .current_dir(dir)
        .env("BEATLAB_REGISTRY", dir.join("reg.db"))
        .args(["runs", "--json", "--where", expr])
        .output()
        .unwrap()
}

/// The cell labels of the runs a filter selects, sorted.
fn selected(dir: &Path, expr: &str) -> Vec<String> {
    let out = runs_where(dir, expr);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut labels: Vec<String> = rows
        .iter()
        .map(|r| r["cell_label"].as_str().unwrap().to_string())
        .collect();
    labels.sort();
    labels
}

#[test]
fn runs_where_filters_by_spec_fields_summaries_and_status() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    assert_eq!(
        selected(
            dir.path(),
            "beat.codebook_size = 512 and (beat/val/loss < 1.6 or status = failed)"
        ),
        [
            "beat.codebook_size=512, beat.dvq_levels=1",
            "beat.codebook_size=512, beat.dvq_levels=2"
        ]
    );
    assert_eq!(
        selected(dir.path(), "not beat.dvq_levels = 1 and status = finished"),
        ["beat.codebook_size=256, beat.dvq_levels=2"]
    );
    // A field no run has selects nothing; `error` is the failed run's text.
    assert!(selected(dir.path(), "eval/accuracy > 0").is_empty());
    assert_eq!(selected(dir.path(), "error = boom").len(), 1);
}

#[test]
fn a_bad_where_is_bad_input_with_a_caret_under_its_column() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let text = "beat.codebook_size = 512 and (status = failed";
    let out = runs_where(dir.path(), text);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "error: --where: expected `)` closing the `(` at column 30, found the end at column 46\n  {text}\n  {}^\n",
        " ".repeat(45)
    );
    assert_eq!(stderr, expected);
}
