//! Request-path preprocessing gives the tensors of `bestiary eval`, and the DCT-downscaled
//! decoding of large JPEGs gives the same predictions as full decoding.

use crate::common::{CLASSES, max_diff, parts};
use bestiary_dataset::decode::{DecodeError, DecodeLimits};
use bestiary_dataset::{Dataset, DatasetOptions};
use bestiary_engine::{EngineError, EngineKind, EngineOptions, LoadedModel, Preprocessor};
use bestiary_testkit::photos::{encode, photo, write_class_folders};
use bestiary_train::eval::eval_loader;
use image::imageops::FilterType;
use image::{ImageFormat, RgbImage};

fn preprocessor() -> Preprocessor {
    Preprocessor::new(parts().metadata.input.clone(), DecodeLimits::default())
}

/// A large photo whose content is that of a small generated one, so that the model sees at its
/// input scale what it was trained on.
fn large_photo(class: usize, seed: u64, width: u32, height: u32) -> RgbImage {
    let small = photo(class, seed, 96, 72);
    image::imageops::resize(&small, width, height, FilterType::Triangle)
}

fn tensor(preprocessor: &Preprocessor, bytes: &[u8]) -> (Vec<f32>, bestiary_engine::ImageInfo) {
    let mut out = vec![0.0; preprocessor.input_len()];
    let info = preprocessor.preprocess(bytes, &mut out).unwrap();
    (out, info)
}

/// An APP1 segment holding an EXIF block with a single orientation tag.
fn exif_orientation_segment(orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\x00\x2A\x00\x00\x00\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes()); // entry count
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // value padding
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut payload = b"Exif\x00\x00".to_vec();
    payload.extend_from_slice(&tiff);
    let length = u16::try_from(payload.len() + 2).unwrap();
    let mut segment = vec![0xFF, 0xE1];
    segment.extend_from_slice(&length.to_be_bytes());
    segment.extend_from_slice(&payload);
    segment
}

#[test]
fn tensors_match_the_evaluation_loader_exactly() {
    let data = tempfile::tempdir().unwrap();
    write_class_folders(data.path(), &CLASSES, 3, (160, 120));
    // A photo larger than twice the resize target, which the request path would downscale.
    let large = encode(&large_photo(1, 4, 800, 600), ImageFormat::Jpeg);
    std::fs::write(data.path().join(CLASSES[1]).join("large.jpg"), &large).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dataset = runtime
        .block_on(Dataset::open(
            data.path().to_str().unwrap(),
            &DatasetOptions::default(),
            &|_| {},
        ))
        .unwrap();
    let samples: Vec<_> = dataset
        .train
        .iter()
        .chain(&dataset.validation)
        .cloned()
        .collect();
    // The loader spawns its work on the runtime it is created in, and is iterated outside it.
    let _context = runtime.enter();
    let loader = eval_loader(&parts().metadata, samples, dataset.stores.clone(), None);
    let full = preprocessor().with_jpeg_downscale(false);
    let mut compared = 0;
    for batch in loader.epoch(0) {
        let per_image = full.input_len();
        for (expected, &index) in batch.images.chunks_exact(per_image).zip(&batch.samples) {
            let sample = &loader.samples()[index];
            let bytes = std::fs::read(data.path().join(&sample.key)).unwrap();
            let (actual, info) = tensor(&full, &bytes);
            assert_eq!(info.decode_scale, 1);
            assert_eq!(actual, expected, "{}", sample.key);
            compared += 1;
        }
    }
    assert_eq!(compared, 3 * CLASSES.len() + 1);
    // Small photos take the same path with downscaling on.
    let small = encode(&photo(0, 1, 160, 120), ImageFormat::Jpeg);
    assert_eq!(tensor(&preprocessor(), &small), tensor(&full, &small));
}

