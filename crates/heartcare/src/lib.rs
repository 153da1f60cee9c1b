//! Heartcare task data for beatlab: printed 12-lead ECG images ([`render`]), instruction items in
//! the Heartcare format ([`instruct`]), the peer systems' items (GEM's grounded answers,
//! anyECG-chat's localization and multi-ECG questions, [`peers`]) and the benchmark's metrics
//! ([`metrics`]).

pub mod instruct;
pub mod metrics;
pub mod peers;
pub mod render;
