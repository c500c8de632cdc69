//! The Open Inference Protocol v2 (KServe, Triton): health, server and model metadata, and
//! `infer` with an FP32 tensor `[N, 3, H, W]` or BYTES photos, in JSON or with the binary
//! tensor data extension ([`codec`]) that `tritonclient` uses by default. The request and
//! response bodies and their codec are `bestiary-protocol`'s; the routes are here.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
pub use bestiary_protocol::oip::codec;
pub use bestiary_protocol::oip::{
    InferInput, InferOutput, InferRequest, InferResponse, OutputData, Parameters, RequestedOutput,
};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::classify::{Classification, classify_images, classify_tensor};
use crate::error::{ApiError, ErrorResponse};
use crate::input::{ImageInput, read_body};
use crate::model::ServedModel;
use crate::state::AppState;
use codec::EncodedResponse;

/// Name of the FP32 tensor input, as listed in the model metadata.
pub const TENSOR_INPUT: &str = "input";
/// Name of the BYTES input of encoded photos.
pub const IMAGE_INPUT: &str = "image";
/// Output: class probabilities `[N, classes]`; its `labels` parameter names the columns.
pub const PROBABILITIES_OUTPUT: &str = "probabilities";
/// Output: the most probable label of each image, `[N]`.
pub const LABEL_OUTPUT: &str = "label";
/// Requested-output parameter of the classification extension: the `k` most probable classes
/// of each image as BYTES `"<probability>:<index>:<label>"`, `[N, k]`, instead of all
/// probabilities.
pub const CLASSIFICATION: &str = "classification";
/// Protocol extensions this server implements, as `GET /v2` lists them.
pub const EXTENSIONS: [&str; 2] = ["binary_tensor_data", "classification"];

#[derive(Debug, Serialize, ToSchema)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    pub live: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelReadiness {
    pub name: String,
    pub ready: bool,
}

/// Name, type and shape of a tensor; `-1` is a free dimension.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    /// For the FP32 input: how photos become that tensor (sizes, crop, mean and standard
    /// deviation), so that clients can pre-process them as the server does.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelMetadataResponse {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// An inference response on the wire: `application/json`, or `application/octet-stream` with
/// the `Inference-Header-Content-Length` header when binary outputs follow the JSON.
#[derive(Debug)]
pub struct InferReply(pub EncodedResponse);

impl IntoResponse for InferReply {
    fn into_response(self) -> Response {
        let EncodedResponse {
            body,
            header_length,
        } = self.0;
        let content_type = if header_length.is_some() {
            "application/octet-stream"
        } else {
            "application/json"
        };
        let mut response = (
            StatusCode::OK,
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response();
        if let Some(length) = header_length {
            response
                .headers_mut()
                .insert(codec::HEADER_LENGTH, HeaderValue::from(length));
        }
        response
    }
}

/// Server name, version and protocol extensions.
#[utoipa::path(get, path = "/v2", tag = "open-inference-protocol",
    responses((status = 200, body = ServerMetadata)), security((), ("api_key" = [])))]
pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "bestiary".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: EXTENSIONS.map(String::from).to_vec(),
    })
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/v2/health/live", tag = "open-inference-protocol",
    responses((status = 200, body = Liveness)))]
pub async fn live() -> Json<Liveness> {
    Json(Liveness { live: true })
}

/// Readiness: a model is loaded.
#[utoipa::path(get, path = "/v2/health/ready", tag = "open-inference-protocol",
    responses((status = 200, body = Readiness), (status = 503, body = ErrorResponse)))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    state.model()?;
    Ok(Json(Readiness { ready: true }))
}

/// Readiness of one model.
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "open-inference-protocol",
    params(("name" = String, Path)),
    responses((status = 200, body = ModelReadiness), (status = 404, body = ErrorResponse), (status = 503, body = ErrorResponse)),
    security((), ("api_key" = [])))]
pub async fn model_ready(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelReadiness>, ApiError> {
    state.model_named(&name, None)?;
    Ok(Json(ModelReadiness { name, ready: true }))
}

/// Readiness of one model version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "open-inference-protocol",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = ModelReadiness), (status = 404, body = ErrorResponse), (status = 503, body = ErrorResponse)),
    security((), ("api_key" = [])))]
pub async fn model_version_ready(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ModelReadiness>, ApiError> {
    state.model_named(&name, Some(&version))?;
    Ok(Json(ModelReadiness { name, ready: true }))
}

/// Model metadata: versions, inputs and outputs.
#[utoipa::path(get, path = "/v2/models/{name}", tag = "open-inference-protocol",
    params(("name" = String, Path)),
    responses((status = 200, body = ModelMetadataResponse), (status = 404, body = ErrorResponse), (status = 503, body = ErrorResponse)),
    security((), ("api_key" = [])))]
