//! `eval.bertscore_encoder` end to end through the `beatlab` binary: a tiny random BERT
//! checkpoint folder written here (config.json, model.safetensors with Hugging Face names,
//! vocab.txt) gives `eval/open_qa/bertscore_f1` and `eval/report/bertscore_f1`; a missing
//! folder or missing weights are bad input (exit 2) naming the field and the missing file.

use std::path::Path;
use std::process::Output;

use beatlab::registry::RunStatus;

mod common;
use common::{TOY_MULTIMODAL, beatlab, only_run, stderr};

#[path = "../crates/lm/tests/common/tiny_bert.rs"]
mod tiny_bert;

/// A toy multimodal run that only evaluates (the model stays as initialised), scoring with the
/// encoder folder `encoder`.
fn spec(encoder: &str) -> String {
    format!(
        r#"
[experiment]
name = "bert"
{TOY_MULTIMODAL}
[eval]
max_items = 3
max_new_tokens = 6
bertscore_encoder = "{encoder}"

[[stage]]
name = "eval"
kind = "eval"
batch = 8
"#
    )
}

const VOCAB: &str = "[PAD] [UNK] [CLS] [SEP] [MASK] the rhythm is sinus normal ecg atrial \
                     fibrillation heart rate bpm left bundle branch block st elevation qt \
                     interval prolonged with a and of in . , ; : ##s ##ing";

/// A tiny BERT folder: config.json, vocab.txt and (if `weights`) seeded random weights under
/// `bert.`-prefixed Hugging Face names.
fn write_encoder(dir: &Path, weights: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let vocab: Vec<&str> = VOCAB.split_whitespace().collect();
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
    let config = tiny_bert::config(vocab.len());
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    if weights {
        let tensors = tiny_bert::weights(&config, "bert.", 11);
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    }
}

fn run(dir: &Path, encoder: &str) -> Output {
    std::fs::write(dir.join("bert.toml"), spec(&encoder.replace('\\', "/"))).unwrap();
    beatlab(dir, &["run", "bert.toml", "--quiet"])
}

#[test]
fn an_encoder_folder_adds_bertscore_to_open_qa_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = dir.path().join("tiny-bert");
    write_encoder(&encoder, true);
    let out = run(dir.path(), &encoder.display().to_string());
    assert!(out.status.success(), "{}", stderr(&out));
    let (reg, run) = only_run(dir.path());
    assert_eq!(run.status, RunStatus::Finished);
    let s = reg.summaries(&run.id).unwrap();
    for task in ["open_qa", "report"] {
        for metric in ["bertscore_f1", "bertscore_precision", "bertscore_recall"] {
            let key = format!("eval/{task}/{metric}");
            let v = s
                .get(&key)
                .unwrap_or_else(|| panic!("summary {key} missing: {s:?}"));
            assert!(
                v.is_finite() && (-1.0..=1.0 + 1e-6).contains(v),
                "{key} = {v}"
            );
        }
        // Beside the existing text metrics, and split by modality like them.
        assert!(s.contains_key(&format!("eval/{task}/rouge_l")));
        assert!(
            s.keys()
                .any(|k| k.starts_with(&format!("eval/{task}/bertscore_f1_"))),
            "{s:?}"
        );
    }
    assert!(!s.contains_key("eval/closed_qa/bertscore_f1"));
    // Each open-QA and report line of the generations file carries its score.
    let gens =
        std::fs::read_to_string(Path::new(&run.run_dir).join("generations-eval.jsonl")).unwrap();
    let mut scored = 0;
    for line in gens.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let open = matches!(v["type"].as_str(), Some(t) if t.ends_with("OpenQA") || t.ends_with("ReportGeneration"));
        if v.get("bertscore_f1").is_some() {
            assert!(open, "only open-QA and reports are scored: {line}");
            scored += 1;
        }
    }
    assert!(scored > 0, "{gens}");
    let log = std::fs::read_to_string(Path::new(&run.run_dir).join("log.txt")).unwrap();
    assert!(log.contains("BERTScore encoder from"), "{log}");
}

#[test]
fn a_missing_encoder_is_bad_input_naming_the_field_and_file() {
    // A folder that does not exist: exit 2 before anything is written.
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), "/nonexistent/biomed-bert");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("bert.toml:"), "names the spec location: {err}");
    assert!(err.contains("eval.bertscore_encoder"), "{err}");
    assert!(
        err.contains("model folder not found") && err.contains("/nonexistent/biomed-bert"),
        "{err}"
    );
    assert!(!dir.path().join("reg.db").exists() && !dir.path().join("runs").exists());

    // A folder without weights: the message names model.safetensors.
    let dir = tempfile::tempdir().unwrap();
    let encoder = dir.path().join("no-weights");
    write_encoder(&encoder, false);
    let out = run(dir.path(), &encoder.display().to_string());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("eval.bertscore_encoder") && err.contains("model.safetensors"),
        "{err}"
    );
}
