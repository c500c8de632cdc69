//! The engines agree with each other, load models from their folders, serve concurrent callers
//! and fail with clear errors.

use crate::common::{CLASSES, Parts, max_diff, ort_available, parts, save};
use bestiary_dataset::decode::{DecodeError, DecodeLimits};
use bestiary_engine::ort_engine::OrtEngine;
use bestiary_engine::tract_engine::TractEngine;
use bestiary_engine::{Engine, EngineError, EngineKind, EngineOptions, LoadedModel, Preprocessor};
use bestiary_model::ModelError;
use bestiary_model::onnx::GraphBuilder;
use bestiary_model::onnx::proto::{self, AttributeProto, AttributeType, ModelProto, NodeProto};
use bestiary_storage::StoreOptions;
use bestiary_testkit::photos::{photo, truncated_jpeg};
use prost::Message as _;
use rand::{Rng, SeedableRng};

/// Offline options, so that no test downloads onnxruntime.
fn offline() -> EngineOptions {
    EngineOptions {
        threads: Some(2),
        instances: 1,
        allow_download: false,
        precision: Default::default(),
    }
}

fn from_parts(parts: &Parts, engine: EngineKind) -> Result<LoadedModel, EngineError> {
    from_parts_with(parts, engine, &offline())
}

fn from_parts_with(
    parts: &Parts,
    engine: EngineKind,
    options: &EngineOptions,
) -> Result<LoadedModel, EngineError> {
    LoadedModel::from_parts(
        parts.metadata.clone(),
        &parts.onnx,
        Some(&parts.weights),
        engine,
        options,
        "test:animals",
    )
}

/// `count` generated photos (cycling through the classes), preprocessed back to back.
fn images(parts: &Parts, count: usize) -> Vec<f32> {
    let preprocessor = Preprocessor::new(parts.metadata.input.clone(), DecodeLimits::default());
    let per_image = preprocessor.input_len();
    let mut input = vec![0.0; count * per_image];
    for (index, out) in input.chunks_exact_mut(per_image).enumerate() {
        let image = photo(index % CLASSES.len(), 1000 + index as u64, 90, 70);
        preprocessor.preprocess_image(image, out).unwrap();
    }
    input
}

fn engines_here() -> Vec<EngineKind> {
    let mut kinds = vec![EngineKind::Burn, EngineKind::Tract];
    if ort_available() {
        kinds.push(EngineKind::Ort);
    }
    kinds
}

#[test]
fn every_engine_gives_the_same_predictions() {
    let parts = parts();
    let input = images(parts, 6);
    let reference = from_parts(parts, EngineKind::Burn).unwrap();
    assert_eq!(reference.engine.kind(), EngineKind::Burn);
    let expected = reference.classify_tensors(&input, 6, 3).unwrap();
    // The model learnt something, so agreeing on the class is a real check.
    assert!(expected.iter().any(|p| p.score > 0.6), "{expected:?}");

    for kind in engines_here() {
        let model = from_parts(parts, kind).unwrap();
        assert_eq!(model.engine.kind(), kind);
        let batched = model.classify_tensors(&input, 6, 3).unwrap();
        let per_image = model.input_len();
        for (index, (actual, expected)) in batched.iter().zip(&expected).enumerate() {
            assert_eq!(actual.label, expected.label, "{kind}, image {index}");
            let diff = max_diff(&actual.probabilities, &expected.probabilities);
            assert!(
                diff < 1e-4,
                "{kind}, image {index}: probabilities differ by {diff}"
            );
            // One image at a time gives what the batch gave.
            let single = &input[index * per_image..(index + 1) * per_image];
            let alone = model.classify_tensors(single, 1, 3).unwrap().remove(0);
            let diff = max_diff(&alone.probabilities, &actual.probabilities);
            assert!(
                diff < 1e-5,
                "{kind}, image {index}: alone vs batched differ by {diff}"
            );
        }
        model.warm_up().unwrap();
        assert!(model.classify_tensors(&[], 0, 3).unwrap().is_empty());
    }
}

#[test]
fn auto_runs_onnxruntime_when_installed_and_tract_otherwise() {
    let model = from_parts(parts(), EngineKind::Auto).unwrap();
    let expected = if ort_available() {
        EngineKind::Ort
    } else {
        EngineKind::Tract
    };
    assert_eq!(model.engine.kind(), expected, "{}", model.engine.describe());
    if expected == EngineKind::Ort {
        assert!(model.engine.describe().contains("libonnxruntime.so.1.32.0"));
    }
}

