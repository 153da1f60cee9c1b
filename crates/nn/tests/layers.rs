//! The differentiable layers: fused CPU kernels against candle's composed ops (values and
//! gradients), attention against a per-head loop, masks, dropout, Linear on any layout.

use beatlab_nn::ParamStore;
use beatlab_nn::layers::{
    LayerNorm, Linear, ScoreBias, add_row_vector, attention, causal_attention, causal_mask,
    dropout, gelu_tanh, mul_row_vector, normalize_last_dim, packed_self_attention,
    softmax_last_dim,
};
use beatlab_nn::transformer::locality_bias;
use candle_core::{DType, Device, Module, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let store = ParamStore::new(seed);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    vb.get_with_hints(
        shape,
        "x",
        candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 2.0,
        },
    )
    .unwrap()
    .detach()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

/// `f` in f32 on the CPU takes the fused path; in f64 it takes candle's composed ops. Both must
/// agree in value and in the gradient of `sum(f(x) * w)`.
fn check_fused(f: impl Fn(&Tensor) -> Tensor, what: &str) {
    let x = randn(&[3, 5, 16], 1);
    let w = randn(&[3, 5, 16], 2);
    let run = |dtype: DType| {
        let var = Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
        let y = f(var.as_tensor());
        let loss = (&y * w.to_dtype(dtype).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        (flat(&y), flat(grads.get(var.as_tensor()).unwrap()))
    };
    let (y32, g32) = run(DType::F32);
    let (y64, g64) = run(DType::F64);
    assert_close(&y32, &y64, 1e-5, &format!("{what} value"));
    assert_close(&g32, &g64, 1e-4, &format!("{what} gradient"));
}

#[test]
fn fused_kernels_match_composed_ops() {
    check_fused(|x| normalize_last_dim(x, 1e-5, true).unwrap(), "layer norm");
    check_fused(|x| normalize_last_dim(x, 1e-6, false).unwrap(), "rms norm");
    check_fused(|x| softmax_last_dim(x).unwrap(), "softmax");
    check_fused(|x| gelu_tanh(x).unwrap(), "gelu");
    // A non-contiguous input goes through the same kernels.
    check_fused(
        |x| {
            softmax_last_dim(&x.transpose(0, 1).unwrap())
                .unwrap()
                .transpose(0, 1)
                .unwrap()
        },
        "softmax of a transposed view",
    );
}

/// Like [`check_fused`] for `f(x, v)` with a vector `v` applied to every row of `x`: both
/// gradients must agree.
fn check_fused_row_op(f: impl Fn(&Tensor, &Tensor) -> Tensor, what: &str) {
    let x = randn(&[3, 5, 16], 3);
    let v = randn(&[16], 4);
    let w = randn(&[3, 5, 16], 5);
    let run = |dtype: DType| {
        let xv = Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
        let vv = Var::from_tensor(&v.to_dtype(dtype).unwrap()).unwrap();
        let y = f(xv.as_tensor(), vv.as_tensor());
        let loss = (&y * w.to_dtype(dtype).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        (
            flat(&y),
            flat(grads.get(xv.as_tensor()).unwrap()),
            flat(grads.get(vv.as_tensor()).unwrap()),
        )
    };
    let (y32, gx32, gv32) = run(DType::F32);
    let (y64, gx64, gv64) = run(DType::F64);
    assert_close(&y32, &y64, 1e-5, &format!("{what} value"));
    assert_close(&gx32, &gx64, 1e-4, &format!("{what} input gradient"));
    assert_close(&gv32, &gv64, 1e-4, &format!("{what} vector gradient"));
}

#[test]
fn fused_row_vector_ops_match_broadcasting() {
    check_fused_row_op(|x, b| add_row_vector(x, b).unwrap(), "bias add");
    check_fused_row_op(|x, w| mul_row_vector(x, w).unwrap(), "gain");
}

/// `f` of several inputs, fused in f32 against composed in f64: values and every gradient of
/// `sum(f(..) * w)`.
fn check_fused_many(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor, what: &str) {
    let run = |dtype: DType| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|x| Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap())
            .collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&tensors);
        let w = randn(y.dims(), 99).to_dtype(dtype).unwrap();
        let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![flat(&y)];
        out.extend(vars.iter().map(|v| flat(grads.get(v.as_tensor()).unwrap())));
        out
    };
    let (a, b) = (run(DType::F32), run(DType::F64));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let part = if i == 0 {
            "value".to_string()
        } else {
            format!("gradient {}", i - 1)
        };
        assert_close(x, y, 2e-4, &format!("{what} {part}"));
    }
}

