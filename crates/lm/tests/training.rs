//! Gradients reach every trainable tensor, LoRA trains only its adapters, and training lowers
//! the loss.

mod common;

use beatlab_lm::presets::{random_siglip, tiny_siglip};
use beatlab_lm::{
    Backbone, BackbonePreset, BuildOptions, LmError, Lora, LoraConfig, next_token_loss,
};
use beatlab_nn::ParamStore;
use candle_core::{DType, Device, IndexOp, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use common::{max_abs, max_abs_diff, random_ids, snapshot};

const VOCAB: usize = 61;

fn vars(store: &ParamStore) -> Vec<Var> {
    store.vars().into_iter().map(|(_, v)| v).collect()
}

/// Names of the variables of `store` whose gradient is missing or all zero.
fn without_gradient(store: &ParamStore, loss: &Tensor) -> Vec<String> {
    let grads = loss.backward().unwrap();
    store
        .vars()
        .into_iter()
        .filter(|(_, var)| grads.get(var.as_tensor()).is_none_or(|g| max_abs(g) == 0.0))
        .map(|(name, _)| name)
        .collect()
}

fn lm_loss(model: &Backbone, ids: &Tensor) -> Tensor {
    next_token_loss(&model.forward(ids, None).unwrap(), ids, None).unwrap()
}

fn check_full_finetuning_reaches_every_tensor(preset: BackbonePreset, expected_tensors: usize) {
    let store = ParamStore::new(1);
    let model = preset
        .build(
            VOCAB,
            &store,
            DType::F32,
            &Device::Cpu,
            &BuildOptions::default(),
        )
        .unwrap();
    assert_eq!(store.vars().len(), expected_tensors);
    let ids = random_ids(2, 12, VOCAB, 3);
    let missing = without_gradient(&store, &lm_loss(&model, &ids));
    assert!(
        missing.is_empty(),
        "{preset:?}: no gradient for {missing:?}"
    );
}

#[test]
fn every_qwen2_weight_gets_a_gradient() {
    // embed (tied head) + final norm + per layer: q,k,v weight+bias, o, gate, up, down, 2 norms.
    check_full_finetuning_reaches_every_tensor(BackbonePreset::TinyQwen2, 2 + 2 * 12);
}

#[test]
fn every_phi3_weight_gets_a_gradient() {
    // embed + lm_head + final norm + per layer: qkv, o, gate_up, down, 2 norms.
    check_full_finetuning_reaches_every_tensor(BackbonePreset::TinyPhi3, 3 + 2 * 6);
}

#[test]
fn every_siglip_weight_gets_a_gradient() {
    let store = ParamStore::new(2);
    let model = random_siglip(
        &tiny_siglip(),
        &store,
        DType::F32,
        &Device::Cpu,
        &BuildOptions::default(),
    )
    .unwrap();
    // patch w+b, position, post norm (2), head: probe, in_proj w+b, out_proj (2), norm (2),
    // mlp (4); per layer: 4 projections (8), 2 norms (4), mlp (4).
    assert_eq!(store.vars().len(), 3 + 2 + 11 + 2 * 16);
    let images = Tensor::rand(-1f32, 1., (2, 3, 64, 64), &Device::Cpu).unwrap();
    let out = model.forward(&images).unwrap();
    // Random projections, so no weight sits in a symmetric spot with a zero gradient.
    let w_pooled = Tensor::randn(0f32, 1., (2, 64), &Device::Cpu).unwrap();
    let w_patches = Tensor::randn(0f32, 1., (2, 64, 64), &Device::Cpu).unwrap();
    let loss = ((out.pooled.unwrap() * w_pooled).unwrap().sum_all().unwrap()
        + (out.patches * w_patches).unwrap().sum_all().unwrap())
    .unwrap();
    let missing = without_gradient(&store, &loss);
    assert!(missing.is_empty(), "no gradient for {missing:?}");
}

fn lora_model(
    preset: BackbonePreset,
    targets: &[&str],
    dropout: f64,
) -> (ParamStore, Lora, Backbone) {
    let base = ParamStore::new(5);
    let lora = Lora::new(
        LoraConfig::new(4, 8.0, dropout, targets),
        ParamStore::new(6),
    )
    .unwrap();
    let opts = BuildOptions {
        lora: Some(lora.clone()),
        freeze_base: true,
    };
    let model = preset
        .build(VOCAB, &base, DType::F32, &Device::Cpu, &opts)
        .unwrap();
    (base, lora, model)
}

fn check_lora_gradients_and_frozen_base(preset: BackbonePreset, targets: &[&str]) {
    let (base, lora, model) = lora_model(preset, targets, 0.0);
    let adapters = lora.store().vars();
    // One A and one B per targeted linear layer, in both layers.
    assert_eq!(adapters.len(), 2 * 2 * targets.len());
    let before = snapshot(&base);
    let ids = random_ids(2, 10, VOCAB, 7);

    // B starts at zero, so the first backward reaches every B but no A (dL/dA = B^T ...).
    let grads = lm_loss(&model, &ids).backward().unwrap();
    for (name, var) in &adapters {
        let g = grads.get(var.as_tensor()).map(max_abs).unwrap_or(0.0);
        if name.ends_with("lora_B.weight") {
            assert!(g > 0.0, "{name}: B has no gradient");
        } else {
            assert_eq!(g, 0.0, "{name}: A has a gradient while B is zero");
        }
    }
    // Frozen base weights are detached: backward computes nothing for them.
    for (name, var) in base.vars() {
        assert!(
            grads.get(var.as_tensor()).is_none(),
            "{name} got a gradient"
        );
    }

    // After optimiser steps B is non-zero and A's gradient appears too.
    let mut opt = AdamW::new(
        vars(lora.store()),
        ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )
    .unwrap();
    for _ in 0..3 {
        opt.backward_step(&lm_loss(&model, &ids)).unwrap();
    }
    let missing = without_gradient(lora.store(), &lm_loss(&model, &ids));
    assert!(missing.is_empty(), "adapters without gradient: {missing:?}");
    assert_eq!(snapshot(&base), before, "base weights changed");
}

#[test]
fn lora_on_qwen2_trains_adapters_only() {
    check_lora_gradients_and_frozen_base(
        BackbonePreset::TinyQwen2,
        &[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    );
}

#[test]
fn lora_on_phi3_trains_adapters_only() {
    check_lora_gradients_and_frozen_base(
        BackbonePreset::TinyPhi3,
        &["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    );
}

#[test]
fn lora_base_in_trainable_store_stays_bit_identical_when_not_frozen() {
    // Without `freeze_base` the base weights are graph variables, but an optimiser over the
    // adapter store alone must still leave them untouched.
    let base = ParamStore::new(8);
    let lora = Lora::new(
        LoraConfig::new(2, 4.0, 0.0, &["qkv_proj"]),
        ParamStore::new(9),
    )
    .unwrap();
    let opts = BuildOptions {
        lora: Some(lora.clone()),
        freeze_base: false,
    };
    let model = BackbonePreset::TinyPhi3
        .build(VOCAB, &base, DType::F32, &Device::Cpu, &opts)
        .unwrap();
    let before = snapshot(&base);
    let ids = random_ids(2, 8, VOCAB, 10);
    let mut opt = AdamW::new(vars(lora.store()), ParamsAdamW::default()).unwrap();
    for _ in 0..4 {
        opt.backward_step(&lm_loss(&model, &ids)).unwrap();
    }
    assert_ne!(snapshot(lora.store()), {
        let fresh = ParamStore::new(9);
        let l = Lora::new(LoraConfig::new(2, 4.0, 0.0, &["qkv_proj"]), fresh.clone()).unwrap();
        BackbonePreset::TinyPhi3
            .build(
                VOCAB,
                &ParamStore::new(8),
                DType::F32,
                &Device::Cpu,
                &BuildOptions {
                    lora: Some(l),
                    freeze_base: false,
                },
            )
            .unwrap();
        snapshot(&fresh)
    });
    assert_eq!(snapshot(&base), before);
}

#[test]
fn lora_training_lowers_the_loss_on_a_toy_task() {
    // Memorise four fixed sequences (a counting pattern per row) through rank-4 adapters.
    let (_base, lora, model) = lora_model(
        BackbonePreset::TinyQwen2,
        &[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        0.05,
    );
    let rows: Vec<u32> = (0..4u32)
        .flat_map(|r| (0..16u32).map(move |t| (r * 5 + t * (r + 1)) % VOCAB as u32))
        .collect();
    let ids = Tensor::from_vec(rows, (4, 16), &Device::Cpu).unwrap();
    let mut opt = AdamW::new(
        vars(lora.store()),
        ParamsAdamW {
            lr: 2e-2,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    model.set_training(false);
    let initial = lm_loss(&model, &ids).to_scalar::<f32>().unwrap();
    model.set_training(true);
    for _ in 0..40 {
        opt.backward_step(&lm_loss(&model, &ids)).unwrap();
    }
    model.set_training(false);
    let fin = lm_loss(&model, &ids).to_scalar::<f32>().unwrap();
    // A random model is no better than chance (ln 61 = 4.1); memorising must at least halve it.
    assert!(initial > 3.5, "initial loss {initial}");
    eprintln!("LoRA toy task: loss {initial} -> {fin}");
    assert!(fin < 0.5 * initial, "loss went from {initial} to {fin}");
}

#[test]
fn merged_adapters_give_the_same_logits() {
    let (_base, lora, mut model) =
        lora_model(BackbonePreset::TinyPhi3, &["qkv_proj", "down_proj"], 0.0);
    let ids = random_ids(1, 9, VOCAB, 11);
    let mut opt = AdamW::new(
        vars(lora.store()),
        ParamsAdamW {
            lr: 5e-2,
            ..Default::default()
        },
    )
    .unwrap();
    for _ in 0..3 {
        opt.backward_step(&lm_loss(&model, &ids)).unwrap();
    }
    let before = model.forward(&ids, None).unwrap();
    model.merge_lora().unwrap();
    assert!(model.lora().is_none());
    let after = model.forward(&ids, None).unwrap();
    assert!(max_abs_diff(&before, &after) < 1e-4);
    // The adapters did change the function, so the comparison above is not vacuous.
    let (_, _, plain) = lora_model(BackbonePreset::TinyPhi3, &["qkv_proj", "down_proj"], 0.0);
    assert!(max_abs_diff(&plain.forward(&ids, None).unwrap(), &after) > 1e-3);
}

#[test]
fn lora_dropout_is_seeded_and_only_active_in_training() {
    let make = || {
        lora_model(
            BackbonePreset::TinyQwen2,
            &["q_proj", "v_proj", "down_proj"],
            0.5,
        )
    };
    let (_b1, lora1, m1) = make();
    let (_b2, _lora2, m2) = make();
    // Give B non-zero values so the adapter path (and its dropout) affects the output.
    for (_, var) in lora1.store().vars() {
        let noise = Tensor::randn(0f32, 0.5, var.shape(), &Device::Cpu).unwrap();
        var.set(&noise).unwrap();
    }
    for ((_, v1), (_, v2)) in lora1.store().vars().into_iter().zip(_lora2.store().vars()) {
        v2.set(v1.as_tensor()).unwrap();
    }
    let ids = random_ids(1, 8, VOCAB, 12);
    let a1 = m1.forward(&ids, None).unwrap();
    let a2 = m2.forward(&ids, None).unwrap();
    assert_eq!(max_abs_diff(&a1, &a2), 0.0, "same seed, same masks");
    let b1 = m1.forward(&ids, None).unwrap();
    assert!(
        max_abs_diff(&a1, &b1) > 1e-4,
        "masks must change between steps"
    );
    m1.set_training(false);
    let e1 = m1.forward(&ids, None).unwrap();
    let e2 = m1.forward(&ids, None).unwrap();
    assert_eq!(max_abs_diff(&e1, &e2), 0.0, "no dropout in evaluation");
}

#[test]
fn unknown_lora_target_is_an_error_naming_it() {
    let lora = Lora::new(
        LoraConfig::new(2, 4.0, 0.0, &["q_proj", "qkv_proj"]),
        ParamStore::new(1),
    )
    .unwrap();
    let err = BackbonePreset::TinyQwen2
        .build(
            VOCAB,
            &ParamStore::new(1),
            DType::F32,
            &Device::Cpu,
            &BuildOptions {
                lora: Some(lora),
                freeze_base: false,
            },
        )
        .unwrap_err();
    match err {
        LmError::LoraTargets {
            unmatched,
            available,
        } => {
            assert_eq!(unmatched, vec!["qkv_proj".to_string()]);
            assert!(available.contains(&"q_proj".to_string()));
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn invalid_lora_config_is_rejected() {
    let check = |cfg: LoraConfig, field: &str| match Lora::new(cfg, ParamStore::new(0)) {
        Err(LmError::Config { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected a config error on {field}, got {other:?}"),
    };
    check(LoraConfig::new(0, 1.0, 0.0, &["q_proj"]), "lora.rank");
    check(LoraConfig::new(4, 1.0, 1.0, &["q_proj"]), "lora.dropout");
    check(LoraConfig::new(4, 1.0, 0.0, &[]), "lora.targets");
}

#[test]
fn lora_adapters_start_as_identity_and_match_peft_init() {
    let (_base, lora, model) = lora_model(BackbonePreset::TinyQwen2, &["q_proj"], 0.0);
    let plain = BackbonePreset::TinyQwen2
        .build(
            VOCAB,
            &ParamStore::new(5),
            DType::F32,
            &Device::Cpu,
            &BuildOptions::default(),
        )
        .unwrap();
    let ids = random_ids(1, 6, VOCAB, 13);
    model.set_training(false);
    assert_eq!(
        max_abs_diff(
            &model.forward(&ids, None).unwrap(),
            &plain.forward(&ids, None).unwrap()
        ),
        0.0
    );
    for (name, var) in lora.store().vars() {
        if name.ends_with("lora_B.weight") {
            assert_eq!(max_abs(var.as_tensor()), 0.0);
        } else {
            // Uniform in +-1/sqrt(in_features), in = hidden 64.
            let m = max_abs(var.as_tensor());
            assert!(m > 0.0 && m <= 1.0 / 8.0, "{name}: max |A| = {m}");
        }
    }
}

#[test]
fn padding_mask_and_causality() {
    let store = ParamStore::new(14);
    let model = BackbonePreset::TinyQwen2
        .build(
            VOCAB,
            &store,
            DType::F32,
            &Device::Cpu,
            &BuildOptions::default(),
        )
        .unwrap();
    common::perturb(&store, 15, 0.2);
    let short = random_ids(1, 5, VOCAB, 16);
    let alone = model.forward(&short, None).unwrap();
    // The same sequence right-padded to 8 in a batch with a full-length one.
    let pad = Tensor::new(&[[0u32, 0, 0]], &Device::Cpu).unwrap();
    let padded = Tensor::cat(&[&short, &pad], 1).unwrap();
    let other = random_ids(1, 8, VOCAB, 17);
    let batch = Tensor::cat(&[&padded, &other], 0).unwrap();
    let mask = Tensor::new(
        &[[1u32, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]],
        &Device::Cpu,
    )
    .unwrap();
    let logits = model.forward(&batch, Some(&mask)).unwrap();
    let d = max_abs_diff(&logits.i((0..1, 0..5, ..)).unwrap(), &alone);
    assert!(d < 1e-5, "padding changed real positions by {d}");
    assert!(max_abs(&logits) > 0.01);
    // Changing a later token leaves earlier positions alone (causal), and changes later ones.
    let mut changed = short.to_vec2::<u32>().unwrap();
    changed[0][3] = (changed[0][3] + 1) % VOCAB as u32;
    let changed = Tensor::new(changed, &Device::Cpu).unwrap();
    let out = model.forward(&changed, None).unwrap();
    assert_eq!(
        max_abs_diff(
            &out.i((.., 0..3, ..)).unwrap(),
            &alone.i((.., 0..3, ..)).unwrap()
        ),
        0.0
    );
    assert!(
        max_abs_diff(
            &out.i((.., 3.., ..)).unwrap(),
            &alone.i((.., 3.., ..)).unwrap()
        ) > 1e-4
    );
    // A left-padded row whose first query sees only padding stays finite.
    let left = Tensor::new(&[[0u32, 0, 1, 1, 1]], &Device::Cpu).unwrap();
    let out = model.forward(&short, Some(&left)).unwrap();
    assert!(
        out.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite())
    );
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let model = BackbonePreset::TinyPhi3
        .build(
            VOCAB,
            &ParamStore::new(1),
            DType::F32,
            &Device::Cpu,
            &BuildOptions::default(),
        )
        .unwrap();
    let too_big = Tensor::new(&[[1u32, VOCAB as u32]], &Device::Cpu).unwrap();
    assert!(matches!(
        model.embed_tokens(&too_big),
        Err(LmError::Input { .. })
    ));
    let wrong_width = Tensor::zeros((1, 3, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        model.forward_embeds(&wrong_width, None),
        Err(LmError::Input { .. })
    ));
    let embeds = Tensor::zeros((1, 3, 64), DType::F32, &Device::Cpu).unwrap();
    let wrong_mask = Tensor::ones((1, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        model.forward_embeds(&embeds, Some(&wrong_mask)),
        Err(LmError::Input { .. })
    ));
    let siglip = random_siglip(
        &tiny_siglip(),
        &ParamStore::new(1),
        DType::F32,
        &Device::Cpu,
        &BuildOptions::default(),
    )
    .unwrap();
    let wrong_size = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        siglip.forward(&wrong_size),
        Err(LmError::Input { .. })
    ));
}

#[test]
fn grown_vocabulary_trains_new_rows_only() {
    for preset in [BackbonePreset::TinyQwen2, BackbonePreset::TinyPhi3] {
        let base = ParamStore::new(20);
        let mut model = preset
            .build(
                VOCAB,
                &base,
                DType::F32,
                &Device::Cpu,
                &BuildOptions {
                    lora: None,
                    freeze_base: true,
                },
            )
            .unwrap();
        let ids = random_ids(2, 7, VOCAB, 21);
        let old_logits = model.forward(&ids, None).unwrap();
        let frozen = ParamStore::new(22);
        let trainable = ParamStore::new(23);
        let markers = model.grow_vocab(4, &frozen, "markers").unwrap();
        let learned = model.grow_vocab(3, &trainable, "learned").unwrap();
        assert_eq!(markers, VOCAB as u32..VOCAB as u32 + 4);
        assert_eq!(learned, VOCAB as u32 + 4..VOCAB as u32 + 7);
        assert_eq!(model.vocab_size(), VOCAB + 7);
        assert_eq!(
            model.ensure_vocab(VOCAB + 7, &trainable, "none").unwrap(),
            None
        );
        // Old tokens keep their logits over the old vocabulary.
        let new_logits = model.forward(&ids, None).unwrap();
        assert_eq!(new_logits.dim(2).unwrap(), VOCAB + 7);
        assert_eq!(
            max_abs_diff(&new_logits.narrow(2, 0, VOCAB).unwrap(), &old_logits),
            0.0
        );
        // A sequence using the new ids: gradients reach the added rows, not the base.
        let seq = Tensor::new(
            &[[1u32, VOCAB as u32, 5, VOCAB as u32 + 5, 9, VOCAB as u32 + 6]],
            &Device::Cpu,
        )
        .unwrap();
        let loss = lm_loss(&model, &seq);
        let grads = loss.backward().unwrap();
        for (name, var) in trainable.vars().into_iter().chain(frozen.vars()) {
            assert!(
                grads.get(var.as_tensor()).is_some_and(|g| max_abs(g) > 0.0),
                "{preset:?} {name}"
            );
        }
        for (name, var) in base.vars() {
            assert!(
                grads.get(var.as_tensor()).is_none(),
                "{preset:?}: base {name} got a gradient"
            );
        }
        // Training only the trainable store leaves the markers and the base as they were.
        let frozen_before = snapshot(&frozen);
        let base_before = snapshot(&base);
        let mut opt = AdamW::new(vars(&trainable), ParamsAdamW::default()).unwrap();
        let before = lm_loss(&model, &seq).to_scalar::<f32>().unwrap();
        for _ in 0..5 {
            opt.backward_step(&lm_loss(&model, &seq)).unwrap();
        }
        assert!(lm_loss(&model, &seq).to_scalar::<f32>().unwrap() < before);
        assert_eq!(snapshot(&frozen), frozen_before);
        assert_eq!(snapshot(&base), base_before);
    }
}

#[test]
fn owned_rows_start_identical_and_train_alone() {
    let base = ParamStore::new(30);
    let mut model = BackbonePreset::TinyPhi3
        .build(
            VOCAB,
            &base,
            DType::F32,
            &Device::Cpu,
            &BuildOptions {
                lora: None,
                freeze_base: true,
            },
        )
        .unwrap();
    let ids = random_ids(2, 9, VOCAB, 31);
    let before = model.forward(&ids, None).unwrap();
    let rows = ParamStore::new(32);
    model.own_rows(10..14, &rows, "special").unwrap();
    assert_eq!(model.vocab_size(), VOCAB);
    assert_eq!(model.added_ranges(), vec![10..14]);
    let after = model.forward(&ids, None).unwrap();
    // Equal up to float summation order (the logits are assembled from column slices).
    assert!(max_abs_diff(&before, &after) < 1e-6);
    assert!(
        model
            .own_rows(12..16, &ParamStore::new(33), "overlap")
            .is_err()
    );
    assert!(
        model
            .own_rows(60..62, &ParamStore::new(33), "outside")
            .is_err()
    );
    let seq = Tensor::new(&[[1u32, 10, 11, 12, 13, 2]], &Device::Cpu).unwrap();
    let grads = lm_loss(&model, &seq).backward().unwrap();
    for (name, var) in rows.vars() {
        assert!(
            grads.get(var.as_tensor()).is_some_and(|g| max_abs(g) > 0.0),
            "{name}"
        );
    }
}

#[test]
fn bf16_model_runs_close_to_f32_and_trains_f32_adapters() {
    let targets = ["q_proj", "v_proj", "down_proj"];
    let build = |dtype: DType| {
        let lora = Lora::new(LoraConfig::new(4, 8.0, 0.0, &targets), ParamStore::new(41)).unwrap();
        let model = BackbonePreset::TinyQwen2
            .build(
                VOCAB,
                &ParamStore::new(40),
                dtype,
                &Device::Cpu,
                &BuildOptions {
                    lora: Some(lora.clone()),
                    freeze_base: true,
                },
            )
            .unwrap();
        (lora, model)
    };
    let (_, full) = build(DType::F32);
    let (lora, half) = build(DType::BF16);
    assert_eq!(half.dtype(), DType::BF16);
    let ids = random_ids(2, 10, VOCAB, 42);
    let a = full.forward(&ids, None).unwrap();
    let b = half.forward(&ids, None).unwrap();
    assert_eq!(b.dtype(), DType::BF16);
    let d = max_abs_diff(&a, &b);
    assert!(d < 0.05 * max_abs(&a).max(1e-3), "bf16 drifted by {d}");
    let grads = lm_loss(&half, &ids).backward().unwrap();
    for (name, var) in lora.store().vars() {
        assert_eq!(var.dtype(), DType::F32, "{name}");
        if name.ends_with("lora_B.weight") {
            assert!(
                grads.get(var.as_tensor()).is_some_and(|g| max_abs(g) > 0.0),
                "{name}"
            );
        }
    }
}
