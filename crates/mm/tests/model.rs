//! The assembled model: spliced embeddings, the answer-only loss, gradients that reach exactly
//! the trainable parts, frozen parts that stay bit-identical, checkpoints of the trainable
//! parts, precomputed inputs, and the errors of bad inputs and bad part requests.

mod common;

use std::collections::BTreeMap;

use beatlab_heartcare::instruct::Modality;
use beatlab_mm::{EcgInput, Example, HeartcareModel, MissingModality, MmError, Part};
use candle_core::{D, DType, Device, Tensor};
use common::{Setup, item, pixels, window};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Every variable of every part the model has, as host values.
fn snapshot(model: &HeartcareModel) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    for part in Part::ALL {
        let Some(store) = model.store(part) else {
            continue;
        };
        for (name, var) in store.vars() {
            let values = var
                .as_tensor()
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            out.insert(format!("{}/{name}", part.name()), values);
        }
        for (name, buf) in store.buffers() {
            let values = buf
                .as_tensor()
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            out.insert(format!("{}/buffer/{name}", part.name()), values);
        }
    }
    out
}

/// A comparison item (signal of ECG a, image of ECG b) and a single-ECG item shown both ways.
fn two_items() -> Vec<(beatlab_heartcare::instruct::Item, Vec<EcgInput>)> {
    vec![
        (
            item(
                "cmp",
                "Which ECG has the faster rate?",
                "The first.",
                &[("a", Modality::Signal), ("b", Modality::Image)],
            ),
            vec![window(1), pixels(2, false)],
        ),
        (
            item(
                "both",
                common::QUESTION,
                "Sinus rhythm.",
                &[("c", Modality::Signal), ("c", Modality::Image)],
            ),
            vec![window(3), pixels(4, false)],
        ),
    ]
}

fn examples(data: &[(beatlab_heartcare::instruct::Item, Vec<EcgInput>)]) -> Vec<Example<'_>> {
    data.iter().map(|(i, x)| Example::new(i, x)).collect()
}

#[test]
fn projected_embeddings_are_spliced_at_their_blocks() {
    let model = Setup::default().build(&[]);
    let data = two_items();
    let ex = examples(&data);
    let prepared = model.prepare(&ex).unwrap();
    let embeds = model
        .input_embeds(&prepared.batch, prepared.encoded.table.as_ref())
        .unwrap();
    let tokens = model.backbone().embed_tokens(&prepared.batch.ids).unwrap();
    let chat = model.chat_tokens();

    // The projections, computed independently of the splicing.
    let windows = Tensor::stack(
        &[&data[0].1[0], &data[1].1[0]].map(|x| match x {
            EcgInput::Window(w) => w.narrow(1, 0, 100).unwrap(),
            _ => unreachable!(),
        }),
        0,
    )
    .unwrap();
    let signal = model
        .signal_projector()
        .unwrap()
        .forward(&model.signal_latents(&windows).unwrap())
        .unwrap(); // [2, 5, 64]
    let images = Tensor::stack(
        &[&data[0].1[1], &data[1].1[1]].map(|x| match x {
            EcgInput::Pixels(p) => p.clone(),
            _ => unreachable!(),
        }),
        0,
    )
    .unwrap();
    let image = model
        .image_projector()
        .unwrap()
        .forward(&model.image_features(&images).unwrap())
        .unwrap(); // [2, 2, 64]

    // Item 0 (comparison): ECG a's signal block, then ECG b's image block.
    // Item 1 (one ECG both ways): image block first, then signal block.
    let expect_blocks = [
        vec![
            (chat.signal_start, signal.get(0).unwrap()),
            (chat.image_start, image.get(0).unwrap()),
        ],
        vec![
            (chat.image_start, image.get(1).unwrap()),
            (chat.signal_start, signal.get(1).unwrap()),
        ],
    ];
    for (b, (row, blocks)) in prepared.rows.iter().zip(&expect_blocks).enumerate() {
        let mut pos = 0;
        let mut spliced_positions = Vec::new();
        for (marker, projected) in blocks {
            assert_eq!(row.ids[pos], *marker, "row {b} position {pos}");
            let n = projected.dim(0).unwrap();
            let got = embeds.get(b).unwrap().narrow(0, pos + 1, n).unwrap();
            assert!(
                max_abs_diff(&got, projected) < 1e-6,
                "row {b} block at {pos}"
            );
            spliced_positions.extend(pos + 1..pos + 1 + n);
            pos += n + 2;
        }
        assert_eq!(row.ids[pos], chat.user, "row {b}");
        // Every other position (padding included) holds its token's own embedding.
        for t in 0..prepared.batch.seq_len {
            if spliced_positions.contains(&t) {
                continue;
            }
            let got = embeds.get(b).unwrap().get(t).unwrap();
            let want = tokens.get(b).unwrap().get(t).unwrap();
            assert_eq!(max_abs_diff(&got, &want), 0.0, "row {b} position {t}");
        }
    }
}

