//! The error type of beatlab-mm: every failure names the item, input, part, field or file it
//! concerns and what was expected.

use std::path::PathBuf;

use beatlab_heartcare::render::RenderError;
use beatlab_lm::LmError;
use beatlab_nn::BeatError;
use beatlab_nn::checkpoint::CheckpointError;
use beatlab_nn::optim::OptimError;

/// Everything that can go wrong while building, feeding, training or saving the multimodal model.
#[derive(Debug, thiserror::Error)]
pub enum MmError {
    /// The language-model crate failed (backbone, vision tower, tokenizer, checkpoint files).
    #[error(transparent)]
    Lm(#[from] LmError),

    /// Beat (the ECG tokenizer) rejected its input or configuration.
    #[error("Beat: {0}")]
    Beat(#[from] BeatError),

    /// A tensor operation failed (shapes that do not fit, a device error).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),

    /// The optimiser failed (bad hyper-parameters, mismatched state).
    #[error("optimiser: {0}")]
    Optim(#[from] OptimError),

    /// Rendering an ECG image failed.
    #[error("rendering an ECG image: {0}")]
    Render(#[from] RenderError),

    /// A configuration field holds a value this crate does not accept.
    #[error("invalid multimodal configuration: `{field}` {reason}")]
    Config {
        /// The field at fault (dotted path).
        field: String,
        /// What is wrong and what was expected.
        reason: String,
    },

    /// A part name is not one of the model's parts.
    #[error("unknown model part `{name}`; known parts: {known}")]
    UnknownPart {
        /// The name given.
        name: String,
        /// The accepted names.
        known: String,
    },

    /// A part was asked for that this model does not have (no vision tower, no LoRA, ...).
    #[error("this model has no `{part}` part: {reason}")]
    AbsentPart {
        /// The part.
        part: String,
        /// Why it is absent.
        reason: String,
    },

    /// A part cannot be trained in this model (e.g. checkpoint weights, which load as constants).
    #[error("part `{part}` cannot be trained: {reason}")]
    NotTrainable {
        /// The part.
        part: String,
        /// Why not.
        reason: String,
    },

    /// A part's variables were requested for training, but the model was not told to train it,
    /// so the forward pass detaches it and it would receive no gradient.
    #[error(
        "part `{part}` is frozen in the current model (trainable now: [{trainable}]); \
         call `set_trainable` with it first"
    )]
    FrozenPart {
        /// The part.
        part: String,
        /// The parts currently trainable.
        trainable: String,
    },

    /// One ECG input of an item does not fit what the model expects.
    #[error("{item}: input {index} ({modality}): expected {expected}, found {found}")]
    Input {
        /// The item (its id, or its place in the batch and its type).
        item: String,
        /// Index of the input in the item's `filename` / `label` lists.
        index: usize,
        /// The input's modality label.
        modality: String,
        /// What was expected.
        expected: String,
        /// What was given.
        found: String,
    },

    /// An item is inconsistent with itself or with the model (list lengths, modalities).
    #[error("{item}: {reason}")]
    Item {
        /// The item.
        item: String,
        /// What is wrong.
        reason: String,
    },

    /// Even with the question dropped, an item does not fit in `max_seq_len`.
    #[error(
        "{item}: the ECG blocks and chat markers take {needed} positions and at least one \
         answer position is needed, but max_seq_len is {max_seq_len}"
    )]
    TooLong {
        /// The item.
        item: String,
        /// Positions taken before the first answer token.
        needed: usize,
        /// The limit.
        max_seq_len: usize,
    },

    /// A batch with no items.
    #[error("empty batch: at least one item is needed")]
    EmptyBatch,

    /// A saved parts file does not fit this model.
    #[error("parts file {}: {reason}", .path.display())]
    StateFile {
        /// The file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },

    /// Restoring a part's saved state failed.
    #[error("restoring part `{part}`: {source}")]
    State {
        /// The part.
        part: String,
        /// What did not fit (boxed: the checkpoint error is large).
        source: Box<CheckpointError>,
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, MmError>;

impl MmError {
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn item(item: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Item {
            item: item.into(),
            reason: reason.into(),
        }
    }
}
