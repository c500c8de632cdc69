//! One URL scheme for every bucket: a [`Store`] opened from a URL reads, lists and writes objects.
//!
//! Supported URLs:
//! - a plain path or `file://` — a local folder (the embedded default);
//! - `s3://bucket/prefix` — AWS S3 or any S3-compatible server (`--s3-endpoint` / `AWS_ENDPOINT_URL`);
//! - `gs://bucket/prefix` and `az://container/prefix` — whatever `object_store` provides;
//! - `memory://name/prefix` — an in-process store, for tests.

mod error;
mod page;
mod store;
mod url;

pub use error::{StorageError, StorageErrorKind};
pub use page::ListPage;
pub use store::{ObjectInfo, ObjectWriter, Store, StoreOptions, s3_builder, s3_endpoint};
pub use url::{StoreUrl, parse_store_url};

/// Result type of every storage operation.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