pub async fn model_metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelMetadataResponse>, ApiError> {
    metadata_of(&state, &name, None)
}

/// Metadata of one model version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "open-inference-protocol",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = ModelMetadataResponse), (status = 404, body = ErrorResponse), (status = 503, body = ErrorResponse)),
    security((), ("api_key" = [])))]
pub async fn model_version_metadata(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ModelMetadataResponse>, ApiError> {
    metadata_of(&state, &name, Some(&version))
}

fn metadata_of(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Json<ModelMetadataResponse>, ApiError> {
    let model = state.model_named(name, version)?;
    let input = &model.model.metadata.input;
    let side = i64::from(input.image_size);
    let classes = model.model.metadata.classes.len() as i64;
    let preprocessing = serde_json::json!({
        "layout": "NCHW",
        "channels": "RGB",
        "image_size": input.image_size,
        "resize_shorter_side": model.preprocessor.resize_target(),
        "crop_fraction": input.crop_fraction,
        "mean": input.normalization.mean.map(shortest),
        "std": input.normalization.std.map(shortest),
        "transform": "shrink the shorter side to resize_shorter_side when larger, take the \
            centre square of side shorter_side * image_size / round(image_size / crop_fraction), \
            resize it bilinearly to image_size, then (pixel - mean) / std with pixels in 0..255",
    });
    Ok(Json(ModelMetadataResponse {
        name: model.name().to_string(),
        versions: vec![model.version().to_string()],
        platform: format!("bestiary_{}", model.engine()),
        inputs: vec![
            TensorMetadata {
                name: TENSOR_INPUT.into(),
                datatype: "FP32".into(),
                shape: vec![-1, 3, side, side],
                parameters: Some(preprocessing),
            },
            TensorMetadata {
                name: IMAGE_INPUT.into(),
                datatype: "BYTES".into(),
                shape: vec![-1],
                parameters: None,
            },
        ],
        outputs: vec![
            TensorMetadata {
                name: PROBABILITIES_OUTPUT.into(),
                datatype: "FP32".into(),
                shape: vec![-1, classes],
                parameters: None,
            },
            TensorMetadata {
                name: LABEL_OUTPUT.into(),
                datatype: "BYTES".into(),
                shape: vec![-1],
                parameters: None,
            },
        ],
    }))
}

/// An `f32` as the `f64` with the same shortest decimal form (`123.675`, not the
/// `123.67500305…` that widening gives).
fn shortest(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

/// Inference on an FP32 tensor or BYTES photos, in JSON or binary.
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "open-inference-protocol",
    params(("name" = String, Path)),
    request_body = InferRequest,
    responses((status = 200, body = InferResponse), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 413, body = ErrorResponse),
        (status = 422, body = ErrorResponse), (status = 429, body = ErrorResponse), (status = 503, body = ErrorResponse)),
    security((), ("api_key" = [])))]
pub async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: axum::extract::Request,
) -> Result<InferReply, ApiError> {
    infer_with(state, &name, None, request).await
}

/// Inference on one model version.
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "open-inference-protocol",
    params(("name" = String, Path), ("version" = String, Path)),
    request_body = InferRequest,
    responses((status = 200, body = InferResponse), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse), (status = 503, body = ErrorResponse)),
    security((), ("api_key" = [])))]
pub async fn infer_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Result<InferReply, ApiError> {
    infer_with(state, &name, Some(&version), request).await
}

