//! The HTTP API of a real server on a loopback port: every route's answer (with snapshots of
//! their shapes), every error status with its JSON body, auth, CORS, limits, batching, URIs from
//! the local bucket and from S3 (SeaweedFS), metrics and usage.

use std::time::Duration;

use crate::common::{CLASSES, Harness, MODEL, multi_thread, multipart, photo_bytes};
use base64::Engine as _;
use bestiary_dataset::decode::DecodeLimits;
use bestiary_testkit::photos::truncated_jpeg;
use bestiary_testkit::{s3, unique_prefix};
use image::ImageFormat;
use serde_json::{Value, json};

/// Shapes, not figures: timings, versions, dates, paths and probabilities vary between runs.
macro_rules! assert_shape {
    ($name:expr, $value:expr) => {
        insta::assert_json_snapshot!($name, $value, {
            ".predictions[].timing.preprocess_ms" => "[ms]",
            ".predictions[].timing.queue_ms" => "[ms]",
            ".predictions[].timing.inference_ms" => "[ms]",
            ".predictions[].timing.batch_size" => "[batch size]",
            ".predictions[].score" => "[score]",
            ".predictions[].top_k[].score" => "[score]",
            ".predictions[].version" => "[version]",
            ".timing.total_ms" => "[ms]",
        })
    };
}

#[test]
fn classify_one_photo_agrees_with_the_engine() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|_| {}).await;
        let jpeg = photo_bytes(1, 101, ImageFormat::Jpeg);
        let reply = harness
            .post("/v1/classify", "image/jpeg", jpeg.clone())
            .await;
        reply.expect(200);
        let body = reply.json();
        assert_shape!("classify_one_jpeg", &body);
        let prediction = &body["predictions"][0];
        assert_eq!(prediction["label"], CLASSES[1]);
        assert_eq!(prediction["version"], harness.version.as_str());
        assert_eq!(prediction["model"], MODEL);
        assert_eq!(
            (prediction["width"].as_u64(), prediction["height"].as_u64()),
            (Some(96), Some(80))
        );

        // The same photo through the engine directly gives the same probabilities.
        let direct = harness.models.load_direct(&harness.version).await;
        let preprocessor = direct.preprocessor(DecodeLimits::default());
        let mut input = vec![0.0; direct.input_len()];
        preprocessor.preprocess(&jpeg, &mut input).unwrap();
        let expected = direct.classify_tensors(&input, 1, 3).unwrap().remove(0);
        let invocation = harness
            .post("/invocations", "application/x-image", jpeg)
            .await;
        invocation.expect(200);
        let probabilities: Vec<f32> =
            serde_json::from_value(invocation.json()["prediction"].clone()).unwrap();
        assert!(
            crate::common::model_parts::max_diff(&probabilities, &expected.probabilities) < 1e-5,
            "{probabilities:?} vs {:?}",
            expected.probabilities
        );
        assert!((prediction["score"].as_f64().unwrap() as f32 - expected.score).abs() < 1e-5);
        harness.stop().await;
    });
}

