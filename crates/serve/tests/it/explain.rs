//! `POST /v1/explain`: the JSON shape (snapshot) and its agreement with the engine, the PNG
//! format, requested labels, and every error: unknown label, several photos, a model without
//! class activation maps (409), a bad photo, and the API key.

use crate::common::model_parts::{Parts, parts};
use crate::common::{CLASSES, Harness, MODEL, Reply, multi_thread, multipart, photo_bytes};
use base64::Engine as _;
use bestiary_dataset::decode::DecodeLimits;
use bestiary_model::onnx::proto::ModelProto;
use bestiary_testkit::photos::truncated_jpeg;
use image::ImageFormat;
use prost::Message as _;
use serde_json::{Value, json};

/// The answer with its figures replaced by what they are: values vary in the last digits
/// between machines, and the picture is checked separately.
fn shape(body: &Value) -> Value {
    let mut body = body.clone();
    let cells = body["grid"].as_array().map_or(0, Vec::len);
    body["grid"] = json!(format!("[{cells} values]"));
    for key in ["version", "score", "overlay_png_base64", "total_ms", "crop"] {
        body[key] = json!(format!("[{key}]"));
    }
    body
}

#[test]
fn explain_answers_with_the_grid_and_the_overlay_of_the_engine() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|_| {}).await;
        let png = photo_bytes(2, 301, ImageFormat::Png);
        let reply = harness.post("/v1/explain", "image/png", png.clone()).await;
        reply.expect(200);
        let body = reply.json();
        insta::assert_json_snapshot!("explain_json", shape(&body));
        assert_eq!(body["model"], MODEL);
        assert_eq!(body["version"], harness.version.as_str());

        // The engine, asked directly, says the same.
        let direct = harness.models.load_direct(&harness.version).await;
        let preprocessor = direct.preprocessor(DecodeLimits::default());
        let expected = direct.explain_photo(&preprocessor, &png, None).unwrap();
        assert_eq!(body["label"], expected.explanation.label.as_str());
        assert_eq!(body["label"], CLASSES[2]);
        let grid: Vec<f32> = serde_json::from_value(body["grid"].clone()).unwrap();
        assert_eq!(grid, expected.explanation.grid);
        let overlay = base64::engine::general_purpose::STANDARD
            .decode(body["overlay_png_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(overlay, expected.overlay_png);
        let picture = image::load_from_memory(&overlay).unwrap();
        assert_eq!((picture.width(), picture.height()), (96, 80));

        // Another class, and the picture alone.
        let reply = harness
            .post(
                "/v1/explain?label=amber&format=png",
                "image/png",
                png.clone(),
            )
            .await;
        reply.expect(200);
        assert_eq!(reply.header("content-type"), Some("image/png"));
        let requested = direct
            .explain_photo(&preprocessor, &png, Some("amber"))
            .unwrap();
        assert_eq!(reply.body.as_ref(), requested.overlay_png.as_slice());
        let reply = harness
            .post("/v1/explain?label=amber", "image/png", png.clone())
            .await;
        let body = reply.json();
        assert_eq!(body["label"], "amber");
        assert_eq!(body["predicted_label"], CLASSES[2]);

        // The console learns from /v1/models that explanations work.
        let models = harness.get("/v1/models").await.json();
        assert_eq!(models["models"][0]["explanations"], true);
        harness.stop().await;
    });
}

#[test]
fn explain_errors_are_clear() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|_| {}).await;
        let jpeg = photo_bytes(0, 302, ImageFormat::Jpeg);
        let reply = harness
            .post("/v1/explain?label=unicorn", "image/jpeg", jpeg.clone())
            .await;
        reply.expect(400);
        insta::assert_json_snapshot!("explain_error_400_label", reply.json());

        let reply = harness
            .post("/v1/explain?format=gif", "image/jpeg", jpeg.clone())
            .await;
        reply.expect(400);

        let (content_type, body) = multipart(&[
            ("a.jpg", "image/jpeg", &jpeg),
            ("b.jpg", "image/jpeg", &jpeg),
        ]);
        let reply = harness.post("/v1/explain", &content_type, body).await;
        reply.expect(400);
        assert!(
            reply.text().contains("one photo at a time"),
            "{}",
            reply.text()
        );

        let reply = harness
            .post("/v1/explain", "image/jpeg", truncated_jpeg())
            .await;
        reply.expect(422);
        assert_eq!(reply.json()["error_type"], "undecodable_image");
        harness.stop().await;
    });
}

/// The seed CNN of the other tests as a graph exported before explanations existed.
fn without_maps(parts: &Parts) -> Parts {
    let mut model = ModelProto::decode(&parts.onnx[..]).unwrap();
    let graph = model.graph.as_mut().unwrap();
    graph
        .output
        .retain(|output| output.name != "class_activation");
    Parts {
        metadata: parts.metadata.clone(),
        onnx: model.encode_to_vec(),
        weights: parts.weights.clone(),
    }
}

#[test]
fn a_model_without_maps_answers_409_and_says_how_to_fix_it() {
    multi_thread().block_on(async {
        let mut harness = Harness::start_without_model(|_| {}).await;
        let version = harness.models.commit_parts(&without_maps(parts())).await;
        harness
            .server()
            .load_model(Some(&harness.models.version_url(&version)))
            .await
            .expect("the model loads");
        let jpeg = photo_bytes(1, 303, ImageFormat::Jpeg);
        let reply = harness
            .post("/v1/explain", "image/jpeg", jpeg.clone())
            .await;
        reply.expect(409);
        let body = reply.json();
        assert_eq!(body["error_type"], "no_class_activation");
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains("no class-activation output") && message.contains("bestiary export"),
            "{message}"
        );
        // Classification goes on as before, and the console is told to hide the toggle.
        harness
            .post("/v1/classify", "image/jpeg", jpeg)
            .await
            .expect(200);
        let models = harness.get("/v1/models").await.json();
        assert_eq!(models["models"][0]["explanations"], false);
        harness.stop().await;
    });
}

#[test]
fn explain_needs_the_api_key() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|config| config.api_keys = vec!["key".into()]).await;
        let jpeg = photo_bytes(1, 304, ImageFormat::Jpeg);
        let reply = harness
            .post("/v1/explain", "image/jpeg", jpeg.clone())
            .await;
        reply.expect(401);
        let reply = Reply::read(
            harness
                .client
                .post(harness.url("/v1/explain"))
                .header("content-type", "image/jpeg")
                .header("authorization", "Bearer key")
                .body(jpeg)
                .send()
                .await,
        )
        .await;
        reply.expect(200);
        harness.stop().await;
    });
}
