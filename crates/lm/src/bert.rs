//! BERTScore (Zhang et al., ICLR 2020) with a BERT encoder loaded from a local folder or the
//! Hugging Face cache: the encoder, its tokenizer, and the greedy-matching score.
//!
//! A candidate and a reference are each encoded by the encoder (its last hidden layer, or the
//! output of an earlier layer when asked), their `[CLS]` / `[SEP]` (every special token the
//! tokenizer adds) are dropped, every token embedding is L2-normalised, and each token is matched
//! to its most similar token of the other text by cosine similarity:
//!
//! - precision = mean over candidate tokens of the best similarity to a reference token,
//! - recall = mean over reference tokens of the best similarity to a candidate token,
//! - F1 = 2 P R / (P + R).
//!
//! This is plain BERTScore: no IDF weighting and no baseline rescaling, so values are the raw
//! cosine-based scores (with random or general-domain encoders they sit well above 0 even for
//! unrelated texts). A text without any content token (empty, or only special tokens) scores 0.
//!
//! The checkpoint is a Hugging Face BERT folder: `config.json` (`model_type` `bert`),
//! `model.safetensors` (or shards with an index; tensor names with or without the `bert.`
//! prefix) and `tokenizer.json`, or `vocab.txt` for the many biomedical BERTs that ship only a
//! WordPiece vocabulary (lower-cased unless `tokenizer_config.json` says `do_lower_case: false`).

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, IndexOp, Tensor};
pub use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{Encoding, Tokenizer, TruncationParams};

use crate::error::{LmError, Result};
use crate::hub::{CheckedWeights, ModelSource, locate};

/// Texts encoded per encoder call unless [`BertScorer::with_batch_size`] says otherwise.
pub const DEFAULT_BATCH: usize = 32;

/// Longest input, in tokens (special tokens included), whatever the config allows.
const MAX_TOKENS: usize = 512;

/// Precision, recall and F1 of one candidate against one reference.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct BertScore {
    /// Mean over candidate tokens of the best cosine similarity to a reference token.
    pub precision: f64,
    /// Mean over reference tokens of the best cosine similarity to a candidate token.
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
}

/// Where an encoder's tokenizer comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerFile {
    /// A full `tokenizer.json`.
    Json(PathBuf),
    /// A WordPiece `vocab.txt`, built into a BERT tokenizer.
    Vocab(PathBuf),
}

/// The files of an encoder checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// The safetensors files, in shard order.
    pub weights: Vec<PathBuf>,
    /// The tokenizer.
    pub tokenizer: TokenizerFile,
}

/// Find the files of an encoder without reading them: a missing `config.json`, weights or
/// tokenizer (`tokenizer.json` or `vocab.txt`) is an error naming the path looked for.
pub fn locate_encoder(source: &ModelSource) -> Result<EncoderFiles> {
    let files = locate(source)?;
    // The tokenizer lies beside the config, in a folder or in a cache snapshot.
    let vocab = files.config.with_file_name("vocab.txt");
    let tokenizer = match files.tokenizer {
        Some(json) => TokenizerFile::Json(json),
        None if vocab.is_file() => TokenizerFile::Vocab(vocab),
        None => {
            return Err(LmError::MissingFile {
                what: "encoder tokenizer (tokenizer.json or vocab.txt)".into(),
                looked_for: files.config.with_file_name("tokenizer.json"),
            });
        }
    };
    Ok(EncoderFiles {
        config: files.config,
        weights: files.weights,
        tokenizer,
    })
}

/// Read and check a BERT `config.json`.
pub fn read_config(path: &Path) -> Result<BertConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| LmError::io(path, e))?;
    let config: BertConfig = serde_json::from_str(&text).map_err(|e| LmError::json(path, &e))?;
    if let Some(kind) = config.model_type.as_deref()
        && kind != "bert"
    {
        return Err(LmError::config(
            "model_type",
            format!("is `{kind}`; only BERT encoders (`bert`) are supported"),
        )
        .in_file(path));
    }
    if config.num_hidden_layers == 0
        || config.num_attention_heads == 0
        || !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
    {
        return Err(LmError::config(
            "num_attention_heads",
            format!(
                "must divide hidden_size ({}) and the model needs at least one layer ({} given)",
                config.hidden_size, config.num_hidden_layers
            ),
        )
        .in_file(path));
    }
    Ok(config)
}

