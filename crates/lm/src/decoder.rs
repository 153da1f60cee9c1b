//! The trainable causal decoder shared by Qwen2 and Phi-3: pre-norm blocks of grouped-query
//! self-attention with rotary positions and a gated MLP, RMS norms, full-sequence logits.
//!
//! The two families differ only in how projections are laid out in the checkpoint (separate
//! `q/k/v_proj` with biases and `gate/up_proj` for Qwen2, fused `qkv_proj` and `gate_up_proj`
//! without biases for Phi-3), which [`Layout`] selects, so one implementation serves both and the
//! weight names stay those of the Hugging Face checkpoints.

use std::ops::Range;

use beatlab_nn::ParamStore;
use beatlab_nn::layers::ScoreBias;
use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::error::{LmError, Result};
use crate::layers::{
    Activation, BuildOptions, Builder, Linear, MASKED, RmsNorm, Rotary, attention, repeat_kv,
};
use crate::lora::Lora;
use crate::vocab::Vocabulary;

/// Checkpoint layout of the projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `q_proj`, `k_proj`, `v_proj` (with bias), `o_proj`; `gate_proj`, `up_proj`, `down_proj`.
    Qwen2,
    /// `qkv_proj`, `o_proj`; `gate_up_proj`, `down_proj`; no biases.
    Phi3,
}

/// Sizes and constants of a decoder, derived from a validated family configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DecoderSpec {
    pub layout: Layout,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rotary_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub hidden_act: Activation,
    /// Keys further back than this many positions are masked (Phi-3's `sliding_window`).
    pub sliding_window: Option<usize>,
    /// Std of random initialisation (used only when weights are created, not loaded).
    pub initializer_range: f64,
}

