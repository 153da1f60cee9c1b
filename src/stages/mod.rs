//! The built-in stage kinds, registered with the runner by kind.

pub mod beat;
pub mod multimodal;
pub mod trainer;

use crate::runner::{Stage, StageError, StageRegistry};
use crate::spec::{Spec, StageKind, StageSpec};

/// The stage implementations this build provides.
pub fn builtin() -> StageRegistry {
    let mut registry = StageRegistry::empty();
    registry.register(
        StageKind::Beat,
        |_: &Spec, _: &StageSpec| -> Result<Box<dyn Stage>, StageError> {
            Ok(Box::new(beat::BeatStage))
        },
    );
    for kind in [StageKind::Warmup, StageKind::Joint] {
        registry.register(
            kind,
            |_: &Spec, _: &StageSpec| -> Result<Box<dyn Stage>, StageError> {
                Ok(Box::new(multimodal::train::InstructStage))
            },
        );
    }
    registry.register(
        StageKind::Eval,
        |_: &Spec, _: &StageSpec| -> Result<Box<dyn Stage>, StageError> {
            Ok(Box::new(multimodal::eval::EvalStage))
        },
    );
    registry
}