fn tok_err(context: String) -> impl FnOnce(tokenizers::Error) -> LmError {
    move |e| LmError::Tokenizer {
        context,
        message: e.to_string(),
    }
}

/// Whether `tokenizer_config.json` beside `vocab` asks for lower-casing (BERT's default: yes).
fn lower_case(vocab: &Path) -> Result<bool> {
    let path = vocab.with_file_name("tokenizer_config.json");
    if !path.is_file() {
        return Ok(true);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| LmError::io(&path, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| LmError::json(&path, &e))?;
    Ok(value
        .get("do_lower_case")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(true))
}

/// A BERT tokenizer (`[CLS] text [SEP]`) from a WordPiece vocabulary file.
fn vocab_tokenizer(vocab: &Path) -> Result<Tokenizer> {
    let context = || format!("building a BERT tokenizer from {}", vocab.display());
    let path = vocab.to_str().ok_or_else(|| LmError::Tokenizer {
        context: context(),
        message: "the path is not valid UTF-8".into(),
    })?;
    let model = WordPiece::from_file(path)
        .unk_token("[UNK]".into())
        .build()
        .map_err(tok_err(context()))?;
    let mut tokenizer = Tokenizer::new(model);
    let id = |token: &str| {
        tokenizer
            .token_to_id(token)
            .ok_or_else(|| LmError::Tokenizer {
                context: context(),
                message: format!("the vocabulary has no `{token}`"),
            })
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(
            true,
            true,
            None,
            lower_case(vocab)?,
        )))
        .map_err(tok_err(context()))?;
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), sep),
        ("[CLS]".into(), cls),
    )));
    Ok(tokenizer)
}

/// A BERT encoder with its tokenizer, scoring texts with BERTScore.
pub struct BertScorer {
    /// candle-transformers' BERT, used for inference only: its weights are constants and no
    /// backward pass ever runs through it, so the known gap in candle-transformers' models
    /// (some of their ops do not propagate gradients to every weight) does not matter here.
    model: BertModel,
    tokenizer: Tokenizer,
    config: BertConfig,
    files: EncoderFiles,
    /// Hidden layers run (the output of the last one is embedded).
    layers: usize,
    batch: usize,
    device: Device,
}

