//! Text tokenisation for the backbones: train a byte-level BPE tokenizer on the instruction
//! corpus (for the `tiny-*` presets), or load a real checkpoint's `tokenizer.json`; either way
//! the chat and modality markers below are registered as special tokens, so they are always a
//! single id and never split or merged with neighbouring text.

use std::path::Path;

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::error::{LmError, Result};

/// The special tokens of the HeartcareGPT prompt format, in the id order a trained tokenizer
/// gives them (`<pad>` is id 0 there).
pub const SPECIAL_TOKENS: [&str; 9] = [
    "<pad>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<image_start>",
    "<image_end>",
    "<signal_start>",
    "<signal_end>",
    "<prediction>",
];

/// One of [`SPECIAL_TOKENS`], by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Special {
    /// `<pad>`.
    Pad,
    /// `<|user|>`.
    User,
    /// `<|assistant|>`.
    Assistant,
    /// `<|end|>`.
    End,
    /// `<image_start>`.
    ImageStart,
    /// `<image_end>`.
    ImageEnd,
    /// `<signal_start>`.
    SignalStart,
    /// `<signal_end>`.
    SignalEnd,
    /// `<prediction>`.
    Prediction,
}

impl Special {
    /// Every special token, in [`SPECIAL_TOKENS`] order.
    pub const ALL: [Special; 9] = [
        Special::Pad,
        Special::User,
        Special::Assistant,
        Special::End,
        Special::ImageStart,
        Special::ImageEnd,
        Special::SignalStart,
        Special::SignalEnd,
        Special::Prediction,
    ];

    /// The token text.
    pub fn text(self) -> &'static str {
        SPECIAL_TOKENS[self as usize]
    }
}

/// Fewest ids a byte-level vocabulary can have: the 256 byte symbols plus the special tokens.
pub const MIN_VOCAB_SIZE: usize = 256 + SPECIAL_TOKENS.len();

/// A tokenizer with the special tokens registered.
#[derive(Clone)]
pub struct LmTokenizer {
    inner: Tokenizer,
    special_ids: [u32; 9],
}

impl std::fmt::Debug for LmTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special_ids", &self.special_ids)
            .finish()
    }
}

fn tok_err(context: impl Into<String>) -> impl FnOnce(tokenizers::Error) -> LmError {
    let context = context.into();
    move |e| LmError::Tokenizer {
        context,
        message: e.to_string(),
    }
}

/// The message of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .map_or("the tokenizer library panicked".into(), |m| {
            format!("the tokenizer library panicked: {m}")
        })
}

fn special(text: &str) -> AddedToken {
    AddedToken::from(text.to_string(), true)
}

impl LmTokenizer {
    /// Train a byte-level BPE tokenizer with `vocab_size` ids (special tokens and the 256 byte
    /// symbols included) on `corpus`. Every text round-trips exactly through encode/decode.
    pub fn train<I, S>(corpus: I, vocab_size: usize) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str> + Send,
        I::IntoIter: Send,
    {
        if vocab_size < MIN_VOCAB_SIZE {
            return Err(LmError::config(
                "vocab_size",
                format!(
                    "= {vocab_size} is too small: a byte-level vocabulary needs at least \
                     {MIN_VOCAB_SIZE} ids (256 bytes + {} special tokens)",
                    SPECIAL_TOKENS.len()
                ),
            ));
        }
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(SPECIAL_TOKENS.iter().map(|t| special(t)).collect())
            .build();
        // No prefix space and no normaliser: decode(encode(text)) == text, byte for byte.
        let byte_level = ByteLevel::new(false, true, true);
        let mut tokenizer = TokenizerBuilder::<
            BPE,
            tokenizers::NormalizerWrapper,
            ByteLevel,
            ByteLevel,
            ByteLevel,
        >::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(byte_level))
        .with_post_processor(Some(byte_level))
        .with_decoder(Some(byte_level))
        .build()
        .map_err(tok_err("building the BPE tokenizer"))?;
        tokenizer
            .train(&mut trainer, corpus.into_iter())
            .map_err(tok_err("training BPE"))?;
        Self::with_specials(Tokenizer::from(tokenizer), "trained tokenizer")
    }

    /// Load a `tokenizer.json` (ours or a real checkpoint's) and register any of the special
    /// tokens it lacks; they get ids after its vocabulary. The file's padding and truncation
    /// settings are dropped; a malformed file is an error naming it, never a panic.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(LmError::MissingFile {
                what: "tokenizer".into(),
                looked_for: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| LmError::io(path, e))?;
        // The `tokenizers` crate panics on some malformed files (a syntax error inside
        // `decoder`); the JSON is checked here first, and any other panic of its parser is
        // caught and reported as an error naming the file.
        serde_json::from_str::<serde_json::Value>(&text).map_err(|e| LmError::json(path, &e))?;
        let context = format!("loading {}", path.display());
        let parsed = std::panic::catch_unwind(|| text.parse::<Tokenizer>()).map_err(|panic| {
            LmError::Tokenizer {
                context: context.clone(),
                message: panic_text(panic.as_ref()),
            }
        })?;
        let mut inner = parsed.map_err(tok_err(context.clone()))?;
        // Prompts are built and batched here: a file's padding (to 2^31 tokens, say) or
        // truncation would change or cut them behind the caller's back.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(tok_err(context))?;
        Self::with_specials(inner, &path.display().to_string())
    }

    fn with_specials(mut inner: Tokenizer, origin: &str) -> Result<Self> {
        inner
            .add_special_tokens(SPECIAL_TOKENS.iter().map(|t| special(t)))
            .map_err(tok_err(format!("adding special tokens to {origin}")))?;
        let mut special_ids = [0u32; 9];
        for (slot, text) in special_ids.iter_mut().zip(SPECIAL_TOKENS) {
            *slot = inner.token_to_id(text).ok_or_else(|| LmError::Tokenizer {
                context: origin.to_string(),
                message: format!("special token {text} has no id after registration"),
            })?;
        }
        Ok(Self { inner, special_ids })
    }

    /// The `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(tok_err("serialising the tokenizer"))
    }

    /// Write `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.to_json()?;
        beatlab_fsio::write_atomically(path, json.as_bytes()).map_err(|e| LmError::io(path, e))
    }

    /// Ids of `text`. Special-token text inside it maps to the special ids; no BOS/EOS or other
    /// template tokens are added (the prompt format is built explicitly).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(tok_err("encoding text"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, with special tokens kept or dropped.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(tok_err("decoding ids"))
    }

    /// Number of ids, added tokens included: the vocabulary a backbone must cover.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a special token.
    pub fn special_id(&self, token: Special) -> u32 {
        self.special_ids[token as usize]
    }

    /// The id of `<pad>`.
    pub fn pad_id(&self) -> u32 {
        self.special_id(Special::Pad)
    }

    /// The id of any token text, special or not.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}
