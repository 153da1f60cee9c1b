//! Trainable SigLIP vision encoder (`google/siglip-so400m-patch14-384` weight names under
//! `vision_model.`): patch embedding, pre-norm transformer encoder, post layer norm, and the
//! attention-pooling head that gives one pooled feature per image.
//!
//! The patch embedding is a strided convolution in the checkpoint; here it is the same weights
//! applied as a linear map over flattened non-overlapping patches (identical result, and the
//! gradient path is plain matmul; trailing pixels that do not fill a patch are ignored, as the
//! convolution does). Images must be `image_size x image_size`: position
//! embeddings are not interpolated to other sizes.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{LmError, Result};
use crate::layers::{Activation, BuildOptions, Builder, INIT_STD, LayerNorm, Linear, attention};
use crate::lora::Lora;
use crate::qwen2::check_positive;

/// The vision half of a SigLIP `config.json` (its `vision_config`), with Hugging Face's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiglipVisionConfig {
    /// Width of the token stream (1152 for so400m).
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    /// Width of the MLP.
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    /// Encoder layers.
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    /// Input channels (3, RGB).
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    /// Side of the square input image in pixels.
    #[serde(default = "d_image")]
    pub image_size: usize,
    /// Side of a square patch in pixels.
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    /// MLP activation.
    #[serde(default = "d_act")]
    pub hidden_act: Activation,
    /// Epsilon of the layer norms.
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Whether the attention-pooling head exists.
    #[serde(default = "d_true")]
    pub vision_use_head: bool,
}

fn d_hidden() -> usize {
    768
}
fn d_intermediate() -> usize {
    3072
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_channels() -> usize {
    3
}
fn d_image() -> usize {
    224
}
fn d_patch() -> usize {
    16
}
fn d_act() -> Activation {
    Activation::GeluTanh
}
fn d_eps() -> f64 {
    1e-6
}
fn d_true() -> bool {
    true
}

impl SiglipVisionConfig {
    /// `google/siglip-so400m-patch14-384`: 384 px, patch 14 (27 x 27 = 729 patches), width 1152,
    /// 27 layers, 16 heads, MLP 4304.
    pub fn so400m_patch14_384() -> Self {
        Self {
            hidden_size: 1152,
            intermediate_size: 4304,
            num_hidden_layers: 27,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 384,
            patch_size: 14,
            hidden_act: Activation::GeluTanh,
            layer_norm_eps: 1e-6,
            vision_use_head: true,
        }
    }

    /// Patches per side.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patch tokens per image.
    pub fn num_patches(&self) -> usize {
        self.patches_per_side().pow(2)
    }

    /// Check sizes.
    pub fn validate(&self) -> Result<()> {
        check_positive(&[
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_channels", self.num_channels),
            ("patch_size", self.patch_size),
        ])?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(LmError::config(
                "num_attention_heads",
                format!(
                    "= {} must divide hidden_size = {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if self.image_size < self.patch_size {
            return Err(LmError::config(
                "image_size",
                format!(
                    "= {} must be at least patch_size = {}",
                    self.image_size, self.patch_size
                ),
            ));
        }
        Ok(())
    }

    /// Parse a SigLIP `config.json`: either a full SigLIP config (its `vision_config` is used)
    /// or a bare vision config. `origin` names the source in errors.
    pub fn from_json_str(text: &str, origin: &Path) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| LmError::json(origin, &e))?;
        let vision = value.get("vision_config").cloned().unwrap_or(value);
        let config: Self = serde_json::from_value(vision).map_err(|e| LmError::Config {
            source_file: Some(origin.to_path_buf()),
            field: "vision_config".into(),
            reason: e.to_string(),
        })?;
        config.validate().map_err(|e| e.in_file(origin))?;
        Ok(config)
    }

    /// Read and parse a `config.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LmError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// The configuration as a full SigLIP `config.json` text (`model_type: siglip`, the fields
    /// under `vision_config`).
    pub fn to_json_string(&self) -> Result<String> {
        let value = serde_json::json!({
            "model_type": "siglip",
            "architectures": ["SiglipModel"],
            "vision_config": self,
        });
        serde_json::to_string_pretty(&value).map_err(|e| LmError::config("config", e.to_string()))
    }
}

/// What the encoder returns for a batch of images.
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// `[batch, num_patches, hidden]`: the encoder output after `post_layernorm`.
    pub patches: Tensor,
    /// `[batch, hidden]`: the attention-pooled feature (`None` without a head).
    pub pooled: Option<Tensor>,
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

struct PoolingHead {
    probe: Tensor,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layernorm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The SigLIP vision tower.
pub struct SiglipVision {
    config: SiglipVisionConfig,
    /// The patch convolution as a linear map: weight `[hidden, channels * patch * patch]`.
    patch_embedding: beatlab_nn::layers::Linear,
    /// `[num_patches, hidden]`.
    position: Tensor,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    head: Option<PoolingHead>,
    lora: Option<Lora>,
}

impl std::fmt::Debug for SiglipVision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiglipVision")
            .field("config", &self.config)
            .finish()
    }
}

