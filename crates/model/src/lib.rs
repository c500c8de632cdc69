//! Models as stored artifacts: metadata and versioned folders with a `latest` pointer.

pub mod calibration;
pub mod metadata;
pub mod onnx;
pub mod repository;

pub use calibration::{Calibration, UnknownDetector};
pub use metadata::{DatasetInfo, InputSpec, Int8Graph, METADATA_FILE, ModelMetadata};
pub use repository::{LATEST, ModelError, ModelRepository, VersionWriter, resolve};
