//! The Open Inference Protocol v2 (KServe, Triton): health, server and model metadata, and
//! `infer` with an FP32 tensor `[N, 3, H, W]` or BYTES-encoded photos.

use axum::Json;
use axum::extract::{Path, State};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::classify::{Classification, classify_images, classify_tensor};
use crate::error::{ApiError, ErrorResponse};
use crate::input::{ImageInput, read_body};
use crate::state::AppState;

/// Name of the FP32 tensor input, as listed in the model metadata.
pub const TENSOR_INPUT: &str = "input";
/// Name of the BYTES input of encoded photos.
pub const IMAGE_INPUT: &str = "image";
/// Output: class probabilities `[N, classes]`; its `labels` parameter names the columns.
pub const PROBABILITIES_OUTPUT: &str = "probabilities";
/// Output: the most probable label of each image, `[N]`.
pub const LABEL_OUTPUT: &str = "label";

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
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelMetadataResponse {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// An inference request: one input, either `input` (FP32 `[N, 3, H, W]`, already normalised as
/// the model's metadata says) or `image` (BYTES `[N]`, each element a base64-encoded photo).
#[derive(Debug, Deserialize, ToSchema)]
pub struct InferRequest {
    pub id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    pub inputs: Vec<InferInput>,
    pub outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct InferInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    /// Row-major values, flat or nested.
    #[schema(value_type = Object)]
    pub data: Value,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestedOutput {
    pub name: String,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<InferOutput>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InferOutput {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    pub data: OutputData,
}

/// The values of an output, row-major.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum OutputData {
    /// Kept as `f32` so that each probability prints in its shortest exact form.
    Fp32(Vec<f32>),
    Bytes(Vec<String>),
}

/// Server name, version and protocol extensions.
#[utoipa::path(get, path = "/v2", tag = "open-inference-protocol",
    responses((status = 200, body = ServerMetadata)), security((), ("api_key" = [])))]
pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "bestiary".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: Vec::new(),
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
    let side = i64::from(model.model.metadata.input.image_size);
    let classes = model.model.metadata.classes.len() as i64;
    Ok(Json(ModelMetadataResponse {
        name: model.name().to_string(),
        versions: vec![model.version().to_string()],
        platform: format!("bestiary_{}", model.engine()),
        inputs: vec![
            TensorMetadata {
                name: TENSOR_INPUT.into(),
                datatype: "FP32".into(),
                shape: vec![-1, 3, side, side],
            },
            TensorMetadata {
                name: IMAGE_INPUT.into(),
                datatype: "BYTES".into(),
                shape: vec![-1],
            },
        ],
        outputs: vec![
            TensorMetadata {
                name: PROBABILITIES_OUTPUT.into(),
                datatype: "FP32".into(),
                shape: vec![-1, classes],
            },
            TensorMetadata {
                name: LABEL_OUTPUT.into(),
                datatype: "BYTES".into(),
                shape: vec![-1],
            },
        ],
    }))
}

/// Inference on an FP32 tensor or BYTES-encoded photos.
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
) -> Result<Json<InferResponse>, ApiError> {
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
) -> Result<Json<InferResponse>, ApiError> {
    infer_with(state, &name, Some(&version), request).await
}

