//! The errors of loading networks, their weights and pinned wheels.

/// What can go wrong in this crate; bestiary-train turns it into its `TrainError` variant of
/// the same name (`Checkpoint`, `Invalid`, `Storage`, `Model`), with the same message.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Storage(#[from] bestiary_storage::StorageError),
    #[error(transparent)]
    Model(#[from] bestiary_model::ModelError),
    /// Weights that cannot be serialised, or do not fit the network.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = NetworkError> = std::result::Result<T, E>;
