//! Bestiary's own API: `POST /v1/classify`, `GET /v1/models[/{name}]` and `GET /v1/usage`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::classify::{Classification, classify_images};
use crate::error::{ApiError, ErrorResponse};
use crate::input::read_images;
use crate::model::ServedModel;
use crate::state::AppState;
use crate::usage::UsageReport;

#[derive(Debug, Deserialize, IntoParams)]
pub struct ClassifyQuery {
    /// How many of the most probable labels to list per image (default 5).
    pub top_k: Option<usize>,
}

/// One label and its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
}

impl LabelScore {
    /// The engine's ranking as the API lists it.
    pub fn ranking(labels: &[bestiary_engine::prediction::LabelScore]) -> Vec<Self> {
        labels
            .iter()
            .map(|s| Self {
                label: s.label.clone(),
                score: s.score,
            })
            .collect()
    }
}

/// Where one image's time went.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImageTiming {
    /// Decoding, resizing and normalising the photo.
    pub preprocess_ms: f64,
    /// Waiting for its batch to start.
    pub queue_ms: f64,
    /// Running its batch through the network.
    pub inference_ms: f64,
    /// Images in that batch.
    pub batch_size: usize,
}

/// The answer for one image.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImagePrediction {
    /// The file name, URI, or `#<position>` of the image in the request.
    pub image: String,
    /// The most probable label, or `unknown` when the model's detector rejects the photo.
    pub label: String,
    /// The most probable class's probability (calibrated when the model has a temperature).
    pub score: f32,
    /// The `top_k` most probable labels, most probable first (the ranking stays for an unknown
    /// photo).
    pub top_k: Vec<LabelScore>,
    /// Whether the photo is none of the model's classes (absent for a model without a detector).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<bool>,
    /// The detector's score: higher is more like the training photos.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_score: Option<f32>,
    /// Name of the model that answered.
    pub model: String,
    /// Its version.
    pub version: String,
    /// Width and height of the photo as decoded (after EXIF orientation).
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub timing: ImageTiming,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RequestTiming {
    /// From the start of the request until the answer.
    pub total_ms: f64,
}

/// The answer of `POST /v1/classify`: one prediction per image, in request order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClassifyResponse {
    pub predictions: Vec<ImagePrediction>,
    pub timing: RequestTiming,
}

/// A model version as served.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    /// Network: `seed-cnn`, `resnet18`, `efficientnet-lite0`…
    pub architecture: String,
    /// Labels, in output order.
    pub classes: Vec<String>,
    pub input: InputInfo,
    /// Figures from training (validation accuracy, loss…).
    pub metrics: BTreeMap<String, f64>,
    /// The training data it came from.
    #[schema(value_type = Option<Object>)]
    pub dataset: Option<bestiary_model::DatasetInfo>,
    /// When the version was committed (RFC 3339).
    pub created: String,
    /// Where it was loaded from.
    pub source: String,
    /// The inference engine running it (`ort`, `tract`, `burn`).
    pub engine: String,
    /// Whether `POST /v1/explain` works for it (its graph has class activation maps).
    pub explanations: bool,
    /// When this server loaded it (RFC 3339).
    pub loaded_at: String,
}

/// What the network expects; photos are brought to it by the server.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InputInfo {
    /// Side of the square RGB input, in pixels.
    pub image_size: u32,
    /// The shorter side is resized to `image_size / crop_fraction`, then centre-cropped.
    pub crop_fraction: f32,
    /// Per-channel mean and standard deviation, in 0..255 pixel units.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// The answer of `GET /v1/models`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelInfo>,
    /// The last reload that failed since the last good one (the listed version kept serving).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload_failure: Option<crate::model::ReloadFailure>,
}

impl ModelInfo {
    pub fn of(served: &ServedModel) -> Self {
        let metadata = &served.model.metadata;
        Self {
            name: metadata.name.clone(),
            version: metadata.version.clone(),
            architecture: metadata.architecture.clone(),
            classes: metadata.classes.clone(),
            input: InputInfo {
                image_size: metadata.input.image_size,
                crop_fraction: metadata.input.crop_fraction,
                mean: metadata.input.normalization.mean,
                std: metadata.input.normalization.std,
            },
            metrics: metadata.metrics.clone(),
            dataset: metadata.dataset.clone(),
            created: metadata.created.clone(),
            source: served.model.source.clone(),
            engine: served.engine().to_string(),
            explanations: served.model.explains(),
            loaded_at: served.loaded_at.clone(),
        }
    }
}

