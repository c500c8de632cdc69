//! The burn engine: the trained network itself from `weights.safetensors`, on burn's Flex CPU
//! backend, or on CUDA in builds with the `cuda` feature and `BESTIARY_DEVICE=cuda`.

use std::sync::Mutex;

use bestiary_model::ModelMetadata;
use bestiary_networks::device::training_device;
use bestiary_networks::stored::StoredModel;
use bestiary_networks::weights::weights_from_bytes;
use bestiary_networks::{ArchitectureConfig, Classifier};
use burn::prelude::*;

use crate::engine::{Engine, EngineKind, check_input};
use crate::error::EngineError;
use crate::explain::ClassActivation;

const ENGINE: &str = "burn";

/// A burn network in inference mode.
pub struct BurnEngine {
    /// burn modules are `Send` but not `Sync`: calls take turns.
    network: Mutex<Classifier>,
    device: Device,
    image_size: usize,
}

impl BurnEngine {
    /// The network `architecture` with `classes` outputs and the safetensors `weights`, for
    /// `[N, 3, image_size, image_size]` inputs, on the device training would use (see
    /// [`training_device`]).
    ///
    /// # Errors
    /// [`EngineError::InvalidModel`] when the weights do not fit the architecture.
    pub fn new(
        architecture: &ArchitectureConfig,
        classes: usize,
        weights: &[u8],
        image_size: usize,
    ) -> Result<Self, EngineError> {
        let device = training_device().without_autodiff();
        let network = weights_from_bytes(architecture.init(classes, &device), weights.to_vec())
            .map_err(|e| EngineError::InvalidModel {
                model: architecture.name(),
                reason: e.to_string(),
            })?
            .valid();
        Ok(Self {
            network: Mutex::new(network),
            device,
            image_size,
        })
    }

    /// The network a model version's metadata describes (`architecture_config`), with `weights`.
    ///
    /// # Errors
    /// [`EngineError::InvalidModel`] when the metadata names no architecture this build can
    /// rebuild, or the weights do not fit it.
    pub fn from_metadata(metadata: &ModelMetadata, weights: &[u8]) -> Result<Self, EngineError> {
        let architecture: ArchitectureConfig =
            serde_json::from_value(metadata.architecture_config.clone()).map_err(|e| {
                EngineError::InvalidModel {
                    model: format!("{} {}", metadata.name, metadata.version),
                    reason: format!(
                        "no architecture this bestiary can rebuild ({}): {e}",
                        metadata.architecture
                    ),
                }
            })?;
        Self::new(
            &architecture,
            metadata.classes.len(),
            weights,
            metadata.input.image_size as usize,
        )
    }

    /// The network of a stored model version.
    ///
    /// # Errors
    /// As [`BurnEngine::new`].
    pub fn from_stored(stored: &StoredModel) -> Result<Self, EngineError> {
        Self::new(
            &stored.architecture,
            stored.metadata.classes.len(),
            &stored.weights,
            stored.metadata.input.image_size as usize,
        )
    }
}

impl Engine for BurnEngine {
    fn infer(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, EngineError> {
        let size = self.image_size;
        check_input(input, batch, 3 * size * size)?;
        if batch == 0 {
            return Ok(Vec::new());
        }
        let images = Tensor::<4>::from_data(
            TensorData::new(input.to_vec(), [batch, 3, size, size]),
            &self.device,
        );
        let network = self
            .network
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let logits = network.forward(images);
        drop(network);
        logits
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| EngineError::Inference {
                engine: ENGINE,
                reason: format!("unexpected output: {e:?}"),
            })
    }

    fn kind(&self) -> EngineKind {
        EngineKind::Burn
    }

    /// The network's last feature map with its head applied at every position, and the
    /// logits of `forward` itself (which may add more than the head to them), so that the
    /// prediction is the one `infer` gives.
    fn explain(&self, input: &[f32]) -> Result<ClassActivation, EngineError> {
        let size = self.image_size;
        check_input(input, 1, 3 * size * size)?;
        let image = Tensor::<4>::from_data(
            TensorData::new(input.to_vec(), [1, 3, size, size]),
            &self.device,
        );
        let network = self
            .network
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let logits = network.forward(image.clone());
        let map = network.feature_map(image);
        let [_, channels, height, width] = map.dims();
        let head = network.head();
        // [h·w, C] · [C, classes] (+ bias) → [h·w, classes], then classes first.
        let positions: Tensor<2> = map.reshape([channels, height * width]).transpose();
        let mut maps = positions.matmul(head.weight.val());
        if let Some(bias) = &head.bias {
            maps = maps + bias.val().unsqueeze::<2>();
        }
        let maps = maps.transpose();
        drop(network);
        let values = |tensor: Tensor<2>| {
            tensor
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| EngineError::Inference {
                    engine: ENGINE,
                    reason: format!("unexpected output: {e:?}"),
                })
        };
        Ok(ClassActivation {
            logits: values(logits)?,
            maps: values(maps)?,
            height,
            width,
        })
    }

    fn explains(&self) -> bool {
        true
    }

    /// Burn pays a fixed cost per call (and on a GPU a launch per layer), which batches
    /// amortise.
    fn preferred_batch_size(&self) -> usize {
        32
    }

    fn describe(&self) -> String {
        format!("burn on {:?}", self.device)
    }
}
