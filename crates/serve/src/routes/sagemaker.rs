//! The SageMaker hosting contract: `GET /ping`, `POST /invocations` and, for batch transform,
//! `GET /execution-parameters`; and the rule that tells a SageMaker container apart.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::classify::classify_images;
use crate::error::{ApiError, ErrorResponse};
use crate::input::{BodyKind, accepts_json_lines, read_images};
use crate::routes::native::{ClassifyQuery, query};
use crate::state::AppState;

/// The port SageMaker sends requests to unless `SAGEMAKER_BIND_TO_PORT` says otherwise.
pub const SAGEMAKER_DEFAULT_PORT: u16 = 8080;

/// Whether this process runs inside a SageMaker container, and the address it must listen on.
///
/// The rule: SageMaker is recognised by any environment variable starting with `SAGEMAKER_`
/// or `SM_` (hosting sets `SAGEMAKER_BIND_TO_PORT` in multi-container endpoints; training and
/// processing containers set `SM_*`), or by the `/opt/ml` folder every SageMaker container has.
/// There the server listens on all interfaces, on `SAGEMAKER_BIND_TO_PORT` or else 8080.
pub fn sagemaker_address(env: &HashMap<String, String>, opt_ml_exists: bool) -> Option<SocketAddr> {
    let in_sagemaker = opt_ml_exists
        || env
            .keys()
            .any(|k| k.starts_with("SAGEMAKER_") || k.starts_with("SM_"));
    if !in_sagemaker {
        return None;
    }
    let port = env
        .get("SAGEMAKER_BIND_TO_PORT")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(SAGEMAKER_DEFAULT_PORT);
    Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
}

/// [`sagemaker_address`] for this process.
pub fn detect_sagemaker() -> Option<SocketAddr> {
    let env: HashMap<String, String> = std::env::vars().collect();
    sagemaker_address(&env, Path::new("/opt/ml").is_dir())
}

/// SageMaker's answer for one image.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Invocation {
    /// Probability of every label, in the order of `labels`.
    pub prediction: Vec<f32>,
    pub labels: Vec<String>,
    pub predicted_label: String,
}

/// Batch transform settings SageMaker asks for before sending records.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct ExecutionParameters {
    pub max_concurrent_transforms: usize,
    pub batch_strategy: String,
    #[serde(rename = "MaxPayloadInMB")]
    pub max_payload_in_mb: usize,
}

/// Health check: 200 once the model is loaded, 503 before.
#[utoipa::path(
    get,
    path = "/ping",
    tag = "sagemaker",
    responses(
        (status = 200, description = "Ready"),
        (status = 503, description = "No model loaded yet", body = ErrorResponse),
    )
)]
pub async fn ping(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.model()?;
    Ok(Json(serde_json::json!({ "status": "healthy" })))
}

/// Classify for SageMaker endpoints and batch transform.
///
/// The same bodies as `/v1/classify`, plus JSON Lines records (`{"source-ref": uri}`,
/// `{"b64": data}`) for batch transform. A raw photo gets one JSON object; multipart and
/// `{"uris": [...]}` bodies get a JSON array (one element per image, whatever their number);
/// JSON Lines in, or `Accept: application/jsonlines`, gets one line per image.
#[utoipa::path(
    post,
    path = "/invocations",
    tag = "sagemaker",
    params(ClassifyQuery),
    request_body(
        description = "A photo, a multipart form of photos, {\"uris\": [...]}, or JSON Lines records",
        content(
            (Vec<u8> = "image/jpeg"),
            (Vec<u8> = "application/x-image"),
            (Vec<u8> = "multipart/form-data"),
            (crate::input::UriRequest = "application/json"),
            (String = "application/jsonlines"),
        )
    ),
    responses(
        (status = 200, description = "Probabilities and labels", body = Invocation),
        (status = 400, body = ErrorResponse),
        (status = 413, body = ErrorResponse),
        (status = 415, body = ErrorResponse),
        (status = 422, body = ErrorResponse),
        (status = 429, body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
pub async fn invocations(
    State(state): State<AppState>,
    query_string: Result<Query<ClassifyQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let top_k = state.top_k(query(query_string)?.top_k)?;
    state.model()?;
    let wants_lines = accepts_json_lines(request.headers());
    let (kind, images) = read_images(request, state.config.max_body_bytes, &state.uris).await?;
    // A raw body holds one photo by definition; the other bodies answer as a list.
    let single = kind == BodyKind::Image;
    let classification = classify_images(&state, images, top_k).await?;
    state.usage.record_request();
    let labels = &classification.model.model.metadata.classes;
    let answers: Vec<Invocation> = classification
        .images
        .iter()
        .map(|image| Invocation {
            prediction: image.classified.prediction.probabilities.clone(),
            labels: labels.clone(),
            predicted_label: image.classified.prediction.label.clone(),
        })
        .collect();
    if wants_lines || kind == BodyKind::JsonLines {
        let mut body = Vec::new();
        for answer in &answers {
            serde_json::to_writer(&mut body, answer).expect("answers serialise");
            body.push(b'\n');
        }
        let mut response = Body::from(body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jsonlines"),
        );
        return Ok(response);
    }
    if single {
        Ok(Json(answers.into_iter().next().expect("one image")).into_response())
    } else {
        Ok(Json(answers).into_response())
    }
}

/// Batch transform settings: how many requests at once, multi-record batches, payload limit.
#[utoipa::path(
    get,
    path = "/execution-parameters",
    tag = "sagemaker",
    responses((status = 200, body = ExecutionParameters)),
    security((), ("api_key" = []))
)]
pub async fn execution_parameters(State(state): State<AppState>) -> Json<ExecutionParameters> {
    let config = &state.config;
    Json(ExecutionParameters {
        // Enough requests to fill a batch (or, unbatched, to decode while another image runs),
        // no more than the server admits at once.
        max_concurrent_transforms: config
            .max_batch_size
            .unwrap_or(4)
            .min(config.max_concurrent_requests)
            .max(1),
        batch_strategy: "MULTI_RECORD".into(),
        // SageMaker accepts whole megabytes from 1 to 100.
        max_payload_in_mb: (config.max_body_bytes / (1024 * 1024)).clamp(1, 100),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sagemaker_is_recognised_by_its_variables_or_folder() {
        assert_eq!(sagemaker_address(&env(&[("HOME", "/root")]), false), None);
        assert_eq!(
            sagemaker_address(&env(&[("SAGEMAKER_BIND_TO_PORT", "9090")]), false),
            Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 9090)))
        );
        assert_eq!(
            sagemaker_address(&env(&[("SM_MODEL_DIR", "/opt/ml/model")]), false),
            Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8080)))
        );
        assert_eq!(
            sagemaker_address(&env(&[]), true),
            Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8080)))
        );
    }
}
