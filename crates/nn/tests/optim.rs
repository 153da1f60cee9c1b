//! AdamW against a plain-Rust reference, its state round trip, gradient clipping and the
//! learning-rate schedules.

use std::collections::BTreeMap;

use beatlab_nn::optim::{AdamW, AdamWConfig, OptimError, clip_grad_norm};
use beatlab_nn::schedule::{Schedule, Unit};
use candle_core::{Device, Tensor, Var};

fn var(values: &[f32]) -> Var {
    Var::new(values, &Device::Cpu).unwrap()
}

fn vals(v: &Var) -> Vec<f32> {
    v.as_tensor().to_vec1().unwrap()
}

/// `sum(c * w)`: its gradient with respect to `w` is `c`.
fn linear_loss(w: &Var, c: &[f32]) -> Tensor {
    (w.as_tensor() * Tensor::new(c, &Device::Cpu).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
}

/// One AdamW step on one scalar, written out from the algorithm (PyTorch's `AdamW` docs).
struct Reference {
    theta: f64,
    m: f64,
    v: f64,
    t: i32,
}

impl Reference {
    fn step(&mut self, g: f64, cfg: &AdamWConfig) {
        self.t += 1;
        self.theta -= cfg.lr * cfg.weight_decay * self.theta;
        self.m = cfg.beta1 * self.m + (1.0 - cfg.beta1) * g;
        self.v = cfg.beta2 * self.v + (1.0 - cfg.beta2) * g * g;
        let m_hat = self.m / (1.0 - cfg.beta1.powi(self.t));
        let v_hat = self.v / (1.0 - cfg.beta2.powi(self.t));
        self.theta -= cfg.lr * m_hat / (v_hat.sqrt() + cfg.eps);
    }
}

#[test]
fn adamw_follows_the_reference_algorithm() {
    let cfg = AdamWConfig {
        lr: 0.05,
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-6,
        weight_decay: 0.1,
    };
    let w = var(&[1.0, -2.0, 0.5]);
    let mut opt = AdamW::new(vec![("w".into(), w.clone())], cfg.clone()).unwrap();
    let mut refs: Vec<Reference> = [1.0, -2.0, 0.5]
        .iter()
        .map(|&theta| Reference {
            theta,
            m: 0.0,
            v: 0.0,
            t: 0,
        })
        .collect();
    // Linear losses sum(c_t * w) with coefficients that change (and flip sign) every step: the
    // gradient at step t is exactly c_t, which the reference gets too.
    for t in 0..6 {
        let c: Vec<f32> = [0.3f32, -1.0, 2.0]
            .iter()
            .map(|x| x * (t as f32 + 1.0) * if t % 2 == 0 { 1.0 } else { -0.5 })
            .collect();
        let grads = linear_loss(&w, &c).backward().unwrap();
        opt.step(&grads).unwrap();
        for (r, &g) in refs.iter_mut().zip(&c) {
            r.step(f64::from(g), &cfg);
        }
    }
    for (got, r) in vals(&w).iter().zip(&refs) {
        assert!(
            (f64::from(*got) - r.theta).abs() < 1e-5,
            "{got} vs {}",
            r.theta
        );
    }
}

#[test]
fn parameters_without_a_gradient_are_left_alone() {
    let a = var(&[1.0, 2.0]);
    let b = var(&[3.0, 4.0]);
    let mut opt = AdamW::new(
        vec![("a".into(), a.clone()), ("b".into(), b.clone())],
        AdamWConfig {
            weight_decay: 0.5,
            ..Default::default()
        },
    )
    .unwrap();
    let grads = linear_loss(&a, &[1.0, 1.0]).backward().unwrap();
    opt.step(&grads).unwrap();
    assert_ne!(vals(&a), [1.0, 2.0]);
    assert_eq!(vals(&b), [3.0, 4.0]);
    let state = opt.state().unwrap();
    assert_eq!(state["b.step"].to_vec1::<u32>().unwrap(), [0, 0]);
    assert_eq!(state["a.step"].to_vec1::<u32>().unwrap(), [1, 0]);
}

#[test]
fn resuming_from_saved_state_is_bit_identical() {
    let cfg = AdamWConfig {
        lr: 0.01,
        ..Default::default()
    };
    let c = [0.7f32, -0.2, 1.3];
    // A quadratic loss, so the gradient depends on the parameters: sum(c * w^2).
    let step = |opt: &mut AdamW, w: &Var| {
        let loss = (w.as_tensor().sqr().unwrap() * Tensor::new(&c, &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    };
    let w = var(&[1.0, 2.0, -1.5]);
    let mut opt = AdamW::new(vec![("w".into(), w.clone())], cfg.clone()).unwrap();
    for _ in 0..10 {
        step(&mut opt, &w);
    }

    let w1 = var(&[1.0, 2.0, -1.5]);
    let mut opt1 = AdamW::new(vec![("w".into(), w1.clone())], cfg.clone()).unwrap();
    for _ in 0..5 {
        step(&mut opt1, &w1);
    }
    let saved_state = opt1.state().unwrap();
    let saved_w = w1.as_tensor().copy().unwrap();

    let w2 = var(&[9.0, 9.0, 9.0]);
    let mut opt2 = AdamW::new(
        vec![("w".into(), w2.clone())],
        AdamWConfig { lr: 123.0, ..cfg },
    )
    .unwrap();
    w2.set(&saved_w).unwrap();
    opt2.load_state(&saved_state).unwrap();
    assert_eq!(opt2.lr(), 0.01);
    for _ in 0..5 {
        step(&mut opt2, &w2);
    }
    let bits = |v: &Var| vals(v).iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&w2), bits(&w));
}

#[test]
fn load_state_rejects_state_of_another_model() {
    let w = var(&[1.0, 2.0]);
    let mut opt = AdamW::new(vec![("w".into(), w)], AdamWConfig::default()).unwrap();
    let good = opt.state().unwrap();

    let mut missing = good.clone();
    missing.remove("w.exp_avg_sq");
    assert!(matches!(
        opt.load_state(&missing),
        Err(OptimError::MissingState(n)) if n == "w.exp_avg_sq"
    ));

    let mut extra = good.clone();
    extra.insert(
        "v.exp_avg".into(),
        Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(matches!(
        opt.load_state(&extra),
        Err(OptimError::UnexpectedState(n)) if n == "v.exp_avg"
    ));

    let mut misshapen: BTreeMap<String, Tensor> = good.clone();
    misshapen.insert(
        "w.exp_avg".into(),
        Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(matches!(
        opt.load_state(&misshapen),
        Err(OptimError::StateShape { .. })
    ));
    assert!(opt.load_state(&good).is_ok());
}

#[test]
fn duplicate_names_and_bad_settings_are_errors() {
    let w = var(&[1.0]);
    assert!(matches!(
        AdamW::new(
            vec![("w".into(), w.clone()), ("w".into(), w.clone())],
            AdamWConfig::default()
        ),
        Err(OptimError::DuplicateName(_))
    ));
    for (cfg, field) in [
        (
            AdamWConfig {
                beta1: 1.0,
                ..Default::default()
            },
            "beta1",
        ),
        (
            AdamWConfig {
                lr: -1.0,
                ..Default::default()
            },
            "lr",
        ),
        (
            AdamWConfig {
                eps: 0.0,
                ..Default::default()
            },
            "eps",
        ),
    ] {
        match AdamW::new(vec![("w".into(), w.clone())], cfg) {
            Err(OptimError::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected a config error for {field}, got {other:?}"),
        }
    }
}

#[test]
fn clipping_scales_to_the_max_norm_and_reports_the_norm_before() {
    let a = var(&[0.0, 0.0]);
    let b = var(&[0.0]);
    let vars = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
    let loss = || {
        (linear_loss(&a, &[3.0, 0.0]) + linear_loss(&b, &[4.0]))
            .unwrap()
            .backward()
            .unwrap()
    };
    // Gradients (3, 0) and (4): global norm 5.
    let mut grads = loss();
    let norm = clip_grad_norm(&mut grads, &vars, 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-6);
    let ga: Vec<f32> = grads.get(a.as_tensor()).unwrap().to_vec1().unwrap();
    let gb: Vec<f32> = grads.get(b.as_tensor()).unwrap().to_vec1().unwrap();
    let clipped = (ga[0].powi(2) + ga[1].powi(2) + gb[0].powi(2)).sqrt();
    assert!((clipped - 1.0).abs() < 1e-5, "{clipped}");
    assert!((ga[0] / gb[0] - 0.75).abs() < 1e-6, "direction kept");

    let mut grads = loss();
    let norm = clip_grad_norm(&mut grads, &vars, 10.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-6);
    let gb: Vec<f32> = grads.get(b.as_tensor()).unwrap().to_vec1().unwrap();
    assert_eq!(gb, [4.0], "below the limit: unchanged");
}

fn check_lr(schedule: &Schedule, t: u64, expected: f64) {
    let got = schedule.lr_at(1e-3, t);
    assert!(
        (got - expected).abs() < 1e-12,
        "{schedule:?} at {t}: {got} vs {expected}"
    );
}

#[test]
fn cosine_schedule() {
    let s = Schedule::Cosine {
        t_max: 100,
        lr_min: 1e-5,
        warmup: 0,
        unit: Unit::Epoch,
    };
    check_lr(&s, 0, 1e-3);
    check_lr(&s, 50, (1e-3 + 1e-5) / 2.0); // cos(pi / 2) = 0: the midpoint
    check_lr(&s, 100, 1e-5);
    check_lr(&s, 200, 1e-3); // PyTorch's closed form keeps cycling past t_max
    // Paper: 50 epochs with t_max 100 ends halfway, at epoch 49 just above the midpoint.
    assert!(s.lr_at(1e-3, 49) > (1e-3 + 1e-5) / 2.0);
    assert_eq!(s.lr_for(1e-3, 50, 12345), s.lr_at(1e-3, 50));

    let warm = Schedule::Cosine {
        t_max: 10,
        lr_min: 0.0,
        warmup: 4,
        unit: Unit::Step,
    };
    check_lr(&warm, 0, 0.0);
    check_lr(&warm, 2, 0.5e-3);
    check_lr(&warm, 4, 1e-3);
    check_lr(&warm, 14, 0.0);
    assert_eq!(warm.lr_for(1e-3, 99, 2), warm.lr_at(1e-3, 2));
}

#[test]
fn linear_warmup_then_decay_and_constant() {
    let s = Schedule::Linear {
        warmup: 10,
        total: 110,
        lr_min: 0.0,
        unit: Unit::Step,
    };
    check_lr(&s, 0, 0.0);
    check_lr(&s, 5, 0.5e-3);
    check_lr(&s, 10, 1e-3);
    check_lr(&s, 60, 0.5e-3);
    check_lr(&s, 110, 0.0);
    check_lr(&s, 500, 0.0);
    check_lr(&Schedule::Constant, 7, 1e-3);
}

#[test]
fn schedules_validate_and_deserialise() {
    assert!(
        Schedule::Cosine {
            t_max: 0,
            lr_min: 0.0,
            warmup: 0,
            unit: Unit::Epoch
        }
        .validate()
        .is_err()
    );
    assert!(
        Schedule::Linear {
            warmup: 10,
            total: 10,
            lr_min: 0.0,
            unit: Unit::Step
        }
        .validate()
        .is_err()
    );
    let s: Schedule =
        serde_json::from_str(r#"{"kind": "cosine", "t_max": 100, "unit": "epoch"}"#).unwrap();
    assert_eq!(
        s,
        Schedule::Cosine {
            t_max: 100,
            lr_min: 0.0,
            warmup: 0,
            unit: Unit::Epoch
        }
    );
    assert!(s.validate().is_ok());
    assert!(serde_json::from_str::<Schedule>(r#"{"kind": "cosine", "tmax": 100}"#).is_err());
}
