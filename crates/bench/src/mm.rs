//! The multimodal pieces of HeartcareGPT against PyTorch + Hugging Face transformers
//! (`bench/mm_torch.py`), at the quickstart's sizes and at full size:
//! - `mm-step`: one training step of a Qwen2 backbone with LoRA adapters on q/k/v/o and a signal
//!   projector: Beat-width latents through the projector as a prefix, token embeddings after
//!   it, next-token cross-entropy on the text positions, backward, clipping at 1.0, AdamW over
//!   the adapters and the projector (the base frozen), as the joint stage trains;
//! - `siglip`: a forward pass of the SigLIP vision tower (no gradient), as the stages encode
//!   ECG images.
//!
//! Both sides build the same shapes from one JSON description, passed to the peer, and the
//! peer must report the same trainable and frozen parameter counts before anything is timed.
//! LoRA dropout is 0 on both sides (the masks are host-drawn here and device-drawn there).

use beatlab_lm::layers::BuildOptions;
use beatlab_lm::presets::{random_siglip, tiny_qwen2, tiny_siglip};
use beatlab_lm::{
    Activation, Backbone, BackboneConfig, Lora, LoraConfig, Qwen2Config, SiglipVision,
    SiglipVisionConfig, next_token_loss,
};
use beatlab_mm::SignalProjector;
use beatlab_nn::ParamStore;
use beatlab_nn::optim::{AdamW, AdamWConfig, clip_grad_norm};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::{BenchError, Comparison, Peer, PeerRound, Timer, alternate, finish_peer};

/// Which sizes to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmSize {
    /// The quickstart's tiny backbone and vision tower.
    Quickstart,
    /// Qwen2.5-0.5B's shapes and SigLIP so400m's.
    Full,
}

impl MmSize {
    fn name(self) -> &'static str {
        match self {
            MmSize::Quickstart => "quickstart",
            MmSize::Full => "full",
        }
    }
}

/// Knobs of the multimodal benchmark.
#[derive(Debug, Clone)]
pub struct MmOptions {
    pub sizes: Vec<MmSize>,
    /// Timed rounds (the median counts).
    pub rounds: usize,
    /// Steps (or forward passes) per round, per size: quickstart, full.
    pub steps: [usize; 2],
    /// Untimed steps first.
    pub warmup: usize,
    pub seed: u64,
}

impl Default for MmOptions {
    fn default() -> Self {
        Self {
            sizes: vec![MmSize::Quickstart, MmSize::Full],
            rounds: 3,
            steps: [4, 1],
            warmup: 1,
            seed: 0,
        }
    }
}

/// The training step's shapes, shared with the peer as JSON.
#[derive(Debug, Clone, Serialize)]
struct StepShape {
    qwen2: Qwen2Config,
    lora_rank: usize,
    lora_alpha: f64,
    lora_targets: Vec<String>,
    latent_dim: usize,
    projector_depth: usize,
    batch: usize,
    prefix: usize,
    text: usize,
    lr: f64,
}

/// The vision forward's shapes, shared with the peer as JSON.
#[derive(Debug, Clone, Serialize)]
struct VisionShape {
    siglip: SiglipVisionConfig,
    batch: usize,
}

fn step_shape(size: MmSize) -> StepShape {
    let (qwen2, latent_dim, projector_depth, batch, lora_rank) = match size {
        // experiments/quickstart.toml: tiny Qwen2 (hidden 64, 2 layers), vocabulary 1024, LoRA
        // rank 16, Beat width 64, one projector layer, batch 16 of 256 positions.
        MmSize::Quickstart => (tiny_qwen2(1024), 64, 1, 16, 16),
        // Qwen2.5-0.5B's architecture, the paper's LoRA rank 64, Beat's paper width 128.
        MmSize::Full => (qwen2_5_0_5b(), 128, 2, 1, 64),
    };
    StepShape {
        qwen2,
        lora_rank,
        lora_alpha: 2.0 * lora_rank as f64,
        lora_targets: ["q_proj", "k_proj", "v_proj", "o_proj"]
            .map(String::from)
            .into(),
        latent_dim,
        projector_depth,
        batch,
        prefix: 20,
        text: 236,
        lr: 2e-5,
    }
}