impl std::fmt::Debug for BertScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertScorer")
            .field("files", &self.files)
            .field("layers", &self.layers)
            .field("hidden_size", &self.config.hidden_size)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl BertScorer {
    /// Load an encoder (f32) on `device`. `layer` picks the hidden layer whose output embeds
    /// the tokens (1-based, as in the `bert_score` package; `None` = the last one); only the
    /// layers up to it are built and run.
    pub fn load(source: &ModelSource, layer: Option<usize>, device: &Device) -> Result<Self> {
        let files = locate_encoder(source)?;
        let mut config = read_config(&files.config)?;
        let layers = match layer {
            None => config.num_hidden_layers,
            Some(k) if (1..=config.num_hidden_layers).contains(&k) => k,
            Some(k) => {
                return Err(LmError::input(
                    "layer",
                    format!("a layer in 1..={}", config.num_hidden_layers),
                    k.to_string(),
                ));
            }
        };
        config.num_hidden_layers = layers;
        let mut tokenizer = match &files.tokenizer {
            TokenizerFile::Json(path) => Tokenizer::from_file(path)
                .map_err(tok_err(format!("loading {}", path.display())))?,
            TokenizerFile::Vocab(path) => vocab_tokenizer(path)?,
        };
        // Padding is done here, per batch; truncation keeps `[SEP]` within the position limit.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: config.max_position_embeddings.min(MAX_TOKENS),
                ..Default::default()
            }))
            .map_err(tok_err("setting truncation".into()))?;
        let weights = CheckedWeights::open(&files.weights)?;
        // `BertForPreTraining`-style checkpoints put everything under `bert.`; choosing the
        // prefix here (rather than by candle's fallback) keeps a missing tensor's name exact.
        let prefixed = weights.names().iter().any(|n| n.starts_with("bert."));
        let model = weights.build(DType::F32, device, |vb| {
            let vb = if prefixed { vb.pp("bert") } else { vb };
            Ok(BertModel::load(vb, &config)?)
        })?;
        Ok(Self {
            model,
            tokenizer,
            config,
            files,
            layers,
            batch: DEFAULT_BATCH,
            device: device.clone(),
        })
    }

    /// Encode at most `batch` texts per encoder call (at least 1).
    pub fn with_batch_size(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The encoder's configuration (with `num_hidden_layers` the layers actually run).
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The files the encoder was loaded from.
    pub fn files(&self) -> &EncoderFiles {
        &self.files
    }

    /// BERTScore of one candidate against one reference.
    pub fn score(&self, candidate: &str, reference: &str) -> Result<BertScore> {
        Ok(self.score_batch(&[(candidate, reference)])?.remove(0))
    }

    /// BERTScore of each `(candidate, reference)` pair; all texts are encoded together, in
    /// batches of similar length.
    pub fn score_batch(&self, pairs: &[(&str, &str)]) -> Result<Vec<BertScore>> {
        let texts: Vec<&str> = pairs.iter().flat_map(|(c, r)| [*c, *r]).collect();
        let embedded = self.embed(&texts)?;
        embedded
            .chunks(2)
            .map(|pair| match (&pair[0], &pair[1]) {
                (Some(c), Some(r)) => greedy_match(c, r),
                _ => Ok(BertScore::default()),
            })
            .collect()
    }

    /// The L2-normalised embeddings `[tokens, hidden]` of each text's content tokens (special
    /// tokens dropped); `None` for a text without any.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Option<Tensor>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(tok_err("encoding texts for BERTScore".into()))?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut out: Vec<Option<Tensor>> = vec![None; texts.len()];
        for chunk in order.chunks(self.batch) {
            let batch: Vec<&Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
            for (&i, emb) in chunk.iter().zip(self.embed_batch(&batch)?) {
                out[i] = emb;
            }
        }
        Ok(out)
    }

    fn embed_batch(&self, batch: &[&Encoding]) -> Result<Vec<Option<Tensor>>> {
        let len = batch
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0)
            .max(1);
        let vocab = self.config.vocab_size;
        let pad = self.config.pad_token_id as u32;
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for e in batch {
            if let Some(&bad) = e.get_ids().iter().find(|&&id| id as usize >= vocab) {
                return Err(LmError::input(
                    "token ids",
                    format!("ids below the encoder's vocab_size {vocab}"),
                    format!("id {bad} from the tokenizer (tokenizer and config disagree)"),
                ));
            }
            let n = e.get_ids().len();
            ids.extend_from_slice(e.get_ids());
            ids.extend(std::iter::repeat_n(pad, len - n));
            mask.extend(std::iter::repeat_n(1u32, n));
            mask.extend(std::iter::repeat_n(0u32, len - n));
        }
        let shape = (batch.len(), len);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        let mut out = Vec::with_capacity(batch.len());
        for (b, e) in batch.iter().enumerate() {
            let keep: Vec<u32> = e
                .get_special_tokens_mask()
                .iter()
                .zip(e.get_attention_mask())
                .enumerate()
                .filter(|(_, (special, attend))| **special == 0 && **attend == 1)
                .map(|(t, _)| t as u32)
                .collect();
            if keep.is_empty() {
                out.push(None);
                continue;
            }
            let n = keep.len();
            let keep = Tensor::from_vec(keep, n, &self.device)?;
            let tokens = hidden.i(b)?.index_select(&keep, 0)?;
            let norm = tokens
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?;
            out.push(Some(tokens.broadcast_div(&norm)?));
        }
        Ok(out)
    }
}

/// Greedy matching of unit-norm token embeddings `[m, h]` and `[n, h]`.
fn greedy_match(candidate: &Tensor, reference: &Tensor) -> Result<BertScore> {
    let sim = candidate.matmul(&reference.t()?)?;
    let precision = f64::from(sim.max(1)?.mean_all()?.to_scalar::<f32>()?);
    let recall = f64::from(sim.max(0)?.mean_all()?.to_scalar::<f32>()?);
    let sum = precision + recall;
    let f1 = if sum.abs() < f64::EPSILON {
        0.0
    } else {
        2.0 * precision * recall / sum
    };
    Ok(BertScore {
        precision,
        recall,
        f1,
    })
}
