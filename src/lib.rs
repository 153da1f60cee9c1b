//! beatlab library
