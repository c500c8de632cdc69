//! Class activation maps: exported with every graph, exact (their spatial mean is the logits)
//! in every engine, drawn over the photo, and refused clearly for graphs without them.

use crate::common::{CLASSES, Parts, max_diff, ort_available, parts};
use bestiary_dataset::decode::DecodeLimits;
use bestiary_engine::{EngineError, EngineKind, EngineOptions, LoadedModel, Preprocessor};
use bestiary_model::onnx::describe;
use bestiary_model::onnx::fp16::with_fp16_weights;
use bestiary_model::onnx::proto::ModelProto;
use bestiary_testkit::photos::{encode, photo};
use image::ImageFormat;
use prost::Message as _;

/// Two threads, one instance, never downloading onnxruntime (the tests run offline).
fn offline() -> EngineOptions {
    EngineOptions {
        threads: Some(2),
        allow_download: false,
        ..EngineOptions::default()
    }
}

fn load(parts: &Parts, onnx: &[u8], engine: EngineKind) -> LoadedModel {
    LoadedModel::from_parts(
        parts.metadata.clone(),
        onnx,
        Some(&parts.weights),
        engine,
        &offline(),
        "test:animals",
    )
    .expect("the model loads")
}

fn engines_here() -> Vec<EngineKind> {
    let mut kinds = vec![EngineKind::Tract, EngineKind::Burn];
    if ort_available() {
        kinds.push(EngineKind::Ort);
    }
    kinds
}

/// A generated photo of each class, preprocessed.
fn tensors(parts: &Parts) -> Vec<Vec<f32>> {
    let preprocessor = Preprocessor::new(parts.metadata.input.clone(), DecodeLimits::default());
    (0..CLASSES.len())
        .map(|class| {
            let mut input = vec![0.0; preprocessor.input_len()];
            preprocessor
                .preprocess_image(photo(class, 500 + class as u64, 90, 70), &mut input)
                .unwrap();
            input
        })
        .collect()
}

#[test]
fn the_export_declares_the_maps_after_the_other_outputs() {
    let text = describe(&parts().onnx).unwrap();
    let outputs: Vec<&str> = text.lines().filter(|l| l.starts_with("output")).collect();
    // A 48 px seed CNN of depth 3 pools three times: 6×6 maps.
    assert_eq!(
        outputs,
        [
            "output logits: float32[N, 3]",
            "output probabilities: float32[N, 3]",
            "output features: float32[N, 32]",
            "output class_activation: float32[N, 3, 6, 6]",
        ]
    );
}

#[test]
fn the_maps_average_to_the_logits_in_every_engine() {
    let parts = parts();
    let inputs = tensors(parts);
    let reference = load(parts, &parts.onnx, EngineKind::Burn);
    for kind in engines_here() {
        let model = load(parts, &parts.onnx, kind);
        assert!(model.explains(), "{kind}");
        for (index, input) in inputs.iter().enumerate() {
            let activation = model.engine.explain(input).unwrap();
            assert_eq!((activation.height, activation.width), (6, 6), "{kind}");
            assert_eq!(activation.maps.len(), CLASSES.len() * 36);
            let logits = model.engine.infer(input, 1).unwrap();
            let diff = max_diff(&activation.logits, &logits);
            assert!(
                diff < 1e-5,
                "{kind}, image {index}: logits differ by {diff}"
            );
            let means: Vec<f32> = (0..CLASSES.len())
                .map(|class| activation.map(class).iter().sum::<f32>() / 36.0)
                .collect();
            let scale = logits.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let diff = max_diff(&means, &logits);
            assert!(
                diff / scale < 1e-5,
                "{kind}, image {index}: map means {means:?} vs logits {logits:?}"
            );
            // The maps are not flat: the check above would be trivial if they were.
            let map = activation.map(0);
            let spread = map.iter().fold(f32::MIN, |m, &v| m.max(v))
                - map.iter().fold(f32::MAX, |m, &v| m.min(v));
            assert!(spread > 1e-3, "{kind}: a flat map {map:?}");
            let burn = reference.engine.explain(input).unwrap();
            let diff = max_diff(&activation.maps, &burn.maps);
            assert!(diff / scale < 1e-4, "{kind} vs burn: maps differ by {diff}");
        }
    }
}

