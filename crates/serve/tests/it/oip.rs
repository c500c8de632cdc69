//! The Open Inference Protocol's binary tensor data extension on a real server: FP32 tensors
//! and BYTES photos sent as raw bytes after the JSON header, outputs returned the same way
//! (`binary_data`, `binary_data_output`), the classification extension, and every declared
//! size checked before anything is allocated (the 6 TB shape of issue #15 included).

use std::time::{Duration, Instant};

use crate::common::{CLASSES, Harness, MODEL, Reply, multi_thread, photo_bytes};
use base64::Engine as _;
use bestiary_dataset::decode::DecodeLimits;
use bestiary_serve::routes::oip::codec::{
    decode_bytes_elements, decode_fp32, encode_bytes_elements, encode_fp32,
};
use bytes::Bytes;
use image::ImageFormat;
use serde_json::{Value, json};

/// A body with the binary extension: the JSON request, then each tensor's bytes.
fn binary_body(request: &Value, tensors: &[&[u8]]) -> (Vec<u8>, usize) {
    let mut body = request.to_string().into_bytes();
    let header_length = body.len();
    for tensor in tensors {
        body.extend_from_slice(tensor);
    }
    (body, header_length)
}

impl Harness {
    /// POSTs `body` as `tritonclient` does: no Content-Type, and the header length when given.
    async fn post_infer(&self, path: &str, body: Vec<u8>, header_length: Option<&str>) -> Reply {
        let mut request = self.client.post(self.url(path)).body(body);
        if let Some(length) = header_length {
            request = request.header("Inference-Header-Content-Length", length);
        }
        Reply::read(request.send().await).await
    }
}

/// A response's JSON header and its binary section.
fn split(reply: &Reply) -> (Value, Bytes) {
    match reply.header("inference-header-content-length") {
        None => (reply.json(), Bytes::new()),
        Some(length) => {
            let length: usize = length.parse().expect("a length");
            let header = serde_json::from_slice(&reply.body[..length]).expect("JSON header");
            (header, reply.body.slice(length..))
        }
    }
}

/// The binary bytes of each output of a split response, by name, checking that the
/// `binary_data_size`s tile the binary section exactly.
fn binary_outputs(header: &Value, binary: &Bytes) -> Vec<(String, Bytes)> {
    let mut offset = 0;
    let mut outputs = Vec::new();
    for output in header["outputs"].as_array().unwrap() {
        if let Some(size) = output["parameters"]["binary_data_size"].as_u64() {
            assert!(output.get("data").is_none(), "{output}");
            let end = offset + size as usize;
            outputs.push((
                output["name"].as_str().unwrap().to_string(),
                binary.slice(offset..end),
            ));
            offset = end;
        }
    }
    assert_eq!(offset, binary.len(), "the binary outputs fill the section");
    outputs
}

fn redact_version(mut header: Value) -> Value {
    header["model_version"] = json!("[version]");
    header
}

