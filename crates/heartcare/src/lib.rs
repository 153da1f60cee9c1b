//! Heartcare task data for beatlab: printed 12-lead ECG images ([`render`]), instruction items in
//! the Heartcare format ([`instruct`]) and the benchmark's metrics ([`metrics`]).

pub mod instruct;
pub mod metrics;
pub mod render;
