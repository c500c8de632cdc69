//! Training CNN classifiers with burn: the training loop, checkpoints, evaluation, ONNX export,
//! artifacts. The networks themselves are bestiary-networks'.

mod artifact;
pub mod audit;
pub mod config;
pub mod error;
pub mod eval;
pub mod export;
pub mod fine_tune;
pub mod import;
pub mod input;
pub mod metrics;
pub mod report;
pub mod run;
pub mod trainer;
pub mod transfer;

pub use bestiary_networks::{ArchitectureConfig, Classifier};
pub use config::{Augmentation, OptimizerKind, Recipe, RecipeSettings, Schedule, TrainConfig};
pub use error::TrainError;
pub use eval::{EvalReport, EvalSplit, Predictions, evaluate};
pub use metrics::EpochMetrics;
pub use run::{PartialEpoch, Resume, RunOptions, RunState, Silent, TrainObserver, TrainOutcome};
pub use trainer::{train, train_with};
