//! The DSPA projectors (paper §1.2): MLPs that map the signal stream (Beat's quantized latents)
//! and the image stream (SigLIP's pooled feature) into the backbone's embedding space.
//!
//! - [`SignalProjector`], depth `d`: `d` blocks of linear + GELU (the first `width -> H`, the
//!   others `H -> H`), then a LayerNorm. `d = 1` is the paper's `linear 128 -> H, GELU,
//!   LayerNorm`; deeper projectors keep the final LayerNorm so every depth hands the backbone
//!   tokens of the same scale, which keeps the depth ablation about depth alone.
//! - [`ImageProjector`], depth `d`, `T` tokens: `d` linear layers of width `T * H` with a GELU
//!   between consecutive ones (none after the last), the output viewed as `T` tokens of `H`.
//!   `d = 2, T = 2` is the paper's `linear 1152 -> 2H, GELU, linear 2H -> 2H`; `d = 1` is a
//!   single linear map.
//!
//! GELU is the exact (erf) form, PyTorch's `nn.GELU()` default that LLaVA-style projectors use.
//! Weights are f32 master weights in their own store, initialised like PyTorch's `nn.Linear`;
//! the model casts the outputs to the backbone's dtype. The LayerNorm is the differentiable
//! composition of beatlab-nn (candle's fused `layer_norm` has no backward pass).
//! [`SignalProjector::detached`] / [`ImageProjector::detached`] give the same projector cut from
//! the autograd graph (sharing storage, so it follows the trained values): what a stage that
//! does not train the projector runs, so no gradient reaches its variables while gradients
//! still flow through it to a trainable encoder.

use beatlab_nn::layers::{LayerNorm, Linear, gelu_erf};
use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::error::{MmError, Result};

/// Beat latents `[.., width]` -> backbone embeddings `[.., H]`.
#[derive(Debug, Clone)]
pub struct SignalProjector {
    layers: Vec<Linear>,
    norm_weight: Tensor,
    norm_bias: Tensor,
    eps: f64,
    in_dim: usize,
    out_dim: usize,
}

impl SignalProjector {
    /// A projector `in_dim -> out_dim` of `depth` linear + GELU blocks and a final LayerNorm
    /// (`eps`), with weights `layers.{i}.{weight,bias}` and `norm.{weight,bias}` under `vb`.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        depth: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        check_sizes("signal", in_dim, out_dim, depth)?;
        let mut layers = Vec::with_capacity(depth);
        for i in 0..depth {
            let input = if i == 0 { in_dim } else { out_dim };
            layers.push(Linear::new(input, out_dim, true, vb.pp("layers").pp(i))?);
        }
        let norm = vb.pp("norm");
        Ok(Self {
            layers,
            norm_weight: norm.get_with_hints(out_dim, "weight", Init::Const(1.0))?,
            norm_bias: norm.get_with_hints(out_dim, "bias", Init::Const(0.0))?,
            eps,
            in_dim,
            out_dim,
        })
    }

    /// The same projector with every weight detached from the autograd graph.
    pub fn detached(&self) -> Self {
        Self {
            layers: self.layers.iter().map(detach_linear).collect(),
            norm_weight: self.norm_weight.detach(),
            norm_bias: self.norm_bias.detach(),
            ..self.clone()
        }
    }

    /// Width of the latents it takes.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Width of the embeddings it gives (the backbone's hidden size).
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Linear layers (the depth).
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// Project `[.., in_dim]` to `[.., out_dim]`.
    pub fn forward(&self, latents: &Tensor) -> Result<Tensor> {
        let mut xs = latents.clone();
        for layer in &self.layers {
            xs = gelu_erf(&layer.forward(&xs)?)?;
        }
        let norm = LayerNorm::from_tensors(
            self.norm_weight.clone(),
            Some(self.norm_bias.clone()),
            self.eps,
        );
        Ok(norm.forward(&xs)?)
    }
}

/// Pooled image features `[n, F]` -> `[n, tokens, H]` backbone embeddings.
#[derive(Debug, Clone)]
pub struct ImageProjector {
    layers: Vec<Linear>,
    in_dim: usize,
    hidden: usize,
    tokens: usize,
}

impl ImageProjector {
    /// A projector `in_dim -> tokens x hidden` of `depth` linear layers (GELU between them),
    /// with weights `layers.{i}.{weight,bias}` under `vb`.
    pub fn new(
        in_dim: usize,
        hidden: usize,
        tokens: usize,
        depth: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        check_sizes("image", in_dim, hidden, depth)?;
        if tokens == 0 {
            return Err(MmError::config(
                "image_tokens",
                "is 0; each image feature must become at least one token",
            ));
        }
        let width = tokens * hidden;
        let mut layers = Vec::with_capacity(depth);
        for i in 0..depth {
            let input = if i == 0 { in_dim } else { width };
            layers.push(Linear::new(input, width, true, vb.pp("layers").pp(i))?);
        }
        Ok(Self {
            layers,
            in_dim,
            hidden,
            tokens,
        })
    }

