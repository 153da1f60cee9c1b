//! An ECG ViT: the time-series encoder of GEM and anyECG-chat (`paper-facts.md` §2-3), the
//! option beside Beat for the signal stream.
//!
//! The window `[leads, L]` is cut into patches of `patch_size` samples, each patch embedded by
//! one linear map, a learned positional embedding added (and, optionally, a learned CLS token
//! put first), and the tokens run through a pre-norm transformer encoder (beatlab-nn's, the
//! one Beat uses). Every output token goes to the signal projector: no pooling, no quantizer.
//!
//! Two patch layouts:
//! - [`PatchLayout::AllLeads`] (GEM): a patch is every lead over `patch_size` samples
//!   (`leads x patch_size` values), `L / patch_size` tokens; GEM's 12 x 5000 at patch 50 gives
//!   100 tokens;
//! - [`PatchLayout::PerLead`] (anyECG-chat): a patch is one lead over `patch_size` samples,
//!   `leads x L / patch_size` tokens, lead-major; anyECG-chat's 12 x 1000 at patch 200 gives 60
//!   tokens (+ CLS). The positional embedding is per token, so it tells leads apart too.
//!
//! Weights (under the part's store): `patch_embed.{weight,bias}`, `pos` `[tokens, width]`,
//! `cls` `[1, width]` (with a CLS token), `encoder.blocks.{i}.*`, `encoder.norm.*`. Learned
//! tokens start from N(0, 0.02), the ViT convention. Neither paper's encoder weights are
//! public, so the encoder starts random (seeded) and is trained or kept frozen as the stage
//! says.

use beatlab_nn::layers::{Linear, TOKEN_INIT_STD};
use beatlab_nn::transformer::{Transformer, TransformerConfig};
use candle_core::{DType, Module, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{MmError, Result};

/// What one patch covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchLayout {
    /// Every lead over `patch_size` samples (GEM).
    AllLeads,
    /// One lead over `patch_size` samples (anyECG-chat).
    PerLead,
}

/// The shape of an [`EcgVit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcgVitConfig {
    /// Leads of the input window (12).
    pub leads: usize,
    /// Samples of the window the encoder reads (the first `input_len` of a longer window).
    pub input_len: usize,
    /// Samples per patch; divides `input_len`.
    pub patch_size: usize,
    /// What one patch covers.
    pub layout: PatchLayout,
    /// Token width.
    pub width: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// MLP hidden size as a multiple of the width.
    pub mlp_ratio: f64,
    /// Put a learned CLS token first (anyECG-chat's "60 tokens + CLS").
    pub cls_token: bool,
    /// LayerNorm epsilon (ViT: 1e-6).
    pub norm_eps: f64,
}

impl EcgVitConfig {
    /// Patches of the window.
    pub fn patches(&self) -> usize {
        let per_lead = self.input_len / self.patch_size.max(1);
        match self.layout {
            PatchLayout::AllLeads => per_lead,
            PatchLayout::PerLead => self.leads * per_lead,
        }
    }

    /// Output tokens per window: the patches, and the CLS token when there is one.
    pub fn tokens(&self) -> usize {
        self.patches() + usize::from(self.cls_token)
    }

    /// Values of one patch.
    pub fn patch_values(&self) -> usize {
        match self.layout {
            PatchLayout::AllLeads => self.leads * self.patch_size,
            PatchLayout::PerLead => self.patch_size,
        }
    }

    /// Check sizes.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vit.leads", self.leads),
            ("vit.input_len", self.input_len),
            ("vit.patch_size", self.patch_size),
            ("vit.width", self.width),
            ("vit.depth", self.depth),
            ("vit.heads", self.heads),
            ("vit.head_dim", self.head_dim),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(MmError::config(field, "is 0, expected at least 1"));
            }
        }
        if !self.input_len.is_multiple_of(self.patch_size) {
            return Err(MmError::config(
                "vit.patch_size",
                format!(
                    "= {} does not divide the input length {}",
                    self.patch_size, self.input_len
                ),
            ));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) {
            return Err(MmError::config(
                "vit.mlp_ratio",
                format!("= {} must be a finite number > 0", self.mlp_ratio),
            ));
        }
        Ok(())
    }

    fn transformer(&self) -> TransformerConfig {
        TransformerConfig {
            width: self.width,
            depth: self.depth,
            heads: self.heads,
            head_dim: self.head_dim,
            mlp_hidden: ((self.width as f64 * self.mlp_ratio).round() as usize).max(1),
            dropout: 0.0,
            norm_eps: self.norm_eps,
        }
    }
}

/// The encoder.
#[derive(Debug, Clone)]
pub struct EcgVit {
    config: EcgVitConfig,
    patch_embed: Linear,
    pos: Tensor,
    cls: Option<Tensor>,
    encoder: Transformer,
}