impl SiglipVision {
    /// Build over the weights `vb` provides (`vision_model.*`): a checkpoint or a
    /// [`beatlab_nn::ParamStore`]. LoRA may target `q_proj`, `k_proj`, `v_proj`, `out_proj`,
    /// `fc1`, `fc2` (the encoder's and the head's).
    pub fn new(config: &SiglipVisionConfig, vb: VarBuilder, opts: &BuildOptions) -> Result<Self> {
        config.validate()?;
        let b = Builder::new(opts, INIT_STD);
        let vb = vb.pp("vision_model");
        let (h, i, p, c) = (
            config.hidden_size,
            config.intermediate_size,
            config.patch_size,
            config.num_channels,
        );
        let eps = config.layer_norm_eps;
        let randn = Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        };
        let vb_e = vb.pp("embeddings");
        let patch_weight = b
            .weight(&vb_e.pp("patch_embedding"), &[h, c, p, p], "weight", randn)?
            .reshape((h, c * p * p))?;
        let patch_bias = b.weight(&vb_e.pp("patch_embedding"), &[h], "bias", Init::Const(0.0))?;
        let position = b.weight(
            &vb_e.pp("position_embedding"),
            &[config.num_patches(), h],
            "weight",
            randn,
        )?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for n in 0..config.num_hidden_layers {
            let vb_l = vb.pp("encoder").pp("layers").pp(n);
            let vb_a = vb_l.pp("self_attn");
            layers.push(EncoderLayer {
                layer_norm1: b.layer_norm(&vb_l.pp("layer_norm1"), h, eps)?,
                q_proj: b.linear(&vb_a.pp("q_proj"), h, h, true)?,
                k_proj: b.linear(&vb_a.pp("k_proj"), h, h, true)?,
                v_proj: b.linear(&vb_a.pp("v_proj"), h, h, true)?,
                out_proj: b.linear(&vb_a.pp("out_proj"), h, h, true)?,
                layer_norm2: b.layer_norm(&vb_l.pp("layer_norm2"), h, eps)?,
                fc1: b.linear(&vb_l.pp("mlp").pp("fc1"), h, i, true)?,
                fc2: b.linear(&vb_l.pp("mlp").pp("fc2"), i, h, true)?,
            });
        }
        let post_layernorm = b.layer_norm(&vb.pp("post_layernorm"), h, eps)?;
        let head = if config.vision_use_head {
            let vb_h = vb.pp("head");
            let vb_a = vb_h.pp("attention");
            // PyTorch's nn.MultiheadAttention stores q, k and v stacked in one parameter.
            let in_w = b.weight(&vb_a, &[3 * h, h], "in_proj_weight", randn)?;
            let in_b = b.weight(&vb_a, &[3 * h], "in_proj_bias", Init::Const(0.0))?;
            let part = |k: usize| -> candle_core::Result<Linear> {
                Ok(Linear::from_parts(
                    in_w.narrow(0, k * h, h)?,
                    Some(in_b.narrow(0, k * h, h)?),
                ))
            };
            Some(PoolingHead {
                probe: b.weight(&vb_h, &[1, 1, h], "probe", randn)?,
                q_proj: part(0)?,
                k_proj: part(1)?,
                v_proj: part(2)?,
                out_proj: b.linear(&vb_a.pp("out_proj"), h, h, true)?,
                layernorm: b.layer_norm(&vb_h.pp("layernorm"), h, eps)?,
                fc1: b.linear(&vb_h.pp("mlp").pp("fc1"), h, i, true)?,
                fc2: b.linear(&vb_h.pp("mlp").pp("fc2"), i, h, true)?,
            })
        } else {
            None
        };
        let lora = b.lora().cloned();
        b.finish()?;
        Ok(Self {
            config: config.clone(),
            patch_embedding: beatlab_nn::layers::Linear::from_tensors(
                patch_weight,
                Some(patch_bias),
            ),
            position,
            layers,
            post_layernorm,
            head,
            lora,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SiglipVisionConfig {
        &self.config
    }

    /// Width of the features.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Patch tokens per image.
    pub fn num_patches(&self) -> usize {
        self.config.num_patches()
    }

    /// Switch LoRA dropout on or off (no-op without LoRA).
    pub fn set_training(&self, training: bool) {
        if let Some(lora) = &self.lora {
            lora.set_training(training);
        }
    }

    /// Starts the LoRA dropout masks of optimiser step `step` (no-op without LoRA).
    pub fn start_step(&self, step: u64) {
        if let Some(lora) = &self.lora {
            lora.start_step(step);
        }
    }

    /// Encode `[batch, channels, image_size, image_size]` pixels, already normalised as SigLIP's
    /// processor does (see [`normalize_pixels`]).
    pub fn forward(&self, images: &Tensor) -> Result<VisionOutput> {
        let cfg = &self.config;
        let (s, c, p) = (cfg.image_size, cfg.num_channels, cfg.patch_size);
        let expected = format!("[batch, {c}, {s}, {s}]");
        let (batch, ch, height, width) = images
            .dims4()
            .map_err(|_| LmError::input("images", &expected, format!("{:?}", images.dims())))?;
        if ch != c || height != s || width != s {
            return Err(LmError::input(
                "images",
                expected,
                format!("{:?}", images.dims()),
            ));
        }
        let side = cfg.patches_per_side();
        let dtype = self.patch_embedding.weight().dtype();
        // The checkpoint's stride-`p` convolution ignores the last `image_size % p` rows and
        // columns (384 px in 14 px patches uses 378), so crop them off before patching.
        let used = side * p;
        let patches = images
            .to_dtype(dtype)?
            .narrow(2, 0, used)?
            .narrow(3, 0, used)?
            .reshape(vec![batch, c, side, p, side, p])?
            .permute(vec![0, 2, 4, 1, 3, 5])?
            .contiguous()?
            .reshape((batch * side * side, c * p * p))?;
        let mut xs = self
            .patch_embedding
            .forward(&patches)?
            .reshape((batch, side * side, cfg.hidden_size))?
            .broadcast_add(&self.position)?;
        for layer in &self.layers {
            xs = self.encoder_layer(layer, &xs)?;
        }
        let patches = self.post_layernorm.forward(&xs)?;
        let pooled = match &self.head {
            Some(head) => Some(self.pool(head, &patches)?),
            None => None,
        };
        Ok(VisionOutput { patches, pooled })
    }

    fn split_heads(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, h) = xs.dims3()?;
        let heads = self.config.num_attention_heads;
        xs.reshape((b, n, heads, h / heads))?.transpose(1, 2)
    }

    fn merge_heads(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, heads, n, d) = xs.dims4()?;
        xs.transpose(1, 2)?.reshape((b, n, heads * d))
    }

