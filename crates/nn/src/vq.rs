//! Residual vector quantization with EMA codebooks (Beat's DVQ).
//!
//! Level 1 quantizes the latent `z`; level `l` quantizes what the previous levels left,
//! `z - (q_1 + ... + q_{l-1})`. The output is `q_1 + ... + q_L` with a straight-through
//! estimator, so the encoder receives the decoder's gradient as if quantization were the
//! identity.
//!
//! The codebooks are not trained by gradient. Each keeps exponential moving averages of how many
//! vectors were assigned to every code (`cluster_size`) and of their sum (`embed_sum`); a code is
//! the Laplace-smoothed mean `embed_sum / cluster_size`. The update is a separate no-grad step,
//! [`ResidualVq::update`], that the training loop calls after the optimiser step with the
//! assignments the forward pass made. Keeping it out of the forward pass leaves `forward` free of
//! side effects: evaluation, gradient checks and repeated forwards cannot move the codebooks by
//! accident, and the update uses exactly the vectors and codes the loss was computed from (what
//! an in-forward update would use too).
//!
//! Codebooks and their statistics live in the [`ParamStore`]'s buffers: checkpointed, never
//! seen by the optimiser.

use candle_core::{D, DType, Device, Result, Tensor, Var};
use candle_nn::Init;
use rand::Rng;
use rand::seq::index;

use crate::layers::mse;
use crate::params::{ParamStore, named_rng};

/// The quantizer's knobs (a subset of `BeatConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct VqConfig {
    /// Vector width.
    pub dim: usize,
    /// Codes per codebook.
    pub codebook_size: usize,
    /// Residual levels (1 = plain VQ).
    pub levels: usize,
    /// One codebook for all levels instead of one per level.
    pub shared_codebook: bool,
    /// EMA decay of the codebook statistics.
    pub decay: f64,
    /// Weight of the commitment term inside L_VQ.
    pub commitment: f64,
    /// Laplace smoothing of the cluster sizes.
    pub laplace_eps: f64,
    /// Codes whose EMA cluster size falls below this are restarted from current inputs.
    pub dead_code_threshold: Option<f64>,
}

/// The result of quantizing a batch of vectors.
#[derive(Clone, Debug)]
pub struct Quantized {
    /// `[N, dim]`: `z + sg(q - z)`, the straight-through quantized vectors (values are the sum
    /// of the chosen codes; the gradient flows to `z`).
    pub quantized: Tensor,
    /// Per level, the chosen code of every vector, `[N]` u32.
    pub codes: Vec<Tensor>,
    /// `commitment * sum over levels of MSE(residual_l, sg(q_l))`: pulls the encoder towards
    /// the codes it chose; the codebooks themselves move by EMA.
    pub commit_loss: Tensor,
    /// Per level, the (detached, f32) vectors that level quantized: what the EMA update
    /// averages.
    pub level_inputs: Vec<Tensor>,
}

/// One codebook and its EMA statistics.
#[derive(Clone, Debug)]
struct Codebook {
    /// Buffer-name prefix, e.g. `vq.level0`.
    name: String,
    embed: Var,
    cluster_size: Var,
    embed_sum: Var,
}

/// Residual VQ over `levels` levels.
#[derive(Clone, Debug)]
pub struct ResidualVq {
    cfg: VqConfig,
    codebooks: Vec<Codebook>,
    /// Number of EMA updates applied so far; seeds the dead-code restarts so that a resumed run
    /// restarts the same codes with the same vectors.
    updates: Var,
    seed: u64,
}

impl ResidualVq {
    /// Creates (or picks up) the codebooks in `store` under `prefix` (`{prefix}.level{l}.*`, or
    /// `{prefix}.shared.*`, and `{prefix}.updates`).
    ///
    /// Codes start as standard normal vectors (the encoder's final LayerNorm gives latents of
    /// unit scale). `cluster_size` starts at 1 and `embed_sum` at the codes, a consistent state
    /// (`embed_sum / cluster_size` = the codes), so that a code nobody picks keeps its place
    /// while its statistics decay, instead of jumping on the first update.
    pub fn new(cfg: VqConfig, store: &ParamStore, prefix: &str, device: &Device) -> Result<Self> {
        let n_books = if cfg.shared_codebook { 1 } else { cfg.levels };
        let mut codebooks = Vec::with_capacity(n_books);
        for i in 0..n_books {
            let name = if cfg.shared_codebook {
                format!("{prefix}.shared")
            } else {
                format!("{prefix}.level{i}")
            };
            let shape = (cfg.codebook_size, cfg.dim);
            let fresh = !store.contains_buffer(&format!("{name}.embed_sum"));
            let embed = store.buffer(
                &format!("{name}.embed"),
                shape,
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
                DType::F32,
                device,
            )?;
            let cluster_size = store.buffer(
                &format!("{name}.cluster_size"),
                cfg.codebook_size,
                Init::Const(1.0),
                DType::F32,
                device,
            )?;
            let embed_sum = store.buffer(
                &format!("{name}.embed_sum"),
                shape,
                Init::Const(0.0),
                DType::F32,
                device,
            )?;
            if fresh {
                embed_sum.set(&embed.as_tensor().copy()?)?;
            }
            codebooks.push(Codebook {
                name,
                embed,
                cluster_size,
                embed_sum,
            });
        }
        let updates = store.buffer(
            &format!("{prefix}.updates"),
            (),
            Init::Const(0.0),
            DType::I64,
            device,
        )?;
        Ok(Self {
            cfg,
            codebooks,
            updates,
            seed: store.seed(),
        })
    }

