//! Failures that stop a bulk run; a photo that cannot be classified is a result, not an error.

use bestiary_engine::EngineError;
use bestiary_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The command line or configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// The classification endpoint failed after retries, or answered something unreadable.
    #[error("endpoint {url}: {reason}")]
    Endpoint { url: String, reason: String },
    /// The endpoint refused a request in a way no retry can change (401, 403, 404, 413, …).
    #[error("endpoint {url}: {reason}")]
    EndpointRefused { url: String, reason: String },
    /// Something in the output prefix is not what Bestiary wrote there.
    #[error("{url}: {reason}")]
    Output { url: String, reason: String },
    /// Another process wrote the same part of the same run at the same time.
    #[error(
        "{url} was written by another process running the same shard into the same output; \
         run one process per shard (see --shard)"
    )]
    Conflict { url: String },
    /// Writing an S3 object tag failed.
    #[error("tagging {url}: {reason}")]
    Tagging { url: String, reason: String },
}

impl BulkError {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::Config(message.into())
    }

    /// Whether running the same job again cannot succeed: the configuration, the input or the
    /// output is wrong, or access is denied (Kubernetes' podFailurePolicy fails such an index
    /// instead of retrying it). Outages and endpoint failures are not permanent.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Config(_)
            | Self::Output { .. }
            | Self::Conflict { .. }
            | Self::EndpointRefused { .. } => true,
            Self::Storage(error) => error.is_permanent(),
            Self::Engine(_) | Self::Endpoint { .. } | Self::Tagging { .. } => false,
        }
    }
}

/// Result type of the bulk crate.
pub type Result<T, E = BulkError> = std::result::Result<T, E>;