async fn infer_with(
    state: AppState,
    name: &str,
    version: Option<&str>,
    request: axum::extract::Request,
) -> Result<Json<InferResponse>, ApiError> {
    let model = state.model_named(name, version)?;
    let media_type = crate::input::media_type(request.headers());
    if media_type
        .as_deref()
        .is_some_and(|t| t != "application/json")
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "infer takes an application/json body, not {}",
            media_type.unwrap_or_default()
        )));
    }
    let body = read_body(request.into_body(), state.config.max_body_bytes).await?;
    let request: InferRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid inference request: {e}")))?;
    let [input] = request.inputs.as_slice() else {
        return Err(ApiError::BadRequest(format!(
            "expected exactly one input ({TENSOR_INPUT:?} FP32 or {IMAGE_INPUT:?} BYTES), got {}",
            request.inputs.len()
        )));
    };
    let wanted = requested_outputs(request.outputs.as_deref())?;
    let classification = match input.datatype.as_str() {
        "FP32" => {
            let side = model.model.metadata.input.image_size as i64;
            let batch = match input.shape.as_slice() {
                [n, 3, h, w] if *n >= 1 && *h == side && *w == side => *n as usize,
                shape => {
                    return Err(ApiError::BadRequest(format!(
                        "input shape {shape:?} does not fit this model: expected [N, 3, {side}, {side}]"
                    )));
                }
            };
            let mut values = Vec::with_capacity(batch * model.model.input_len());
            flatten_numbers(&input.data, &mut values)?;
            classify_tensor(&state, model, values, batch, 1).await?
        }
        "BYTES" => {
            let mut encoded = Vec::new();
            flatten_strings(&input.data, &mut encoded)?;
            let expected: i64 = input.shape.iter().product();
            if expected != encoded.len() as i64 {
                return Err(ApiError::BadRequest(format!(
                    "input shape {:?} says {expected} elements, data holds {}",
                    input.shape,
                    encoded.len()
                )));
            }
            let images = encoded
                .into_iter()
                .enumerate()
                .map(|(i, text)| {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(text.trim())
                        .map_err(|e| {
                            ApiError::BadRequest(format!(
                                "element {i} of {:?} is not base64 (BYTES elements are base64-encoded photos): {e}",
                                input.name
                            ))
                        })?;
                    Ok(ImageInput {
                        name: format!("#{i}"),
                        bytes: bytes.into(),
                    })
                })
                .collect::<Result<Vec<_>, ApiError>>()?;
            if images.is_empty() {
                return Err(ApiError::BadRequest("the input holds no image".into()));
            }
            classify_images(&state, images, 1).await?
        }
        other => {
            return Err(ApiError::BadRequest(format!(
                "unsupported datatype {other}: send FP32 tensors or BYTES photos"
            )));
        }
    };
    state.usage.record_request();
    Ok(Json(InferResponse {
        model_name: classification.model.name().to_string(),
        model_version: classification.model.version().to_string(),
        id: request.id,
        outputs: outputs(&classification, &wanted),
    }))
}

/// The outputs the client asked for (both when it did not say).
fn requested_outputs(requested: Option<&[RequestedOutput]>) -> Result<Vec<&'static str>, ApiError> {
    let all = [PROBABILITIES_OUTPUT, LABEL_OUTPUT];
    let Some(requested) = requested.filter(|r| !r.is_empty()) else {
        return Ok(all.to_vec());
    };
    requested
        .iter()
        .map(|output| {
            all.iter()
                .find(|name| **name == output.name)
                .copied()
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "unknown output {:?} (outputs: {PROBABILITIES_OUTPUT}, {LABEL_OUTPUT})",
                        output.name
                    ))
                })
        })
        .collect()
}

fn outputs(classification: &Classification, wanted: &[&str]) -> Vec<InferOutput> {
    let classes = &classification.model.model.metadata.classes;
    let batch = classification.images.len();
    wanted
        .iter()
        .map(|name| match *name {
            PROBABILITIES_OUTPUT => InferOutput {
                name: PROBABILITIES_OUTPUT.into(),
                shape: vec![batch, classes.len()],
                datatype: "FP32".into(),
                parameters: Some(serde_json::json!({ "labels": classes })),
                data: OutputData::Fp32(
                    classification
                        .images
                        .iter()
                        .flat_map(|image| image.classified.prediction.probabilities.iter().copied())
                        .collect(),
                ),
            },
            _ => InferOutput {
                name: LABEL_OUTPUT.into(),
                shape: vec![batch],
                datatype: "BYTES".into(),
                parameters: None,
                data: OutputData::Bytes(
                    classification
                        .images
                        .iter()
                        .map(|image| image.classified.prediction.label.clone())
                        .collect(),
                ),
            },
        })
        .collect()
}

fn flatten_numbers(value: &Value, out: &mut Vec<f32>) -> Result<(), ApiError> {
    match value {
        Value::Array(items) => items.iter().try_for_each(|item| flatten_numbers(item, out)),
        Value::Number(number) => {
            out.push(number.as_f64().unwrap_or(f64::NAN) as f32);
            Ok(())
        }
        other => Err(ApiError::BadRequest(format!(
            "FP32 data must hold numbers, found {other}"
        ))),
    }
}

fn flatten_strings(value: &Value, out: &mut Vec<String>) -> Result<(), ApiError> {
    match value {
        Value::Array(items) => items.iter().try_for_each(|item| flatten_strings(item, out)),
        Value::String(text) => {
            out.push(text.clone());
            Ok(())
        }
        _ => Err(ApiError::BadRequest(
            "BYTES data must hold base64 strings".into(),
        )),
    }
}