#[test]
fn fused_attention_matches_composed_attention() {
    let (b, h, t, d) = (2, 3, 7, 4);
    let qkv = [
        randn(&[b, h, t, d], 11),
        randn(&[b, h, t, d], 12),
        randn(&[b, h, t, d], 13),
    ];
    check_fused_many(
        &qkv,
        |x| attention(&x[0], &x[1], &x[2], None, 0.4).unwrap(),
        "attention",
    );
    check_fused_many(
        &qkv,
        |x| causal_attention(&x[0], &x[1], &x[2], 0.4).unwrap(),
        "causal attention",
    );
    // Fewer queries than keys (the last queries of a longer sequence), causal.
    let short = [
        randn(&[b, h, 3, d], 14),
        randn(&[b, h, t, d], 15),
        randn(&[b, h, t, d], 16),
    ];
    check_fused_many(
        &short,
        |x| causal_attention(&x[0], &x[1], &x[2], 0.5).unwrap(),
        "causal attention, 3 queries",
    );
    check_fused_many(
        &short,
        |x| attention(&x[0], &x[1], &x[2], None, 0.5).unwrap(),
        "attention, 3 queries",
    );
}

/// A mask of `shape` with about a quarter of the scores masked (never a whole row) and small
/// offsets on the rest.
fn score_mask(shape: &[usize], seed: u64) -> Tensor {
    let noise = randn(shape, seed)
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let tk = shape[3];
    let values: Vec<f32> = noise
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            if x > 0.7 && i % tk != 0 {
                -1.0e9
            } else {
                0.3 * x
            }
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

#[test]
fn fused_attention_with_a_mask_matches_composed_attention() {
    let (b, h, t, d) = (2, 3, 6, 4);
    let qkv = [
        randn(&[b, h, 4, d], 21),
        randn(&[b, h, t, d], 22),
        randn(&[b, h, t, d], 23),
    ];
    // Per sequence and head, per sequence (a padding mask), per head (a position bias), shared.
    for (i, shape) in [[b, h, 4, t], [b, 1, 4, t], [1, h, 4, t], [1, 1, 4, t]]
        .into_iter()
        .enumerate()
    {
        let mask = score_mask(&shape, 30 + i as u64);
        check_fused_many(
            &qkv,
            |x| {
                let m = mask.to_dtype(x[0].dtype()).unwrap();
                attention(&x[0], &x[1], &x[2], Some(&score_bias(&m)), 0.45).unwrap()
            },
            &format!("attention, mask {shape:?}"),
        );
    }
}

#[test]
fn causal_attention_equals_attention_with_a_causal_mask() {
    let q = randn(&[1, 2, 5, 3], 17);
    let k = randn(&[1, 2, 5, 3], 18);
    let v = randn(&[1, 2, 5, 3], 19);
    let mask = causal_mask(5, DType::F32, &Device::Cpu).unwrap();
    let masked = attention(&q, &k, &v, Some(&score_bias(&mask)), 0.7).unwrap();
    let causal = causal_attention(&q, &k, &v, 0.7).unwrap();
    assert_close(&flat(&causal), &flat(&masked), 1e-5, "causal vs masked");
}

/// `mask` (`[Tq, Tk]` or already 4-d) as a score bias `[.., .., Tq, Tk]`.
fn score_bias(mask: &Tensor) -> ScoreBias {
    let mut mask = mask.clone();
    while mask.rank() < 4 {
        mask = mask.unsqueeze(0).unwrap();
    }
    ScoreBias::new(&mask).unwrap()
}

/// The reference for packed self-attention: `qkv` `[B, T, 3 x h x d]` split into heads, the
/// generic [`attention`] (scale 0.5, `mask` added to the scores), heads merged back.
fn split_heads_attention(qkv: &Tensor, h: usize, d: usize, mask: Option<&Tensor>) -> Tensor {
    let (b, t, _) = qkv.dims3().unwrap();
    let split = qkv
        .reshape((b, t, 3, h, d))
        .unwrap()
        .permute((2, 0, 3, 1, 4))
        .unwrap()
        .contiguous()
        .unwrap();
    attention(
        &split.get(0).unwrap(),
        &split.get(1).unwrap(),
        &split.get(2).unwrap(),
        mask.map(score_bias).as_ref(),
        0.5,
    )
    .unwrap()
    .transpose(1, 2)
    .unwrap()
    .reshape((b, t, h * d))
    .unwrap()
}

#[test]
fn packed_self_attention_matches_split_heads() {
    let (b, t, h, d) = (2, 6, 3, 4);
    let qkv = randn(&[b, t, 3 * h * d], 20);
    check_fused_many(
        std::slice::from_ref(&qkv),
        |x| packed_self_attention(&x[0], h, d, 0.5, None).unwrap(),
        "packed attention",
    );
    // Against the generic op on explicitly split heads.
    let heads = split_heads_attention(&qkv, h, d, None);
    let packed = packed_self_attention(&qkv, h, d, 0.5, None).unwrap();
    assert_close(&flat(&packed), &flat(&heads), 1e-5, "packed vs split");
    assert!(packed_self_attention(&qkv, h, d + 1, 0.5, None).is_err());
}

#[test]
fn packed_self_attention_adds_the_score_bias_of_each_head() {
    let (b, t, h, d) = (2, 5, 3, 4);
    let qkv = randn(&[b, t, 3 * h * d], 21);
    let bias = randn(&[1, h, t, t], 22);
    // Fused (f32) and composed (f64) agree in value and gradient with a bias too.
    check_fused_many(
        std::slice::from_ref(&qkv),
        |x| {
            let bias = score_bias(&bias.to_dtype(x[0].dtype()).unwrap());
            packed_self_attention(&x[0], h, d, 0.5, Some(&bias)).unwrap()
        },
        "biased packed attention",
    );
    // Against the generic op on split heads with the bias as an additive mask.
    let masked = split_heads_attention(&qkv, h, d, Some(&bias));
    let packed = packed_self_attention(&qkv, h, d, 0.5, Some(&score_bias(&bias))).unwrap();
    assert_close(
        &flat(&packed),
        &flat(&masked),
        1e-5,
        "biased packed vs masked split",
    );
    let unbiased = packed_self_attention(&qkv, h, d, 0.5, None).unwrap();
    assert!(
        flat(&unbiased)
            .iter()
            .zip(flat(&packed))
            .any(|(a, b)| (a - b).abs() > 1e-3),
        "the bias changed nothing"
    );
    let wrong = score_bias(&randn(&[1, h, t, t + 1], 23));
    assert!(packed_self_attention(&qkv, h, d, 0.5, Some(&wrong)).is_err());
}

/// A rayon pool of `threads` threads; the fused kernels split their work on the pool they are
/// called from.
fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

type Op = dyn Fn(&[Tensor]) -> Tensor + Sync;

/// Inputs big enough that every fused kernel splits its work: row ops over more rows than one
/// task takes, attention over more (batch, head) pairs and sequences than threads. With `f32`
/// the fused kernels, with `f64` candle's composed ops.
fn parallel_cases() -> Vec<(&'static str, Vec<Tensor>, Box<Op>)> {
    let x = randn(&[16, 40, 96], 30);
    let v = randn(&[96], 31);
    let (b, h, t, d) = (3, 4, 9, 8);
    let qkv = vec![
        randn(&[b, h, t, d], 32),
        randn(&[b, h, t, d], 33),
        randn(&[b, h, t, d], 34),
    ];
    let (pb, pt, ph, pd) = (6, 7, 3, 4);
    let packed = randn(&[pb, pt, 3 * ph * pd], 35);
    let bias = randn(&[1, ph, pt, pt], 36);
    let (weight, weight_bias) = (randn(&[24, 96], 37), randn(&[24], 38));
    vec![
        (
            "layer norm",
            vec![x.clone()],
            Box::new(|x| normalize_last_dim(&x[0], 1e-5, true).unwrap()),
        ),
        (
            "rms norm",
            vec![x.clone()],
            Box::new(|x| normalize_last_dim(&x[0], 1e-6, false).unwrap()),
        ),
        (
            "softmax",
            vec![x.clone()],
            Box::new(|x| softmax_last_dim(&x[0]).unwrap()),
        ),
        (
            "gelu",
            vec![x.clone()],
            Box::new(|x| gelu_tanh(&x[0]).unwrap()),
        ),
        (
            "bias add",
            vec![x.clone(), v.clone()],
            Box::new(|x| add_row_vector(&x[0], &x[1]).unwrap()),
        ),
        (
            "linear",
            vec![x.clone(), weight, weight_bias],
            Box::new(|x| {
                Linear::from_tensors(x[1].clone(), Some(x[2].clone()))
                    .forward(&x[0])
                    .unwrap()
            }),
        ),
        (
            "gain",
            vec![x, v],
            Box::new(|x| mul_row_vector(&x[0], &x[1]).unwrap()),
        ),
        (
            "attention",
            qkv.clone(),
            Box::new(|x| attention(&x[0], &x[1], &x[2], None, 0.4).unwrap()),
        ),
        (
            "causal attention",
            qkv,
            Box::new(|x| causal_attention(&x[0], &x[1], &x[2], 0.4).unwrap()),
        ),
        (
            "packed attention",
            vec![packed.clone()],
            Box::new(move |x| packed_self_attention(&x[0], ph, pd, 0.5, None).unwrap()),
        ),
        (
            "biased packed attention",
            vec![packed],
            Box::new(move |x| {
                let bias = score_bias(&bias.to_dtype(x[0].dtype()).unwrap());
                packed_self_attention(&x[0], ph, pd, 0.5, Some(&bias)).unwrap()
            }),
        ),
    ]
}

#[test]
fn fused_kernels_split_across_threads_match_composed_ops() {
    for (what, inputs, f) in parallel_cases() {
        pool(4).install(|| check_fused_many(&inputs, &f, &format!("{what}, 4 threads")));
    }
}

/// The value and every input gradient of `sum(f(..) * w)` in f32, as bits.
fn f32_bits(inputs: &[Tensor], f: &Op) -> Vec<Vec<u32>> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|x| Var::from_tensor(x).unwrap())
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&tensors);
    let w = randn(y.dims(), 99);
    let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let bits = |t: &Tensor| -> Vec<u32> {
        let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        values.iter().map(|v| v.to_bits()).collect()
    };
    let mut out = vec![bits(&y)];
    out.extend(vars.iter().map(|v| bits(grads.get(v.as_tensor()).unwrap())));
    out
}

