//! What a training run is besides its loop: the state its checkpoints record, how it is kept,
//! who hears about its progress, and what it returns.

use bestiary_dataset::{Dataset, SkippedFile};
use bestiary_model::ModelMetadata;
use bestiary_storage::Store;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::metrics::EpochMetrics;

/// What a run has done so far: written last in every checkpoint, so that it always describes
/// files that are complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub config: TrainConfig,
    pub classes: Vec<String>,
    pub dataset_fingerprint: String,
    /// Epochs finished (the next epoch to run).
    pub epochs_done: usize,
    pub best_epoch: Option<usize>,
    pub best_accuracy: Option<f64>,
    pub history: Vec<EpochMetrics>,
    /// The epoch in progress when the run was interrupted, whose weights and optimizer state
    /// are saved under its number; `None` when the checkpoint is at an epoch boundary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<PartialEpoch>,
    /// Ids of the network's parameters, in visiting order, when the checkpoint was written.
    /// burn keys optimizer state by parameter id and draws fresh ids for every network it
    /// builds, so a resumed network takes these ids back — else its optimizer state (Adam's
    /// moments, SGD's momentum) would silently start from zero.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub param_ids: Vec<u64>,
}

/// How far an interrupted epoch got: its first `batches_done` batches are trained, and the sums
/// its metrics are made of so far. The loader gives the same batches in the same order for a
/// seed and epoch, so a resumed run skips those batches and goes on as if never stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    pub epoch: usize,
    pub batches_done: usize,
    pub loss_sum: f64,
    pub seen: usize,
    pub right: usize,
    pub seconds: f64,
}

impl RunState {
    /// The state of a run that has not finished an epoch yet.
    pub fn new(config: &TrainConfig, dataset: &Dataset) -> Self {
        Self {
            config: config.clone(),
            classes: dataset.classes.clone(),
            dataset_fingerprint: dataset.fingerprint(),
            epochs_done: 0,
            best_epoch: None,
            best_accuracy: None,
            history: Vec::new(),
            partial: None,
            param_ids: Vec::new(),
        }
    }
}

/// Hears about progress: the CLI draws bars from it, tests ignore it.
pub trait TrainObserver: Send {
    fn epoch_started(&mut self, _epoch: usize, _epochs: usize, _batches: usize) {}
    fn batch_finished(&mut self, _loss: f64, _accuracy: f64, _images_per_second: f64) {}
    fn epoch_finished(&mut self, _metrics: &EpochMetrics) {}
    /// Stops after the current epoch when true (tests use it to simulate an interruption).
    fn should_stop(&self) -> bool {
        false
    }
    /// Checked after every batch: when true, the run saves a mid-epoch checkpoint and ends with
    /// [`TrainError::Interrupted`](crate::TrainError::Interrupted) (SIGTERM from SageMaker's
    /// StopTrainingJob or a spot reclaim, Ctrl-C).
    fn interrupted(&self) -> bool {
        false
    }
}

/// An observer that ignores everything.
pub struct Silent;
impl TrainObserver for Silent {}

/// Whether a run continues from a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resume {
    /// Start over, replacing any old checkpoint.
    #[default]
    No,
    /// Continue from the checkpoint; its absence is an error (`--resume`).
    Required,
    /// Continue when a checkpoint exists, else start (a restarted SageMaker spot job).
    IfPresent,
}

/// How a run is kept: whether it resumes, and where its checkpoints live.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub resume: Resume,
    /// The checkpoint folder; default `<out>/<name>/training/` (SageMaker: /opt/ml/checkpoints,
    /// which it syncs to S3, so the model artifact does not carry them).
    pub checkpoints: Option<Store>,
}

/// The result of a finished run.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub metadata: ModelMetadata,
    pub version_url: String,
    pub state: RunState,
    pub bad_files: Vec<SkippedFile>,
}
