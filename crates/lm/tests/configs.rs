//! Real Hugging Face `config.json` files (as published for Qwen2.5-7B-Instruct,
//! Phi-3-mini-4k-instruct and siglip-so400m-patch14-384) parse, and the sizes derived from them
//! are those of the published architectures.

use std::path::Path;

use beatlab_lm::{Architecture, BackboneConfig, LmError, SiglipVisionConfig};

const QWEN25_7B: &str = r#"{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "hidden_act": "silu",
  "hidden_size": 3584,
  "initializer_range": 0.02,
  "intermediate_size": 18944,
  "max_position_embeddings": 32768,
  "max_window_layers": 28,
  "model_type": "qwen2",
  "num_attention_heads": 28,
  "num_hidden_layers": 28,
  "num_key_value_heads": 4,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 131072,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.1",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 152064
}"#;

const PHI3_MINI_4K: &str = r#"{
  "_name_or_path": "Phi-3-mini-4k-instruct",
  "architectures": ["Phi3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "auto_map": {
    "AutoConfig": "configuration_phi3.Phi3Config",
    "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"
  },
  "bos_token_id": 1,
  "embd_pdrop": 0.0,
  "eos_token_id": [32000, 32001, 32007],
  "hidden_act": "silu",
  "hidden_size": 3072,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "max_position_embeddings": 4096,
  "model_type": "phi3",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 32,
  "original_max_position_embeddings": 4096,
  "pad_token_id": 32000,
  "resid_pdrop": 0.0,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 10000.0,
  "sliding_window": 2047,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.2",
  "use_cache": true,
  "vocab_size": 32064
}"#;

const SIGLIP_SO400M: &str = r#"{
  "architectures": ["SiglipModel"],
  "initializer_factor": 1.0,
  "model_type": "siglip",
  "text_config": {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "model_type": "siglip_text_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 27
  },
  "torch_dtype": "float32",
  "transformers_version": "4.37.0.dev0",
  "vision_config": {
    "hidden_size": 1152,
    "image_size": 384,
    "intermediate_size": 4304,
    "model_type": "siglip_vision_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 27,
    "patch_size": 14
  }
}"#;

#[test]
fn qwen25_7b_config_parses() {
    let cfg = BackboneConfig::from_json_str(QWEN25_7B, Path::new("qwen/config.json")).unwrap();
    assert_eq!(cfg.architecture(), Architecture::Qwen2);
    assert_eq!(cfg.hidden_size(), 3584);
    assert_eq!(cfg.vocab_size(), 152064);
    let BackboneConfig::Qwen2(q) = cfg else {
        unreachable!()
    };
    assert_eq!(q.num_key_value_heads, Some(4));
    assert_eq!(q.rope_theta, 1e6);
    assert!(!q.tie_word_embeddings);
}

#[test]
fn phi3_mini_4k_config_parses() {
    let cfg = BackboneConfig::from_json_str(PHI3_MINI_4K, Path::new("phi3/config.json")).unwrap();
    assert_eq!(cfg.architecture(), Architecture::Phi3);
    assert_eq!(cfg.hidden_size(), 3072);
    assert_eq!(cfg.vocab_size(), 32064);
    let BackboneConfig::Phi3(p) = &cfg else {
        unreachable!()
    };
    assert_eq!(p.sliding_window, Some(2047));
    assert_eq!(p.rms_norm_eps, 1e-5);
    assert_eq!(
        cfg.lora_target_names(),
        &["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    );
}

#[test]
fn phi3_128k_longrope_config_is_rejected() {
    let mut v: serde_json::Value = serde_json::from_str(PHI3_MINI_4K).unwrap();
    v["rope_scaling"] =
        serde_json::json!({"type": "longrope", "short_factor": [1.0], "long_factor": [2.0]});
    match BackboneConfig::from_json_str(&v.to_string(), Path::new("phi3-128k/config.json")) {
        Err(LmError::Config { field, reason, .. }) => {
            assert_eq!(field, "rope_scaling");
            assert!(reason.contains("longrope"), "{reason}");
        }
        other => panic!("expected a rope_scaling error, got {other:?}"),
    }
}

#[test]
fn siglip_so400m_config_parses() {
    let cfg =
        SiglipVisionConfig::from_json_str(SIGLIP_SO400M, Path::new("siglip/config.json")).unwrap();
    assert_eq!(cfg, SiglipVisionConfig::so400m_patch14_384());
    // 384 px in 14 px patches: 27 per side.
    assert_eq!(cfg.num_patches(), 27 * 27);
}

#[test]
fn models_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<beatlab_lm::Backbone>();
    assert_send_sync::<beatlab_lm::SiglipVision>();
    assert_send_sync::<beatlab_lm::LmTokenizer>();
    assert_send_sync::<beatlab_lm::Lora>();
}
