//! Inference for stored models: one [`Engine`] trait over onnxruntime, tract and burn, the
//! request-path preprocessing, and predictions (softmax, top-k) with the model's labels.

pub mod builtin;
pub mod burn_engine;
pub mod engine;
pub mod error;
pub mod explain;
pub mod int8;
pub mod model;
pub mod ort_engine;
pub mod overlay;
pub mod prediction;
pub mod preprocess;
pub mod tract_engine;
pub mod usage;

pub use engine::{Engine, EngineKind, EngineOptions};
pub use error::EngineError;
pub use explain::{ClassActivation, Explanation, PhotoExplanation};
pub use model::LoadedModel;
pub use ort_engine::{ensure_onnxruntime, find_onnxruntime};
pub use prediction::{LabelScore, Prediction};
pub use preprocess::{ImageInfo, Preprocessor};
