//! The ECG ViT signal encoder and anyECG-chat's flexible inputs in the assembled model: the
//! block of a chunked, reduced-lead recording holds exactly the lead-mask token, then per chunk
//! its position token and its projected ViT tokens; gradients reach the ViT (and not Beat);
//! precomputed chunks give the same loss; chunk counts the model cannot place are errors.

mod common;

use beatlab_heartcare::instruct::Modality;
use beatlab_mm::{BlockContent, EcgInput, Example, HeartcareModel, MmError, Part};
use candle_core::{DType, Device, Tensor};
use common::{Setup, WINDOW_LEN, item, tiny_vit, window};

fn setup(max_chunks: usize, lead_mask: bool) -> Setup {
    let mut s = Setup {
        vit: Some(tiny_vit()),
        vision: false,
        ..Setup::default()
    };
    s.config.image = false;
    s.config.max_chunks = max_chunks;
    s.config.lead_mask = lead_mask;
    s.config.max_seq_len = 256;
    s
}

fn window_tensor(seed: u64) -> Tensor {
    match window(seed) {
        EcgInput::Window(t) => t,
        _ => unreachable!(),
    }
}

/// `k` chunks `[k, 12, 150]`, leads 3.. zeroed (a 3-lead recording).
fn chunks(k: usize) -> (Tensor, Vec<bool>) {
    let mask: Vec<bool> = (0..12).map(|l| l < 3).collect();
    let keep = Tensor::from_vec(
        mask.iter()
            .map(|&m| f32::from(u8::from(m)))
            .collect::<Vec<_>>(),
        (12, 1),
        &Device::Cpu,
    )
    .unwrap();
    let all: Vec<Tensor> = (0..k)
        .map(|c| window_tensor(40 + c as u64).broadcast_mul(&keep).unwrap())
        .collect();
    (Tensor::stack(&all, 0).unwrap(), mask)
}

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

fn var(model: &HeartcareModel, part: Part, name: &str) -> Tensor {
    model
        .store(part)
        .unwrap()
        .get(name)
        .unwrap_or_else(|| panic!("{part}/{name}"))
        .as_tensor()
        .clone()
}

#[test]
fn a_chunked_block_is_mask_then_position_and_tokens_per_chunk() {
    let model = setup(3, true).build(&[]);
    let (windows, mask) = chunks(2);
    let it = item(
        "long",
        "What does it show?",
        "Sinus rhythm.",
        &[("r", Modality::Signal)],
    );
    let inputs = [EcgInput::Chunks {
        windows: windows.clone(),
        lead_mask: Some(mask.clone()),
    }];
    let prepared = model.prepare(&[Example::new(&it, &inputs)]).unwrap();
    let tokens = tiny_vit().tokens();
    let blocks = &prepared.encoded.blocks[0];
    assert_eq!(blocks.len(), 1);
    let BlockContent::Embeds { first_row, len } = blocks[0].content else {
        panic!("a signal block of embeddings");
    };
    assert_eq!(len, 1 + 2 * (1 + tokens));
    let table = prepared
        .encoded
        .table
        .unwrap()
        .narrow(0, first_row, len)
        .unwrap();

    // The same rows built by hand from the parts.
    let w = var(&model, Part::SignalProjector, "flexible.lead_mask.weight");
    let b = var(&model, Part::SignalProjector, "flexible.lead_mask.bias");
    let m = Tensor::from_vec(
        mask.iter()
            .map(|&k| f32::from(u8::from(k)))
            .collect::<Vec<_>>(),
        (1, 12),
        &Device::Cpu,
    )
    .unwrap();
    let mask_row = m
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(&b)
        .unwrap();
    let pos = var(&model, Part::SignalProjector, "flexible.chunk_pos");
    let vit = model.vit().unwrap();
    let proj = model.signal_projector().unwrap();
    let mut expected = vec![mask_row];
    for c in 0..2 {
        expected.push(pos.narrow(0, c, 1).unwrap());
        let encoded = vit
            .forward(&windows.narrow(0, c, 1).unwrap().narrow(2, 0, 100).unwrap())
            .unwrap();
        expected.push(proj.forward(&encoded.squeeze(0).unwrap()).unwrap());
    }
    let expected = Tensor::cat(&expected, 0).unwrap();
    let diff = max_abs_diff(&table, &expected);
    assert!(diff < 1e-5, "block differs by {diff}");
    // The row: markers around the block, then the chat.
    let row = &prepared.rows[0];
    assert_eq!(row.splices.len(), 1);
    assert_eq!(row.splices[0].len, len);
    assert_eq!(row.ids[0], model.chat_tokens().signal_start);
    assert_eq!(row.ids[len + 1], model.chat_tokens().signal_end);
}

