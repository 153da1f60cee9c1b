//! The peer systems' experiments (issue #12.3-4): `experiments/gem_grounding.toml` and
//! `experiments/anyecg_flexible.toml` plan their grids, and one cell of each, shrunk to toy size
//! with `--set`, runs end to end through the binary (GEM: a trained ECG ViT and grounded items;
//! anyECG-chat: chunked 2-lead recordings with localization and multi-ECG items) and records
//! the peer metrics, every one of them declared.

use std::path::{Path, PathBuf};

use beatlab::spec::{self, Overrides};

#[allow(dead_code)]
mod common;
use common::{beatlab, only_run, stderr};

fn experiment(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("experiments")
        .join(format!("{name}.toml"))
}

fn cells(name: &str) -> Vec<String> {
    let plan = spec::load(&experiment(name), &Overrides::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .plan()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    plan.cells.iter().map(|c| c.label()).collect()
}

#[test]
fn both_experiments_plan_their_grids() {
    let gem = cells("gem_grounding");
    assert_eq!(gem.len(), 3, "{gem:?}");
    let any = cells("anyecg_flexible");
    assert_eq!(any.len(), 6, "{any:?}");
    assert!(any.iter().any(|c| c.contains("signal.leads=1")), "{any:?}");
}

/// Toy sizes for either experiment: few short records, small models, one step per stage.
const TOY: [&str; 22] = [
    "data.synthetic_records=24",
    "data.val_fraction=0.2",
    "data.test_fraction=0.25",
    "beat.width=32",
    "beat.head_dim=8",
    "beat.depth=1",
    "beat.decoder_depth=1",
    "beat.codebook_size=16",
    "vit.width=16",
    "vit.depth=1",
    "vit.head_dim=8",
    "backbone.hidden_size=32",
    "backbone.vocab_size=400",
    "backbone.layers=1",
    "backbone.lora.rank=4",
    "eval.max_items=3",
    "eval.max_new_tokens=24",
    "stage.beat.enabled=false",
    "stage.warmup.steps=1",
    "stage.joint.steps=2",
    "stage.warmup.batch=4",
    "stage.joint.batch=4",
];

fn run_one(name: &str, extra: &[&str]) -> std::collections::BTreeMap<String, f64> {
    let dir = tempfile::tempdir().unwrap();
    let path = experiment(name);
    let mut args = vec!["run", path.to_str().unwrap(), "--quiet"];
    for set in TOY.iter().chain(extra) {
        args.push("--set");
        args.push(set);
    }
    let out = beatlab(dir.path(), &args);
    assert!(out.status.success(), "{name}: {}", stderr(&out));
    let (reg, run) = only_run(dir.path());
    let summaries: std::collections::BTreeMap<String, f64> =
        reg.summaries(&run.id).unwrap().into_iter().collect();
    let spec_text = std::fs::read_to_string(Path::new(&run.run_dir).join("spec.toml")).unwrap();
    let spec: beatlab::spec::Spec = toml::from_str(&spec_text).unwrap();
    let declared = beatlab::stages::catalog::table_metrics(&spec);
    for key in summaries.keys() {
        assert!(
            declared.contains(key),
            "`{key}` is recorded but not declared"
        );
    }
    summaries
}

#[test]
fn a_gem_cell_with_a_trained_vit_runs_and_scores_grounding() {
    let s = run_one(
        "gem_grounding",
        &[
            "signal.encoder=vit",
            r#"stage.joint.train=["projector","lora","backbone","ecg_vit"]"#,
            "data.synthetic_duration_s=6",
            "beat.input_len=500",
            "beat.predict_len=250",
        ],
    );
    for key in [
        "eval/grounded/lead_coverage",
        "eval/grounded/lead_accuracy",
        "eval/grounded/rouge_l",
        "eval/closed_qa/acc",
        "joint/val/loss",
    ] {
        let v = s.get(key).unwrap_or_else(|| panic!("{key} missing: {s:?}"));
        assert!(v.is_finite(), "{key} = {v}");
    }
    assert!((0.0..=1.0).contains(&s["eval/grounded/lead_coverage"]));
}

#[test]
fn an_anyecg_cell_with_chunked_two_lead_recordings_runs_and_scores_localization() {
    let s = run_one(
        "anyecg_flexible",
        &[
            "signal.chunks=3",
            "signal.leads=2",
            "data.synthetic_duration_s=6",
            "instructions.multi_ecg_max=3",
        ],
    );
    for key in [
        "eval/localization/iou",
        "eval/localization/unparsable",
        "eval/multi_ecg/acc",
        "joint/val/loss",
    ] {
        let v = s.get(key).unwrap_or_else(|| panic!("{key} missing: {s:?}"));
        assert!(v.is_finite(), "{key} = {v}");
    }
    assert!((0.0..=1.0).contains(&s["eval/localization/iou"]));
}
