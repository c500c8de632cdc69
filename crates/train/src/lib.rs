//! Training CNN classifiers with burn: architectures, the training loop, checkpoints, artifacts.

pub mod arch;
pub mod audit;
pub mod config;
pub mod efficientnet;
pub mod eval;
pub mod export;
pub mod fine_tune;
pub mod imagenet_prior;
pub mod import;
pub mod report;
pub mod stored;
pub mod trainer;
pub mod transfer;

pub use arch::{ArchitectureConfig, Classifier};
pub use config::{OptimizerKind, Schedule, TrainConfig};
pub use eval::{EvalReport, EvalSplit, Predictions, evaluate};
pub use trainer::{
    EpochMetrics, PartialEpoch, Resume, RunOptions, RunState, Silent, TrainError, TrainObserver,
    TrainOutcome, train, train_with,
};
