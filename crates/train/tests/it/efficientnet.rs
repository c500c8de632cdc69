//! EfficientNet-Lite0 in burn, loaded from the reference weights, agrees with the reference ONNX
//! graph, and our own export of it agrees with burn.

use std::path::PathBuf;

use bestiary_networks::efficientnet::{CLASSES, EfficientNetLite0, FEATURES, IMAGE_SIZE};
use bestiary_train::export::export_efficientnet_onnx;
use burn::prelude::*;
use rand::{Rng, SeedableRng};

const BATCH: usize = 2;
/// Largest accepted difference between logits of two runtimes.
const TOLERANCE: f32 = 1e-3;

/// The reference model folder (`../shared/models/efficientnet_lite0` beside the project), or
/// `None` with the reason printed, so that the tests skip visibly where it is absent.
fn reference_dir() -> Option<PathBuf> {
    bestiary_testkit::shared::shared_path("models/efficientnet_lite0/efficientnet_lite0.onnx")?;
    bestiary_testkit::shared::reference_weights()?
        .parent()
        .map(PathBuf::from)
}

/// Seeded uniform −1..1 input `[BATCH, 3, 224, 224]`, the range of `(pixel − 127) / 128`.
fn random_input() -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    (0..BATCH * 3 * IMAGE_SIZE * IMAGE_SIZE)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect()
}

