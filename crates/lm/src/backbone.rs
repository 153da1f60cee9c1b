//! The language-model backbone the multimodal model is assembled around: one interface over the
//! Qwen2 and Phi-3 families (embed tokens, run embeddings, full-sequence logits, grow the
//! vocabulary, LoRA on/off, merge).

use std::ops::Range;
use std::path::Path;

use beatlab_nn::ParamStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::decoder::Decoder;
use crate::error::{LmError, Result};
use crate::layers::BuildOptions;
use crate::lora::Lora;
use crate::phi3::Phi3Config;
use crate::qwen2::Qwen2Config;

/// Which architecture a backbone is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Qwen2 / Qwen2.5.
    Qwen2,
    /// Phi-3 (mini, 4k context).
    Phi3,
}

/// A backbone configuration, tagged by `model_type` as in a Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model_type")]
pub enum BackboneConfig {
    /// `model_type: qwen2`.
    #[serde(rename = "qwen2")]
    Qwen2(Qwen2Config),
    /// `model_type: phi3`.
    #[serde(rename = "phi3")]
    Phi3(Phi3Config),
}

impl BackboneConfig {
    /// Parse a `config.json` text; `origin` names it in errors.
    pub fn from_json_str(text: &str, origin: &Path) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| LmError::json(origin, &e))?;
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| LmError::Config {
                source_file: Some(origin.to_path_buf()),
                field: "model_type".into(),
                reason: "is missing; expected \"qwen2\" or \"phi3\"".into(),
            })?;
        if model_type != "qwen2" && model_type != "phi3" {
            return Err(LmError::Config {
                source_file: Some(origin.to_path_buf()),
                field: "model_type".into(),
                reason: format!(
                    "is \"{model_type}\"; supported backbones are \"qwen2\" and \"phi3\""
                ),
            });
        }
        let config: Self = serde_json::from_str(text).map_err(|e| LmError::json(origin, &e))?;
        config.validate().map_err(|e| e.in_file(origin))?;
        Ok(config)
    }

    /// Read and parse a `config.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LmError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// The configuration as `config.json` text (with `model_type` and `architectures`), so a
    /// folder written by this crate loads in Hugging Face tools too.
    pub fn to_json_string(&self) -> Result<String> {
        let mut value =
            serde_json::to_value(self).map_err(|e| LmError::config("config", e.to_string()))?;
        let arch = match self {
            Self::Qwen2(_) => "Qwen2ForCausalLM",
            Self::Phi3(_) => "Phi3ForCausalLM",
        };
        value["architectures"] = serde_json::json!([arch]);
        serde_json::to_string_pretty(&value).map_err(|e| LmError::config("config", e.to_string()))
    }

    /// Check sizes and reject unsupported variants.
    pub fn validate(&self) -> Result<()> {
        self.spec().map(|_| ())
    }

    fn spec(&self) -> Result<crate::decoder::DecoderSpec> {
        match self {
            Self::Qwen2(c) => c.spec(),
            Self::Phi3(c) => c.spec(),
        }
    }

    /// The architecture.
    pub fn architecture(&self) -> Architecture {
        match self {
            Self::Qwen2(_) => Architecture::Qwen2,
            Self::Phi3(_) => Architecture::Phi3,
        }
    }

    /// Width of the residual stream.
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Qwen2(c) => c.hidden_size,
            Self::Phi3(c) => c.hidden_size,
        }
    }

    /// Rows of the checkpoint's embedding table.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Qwen2(c) => c.vocab_size,
            Self::Phi3(c) => c.vocab_size,
        }
    }

    /// The linear layers LoRA can target in this architecture.
    pub fn lora_target_names(&self) -> &'static [&'static str] {
        match self {
            Self::Qwen2(_) => &[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
            Self::Phi3(_) => &["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        }
    }
}

/// A trainable Qwen2 or Phi-3 decoder with full-sequence causal logits.
pub struct Backbone {
    config: BackboneConfig,
    decoder: Decoder,
}

impl std::fmt::Debug for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backbone")
            .field("config", &self.config)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Backbone {
    /// Build over the weights `vb` provides: a checkpoint (see [`crate::hub`]) or a
    /// [`ParamStore`] (random, seeded initialisation, all weights trainable).
    pub fn new(config: &BackboneConfig, vb: VarBuilder, opts: &BuildOptions) -> Result<Self> {
        let decoder = Decoder::new(config.spec()?, vb, opts)?;
        Ok(Self {
            config: config.clone(),
            decoder,
        })
    }

    /// A randomly initialised backbone whose weights are variables of `store` (seeded).
    pub fn random(
        config: &BackboneConfig,
        store: &ParamStore,
        dtype: DType,
        device: &Device,
        opts: &BuildOptions,
    ) -> Result<Self> {
        Self::new(config, store.var_builder(dtype, device), opts)
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &BackboneConfig {
        &self.config
    }

    /// The architecture.
    pub fn architecture(&self) -> Architecture {
        self.config.architecture()
    }

    /// Width of the residual stream (the size projectors must map to).
    pub fn hidden_size(&self) -> usize {
        self.decoder.hidden_size()
    }

    /// Number of token ids accepted and predicted (grows with [`Backbone::grow_vocab`]).
    pub fn vocab_size(&self) -> usize {
        self.decoder.vocab_size()
    }

    /// The dtype of activations and base weights.
    pub fn dtype(&self) -> DType {
        self.decoder.dtype()
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        self.decoder.device()
    }

    /// `[batch, seq]` token ids (u32 or i64) -> `[batch, seq, hidden]` embeddings.
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        self.decoder.embed_tokens(ids)
    }

    /// Causal forward over `[batch, seq, hidden]` embeddings -> `[batch, seq, vocab]` logits for
    /// every position. `attention_mask` is `[batch, seq]`, 1 for tokens and 0 for padding; pad
    /// on the right (positions are `0..seq` whatever the mask).
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let hidden = self.decoder.forward_hidden(embeds, attention_mask)?;
        self.decoder.logits(&hidden)
    }

    /// Like [`Backbone::forward_embeds`] but stops before the output head: final hidden states.
    pub fn forward_hidden(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.decoder.forward_hidden(embeds, attention_mask)
    }

    /// Token ids -> logits for every position.
    pub fn forward(&self, ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        self.forward_embeds(&self.embed_tokens(ids)?, attention_mask)
    }

    /// Append `n` token ids, served by new embedding (and, unless tied, output-head) rows
    /// created in `store` under `<name>.embed_tokens` / `<name>.lm_head`; returns the new ids.
    /// The rows train when `store` is optimised and stay frozen otherwise: call it once with a
    /// frozen store for special markers and once with a trainable store for learned tokens.
    pub fn grow_vocab(&mut self, n: usize, store: &ParamStore, name: &str) -> Result<Range<u32>> {
        self.decoder.grow_vocab(n, store, name)
    }

    /// Grow the vocabulary so that it holds at least `size` ids (no-op when it already does):
    /// the usual call after adding special tokens to a tokenizer.
    pub fn ensure_vocab(
        &mut self,
        size: usize,
        store: &ParamStore,
        name: &str,
    ) -> Result<Option<Range<u32>>> {
        let current = self.vocab_size();
        if size <= current {
            return Ok(None);
        }
        self.grow_vocab(size - current, store, name).map(Some)
    }

    /// Serve the existing ids `range` from rows of their own in `store`, copied from the
    /// checkpoint (e.g. special tokens a tokenizer placed in the padding rows of Qwen2's table,
    /// which should train while the rest of the table stays frozen).
    pub fn own_rows(&mut self, range: Range<u32>, store: &ParamStore, name: &str) -> Result<()> {
        self.decoder.own_rows(range, store, name)
    }

    /// The id ranges served by rows added with [`Backbone::grow_vocab`] or
    /// [`Backbone::own_rows`].
    pub fn added_ranges(&self) -> Vec<Range<usize>> {
        self.decoder.added_ranges()
    }

    /// The attached LoRA adapters, if any.
    pub fn lora(&self) -> Option<&Lora> {
        self.decoder.lora()
    }

    /// Switch LoRA dropout on (training) or off (evaluation). No-op without LoRA.
    pub fn set_training(&self, training: bool) {
        if let Some(lora) = self.decoder.lora() {
            lora.set_training(training);
        }
    }

    /// Starts the LoRA dropout masks of optimiser step `step` (see [`Lora::start_step`]).
    pub fn start_step(&self, step: u64) {
        if let Some(lora) = self.decoder.lora() {
            lora.start_step(step);
        }
    }

    /// Fold every LoRA update into its base weight and drop the adapters (for inference; the
    /// stores are untouched, so a model rebuilt from them is unmerged).
    pub fn merge_lora(&mut self) -> Result<()> {
        self.decoder.merge_lora()
    }
}
