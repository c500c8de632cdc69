//! Integration tests of training, evaluation, import and transfer learning.
//!
//! One test binary per crate: each links the whole inference and training stack (~130 MB),
//! so separate files would multiply link time and disk use in CI.

mod audit;
mod common;
mod efficientnet;
mod eval;
mod fine_tune;
mod import;
mod train;
mod transfer;
