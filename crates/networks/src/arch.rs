//! The networks Bestiary trains from scratch: the seed CNN of the system it replaces, and
//! ResNet-18/34 with batch normalisation. Their convolutions and batch norms run through
//! [`crate::conv`] and [`crate::norm`].

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::efficientnet::EfficientNetLite0;
use crate::{conv, norm};

/// Which network, with its settings, as stored in `model.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ArchitectureConfig {
    /// `depth` blocks of 3×3 conv + batch norm + ReLU + 2×2 max-pool, channels starting at
    /// `width` and doubling per block (capped at 8×width), then global average pool and a
    /// linear head.
    SeedCnn { width: usize, depth: usize },
    /// ResNet with basic blocks: 18 or 34 layers.
    Resnet { layers: usize },
    /// EfficientNet-Lite0 at 224 px, for transfer learning from its ImageNet weights; with
    /// `imagenet_prior`, its logits add the ImageNet classifier's (see `imagenet_prior.rs`).
    EfficientnetLite0 {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        imagenet_prior: bool,
    },
}

impl ArchitectureConfig {
    /// Parses the `--arch` names: `seed-cnn`, `resnet18`/`resnet`, `resnet34`,
    /// `efficientnet-lite0`.
    pub fn from_name(name: &str, width: usize, depth: usize) -> Result<Self, String> {
        match name {
            "seed-cnn" => Ok(Self::SeedCnn { width, depth }),
            "resnet" | "resnet18" | "resnet-18" => Ok(Self::Resnet { layers: 18 }),
            "resnet34" | "resnet-34" => Ok(Self::Resnet { layers: 34 }),
            "efficientnet-lite0" => Ok(Self::EfficientnetLite0 {
                imagenet_prior: false,
            }),
            other => Err(format!(
                "unknown architecture '{other}' (seed-cnn, resnet18, resnet34, efficientnet-lite0)"
            )),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Self::SeedCnn { .. } => "seed-cnn".into(),
            Self::Resnet { layers } => format!("resnet{layers}"),
            Self::EfficientnetLite0 { .. } => "efficientnet-lite0".into(),
        }
    }

    /// A freshly initialised network whose weights depend only on `seed` (see [`seeded`]).
    pub fn init_seeded(&self, classes: usize, device: &Device, seed: u64) -> Classifier {
        seeded(device, seed, || self.init(classes, device))
    }

    /// A network with weights from the device's random generator as it stands.
    pub fn init(&self, classes: usize, device: &Device) -> Classifier {
        match self {
            Self::SeedCnn { width, depth } => {
                Classifier::SeedCnn(SeedCnn::new(*width, *depth, classes, device))
            }
            Self::Resnet { layers } => Classifier::Resnet(Resnet::new(*layers, classes, device)),
            Self::EfficientnetLite0 { imagenet_prior } => {
                Classifier::EfficientnetLite0(if *imagenet_prior {
                    EfficientNetLite0::with_prior(classes, device)
                } else {
                    EfficientNetLite0::with_classes(classes, device)
                })
            }
        }
    }
}

/// Builds a module whose initial weights depend only on `seed`. Burn draws initial weights from
/// one random generator per device, lazily on first use, so seeding, building and drawing every
/// parameter happen under a process-wide lock: concurrent runs (tests, several trainings in one
/// process) would otherwise interleave their draws and lose reproducibility.
pub fn seeded<M: Module>(device: &Device, seed: u64, build: impl FnOnce() -> M) -> M {
    static DEVICE_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = DEVICE_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    device.seed(seed);
    let module = build();
    module.visit(&mut Materialize);
    module
}

/// Reads every parameter once, which makes burn create the lazily initialised ones.
struct Materialize;

impl burn::module::ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// Any of the networks, as one module type for the training loop.
// One classifier exists per run, so the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Classifier {
    SeedCnn(SeedCnn),
    Resnet(Resnet),
    EfficientnetLite0(EfficientNetLite0),
}

impl Classifier {
    /// Logits `[batch, classes]` for images `[batch, 3, size, size]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Self::SeedCnn(net) => net.forward(images),
            Self::Resnet(net) => net.forward(images),
            Self::EfficientnetLite0(net) => net.forward(images),
        }
    }

    /// The last feature map `[batch, C, h, w]`, the one global average pooling reduces to the
    /// head's input: with [`Classifier::head`] it gives class activation maps.
    pub fn feature_map(&self, images: Tensor<4>) -> Tensor<4> {
        match self {
            Self::SeedCnn(net) => net.feature_map(images),
            Self::Resnet(net) => net.feature_map(images),
            Self::EfficientnetLite0(net) => net.feature_map(images),
        }
    }

    /// The linear head after global average pooling.
    pub fn head(&self) -> &Linear {
        match self {
            Self::SeedCnn(net) => &net.head,
            Self::Resnet(net) => &net.head,
            Self::EfficientnetLite0(net) => &net.fc,
        }
    }
}

/// Convolution, batch norm and ReLU: the unit every network here is made of.
#[derive(Module, Debug)]
pub struct ConvBnRelu {
    pub conv: Conv2d,
    pub norm: BatchNorm,
    relu: Relu,
}