enum QkvProj {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

struct SelfAttention {
    qkv: QkvProj,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn new(spec: &DecoderSpec, b: &Builder, vb: &VarBuilder) -> candle_core::Result<Self> {
        let (h, d) = (spec.hidden_size, spec.head_dim);
        let q_dim = spec.num_heads * d;
        let kv_dim = spec.num_kv_heads * d;
        let qkv = match spec.layout {
            Layout::Qwen2 => QkvProj::Separate {
                q: b.linear(&vb.pp("q_proj"), h, q_dim, true)?,
                k: b.linear(&vb.pp("k_proj"), h, kv_dim, true)?,
                v: b.linear(&vb.pp("v_proj"), h, kv_dim, true)?,
            },
            Layout::Phi3 => {
                QkvProj::Fused(b.linear(&vb.pp("qkv_proj"), h, q_dim + 2 * kv_dim, false)?)
            }
        };
        Ok(Self {
            qkv,
            o_proj: b.linear(&vb.pp("o_proj"), q_dim, h, false)?,
            num_heads: spec.num_heads,
            num_kv_heads: spec.num_kv_heads,
            head_dim: d,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        rotary: &Rotary,
        bias: &ScoreBias,
    ) -> candle_core::Result<Tensor> {
        let (batch, seq, _) = xs.dims3()?;
        let q_dim = self.num_heads * self.head_dim;
        let kv_dim = self.num_kv_heads * self.head_dim;
        let (q, k, v) = match &self.qkv {
            QkvProj::Separate { q, k, v } => (q.forward(xs)?, k.forward(xs)?, v.forward(xs)?),
            QkvProj::Fused(qkv) => {
                let all = qkv.forward(xs)?;
                (
                    all.narrow(D::Minus1, 0, q_dim)?,
                    all.narrow(D::Minus1, q_dim, kv_dim)?,
                    all.narrow(D::Minus1, q_dim + kv_dim, kv_dim)?,
                )
            }
        };
        let heads =
            |t: Tensor, n: usize| t.reshape((batch, seq, n, self.head_dim))?.transpose(1, 2);
        let q = rotary.apply(&heads(q, self.num_heads)?)?;
        let k = rotary.apply(&heads(k, self.num_kv_heads)?)?;
        let v = heads(v, self.num_kv_heads)?;
        let n_rep = self.num_heads / self.num_kv_heads;
        let out = attention(
            &q,
            &repeat_kv(&k, n_rep)?,
            &repeat_kv(&v, n_rep)?,
            Some(bias),
        )?;
        let out = out.transpose(1, 2)?.reshape((batch, seq, q_dim))?;
        self.o_proj.forward(&out)
    }
}

enum GateUp {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

struct Mlp {
    gate_up: GateUp,
    down: Linear,
    act: Activation,
    intermediate: usize,
}

impl Mlp {
    fn new(spec: &DecoderSpec, b: &Builder, vb: &VarBuilder) -> candle_core::Result<Self> {
        let (h, i) = (spec.hidden_size, spec.intermediate_size);
        let gate_up = match spec.layout {
            Layout::Qwen2 => GateUp::Separate {
                gate: b.linear(&vb.pp("gate_proj"), h, i, false)?,
                up: b.linear(&vb.pp("up_proj"), h, i, false)?,
            },
            Layout::Phi3 => GateUp::Fused(b.linear(&vb.pp("gate_up_proj"), h, 2 * i, false)?),
        };
        Ok(Self {
            gate_up,
            down: b.linear(&vb.pp("down_proj"), i, h, false)?,
            act: spec.hidden_act,
            intermediate: i,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (gate, up) = match &self.gate_up {
            GateUp::Separate { gate, up } => (gate.forward(xs)?, up.forward(xs)?),
            GateUp::Fused(gate_up) => {
                let both = gate_up.forward(xs)?;
                (
                    both.narrow(D::Minus1, 0, self.intermediate)?,
                    both.narrow(D::Minus1, self.intermediate, self.intermediate)?,
                )
            }
        };
        self.down.forward(&(self.act.apply(&gate)? * up)?)
    }
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: SelfAttention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn forward(
        &self,
        xs: &Tensor,
        rotary: &Rotary,
        bias: &ScoreBias,
    ) -> candle_core::Result<Tensor> {
        let attn = self
            .self_attn
            .forward(&self.input_layernorm.forward(xs)?, rotary, bias)?;
        let xs = (xs + attn)?;
        let mlp = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&xs)?)?;
        xs + mlp
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out: Vec<&mut Linear> = Vec::new();
        match &mut self.self_attn.qkv {
            QkvProj::Separate { q, k, v } => out.extend([q, k, v]),
            QkvProj::Fused(qkv) => out.push(qkv),
        }
        out.push(&mut self.self_attn.o_proj);
        match &mut self.mlp.gate_up {
            GateUp::Separate { gate, up } => out.extend([gate, up]),
            GateUp::Fused(gate_up) => out.push(gate_up),
        }
        out.push(&mut self.mlp.down);
        out
    }
}

/// A causal decoder language model with full-sequence outputs.
pub(crate) struct Decoder {
    spec: DecoderSpec,
    vocab: Vocabulary,
    layers: Vec<Block>,
    norm: RmsNorm,
    lora: Option<Lora>,
    dtype: DType,
    device: Device,
}

impl Decoder {
    /// Build over the weights `vb` provides (`model.*`, `lm_head.*`).
    pub(crate) fn new(spec: DecoderSpec, vb: VarBuilder, opts: &BuildOptions) -> Result<Self> {
        let b = Builder::new(opts, spec.initializer_range);
        let vb_m = vb.pp("model");
        let embed = b.weight(
            &vb_m.pp("embed_tokens"),
            &[spec.vocab_size, spec.hidden_size],
            "weight",
            b.randn(),
        )?;
        let head = if spec.tie_word_embeddings {
            None
        } else {
            Some(b.weight(
                &vb.pp("lm_head"),
                &[spec.vocab_size, spec.hidden_size],
                "weight",
                b.randn(),
            )?)
        };
        // Grown as the layers load: a checkpoint's `num_hidden_layers` is not trusted before
        // its weights are found (1e12 layers must be a missing tensor, not an allocation abort).
        let mut layers = Vec::new();
        for i in 0..spec.num_layers {
            let vb_l = vb_m.pp("layers").pp(i);
            layers.push(Block {
                input_layernorm: b.rms_norm(
                    &vb_l.pp("input_layernorm"),
                    spec.hidden_size,
                    spec.rms_norm_eps,
                )?,
                self_attn: SelfAttention::new(&spec, &b, &vb_l.pp("self_attn"))?,
                post_attention_layernorm: b.rms_norm(
                    &vb_l.pp("post_attention_layernorm"),
                    spec.hidden_size,
                    spec.rms_norm_eps,
                )?,
                mlp: Mlp::new(&spec, &b, &vb_l.pp("mlp"))?,
            });
        }
        let norm = b.rms_norm(&vb_m.pp("norm"), spec.hidden_size, spec.rms_norm_eps)?;
        let lora = b.lora().cloned();
        b.finish()?;
        Ok(Self {
            vocab: Vocabulary::new(embed, head),
            layers,
            norm,
            lora,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            spec,
        })
    }

    pub(crate) fn hidden_size(&self) -> usize {
        self.spec.hidden_size
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.vocab.size()
    }

    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    pub(crate) fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    pub(crate) fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        self.vocab.embed(ids)
    }

    /// Final hidden states (after the last norm) for `[batch, seq, hidden]` embeddings.
    pub(crate) fn forward_hidden(&self, embeds: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (batch, seq, hidden) = embeds.dims3().map_err(|_| {
            LmError::input(
                "embeds",
                format!("[batch, seq, {}]", self.spec.hidden_size),
                format!("{:?}", embeds.dims()),
            )
        })?;
        if hidden != self.spec.hidden_size || seq == 0 {
            return Err(LmError::input(
                "embeds",
                format!("[batch, seq >= 1, {}]", self.spec.hidden_size),
                format!("{:?}", embeds.dims()),
            ));
        }
        let bias = causal_bias(batch, seq, mask, self.spec.sliding_window, &self.device)?;
        let rotary = Rotary::new(
            seq,
            self.spec.rotary_dim,
            self.spec.rope_theta,
            self.dtype,
            &self.device,
        )?;
        let mut xs = embeds.to_dtype(self.dtype)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &rotary, &bias)?;
        }
        Ok(self.norm.forward(&xs)?)
    }

