//! The input preprocessing of a run's network, as its `model.json` records it.

use bestiary_dataset::transform::Normalization;
use bestiary_model::InputSpec;
use bestiary_networks::ArchitectureConfig;

use crate::config::TrainConfig;

/// Crop kept by the evaluation transform (the usual 224/256).
pub const CROP_FRACTION: f32 = 0.875;

/// Input preprocessing of a run's network: EfficientNet-Lite0 keeps its ImageNet recipe (224 px,
/// (x − 127) / 128); the networks trained from scratch use [`input_spec`].
pub fn input_spec_for(config: &TrainConfig) -> InputSpec {
    match config.architecture {
        ArchitectureConfig::EfficientnetLite0 { .. } => InputSpec {
            image_size: bestiary_networks::efficientnet::IMAGE_SIZE as u32,
            normalization: Normalization::efficientnet_lite(),
            crop_fraction: CROP_FRACTION,
        },
        _ => input_spec(config.image_size),
    }
}

/// Input preprocessing of the networks trained from scratch.
pub fn input_spec(image_size: u32) -> InputSpec {
    InputSpec {
        image_size,
        normalization: Normalization::imagenet(),
        crop_fraction: CROP_FRACTION,
    }
}