#[test]
fn the_loss_covers_exactly_the_answer_and_end_tokens() {
    let model = Setup::default().build(&[]);
    let tok = model.tokenizer().clone();
    let data = two_items();
    let ex = examples(&data);
    let prepared = model.prepare(&ex).unwrap();
    let targets = prepared.batch.target_mask.to_vec2::<f32>().unwrap();
    let ids = prepared.batch.ids.to_vec2::<u32>().unwrap();
    for (b, (item, _)) in data.iter().enumerate() {
        let chosen: Vec<u32> = (0..prepared.batch.seq_len)
            .filter(|&t| targets[b][t] == 1.0)
            .map(|t| ids[b][t])
            .collect();
        let mut expected = tok.encode(&item.answer).unwrap();
        expected.push(model.chat_tokens().end);
        assert_eq!(chosen, expected, "row {b}");
        // They are the last positions of the row, right after `<|assistant|>`.
        let row = &prepared.rows[b];
        assert_eq!(ids[b][row.targets.start - 1], model.chat_tokens().assistant);
        assert_eq!(row.targets.end, row.ids.len());
    }

    // The loss is the mean of -log p(token | prefix) over those tokens and no others.
    let out = model.forward(&ex).unwrap();
    let log_probs = candle_nn::ops::log_softmax(&out.logits, D::Minus1).unwrap();
    let lp = log_probs.to_dtype(DType::F32).unwrap();
    let mut total = 0.0f64;
    let mut count = 0;
    for (b, row) in prepared.rows.iter().enumerate() {
        for t in row.targets.clone() {
            let v = lp
                .get(b)
                .unwrap()
                .get(t - 1)
                .unwrap()
                .get(ids[b][t] as usize)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            total -= f64::from(v);
            count += 1;
        }
    }
    assert_eq!(out.target_tokens, count);
    let loss = f64::from(out.loss.to_scalar::<f32>().unwrap());
    assert!(
        (loss - total / count as f64).abs() < 1e-4,
        "{loss} vs {}",
        total / count as f64
    );
}

/// Backward once with `parts` trainable; every variable of a trainable part on the path from
/// the inputs to the loss must get a gradient (non-zero, except LoRA's A factors, whose
/// gradient is exactly 0 while B is still its zero initialisation), and no variable of any
/// other part may get one. Beat's decoder and heads are not on that path (the language model
/// sees only the encoder's quantized latents).
fn check_gradients(setup: &Setup, parts: &[&str], expected: &[Part]) {
    let model = setup.build(parts);
    let data = two_items();
    let ex = examples(&data);
    let grads = model.forward(&ex).unwrap().loss.backward().unwrap();
    let mut seen = 0;
    for part in Part::ALL {
        let Some(store) = model.store(part) else {
            continue;
        };
        for (name, var) in store.vars() {
            let grad = grads.get(var.as_tensor());
            let off_path = part == Part::Beat
                && ["decoder.", "head.", "predict."]
                    .iter()
                    .any(|p| name.starts_with(p));
            if expected.contains(&part) && !off_path {
                let grad = grad.unwrap_or_else(|| panic!("{part}/{name} got no gradient"));
                let norm = grad
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let fresh_lora_a = part == Part::Lora && name.contains("lora_A");
                assert!(
                    norm > 0.0 || fresh_lora_a,
                    "{part}/{name} has a zero gradient"
                );
                seen += 1;
            } else {
                assert!(
                    grad.is_none(),
                    "{part}/{name} got a gradient with {parts:?} trainable"
                );
            }
        }
    }
    assert!(seen > 0);
}

#[test]
fn gradients_reach_exactly_the_trainable_parts() {
    let setup = Setup::default();
    check_gradients(
        &setup,
        &["projector"],
        &[Part::SignalProjector, Part::ImageProjector],
    );
    check_gradients(
        &setup,
        &["projector", "lora"],
        &[Part::SignalProjector, Part::ImageProjector, Part::Lora],
    );
    check_gradients(&setup, &["projector.image"], &[Part::ImageProjector]);
    check_gradients(&setup, &["vision", "beat"], &[Part::Vision, Part::Beat]);
    let no_lora = Setup {
        lora: false,
        ..Setup::default()
    };
    check_gradients(&no_lora, &["backbone"], &[Part::Backbone]);
    // "codes" mode: the code-token rows are the signal part.
    let codes = Setup::default().codes();
    check_gradients(&codes, &["projector.signal"], &[Part::SignalProjector]);
    check_gradients(&codes, &["lora"], &[Part::Lora]);
}

