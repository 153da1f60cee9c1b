//! Parity with candle-transformers' inference models over the same random weights: both
//! models are loaded from one safetensors file written by the test; our full-sequence logits
//! must match theirs at every position (theirs run token by token through their KV cache).

mod common;

use beatlab_lm::checkpoint::save_pretrained;
use beatlab_lm::hub::{ModelSource, load_backbone, load_siglip};
use beatlab_lm::presets::{tiny_phi3, tiny_qwen2, tiny_siglip};
use beatlab_lm::{Backbone, BackboneConfig, BuildOptions, SiglipVisionConfig};
use beatlab_nn::ParamStore;
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use common::{max_abs, max_abs_diff, perturb, random_ids};

const TOL: f32 = 1e-4;
const VOCAB: usize = 97;

/// Write a random tiny checkpoint for `config` and return the folder and our loaded model.
fn random_checkpoint(config: &BackboneConfig, seed: u64) -> (tempfile::TempDir, Backbone) {
    let store = ParamStore::new(seed);
    let dev = Device::Cpu;
    Backbone::random(config, &store, DType::F32, &dev, &BuildOptions::default()).unwrap();
    perturb(&store, seed + 1, 0.1);
    let dir = tempfile::tempdir().unwrap();
    save_pretrained(dir.path(), config, &store.tensors(), None).unwrap();
    let loaded = load_backbone(
        &ModelSource::Dir(dir.path().to_path_buf()),
        DType::F32,
        &dev,
        &BuildOptions::default(),
    )
    .unwrap();
    (dir, loaded.backbone)
}

fn their_vb(dir: &std::path::Path) -> VarBuilder<'static> {
    let file = dir.join("model.safetensors");
    // SAFETY: the test owns the file and does not modify it while mapped.
    unsafe { VarBuilder::from_mmaped_safetensors(&[file], DType::F32, &Device::Cpu).unwrap() }
}

/// Compare our `[batch, seq, vocab]` logits with a reference that returns the last position's
/// logits `[batch, 1, vocab]` for ids `[batch, t..t+1]` at offset `t`, and for the whole prefix.
fn check_all_positions(
    ours: &Tensor,
    ids: &Tensor,
    mut step: impl FnMut(&Tensor, usize) -> Tensor,
    mut reset: impl FnMut(),
) {
    let seq = ids.dim(1).unwrap();
    // The tolerance is meaningful only if the logits are not all near zero.
    assert!(
        max_abs(ours) > 100.0 * TOL,
        "logits too small: {}",
        max_abs(ours)
    );
    // Whole sequence at once: their last position.
    let last = step(ids, 0);
    let d = max_abs_diff(&ours.i((.., seq - 1..seq, ..)).unwrap(), &last);
    assert!(d < TOL, "last position differs by {d}");
    reset();
    // Token by token through their KV cache: every position.
    for t in 0..seq {
        let theirs = step(&ids.i((.., t..t + 1)).unwrap().contiguous().unwrap(), t);
        let d = max_abs_diff(&ours.i((.., t..t + 1, ..)).unwrap(), &theirs);
        assert!(d < TOL, "position {t} differs by {d}");
    }
}

fn check_qwen2(config: beatlab_lm::Qwen2Config, seed: u64) {
    let cfg = BackboneConfig::Qwen2(config);
    let (dir, ours) = random_checkpoint(&cfg, seed);
    let json = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let their_cfg: candle_transformers::models::qwen2::Config =
        serde_json::from_str(&json).unwrap();
    let mut theirs =
        candle_transformers::models::qwen2::ModelForCausalLM::new(&their_cfg, their_vb(dir.path()))
            .unwrap();
    let ids = random_ids(2, 9, VOCAB, seed + 2);
    let logits = ours.forward(&ids, None).unwrap();
    assert_eq!(logits.dims(), &[2, 9, VOCAB]);
    let theirs = std::cell::RefCell::new(&mut theirs);
    check_all_positions(
        &logits,
        &ids,
        |x, offset| theirs.borrow_mut().forward(x, offset).unwrap(),
        || theirs.borrow_mut().clear_kv_cache(),
    );
}

