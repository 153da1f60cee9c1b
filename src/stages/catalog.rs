//! Every stage kind declared once: the defaults a stage of that kind starts from, the summary
//! keys it records (what `[table] metrics` may name), and the factory that builds it.
//!
//! The spec loader fills stage defaults from here, validation checks table metrics against the
//! declared keys, the spec reference prints the declarations, and the runner's
//! [`StageRegistry`] is built from the factories. A new kind is a new `StageKind` variant, whose
//! missing declaration the match in [`declaration`] refuses to compile.

use toml::Value;

use super::{beat, multimodal};
use crate::runner::{Stage, StageError, StageRegistry};
use crate::spec::{Spec, StageKind, StageSpec};

/// Builds a stage of a kind for a cell's spec.
pub type CreateStage = fn(&Spec, &StageSpec) -> Result<Box<dyn Stage>, StageError>;

/// What the framework knows about a stage kind.
pub struct StageDeclaration {
    pub kind: StageKind,
    /// Field defaults of a stage of this kind, applied before the stage's own fields.
    pub defaults: fn() -> Vec<(&'static str, Value)>,
    /// The summary keys a stage `stage` of this kind records for a cell's spec, without the
    /// stage-name prefix (`val/loss` of the stage `beat` is the table metric `beat/val/loss`).
    /// Keys depend on the spec (levels, tasks); every key the stage can record is listed.
    pub summaries: fn(&Spec, &StageSpec) -> Vec<String>,
    /// Builds the stage.
    pub create: CreateStage,
}

/// The declaration of `kind`.
pub fn declaration(kind: StageKind) -> &'static StageDeclaration {
    match kind {
        StageKind::Beat => &beat::DECLARATION,
        StageKind::Warmup => &multimodal::train::WARMUP,
        StageKind::Joint => &multimodal::train::JOINT,
        StageKind::Eval => &multimodal::eval::DECLARATION,
    }
}

/// The stage implementations this build provides, one per declared kind.
pub fn builtin() -> StageRegistry {
    let mut registry = StageRegistry::empty();
    for &kind in StageKind::ALL {
        registry.register(kind, declaration(kind).create);
    }
    registry
}

/// Every summary key (with its stage-name prefix) the enabled and disabled stages of `spec` can
/// record.
pub fn table_metrics(spec: &Spec) -> Vec<String> {
    spec.stage
        .iter()
        .flat_map(|stage| {
            (declaration(stage.kind).summaries)(spec, stage)
                .into_iter()
                .map(move |key| format!("{}/{key}", stage.name))
        })
        .collect()
}

/// `name = [values...]` as a TOML array of strings, for defaults.
pub(crate) fn strings(values: &[&str]) -> Value {
    Value::Array(values.iter().map(|v| Value::String((*v).into())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_declared_under_its_own_kind_and_has_a_factory() {
        let registry = builtin();
        for &kind in StageKind::ALL {
            assert_eq!(declaration(kind).kind, kind);
            assert!(registry.has(kind), "{kind}");
        }
    }
}
