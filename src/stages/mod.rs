//! The built-in stage kinds, registered with the runner by kind.

pub mod beat;

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
    registry
}
