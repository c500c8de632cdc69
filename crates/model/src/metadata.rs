//! The metadata file of a model version: what it is, what it expects as input, how it was made
//! and how well it did. Engines, servers and bulk jobs need nothing else to use a model.

use std::collections::BTreeMap;

use bestiary_dataset::transform::Normalization;
use serde::{Deserialize, Serialize};

/// Version of the metadata format; readers refuse newer formats rather than misread them.
pub const METADATA_FORMAT: u32 = 1;

/// File name of the metadata inside a version folder.
pub const METADATA_FILE: &str = "model.json";
/// Largest network input side a model.json may declare (pixels): 8× the 224 px of ImageNet
/// models leaves room for any real network, and one such tensor is still only 150 MB.
pub const MAX_IMAGE_SIZE: u32 = 4096;
/// Most classes a model.json may list (ImageNet-21k has 21,841).
pub const MAX_CLASSES: usize = 100_000;

/// What the network expects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Side of the square RGB input, in pixels.
    pub image_size: u32,
    /// Per-channel `(pixel - mean) / std`, in 0..255 units.
    pub normalization: Normalization,
    /// Evaluation preprocessing: the shorter side is resized to `image_size / crop_fraction`,
    /// then the centre `image_size` square is kept.
    pub crop_fraction: f32,
}

/// Where the training data came from, so that a model can be traced back to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub url: String,
    pub fingerprint: String,
    pub train: usize,
    pub validation: usize,
}

/// A version's int8 graph: where it is and how its activation ranges were calibrated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Int8Graph {
    /// File name in the version folder (`model.int8.onnx`).
    pub file: String,
    /// The dataset whose photos calibrated it.
    pub calibration_data: String,
    pub calibration_photos: usize,
    /// `minmax` or `percentile-<p>`.
    pub range_method: String,
    /// 7 or 8: the weights' range, ±64 or ±127.
    pub weight_bits: u8,
}

/// Everything stored in `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub format: u32,
    pub name: String,
    pub version: String,
    /// Architecture name (`seed-cnn`, `resnet18`, `efficientnet-lite0`, …) and its settings.
    pub architecture: String,
    #[serde(default)]
    pub architecture_config: serde_json::Value,
    /// Class names in output order.
    pub classes: Vec<String>,
    pub input: InputSpec,
    /// Training settings as given, for reproduction.
    #[serde(default)]
    pub training: serde_json::Value,
    pub dataset: Option<DatasetInfo>,
    /// Final figures (validation accuracy, loss, …).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// The temperature and the "unknown" detector fitted on held-out photos; models trained
    /// before they existed have none and answer with plain softmax scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<crate::Calibration>,
    /// The int8 graph `bestiary export --int8` wrote beside `model.onnx`; versions without
    /// one (and every model.json written before int8 existed) have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<Int8Graph>,
    /// The other files of the version (weights, ONNX graph, report), relative to its folder.
    #[serde(default)]
    pub files: Vec<String>,
    /// `bestiary <version>` that wrote it.
    pub software: String,
    /// RFC 3339, UTC.
    pub created: String,
}

impl ModelMetadata {
    /// Metadata for a new model; `version` and `created` are set when the version is committed.
    pub fn new(name: &str, architecture: &str, classes: Vec<String>, input: InputSpec) -> Self {
        Self {
            format: METADATA_FORMAT,
            name: name.to_string(),
            version: String::new(),
            architecture: architecture.to_string(),
            architecture_config: serde_json::Value::Null,
            classes,
            input,
            training: serde_json::Value::Null,
            dataset: None,
            metrics: BTreeMap::new(),
            calibration: None,
            int8: None,
            files: Vec::new(),
            software: format!("bestiary {}", env!("CARGO_PKG_VERSION")),
            created: String::new(),
        }
    }

