//! Seeded, named trainable parameters.
//!
//! candle cannot seed its CPU random generator, so a model built from `VarMap` gets different
//! weights every run. [`ParamStore`] is a `VarBuilder` backend that creates each variable from a
//! generator seeded by `(seed, tensor name)`: initialisation is reproducible, independent of the
//! order in which modules ask for their tensors, and identical on every device (values are drawn
//! on the host, then moved). It also keeps non-trainable buffers (EMA codebook statistics and the
//! like) under their own names so that checkpoints hold everything a run needs to resume.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Named trainable variables created deterministically from a seed.
#[derive(Clone)]
pub struct ParamStore {
    seed: u64,
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
    /// Non-trainable state (EMA statistics, counters). Kept as `Var`s only so that it can be
    /// overwritten in place; it never appears in [`ParamStore::vars`], so no optimiser sees it.
    buffers: Arc<Mutex<BTreeMap<String, Var>>>,
}

impl ParamStore {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            vars: Arc::new(Mutex::new(BTreeMap::new())),
            buffers: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// The seed every tensor of this store is drawn from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A `VarBuilder` whose `get`/`get_with_hints` create (or return) variables in this store.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// All variables, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let vars = self.vars.lock().expect("param store poisoned");
        vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The variables whose names start with `prefix`, sorted by name.
    pub fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, Var)> {
        self.vars()
            .into_iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<Var> {
        self.vars
            .lock()
            .expect("param store poisoned")
            .get(name)
            .cloned()
    }

    /// Total number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Current values of every variable, for saving. These share storage with the variables
    /// (an optimiser step changes them too): serialise them before training on, or `copy()`.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect()
    }

    /// Overwrite variables from saved tensors. Every variable of the store must be present with
    /// the same shape; extra tensors in `tensors` are an error too, so a checkpoint never loads
    /// silently into the wrong model.
    pub fn load(&self, tensors: &BTreeMap<String, Tensor>) -> std::result::Result<(), LoadError> {
        let vars = self.vars.lock().expect("param store poisoned");
        load_into(&vars, tensors)
    }

    /// A non-trainable buffer: created from the seeded generator on first request (like a
    /// variable), returned as is afterwards. Buffers are saved and loaded with
    /// [`ParamStore::buffer_tensors`] / [`ParamStore::load_buffers`] and never handed to an
    /// optimiser. Use [`Tensor::detach`] on `as_tensor()` in a forward pass so that no gradient
    /// is tracked for them.
    pub fn buffer(
        &self,
        name: &str,
        shape: impl Into<Shape>,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Var> {
        let shape = shape.into();
        let mut buffers = self.buffers.lock().expect("param store poisoned");
        if let Some(buf) = buffers.get(name) {
            if buf.shape() != &shape {
                candle_core::bail!(
                    "buffer `{name}` requested with shape {shape:?} but exists with {:?}",
                    buf.shape()
                );
            }
            return Ok(buf.clone());
        }
        let buf = self.create(&shape, name, init, dtype, device)?;
        buffers.insert(name.to_string(), buf.clone());
        Ok(buf)
    }

    /// Whether a buffer of that name exists already.
    pub fn contains_buffer(&self, name: &str) -> bool {
        self.buffers
            .lock()
            .expect("param store poisoned")
            .contains_key(name)
    }

    /// All buffers, sorted by name.
    pub fn buffers(&self) -> Vec<(String, Var)> {
        let buffers = self.buffers.lock().expect("param store poisoned");
        buffers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Current values of every buffer, for saving.
    pub fn buffer_tensors(&self) -> BTreeMap<String, Tensor> {
        self.buffers()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect()
    }

    /// Overwrite buffers from saved tensors, with the same strictness as [`ParamStore::load`].
    pub fn load_buffers(
        &self,
        tensors: &BTreeMap<String, Tensor>,
    ) -> std::result::Result<(), LoadError> {
        let buffers = self.buffers.lock().expect("param store poisoned");
        load_into(&buffers, tensors)
    }

    fn create(
        &self,
        shape: &Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Var> {
        let values = init_values(self.seed, name, shape, init);
        let t = Tensor::from_vec(values, shape.clone(), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        Var::from_tensor(&t)
    }
}

/// Every entry of `targets` must be in `tensors` with its shape, and nothing else may be.
fn load_into(
    targets: &BTreeMap<String, Var>,
    tensors: &BTreeMap<String, Tensor>,
) -> std::result::Result<(), LoadError> {
    for name in tensors.keys() {
        if !targets.contains_key(name) {
            return Err(LoadError::Unexpected(name.clone()));
        }
    }
    for (name, var) in targets.iter() {
        let t = tensors
            .get(name)
            .ok_or_else(|| LoadError::Missing(name.clone()))?;
        if t.dims() != var.dims() {
            return Err(LoadError::Shape {
                name: name.clone(),
                expected: var.dims().to_vec(),
                found: t.dims().to_vec(),
            });
        }
        // `copy` because `Var::set` refuses a source that shares the variable's storage, which is
        // what loading a store's own `tensors()` back would give.
        t.to_dtype(var.dtype())
            .and_then(|t| t.to_device(var.device()))
            .and_then(|t| t.copy())
            .and_then(|t| var.set(&t))
            .map_err(|e| LoadError::Candle(name.clone(), e))?;
    }
    Ok(())
}

/// Why saved tensors could not be loaded into a [`ParamStore`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The model has a parameter the saved tensors lack.
    #[error("missing tensor `{0}`")]
    Missing(String),
    /// The saved tensors have a parameter the model does not.
    #[error("unexpected tensor `{0}` (not a parameter of this model)")]
    Unexpected(String),
    /// A parameter's saved shape differs from the model's.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// The tensor could not be converted or copied.
    #[error("tensor `{0}`: {1}")]
    Candle(String, candle_core::Error),
}

impl SimpleBackend for ParamStore {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut vars = self.vars.lock().expect("param store poisoned");
        if let Some(var) = vars.get(name) {
            if var.shape() != &s {
                candle_core::bail!(
                    "parameter `{name}` requested with shape {s:?} but exists with {:?}",
                    var.shape()
                );
            }
            return Ok(var.as_tensor().clone());
        }
        let var = self.create(&s, name, h, dtype, dev)?;
        let t = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        match self.vars.lock().expect("param store poisoned").get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("parameter `{name}` does not exist"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars
            .lock()
            .expect("param store poisoned")
            .contains_key(name)
    }
}

/// A generator for one named tensor: seeded by the store seed and a stable hash of the name.
pub fn named_rng(seed: u64, name: &str) -> ChaCha8Rng {
    // FNV-1a: stable across Rust versions and platforms, unlike `DefaultHasher`.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ChaCha8Rng::seed_from_u64(seed ^ h)
}

fn init_values(seed: u64, name: &str, shape: &Shape, init: Init) -> Vec<f32> {
    let n = shape.elem_count();
    let mut rng = named_rng(seed, name);
    let normal = |rng: &mut ChaCha8Rng, mean: f64, std: f64| {
        let z: f64 = StandardNormal.sample(rng);
        (mean + std * z) as f32
    };
    match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Randn { mean, stdev } => (0..n).map(|_| normal(&mut rng, mean, stdev)).collect(),
        Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    (0..n)
                        .map(|_| rng.random_range(-bound..bound) as f32)
                        .collect()
                }
                candle_nn::init::NormalOrUniform::Normal => {
                    (0..n).map(|_| normal(&mut rng, 0.0, std)).collect()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_whatever_the_order() {
        let a = ParamStore::new(7);
        let b = ParamStore::new(7);
        let va = a.var_builder(DType::F32, &Device::Cpu);
        let vb = b.var_builder(DType::F32, &Device::Cpu);
        let a1 = candle_nn::linear(4, 3, va.pp("x")).unwrap();
        let _ = candle_nn::linear(2, 2, va.pp("y")).unwrap();
        let _ = candle_nn::linear(2, 2, vb.pp("y")).unwrap();
        let b1 = candle_nn::linear(4, 3, vb.pp("x")).unwrap();
        let da = a1.weight().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let db = b1.weight().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(da, db);
        let c = ParamStore::new(8);
        let c1 = candle_nn::linear(4, 3, c.var_builder(DType::F32, &Device::Cpu).pp("x")).unwrap();
        assert_ne!(
            da,
            c1.weight().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn load_rejects_missing_and_misshapen_tensors() {
        let s = ParamStore::new(1);
        let _ = candle_nn::linear(4, 3, s.var_builder(DType::F32, &Device::Cpu).pp("x")).unwrap();
        let mut saved = s.tensors();
        assert!(s.load(&saved).is_ok());
        saved.insert(
            "x.weight".into(),
            Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
        );
        assert!(matches!(s.load(&saved), Err(LoadError::Shape { .. })));
        saved.remove("x.weight");
        assert!(matches!(s.load(&saved), Err(LoadError::Missing(_))));
    }

    #[test]
    fn buffers_are_seeded_kept_apart_from_variables_and_reloaded_strictly() {
        let s = ParamStore::new(3);
        let dev = Device::Cpu;
        let b = s
            .buffer(
                "stats",
                (2, 2),
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
                DType::F32,
                &dev,
            )
            .unwrap();
        assert!(s.vars().is_empty(), "a buffer is not a trainable variable");
        assert!(s.contains_buffer("stats"));
        let again = ParamStore::new(3)
            .buffer(
                "stats",
                (2, 2),
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
                DType::F32,
                &dev,
            )
            .unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(b.as_tensor()), v(again.as_tensor()));
        // Asking again returns the same buffer, not a new one.
        b.set(&Tensor::zeros((2, 2), DType::F32, &dev).unwrap())
            .unwrap();
        let same = s
            .buffer("stats", (2, 2), Init::Const(5.0), DType::F32, &dev)
            .unwrap();
        assert_eq!(v(same.as_tensor()), [0.0; 4]);
        assert!(
            s.buffer("stats", 3, Init::Const(0.0), DType::F32, &dev)
                .is_err()
        );

        let mut saved = s.buffer_tensors();
        saved.insert(
            "stats".into(),
            Tensor::ones((2, 2), DType::F32, &dev).unwrap(),
        );
        s.load_buffers(&saved).unwrap();
        assert_eq!(v(b.as_tensor()), [1.0; 4]);
        saved.insert("other".into(), Tensor::ones(1, DType::F32, &dev).unwrap());
        assert!(matches!(
            s.load_buffers(&saved),
            Err(LoadError::Unexpected(_))
        ));
    }
}
