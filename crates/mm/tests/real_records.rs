//! A real 12-lead recording (LUDB record 1) through the model: its printed page cut into 12
//! lead tiles (12-lead mode) and a window of its signal, in one item.

mod common;

use std::path::PathBuf;

use beatlab_ecg::{STANDARD_LEADS, wfdb};
use beatlab_heartcare::instruct::Modality;
use beatlab_heartcare::render::RenderConfig;
use beatlab_mm::{EcgInput, Example, TILES_PER_IMAGE, render_image_input};
use candle_core::{Device, Tensor};
use common::{IMAGE_SIZE, Setup, WINDOW_LEN, item};

fn data_root() -> PathBuf {
    std::env::var_os("BEATLAB_ECG_DATA").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ecg"),
        PathBuf::from,
    )
}

#[test]
fn a_ludb_record_enters_as_twelve_tiles_and_a_signal_window() {
    let path = data_root().join("ludb").join("data").join("1");
    let record = wfdb::read_record(&path)
        .unwrap_or_else(|e| panic!("reading {} (set BEATLAB_ECG_DATA): {e}", path.display()));

    let config = RenderConfig::six_by_two(IMAGE_SIZE, IMAGE_SIZE);
    let EcgInput::Pixels(tiles) = render_image_input(&record, &config, true, &Device::Cpu).unwrap()
    else {
        panic!("rendering gives pixels");
    };
    assert_eq!(tiles.dims(), &[TILES_PER_IMAGE, 3, IMAGE_SIZE, IMAGE_SIZE]);
    // SigLIP's normalisation puts pixels in [-1, 1]; every lead's tile is its own picture.
    let flat: Vec<Vec<f32>> = (0..TILES_PER_IMAGE)
        .map(|i| {
            tiles
                .get(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect();
    assert!(flat.iter().flatten().all(|v| (-1.0..=1.0).contains(v)));
    for i in 0..TILES_PER_IMAGE {
        for j in i + 1..TILES_PER_IMAGE {
            assert_ne!(flat[i], flat[j], "tiles {i} and {j} are identical");
        }
    }

    // The first samples of the 12 standard leads, in millivolts.
    let mut values = Vec::with_capacity(12 * WINDOW_LEN);
    for lead in STANDARD_LEADS {
        let signal = record
            .lead(lead)
            .unwrap_or_else(|| panic!("LUDB 1 has lead {lead}"));
        values.extend_from_slice(&signal[..WINDOW_LEN]);
    }
    let window = Tensor::from_vec(values, (12, WINDOW_LEN), &Device::Cpu).unwrap();

    let model = Setup::default().tiles().build(&["projector", "lora"]);
    let it = item(
        "ludb/1",
        common::QUESTION,
        "Sinus rhythm.",
        &[("ludb/1", Modality::Signal), ("ludb/1", Modality::Image)],
    );
    let inputs = vec![EcgInput::Window(window), EcgInput::Pixels(tiles)];
    let out = model.forward(&[Example::new(&it, &inputs)]).unwrap();
    let loss = out.loss.to_scalar::<f32>().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
    // Image block first: 12 tiles x 2 tokens between its markers; then 5 signal latents.
    let chat = model.chat_tokens();
    let row = &out.rows[0];
    assert_eq!(row.ids[0], chat.image_start);
    assert_eq!(row.ids[1 + 24], chat.image_end);
    assert_eq!(row.ids[26], chat.signal_start);
    assert_eq!(row.ids[26 + 6], chat.signal_end);
    assert_eq!(row.splices.len(), 2);
    assert_eq!((row.splices[0].position, row.splices[0].len), (1, 24));
    assert_eq!((row.splices[1].position, row.splices[1].len), (27, 5));
    // Gradients flow back to the projectors from this real input.
    let grads = out.loss.backward().unwrap();
    for (name, var) in model.trainable_vars(&["projector"]).unwrap() {
        assert!(
            grads.get(var.as_tensor()).is_some(),
            "{name} got no gradient"
        );
    }
}