#[test]
fn classify_several_photos_top_k_and_uris_from_the_bucket() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|_| {}).await;
        let jpeg = photo_bytes(0, 102, ImageFormat::Jpeg);
        let png = photo_bytes(1, 103, ImageFormat::Png);
        let webp = photo_bytes(2, 104, ImageFormat::WebP);
        let (content_type, body) = multipart(&[
            ("amber.jpg", "image/jpeg", &jpeg),
            ("teal.png", "image/png", &png),
            ("violet.webp", "image/webp", &webp),
        ]);
        let reply = harness
            .post("/v1/classify?top_k=2", &content_type, body)
            .await;
        reply.expect(200);
        let body = reply.json();
        assert_shape!("classify_multipart_top_2", &body);
        let labels: Vec<&str> = body["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["label"].as_str().unwrap())
            .collect();
        assert_eq!(labels, CLASSES);

        // Keys relative to the bucket, in a sub-folder.
        std::fs::create_dir_all(harness.bucket.path().join("incoming")).unwrap();
        std::fs::write(harness.bucket.path().join("incoming/a.jpg"), &webp).unwrap();
        std::fs::write(harness.bucket.path().join("b.png"), &jpeg).unwrap();
        let reply = harness
            .post_json(
                "/v1/classify?top_k=1",
                &json!({"uris": ["incoming/a.jpg", "b.png"]}),
            )
            .await;
        reply.expect(200);
        let body = reply.json();
        assert_eq!(body["predictions"][0]["image"], "incoming/a.jpg");
        assert_eq!(body["predictions"][0]["label"], CLASSES[2]);
        assert_eq!(body["predictions"][1]["label"], CLASSES[0]);
        assert_eq!(body["predictions"][1]["top_k"].as_array().unwrap().len(), 1);

        // Keys cannot leave the bucket; missing objects are 404.
        std::fs::write(
            harness.bucket.path().parent().unwrap().join("outside.jpg"),
            &jpeg,
        )
        .ok();
        for (uri, status, error_type) in [
            ("../outside.jpg", 400, "invalid_uri"),
            ("/etc/hostname", 400, "bad_request"),
            ("file:///etc/hostname", 400, "bad_request"),
            ("missing.jpg", 404, "object_not_found"),
        ] {
            let reply = harness
                .post_json("/v1/classify", &json!({"uris": [uri]}))
                .await;
            reply.expect(status);
            assert_eq!(reply.json()["error_type"], error_type, "{uri}");
            // Errors name the object as the client gave it, never the bucket's folder.
            let error = reply.json()["error"].as_str().unwrap().to_string();
            let folder = harness.bucket.path().to_str().unwrap();
            assert!(!error.contains(folder), "{uri}: {error}");
        }
        harness.stop().await;
    });
}

#[test]
fn classify_s3_uris_from_seaweedfs() {
    multi_thread().block_on(async {
        let s3 = s3();
        let prefix = unique_prefix("serve-uris");
        let store = s3.store(&prefix);
        store
            .put("photos/teal.jpg", photo_bytes(1, 105, ImageFormat::Jpeg))
            .await
            .unwrap();
        store
            .put("photos/violet.png", photo_bytes(2, 106, ImageFormat::Png))
            .await
            .unwrap();
        let allowed = s3.url(&format!("{prefix}/photos/"));
        let mut harness = Harness::start(|config| {
            config.store = s3.options();
            config.allowed_uri_prefixes = vec![allowed];
        })
        .await;
        let uris = [
            s3.url(&format!("{prefix}/photos/teal.jpg")),
            s3.url(&format!("{prefix}/photos/violet.png")),
        ];
        let reply = harness
            .post_json("/v1/classify", &json!({ "uris": uris }))
            .await;
        reply.expect(200);
        let body = reply.json();
        assert_eq!(body["predictions"][0]["image"], uris[0].as_str());
        assert_eq!(body["predictions"][0]["label"], CLASSES[1]);
        assert_eq!(body["predictions"][1]["label"], CLASSES[2]);

        // SageMaker batch transform: JSON Lines of references in, one line per record out.
        let lines = format!(
            "{{\"source-ref\": \"{}\"}}\n{{\"b64\": \"{}\"}}\n",
            uris[1],
            base64::engine::general_purpose::STANDARD.encode(photo_bytes(
                0,
                107,
                ImageFormat::Jpeg
            ))
        );
        let reply = harness
            .post("/invocations", "application/jsonlines", lines)
            .await;
        reply.expect(200);
        assert_eq!(reply.header("content-type"), Some("application/jsonlines"));
        let records: Vec<Value> = reply
            .text()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0]["predicted_label"], CLASSES[2]);
        assert_eq!(records[1]["predicted_label"], CLASSES[0]);

        let missing = s3.url(&format!("{prefix}/photos/none.jpg"));
        let reply = harness
            .post_json("/v1/classify", &json!({ "uris": [missing] }))
            .await;
        reply.expect(404);
        assert_eq!(reply.json()["error_type"], "object_not_found");
        let error = reply.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(&missing), "{error}");
        assert!(!error.contains(&s3.endpoint), "{error}");

        // The confused deputy: the server's credentials reach the whole SeaweedFS, yet objects
        // outside the bucket and the allowed prefix are refused before any request is made
        // (the object exists; a read would have found it).
        store
            .put("private/secret.jpg", photo_bytes(1, 108, ImageFormat::Jpeg))
            .await
            .unwrap();
        for uri in [
            s3.url(&format!("{prefix}/private/secret.jpg")),
            s3.url(&format!("{prefix}/photos-old/teal.jpg")),
            format!("s3://another-bucket/{prefix}/photos/teal.jpg"),
        ] {
            let body = json!({ "uris": [uris[0].clone(), uri.clone()] });
            let reply = harness.post_json("/v1/classify", &body).await;
            reply.expect(403);
            assert_eq!(reply.json()["error_type"], "uri_not_allowed", "{uri}");
            let lines = format!("{{\"source-ref\": \"{uri}\"}}\n");
            let reply = harness
                .post("/invocations", "application/jsonlines", lines)
                .await;
            reply.expect(403);
        }
        harness.stop().await;
    });
}

