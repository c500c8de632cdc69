//! What the bulk tests share: a small trained model (the engine tests' helper, reused), run
//! settings that stay offline, generated photos in a store, and every committed result of an
//! output prefix read back.
#![allow(dead_code, reason = "each test binary uses part of these helpers")]

#[path = "../../../../engine/tests/it/common/mod.rs"]
pub mod model_parts;

use std::time::Duration;

use bestiary_bulk::{BackendConfig, BulkConfig, MergeOptions, ResultRecord, merge};
use bestiary_engine::{EngineKind, EngineOptions};
use bestiary_storage::{Store, StoreOptions};
use bestiary_testkit::photos::{encode, photo};
use image::ImageFormat;
use tempfile::TempDir;

pub use model_parts::CLASSES;

/// A model version on local disk, kept as long as this value lives.
pub struct TestModel {
    pub url: String,
    _dir: TempDir,
}

/// The engine tests' seed CNN (3 classes of generated photos), stored as a model version.
pub async fn small_model() -> TestModel {
    let dir = tempfile::tempdir().expect("temp dir");
    model_parts::save(model_parts::parts(), dir.path(), "animals").await;
    TestModel {
        url: format!("{}/animals", dir.path().display()),
        _dir: dir,
    }
}

/// `model` (the built-in one for `None`) on tract with two threads, never downloading
/// anything; small batches and parts so that short runs still make several parts.
pub fn config(input: &str, out: &str, model: Option<&str>, store: StoreOptions) -> BulkConfig {
    let mut config = BulkConfig::new(input, out);
    config.store = store;
    config.backend = BackendConfig::Local {
        model: model.map(str::to_owned),
        engine: EngineKind::Tract,
        options: EngineOptions {
            threads: Some(1),
            instances: 2,
            allow_download: false,
            precision: Default::default(),
        },
        batch_size: Some(8),
        decode_threads: 2,
        batch_wait: Duration::from_millis(2),
    };
    config.concurrency = 8;
    config.part_size = 5;
    config
}

/// Generated JPEG bytes of class `class` (an index into [`CLASSES`]).
pub fn photo_bytes(class: usize, seed: u64) -> Vec<u8> {
    encode(&photo(class, seed, 96, 80), ImageFormat::Jpeg)
}

/// Uploads `per_class` generated photos of each class as `<class>/<prefix><i>.jpg`; returns
/// their keys with their class names.
pub async fn upload_photos(store: &Store, per_class: usize, prefix: &str) -> Vec<(String, String)> {
    let mut keys = Vec::new();
    for (class, name) in CLASSES.iter().enumerate() {
        for i in 0..per_class {
            let key = format!("{name}/{prefix}{i:03}.jpg");
            store
                .put(&key, photo_bytes(class, 1000 + i as u64))
                .await
                .expect("upload");
            keys.push((key, (*name).to_owned()));
        }
    }
    keys
}

/// Every committed result under `out`, read through `classify --merge`'s merged file.
pub async fn results(out: &str, store: &StoreOptions) -> Vec<ResultRecord> {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().join("merged.jsonl");
    let options = MergeOptions {
        run: None,
        merge_to: Some(target.display().to_string()),
    };
    merge(out, store, &options).await.expect("merges");
    std::fs::read_to_string(&target)
        .expect("merged file")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a result line"))
        .collect()
}

/// The keys of `records`, sorted.
pub fn sorted_keys(records: &[ResultRecord]) -> Vec<String> {
    let mut keys: Vec<String> = records.iter().map(|r| r.key.clone()).collect();
    keys.sort();
    keys
}
