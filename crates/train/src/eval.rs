//! Evaluating a classifier on labelled photos: predictions, accuracy, per-class figures,
//! confusion matrix and worst mistakes.

use bestiary_dataset::{Dataset, ImageCache, Loader, LoaderConfig, Sample, SkippedFile};
use bestiary_model::calibration::{ECE_BINS, expected_calibration_error, softmax_at};
use bestiary_model::{Calibration, ModelMetadata, resolve};
use bestiary_networks::device::training_device;
use bestiary_networks::stored::StoredModel;
use bestiary_networks::weights::weights_from_bytes;
use bestiary_networks::{ArchitectureConfig, Classifier};
use bestiary_storage::{Store, StoreOptions};
use burn::prelude::*;
use serde::Serialize;

use crate::error::{Result, TrainError};
use crate::metrics::{EpochMetrics, argmax};

/// Photos per inference batch: large enough to keep the backend busy, small enough for any
/// input size on a CPU.
const EVAL_BATCH: usize = 32;

/// How many of the most confident mistakes a report lists.
const WORST_MISTAKES: usize = 20;

/// What a model said about each photo it could read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Predictions {
    pub ids: Vec<String>,
    /// True labels, as indices into the model's classes.
    pub labels: Vec<usize>,
    /// Softmax over the model's classes, one row per photo.
    pub probabilities: Vec<Vec<f32>>,
    /// The network's raw outputs, one row per photo; empty when only probabilities are known.
    pub logits: Vec<Vec<f32>>,
}

/// How calibrated the scores were, and what the model's calibration changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationFigures {
    /// Expected calibration error of the plain softmax scores.
    pub ece_uncalibrated: f64,
    /// The model's temperature, and the error of its scores with it; `None` for a model
    /// without calibration.
    pub temperature: Option<f32>,
    pub ece_calibrated: Option<f64>,
    /// Share of these photos the "unknown" detector rejected (they are all of the classes, so
    /// every rejection is a false one); `None` without a detector.
    pub rejected_as_unknown: Option<f64>,
}

/// Which photos of a dataset to evaluate on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvalSplit {
    All,
    Validation,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    pub name: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Photos whose true label is this class.
    pub support: usize,
}

/// One photo's answer: its true label, the predicted one, and the probability the model gave
/// its answer. Wrong ones are the mistakes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhotoPrediction {
    pub id: String,
    pub true_label: String,
    pub predicted_label: String,
    pub score: f64,
}

/// How well a model did on a set of photos; `eval.json` in a model version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub version: String,
    pub dataset: String,
    pub images: usize,
    pub top1: f64,
    pub top5: f64,
    /// The k of `top5`: 5, or fewer when the model has fewer classes.
    pub top_k: usize,
    pub classes: Vec<ClassMetrics>,
    /// Mean F1 over the classes that occur among the true or predicted labels.
    pub macro_f1: f64,
    /// `confusion[true][predicted]`, in the model's class order.
    pub confusion: Vec<Vec<usize>>,
    /// The most confident wrong predictions, most confident first.
    pub worst_mistakes: Vec<PhotoPrediction>,
    /// Every photo's answer, in evaluation order: the photos behind each cell of `confusion`.
    pub predictions: Vec<PhotoPrediction>,
    /// Calibration error before and after the model's temperature.
    pub calibration: CalibrationFigures,
    pub bad_files: Vec<SkippedFile>,
}