fn vision_shape(size: MmSize) -> VisionShape {
    match size {
        MmSize::Quickstart => VisionShape {
            siglip: tiny_siglip(),
            batch: 16,
        },
        MmSize::Full => VisionShape {
            siglip: SiglipVisionConfig::so400m_patch14_384(),
            batch: 1,
        },
    }
}

/// `Qwen/Qwen2.5-0.5B`'s config.json, as this crate reads it.
fn qwen2_5_0_5b() -> Qwen2Config {
    Qwen2Config {
        vocab_size: 151_936,
        hidden_size: 896,
        intermediate_size: 4864,
        num_hidden_layers: 24,
        num_attention_heads: 14,
        num_key_value_heads: Some(2),
        head_dim: None,
        max_position_embeddings: 32_768,
        rope_theta: 1_000_000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
        hidden_act: Activation::Silu,
        use_sliding_window: false,
        sliding_window: Some(32_768),
        max_window_layers: Some(24),
        initializer_range: 0.02,
        rope_scaling: None,
    }
}

/// Our training step: frozen backbone with adapters, the projector, AdamW over both.
struct Step {
    backbone: Backbone,
    projector: SignalProjector,
    vars: Vec<(String, Var)>,
    opt: AdamW,
    latents: Tensor,
    ids: Tensor,
    target_mask: Tensor,
    trainable: usize,
    frozen: usize,
}

impl Step {
    fn new(shape: &StepShape, seed: u64, device: &Device) -> Result<Self, BenchError> {
        let (base, adapters, proj) = (
            ParamStore::new(seed),
            ParamStore::new(seed + 1),
            ParamStore::new(seed + 2),
        );
        let targets: Vec<&str> = shape.lora_targets.iter().map(String::as_str).collect();
        let lora = LoraConfig::new(shape.lora_rank, shape.lora_alpha, 0.0, &targets);
        let opts = BuildOptions {
            lora: Some(Lora::new(lora, adapters.clone())?),
            freeze_base: true,
        };
        let config = BackboneConfig::Qwen2(shape.qwen2.clone());
        let backbone = Backbone::random(&config, &base, DType::F32, device, &opts)?;
        let hidden = shape.qwen2.hidden_size;
        let projector = SignalProjector::new(
            shape.latent_dim,
            hidden,
            shape.projector_depth,
            1e-5,
            proj.var_builder(DType::F32, device),
        )?;
        let mut vars = adapters.vars();
        vars.extend(proj.vars());
        let opt = AdamW::new(
            vars.clone(),
            AdamWConfig {
                lr: shape.lr,
                weight_decay: 0.0,
                ..AdamWConfig::default()
            },
        )?;
        let (b, p, t) = (shape.batch, shape.prefix, shape.text);
        let latents = Tensor::randn(0f32, 1.0, (b, p, shape.latent_dim), device)?;
        let vocab = shape.qwen2.vocab_size as u32;
        let ids: Vec<u32> = (0..b * (p + t))
            .map(|i| (i as u32).wrapping_mul(2_654_435_761) % vocab)
            .collect();
        let ids = Tensor::from_vec(ids, (b, p + t), device)?;
        let mask: Vec<f32> = (0..b * (p + t))
            .map(|i| f32::from(u8::from(i % (p + t) >= p)))
            .collect();
        let target_mask = Tensor::from_vec(mask, (b, p + t), device)?;
        Ok(Self {
            trainable: vars.iter().map(|(_, v)| v.elem_count()).sum(),
            frozen: base.num_params(),
            backbone,
            projector,
            vars,
            opt,
            latents,
            ids,
            target_mask,
        })
    }

    /// One step; returns the loss.
    fn step(&mut self, prefix: usize) -> Result<f32, BenchError> {
        let text_ids = self.ids.narrow(1, prefix, self.ids.dim(1)? - prefix)?;
        let embeds = Tensor::cat(
            &[
                self.projector.forward(&self.latents)?,
                self.backbone.embed_tokens(&text_ids)?,
            ],
            1,
        )?;
        let logits = self.backbone.forward_embeds(&embeds, None)?;
        let loss = next_token_loss(&logits, &self.ids, Some(&self.target_mask))?;
        let value = loss.to_scalar::<f32>()?;
        let mut grads = loss.backward()?;
        clip_grad_norm(&mut grads, &self.vars, 1.0)?;
        self.opt.step(&grads)?;
        Ok(value)
    }
}

