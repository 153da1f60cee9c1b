//! Trainable candle models for beatlab and the pieces every training loop needs: seeded
//! parameters, differentiable layers, the Beat tokenizer, AdamW with saveable state, schedules.

pub mod beat;
pub mod checkpoint;
pub mod layers;
pub mod metrics;
pub mod optim;
pub mod params;
pub mod schedule;
pub mod transformer;
pub mod vq;

pub use beat::{Beat, BeatConfig, BeatDims, BeatError, BeatOutput, ConfigError, Mode};
pub use params::{LoadError, ParamStore};
