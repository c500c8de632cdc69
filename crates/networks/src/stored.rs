//! Loading a stored model version (metadata and weights) back into a burn network.

use bestiary_model::{ModelMetadata, ModelRepository, resolve};
use bestiary_storage::StoreOptions;
use burn::prelude::*;

use crate::arch::{ArchitectureConfig, Classifier};
use crate::error::{NetworkError, Result};
use crate::weights::weights_from_bytes;

/// One version of a model, read from its store.
pub struct StoredModel {
    pub repository: ModelRepository,
    pub name: String,
    pub version: String,
    pub metadata: ModelMetadata,
    pub architecture: ArchitectureConfig,
    pub weights: Vec<u8>,
}

impl StoredModel {
    /// Reads the model at `model_url` (`<root>/<name>[/<version>|/latest]`).
    pub async fn load(model_url: &str, store: &StoreOptions) -> Result<Self> {
        let (repository, name, version) = resolve(model_url, store).await?;
        let metadata = repository.metadata(&name, &version).await?;
        let architecture: ArchitectureConfig = serde_json::from_value(
            metadata.architecture_config.clone(),
        )
        .map_err(|e| {
            NetworkError::Invalid(format!(
                "model {name} {version} has no architecture this bestiary can rebuild ({}): {e}",
                metadata.architecture
            ))
        })?;
        let weights = repository
            .file(&name, &version, "weights.safetensors")
            .await?
            .to_vec();
        Ok(Self {
            repository,
            name,
            version,
            metadata,
            architecture,
            weights,
        })
    }

    /// The network with its stored weights, on `device`.
    pub fn network(&self, device: &Device) -> Result<Classifier> {
        let blank = self.architecture.init(self.metadata.classes.len(), device);
        weights_from_bytes(blank, self.weights.clone())
    }

    /// The network in inference mode on the CPU, as exporters and CPU engines need it.
    pub fn inference_network(&self) -> Result<Classifier> {
        Ok(self.network(&Device::flex())?.valid())
    }
}
