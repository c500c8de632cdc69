//! Everything that can go wrong while loading a model or running it.

use bestiary_dataset::decode::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The requested engine cannot run here; `hint` says how to get it.
    #[error("the {engine} engine is not available: {reason}. {hint}")]
    Unavailable {
        engine: &'static str,
        reason: String,
        hint: String,
    },
    #[error(transparent)]
    Model(#[from] bestiary_model::ModelError),
    #[error("model {model}: {reason}")]
    InvalidModel { model: String, reason: String },
    #[error("inference failed in the {engine} engine: {reason}")]
    Inference {
        engine: &'static str,
        reason: String,
    },
    /// The input was not a usable photo.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// The graph lacks the `class_activation` output that explanations read.
    #[error(
        "this model version has no class-activation output ({model} was exported before \
         explanations existed); re-export it with `bestiary export --model …` from its training \
         folder"
    )]
    NoClassActivation { model: String },
    /// An explanation was asked for a class the model does not have.
    #[error("the model has no class {label:?}; its classes are {}", .classes.join(", "))]
    UnknownClass { label: String, classes: Vec<String> },
    #[error("input has {got} floats, expected {expected} ({batch} images of {per_image})")]
    InputShape {
        got: usize,
        expected: usize,
        batch: usize,
        per_image: usize,
    },
}
