//! Versioned model folders on local disk and on S3: layout, the latest pointer, resolution.

use bestiary_dataset::transform::Normalization;
use bestiary_model::{InputSpec, ModelMetadata, ModelRepository, resolve};
use bestiary_storage::StoreOptions;
use bestiary_testkit::{s3, unique_prefix};

fn metadata() -> ModelMetadata {
    let input = InputSpec {
        image_size: 128,
        normalization: Normalization::imagenet(),
        crop_fraction: 0.875,
    };
    let mut metadata = ModelMetadata::new(
        "animals",
        "seed-cnn",
        vec!["cat".into(), "dog".into()],
        input,
    );
    metadata.metrics.insert("validation_accuracy".into(), 0.9);
    metadata
}

async fn exercise(repository: ModelRepository, root: &str, options: &StoreOptions) {
    assert_eq!(repository.latest("animals").await.unwrap(), None);
    let mut first = repository.begin("animals").unwrap();
    first
        .put("weights.safetensors", b"w1".to_vec())
        .await
        .unwrap();
    // Until committed, the version is invisible to readers.
    assert!(repository.versions("animals").await.unwrap().is_empty());
    assert_eq!(repository.latest("animals").await.unwrap(), None);
    let committed = first.commit(metadata()).await.unwrap();
    assert_eq!(committed.files, ["weights.safetensors"]);
    assert!(committed.created.ends_with('Z'));

    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut second = repository.begin("animals").unwrap();
    second
        .put("weights.safetensors", b"w2".to_vec())
        .await
        .unwrap();
    let second = second.commit(metadata()).await.unwrap();

    let versions = repository.versions("animals").await.unwrap();
    assert_eq!(
        versions,
        [committed.version.clone(), second.version.clone()],
        "versions sort by age"
    );
    assert_eq!(
        repository.latest("animals").await.unwrap().as_deref(),
        Some(second.version.as_str())
    );
    let read = repository
        .metadata("animals", &committed.version)
        .await
        .unwrap();
    assert_eq!(read, committed);

    for (url, version) in [
        (format!("{root}/animals"), &second.version),
        (format!("{root}/animals/latest"), &second.version),
        (
            format!("{root}/animals/{}", committed.version),
            &committed.version,
        ),
    ] {
        let (repo, name, resolved) = resolve(&url, options).await.unwrap();
        assert_eq!((name.as_str(), &resolved), ("animals", version), "{url}");
        assert_eq!(
            repo.file(&name, &resolved, "weights.safetensors")
                .await
                .unwrap()
                .len(),
            2
        );
    }
    let missing = resolve(&format!("{root}/nothing"), options)
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("no model at"), "{missing}");
    assert!(repository.begin("../x").is_err() && repository.begin("latest").is_err());
}

#[tokio::test]
async fn versions_on_a_local_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap().to_string();
    let options = StoreOptions::default();
    exercise(
        ModelRepository::open(&root, &options).unwrap(),
        &root,
        &options,
    )
    .await;
}

#[tokio::test]
async fn versions_on_s3() {
    let env = s3();
    let root = env.url(&unique_prefix("models"));
    let options = env.options();
    exercise(
        ModelRepository::open(&root, &options).unwrap(),
        &root,
        &options,
    )
    .await;
}

#[tokio::test]
async fn a_model_at_the_top_of_a_bucket_resolves() {
    let env = s3();
    let name = unique_prefix("top");
    let repository = ModelRepository::open(&env.url(""), &env.options()).unwrap();
    let committed = repository
        .begin(&name)
        .unwrap()
        .commit(metadata())
        .await
        .unwrap();
    let (_, resolved_name, version) = resolve(&env.url(&name), &env.options()).await.unwrap();
    assert_eq!((resolved_name, version), (name, committed.version));
}

#[test]
fn newer_or_broken_metadata_is_refused() {
    let mut value = serde_json::to_value(metadata()).unwrap();
    value["format"] = 99.into();
    let error = ModelMetadata::from_json(&serde_json::to_vec(&value).unwrap()).unwrap_err();
    assert!(error.contains("newer"), "{error}");
    assert!(
        ModelMetadata::from_json(b"{}")
            .unwrap_err()
            .contains("invalid model.json")
    );
}
