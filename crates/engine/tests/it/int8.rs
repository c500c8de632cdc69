//! The int8 graph in onnxruntime: calibrated on generated photos, it agrees with the float graph
//! on others, and versions load it at `--precision int8` or say clearly why not.

use crate::common::{CLASSES, Parts, ort_available, parts, save};
use bestiary_dataset::decode::DecodeLimits;
use bestiary_engine::int8::{INT8_FILE, Precision, RangeMethod, quantize_model};
use bestiary_engine::{EngineError, EngineKind, EngineOptions, LoadedModel, Preprocessor};
use bestiary_model::onnx::quantize::QuantizeOptions;
use bestiary_model::{Int8Graph, ModelRepository};
use bestiary_storage::StoreOptions;
use bestiary_testkit::photos::photo;

fn offline(precision: Precision) -> EngineOptions {
    EngineOptions {
        threads: Some(2),
        instances: 1,
        allow_download: false,
        precision,
    }
}

/// `count` generated photos from `seed` on (cycling through the classes), preprocessed back to
/// back.
fn images(parts: &Parts, count: usize, seed: u64) -> Vec<f32> {
    let preprocessor = Preprocessor::new(parts.metadata.input.clone(), DecodeLimits::default());
    let per_image = preprocessor.input_len();
    let mut input = vec![0.0; count * per_image];
    for (index, out) in input.chunks_exact_mut(per_image).enumerate() {
        let image = photo(index % CLASSES.len(), seed + index as u64, 90, 70);
        preprocessor.preprocess_image(image, out).unwrap();
    }
    input
}

/// The int8 graph of the shared test model, calibrated on 48 generated photos.
fn int8_graph(parts: &Parts, method: RangeMethod) -> Vec<u8> {
    let calibration = images(parts, 48, 5000);
    let int8 = quantize_model(
        &parts.onnx,
        method,
        QuantizeOptions::default(),
        &offline(Precision::Fp32),
        || std::iter::once((calibration.clone(), 48)),
    )
    .expect("the test model quantises");
    assert_eq!(int8.images, 48);
    // Three convs and the head.
    assert_eq!(int8.summary.weighted_nodes, 4, "{:?}", int8.summary);
    int8.onnx
}

fn load(parts: &Parts, onnx: &[u8]) -> LoadedModel {
    LoadedModel::from_parts(
        parts.metadata.clone(),
        onnx,
        None,
        EngineKind::Ort,
        &offline(Precision::Fp32),
        "test:animals",
    )
    .expect("onnxruntime loads the graph")
}

#[test]
fn the_int8_graph_agrees_with_the_float_graph_in_onnxruntime() {
    if !ort_available() {
        return;
    }
    let parts = parts();
    let count = 60;
    let input = images(parts, count, 1);
    let float = load(parts, &parts.onnx);
    let expected = float.engine.infer(&input, count).unwrap();
    for method in [RangeMethod::MinMax, RangeMethod::Percentile(99.99)] {
        let int8 = load(parts, &int8_graph(parts, method));
        let actual = int8.engine.infer(&input, count).unwrap();
        let classes = CLASSES.len();
        let top = |row: &[f32]| {
            (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap()
        };
        let agree = expected
            .chunks(classes)
            .zip(actual.chunks(classes))
            .filter(|(a, b)| top(a) == top(b))
            .count();
        // Photos the float model is unsure of may flip; the rest must not.
        assert!(
            agree * 100 >= count * 95,
            "{method}: top-1 agrees on {agree} of {count}"
        );
        // Logits within 10% of their own spread: 8-bit steps over three conv layers.
        let spread = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = expected
            .iter()
            .zip(&actual)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst <= 0.1 * spread,
            "{method}: worst logit error {worst} of {spread}"
        );
        // And the int8 graph is really different arithmetic, not the float graph again.
        assert!(worst > 0.0, "{method}: identical logits");
    }
}

