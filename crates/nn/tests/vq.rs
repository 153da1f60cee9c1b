//! The residual vector quantizer against host-side reference computations.

mod common;

use beatlab_nn::ParamStore;
use beatlab_nn::vq::{ResidualVq, VqConfig};
use candle_core::{Device, Tensor, Var};
use common::values;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn config(levels: usize, shared: bool) -> VqConfig {
    VqConfig {
        dim: 4,
        codebook_size: 8,
        levels,
        shared_codebook: shared,
        decay: 0.8,
        commitment: 1.0,
        laplace_eps: 1e-5,
        dead_code_threshold: None,
    }
}

fn random_rows(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..dim).map(|_| rng.random_range(-2.0f32..2.0)).collect())
        .collect()
}

fn tensor(rows: &[Vec<f32>]) -> Tensor {
    let dim = rows[0].len();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), dim), &Device::Cpu).unwrap()
}

fn rows_of(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

/// Index of the nearest row of `book` by explicit squared differences.
fn brute_nearest(x: &[f32], book: &[Vec<f32>]) -> usize {
    let dist = |c: &Vec<f32>| -> f32 { x.iter().zip(c).map(|(a, b)| (a - b).powi(2)).sum() };
    (0..book.len())
        .min_by(|&i, &j| dist(&book[i]).total_cmp(&dist(&book[j])))
        .unwrap()
}

#[test]
fn nearest_code_by_matrix_product_matches_brute_force() {
    let book = random_rows(16, 5, 1);
    let xs = random_rows(50, 5, 2);
    let idx = ResidualVq::nearest(&tensor(&xs), &tensor(&book)).unwrap();
    let got: Vec<u32> = idx.to_vec1().unwrap();
    let expected: Vec<u32> = xs.iter().map(|x| brute_nearest(x, &book) as u32).collect();
    assert_eq!(got, expected);
}

#[test]
fn residual_levels_quantize_what_the_previous_levels_left() {
    let store = ParamStore::new(3);
    let vq = ResidualVq::new(config(3, false), &store, "vq", &Device::Cpu).unwrap();
    let z = random_rows(20, 4, 4);
    let out = vq.quantize(&tensor(&z)).unwrap();
    let books: Vec<Vec<Vec<f32>>> = (0..3).map(|l| rows_of(&vq.codebook(l).unwrap())).collect();
    let codes: Vec<Vec<u32>> = out.codes.iter().map(|c| c.to_vec1().unwrap()).collect();
    let quantized = rows_of(&out.quantized);
    let mut commit = 0.0f64;
    for (i, zi) in z.iter().enumerate() {
        let mut residual = zi.clone();
        let mut sum = [0.0f32; 4];
        for l in 0..3 {
            let k = brute_nearest(&residual, &books[l]);
            assert_eq!(codes[l][i] as usize, k, "row {i} level {l}");
            let mse: f64 = residual
                .iter()
                .zip(&books[l][k])
                .map(|(r, c)| f64::from(r - c).powi(2))
                .sum::<f64>()
                / 4.0;
            commit += mse / z.len() as f64;
            for d in 0..4 {
                residual[d] -= books[l][k][d];
                sum[d] += books[l][k][d];
            }
        }
        for d in 0..4 {
            assert!((quantized[i][d] - sum[d]).abs() < 1e-5);
        }
    }
    let got = f64::from(out.commit_loss.to_scalar::<f32>().unwrap());
    assert!((got - commit).abs() < 1e-5 * commit, "{got} vs {commit}");
}

#[test]
fn straight_through_passes_the_gradient_unchanged_and_commitment_pulls_z() {
    let store = ParamStore::new(5);
    let mut cfg = config(2, false);
    cfg.commitment = 0.0;
    let vq = ResidualVq::new(cfg, &store, "vq", &Device::Cpu).unwrap();
    let z = Var::from_tensor(&tensor(&random_rows(6, 4, 6))).unwrap();
    let weights = tensor(&random_rows(6, 4, 7));
    let out = vq.quantize(z.as_tensor()).unwrap();
    let grads = (out.quantized * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    // d sum(w * (z + sg(q - z))) / dz = w.
    assert_eq!(values(grads.get(z.as_tensor()).unwrap()), values(&weights));

    // One level, commitment 1: d mean((z - sg(q))^2) / dz = 2 (z - q) / numel, pulling z to q.
    let store = ParamStore::new(5);
    let vq = ResidualVq::new(config(1, false), &store, "vq", &Device::Cpu).unwrap();
    let out = vq.quantize(z.as_tensor()).unwrap();
    let grads = out.commit_loss.backward().unwrap();
    let g = values(grads.get(z.as_tensor()).unwrap());
    let zq: Vec<f32> = values(z.as_tensor())
        .iter()
        .zip(values(&out.quantized))
        .map(|(a, b)| 2.0 * (a - b) / 24.0)
        .collect();
    for (a, b) in g.iter().zip(&zq) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}

#[test]
fn ema_update_matches_a_host_computation() {
    let store = ParamStore::new(8);
    let cfg = config(1, false);
    let vq = ResidualVq::new(cfg.clone(), &store, "vq", &Device::Cpu).unwrap();
    let before = rows_of(&vq.codebook(0).unwrap());
    let x = random_rows(30, 4, 9);
    let out = vq.quantize(&tensor(&x)).unwrap();
    let codes: Vec<u32> = out.codes[0].to_vec1().unwrap();
    vq.update(&out).unwrap();

    // Reference: cluster_size starts at 1, embed_sum at the initial codes.
    let (k, d, decay, eps) = (8usize, 4usize, 0.8f64, 1e-5f64);
    let mut counts = vec![0.0f64; k];
    let mut sums = vec![vec![0.0f64; d]; k];
    for (row, &c) in x.iter().zip(&codes) {
        counts[c as usize] += 1.0;
        for j in 0..d {
            sums[c as usize][j] += f64::from(row[j]);
        }
    }
    let cluster: Vec<f64> = counts.iter().map(|n| decay + (1.0 - decay) * n).collect();
    let n: f64 = cluster.iter().sum();
    let expected: Vec<Vec<f64>> = (0..k)
        .map(|i| {
            let smoothed = (cluster[i] + eps) / (n + k as f64 * eps) * n;
            (0..d)
                .map(|j| (decay * f64::from(before[i][j]) + (1.0 - decay) * sums[i][j]) / smoothed)
                .collect()
        })
        .collect();
    let after = rows_of(&vq.codebook(0).unwrap());
    for i in 0..k {
        for j in 0..d {
            assert!(
                (f64::from(after[i][j]) - expected[i][j]).abs() < 1e-5,
                "code {i} dim {j}: {} vs {}",
                after[i][j],
                expected[i][j]
            );
        }
    }
    let buffers = store.buffer_tensors();
    let cs = values(&buffers["vq.level0.cluster_size"]);
    for i in 0..k {
        assert!((f64::from(cs[i]) - cluster[i]).abs() < 1e-6);
    }
    assert_eq!(buffers["vq.updates"].to_scalar::<i64>().unwrap(), 1);
}

#[test]
fn a_shared_codebook_pools_the_vectors_of_all_levels() {
    let store = ParamStore::new(10);
    let vq = ResidualVq::new(config(2, true), &store, "vq", &Device::Cpu).unwrap();
    let out = vq.quantize(&tensor(&random_rows(12, 4, 11))).unwrap();
    vq.update(&out).unwrap();
    let cs = values(&store.buffer_tensors()["vq.shared.cluster_size"]);
    // Each code's cluster size went 1 -> 0.8 + 0.2 * count; counts over both levels sum to 24.
    let total: f32 = cs.iter().sum();
    assert!((total - (8.0 * 0.8 + 0.2 * 24.0)).abs() < 1e-4, "{total}");
    assert_eq!(
        vq.codebook(0).unwrap().to_vec2::<f32>().unwrap(),
        vq.codebook(1).unwrap().to_vec2::<f32>().unwrap()
    );
}

#[test]
fn dead_codes_restart_from_current_inputs() {
    let store = ParamStore::new(12);
    let mut cfg = config(1, false);
    // Far above any reachable cluster size: every code counts as dead after the update.
    cfg.dead_code_threshold = Some(1e6);
    let vq = ResidualVq::new(cfg, &store, "vq", &Device::Cpu).unwrap();
    let x = random_rows(20, 4, 13);
    let out = vq.quantize(&tensor(&x)).unwrap();
    vq.update(&out).unwrap();
    let book = rows_of(&vq.codebook(0).unwrap());
    for code in &book {
        assert!(x.contains(code), "{code:?} is not an input vector");
    }
    // Drawn without replacement (20 inputs >= 8 codes): all distinct.
    for i in 0..book.len() {
        for j in 0..i {
            assert_ne!(book[i], book[j]);
        }
    }
    let cs = values(&store.buffer_tensors()["vq.level0.cluster_size"]);
    assert!(cs.iter().all(|&c| c == 1e6));
}

#[test]
fn codebooks_and_statistics_are_reloaded_not_reinitialised() {
    let store = ParamStore::new(14);
    let vq = ResidualVq::new(config(1, false), &store, "vq", &Device::Cpu).unwrap();
    let out = vq.quantize(&tensor(&random_rows(10, 4, 15))).unwrap();
    vq.update(&out).unwrap();
    let saved = store.buffer_tensors();
    let snapshot: Vec<(String, Vec<f32>)> =
        saved.iter().map(|(k, v)| (k.clone(), values(v))).collect();
    // Building the quantizer again over the same store picks the buffers up unchanged.
    let _again = ResidualVq::new(config(1, false), &store, "vq", &Device::Cpu).unwrap();
    let now: Vec<(String, Vec<f32>)> = store
        .buffer_tensors()
        .iter()
        .map(|(k, v)| (k.clone(), values(v)))
        .collect();
    assert_eq!(snapshot, now);
}
