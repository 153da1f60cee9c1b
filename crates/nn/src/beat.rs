//! Beat, HeartcareGPT's ECG tokenizer: patch embedding, a transformer encoder over the patches
//! and learned query tokens, residual vector quantization (DVQ) of the query outputs, a
//! transformer decoder that reconstructs the input window from the quantized latents, and a
//! prediction head that forecasts the samples after the window from the unquantized ones.
//!
//! Layout of one training window `[B, leads, input_len + predict_len]`: the first `input_len`
//! samples are encoded and reconstructed, the following `predict_len` are predicted.
//!
//! Design choices the paper leaves open (each documented where it is made):
//! - pre-norm transformers with a final LayerNorm (see [`crate::transformer`]);
//! - the decoder input is one learned token per input patch (`decoder.mask_tokens`, which is
//!   inherently positional) followed by the quantized latents plus their own learned positional
//!   embedding (`decoder.latent_pos`), so the decoder knows which latent is which;
//! - the prediction head shares its weights with the decoder's output head (`head`), as the
//!   paper says "the same 128 -> 300 head"; `share_output_head = false` gives it its own;
//! - queries: `Q = patches * query_ratio`. Each query output predicts one patch (12 x 25
//!   samples), so `Q` queries predict `Q * patch_size` samples. When `predict_len / patch_size`
//!   differs from `Q` (any input_len other than 2 x predict_len), a learned linear map over the
//!   query axis (`predict.query_map`, `Q -> predict_len / patch_size`) mixes the query outputs
//!   into the needed number of patch tokens first. For the paper's config (`Q = 20 = 500 / 25`)
//!   the map does not exist and the head reads the query outputs directly;
//! - the EMA codebook update is a separate step, [`Beat::update_codebooks`] (see [`crate::vq`]).
//!
//! Three departures from the paper, each a [`BeatConfig`] field whose paper-faithful setting
//! is available, make Beat learn on ECG windows within a few hundred steps (the fields' docs
//! say why; with all three at their paper settings a CPU-sized run stays at "predict zero",
//! reconstruction MSE 1.0, for well over 1500 steps):
//! - `locality_slope`: an ALiBi-style distance bias on the attention scores, so that queries
//!   and mask tokens start out reading their own stretch of the window;
//! - `zero_init_output_heads`: the output heads start at zero, so the first steps do not
//!   flatten the latents to silence random outputs;
//! - `vq_warmup_steps`: L_VQ's weight ramps up, so the commitment term does not pull every
//!   latent onto a few codes before the decoder reads them.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Init;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::layers::{Linear, ScoreBias, TOKEN_INIT_STD, mse};
use crate::params::{ParamStore, named_rng};
use crate::transformer::{Transformer, TransformerConfig, locality_bias};
use crate::vq::{Quantized, ResidualVq, VqConfig};

