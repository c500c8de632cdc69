//! A model with a fitted calibration, served: its temperature sets the scores and its
//! "unknown" detector labels what it rejects, in every API, unless the server keeps labels.

use crate::common::model_parts::{Parts, parts};
use crate::common::{CLASSES, Harness, multi_thread, photo_bytes};
use bestiary_model::{Calibration, UnknownDetector};
use image::ImageFormat;

/// The test model with a calibration whose detector accepts photos scoring above `threshold`.
fn calibrated(threshold: f32) -> Parts {
    let mut metadata = parts().metadata.clone();
    metadata.calibration = Some(Calibration {
        temperature: 0.5,
        ece_before: 0.1,
        ece_after: 0.02,
        nll_before: 0.5,
        nll_after: 0.3,
        photos: 30,
        unknown: Some(UnknownDetector {
            method: "energy".into(),
            threshold,
            acceptance: 0.97,
        }),
    });
    Parts {
        metadata,
        onnx: parts().onnx.clone(),
        weights: parts().weights.clone(),
    }
}

async fn serve_calibrated(threshold: f32, keep_label: bool) -> Harness {
    let harness = Harness::start(|config| config.keep_label_when_unknown = keep_label).await;
    harness.models.commit_parts(&calibrated(threshold)).await;
    harness
        .post("/admin/reload", "application/json", "")
        .await
        .expect(200);
    harness
}

#[test]
fn the_detector_labels_rejected_photos_unknown_in_every_api() {
    multi_thread().block_on(async {
        let jpeg = photo_bytes(1, 301, ImageFormat::Jpeg);
        // A plain model first: no unknown fields at all.
        let mut plain = Harness::start(|_| {}).await;
        let answer = plain.post("/v1/classify", "image/jpeg", jpeg.clone()).await;
        let plain_prediction = answer.expect(200).json()["predictions"][0].clone();
        assert!(plain_prediction.get("unknown").is_none(), "{plain_prediction}");
        plain.stop().await;

        // Accepts everything: the class, with sharper scores (temperature 0.5).
        let mut accepting = serve_calibrated(f32::MIN, false).await;
        let answer = accepting.post("/v1/classify", "image/jpeg", jpeg.clone()).await;
        let prediction = answer.expect(200).json()["predictions"][0].clone();
        assert_eq!(prediction["label"], CLASSES[1]);
        assert_eq!(prediction["unknown"], false);
        assert!(prediction["score"].as_f64() > plain_prediction["score"].as_f64());
        accepting.stop().await;

        // Rejects everything: "unknown", the ranking kept, in the native and SageMaker APIs.
        let mut rejecting = serve_calibrated(f32::MAX, false).await;
        let answer = rejecting.post("/v1/classify", "image/jpeg", jpeg.clone()).await;
        let prediction = answer.expect(200).json()["predictions"][0].clone();
        assert_eq!(prediction["label"], "unknown");
        assert_eq!(prediction["unknown"], true);
        assert_eq!(prediction["top_k"][0]["label"], CLASSES[1]);
        assert!(prediction["unknown_score"].is_number());
        let invocation = rejecting
            .post("/invocations", "application/x-image", jpeg.clone())
            .await
            .expect(200)
            .json();
        assert_eq!(invocation["predicted_label"], "unknown");
        assert_eq!(invocation["unknown"], true);
        let infer = rejecting
            .post_json(
                "/v2/models/animals/infer",
                &serde_json::json!({"inputs": [{
                    "name": "image", "shape": [1], "datatype": "BYTES",
                    "data": [base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &jpeg)],
                }]}),
            )
            .await
            .expect(200)
            .json();
        let label = infer["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "label")
            .unwrap()
            .clone();
        assert_eq!(label["data"][0], "unknown");
        assert_eq!(label["parameters"]["unknown"][0], true);
        let usage = rejecting.get("/v1/usage").await.expect(200).json();
        assert_eq!(usage["images_by_label"]["unknown"], 3);
        rejecting.stop().await;

        // --keep-label-when-unknown: the class stays the label, the flag says the rest.
        let mut keeping = serve_calibrated(f32::MAX, true).await;
        let answer = keeping.post("/v1/classify", "image/jpeg", jpeg).await;
        let prediction = answer.expect(200).json()["predictions"][0].clone();
        assert_eq!(prediction["label"], CLASSES[1]);
        assert_eq!(prediction["unknown"], true);
        keeping.stop().await;
    });
}