/// Milliseconds to the microsecond: finer digits are noise.
fn milliseconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

impl ClassifyResponse {
    pub fn new(classification: &Classification, started: Instant) -> Self {
        let model = &classification.model;
        let predictions = classification
            .images
            .iter()
            .map(|image| {
                let prediction = &image.classified.prediction;
                ImagePrediction {
                    image: image.name.clone(),
                    label: prediction.label.clone(),
                    score: prediction.score,
                    top_k: LabelScore::ranking(&prediction.top_k),
                    unknown: prediction.unknown,
                    unknown_score: prediction.unknown_score,
                    model: model.name().to_string(),
                    version: model.version().to_string(),
                    width: image.size.map(|(w, _)| w),
                    height: image.size.map(|(_, h)| h),
                    timing: ImageTiming {
                        preprocess_ms: milliseconds(image.preprocess),
                        queue_ms: milliseconds(image.classified.queued),
                        inference_ms: milliseconds(image.classified.inference),
                        batch_size: image.classified.batch_size,
                    },
                }
            })
            .collect();
        Self {
            predictions,
            timing: RequestTiming {
                total_ms: milliseconds(started.elapsed()),
            },
        }
    }
}

/// Turns a malformed query string into our JSON 400.
pub fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())))
}

/// Classify photos.
///
/// The body is one photo (`image/jpeg`, `image/png`, `image/webp`, `application/x-image`),
/// several in `multipart/form-data` (every part a file), or `{"uris": [...]}` naming objects
/// (`s3://bucket/key`, or keys relative to the server's bucket) of any size.
#[utoipa::path(
    post,
    path = "/v1/classify",
    tag = "classify",
    params(ClassifyQuery),
    request_body(
        description = "A photo, a multipart form of photos, or a JSON list of object URIs",
        content(
            (Vec<u8> = "image/jpeg"),
            (Vec<u8> = "image/png"),
            (Vec<u8> = "image/webp"),
            (Vec<u8> = "application/x-image"),
            (Vec<u8> = "multipart/form-data"),
            (crate::input::UriRequest = "application/json"),
        )
    ),
    responses(
        (status = 200, description = "One prediction per image", body = ClassifyResponse),
        (status = 400, description = "Malformed request", body = ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
        (status = 403, description = "A URI outside the bucket and --allow-uri-prefix", body = ErrorResponse),
        (status = 404, description = "A URI names no object", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "Unsupported content type", body = ErrorResponse),
        (status = 422, description = "An image could not be decoded", body = ErrorResponse),
        (status = 429, description = "Overloaded; see Retry-After", body = ErrorResponse),
        (status = 503, description = "No model loaded yet, shutting down, or timed out", body = ErrorResponse),
        (status = 502, description = "The bucket could not be read", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
pub async fn classify(
    State(state): State<AppState>,
    query_string: Result<Query<ClassifyQuery>, QueryRejection>,
    request: Request,
) -> Result<Json<ClassifyResponse>, ApiError> {
    let started = Instant::now();
    let top_k = state.top_k(query(query_string)?.top_k)?;
    // Fail fast before reading a body no model can classify.
    state.model()?;
    let (_, images) = read_images(request, state.config.max_body_bytes, &state.uris).await?;
    let classification = classify_images(&state, images, top_k).await?;
    Ok(Json(ClassifyResponse::new(&classification, started)))
}

/// List the served models.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "models",
    responses(
        (status = 200, body = ModelList),
        (status = 503, description = "No model loaded yet", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
pub async fn list_models(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    let model = state.model()?;
    Ok(Json(ModelList {
        models: vec![ModelInfo::of(&model)],
        reload_failure: state.models.reload_failure(),
    }))
}

/// One served model: metadata, classes and training metrics.
#[utoipa::path(
    get,
    path = "/v1/models/{name}",
    tag = "models",
    params(("name" = String, Path, description = "Model name")),
    responses(
        (status = 200, body = ModelInfo),
        (status = 404, description = "No such model", body = ErrorResponse),
        (status = 503, description = "No model loaded yet", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
pub async fn get_model(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelInfo>, ApiError> {
    let model = state.model_named(&name, None)?;
    Ok(Json(ModelInfo::of(&model)))
}

/// Usage and estimated cost: images classified, CPU-seconds per image, cost per 1,000 images.
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "monitoring",
    responses((status = 200, body = UsageReport)),
    security((), ("api_key" = []))
)]
pub async fn usage(State(state): State<AppState>) -> Json<UsageReport> {
    Json(state.usage_report())
}