/// Runs an ONNX model with tract on `input`; returns the outputs named in `names`, in order.
fn run_onnx(bytes: &[u8], input: Vec<f32>, names: &[&str]) -> Vec<Vec<f32>> {
    use tract_onnx::prelude::*;
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .with_input_fact(0, f32::fact([BATCH, 3, IMAGE_SIZE, IMAGE_SIZE]).into())
        .unwrap();
    model.select_outputs_by_name(names).unwrap();
    let model = model.into_optimized().unwrap().into_runnable().unwrap();
    let tensor = tract_ndarray::Array4::from_shape_vec((BATCH, 3, IMAGE_SIZE, IMAGE_SIZE), input)
        .unwrap()
        .into_tensor();
    let outputs = model.run(tvec!(tensor.into())).unwrap();
    outputs
        .iter()
        .map(|output| {
            output
                .to_plain_array_view::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect()
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// The reference network in burn and its logits and features on `input`.
fn burn_outputs(dir: &std::path::Path, input: &[f32]) -> (EfficientNetLite0, Vec<f32>, Vec<f32>) {
    let device = Device::flex();
    let model =
        EfficientNetLite0::load_reference(&dir.join("efficientnet_lite0.safetensors"), &device)
            .unwrap();
    let images = Tensor::<4>::from_data(
        TensorData::new(input.to_vec(), [BATCH, 3, IMAGE_SIZE, IMAGE_SIZE]),
        &device,
    );
    let features = model.features(images.clone());
    let logits = model.fc.forward(features.clone());
    let whole: Vec<f32> = model.forward(images).into_data().try_to_vec().unwrap();
    let features: Vec<f32> = features.into_data().try_to_vec().unwrap();
    let logits: Vec<f32> = logits.into_data().try_to_vec().unwrap();
    assert_eq!(features.len(), BATCH * FEATURES);
    assert_eq!(logits.len(), BATCH * CLASSES);
    assert_eq!(whole, logits, "forward is the classifier on the features");
    (model, logits, features)
}

#[test]
fn burn_and_our_export_agree_with_the_reference_onnx() {
    let Some(dir) = reference_dir() else { return };
    let input = random_input();
    let (model, logits, features) = burn_outputs(&dir, &input);

    let reference = std::fs::read(dir.join("efficientnet_lite0.onnx")).unwrap();
    let expected = run_onnx(&reference, input.clone(), &["logits", "features"]);
    let logits_diff = max_abs_diff(&logits, &expected[0]);
    let features_diff = max_abs_diff(&features, &expected[1]);
    let scale = expected[0].iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    println!(
        "burn vs reference ONNX: max abs diff logits {logits_diff:e} (largest |logit| {scale}), \
         features {features_diff:e}"
    );
    assert!(
        logits_diff < TOLERANCE,
        "burn logits differ from the reference ONNX by {logits_diff}"
    );
    assert!(
        features_diff < TOLERANCE,
        "burn features differ from the reference ONNX by {features_diff}"
    );

    let ours = export_efficientnet_onnx(&model, "efficientnet-lite0").unwrap();
    let actual = run_onnx(&ours, input, &["logits", "probabilities", "features"]);
    let logits_diff = max_abs_diff(&logits, &actual[0]);
    let features_diff = max_abs_diff(&features, &actual[2]);
    println!(
        "our ONNX export vs burn: max abs diff logits {logits_diff:e}, features {features_diff:e}"
    );
    assert!(
        logits_diff < TOLERANCE,
        "exported logits differ from burn by {logits_diff}"
    );
    assert!(
        features_diff < TOLERANCE,
        "exported features differ from burn by {features_diff}"
    );
    let against_reference = max_abs_diff(&expected[0], &actual[0]);
    println!("our ONNX export vs reference ONNX: max abs diff logits {against_reference:e}");
    assert!(against_reference < TOLERANCE);
    for row in actual[1].chunks(CLASSES) {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to {sum}");
    }
}

#[test]
fn a_state_dict_with_an_unknown_tensor_is_refused() {
    let Some(dir) = reference_dir() else { return };
    let mut bytes = std::fs::read(dir.join("efficientnet_lite0.safetensors")).unwrap();
    // Rename one tensor in the JSON header (same length, so offsets stay valid): it is then both
    // missing and unused, and loading must fail.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + header_len].to_vec()).unwrap();
    assert!(header.contains("\"_fc.bias\""));
    let header = header.replacen("\"_fc.bias\"", "\"_fx.bias\"", 1);
    bytes[8..8 + header_len].copy_from_slice(header.as_bytes());
    let broken = bytes;
    let error = EfficientNetLite0::load_reference_bytes(broken, &Device::flex()).unwrap_err();
    println!("refused: {error}");
    assert!(error.contains("fc"), "{error}");
}

#[test]
fn a_network_with_an_imagenet_prior_exports_the_same_logits_and_reloads_whole() {
    use bestiary_networks::arch::{ArchitectureConfig, Classifier};
    use bestiary_networks::imagenet_prior::ImagenetPrior;
    use bestiary_networks::weights::{weights_from_bytes, weights_to_bytes};
    use burn::nn::LinearConfig;

    // Random weights suffice: the test is about the prior's arithmetic in burn and in ONNX.
    let device = Device::flex();
    let imagenet = EfficientNetLite0::new(&device);
    let groups = vec![
        (151..269).collect(),
        vec![281, 282, 283, 284, 285],
        vec![339],
    ];
    let mut model = EfficientNetLite0::with_classes(3, &device);
    model.prior = Some(ImagenetPrior::new(
        imagenet.fc.clone(),
        &groups,
        0.8,
        &device,
    ));
    model.fc = LinearConfig::new(FEATURES, 3).init(&device);

    let input = random_input();
    let images = Tensor::<4>::from_data(
        TensorData::new(input.clone(), [BATCH, 3, IMAGE_SIZE, IMAGE_SIZE]),
        &device,
    );
    let expected: Vec<f32> = model.forward(images).into_data().try_to_vec().unwrap();
    let head_only: Vec<f32> = model
        .fc
        .forward(model.features(Tensor::from_data(
            TensorData::new(input.clone(), [BATCH, 3, IMAGE_SIZE, IMAGE_SIZE]),
            &device,
        )))
        .into_data()
        .try_to_vec()
        .unwrap();
    assert!(
        max_abs_diff(&expected, &head_only) > 1e-2,
        "the prior changes the logits"
    );

    let metadata = bestiary_model::ModelMetadata::new(
        "m",
        "efficientnet-lite0",
        vec!["dog".into(), "cat".into(), "horse".into()],
        bestiary_train::input::input_spec(IMAGE_SIZE as u32),
    );
    let classifier = Classifier::EfficientnetLite0(model);
    let onnx = bestiary_train::export::export_onnx(&classifier, &metadata).unwrap();
    let actual = run_onnx(&onnx, input.clone(), &["logits"]);
    let diff = max_abs_diff(&expected, &actual[0]);
    println!("burn vs ONNX with the ImageNet prior: max abs diff {diff:e}");
    assert!(diff < TOLERANCE, "exported logits differ by {diff}");

    // Stored weights load back into the blank network the architecture names.
    let bytes = weights_to_bytes(&classifier).unwrap();
    let blank = ArchitectureConfig::EfficientnetLite0 {
        imagenet_prior: true,
    }
    .init(3, &device);
    let reloaded = weights_from_bytes(blank, bytes).unwrap();
    let again: Vec<f32> = reloaded
        .forward(Tensor::from_data(
            TensorData::new(input, [BATCH, 3, IMAGE_SIZE, IMAGE_SIZE]),
            &device,
        ))
        .into_data()
        .try_to_vec()
        .unwrap();
    assert_eq!(again, expected);
}
