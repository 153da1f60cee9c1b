//! Saving and reloading parameters, and loading Hugging Face-layout checkpoint folders: plain,
//! sharded, bf16, from a hub cache, and the errors for missing or misshapen pieces.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use beatlab_lm::checkpoint::{load_store, save_pretrained, save_store, save_tensors};
use beatlab_lm::hub::{ModelSource, load_backbone, load_backbone_trainable, locate};
use beatlab_lm::{
    BackboneConfig, BackbonePreset, BuildOptions, LmError, LmTokenizer, Lora, LoraConfig, Special,
    next_token_loss,
};
use beatlab_nn::ParamStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use common::{corpus, max_abs_diff, perturb, random_ids};

fn tokenizer() -> LmTokenizer {
    LmTokenizer::train(corpus(), 300).unwrap()
}

/// A tiny random backbone of `preset` and its store.
fn tiny(preset: BackbonePreset, vocab: usize, seed: u64) -> (ParamStore, beatlab_lm::Backbone) {
    let store = ParamStore::new(seed);
    let model = preset
        .build(
            vocab,
            &store,
            DType::F32,
            &Device::Cpu,
            &BuildOptions::default(),
        )
        .unwrap();
    perturb(&store, seed + 100, 0.05);
    (store, model)
}

fn dir_source(dir: &Path) -> ModelSource {
    ModelSource::Dir(dir.to_path_buf())
}

fn load(dir: &Path) -> beatlab_lm::Result<beatlab_lm::LoadedBackbone> {
    load_backbone(
        &dir_source(dir),
        DType::F32,
        &Device::Cpu,
        &BuildOptions::default(),
    )
}