    fn encoder_layer(&self, l: &EncoderLayer, xs: &Tensor) -> candle_core::Result<Tensor> {
        let normed = l.layer_norm1.forward(xs)?;
        let q = self.split_heads(&l.q_proj.forward(&normed)?)?;
        let k = self.split_heads(&l.k_proj.forward(&normed)?)?;
        let v = self.split_heads(&l.v_proj.forward(&normed)?)?;
        let attn = self.merge_heads(&attention(&q, &k, &v, None)?)?;
        let xs = (xs + l.out_proj.forward(&attn)?)?;
        let mlp = l.fc2.forward(
            &self
                .config
                .hidden_act
                .apply(&l.fc1.forward(&l.layer_norm2.forward(&xs)?)?)?,
        )?;
        xs + mlp
    }

    fn pool(&self, head: &PoolingHead, xs: &Tensor) -> candle_core::Result<Tensor> {
        let batch = xs.dim(0)?;
        let probe = head
            .probe
            .broadcast_as((batch, 1, self.config.hidden_size))?
            .contiguous()?;
        let q = self.split_heads(&head.q_proj.forward(&probe)?)?;
        let k = self.split_heads(&head.k_proj.forward(xs)?)?;
        let v = self.split_heads(&head.v_proj.forward(xs)?)?;
        let attn = head
            .out_proj
            .forward(&self.merge_heads(&attention(&q, &k, &v, None)?)?)?;
        let mlp = head.fc2.forward(
            &self
                .config
                .hidden_act
                .apply(&head.fc1.forward(&head.layernorm.forward(&attn)?)?)?,
        )?;
        (attn + mlp)?.squeeze(1)
    }
}