/// Train `parts` for a few steps; the trainable variables must move and every other variable
/// and buffer must stay bit-identical.
fn check_only_trainable_parts_change(setup: &Setup, parts: &[&str]) {
    let mut model = setup.build(&[]);
    model.set_trainable(parts).unwrap();
    let trainable: Vec<String> = model
        .trainable_vars(parts)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let before = snapshot(&model);
    let data = two_items();
    let ex = examples(&data);
    let mut opt = common::adamw(&model, parts, 1e-2);
    for _ in 0..3 {
        model.train_step(&mut opt, &ex, Some(1.0)).unwrap();
    }
    let after = snapshot(&model);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (name, values) in &before {
        if trainable.contains(name) {
            assert_ne!(values, &after[name], "{name} did not train ({parts:?})");
        } else {
            assert_eq!(
                values, &after[name],
                "{name} changed while frozen ({parts:?})"
            );
        }
    }
}

#[test]
fn frozen_parts_stay_bit_identical_through_optimiser_steps() {
    check_only_trainable_parts_change(&Setup::default(), &["projector"]);
    check_only_trainable_parts_change(&Setup::default(), &["projector", "lora"]);
    check_only_trainable_parts_change(&Setup::default().codes(), &["projector", "lora"]);
}

#[test]
fn training_the_backbone_leaves_special_token_rows_alone() {
    let setup = Setup {
        lora: false,
        ..Setup::default()
    };
    let model = setup.build(&["backbone"]);
    let embed = model
        .store(Part::Backbone)
        .unwrap()
        .get("model.embed_tokens.weight")
        .unwrap();
    let rows = |t: &Tensor| t.to_vec2::<f32>().unwrap();
    let before = rows(embed.as_tensor());
    let data = two_items();
    let ex = examples(&data);
    let mut opt = common::adamw(&model, &["backbone"], 1e-2);
    for _ in 0..2 {
        model.train_step(&mut opt, &ex, None).unwrap();
    }
    let after = rows(embed.as_tensor());
    let specials: Vec<u32> = beatlab_lm::Special::ALL
        .iter()
        .map(|&s| model.tokenizer().special_id(s))
        .collect();
    for (id, (b, a)) in before.iter().zip(&after).enumerate() {
        if specials.contains(&(id as u32)) {
            assert_eq!(b, a, "special row {id} moved");
        }
    }
    // The answer tokens' rows did train.
    let answer_id = model.tokenizer().encode("The first.").unwrap()[0] as usize;
    assert_ne!(before[answer_id], after[answer_id]);
}

