//! The metadata file of a model version: what it is, what it expects as input, how it was made
//! and how well it did. Engines, servers and bulk jobs need nothing else to use a model.

use std::collections::BTreeMap;

use bestiary_dataset::transform::Normalization;
use serde::{Deserialize, Serialize};

/// Version of the metadata format; readers refuse newer formats rather than misread them.
pub const METADATA_FORMAT: u32 = 1;

/// File name of the metadata inside a version folder.
pub const METADATA_FILE: &str = "model.json";

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

    /// Parses and checks `model.json`.
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
        if metadata.input.image_size == 0 || !(0.0..=1.0).contains(&metadata.input.crop_fraction) {
            return Err("model.json has an invalid input size or crop fraction".into());
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
