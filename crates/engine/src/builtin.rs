//! The built-in animal classifier, compiled into the binary so that `serve` and `classify` work
//! on a fresh clone, offline, with no model URL.
//!
//! It is `models/animals` in the repository (a normal model repository, so `--model
//! models/animals` reads the same files), rebuilt by `scripts/build-default-model`:
//! EfficientNet-Lite0 with ImageNet weights (Apache-2.0), a linear head for the ten animals on
//! top of the ImageNet classifier's own view of them, stored with float16 weights.

use bestiary_model::ModelMetadata;

use crate::engine::{EngineKind, EngineOptions};
use crate::error::EngineError;
use crate::int8::Precision;
use crate::model::LoadedModel;

/// What the built-in model's `source` says, and what users may pass as `--model` to name it.
pub const SOURCE: &str = "builtin:animals";

const MODEL_JSON: &[u8] =
    include_bytes!(concat!(env!("BESTIARY_BUILTIN_MODEL_DIR"), "/model.json"));
const MODEL_ONNX: &[u8] =
    include_bytes!(concat!(env!("BESTIARY_BUILTIN_MODEL_DIR"), "/model.onnx"));
/// `model.int8.onnx` when the version has one, else empty (see build.rs).
const MODEL_INT8_ONNX: &[u8] = include_bytes!(env!("BESTIARY_BUILTIN_INT8"));

/// The built-in model's metadata (name, version, classes, input, metrics).
pub fn metadata() -> ModelMetadata {
    ModelMetadata::from_json(MODEL_JSON).expect("the built-in model.json is checked by the tests")
}

/// Its ONNX graph.
pub fn onnx() -> &'static [u8] {
    MODEL_ONNX
}

/// Its int8 graph (`model.int8.onnx`), when this build has one.
pub fn int8_onnx() -> Option<&'static [u8]> {
    (!MODEL_INT8_ONNX.is_empty()).then_some(MODEL_INT8_ONNX)
}

/// Whether a `--model` value names the built-in model.
pub fn is_builtin(url: &str) -> bool {
    url == SOURCE || url == "builtin"
}

/// The built-in model loaded into `engine` (any but burn: only the ONNX graph is shipped).
///
/// # Errors
/// As [`LoadedModel::from_parts`]; `burn` is refused with a message saying why.
pub fn load(engine: EngineKind, options: &EngineOptions) -> Result<LoadedModel, EngineError> {
    if engine == EngineKind::Burn {
        return Err(EngineError::Unavailable {
            engine: "burn",
            reason: "the built-in model ships only its ONNX graph, without burn weights".into(),
            hint: "Use --engine auto, ort or tract, or train a model and pass it with --model."
                .into(),
        });
    }
    let metadata = metadata();
    let precision = options.precision.resolve(&metadata, engine, || {
        crate::int8::onnxruntime_reachable(options)
    });
    let onnx = match precision {
        Precision::Int8 => int8_onnx()
            .filter(|_| metadata.int8.is_some())
            .ok_or_else(|| EngineError::InvalidModel {
                model: SOURCE.into(),
                reason: "this build's built-in model has no int8 graph; run `bestiary export \
                         --model models/animals --int8` and rebuild, or use --precision fp32"
                    .into(),
            })?,
        Precision::Auto | Precision::Fp32 => MODEL_ONNX,
    };
    let options = EngineOptions {
        precision,
        ..options.clone()
    };
    LoadedModel::from_parts(metadata, onnx, None, engine, &options, SOURCE)
}

/// Loads `url`, or the built-in model when `url` is `None` or names it.
///
/// # Errors
/// As [`LoadedModel::load`] and [`load`].
pub async fn load_model(
    url: Option<&str>,
    engine: EngineKind,
    options: &EngineOptions,
    store: &bestiary_storage::StoreOptions,
) -> Result<LoadedModel, EngineError> {
    match url {
        Some(url) if !is_builtin(url) => LoadedModel::load(url, engine, options, store).await,
        _ => {
            let options = options.clone();
            tokio::task::spawn_blocking(move || load(engine, &options))
                .await
                .map_err(|e| EngineError::InvalidModel {
                    model: SOURCE.into(),
                    reason: format!("loading stopped: {e}"),
                })?
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_model_names_the_ten_animals_at_224_px() {
        let metadata = metadata();
        assert_eq!(
            metadata.classes,
            [
                "butterfly",
                "cat",
                "chicken",
                "cow",
                "dog",
                "elephant",
                "horse",
                "sheep",
                "spider",
                "squirrel"
            ]
        );
        assert_eq!(metadata.input.image_size, 224);
        assert_eq!(metadata.architecture, "efficientnet-lite0");
        // Stored as float16: half the float32 graph's ~18.7 MB (the backbone and the ImageNet
        // classifier the prior keeps).
        assert!(onnx().len() < 10_000_000, "{} bytes", onnx().len());
    }

    #[test]
    fn builtin_refuses_burn_with_a_reason() {
        let error = load(EngineKind::Burn, &EngineOptions::default())
            .err()
            .unwrap();
        assert!(error.to_string().contains("ONNX graph"), "{error}");
    }
}
