//! Training on small generated photos: it learns, it resumes to the same result, and it stores
//! a complete model version.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::config;
use bestiary_dataset::{Dataset, DatasetOptions, ImageCache};
use bestiary_model::ModelRepository;
use bestiary_networks::ArchitectureConfig;
use bestiary_storage::StoreOptions;
use bestiary_testkit::photos::write_class_folders;
use bestiary_train::{
    EpochMetrics, Resume, RunOptions, Silent, TrainError, TrainObserver, train, train_with,
};

async fn dataset(dir: &std::path::Path) -> Dataset {
    write_class_folders(dir, &["amber", "blue", "green"], 20, (40, 40));
    Dataset::open(dir.to_str().unwrap(), &DatasetOptions::default(), &|_| {})
        .await
        .unwrap()
}

/// Stops the run after a number of epochs, as an interruption would.
struct StopAfter(Arc<AtomicUsize>);
impl TrainObserver for StopAfter {
    fn epoch_finished(&mut self, _: &EpochMetrics) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
    fn should_stop(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

/// Asks the run to stop after a number of batches, as SIGTERM does.
struct InterruptAfterBatches(AtomicUsize);
impl TrainObserver for InterruptAfterBatches {
    fn batch_finished(&mut self, _: f64, _: f64, _: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
    fn interrupted(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_generated_classes_and_stores_a_version() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let dataset = dataset(data.path()).await;
    let repository =
        ModelRepository::open(out.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
    let cache = ImageCache::new(tempfile::tempdir().unwrap().keep()).unwrap();
    let outcome = train(
        config(6),
        &dataset,
        &repository,
        "tiny",
        false,
        Some(cache),
        Box::new(Silent),
    )
    .await
    .unwrap();

    let accuracy = outcome.metadata.metrics["validation_accuracy"];
    assert!(
        accuracy >= 0.7,
        "validation accuracy {accuracy} is not far above chance (0.33): {:?}",
        outcome.state.history
    );
    assert_eq!(outcome.state.history.len(), 6);
    let version = &outcome.metadata.version;
    for file in [
        "model.json",
        "weights.safetensors",
        "model.onnx",
        "metrics.jsonl",
    ] {
        assert!(
            out.path().join("tiny").join(version).join(file).exists(),
            "{file} missing"
        );
    }
    assert_eq!(
        repository.latest("tiny").await.unwrap().as_deref(),
        Some(version.as_str())
    );
    let metadata = repository.metadata("tiny", version).await.unwrap();
    assert_eq!(metadata.classes, ["amber", "blue", "green"]);
    assert_eq!(metadata.architecture, "seed-cnn");
    assert_eq!(metadata.input.image_size, 32);
    let lines =
        std::fs::read_to_string(out.path().join("tiny").join(version).join("metrics.jsonl"))
            .unwrap();
    assert_eq!(lines.lines().count(), 6);

    // The temperature and the "unknown" threshold are fitted on the validation photos, and
    // the evaluation says what they changed.
    assert!(dataset.validation.len() >= bestiary_model::calibration::MIN_FIT_PHOTOS);
    let calibration = metadata.calibration.expect("a calibration is fitted");
    assert!(calibration.temperature > 0.0 && calibration.temperature.is_finite());
    assert!(
        calibration.ece_after <= calibration.ece_before + 1e-9,
        "{calibration:?}"
    );
    let detector = calibration.unknown.expect("a detector is fitted");
    assert!(detector.acceptance >= 0.9, "{detector:?}");
    let eval: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("tiny").join(version).join("eval.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        eval["calibration"]["temperature"].as_f64().unwrap() as f32,
        calibration.temperature
    );
    assert!(eval["calibration"]["rejected_as_unknown"].as_f64().unwrap() <= 0.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_resumes_to_the_same_result() {
    let data = tempfile::tempdir().unwrap();
    let dataset = dataset(data.path()).await;
    let uninterrupted_out = tempfile::tempdir().unwrap();
    let resumed_out = tempfile::tempdir().unwrap();
    let open = |dir: &tempfile::TempDir| {
        ModelRepository::open(dir.path().to_str().unwrap(), &StoreOptions::default()).unwrap()
    };

    let whole = train(
        config(4),
        &dataset,
        &open(&uninterrupted_out),
        "m",
        false,
        None,
        Box::new(Silent),
    )
    .await
    .unwrap();
    let stopper = Box::new(StopAfter(Arc::new(AtomicUsize::new(2))));
    let first_half = train(
        config(4),
        &dataset,
        &open(&resumed_out),
        "m",
        false,
        None,
        stopper,
    )
    .await
    .unwrap();
    assert_eq!(first_half.state.epochs_done, 2);
    let resumed = train(
        config(4),
        &dataset,
        &open(&resumed_out),
        "m",
        true,
        None,
        Box::new(Silent),
    )
    .await
    .unwrap();
    assert_eq!(resumed.state.epochs_done, 4);

    for (a, b) in whole.state.history.iter().zip(&resumed.state.history) {
        assert!((a.train_loss - b.train_loss).abs() < 1e-6, "{a:?} vs {b:?}");
        assert_eq!(
            a.validation_accuracy, b.validation_accuracy,
            "{a:?} vs {b:?}"
        );
    }
    // A different configuration is refused rather than silently mixed in.
    let error = train(
        config(5),
        &dataset,
        &open(&resumed_out),
        "m",
        true,
        None,
        Box::new(Silent),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("other settings"), "{error}");
}

/// Runs an ONNX model with tract (a reference runtime independent of burn) on `input`.
fn run_onnx(bytes: &[u8], input: Vec<f32>, batch: usize, size: usize) -> Vec<f32> {
    use tract_onnx::prelude::*;
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .with_input_fact(0, f32::fact([batch, 3, size, size]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let tensor = tract_ndarray::Array4::from_shape_vec((batch, 3, size, size), input)
        .unwrap()
        .into_tensor();
    let outputs = model.run(tvec!(tensor.into())).unwrap();
    outputs[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

#[test]
fn exported_onnx_agrees_with_burn() {
    use bestiary_model::ModelMetadata;
    use bestiary_train::export::export_onnx;
    use burn::prelude::*;
    use rand::{Rng, SeedableRng};

    for (architecture, size) in [
        (ArchitectureConfig::SeedCnn { width: 8, depth: 3 }, 32usize),
        (ArchitectureConfig::Resnet { layers: 18 }, 64),
    ] {
        let device = Device::flex().autodiff();
        let mut model = architecture.init_seeded(4, &device, 3);
        // A few training steps move the batch-norm statistics away from their initial values,
        // so that folding them into the convolutions is really exercised.
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut random = |n: usize| {
            (0..n)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect::<Vec<_>>()
        };
        let mut optimizer = burn::optim::AdamWConfig::new().init();
        for _ in 0..3 {
            let images = Tensor::<4>::from_data(
                TensorData::new(random(4 * 3 * size * size), [4, 3, size, size]),
                &device,
            );
            let loss = model.forward(images).powi_scalar(2).mean();
            let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(1e-2, model, grads);
        }
        let model = model.valid();
        let input = random(2 * 3 * size * size);
        let plain = device.clone().without_autodiff();
        let expected: Vec<f32> = model
            .forward(Tensor::from_data(
                TensorData::new(input.clone(), [2, 3, size, size]),
                &plain,
            ))
            .into_data()
            .try_to_vec()
            .unwrap();
        let metadata = ModelMetadata::new(
            "m",
            &architecture.name(),
            vec!["a".into(), "b".into(), "c".into(), "d".into()],
            bestiary_train::input::input_spec(size as u32),
        );
        let onnx = export_onnx(&model, &metadata).unwrap();
        let actual = run_onnx(&onnx, input, 2, size);
        let max_diff = expected
            .iter()
            .zip(&actual)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let scale = expected.iter().map(|v| v.abs()).fold(1.0f32, f32::max);
        assert_eq!(expected.len(), actual.len());
        // Float32 noise grows with the logits' size: the bound is relative to the largest.
        assert!(
            max_diff / scale < 1e-5,
            "{}: max abs diff {max_diff} between burn and ONNX logits of size up to {scale}",
            architecture.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_interrupted_mid_epoch_resumes_from_its_own_checkpoint_folder() {
    let data = tempfile::tempdir().unwrap();
    let dataset = dataset(data.path()).await;
    let uninterrupted_out = tempfile::tempdir().unwrap();
    let resumed_out = tempfile::tempdir().unwrap();
    let checkpoints = tempfile::tempdir().unwrap();
    let open = |dir: &tempfile::TempDir| {
        ModelRepository::open(dir.path().to_str().unwrap(), &StoreOptions::default()).unwrap()
    };
    let checkpoint_store = || {
        bestiary_storage::Store::open(
            checkpoints.path().to_str().unwrap(),
            &StoreOptions::default(),
        )
        .unwrap()
    };
    let run = |resume, observer: Box<dyn TrainObserver>| {
        let repository = open(&resumed_out);
        let dataset = &dataset;
        let options = RunOptions {
            resume,
            checkpoints: Some(checkpoint_store()),
        };
        async move {
            train_with(
                config(3),
                dataset,
                &repository,
                "m",
                options,
                None,
                observer,
            )
            .await
        }
    };

    // No checkpoint yet: --resume says so instead of silently starting over.
    let error = run(Resume::Required, Box::new(Silent)).await.unwrap_err();
    assert!(error.to_string().contains("no checkpoint"), "{error}");

    let whole = train(
        config(3),
        &dataset,
        &open(&uninterrupted_out),
        "m",
        false,
        None,
        Box::new(Silent),
    )
    .await
    .unwrap();
    let batches_per_epoch = 6; // 48 training photos in batches of 8
    let interrupt = InterruptAfterBatches(AtomicUsize::new(batches_per_epoch + 2));
    let error = run(Resume::No, Box::new(interrupt)).await.unwrap_err();
    assert!(matches!(error, TrainError::Interrupted { .. }), "{error}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkpoints.path().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(state["epochs_done"], 1);
    assert_eq!(state["partial"]["epoch"], 1);
    assert_eq!(state["partial"]["batches_done"], 2);
    // Checkpoints live where they were sent, not beside the versions.
    assert!(!resumed_out.path().join("m/training").exists());

    let resumed = run(Resume::IfPresent, Box::new(Silent)).await.unwrap();
    assert_eq!(resumed.state.epochs_done, 3);
    assert_eq!(resumed.state.partial, None);
    for (a, b) in whole.state.history.iter().zip(&resumed.state.history) {
        // The same computation on the same values: equal but for summation order.
        assert!((a.train_loss - b.train_loss).abs() < 1e-6, "{a:?} vs {b:?}");
        assert!(
            (a.train_accuracy - b.train_accuracy).abs() < 1e-9,
            "{a:?} vs {b:?}"
        );
        assert_eq!(
            a.validation_accuracy, b.validation_accuracy,
            "{a:?} vs {b:?}"
        );
    }
}