#[test]
fn models_sagemaker_and_open_inference_protocol_routes() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|config| config.max_body_bytes = 3 * 1024 * 1024).await;
        let version = harness.version.clone();
        let model_redactions = |value: &Value| {
            let mut value = value.clone();
            for key in ["version", "created", "source", "loaded_at"] {
                if value.get(key).is_some() {
                    value[key] = json!(format!("[{key}]"));
                }
            }
            value
        };

        let reply = harness.get("/v1/models").await;
        reply.expect(200);
        let models = reply.json();
        assert_eq!(models["models"][0]["version"], version.as_str());
        assert_eq!(models["models"][0]["engine"], "tract");
        insta::assert_json_snapshot!("v1_model", model_redactions(&models["models"][0]));
        harness.get(&format!("/v1/models/{MODEL}")).await.expect(200);
        let reply = harness.get("/v1/models/zebras").await;
        reply.expect(404);
        insta::assert_json_snapshot!("error_404_model", reply.json());

        // SageMaker.
        assert_eq!(harness.get("/ping").await.expect(200).json()["status"], "healthy");
        let reply = harness.get("/execution-parameters").await;
        reply.expect(200);
        insta::assert_json_snapshot!("sagemaker_execution_parameters", reply.json());
        let jpeg = photo_bytes(2, 108, ImageFormat::Jpeg);
        let reply = harness.post("/invocations", "image/jpeg", jpeg.clone()).await;
        reply.expect(200);
        insta::assert_json_snapshot!("sagemaker_invocation", reply.json(), {
            ".prediction[]" => "[probability]",
        });
        assert_eq!(reply.json()["predicted_label"], CLASSES[2]);
        let (content_type, body) = multipart(&[
            ("a.jpg", "image/jpeg", &jpeg),
            ("b.jpg", "image/jpeg", &photo_bytes(0, 109, ImageFormat::Jpeg)),
        ]);
        let reply = harness.post("/invocations", &content_type, body.clone()).await;
        reply.expect(200);
        let answers = reply.json();
        assert_eq!(answers.as_array().map(Vec::len), Some(2), "{answers}");
        assert_eq!(answers[1]["predicted_label"], CLASSES[0]);
        let reply = Harness::read_with_accept(&harness, "/invocations", &content_type, body).await;
        reply.expect(200);
        assert_eq!(reply.text().lines().count(), 2);

        // Open Inference Protocol v2.
        assert_eq!(harness.get("/v2/health/live").await.expect(200).json(), json!({"live": true}));
        assert_eq!(harness.get("/v2/health/ready").await.expect(200).json(), json!({"ready": true}));
        let reply = harness.get(&format!("/v2/models/{MODEL}")).await;
        reply.expect(200);
        let mut metadata = reply.json();
        assert_eq!(metadata["versions"], json!([version]));
        metadata["versions"] = json!(["[version]"]);
        insta::assert_json_snapshot!("v2_model_metadata", metadata);
        harness.get(&format!("/v2/models/{MODEL}/versions/{version}")).await.expect(200);
        harness.get(&format!("/v2/models/{MODEL}/ready")).await.expect(200);
        harness.get(&format!("/v2/models/{MODEL}/versions/{version}/ready")).await.expect(200);
        harness.get(&format!("/v2/models/{MODEL}/versions/0000/ready")).await.expect(404);
        let server = harness.get("/v2").await.expect(200).json();
        assert_eq!(server["name"], "bestiary");

        // BYTES: base64 photos.
        let encoded = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let request = json!({
            "id": "request-1",
            "inputs": [{
                "name": "image", "datatype": "BYTES", "shape": [2],
                "data": [encoded(&jpeg), encoded(&photo_bytes(1, 110, ImageFormat::Png))],
            }],
        });
        let reply = harness.post_json(&format!("/v2/models/{MODEL}/infer"), &request).await;
        reply.expect(200);
        let mut answer = reply.json();
        assert_eq!(answer["outputs"][1]["data"], json!([CLASSES[2], CLASSES[1]]));
        assert_eq!(answer["outputs"][0]["parameters"]["labels"], json!(CLASSES));
        answer["model_version"] = json!("[version]");
        insta::assert_json_snapshot!("v2_infer_bytes", answer, {
            ".outputs[0].data[]" => "[probability]",
        });

        // FP32: the tensor the server would make from the photo gives the same answer.
        let direct = harness.models.load_direct(&version).await;
        let mut tensor = vec![0.0f32; direct.input_len()];
        direct
            .preprocessor(DecodeLimits::default())
            .preprocess(&jpeg, &mut tensor)
            .unwrap();
        let side = direct.metadata.input.image_size;
        let request = json!({
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, side, side], "data": tensor}],
            "outputs": [{"name": "label"}],
        });
        let reply = harness
            .post_json(&format!("/v2/models/{MODEL}/versions/{version}/infer"), &request)
            .await;
        reply.expect(200);
        let answer = reply.json();
        assert_eq!(answer["outputs"].as_array().unwrap().len(), 1);
        assert_eq!(answer["outputs"][0]["data"], json!([CLASSES[2]]));

        let wrong_shape = json!({
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 7, 7], "data": [0.0]}],
        });
        let reply = harness.post_json(&format!("/v2/models/{MODEL}/infer"), &wrong_shape).await;
        reply.expect(400);
        insta::assert_json_snapshot!("error_400_infer_shape", reply.json());
        harness.post_json("/v2/models/zebras/infer", &request).await.expect(404);
        harness.stop().await;
    });
}

