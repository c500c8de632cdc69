//! EfficientNet-Lite0 (ImageNet-1k) as a burn module, loadable from the reference PyTorch weights.
//!
//! The layout follows `efficientnet_lite_pytorch`: a 3×3/2 stem with 32 channels, 16 MBConv
//! blocks without squeeze-excitation, a 1×1 head with 1280 channels, global average pooling and
//! a 1000-way linear classifier; ReLU6 everywhere and batch norm with eps 1e-3. Convolutions pad
//! as TensorFlow's "SAME" does for a 224×224 input, so stride-2 layers pad more at the bottom and
//! right. Inputs are RGB NCHW normalised as `(pixel − 127) / 128`.

use std::path::Path;

use crate::imagenet_prior::{IMAGENET_CLASSES, ImagenetPrior};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::store::{
    ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};

/// The input size the fixed "SAME" pads are computed for.
pub const IMAGE_SIZE: usize = 224;
/// Channels of the pooled embedding that [`EfficientNetLite0::features`] returns.
pub const FEATURES: usize = 1280;
/// ImageNet-1k classes, the outputs of the pretrained classifier.
pub const CLASSES: usize = IMAGENET_CLASSES;
/// Batch-norm epsilon of the TensorFlow original.
const BN_EPSILON: f64 = 1e-3;

/// The MBConv stages: (expand ratio, kernel, stride of the first block, output channels, repeats).
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
];

/// TensorFlow "SAME" padding `(before, after)` of a `kernel`/`stride` convolution over `size`
/// pixels, and the output size.
fn same_padding(size: usize, kernel: usize, stride: usize) -> ((usize, usize), usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    ((total / 2, total - total / 2), out)
}

/// A bias-free convolution (batch norm follows each) with "SAME" pads for an input of `size`
/// pixels; returns it with its output size.
fn conv(
    channels: [usize; 2],
    kernel: usize,
    stride: usize,
    groups: usize,
    size: usize,
    device: &Device,
) -> (Conv2d, usize) {
    let ((before, after), out) = same_padding(size, kernel, stride);
    let conv = Conv2dConfig::new(channels, [kernel, kernel])
        .with_stride([stride, stride])
        .with_groups(groups)
        .with_padding(PaddingConfig2d::Explicit(before, before, after, after))
        .with_bias(false)
        .init(device);
    (conv, out)
}

fn batch_norm(channels: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels)
        .with_epsilon(BN_EPSILON)
        .init(device)
}

fn relu6(x: Tensor<4>) -> Tensor<4> {
    x.clamp(0.0, 6.0)
}

/// Inverted residual block without squeeze-excitation. Field names follow the reference
/// (`_expand_conv`, `_bn0`, …) without the leading underscore.
#[derive(Module, Debug)]
pub struct MbConv {
    /// 1×1 expansion, absent when the expand ratio is 1.
    pub expand_conv: Option<Conv2d>,
    pub bn0: Option<BatchNorm>,
    pub depthwise_conv: Conv2d,
    pub bn1: BatchNorm,
    pub project_conv: Conv2d,
    pub bn2: BatchNorm,
    /// Whether the input is added to the output (stride 1 and as many channels in as out).
    #[module(skip)]
    pub skip: bool,
}

impl MbConv {
    /// The block and its output size for an input of `size` pixels.
    fn new(
        channels: [usize; 2],
        expand: usize,
        kernel: usize,
        stride: usize,
        size: usize,
        device: &Device,
    ) -> (Self, usize) {
        let [input, output] = channels;
        let hidden = input * expand;
        let (expand_conv, bn0) = if expand == 1 {
            (None, None)
        } else {
            let (conv, _) = conv([input, hidden], 1, 1, 1, size, device);
            (Some(conv), Some(batch_norm(hidden, device)))
        };
        let (depthwise_conv, out) = conv([hidden, hidden], kernel, stride, hidden, size, device);
        let (project_conv, _) = conv([hidden, output], 1, 1, 1, out, device);
        let block = Self {
            expand_conv,
            bn0,
            depthwise_conv,
            bn1: batch_norm(hidden, device),
            project_conv,
            bn2: batch_norm(output, device),
            skip: stride == 1 && input == output,
        };
        (block, out)
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = x.clone();
        if let (Some(conv), Some(norm)) = (&self.expand_conv, &self.bn0) {
            y = relu6(norm.forward(conv.forward(y)));
        }
        y = relu6(self.bn1.forward(self.depthwise_conv.forward(y)));
        y = self.bn2.forward(self.project_conv.forward(y));
        if self.skip { y + x } else { y }
    }
}

/// EfficientNet-Lite0 for 224×224 inputs. Run it on a plain (non-autodiff) device, or call
/// `valid()`, for inference: batch norm then uses its running statistics.
#[derive(Module, Debug)]
pub struct EfficientNetLite0 {
    pub conv_stem: Conv2d,
    pub bn0: BatchNorm,
    pub blocks: Vec<MbConv>,
    pub conv_head: Conv2d,
    pub bn1: BatchNorm,
    pub fc: Linear,
    /// What the ImageNet classifier knows about the classes, added to `fc`'s logits (a transfer
    /// model trained with `--imagenet-prior`); `None` for plain heads and ImageNet itself.
    pub prior: Option<ImagenetPrior>,
}

impl EfficientNetLite0 {
    /// A randomly initialised network with the 1000 ImageNet outputs.
    pub fn new(device: &Device) -> Self {
        Self::with_classes(CLASSES, device)
    }