#[test]
fn oip_binary_tensors_in_and_out_agree_with_json() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|_| {}).await;
        let version = harness.version.clone();
        let infer = format!("/v2/models/{MODEL}/infer");
        let server = harness.get("/v2").await.expect(200).json();
        assert_eq!(server["extensions"], json!(["binary_tensor_data", "classification"]));

        // FP32: two photos pre-processed as the server does, sent as raw little-endian floats.
        let photos = [
            photo_bytes(2, 301, ImageFormat::Jpeg),
            photo_bytes(0, 302, ImageFormat::Png),
        ];
        let direct = harness.models.load_direct(&version).await;
        let side = direct.metadata.input.image_size;
        let mut tensor = vec![0.0f32; 2 * direct.input_len()];
        for (photo, out) in photos.iter().zip(tensor.chunks_exact_mut(direct.input_len())) {
            direct.preprocessor(DecodeLimits::default()).preprocess(photo, out).unwrap();
        }
        let fp32 = encode_fp32(&tensor);
        let request = json!({
            "id": "binary-1",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, side, side],
                        "parameters": {"binary_data_size": fp32.len()}}],
            "parameters": {"binary_data_output": true},
        });
        let (body, length) = binary_body(&request, &[&fp32]);
        let reply = harness.post_infer(&infer, body, Some(&length.to_string())).await;
        reply.expect(200);
        assert_eq!(reply.header("content-type"), Some("application/octet-stream"));
        let (header, binary) = split(&reply);
        insta::assert_json_snapshot!("oip_binary_fp32_response", redact_version(header.clone()));
        let outputs = binary_outputs(&header, &binary);
        assert_eq!(outputs[0].0, "probabilities");
        let probabilities = decode_fp32(&outputs[0].1);
        assert_eq!(outputs[1].0, "label");
        let labels = decode_bytes_elements(&outputs[1].1, 2).unwrap();
        assert_eq!(labels, [CLASSES[2].as_bytes(), CLASSES[0].as_bytes()]);

        // The same tensor in JSON gives the same outputs, bit for bit.
        let request = json!({
            "id": "json-1",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, side, side],
                        "data": tensor}],
        });
        let reply = harness.post_json(&infer, &request).await;
        reply.expect(200);
        assert_eq!(reply.header("inference-header-content-length"), None);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let answer = reply.json();
        let json_probabilities: Vec<f32> = answer["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(json_probabilities, probabilities);
        assert_eq!(answer["outputs"][1]["data"], json!([CLASSES[2], CLASSES[0]]));
        assert_eq!(answer["outputs"][0]["parameters"], header["outputs"][0]["parameters"]
            .as_object()
            .map(|p| {
                let mut p = p.clone();
                p.remove("binary_data_size");
                json!(p)
            })
            .unwrap());

        // BYTES: photos as raw bytes; probabilities back in JSON, the label in binary.
        let elements = encode_bytes_elements(photos.iter().map(Vec::as_slice));
        let request = json!({
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                        "parameters": {"binary_data_size": elements.len()}}],
            "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": false}},
                {"name": "label", "parameters": {"binary_data": true}},
            ],
        });
        let (body, length) = binary_body(&request, &[&elements]);
        let reply = harness
            .post_infer(&format!("/v2/models/{MODEL}/versions/{version}/infer"), body, Some(&length.to_string()))
            .await;
        reply.expect(200);
        let (header, binary) = split(&reply);
        insta::assert_json_snapshot!("oip_binary_bytes_mixed_response", redact_version(header.clone()), {
            ".outputs[0].data[]" => "[probability]",
        });
        let outputs = binary_outputs(&header, &binary);
        assert_eq!(outputs.len(), 1);
        assert_eq!(
            decode_bytes_elements(&outputs[0].1, 2).unwrap(),
            [CLASSES[2].as_bytes(), CLASSES[0].as_bytes()]
        );
        // Photos decoded from bytes and from the tensor agree (the same pre-processing).
        let from_photos: Vec<f32> = header["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        for (a, b) in from_photos.iter().zip(&probabilities) {
            assert!((a - b).abs() < 1e-5, "{from_photos:?} vs {probabilities:?}");
        }

        // Binary elements may also be the base64 text that JSON carries.
        let encoded: Vec<String> = photos
            .iter()
            .map(|p| base64::engine::general_purpose::STANDARD.encode(p))
            .collect();
        let elements = encode_bytes_elements(encoded.iter().map(String::as_bytes));
        let request = json!({
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2, 1],
                        "parameters": {"binary_data_size": elements.len()}}],
            "outputs": [{"name": "label"}],
        });
        let (body, length) = binary_body(&request, &[&elements]);
        let reply = harness.post_infer(&infer, body, Some(&length.to_string())).await;
        reply.expect(200);
        assert_eq!(reply.json()["outputs"][0]["data"], json!([CLASSES[2], CLASSES[0]]));

        // The classification extension: the k most probable classes, as JSON or binary.
        let request = json!({
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": encoded}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
        });
        let reply = harness.post_json(&infer, &request).await;
        reply.expect(200);
        let answer = reply.json();
        assert_eq!(answer["outputs"][0]["shape"], json!([2, 2]));
        assert_eq!(answer["outputs"][0]["datatype"], "BYTES");
        let top: Vec<&str> = answer["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(top[0].ends_with(&format!(":2:{}", CLASSES[2])), "{top:?}");
        assert!(top[2].ends_with(&format!(":0:{}", CLASSES[0])), "{top:?}");
        let score = |entry: &str| entry.split(':').next().unwrap().parse::<f32>().unwrap();
        assert!(score(top[0]) >= score(top[1]));
        assert_eq!(score(top[0]), probabilities[2]);
        harness.stop().await;
    });
}