impl ConvBnRelu {
    fn new(channels: [usize; 2], kernel: usize, stride: usize, device: &Device) -> Self {
        let conv = Conv2dConfig::new(channels, [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(
                kernel / 2,
                kernel / 2,
                kernel / 2,
                kernel / 2,
            ))
            // The batch norm right after supplies the shift.
            .with_bias(false)
            .init(device);
        Self {
            conv,
            norm: BatchNormConfig::new(channels[1]).init(device),
            relu: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.relu
            .forward(norm::forward(&self.norm, conv::forward(&self.conv, x)))
    }

    /// Convolution and batch norm without the ReLU (the last unit of a residual branch).
    fn forward_linear(&self, x: Tensor<4>) -> Tensor<4> {
        norm::forward(&self.norm, conv::forward(&self.conv, x))
    }
}

/// The original system's kind of network.
#[derive(Module, Debug)]
pub struct SeedCnn {
    pub blocks: Vec<ConvBnRelu>,
    pool: MaxPool2d,
    gap: AdaptiveAvgPool2d,
    pub head: Linear,
}

impl SeedCnn {
    pub fn new(width: usize, depth: usize, classes: usize, device: &Device) -> Self {
        let mut blocks = Vec::with_capacity(depth);
        let mut channels = 3;
        for block in 0..depth.max(1) {
            let out = width.max(1) * (1 << block.min(3));
            blocks.push(ConvBnRelu::new([channels, out], 3, 1, device));
            channels = out;
        }
        Self {
            blocks,
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            gap: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            head: LinearConfig::new(channels, classes).init(device),
        }
    }

    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let pooled: Tensor<2> = self.gap.forward(self.feature_map(images)).flatten(1, 3);
        self.head.forward(pooled)
    }

    /// The map global average pooling reduces: the last block's, pooled.
    pub fn feature_map(&self, images: Tensor<4>) -> Tensor<4> {
        let mut x = images;
        for block in &self.blocks {
            x = self.pool.forward(block.forward(x));
        }
        x
    }
}

/// A basic residual block: two 3×3 convs, with a 1×1 projection on the skip when the shape
/// changes.
#[derive(Module, Debug)]
pub struct BasicBlock {
    pub first: ConvBnRelu,
    pub second: ConvBnRelu,
    pub projection: Option<ConvBnRelu>,
    relu: Relu,
}

impl BasicBlock {
    fn new(channels: [usize; 2], stride: usize, device: &Device) -> Self {
        let projection = (stride != 1 || channels[0] != channels[1])
            .then(|| ConvBnRelu::new(channels, 1, stride, device));
        Self {
            first: ConvBnRelu::new(channels, 3, stride, device),
            second: ConvBnRelu::new([channels[1], channels[1]], 3, 1, device),
            projection,
            relu: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let skip = match &self.projection {
            Some(projection) => projection.forward_linear(x.clone()),
            None => x.clone(),
        };
        let branch = self.second.forward_linear(self.first.forward(x));
        self.relu.forward(branch + skip)
    }
}

/// ResNet-18/34 (He et al. 2016), torchvision layout.
#[derive(Module, Debug)]
pub struct Resnet {
    pub stem: ConvBnRelu,
    stem_pool: MaxPool2d,
    pub blocks: Vec<BasicBlock>,
    gap: AdaptiveAvgPool2d,
    pub head: Linear,
}

impl Resnet {
    pub fn new(layers: usize, classes: usize, device: &Device) -> Self {
        let counts: [usize; 4] = if layers == 34 {
            [3, 4, 6, 3]
        } else {
            [2, 2, 2, 2]
        };
        let mut blocks = Vec::new();
        let mut channels = 64;
        for (stage, count) in counts.into_iter().enumerate() {
            let out = 64 << stage;
            for index in 0..count {
                let stride = if stage > 0 && index == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new([channels, out], stride, device));
                channels = out;
            }
        }
        Self {
            stem: ConvBnRelu::new([3, 64], 7, 2, device),
            stem_pool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            blocks,
            gap: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            head: LinearConfig::new(channels, classes).init(device),
        }
    }

    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let pooled: Tensor<2> = self.gap.forward(self.feature_map(images)).flatten(1, 3);
        self.head.forward(pooled)
    }

    /// The map global average pooling reduces: the last residual block's output.
    pub fn feature_map(&self, images: Tensor<4>) -> Tensor<4> {
        let mut x = self.stem_pool.forward(self.stem.forward(images));
        for block in &self.blocks {
            x = block.forward(x);
        }
        x
    }
}

/// The ids of `model`'s float parameters, in visiting order.
pub fn param_ids(model: &Classifier) -> Vec<u64> {
    struct Ids(Vec<u64>);
    impl burn::module::ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            self.0.push(param.id.val());
        }
    }
    let mut ids = Ids(Vec::new());
    model.visit(&mut ids);
    ids.0
}

/// `model` with its float parameters renamed to `ids` (in visiting order), values unchanged.
pub fn with_param_ids(model: Classifier, ids: &[u64]) -> Result<Classifier, String> {
    let found = param_ids(&model).len();
    if found != ids.len() {
        return Err(format!(
            "the checkpoint names {} parameters, the network has {found}",
            ids.len()
        ));
    }
    struct Rename<'a>(std::slice::Iter<'a, u64>);
    impl burn::module::ModuleMapper for Rename<'_> {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            let id = *self.0.next().expect("counted above");
            let (_, value, mapper) = param.consume();
            burn::module::Param::from_mapped_value(burn::module::ParamId::from(id), value, mapper)
        }
    }
    Ok(model.map(&mut Rename(ids.iter())))
}
