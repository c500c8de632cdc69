//! What the engine tests share: a small seed CNN trained for a few steps on generated photos,
//! saved as a model version, and the check for whether onnxruntime can run here.
#![allow(dead_code, reason = "each test binary uses part of these helpers")]

use std::path::Path;
use std::sync::OnceLock;

use bestiary_dataset::decode::DecodeLimits;
use bestiary_engine::model::{ONNX_FILE, WEIGHTS_FILE};
use bestiary_engine::{Preprocessor, find_onnxruntime};
use bestiary_model::{ModelMetadata, ModelRepository};
use bestiary_networks::ArchitectureConfig;
use bestiary_networks::weights::weights_to_bytes;
use bestiary_storage::StoreOptions;
use bestiary_testkit::photos::photo;
use bestiary_train::export::export_onnx;
use bestiary_train::input::input_spec;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;

pub const CLASSES: [&str; 3] = ["amber", "teal", "violet"];

/// A model version's files, in memory.
pub struct Parts {
    pub metadata: ModelMetadata,
    pub onnx: Vec<u8>,
    pub weights: Vec<u8>,
}

/// `architecture` for `size`-pixel inputs, trained for `steps` steps on generated photos of
/// [`CLASSES`] so that its predictions are confident and its batch-norm statistics have moved
/// (which makes the ONNX export's batch-norm folding matter).
pub fn train_parts(architecture: ArchitectureConfig, size: u32, steps: usize) -> Parts {
    let device = Device::flex().autodiff();
    let mut model = architecture.init_seeded(CLASSES.len(), &device, 7);
    let spec = input_spec(size);
    let preprocessor = Preprocessor::new(spec.clone(), DecodeLimits::default());
    let per_image = preprocessor.input_len();
    let count = 8 * CLASSES.len();
    let mut images = vec![0.0f32; count * per_image];
    let mut labels = Vec::with_capacity(count);
    for (index, out) in images.chunks_exact_mut(per_image).enumerate() {
        let class = index % CLASSES.len();
        preprocessor
            .preprocess_image(photo(class, index as u64, 72, 60), out)
            .expect("generated photos preprocess");
        labels.push(class as i64);
    }
    let side = size as usize;
    let loss = CrossEntropyLossConfig::new().init(&device);
    let mut optimizer = AdamWConfig::new().init();
    for _ in 0..steps {
        let batch = Tensor::<4>::from_data(
            TensorData::new(images.clone(), [count, 3, side, side]),
            &device,
        );
        let targets =
            Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [count]), &device);
        let value = loss.forward(model.forward(batch), targets);
        let gradients = GradientsParams::from_grads(value.backward(), &model);
        model = optimizer.step(1e-2, model, gradients);
    }
    let model = model.valid();
    let mut metadata = ModelMetadata::new(
        "animals",
        &architecture.name(),
        CLASSES.map(String::from).to_vec(),
        spec,
    );
    metadata.architecture_config = serde_json::to_value(&architecture).expect("serialises");
    Parts {
        onnx: export_onnx(&model, &metadata).expect("exports"),
        weights: weights_to_bytes(&model).expect("serialises"),
        metadata,
    }
}

/// A seed CNN (width 8, depth 3) at 48 pixels, trained once per test binary.
pub fn parts() -> &'static Parts {
    static PARTS: OnceLock<Parts> = OnceLock::new();
    PARTS.get_or_init(|| train_parts(ArchitectureConfig::SeedCnn { width: 8, depth: 3 }, 48, 25))
}

/// Stores `parts` as a new version of `name` under the folder `root`; returns the version.
pub async fn save(parts: &Parts, root: &Path, name: &str) -> String {
    let repository =
        ModelRepository::open(root.to_str().expect("utf-8 path"), &StoreOptions::default())
            .expect("opens");
    let mut version = repository.begin(name).expect("begins");
    let mut metadata = parts.metadata.clone();
    metadata.version = version.version.clone();
    version
        .put(WEIGHTS_FILE, parts.weights.clone())
        .await
        .expect("writes weights");
    version
        .put(ONNX_FILE, parts.onnx.clone())
        .await
        .expect("writes the graph");
    version.commit(metadata).await.expect("commits").version
}

/// Whether onnxruntime's library is installed. When it is not, the reason is printed and
/// callers skip their onnxruntime checks, unless `BESTIARY_REQUIRE_ORT=1` (as in CI, which
/// installs it with scripts/install-tools): then its absence fails the test.
pub fn ort_available() -> bool {
    match find_onnxruntime() {
        Ok(_) => true,
        Err(missing) => {
            assert!(
                std::env::var("BESTIARY_REQUIRE_ORT").as_deref() != Ok("1"),
                "BESTIARY_REQUIRE_ORT=1 but onnxruntime is missing: {missing}"
            );
            println!("SKIP (onnxruntime checks): {missing}");
            false
        }
    }
}

/// Largest absolute difference between two equally long slices.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared slices differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
