//! Evaluating a freshly trained model: figures that add up, and a report stored beside it.

use crate::common::config;
use bestiary_dataset::{Dataset, DatasetOptions, ImageCache};
use bestiary_model::ModelRepository;
use bestiary_storage::StoreOptions;
use bestiary_testkit::photos::write_class_folders;
use bestiary_train::{EvalSplit, Silent, evaluate, train};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluates_a_trained_model_and_stores_its_report() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let classes = ["amber", "blue", "green"];
    write_class_folders(data.path(), &classes, 20, (40, 40));
    let dataset = Dataset::open(
        data.path().to_str().unwrap(),
        &DatasetOptions::default(),
        &|_| {},
    )
    .await
    .unwrap();
    let repository =
        ModelRepository::open(out.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
    let cache = ImageCache::new(tempfile::tempdir().unwrap().keep()).unwrap();
    let outcome = train(
        config(3),
        &dataset,
        &repository,
        "tiny",
        false,
        Some(cache.clone()),
        Box::new(Silent),
    )
    .await
    .unwrap();

    let folder = out.path().join("tiny").join(&outcome.metadata.version);
    let html = std::fs::read_to_string(folder.join("report.html")).unwrap();
    assert!(html.contains("<svg"));
    for class in classes {
        assert!(html.contains(class), "{class} missing from the report");
    }
    assert!(folder.join("eval.json").exists());
    assert!(outcome.metadata.files.iter().any(|f| f == "report.html"));
    assert!(outcome.metadata.metrics.contains_key("validation_top1"));
    assert!(outcome.metadata.metrics.contains_key("validation_accuracy"));

    let model_url = format!("{}/tiny", out.path().to_str().unwrap());
    let report = evaluate(
        &model_url,
        &dataset,
        EvalSplit::All,
        &StoreOptions::default(),
        Some(cache),
    )
    .await
    .unwrap();
    let images = dataset.train.len() + dataset.validation.len();
    assert_eq!(report.images, images);
    assert!(report.top1 > 0.6, "top-1 {} on {report:?}", report.top1);
    assert_eq!(report.top_k, 3);
    assert!((report.top5 - 1.0).abs() < 1e-12);
    let total: usize = report.confusion.iter().flatten().sum();
    assert_eq!(total, images);
    assert_eq!(report.version, outcome.metadata.version);

    let validation_only = evaluate(
        &model_url,
        &dataset,
        EvalSplit::Validation,
        &StoreOptions::default(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(validation_only.images, dataset.validation.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_the_model_does_not_know_is_named() {
    let data = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    write_class_folders(data.path(), &["amber", "blue"], 6, (24, 24));
    write_class_folders(other.path(), &["amber", "violet"], 3, (24, 24));
    let open = |dir: &tempfile::TempDir| {
        let url = dir.path().to_str().unwrap().to_string();
        async move {
            Dataset::open(&url, &DatasetOptions::default(), &|_| {})
                .await
                .unwrap()
        }
    };
    let dataset = open(&data).await;
    let repository =
        ModelRepository::open(out.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
    let mut config = config(1);
    config.image_size = 16;
    train(
        config,
        &dataset,
        &repository,
        "m",
        false,
        None,
        Box::new(Silent),
    )
    .await
    .unwrap();
    let error = evaluate(
        &format!("{}/m", out.path().to_str().unwrap()),
        &open(&other).await,
        EvalSplit::All,
        &StoreOptions::default(),
        None,
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("'violet'"), "{error}");
}
