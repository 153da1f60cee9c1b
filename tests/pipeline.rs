//! The multimodal pipeline end to end through the `beatlab` binary, at toy size: Beat, warm-up,
//! joint LoRA training and evaluation on simulated records; a disabled Beat stage; and a
//! backbone loaded from a real-layout checkpoint folder (safetensors + config.json +
//! tokenizer.json written here), including the errors for a missing folder and a missing tensor.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use beatlab::registry::RunStatus;

mod common;
use common::{TOY_MULTIMODAL, beatlab, only_run, stderr};

/// The toy pipeline: Beat, warm-up, joint LoRA training and evaluation.
fn tiny() -> String {
    format!(
        r#"
[experiment]
name = "pipe"

{TOY_MULTIMODAL}
[backbone.lora]
rank = 4
alpha = 8

[eval]
max_items = 4
max_new_tokens = 6

[[stage]]
name = "beat"
kind = "beat"
epochs = 1
batch = 8

[[stage]]
name = "warmup"
kind = "warmup"
epochs = 1
batch = 8
data_fraction = 1.0

[[stage]]
name = "joint"
kind = "joint"
epochs = 1
batch = 8
steps = 6

[[stage]]
name = "eval"
kind = "eval"
batch = 8
"#
    )
}

fn run_spec(dir: &Path, spec: &str, extra: &[&str]) -> Output {
    std::fs::write(dir.join("pipe.toml"), spec).unwrap();
    let mut args = vec!["run", "pipe.toml", "--quiet"];
    args.extend_from_slice(extra);
    beatlab(dir, &args)
}

#[test]
fn three_stages_train_and_evaluate_with_generations_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_spec(dir.path(), &tiny(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (reg, run) = only_run(dir.path());
    assert_eq!(run.status, RunStatus::Finished);
    let s = reg.summaries(&run.id).unwrap();
    for key in [
        "beat/val/loss",
        "warmup/val/loss",
        "joint/val/loss",
        "eval/accuracy",
        "eval/closed_qa/acc",
        "eval/comparison_qa/acc",
        "eval/open_qa/rouge_l",
        "eval/open_qa/token_f1",
        "eval/report/rouge_l",
        "eval/report/bleu4",
        "eval/prediction/mse",
    ] {
        let v = s
            .get(key)
            .unwrap_or_else(|| panic!("summary {key} missing: {s:?}"));
        assert!(v.is_finite(), "{key} = {v}");
    }
    assert!((0.0..=1.0).contains(&s["eval/accuracy"]));
    // Every summary a stage recorded is one its kind declares (what `[table] metrics` may name).
    let spec_text = std::fs::read_to_string(Path::new(&run.run_dir).join("spec.toml")).unwrap();
    let spec: beatlab::spec::Spec = toml::from_str(&spec_text).unwrap();
    let declared = beatlab::stages::catalog::table_metrics(&spec);
    for key in s.keys() {
        assert!(
            declared.contains(key),
            "`{key}` is recorded but not declared"
        );
    }
    // Every evaluated item's generation is kept, one JSON object per line.
    let gens =
        std::fs::read_to_string(Path::new(&run.run_dir).join("generations-eval.jsonl")).unwrap();
    assert_eq!(gens.lines().count() as f64, s["eval/items"]);
    for line in gens.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["question"].is_string() && v["reference"].is_string());
    }
    // The later stages restored what the earlier ones trained.
    let log = std::fs::read_to_string(Path::new(&run.run_dir).join("log.txt")).unwrap();
    assert!(
        log.contains("joint: restored projector.image, projector.signal from stage `warmup`"),
        "{log}"
    );
    assert!(
        log.contains("eval: restored lora, projector.image, projector.signal from stage `joint`"),
        "{log}"
    );
}

#[test]
fn a_disabled_beat_stage_leaves_the_seeded_random_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_spec(
        dir.path(),
        &tiny(),
        &[
            "--set",
            "stage.beat.enabled=false",
            "--set",
            "stage.joint.enabled=false",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (reg, run) = only_run(dir.path());
    assert!(
        reg.checkpoints(&run.id)
            .unwrap()
            .iter()
            .all(|c| c.stage != "beat")
    );
    let log = std::fs::read_to_string(Path::new(&run.run_dir).join("log.txt")).unwrap();
    assert!(log.contains("beat: disabled, skipped"), "{log}");
    assert!(log.contains("using the seeded random one, frozen"), "{log}");
    assert!(
        reg.summaries(&run.id)
            .unwrap()
            .contains_key("eval/accuracy")
    );
}

/// Writes a tiny Qwen2 checkpoint in the Hugging Face layout.
fn write_real_layout(dir: &Path) -> BTreeMap<String, candle_core::Tensor> {
    use beatlab_lm::presets::BackbonePreset;
    let corpus = [
        "the rhythm is sinus rhythm",
        "atrial fibrillation with a fast ventricular response",
        "normal ECG",
    ];
    let tok = beatlab_lm::tokenizer::LmTokenizer::train(corpus.iter().copied(), 300).unwrap();
    let config = BackbonePreset::TinyQwen2.config(tok.vocab_size());
    let store = beatlab_nn::ParamStore::new(3);
    let _model = beatlab_lm::Backbone::random(
        &config,
        &store,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
        &beatlab_lm::BuildOptions::default(),
    )
    .unwrap();
    let tensors = store.tensors();
    beatlab_lm::checkpoint::save_pretrained(dir, &config, &tensors, Some(&tok)).unwrap();
    tensors
}

#[test]
fn a_real_layout_checkpoint_folder_is_a_backbone_and_its_faults_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("qwen2-tiny");
    let tensors = write_real_layout(&weights);
    let spec = tiny().replace(
        "[backbone]\nhidden_size = 32",
        &format!(
            "[backbone]\nmodel = \"qwen2\"\nweights = \"{}\"\nhidden_size = 32",
            weights.display()
        ),
    );
    let fast = ["--set", "stage.warmup.enabled=false"];
    let out = run_spec(dir.path(), &spec, &fast);
    assert!(out.status.success(), "{}", stderr(&out));

    // A folder that does not exist is bad input: exit 2, nothing written.
    let other = tempfile::tempdir().unwrap();
    let missing = spec.replace(&weights.display().to_string(), "/nonexistent/qwen2");
    let out = run_spec(other.path(), &missing, &fast);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pipe.toml:"),
        "names the spec location: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("backbone.weights"),
        "{}",
        stderr(&out)
    );
    assert!(!other.path().join("reg.db").exists() && !other.path().join("runs").exists());

    // A checkpoint lacking a tensor fails the run with the tensor's name.
    let dropped = "model.norm.weight";
    assert!(tensors.contains_key(dropped));
    let mut partial = tensors.clone();
    partial.remove(dropped);
    let files: Vec<_> = std::fs::read_dir(&weights)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    for f in files {
        std::fs::remove_file(f).unwrap();
    }
    beatlab_lm::checkpoint::save_tensors(&partial, &weights.join("model.safetensors")).unwrap();
    let third = tempfile::tempdir().unwrap();
    let out = run_spec(third.path(), &spec, &fast);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(dropped),
        "names the missing tensor: {}",
        stderr(&out)
    );
}