/// The peer's hello: its library versions and its parameter counts.
#[derive(Debug, Deserialize)]
struct TorchHello {
    torch: String,
    transformers: String,
    trainable: usize,
    frozen: usize,
}

/// The extras of one of the peer's rounds.
#[derive(Debug, Deserialize)]
struct TorchRound {
    loss: Option<f64>,
}

/// Runs the benchmark at each size: the training step, then the vision forward.
pub fn run(
    options: &MmOptions,
    peer: Option<&Peer>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Comparison>, BenchError> {
    let mut out = Vec::new();
    for &size in &options.sizes {
        out.push(run_step(size, options, peer, progress)?);
        out.push(run_vision(size, options, peer, progress)?);
    }
    Ok(out)
}

fn steps_for(size: MmSize, options: &MmOptions) -> usize {
    options.steps[usize::from(size == MmSize::Full)].max(1)
}

/// Starts the peer on `workload` with `shape`, checking it built the same parameter counts.
fn start_peer(
    peer: Option<&Peer>,
    workload: &str,
    shape: &impl Serialize,
    steps: usize,
    options: &MmOptions,
    counts: (usize, usize),
) -> Result<Option<(super::PeerSession, TorchHello)>, BenchError> {
    let Some(peer) = peer else {
        return Ok(None);
    };
    let args = vec![
        "--workload".to_string(),
        workload.to_string(),
        "--shape".to_string(),
        serde_json::to_string(shape).map_err(|e| BenchError::PeerOutput {
            script: "mm_torch.py".into(),
            reason: e.to_string(),
        })?,
        "--steps".into(),
        steps.to_string(),
        "--warmup".into(),
        options.warmup.to_string(),
        "--threads".into(),
        candle_core::utils::get_num_threads().to_string(),
        "--seed".into(),
        options.seed.to_string(),
    ];
    let (session, hello): (_, TorchHello) = peer.start("mm_torch.py", &args)?;
    if (hello.trainable, hello.frozen) != counts {
        return Err(BenchError::Mismatch {
            benchmark: "mm",
            what: format!(
                "{workload}: parameters (trainable, frozen): ours {counts:?}, PyTorch ({}, {})",
                hello.trainable, hello.frozen
            ),
        });
    }
    Ok(Some((session, hello)))
}

fn run_step(
    size: MmSize,
    options: &MmOptions,
    peer: Option<&Peer>,
    progress: &mut dyn FnMut(&str),
) -> Result<Comparison, BenchError> {
    let shape = step_shape(size);
    let steps = steps_for(size, options);
    progress(&format!(
        "mm: Qwen2 + LoRA + projector training step, {} size: building",
        size.name()
    ));
    let mut ours = Step::new(&shape, options.seed, &Device::Cpu)?;
    for _ in 0..options.warmup {
        ours.step(shape.prefix)?;
    }
    let counts = (ours.trainable, ours.frozen);
    let mut session = start_peer(peer, "step", &shape, steps, options, counts)?;
    let (mut our_loss, mut their_loss) = (f32::NAN, None);
    let (rates, theirs) = alternate(
        options.rounds,
        session.as_mut().map(|(s, _)| s),
        || {
            let timer = Timer::start();
            for _ in 0..steps {
                our_loss = ours.step(shape.prefix)?;
            }
            Ok(((steps * shape.batch) as f64, timer.stop()))
        },
        |round: &PeerRound<TorchRound>| {
            their_loss = round.extra.loss;
            Ok(())
        },
    )?;
    let hello = finish_peer(session)?;
    let q = &shape.qwen2;
    Ok(Comparison {
        benchmark: format!("mm-step-{}", size.name()),
        workload: format!(
            "Qwen2 training step (hidden {}, {} layers, {} heads / {} kv, vocab {}) with LoRA r{} on q/k/v/o and a {}-layer signal projector, batch {} x ({} prefix + {} text) positions, clip 1.0, AdamW; base frozen; cpu",
            q.hidden_size,
            q.num_hidden_layers,
            q.num_attention_heads,
            q.num_key_value_heads.unwrap_or(q.num_attention_heads),
            q.vocab_size,
            shape.lora_rank,
            shape.projector_depth,
            shape.batch,
            shape.prefix,
            shape.text
        ),
        unit: "sequences/s".into(),
        goal: Some(1.2),
        notes: vec![format!(
            "parameters: {} trainable, {} frozen (PyTorch: the same counts); loss after the last step: ours {our_loss:.4}{}",
            counts.0,
            counts.1,
            their_loss.map_or(String::new(), |l| format!(", PyTorch {l:.4}"))
        )],
        details: serde_json::json!({ "shape": &shape, "steps_per_round": steps }),
        ..Comparison::from_rates(&rates, hello.map(|h| (peer_name(&h), &theirs)))
    })
}

fn peer_name(hello: &TorchHello) -> String {
    format!(
        "pytorch {} + transformers {}",
        hello.torch, hello.transformers
    )
}

fn run_vision(
    size: MmSize,
    options: &MmOptions,
    peer: Option<&Peer>,
    progress: &mut dyn FnMut(&str),
) -> Result<Comparison, BenchError> {
    let shape = vision_shape(size);
    let passes = steps_for(size, options);
    let c = &shape.siglip;
    progress(&format!(
        "mm: SigLIP forward, {} size: building",
        size.name()
    ));
    let store = ParamStore::new(options.seed);
    let tower: SiglipVision = random_siglip(
        c,
        &store,
        DType::F32,
        &Device::Cpu,
        &BuildOptions::default(),
    )?;
    let images = Tensor::randn(
        0f32,
        1.0,
        (shape.batch, c.num_channels, c.image_size, c.image_size),
        &Device::Cpu,
    )?;
    let forward = || -> Result<(), BenchError> {
        let out = tower.forward(&images)?.patches.detach();
        out.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    };
    for _ in 0..options.warmup {
        forward()?;
    }
    let counts = (0, store.num_params());
    let mut session = start_peer(peer, "vision", &shape, passes, options, counts)?;
    let (rates, theirs) = alternate(
        options.rounds,
        session.as_mut().map(|(s, _)| s),
        || {
            let timer = Timer::start();
            for _ in 0..passes {
                forward()?;
            }
            Ok(((passes * shape.batch) as f64, timer.stop()))
        },
        |_: &PeerRound<TorchRound>| Ok(()),
    )?;
    let hello = finish_peer(session)?;
    Ok(Comparison {
        benchmark: format!("siglip-{}", size.name()),
        workload: format!(
            "SigLIP vision forward, no gradient ({} px, patch {}, hidden {}, {} layers, {} heads, pooling head), batch {}; cpu",
            c.image_size,
            c.patch_size,
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            shape.batch
        ),
        unit: "images/s".into(),
        goal: Some(1.2),
        notes: vec![format!(
            "parameters: {} (PyTorch: the same count)",
            counts.1
        )],
        details: serde_json::json!({ "shape": &shape, "passes_per_round": passes }),
        ..Comparison::from_rates(&rates, hello.map(|h| (peer_name(&h), &theirs)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quickstart step trains exactly the adapters and the projector, counted by hand:
    /// per layer LoRA r16 on q (64 -> 64), k and v (64 -> 32, two kv heads of 16), o (64 -> 64),
    /// i.e. 16 x (128 + 96 + 96 + 128) = 7,168, twice; projector 64 x 64 + 64 and LayerNorm 128.
    #[test]
    fn the_quickstart_step_trains_the_adapters_and_the_projector() {
        let shape = step_shape(MmSize::Quickstart);
        let mut step = Step::new(&shape, 0, &Device::Cpu).unwrap();
        assert_eq!(step.trainable, 2 * 7_168 + 64 * 64 + 64 + 128);
        let first = step.step(shape.prefix).unwrap();
        assert!(first.is_finite());
        // The shapes the peer builds from are the ones we built.
        let json = serde_json::to_value(&shape).unwrap();
        assert_eq!(json["qwen2"]["hidden_size"], 64);
        assert_eq!(json["lora_targets"].as_array().unwrap().len(), 4);
    }
}