#[test]
fn oip_declared_sizes_are_checked_before_anything_is_allocated() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|config| config.max_body_bytes = 256 * 1024).await;
        let infer = format!("/v2/models/{MODEL}/infer");
        let side = 48;
        let error = |reply: &Reply, status: u16| {
            reply.expect(status);
            reply.json()
        };

        // Issue #15: 10 million images declared, one number sent. This used to abort the
        // process trying to allocate terabytes; now it is a quick 413, JSON or binary.
        let started = Instant::now();
        let huge = json!({"inputs": [{"name": "input", "datatype": "FP32",
            "shape": [10_000_000, 3, side, side], "data": [0.0]}]});
        let reply = harness.post_json(&infer, &huge).await;
        insta::assert_json_snapshot!("oip_error_413_declared_batch", error(&reply, 413));
        let huge = json!({"inputs": [{"name": "input", "datatype": "FP32",
            "shape": [10_000_000, 3, side, side], "parameters": {"binary_data_size": 4}}]});
        let (body, length) = binary_body(&huge, &[&[0; 4]]);
        harness.post_infer(&infer, body, Some(&length.to_string())).await.expect(413);
        // The shape of the issue (224 × 224) does not fit this model's input at all.
        let issue = json!({"inputs": [{"name": "input", "datatype": "FP32",
            "shape": [10_000_000, 3, 224, 224], "data": [0.0]}]});
        harness.post_json(&infer, &issue).await.expect(400);
        // BYTES counts that overflow, or exceed the queue.
        for shape in [json!([i64::MAX, i64::MAX]), json!([1_000_000_000_000i64]), json!([4096])] {
            let request = json!({"inputs": [{"name": "image", "datatype": "BYTES",
                "shape": shape, "data": ["aGk="]}]});
            harness.post_json(&infer, &request).await.expect(413);
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        harness.get("/v2/health/live").await.expect(200);

        // A batch within the limits with too little data is a mismatch.
        let short = json!({"inputs": [{"name": "input", "datatype": "FP32",
            "shape": [2, 3, side, side], "data": [0.0, 1.0]}]});
        let reply = harness.post_json(&infer, &short).await;
        insta::assert_json_snapshot!("oip_error_400_data_count", error(&reply, 400));
        let values = 3 * side * side;
        let fp32 = encode_fp32(&vec![0.0; values]);
        let request = json!({"inputs": [{"name": "input", "datatype": "FP32",
            "shape": [2, 3, side, side], "parameters": {"binary_data_size": fp32.len()}}]});
        let (body, length) = binary_body(&request, &[&fp32]);
        let reply = harness.post_infer(&infer, body, Some(&length.to_string())).await;
        insta::assert_json_snapshot!("oip_error_400_binary_size", error(&reply, 400));

        // The header length past the end of the body, or not a number.
        let request = json!({"inputs": [{"name": "input", "datatype": "FP32",
            "shape": [1, 3, side, side], "parameters": {"binary_data_size": fp32.len()}}]});
        let (body, _) = binary_body(&request, &[&fp32]);
        let past = (body.len() + 1).to_string();
        let reply = harness.post_infer(&infer, body.clone(), Some(&past)).await;
        insta::assert_json_snapshot!("oip_error_400_header_length", error(&reply, 400));
        harness.post_infer(&infer, body.clone(), Some("-5")).await.expect(400);
        harness
            .post_infer(&infer, body.clone(), Some("18446744073709551616"))
            .await
            .expect(400);
        // No header: the binary bytes make the JSON invalid, and binary_data_size says why.
        harness.post_infer(&infer, body, None).await.expect(400);
        let (body, _) = binary_body(&request, &[]);
        let reply = harness.post_infer(&infer, body, None).await;
        assert!(error(&reply, 400)["error"].as_str().unwrap().contains("Inference-Header-Content-Length"));

        // Binary sizes that do not add up to the bytes after the JSON.
        let (body, length) = binary_body(&request, &[&fp32, b"extra"]);
        let reply = harness.post_infer(&infer, body, Some(&length.to_string())).await;
        insta::assert_json_snapshot!("oip_error_400_binary_left_over", error(&reply, 400));
        let (body, length) = binary_body(&request, &[&fp32[..100]]);
        harness.post_infer(&infer, body, Some(&length.to_string())).await.expect(400);

        // A BYTES element's length past the end of its data.
        let mut elements = encode_bytes_elements([photo_bytes(1, 303, ImageFormat::Jpeg).as_slice()]);
        elements[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let request = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
            "parameters": {"binary_data_size": elements.len()}}]});
        let (body, length) = binary_body(&request, &[&elements]);
        let reply = harness.post_infer(&infer, body, Some(&length.to_string())).await;
        insta::assert_json_snapshot!("oip_error_400_bytes_element", error(&reply, 400));
        // More elements than the shape says.
        let elements = encode_bytes_elements([b"a".as_slice(), b"b"]);
        let request = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
            "parameters": {"binary_data_size": elements.len()}}]});
        let (body, length) = binary_body(&request, &[&elements]);
        harness.post_infer(&infer, body, Some(&length.to_string())).await.expect(400);
        // An empty element is a photo that cannot be decoded.
        let elements = encode_bytes_elements([b"".as_slice()]);
        let request = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
            "parameters": {"binary_data_size": elements.len()}}]});
        let (body, length) = binary_body(&request, &[&elements]);
        let reply = harness.post_infer(&infer, body, Some(&length.to_string())).await;
        assert_eq!(error(&reply, 422)["reason"], "empty");

        // The body limit holds with binary data too, and odd encodings and types are refused.
        let big = vec![0u8; 300 * 1024];
        let request = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
            "parameters": {"binary_data_size": big.len()}}]});
        let (body, length) = binary_body(&request, &[&big]);
        harness.post_infer(&infer, body, Some(&length.to_string())).await.expect(413);
        let reply = Reply::read(
            harness
                .client
                .post(harness.url(&infer))
                .header("content-encoding", "gzip")
                .body(huge.to_string())
                .send()
                .await,
        )
        .await;
        reply.expect(415);
        harness.post(&infer, "text/plain", huge.to_string()).await.expect(415);
        // Parameters that are not what the extension says.
        let request = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
            "data": ["aGk="]}], "parameters": {"binary_data_output": "yes"}});
        harness.post_json(&infer, &request).await.expect(400);
        let request = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
            "data": ["aGk="]}], "outputs": [{"name": "label", "parameters": {"classification": 2}}]});
        harness.post_json(&infer, &request).await.expect(400);

        // Still serving.
        let photo = photo_bytes(1, 304, ImageFormat::Jpeg);
        let elements = encode_bytes_elements([photo.as_slice()]);
        let request = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
            "parameters": {"binary_data_size": elements.len()}}], "outputs": [{"name": "label"}]});
        let (body, length) = binary_body(&request, &[&elements]);
        let reply = harness.post_infer(&infer, body, Some(&length.to_string())).await;
        reply.expect(200);
        assert_eq!(reply.json()["outputs"][0]["data"], json!([CLASSES[1]]));
        harness.stop().await;
    });
}