impl EcgVit {
    /// A ViT of `config` with its weights under `vb` (see the module doc for the names).
    pub fn new(config: EcgVitConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let tokens = Init::Randn {
            mean: 0.0,
            stdev: TOKEN_INIT_STD,
        };
        let w = config.width;
        let patch_embed = Linear::new(config.patch_values(), w, true, vb.pp("patch_embed"))?;
        let pos = vb.get_with_hints((config.tokens(), w), "pos", tokens)?;
        let cls = if config.cls_token {
            Some(vb.get_with_hints((1, w), "cls", tokens)?)
        } else {
            None
        };
        let encoder = Transformer::new(&config.transformer(), vb.pp("encoder"))?;
        Ok(Self {
            config,
            patch_embed,
            pos,
            cls,
            encoder,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EcgVitConfig {
        &self.config
    }

    /// `[N, leads, L >= input_len]` -> patches `[N, patches, patch_values]`.
    fn patchify(&self, windows: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (n, leads, len) = windows.dims3()?;
        if leads != c.leads || len < c.input_len {
            return Err(MmError::config(
                "vit input",
                format!(
                    "has shape {:?}; expected [N, {}, L >= {}]",
                    windows.dims(),
                    c.leads,
                    c.input_len
                ),
            ));
        }
        let x = windows.narrow(2, 0, c.input_len)?;
        let per_lead = c.input_len / c.patch_size;
        Ok(match c.layout {
            PatchLayout::AllLeads => x
                .reshape((n, leads, per_lead, c.patch_size))?
                .permute((0, 2, 1, 3))?
                .reshape((n, per_lead, leads * c.patch_size))?,
            PatchLayout::PerLead => x.reshape((n, leads * per_lead, c.patch_size))?,
        })
    }

    /// Encode windows `[N, leads, L]` (f32) into tokens `[N, tokens, width]`.
    pub fn forward(&self, windows: &Tensor) -> Result<Tensor> {
        let n = windows.dim(0)?;
        let patches = self.patchify(&windows.to_dtype(DType::F32)?)?;
        let mut x = self.patch_embed.forward(&patches)?;
        if let Some(cls) = &self.cls {
            let cls = cls.unsqueeze(0)?.broadcast_as((n, 1, self.config.width))?;
            x = Tensor::cat(&[&cls.contiguous()?, &x], 1)?;
        }
        let x = x.broadcast_add(&self.pos.unsqueeze(0)?)?;
        Ok(self.encoder.forward(&x, None, None)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beatlab_nn::ParamStore;
    use candle_core::Device;

    fn config(layout: PatchLayout, cls_token: bool) -> EcgVitConfig {
        EcgVitConfig {
            leads: 3,
            input_len: 8,
            patch_size: 4,
            layout,
            width: 8,
            depth: 1,
            heads: 2,
            head_dim: 4,
            mlp_ratio: 2.0,
            cls_token,
            norm_eps: 1e-6,
        }
    }

    /// A window whose value says where it is: lead * 100 + sample.
    fn window() -> Tensor {
        let v: Vec<f32> = (0..3)
            .flat_map(|l| (0..10).map(move |s| (l * 100 + s) as f32))
            .collect();
        Tensor::from_vec(v, (1, 3, 10), &Device::Cpu).unwrap()
    }

    #[test]
    fn patches_follow_the_layout() {
        let store = ParamStore::new(1);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let gem = EcgVit::new(config(PatchLayout::AllLeads, false), vb.pp("a")).unwrap();
        let p = gem.patchify(&window()).unwrap();
        assert_eq!(p.dims(), &[1, 2, 12]);
        // The second patch: samples 4..8 of lead 0, then of lead 1, then of lead 2.
        assert_eq!(
            p.get(0).unwrap().get(1).unwrap().to_vec1::<f32>().unwrap(),
            [
                4., 5., 6., 7., 104., 105., 106., 107., 204., 205., 206., 207.
            ]
        );
        let any = EcgVit::new(config(PatchLayout::PerLead, true), vb.pp("b")).unwrap();
        let p = any.patchify(&window()).unwrap();
        assert_eq!(p.dims(), &[1, 6, 4]);
        // Lead-major: the fourth patch is lead 1, samples 4..8.
        assert_eq!(
            p.get(0).unwrap().get(3).unwrap().to_vec1::<f32>().unwrap(),
            [104., 105., 106., 107.]
        );
        assert_eq!(any.config().tokens(), 7);
    }

    #[test]
    fn forward_gives_one_token_per_patch_and_cls_and_reads_only_input_len() {
        let store = ParamStore::new(2);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let vit = EcgVit::new(config(PatchLayout::PerLead, true), vb).unwrap();
        let names: Vec<String> = store.vars().into_iter().map(|(n, _)| n).collect();
        for expected in ["cls", "pos", "patch_embed.weight", "encoder.norm.weight"] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        let a = vit.forward(&window()).unwrap();
        assert_eq!(a.dims(), &[1, 7, 8]);
        // Samples past input_len (8, 9) do not matter.
        let changed = window()
            .slice_assign(
                &[0..1, 0..3, 8..10],
                &Tensor::ones((1, 3, 2), DType::F32, &Device::Cpu).unwrap(),
            )
            .unwrap();
        let b = vit.forward(&changed).unwrap();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn bad_shapes_are_config_errors() {
        let mut c = config(PatchLayout::AllLeads, false);
        c.patch_size = 3;
        assert!(
            matches!(c.validate(), Err(MmError::Config { field, .. }) if field == "vit.patch_size")
        );
        let store = ParamStore::new(3);
        let vit = EcgVit::new(
            config(PatchLayout::AllLeads, false),
            store.var_builder(DType::F32, &Device::Cpu),
        )
        .unwrap();
        let short = Tensor::zeros((1, 3, 6), DType::F32, &Device::Cpu).unwrap();
        assert!(vit.forward(&short).is_err());
    }
}
