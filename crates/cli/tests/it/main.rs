//! Integration tests of the `bestiary` command line, run as a child process.
//!
//! One test binary per crate: each links the whole inference and training stack (~130 MB),
//! so separate files would multiply link time and disk use in CI.

mod audit;
mod classify;
mod cli;
mod explain;
mod failures;
mod faults;
mod int8;
mod recipe;
mod support;