/// Every knob of Beat. `Default` is the paper's configuration (paper-facts.md §1.1) except for
/// the departures documented on their fields: `dead_code_threshold`, `locality_slope`,
/// `zero_init_output_heads` and `vq_warmup_steps`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BeatConfig {
    /// ECG leads per window.
    pub leads: usize,
    /// Samples per patch (per lead).
    pub patch_size: usize,
    /// Token width of encoder and decoder.
    pub width: usize,
    /// Encoder blocks.
    pub encoder_depth: usize,
    /// Decoder blocks.
    pub decoder_depth: usize,
    /// Attention heads (encoder and decoder).
    pub heads: usize,
    /// Width of one attention head. `None` = `width / heads`. The paper (and its public code)
    /// uses 8 heads of 64 at width 128, i.e. an attention width of 512 projected back to 128.
    pub head_dim: Option<usize>,
    /// MLP hidden width = `width * mlp_ratio`.
    pub mlp_ratio: f64,
    /// Query tokens = input patches x `query_ratio`.
    pub query_ratio: f64,
    /// Codes per codebook.
    pub codebook_size: usize,
    /// Samples encoded and reconstructed.
    pub input_len: usize,
    /// Samples predicted after the input.
    pub predict_len: usize,
    /// Residual quantization levels (1 = single VQ, 2 = the paper's DVQ).
    pub dvq_levels: usize,
    /// One codebook shared by all levels (the public code) instead of one per level (the paper).
    pub shared_codebook: bool,
    /// EMA decay of the codebook statistics.
    pub ema_decay: f64,
    /// Commitment weight inside L_VQ.
    pub commitment: f64,
    /// Laplace smoothing epsilon of the EMA cluster sizes.
    pub laplace_eps: f64,
    /// Restart codes whose EMA cluster size falls below this, from random current encoder
    /// outputs. `None` = never. Not in the paper; on by default (0.1, i.e. a code used less than
    /// about once every ten batches) because without it the first level collapses onto one or
    /// two codes early in training, when all encoder outputs are still alike (see the
    /// `restarts_keep_the_first_level_alive` test), while the paper reports ~96 % usage.
    /// `None` reproduces a plain EMA quantizer for ablations.
    pub dead_code_threshold: Option<f64>,
    /// Dropout on the transformer branches during training.
    pub dropout: f64,
    /// LayerNorm epsilon.
    pub norm_eps: f64,
    /// The prediction head is the decoder's output head (true, the paper) or its own.
    pub share_output_head: bool,
    /// Weight of the reconstruction MSE in the total loss.
    pub w_recon: f64,
    /// Weight of the prediction MSE.
    pub w_pred: f64,
    /// Weight of L_VQ.
    pub w_vq: f64,
    /// Slope (per patch of distance) of the steepest head of an ALiBi-style locality bias on
    /// the encoder's and decoder's attention scores; `None` = the paper, where positions enter
    /// only through the learned embeddings. Tokens sit on the window's time axis in patch
    /// units: patch `i` (and the decoder's mask token `i`) at `i + 0.5`, query (and latent) `j`
    /// at the centre of the `patches / queries` patches it stands for. Head `h` subtracts
    /// `slope_h * distance`, the slopes falling by `2^(-8 / heads)` per head (with slope 1: 1,
    /// 1/4, 1/16, 1/64 for 4 heads; 1, 1/2, ..., 1/128 for 8), so the last heads see the whole
    /// window (see [`crate::transformer::locality_bias`]).
    ///
    /// Not in the paper; on by default (1.0) because the paper's layout has no route from a
    /// patch to the samples it is reconstructed into except through two attention hops, patch
    /// -> query (encoder) and latent -> mask token (decoder), and with freshly initialised
    /// weights both attend almost uniformly (score spread about 0.3): every query holds an
    /// average of the whole window, every mask token the same average of the latents, and for
    /// ECG windows, whose beats fall anywhere, that average says nearly nothing about any one
    /// patch. Reconstruction then stays at "predict zero" (MSE 1.0) until the two routes are
    /// found together: in trial runs at the quickstart's size and lr (1e-3) on simulated
    /// windows, still at 0.99 after 1500 steps even without quantization and auxiliary losses
    /// (with 4 patches instead of 40 the same model learned at once, so it is the routing).
    /// With the bias each query starts out reading its own stretch of the window and each mask
    /// token its own latent, and reconstruction falls within the first hundred steps
    /// (`tests/beat_ecg.rs` pins both behaviours). The learned positional embeddings stay.
    pub locality_slope: Option<f64>,
    /// Initialise the output head(s) (`head`, and `predict.head` when it exists) to zero, so
    /// the untrained model predicts the (zero) mean instead of noise. `false` = the default
    /// init of the public code (PyTorch's `nn.Linear`).
    ///
    /// On by default because a random head makes the first steps' gradient "make the output
    /// quieter": the prediction head reads the encoder's unquantized latents directly, and the
    /// quickest way to quiet it is to make every window's latents the same, after which the
    /// decoder has nothing to read (in trial runs the latents' spread across windows fell
    /// 1000-fold within 100 steps and took hundreds of steps to recover).
    pub zero_init_output_heads: bool,
    /// Training steps over which L_VQ's weight ramps linearly from 0 to `w_vq` (step `s` uses
    /// `w_vq * min(1, (s + 1) / vq_warmup_steps)`); evaluation always uses `w_vq`. 0 = the paper
    /// (full weight from the start).
    ///
    /// 300 by default because the commitment term pulls each latent towards its code, which
    /// before the decoder reads the latents is all it is asked to do: early on, when the
    /// latents of all windows are alike and share a few codes, it makes them identical (a
    /// plateau of about 300 steps at MSE 1.0 in trial runs). Once reconstruction depends on
    /// the latents, full commitment no longer collapses them. Negligible in a paper-length
    /// run (about 27,000 steps).
    ///
    /// It is no cure for too high a learning rate: Adam normalises step sizes, so while the
    /// other gradients into the encoder are still near zero even a down-weighted L_VQ moves it
    /// at full speed. At the paper's size (width 128, depth 6) lr 1e-3 collapsed the latents
    /// with or without this warm-up, while lr 3e-4 learned.
    pub vq_warmup_steps: u64,
}