    pub fn config(&self) -> &VqConfig {
        &self.cfg
    }

    /// The codebook of `level`, `[codebook_size, dim]` (detached).
    pub fn codebook(&self, level: usize) -> Result<Tensor> {
        Ok(self.book(level)?.embed.as_tensor().detach())
    }

    fn book(&self, level: usize) -> Result<&Codebook> {
        if level >= self.cfg.levels {
            candle_core::bail!(
                "level {level} out of range: the quantizer has {} levels",
                self.cfg.levels
            );
        }
        Ok(if self.cfg.shared_codebook {
            &self.codebooks[0]
        } else {
            &self.codebooks[level]
        })
    }

    /// The nearest code of each row of `x` (`[N, dim]`, f32) in `codebook` (`[K, dim]`).
    ///
    /// `argmin_k ||x - c_k||^2 = argmin_k (||c_k||^2 - 2 x.c_k)`: the per-row `||x||^2` term does
    /// not change the argmin, so it is left out; the rest is one matrix product, which runs on
    /// the GPU's matrix units (or the CPU's gemm) instead of an N x K x dim difference tensor.
    pub fn nearest(x: &Tensor, codebook: &Tensor) -> Result<Tensor> {
        let code_norms = codebook.sqr()?.sum(D::Minus1)?;
        let dots = x.matmul(&codebook.t()?)?;
        let dist = (dots * -2.0)?.broadcast_add(&code_norms.unsqueeze(0)?)?;
        dist.argmin(D::Minus1)
    }

    /// Quantizes `z` (`[N, dim]`, any float dtype; the distances and codes are computed in f32).
    pub fn quantize(&self, z: &Tensor) -> Result<Quantized> {
        let dtype = z.dtype();
        let z_f32 = z.to_dtype(DType::F32)?;
        let target = z_f32.detach();
        let mut residual = target.clone();
        let mut total: Option<Tensor> = None;
        let mut codes = Vec::with_capacity(self.cfg.levels);
        let mut level_inputs = Vec::with_capacity(self.cfg.levels);
        let mut commit: Option<Tensor> = None;
        for level in 0..self.cfg.levels {
            let codebook = self.codebook(level)?;
            let idx = Self::nearest(&residual, &codebook)?;
            let q = codebook.index_select(&idx, 0)?;
            // The residual this level quantized, but carrying z's gradient: previous levels'
            // codes are constants, so d(residual)/dz = I.
            let live_residual = match &total {
                Some(t) => z_f32.sub(t)?,
                None => z_f32.clone(),
            };
            let term = mse(&live_residual, &q)?;
            commit = Some(match commit {
                Some(c) => (c + term)?,
                None => term,
            });
            level_inputs.push(residual.clone());
            residual = residual.sub(&q)?;
            total = Some(match total {
                Some(t) => t.add(&q)?,
                None => q,
            });
            codes.push(idx);
        }
        let (Some(total), Some(commit)) = (total, commit) else {
            candle_core::bail!("vector quantizer configured with 0 levels");
        };
        // Straight-through: the value of `total`, the gradient of `z`.
        let quantized = z_f32.add(&total.sub(&target)?)?.to_dtype(dtype)?;
        let commit_loss = (commit * self.cfg.commitment)?.to_dtype(dtype)?;
        Ok(Quantized {
            quantized,
            codes,
            commit_loss,
            level_inputs,
        })
    }

    /// Quantizes without the straight-through graph or loss: the codes of every level.
    pub fn codes(&self, z: &Tensor) -> Result<Vec<Tensor>> {
        let mut residual = z.to_dtype(DType::F32)?.detach();
        let mut codes = Vec::with_capacity(self.cfg.levels);
        for level in 0..self.cfg.levels {
            let codebook = self.codebook(level)?;
            let idx = Self::nearest(&residual, &codebook)?;
            residual = residual.sub(&codebook.index_select(&idx, 0)?)?;
            codes.push(idx);
        }
        Ok(codes)
    }

    /// The sum of the codes named by `codes` (one `[N]` u32 tensor per level), `[N, dim]` f32.
    pub fn lookup(&self, codes: &[Tensor]) -> Result<Tensor> {
        if codes.len() != self.cfg.levels {
            candle_core::bail!(
                "expected codes for {} levels, got {}",
                self.cfg.levels,
                codes.len()
            );
        }
        let mut total: Option<Tensor> = None;
        for (level, idx) in codes.iter().enumerate() {
            let q = self.codebook(level)?.index_select(idx, 0)?;
            total = Some(match total {
                Some(t) => (t + q)?,
                None => q,
            });
        }
        total.ok_or_else(|| candle_core::Error::Msg("no levels".into()))
    }

