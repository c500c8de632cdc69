//! Fine-tuning EfficientNet-Lite0 (`--fine-tune`): it learns and stores a whole version whose ONNX
//! graph agrees with burn, everything outside the unfrozen blocks stays bit-identical to the
//! pretrained network, and an interrupted run resumes to the same history.
//!
//! The pretrained network is the reference ImageNet one when `../shared` is present, else a
//! randomly initialised EfficientNet-Lite0 saved in the reference's (PyTorch) layout: these tests
//! are about the mechanics, not about ImageNet features.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::config;
use bestiary_dataset::{Dataset, DatasetOptions};
use bestiary_model::ModelRepository;
use bestiary_networks::efficientnet::{EfficientNetLite0, IMAGE_SIZE};
use bestiary_networks::{ArchitectureConfig, Classifier};
use bestiary_storage::StoreOptions;
use bestiary_testkit::photos::write_class_folders;
use bestiary_train::config::FineTune;
use bestiary_train::{EpochMetrics, Silent, TrainConfig, TrainObserver, train};
use burn::prelude::*;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};

/// Stops the run after a number of epochs, as an interruption would.
struct StopAfter(AtomicUsize);
impl TrainObserver for StopAfter {
    fn epoch_finished(&mut self, _: &EpochMetrics) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
    fn should_stop(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

/// The reference weights, or a random network written in their layout into `scratch`.
fn pretrained_file(scratch: &Path) -> PathBuf {
    let reference = bestiary_testkit::shared::shared_root()
        .join("models/efficientnet_lite0/efficientnet_lite0.safetensors");
    if reference.exists() {
        return reference;
    }
    println!(
        "{} not present: fine-tuning a random EfficientNet-Lite0",
        reference.display()
    );
    let device = Device::flex();
    let network = bestiary_networks::arch::seeded(&device, 11, || EfficientNetLite0::new(&device));
    let mut store = SafetensorsStore::from_bytes(None).with_to_adapter(BurnToPyTorchAdapter);
    network.save_into(&mut store).unwrap();
    let path = scratch.join("efficientnet_lite0.safetensors");
    std::fs::write(&path, store.get_bytes().unwrap()).unwrap();
    path
}

async fn dataset(dir: &Path) -> Dataset {
    write_class_folders(dir, &["amber", "blue", "green"], 10, (48, 48));
    Dataset::open(dir.to_str().unwrap(), &DatasetOptions::default(), &|_| {})
        .await
        .unwrap()
}

fn fine_tune_config(epochs: usize, pretrained: &Path, fine_tune: FineTune) -> TrainConfig {
    TrainConfig {
        architecture: ArchitectureConfig::EfficientnetLite0 {
            imagenet_prior: false,
        },
        learning_rate: 1e-2,
        pretrained: Some(pretrained.to_str().unwrap().to_string()),
        fine_tune: Some(fine_tune),
        ..config(epochs)
    }
}

/// A module's weights and running statistics as safetensors bytes, to compare bit for bit.
fn snapshot<M: ModuleSnapshot>(module: &M) -> Vec<u8> {
    let mut store = SafetensorsStore::from_bytes(None);
    module.save_into(&mut store).unwrap();
    store.get_bytes().unwrap()
}

/// The tensors of safetensors bytes (all f32 here) by name, sorted: the header's order is not
/// guaranteed.
fn float_values(bytes: &[u8]) -> Vec<(String, Vec<f32>)> {
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let index: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + header]).unwrap();
    let data = &bytes[8 + header..];
    let mut tensors: Vec<(String, Vec<f32>)> = index
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .map(|(name, entry)| {
            let offsets = &entry["data_offsets"];
            let (start, end) = (
                offsets[0].as_u64().unwrap() as usize,
                offsets[1].as_u64().unwrap() as usize,
            );
            let values = data[start..end]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name.clone(), values)
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

fn values(tensor: Tensor<1>) -> Vec<f32> {
    tensor.into_data().try_to_vec().unwrap()
}

/// The stored version's network.
fn stored_network(version: &Path) -> EfficientNetLite0 {
    let bytes = std::fs::read(version.join("weights.safetensors")).unwrap();
    let blank = ArchitectureConfig::EfficientnetLite0 {
        imagenet_prior: false,
    }
    .init(3, &Device::flex());
    match bestiary_networks::weights::weights_from_bytes(blank, bytes).unwrap() {
        Classifier::EfficientnetLite0(network) => network,
        _ => unreachable!("an EfficientNet-Lite0 was stored"),
    }
}

/// Runs an ONNX model with tract (a runtime independent of burn) on `input`; its first output.
fn run_onnx(bytes: &[u8], input: Vec<f32>, batch: usize) -> Vec<f32> {
    use tract_onnx::prelude::*;
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .with_input_fact(0, f32::fact([batch, 3, IMAGE_SIZE, IMAGE_SIZE]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let tensor = tract_ndarray::Array4::from_shape_vec((batch, 3, IMAGE_SIZE, IMAGE_SIZE), input)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fine_tuning_the_last_blocks_learns_and_leaves_the_rest_bit_identical() {
    let scratch = tempfile::tempdir().unwrap();
    let pretrained_path = pretrained_file(scratch.path());
    let data = tempfile::tempdir().unwrap();
    let dataset = dataset(data.path()).await;
    let out = tempfile::tempdir().unwrap();
    let repository =
        ModelRepository::open(out.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
    // Batch statistics in the trained blocks, so that the test also shows that only those
    // blocks' running statistics move.
    let fine_tune = FineTune {
        blocks: Some(2),
        backbone_lr_factor: 0.5,
        freeze_batch_norm: false,
    };
    let outcome = train(
        fine_tune_config(4, &pretrained_path, fine_tune),
        &dataset,
        &repository,
        "colours",
        false,
        None,
        Box::new(Silent),
    )
    .await
    .unwrap();

    let accuracy = outcome.metadata.metrics["validation_accuracy"];
    assert!(
        accuracy > 0.6,
        "validation accuracy {accuracy} (chance 0.33): {:?}",
        outcome.state.history
    );
    assert_eq!(outcome.metadata.architecture, "efficientnet-lite0");
    assert_eq!(outcome.metadata.input.image_size, IMAGE_SIZE as u32);
    assert_eq!(outcome.metadata.input.normalization.mean, [127.0; 3]);
    assert_eq!(outcome.metadata.training["fine_tune"]["blocks"], 2);
    let version = out.path().join("colours").join(&outcome.metadata.version);
    for file in [
        "model.json",
        "weights.safetensors",
        "model.onnx",
        "metrics.jsonl",
        "report.html",
    ] {
        assert!(version.join(file).exists(), "{file} missing");
    }

    // Outside the last two blocks, the head convolution and the new head, nothing moved: not a
    // weight, not a running statistic.
    let pretrained = EfficientNetLite0::load_reference(&pretrained_path, &Device::flex()).unwrap();
    let trained = stored_network(&version);
    let mut moved: Vec<String> = Vec::new();
    let mut compare = |name: String, now: Vec<u8>, before: Vec<u8>| {
        let (now, before) = (float_values(&now), float_values(&before));
        assert_eq!(
            now.iter().map(|t| &t.0).collect::<Vec<_>>(),
            before.iter().map(|t| &t.0).collect::<Vec<_>>()
        );
        let pairs: Vec<(f32, f32)> = now
            .iter()
            .zip(&before)
            .flat_map(|(a, b)| a.1.iter().copied().zip(b.1.iter().copied()))
            .collect();
        let changed = pairs.iter().filter(|(a, b)| a != b).count();
        let signs_of_zero = pairs
            .iter()
            .filter(|(a, b)| a == b && a.to_bits() != b.to_bits())
            .count();
        if changed > 0 || signs_of_zero > 0 {
            moved.push(format!(
                "{name}: {changed} values changed, {signs_of_zero} zeros changed sign"
            ));
        }
    };
    compare(
        "stem".into(),
        snapshot(&trained.conv_stem),
        snapshot(&pretrained.conv_stem),
    );
    compare(
        "stem batch norm".into(),
        snapshot(&trained.bn0),
        snapshot(&pretrained.bn0),
    );
    for index in 0..14 {
        compare(
            format!("block {index}"),
            snapshot(&trained.blocks[index]),
            snapshot(&pretrained.blocks[index]),
        );
    }
    assert!(moved.is_empty(), "frozen parts changed: {moved:?}");
    for index in 14..16 {
        let (now, before) = (&trained.blocks[index], &pretrained.blocks[index]);
        assert_ne!(
            snapshot(&now.project_conv),
            snapshot(&before.project_conv),
            "block {index} did not train"
        );
        assert_ne!(
            values(now.bn2.running_mean.value()),
            values(before.bn2.running_mean.value()),
            "block {index}'s batch statistics did not update"
        );
    }
    assert_ne!(
        snapshot(&trained.conv_head),
        snapshot(&pretrained.conv_head)
    );

    // The exported graph computes what burn computes.
    let input: Vec<f32> = (0..2 * 3 * IMAGE_SIZE * IMAGE_SIZE)
        .map(|i| ((i * 7919 % 251) as f32 / 125.0) - 1.0)
        .collect();
    let expected: Vec<f32> = trained
        .forward(Tensor::from_data(
            TensorData::new(input.clone(), [2, 3, IMAGE_SIZE, IMAGE_SIZE]),
            &Device::flex(),
        ))
        .into_data()
        .try_to_vec()
        .unwrap();
    let actual = run_onnx(
        &std::fs::read(version.join("model.onnx")).unwrap(),
        input,
        2,
    );
    assert_eq!(expected.len(), actual.len());
    let scale = expected.iter().map(|v| v.abs()).fold(1.0f32, f32::max);
    let max_diff = expected
        .iter()
        .zip(&actual)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        max_diff / scale < 1e-4,
        "burn and ONNX logits differ by {max_diff} (largest {scale})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_fine_tune_resumes_to_the_same_history() {
    let scratch = tempfile::tempdir().unwrap();
    let pretrained = pretrained_file(scratch.path());
    let data = tempfile::tempdir().unwrap();
    let dataset = dataset(data.path()).await;
    let whole_out = tempfile::tempdir().unwrap();
    let resumed_out = tempfile::tempdir().unwrap();
    let open = |dir: &tempfile::TempDir| {
        ModelRepository::open(dir.path().to_str().unwrap(), &StoreOptions::default()).unwrap()
    };
    // The default batch norm (running statistics) and a backbone rate of its own, so that the
    // optimizer state of both groups has to survive the checkpoint.
    let settings = fine_tune_config(
        3,
        &pretrained,
        FineTune {
            blocks: Some(1),
            ..FineTune::default()
        },
    );

    let whole = train(
        settings.clone(),
        &dataset,
        &open(&whole_out),
        "m",
        false,
        None,
        Box::new(Silent),
    )
    .await
    .unwrap();
    let first_part = train(
        settings.clone(),
        &dataset,
        &open(&resumed_out),
        "m",
        false,
        None,
        Box::new(StopAfter(AtomicUsize::new(1))),
    )
    .await
    .unwrap();
    assert_eq!(first_part.state.epochs_done, 1);
    let resumed = train(
        settings.clone(),
        &dataset,
        &open(&resumed_out),
        "m",
        true,
        None,
        Box::new(Silent),
    )
    .await
    .unwrap();
    assert_eq!(resumed.state.epochs_done, 3);
    assert_eq!(whole.state.history.len(), resumed.state.history.len());
    for (a, b) in whole.state.history.iter().zip(&resumed.state.history) {
        assert!((a.train_loss - b.train_loss).abs() < 1e-6, "{a:?} vs {b:?}");
        assert_eq!(
            a.validation_accuracy, b.validation_accuracy,
            "{a:?} vs {b:?}"
        );
        assert!(
            (a.validation_loss.unwrap() - b.validation_loss.unwrap()).abs() < 1e-6,
            "{a:?} vs {b:?}"
        );
    }

    // Other fine-tuning settings are refused rather than mixed into the checkpoint.
    let mut other = settings;
    other.fine_tune = Some(FineTune {
        blocks: Some(3),
        ..FineTune::default()
    });
    let error = train(
        other,
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

#[tokio::test]
async fn fine_tuning_a_network_without_imagenet_weights_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let dataset = dataset(data.path()).await;
    let out = tempfile::tempdir().unwrap();
    let repository =
        ModelRepository::open(out.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
    let mut settings = config(1);
    settings.architecture = ArchitectureConfig::Resnet { layers: 18 };
    settings.fine_tune = Some(FineTune::default());
    let error = train(
        settings,
        &dataset,
        &repository,
        "m",
        false,
        None,
        Box::new(Silent),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("efficientnet-lite0"), "{error}");
}