impl Default for BeatConfig {
    fn default() -> Self {
        Self {
            leads: 12,
            patch_size: 25,
            width: 128,
            encoder_depth: 6,
            decoder_depth: 6,
            heads: 8,
            head_dim: Some(64),
            mlp_ratio: 4.0,
            query_ratio: 0.5,
            codebook_size: 512,
            input_len: 1000,
            predict_len: 500,
            dvq_levels: 2,
            shared_codebook: false,
            ema_decay: 0.8,
            commitment: 1.0,
            laplace_eps: 1e-5,
            dead_code_threshold: Some(0.1),
            dropout: 0.0,
            norm_eps: 1e-5,
            share_output_head: true,
            w_recon: 1.0,
            w_pred: 0.5,
            w_vq: 0.25,
            locality_slope: Some(1.0),
            zero_init_output_heads: true,
            vq_warmup_steps: 300,
        }
    }
}

/// A [`ConfigError`] for `field`.
fn invalid<T>(field: &'static str, problem: String) -> Result<T, ConfigError> {
    Err(ConfigError { field, problem })
}

impl BeatConfig {
    /// The paper's configuration exactly: [`BeatConfig::default`] with the training aids that
    /// depart from the paper set to the paper's values (no locality bias, output heads
    /// initialised like the public code, no VQ-loss warm-up). The benchmark and `beatlab parity`
    /// train this cell, whose layers the PyTorch peer mirrors.
    pub fn paper() -> Self {
        Self {
            locality_slope: None,
            zero_init_output_heads: false,
            vq_warmup_steps: 0,
            ..Self::default()
        }
    }
}

/// Sizes derived from a valid [`BeatConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BeatDims {
    /// Input patches, `input_len / patch_size`.
    pub patches: usize,
    /// Query tokens (= latents per window).
    pub queries: usize,
    /// Patches predicted, `predict_len / patch_size`.
    pub predict_patches: usize,
    /// Values in one patch token, `leads * patch_size`.
    pub patch_values: usize,
    /// Attention head width.
    pub head_dim: usize,
    /// MLP hidden width.
    pub mlp_hidden: usize,
}

/// A [`BeatConfig`] field with an unusable value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid Beat config: `{field}` {problem}")]
pub struct ConfigError {
    /// The field, as named in the config.
    pub field: &'static str,
    /// What is wrong with it and what was expected.
    pub problem: String,
}

impl BeatConfig {
    /// Checks every field and derives the sizes.
    pub fn validate(&self) -> Result<BeatDims, ConfigError> {
        self.check_sizes()?;
        let head_dim = self.head_dim_checked()?;
        let patches = self.input_len / self.patch_size;
        let (queries, mlp_hidden) = self.check_ratios(patches)?;
        self.check_numbers()?;
        Ok(BeatDims {
            patches,
            queries,
            predict_patches: self.predict_len / self.patch_size,
            patch_values: self.leads * self.patch_size,
            head_dim,
            mlp_hidden,
        })
    }