async fn infer_with(
    state: AppState,
    name: &str,
    version: Option<&str>,
    request: axum::extract::Request,
) -> Result<InferReply, ApiError> {
    let model = state.model_named(name, version)?;
    let headers = request.headers();
    let media_type = crate::input::media_type(headers);
    if media_type
        .as_deref()
        .is_some_and(|t| t != "application/json" && t != "application/octet-stream")
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "infer takes an application/json body (application/octet-stream with binary \
             tensors), not {}",
            media_type.unwrap_or_default()
        )));
    }
    if let Some(encoding) = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|e| e != "identity")
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Encoding {encoding} is not supported: send the body uncompressed"
        )));
    }
    let header_length = headers
        .get(codec::HEADER_LENGTH)
        .map(|v| {
            v.to_str().map(str::to_owned).map_err(|_| {
                ApiError::BadRequest("Inference-Header-Content-Length must be a number".into())
            })
        })
        .transpose()?;
    let body = read_body(request.into_body(), state.config.max_body_bytes).await?;
    let request = codec::decode_request(body, header_length.as_deref())?;
    let [input] = request.inputs.as_slice() else {
        return Err(ApiError::BadRequest(format!(
            "expected exactly one input ({TENSOR_INPUT:?} FP32 or {IMAGE_INPUT:?} BYTES), got {}",
            request.inputs.len()
        )));
    };
    let wanted = requested_outputs(&request, &model)?;
    let classification = match input.datatype.as_str() {
        "FP32" => {
            let side = model.model.metadata.input.image_size as i64;
            let batch = match input.shape.as_slice() {
                [n, 3, h, w] if *n >= 1 && *h == side && *w == side => *n,
                shape => {
                    return Err(ApiError::BadRequest(format!(
                        "input shape {shape:?} does not fit this model: expected [N, 3, {side}, {side}]"
                    )));
                }
            };
            let batch = check_batch(&state, input, usize::try_from(batch).unwrap_or(usize::MAX))?;
            // At most `max_queue` images of the model's size: cannot overflow, but checked.
            let values = batch.checked_mul(model.model.input_len()).ok_or_else(|| {
                ApiError::PayloadTooLarge(format!("input shape {:?} is too large", input.shape))
            })?;
            let values = codec::fp32_values(input, values)?;
            classify_tensor(&state, model, values, batch, 1).await?
        }
        "BYTES" => {
            let count = codec::element_count(&input.shape)?;
            if count == 0 {
                return Err(ApiError::BadRequest("the input holds no image".into()));
            }
            let count = check_batch(&state, input, count)?;
            let binary = input.binary.is_some();
            let images = codec::bytes_elements(input, count)?
                .into_iter()
                .enumerate()
                .map(|(i, element)| {
                    Ok(ImageInput {
                        name: format!("#{i}"),
                        bytes: photo_bytes(element, binary, i, &input.name)?,
                    })
                })
                .collect::<Result<Vec<_>, ApiError>>()?;
            classify_images(&state, images, 1).await?
        }
        other => {
            return Err(ApiError::BadRequest(format!(
                "unsupported datatype {other}: send FP32 tensors or BYTES photos"
            )));
        }
    };
    let response = codec::encode_response(&InferResponse {
        model_name: classification.model.name().to_string(),
        model_version: classification.model.version().to_string(),
        id: request.id,
        outputs: outputs(&classification, &wanted),
    })?;
    Ok(InferReply(response))
}

/// Refuses more images in one request than the server admits at once (`--max-queue`): such a
/// request could never run, and its tensor must not be allocated.
fn check_batch(state: &AppState, input: &InferInput, images: usize) -> Result<usize, ApiError> {
    let limit = state.config.max_queue;
    if images > limit {
        return Err(ApiError::PayloadTooLarge(format!(
            "input {:?} (shape {:?}) declares {images} images; this server takes at most {limit} \
             in one request",
            input.name, input.shape
        )));
    }
    Ok(images)
}

/// The photo in a BYTES element: JSON strings are base64; binary elements are the photo's own
/// bytes, or its base64 text (no photo consists of base64 characters only), so the same array
/// of base64 strings works in both forms.
fn photo_bytes(element: Bytes, binary: bool, index: usize, input: &str) -> Result<Bytes, ApiError> {
    let text = element.trim_ascii();
    let decoded = || base64::engine::general_purpose::STANDARD.decode(text);
    if binary {
        let is_base64 = !text.is_empty()
            && text
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b));
        // Anything else is taken as the photo, and the decoder has the last word on it.
        return Ok(match is_base64.then(decoded) {
            Some(Ok(photo)) => photo.into(),
            _ => element,
        });
    }
    decoded().map(Bytes::from).map_err(|e| {
        ApiError::BadRequest(format!(
            "element {index} of {input:?} is not base64 (BYTES elements in JSON are \
             base64-encoded photos): {e}"
        ))
    })
}

/// One output the client asked for, and how.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    name: &'static str,
    binary: bool,
    /// The classification extension's `k`, already at most the number of classes.
    classification: Option<usize>,
}

