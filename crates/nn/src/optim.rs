//! AdamW with exportable state, and gradient clipping by global norm.
//!
//! `candle_nn::AdamW` keeps its moments private, so a run restored from a checkpoint would
//! restart them at zero and drift from the run it resumes. [`AdamW`] here exposes every piece of
//! its state as named tensors ([`AdamW::state`] / [`AdamW::load_state`]), so that
//! "train 10 steps" and "train 5, save, restore into fresh objects, train 5" end bit-identical.
//!
//! The update is PyTorch's `torch.optim.AdamW` (decoupled weight decay, bias correction, `eps`
//! added after the square root), with a step counter per parameter as PyTorch keeps it: a
//! parameter that gets no gradient in a step is left alone, moments, counter and decay included.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters. `Default` is PyTorch's (`lr` 1e-3, betas 0.9 / 0.999, `eps` 1e-8,
/// `weight_decay` 0.01).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Learning rate (changed over a run by [`AdamW::set_lr`]).
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay: each step multiplies the parameters by `1 - lr * weight_decay`.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// What went wrong in the optimiser.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// Two parameters were given the same name.
    #[error("parameter `{0}` is listed twice")]
    DuplicateName(String),
    /// A hyper-parameter is out of range.
    #[error("invalid AdamW setting `{field}` = {value}: {expected}")]
    Config {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: f64,
        /// The valid range.
        expected: &'static str,
    },
    /// Saved state lacks an entry this optimiser needs.
    #[error("optimiser state has no `{0}`")]
    MissingState(String),
    /// Saved state has an entry for no parameter of this optimiser.
    #[error("optimiser state entry `{0}` belongs to no parameter of this optimiser")]
    UnexpectedState(String),
    /// A saved moment's shape differs from its parameter's.
    #[error("optimiser state `{name}` has shape {found:?}, expected {expected:?}")]
    StateShape {
        /// The state entry.
        name: String,
        /// The parameter's shape.
        expected: Vec<usize>,
        /// The saved shape.
        found: Vec<usize>,
    },
    /// A tensor operation failed.
    #[error("tensor operation: {0}")]
    Candle(#[from] candle_core::Error),
}

#[derive(Clone, Debug)]
struct ParamState {
    name: String,
    var: Var,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: u64,
}

/// AdamW over named variables.
#[derive(Clone, Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<ParamState>,
}

/// Suffixes of the state entries of one parameter `p`: `p.exp_avg`, `p.exp_avg_sq`, `p.step`.
const EXP_AVG: &str = "exp_avg";
const EXP_AVG_SQ: &str = "exp_avg_sq";
const STEP: &str = "step";

