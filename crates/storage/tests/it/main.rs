//! Integration tests of store URLs on a local folder and on S3.
//!
//! One test binary per crate: each links the whole inference and training stack (~130 MB),
//! so separate files would multiply link time and disk use in CI.

mod local;
mod s3;