    /// The EMA step (no gradient): folds the assignments of one forward pass into the codebook
    /// statistics, recomputes the codes, and restarts dead codes if configured.
    ///
    /// For each codebook: `cluster_size = decay * cluster_size + (1 - decay) * counts`,
    /// `embed_sum = decay * embed_sum + (1 - decay) * sums`, `embed = embed_sum / smoothed`,
    /// `smoothed = (cluster_size + eps) / (n + K * eps) * n` with `n = sum(cluster_size)`. A
    /// shared codebook pools the vectors of all levels. Counts and sums come from a one-hot
    /// matrix product, so the step stays on the device.
    pub fn update(&self, q: &Quantized) -> Result<()> {
        if q.codes.len() != self.cfg.levels || q.level_inputs.len() != self.cfg.levels {
            candle_core::bail!(
                "quantizer output has {} levels, expected {}",
                q.codes.len(),
                self.cfg.levels
            );
        }
        let update_index = self.updates.as_tensor().to_scalar::<i64>()?;
        let groups: Vec<Vec<usize>> = if self.cfg.shared_codebook {
            vec![(0..self.cfg.levels).collect()]
        } else {
            (0..self.cfg.levels).map(|l| vec![l]).collect()
        };
        for (book, levels) in self.codebooks.iter().zip(groups) {
            let inputs: Vec<&Tensor> = levels.iter().map(|&l| &q.level_inputs[l]).collect();
            let codes: Vec<&Tensor> = levels.iter().map(|&l| &q.codes[l]).collect();
            let x = Tensor::cat(&inputs, 0)?.detach();
            let idx = Tensor::cat(&codes, 0)?;
            self.update_book(book, &x, &idx, update_index)?;
        }
        self.updates
            .set(&Tensor::new(update_index + 1, self.updates.device())?)?;
        Ok(())
    }

    fn update_book(&self, book: &Codebook, x: &Tensor, idx: &Tensor, update: i64) -> Result<()> {
        let k = self.cfg.codebook_size;
        let decay = self.cfg.decay;
        let device = x.device();
        let all_codes = Tensor::arange(0u32, k as u32, device)?;
        let one_hot = idx
            .unsqueeze(1)?
            .broadcast_eq(&all_codes.unsqueeze(0)?)?
            .to_dtype(DType::F32)?;
        let counts = one_hot.sum(0)?;
        let sums = one_hot.t()?.matmul(x)?;
        let cluster_size = ((book.cluster_size.as_tensor() * decay)? + (counts * (1.0 - decay))?)?;
        let embed_sum = ((book.embed_sum.as_tensor() * decay)? + (sums * (1.0 - decay))?)?;
        let n = cluster_size.sum_all()?;
        let eps = self.cfg.laplace_eps;
        let scale = n.broadcast_div(&(&n + k as f64 * eps)?)?;
        let smoothed = (&cluster_size + eps)?.broadcast_mul(&scale)?;
        let mut embed = embed_sum.broadcast_div(&smoothed.unsqueeze(1)?)?;
        let (mut cluster_size, mut embed_sum) = (cluster_size, embed_sum);

        if let Some(threshold) = self.cfg.dead_code_threshold {
            let dead = cluster_size.lt(threshold)?;
            let n_dead = dead.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()?;
            if n_dead > 0 {
                let replacement = self.restart_vectors(x, &book.name, update)?;
                let dead_rows = dead.unsqueeze(1)?.broadcast_as(embed.shape())?;
                embed = dead_rows.where_cond(&replacement, &embed)?;
                embed_sum = dead_rows.where_cond(&(&replacement * threshold)?, &embed_sum)?;
                let reset = Tensor::full(threshold as f32, k, device)?;
                cluster_size = dead.where_cond(&reset, &cluster_size)?;
            }
        }
        book.cluster_size.set(&cluster_size)?;
        book.embed_sum.set(&embed_sum)?;
        book.embed.set(&embed)?;
        Ok(())
    }

    /// One candidate vector per code, drawn from the current inputs `x` (`[M, dim]`) without
    /// replacement when `M >= K`, from a generator seeded by (seed, codebook, update number).
    fn restart_vectors(&self, x: &Tensor, book: &str, update: i64) -> Result<Tensor> {
        let k = self.cfg.codebook_size;
        let m = x.dim(0)?;
        if m == 0 {
            candle_core::bail!("cannot restart codes of `{book}` from an empty batch");
        }
        let mut rng = named_rng(self.seed, &format!("{book}.restart.{update}"));
        let picks: Vec<u32> = if m >= k {
            index::sample(&mut rng, m, k)
                .into_iter()
                .map(|i| i as u32)
                .collect()
        } else {
            (0..k).map(|_| rng.random_range(0..m) as u32).collect()
        };
        let picks = Tensor::from_vec(picks, k, x.device())?;
        x.index_select(&picks, 0)
    }
}
