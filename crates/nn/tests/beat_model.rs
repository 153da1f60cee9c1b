//! Beat's shapes, gradients, configuration checks and the consistency of its entry points.

mod common;

use beatlab_nn::{Beat, BeatConfig, BeatError, Mode, ParamStore};
use candle_core::{DType, Device, Tensor};
use common::{sine_windows, tiny_config, values};

fn build(cfg: &BeatConfig, seed: u64) -> (ParamStore, Beat) {
    let store = ParamStore::new(seed);
    let beat = Beat::new(cfg.clone(), &store, DType::F32, &Device::Cpu).expect("build Beat");
    (store, beat)
}

/// Runs one forward pass of `cfg` on `batch` windows and checks every output's shape against
/// the sizes derived by hand in `queries`.
fn check_shapes(cfg: BeatConfig, batch: usize, queries: usize) {
    let (_, beat) = build(&cfg, 1);
    let x = sine_windows(batch, cfg.leads, cfg.input_len + cfg.predict_len, 2);
    let out = beat.forward(&x, Mode::Eval).expect("forward");
    let what = format!(
        "input_len {} levels {} shared {}",
        cfg.input_len, cfg.dvq_levels, cfg.shared_codebook
    );
    assert_eq!(beat.dims().queries, queries, "{what}");
    assert_eq!(
        out.reconstruction.dims(),
        [batch, cfg.leads, cfg.input_len],
        "{what}"
    );
    assert_eq!(
        out.prediction.dims(),
        [batch, cfg.leads, cfg.predict_len],
        "{what}"
    );
    assert_eq!(out.latents.dims(), [batch, queries, cfg.width], "{what}");
    assert_eq!(out.codes.len(), cfg.dvq_levels, "{what}");
    for c in &out.codes {
        assert_eq!(c.dims(), [batch, queries], "{what}");
        assert_eq!(c.dtype(), DType::U32, "{what}");
        assert!(
            values(c).iter().all(|&v| (v as usize) < cfg.codebook_size),
            "{what}"
        );
    }
    for loss in [&out.loss, &out.recon_loss, &out.pred_loss, &out.vq_loss] {
        assert_eq!(loss.dims(), [] as [usize; 0], "{what}");
        assert!(loss.to_scalar::<f32>().unwrap().is_finite(), "{what}");
    }
    assert_eq!(
        beat.encode(&x).unwrap().dims(),
        [batch, queries, cfg.width],
        "{what}"
    );
}

#[test]
fn paper_config_shapes() {
    // 1000 / 25 = 40 patches, x 0.5 = 20 queries, which predict 20 x 25 = 500 samples.
    check_shapes(BeatConfig::default(), 2, 20);
}

#[test]
fn shapes_across_input_lengths_levels_and_codebook_sharing() {
    // Paper leads, patch and prediction length; a narrow, shallow model to keep the test fast.
    let base = BeatConfig {
        width: 32,
        heads: 4,
        head_dim: None,
        encoder_depth: 1,
        decoder_depth: 1,
        codebook_size: 64,
        ..BeatConfig::default()
    };
    // (input_len, queries = input_len / 25 * 0.5)
    for (input_len, queries) in [(500, 10), (1000, 20), (1500, 30)] {
        for dvq_levels in [1, 2, 3] {
            for shared_codebook in [false, true] {
                let cfg = BeatConfig {
                    input_len,
                    dvq_levels,
                    shared_codebook,
                    ..base.clone()
                };
                check_shapes(cfg, 2, queries);
            }
        }
    }
}

#[test]
fn codebooks_are_buffers_per_level_or_shared() {
    let cfg = BeatConfig {
        dvq_levels: 3,
        ..tiny_config()
    };
    let (store, _) = build(&cfg, 3);
    let names: Vec<String> = store.buffers().into_iter().map(|(n, _)| n).collect();
    for l in 0..3 {
        assert!(names.contains(&format!("vq.level{l}.embed")), "{names:?}");
    }
    assert!(!store.vars().iter().any(|(n, _)| n.starts_with("vq.")));

    let (store, _) = build(
        &BeatConfig {
            shared_codebook: true,
            ..cfg
        },
        3,
    );
    let embeds: Vec<String> = store
        .buffers()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.ends_with(".embed"))
        .collect();
    assert_eq!(embeds, ["vq.shared.embed"]);
}