    /// Every size at least 1, the lengths whole numbers of patches.
    fn check_sizes(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("leads", self.leads),
            ("patch_size", self.patch_size),
            ("width", self.width),
            ("encoder_depth", self.encoder_depth),
            ("decoder_depth", self.decoder_depth),
            ("heads", self.heads),
            ("codebook_size", self.codebook_size),
            ("input_len", self.input_len),
            ("predict_len", self.predict_len),
            ("dvq_levels", self.dvq_levels),
        ] {
            if value == 0 {
                return invalid(field, "is 0, expected at least 1".into());
            }
        }
        if !self.input_len.is_multiple_of(self.patch_size) {
            return invalid(
                "input_len",
                format!(
                    "= {} is not a multiple of patch_size = {}",
                    self.input_len, self.patch_size
                ),
            );
        }
        if !self.predict_len.is_multiple_of(self.patch_size) {
            return invalid(
                "predict_len",
                format!(
                    "= {} is not a multiple of patch_size = {}",
                    self.predict_len, self.patch_size
                ),
            );
        }
        Ok(())
    }

    /// `head_dim`, or `width / heads` when it is not set.
    fn head_dim_checked(&self) -> Result<usize, ConfigError> {
        match self.head_dim {
            Some(0) => invalid("head_dim", "is 0, expected at least 1".into()),
            Some(d) => Ok(d),
            None => {
                if !self.width.is_multiple_of(self.heads) {
                    return invalid(
                        "heads",
                        format!(
                            "= {} does not divide width = {} (set head_dim explicitly, or change heads)",
                            self.heads, self.width
                        ),
                    );
                }
                Ok(self.width / self.heads)
            }
        }
    }

    /// The query-token count and MLP width the ratios give over `patches` patches.
    fn check_ratios(&self, patches: usize) -> Result<(usize, usize), ConfigError> {
        if !(self.query_ratio.is_finite() && self.query_ratio > 0.0) {
            return invalid(
                "query_ratio",
                format!("= {} must be a positive number", self.query_ratio),
            );
        }
        let queries = (patches as f64 * self.query_ratio).round() as usize;
        if queries == 0 {
            return invalid(
                "query_ratio",
                format!(
                    "= {} gives 0 query tokens for {patches} patches",
                    self.query_ratio
                ),
            );
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) {
            return invalid(
                "mlp_ratio",
                format!("= {} must be a positive number", self.mlp_ratio),
            );
        }
        let mlp_hidden = (self.width as f64 * self.mlp_ratio).round() as usize;
        if mlp_hidden == 0 {
            return invalid(
                "mlp_ratio",
                format!("= {} gives an empty MLP", self.mlp_ratio),
            );
        }
        Ok((queries, mlp_hidden))
    }

    /// Rates in [0, 1), loss weights >= 0, epsilons and optional knobs > 0.
    fn check_numbers(&self) -> Result<(), ConfigError> {
        if !(0.0..1.0).contains(&self.ema_decay) {
            return invalid(
                "ema_decay",
                format!("= {} must be in [0, 1)", self.ema_decay),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return invalid("dropout", format!("= {} must be in [0, 1)", self.dropout));
        }
        for (field, value) in [
            ("commitment", self.commitment),
            ("w_recon", self.w_recon),
            ("w_pred", self.w_pred),
            ("w_vq", self.w_vq),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return invalid(field, format!("= {value} must be a finite number >= 0"));
            }
        }
        for (field, value) in [
            ("laplace_eps", self.laplace_eps),
            ("norm_eps", self.norm_eps),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return invalid(field, format!("= {value} must be a finite number > 0"));
            }
        }
        if let Some(slope) = self.locality_slope
            && !(slope.is_finite() && slope > 0.0)
        {
            return invalid(
                "locality_slope",
                format!("= {slope} must be a finite number > 0 (or absent)"),
            );
        }
        if let Some(t) = self.dead_code_threshold
            && !(t.is_finite() && t > 0.0)
        {
            return invalid(
                "dead_code_threshold",
                format!("= {t} must be a finite number > 0 (or absent)"),
            );
        }
        Ok(())
    }

    /// The weight of L_VQ in the training loss at `mode` (see `vq_warmup_steps`).
    pub fn vq_weight(&self, mode: Mode) -> f64 {
        match mode {
            Mode::Train { step } if self.vq_warmup_steps > 0 => {
                self.w_vq * ((step as f64 + 1.0) / self.vq_warmup_steps as f64).min(1.0)
            }
            _ => self.w_vq,
        }
    }

    fn transformer(&self, dims: &BeatDims, depth: usize) -> TransformerConfig {
        TransformerConfig {
            width: self.width,
            depth,
            heads: self.heads,
            head_dim: dims.head_dim,
            mlp_hidden: dims.mlp_hidden,
            dropout: self.dropout,
            norm_eps: self.norm_eps,
        }
    }
}

