//! Heartcare instruction items (in progress).