    /// A randomly initialised network with `classes` outputs (a new head for transfer learning).
    pub fn with_classes(classes: usize, device: &Device) -> Self {
        let (conv_stem, mut size) = conv([3, 32], 3, 2, 1, IMAGE_SIZE, device);
        let mut channels = 32;
        let mut blocks = Vec::with_capacity(16);
        for (expand, kernel, stride, output, repeats) in STAGES {
            for index in 0..repeats {
                let stride = if index == 0 { stride } else { 1 };
                let (block, out) =
                    MbConv::new([channels, output], expand, kernel, stride, size, device);
                blocks.push(block);
                channels = output;
                size = out;
            }
        }
        let (conv_head, _) = conv([channels, FEATURES], 1, 1, 1, size, device);
        Self {
            conv_stem,
            bn0: batch_norm(32, device),
            blocks,
            conv_head,
            bn1: batch_norm(FEATURES, device),
            fc: LinearConfig::new(FEATURES, classes).init(device),
            prior: None,
        }
    }

    /// A blank network with `classes` outputs and an ImageNet prior, for loading stored weights.
    pub fn with_prior(classes: usize, device: &Device) -> Self {
        Self {
            prior: Some(ImagenetPrior::blank(FEATURES, classes, device)),
            ..Self::with_classes(classes, device)
        }
    }

    /// The pooled embedding `[batch, 1280]` of images `[batch, 3, 224, 224]`.
    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        self.feature_map(images)
            .mean_dim(3)
            .mean_dim(2)
            .flatten(1, 3)
    }

    /// The map `[batch, 1280, 7, 7]` that [`Self::features`] averages: the head convolution's.
    pub fn feature_map(&self, images: Tensor<4>) -> Tensor<4> {
        let mut x = relu6(self.bn0.forward(self.conv_stem.forward(images)));
        for block in &self.blocks {
            x = block.forward(x);
        }
        relu6(self.bn1.forward(self.conv_head.forward(x)))
    }

    /// Logits `[batch, classes]` (before softmax): ImageNet's for the pretrained network.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.logits(self.features(images))
    }

    /// The logits of pooled features: the head's, plus the ImageNet prior's when there is one.
    pub fn logits(&self, features: Tensor<2>) -> Tensor<2> {
        let head = self.fc.forward(features.clone());
        match &self.prior {
            Some(prior) => head + prior.log_prior(features),
            None => head,
        }
    }

    /// The network with the reference weights from an `efficientnet_lite_pytorch` state dict in
    /// safetensors form (e.g. `shared/models/efficientnet_lite0/efficientnet_lite0.safetensors`).
    ///
    /// # Errors
    /// When the file cannot be read, a weight is missing or has the wrong shape, or the file
    /// holds a tensor the network does not use (other than batch norm's `num_batches_tracked`).
    pub fn load_reference(path: &Path, device: &Device) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::load_reference_bytes(bytes, device)
    }

    /// [`load_reference`](Self::load_reference) from the file's bytes.
    ///
    /// # Errors
    /// As [`load_reference`](Self::load_reference).
    pub fn load_reference_bytes(bytes: Vec<u8>, device: &Device) -> Result<Self, String> {
        let store = SafetensorsStore::from_bytes(Some(bytes))
            // `_blocks.3._bn0.weight` becomes `blocks.3.bn0.weight`.
            .with_key_remapping(r"^_", "")
            .with_key_remapping(r"\._", ".")
            // Linear weights [out, in] → [in, out]; batch norm weight/bias → gamma/beta.
            .with_from_adapter(PyTorchToBurnAdapter)
            .validate(true)
            .allow_partial(false);
        Self::load_checked(store, device)
    }

    /// The network with the reference weights from the original `efficientnet_lite_pytorch`
    /// checkpoint (`efficientnet-lite0-57934424.pth`, legacy or zip PyTorch format), with the
    /// same key remapping and checks as [`load_reference`](Self::load_reference).
    ///
    /// # Errors
    /// As [`load_reference`](Self::load_reference).
    pub fn load_pytorch(path: &Path, device: &Device) -> Result<Self, String> {
        // PytorchStore always applies `PyTorchToBurnAdapter`.
        let store = PytorchStore::from_file(path)
            .with_key_remapping(r"^_", "")
            .with_key_remapping(r"\._", ".")
            .validate(true)
            .allow_partial(false);
        Self::load_checked(store, device)
    }

    /// Loads every weight from `store`, refusing missing, mis-shaped or unused tensors.
    fn load_checked(mut store: impl ModuleStore, device: &Device) -> Result<Self, String> {
        let mut model = Self::new(device);
        let result = model
            .load_from(&mut store)
            .map_err(|e| format!("loading EfficientNet-Lite0 weights: {e}"))?;
        if !result.errors.is_empty() {
            return Err(format!("EfficientNet-Lite0 weights: {:?}", result.errors));
        }
        if !result.missing.is_empty() {
            return Err(format!(
                "EfficientNet-Lite0 weights missing: {:?}",
                result.missing
            ));
        }
        let unused: Vec<&String> = result
            .unused
            .iter()
            .filter(|name| !name.ends_with(".num_batches_tracked"))
            .collect();
        if !unused.is_empty() {
            return Err(format!(
                "EfficientNet-Lite0 weights not used by the network: {unused:?}"
            ));
        }
        // Each conv brings 1 tensor and its batch norm 4: 16 blocks with depthwise and project
        // (5 + 5), 15 of them with an expansion (5), stem and head (5 each), fc weight and bias.
        let expected = 16 * 10 + 15 * 5 + 2 * 5 + 2;
        if result.applied.len() != expected {
            return Err(format!(
                "EfficientNet-Lite0 weights: {} tensors applied, expected {expected}",
                result.applied.len()
            ));
        }
        Ok(model)
    }
}