/// Every trainable tensor of `cfg`'s model gets a non-zero gradient from one backward pass.
/// With random output heads: zero heads pass no gradient upstream before their first update, by
/// design (see `zero_output_heads_start_silent_and_open_up_after_one_step`).
/// The L1 norm of `loss`'s gradient for every variable of `store` (`None`: no gradient).
fn gradient_norms(store: &ParamStore, loss: &Tensor) -> Vec<(String, Option<f32>)> {
    let grads = loss.backward().unwrap();
    store
        .vars()
        .into_iter()
        .map(|(name, var)| {
            let norm = grads.get(var.as_tensor()).map(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            });
            (name.to_string(), norm)
        })
        .collect()
}

fn check_all_gradients(cfg: BeatConfig) {
    let cfg = BeatConfig {
        zero_init_output_heads: false,
        ..cfg
    };
    let (store, beat) = build(&cfg, 5);
    let x = sine_windows(3, cfg.leads, cfg.input_len + cfg.predict_len, 6);
    let out = beat.forward(&x, Mode::Train { step: 0 }).unwrap();
    let mut missing = Vec::new();
    for (name, norm) in gradient_norms(&store, &out.loss) {
        match norm {
            Some(n) if n > 0.0 && n.is_finite() => {}
            other => missing.push(format!("{name}: {other:?}")),
        }
    }
    assert!(missing.is_empty(), "tensors without gradient: {missing:?}");
}

#[test]
fn every_trainable_tensor_gets_a_gradient() {
    check_all_gradients(tiny_config());
}

#[test]
fn every_trainable_tensor_gets_a_gradient_with_query_map_and_own_prediction_head() {
    // 300 / 10 = 30 patches -> 15 queries, but 50 / 10 = 5 predicted patches: the query map
    // exists. Dropout on, three shared levels: every optional path at once.
    let cfg = BeatConfig {
        input_len: 300,
        share_output_head: false,
        dropout: 0.1,
        dvq_levels: 3,
        shared_codebook: true,
        ..tiny_config()
    };
    let (store, _) = build(&cfg, 0);
    let names: Vec<String> = store.vars().into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().any(|n| n.starts_with("predict.query_map")));
    assert!(names.iter().any(|n| n.starts_with("predict.head")));
    check_all_gradients(cfg);
}

#[test]
fn the_paper_config_has_no_query_map_and_shares_the_head() {
    let (store, _) = build(&BeatConfig::default(), 0);
    assert!(!store.vars().iter().any(|(n, _)| n.starts_with("predict.")));
}

#[test]
fn invalid_configs_name_the_field() {
    fn check(change: impl Fn(&mut BeatConfig), field: &str) {
        let mut cfg = BeatConfig::default();
        change(&mut cfg);
        let err = cfg.validate().expect_err(field);
        assert_eq!(err.field, field, "{err}");
        let store = ParamStore::new(0);
        match Beat::new(cfg, &store, DType::F32, &Device::Cpu) {
            Err(BeatError::Config(e)) => assert_eq!(e.field, field),
            other => panic!("expected a config error for {field}, got {other:?}"),
        }
    }
    check(|c| c.input_len = 1010, "input_len");
    check(|c| c.predict_len = 510, "predict_len");
    check(
        |c| {
            c.head_dim = None;
            c.heads = 3;
        },
        "heads",
    );
    check(|c| c.head_dim = Some(0), "head_dim");
    check(|c| c.dvq_levels = 0, "dvq_levels");
    check(|c| c.codebook_size = 0, "codebook_size");
    check(|c| c.query_ratio = 0.001, "query_ratio");
    check(|c| c.ema_decay = 1.0, "ema_decay");
    check(|c| c.dropout = -0.1, "dropout");
    check(|c| c.w_pred = f64::NAN, "w_pred");
    check(|c| c.dead_code_threshold = Some(0.0), "dead_code_threshold");
    check(|c| c.locality_slope = Some(-1.0), "locality_slope");
    check(|c| c.locality_slope = Some(f64::INFINITY), "locality_slope");
    check(|c| c.patch_size = 0, "patch_size");
}

