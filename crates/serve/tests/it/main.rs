//! Integration tests of the HTTP server: every route, error, auth, hot swap, shutdown and the
//! web console's routes.
//!
//! One test binary per crate: each links the whole inference and training stack (~130 MB),
//! so separate files would multiply link time and disk use in CI.

mod api;
mod batcher;
mod builtin;
mod calibration;
mod common;
mod console;
mod explain;
mod hot_swap;
mod oip;
mod shutdown;
mod slow_clients;
