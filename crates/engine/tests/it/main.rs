//! Integration tests of the inference engines and their pre-processing.
//!
//! One test binary per crate: each links the whole inference and training stack (~130 MB),
//! so separate files would multiply link time and disk use in CI.

mod common;
mod engines;
mod explain;
mod int8;
mod preprocess;
mod throughput;