/// Position of `label` when the classes are sorted by probability, ties broken by index as
/// `argmax` does (rank 0 is the top-1 prediction).
fn rank_of(row: &[f32], label: usize) -> usize {
    let p = row.get(label).copied().unwrap_or(f32::NEG_INFINITY);
    row.iter()
        .enumerate()
        .filter(|&(j, &q)| q > p || (q == p && j < label))
        .count()
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

impl EvalReport {
    /// The figures of `predictions` over `classes` (the model's, in output order).
    pub fn from_predictions(
        model: &str,
        version: &str,
        dataset: &str,
        classes: &[String],
        predictions: &Predictions,
        bad_files: Vec<SkippedFile>,
        calibration: Option<&Calibration>,
    ) -> Self {
        // Scores as the model serves them: at its temperature when it has one.
        let calibrated: Option<(Vec<Vec<f32>>, Vec<bool>)> = calibration
            .filter(|_| predictions.logits.len() == predictions.labels.len())
            .map(|calibration| {
                predictions
                    .logits
                    .iter()
                    .map(|row| {
                        let (probabilities, unknown) = calibration.apply(row);
                        (probabilities, unknown.is_some_and(|(rejected, _)| rejected))
                    })
                    .unzip()
            });
        let figures = CalibrationFigures {
            ece_uncalibrated: expected_calibration_error(
                &predictions.probabilities,
                &predictions.labels,
                ECE_BINS,
            ),
            temperature: calibrated.as_ref().and(calibration.map(|c| c.temperature)),
            ece_calibrated: calibrated
                .as_ref()
                .map(|(rows, _)| expected_calibration_error(rows, &predictions.labels, ECE_BINS)),
            rejected_as_unknown: calibrated
                .as_ref()
                .filter(|_| calibration.is_some_and(|c| c.unknown.is_some()))
                .map(|(_, rejected)| {
                    ratio(rejected.iter().filter(|&&r| r).count(), rejected.len())
                }),
        };
        let probabilities = calibrated
            .as_ref()
            .map_or(&predictions.probabilities, |(rows, _)| rows);
        let n = classes.len();
        let top_k = n.min(5);
        let mut confusion = vec![vec![0usize; n]; n];
        let (mut top1, mut topk) = (0usize, 0usize);
        let mut answers = Vec::with_capacity(predictions.ids.len());
        for ((id, &label), row) in predictions
            .ids
            .iter()
            .zip(&predictions.labels)
            .zip(probabilities)
        {
            let predicted = argmax(row);
            if let Some(cell) = confusion.get_mut(label).and_then(|r| r.get_mut(predicted)) {
                *cell += 1;
            }
            let rank = rank_of(row, label);
            top1 += usize::from(rank == 0);
            topk += usize::from(rank < top_k);
            let name = |i: usize| classes.get(i).cloned().unwrap_or_else(|| i.to_string());
            answers.push(PhotoPrediction {
                id: id.clone(),
                true_label: name(label),
                predicted_label: name(predicted),
                score: row.get(predicted).copied().unwrap_or(0.0) as f64,
            });
        }
        let mut mistakes: Vec<PhotoPrediction> = answers
            .iter()
            .filter(|a| a.true_label != a.predicted_label)
            .cloned()
            .collect();
        mistakes.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        mistakes.truncate(WORST_MISTAKES);

        let per_class: Vec<ClassMetrics> = (0..n)
            .map(|c| {
                let right = confusion[c][c];
                let support: usize = confusion[c].iter().sum();
                let predicted: usize = confusion.iter().map(|row| row[c]).sum();
                let precision = ratio(right, predicted);
                let recall = ratio(right, support);
                let f1 = if precision + recall > 0.0 {
                    2.0 * precision * recall / (precision + recall)
                } else {
                    0.0
                };
                ClassMetrics {
                    name: classes[c].clone(),
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect();
        // Classes a dataset does not contain and the model never predicts say nothing about the
        // model; averaging their zeros in would punish evaluating on a subset of classes.
        let present: Vec<f64> = per_class
            .iter()
            .enumerate()
            .filter(|(c, m)| m.support > 0 || confusion.iter().any(|row| row[*c] > 0))
            .map(|(_, m)| m.f1)
            .collect();
        let macro_f1 = if present.is_empty() {
            0.0
        } else {
            present.iter().sum::<f64>() / present.len() as f64
        };
        let images = predictions.labels.len();
        Self {
            model: model.to_string(),
            version: version.to_string(),
            dataset: dataset.to_string(),
            images,
            top1: ratio(top1, images),
            top5: ratio(topk, images),
            top_k,
            classes: per_class,
            macro_f1,
            confusion,
            worst_mistakes: mistakes,
            predictions: answers,
            calibration: figures,
            bad_files,
        }
    }
}

/// A loader with the evaluation transform (centre crop, no augmentation, in order) of a model.
pub fn eval_loader(
    metadata: &ModelMetadata,
    samples: Vec<Sample>,
    stores: Vec<Store>,
    cache: Option<ImageCache>,
) -> Loader {
    let mut config = LoaderConfig::new(metadata.input.image_size, EVAL_BATCH);
    config.normalization = metadata.input.normalization;
    config.crop_fraction = metadata.input.crop_fraction;
    config.augment = None;
    config.shuffle = false;
    config.cache = cache;
    Loader::new(samples, stores, config)
}

/// Runs `model` in inference mode over `loader`. Blocks: call it off the async runtime.
pub fn predict(model: &Classifier, loader: &Loader, device: &Device) -> Result<Predictions> {
    let model = model.valid();
    predict_with(loader, |images, batch, size| {
        let images = Tensor::<4>::from_data(
            TensorData::new(images.to_vec(), [batch, 3, size, size]),
            device,
        );
        model
            .forward(images)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| TrainError::Invalid(format!("unexpected model output: {e:?}")))
    })
}

/// Runs any network over `loader`: `logits(images, batch, side)` returns the output rows of one
/// batch of preprocessed images. Blocks: call it off the async runtime.
pub fn predict_with(
    loader: &Loader,
    mut logits: impl FnMut(&[f32], usize, usize) -> Result<Vec<f32>>,
) -> Result<Predictions> {
    let mut predictions = Predictions::default();
    for batch in loader.epoch(0) {
        let size = batch.image_size as usize;
        let rows = logits(&batch.images, batch.len(), size)?;
        let classes = rows.len() / batch.len().max(1);
        for (row, &index) in rows.chunks(classes.max(1)).zip(&batch.samples) {
            let sample = &loader.samples()[index];
            predictions.ids.push(sample.id.clone());
            predictions.labels.push(sample.label);
            predictions.probabilities.push(softmax_at(row, 1.0));
            predictions.logits.push(row.to_vec());
        }
    }
    Ok(predictions)
}

/// Evaluates `weights` of `architecture` on `samples`, whose labels must already be indices into
/// `metadata.classes`, with the scores at `metadata`'s calibration.
pub(crate) async fn evaluate_weights(
    architecture: &ArchitectureConfig,
    weights: Vec<u8>,
    metadata: &ModelMetadata,
    dataset_url: &str,
    samples: Vec<Sample>,
    stores: Vec<Store>,
    cache: Option<ImageCache>,
) -> Result<EvalReport> {
    let (predictions, bad_files) =
        predict_weights(architecture, weights, metadata, samples, stores, cache).await?;
    Ok(EvalReport::from_predictions(
        &metadata.name,
        &metadata.version,
        dataset_url,
        &metadata.classes,
        &predictions,
        bad_files,
        metadata.calibration.as_ref(),
    ))
}

/// What `weights` of `architecture` say about `samples`, and the photos that could not be read.
pub(crate) async fn predict_weights(
    architecture: &ArchitectureConfig,
    weights: Vec<u8>,
    metadata: &ModelMetadata,
    samples: Vec<Sample>,
    stores: Vec<Store>,
    cache: Option<ImageCache>,
) -> Result<(Predictions, Vec<SkippedFile>)> {
    let loader = eval_loader(metadata, samples, stores, cache);
    let architecture = architecture.clone();
    let classes = metadata.classes.len();
    let blocking_loader = loader.clone();
    // The loader's blocking iteration must not run on an async worker thread.
    let predictions = tokio::task::spawn_blocking(move || {
        let device = training_device().without_autodiff();
        let model = weights_from_bytes(architecture.init(classes, &device), weights)?;
        predict(&model, &blocking_loader, &device)
    })
    .await
    .map_err(|e| TrainError::Invalid(format!("evaluation thread failed: {e}")))??;
    Ok((predictions, loader.bad_files()))
}

/// Evaluates the model at `model_url` (`<root>/<name>[/<version>|/latest]`) on `data`.
pub async fn evaluate(
    model_url: &str,
    data: &Dataset,
    which: EvalSplit,
    store: &StoreOptions,
    cache: Option<ImageCache>,
) -> Result<EvalReport> {
    let stored = StoredModel::load(model_url, store).await?;
    let samples = eval_samples(&stored.metadata, data, which)?;
    evaluate_weights(
        &stored.architecture,
        stored.weights.clone(),
        &stored.metadata,
        &data.url,
        samples,
        data.stores.clone(),
        cache,
    )
    .await
}

/// The photos of `data` to evaluate a model with `metadata` on, labels turned into indices of
/// the model's classes.
///
/// # Errors
/// When the dataset has a class the model does not know.
pub fn eval_samples(
    metadata: &ModelMetadata,
    data: &Dataset,
    which: EvalSplit,
) -> Result<Vec<Sample>> {
    // Dataset labels index the dataset's classes; the model may order (or outnumber) them
    // differently.
    let mapping = data
        .classes
        .iter()
        .map(|class| {
            metadata
                .classes
                .iter()
                .position(|c| c == class)
                .ok_or_else(|| {
                    TrainError::Invalid(format!(
                        "the dataset class '{class}' is not one of the model's classes ({})",
                        metadata.classes.join(", ")
                    ))
                })
        })
        .collect::<Result<Vec<usize>>>()?;
    let chosen: Vec<&Sample> = match which {
        EvalSplit::All => data.train.iter().chain(&data.validation).collect(),
        EvalSplit::Validation => data.validation.iter().collect(),
    };
    chosen
        .into_iter()
        .map(|sample| {
            let mut sample = sample.clone();
            sample.label = *mapping.get(sample.label).ok_or_else(|| {
                TrainError::Invalid(format!("{} has a label outside its classes", sample.id))
            })?;
            Ok(sample)
        })
        .collect()
}

/// The per-epoch figures stored with a model version (empty for imported models).
pub async fn training_history(model_url: &str, store: &StoreOptions) -> Result<Vec<EpochMetrics>> {
    let (repository, name, version) = resolve(model_url, store).await?;
    let bytes = match repository.file(&name, &version, "metrics.jsonl").await {
        Ok(bytes) => bytes,
        Err(bestiary_model::ModelError::Storage(e)) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    // A damaged history only costs the curves, not the evaluation.
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        ["cat", "dog", "fox"].map(String::from).to_vec()
    }

    /// Six photos: cats 2/3 right (one taken for a dog), dogs 1/2 right (one taken for a cat),
    /// the one fox right.
    fn predictions() -> Predictions {
        let rows: [(&str, usize, [f32; 3]); 6] = [
            ("c1", 0, [0.8, 0.1, 0.1]),
            ("c2", 0, [0.6, 0.3, 0.1]),
            ("c3", 0, [0.3, 0.6, 0.1]),
            ("d1", 1, [0.1, 0.7, 0.2]),
            ("d2", 1, [0.9, 0.05, 0.05]),
            ("f1", 2, [0.2, 0.2, 0.6]),
        ];
        Predictions {
            ids: rows.iter().map(|r| r.0.to_string()).collect(),
            labels: rows.iter().map(|r| r.1).collect(),
            probabilities: rows.iter().map(|r| r.2.to_vec()).collect(),
            ..Default::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn counts_confusion_precision_recall_and_f1() {
        let report = EvalReport::from_predictions(
            "m",
            "v1",
            "data",
            &classes(),
            &predictions(),
            vec![],
            None,
        );
        assert_eq!(report.images, 6);
        assert_eq!(
            report.confusion,
            vec![vec![2, 1, 0], vec![1, 1, 0], vec![0, 0, 1]]
        );
        // Every photo is listed, so each cell of the matrix can show its photos.
        assert_eq!(report.predictions.len(), 6);
        for (t, row) in report.confusion.iter().enumerate() {
            for (p, count) in row.iter().enumerate() {
                let photos = report
                    .predictions
                    .iter()
                    .filter(|a| a.true_label == classes()[t] && a.predicted_label == classes()[p])
                    .count();
                assert_eq!(photos, *count);
            }
        }
        assert!(close(report.top1, 4.0 / 6.0));
        assert_eq!(report.top_k, 3);
        assert!(close(report.top5, 1.0));
        let cat = &report.classes[0];
        assert_eq!(cat.support, 3);
        assert!(close(cat.precision, 2.0 / 3.0));
        assert!(close(cat.recall, 2.0 / 3.0));
        assert!(close(cat.f1, 2.0 / 3.0));
        let dog = &report.classes[1];
        assert!(close(dog.precision, 0.5));
        assert!(close(dog.recall, 0.5));
        assert!(close(dog.f1, 0.5));
        let fox = &report.classes[2];
        assert!(close(fox.f1, 1.0));
        assert!(close(report.macro_f1, (2.0 / 3.0 + 0.5 + 1.0) / 3.0));
        // The most confident mistake comes first.
        let worst: Vec<_> = report
            .worst_mistakes
            .iter()
            .map(|m| {
                (
                    m.id.as_str(),
                    m.true_label.as_str(),
                    m.predicted_label.as_str(),
                )
            })
            .collect();
        assert_eq!(worst, [("d2", "dog", "cat"), ("c3", "cat", "dog")]);
        assert!(close(report.worst_mistakes[0].score, 0.9f32 as f64));
    }

    #[test]
    fn top_k_is_capped_at_five_and_ties_rank_like_argmax() {
        let classes: Vec<String> = (0..7).map(|i| format!("c{i}")).collect();
        let predictions = Predictions {
            ids: vec!["a".into(), "b".into()],
            labels: vec![5, 6],
            // "a": true class 5 is 6th (outside the top 5); "b": tied with class 0 for first,
            // argmax says class 0, so it is a top-1 miss but a top-5 hit.
            probabilities: vec![
                vec![0.3, 0.2, 0.15, 0.12, 0.11, 0.07, 0.05],
                vec![0.4, 0.1, 0.05, 0.025, 0.015, 0.01, 0.4],
            ],
            ..Default::default()
        };
        let report =
            EvalReport::from_predictions("m", "v", "d", &classes, &predictions, vec![], None);
        assert_eq!(report.top_k, 5);
        assert!(close(report.top1, 0.0));
        assert!(close(report.top5, 0.5));
        // Only classes that occur count towards the macro F1: c0 (predicted twice, never true),
        // c5 and c6 (true once each), all with F1 = 0.
        assert!(close(report.macro_f1, 0.0));
        assert_eq!(report.classes[6].support, 1);
        assert_eq!(report.confusion[6][0], 1);
    }

    #[test]
    fn no_photos_give_zeros_not_nan() {
        let report = EvalReport::from_predictions(
            "m",
            "v",
            "d",
            &classes(),
            &Predictions::default(),
            vec![],
            None,
        );
        assert_eq!(report.images, 0);
        assert_eq!(report.top1, 0.0);
        assert_eq!(report.macro_f1, 0.0);
        assert!(report.worst_mistakes.is_empty());
        serde_json::to_string(&report).unwrap();
    }

    #[test]
    fn the_models_calibration_sets_the_scores_and_the_report_says_what_it_changed() {
        // Timid logits: right three times in four, scored far below that.
        let logits: Vec<Vec<f32>> = (0..40)
            .map(|i| {
                let mut row = vec![0.0f32; 3];
                let winner = if i % 4 == 0 { (i + 1) % 3 } else { i % 3 };
                row[winner] = 0.5 + i as f32 * 0.01;
                row
            })
            .collect();
        let labels: Vec<usize> = (0..40).map(|i| i % 3).collect();
        let predictions = Predictions {
            ids: (0..40).map(|i| format!("p{i}")).collect(),
            probabilities: logits.iter().map(|row| softmax_at(row, 1.0)).collect(),
            labels: labels.clone(),
            logits: logits.clone(),
        };
        let calibration = bestiary_model::calibration::fit(&logits, &labels, 0.97).unwrap();
        let plain =
            EvalReport::from_predictions("m", "v", "d", &classes(), &predictions, vec![], None);
        let report = EvalReport::from_predictions(
            "m",
            "v",
            "d",
            &classes(),
            &predictions,
            vec![],
            Some(&calibration),
        );
        assert_eq!(plain.calibration.temperature, None);
        assert_eq!(
            report.top1, plain.top1,
            "a temperature never changes the ranking"
        );
        let after = report.calibration.ece_calibrated.unwrap();
        assert!(
            after < report.calibration.ece_uncalibrated,
            "{:?}",
            report.calibration
        );
        assert!(report.predictions[1].score > plain.predictions[1].score);
        let rejected = report.calibration.rejected_as_unknown.unwrap();
        assert!(rejected <= 0.05, "{rejected}");
    }
}
