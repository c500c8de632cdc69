//! A network's weights as safetensors bytes, both ways.

use burn::store::{ModuleSnapshot, SafetensorsStore};

use crate::arch::Classifier;
use crate::error::{NetworkError, Result};

/// Serialises a model's weights as safetensors.
pub fn weights_to_bytes(model: &Classifier) -> Result<Vec<u8>> {
    let mut store = SafetensorsStore::from_bytes(None);
    model
        .save_into(&mut store)
        .map_err(|e| NetworkError::Checkpoint(format!("cannot serialise weights: {e}")))?;
    store
        .get_bytes()
        .map_err(|e| NetworkError::Checkpoint(format!("cannot serialise weights: {e}")))
}

/// Loads safetensors weights into a freshly initialised model of the same architecture.
pub fn weights_from_bytes(mut model: Classifier, bytes: Vec<u8>) -> Result<Classifier> {
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    model
        .load_from(&mut store)
        .map_err(|e| NetworkError::Checkpoint(format!("cannot load weights: {e}")))?;
    Ok(model)
}
