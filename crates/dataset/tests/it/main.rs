//! Integration tests of dataset listing, decoding and batching from local and S3 stores.
//!
//! One test binary per crate: each links the whole inference and training stack (~130 MB),
//! so separate files would multiply link time and disk use in CI.

mod dataset;
mod s3_dataset;
