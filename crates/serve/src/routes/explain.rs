//! `POST /v1/explain`: where the model looked in a photo for its predicted (or a requested)
//! class, as a grid of class activation values and as a heat map over the photo (PNG).

use std::time::Instant;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bestiary_engine::{EngineError, PhotoExplanation};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorResponse};
use crate::input::read_images;
use crate::routes::native::query;
use crate::state::AppState;

/// What `/v1/explain` answers with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExplainFormat {
    /// [`ExplainResponse`], the overlay inside in base64.
    #[default]
    Json,
    /// The overlay itself, `image/png`.
    Png,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ExplainQuery {
    /// The class to explain (default: the most probable one).
    pub label: Option<String>,
    /// `json` (default) or `png`.
    #[param(inline)]
    pub format: Option<ExplainFormat>,
}

/// Where the model looked, for one class.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExplainResponse {
    pub model: String,
    pub version: String,
    /// The class explained: the most probable one, or the one asked for.
    pub label: String,
    /// Its probability (calibrated when the model has a temperature).
    pub score: f32,
    /// What `/v1/classify` says of the photo: its most probable label, or `unknown`.
    pub predicted_label: String,
    /// The class activation map, `grid_height` rows of `grid_width` values (row-major), in
    /// logit units: the head applied to each cell of the last feature map, whose mean is the
    /// class's logit. Positive cells raised the class; the grid covers the centre square the
    /// model saw.
    pub grid: Vec<f32>,
    pub grid_height: usize,
    pub grid_width: usize,
    /// The photo (upright, at most 1024 px on its longer side) with the map's positive part
    /// scaled to 0..1, upsampled bilinearly over that square and blended in (viridis); the
    /// rest of the photo, which the model did not see, is dimmed. PNG, base64.
    pub overlay_png_base64: String,
    pub overlay_width: u32,
    pub overlay_height: u32,
    /// The square the model saw, `[left, top, width, height]` in overlay pixels.
    pub crop: [f64; 4],
    /// Width and height of the photo as decoded (after EXIF orientation).
    pub width: u32,
    pub height: u32,
    /// From the start of the request until the answer.
    pub total_ms: f64,
}

impl ExplainResponse {
    fn new(model: &str, version: &str, explained: &PhotoExplanation, started: Instant) -> Self {
        let explanation = &explained.explanation;
        Self {
            model: model.to_owned(),
            version: version.to_owned(),
            label: explanation.label.clone(),
            score: explanation.score,
            predicted_label: explanation.prediction.label.clone(),
            grid: explanation.grid.clone(),
            grid_height: explanation.grid_height,
            grid_width: explanation.grid_width,
            overlay_png_base64: base64::engine::general_purpose::STANDARD
                .encode(&explained.overlay_png),
            overlay_width: explained.overlay.width(),
            overlay_height: explained.overlay.height(),
            crop: explained.crop,
            width: explained.info.width,
            height: explained.info.height,
            total_ms: (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        }
    }
}

/// Explain a classification.
///
/// A heat map of where the model looked for its predicted class (or `label`): class activation
/// maps, exact for networks that end in global average pooling and a linear head (all of
/// Bestiary's). The body is one photo as for `/v1/classify` (raw, a one-file multipart form,
/// or `{"uris": [one]}`). A model exported before explanations existed answers 409.
#[utoipa::path(
    post,
    path = "/v1/explain",
    tag = "classify",
    params(ExplainQuery),
    request_body(
        description = "One photo, a multipart form with one photo, or a JSON list of one object URI",
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
        (status = 200, description = "The explanation, or with `format=png` the overlay alone", content(
            (ExplainResponse = "application/json"),
            (Vec<u8> = "image/png"),
        )),
        (status = 400, description = "Malformed request, several photos, or a label the model does not have (the message lists its classes)", body = ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
        (status = 409, description = "The model has no class-activation output: re-export it", body = ErrorResponse),
        (status = 403, description = "A URI outside the bucket and --allow-uri-prefix", body = ErrorResponse),
        (status = 404, description = "A URI names no object", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "Unsupported content type", body = ErrorResponse),
        (status = 422, description = "The photo could not be decoded", body = ErrorResponse),
        (status = 429, description = "Overloaded; see Retry-After", body = ErrorResponse),
        (status = 503, description = "No model loaded yet, shutting down, or timed out", body = ErrorResponse),
        (status = 502, description = "The bucket could not be read", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
pub async fn explain(
    State(state): State<AppState>,
    query_string: Result<Query<ExplainQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let options = query(query_string)?;
    let served = state.model()?;
    // Before the body is read: neither a misspelt label nor a model without maps needs it.
    let classes = &served.model.metadata.classes;
    if let Some(label) = &options.label
        && !classes.contains(label)
    {
        let unknown = EngineError::UnknownClass {
            label: label.clone(),
            classes: classes.clone(),
        };
        return Err(ApiError::from_engine(unknown, "#0"));
    }
    if !served.model.explains() {
        let lacking = EngineError::NoClassActivation {
            model: served.model.source.clone(),
        };
        return Err(ApiError::from_engine(lacking, "#0"));
    }
    let (_, mut images) = read_images(request, state.config.max_body_bytes, &state.uris).await?;
    if images.len() != 1 {
        return Err(ApiError::BadRequest(format!(
            "explain one photo at a time ({} were sent)",
            images.len()
        )));
    }
    let image = images.remove(0);
    // Decoding, the network and drawing are CPU work: on the blocking pool, holding a
    // decoding slot so that explanations cannot crowd out classification's decoding.
    let slot = state
        .decoding
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::ShuttingDown)?;
    let working = served.clone();
    let label = options.label.clone();
    let bytes = image.bytes;
    let explained = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        working
            .model
            .explain_photo(&working.preprocessor, &bytes, label.as_deref())
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the explanation stopped: {e}")))?
    .map_err(|e| ApiError::from_engine(e, &image.name))?;
    match options.format.unwrap_or_default() {
        ExplainFormat::Png => {
            let mut response = explained.overlay_png.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
            Ok(response)
        }
        ExplainFormat::Json => Ok(Json(ExplainResponse::new(
            served.name(),
            served.version(),
            &explained,
            started,
        ))
        .into_response()),
    }
}