#[test]
fn downscaled_jpegs_give_the_same_predictions() {
    let parts = parts();
    let options = EngineOptions {
        threads: Some(2),
        instances: 1,
        allow_download: false,
        precision: Default::default(),
    };
    let model = LoadedModel::from_parts(
        parts.metadata.clone(),
        &parts.onnx,
        None,
        EngineKind::Tract,
        &options,
        "test:animals",
    )
    .unwrap();
    let fast = model.preprocessor(DecodeLimits::default());
    let full = fast.clone().with_jpeg_downscale(false);
    // The resize target is 60 px (1.25 × 48): a 1800 px short side allows 1/8 (225 ≥ 120).
    assert_eq!(fast.resize_target(), 60);
    for (class, (width, height), scale) in [
        (0, (2400, 1800), 8),
        (1, (800, 1100), 4),
        (2, (400, 300), 2),
    ] {
        let bytes = encode(&large_photo(class, 9, width, height), ImageFormat::Jpeg);
        let (quick, info) = tensor(&fast, &bytes);
        assert_eq!(info.decode_scale, scale, "{width}x{height}");
        assert_eq!((info.width, info.height), (width, height));
        assert_eq!(info.format, ImageFormat::Jpeg);
        let (slow, info) = tensor(&full, &bytes);
        assert_eq!(info.decode_scale, 1);
        let mean_diff = quick
            .iter()
            .zip(&slow)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / quick.len() as f32;
        assert!(
            mean_diff < 0.03,
            "{width}x{height}: mean tensor difference {mean_diff}"
        );
        let quick = model.classify_tensors(&quick, 1, 1).unwrap().remove(0);
        let slow = model.classify_tensors(&slow, 1, 1).unwrap().remove(0);
        assert_eq!(quick.label, slow.label, "{width}x{height}");
        let diff = max_diff(&quick.probabilities, &slow.probabilities);
        assert!(
            diff < 0.005,
            "{width}x{height}: probabilities differ by {diff}"
        );
    }
}

#[test]
fn downscaling_keeps_the_exif_orientation() {
    let plain = encode(&large_photo(2, 3, 1600, 1200), ImageFormat::Jpeg);
    let mut rotated = plain[..2].to_vec();
    rotated.extend(exif_orientation_segment(6));
    rotated.extend_from_slice(&plain[2..]);

    let fast = preprocessor();
    let (quick, info) = tensor(&fast, &rotated);
    assert_eq!(info.decode_scale, 8);
    assert_eq!((info.width, info.height), (1200, 1600), "displayed upright");
    let (slow, _) = tensor(&fast.clone().with_jpeg_downscale(false), &rotated);
    let (unrotated, _) = tensor(&fast, &plain);
    let mean = |a: &[f32], b: &[f32]| {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
    };
    assert!(mean(&quick, &slow) < 0.05, "{}", mean(&quick, &slow));
    // The stripes make a rotation visible: ignoring the tag would give a different tensor.
    assert!(mean(&quick, &unrotated) > 4.0 * mean(&quick, &slow));
}

#[test]
fn broken_and_oversized_photos_are_refused_on_both_paths() {
    let fast = preprocessor();
    let mut out = vec![0.0; fast.input_len()];
    let large = encode(&large_photo(0, 1, 1600, 1200), ImageFormat::Jpeg);
    for cut in [large.len() / 2, large.len() - 2] {
        let error = fast.preprocess(&large[..cut], &mut out).unwrap_err();
        assert!(
            matches!(error, EngineError::Decode(DecodeError::Corrupt(_))),
            "cut at {cut}: {error:?}"
        );
    }
    let error = fast.preprocess(&[], &mut out).unwrap_err();
    assert!(
        matches!(error, EngineError::Decode(DecodeError::Empty)),
        "{error:?}"
    );

    let limited = Preprocessor::new(
        parts().metadata.input.clone(),
        DecodeLimits {
            max_pixels: 1_000_000,
            ..DecodeLimits::default()
        },
    );
    let error = limited.preprocess(&large, &mut out).unwrap_err();
    assert!(
        matches!(
            error,
            EngineError::Decode(DecodeError::TooLarge {
                width: 1600,
                height: 1200,
                ..
            })
        ),
        "{error:?}"
    );

    let error = fast.preprocess(&large, &mut out[1..]).unwrap_err();
    assert!(matches!(error, EngineError::InputShape { .. }), "{error:?}");
}

#[test]
fn other_formats_are_decoded_in_full() {
    let fast = preprocessor();
    let png = encode(&large_photo(1, 2, 800, 600), ImageFormat::Png);
    let (_, info) = tensor(&fast, &png);
    assert_eq!(info.format, ImageFormat::Png);
    assert_eq!(info.decode_scale, 1);
    assert_eq!((info.width, info.height), (800, 600));
}
