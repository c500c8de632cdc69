//! Transfer learning from the ImageNet EfficientNet-Lite0: features once, a new head, a complete
//! version that later runs reuse the cached features of.

use crate::common::config;
use bestiary_dataset::{Dataset, DatasetOptions};
use bestiary_model::ModelRepository;
use bestiary_networks::ArchitectureConfig;
use bestiary_storage::StoreOptions;
use bestiary_testkit::photos::write_class_folders;
use bestiary_train::{Silent, train};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_head_on_the_pretrained_backbone_learns_and_is_stored_whole() {
    let Some(reference) = bestiary_testkit::shared::reference_weights() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    write_class_folders(data.path(), &["amber", "blue", "green"], 10, (48, 48));
    let dataset = Dataset::open(
        data.path().to_str().unwrap(),
        &DatasetOptions::default(),
        &|_| {},
    )
    .await
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let repository =
        ModelRepository::open(out.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
    let mut settings = config(15);
    settings.architecture = ArchitectureConfig::EfficientnetLite0 {
        imagenet_prior: false,
    };
    settings.learning_rate = 1e-2;
    settings.pretrained = Some(reference.to_str().unwrap().to_string());

    let outcome = train(
        settings.clone(),
        &dataset,
        &repository,
        "pets",
        false,
        None,
        Box::new(Silent),
    )
    .await
    .unwrap();
    let accuracy = outcome.metadata.metrics["validation_accuracy"];
    assert!(
        accuracy > 0.6,
        "validation accuracy {accuracy}: {:?}",
        outcome.state.history
    );
    assert_eq!(outcome.metadata.architecture, "efficientnet-lite0");
    assert_eq!(outcome.metadata.input.image_size, 224);
    assert_eq!(outcome.metadata.input.normalization.mean, [127.0; 3]);
    let version = out.path().join("pets").join(&outcome.metadata.version);
    for file in [
        "model.json",
        "weights.safetensors",
        "model.onnx",
        "report.html",
    ] {
        assert!(version.join(file).exists(), "{file} missing");
    }
    // Features are computed once: the cache holds one entry per photo, and a second run that
    // finds them all cached gives the same head.
    let cache = std::fs::metadata(out.path().join("pets/training/features.bin"))
        .unwrap()
        .len();
    assert_eq!(cache as usize, 6 + 30 * (16 + 1280 * 4));
    let again = train(
        settings,
        &dataset,
        &repository,
        "pets",
        false,
        None,
        Box::new(Silent),
    )
    .await
    .unwrap();
    let figures = |history: &[bestiary_train::EpochMetrics]| {
        history
            .iter()
            .map(|m| (m.train_loss, m.validation_accuracy))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        figures(&again.state.history),
        figures(&outcome.state.history)
    );
}