#[test]
fn full_model_saved_and_reloaded_gives_identical_logits() {
    let (store, model) = tiny(BackbonePreset::TinyPhi3, 80, 1);
    let ids = random_ids(2, 10, 80, 2);
    let mut opt = AdamW::new(
        store.vars().into_iter().map(|(_, v)| v).collect(),
        ParamsAdamW::default(),
    )
    .unwrap();
    for _ in 0..2 {
        let loss = next_token_loss(&model.forward(&ids, None).unwrap(), &ids, None).unwrap();
        opt.backward_step(&loss).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.safetensors");
    save_store(&store, &path).unwrap();
    // A different seed gives different weights until the checkpoint is loaded.
    let (other_store, other) = tiny(BackbonePreset::TinyPhi3, 80, 99);
    let expected = model.forward(&ids, None).unwrap();
    assert!(max_abs_diff(&other.forward(&ids, None).unwrap(), &expected) > 1e-3);
    load_store(&other_store, &path).unwrap();
    assert_eq!(
        max_abs_diff(&other.forward(&ids, None).unwrap(), &expected),
        0.0
    );
}

#[test]
fn lora_adapters_saved_and_reloaded_give_identical_logits() {
    let build = |lora_seed: u64| {
        let lora = Lora::new(
            LoraConfig::new(4, 8.0, 0.0, &["q_proj", "v_proj"]),
            ParamStore::new(lora_seed),
        )
        .unwrap();
        let model = BackbonePreset::TinyQwen2
            .build(
                70,
                &ParamStore::new(3),
                DType::F32,
                &Device::Cpu,
                &BuildOptions {
                    lora: Some(lora.clone()),
                    freeze_base: true,
                },
            )
            .unwrap();
        (lora, model)
    };
    let (lora, model) = build(4);
    let ids = random_ids(1, 12, 70, 5);
    let mut opt = AdamW::new(
        lora.store().vars().into_iter().map(|(_, v)| v).collect(),
        ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )
    .unwrap();
    for _ in 0..3 {
        let loss = next_token_loss(&model.forward(&ids, None).unwrap(), &ids, None).unwrap();
        opt.backward_step(&loss).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapters.safetensors");
    save_store(lora.store(), &path).unwrap();
    // Only adapter tensors are in the file.
    let saved = beatlab_lm::checkpoint::load_tensors(&path).unwrap();
    assert_eq!(saved.len(), 2 * 2 * 2);
    assert!(
        saved
            .keys()
            .all(|k| k.contains(".lora_A.") || k.contains(".lora_B."))
    );

    let (fresh_lora, fresh) = build(77);
    load_store(fresh_lora.store(), &path).unwrap();
    let expected = model.forward(&ids, None).unwrap();
    assert_eq!(
        max_abs_diff(&fresh.forward(&ids, None).unwrap(), &expected),
        0.0
    );

    // Adapters for other targets do not load silently.
    let (wrong_lora, _) = {
        let lora = Lora::new(
            LoraConfig::new(4, 8.0, 0.0, &["q_proj", "k_proj"]),
            ParamStore::new(4),
        )
        .unwrap();
        let m = BackbonePreset::TinyQwen2
            .build(
                70,
                &ParamStore::new(3),
                DType::F32,
                &Device::Cpu,
                &BuildOptions {
                    lora: Some(lora.clone()),
                    freeze_base: true,
                },
            )
            .unwrap();
        (lora, m)
    };
    assert!(matches!(
        load_store(wrong_lora.store(), &path),
        Err(LmError::Params { .. })
    ));
}

#[test]
fn hugging_face_folder_loads_with_config_weights_and_tokenizer() {
    for preset in [BackbonePreset::TinyQwen2, BackbonePreset::TinyPhi3] {
        let tok = tokenizer();
        let (store, model) = tiny(preset, tok.vocab_size(), 6);
        let dir = tempfile::tempdir().unwrap();
        save_pretrained(dir.path(), model.config(), &store.tensors(), Some(&tok)).unwrap();
        let loaded = load(dir.path()).unwrap();
        assert_eq!(&loaded.config, model.config());
        let ids = Tensor::new(
            tok.encode("<|user|> rhythm? <|assistant|> sinus rhythm<|end|>")
                .unwrap(),
            &Device::Cpu,
        )
        .unwrap()
        .unsqueeze(0)
        .unwrap();
        let expected = model.forward(&ids, None).unwrap();
        assert_eq!(
            max_abs_diff(&loaded.backbone.forward(&ids, None).unwrap(), &expected),
            0.0
        );
        let loaded_tok = loaded.require_tokenizer().unwrap();
        assert_eq!(loaded_tok.vocab_size(), tok.vocab_size());
        assert_eq!(
            loaded_tok.special_id(Special::End),
            tok.special_id(Special::End)
        );
        // The config is Hugging Face's: model_type and architectures are present.
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            json["model_type"],
            match preset {
                BackbonePreset::TinyQwen2 => "qwen2",
                BackbonePreset::TinyPhi3 => "phi3",
            }
        );
        assert!(json["architectures"].is_array());

        // Full fine-tuning from the folder: weights become variables with the same values.
        let trainable = ParamStore::new(0);
        let ft = load_backbone_trainable(
            &dir_source(dir.path()),
            &trainable,
            DType::F32,
            &Device::Cpu,
            &BuildOptions::default(),
        )
        .unwrap();
        assert_eq!(trainable.vars().len(), store.vars().len());
        assert_eq!(
            max_abs_diff(&ft.backbone.forward(&ids, None).unwrap(), &expected),
            0.0
        );
    }
}

#[test]
fn sharded_bf16_checkpoint_loads_and_converts() {
    let (store, model) = tiny(BackbonePreset::TinyQwen2, 90, 7);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        model.config().to_json_string().unwrap(),
    )
    .unwrap();
    // Two shards in bf16, as real checkpoints are stored, plus the index.
    let tensors = store.tensors();
    let mut shards: [BTreeMap<String, Tensor>; 2] = Default::default();
    let mut weight_map = serde_json::Map::new();
    for (k, (name, t)) in tensors.iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", k % 2 + 1);
        shards[k % 2].insert(name.clone(), t.to_dtype(DType::BF16).unwrap());
        weight_map.insert(name.clone(), serde_json::Value::String(file));
    }
    for (k, shard) in shards.iter().enumerate() {
        save_tensors(
            shard,
            &dir.path()
                .join(format!("model-0000{}-of-00002.safetensors", k + 1)),
        )
        .unwrap();
    }
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::json!({ "metadata": {}, "weight_map": weight_map }).to_string(),
    )
    .unwrap();
    let files = locate(&dir_source(dir.path())).unwrap();
    assert_eq!(files.weights.len(), 2);
    assert!(files.tokenizer.is_none());
    let loaded = load(dir.path()).unwrap();
    assert_eq!(loaded.backbone.dtype(), DType::F32);
    assert!(matches!(
        loaded.require_tokenizer(),
        Err(LmError::MissingFile { .. })
    ));
    // Same model as the bf16-rounded weights built in memory.
    let rounded: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap(),
            )
        })
        .collect();
    let reference = beatlab_lm::Backbone::new(
        model.config(),
        candle_nn::VarBuilder::from_tensors(rounded, DType::F32, &Device::Cpu),
        &BuildOptions::default(),
    )
    .unwrap();
    let ids = random_ids(1, 8, 90, 8);
    let ours = loaded.backbone.forward(&ids, None).unwrap();
    assert_eq!(
        max_abs_diff(&ours, &reference.forward(&ids, None).unwrap()),
        0.0
    );
    // And close to (not identical with) the f32 original.
    let d = max_abs_diff(&ours, &model.forward(&ids, None).unwrap());
    assert!(d > 0.0 && d < 0.05, "bf16 rounding moved logits by {d}");
}