#[tokio::test]
async fn versions_load_their_int8_graph_only_when_they_have_one() {
    if !ort_available() {
        return;
    }
    let parts = parts();
    let root = tempfile::tempdir().unwrap();
    let version = save(parts, root.path(), "animals").await;
    let url = format!("{}/animals/{version}", root.path().display());
    let store = StoreOptions::default();

    // `auto` without an int8 graph is model.onnx.
    let before = LoadedModel::load(&url, EngineKind::Ort, &offline(Precision::Auto), &store)
        .await
        .unwrap();
    assert_eq!(before.precision, Precision::Fp32);
    let missing = LoadedModel::load(&url, EngineKind::Ort, &offline(Precision::Int8), &store)
        .await
        .err()
        .expect("no int8 graph yet");
    assert!(
        matches!(&missing, EngineError::InvalidModel { reason, .. } if reason.contains("no int8 graph") && reason.contains("export")),
        "{missing}"
    );

    // Record an int8 graph as `bestiary export --int8` does.
    let int8 = int8_graph(parts, RangeMethod::MinMax);
    let repository = ModelRepository::open(root.path().to_str().unwrap(), &store).unwrap();
    let folder = repository
        .store()
        .child(&format!("animals/{version}"))
        .unwrap();
    folder.put(INT8_FILE, int8.clone()).await.unwrap();
    let mut metadata = repository.metadata("animals", &version).await.unwrap();
    metadata.int8 = Some(Int8Graph {
        file: INT8_FILE.to_owned(),
        calibration_data: "generated".to_owned(),
        calibration_photos: 48,
        range_method: "minmax".to_owned(),
        weight_bits: 7,
    });
    folder.put("model.json", metadata.to_json()).await.unwrap();

    let loaded = LoadedModel::load(&url, EngineKind::Ort, &offline(Precision::Int8), &store)
        .await
        .expect("the int8 graph loads");
    let input = images(parts, 3, 77);
    let direct = load(parts, &int8).engine.infer(&input, 3).unwrap();
    assert_eq!(loaded.engine.infer(&input, 3).unwrap(), direct);
    assert_eq!(loaded.precision, Precision::Int8);
    // `auto` now picks the int8 graph in onnxruntime, and model.onnx in tract and burn.
    let auto = LoadedModel::load(&url, EngineKind::Ort, &offline(Precision::Auto), &store)
        .await
        .unwrap();
    assert_eq!(auto.precision, Precision::Int8);
    assert_eq!(auto.engine.infer(&input, 3).unwrap(), direct);
    let tract = LoadedModel::load(&url, EngineKind::Tract, &offline(Precision::Auto), &store)
        .await
        .unwrap();
    assert_eq!(tract.precision, Precision::Fp32);
    // fp32 still loads model.onnx, and burn refuses int8 with a reason.
    let float = LoadedModel::load(&url, EngineKind::Ort, &offline(Precision::Fp32), &store)
        .await
        .unwrap();
    assert_eq!(float.precision, Precision::Fp32);
    assert_ne!(float.engine.infer(&input, 3).unwrap(), direct);
    let burn = LoadedModel::load(&url, EngineKind::Burn, &offline(Precision::Int8), &store)
        .await
        .err()
        .expect("burn runs no int8 graph");
    assert!(burn.to_string().contains("not on burn"), "{burn}");
}

#[test]
fn the_builtin_model_serves_its_int8_graph_by_default_and_fp32_on_request() {
    if !ort_available() {
        return;
    }
    let metadata = bestiary_engine::builtin::metadata();
    let int8 = metadata
        .int8
        .as_ref()
        .expect("the built-in model has an int8 graph");
    assert_eq!(int8.file, INT8_FILE);
    let auto = bestiary_engine::builtin::load(EngineKind::Ort, &offline(Precision::Auto)).unwrap();
    let explicit =
        bestiary_engine::builtin::load(EngineKind::Ort, &offline(Precision::Int8)).unwrap();
    let float = bestiary_engine::builtin::load(EngineKind::Ort, &offline(Precision::Fp32)).unwrap();
    assert_eq!(
        (auto.precision, explicit.precision, float.precision),
        (Precision::Int8, Precision::Int8, Precision::Fp32)
    );
    let preprocessor = Preprocessor::new(metadata.input.clone(), DecodeLimits::default());
    let mut input = vec![0.0; 2 * preprocessor.input_len()];
    for (index, out) in input.chunks_exact_mut(preprocessor.input_len()).enumerate() {
        preprocessor
            .preprocess_image(photo(index, 31 + index as u64, 120, 90), out)
            .unwrap();
    }
    let quantised = auto.engine.infer(&input, 2).unwrap();
    assert_eq!(quantised, explicit.engine.infer(&input, 2).unwrap());
    // Another graph: close to, but not exactly, the float answers.
    assert_ne!(quantised, float.engine.infer(&input, 2).unwrap());
    // tract gains nothing from int8: `auto` runs model.onnx there.
    let tract =
        bestiary_engine::builtin::load(EngineKind::Tract, &offline(Precision::Auto)).unwrap();
    assert_eq!(tract.precision, Precision::Fp32);
}