#[test]
fn engines_serve_concurrent_callers() {
    let parts = parts();
    let input = images(parts, 4);
    // One instance on two threads, and three single-threaded instances (three onnxruntime
    // sessions, and a three-thread one for lone calls) shared by four callers, whose answers
    // must not depend on which session ran them.
    let several = EngineOptions {
        threads: Some(1),
        instances: 3,
        ..offline()
    };
    for (kind, options) in engines_here()
        .into_iter()
        .flat_map(|kind| [(kind, offline()), (kind, several.clone())])
    {
        let model = from_parts_with(parts, kind, &options).unwrap();
        let per_image = model.input_len();
        let sequential: Vec<Vec<f32>> = input
            .chunks_exact(per_image)
            .map(|image| model.engine.infer(image, 1).unwrap())
            .collect();
        if options.instances > 1 && kind == EngineKind::Ort {
            assert!(
                model.engine.describe().contains("3 sessions")
                    && model
                        .engine
                        .describe()
                        .contains("one of 3 threads for lone calls"),
                "{}",
                model.engine.describe()
            );
        }
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let (model, input, sequential) = (&model, &input, &sequential);
                scope.spawn(move || {
                    for round in 0..5 {
                        let index = (thread + round) % sequential.len();
                        let image = &input[index * per_image..(index + 1) * per_image];
                        let logits = model.engine.infer(image, 1).unwrap();
                        let diff = max_diff(&logits, &sequential[index]);
                        assert!(diff < 1e-5, "{kind}: thread {thread} differs by {diff}");
                    }
                });
            }
        });
        // After a quiet spell (the engine waits 250 ms without overlap), lone calls take
        // the wide session; they must answer as the narrow ones did.
        std::thread::sleep(std::time::Duration::from_millis(400));
        for (index, image) in input.chunks_exact(per_image).enumerate() {
            let logits = model.engine.infer(image, 1).unwrap();
            let diff = max_diff(&logits, &sequential[index]);
            assert!(
                diff < 1e-5,
                "{kind}: lone call on image {index} differs by {diff}"
            );
        }
    }
}

#[tokio::test]
async fn load_resolves_latest_and_versions() {
    let parts = parts();
    let root = tempfile::tempdir().unwrap();
    let first = save(parts, root.path(), "animals").await;
    let second = save(parts, root.path(), "animals").await;
    let root_url = root.path().to_str().unwrap();
    let store = StoreOptions::default();

    for (url, version) in [
        (format!("{root_url}/animals"), &second),
        (format!("{root_url}/animals/latest"), &second),
        (format!("{root_url}/animals/{first}"), &first),
    ] {
        let model = LoadedModel::load(&url, EngineKind::Tract, &offline(), &store)
            .await
            .unwrap();
        assert_eq!(&model.metadata.version, version, "{url}");
        assert_eq!(model.metadata.classes, CLASSES);
        assert!(
            model.source.ends_with(&format!("animals/{version}")),
            "{}",
            model.source
        );
    }

    // burn reads the weights; all engines agree on a model loaded from its folder.
    let input = images(parts, 3);
    let url = format!("{root_url}/animals");
    let burn = LoadedModel::load(&url, EngineKind::Burn, &offline(), &store)
        .await
        .unwrap();
    let expected = burn.classify_tensors(&input, 3, 1).unwrap();
    for kind in engines_here() {
        let model = LoadedModel::load(&url, kind, &offline(), &store)
            .await
            .unwrap();
        let actual = model.classify_tensors(&input, 3, 1).unwrap();
        for (a, e) in actual.iter().zip(&expected) {
            assert!(
                max_diff(&a.probabilities, &e.probabilities) < 1e-4,
                "{kind}"
            );
        }
    }
}

#[tokio::test]
async fn a_missing_model_is_named() {
    let root = tempfile::tempdir().unwrap();
    let url = format!("{}/nothing", root.path().display());
    let error = LoadedModel::load(
        &url,
        EngineKind::Tract,
        &offline(),
        &StoreOptions::default(),
    )
    .await
    .err()
    .expect("no model there");
    assert!(
        matches!(&error, EngineError::Model(ModelError::NotFound { url: named }) if *named == url),
        "{error:?}"
    );
}

