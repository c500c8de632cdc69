//! Test helpers shared by every crate's tests: a real S3 server, generated photos, and the
//! shared data beside the project.

pub mod photos;
pub mod seaweedfs;
pub mod shared;

pub use seaweedfs::{S3Env, SeaweedFs, s3};

/// A prefix no other test (or earlier run against the same server) uses.
pub fn unique_prefix(test: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{test}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
