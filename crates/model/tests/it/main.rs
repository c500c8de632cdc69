//! Integration tests of model artifacts: ONNX export and the versioned repository.
//!
//! One test binary per crate: each links the whole inference and training stack (~130 MB),
//! so separate files would multiply link time and disk use in CI.

mod onnx;
mod quantize;
mod repository;
