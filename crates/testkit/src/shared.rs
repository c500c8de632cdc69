//! The read-only shared data and models beside the project (`../shared`), which tests use when
//! present and skip without, visibly, except where CI demands them (`BESTIARY_REQUIRE_SHARED=1`).

use std::path::{Path, PathBuf};

/// `../shared` beside the project, or `BESTIARY_SHARED_DIR`.
pub fn shared_root() -> PathBuf {
    std::env::var_os("BESTIARY_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

/// `../shared/<rel>` when it exists; otherwise `None` with "SKIP" printed, so that a test
/// needing it skips visibly. With `BESTIARY_REQUIRE_SHARED=1` (as `.ci/run` sets, where the
/// data is present) a missing path fails the test instead: CI must not pass a skipped test off
/// as a passing one.
pub fn shared_path(rel: &str) -> Option<PathBuf> {
    let path = shared_root().join(rel);
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var("BESTIARY_REQUIRE_SHARED").as_deref() != Ok("1"),
        "BESTIARY_REQUIRE_SHARED=1 but {} is missing",
        path.display()
    );
    println!("SKIP: shared data {} not present", path.display());
    None
}

/// The reference EfficientNet-Lite0 safetensors (`../shared/models/efficientnet_lite0/`).
pub fn reference_weights() -> Option<PathBuf> {
    shared_path("models/efficientnet_lite0/efficientnet_lite0.safetensors")
}
