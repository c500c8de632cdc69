//! The same dataset read from SeaweedFS (real S3) and from a local folder gives the same result.

use std::path::Path;

use bestiary_dataset::decode::DecodeLimits;
use bestiary_dataset::{Dataset, DatasetOptions, DatasetReport, Loader, LoaderConfig, inspect};
use bestiary_testkit::photos::{truncated_jpeg, upload_dir, write_class_folders};
use bestiary_testkit::{s3, unique_prefix};

async fn report(url: &str, options: &DatasetOptions) -> (Dataset, DatasetReport) {
    let dataset = Dataset::open(url, options, &|_| {}).await.unwrap();
    let report = inspect(&dataset, 8, &DecodeLimits::default(), &|_, _| {}).await;
    (dataset, report)
}

/// Reports of the two copies differ only in the URL and in the content tags behind the fingerprint.
fn comparable(mut report: DatasetReport) -> DatasetReport {
    report.url.clear();
    report.fingerprint.clear();
    report
}

async fn assert_same_from_s3_and_local(local: &Path, test: &str) -> DatasetReport {
    let env = s3();
    let prefix = unique_prefix(test);
    upload_dir(local, &env.store(&prefix)).await;
    let local_options = DatasetOptions::default();
    let s3_options = DatasetOptions {
        store: env.options(),
        ..DatasetOptions::default()
    };
    let (local_dataset, local_report) = report(local.to_str().unwrap(), &local_options).await;
    let (s3_dataset, s3_report) = report(&env.url(&prefix), &s3_options).await;

    let ids = |d: &Dataset| {
        (
            d.train
                .iter()
                .map(|s| (s.id.clone(), s.label))
                .collect::<Vec<_>>(),
            d.validation
                .iter()
                .map(|s| s.id.clone())
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(ids(&s3_dataset), ids(&local_dataset));
    assert_eq!(comparable(s3_report), comparable(local_report.clone()));

    // The loader delivers identical tensors from both.
    let tensors = |dataset: Dataset| {
        let loader = Loader::new(
            dataset.train.clone(),
            dataset.stores.clone(),
            LoaderConfig::new(32, 16),
        );
        tokio::task::block_in_place(|| {
            loader
                .epoch(0)
                .map(|b| (b.labels, b.images))
                .collect::<Vec<_>>()
        })
    };
    assert!(
        tensors(s3_dataset) == tensors(local_dataset),
        "S3 and local tensors differ"
    );
    local_report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_dataset_with_bad_files_is_the_same_from_s3() {
    let dir = tempfile::tempdir().unwrap();
    write_class_folders(dir.path(), &["cat", "dog", "owl"], 8, (40, 30));
    std::fs::write(dir.path().join("owl/truncated.jpg"), truncated_jpeg()).unwrap();
    std::fs::write(dir.path().join("owl/zero.jpg"), b"").unwrap();
    std::fs::write(dir.path().join("cat/text.jpg"), b"plain text").unwrap();
    let report = assert_same_from_s3_and_local(dir.path(), "generated").await;
    assert_eq!(report.train + report.validation, 24);
    let codes: Vec<&str> = report.bad_files.iter().map(|f| f.code.as_str()).collect();
    assert_eq!(codes, ["not-an-image", "corrupt", "empty"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_animals10_is_the_same_from_s3() {
    let Some(images) = bestiary_testkit::photos::shared_data("animals10/images") else {
        return;
    };
    let report = assert_same_from_s3_and_local(&images, "animals10").await;
    assert_eq!(report.classes.len(), 10);
    assert!(
        report
            .classes
            .iter()
            .all(|c| c.train + c.validation == 24 && c.bad == 0),
        "{report:?}"
    );
    assert!(report.bad_files.is_empty());
}