/// Why Beat could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum BeatError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An input tensor does not have the shape the configuration implies.
    #[error("{what}: expected shape {expected}, got {found:?}")]
    InputShape {
        /// Which input (e.g. `window`, `codes[1]`).
        what: String,
        /// The expected shape, in words.
        expected: String,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A tensor operation failed.
    #[error("tensor operation: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Training (dropout on, with masks seeded by the step) or evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Training step `step`: dropout masks come from a generator seeded by (model seed, step),
    /// so that a run is reproducible and a resumed run draws the masks it would have drawn.
    Train { step: u64 },
    /// Evaluation: no dropout.
    Eval,
}

/// Everything one forward pass produces.
#[derive(Clone, Debug)]
pub struct BeatOutput {
    /// `w_recon * recon_loss + w_pred * pred_loss + w_vq' * vq_loss`, a differentiable scalar,
    /// where `w_vq'` is [`BeatConfig::vq_weight`] (`w_vq` once warmed up, and in evaluation).
    pub loss: Tensor,
    /// MSE between the reconstruction and the input part of the window.
    pub recon_loss: Tensor,
    /// MSE between the prediction and the part after the input.
    pub pred_loss: Tensor,
    /// L_VQ (commitment weight included).
    pub vq_loss: Tensor,
    /// Per level, the code of every latent, `[B, Q]` u32.
    pub codes: Vec<Tensor>,
    /// `[B, leads, input_len]`.
    pub reconstruction: Tensor,
    /// `[B, leads, predict_len]`.
    pub prediction: Tensor,
    /// Quantized latents (straight-through), `[B, Q, width]`.
    pub latents: Tensor,
    /// The quantizer's view of the pass, consumed by [`Beat::update_codebooks`].
    pub quantized: Quantized,
}

/// The Beat tokenizer.
#[derive(Clone, Debug)]
pub struct Beat {
    cfg: BeatConfig,
    dims: BeatDims,
    seed: u64,
    patch_embed: Linear,
    encoder_pos: Tensor,
    queries: Tensor,
    encoder: Transformer,
    /// `[heads, patches + queries, patches + queries]`, the same for encoder and decoder (their
    /// tokens sit at the same places); `None` without `locality_slope`.
    attention_bias: Option<ScoreBias>,
    quantizer: ResidualVq,
    mask_tokens: Tensor,
    latent_pos: Tensor,
    decoder: Transformer,
    head: Linear,
    predict_head: Option<Linear>,
    query_map: Option<Linear>,
}