/// The outputs the client asked for (both when it did not say).
fn requested_outputs(request: &InferRequest, model: &ServedModel) -> Result<Vec<Wanted>, ApiError> {
    let all = [PROBABILITIES_OUTPUT, LABEL_OUTPUT];
    let parameters = request.parameters.as_ref();
    let Some(requested) = request.outputs.as_deref().filter(|r| !r.is_empty()) else {
        let binary = codec::wants_binary(parameters, None)?;
        return Ok(all
            .map(|name| Wanted {
                name,
                binary,
                classification: None,
            })
            .to_vec());
    };
    requested
        .iter()
        .map(|output| {
            let name = all
                .iter()
                .find(|name| **name == output.name)
                .copied()
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "unknown output {:?} (outputs: {PROBABILITIES_OUTPUT}, {LABEL_OUTPUT})",
                        output.name
                    ))
                })?;
            let classification = match output
                .parameters
                .as_ref()
                .and_then(|p| p.get(CLASSIFICATION))
            {
                None => None,
                Some(_) if name != PROBABILITIES_OUTPUT => {
                    return Err(ApiError::BadRequest(format!(
                        "classification applies to the {PROBABILITIES_OUTPUT} output, not {name}"
                    )));
                }
                Some(k) => match k.as_u64().filter(|k| *k >= 1) {
                    Some(k) => Some(
                        usize::try_from(k)
                            .unwrap_or(usize::MAX)
                            .min(model.model.metadata.classes.len()),
                    ),
                    None => {
                        return Err(ApiError::BadRequest(format!(
                            "classification must be a positive number of classes, not {k}"
                        )));
                    }
                },
            };
            Ok(Wanted {
                name,
                binary: codec::wants_binary(parameters, output.parameters.as_ref())?,
                classification,
            })
        })
        .collect()
}

/// The outputs, the same in JSON and in binary: `probabilities` `[N, classes]` with the
/// classes as its `labels` parameter (or, with `classification: k`, BYTES `[N, k]` of
/// `"<probability>:<index>:<label>"`, most probable first), and `label` BYTES `[N]`.
fn outputs(classification: &Classification, wanted: &[Wanted]) -> Vec<InferOutput> {
    let classes = &classification.model.model.metadata.classes;
    let batch = classification.images.len();
    let probabilities = || {
        classification
            .images
            .iter()
            .map(|image| image.classified.prediction.probabilities.as_slice())
    };
    wanted
        .iter()
        .map(|wanted| {
            let output = match (wanted.name, wanted.classification) {
                (PROBABILITIES_OUTPUT, Some(k)) => InferOutput {
                    name: PROBABILITIES_OUTPUT.into(),
                    shape: vec![batch, k],
                    datatype: "BYTES".into(),
                    parameters: None,
                    data: Some(OutputData::Bytes(
                        probabilities()
                            .flat_map(|row| top_classes(row, classes, k))
                            .collect(),
                    )),
                    binary: None,
                },
                (PROBABILITIES_OUTPUT, None) => InferOutput {
                    name: PROBABILITIES_OUTPUT.into(),
                    shape: vec![batch, classes.len()],
                    datatype: "FP32".into(),
                    parameters: Some(Parameters::from_iter([(
                        "labels".to_string(),
                        serde_json::json!(classes),
                    )])),
                    data: Some(OutputData::Fp32(
                        probabilities().flatten().copied().collect(),
                    )),
                    binary: None,
                },
                _ => InferOutput {
                    name: LABEL_OUTPUT.into(),
                    shape: vec![batch],
                    datatype: "BYTES".into(),
                    parameters: unknown_parameters(classification),
                    data: Some(OutputData::Bytes(
                        classification
                            .images
                            .iter()
                            .map(|image| image.classified.prediction.label.clone())
                            .collect(),
                    )),
                    binary: None,
                },
            };
            if wanted.binary {
                output.into_binary()
            } else {
                output
            }
        })
        .collect()
}

/// For a model with an "unknown" detector, the `label` output's parameters say which images it
/// rejected (their label is then `unknown`) and their scores, image by image.
fn unknown_parameters(classification: &Classification) -> Option<Parameters> {
    let verdicts: Option<Vec<(bool, f32)>> = classification
        .images
        .iter()
        .map(|image| {
            let prediction = &image.classified.prediction;
            prediction.unknown.zip(prediction.unknown_score)
        })
        .collect();
    let verdicts = verdicts?;
    Some(Parameters::from_iter([
        (
            "unknown".to_string(),
            serde_json::json!(verdicts.iter().map(|v| v.0).collect::<Vec<_>>()),
        ),
        (
            "unknown_score".to_string(),
            serde_json::json!(verdicts.iter().map(|v| v.1).collect::<Vec<_>>()),
        ),
    ]))
}

/// The `k` most probable classes of one image as `"<probability>:<index>:<label>"`.
fn top_classes(probabilities: &[f32], classes: &[String], k: usize) -> Vec<String> {
    let mut order: Vec<usize> = (0..probabilities.len().min(classes.len())).collect();
    order.sort_by(|&a, &b| {
        probabilities[b]
            .total_cmp(&probabilities[a])
            .then(a.cmp(&b))
    });
    order
        .into_iter()
        .take(k)
        .map(|i| format!("{}:{i}:{}", probabilities[i], classes[i]))
        .collect()
}