/// SigLIP's processor normalisation: pixels in `[0, 1]` -> `(x - 0.5) / 0.5`, in `[-1, 1]`.
pub fn normalize_pixels(images: &Tensor) -> Result<Tensor> {
    Ok(((images.to_dtype(DType::F32)? - 0.5)? / 0.5)?)
}

/// RGB pixels `[height, width, 3]` as bytes (an image buffer) -> `[3, height, width]` f32,
/// normalised as SigLIP expects.
pub fn pixels_from_rgb8(
    rgb: &[u8],
    height: usize,
    width: usize,
    device: &Device,
) -> Result<Tensor> {
    if rgb.len() != height * width * 3 {
        return Err(LmError::input(
            "rgb",
            format!("{} bytes ({height} x {width} x 3)", height * width * 3),
            format!("{} bytes", rgb.len()),
        ));
    }
    let t = Tensor::from_slice(rgb, (height, width, 3), device)?
        .permute((2, 0, 1))?
        .to_dtype(DType::F32)?;
    normalize_pixels(&(t / 255.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb_bytes_become_normalised_channels_first() {
        // 1 x 2 image: a black pixel and a (255, 128, 0) pixel.
        let t = pixels_from_rgb8(&[0, 0, 0, 255, 128, 0], 1, 2, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[3, 1, 2]);
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let expected = [-1.0, 1.0, -1.0, 128.0 / 127.5 - 1.0, -1.0, -1.0];
        for (got, want) in v.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{v:?}");
        }
        assert!(pixels_from_rgb8(&[0; 5], 1, 2, &Device::Cpu).is_err());
    }

    #[test]
    fn so400m_has_729_patches_of_1152() {
        let c = SiglipVisionConfig::so400m_patch14_384();
        c.validate().unwrap();
        assert_eq!(c.num_patches(), 729);
        let mut bad = c.clone();
        bad.image_size = 13;
        assert!(bad.validate().is_err());
    }
}