impl Beat {
    /// Builds the model with its parameters in `store` (created from the store's seed, or
    /// picked up if present) and its codebooks in the store's buffers (`vq.*`).
    ///
    /// Parameter names: `patch_embed`, `encoder.{pos,queries,blocks.*,norm}`, `decoder.{mask_tokens,
    /// latent_pos,blocks.*,norm}`, `head`, and when needed `predict.head`, `predict.query_map`.
    pub fn new(
        cfg: BeatConfig,
        store: &ParamStore,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, BeatError> {
        let dims = cfg.validate()?;
        let vb = store.var_builder(dtype, device);
        let w = cfg.width;
        let tokens = Init::Randn {
            mean: 0.0,
            stdev: TOKEN_INIT_STD,
        };
        let patch_embed = Linear::new(dims.patch_values, w, true, vb.pp("patch_embed"))?;
        let enc = vb.pp("encoder");
        let encoder_pos = enc.get_with_hints((dims.patches + dims.queries, w), "pos", tokens)?;
        let queries = enc.get_with_hints((dims.queries, w), "queries", tokens)?;
        let encoder = Transformer::new(&cfg.transformer(&dims, cfg.encoder_depth), enc)?;
        let quantizer = ResidualVq::new(
            VqConfig {
                dim: w,
                codebook_size: cfg.codebook_size,
                levels: cfg.dvq_levels,
                shared_codebook: cfg.shared_codebook,
                decay: cfg.ema_decay,
                commitment: cfg.commitment,
                laplace_eps: cfg.laplace_eps,
                dead_code_threshold: cfg.dead_code_threshold,
            },
            store,
            "vq",
            device,
        )?;
        let dec = vb.pp("decoder");
        let mask_tokens = dec.get_with_hints((dims.patches, w), "mask_tokens", tokens)?;
        let latent_pos = dec.get_with_hints((dims.queries, w), "latent_pos", tokens)?;
        let decoder = Transformer::new(&cfg.transformer(&dims, cfg.decoder_depth), dec)?;
        let zero_heads = cfg.zero_init_output_heads;
        let head = output_head(w, dims.patch_values, zero_heads, vb.pp("head"))?;
        let predict_head = if cfg.share_output_head {
            None
        } else {
            Some(output_head(
                w,
                dims.patch_values,
                zero_heads,
                vb.pp("predict.head"),
            )?)
        };
        let attention_bias = match cfg.locality_slope {
            Some(slope) => Some(locality_bias(
                &token_positions(&dims),
                cfg.heads,
                slope,
                device,
            )?),
            None => None,
        };
        let query_map = if dims.predict_patches == dims.queries {
            None
        } else {
            Some(Linear::new(
                dims.queries,
                dims.predict_patches,
                true,
                vb.pp("predict.query_map"),
            )?)
        };
        Ok(Self {
            cfg,
            dims,
            seed: store.seed(),
            patch_embed,
            encoder_pos,
            queries,
            encoder,
            attention_bias,
            quantizer,
            mask_tokens,
            latent_pos,
            decoder,
            head,
            predict_head,
            query_map,
        })
    }

    pub fn config(&self) -> &BeatConfig {
        &self.cfg
    }

    pub fn dims(&self) -> &BeatDims {
        &self.dims
    }

    pub fn quantizer(&self) -> &ResidualVq {
        &self.quantizer
    }

    /// One pass over training windows `[B, leads, input_len + predict_len]`: losses, codes,
    /// reconstruction and prediction. Does not touch the codebooks; see
    /// [`Beat::update_codebooks`].
    pub fn forward(&self, windows: &Tensor, mode: Mode) -> Result<BeatOutput, BeatError> {
        let (b, _, _) = self.check_input(windows, "window", true)?;
        let mut rng = self.dropout_rng(mode);
        let input = windows.narrow(2, 0, self.cfg.input_len)?;
        let future = windows.narrow(2, self.cfg.input_len, self.cfg.predict_len)?;

        let z = self.encode_unquantized(&input, rng.as_mut())?;
        let z_rows = z.reshape((b * self.dims.queries, self.cfg.width))?;
        let quantized = self.quantizer.quantize(&z_rows)?;
        let latents = quantized
            .quantized
            .reshape((b, self.dims.queries, self.cfg.width))?;

        let reconstruction = self.decode_with(&latents, rng.as_mut())?;
        let prediction = self.predict_from(&z)?;

        let recon_loss = mse(&reconstruction, &input)?;
        let pred_loss = mse(&prediction, &future)?;
        let vq_loss = quantized.commit_loss.clone();
        let loss = ((&recon_loss * self.cfg.w_recon)?
            + (&pred_loss * self.cfg.w_pred)?
            + (&vq_loss * self.cfg.vq_weight(mode))?)?;
        let codes = quantized
            .codes
            .iter()
            .map(|c| c.reshape((b, self.dims.queries)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(BeatOutput {
            loss,
            recon_loss,
            pred_loss,
            vq_loss,
            codes,
            reconstruction,
            prediction,
            latents,
            quantized,
        })
    }

    /// The EMA codebook step for the assignments of `output` (call it after the optimiser step
    /// of the same batch). Writes the codebook buffers in place.
    pub fn update_codebooks(&self, output: &BeatOutput) -> Result<(), BeatError> {
        Ok(self.quantizer.update(&output.quantized)?)
    }

    /// Quantized latents `[B, Q, width]` of windows `[B, leads, L]` (`L >= input_len`; the first
    /// `input_len` samples are used): what the multimodal signal projector consumes. Evaluation
    /// mode; the straight-through graph is kept, so gradients reach the encoder if wanted.
    pub fn encode(&self, windows: &Tensor) -> Result<Tensor, BeatError> {
        let (b, _, _) = self.check_input(windows, "window", false)?;
        let input = windows.narrow(2, 0, self.cfg.input_len)?;
        let z = self.encode_unquantized(&input, None)?;
        let z_rows = z.reshape((b * self.dims.queries, self.cfg.width))?;
        let q = self.quantizer.quantize(&z_rows)?;
        Ok(q.quantized
            .reshape((b, self.dims.queries, self.cfg.width))?)
    }

    /// Per level, the codes `[B, Q]` u32 of windows `[B, leads, L]` (`L >= input_len`).
    pub fn codes(&self, windows: &Tensor) -> Result<Vec<Tensor>, BeatError> {
        let (b, _, _) = self.check_input(windows, "window", false)?;
        let input = windows.narrow(2, 0, self.cfg.input_len)?;
        let z = self.encode_unquantized(&input, None)?;
        let z_rows = z.reshape((b * self.dims.queries, self.cfg.width))?;
        let codes = self.quantizer.codes(&z_rows)?;
        Ok(codes
            .into_iter()
            .map(|c| c.reshape((b, self.dims.queries)))
            .collect::<candle_core::Result<Vec<_>>>()?)
    }

    /// Quantized latents `[B, Q, width]` from codes (one `[B, Q]` u32 tensor per level).
    pub fn latents_from_codes(&self, codes: &[Tensor]) -> Result<Tensor, BeatError> {
        let q = self.dims.queries;
        let mut flat = Vec::with_capacity(codes.len());
        let mut batch = None;
        for (level, c) in codes.iter().enumerate() {
            match c.dims() {
                &[b, n] if n == q && batch.is_none_or(|bb| bb == b) => {
                    batch = Some(b);
                    flat.push(c.flatten_all()?);
                }
                other => {
                    return Err(BeatError::InputShape {
                        what: format!("codes[{level}]"),
                        expected: format!("[B, {q}] (the same B for every level)"),
                        found: other.to_vec(),
                    });
                }
            }
        }
        let b = batch.unwrap_or(0);
        let sum = self.quantizer.lookup(&flat)?;
        let dtype = self.head.weight().dtype();
        Ok(sum.to_dtype(dtype)?.reshape((b, q, self.cfg.width))?)
    }

    /// Reconstructed windows `[B, leads, input_len]` from quantized latents `[B, Q, width]`.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor, BeatError> {
        match latents.dims() {
            &[_, q, w] if q == self.dims.queries && w == self.cfg.width => {}
            other => {
                return Err(BeatError::InputShape {
                    what: "latents".into(),
                    expected: format!("[B, {}, {}]", self.dims.queries, self.cfg.width),
                    found: other.to_vec(),
                });
            }
        }
        Ok(self.decode_with(latents, None)?)
    }

    fn check_input(
        &self,
        windows: &Tensor,
        what: &str,
        exact: bool,
    ) -> Result<(usize, usize, usize), BeatError> {
        let full = self.cfg.input_len + self.cfg.predict_len;
        let ok = match windows.dims() {
            &[_, l, n] => {
                l == self.cfg.leads
                    && if exact {
                        n == full
                    } else {
                        n >= self.cfg.input_len
                    }
            }
            _ => false,
        };
        if !ok {
            let expected = if exact {
                format!("[B, {}, {full}]", self.cfg.leads)
            } else {
                format!("[B, {}, L >= {}]", self.cfg.leads, self.cfg.input_len)
            };
            return Err(BeatError::InputShape {
                what: what.into(),
                expected,
                found: windows.dims().to_vec(),
            });
        }
        Ok(windows.dims3()?)
    }

    fn dropout_rng(&self, mode: Mode) -> Option<ChaCha8Rng> {
        match mode {
            Mode::Train { step } if self.cfg.dropout > 0.0 => {
                Some(named_rng(self.seed, &format!("beat.dropout.{step}")))
            }
            _ => None,
        }
    }

    /// `[B, leads, patches * patch_size]` -> `[B, patches, leads * patch_size]`.
    fn patchify(&self, input: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, _) = input.dims3()?;
        let (p, s) = (self.dims.patches, self.cfg.patch_size);
        input
            .reshape((b, c, p, s))?
            .permute((0, 2, 1, 3))?
            .reshape((b, p, c * s))
    }

    /// `[B, n, leads * patch_size]` -> `[B, leads, n * patch_size]`.
    fn unpatchify(&self, patches: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, _) = patches.dims3()?;
        let (c, s) = (self.cfg.leads, self.cfg.patch_size);
        patches
            .reshape((b, n, c, s))?
            .permute((0, 2, 1, 3))?
            .reshape((b, c, n * s))
    }