#[test]
fn float16_exports_keep_their_maps() {
    let parts = parts();
    let (half, _) = with_fp16_weights(&parts.onnx).unwrap();
    let input = &tensors(parts)[1];
    let full = load(parts, &parts.onnx, EngineKind::Tract)
        .engine
        .explain(input)
        .unwrap();
    let halved = load(parts, &half, EngineKind::Tract)
        .engine
        .explain(input)
        .unwrap();
    let diff = max_diff(&full.maps, &halved.maps);
    assert!(diff < 0.05, "float16 weights move the maps by {diff}");
}

#[test]
fn an_explanation_picks_the_predicted_or_the_requested_class() {
    let parts = parts();
    let model = load(parts, &parts.onnx, EngineKind::Tract);
    let input = &tensors(parts)[2];
    let predicted = model.explain_tensor(input, None).unwrap();
    let classified = model.classify_tensors(input, 1, 3).unwrap().remove(0);
    assert_eq!(predicted.label, classified.label);
    assert_eq!(predicted.class_index, classified.class_index);
    assert!((predicted.score - classified.score).abs() < 1e-6);
    assert_eq!(predicted.grid.len(), 36);
    assert_eq!((predicted.grid_height, predicted.grid_width), (6, 6));

    let other = CLASSES.iter().position(|&c| c != predicted.label).unwrap();
    let requested = model.explain_tensor(input, Some(CLASSES[other])).unwrap();
    assert_eq!(requested.label, CLASSES[other]);
    assert_eq!(requested.class_index, other);
    assert!((requested.score - classified.probabilities[other]).abs() < 1e-6);
    assert!(requested.grid != predicted.grid);

    let error = model.explain_tensor(input, Some("unicorn")).unwrap_err();
    assert!(
        matches!(error, EngineError::UnknownClass { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "the model has no class \"unicorn\"; its classes are amber, teal, violet"
    );
}

#[test]
fn a_photo_explanation_draws_over_the_photo_at_its_shape() {
    let parts = parts();
    let model = load(parts, &parts.onnx, EngineKind::Tract);
    let preprocessor = model.preprocessor(DecodeLimits::default());
    // Wider than tall: the model sees the centre square only.
    let bytes = encode(&photo(0, 77, 160, 90), ImageFormat::Png);
    let explained = model.explain_photo(&preprocessor, &bytes, None).unwrap();
    assert_eq!(explained.overlay.dimensions(), (160, 90));
    assert_eq!((explained.info.width, explained.info.height), (160, 90));
    let [left, top, width, height] = explained.crop;
    // Shrunk to 60 px high (107×60), centre square of 60 × 48/55 px, scaled back up.
    let side = 90.0 * 48.0 / 55.0;
    assert!(
        (width - side).abs() < 0.5 && (height - side).abs() < 0.5,
        "{:?}",
        explained.crop
    );
    assert!((left - (160.0 - side) / 2.0).abs() < 0.5 && (top - (90.0 - side) / 2.0).abs() < 0.5);
    let decoded = image::load_from_memory(&explained.overlay_png).unwrap();
    assert_eq!(decoded.to_rgb8(), explained.overlay);

    // The same tensor as classification, so the same answer.
    let mut input = vec![0.0; preprocessor.input_len()];
    preprocessor.preprocess(&bytes, &mut input).unwrap();
    let classified = model.classify_tensors(&input, 1, 1).unwrap().remove(0);
    assert_eq!(explained.explanation.label, classified.label);
}

#[test]
fn graphs_without_maps_are_refused_with_the_way_out() {
    let parts = parts();
    let mut graph = ModelProto::decode(&parts.onnx[..]).unwrap();
    graph
        .graph
        .as_mut()
        .unwrap()
        .output
        .retain(|output| output.name != "class_activation");
    let old = graph.encode_to_vec();
    let input = &tensors(parts)[0];
    let mut kinds = vec![EngineKind::Tract];
    if ort_available() {
        kinds.push(EngineKind::Ort);
    }
    for kind in kinds {
        let model = load(parts, &old, kind);
        assert!(!model.explains(), "{kind}");
        // Classification is unaffected.
        assert_eq!(model.classify_tensors(input, 1, 1).unwrap().len(), 1);
        let error = model.explain_tensor(input, None).unwrap_err();
        assert!(
            matches!(&error, EngineError::NoClassActivation { model } if model == "test:animals"),
            "{kind}: {error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("no class-activation output") && message.contains("bestiary export"),
            "{message}"
        );
        // An unknown label is still reported as such.
        let error = model.explain_tensor(input, Some("unicorn")).unwrap_err();
        assert!(
            matches!(error, EngineError::UnknownClass { .. }),
            "{error:?}"
        );
    }
}