impl Harness {
    async fn read_with_accept(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> crate::common::Reply {
        crate::common::Reply::read(
            self.client
                .post(self.url(path))
                .header("content-type", content_type)
                .header("accept", "application/jsonlines")
                .body(body)
                .send()
                .await,
        )
        .await
    }
}

#[test]
fn every_error_is_json_with_its_status() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|config| config.max_body_bytes = 64 * 1024).await;
        let jpeg = photo_bytes(0, 111, ImageFormat::Jpeg);

        let reply = harness.post("/v1/classify", "text/plain", "hello").await;
        reply.expect(415);
        insta::assert_json_snapshot!("error_415", reply.json());

        let big = vec![0u8; 65 * 1024];
        let reply = harness
            .post("/v1/classify", "image/jpeg", big.clone())
            .await;
        reply.expect(413);
        insta::assert_json_snapshot!("error_413", reply.json());
        // Far over the limit, the answer still arrives (the body is drained, not reset).
        let reply = harness
            .post("/v1/classify", "image/jpeg", vec![0u8; 4 * 1024 * 1024])
            .await;
        reply.expect(413);
        let (content_type, body) = multipart(&[("big.jpg", "image/jpeg", &big)]);
        harness
            .post("/v1/classify", &content_type, body)
            .await
            .expect(413);

        let reply = harness
            .post("/v1/classify", "image/jpeg", truncated_jpeg())
            .await;
        reply.expect(422);
        insta::assert_json_snapshot!("error_422_corrupt", reply.json());
        let reply = harness
            .post("/v1/classify", "image/png", "not a photo at all")
            .await;
        reply.expect(422);
        assert_eq!(reply.json()["reason"], "not-an-image");
        let (content_type, body) = multipart(&[
            ("good.jpg", "image/jpeg", &jpeg),
            ("empty.jpg", "image/jpeg", b""),
        ]);
        let reply = harness.post("/v1/classify", &content_type, body).await;
        reply.expect(422);
        assert_eq!(reply.json()["image"], "empty.jpg");
        assert_eq!(reply.json()["reason"], "empty");

        let reply = harness
            .post("/v1/classify", "application/json", "{\"urls\": []}")
            .await;
        reply.expect(400);
        insta::assert_json_snapshot!("error_400_json", reply.json());
        let reply = harness
            .post("/v1/classify?top_k=0", "image/jpeg", jpeg.clone())
            .await;
        reply.expect(400);
        harness
            .post("/v1/classify?top_k=many", "image/jpeg", jpeg.clone())
            .await
            .expect(400);
        let reply = harness
            .post_json("/v1/classify", &json!({"uris": []}))
            .await;
        reply.expect(400);

        let reply = harness.get("/nowhere").await;
        reply.expect(404);
        insta::assert_json_snapshot!("error_404_route", reply.json());
        let reply = harness.get("/v1/classify").await;
        reply.expect(405);
        assert_eq!(reply.json()["error_type"], "method_not_allowed");
        harness.stop().await;
    });
}