    /// The encoder's query outputs `z`, `[B, Q, width]`.
    fn encode_unquantized(
        &self,
        input: &Tensor,
        rng: Option<&mut ChaCha8Rng>,
    ) -> candle_core::Result<Tensor> {
        let b = input.dim(0)?;
        let patch_tokens = self.patch_embed.forward(&self.patchify(input)?)?;
        let queries =
            self.queries
                .unsqueeze(0)?
                .broadcast_as((b, self.dims.queries, self.cfg.width))?;
        let tokens =
            Tensor::cat(&[&patch_tokens, &queries], 1)?.broadcast_add(&self.encoder_pos)?;
        let out = self
            .encoder
            .forward(&tokens, rng, self.attention_bias.as_ref())?;
        out.narrow(1, self.dims.patches, self.dims.queries)
    }

    fn decode_with(
        &self,
        latents: &Tensor,
        rng: Option<&mut ChaCha8Rng>,
    ) -> candle_core::Result<Tensor> {
        let b = latents.dim(0)?;
        let masks =
            self.mask_tokens
                .unsqueeze(0)?
                .broadcast_as((b, self.dims.patches, self.cfg.width))?;
        let latents = latents.broadcast_add(&self.latent_pos)?;
        let tokens = Tensor::cat(&[&masks, &latents], 1)?;
        let out = self
            .decoder
            .forward(&tokens, rng, self.attention_bias.as_ref())?;
        let patches = self.head.forward(&out.narrow(1, 0, self.dims.patches)?)?;
        self.unpatchify(&patches)
    }

