//! The built-in stage kinds, registered with the runner by kind.

use crate::runner::StageRegistry;

/// The stage implementations this build provides.
pub fn builtin() -> StageRegistry {
    StageRegistry::empty()
}