#[test]
fn config_round_trips_through_serde_and_rejects_unknown_fields() {
    let cfg = BeatConfig {
        dead_code_threshold: Some(0.5),
        ..tiny_config()
    };
    let json = serde_json::to_string(&cfg).unwrap();
    let back: BeatConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, cfg);
    let partial: BeatConfig = serde_json::from_str(r#"{"codebook_size": 1024}"#).unwrap();
    assert_eq!(partial.codebook_size, 1024);
    assert_eq!(partial.input_len, BeatConfig::default().input_len);
    assert!(serde_json::from_str::<BeatConfig>(r#"{"codebok_size": 1024}"#).is_err());
}

#[test]
fn wrong_input_shapes_are_errors() {
    let cfg = tiny_config();
    let (_, beat) = build(&cfg, 0);
    let check = |x: Tensor| match beat.forward(&x, Mode::Eval) {
        Err(BeatError::InputShape { found, .. }) => assert_eq!(found, x.dims()),
        other => panic!("expected a shape error, got {other:?}"),
    };
    check(sine_windows(2, cfg.leads, cfg.input_len, 0)); // no prediction part
    check(sine_windows(
        2,
        cfg.leads + 1,
        cfg.input_len + cfg.predict_len,
        0,
    ));
    check(Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap());
    // encode/codes accept any length that covers the input part, but not less.
    assert!(
        beat.codes(&sine_windows(2, cfg.leads, cfg.input_len, 0))
            .is_ok()
    );
    assert!(matches!(
        beat.codes(&sine_windows(2, cfg.leads, cfg.input_len - 1, 0)),
        Err(BeatError::InputShape { .. })
    ));
    assert!(matches!(
        beat.decode(&Tensor::zeros((2, 3, cfg.width), DType::F32, &Device::Cpu).unwrap()),
        Err(BeatError::InputShape { .. })
    ));
}

#[test]
fn encode_codes_and_decode_agree_with_forward() {
    let cfg = BeatConfig {
        dvq_levels: 2,
        // A zero head would make every reconstruction 0 and the last comparison empty.
        zero_init_output_heads: false,
        ..tiny_config()
    };
    let (_, beat) = build(&cfg, 9);
    let x = sine_windows(4, cfg.leads, cfg.input_len + cfg.predict_len, 10);
    let out = beat.forward(&x, Mode::Eval).unwrap();
    let codes = beat.codes(&x).unwrap();
    for (a, b) in codes.iter().zip(&out.codes) {
        assert_eq!(values(a), values(b));
    }
    let latents = beat.encode(&x).unwrap();
    assert_eq!(values(&latents), values(&out.latents));
    let from_codes = beat.latents_from_codes(&codes).unwrap();
    let max_diff = values(&from_codes)
        .iter()
        .zip(values(&latents))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    // Straight-through latents are z + (q - z): equal to q up to f32 rounding.
    assert!(max_diff < 1e-5, "max diff {max_diff}");
    let recon = beat.decode(&latents).unwrap();
    assert_eq!(values(&recon), values(&out.reconstruction));
}

#[test]
fn total_loss_is_the_weighted_sum_of_its_parts() {
    let cfg = BeatConfig {
        w_recon: 0.7,
        w_pred: 0.3,
        w_vq: 2.0,
        zero_init_output_heads: false,
        ..tiny_config()
    };
    let (_, beat) = build(&cfg, 4);
    let x = sine_windows(2, cfg.leads, cfg.input_len + cfg.predict_len, 4);
    let out = beat.forward(&x, Mode::Eval).unwrap();
    let s = |t: &Tensor| f64::from(t.to_scalar::<f32>().unwrap());
    let expected = 0.7 * s(&out.recon_loss) + 0.3 * s(&out.pred_loss) + 2.0 * s(&out.vq_loss);
    assert!((s(&out.loss) - expected).abs() < 1e-5 * expected.abs().max(1.0));
    // The reconstruction loss is the MSE against the input part, computed here on the host.
    let input = values(&x.narrow(2, 0, cfg.input_len).unwrap());
    let recon = values(&out.reconstruction);
    let mse = input
        .iter()
        .zip(&recon)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum::<f64>()
        / input.len() as f64;
    assert!((s(&out.recon_loss) - mse).abs() < 1e-5 * mse.max(1.0));
}

#[test]
fn eval_is_deterministic_and_dropout_depends_on_the_step() {
    // No L_VQ warm-up: its weight would make the loss depend on the step without dropout.
    let cfg = BeatConfig {
        dropout: 0.2,
        vq_warmup_steps: 0,
        zero_init_output_heads: false,
        ..tiny_config()
    };
    let (_, beat) = build(&cfg, 2);
    let x = sine_windows(2, cfg.leads, cfg.input_len + cfg.predict_len, 1);
    let loss = |mode| {
        beat.forward(&x, mode)
            .unwrap()
            .loss
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(loss(Mode::Eval), loss(Mode::Eval));
    assert_eq!(loss(Mode::Train { step: 3 }), loss(Mode::Train { step: 3 }));
    assert_ne!(loss(Mode::Train { step: 3 }), loss(Mode::Train { step: 4 }));
    assert_ne!(loss(Mode::Train { step: 3 }), loss(Mode::Eval));
}

#[test]
fn same_seed_same_model_other_seed_other_model() {
    let cfg = tiny_config();
    let x = sine_windows(2, cfg.leads, cfg.input_len + cfg.predict_len, 1);
    let loss = |seed| {
        let (_, beat) = build(&cfg, seed);
        beat.forward(&x, Mode::Eval)
            .unwrap()
            .loss
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(loss(11), loss(11));
    assert_ne!(loss(11), loss(12));
}

#[test]
fn vq_weight_warms_up_linearly_in_training_only() {
    let cfg = BeatConfig {
        w_vq: 0.5,
        vq_warmup_steps: 4,
        ..tiny_config()
    };
    // Step s uses w_vq * min(1, (s + 1) / 4).
    for (step, expected) in [(0, 0.125), (1, 0.25), (3, 0.5), (100, 0.5)] {
        assert_eq!(cfg.vq_weight(Mode::Train { step }), expected, "step {step}");
    }
    assert_eq!(cfg.vq_weight(Mode::Eval), 0.5);
    let off = BeatConfig {
        vq_warmup_steps: 0,
        ..cfg.clone()
    };
    assert_eq!(off.vq_weight(Mode::Train { step: 0 }), 0.5);

    // The training loss uses the warmed-up weight (no dropout, so the parts are the same).
    let (_, beat) = build(&cfg, 4);
    let x = sine_windows(2, cfg.leads, cfg.input_len + cfg.predict_len, 4);
    let out = beat.forward(&x, Mode::Train { step: 1 }).unwrap();
    let s = |t: &Tensor| f64::from(t.to_scalar::<f32>().unwrap());
    let expected = s(&out.recon_loss) + 0.5 * s(&out.pred_loss) + 0.25 * s(&out.vq_loss);
    assert!((s(&out.loss) - expected).abs() < 1e-5 * expected.max(1.0));
}

#[test]
fn zero_output_heads_start_silent_and_open_up_after_one_step() {
    let cfg = BeatConfig {
        share_output_head: false,
        ..tiny_config()
    };
    assert!(cfg.zero_init_output_heads, "the default");
    let (store, beat) = build(&cfg, 3);
    let x = sine_windows(4, cfg.leads, cfg.input_len + cfg.predict_len, 5);
    let out = beat.forward(&x, Mode::Train { step: 0 }).unwrap();
    assert!(values(&out.reconstruction).iter().all(|&v| v == 0.0));
    assert!(values(&out.prediction).iter().all(|&v| v == 0.0));

    let gradient_norms = |out: &beatlab_nn::BeatOutput| {
        gradient_norms(&store, &out.loss)
            .into_iter()
            .map(|(name, norm)| (name, norm.unwrap_or(0.0)))
            .collect::<Vec<_>>()
    };
    // Before any update only the heads (and, through L_VQ, the encoder side) can learn: the
    // decoder's gradient passes through the zero head.
    for (name, norm) in gradient_norms(&out) {
        if name.starts_with("head.") || name.starts_with("predict.head.") {
            assert!(norm > 0.0, "{name} gets no gradient");
        }
        if name.starts_with("decoder.") {
            assert_eq!(norm, 0.0, "{name} gets a gradient through a zero head");
        }
    }
    // One optimiser step later every tensor learns.
    let mut opt = beatlab_nn::optim::AdamW::new(store.vars(), Default::default()).unwrap();
    opt.step(&out.loss.backward().unwrap()).unwrap();
    let out = beat.forward(&x, Mode::Train { step: 1 }).unwrap();
    let silent: Vec<String> = gradient_norms(&out)
        .into_iter()
        .filter(|(_, norm)| !(*norm > 0.0 && norm.is_finite()))
        .map(|(name, _)| name)
        .collect();
    assert!(silent.is_empty(), "no gradient after one step: {silent:?}");
}

/// The paper's configuration differs from the default only in the training aids that depart
/// from the paper, each at the paper's value.
#[test]
fn the_paper_config_turns_off_the_training_aids_only() {
    let paper = BeatConfig::paper();
    assert_eq!(paper.locality_slope, None);
    assert!(!paper.zero_init_output_heads);
    assert_eq!(paper.vq_warmup_steps, 0);
    let default = BeatConfig::default();
    assert_eq!(
        BeatConfig {
            locality_slope: default.locality_slope,
            zero_init_output_heads: default.zero_init_output_heads,
            vq_warmup_steps: default.vq_warmup_steps,
            ..paper
        },
        default
    );
}
