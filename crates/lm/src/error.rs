//! The error type of beatlab-lm: every failure names the file, tensor, field or input it concerns
//! and what was expected.

use std::path::PathBuf;

/// Everything that can go wrong while building, loading, running or tokenising a model.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    /// A tensor operation failed (shapes that do not fit, a device error).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),

    /// A configuration field holds a value this crate does not accept.
    #[error("invalid configuration{}: `{field}` {reason}", source_suffix(.source_file))]
    Config {
        /// The file the configuration came from, when it came from one.
        source_file: Option<PathBuf>,
        /// The field at fault (dotted path).
        field: String,
        /// What is wrong and what was expected.
        reason: String,
    },

    /// A configuration file is not the JSON this crate expects.
    #[error("{}: line {line}, column {column}: {message}", .path.display())]
    Json {
        /// The file that failed to parse.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What serde found wrong (unknown variant, missing field, wrong type).
        message: String,
    },

    /// A file or directory could not be read or written.
    #[error("cannot access {}: {source}", .path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },

    /// A file a checkpoint needs is absent.
    #[error("{what} not found: looked for {}", .looked_for.display())]
    MissingFile {
        /// What the file is for ("model config", "weights", "tokenizer").
        what: String,
        /// Where it was expected.
        looked_for: PathBuf,
    },

    /// A model is not in the local Hugging Face cache and downloading was not allowed.
    #[error(
        "`{file}` of model `{model_id}` (revision {revision}) is not in the Hugging Face cache at {}; \
         download it first or allow downloads",
        .cache.display()
    )]
    NotInCache {
        /// The Hub model id.
        model_id: String,
        /// The revision looked up.
        revision: String,
        /// The file that is missing.
        file: String,
        /// The cache directory searched.
        cache: PathBuf,
    },

    /// Downloading from the Hugging Face Hub failed.
    #[error("downloading `{file}` of `{model_id}` failed: {message}")]
    Download {
        /// The Hub model id.
        model_id: String,
        /// The file requested.
        file: String,
        /// The client's error.
        message: String,
    },

    /// No Hugging Face cache directory could be determined.
    #[error("no Hugging Face cache directory: set HF_HUB_CACHE, HF_HOME or HOME")]
    NoCacheDir,

    /// A weight the model needs is absent from every weight file.
    #[error("tensor `{name}` is missing from the checkpoint (searched {})", display_paths(.searched))]
    MissingTensor {
        /// The tensor's full name.
        name: String,
        /// The weight files searched.
        searched: Vec<PathBuf>,
    },

    /// A weight has a different shape in the file than the configuration implies.
    #[error("tensor `{name}` in {} has shape {found:?}, expected {expected:?}", .file.display())]
    ShapeMismatch {
        /// The tensor's full name.
        name: String,
        /// The file holding it.
        file: PathBuf,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },

    /// A weight is stored with a dtype that cannot be converted to a float tensor.
    #[error("tensor `{name}` in {} has dtype {found}, expected a float dtype (f32, f16, bf16, f64)", .file.display())]
    UnsupportedDtype {
        /// The tensor's full name.
        name: String,
        /// The file holding it.
        file: PathBuf,
        /// The stored dtype.
        found: String,
    },

    /// A weight file is not a readable safetensors file.
    #[error("cannot read safetensors file {}: {message}", .path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// Some LoRA target names match no linear layer of the model.
    #[error(
        "LoRA targets {unmatched:?} match no linear layer of this model; its linear layers are {available:?}"
    )]
    LoraTargets {
        /// Targets that matched nothing.
        unmatched: Vec<String>,
        /// The linear-layer names the model has.
        available: Vec<String>,
    },

    /// A tensor handed to a model does not have the shape or values it needs.
    #[error("bad input `{what}`: expected {expected}, found {found}")]
    Input {
        /// Which argument.
        what: String,
        /// What was expected.
        expected: String,
        /// What was given.
        found: String,
    },

    /// The tokenizer library reported an error.
    #[error("tokenizer: {context}: {message}")]
    Tokenizer {
        /// What was being done (training, loading a file, encoding).
        context: String,
        /// The library's message.
        message: String,
    },

    /// Saved parameters do not fit the parameter store they are loaded into.
    #[error("loading parameters from {}: {source}", .path.display())]
    Params {
        /// The checkpoint file.
        path: PathBuf,
        /// What did not fit.
        source: Box<beatlab_nn::LoadError>,
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, LmError>;

impl LmError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            source_file: None,
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn input(
        what: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Self::Input {
            what: what.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    pub(crate) fn json(path: impl Into<PathBuf>, err: &serde_json::Error) -> Self {
        Self::Json {
            path: path.into(),
            line: err.line(),
            column: err.column(),
            message: err.to_string(),
        }
    }

    /// Attach the file a configuration came from to a [`LmError::Config`].
    pub(crate) fn in_file(self, path: impl Into<PathBuf>) -> Self {
        match self {
            Self::Config {
                source_file: None,
                field,
                reason,
            } => Self::Config {
                source_file: Some(path.into()),
                field,
                reason,
            },
            other => other,
        }
    }
}

fn source_suffix(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" in {}", p.display()),
        None => String::new(),
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "no files".to_string();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