    /// Parses and checks `model.json`: known format, classes, and every size within bounds
    /// ([`MAX_IMAGE_SIZE`], [`MAX_CLASSES`]).
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let metadata: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid model.json: {e}"))?;
        if metadata.format > METADATA_FORMAT {
            return Err(format!(
                "model.json format {} is newer than this bestiary understands ({METADATA_FORMAT}); upgrade bestiary",
                metadata.format
            ));
        }
        if metadata.classes.is_empty() {
            return Err("model.json lists no classes".into());
        }
        // Model files are input too: every size below is allocated per photo or per batch,
        // so an absurd one must be an error here, not an out-of-memory abort later.
        if metadata.classes.len() > MAX_CLASSES {
            return Err(format!(
                "model.json lists {} classes; at most {MAX_CLASSES} are supported",
                metadata.classes.len()
            ));
        }
        let input = &metadata.input;
        if !(1..=MAX_IMAGE_SIZE).contains(&input.image_size) {
            return Err(format!(
                "model.json's input size {} is outside 1..={MAX_IMAGE_SIZE} pixels",
                input.image_size
            ));
        }
        if !(input.crop_fraction > 0.05 && input.crop_fraction <= 1.0) {
            return Err(format!(
                "model.json's crop fraction {} is outside (0.05, 1]",
                input.crop_fraction
            ));
        }
        let normalization = &input.normalization;
        if !(normalization.mean.iter().all(|m| m.is_finite())
            && normalization.std.iter().all(|s| s.is_finite() && *s > 0.0))
        {
            return Err(
                "model.json's normalisation needs finite means and positive deviations".into(),
            );
        }
        if let Some(calibration) = &metadata.calibration {
            let threshold_ok = calibration
                .unknown
                .as_ref()
                .is_none_or(|detector| detector.threshold.is_finite());
            let temperature_ok =
                calibration.temperature.is_finite() && calibration.temperature > 0.0;
            if !(temperature_ok && threshold_ok) {
                return Err(
                    "model.json has an invalid calibration (temperature or unknown threshold)"
                        .into(),
                );
            }
        }
        Ok(metadata)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("metadata serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_with(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut metadata = ModelMetadata::new(
            "m",
            "seed-cnn",
            vec!["a".into(), "b".into()],
            InputSpec {
                image_size: 64,
                normalization: Normalization::imagenet(),
                crop_fraction: 0.875,
            },
        );
        metadata.version = "v".into();
        metadata.created = "2026-12-02T00:00:00Z".into();
        let mut json = serde_json::to_value(&metadata).unwrap();
        edit(&mut json);
        serde_json::to_vec(&json).unwrap()
    }

    /// An edit that makes metadata hostile, named for the failure message.
    type Hostile = (&'static str, Box<dyn Fn(&mut serde_json::Value)>);

    #[test]
    fn hostile_sizes_are_refused_at_parse_time() {
        assert!(ModelMetadata::from_json(&json_with(|_| {})).is_ok());
        let hostile: [Hostile; 7] = [
            (
                "huge input",
                Box::new(|j| j["input"]["image_size"] = 4_000_000_000u32.into()),
            ),
            (
                "zero input",
                Box::new(|j| j["input"]["image_size"] = 0.into()),
            ),
            (
                "zero crop",
                Box::new(|j| j["input"]["crop_fraction"] = 0.0.into()),
            ),
            (
                "zero std",
                Box::new(|j| j["input"]["normalization"]["std"] = serde_json::json!([1, 0, 1])),
            ),
            (
                "many classes",
                Box::new(|j| {
                    j["classes"] =
                        serde_json::json!((0..100_001).map(|i| i.to_string()).collect::<Vec<_>>())
                }),
            ),
            (
                "no classes",
                Box::new(|j| j["classes"] = serde_json::json!([])),
            ),
            ("not json", Box::new(|j| *j = serde_json::json!("x"))),
        ];
        for (what, edit) in hostile {
            assert!(
                ModelMetadata::from_json(&json_with(edit)).is_err(),
                "{what}"
            );
        }
    }
}