#[test]
fn a_checkpoint_of_the_trainable_parts_reloads_to_identical_logits() {
    for setup in [Setup::default(), Setup::default().codes()] {
        let parts = ["projector", "lora"];
        let model = setup.build(&parts);
        let data = two_items();
        let ex = examples(&data);
        let mut opt = common::adamw(&model, &parts, 1e-2);
        for _ in 0..3 {
            model.train_step(&mut opt, &ex, Some(1.0)).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parts.safetensors");
        model.save_parts(&parts, &path).unwrap();

        // A fresh model of the same spec, in evaluation mode (LoRA folded in).
        let mut fresh = setup.build(&[]);
        let untrained = fresh.forward(&ex).unwrap().logits;
        let mut trained_eval = model;
        trained_eval.set_trainable::<&str>(&[]).unwrap();
        let trained = trained_eval.forward(&ex).unwrap().logits;
        assert!(
            max_abs_diff(&untrained, &trained) > 1e-3,
            "training changed nothing"
        );

        let loaded = fresh.load_parts(&path).unwrap();
        assert_eq!(
            loaded.into_iter().collect::<Vec<_>>(),
            vec![Part::SignalProjector, Part::ImageProjector, Part::Lora]
        );
        let reloaded = fresh.forward(&ex).unwrap().logits;
        assert_eq!(max_abs_diff(&trained, &reloaded), 0.0);
    }
}

#[test]
fn a_parts_file_for_another_model_is_refused() {
    let model = Setup::default().build(&[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.safetensors");
    model.save_parts(&["projector"], &path).unwrap();
    // Deeper signal projector: the file lacks its second layer.
    let mut deeper = Setup::default();
    deeper.config.signal_depth = 2;
    let mut other = deeper.build(&[]);
    match other.load_parts(&path) {
        Err(MmError::StateFile { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains("layers.1"), "{reason}");
        }
        other => panic!("expected a parts-file error, got {other:?}"),
    }
}

#[test]
fn precomputed_inputs_give_the_same_logits() {
    for setup in [
        Setup::default(),
        Setup::default().codes(),
        Setup::default().tiles(),
    ] {
        let model = setup.build(&["projector"]);
        let tiles = setup.config.tiles;
        let data = vec![(
            item(
                "p",
                common::QUESTION,
                "Sinus rhythm.",
                &[("a", Modality::Signal), ("a", Modality::Image)],
            ),
            vec![window(5), pixels(6, tiles)],
        )];
        let pre: Vec<Vec<EcgInput>> = data
            .iter()
            .map(|(_, x)| model.precompute(x).unwrap())
            .collect();
        assert!(matches!(
            pre[0][0],
            EcgInput::Latents(_) | EcgInput::Codes(_)
        ));
        assert!(matches!(pre[0][1], EcgInput::Features(_)));
        let raw = model.forward(&examples(&data)).unwrap().logits;
        let ex: Vec<Example> = data
            .iter()
            .zip(&pre)
            .map(|((i, _), x)| Example::new(i, x))
            .collect();
        let cached = model.forward(&ex).unwrap().logits;
        assert!(max_abs_diff(&raw, &cached) < 1e-5);
    }
}

#[test]
fn part_requests_that_cannot_be_met_are_errors() {
    let mut model = Setup::default().build(&[]);
    match model.trainable_vars(&["lora"]) {
        Err(MmError::FrozenPart { part, .. }) => assert_eq!(part, "lora"),
        other => panic!("expected FrozenPart, got {other:?}"),
    }
    match model.set_trainable(&["backbone"]) {
        Err(MmError::NotTrainable { part, reason }) => {
            assert_eq!(part, "backbone");
            assert!(reason.contains("lora"), "{reason}");
        }
        other => panic!("expected NotTrainable, got {other:?}"),
    }
    let mut no_vision = Setup {
        vision: false,
        ..Setup::default()
    }
    .build(&[]);
    match no_vision.set_trainable(&["vision"]) {
        Err(MmError::AbsentPart { part, .. }) => assert_eq!(part, "vision"),
        other => panic!("expected AbsentPart, got {other:?}"),
    }
    assert!(matches!(
        model.set_trainable(&["projectors"]),
        Err(MmError::UnknownPart { .. })
    ));
    // A failed request leaves the model as it was.
    assert!(model.trainable_parts().is_empty());
}

fn input_error(
    model: &HeartcareModel,
    files: &[(&str, Modality)],
    inputs: Vec<EcgInput>,
) -> MmError {
    let it = item("bad", "q", "a", files);
    model.forward(&[Example::new(&it, &inputs)]).unwrap_err()
}

#[test]
fn bad_inputs_name_the_item_and_what_was_expected() {
    let model = Setup::default().build(&[]);
    let check = |err: MmError, index: usize, expected_part: &str| match err {
        MmError::Input {
            item,
            index: i,
            expected,
            ..
        } => {
            assert_eq!(item, "item `bad`");
            assert_eq!(i, index);
            assert!(expected.contains(expected_part), "{expected}");
        }
        other => panic!("expected an input error, got {other:?}"),
    };
    // Pixels labelled as a signal.
    check(
        input_error(&model, &[("a", Modality::Signal)], vec![pixels(1, false)]),
        0,
        "signal input",
    );
    // Eleven leads.
    let short = EcgInput::Window(Tensor::zeros((11, 150), DType::F32, &Device::Cpu).unwrap());
    check(
        input_error(
            &model,
            &[("a", Modality::Image), ("b", Modality::Signal)],
            vec![pixels(1, false), short],
        ),
        1,
        "[12, L >= 100]",
    );
    // A whole image where 12 tiles are expected.
    let tiled = Setup::default().tiles().build(&[]);
    check(
        input_error(&tiled, &[("a", Modality::Image)], vec![pixels(1, false)]),
        0,
        "12 lead tiles",
    );
    // Codes out of the codebook.
    let codes = EcgInput::Codes(
        Tensor::new(&[[0u32, 1, 2, 3, 99], [0, 0, 0, 0, 0]], &Device::Cpu).unwrap(),
    );
    check(
        input_error(&model, &[("a", Modality::Signal)], vec![codes]),
        0,
        "below 16",
    );
    // Fewer inputs than labels.
    match input_error(
        &model,
        &[("a", Modality::Signal), ("a", Modality::Image)],
        vec![window(1)],
    ) {
        MmError::Item { item, reason } => {
            assert_eq!(item, "item `bad`");
            assert!(
                reason.contains("2 modality labels but 1 inputs"),
                "{reason}"
            );
        }
        other => panic!("expected an item error, got {other:?}"),
    }
}

#[test]
fn inputs_of_a_missing_stream_are_refused_or_dropped() {
    let mut setup = Setup::default();
    setup.config.signal = false;
    let files = [("a", Modality::Signal), ("a", Modality::Image)];
    let it = item("mixed", "q", "a", &files);
    let inputs = vec![window(1), pixels(2, false)];
    let strict = setup.build(&[]);
    match strict.forward(&[Example::new(&it, &inputs)]) {
        Err(MmError::Item { reason, .. }) => {
            assert!(reason.contains("input 0 is `signal`"), "{reason}")
        }
        other => panic!("expected an item error, got {other:?}"),
    }
    setup.config.missing_modality = MissingModality::Drop;
    let lenient = setup.build(&[]);
    let prepared = lenient.prepare(&[Example::new(&it, &inputs)]).unwrap();
    let chat = lenient.chat_tokens();
    let ids = &prepared.rows[0].ids;
    assert_eq!(ids[0], chat.image_start);
    assert_eq!(ids[3], chat.image_end);
    assert_eq!(ids[4], chat.user);
    assert!(!ids.contains(&chat.signal_start));
}

#[test]
fn lora_targets_follow_the_backbone_layout() {
    use beatlab_lm::Architecture;
    let names = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let paper = names(&["q_proj", "k_proj", "v_proj", "o_proj"]);
    assert_eq!(
        beatlab_mm::lora_targets_for(Architecture::Phi3, &paper),
        names(&["qkv_proj", "o_proj"])
    );
    assert_eq!(
        beatlab_mm::lora_targets_for(Architecture::Qwen2, &paper),
        paper
    );
    assert_eq!(
        beatlab_mm::lora_targets_for(Architecture::Qwen2, &names(&["qkv_proj", "gate_up_proj"])),
        names(&["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"])
    );
}

#[test]
fn codes_given_to_a_latents_model_are_looked_up_in_the_codebooks() {
    let model = Setup::default().build(&[]);
    let codes_model = Setup::default().codes().build(&[]);
    // The same seed gives both models the same Beat, so the codes of one are the other's.
    let w = window(9);
    let codes = codes_model
        .precompute(std::slice::from_ref(&w))
        .unwrap()
        .remove(0);
    assert!(matches!(codes, EcgInput::Codes(_)));
    let it = item("c", "q", "a", &[("a", Modality::Signal)]);
    let from_window = model.forward(&[Example::new(&it, &[w])]).unwrap().logits;
    let from_codes = model
        .forward(&[Example::new(&it, &[codes])])
        .unwrap()
        .logits;
    assert!(max_abs_diff(&from_window, &from_codes) < 1e-5);
}

#[test]
fn projector_depths_and_image_tokens_follow_the_config() {
    let mut setup = Setup::default();
    setup.config.signal_depth = 2;
    setup.config.image_depth = 1;
    setup.config.image_tokens = 3;
    let model = setup.build(&[]);
    assert_eq!(model.signal_projector().unwrap().depth(), 2);
    let image = model.image_projector().unwrap();
    assert_eq!((image.depth(), image.tokens()), (1, 3));
    let it = item("t", "q", "a", &[("a", Modality::Image)]);
    let inputs = [pixels(1, false)];
    let prepared = model.prepare(&[Example::new(&it, &inputs)]).unwrap();
    assert_eq!(prepared.rows[0].splices[0].len, 3);
    assert_eq!(
        prepared.encoded.table.unwrap().dims(),
        &[3, model.hidden_size()]
    );
}

#[test]
fn bf16_backbone_trains_the_projectors() {
    let setup = Setup::default();
    let mut spec = setup.spec();
    spec.dtype = DType::BF16;
    let model = HeartcareModel::new(
        spec,
        Some(common::tokenizer()),
        &Device::Cpu,
        &["projector"],
    )
    .unwrap();
    let data = two_items();
    let out = model.forward(&examples(&data)).unwrap();
    assert_eq!(out.logits.dtype(), DType::BF16);
    let loss = out.loss.to_scalar::<f32>().unwrap();
    assert!(loss.is_finite(), "loss {loss}");
    let grads = out.loss.backward().unwrap();
    for (name, var) in model.trainable_vars(&["projector"]).unwrap() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        assert_eq!(g.dtype(), DType::F32, "{name}: master weights stay f32");
    }
}

#[test]
fn the_model_can_be_shared_across_threads() {
    fn check<T: Send + Sync>() {}
    check::<HeartcareModel>();
}
