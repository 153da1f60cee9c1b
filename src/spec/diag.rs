//! Spec diagnostics: one problem, where it is, what was expected.
//!
//! Loading a spec collects every problem it finds (it does not stop at the first) and returns
//! them together in a [`SpecError`], so a user fixes a file in one pass.

use std::fmt;
use std::path::PathBuf;

use super::tree::Origin;

/// One problem in a spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// `file:line:col`, `environment variable X`, `--set k=v`, or `built-in default`.
    pub location: String,
    /// Dotted key path (`beat.codebook_size`, `stage.beat.epochs`), empty for file-level problems.
    pub path: String,
    pub message: String,
    /// A suggestion ("did you mean `codebook_size`?").
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(
        origin: &Origin,
        at_key: bool,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            location: origin.describe(at_key),
            path: path.into(),
            message: message.into(),
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.location)?;
        if !self.path.is_empty() {
            write!(f, "`{}`: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, "; {help}")?;
        }
        Ok(())
    }
}

/// Why a spec could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec file could not be read.
    #[error("cannot read spec file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The spec has one or more problems; all of them are listed.
    #[error("{}", render_all(diagnostics))]
    Invalid { diagnostics: Vec<Diagnostic> },
}

impl SpecError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            SpecError::Invalid { diagnostics } => diagnostics,
            SpecError::Read { .. } => &[],
        }
    }
}

/// Orders diagnostics as a reader meets them: overrides first, then by file, line and column.
pub fn sort(diagnostics: &mut [Diagnostic]) {
    fn key(d: &Diagnostic) -> (u8, String, usize, usize) {
        let mut parts = d.location.rsplitn(3, ':');
        let (col, line, file) = (parts.next(), parts.next(), parts.next());
        match (
            file,
            line.and_then(|l| l.parse().ok()),
            col.and_then(|c| c.parse().ok()),
        ) {
            (Some(f), Some(l), Some(c)) => (1, f.to_string(), l, c),
            _ => (0, d.location.clone(), 0, 0),
        }
    }
    diagnostics.sort_by_cached_key(key);
}

/// How many problems an error lists; the rest are counted. A file generated wrong can hold
/// thousands, and the first screenful is what a user fixes first.
pub const MAX_LISTED: usize = 50;

fn render_all(diagnostics: &[Diagnostic]) -> String {
    let n = diagnostics.len();
    let mut out = format!("{n} problem{} in the spec:", if n == 1 { "" } else { "s" });
    for d in diagnostics.iter().take(MAX_LISTED) {
        out.push_str("\n  ");
        out.push_str(&d.to_string());
    }
    if n > MAX_LISTED {
        out.push_str(&format!(
            "\n  ... and {} more not listed (fix these first)",
            n - MAX_LISTED
        ));
    }
    out
}

/// The closest candidate to `word` if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_only_for_close_words() {
        let keys = ["codebook_size", "input_len", "patch_size"];
        assert_eq!(
            did_you_mean("codebok_size", keys).as_deref(),
            Some("did you mean `codebook_size`?")
        );
        assert_eq!(did_you_mean("learning_rate", keys), None);
    }
}