impl AdamW {
    /// An optimiser over `vars` (e.g. `ParamStore::vars()`), with zero moments.
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self, OptimError> {
        check_config(&cfg)?;
        let mut seen = BTreeSet::new();
        let mut params = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            if !seen.insert(name.clone()) {
                return Err(OptimError::DuplicateName(name));
            }
            let exp_avg = var.zeros_like()?;
            let exp_avg_sq = var.zeros_like()?;
            params.push(ParamState {
                name,
                var,
                exp_avg,
                exp_avg_sq,
                step: 0,
            });
        }
        Ok(Self { cfg, params })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// The optimised variables, in the order given to [`AdamW::new`].
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.var.clone()))
            .collect()
    }

    /// One update of every variable that has a gradient in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<(), OptimError> {
        let AdamWConfig {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        for p in &mut self.params {
            let Some(grad) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            p.step += 1;
            let t = p.step as i32;
            let bias1 = 1.0 - beta1.powi(t);
            let bias2 = 1.0 - beta2.powi(t);
            let exp_avg = ((&p.exp_avg * beta1)? + (grad * (1.0 - beta1))?)?;
            let exp_avg_sq = ((&p.exp_avg_sq * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
            let theta = p.var.as_tensor();
            let theta = if weight_decay != 0.0 {
                (theta * (1.0 - lr * weight_decay))?
            } else {
                theta.clone()
            };
            let denom = ((&exp_avg_sq / bias2)?.sqrt()? + eps)?;
            let update = ((&exp_avg / bias1)? / denom)?;
            let theta = (theta - (update * lr)?)?;
            p.var.set(&theta)?;
            p.exp_avg = exp_avg;
            p.exp_avg_sq = exp_avg_sq;
        }
        Ok(())
    }

    /// The full state as named tensors: for each parameter `p`, `p.exp_avg`, `p.exp_avg_sq`
    /// (its dtype and shape) and `p.step` (a u32 pair `[low, high]` of the 64-bit counter, so
    /// that it survives any device and the safetensors format exactly), plus `lr` (an f64
    /// scalar). The tensors are snapshots: later steps do not change them.
    pub fn state(&self) -> Result<BTreeMap<String, Tensor>, OptimError> {
        let mut out = BTreeMap::new();
        for p in &self.params {
            let device = p.var.device();
            out.insert(format!("{}.{EXP_AVG}", p.name), p.exp_avg.clone());
            out.insert(format!("{}.{EXP_AVG_SQ}", p.name), p.exp_avg_sq.clone());
            let step = [p.step as u32, (p.step >> 32) as u32];
            out.insert(format!("{}.{STEP}", p.name), Tensor::new(&step, device)?);
        }
        let device = self
            .params
            .first()
            .map(|p| p.var.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        out.insert("lr".into(), Tensor::new(self.cfg.lr, &device)?);
        Ok(out)
    }

    /// Restores [`AdamW::state`]'s output. Every parameter's entries must be present with the
    /// right shapes and nothing else may be, so that state never loads into the wrong model.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), OptimError> {
        let mut expected: BTreeSet<String> = BTreeSet::new();
        expected.insert("lr".into());
        for p in &self.params {
            for suffix in [EXP_AVG, EXP_AVG_SQ, STEP] {
                expected.insert(format!("{}.{suffix}", p.name));
            }
        }
        if let Some(extra) = state.keys().find(|k| !expected.contains(*k)) {
            return Err(OptimError::UnexpectedState(extra.clone()));
        }
        let get = |name: &str| {
            state
                .get(name)
                .ok_or_else(|| OptimError::MissingState(name.to_string()))
        };
        let mut restored = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let moment = |suffix: &str| -> Result<Tensor, OptimError> {
                let name = format!("{}.{suffix}", p.name);
                let t = get(&name)?;
                if t.dims() != p.var.dims() {
                    return Err(OptimError::StateShape {
                        name,
                        expected: p.var.dims().to_vec(),
                        found: t.dims().to_vec(),
                    });
                }
                Ok(t.to_dtype(p.var.dtype())?.to_device(p.var.device())?)
            };
            let exp_avg = moment(EXP_AVG)?;
            let exp_avg_sq = moment(EXP_AVG_SQ)?;
            let step_name = format!("{}.{STEP}", p.name);
            let step_t = get(&step_name)?;
            if step_t.dims() != [2] {
                return Err(OptimError::StateShape {
                    name: step_name,
                    expected: vec![2],
                    found: step_t.dims().to_vec(),
                });
            }
            let halves = step_t.to_dtype(DType::U32)?.to_vec1::<u32>()?;
            let step = u64::from(halves[0]) | (u64::from(halves[1]) << 32);
            restored.push((exp_avg, exp_avg_sq, step));
        }
        let lr = get("lr")?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        for (p, (exp_avg, exp_avg_sq, step)) in self.params.iter_mut().zip(restored) {
            p.exp_avg = exp_avg;
            p.exp_avg_sq = exp_avg_sq;
            p.step = step;
        }
        self.cfg.lr = lr;
        Ok(())
    }
}

fn check_config(cfg: &AdamWConfig) -> Result<(), OptimError> {
    let bad = |field, value, expected| {
        Err(OptimError::Config {
            field,
            value,
            expected,
        })
    };
    if !(cfg.lr.is_finite() && cfg.lr >= 0.0) {
        return bad("lr", cfg.lr, "a finite number >= 0");
    }
    if !(0.0..1.0).contains(&cfg.beta1) {
        return bad("beta1", cfg.beta1, "in [0, 1)");
    }
    if !(0.0..1.0).contains(&cfg.beta2) {
        return bad("beta2", cfg.beta2, "in [0, 1)");
    }
    if !(cfg.eps.is_finite() && cfg.eps > 0.0) {
        return bad("eps", cfg.eps, "a finite number > 0");
    }
    if !(cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0) {
        return bad("weight_decay", cfg.weight_decay, "a finite number >= 0");
    }
    Ok(())
}

/// Scales the gradients of `vars` in `grads` so that their global L2 norm is at most
/// `max_norm` (PyTorch's `clip_grad_norm_`: factor `max_norm / (norm + 1e-6)` when below 1),
/// and returns the norm before clipping. Variables without a gradient are skipped. A
/// non-finite norm is returned with the gradients left as they are, so the caller can skip the
/// step instead of writing NaN into every parameter.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    vars: &[(String, Var)],
    max_norm: f64,
) -> candle_core::Result<f64> {
    let mut squares = Vec::with_capacity(vars.len());
    for (_, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            squares.push(g.to_dtype(DType::F32)?.sqr()?.sum_all()?);
        }
    }
    if squares.is_empty() {
        return Ok(0.0);
    }
    let total = Tensor::stack(&squares, 0)?.sum_all()?.to_scalar::<f32>()?;
    let norm = f64::from(total).sqrt();
    if !norm.is_finite() {
        return Ok(norm);
    }
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        for (_, var) in vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                let scaled = (g * factor)?;
                grads.insert(var.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}
