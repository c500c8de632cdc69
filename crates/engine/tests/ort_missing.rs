//! `ORT_DYLIB_PATH` naming a missing file: `ort` fails clearly, `auto` falls back to tract.
//! A test binary of its own, because the variable is process-wide.

#[path = "it/common/mod.rs"]
mod common;

use bestiary_engine::{EngineError, EngineKind, EngineOptions, LoadedModel, ensure_onnxruntime};
use common::parts;

#[test]
fn a_missing_library_makes_ort_unavailable_and_auto_fall_back() {
    let missing = "/nonexistent/bestiary/libonnxruntime.so.1.32.0";
    // SAFETY: the only test in this binary, and it sets the variable before any thread that
    // could read the environment (the engines) starts.
    unsafe { std::env::set_var("ORT_DYLIB_PATH", missing) };
    let parts = parts();
    // Downloading is allowed, yet an explicit library is never replaced by a download.
    let options = EngineOptions {
        threads: Some(1),
        instances: 1,
        allow_download: true,
        precision: Default::default(),
    };
    let load = |engine| {
        LoadedModel::from_parts(
            parts.metadata.clone(),
            &parts.onnx,
            None,
            engine,
            &options,
            "test:animals",
        )
    };

    let error = load(EngineKind::Ort)
        .err()
        .expect("no onnxruntime at that path");
    assert!(
        matches!(&error, EngineError::Unavailable { engine: "ort", reason, .. } if reason.contains(missing)),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("ORT_DYLIB_PATH") && message.contains("scripts/install-tools"),
        "{message}"
    );
    assert!(matches!(
        ensure_onnxruntime(),
        Err(EngineError::Unavailable { .. })
    ));

    let model = load(EngineKind::Auto).unwrap();
    assert_eq!(model.engine.kind(), EngineKind::Tract);
    model.warm_up().unwrap();
}
