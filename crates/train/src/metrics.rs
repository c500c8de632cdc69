//! The figures of a run: one `EpochMetrics` per epoch (`metrics.jsonl`), and the counts of
//! right predictions they are made of.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Figures of one epoch; one JSON line each in `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub validation_loss: Option<f64>,
    pub validation_accuracy: Option<f64>,
    pub learning_rate: f64,
    pub images_per_second: f64,
    pub seconds: f64,
}

/// The history as `metrics.jsonl`: one JSON line per epoch.
pub(crate) fn metrics_lines(history: &[EpochMetrics]) -> Vec<u8> {
    history
        .iter()
        .map(|m| serde_json::to_string(m).expect("metrics serialise") + "\n")
        .collect::<String>()
        .into_bytes()
}

/// Index of the largest value; the first one on ties, so that ranks below agree with it.
pub(crate) fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// How many rows of `logits` have their largest value at the row's label.
pub(crate) fn correct(logits: &Tensor<2>, labels: impl IntoIterator<Item = usize>) -> usize {
    let values: Vec<f32> = logits.to_data().try_to_vec().expect("logits are f32");
    let [_, classes] = logits.dims();
    values
        .chunks(classes.max(1))
        .zip(labels)
        .filter(|(row, label)| argmax(row) == *label)
        .count()
}
