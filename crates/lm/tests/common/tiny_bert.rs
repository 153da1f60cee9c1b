//! A tiny random BERT in the Hugging Face layout, for the BERTScore tests of this crate and of
//! the `beatlab` binary (`tests/bertscore.rs` at the workspace root includes this file).

use std::collections::HashMap;

use beatlab_lm::bert::{BertConfig, BertModel};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `config.json` of a 2-layer BERT of width 32 over `vocab` tokens.
pub fn config(vocab: usize) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0
    })
}

/// Seeded random BERT weights under their Hugging Face names (with `prefix`, e.g. `bert.`).
/// Word embeddings dominate the residual stream, as in a trained BERT's lower layers, so that
/// shared words match better than unrelated ones.
pub fn weights(config: &serde_json::Value, prefix: &str, seed: u64) -> HashMap<String, Tensor> {
    let config: BertConfig = serde_json::from_value(config.clone()).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    BertModel::load(vb, &config).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vars = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let var = &vars[name];
            let (center, spread) = if name.ends_with("LayerNorm.weight") {
                (1.0, 0.2)
            } else if name.contains("word_embeddings") {
                (0.0, 2.0)
            } else {
                (0.0, 0.2)
            };
            let values: Vec<f32> = (0..var.elem_count())
                .map(|_| center + (rng.random::<f32>() - 0.5) * spread)
                .collect();
            let tensor = Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap();
            (format!("{prefix}{name}"), tensor)
        })
        .collect()
}