    pub(crate) fn logits(&self, hidden_states: &Tensor) -> Result<Tensor> {
        self.vocab.logits(hidden_states)
    }

    pub(crate) fn grow_vocab(
        &mut self,
        n: usize,
        store: &ParamStore,
        name: &str,
    ) -> Result<Range<u32>> {
        self.vocab.grow(n, store, name)
    }

    pub(crate) fn own_rows(
        &mut self,
        range: Range<u32>,
        store: &ParamStore,
        name: &str,
    ) -> Result<()> {
        self.vocab.own_rows(range, store, name)
    }

    pub(crate) fn added_ranges(&self) -> Vec<Range<usize>> {
        self.vocab.segment_ranges()
    }

    pub(crate) fn merge_lora(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            for linear in layer.linears_mut() {
                linear.merge_adapter()?;
            }
        }
        self.lora = None;
        Ok(())
    }
}

/// The additive attention bias (f32), built once per forward pass for every layer: causal and
/// optionally windowed, `[1, 1, seq, seq]`, or `[batch, 1, seq, seq]` with the padded keys
/// (`mask[b, j] == 0`) masked too when a mask is given.
pub(crate) fn causal_bias(
    batch: usize,
    seq: usize,
    mask: Option<&Tensor>,
    window: Option<usize>,
    device: &Device,
) -> Result<ScoreBias> {
    let mut causal = vec![0f32; seq * seq];
    for i in 0..seq {
        for j in 0..seq {
            let future = j > i;
            let too_far = window.is_some_and(|w| j <= i && i - j >= w);
            if future || too_far {
                causal[i * seq + j] = MASKED;
            }
        }
    }
    let causal = Tensor::from_vec(causal, (1, 1, seq, seq), device)?;
    let Some(mask) = mask else {
        return Ok(ScoreBias::new(&causal)?);
    };
    if mask.dims() != [batch, seq] {
        return Err(LmError::input(
            "attention_mask",
            format!("[{batch}, {seq}] (1 = token, 0 = padding)"),
            format!("{:?}", mask.dims()),
        ));
    }
    let keys: Vec<f32> = mask
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|keep| if keep == 0.0 { MASKED } else { 0.0 })
        .collect();
    let keys = Tensor::from_vec(keys, (batch, 1, 1, seq), device)?;
    Ok(ScoreBias::new(&causal.broadcast_add(&keys)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(bias: &ScoreBias) -> Vec<Vec<Vec<bool>>> {
        let bias = bias.tensor();
        let (b, _, q, k) = bias.dims4().unwrap();
        let v = bias.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (0..b)
            .map(|b| {
                (0..q)
                    .map(|i| (0..k).map(|j| v[(b * q + i) * k + j] < -1.0).collect())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn bias_masks_future_far_and_padded_keys() {
        let dev = Device::Cpu;
        let plain = masked(&causal_bias(1, 3, None, None, &dev).unwrap());
        assert_eq!(
            plain[0],
            vec![
                vec![false, true, true],
                vec![false, false, true],
                vec![false, false, false]
            ]
        );
        // Window 2: a query sees itself and one key back.
        let windowed = masked(&causal_bias(1, 3, None, Some(2), &dev).unwrap());
        assert_eq!(windowed[0][2], vec![true, false, false]);
        let mask = Tensor::new(&[[1u8, 1, 0], [0, 1, 1]], &dev).unwrap();
        let padded = masked(&causal_bias(2, 3, Some(&mask), None, &dev).unwrap());
        assert_eq!(padded[0][2], vec![false, false, true]);
        assert_eq!(padded[1][1], vec![true, false, true]);
        assert!(causal_bias(2, 4, Some(&mask), None, &dev).is_err());
    }
}