#[test]
fn fused_kernels_give_the_same_bits_on_any_thread_count() {
    for (what, inputs, f) in parallel_cases() {
        let one = pool(1).install(|| f32_bits(&inputs, &*f));
        for threads in [2, 3, 4] {
            let many = pool(threads).install(|| f32_bits(&inputs, &*f));
            assert!(one == many, "{what}: 1 vs {threads} threads differ");
        }
    }
}

#[test]
fn locality_bias_falls_with_distance_and_per_head_slope() {
    // Two heads: slopes 2 and 2 * 2^(-8/2) = 1/8.
    let positions = [0.5, 1.5, 3.0];
    let bias = locality_bias(&positions, 2, 2.0, &Device::Cpu).unwrap();
    assert_eq!(bias.tensor().dims(), [1, 2, 3, 3]);
    let expected = [
        [[0.0, -2.0, -5.0], [-2.0, 0.0, -3.0], [-5.0, -3.0, 0.0]],
        [
            [0.0, -0.125, -0.3125],
            [-0.125, 0.0, -0.1875],
            [-0.3125, -0.1875, 0.0],
        ],
    ];
    let expected: Vec<f64> = expected.iter().flatten().flatten().copied().collect();
    assert_close(&flat(bias.tensor()), &expected, 1e-7, "locality bias");
}