#[test]
fn wrong_input_lengths_are_refused_by_every_engine() {
    let parts = parts();
    for kind in engines_here() {
        let model = from_parts(parts, kind).unwrap();
        let per_image = model.input_len();
        let input = vec![0.0; per_image + 5];
        let error = model.classify_tensors(&input, 1, 1).unwrap_err();
        assert!(
            matches!(error, EngineError::InputShape { got, expected, .. } if got == per_image + 5 && expected == per_image),
            "{kind}: {error:?}"
        );
        // Engines check for themselves too, since callers may bypass LoadedModel.
        let error = model
            .engine
            .infer(&vec![0.0; per_image * 2 - 1], 2)
            .unwrap_err();
        assert!(
            matches!(error, EngineError::InputShape { .. }),
            "{kind}: {error:?}"
        );
    }
}

#[test]
fn corrupt_photos_are_decode_errors() {
    let preprocessor = Preprocessor::new(parts().metadata.input.clone(), DecodeLimits::default());
    let mut out = vec![0.0; preprocessor.input_len()];
    let error = preprocessor
        .preprocess(&truncated_jpeg(), &mut out)
        .unwrap_err();
    assert!(
        matches!(error, EngineError::Decode(DecodeError::Corrupt(_))),
        "{error:?}"
    );
    let error = preprocessor
        .preprocess(b"not a photo", &mut out)
        .unwrap_err();
    assert!(
        matches!(error, EngineError::Decode(DecodeError::NotAnImage(_))),
        "{error:?}"
    );
}

#[test]
fn models_that_do_not_fit_are_refused_at_load() {
    let parts = parts();
    let error = LoadedModel::from_parts(
        parts.metadata.clone(),
        &parts.onnx,
        None,
        EngineKind::Burn,
        &offline(),
        "test:no-weights",
    )
    .err()
    .expect("burn needs weights");
    assert!(
        matches!(&error, EngineError::InvalidModel { model, reason } if model == "test:no-weights" && reason.contains("weights.safetensors")),
        "{error}"
    );

    let mut wrong_size = parts.metadata.clone();
    wrong_size.input.image_size = 64;
    for kind in [EngineKind::Tract, EngineKind::Auto, EngineKind::Ort] {
        let error = LoadedModel::from_parts(
            wrong_size.clone(),
            &parts.onnx,
            None,
            kind,
            &offline(),
            "test:wrong-size",
        )
        .err()
        .expect("the graph is for 48 px");
        assert!(
            matches!(&error, EngineError::InvalidModel { reason, .. } if reason.contains("3, 48, 48]") && reason.contains("[N, 3, 64, 64]")),
            "{kind}: {error}"
        );
    }

    let error = LoadedModel::from_parts(
        parts.metadata.clone(),
        b"definitely not onnx",
        None,
        EngineKind::Tract,
        &offline(),
        "test:garbage",
    )
    .err()
    .expect("not a graph");
    assert!(matches!(error, EngineError::InvalidModel { .. }), "{error}");

    let mut wrong_architecture = parts.metadata.clone();
    wrong_architecture.architecture_config =
        serde_json::json!({"kind": "seed-cnn", "width": 16, "depth": 3});
    let error = LoadedModel::from_parts(
        wrong_architecture,
        &parts.onnx,
        Some(&parts.weights),
        EngineKind::Burn,
        &offline(),
        "test:other-weights",
    )
    .err()
    .expect("the weights are for width 8");
    assert!(matches!(error, EngineError::InvalidModel { .. }), "{error}");
}

/// A small classifier graph with random weights rounded to float16 precision, as float32.
fn fp32_graph(size: i64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut random = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| half::f16::from_f32(rng.random_range(-0.5f32..0.5)).to_f32())
            .collect()
    };
    let mut graph = GraphBuilder::new("fp16", "input", 3, size, size);
    let x = graph.input();
    let y = graph.conv(
        &x,
        &random(4 * 3 * 9),
        [4, 3, 3, 3],
        Some(&random(4)),
        [1, 1],
        [1; 4],
        1,
    );
    let y = graph.relu(&y);
    let y = graph.global_average_pool(&y);
    let features = graph.flatten(&y);
    let logits = graph.gemm(&features, &random(4 * 3), 4, 3, Some(&random(3)));
    let probabilities = graph.softmax(&logits, 1);
    graph.output(&logits, "logits", 3);
    graph.output(&probabilities, "probabilities", 3);
    graph.finish("0", &[]).unwrap()
}