    /// The same projector with every weight detached from the autograd graph.
    pub fn detached(&self) -> Self {
        Self {
            layers: self.layers.iter().map(detach_linear).collect(),
            ..self.clone()
        }
    }

    /// Width of the features it takes.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Tokens per feature.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Width of each token (the backbone's hidden size).
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Linear layers (the depth).
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// Project `[n, in_dim]` to `[n, tokens, hidden]`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let n = features.dim(0)?;
        let mut xs = features.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                xs = gelu_erf(&xs)?;
            }
            xs = layer.forward(&xs)?;
        }
        Ok(xs.reshape((n, self.tokens, self.hidden))?)
    }
}

fn detach_linear(layer: &Linear) -> Linear {
    Linear::from_tensors(layer.weight().detach(), layer.bias().map(Tensor::detach))
}

fn check_sizes(which: &str, in_dim: usize, out_dim: usize, depth: usize) -> Result<()> {
    if depth == 0 {
        return Err(MmError::config(
            format!("{which}_depth"),
            "is 0; a projector needs at least one layer",
        ));
    }
    if in_dim == 0 || out_dim == 0 {
        return Err(MmError::config(
            format!("{which}_projector"),
            format!("has an empty side ({in_dim} -> {out_dim})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use beatlab_nn::ParamStore;
    use candle_core::{D, DType, Device};

    fn store_vb(seed: u64) -> (ParamStore, VarBuilder<'static>) {
        let store = ParamStore::new(seed);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        (store, vb)
    }

    #[test]
    fn paper_signal_projector_is_linear_gelu_layernorm() {
        let (store, vb) = store_vb(3);
        let proj = SignalProjector::new(8, 6, 1, 1e-5, vb).unwrap();
        let names: Vec<String> = store.vars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "layers.0.bias",
                "layers.0.weight",
                "norm.bias",
                "norm.weight"
            ]
        );
        let x = Tensor::randn(0f32, 1.0, (2, 5, 8), &Device::Cpu).unwrap();
        let y = proj.forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 5, 6]);
        // Recompute by hand from the stored weights: x W^T + b, exact GELU, then normalise
        // (weight 1, bias 0 at init) so each token has mean 0 and variance 1.
        let w = store.get("layers.0.weight").unwrap();
        let b = store.get("layers.0.bias").unwrap();
        let h = x
            .broadcast_matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap()
            .gelu_erf()
            .unwrap();
        let mean = h.mean_keepdim(D::Minus1).unwrap();
        let c = h.broadcast_sub(&mean).unwrap();
        let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let expected = c
            .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
            .unwrap();
        let diff = (y - expected)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "max difference {diff}");
    }

    #[test]
    fn deeper_signal_projector_stacks_blocks_before_one_norm() {
        let (store, vb) = store_vb(4);
        let proj = SignalProjector::new(8, 6, 3, 1e-5, vb).unwrap();
        assert_eq!(proj.depth(), 3);
        let shapes: Vec<(String, Vec<usize>)> = store
            .vars()
            .into_iter()
            .map(|(n, v)| (n, v.dims().to_vec()))
            .collect();
        let expect = |n: &str, d: &[usize]| (n.to_string(), d.to_vec());
        assert_eq!(
            shapes,
            vec![
                expect("layers.0.bias", &[6]),
                expect("layers.0.weight", &[6, 8]),
                expect("layers.1.bias", &[6]),
                expect("layers.1.weight", &[6, 6]),
                expect("layers.2.bias", &[6]),
                expect("layers.2.weight", &[6, 6]),
                expect("norm.bias", &[6]),
                expect("norm.weight", &[6]),
            ]
        );
    }

    #[test]
    fn paper_image_projector_gives_two_tokens_of_hidden() {
        let (store, vb) = store_vb(5);
        let proj = ImageProjector::new(12, 4, 2, 2, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 12), &Device::Cpu).unwrap();
        let y = proj.forward(&x).unwrap();
        assert_eq!(y.dims(), &[3, 2, 4]);
        // By hand: linear 12 -> 8, GELU, linear 8 -> 8, viewed as 2 tokens of 4.
        let lin = |name: &str, x: &Tensor| {
            let w = store.get(&format!("{name}.weight")).unwrap();
            let b = store.get(&format!("{name}.bias")).unwrap();
            x.matmul(&w.as_tensor().t().unwrap())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap()
        };
        let h = lin("layers.0", &x).gelu_erf().unwrap();
        let expected = lin("layers.1", &h).reshape((3, 2, 4)).unwrap();
        let diff = (y - expected)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "max difference {diff}");
    }

    #[test]
    fn zero_sizes_are_config_errors() {
        let check = |result: Result<()>, field: &str| match result {
            Err(MmError::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected a config error on {field}, got {other:?}"),
        };
        check(
            SignalProjector::new(8, 6, 0, 1e-5, store_vb(1).1).map(|_| ()),
            "signal_depth",
        );
        check(
            ImageProjector::new(8, 6, 2, 0, store_vb(1).1).map(|_| ()),
            "image_depth",
        );
        check(
            ImageProjector::new(8, 6, 0, 2, store_vb(1).1).map(|_| ()),
            "image_tokens",
        );
    }
}
