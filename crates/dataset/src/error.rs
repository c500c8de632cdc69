//! Errors that stop a dataset from being opened (bad photos never do: they are skipped and reported).

use bestiary_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(
        "no photos found at {url} (expected <class>/<image> folders, a .jsonl manifest or a .csv of key,label)"
    )]
    NoImages { url: String },
    #[error("{url} line {line}: {reason}")]
    BadManifest {
        url: String,
        line: usize,
        reason: String,
    },
    #[error("image cache at {path}: {source}")]
    Cache {
        path: String,
        source: std::io::Error,
    },
    #[error("loader stopped: {0}")]
    Loader(String),
}

pub type Result<T, E = DatasetError> = std::result::Result<T, E>;
