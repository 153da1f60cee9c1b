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

/// Writes `record` as a format-16 WFDB record `name` (gain 200/mV) in `dir`.
fn write_wfdb(dir: &Path, name: &str, record: &beatlab_ecg::Record) {
    let n = record.signals[0].len();
    let digital: Vec<Vec<i16>> = record
        .signals
        .iter()
        .map(|s| s.iter().map(|&v| (v * 200.0).round() as i16).collect())
        .collect();
    let mut header = format!("{name} {} {} {n}\n", digital.len(), record.fs);
    for (lead, samples) in record.leads.iter().zip(&digital) {
        let checksum = samples.iter().fold(0i32, |a, &s| a + i32::from(s)) as u16;
        header += &format!(
            "{name}.dat 16 200 16 0 {} {checksum} 0 {lead}\n",
            samples[0]
        );
    }
    std::fs::write(dir.join(format!("{name}.hea")), header).unwrap();
    let mut bytes = Vec::with_capacity(n * digital.len() * 2);
    for t in 0..n {
        for samples in &digital {
            bytes.extend_from_slice(&samples[t].to_le_bytes());
        }
    }
    std::fs::write(dir.join(format!("{name}.dat")), bytes).unwrap();
}

/// An MIT annotation file: beats (`N`, or `V` where `ventricular`) at `times_s` at `fs`.
fn write_atr(path: &Path, fs: f64, times_s: &[f64], ventricular: &[usize]) {
    let mut bytes = Vec::new();
    let mut last = 0u64;
    for (k, &t) in times_s.iter().enumerate() {
        let sample = (t * fs).round() as u64;
        let code: u16 = if ventricular.contains(&k) { 5 } else { 1 };
        bytes.extend_from_slice(&((code << 10) | (sample - last) as u16).to_le_bytes());
        last = sample;
    }
    bytes.extend_from_slice(&[0, 0]);
    std::fs::write(path, bytes).unwrap();
}

/// A WFDB folder whose records have `.atr` beat annotations gives the run's instruction data
/// localization items answered from the annotations (V beats 4 and 5 of beats at 0.5 + k s:
/// 4.0-6.0 s); a record with only normal beats is "None found.", one without an `.atr` gets
/// none.
#[test]
fn annotated_wfdb_records_give_localization_items() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("records");
    std::fs::create_dir(&root).unwrap();
    let cfg = beatlab_ecg::synthetic::SimConfig {
        fs: 250.0,
        duration_s: 10.0,
        ..Default::default()
    };
    let records = beatlab_ecg::synthetic::generate(&cfg, 9, 7);
    let beats: Vec<f64> = (0..10).map(|k| 0.5 + f64::from(k)).collect();
    for (i, record) in records.iter().enumerate() {
        let name = format!("r{i}");
        write_wfdb(&root, &name, record);
        match i % 3 {
            0 => write_atr(&root.join(format!("{name}.atr")), 250.0, &beats, &[4, 5]),
            1 => write_atr(&root.join(format!("{name}.atr")), 250.0, &beats, &[]),
            _ => {}
        }
    }
    let spec_text = format!(
        "[experiment]\nname = \"atr\"\n[data]\nsource = \"wfdb\"\nroot = {:?}\n\
         [instructions]\nlocalization_per_record = 1\n",
        root.display().to_string()
    );
    let spec: beatlab::spec::Spec = toml::from_str(&spec_text).unwrap();
    let cache = dir.path().join("cache");
    let corpus = beatlab::stages::multimodal::Corpus::load(&spec, &cache).unwrap();
    let mut answers: Vec<(String, String)> = corpus
        .items
        .iter()
        .filter(|item| item.task() == Some(beatlab_heartcare::instruct::Task::Localization))
        .map(|item| (item.record_ids.join(","), item.answer.clone()))
        .collect();
    answers.sort();
    let expected: Vec<(String, String)> = (0..9)
        .filter(|i| i % 3 != 2)
        .map(|i| {
            let answer = if i % 3 == 0 {
                "Duration: 4.0s-6.0s"
            } else {
                "None found."
            };
            (format!("r{i}"), answer.to_string())
        })
        .collect();
    assert_eq!(answers, expected);
}
