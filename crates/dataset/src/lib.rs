//! Labelled photos from any store: listing, splitting, decoding, augmentation, caching, batching.

pub mod cache;
pub mod decode;
mod error;
pub mod loader;
pub mod report;
pub mod source;
pub mod split;
pub mod transform;

pub use cache::ImageCache;
pub use error::{DatasetError, Result};
pub use loader::{Batch, Epoch, Loader, LoaderConfig, LoaderStats};
pub use report::{DatasetReport, inspect};
pub use source::{Dataset, DatasetOptions, Layout, Sample, SkippedFile};
pub use split::SplitConfig;
