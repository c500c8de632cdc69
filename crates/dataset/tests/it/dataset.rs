//! Datasets from local folders, manifests and CSV files: listing, splits, bad files, the loader.

use std::path::Path;

use bestiary_dataset::decode::DecodeLimits;
use bestiary_dataset::transform::AugmentConfig;
use bestiary_dataset::{
    Dataset, DatasetOptions, ImageCache, Layout, Loader, LoaderConfig, SplitConfig, inspect,
};
use bestiary_testkit::photos::{encode, photo, truncated_jpeg, write_class_folders};
use image::ImageFormat;

const CLASSES: [&str; 3] = ["cat", "dog", "bird"];

async fn open(url: &str) -> Dataset {
    Dataset::open(url, &DatasetOptions::default(), &|_| {})
        .await
        .unwrap()
}

fn url(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn class_folders_are_listed_in_alphabetical_order() {
    let dir = tempfile::tempdir().unwrap();
    write_class_folders(dir.path(), &CLASSES, 10, (40, 30));
    let dataset = open(&url(dir.path())).await;
    assert_eq!(dataset.layout, Layout::ClassFolders);
    assert_eq!(dataset.classes, ["bird", "cat", "dog"]);
    assert_eq!(dataset.train.len() + dataset.validation.len(), 30);
    assert!(!dataset.validation.is_empty() && dataset.validation.len() < 15);
    let first = dataset
        .train
        .iter()
        .find(|s| s.id.starts_with("dog/"))
        .unwrap();
    assert_eq!(dataset.classes[first.label], "dog");
}

#[tokio::test]
async fn split_is_stable_when_photos_are_added() {
    let dir = tempfile::tempdir().unwrap();
    write_class_folders(dir.path(), &CLASSES, 20, (16, 16));
    let before = open(&url(dir.path())).await;
    // More photos in every class, with new names.
    for class in CLASSES {
        for i in 100..130 {
            std::fs::write(
                dir.path().join(class).join(format!("new_{i}.jpg")),
                encode(&photo(0, i, 16, 16), ImageFormat::Jpeg),
            )
            .unwrap();
        }
    }
    let after = open(&url(dir.path())).await;
    let ids = |samples: &[bestiary_dataset::Sample]| {
        samples
            .iter()
            .map(|s| s.id.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert!(ids(&before.validation).is_subset(&ids(&after.validation)));
    assert!(ids(&before.train).is_subset(&ids(&after.train)));
    // A different seed moves photos.
    let options = DatasetOptions {
        split: SplitConfig {
            seed: 1,
            ..SplitConfig::default()
        },
        ..DatasetOptions::default()
    };
    let reseeded = Dataset::open(&url(dir.path()), &options, &|_| {})
        .await
        .unwrap();
    assert_ne!(ids(&reseeded.validation), ids(&before.validation));
    assert_ne!(before.fingerprint(), after.fingerprint());
}

#[tokio::test]
async fn bad_files_are_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    write_class_folders(dir.path(), &CLASSES, 4, (32, 24));
    std::fs::write(dir.path().join("cat/truncated.jpg"), truncated_jpeg()).unwrap();
    std::fs::write(dir.path().join("cat/empty.jpg"), b"").unwrap();
    std::fs::write(
        dir.path().join("dog/notes.jpg"),
        b"this is a text file, not a photo\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("dog/README.txt"), b"hello").unwrap();
    std::fs::write(
        dir.path().join("stray.jpg"),
        encode(&photo(0, 1, 8, 8), ImageFormat::Jpeg),
    )
    .unwrap();
    std::fs::write(dir.path().join("bird/.DS_Store"), b"junk").unwrap();

    let dataset = open(&url(dir.path())).await;
    let report = inspect(&dataset, 4, &DecodeLimits::default(), &|_, _| {}).await;
    let bad: Vec<(&str, &str)> = report
        .bad_files
        .iter()
        .map(|f| (f.id.as_str(), f.code.as_str()))
        .collect();
    assert_eq!(
        bad,
        [
            ("cat/empty.jpg", "empty"),
            ("cat/truncated.jpg", "corrupt"),
            ("dog/notes.jpg", "not-an-image")
        ]
    );
    let ignored: Vec<(&str, &str)> = report
        .ignored_files
        .iter()
        .map(|f| (f.id.as_str(), f.code.as_str()))
        .collect();
    assert_eq!(
        ignored,
        [
            ("dog/README.txt", "unknown-extension"),
            ("stray.jpg", "outside-class-folder")
        ]
    );
    assert_eq!(report.train + report.validation, 12);
    let cat = report.classes.iter().find(|c| c.name == "cat").unwrap();
    assert_eq!(cat.bad, 2);
    assert!(report.to_text().contains("cat/truncated.jpg"));

    // The loader skips the same files and still delivers every good photo.
    let mut samples = dataset.train.clone();
    samples.extend(dataset.validation.iter().cloned());
    let loader = Loader::new(samples, dataset.stores.clone(), LoaderConfig::new(16, 4));
    let delivered = tokio::task::spawn_blocking({
        let loader = loader.clone();
        move || loader.epoch(0).map(|b| b.len()).sum::<usize>()
    })
    .await
    .unwrap();
    assert_eq!(delivered, 12);
    let codes: Vec<String> = loader.bad_files().iter().map(|f| f.code.clone()).collect();
    assert_eq!(codes.len(), 3, "{codes:?}");
}

#[tokio::test]
async fn oversized_photos_are_rejected_by_the_pixel_limit() {
    let dir = tempfile::tempdir().unwrap();
    write_class_folders(dir.path(), &["a", "b"], 2, (64, 64));
    std::fs::write(
        dir.path().join("a/huge.png"),
        encode(&photo(0, 0, 400, 300), ImageFormat::Png),
    )
    .unwrap();
    let dataset = open(&url(dir.path())).await;
    let limits = DecodeLimits {
        max_pixels: 100_000,
        ..DecodeLimits::default()
    };
    let report = inspect(&dataset, 2, &limits, &|_, _| {}).await;
    assert_eq!(report.bad_files.len(), 1);
    assert_eq!(
        (
            report.bad_files[0].id.as_str(),
            report.bad_files[0].code.as_str()
        ),
        ("a/huge.png", "too-large")
    );
}

#[tokio::test]
async fn every_supported_format_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let formats = [
        (ImageFormat::Jpeg, "jpg"),
        (ImageFormat::Png, "png"),
        (ImageFormat::WebP, "webp"),
        (ImageFormat::Gif, "gif"),
        (ImageFormat::Bmp, "bmp"),
    ];
    for (i, (format, ext)) in formats.iter().enumerate() {
        let class = if i % 2 == 0 { "a" } else { "b" };
        std::fs::create_dir_all(dir.path().join(class)).unwrap();
        std::fs::write(
            dir.path().join(class).join(format!("p{i}.{ext}")),
            encode(&photo(i, 0, 30, 20), *format),
        )
        .unwrap();
    }
    let dataset = open(&url(dir.path())).await;
    let report = inspect(&dataset, 2, &DecodeLimits::default(), &|_, _| {}).await;
    assert!(report.bad_files.is_empty(), "{:?}", report.bad_files);
    assert_eq!(report.formats.values().sum::<usize>(), 5);
    assert_eq!((report.width.max, report.height.max), (30, 20));
}

#[tokio::test]
async fn manifests_and_csv_files_label_photos() {
    let dir = tempfile::tempdir().unwrap();
    write_class_folders(dir.path(), &["x", "y"], 3, (16, 16));
    let absolute = format!("file://{}/y/y_001.jpg", dir.path().display());
    let manifest = [
        r#"{"source-ref": "x/x_000.jpg", "class": "kitten"}"#.to_string(),
        r#"{"source-ref": "x/x_001.jpg", "animal": 0, "animal-metadata": {"class-name": "kitten"}}"#.to_string(),
        format!(r#"{{"source-ref": "{absolute}", "class": "puppy"}}"#),
        String::new(),
    ]
    .join("\n");
    std::fs::write(dir.path().join("train.manifest"), manifest).unwrap();
    let options = DatasetOptions {
        split: SplitConfig {
            validation_fraction: 0.0,
            seed: 0,
        },
        ..DatasetOptions::default()
    };
    let dataset = Dataset::open(
        &format!("{}/train.manifest", dir.path().display()),
        &options,
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(dataset.layout, Layout::Manifest);
    assert_eq!(dataset.classes, ["kitten", "puppy"]);
    assert_eq!(dataset.class_counts(&dataset.train), [2, 1]);

    std::fs::write(
        dir.path().join("broken.jsonl"),
        "{\"source-ref\": \"x/x_000.jpg\", \"class\": \"a\"}\n{\"class\": \"b\"}\n",
    )
    .unwrap();
    let error = Dataset::open(
        &format!("{}/broken.jsonl", dir.path().display()),
        &options,
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains("line 2: missing \"source-ref\""),
        "{error}"
    );

    std::fs::write(
        dir.path().join("labels.csv"),
        format!("key,label\nx/x_000.jpg,kitten\nx/x_002.jpg,kitten\n{absolute},puppy\nx/missing.jpg,kitten\n"),
    )
    .unwrap();
    let dataset = Dataset::open(
        &format!("{}/labels.csv", dir.path().display()),
        &options,
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(dataset.layout, Layout::Csv);
    assert_eq!(dataset.classes, ["kitten", "puppy"]);
    assert_eq!(dataset.train.len(), 3);
    assert!(
        dataset
            .train
            .iter()
            .all(|s| s.etag.is_some() && s.size.is_some()),
        "listed objects carry their ETag"
    );
    let ignored: Vec<(&str, &str)> = dataset
        .ignored
        .iter()
        .map(|f| (f.id.as_str(), f.code.as_str()))
        .collect();
    assert_eq!(ignored, [("x/missing.jpg", "unreadable")]);
    let report = inspect(&dataset, 2, &DecodeLimits::default(), &|_, _| {}).await;
    assert!(report.bad_files.is_empty(), "{:?}", report.bad_files);

    let manifest = format!(
        "{}\n{}\n",
        r#"{"source-ref": "x/x_000.jpg", "animal": 0, "animal-metadata": {"class-name": "kitten"}}"#,
        r#"{"source-ref": "y/y_000.jpg", "animal": 1, "animal-metadata": {"class-name": "puppy"}}"#
    );
    std::fs::write(dir.path().join("sm.jsonl"), manifest).unwrap();
    let dataset = Dataset::open(
        &format!("{}/sm.jsonl", dir.path().display()),
        &options,
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(dataset.layout, Layout::Manifest);
    assert_eq!(dataset.classes, ["kitten", "puppy"]);
}

#[tokio::test]
async fn train_and_validation_folders_are_used_as_given() {
    let dir = tempfile::tempdir().unwrap();
    write_class_folders(&dir.path().join("train"), &CLASSES, 5, (16, 16));
    write_class_folders(&dir.path().join("validation"), &CLASSES[..2], 2, (16, 16));
    let dataset = open(&url(dir.path())).await;
    assert_eq!(dataset.layout, Layout::TrainValidationFolders);
    assert_eq!((dataset.train.len(), dataset.validation.len()), (15, 4));
    assert_eq!(dataset.classes, ["bird", "cat", "dog"]);

    // An explicit --validation set replaces the hash split.
    let options = DatasetOptions {
        validation_url: Some(url(&dir.path().join("validation"))),
        ..DatasetOptions::default()
    };
    let dataset = Dataset::open(&url(&dir.path().join("train")), &options, &|_| {})
        .await
        .unwrap();
    assert_eq!((dataset.train.len(), dataset.validation.len()), (15, 4));
    assert!(dataset.validation_source.starts_with("explicit"));
}

#[tokio::test]
async fn an_empty_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let error = Dataset::open(&url(dir.path()), &DatasetOptions::default(), &|_| {})
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no photos found"), "{error}");
}

fn loader_config(cache: Option<ImageCache>) -> LoaderConfig {
    let mut config = LoaderConfig::new(24, 5);
    config.augment = Some(AugmentConfig::default());
    config.shuffle = true;
    config.seed = 9;
    config.cache = cache;
    config
}

fn collect(loader: &Loader, epoch: u64) -> Vec<(Vec<u32>, Vec<f32>)> {
    loader.epoch(epoch).map(|b| (b.labels, b.images)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_is_reproducible_and_the_cache_changes_nothing_but_speed() {
    let dir = tempfile::tempdir().unwrap();
    write_class_folders(dir.path(), &CLASSES, 6, (50, 40));
    let dataset = open(&url(dir.path())).await;
    let cache_dir = tempfile::tempdir().unwrap();
    let cached = Loader::new(
        dataset.train.clone(),
        dataset.stores.clone(),
        loader_config(Some(ImageCache::new(cache_dir.path()).unwrap())),
    );
    let plain = Loader::new(
        dataset.train.clone(),
        dataset.stores.clone(),
        loader_config(None),
    );

    let (cached2, plain2) = (cached.clone(), plain.clone());
    let (cold, warm, uncached, other_epoch) = tokio::task::spawn_blocking(move || {
        (
            collect(&cached2, 0),
            collect(&cached2, 0),
            collect(&plain2, 0),
            collect(&plain2, 1),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        cold, uncached,
        "the same seed and epoch give the same batches"
    );
    assert_eq!(
        warm, cold,
        "cached photos give exactly what fresh decoding gives"
    );
    assert_ne!(
        other_epoch, cold,
        "each epoch is shuffled and augmented anew"
    );
    let stats = cached.stats();
    assert_eq!(stats.downloads as usize, dataset.train.len());
    assert_eq!(stats.cache_hits as usize, dataset.train.len());
    let sizes: Vec<usize> = cold
        .iter()
        .map(|(labels, images)| {
            assert_eq!(images.len(), labels.len() * 3 * 24 * 24);
            labels.len()
        })
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), dataset.train.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_photo_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    write_class_folders(dir.path(), &["a", "b"], 2, (32, 32));
    let cache_dir = tempfile::tempdir().unwrap();
    let run = |dataset: Dataset| {
        let mut config = LoaderConfig::new(16, 8);
        config.cache = Some(ImageCache::new(cache_dir.path()).unwrap());
        let loader = Loader::new(dataset.train.clone(), dataset.stores.clone(), config);
        let batches: Vec<Vec<f32>> = loader.epoch(0).map(|b| b.images).collect();
        (batches, loader.stats())
    };
    let options = DatasetOptions {
        split: SplitConfig {
            validation_fraction: 0.0,
            seed: 0,
        },
        ..DatasetOptions::default()
    };
    let first = Dataset::open(&url(dir.path()), &options, &|_| {})
        .await
        .unwrap();
    let (before, _) = tokio::task::block_in_place(|| run(first));
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(
        dir.path().join("a/a_000.jpg"),
        encode(&photo(5, 99, 48, 32), ImageFormat::Jpeg),
    )
    .unwrap();
    let second = Dataset::open(&url(dir.path()), &options, &|_| {})
        .await
        .unwrap();
    let (after, stats) = tokio::task::block_in_place(|| run(second));
    assert_eq!(
        stats.downloads, 1,
        "only the changed photo is downloaded again"
    );
    assert_eq!(stats.cache_hits, 3);
    assert_ne!(before, after);
}

#[tokio::test]
async fn shared_animals10_is_ten_classes_of_24() {
    let Some(images) = bestiary_testkit::photos::shared_data("animals10/images") else {
        return;
    };
    let dataset = open(&url(&images)).await;
    assert_eq!(
        dataset.classes,
        [
            "butterfly",
            "cat",
            "chicken",
            "cow",
            "dog",
            "elephant",
            "horse",
            "sheep",
            "spider",
            "squirrel"
        ]
    );
    assert!(
        dataset
            .class_counts(&dataset.train)
            .iter()
            .zip(dataset.class_counts(&dataset.validation))
            .all(|(t, v)| t + v == 24)
    );
}
