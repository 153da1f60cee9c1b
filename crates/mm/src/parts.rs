//! The model's parts: the units a training stage chooses to train, and the units whose state is
//! saved and restored. Each part's weights live in a [`beatlab_nn::ParamStore`] of its own.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::error::MmError;

/// The name that selects both projectors in a `train` list.
pub const PROJECTORS: &str = "projector";

/// One separately trainable, separately saved part of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// `projector.signal`: the signal projector, or in "codes" mode the embedding rows of the
    /// `<|ecg_k|>` code tokens (what plays the projector's role there).
    SignalProjector,
    /// `projector.image`: the image projector.
    ImageProjector,
    /// `lora`: the backbone's LoRA adapters.
    Lora,
    /// `backbone`: the backbone's own weights (only for randomly initialised backbones; a
    /// checkpoint's weights are constants).
    Backbone,
    /// `vision`: the SigLIP tower (only when randomly initialised).
    Vision,
    /// `beat`: the Beat ECG tokenizer (parameters and codebook buffers).
    Beat,
    /// `ecg_vit`: the ECG ViT signal encoder (GEM / anyECG-chat), when the model has one.
    Vit,
}

impl Part {
    /// Every part, in a fixed order.
    pub const ALL: [Part; 7] = [
        Part::SignalProjector,
        Part::ImageProjector,
        Part::Lora,
        Part::Backbone,
        Part::Vision,
        Part::Beat,
        Part::Vit,
    ];

    /// The part's name in specs, file keys and variable names.
    pub fn name(self) -> &'static str {
        match self {
            Part::SignalProjector => "projector.signal",
            Part::ImageProjector => "projector.image",
            Part::Lora => "lora",
            Part::Backbone => "backbone",
            Part::Vision => "vision",
            Part::Beat => "beat",
            Part::Vit => "ecg_vit",
        }
    }

    /// The names a stage's `train` list accepts: every part's, and `projector` for both
    /// projectors.
    pub fn spec_names() -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Part::ALL.iter().map(|p| p.name()).collect();
        names.insert(0, PROJECTORS);
        names
    }

    /// Parse a list of part names; `projector` stands for both projectors. Duplicates are fine.
    pub fn parse_list<S: AsRef<str>>(names: &[S]) -> Result<BTreeSet<Part>, MmError> {
        let mut parts = BTreeSet::new();
        for name in names {
            let name = name.as_ref();
            if name == PROJECTORS {
                parts.insert(Part::SignalProjector);
                parts.insert(Part::ImageProjector);
            } else {
                parts.insert(name.parse()?);
            }
        }
        Ok(parts)
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Part {
    type Err = MmError;

    fn from_str(s: &str) -> Result<Self, MmError> {
        Part::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| MmError::UnknownPart {
                name: s.to_string(),
                known: known_names(),
            })
    }
}

fn known_names() -> String {
    let mut names: Vec<&str> = Part::ALL.iter().map(|p| p.name()).collect();
    names.push("projector (both projectors)");
    names.join(", ")
}

/// Comma-separated part names, for messages.
pub(crate) fn list(parts: &BTreeSet<Part>) -> String {
    parts
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(names: &[&str], expected: &[Part]) {
        let parsed = Part::parse_list(names).unwrap();
        assert_eq!(
            parsed.into_iter().collect::<Vec<_>>(),
            expected,
            "{names:?}"
        );
    }

    #[test]
    fn names_parse_and_projector_means_both() {
        check(
            &["projector"],
            &[Part::SignalProjector, Part::ImageProjector],
        );
        check(
            &["lora", "projector.image", "lora"],
            &[Part::ImageProjector, Part::Lora],
        );
        check(&[], &[]);
        for part in Part::ALL {
            assert_eq!(part.name().parse::<Part>().unwrap(), part);
        }
        match Part::parse_list(&["projectors"]) {
            Err(MmError::UnknownPart { name, known }) => {
                assert_eq!(name, "projectors");
                assert!(known.contains("projector.signal"), "{known}");
            }
            other => panic!("expected an unknown-part error, got {other:?}"),
        }
    }
}