fn check_phi3(config: beatlab_lm::Phi3Config, seed: u64) {
    let cfg = BackboneConfig::Phi3(config);
    let (dir, ours) = random_checkpoint(&cfg, seed);
    let json = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let their_cfg: candle_transformers::models::phi3::Config = serde_json::from_str(&json).unwrap();
    let mut theirs =
        candle_transformers::models::phi3::Model::new(&their_cfg, their_vb(dir.path())).unwrap();
    let ids = random_ids(2, 9, VOCAB, seed + 2);
    let logits = ours.forward(&ids, None).unwrap();
    assert_eq!(logits.dims(), &[2, 9, VOCAB]);
    let theirs = std::cell::RefCell::new(&mut theirs);
    check_all_positions(
        &logits,
        &ids,
        |x, offset| theirs.borrow_mut().forward(x, offset).unwrap(),
        || theirs.borrow_mut().clear_kv_cache(),
    );
}

#[test]
fn qwen2_tied_gqa_matches_candle_transformers() {
    let config = tiny_qwen2(VOCAB);
    assert!(config.tie_word_embeddings);
    assert_eq!(config.num_key_value_heads, Some(2));
    check_qwen2(config, 10);
}

#[test]
fn qwen2_untied_full_heads_matches_candle_transformers() {
    let mut config = tiny_qwen2(VOCAB);
    config.tie_word_embeddings = false;
    config.num_key_value_heads = Some(4);
    config.rope_theta = 1_000_000.0;
    check_qwen2(config, 20);
}

#[test]
fn phi3_matches_candle_transformers() {
    check_phi3(tiny_phi3(VOCAB), 30);
}

#[test]
fn phi3_gqa_partial_rotary_matches_candle_transformers() {
    let mut config = tiny_phi3(VOCAB);
    config.num_key_value_heads = Some(2);
    config.partial_rotary_factor = Some(0.5);
    check_phi3(config, 40);
}

fn siglip_checkpoint(config: &SiglipVisionConfig, seed: u64) -> tempfile::TempDir {
    let store = ParamStore::new(seed);
    beatlab_lm::presets::random_siglip(
        config,
        &store,
        DType::F32,
        &Device::Cpu,
        &BuildOptions::default(),
    )
    .unwrap();
    perturb(&store, seed + 1, 0.1);
    let dir = tempfile::tempdir().unwrap();
    beatlab_lm::checkpoint::save_tensors(&store.tensors(), &dir.path().join("model.safetensors"))
        .unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.to_json_string().unwrap(),
    )
    .unwrap();
    dir
}

fn check_siglip(config: SiglipVisionConfig, seed: u64) {
    let dir = siglip_checkpoint(&config, seed);
    let ours = load_siglip(
        &ModelSource::Dir(dir.path().to_path_buf()),
        DType::F32,
        &Device::Cpu,
        &BuildOptions::default(),
    )
    .unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    let their_cfg: candle_transformers::models::siglip::VisionConfig =
        serde_json::from_value(json["vision_config"].clone()).unwrap();
    let s = config.image_size;
    let images = Tensor::rand(-1f32, 1., (2, 3, s, s), &Device::Cpu).unwrap();
    let out = ours.forward(&images).unwrap();
    let (n, h) = (config.num_patches(), config.hidden_size);
    assert_eq!(out.patches.dims(), &[2, n, h]);
    let pooled = out.pooled.unwrap();
    assert_eq!(pooled.dims(), &[2, h]);

    use candle_core::Module;
    let vb = their_vb(dir.path()).pp("vision_model");
    let with_head =
        candle_transformers::models::siglip::VisionModel::new(&their_cfg, true, vb.clone())
            .unwrap();
    let d = max_abs_diff(&pooled, &with_head.forward(&images).unwrap());
    assert!(d < TOL, "pooled features differ by {d}");
    let without_head =
        candle_transformers::models::siglip::VisionModel::new(&their_cfg, false, vb).unwrap();
    let d = max_abs_diff(&out.patches, &without_head.forward(&images).unwrap());
    assert!(d < TOL, "patch features differ by {d}");
    // The features are not trivially equal (e.g. all zero): they vary across images.
    let spread = max_abs_diff(&pooled.i(0).unwrap(), &pooled.i(1).unwrap());
    assert!(
        spread > 100.0 * TOL,
        "pooled features barely vary: {spread}"
    );
    assert!(max_abs(&out.patches) > 100.0 * TOL);
}

#[test]
fn siglip_vision_matches_candle_transformers() {
    check_siglip(tiny_siglip(), 50);
}

#[test]
fn siglip_with_leftover_pixels_matches_candle_transformers() {
    // 30 px in 7 px patches: 4 x 4 patches, the last 2 rows and columns unused (as 384 / 14).
    let mut config = tiny_siglip();
    config.image_size = 30;
    config.patch_size = 7;
    config.hidden_size = 32;
    config.num_hidden_layers = 1;
    check_siglip(config, 60);
}