/// The same graph stored the way the shipped model is: every initializer as float16, each
/// followed by a `Cast(to=FLOAT)` node producing the float32 value the layers read.
fn fp16_graph(fp32: &[u8]) -> Vec<u8> {
    const DATA_TYPE_FLOAT16: i32 = 10;
    let mut model = ModelProto::decode(fp32).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let mut casts = Vec::new();
    for tensor in &mut graph.initializer {
        assert_eq!(tensor.data_type, proto::DATA_TYPE_FLOAT);
        let float32 = std::mem::take(&mut tensor.name);
        tensor.name = format!("{float32}.fp16");
        tensor.data_type = DATA_TYPE_FLOAT16;
        tensor.raw_data = tensor
            .raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .flat_map(|v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        casts.push(NodeProto {
            name: format!("{float32}.cast"),
            op_type: "Cast".to_owned(),
            input: vec![tensor.name.clone()],
            output: vec![float32],
            attribute: vec![AttributeProto {
                name: "to".to_owned(),
                i: Some(i64::from(proto::DATA_TYPE_FLOAT)),
                r#type: Some(AttributeType::Int.into()),
                ..AttributeProto::default()
            }],
            ..NodeProto::default()
        });
    }
    casts.append(&mut graph.node);
    graph.node = casts;
    model.encode_to_vec()
}

#[test]
fn float16_initialisers_behind_casts_load_in_ort_and_tract() {
    let size = 16usize;
    let fp32 = fp32_graph(size as i64);
    let fp16 = fp16_graph(&fp32);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let input: Vec<f32> = (0..2 * 3 * size * size)
        .map(|_| rng.random_range(-2.0f32..2.0))
        .collect();

    let mut engines: Vec<(Box<dyn Engine>, Box<dyn Engine>)> = vec![(
        Box::new(TractEngine::new(&fp32, size, &offline()).unwrap()),
        Box::new(TractEngine::new(&fp16, size, &offline()).unwrap()),
    )];
    if ort_available() {
        let library = bestiary_engine::find_onnxruntime().unwrap();
        engines.push((
            Box::new(OrtEngine::new(&fp32, &library, &offline()).unwrap()),
            Box::new(OrtEngine::new(&fp16, &library, &offline()).unwrap()),
        ));
    }
    let reference = engines[0].0.infer(&input, 2).unwrap();
    assert_eq!(reference.len(), 2 * 3);
    for (float32, float16) in &engines {
        let kind = float16.kind();
        let diff = max_diff(
            &float16.infer(&input, 2).unwrap(),
            &float32.infer(&input, 2).unwrap(),
        );
        assert!(
            diff < 1e-5,
            "{kind}: float16-stored graph differs by {diff}"
        );
        let diff = max_diff(&float16.infer(&input, 2).unwrap(), &reference);
        assert!(diff < 1e-4, "{kind}: differs from tract by {diff}");
    }
}

#[test]
fn the_builtin_float16_model_runs_alike_in_ort_and_tract() {
    use bestiary_engine::builtin;
    let tract = builtin::load(EngineKind::Tract, &offline()).unwrap();
    let preprocessor = tract.preprocessor(DecodeLimits::default());
    let mut photos = vec![bestiary_testkit::photos::encode(
        &photo(3, 1, 320, 240),
        image::ImageFormat::Jpeg,
    )];
    let cat = bestiary_testkit::photos::shared_data("animals10/images/cat");
    if let Some(folder) = &cat {
        let mut files: Vec<_> = std::fs::read_dir(folder)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        photos.push(std::fs::read(&files[0]).unwrap());
    }
    let per_image = preprocessor.input_len();
    let mut input = vec![0.0; photos.len() * per_image];
    for (bytes, out) in photos.iter().zip(input.chunks_exact_mut(per_image)) {
        preprocessor.preprocess(bytes, out).unwrap();
    }
    let expected = tract.classify_tensors(&input, photos.len(), 1).unwrap();
    if cat.is_some() {
        assert_eq!(expected[1].label, "cat");
    }
    if ort_available() {
        let ort = builtin::load(EngineKind::Ort, &offline()).unwrap();
        let actual = ort.classify_tensors(&input, photos.len(), 1).unwrap();
        for (a, e) in actual.iter().zip(&expected) {
            assert_eq!(a.label, e.label);
            let diff = max_diff(&a.probabilities, &e.probabilities);
            assert!(diff < 1e-4, "ort and tract differ by {diff}");
        }
    }
}