#[test]
fn admin_routes_are_off_without_keys_and_a_wrong_key_looks_like_none() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|config| config.open_admin = false).await;
        let reply = harness.post("/admin/reload", "application/json", "").await;
        reply.expect(403);
        assert_eq!(reply.json()["error_type"], "admin_closed");
        let reply = harness
            .post_json("/admin/models/animals/serve", &json!({"version": "latest"}))
            .await;
        reply.expect(403);
        // The data routes stay open.
        harness.get("/v1/models").await.expect(200);
        harness.stop().await;

        let mut harness = Harness::start(|config| config.api_keys = vec!["key".into()]).await;
        let missing = harness.get("/v1/models").await;
        let wrong = crate::common::Reply::read(
            harness
                .client
                .get(harness.url("/v1/models"))
                .header("authorization", "Bearer kex")
                .send()
                .await,
        )
        .await;
        missing.expect(401);
        wrong.expect(401);
        assert_eq!(missing.json(), wrong.json());
        assert_eq!(
            missing.header("www-authenticate"),
            wrong.header("www-authenticate")
        );
        harness.stop().await;
    });
}

#[test]
fn api_keys_guard_everything_but_health_ping_and_metrics() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|config| {
            config.api_keys = vec!["first-key".into(), "second-key".into()];
            config.cors_allow_origins = vec!["https://app.example".into()];
        })
        .await;
        let jpeg = photo_bytes(1, 112, ImageFormat::Jpeg);
        let reply = harness
            .post("/v1/classify", "image/jpeg", jpeg.clone())
            .await;
        reply.expect(401);
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        insta::assert_json_snapshot!("error_401", reply.json());
        for path in [
            "/v1/models",
            "/openapi.json",
            "/v1/usage",
            "/execution-parameters",
        ] {
            harness.get(path).await.expect(401);
        }
        harness
            .post("/admin/reload", "application/json", "")
            .await
            .expect(401);
        for path in [
            "/ping",
            "/metrics",
            "/v2/health/live",
            "/v2/health/ready",
            "/docs",
        ] {
            harness.get(path).await.expect(200);
        }
        for (authorization, status) in [
            ("Bearer second-key", 200),
            ("bearer first-key", 200),
            ("Bearer first-ke", 401),
            ("Basic first-key", 401),
            ("first-key", 401),
        ] {
            let reply = crate::common::Reply::read(
                harness
                    .client
                    .post(harness.url("/v1/classify"))
                    .header("content-type", "image/jpeg")
                    .header("authorization", authorization)
                    .body(jpeg.clone())
                    .send()
                    .await,
            )
            .await;
            reply.expect(status);
        }

        // A browser's preflight is answered without a key.
        let preflight = crate::common::Reply::read(
            harness
                .client
                .request(reqwest::Method::OPTIONS, harness.url("/v1/classify"))
                .header("origin", "https://app.example")
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization,content-type",
                )
                .send()
                .await,
        )
        .await;
        assert!(preflight.status < 300, "{preflight:?}");
        assert_eq!(
            preflight.header("access-control-allow-origin"),
            Some("https://app.example")
        );
        harness.stop().await;
    });
}

#[test]
fn before_the_model_loads_the_server_is_live_but_not_ready() {
    multi_thread().block_on(async {
        let mut harness = Harness::start_without_model(|_| {}).await;
        harness.get("/v2/health/live").await.expect(200);
        let reply = harness.get("/ping").await;
        reply.expect(503);
        insta::assert_json_snapshot!("error_503_not_ready", reply.json());
        harness.get("/v2/health/ready").await.expect(503);
        harness
            .post(
                "/v1/classify",
                "image/jpeg",
                photo_bytes(0, 113, ImageFormat::Jpeg),
            )
            .await
            .expect(503);
        harness
            .server()
            .load_model(Some(&harness.models.latest_url()))
            .await
            .unwrap();
        harness.get("/ping").await.expect(200);
        harness.get("/v2/health/ready").await.expect(200);
        harness.stop().await;
    });
}