/// Write a tiny Qwen2 folder with `edit` applied to its tensors.
fn folder_with(edit: impl FnOnce(&mut BTreeMap<String, Tensor>)) -> tempfile::TempDir {
    let (store, model) = tiny(BackbonePreset::TinyQwen2, 50, 9);
    let mut tensors = store.tensors();
    edit(&mut tensors);
    let dir = tempfile::tempdir().unwrap();
    save_pretrained(dir.path(), model.config(), &tensors, None).unwrap();
    dir
}

#[test]
fn missing_tensor_is_named() {
    let name = "model.layers.1.mlp.down_proj.weight";
    let dir = folder_with(|t| {
        t.remove(name);
    });
    match load(dir.path()).unwrap_err() {
        LmError::MissingTensor { name: n, searched } => {
            assert_eq!(n, name);
            assert_eq!(searched, vec![dir.path().join("model.safetensors")]);
        }
        other => panic!("unexpected error: {other}"),
    }
    let message = load(dir.path()).unwrap_err().to_string();
    assert!(message.contains(name), "{message}");
}

#[test]
fn misshapen_tensor_is_named_with_both_shapes() {
    let name = "model.layers.0.self_attn.k_proj.weight";
    let dir = folder_with(|t| {
        t.insert(
            name.into(),
            Tensor::zeros((16, 32), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    match load(dir.path()).unwrap_err() {
        LmError::ShapeMismatch {
            name: n,
            expected,
            found,
            ..
        } => {
            assert_eq!(n, name);
            // 2 key-value heads of 16 channels over hidden 64.
            assert_eq!(expected, vec![32, 64]);
            assert_eq!(found, vec![16, 32]);
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn integer_tensor_is_an_unsupported_dtype() {
    let name = "model.norm.weight";
    let dir = folder_with(|t| {
        t.insert(
            name.into(),
            Tensor::zeros(64, DType::U32, &Device::Cpu).unwrap(),
        );
    });
    assert!(
        matches!(load(dir.path()).unwrap_err(), LmError::UnsupportedDtype { name: n, .. } if n == name)
    );
}

#[test]
fn missing_files_and_unsupported_configs_are_clear_errors() {
    let dir = folder_with(|_| {});
    // No weights.
    std::fs::rename(
        dir.path().join("model.safetensors"),
        dir.path().join("elsewhere"),
    )
    .unwrap();
    match load(dir.path()).unwrap_err() {
        LmError::MissingFile { looked_for, .. } => {
            assert!(looked_for.ends_with("model.safetensors"))
        }
        other => panic!("unexpected error: {other}"),
    }
    // No config.
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    match load(dir.path()).unwrap_err() {
        LmError::MissingFile { looked_for, .. } => assert!(looked_for.ends_with("config.json")),
        other => panic!("unexpected error: {other}"),
    }
    // Unsupported architecture and RoPE scaling.
    let check_config = |json: serde_json::Value, field: &str| {
        let path = dir.path().join("config.json");
        std::fs::write(&path, json.to_string()).unwrap();
        match BackboneConfig::from_file(&path) {
            Err(LmError::Config {
                field: f,
                source_file,
                ..
            }) => {
                assert_eq!(f, field);
                assert_eq!(source_file.as_deref(), Some(path.as_path()));
            }
            other => panic!("expected a config error on {field}, got {other:?}"),
        }
    };
    let mut phi3: serde_json::Value = serde_json::from_str(
        &BackbonePreset::TinyPhi3
            .config(50)
            .to_json_string()
            .unwrap(),
    )
    .unwrap();
    phi3["rope_scaling"] =
        serde_json::json!({"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]});
    check_config(phi3, "rope_scaling");
    let mut llama: serde_json::Value = serde_json::from_str(
        &BackbonePreset::TinyQwen2
            .config(50)
            .to_json_string()
            .unwrap(),
    )
    .unwrap();
    llama["model_type"] = "llama".into();
    check_config(llama, "model_type");
    let mut gqa: serde_json::Value = serde_json::from_str(
        &BackbonePreset::TinyQwen2
            .config(50)
            .to_json_string()
            .unwrap(),
    )
    .unwrap();
    gqa["num_key_value_heads"] = 3.into();
    check_config(gqa, "num_key_value_heads");
    // Malformed JSON names the line.
    let path = dir.path().join("config.json");
    std::fs::write(&path, "{\n  \"model_type\": \"qwen2\",\n  oops\n}").unwrap();
    assert!(matches!(
        BackboneConfig::from_file(&path),
        Err(LmError::Json { line: 3, .. })
    ));
}

#[test]
fn hub_cache_is_searched_offline() {
    let tok = tokenizer();
    let (store, model) = tiny(BackbonePreset::TinyQwen2, tok.vocab_size(), 11);
    let cache = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.path().join("models--beatlab--tiny-qwen2");
    let snapshot = repo.join("snapshots").join(commit);
    save_pretrained(&snapshot, model.config(), &store.tensors(), Some(&tok)).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), commit).unwrap();
    let source = |id: &str, revision: Option<&str>| ModelSource::Hub {
        model_id: id.into(),
        revision: revision.map(String::from),
        allow_download: false,
        cache_dir: Some(cache.path().to_path_buf()),
    };
    let ids = random_ids(1, 6, tok.vocab_size(), 12);
    let expected = model.forward(&ids, None).unwrap();
    for revision in [None, Some(commit)] {
        let loaded = load_backbone(
            &source("beatlab/tiny-qwen2", revision),
            DType::F32,
            &Device::Cpu,
            &BuildOptions::default(),
        )
        .unwrap();
        assert_eq!(
            max_abs_diff(&loaded.backbone.forward(&ids, None).unwrap(), &expected),
            0.0
        );
        assert!(loaded.tokenizer.is_some());
    }
    match locate(&source("beatlab/not-there", None)).unwrap_err() {
        LmError::NotInCache { model_id, file, .. } => {
            assert_eq!(model_id, "beatlab/not-there");
            assert_eq!(file, "config.json");
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn siglip_folder_errors_name_the_tensor() {
    let config = beatlab_lm::presets::tiny_siglip();
    let store = ParamStore::new(13);
    beatlab_lm::presets::random_siglip(
        &config,
        &store,
        DType::F32,
        &Device::Cpu,
        &BuildOptions::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = store.tensors();
    let name = "vision_model.head.attention.in_proj_weight";
    tensors.remove(name);
    save_tensors(&tensors, &dir.path().join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.to_json_string().unwrap(),
    )
    .unwrap();
    let err = beatlab_lm::load_siglip(
        &dir_source(dir.path()),
        DType::F32,
        &Device::Cpu,
        &BuildOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, LmError::MissingTensor { name: n, .. } if n == name),
        "{err}"
    );
}
