//! Integration tests of bulk classification and watch mode against real stores.
//!
//! One test binary per crate: each links the whole inference and training stack (~130 MB),
//! so separate files would multiply link time and disk use in CI.

mod classify;
mod common;
mod watch;