#[test]
fn a_full_queue_answers_429_at_once_with_retry_after() {
    multi_thread().block_on(async {
        // One image fills the queue, and its batch waits 600 ms for company.
        let mut harness = Harness::start(|config| {
            config.max_queue = 1;
            config.max_batch_size = Some(8);
            config.max_batch_delay = Duration::from_millis(600);
        })
        .await;
        let jpeg = photo_bytes(2, 114, ImageFormat::Jpeg);
        let first = {
            let (client, url, body) = (
                harness.client.clone(),
                harness.url("/v1/classify"),
                jpeg.clone(),
            );
            tokio::spawn(async move {
                crate::common::Reply::read(
                    client
                        .post(url)
                        .header("content-type", "image/jpeg")
                        .body(body)
                        .send()
                        .await,
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let reply = harness
            .post("/v1/classify", "image/jpeg", jpeg.clone())
            .await;
        reply.expect(429);
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "429 must not wait"
        );
        assert_eq!(reply.header("retry-after"), Some("1"));
        insta::assert_json_snapshot!("error_429_queue", reply.json());
        assert_eq!(reply.json()["error_type"], "overloaded");
        first.await.unwrap().expect(200);
        // Two images never fit a queue of one.
        let (content_type, body) = multipart(&[
            ("a.jpg", "image/jpeg", &jpeg),
            ("b.jpg", "image/jpeg", &jpeg),
        ]);
        harness
            .post("/v1/classify", &content_type, body)
            .await
            .expect(413);
        harness.stop().await;
    });
}

#[test]
fn concurrency_limit_and_request_timeout() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|config| {
            config.max_concurrent_requests = 1;
            config.max_batch_size = Some(8);
            config.max_batch_delay = Duration::from_millis(600);
            config.request_timeout = Duration::from_millis(300);
        })
        .await;
        let jpeg = photo_bytes(2, 115, ImageFormat::Jpeg);
        let first = {
            let (client, url, body) = (
                harness.client.clone(),
                harness.url("/v1/classify"),
                jpeg.clone(),
            );
            tokio::spawn(async move {
                crate::common::Reply::read(
                    client
                        .post(url)
                        .header("content-type", "image/jpeg")
                        .body(body)
                        .send()
                        .await,
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reply = harness
            .post("/v1/classify", "image/jpeg", jpeg.clone())
            .await;
        reply.expect(429);
        assert!(reply.header("retry-after").is_some());
        // The first waits 600 ms for its batch, longer than the 300 ms allowed.
        let reply = first.await.unwrap();
        reply.expect(503);
        assert_eq!(reply.json()["error_type"], "timeout");
        // Routes that do not classify are not limited.
        harness.get("/v1/models").await.expect(200);
        harness.stop().await;
    });
}

#[test]
fn concurrent_requests_are_batched_and_metrics_and_usage_count_them() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|config| {
            config.max_batch_size = Some(16);
            config.max_batch_delay = Duration::from_millis(150);
        })
        .await;
        let requests = (0..8u64).map(|i| {
            let (client, url) = (harness.client.clone(), harness.url("/v1/classify"));
            let body = photo_bytes((i % 3) as usize, 200 + i, ImageFormat::Jpeg);
            tokio::spawn(async move {
                crate::common::Reply::read(
                    client
                        .post(url)
                        .header("content-type", "image/jpeg")
                        .body(body)
                        .send()
                        .await,
                )
                .await
            })
        });
        let replies = futures::future::join_all(requests).await;
        let mut largest_batch = 0;
        for (i, reply) in replies.into_iter().enumerate() {
            let reply = reply.unwrap();
            reply.expect(200);
            let prediction = &reply.json()["predictions"][0];
            assert_eq!(prediction["label"], CLASSES[i % 3]);
            largest_batch = largest_batch.max(prediction["timing"]["batch_size"].as_u64().unwrap());
        }
        assert!(
            largest_batch > 1,
            "8 concurrent requests never shared a batch"
        );

        let metrics = harness.get("/metrics").await.expect(200).text();
        for expected in [
            "bestiary_requests_total{route=\"/v1/classify\",status=\"200\"}",
            "bestiary_request_duration_seconds_bucket{route=\"/v1/classify\"",
            "bestiary_queue_duration_seconds_bucket",
            "bestiary_preprocess_duration_seconds_bucket",
            "bestiary_inference_duration_seconds_bucket",
            "bestiary_batch_size_bucket",
            "bestiary_queue_depth",
            "bestiary_images_classified_total{label=\"amber\"}",
            "bestiary_model_info{name=\"animals\"",
            "bestiary_process_cpu_seconds_total",
            "bestiary_process_resident_memory_bytes",
            "bestiary_cpu_seconds_per_image",
            "bestiary_cost_per_1000_images_usd",
        ] {
            assert!(
                metrics.contains(expected),
                "missing {expected} in\n{metrics}"
            );
        }
        // Some batch of more than one image was recorded: the +Inf count exceeds the "1" bucket.
        let bucket = |le: &str| -> f64 {
            metrics
                .lines()
                .find(|l| l.starts_with(&format!("bestiary_batch_size_bucket{{le=\"{le}\"}}")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no batch-size bucket {le}"))
        };
        assert!(bucket("+Inf") > bucket("1"));

        let usage = harness.get("/v1/usage").await.expect(200).json();
        assert_eq!(usage["images_classified"], 8);
        assert_eq!(usage["requests"], 8);
        assert!(usage["batches"].as_u64().unwrap() < 8);
        assert!(usage["cpu_seconds"].as_f64().unwrap() > 0.0);
        let per_image = usage["cpu_seconds_per_image"].as_f64().unwrap();
        let cost = usage["cost_per_1000_images_usd"].as_f64().unwrap();
        let price = usage["cost_per_vcpu_hour_usd"].as_f64().unwrap();
        assert!((cost - per_image * 1000.0 / 3600.0 * price).abs() < 1e-9);
        assert_eq!(usage["images_by_label"]["teal"], 3);
        // The instance is billed for every vCPU all the time served.
        let instance = usage["instance_cost_usd"].as_f64().unwrap();
        let expected = usage["vcpus"].as_f64().unwrap() * usage["uptime_seconds"].as_f64().unwrap()
            / 3600.0
            * price;
        assert!(
            (instance - expected).abs() <= expected * 0.05 + 1e-12,
            "{usage}"
        );
        assert!((0.0..=1.0).contains(&usage["capacity_used"].as_f64().unwrap()));
        insta::assert_json_snapshot!("v1_usage", usage, {
            ".uptime_seconds" => "[figure]",
            ".vcpus" => "[figure]",
            ".instance_cost_usd" => "[figure]",
            ".capacity_used" => "[figure]",
            ".cpu_seconds" => "[figure]",
            ".cpu_seconds_per_image" => "[figure]",
            ".cost_per_1000_images_usd" => "[figure]",
            ".estimated_cost_usd" => "[figure]",
            ".resident_memory_bytes" => "[figure]",
            ".inference_seconds" => "[figure]",
            ".batches" => "[figure]",
            ".mean_batch_size" => "[figure]",
            ".recent.window_seconds" => "[figure]",
            ".recent.images_per_second" => "[figure]",
            ".recent.latency_ms.p50" => "[ms]",
            ".recent.latency_ms.p90" => "[ms]",
            ".recent.latency_ms.p99" => "[ms]",
        });
        harness.stop().await;
    });
}

#[test]
fn openapi_document_and_docs_page() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|_| {}).await;
        let document = harness.get("/openapi.json").await.expect(200).json();
        let paths: Vec<&String> = document["paths"].as_object().unwrap().keys().collect();
        insta::assert_json_snapshot!("openapi_paths", paths);
        assert!(document["components"]["securitySchemes"]["api_key"].is_object());
        let page = harness.get("/docs").await;
        page.expect(200);
        assert!(
            page.header("content-type")
                .unwrap()
                .starts_with("text/html")
        );
        assert!(page.text().contains("/openapi.json"));
        assert!(
            !page.text().contains("https://"),
            "the docs page loads nothing from outside"
        );
        harness.stop().await;
    });
}
