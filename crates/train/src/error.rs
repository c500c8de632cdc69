//! The error of training, evaluation, import and audit, and the crate's `Result`.

use bestiary_networks::NetworkError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Storage(#[from] bestiary_storage::StorageError),
    #[error(transparent)]
    Model(#[from] bestiary_model::ModelError),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Stopped on request (SIGTERM, Ctrl-C) after saving a checkpoint mid-epoch.
    #[error("interrupted; the run was saved in {checkpoint} and continues with --resume")]
    Interrupted { checkpoint: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// The networks' errors as the variant of the same name, with the same message.
impl From<NetworkError> for TrainError {
    fn from(error: NetworkError) -> Self {
        match error {
            NetworkError::Storage(e) => Self::Storage(e),
            NetworkError::Model(e) => Self::Model(e),
            NetworkError::Checkpoint(message) => Self::Checkpoint(message),
            NetworkError::Invalid(message) => Self::Invalid(message),
        }
    }
}