#[test]
fn a_plain_window_gets_the_mask_token_and_one_position() {
    let model = setup(2, true).build(&[]);
    let it = item(
        "w",
        "What does it show?",
        "Sinus rhythm.",
        &[("r", Modality::Signal)],
    );
    let inputs = [window(3)];
    let prepared = model.prepare(&[Example::new(&it, &inputs)]).unwrap();
    assert_eq!(
        prepared.encoded.blocks[0][0].content.len(),
        1 + 1 + tiny_vit().tokens()
    );
    // Without flexible tokens the ViT's tokens are the whole block.
    let plain = setup(0, false).build(&[]);
    let prepared = plain.prepare(&[Example::new(&it, &inputs)]).unwrap();
    assert_eq!(
        prepared.encoded.blocks[0][0].content.len(),
        tiny_vit().tokens()
    );
    assert!(
        plain
            .store(Part::SignalProjector)
            .unwrap()
            .vars()
            .iter()
            .all(|(n, _)| !n.starts_with("flexible")),
        "no flexible variables when the options are off"
    );
}

#[test]
fn gradients_reach_the_vit_and_flexible_tokens_but_not_beat() {
    let model = setup(3, true).build(&["ecg_vit", "projector"]);
    let (windows, mask) = chunks(2);
    let it = item(
        "long",
        "What does it show?",
        "Sinus rhythm.",
        &[("r", Modality::Signal)],
    );
    let inputs = [EcgInput::Chunks {
        windows,
        lead_mask: Some(mask),
    }];
    let grads = model
        .forward(&[Example::new(&it, &inputs)])
        .unwrap()
        .loss
        .backward()
        .unwrap();
    for (name, v) in model.store(Part::Vit).unwrap().vars() {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("ecg_vit/{name} got no gradient"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "ecg_vit/{name} has a zero gradient");
    }
    for name in ["flexible.chunk_pos", "flexible.lead_mask.weight"] {
        let v = var(&model, Part::SignalProjector, name);
        assert!(grads.get(&v).is_some(), "{name} got no gradient");
    }
    for (name, v) in model.store(Part::Beat).unwrap().vars() {
        assert!(
            grads.get(v.as_tensor()).is_none(),
            "beat/{name} is off the path"
        );
    }
    // A frozen ViT gets none.
    let frozen = setup(3, true).build(&["projector"]);
    let grads = frozen
        .forward(&[Example::new(&it, &inputs)])
        .unwrap()
        .loss
        .backward()
        .unwrap();
    for (name, v) in frozen.store(Part::Vit).unwrap().vars() {
        assert!(grads.get(v.as_tensor()).is_none(), "frozen ecg_vit/{name}");
    }
}

#[test]
fn precomputed_chunks_give_the_same_loss() {
    let model = setup(3, true).build(&[]);
    let (windows, mask) = chunks(3);
    let it = item(
        "long",
        "What does it show?",
        "Atrial fibrillation.",
        &[("r", Modality::Signal)],
    );
    let raw = [EcgInput::Chunks {
        windows,
        lead_mask: Some(mask),
    }];
    let pre = model.precompute(&raw).unwrap();
    assert!(
        matches!(&pre[0], EcgInput::ChunkLatents { latents, .. } if latents.dims() == [3, tiny_vit().tokens(), 16]),
        "{}",
        pre[0].describe()
    );
    let loss = |inputs: &[EcgInput]| {
        model
            .forward(&[Example::new(&it, inputs)])
            .unwrap()
            .loss
            .to_dtype(DType::F32)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let (a, b) = (loss(&raw), loss(&pre));
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
}

#[test]
fn chunk_counts_the_model_cannot_place_are_errors() {
    let it = item(
        "long",
        "What does it show?",
        "Sinus rhythm.",
        &[("r", Modality::Signal)],
    );
    let (windows, mask) = chunks(3);
    let inputs = [EcgInput::Chunks {
        windows,
        lead_mask: Some(mask),
    }];
    for model in [setup(2, true).build(&[]), setup(0, true).build(&[])] {
        match model.prepare(&[Example::new(&it, &inputs)]) {
            Err(MmError::Input { expected, .. }) => {
                assert!(expected.contains("max_chunks"), "{expected}")
            }
            other => panic!("expected an input error, got {:?}", other.map(|_| ())),
        }
    }
    // Windows too short for the ViT.
    let short = [EcgInput::Chunks {
        windows: Tensor::zeros((1, 12, 50), DType::F32, &Device::Cpu).unwrap(),
        lead_mask: None,
    }];
    assert!(matches!(
        setup(2, false)
            .build(&[])
            .prepare(&[Example::new(&it, &short)]),
        Err(MmError::Input { .. })
    ));
    assert_eq!(WINDOW_LEN, 150);
}