    /// The prediction `[B, leads, predict_len]` from the unquantized query outputs.
    fn predict_from(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let tokens = match &self.query_map {
            // [B, Q, W] -> [B, W, Q] -> [B, W, P'] -> [B, P', W]
            Some(map) => map.forward(&z.transpose(1, 2)?)?.transpose(1, 2)?,
            None => z.clone(),
        };
        let head = self.predict_head.as_ref().unwrap_or(&self.head);
        self.unpatchify(&head.forward(&tokens)?)
    }
}

/// Where the encoder's tokens (patches, then queries) and equally the decoder's (mask tokens,
/// then latents) sit on the window's time axis, in patches: a patch at its centre, a query at
/// the centre of the `patches / queries` patches it stands for.
fn token_positions(dims: &BeatDims) -> Vec<f64> {
    let span = dims.patches as f64 / dims.queries as f64;
    (0..dims.patches)
        .map(|i| i as f64 + 0.5)
        .chain((0..dims.queries).map(|j| (j as f64 + 0.5) * span))
        .collect()
}

/// A `in_dim -> out_dim` output layer, zero-initialised if `zero` (see
/// `BeatConfig::zero_init_output_heads`), else with `Linear`'s default init.
fn output_head(
    in_dim: usize,
    out_dim: usize,
    zero: bool,
    vb: candle_nn::VarBuilder,
) -> candle_core::Result<Linear> {
    if !zero {
        return Linear::new(in_dim, out_dim, true, vb);
    }
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", Init::Const(0.0))?;
    let bias = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
    Ok(Linear::from_tensors(weight, Some(bias)))
}