#[test]
fn layer_norm_output_has_zero_mean_unit_variance_then_affine() {
    let store = ParamStore::new(0);
    let ln = LayerNorm::new(16, 1e-5, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let y = ln.forward(&randn(&[4, 16], 3)).unwrap();
    for row in y.to_vec2::<f32>().unwrap() {
        let mean = row.iter().sum::<f32>() / 16.0;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 16.0;
        assert!(
            mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3,
            "{mean} {var}"
        );
    }
}

#[test]
#[allow(clippy::needless_range_loop)] // indices spell out the formula
fn attention_matches_a_per_head_loop() {
    let (b, h, t, d) = (2, 3, 4, 5);
    let q = randn(&[b, h, t, d], 4);
    let k = randn(&[b, h, t, d], 5);
    let v = randn(&[b, h, t, d], 6);
    let scale = 0.3;
    let mask = causal_mask(t, DType::F32, &Device::Cpu).unwrap();
    let out = attention(&q, &k, &v, Some(&score_bias(&mask)), scale).unwrap();
    let (qv, kv, vv) = (
        q.to_dtype(DType::F64).unwrap(),
        k.to_dtype(DType::F64).unwrap(),
        v.to_dtype(DType::F64).unwrap(),
    );
    let mut expected = Vec::new();
    for bi in 0..b {
        for hi in 0..h {
            let get = |x: &Tensor| {
                x.get(bi)
                    .unwrap()
                    .get(hi)
                    .unwrap()
                    .to_vec2::<f64>()
                    .unwrap()
            };
            let (qm, km, vm) = (get(&qv), get(&kv), get(&vv));
            for i in 0..t {
                // Causal: position i sees 0..=i.
                let scores: Vec<f64> = (0..=i)
                    .map(|j| scale * (0..d).map(|c| qm[i][c] * km[j][c]).sum::<f64>())
                    .collect();
                let max = scores.iter().copied().fold(f64::MIN, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                for c in 0..d {
                    expected.push((0..=i).map(|j| exps[j] / total * vm[j][c]).sum::<f64>());
                }
            }
        }
    }
    assert_close(&flat(&out), &expected, 1e-5, "attention");
}

#[test]
fn linear_handles_any_rank_and_layout() {
    let store = ParamStore::new(7);
    let lin = Linear::new(6, 4, true, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let x = randn(&[2, 3, 6], 8);
    let y = lin.forward(&x).unwrap();
    assert_eq!(y.dims(), [2, 3, 4]);
    // The same rows through a transposed (non-contiguous) view give the same outputs.
    let xt = x.transpose(0, 1).unwrap();
    let yt = lin.forward(&xt).unwrap().transpose(0, 1).unwrap();
    assert_close(&flat(&yt), &flat(&y), 1e-6, "transposed input");
    // y = x W^T + b, row by row on the host.
    let w = lin.weight().to_vec2::<f32>().unwrap();
    let bias = lin.bias().unwrap().to_vec1::<f32>().unwrap();
    let rows = x.reshape((6, 6)).unwrap().to_vec2::<f32>().unwrap();
    let expected: Vec<f64> = rows
        .iter()
        .flat_map(|r| {
            (0..4)
                .map(|o| f64::from(bias[o] + r.iter().zip(&w[o]).map(|(a, b)| a * b).sum::<f32>()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_close(&flat(&y), &expected, 1e-5, "linear");
    assert_eq!(lin.forward(&randn(&[6], 9)).unwrap().dims(), [4]);
}

#[test]
fn a_frozen_linear_layer_passes_gradients_to_its_input_only() {
    // The fused layer computes no weight gradient for a weight that is not trained (a LoRA
    // base, a frozen backbone): the input still gets `dy W`.
    let w = randn(&[5, 8], 40);
    let b = randn(&[5], 41);
    let frozen = Linear::from_tensors(w.clone(), Some(b.clone()));
    let x = Var::from_tensor(&randn(&[4, 8], 42)).unwrap();
    let grads = frozen
        .forward(x.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&w).is_none() && grads.get(&b).is_none());
    // d sum(x W^T + b) / dx = column sums of W, on every row.
    let column_sums = flat(&w.sum(0).unwrap());
    let dx = flat(grads.get(x.as_tensor()).unwrap());
    for row in dx.chunks(8) {
        assert_close(row, &column_sums, 1e-6, "input gradient");
    }
}

#[test]
fn dropout_is_seeded_scaled_and_off_in_eval() {
    let x = Tensor::ones((100, 100), DType::F32, &Device::Cpu).unwrap();
    let draw = |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        flat(&dropout(&x, 0.25, Some(&mut rng)).unwrap())
    };
    let a = draw(1);
    assert_eq!(a, draw(1));
    assert_ne!(a, draw(2));
    let zeros = a.iter().filter(|&&v| v == 0.0).count();
    assert!((2200..2800).contains(&zeros), "{zeros} of 10000 dropped");
    assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    let none: Option<&mut ChaCha8Rng> = None;
    assert_eq!(flat(&dropout(&x, 0.25, none).unwrap()), flat(&x));
}
