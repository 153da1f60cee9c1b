//! What the multimodal stages of one run share: the [`Corpus`] (windows, records, instruction
//! items) and the tokenizer, built once per run by the first stage that needs them.
//!
//! A `tiny-*` backbone's tokenizer is trained on the corpus once and kept in the run folder
//! (`tokenizer.json`); later stages and later attempts load that file instead of training again.
//! Every checkpoint of these stages records the tokenizer's sha256, and restoring one (resuming,
//! or taking over an earlier stage's parts) with a different tokenizer is refused: the
//! checkpointed embedding rows only mean something for the ids they were trained with.

use std::path::Path;
use std::sync::Arc;

use beatlab_lm::tokenizer::LmTokenizer;
use sha2::{Digest, Sha256};

use super::Corpus;
use crate::runner::{StageContext, StageError};
use crate::spec::BackboneModel;

/// The checkpoint metadata key of the tokenizer's hash.
pub const TOKENIZER_KEY: &str = "tokenizer_sha256";

/// The file name of a run's trained tokenizer, in its run folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The corpus and tokenizer of a run.
pub struct RunData {
    pub corpus: Corpus,
    tokenizer: Option<LmTokenizer>,
    /// sha256 of the tokenizer's JSON (none when the backbone brings its own).
    tokenizer_sha256: Option<String>,
}

impl RunData {
    /// The run's data, built the first time a stage of the run asks.
    pub fn of_run(ctx: &mut StageContext<'_>) -> Result<Arc<RunData>, StageError> {
        ctx.resource(Self::build)
    }

    fn build(ctx: &mut StageContext<'_>) -> Result<Self, StageError> {
        let corpus = Corpus::load(ctx.spec, ctx.cache_dir)?;
        let (tokenizer, tokenizer_sha256) = match ctx.spec.backbone.model {
            BackboneModel::TinyQwen2 | BackboneModel::TinyPhi3 => {
                let (tokenizer, hash) = run_tokenizer(ctx, &corpus)?;
                (Some(tokenizer), Some(hash))
            }
            BackboneModel::Qwen2 | BackboneModel::Phi3 => (None, None),
        };
        Ok(Self {
            corpus,
            tokenizer,
            tokenizer_sha256,
        })
    }

    /// The tokenizer a model of this run is built with (`None`: the checkpoint's own).
    pub fn tokenizer(&self) -> Option<LmTokenizer> {
        self.tokenizer.clone()
    }

    /// What every checkpoint of a multimodal stage records about the run's data.
    pub fn checkpoint_meta(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut meta = serde_json::Map::new();
        if let Some(hash) = &self.tokenizer_sha256 {
            meta.insert(TOKENIZER_KEY.into(), hash.clone().into());
        }
        meta
    }

    /// Refuses a checkpoint (its metadata `meta`, at `path`) written with another tokenizer.
    pub fn check_checkpoint(
        &self,
        meta: &serde_json::Value,
        path: &Path,
    ) -> Result<(), StageError> {
        let recorded = meta.get(TOKENIZER_KEY).and_then(|v| v.as_str());
        match (recorded, self.tokenizer_sha256.as_deref()) {
            (Some(recorded), Some(ours)) if recorded != ours => {
                Err(StageError::TokenizerMismatch {
                    checkpoint: path.to_path_buf(),
                    recorded: recorded.to_string(),
                    current: ours.to_string(),
                })
            }
            _ => Ok(()),
        }
    }
}

/// The run folder's tokenizer when an earlier stage or attempt left one, else one trained on
/// the corpus now and saved there; with the sha256 of the file.
fn run_tokenizer(
    ctx: &mut StageContext<'_>,
    corpus: &Corpus,
) -> Result<(LmTokenizer, String), StageError> {
    let path = ctx.run_dir.join(TOKENIZER_FILE);
    if path.exists() {
        let bytes = std::fs::read(&path).map_err(|e| StageError::Io {
            path: path.clone(),
            source: e,
        })?;
        let tokenizer = LmTokenizer::from_file(&path)?;
        ctx.log(&format!(
            "tokenizer: {} (kept from earlier)",
            path.display()
        ));
        return Ok((tokenizer, sha256(&bytes)));
    }
    let texts = corpus.training_texts();
    let tokenizer = LmTokenizer::train(
        texts.iter().map(String::as_str),
        ctx.spec.backbone.vocab_size as usize,
    )?;
    let json = tokenizer.to_json()?;
    beatlab_fsio::write_atomically(&path, json.as_bytes()).map_err(|e| StageError::Io {
        path: path.clone(),
        source: e,
    })?;
    ctx.log(&format!(
        "tokenizer: trained on {} texts ({} ids), saved to {}",
        texts.len(),
        tokenizer.vocab_size(),
        path.display()
    ));
    Ok((tokenizer, sha256(json.as_bytes())))
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
