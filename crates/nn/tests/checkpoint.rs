//! Safetensors round trips of named tensors and of a whole training state.

use std::collections::{BTreeMap, HashMap};

use beatlab_nn::checkpoint::{
    CheckpointError, from_safetensors, restore_training_state, safetensors_metadata, strip_prefix,
    to_safetensors, training_state, with_prefix,
};
use beatlab_nn::optim::{AdamW, AdamWConfig};
use beatlab_nn::{Beat, BeatConfig, ParamStore};
use candle_core::{DType, Device, Tensor};

fn bytes_of(t: &Tensor) -> Vec<u8> {
    let one = BTreeMap::from([("t".to_string(), t.clone())]);
    // Bit-exact comparison without dtype-specific code: serialise the tensor alone.
    to_safetensors(&one, None).unwrap()
}

#[test]
fn every_supported_dtype_round_trips_exactly() {
    let base = Tensor::new(
        &[[1.5f32, -0.0, f32::MIN_POSITIVE], [3.25e7, -7.0, 0.1]],
        &Device::Cpu,
    )
    .unwrap();
    let mut tensors = BTreeMap::new();
    for dtype in [
        DType::F32,
        DType::F64,
        DType::BF16,
        DType::F16,
        DType::U8,
        DType::U32,
        DType::I64,
    ] {
        let t = base.abs().unwrap().to_dtype(dtype).unwrap();
        tensors.insert(format!("{dtype:?}"), t);
    }
    tensors.insert("scalar".into(), Tensor::new(42i64, &Device::Cpu).unwrap());
    // A non-contiguous view is saved as its logical values.
    tensors.insert("transposed".into(), base.t().unwrap());
    let meta = HashMap::from([("config".to_string(), "{\"a\":1}".to_string())]);
    let bytes = to_safetensors(&tensors, Some(meta.clone())).unwrap();
    let back = from_safetensors(&bytes, &Device::Cpu).unwrap();
    assert_eq!(
        back.keys().collect::<Vec<_>>(),
        tensors.keys().collect::<Vec<_>>()
    );
    for (name, t) in &tensors {
        let b = &back[name];
        assert_eq!(b.dtype(), t.dtype(), "{name}");
        assert_eq!(b.dims(), t.dims(), "{name}");
        assert_eq!(bytes_of(b), bytes_of(t), "{name}");
    }
    assert_eq!(
        back["transposed"].to_vec2::<f32>().unwrap(),
        base.t().unwrap().to_vec2::<f32>().unwrap()
    );
    assert_eq!(safetensors_metadata(&bytes).unwrap(), meta);
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    assert!(matches!(
        from_safetensors(b"definitely not safetensors", &Device::Cpu),
        Err(CheckpointError::Format(_))
    ));
    assert!(from_safetensors(&[], &Device::Cpu).is_err());
}

#[test]
fn prefixes_add_and_strip() {
    let t = Tensor::new(1f32, &Device::Cpu).unwrap();
    let map = BTreeMap::from([("a".to_string(), t.clone()), ("b.c".to_string(), t)]);
    let prefixed = with_prefix("model.", &map);
    assert_eq!(
        prefixed.keys().collect::<Vec<_>>(),
        ["model.a", "model.b.c"]
    );
    let mut mixed = prefixed.clone();
    mixed.insert("optim.x".into(), Tensor::new(2f32, &Device::Cpu).unwrap());
    assert_eq!(
        strip_prefix("model.", &mixed).keys().collect::<Vec<_>>(),
        ["a", "b.c"]
    );
}

fn tiny() -> BeatConfig {
    BeatConfig {
        leads: 2,
        patch_size: 5,
        width: 8,
        encoder_depth: 1,
        decoder_depth: 1,
        heads: 2,
        head_dim: None,
        codebook_size: 4,
        input_len: 20,
        predict_len: 10,
        ..BeatConfig::default()
    }
}

#[test]
fn training_state_holds_params_buffers_and_optimiser_and_restores_strictly() {
    let store = ParamStore::new(1);
    let _beat = Beat::new(tiny(), &store, DType::F32, &Device::Cpu).unwrap();
    let opt = AdamW::new(store.vars(), AdamWConfig::default()).unwrap();
    let state = training_state(&store, Some(&opt)).unwrap();
    assert!(state.contains_key("param.head.weight"));
    assert!(state.contains_key("buffer.vq.level0.embed"));
    assert!(state.contains_key("buffer.vq.updates"));
    assert!(state.contains_key("optim.head.weight.exp_avg"));
    assert!(state.contains_key("optim.lr"));
    let bytes = to_safetensors(&state, None).unwrap();

    // Another seed: different values everywhere until restored.
    let other = ParamStore::new(2);
    let _beat = Beat::new(tiny(), &other, DType::F32, &Device::Cpu).unwrap();
    let mut other_opt = AdamW::new(other.vars(), AdamWConfig::default()).unwrap();
    assert_ne!(
        to_safetensors(&training_state(&other, Some(&other_opt)).unwrap(), None).unwrap(),
        bytes
    );
    let loaded = from_safetensors(&bytes, &Device::Cpu).unwrap();
    restore_training_state(&loaded, &other, Some(&mut other_opt)).unwrap();
    assert_eq!(
        to_safetensors(&training_state(&other, Some(&other_opt)).unwrap(), None).unwrap(),
        bytes
    );

    // A state of a different model (another codebook size) does not load.
    let bigger = ParamStore::new(1);
    let _beat = Beat::new(
        BeatConfig {
            codebook_size: 8,
            ..tiny()
        },
        &bigger,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert!(matches!(
        restore_training_state(&loaded, &bigger, None),
        Err(CheckpointError::Model {
            what: "buffers",
            ..
        })
    ));
}
