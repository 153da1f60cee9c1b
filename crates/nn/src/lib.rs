//! Trainable candle models for beatlab and the pieces every training loop needs: seeded
//! parameters, differentiable layers, the Beat tokenizer, AdamW with saveable state, schedules.

pub mod params;

pub use params::{LoadError, ParamStore};
