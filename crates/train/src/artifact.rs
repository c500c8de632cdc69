//! The model version a finished run leaves: weights, ONNX graph, metrics, validation report and
//! `model.json`.

use bestiary_dataset::{Dataset, ImageCache, SkippedFile};
use bestiary_model::calibration::{self, DEFAULT_ACCEPTANCE};
use bestiary_model::{DatasetInfo, ModelMetadata, ModelRepository};
use bestiary_networks::ArchitectureConfig;
use bestiary_networks::weights::weights_from_bytes;
use burn::prelude::*;

use crate::error::{Result, TrainError};
use crate::eval::{EvalReport, predict_weights};
use crate::export::export_onnx;
use crate::input::input_spec_for;
use crate::metrics::metrics_lines;
use crate::report::render_html;
use crate::run::{RunState, TrainOutcome};

/// Stores the best weights of a finished run as a new version of `name`: weights, their ONNX
/// graph, the metrics history, the validation report and model.json, then `latest`.
pub(crate) async fn store_version(
    repository: &ModelRepository,
    name: &str,
    dataset: &Dataset,
    state: RunState,
    best_weights: Vec<u8>,
    cache: Option<ImageCache>,
    bad_files: Vec<SkippedFile>,
) -> Result<TrainOutcome> {
    let mut version = repository.begin(name)?;
    let mut metadata = ModelMetadata::new(
        name,
        &state.config.architecture.name(),
        dataset.classes.clone(),
        input_spec_for(&state.config),
    );
    metadata.version = version.version.clone();
    let best_model = weights_from_bytes(
        state
            .config
            .architecture
            .init(dataset.classes.len(), &Device::flex()),
        best_weights.clone(),
    )?;
    let onnx = export_onnx(&best_model.valid(), &metadata)
        .map_err(|e| TrainError::Invalid(format!("ONNX export failed: {e}")))?;
    version
        .put("weights.safetensors", best_weights.clone())
        .await?;
    version.put("model.onnx", onnx).await?;
    version
        .put("metrics.jsonl", metrics_lines(&state.history))
        .await?;
    metadata.architecture_config =
        serde_json::to_value(&state.config.architecture).expect("architecture serialises");
    metadata.training = serde_json::to_value(&state.config).expect("config serialises");
    metadata.dataset = Some(DatasetInfo {
        url: dataset.url.clone(),
        fingerprint: state.dataset_fingerprint.clone(),
        train: dataset.train.len(),
        validation: dataset.validation.len(),
    });
    if let Some(best) = state
        .best_epoch
        .and_then(|e| state.history.iter().find(|m| m.epoch == e))
    {
        metadata
            .metrics
            .insert("best_epoch".into(), best.epoch as f64);
        metadata
            .metrics
            .insert("train_loss".into(), best.train_loss);
        metadata
            .metrics
            .insert("train_accuracy".into(), best.train_accuracy);
        if let (Some(loss), Some(accuracy)) = (best.validation_loss, best.validation_accuracy) {
            metadata.metrics.insert("validation_loss".into(), loss);
            metadata
                .metrics
                .insert("validation_accuracy".into(), accuracy);
        }
    }
    // The best model's evaluation on the validation photos, in the version it describes, with
    // the temperature and the "unknown" threshold fitted on those photos' logits.
    if !dataset.validation.is_empty() {
        let (predictions, unreadable) = predict_weights(
            &state.config.architecture,
            best_weights.clone(),
            &metadata,
            dataset.validation.clone(),
            dataset.stores.clone(),
            cache.clone(),
        )
        .await?;
        // A head with an ImageNet prior keeps in its logits how little any class matched; the
        // energy score reads that, max-softmax normalises it away (see `calibration::fit_with`).
        let method = match state.config.architecture {
            ArchitectureConfig::EfficientnetLite0 {
                imagenet_prior: true,
            } => calibration::ENERGY,
            _ => calibration::MAX_SOFTMAX,
        };
        metadata.calibration = calibration::fit_with(
            &predictions.logits,
            &predictions.labels,
            DEFAULT_ACCEPTANCE,
            method,
        );
        let report = EvalReport::from_predictions(
            &metadata.name,
            &metadata.version,
            &dataset.url,
            &metadata.classes,
            &predictions,
            unreadable,
            metadata.calibration.as_ref(),
        );
        if let Some(calibration) = &metadata.calibration {
            metadata
                .metrics
                .insert("temperature".into(), f64::from(calibration.temperature));
            metadata
                .metrics
                .insert("validation_ece_uncalibrated".into(), calibration.ece_before);
            metadata
                .metrics
                .insert("validation_ece".into(), calibration.ece_after);
        }
        version
            .put("report.html", render_html(&report, &state.history))
            .await?;
        version
            .put(
                "eval.json",
                serde_json::to_vec_pretty(&report).expect("report serialises"),
            )
            .await?;
        metadata
            .metrics
            .insert("validation_top1".into(), report.top1);
    }
    metadata
        .metrics
        .insert("epochs".into(), state.epochs_done as f64);
    metadata
        .metrics
        .insert("bad_files".into(), bad_files.len() as f64);
    let version_url = version.url();
    let metadata = version.commit(metadata).await?;
    Ok(TrainOutcome {
        metadata,
        version_url,
        state,
        bad_files,
    })
}
