//! Integration tests of the networks crate: Bestiary's convolution and batch-norm kernels
//! against burn's.

mod conv;
mod norm;
